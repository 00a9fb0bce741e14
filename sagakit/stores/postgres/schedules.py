"""The PostgreSQL store's cron schedules (see :mod:`sagakit.stores.scheduling`). A tick is fired
in one transaction on the writer connection: the schedule's row is moved forward only from the
``fire_from`` the worker read (a worker that fired it first holds the row lock until it
commits; this one then finds it moved and writes nothing), and the tick's saga is created in
the same transaction, with a NOTIFY so that idle workers take it at once."""

from __future__ import annotations

import asyncpg

from ..base import NewSaga
from ..scheduling import Schedule, ScheduleState, schedule_columns, state_from_row
from .sql import Q


async def declare(conn: asyncpg.Connection, schedule: Schedule, now: float) -> None:
    c = schedule_columns(schedule)
    await conn.execute(
        Q["declare_schedule"],
        c["name"],
        c["cron"],
        c["workflow"],
        c["version"],
        c["input"],
        c["timezone"],
        c["catch_up"],
        c["queue"],
        now,
    )


async def due(conn: asyncpg.Connection, names: list[str], now: float) -> list[ScheduleState]:
    return [state_from_row(tuple(r)) for r in await conn.fetch(Q["due_schedules"], names, now)]


async def fire(
    conn: asyncpg.Connection,
    name: str,
    expect: float,
    fire_from: float,
    tick: float | None,
    saga: NewSaga | None,
) -> bool:
    async with conn.transaction():
        if await conn.fetchval(Q["move_schedule"], name, expect, fire_from, tick) is None:
            return False
        if saga is not None:
            await conn.execute(
                Q["create_queued_saga"],
                saga.saga_id,
                saga.name,
                saga.input,
                None,
                None,
                saga.queue,
                saga.version or "",
                saga.priority,
                saga.partition_key,
                None,
            )
            await conn.execute(Q["notify_work"])
    return True


async def states(conn: asyncpg.Connection) -> list[ScheduleState]:
    return [state_from_row(tuple(r)) for r in await conn.fetch(Q["list_schedules"])]


async def set_paused(
    conn: asyncpg.Connection, name: str, paused: bool, now: float
) -> ScheduleState | None:
    row = await conn.fetchrow(Q["pause_schedule"], name, paused, now)
    return None if row is None else state_from_row(tuple(row))
