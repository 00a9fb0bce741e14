"""The time the engine and the memory store read: the system clock, or a test's virtual one.

Every "now" the engine takes (a timer's due time, a wait's timeout, a saga's deadline, a retry
backoff, a lease, a delayed start, a schedule's tick, ``saga.now()``) comes from the engine's
:class:`Clock`. ``Engine(clock=...)`` replaces it; the memory store reads the same clock
(``MemoryStore(url, clock=...)``, or the engine gives its own to a memory store it opens). The
SQLite and PostgreSQL stores keep the real time, so skipping time needs the memory store.

:class:`VirtualClock` is the clock of :class:`sagakit.testing.SagaTestEnvironment`: it stands
still until a test moves it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

from .errors import SagaError


@runtime_checkable
class Clock(Protocol):
    """Where the engine reads the time."""

    def now(self) -> float:
        """The current time, in seconds since the epoch (as :func:`time.time`)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Pause the caller for ``seconds`` of this clock's time (the engine sleeps this way
        only for short in-memory retry backoffs; long waits are durable timers)."""
        ...


class SystemClock:
    """The real time: :func:`time.time`, and :func:`asyncio.sleep`."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


#: the clock of every engine and memory store not given another one
SYSTEM_CLOCK = SystemClock()


class VirtualClock:
    """A clock that moves only when told to (:meth:`advance`, :meth:`set`), for tests.

    It starts at ``start`` (epoch seconds; default: the real time when it is made), so that
    the sagas of a test get plausible timestamps. :meth:`sleep` does not wait: it moves the
    clock on by the pause (an in-memory retry backoff of a second costs no real second).
    """

    def __init__(self, start: float | None = None):
        self._now = time.time() if start is None else float(start)
        self._reads = 0

    def now(self) -> float:
        self._reads += 1
        return self._now

    @property
    def reads(self) -> int:
        """How many times :meth:`now` was called (a test environment uses it to know
        whether anything saw a moment)."""
        return self._reads

    async def sleep(self, seconds: float) -> None:
        target = self._now + max(0.0, seconds)
        await asyncio.sleep(0)  # let whatever else is ready run first, as a real pause would
        self._now = max(self._now, target)

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        if seconds < 0:
            raise SagaError(
                f"a clock only moves forward; advance() got {seconds} seconds: "
                "give a duration of zero or more"
            )
        self._now += seconds

    def set(self, moment: float) -> None:
        """Move the clock to ``moment`` (epoch seconds), which is not before now."""
        if moment < self._now:
            raise SagaError(
                f"a clock only moves forward: it reads {self._now}, set() got {moment}; "
                "give a later moment"
            )
        self._now = float(moment)

    def _rewind(self, moment: float) -> None:
        """Move the clock back to ``moment``: only for a move nobody has seen yet (no
        :meth:`now` since), which is then made again step by step."""
        self._now = float(moment)

    def __repr__(self) -> str:
        return f"VirtualClock({self._now!r})"


__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "VirtualClock"]
