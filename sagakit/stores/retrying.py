"""The one way sagakit retries infrastructure: backoff with a deadline.

A database that stops answering (a restart, a cut connection, a file locked by another process)
is retried with exponential backoff, but never forever: after ``deadline`` seconds of failing,
the operation fails with a :class:`~sagakit.errors.StoreError` that says what failed and why.
The caller then stops cleanly (a saga's run stops and is recovered from its journal once the
database answers; ``Engine.close`` returns), instead of hanging.

Every store write that is retried is idempotent (see the stores' docstrings): a retry after a
lost acknowledgement is a no-op that returns the first outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import StoreError

T = TypeVar("T")

#: how long a store keeps retrying an operation against a database that does not answer,
#: unless the store is given another deadline (seconds)
DEFAULT_RETRY_DEADLINE = 30.0
FIRST_DELAY = 0.05
MAX_DELAY = 2.0


class Backoff:
    """Delays between the attempts of one operation, and when to give up.

    The deadline counts from when the Backoff is made: make it just before the first
    attempt, so that attempts which themselves take long (a connection that does not answer)
    count too.

    Args:
        what: what is retried, for the messages ("PostgreSQL write", "SQLite write").
        deadline: seconds from the first attempt after which :meth:`next_delay` raises
            StoreError; ``None`` retries forever (only for background loops that nobody waits
            for, such as a LISTEN connection).
    """

    __slots__ = ("_delay", "_max_delay", "_started", "deadline", "what")

    def __init__(
        self,
        what: str,
        deadline: float | None = DEFAULT_RETRY_DEADLINE,
        *,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
    ):
        self.what = what
        self.deadline = deadline
        self._delay = first_delay
        self._max_delay = max_delay
        self._started = time.monotonic()

    def left(self, most: float) -> float:
        """How long the next attempt may take: ``most``, or less when the deadline is nearer
        (never below a small floor, so that an attempt is at least made)."""
        if self.deadline is None:
            return most
        remaining = self.deadline - (time.monotonic() - self._started)
        return max(0.05, min(most, remaining))

    def next_delay(self, cause: BaseException) -> float:
        """The pause before the next attempt, after ``cause`` failed this one.

        Raises:
            StoreError: the operation has failed for longer than the deadline (from ``cause``).
        """
        failing_for = time.monotonic() - self._started
        if self.deadline is not None and failing_for + self._delay > self.deadline:
            raise StoreError(
                f"{self.what} failed for {failing_for:.1f}s and gave up after its "
                f"{self.deadline:g}s retry deadline: {type(cause).__name__}: {cause}; check "
                "that the database is up and reachable (nothing was lost: sagas go on from "
                "their journals once it answers)"
            ) from cause
        delay = self._delay
        self._delay = min(self._delay * 2, self._max_delay)
        return delay


async def retry(
    attempt: Callable[[bool], Awaitable[T]],
    *,
    what: str,
    transient: Callable[[BaseException], bool],
    deadline: float | None = DEFAULT_RETRY_DEADLINE,
    log: logging.Logger | None = None,
) -> T:
    """Call ``attempt(retrying)`` until it succeeds; retry only errors ``transient`` accepts,
    with backoff, until ``deadline``; raise any other error at once.

    ``retrying`` is False on the first call and True on the next ones, so that an attempt can
    recognise the effect of an earlier attempt whose answer was lost.
    """
    backoff = Backoff(what, deadline)
    retrying = False
    while True:
        try:
            # an attempt that hangs (a connection gone silent) is cut at the deadline too
            async with asyncio.timeout(None if deadline is None else backoff.left(deadline)):
                return await attempt(retrying)
        except Exception as exc:
            if not transient(exc):
                raise
            delay = backoff.next_delay(exc)
            if log is not None:
                log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
            retrying = True
            await asyncio.sleep(delay)
