"""Cron schedules of the Engine: ``engine.schedule`` declares one, and every worker fires the
ticks that fell due at each poll (and wakes at the next tick). Mixed into
:class:`~sagakit.engine.engine.Engine`.

A tick fires exactly once however many workers share the database: the saga it starts is
named after it (``nightly-report@2026-12-06T10:05:00+01:00``), and the store creates that saga
in the transaction that moves the schedule past the tick, only if no other worker moved it
first (see :mod:`sagakit.stores.scheduling`). Which ticks fire after a time with no worker
running is the schedule's catch-up policy:

* ``latest`` (default): the latest missed tick fires once, the others are passed over;
* ``skip``: none of the missed ticks fires; a tick counts as missed when it is more than
  :func:`on_time_grace` late (the default: 10 s, or two poll intervals if that is longer);
* ``all``: every missed tick fires, oldest first, at most :data:`CATCH_UP_ALL_LIMIT` of them
  (the latest ones; older ones are passed over, with a warning).

A paused schedule fires nothing; the ticks that fall while it is paused are passed over, not
missed: on resume it fires from the next tick on, and its catch-up policy counts missed ticks
from the resume.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .. import serde
from ..errors import OutputNotSerializableError, SagaConflictError, SagaValidationError
from ..queues import Queue
from ..stores.base import NewSaga, Store
from ..stores.scheduling import CATCH_UP_POLICIES, Schedule, ScheduleState

if TYPE_CHECKING:
    from ..workflows import SagaWorkflow

log = logging.getLogger("sagakit.engine")

W = TypeVar("W")

#: the most missed ticks ``catch_up="all"`` fires after downtime (the latest ones)
CATCH_UP_ALL_LIMIT = 100
#: a tick fired later than this after it fell due counts as missed (``catch_up="skip"``)
ON_TIME_GRACE = 10.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")


# -- cron arithmetic (ticks are whole seconds, as epoch floats) -----------------------------


def check_cron(cron: object) -> str:
    """``cron`` if croniter reads it as 5 fields (or 6, seconds last, or an @-macro), else
    SagaValidationError saying what to write."""
    fields = cron.split() if isinstance(cron, str) else []
    if (
        not isinstance(cron, str)
        or not (len(fields) in (5, 6) or (len(fields) == 1 and fields[0].startswith("@")))
        or not croniter.is_valid(cron)
    ):
        raise SagaValidationError(
            f"invalid cron expression {cron!r}: write 5 fields, minute hour day-of-month month "
            "day-of-week (e.g. '*/5 * * * *', '0 3 * * mon-fri'), or 6 with seconds last "
            "('* * * * * */10'), or a macro such as '@hourly'"
        )
    return " ".join(fields)


def check_timezone(timezone: object) -> ZoneInfo:
    """The zone named ``timezone`` (an IANA name), else SagaValidationError."""
    try:
        if not isinstance(timezone, str) or not timezone:
            raise ValueError(timezone)
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SagaValidationError(
            f"unknown time zone {timezone!r}: give an IANA name such as 'UTC', "
            "'Europe/Paris' or 'America/New_York'"
        ) from exc


def first_tick_from(cron: str, zone: ZoneInfo, moment: float) -> float:
    """The first tick of ``cron`` at or after ``moment``."""
    start = datetime.fromtimestamp(math.ceil(moment) - 0.5, zone)
    return float(croniter(cron, start).get_next(datetime).timestamp())


def last_tick_until(cron: str, zone: ZoneInfo, moment: float) -> float:
    """The last tick of ``cron`` at or before ``moment``."""
    start = datetime.fromtimestamp(math.floor(moment) + 0.5, zone)
    return float(croniter(cron, start).get_prev(datetime).timestamp())


def tick_after(cron: str, zone: ZoneInfo, tick: float) -> float:
    """The tick of ``cron`` that follows ``tick``."""
    start = datetime.fromtimestamp(tick, zone)
    return float(croniter(cron, start).get_next(datetime).timestamp())


def tick_saga_id(name: str, zone: ZoneInfo, tick: float) -> str:
    """The id of the saga a tick starts: the schedule's name and the tick's local time with
    its offset (two ticks an autumn DST change gives the same wall time differ by offset)."""
    return f"{name}@{datetime.fromtimestamp(tick, zone).isoformat(timespec='seconds')}"


def next_tick_of(state: ScheduleState, now: float) -> float | None:
    """The next tick of a stored schedule that will fire (maybe past, when it is due and no
    worker fired it yet); None when it is paused."""
    if state.paused:
        return None
    zone = check_timezone(state.timezone)
    return first_tick_from(state.cron, zone, state.fire_from)


def on_time_grace(poll_interval: timedelta) -> float:
    """How late a tick may fire before ``catch_up="skip"`` counts it as missed."""
    return max(ON_TIME_GRACE, 2 * poll_interval.total_seconds())


def _epoch(now: datetime | float | None, clock: Callable[[], float]) -> float:
    if now is None:
        return clock()
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise SagaValidationError(
                f"now must be a timezone-aware datetime, got {now!r}: "
                "datetime(2027, 1, 1, 9, 0, tzinfo=timezone.utc)"
            )
        return now.timestamp()
    return float(now)


class SchedulingMixin:
    """Cron schedules of the Engine."""

    _schedules: dict[str, Schedule]
    _undeclared_schedules: set[str]
    _schedule_wake: asyncio.TimerHandle | None
    #: what "now" is for schedules (epoch seconds); tests replace it
    schedule_clock: Callable[[], float]
    lease: timedelta
    poll_interval: timedelta
    max_payload_bytes: int | None

    if TYPE_CHECKING:  # provided by Engine

        def _store_or_raise(self) -> Store: ...

        def _resolve(self, workflow: SagaWorkflow[Any, Any] | str) -> SagaWorkflow[Any, Any]: ...

        def _queue_named(self, queue: Queue | str) -> Queue: ...

        async def _declare_queues(self) -> None: ...

        def version_of(self, workflow: SagaWorkflow[Any, Any]) -> str | None: ...

        def _poke(self) -> None: ...

    def schedule(
        self,
        name: str,
        cron: str,
        workflow: SagaWorkflow[Any, Any] | str,
        inp: Any = None,
        *,
        timezone: str = "UTC",
        catch_up: str = "latest",
        queue: Queue | str | None = None,
    ) -> Schedule:
        """Start a saga of ``workflow`` with input ``inp`` at every tick of ``cron``, read in
        ``timezone``: exactly one saga per tick across every worker sharing the database, with
        the id ``NAME@<tick's local ISO time>`` (``nightly-report@2026-12-06T10:05:00+01:00``).

        The schedule is written to the store by this engine's worker (at its next poll) and
        fired by every worker that declares it (``Engine(worker=False)`` fires nothing in the
        background: see :meth:`fire_schedules`). Declaring it again with a different
        definition in a later release replaces the stored one (the last declaration wins;
        with a new cron or time zone, ticks count from then on).

        Args:
            name: the schedule's name (letters, digits, ``_ . : -``; up to 128).
            cron: 5 fields (minute hour day-of-month month day-of-week), 6 with seconds last,
                or a macro (``@hourly``, ``@daily``); read by croniter.
            workflow: a workflow (registered here if it is not yet) or a registered one's name.
            inp: the input of every tick's saga, validated now.
            timezone: an IANA time zone name; ticks follow its daylight-saving changes.
            catch_up: which ticks missed while no worker ran fire: ``"latest"`` (the latest
                once), ``"skip"`` (none) or ``"all"`` (each, up to the latest 100).
            queue: enqueue each tick's saga in this queue (a :class:`~sagakit.Queue`, or a
                registered one's name; not a partitioned one) instead of starting it.

        Returns the declared :class:`~sagakit.Schedule`.

        Raises:
            SagaValidationError: a bad name, cron, time zone, policy, queue or input (nothing
                is declared or written).
            SagaConflictError: another schedule of that name is declared here.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SagaValidationError(
                f"invalid schedule name {name!r}: use 1 to 128 letters, digits and _ . : - "
                "(starting with a letter or digit), e.g. 'nightly-report'"
            )
        cron = check_cron(cron)
        check_timezone(timezone)
        if catch_up not in CATCH_UP_POLICIES:
            raise SagaValidationError(
                f"unknown catch_up policy {catch_up!r}: write catch_up='latest' (run the latest "
                "missed tick once), 'skip' (run none of the missed ticks) or 'all' (run each "
                f"missed tick, up to the latest {CATCH_UP_ALL_LIMIT})"
            )
        queue_name = None
        if queue is not None:
            declared = self._queue_named(queue)
            if declared.partitioned:
                raise SagaValidationError(
                    f"queue {declared.name!r} is partitioned, and a schedule's sagas have no "
                    "partition key: give the schedule a queue that is not partitioned"
                )
            queue_name = declared.name
        wf = self._resolve(workflow)
        value = wf.input.validate(inp)
        try:
            input_json = serde.dumps(
                value, what=f"the input of schedule {name!r}", limit=self.max_payload_bytes
            )
        except OutputNotSerializableError as exc:
            raise SagaValidationError(exc.message) from exc
        made = Schedule(
            name, cron, wf.name, self.version_of(wf), input_json, timezone, catch_up, queue_name
        )
        known = self._schedules.get(name)
        if known is not None and known != made:
            raise SagaConflictError(
                f"another schedule is already declared as {name!r} in this engine ({known.cron!r}"
                f" starting {known.workflow!r}); give this one another name"
            )
        if known is None:
            self._schedules[name] = made
            self._undeclared_schedules.add(name)
            self._poke()
        return made

    def scheduled(
        self,
        name: str,
        cron: str,
        inp: Any = None,
        *,
        timezone: str = "UTC",
        catch_up: str = "latest",
        queue: Queue | str | None = None,
    ) -> Callable[[W], W]:
        """:meth:`schedule` as a decorator of a workflow (put it above ``@saga_workflow``);
        the workflow is returned unchanged."""

        def decorate(workflow: W) -> W:
            self.schedule(
                name,
                cron,
                workflow,  # type: ignore[arg-type]
                inp,
                timezone=timezone,
                catch_up=catch_up,
                queue=queue,
            )
            return workflow

        return decorate

    @property
    def schedules(self) -> dict[str, Schedule]:
        """The schedules declared here, by name (``engine.admin.schedules()`` lists the
        store's, with where each stands)."""
        return dict(self._schedules)

    async def fire_schedules(self, now: datetime | float | None = None) -> list[str]:
        """Fire the ticks of this engine's schedules that are due at ``now`` (default: the
        engine's clock), under their catch-up policies; return the ids of the sagas this call
        started (a tick another worker fired first is not among them). The background worker
        calls this at every poll; a program that runs its own loop
        (``Engine(worker=False)``) may call it instead.

        The sagas are created PENDING (or QUEUED, for a schedule with a queue), for any worker
        that serves their workflow to run.
        """
        if not self._schedules:
            return []
        moment = _epoch(now, self.schedule_clock)
        store = self._store_or_raise()
        if self._undeclared_schedules:
            await self._declare_queues()
            for name in sorted(self._undeclared_schedules):
                await store.declare_schedule(self._schedules[name], moment)
                self._undeclared_schedules.discard(name)
        fired: list[str] = []
        for state in await store.due_schedules(sorted(self._schedules), moment):
            fired += await self._fire(store, state, moment)
        return fired

    async def _fire(self, store: Store, state: ScheduleState, now: float) -> list[str]:
        """Fire ``state``'s due ticks under its policy (see the module docstring)."""
        zone = check_timezone(state.timezone)
        cron = state.cron
        first = first_tick_from(cron, zone, state.fire_from)
        if first > now:  # resumed or declared between ticks: only record the next one
            await store.fire_schedule(state.name, state.fire_from, first, None, None)
            return []
        latest = last_tick_until(cron, zone, now)
        after = tick_after(cron, zone, latest)
        ticks = [latest]
        if state.catch_up == "skip" and now - latest > on_time_grace(self.poll_interval):
            ticks = []
        elif state.catch_up == "all" and first < latest:
            ticks = [first]
            while ticks[-1] < latest and len(ticks) <= CATCH_UP_ALL_LIMIT:
                ticks.append(tick_after(cron, zone, ticks[-1]))
            if len(ticks) > CATCH_UP_ALL_LIMIT:
                ticks = [latest]
                while len(ticks) < CATCH_UP_ALL_LIMIT:
                    back = datetime.fromtimestamp(ticks[0], zone)
                    ticks.insert(0, float(croniter(cron, back).get_prev(datetime).timestamp()))
                log.warning(
                    "schedule %s missed more than %d ticks: the latest %d fire, older ones are "
                    "passed over",
                    state.name,
                    CATCH_UP_ALL_LIMIT,
                    CATCH_UP_ALL_LIMIT,
                    extra={"schedule": state.name},
                )
        if not ticks:
            log.info(
                "schedule %s passes over the ticks it missed (catch_up='skip')",
                state.name,
                extra={"schedule": state.name},
            )
            await store.fire_schedule(state.name, state.fire_from, after, None, None)
            return []
        fired: list[str] = []
        expect = state.fire_from
        for i, tick in enumerate(ticks):
            following = ticks[i + 1] if i + 1 < len(ticks) else after
            saga = NewSaga(
                saga_id=tick_saga_id(state.name, zone, tick),
                name=state.workflow,
                input=state.input,
                owner=None,
                lease_seconds=self.lease.total_seconds(),
                version=state.version,
                queue=state.queue,
            )
            if not await store.fire_schedule(state.name, expect, following, tick, saga):
                break  # another worker moved the schedule: it fires the rest
            fired.append(saga.saga_id)
            expect = following
        if fired:
            self._poke()  # claim them at once (here, or another worker at its next look)
        return fired

    async def _fire_schedules_round(self) -> None:
        """The worker's part: fire what is due, then wake at the next tick."""
        if not self._schedules:
            return
        await self.fire_schedules()
        now = self.schedule_clock()
        upcoming = [
            tick_after(s.cron, check_timezone(s.timezone), math.floor(now))
            for s in self._schedules.values()
        ]
        if self._schedule_wake is not None:
            self._schedule_wake.cancel()
        delay = max(0.0, min(upcoming) - self.schedule_clock()) + 0.002
        self._schedule_wake = asyncio.get_running_loop().call_later(delay, self._poke)
