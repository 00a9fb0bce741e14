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


class ExponentialRetry(RetryPolicy):
    """A :class:`RetryPolicy` spelled the way most retry libraries spell it, usable wherever a
    RetryPolicy is (``saga_step(retry=...)``, ``SagaBuilder.add_step(retry_policy=...)``)::

        ExponentialRetry(max_attempts=5, initial_interval=timedelta(seconds=1), multiplier=2.0)

    waits 1 s, 2 s, 4 s, 8 s between the five attempts (never more than ``max_interval``).

    Args:
        max_attempts: attempts in all, the first one included.
        initial_interval: the wait before the second attempt (a timedelta or seconds).
        multiplier: each further wait is the previous one times this (``backoff_factor``).
        max_interval: no wait is longer than this (a timedelta or seconds).
        jitter: a fraction (0 to 1) of each wait that is randomised.
        backoff_factor: RetryPolicy's name for ``multiplier`` (accepted so that
            ``dataclasses.replace`` works); give one of the two.
    """

    # a subclass rather than a function, so that ``isinstance(p, ExponentialRetry)`` and its
    # repr say what the user wrote; the fields (and so equality and hashing) are RetryPolicy's
    def __init__(
        self,
        *,
        max_attempts: int = 5,
        initial_interval: timedelta | float = timedelta(seconds=1),
        multiplier: float = 2.0,
        max_interval: timedelta | float = timedelta(seconds=60),
        jitter: float = 0.0,
        backoff_factor: float | None = None,
    ) -> None:
        if backoff_factor is not None:
            if multiplier not in (2.0, backoff_factor):
                raise ValueError(
                    "ExponentialRetry takes multiplier or backoff_factor (the same thing), "
                    f"not both: got multiplier={multiplier}, backoff_factor={backoff_factor}"
                )
            multiplier = backoff_factor
        if isinstance(multiplier, bool) or not isinstance(multiplier, int | float):
            raise ValueError(f"ExponentialRetry.multiplier must be a number, got {multiplier!r}")
        if multiplier < 1.0:
            raise ValueError(
                f"ExponentialRetry.multiplier must be at least 1.0 (waits grow), got {multiplier}"
            )
        super().__init__(
            max_attempts=max_attempts,
            initial_interval=_interval(initial_interval, "initial_interval"),
            backoff_factor=float(multiplier),
            max_interval=_interval(max_interval, "max_interval"),
            jitter=jitter,
        )

    @property
    def multiplier(self) -> float:
        """The growth factor of the waits (the same as ``backoff_factor``)."""
        return self.backoff_factor


def _interval(value: timedelta | float, what: str) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"ExponentialRetry.{what} must be a timedelta or a number of seconds, got {value!r}"
        )
    return timedelta(seconds=value)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
