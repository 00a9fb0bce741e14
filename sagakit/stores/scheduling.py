"""Cron schedules as the store keeps them (table ``saga_schedules``): the definition code
declares, and where the schedule stands. No cron arithmetic here: the engine computes ticks
(:mod:`sagakit.engine.scheduling`), the store only moves a schedule forward atomically.

A schedule's ``fire_from`` is the earliest time a tick of it may still fire: every tick before
it was fired or passed over (by the catch-up policy, or while the schedule was paused). Firing
a tick moves ``fire_from`` past it *conditionally* (only from the value the firing worker read)
in the transaction that creates the tick's saga, so a tick fires once however many workers
look at the same moment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: what a schedule does with the ticks it missed while no worker ran (see docs/flow-control.md)
CATCH_UP_POLICIES = ("latest", "skip", "all")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A cron schedule as declared in code (``engine.schedule``)."""

    name: str
    #: 5 fields (minute hour day month weekday), or 6 with seconds last
    cron: str
    #: the workflow each tick starts, and its version (``None``: unversioned)
    workflow: str
    version: str | None
    #: the saga input of every tick, as JSON text
    input: str
    #: the IANA time zone the cron is read in (``Europe/Paris``, ``UTC``)
    timezone: str
    #: ``latest``, ``skip`` or ``all`` (:data:`CATCH_UP_POLICIES`)
    catch_up: str
    #: the queue each tick's saga is enqueued in (``None``: started directly)
    queue: str | None = None


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A schedule as the store knows it: its definition (the last one declared by any
    worker) and where it stands."""

    name: str
    cron: str
    workflow: str
    version: str | None
    input: str
    timezone: str
    catch_up: str
    queue: str | None
    #: paused by an operator: no tick fires until it is resumed
    paused: bool
    #: the latest tick fired (epoch seconds), None before the first
    last_tick: float | None
    #: no tick before this time fires any more (see the module docstring)
    fire_from: float
    created_at: float
    updated_at: float
    #: the next tick that will fire (epoch seconds; it may be past, when no worker ran it yet),
    #: computed from the cron by ``engine.admin.schedules()``; None when paused or unknown
    next_tick: float | None = None

    @property
    def definition(self) -> Schedule:
        return Schedule(
            self.name,
            self.cron,
            self.workflow,
            self.version,
            self.input,
            self.timezone,
            self.catch_up,
            self.queue,
        )


def schedule_columns(schedule: Schedule) -> dict[str, Any]:
    """A definition as the ``saga_schedules`` columns (``''`` for no version)."""
    return {
        "name": schedule.name,
        "cron": schedule.cron,
        "workflow": schedule.workflow,
        "version": schedule.version or "",
        "input": schedule.input,
        "timezone": schedule.timezone,
        "catch_up": schedule.catch_up,
        "queue": schedule.queue,
    }


#: the columns the stores select, in ScheduleState's field order
STATE_COLUMNS = (
    "name, cron, workflow, version, input, timezone, catch_up, queue, paused, last_tick, "
    "fire_from, created_at, updated_at"
)


def state_from_row(row: Sequence[Any]) -> ScheduleState:
    """A ScheduleState from a row of :data:`STATE_COLUMNS` (SQLite keeps booleans as 0/1)."""
    values = list(row)
    values[3] = values[3] or None
    values[8] = bool(values[8])
    return ScheduleState(*values)
