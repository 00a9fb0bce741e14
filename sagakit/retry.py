"""RetryPolicy: how often and how patiently a failing step or compensation is tried again."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with optional jitter.

    Args:
        max_attempts: attempts in all, the first one included (1 means no retry).
        initial_interval: the wait before the second attempt.
        backoff_factor: each further wait is the previous one times this.
        max_interval: no wait is longer than this.
        jitter: a fraction (0 to 1) of each wait that is randomised, so that many sagas that
            failed together do not retry in lockstep.
    """

    max_attempts: int = 3
    initial_interval: timedelta = field(default=timedelta(seconds=1))
    backoff_factor: float = 2.0
    max_interval: timedelta = field(default=timedelta(seconds=30))
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(
                f"RetryPolicy.max_attempts must be at least 1, got {self.max_attempts}"
            )
        if self.initial_interval < timedelta(0) or self.max_interval < timedelta(0):
            raise ValueError("RetryPolicy intervals must not be negative")
        if self.backoff_factor < 1.0:
            raise ValueError(
                f"RetryPolicy.backoff_factor must be at least 1.0, got {self.backoff_factor}"
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"RetryPolicy.jitter must be between 0 and 1, got {self.jitter}")

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = self.initial_interval.total_seconds() * self.backoff_factor ** (attempt - 1)
        delay = min(base, self.max_interval.total_seconds())
        if self.jitter:
            delay -= delay * self.jitter * random.random()
        return delay


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
