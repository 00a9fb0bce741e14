"""What the SQLite store's writes do inside the writer's transaction, apart from the store's
own state: delivering an event, the parameters of a saga update and of a journal entry, and
an operator's change and a fork."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ...errors import EventsArrived, LeaseLost
from ..base import (
    NEVER,
    AdminChange,
    Delivery,
    DeliveryOutcome,
    JournalEntry,
    SagaFork,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    StateWrite,
    audit_key,
    entry_from_row,
    record_from_row,
)
from .sql import Q


def applied_already(conn: sqlite3.Connection, change: AdminChange) -> SagaRecord | None:
    """The saga, if ``change`` (by its key) was made already; else None."""
    if change.key is None:
        return None
    audits = conn.execute(Q["audit_entries"], {"saga_id": change.saga_id}).fetchall()
    if not any(audit_key(entry_from_row(r)) == change.key for r in audits):
        return None
    row = conn.execute(Q["get_saga"], {"saga_id": change.saga_id}).fetchone()
    return None if row is None else record_from_row(row)


def deliver_in(
    conn: sqlite3.Connection,
    saga_id: str,
    kind: str,
    name: str,
    payload: str,
    *,
    token: str | None,
    unique: bool,
    key: str | None = None,
) -> Delivery:
    """``Store.deliver`` inside a write transaction."""
    row = conn.execute(Q["saga_for_event"], {"saga_id": saga_id}).fetchone()
    if row is None:
        return Delivery(DeliveryOutcome.NOT_FOUND)
    status, wait_token, count = row
    redelivered = (
        key is not None
        and conn.execute(Q["find_delivery"], {"saga_id": saga_id, "key": key}).fetchone()
    )
    if redelivered:
        return Delivery(DeliveryOutcome.DELIVERED, status)
    if unique:
        params = {"saga_id": saga_id, "kind": kind, "name": name}
        found = conn.execute(Q["find_event"], params).fetchone()
        if found is not None:
            return Delivery(DeliveryOutcome.DUPLICATE, status, found[0])
    if SagaStatus(status).is_terminal:
        return Delivery(DeliveryOutcome.FINISHED, status)
    if token is not None and wait_token != token:
        return Delivery(DeliveryOutcome.STALE, status)
    seq = count + 1
    conn.execute(
        Q["insert_event"],
        {
            "saga_id": saga_id,
            "seq": seq,
            "kind": kind,
            "name": name,
            "payload": payload,
            "now": time.time(),
            "key": key,
        },
    )
    conn.execute(
        Q["count_event"], {"saga_id": saga_id, "seq": seq, "consume_token": token is not None}
    )
    return Delivery(DeliveryOutcome.DELIVERED, status)


def append_in(
    conn: sqlite3.Connection,
    saga_id: str,
    fence: int,
    entry: JournalEntry | None,
    update: SagaUpdate | None,
    guard: int | None,
    state: Sequence[StateWrite],
) -> None:
    """``Store.append`` inside a write transaction (the writer's batch, or a transactional
    step's own transaction): fenced and guarded, else LeaseLost or EventsArrived."""
    now = time.time()
    if update is None:
        params = {"saga_id": saga_id, "fence": fence, "now": now, "guard": guard}
        cur = conn.execute(Q["touch_saga"], params)
    else:
        params = update_params(saga_id, fence, update, guard, now)
        cur = conn.execute(Q["update_saga_status"], params)
    if cur.rowcount != 1:
        row = conn.execute(Q["saga_fence"], {"saga_id": saga_id}).fetchone()
        if guard is not None and row is not None and row[0] == fence:
            raise EventsArrived(saga_id)
        raise LeaseLost(saga_id)
    if entry is not None:
        conn.execute(Q["upsert_entry"], entry_params(entry))
    for write in state:
        if write.value is None:
            conn.execute(Q["clear_state"], {"scope": write.scope, "key": write.key})
        else:
            params = {"scope": write.scope, "key": write.key, "value": write.value, "now": now}
            conn.execute(Q["set_state"], params)


def update_params(
    saga_id: str, fence: int, update: SagaUpdate, guard: int | None, now: float
) -> dict[str, Any]:
    status = None if update.status is None else SagaStatus(update.status)
    suspended = status == SagaStatus.SUSPENDED
    return {
        "saga_id": saga_id,
        "fence": fence,
        "guard": guard,
        "status": update.status,
        "output": update.output,
        "error": update.error,
        "terminal": status is not None and status.is_terminal,
        "suspended": suspended,
        "parked": status == SagaStatus.PARKED,
        "wake_at": NEVER if update.wake_at is None else update.wake_at,
        "wait_token": update.wait_token,
        "clear_wait": update.clear_wait,
        "now": now,
    }


def entry_params(entry: JournalEntry) -> dict[str, Any]:
    return {
        "saga_id": entry.saga_id,
        "seq": entry.seq,
        "kind": entry.kind,
        "name": entry.name,
        "status": entry.status,
        "attempts": entry.attempts,
        "output": entry.output,
        "compensation": entry.compensation,
        "error": entry.error,
        "started_at": entry.started_at,
        "finished_at": entry.finished_at,
    }


def administer_in(conn: sqlite3.Connection, change: AdminChange) -> SagaRecord | None:
    """An operator's change (``Store.administer``) inside the writer's transaction."""
    now = time.time()
    terminal = SagaStatus(change.status).is_terminal
    cur = conn.execute(
        Q["administer"],
        {
            "saga_id": change.saga_id,
            "status": change.status,
            "output": change.output,
            "error": change.error,
            "due_at": 0.0 if terminal else change.due_at,
            "wait_token": change.wait_token,
            "now": now,
            "expect_status": change.expect_status,
            "expect_fence": change.expect_fence,
        },
    )
    if cur.rowcount != 1:
        return applied_already(conn, change)
    for seq in change.delete:
        conn.execute(Q["delete_entry"], {"saga_id": change.saga_id, "seq": seq})
    for entry in change.replace:
        conn.execute(Q["upsert_entry"], entry_params(entry))
    seq = conn.execute(Q["next_audit_seq"], {"saga_id": change.saga_id}).fetchone()[0]
    conn.execute(Q["upsert_entry"], entry_params(replace(change.audit, seq=seq)))
    for saga_id, kind, name, payload in change.tell:
        deliver_in(conn, saga_id, kind, name, payload, token=None, unique=True)
    row = conn.execute(Q["get_saga"], {"saga_id": change.saga_id}).fetchone()
    return record_from_row(row)


def fork_in(conn: sqlite3.Connection, fork: SagaFork) -> SagaRecord | None:
    """A fork (``Store.fork_saga``) inside the writer's transaction."""
    new = fork.new
    # everything is checked before the first write: a statement failing halfway would
    # leave the rest of the batch's transaction standing (see _commit)
    taken = conn.execute(Q["get_saga"], {"saga_id": new.saga_id}).fetchone()
    if taken is not None:
        audits = conn.execute(Q["audit_entries"], {"saga_id": new.saga_id}).fetchall()
        made = any(audit_key(entry_from_row(r)) == fork.key for r in audits)
        return record_from_row(taken) if made else None
    if conn.execute(Q["saga_fence"], {"saga_id": fork.source_id}).fetchone() is None:
        return None
    now = time.time()
    copied = {
        "saga_id": new.saga_id,
        "source_id": fork.source_id,
        "upto": fork.events_upto,
    }
    saga = {"name": new.name, "input": new.input, "now": now, "version": new.version}
    conn.execute(Q["insert_fork"], {**copied, **saga})
    conn.execute(Q["copy_events"], copied)
    for entry in (*fork.entries, replace(fork.audit, seq=-1)):
        conn.execute(Q["upsert_entry"], entry_params(entry))
    for write in fork.state:
        if write.value is not None:
            params = {"scope": write.scope, "key": write.key, "value": write.value}
            conn.execute(Q["set_state"], {**params, "now": now})
    seq = conn.execute(Q["next_audit_seq"], {"saga_id": fork.source_id}).fetchone()[0]
    conn.execute(Q["upsert_entry"], entry_params(replace(fork.source_audit, seq=seq)))
    row = conn.execute(Q["get_saga"], {"saga_id": new.saga_id}).fetchone()
    return record_from_row(row)
