"""python-saga-orchestrator's retry policies, with its counting, and their sagakit form.

The seed's ``max_attempts`` counts the attempts *after* the first one (``NoRetry`` is
``max_attempts=0``; ``ExponentialRetry(max_attempts=3, ...)`` runs a failing step four times):
``next_delay(n)`` gives the wait before retry ``n`` and ``None`` once ``n > max_attempts``.
These classes keep that meaning, so seed code behaves the same; :func:`to_native` gives the
sagakit :class:`~sagakit.RetryPolicy` that makes exactly those attempts with exactly those
waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ...errors import SagaDefinitionError
from ...retry import RetryPolicy as NativeRetryPolicy


@dataclass(frozen=True)
class RetryPolicy:
    """The seed's base policy: ``max_attempts`` retries after the first attempt, each after
    ``_delay_for_attempt(n)``. Subclass it and implement ``_delay_for_attempt`` for your own."""

    max_attempts: int

    def next_delay(self, attempt_number: int) -> timedelta | None:
        """The wait before retry ``attempt_number`` (1 for the first retry), or None when no
        retry is left."""
        if attempt_number > self.max_attempts:
            return None
        return self._delay_for_attempt(attempt_number)

    def _delay_for_attempt(self, attempt_number: int) -> timedelta:
        raise NotImplementedError


@dataclass(frozen=True)
class NoRetry(RetryPolicy):
    """No retry: a failing step fails at once (the builder's default, as in the seed)."""

    def __init__(self) -> None:
        super().__init__(max_attempts=0)

    def _delay_for_attempt(self, attempt_number: int) -> timedelta:
        return timedelta(0)


@dataclass(frozen=True)
class FixedRetry(RetryPolicy):
    """``max_attempts`` retries, each after ``delay``."""

    delay: timedelta

    def _delay_for_attempt(self, attempt_number: int) -> timedelta:
        return self.delay


@dataclass(frozen=True)
class ExponentialRetry(RetryPolicy):
    """``max_attempts`` retries; retry ``n`` waits ``base_delay * multiplier ** (n - 1)``, at
    most ``max_delay`` (no bound when None)."""

    base_delay: timedelta
    multiplier: float = 2.0
    max_delay: timedelta | None = None

    def _delay_for_attempt(self, attempt_number: int) -> timedelta:
        seconds = self.base_delay.total_seconds() * (self.multiplier ** max(attempt_number - 1, 0))
        delay = timedelta(seconds=seconds)
        if self.max_delay is None:
            return delay
        return min(delay, self.max_delay)


class _SeedPolicy(NativeRetryPolicy):
    """A sagakit policy that asks the seed policy for each wait (the engine reads only
    ``max_attempts`` and ``delay_after``); its fields approximate it for the Restate backend."""

    _seed: RetryPolicy

    def __init__(self, seed: RetryPolicy) -> None:
        first = seed.next_delay(1) or timedelta(0)
        longest = max(
            (seed.next_delay(n) or timedelta(0) for n in range(1, min(seed.max_attempts, 64) + 1)),
            default=first,
        )
        factor = seed.multiplier if isinstance(seed, ExponentialRetry) else 1.0
        super().__init__(
            max_attempts=seed.max_attempts + 1,
            initial_interval=first,
            backoff_factor=max(float(factor), 1.0),
            max_interval=max(longest, first),
        )
        object.__setattr__(self, "_seed", seed)

    def delay_after(self, attempt: int) -> float:
        delay = self._seed.next_delay(attempt)
        return 0.0 if delay is None else max(delay.total_seconds(), 0.0)


def to_native(policy: RetryPolicy | NativeRetryPolicy | None, what: str) -> NativeRetryPolicy:
    """The sagakit policy for a seed policy (``None``: the seed's default, no retry); a sagakit
    policy passes as it is (its ``max_attempts`` counts every attempt)."""
    if policy is None:
        policy = NoRetry()
    if isinstance(policy, NativeRetryPolicy):
        return policy
    if not isinstance(policy, RetryPolicy):
        raise SagaDefinitionError(
            f"{what}: retry_policy must be NoRetry(), FixedRetry(...) or ExponentialRetry(...), "
            f"got {policy!r}"
        )
    if isinstance(policy.max_attempts, bool) or not isinstance(policy.max_attempts, int):
        raise SagaDefinitionError(f"{what}: max_attempts must be an int, got {policy!r}")
    if policy.max_attempts < 0:
        raise SagaDefinitionError(
            f"{what}: max_attempts counts the retries after the first attempt and must not be "
            f"negative (0 means no retry), got {policy.max_attempts}"
        )
    try:
        return _SeedPolicy(policy)
    except (ValueError, TypeError) as exc:
        raise SagaDefinitionError(f"{what}: retry_policy {policy!r} is not usable: {exc}") from exc


__all__ = ["ExponentialRetry", "FixedRetry", "NoRetry", "RetryPolicy", "to_native"]
