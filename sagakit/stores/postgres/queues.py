"""The PostgreSQL store's queues: creating a saga that waits (queued, or a delayed start), the
queue part of a claim, and the operator's view of queues.

Dequeues of one queue are serialised by a row lock on its ``saga_queues`` row (taken only when
the queue has sagas this worker could start), so the slots and starts counted after it cannot
change by another worker's dequeue before the claim commits. A queued saga that gives its slot
back (it ends, waits or parks) makes the append that records it send NOTIFY (see batch.py), so
idle workers start the next one at once.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from ..base import CreateResult, NewSaga, SagaRecord, record_from_row
from ..queueing import (
    QueueLimits,
    QueueLoad,
    QueueState,
    choose,
    limits_columns,
    limits_from_row,
    override_from_text,
    override_to_text,
    queued_order,
)
from .sql import Q

#: how many times a queued create is tried when the deduplication id's holder ended between
#: the refused insert and the look at who holds it
_DEDUP_TRIES = 3


async def write_waiting_create(conn: asyncpg.Connection, retry: bool, new: NewSaga) -> CreateResult:
    """Insert a saga that waits (QUEUED, or PENDING until ``not_before``); see
    ``Store.create_saga`` for what a taken id or deduplication id returns."""
    for _ in range(_DEDUP_TRIES):
        inserted = await conn.fetchval(
            Q["create_queued_saga"],
            new.saga_id,
            new.name,
            new.input,
            new.parent_id,
            new.not_before,
            new.queue,
            new.version or "",
            new.priority,
            new.partition_key,
            new.dedup_id,
        )
        row = await conn.fetchrow(Q["get_saga"], new.saga_id)
        if row is not None:
            record = record_from_row(tuple(row))
            created = inserted is not None or (retry and _made_by(new, record))
            if created and (new.not_before is None):
                await conn.execute(Q["notify_work"])
            return CreateResult(created, record)
        if new.dedup_id is not None:
            holder = await conn.fetchval(Q["dedup_holder"], new.queue, new.dedup_id)
            if holder is not None:
                row = await conn.fetchrow(Q["get_saga"], holder)
                if row is not None:
                    return CreateResult(False, record_from_row(tuple(row)))
    raise RuntimeError(f"could not create saga {new.saga_id!r}: its queue kept refusing it")


async def write_waiting_creates(
    conn: asyncpg.Connection, retry: bool, news: list[NewSaga]
) -> list[CreateResult]:
    """``write_waiting_create`` for a batch: one statement inserts them all (one commit); the
    answers are in ``news``' order."""
    inserted = {
        row[0]
        for row in await conn.fetch(
            Q["create_waiting_sagas"],
            [n.saga_id for n in news],
            [n.name for n in news],
            [n.input for n in news],
            [n.parent_id for n in news],
            [n.not_before for n in news],
            [n.queue for n in news],
            [n.version or "" for n in news],
            [n.priority for n in news],
            [n.partition_key for n in news],
            [n.dedup_id for n in news],
        )
    }
    rows = await conn.fetch(Q["get_sagas"], [n.saga_id for n in news])
    found = {r.saga_id: r for r in (record_from_row(tuple(row)) for row in rows)}
    results: list[CreateResult] = []
    answered: set[str] = set()
    wake = False
    for new in news:
        record = found.get(new.saga_id)
        if record is None:  # refused for its deduplication id (or its holder just ended)
            results.append(await write_waiting_create(conn, retry, new))
            continue
        created = new.saga_id in inserted or (retry and _made_by(new, record))
        if new.saga_id in answered:
            created = False  # the same id twice in one batch: the first caller has it
        answered.add(new.saga_id)
        wake = wake or (created and new.not_before is None)
        results.append(CreateResult(created, record))
    if wake:
        await conn.execute(Q["notify_work"])
    return results


def _made_by(new: NewSaga, record: SagaRecord) -> bool:
    """Whether ``record`` is what our own create made, on a retry after its answer was lost
    (a worker may have started it meanwhile: its status and fence say nothing)."""
    return (
        record.name == new.name
        and record.input == new.input
        and record.queue == new.queue
        and record.dedup_id == new.dedup_id
        and record.parent_id == new.parent_id
    )


async def claim_queued(
    conn: asyncpg.Connection,
    owner: str,
    wanted: list[str],
    versions: list[str | None],
    lease_seconds: float,
    limit: int,
) -> tuple[list[SagaRecord], set[str], float | None]:
    """In the claim's transaction: start the queued sagas the queues allow (of the served
    ``wanted``/``versions`` pairs); which of them were taken over from a worker whose lease
    expired; and when a rate-limited queue admits its next start."""
    taken: list[SagaRecord] = []
    taken_over: set[str] = set()
    retry_at: float | None = None
    served = (wanted, versions if any(v is not None for v in versions) else None)
    queues = await conn.fetch(Q["get_queues"])
    now = float(await conn.fetchval(Q["store_clock"])) if queues else 0.0
    for row in queues:
        if len(taken) >= limit:
            break
        name = row[0]
        room = limit - len(taken)
        if not await _candidates(conn, name, _limits(row), served, room, now):
            continue  # nothing to start: no lock taken
        locked = await conn.fetchrow(Q["lock_queue"], name)
        if locked is None:
            continue
        limits = _limits(locked)
        now = float(await conn.fetchval(Q["store_clock"]))
        candidates = await _candidates(conn, name, limits, served, room, now)
        if not candidates:
            continue
        load = await _load(conn, name, limits, owner, candidates, now)
        choice = choose(load, room, now)
        if choice.retry_at is not None:
            retry_at = choice.retry_at if retry_at is None else min(retry_at, choice.retry_at)
        if choice.saga_ids:
            rows = await conn.fetch(Q["claim_queued"], owner, choice.saga_ids, lease_seconds)
            taken += [record_from_row(tuple(r)) for r in rows]
            taken_over.update(c[0] for c in candidates if c[6] and c[0] in choice.saga_ids)
    return taken, taken_over, retry_at


def _limits(row: asyncpg.Record) -> QueueLimits:
    return limits_from_row(*tuple(row)[1:7]).overridden(override_from_text(row[7]))


async def _candidates(
    conn: asyncpg.Connection,
    queue: str,
    limits: QueueLimits,
    served: tuple[list[str], list[str | None] | None],
    limit: int,
    now: float,
) -> list[tuple[Any, ...]]:
    wanted, versions = served
    again = await conn.fetch(Q["queued_due_again"], queue, wanted, versions, limit, now)
    rows = [tuple(r) for r in again]
    if not limits.paused:
        query = "queued_next_by_partition" if limits.partitioned else "queued_next"
        waiting = await conn.fetch(Q[query], queue, wanted, versions, limit, now)
        rows += [tuple(r) for r in waiting]
    return rows


async def _load(
    conn: asyncpg.Connection,
    queue: str,
    limits: QueueLimits,
    owner: str,
    candidates: list[tuple[Any, ...]],
    now: float,
) -> QueueLoad:
    load = QueueLoad(limits, queued_order(candidates))
    for partition, running, mine in await conn.fetch(Q["queue_slots"], queue, owner):
        load.running[partition] = running
        load.mine += mine
    for partition in {c.partition_key for c in load.candidates}:
        last = await conn.fetchval(Q["partition_last_start"], queue, partition)
        if last is not None:
            load.last_start[partition] = last
        if limits.rate_per is not None:
            since = now - limits.rate_per
            starts = await conn.fetch(Q["partition_starts"], queue, partition, since)
            load.recent_starts[partition] = [r[0] for r in starts]
    return load


async def declare(conn: asyncpg.Connection, name: str, limits: QueueLimits) -> None:
    columns = limits_columns(limits)
    await conn.execute(
        Q["declare_queue"],
        name,
        columns["concurrency"],
        columns["worker_concurrency"],
        columns["rate_limit"],
        columns["rate_per"],
        columns["priority"],
        columns["partitioned"],
    )


async def set_override(
    conn: asyncpg.Connection, name: str, changes: dict[str, Any] | None
) -> QueueState | None:
    """Merge ``changes`` into the queue's override (None: drop it) in one statement; wake the
    workers, so that a raised limit is used at once."""
    text = None if changes is None else override_to_text(changes)
    if await conn.fetchval(Q["set_queue_override"], name, text) is None:
        return None
    await conn.execute(Q["notify_work"])
    found = [s for s in await states(conn) if s.name == name]
    return found[0] if found else None


async def states(conn: asyncpg.Connection) -> list[QueueState]:
    """Every queue with its limits and counts, by name."""
    counts = {r[0]: tuple(r)[1:] for r in await conn.fetch(Q["queue_counts"])}
    found = []
    for row in await conn.fetch(Q["get_queues"]):
        declared = limits_from_row(*tuple(row)[1:7])
        override = override_from_text(row[7])
        limits = declared.overridden(override)
        queued, delayed, running, oldest = counts.get(row[0], (0, 0, 0, None))
        recent = 0
        if limits.rate_per is not None:
            recent = await conn.fetchval(Q["queue_recent_count"], row[0], limits.rate_per)
        found.append(
            QueueState(
                row[0],
                declared,
                override,
                queued=queued,
                delayed=delayed,
                running=running,
                recent_starts=recent,
                oldest_queued_at=oldest,
            )
        )
    return found


async def position(conn: asyncpg.Connection, saga_id: str) -> int | None:
    if await conn.fetchval(Q["is_queued"], saga_id) is None:
        return None
    return int(await conn.fetchval(Q["queue_position"], saga_id))
