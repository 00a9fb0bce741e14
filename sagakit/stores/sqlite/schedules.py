"""The SQLite store's cron schedules (see :mod:`sagakit.stores.scheduling`). Every write runs in
the store's ``BEGIN IMMEDIATE`` transaction (one writer at a time across every process on the
file): a tick's saga is created in the transaction that moves its schedule forward, and only if
no other worker moved it first."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

from ..base import NewSaga
from ..scheduling import Schedule, ScheduleState, schedule_columns, state_from_row
from . import queues
from .sql import Q


def declare(conn: sqlite3.Connection, schedule: Schedule, now: float) -> None:
    conn.execute(Q["declare_schedule"], {**schedule_columns(schedule), "now": now})


def due(conn: sqlite3.Connection, names: list[str], now: float) -> list[ScheduleState]:
    rows = conn.execute(Q["due_schedules"], {"names": json.dumps(names), "now": now})
    return [state_from_row(row) for row in rows]


def fire_op(
    name: str, expect: float, fire_from: float, tick: float | None, saga: NewSaga | None
) -> Callable[[sqlite3.Connection], bool]:
    """The write that fires a tick (or passes ticks over, without ``saga``)."""
    return lambda conn: _fire(conn, name, expect, fire_from, tick, saga, time.time())


def _fire(
    conn: sqlite3.Connection,
    name: str,
    expect: float,
    fire_from: float,
    tick: float | None,
    saga: NewSaga | None,
    now: float,
) -> bool:
    params = {"name": name, "expect": expect, "fire_from": fire_from, "tick": tick, "now": now}
    if conn.execute(Q["move_schedule"], params).rowcount != 1:
        return False
    if saga is not None:
        conn.execute(
            Q["insert_saga"],
            {
                "saga_id": saga.saga_id,
                "name": saga.name,
                "input": saga.input,
                "owner": None,
                "now": now,
                "object_key": None,
                "parent_id": None,
                "version": saga.version,
                **queues.insert_params(saga, now),
            },
        )
    return True


def states(conn: sqlite3.Connection) -> list[ScheduleState]:
    return [state_from_row(row) for row in conn.execute(Q["list_schedules"])]


def pause_op(
    name: str, paused: bool, now: float
) -> Callable[[sqlite3.Connection], ScheduleState | None]:
    return lambda conn: _set_paused(conn, name, paused, now)


def _set_paused(
    conn: sqlite3.Connection, name: str, paused: bool, now: float
) -> ScheduleState | None:
    params = {"name": name, "paused": int(paused), "now": now}
    if conn.execute(Q["pause_schedule"], params).rowcount != 1:
        return None
    return state_from_row(conn.execute(Q["get_schedule"], {"name": name}).fetchone())
