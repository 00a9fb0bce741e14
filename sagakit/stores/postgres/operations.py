"""The PostgreSQL store's operations on one connection: claim sagas with their journals, and
the operator-side and bookkeeping ones: administer a saga, fork it, delete it, prune and count
ended sagas, the workers' heartbeats and the stranded sagas.

Each function takes an asyncpg connection and explicit arguments; the store runs it through
its writer (``_call``) or its read pool (``_read``), which retry it on a new connection after a
dropped one. A write is idempotent under that retry: an operator's change carries an action id
kept in its audit entry, and a fork recognises the fork it made already by its key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, replace

import asyncpg

from ..base import (
    LIVE_LEASES,
    AdminChange,
    ClaimedSaga,
    JournalEntry,
    SagaEvent,
    SagaFork,
    SagaRecord,
    audit_key,
    entry_from_row,
    event_from_row,
    record_from_row,
    saga_scope,
)
from . import queues
from .sql import Q


async def heartbeat(
    conn: asyncpg.Connection, worker_id: str, pairs: str, lease_seconds: float
) -> None:
    await conn.execute(Q["heartbeat"], worker_id, pairs, lease_seconds)


async def forget_worker(conn: asyncpg.Connection, worker_id: str) -> None:
    await conn.execute(Q["forget_worker"], worker_id)


async def list_stranded(conn: asyncpg.Connection, limit: int) -> list[SagaRecord]:
    rows = await conn.fetch(Q["list_stranded"], float(LIVE_LEASES), limit)
    return [record_from_row(tuple(r)) for r in rows]


async def count_stranded(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(Q["count_stranded"], float(LIVE_LEASES)))


async def administer(
    conn: asyncpg.Connection, change: AdminChange, terminal: bool
) -> SagaRecord | None:
    async with conn.transaction():
        # the saga and every saga told (its parent, its children) are locked first, in
        # one sorted pass: two actions on a parent and its child at once lock in the
        # same order and never deadlock
        for locked_id in sorted({change.saga_id, *(t[0] for t in change.tell)}):
            await conn.execute(Q["lock_saga"], locked_id)
        row = await conn.fetchrow(
            Q["administer"],
            change.saga_id,
            change.status,
            change.output,
            change.error,
            0.0 if terminal else change.due_at,
            change.wait_token,
            change.expect_status,
            change.expect_fence,
        )
        if row is None:
            return await _applied_already(conn, change)
        if change.delete:
            await conn.execute(Q["delete_entries"], change.saga_id, list(change.delete))
        seq = await conn.fetchval(Q["next_audit_seq"], change.saga_id)
        for entry in (*change.replace, replace(change.audit, seq=seq)):
            await conn.execute(Q["upsert_entry"], *astuple(entry))
        for saga_id, kind, name, payload in change.tell:
            await conn.fetchrow(Q["deliver"], saga_id, kind, name, payload, None, True, None)
        await conn.execute(Q["notify_work"])
        return record_from_row(tuple(row))


async def fork_saga(conn: asyncpg.Connection, fork: SagaFork) -> SagaRecord | None:
    new = fork.new
    async with conn.transaction():
        # the source first: its next audit number is ours until the commit
        if await conn.fetchval(Q["lock_saga"], fork.source_id) is None:
            return None
        inserted = await conn.fetchval(
            Q["insert_fork"],
            new.saga_id,
            new.name,
            new.input,
            fork.source_id,
            fork.events_upto,
            new.version,
        )
        if inserted is None:  # the id is taken: by this fork (a retry), or another
            audits = await conn.fetch(Q["audit_entries"], new.saga_id)
            if not any(audit_key(entry_from_row(tuple(r))) == fork.key for r in audits):
                return None
        else:
            await conn.execute(Q["copy_events"], new.saga_id, fork.source_id, fork.events_upto)
            for entry in (*fork.entries, replace(fork.audit, seq=-1)):
                await conn.execute(Q["upsert_entry"], *astuple(entry))
            for write in fork.state:
                if write.value is not None:
                    await conn.execute(Q["set_state"], write.scope, write.key, write.value)
            seq = await conn.fetchval(Q["next_audit_seq"], fork.source_id)
            audit = replace(fork.source_audit, seq=seq)
            await conn.execute(Q["upsert_entry"], *astuple(audit))
            await conn.execute(Q["notify_work"])
        row = await conn.fetchrow(Q["get_saga"], new.saga_id)
        return record_from_row(tuple(row))


async def delete_saga(conn: asyncpg.Connection, saga_id: str) -> bool:
    async with conn.transaction():
        # a retry after a lost answer finds nothing to delete: False, nothing written
        if await conn.fetchval(Q["delete_saga"], saga_id) is None:
            return False
        await conn.execute(Q["delete_saga_state"], saga_scope(saga_id))
        return True


async def prune(
    conn: asyncpg.Connection, wanted: Sequence[str], ended_before: float, limit: int
) -> list[str]:
    rows = await conn.fetch(Q["prune"], wanted, ended_before, limit, saga_scope(""))
    return [row[0] for row in rows]


async def count_prunable(
    conn: asyncpg.Connection, wanted: Sequence[str], ended_before: float
) -> int:
    count: int = await conn.fetchval(Q["count_prunable"], wanted, ended_before)
    return count


async def _applied_already(conn: asyncpg.Connection, change: AdminChange) -> SagaRecord | None:
    """The saga, if ``change`` (by its key) was made already — by our own attempt whose
    answer a dropped connection lost; else None."""
    if change.key is None:
        return None
    audits = await conn.fetch(Q["audit_entries"], change.saga_id)
    if not any(audit_key(entry_from_row(tuple(r))) == change.key for r in audits):
        return None
    row = await conn.fetchrow(Q["get_saga"], change.saga_id)
    return None if row is None else record_from_row(tuple(row))


async def claim(
    conn: asyncpg.Connection,
    owner: str,
    wanted: list[str],
    lease_seconds: float,
    limit: int,
    versions: list[str | None],
) -> tuple[list[ClaimedSaga], float | None]:
    """Take due sagas, then queued ones as their queues allow; and when a rate-limited
    queue admits its next start (see queues.claim_queued)."""
    # one transaction: a connection lost before the commit took nothing; one lost
    # after it leaves sagas this engine does not know it holds, which it never renews
    retry_at: float | None = None
    async with conn.transaction():
        rows = await conn.fetch(Q["claim"], owner, wanted, lease_seconds, limit, versions)
        records = [record_from_row(tuple(r)[:-1]) for r in rows]
        taken_over = {r["saga_id"]: bool(r["taken_over"]) for r in rows}
        if len(records) < limit:
            queued, queued_taken_over, retry_at = await queues.claim_queued(
                conn, owner, wanted, versions, lease_seconds, limit - len(records)
            )
            records += queued
            taken_over.update((r.saga_id, r.saga_id in queued_taken_over) for r in queued)
        if not records:
            return [], retry_at
        journals: dict[str, list[JournalEntry]] = {r.saga_id: [] for r in records}
        for row in await conn.fetch(Q["get_journals"], list(journals)):
            journals[row["saga_id"]].append(entry_from_row(tuple(row)))
        events: dict[str, list[SagaEvent]] = {r.saga_id: [] for r in records}
        with_events = [r.saga_id for r in records if r.event_count]
        if with_events:
            for row in await conn.fetch(Q["get_events_of"], with_events):
                events[row["saga_id"]].append(event_from_row(tuple(row)))
    claimed = [
        ClaimedSaga(r, journals[r.saga_id], taken_over[r.saga_id], events[r.saga_id])
        for r in records
    ]
    return claimed, retry_at
