"""The test environment: an ordinary Engine on a virtual clock, with crash injection.

.. code-block:: python

    async with SagaTestEnvironment(workflows=[checkout]) as env:
        handle = await env.engine.start(checkout, {"customer_id": "c1", "amount": 40})
        await env.run_until_idle()          # a week-long saga.sleep passes at once
        assert await handle.result() == ...

On the memory store (the default) time stands still until the test moves it:
:meth:`SagaTestEnvironment.run_until_idle` runs whatever is due and, when nothing can run any
more, jumps the clock to the next moment something falls due (a sleep, a wait's timeout, a
deadline, a retry backoff, a dead run's lease, a delayed start, a queue's rate window, a
schedule's tick); :meth:`SagaTestEnvironment.advance` moves it by a given duration.
:meth:`SagaTestEnvironment.crash_at` makes a run die at a step, as if its process were killed,
and the environment's worker replays it from the journal.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..clock import VirtualClock
from ..engine.crashes import ProcessCrash, StepPoint, When
from ..engine.engine import Engine
from ..engine.scheduling import next_tick_of
from ..errors import SagaError, SagaNotFoundError
from ..history import history_to_json, read_history
from ..objects import SagaVirtualObject
from ..queues import Queue
from ..stores.base import NEVER, SagaFilter, SagaStatus
from ..workflows import SagaWorkflow

#: the store choices of the environment
STORES = ("memory", "sqlite")
#: on the SQLite store (real time), the longest run_until_idle waits for something due
_REAL_WAIT = 5.0
#: the statuses whose saga may fall due at a moment (a timer, a lease, a delayed start)
_WAITING = (
    SagaStatus.PENDING,
    SagaStatus.RUNNING,
    SagaStatus.COMPENSATING,
    SagaStatus.SUSPENDED,
    SagaStatus.QUEUED,
)
_LISTED = 1_000_000


@dataclass(frozen=True, slots=True)
class CrashPoint:
    """A crash planned with :meth:`SagaTestEnvironment.crash_at`."""

    step: str
    when: When
    times: int
    saga_id: str | None


@dataclass(frozen=True, slots=True)
class Crash:
    """A simulated crash that happened: where the run died."""

    saga_id: str
    step: str
    seq: int
    attempt: int
    when: When


class Advance:
    """What :meth:`SagaTestEnvironment.advance` returns: the clock has moved already; awaiting
    it also runs, in time order, what fell due meanwhile (and returns the ids of the sagas
    that ran)."""

    def __init__(self, env: SagaTestEnvironment, start: float, target: float, reads: int):
        self._env = env
        self._start = start
        self._target = target
        self._reads = reads

    def __await__(self) -> Generator[Any, None, list[str]]:
        return self._env._advanced(self._start, self._target, self._reads).__await__()


class SagaTestEnvironment:
    """An :class:`~sagakit.Engine` for a user's tests, with time skipping and crash injection.

    Use it as ``async with SagaTestEnvironment(workflows=[...]) as env:``; ``env.engine`` is
    an ordinary, open Engine (its background worker runs): start sagas, send signals, read
    results and use its admin API as in production.

    Args:
        workflows: workflows, virtual objects and queues to register (more may be registered
            on ``env.engine`` later).
        store: ``"memory"`` (the default: a fresh in-memory store, on a
            :class:`~sagakit.clock.VirtualClock` that skips time) or ``"sqlite"`` (a
            temporary SQLite file, deleted at the end, on the real clock: no time skipping,
            and a dead run's lease of ``lease`` runs out in real time).
        start: the virtual clock's first moment (a timezone-aware datetime; default: now).
        lease: the engine's lease (default: 30 s on the memory store, where it passes on the
            virtual clock; 1 s on SQLite, so that a crashed run is taken over quickly).
        engine_options: any other :class:`~sagakit.Engine` keyword (``services=``,
            ``observers=``, ``app_version=``, ...).
    """

    def __init__(
        self,
        workflows: Iterable[SagaWorkflow[Any, Any] | SagaVirtualObject | Queue] = (),
        *,
        store: str = "memory",
        start: datetime | None = None,
        lease: timedelta | None = None,
        **engine_options: Any,
    ):
        if store not in STORES:
            raise SagaError(
                f"unknown test store {store!r}: use store='memory' (time skipping) or "
                "store='sqlite' (a temporary SQLite file, real time)"
            )
        if start is not None and (not isinstance(start, datetime) or start.tzinfo is None):
            raise SagaError(
                f"start must be a timezone-aware datetime, got {start!r}: "
                "start=datetime(2027, 1, 1, tzinfo=timezone.utc)"
            )
        for forbidden in ("url", "store", "clock"):
            if forbidden in engine_options:
                raise SagaError(
                    f"SagaTestEnvironment chooses the engine's {forbidden}: pass store='memory' "
                    "or store='sqlite' instead"
                )
        self.store_kind = store
        self._folder: Path | None = None
        self._clock: VirtualClock | None = None
        if store == "memory":
            self._clock = VirtualClock(None if start is None else start.timestamp())
            url = "memory://"
            lease = lease or timedelta(seconds=30)
        else:
            if start is not None:
                raise SagaError("start= sets the virtual clock, which only the memory store has")
            self._folder = Path(tempfile.mkdtemp(prefix="sagakit-test-"))
            url = f"sqlite:///{self._folder / 'sagas.db'}"
            lease = lease or timedelta(seconds=1)
        self._engine = Engine(url, lease=lease, clock=self._clock, **engine_options)
        self._workflows = list(workflows)
        self._plans: list[list[Any]] = []  # [CrashPoint, times left]
        #: the simulated crashes so far, oldest first
        self.crashes: list[Crash] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> SagaTestEnvironment:
        if self._workflows:
            self._engine.register(*self._workflows)
        self._engine.step_hook = self._at_step
        await self._engine.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the engine and delete the temporary SQLite file, if any."""
        try:
            await self._engine.close()
        finally:
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None

    @property
    def engine(self) -> Engine:
        """The environment's Engine (open inside ``async with``)."""
        return self._engine

    @property
    def clock(self) -> VirtualClock | None:
        """The virtual clock (None on the SQLite store, which keeps the real time)."""
        return self._clock

    @property
    def time_skipping(self) -> bool:
        """Whether the clock is virtual (the memory store)."""
        return self._clock is not None

    def now(self) -> datetime:
        """The engine's current time (UTC): what ``saga.now()`` would read."""
        return datetime.fromtimestamp(self._engine.clock.now(), UTC)

    # -- time --------------------------------------------------------------------------------

    def advance(self, duration: timedelta | float) -> Advance:
        """Move the virtual clock ``duration`` (a timedelta, or seconds) forward, at once.

        Without ``await`` it only moves the clock (the background worker then takes what
        fell due). ``await env.advance(d)`` instead lets the time pass in order: every timer,
        timeout, retry backoff, lease and schedule tick that falls within ``d`` fires at its
        own moment, each run going as far as it can, and returns the ids of the sagas that
        ran (see :meth:`run_until_idle`).

        Raises:
            SagaError: the store is SQLite (real time), or ``duration`` is negative.
        """
        clock = self._virtual("advance")
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
        if seconds < 0:
            raise SagaError(f"advance() takes a duration of zero or more, got {duration!r}")
        start = clock.now()
        clock.advance(seconds)
        target = clock.now()
        self._engine._poke()
        return Advance(self, start, target, clock.reads)

    async def _advanced(self, start: float, target: float, reads: int) -> list[str]:
        clock = self._virtual("advance")
        if clock.reads == reads:
            # nothing saw the moved clock yet (awaited at once): the time passes in order
            # instead, so that each timer and schedule tick fires at its own moment
            clock._rewind(start)
        return await self._run(target, 1000)

    async def run_until_idle(
        self, *, until: datetime | timedelta | None = None, max_jumps: int = 1000
    ) -> list[str]:
        """Run the engine's sagas until none can go on without an outside event.

        Repeatedly: wait for the runs under way, fire due schedule ticks, run the due sagas;
        when nothing is due and nothing runs, jump the virtual clock to the next moment
        something falls due (a sleep, a wait's timeout, a deadline, a retry backoff, a dead
        run's lease, a delayed start, a queue's rate window, a schedule's tick) and go on.
        Returns the ids of the sagas that ran (each once, in the order they first ran) when
        the rest waits for a signal, a promise, an operator or nothing at all.

        Args:
            until: stop jumping there (a timezone-aware datetime, or a timedelta from now):
                the clock ends at ``until``, and what is due later stays waiting.
            max_jumps: the most clock jumps (a schedule always has a next tick: give it an
                ``until``).

        Raises:
            SagaError: more than ``max_jumps`` jumps, or (SQLite store) something falls due
                later than the environment waits in real time.
        """
        return await self._run(self._until(until), max_jumps)

    async def _run(self, stop: float | None, max_jumps: int) -> list[str]:
        engine = self._engine
        ran: dict[str, None] = {}
        jumps = 0
        reached = False  # the clock is at ``stop``: run what is due there, then stop
        while True:
            await self._settle()
            await engine.fire_schedules()
            ids = await engine.run_due(limit=1000)
            ran.update(dict.fromkeys(ids))
            if ids or engine._tasks:
                continue
            now = engine.clock.now()
            due = await self._next_due(now)
            if reached or due is None or (stop is not None and due > stop):
                if not reached and stop is not None and self._clock is not None and stop > now:
                    self._clock.set(stop)
                    reached = True
                    continue
                return list(ran)
            jumps += 1
            if jumps > max_jumps:
                raise SagaError(
                    f"run_until_idle jumped the clock {max_jumps} times and something still "
                    f"falls due at {_moment(due)} (a schedule never ends, a saga loops on "
                    "timers): pass until=... to stop at a moment, or a larger max_jumps"
                )
            await self._pass_time(due)

    async def _pass_time(self, due: float) -> None:
        """Reach ``due`` (just past it: the store takes what is due strictly before now)."""
        moment = math.nextafter(due, math.inf)
        if self._clock is not None:
            self._clock.set(max(self._clock.now(), moment))
            return
        wait = moment - self._engine.clock.now()
        if wait > _REAL_WAIT:
            raise SagaError(
                f"something falls due at {_moment(due)}, {wait:.0f}s from now, and the SQLite "
                "test store keeps the real time: use SagaTestEnvironment(store='memory') (the "
                "default) to skip time"
            )
        await asyncio.sleep(wait + 0.01)

    async def _settle(self) -> None:
        """Wait until no run of this engine is under way (runs start runs: children)."""
        tasks = self._engine._tasks
        while tasks:
            await asyncio.wait(list(tasks.values()))

    async def _next_due(self, now: float) -> float | None:
        """The next moment after ``now`` something of this engine falls due."""
        store = self._engine._store_or_raise()
        served = {name for name, _ in self._engine.served}
        moments: list[float] = []
        for status in _WAITING:
            for record in await store.list_sagas(SagaFilter(status=status.value), _LISTED):
                if record.name in served and record.lease_expires_at < NEVER:
                    moments.append(record.lease_expires_at)
        if store.queue_retry_at is not None and math.isfinite(store.queue_retry_at):
            moments.append(store.queue_retry_at)
        declared = self._engine.schedules
        for state in await store.list_schedules():
            tick = next_tick_of(state, now) if state.name in declared else None
            if tick is not None:
                moments.append(tick)
        later = [m for m in moments if m > now]
        return min(later) if later else None

    def _until(self, until: datetime | timedelta | None) -> float | None:
        if until is None:
            return None
        if isinstance(until, timedelta):
            return self._engine.clock.now() + until.total_seconds()
        if not isinstance(until, datetime) or until.tzinfo is None:
            raise SagaError(
                f"until must be a timedelta or a timezone-aware datetime, got {until!r}"
            )
        return until.timestamp()

    def _virtual(self, what: str) -> VirtualClock:
        if self._clock is None:
            raise SagaError(
                f"{what}() moves the virtual clock, and the SQLite test store keeps the real "
                "time: use SagaTestEnvironment(store='memory') (the default) to skip time"
            )
        return self._clock

    # -- running -----------------------------------------------------------------------------

    async def run(
        self,
        workflow: SagaWorkflow[Any, Any] | str,
        inp: Any,
        saga_id: str | None = None,
    ) -> Any:
        """Start a saga, :meth:`run_until_idle`, and return its result (or raise why it did
        not complete, as ``handle.result()`` does).

        Raises:
            SagaError: the saga has not ended once nothing can run any more (it waits for a
                signal, a promise or an operator): start it with ``env.engine.start`` and
                send what it waits for.
        """
        handle = await self._engine.start(workflow, inp, saga_id)
        await self.run_until_idle()
        record = await self._engine._store_or_raise().load_saga(handle.saga_id)
        if record is None:  # pragma: no cover - deleted by a test meanwhile
            raise SagaNotFoundError(handle.saga_id)
        if not SagaStatus(record.status).is_terminal:
            raise SagaError(
                f"saga {handle.saga_id!r} is {record.status} and nothing more can run: it "
                "waits for a signal, a promise or an operator; start it with "
                "env.engine.start(...), send what it waits for, then env.run_until_idle()"
            )
        return await handle.result()

    async def export(self, saga_id: str) -> dict[str, Any]:
        """A saga's recorded history as ``sagakit export SAGA_ID`` prints it (a JSON-ready
        dict): save it as a test fixture for :func:`~sagakit.testing.replay`."""
        store = self._engine._store_or_raise()
        if await store.load_saga(saga_id) is None:
            raise SagaNotFoundError(saga_id)
        return history_to_json(await read_history(store, saga_id))

    # -- crashes -----------------------------------------------------------------------------

    def crash_at(
        self, step: str, when: When = "after", *, times: int = 1, saga_id: str | None = None
    ) -> CrashPoint:
        """Make the next run that reaches ``step`` die there, as if its process were killed.

        ``when="after"`` (the default): the step's body ran (its side effect happened) but
        its result was not journaled; ``when="before"``: the attempt's body did not start.
        The dead run writes nothing more and keeps its lease; once the lease expires (at the
        next :meth:`run_until_idle`, on the virtual clock) the environment's worker takes
        the saga over and replays it from its journal, so an ``"after"`` crash runs the
        step's body again: the test then checks the step is idempotent. Each plan fires
        ``times`` times (each time a run reaches the step), for any saga or only
        ``saga_id``; :attr:`crashes` lists the crashes that happened.
        """
        if when not in ("before", "after"):
            raise SagaError(f"crash_at(when=...) is 'before' or 'after', got {when!r}")
        if times < 1:
            raise SagaError(f"crash_at(times=...) is 1 or more, got {times}")
        plan = CrashPoint(step, when, times, saga_id)
        self._plans.append([plan, times])
        return plan

    def _at_step(self, point: StepPoint) -> None:
        """The engine's step hook (see sagakit.engine.crashes)."""
        for planned in self._plans:
            plan: CrashPoint = planned[0]
            if (
                planned[1] > 0
                and plan.step == point.step
                and plan.when == point.when
                and plan.saga_id in (None, point.saga_id)
            ):
                planned[1] -= 1
                self.crashes.append(
                    Crash(point.saga_id, point.step, point.seq, point.attempt, point.when)
                )
                raise ProcessCrash(point)


def _moment(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


__all__ = ["STORES", "Advance", "Crash", "CrashPoint", "SagaTestEnvironment"]
