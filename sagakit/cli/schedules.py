"""``sagakit schedules`` (list the cron schedules) and ``sagakit schedule pause|resume NAME``
(through ``engine.admin``: every worker obeys at its next look)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import click

from ..stores.scheduling import ScheduleState
from .common import (
    check_readable,
    db_option,
    db_url,
    dump_json,
    json_option,
    open_admin,
    operator_name,
    run,
)

_HEADERS = ("NAME", "CRON", "TIMEZONE", "WORKFLOW", "NEXT TICK", "LAST TICK", "PAUSED")


def local_time(moment: float | None, timezone: str) -> str:
    """An epoch time as ISO in the schedule's time zone, as its saga ids say it; ``-``: none."""
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, ZoneInfo(timezone)).isoformat(timespec="seconds")


def schedule_row(state: ScheduleState) -> tuple[str, ...]:
    """A schedule as the listing's columns (the dashboard shows the same)."""
    workflow = state.workflow if state.version is None else f"{state.workflow}@{state.version}"
    if state.queue is not None:
        workflow += f" (queue {state.queue})"
    return (
        state.name,
        state.cron,
        state.timezone,
        workflow,
        "-" if state.paused else local_time(state.next_tick, state.timezone),
        local_time(state.last_tick, state.timezone),
        "yes" if state.paused else "no",
    )


def _as_json(state: ScheduleState) -> dict[str, object]:
    return {
        "name": state.name,
        "cron": state.cron,
        "timezone": state.timezone,
        "workflow": state.workflow,
        "version": state.version,
        "queue": state.queue,
        "catch_up": state.catch_up,
        "paused": state.paused,
        "next_tick": None if state.paused else local_time(state.next_tick, state.timezone),
        "last_tick": None
        if state.last_tick is None
        else local_time(state.last_tick, state.timezone),
    }


@click.command("schedules")
@db_option
@json_option
def schedules_command(db: str, as_json: bool) -> None:
    """List the cron schedules: name, cron, time zone, workflow, next tick, last tick fired,
    and whether an operator paused it (times in the schedule's time zone)."""
    url = db_url(db)
    check_readable(url)

    async def look() -> list[ScheduleState]:
        async with open_admin(url, read_only=True) as admin:
            return await admin.schedules()

    states = run(look())
    if as_json:
        dump_json([_as_json(s) for s in states])
        return
    if not states:
        click.echo("no schedules (a schedule appears once a worker that declares it has run)")
        return
    rows = [_HEADERS, *(schedule_row(s) for s in states)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


@click.group("schedule")
def schedule_group() -> None:
    """Pause or resume a cron schedule (every worker obeys at its next look)."""


def _set_paused(name: str, paused: bool, db: str, reason: str | None, by: str | None) -> None:
    url = db_url(db)
    check_readable(url)

    async def act() -> ScheduleState:
        async with open_admin(url) as admin:
            who = by if by is not None else operator_name()
            if paused:
                return await admin.pause_schedule(name, reason=reason, by=who)
            return await admin.resume_schedule(name, reason=reason, by=who)

    state = run(act())
    if paused:
        click.echo(f"schedule {name} paused: no tick fires until `sagakit schedule resume {name}`")
    else:
        click.echo(
            f"schedule {name} resumed: next tick {local_time(state.next_tick, state.timezone)}"
        )


_reason = click.option("--reason", help="Why: kept in the log with the operator's name.")
_by = click.option("--by", help="Who (default: the OS user).")


@schedule_group.command("pause")
@click.argument("name")
@_reason
@_by
@db_option
def pause_command(name: str, reason: str | None, by: str | None, db: str) -> None:
    """Pause schedule NAME: no tick of it fires until it is resumed (sagas it started go on)."""
    _set_paused(name, True, db, reason, by)


@schedule_group.command("resume")
@click.argument("name")
@_reason
@_by
@db_option
def resume_command(name: str, reason: str | None, by: str | None, db: str) -> None:
    """Resume schedule NAME: it fires from its next tick on (ticks that fell while it was
    paused are passed over)."""
    _set_paused(name, False, db, reason, by)


SCHEDULE_COMMANDS = (schedules_command, schedule_group)
