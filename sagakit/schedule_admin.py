"""The operator's hand on cron schedules: list them with their next and last ticks, pause and
resume them (``engine.admin.schedules``, ``pause_schedule``, ``resume_schedule``).

A pause is kept in the schedule's row: every worker sees it at its next look, and it outlives
restarts and redeploys (a worker that declares the schedule again leaves it) until it is
resumed. Ticks that fall while a schedule is paused are passed over: on resume it fires from
its next tick on (see :mod:`sagakit.engine.scheduling`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from .engine.scheduling import next_tick_of
from .errors import SagaValidationError, ScheduleNotFoundError
from .stores.base import Store
from .stores.scheduling import ScheduleState

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["ScheduleAdmin"]

log = logging.getLogger("sagakit.admin")


class ScheduleAdmin:
    """The schedule part of :class:`~sagakit.SagaAdmin` (``engine.admin``)."""

    if TYPE_CHECKING:  # provided by SagaAdmin
        _engine: Engine

        def _store(self) -> Store: ...

    async def schedules(self) -> list[ScheduleState]:
        """Every schedule in the database, by name: its definition (the last one declared),
        whether it is paused, its last tick fired and (``next_tick``) the next one that will
        fire, both epoch seconds."""
        now = self._engine.schedule_clock()
        return [
            replace(s, next_tick=next_tick_of(s, now)) for s in await self._store().list_schedules()
        ]

    async def pause_schedule(
        self, name: str, *, reason: str | None = None, by: str | None = None
    ) -> ScheduleState:
        """Pause schedule ``name``: no worker fires a tick of it until it is resumed (sagas
        it started already go on). Returns the schedule as it is now.

        Raises ScheduleNotFoundError."""
        return await self._set_paused(name, True, reason, by)

    async def resume_schedule(
        self, name: str, *, reason: str | None = None, by: str | None = None
    ) -> ScheduleState:
        """Resume schedule ``name``: it fires again from its next tick on (the ticks that
        fell while it was paused are passed over, whatever its catch-up policy). Resuming a
        schedule that is not paused changes nothing.

        Raises ScheduleNotFoundError."""
        return await self._set_paused(name, False, reason, by)

    async def _set_paused(
        self, name: str, paused: bool, reason: str | None, by: str | None
    ) -> ScheduleState:
        if not isinstance(name, str) or not name:
            raise SagaValidationError(f"a schedule's name is a non-empty string, got {name!r}")
        for value, what in ((reason, "reason"), (by, "by")):
            if value is not None and not isinstance(value, str):
                raise SagaValidationError(f"{what} must be a string, got {value!r}")
        store = self._store()
        now = self._engine.schedule_clock()
        state = await store.set_schedule_paused(name, paused, now)
        if state is None:
            raise ScheduleNotFoundError(name, [s.name for s in await store.list_schedules()])
        action = "pause_schedule" if paused else "resume_schedule"
        log.info(
            "operator%s: schedule %s %s%s",
            f" {by}" if by else "",
            name,
            "paused" if paused else "resumed",
            f": {reason}" if reason else "",
            extra={"schedule": name, "action": action, "by": by, "reason": reason},
        )
        return replace(state, next_tick=next_tick_of(state, now))
