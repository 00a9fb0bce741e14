"""A sagakit :class:`~sagakit.retry.RetryPolicy` as the retry options of a Restate ``ctx.run``."""

from __future__ import annotations

from restate import RunOptions
from restate.serde import BytesSerde

from ..retry import DEFAULT_RETRY, RetryPolicy


def run_options(policy: RetryPolicy | None) -> RunOptions[bytes]:
    """Restate retries the run itself (each retry is a new attempt of the invocation, replayed
    up to the run); when the attempts run out, awaiting the run raises a terminal error.

    Results cross as bytes that sagakit encoded itself: the SDK then has nothing left to
    serialise, so no failure can happen after the side effect (see steps.py). ``jitter`` has
    no Restate equivalent and is not applied.
    """
    p = policy or DEFAULT_RETRY
    return RunOptions(
        serde=BytesSerde(),
        max_attempts=p.max_attempts,
        initial_retry_interval=p.initial_interval,
        retry_interval_factor=p.backoff_factor,
        max_retry_interval=p.max_interval,
    )
