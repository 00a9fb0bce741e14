"""The SQLite store's queues: reading a queue's limits and load inside the claim's write
transaction (``BEGIN IMMEDIATE``: one writer at a time across every process on the file, so
the counts cannot change before the claim's update), and the operator's view of queues."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..base import NewSaga, SagaStatus
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


def insert_params(new: NewSaga, now: float) -> dict[str, Any]:
    """The queue and start-time columns of a new saga's row."""
    queued = new.queue is not None
    return {
        "status": SagaStatus.QUEUED if queued else SagaStatus.PENDING,
        "lease_expires_at": new.not_before or 0.0,
        "queue": new.queue,
        "priority": new.priority,
        "partition_key": new.partition_key,
        "dedup_id": new.dedup_id,
    }


def dedup_holder(conn: sqlite3.Connection, new: NewSaga) -> str | None:
    """The saga that holds ``new``'s deduplication id in its queue, if any."""
    if new.dedup_id is None:
        return None
    row = conn.execute(Q["dedup_holder"], {"queue": new.queue, "dedup_id": new.dedup_id}).fetchone()
    return None if row is None else str(row[0])


def claim_queued(
    conn: sqlite3.Connection, owner: str, names: str, now: float, limit: int
) -> tuple[dict[str, bool], float | None]:
    """The queued sagas this claim may take (of the workflows ``names``, JSON as the claim
    query takes them), each with whether it is taken over from a worker whose lease expired;
    and when a rate-limited queue admits its next start."""
    chosen: dict[str, bool] = {}
    retry_at: float | None = None
    for row in conn.execute(Q["get_queues"]).fetchall():
        if len(chosen) >= limit:
            break
        name = row[0]
        limits = limits_from_row(*row[1:7]).overridden(override_from_text(row[7]))
        found = _load(conn, name, limits, owner, names, now, limit - len(chosen))
        if found is None:
            continue
        load, taken_over = found
        choice = choose(load, limit - len(chosen), now)
        chosen.update((saga_id, saga_id in taken_over) for saga_id in choice.saga_ids)
        if choice.retry_at is not None:
            retry_at = choice.retry_at if retry_at is None else min(retry_at, choice.retry_at)
    return chosen, retry_at


def _load(
    conn: sqlite3.Connection,
    queue: str,
    limits: QueueLimits,
    owner: str,
    names: str,
    now: float,
    limit: int,
) -> tuple[QueueLoad, set[str]] | None:
    """The queue's load, and which candidates had an owner (whose lease expired)."""
    params = {"queue": queue, "names": names, "now": now, "limit": limit}
    rows = conn.execute(Q["queued_due_again"], params).fetchall()
    if not limits.paused:
        query = "queued_next_by_partition" if limits.partitioned else "queued_next"
        rows += conn.execute(Q[query], params).fetchall()
    if not rows:
        return None
    load = QueueLoad(limits, queued_order(rows))
    slots = {"queue": queue, "owner": owner, "now": now}
    for partition, running, mine in conn.execute(Q["queue_slots"], slots):
        load.running[partition] = running
        load.mine += mine or 0
    for partition in {c.partition_key for c in load.candidates}:
        key = {"queue": queue, "partition_key": partition}
        last = conn.execute(Q["partition_last_start"], key).fetchone()[0]
        if last is not None:
            load.last_start[partition] = last
        if limits.rate_per is not None:
            since = {**key, "since": now - limits.rate_per}
            starts = [r[0] for r in conn.execute(Q["partition_starts"], since)]
            load.recent_starts[partition] = starts
    return load, {r[0] for r in rows if r[6]}


def declare(conn: sqlite3.Connection, name: str, limits: QueueLimits, now: float) -> None:
    conn.execute(Q["declare_queue"], {"name": name, "now": now, **limits_columns(limits)})


def set_override(
    conn: sqlite3.Connection, name: str, changes: dict[str, Any] | None, now: float
) -> bool:
    """Merge ``changes`` into the queue's override (None: drop it), in the writer's
    transaction: nobody else's change comes between the read and the write."""
    row = conn.execute(Q["get_queue"], {"name": name}).fetchone()
    if row is None:
        return False
    override = {} if changes is None else {**override_from_text(row[7]), **changes}
    params = {"name": name, "override": override_to_text(override) if override else None}
    return conn.execute(Q["set_queue_override"], {**params, "now": now}).rowcount == 1


def states(conn: sqlite3.Connection, now: float, name: str | None = None) -> list[QueueState]:
    """Every queue (or the one called ``name``) with its limits and counts."""
    if name is None:
        rows = conn.execute(Q["get_queues"]).fetchall()
    else:
        rows = conn.execute(Q["get_queue"], {"name": name}).fetchall()
    counts = {r[0]: r[1:] for r in conn.execute(Q["queue_counts"], {"now": now})}
    found = []
    for row in rows:
        state = QueueState(row[0], limits_from_row(*row[1:7]), override_from_text(row[7]))
        queued, delayed, running, oldest = counts.get(state.name, (0, 0, 0, None))
        recent = 0
        if state.limits.rate_per is not None:
            since = {"queue": state.name, "since": now - state.limits.rate_per}
            recent = conn.execute(Q["queue_recent_count"], since).fetchone()[0]
        found.append(
            QueueState(
                state.name,
                state.declared,
                state.override,
                queued=queued or 0,
                delayed=delayed or 0,
                running=running or 0,
                recent_starts=recent,
                oldest_queued_at=oldest,
            )
        )
    return found


def position(conn: sqlite3.Connection, saga_id: str) -> int | None:
    if conn.execute(Q["is_queued"], {"saga_id": saga_id}).fetchone() is None:
        return None
    return int(conn.execute(Q["queue_position"], {"saga_id": saga_id}).fetchone()[0])
