"""The batched writes of the PostgreSQL store: what the writer queues, and the statements that
write a whole batch at once (starts, appends, a virtual object's start under its key's lock).

Each function runs on the writer's connection and may be run again on a new one after a
dropped connection (``retry`` is then True): it is idempotent, and recognises the effect of its
own earlier attempt whose answer was lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ...errors import EventsArrived, LeaseLost
from ..base import (
    NEVER,
    CreateResult,
    JournalEntry,
    NewSaga,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    StateWrite,
    record_from_row,
)
from .sql import Q

#: a queued saga in these statuses holds no slot of its queue any more
_GIVES_SLOT_BACK = frozenset(
    s.value for s in SagaStatus if s.is_terminal or s in (SagaStatus.SUSPENDED, SagaStatus.PARKED)
)
#: the journal entry columns of append_one when a write has no entry
_NO_ENTRY: tuple[Any, ...] = (None,) * 10


@dataclass(slots=True)
class _StatusRow:
    """The merged status change of one saga in one append statement."""

    guard: int | None = None
    status: str | None = None
    output: str | None = None
    error: str | None = None
    wake_at: float | None = None
    set_token: bool = False
    token: str | None = None

    def add(self, op: Append) -> None:
        if op.guard is not None:
            self.guard = op.guard
        update = op.update
        if update is None:
            return
        if update.status is not None:
            self.status = update.status
            if update.status == SagaStatus.SUSPENDED:
                self.wake_at = NEVER if update.wake_at is None else update.wake_at
                self.set_token, self.token = True, update.wait_token
        if update.output is not None:
            self.output = update.output
        if update.error is not None:
            self.error = update.error
        if update.clear_wait:
            self.set_token, self.token = True, None


def append_groups(appends: list[Append]) -> list[list[Append]]:
    """Unguarded appends first, in one statement; then the guarded ones, at most one per saga
    per statement, so that a refused guard never takes another write down with it."""
    groups: list[list[Append]] = [[op for op in appends if op.guard is None]]
    for op in appends:
        if op.guard is None:
            continue
        for group in groups[1:]:
            if all(other.saga_id != op.saga_id for other in group):
                group.append(op)
                break
        else:
            groups.append([op])
    return [g for g in groups if g]


@dataclass(slots=True)
class Create:
    new: NewSaga
    future: asyncio.Future[CreateResult]


@dataclass(slots=True)
class Append:
    saga_id: str
    fence: int
    entry: JournalEntry | None
    update: SagaUpdate | None
    future: asyncio.Future[None]
    guard: int | None = None
    state: Sequence[StateWrite] = ()


@dataclass(slots=True)
class Call:
    fn: Callable[[asyncpg.Connection], Awaitable[Any]]
    future: asyncio.Future[Any]


@dataclass(slots=True)
class Batch:
    creates: list[Create] = field(default_factory=list)
    appends: list[Append] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)


async def write_creates(conn: asyncpg.Connection, retry: bool, ops: list[Create]) -> None:
    rows = await conn.fetch(
        Q["create_sagas"],
        [op.new.saga_id for op in ops],
        [op.new.name for op in ops],
        [op.new.input for op in ops],
        [op.new.owner for op in ops],
        [op.new.lease_seconds for op in ops],
        [op.new.parent_id for op in ops],
        [op.new.version or "" for op in ops],
    )
    found: dict[str, tuple[bool, SagaRecord]] = {}
    for row in rows:
        record = record_from_row(tuple(row))
        found[record.saga_id] = (True, record)
    missing = list({op.new.saga_id for op in ops if op.new.saga_id not in found})
    if missing:
        # ids taken already (by an earlier start, or a concurrent one that committed)
        for row in await conn.fetch(Q["get_sagas"], missing):
            record = record_from_row(tuple(row))
            found[record.saga_id] = (False, record)
    answered: set[str] = set()
    pending = False
    for op in ops:
        created, record = found[op.new.saga_id]
        if retry and not created and _made_by(op.new, record):
            created = True  # our own attempt whose acknowledgement the dropped link lost
        if op.new.saga_id in answered:
            created = False  # the same id twice in one batch: the first caller runs it
        answered.add(op.new.saga_id)
        if created and op.new.owner is None:
            pending = True
        if not op.future.done():
            op.future.set_result(CreateResult(created, record))
    if pending:
        await conn.execute(Q["notify_work"])


async def write_appends(conn: asyncpg.Connection, retry: bool, ops: list[Append]) -> None:
    # one status row per (saga, fence): the last update of the batch wins, as it would have
    # if the appends had been committed one by one in order
    rows: dict[tuple[str, int], _StatusRow] = {}
    entries: dict[tuple[str, int], JournalEntry] = {}
    writes: dict[tuple[str, str], tuple[str, str | None]] = {}
    for op in ops:
        row = rows.setdefault((op.saga_id, op.fence), _StatusRow())
        row.add(op)
        if op.entry is not None:
            entries[(op.entry.saga_id, op.entry.seq)] = op.entry  # the last one wins
        for write in op.state:
            writes[(write.scope, write.key)] = (op.saga_id, write.value)
    keys = list(rows)
    status = [rows[k] for k in keys]
    journal = list(entries.values())
    if len(keys) == 1 and len(journal) <= 1 and not writes:
        # one saga (a saga alone, or a quiet moment): the same write with scalars
        (saga_id, fence), r = keys[0], status[0]
        ok_rows = await conn.fetch(
            Q["append_one"],
            saga_id,
            fence,
            r.guard,
            r.status,
            r.output,
            r.error,
            r.wake_at,
            r.set_token,
            r.token,
            *(_entry_columns(journal[0]) if journal else _NO_ENTRY),
        )
    else:
        args: list[list[Any]] = [
            [k[0] for k in keys],
            [k[1] for k in keys],
            [r.guard for r in status],
            [r.status for r in status],
            [r.output for r in status],
            [r.error for r in status],
            [r.wake_at for r in status],
            [r.set_token for r in status],
            [r.token for r in status],
            [e.saga_id for e in journal],
            [e.seq for e in journal],
            [e.kind for e in journal],
            [e.name for e in journal],
            [e.status for e in journal],
            [e.attempts for e in journal],
            [e.output for e in journal],
            [e.compensation for e in journal],
            [e.error for e in journal],
            [e.started_at for e in journal],
            [e.finished_at for e in journal],
            [w[0] for w in writes.values()],
            [k[0] for k in writes],
            [k[1] for k in writes],
            [w[1] for w in writes.values()],
        ]
        ok_rows = await conn.fetch(Q["append"], *args)
    accepted = {r["saga_id"] for r in ok_rows}
    changed = {k[0]: r.status for k, r in zip(keys, status, strict=True)}
    if any(
        r["queue"] is not None and changed.get(r["saga_id"]) in _GIVES_SLOT_BACK for r in ok_rows
    ):
        # a queued saga gave its slot back: idle workers may start the next of its queue
        await conn.execute(Q["notify_work"])
    for op in ops:
        if op.future.done():
            continue
        if op.saga_id in accepted:
            op.future.set_result(None)
        elif op.guard is not None and await conn.fetchval(Q["saga_fence"], op.saga_id) == op.fence:
            op.future.set_exception(EventsArrived(op.saga_id))
        else:
            op.future.set_exception(LeaseLost(op.saga_id))


async def write_object_create(conn: asyncpg.Connection, retry: bool, op: Create) -> None:
    new = op.new
    async with conn.transaction():
        await conn.execute(Q["lock_object"], new.object_key)
        inserted = await conn.fetchval(
            Q["create_object_saga"],
            new.saga_id,
            new.name,
            new.input,
            new.owner,
            new.lease_seconds,
            new.object_key,
            new.parent_id,  # an object call made by a saga (saga.call_object) is its child
            new.version or "",
        )
        row = await conn.fetchrow(Q["get_saga"], new.saga_id)
    record = record_from_row(tuple(row))
    created = inserted is not None or (retry and _made_by(new, record))
    if not op.future.done():
        op.future.set_result(CreateResult(created, record))
    if created and record.owner is None:
        await conn.execute(Q["notify_work"])


def _entry_columns(e: JournalEntry) -> tuple[Any, ...]:
    """A journal entry's columns after saga_id, as append_one takes them."""
    return (
        e.seq,
        e.kind,
        e.name,
        e.status,
        e.attempts,
        e.output,
        e.compensation,
        e.error,
        e.started_at,
        e.finished_at,
    )


def _made_by(new: NewSaga, record: SagaRecord) -> bool:
    """Whether ``record`` is what our own start made, on a retry after its answer was lost.

    A start for a worker (no owner) that an identical start of another process made meanwhile
    is taken for ours too: the saga is the same either way, and both callers only wake the
    workers."""
    if record.fence != 1 or record.input != new.input or record.name != new.name:
        return False
    if new.owner is None:
        return record.owner is None and record.status == SagaStatus.PENDING
    return record.owner == new.owner
