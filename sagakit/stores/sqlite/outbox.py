"""The SQLite store's outbox, inbox and relay lease (see :mod:`sagakit.stores.outbox`).

Writes go through the store's one writer, in its group commit: a remote step's journal entry
and its command's outbox row are one operation of the batch, so they commit together or not
at all (the fence is checked first, before anything is written).

A participant's transactional handler (:meth:`SqliteOutbox.inbox_transaction`) holds the
writer instead, as a transactional step does (:mod:`sagakit.stores.sqlite.transactions`): its
writes on ``ctx.connection``, its inbox row and its reply's outbox row commit in one
transaction or not at all.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ...errors import LeaseLost
from ..base import JournalEntry
from ..outbox import (
    RELAY_LEASE,
    InboxRecord,
    OutboxMessage,
    OutboxRow,
    inbox_from_columns,
    row_from_columns,
)
from ..sqlfile import load_queries
from .sql import Q
from .transactions import begin
from .writes import entry_params

if TYPE_CHECKING:
    from .store import SqliteStore

OQ = load_queries(__package__ or "sagakit.stores.sqlite", "outbox.sql")
T = TypeVar("T")


def insert_messages(conn: sqlite3.Connection, messages: Sequence[OutboxMessage]) -> int:
    """Insert the outbox rows (those not written already); how many were written."""
    now = time.time()
    written = 0
    for m in messages:
        cur = conn.execute(
            OQ["insert_outbox"],
            {
                "message_id": m.message_id,
                "destination": m.destination,
                "kind": m.kind,
                "name": m.name,
                "payload": m.payload,
                "reply_to": m.reply_to,
                "correlation_id": m.correlation_id,
                "headers": m.headers_json(),
                "saga_id": m.saga_id,
                "now": now,
                "send_key": m.key,
            },
        )
        written += cur.rowcount
    return written


class SqliteOutbox:
    """Mixed into :class:`~sagakit.stores.sqlite.store.SqliteStore`."""

    on_outbox: Callable[[], None] | None = None

    if TYPE_CHECKING:  # provided by SqliteStore

        def _queue_write(self, op: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]: ...

        def _read(self, fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]: ...

    def _tell_relay(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None and self.on_outbox is not None:
            self.on_outbox()

    def append_outbox(
        self,
        saga_id: str,
        fence: int,
        entry: JournalEntry,
        messages: Sequence[OutboxMessage],
    ) -> asyncio.Future[None]:
        def op(conn: sqlite3.Connection) -> None:
            params = {"saga_id": saga_id, "fence": fence, "now": time.time(), "guard": None}
            if conn.execute(Q["touch_saga"], params).rowcount != 1:
                raise LeaseLost(saga_id)  # before any write: the batch's others stand
            conn.execute(Q["upsert_entry"], entry_params(entry))
            insert_messages(conn, messages)

        future: asyncio.Future[None] = self._queue_write(op)
        future.add_done_callback(self._tell_relay)
        return future

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        future = self._queue_write(lambda conn: insert_messages(conn, messages))
        future.add_done_callback(self._tell_relay)
        await future

    async def unpublished(self, limit: int = 100) -> list[OutboxRow]:
        def fn(conn: sqlite3.Connection) -> list[OutboxRow]:
            rows = conn.execute(OQ["unpublished"], {"limit": limit}).fetchall()
            return [row_from_columns(r) for r in rows]

        return await self._read(fn)

    async def mark_published(self, positions: Sequence[int]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            for position in positions:
                conn.execute(OQ["mark_published"], {"now": now, "position": position})

        await self._queue_write(op)

    async def mark_publish_failed(self, position: int, error: str) -> None:
        params = {"position": position, "error": error[:2000]}
        await self._queue_write(lambda conn: conn.execute(OQ["mark_publish_failed"], params))

    async def outbox_backlog(self) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            return int(conn.execute(OQ["outbox_backlog"]).fetchone()[0])

        return await self._read(fn)

    async def saga_messages(self, saga_id: str) -> list[OutboxRow]:
        def fn(conn: sqlite3.Connection) -> list[OutboxRow]:
            rows = conn.execute(OQ["saga_messages"], {"saga_id": saga_id}).fetchall()
            return [row_from_columns(r) for r in rows]

        return await self._read(fn)

    async def find_inbox(self, participant: str, message_id: str) -> InboxRecord | None:
        params = {"participant": participant, "message_id": message_id}

        def fn(conn: sqlite3.Connection) -> InboxRecord | None:
            row = conn.execute(OQ["find_inbox"], params).fetchone()
            return None if row is None else inbox_from_columns(row)

        return await self._read(fn)

    async def record_inbox(
        self, record: InboxRecord, replies: Sequence[OutboxMessage]
    ) -> InboxRecord:
        def op(conn: sqlite3.Connection) -> InboxRecord:
            params = {"participant": record.participant, "message_id": record.message_id}
            row = conn.execute(OQ["find_inbox"], params).fetchone()
            if row is not None:
                return inbox_from_columns(row)
            conn.execute(
                OQ["insert_inbox"],
                {
                    **params,
                    "name": record.name,
                    "status": record.status,
                    "reply": record.reply,
                    "processed_at": record.processed_at,
                },
            )
            insert_messages(conn, replies)
            return record

        future = self._queue_write(op)
        future.add_done_callback(self._tell_relay)
        stored: InboxRecord = await future
        return stored

    async def inbox_transaction(
        self,
        participant: str,
        message_id: str,
        name: str,
        handle: Callable[[sqlite3.Connection], Awaitable[tuple[str, str]]],
        replies: Callable[[str, str], Sequence[OutboxMessage]],
    ) -> tuple[InboxRecord, bool]:
        """Process a message exactly once: holding the writer connection, in one ``BEGIN
        IMMEDIATE`` transaction, look for its inbox row (found: the message was processed
        before), run ``handle(conn)`` -> ``(status, reply)``, and write the inbox row and the
        outbox rows ``replies(status, reply)``. The stored record, and whether ``handle`` ran.
        A raise rolls everything back (the handler's writes with it)."""
        params = {"participant": participant, "message_id": message_id}
        tx = await begin(
            cast("SqliteStore", self),
            None,
            None,
            what=f"the transaction of {participant!r}'s handler of {name!r}",
            body="the handler",
        )
        try:
            row = tx.connection.execute(OQ["find_inbox"], params).fetchone()
            if row is not None:
                tx.abandon()
                return inbox_from_columns(row), False
            status, reply = await handle(tx.connection)
        except BaseException:
            tx.abandon()
            raise
        done = time.time()
        messages = replies(status, reply)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                OQ["insert_inbox"],
                {**params, "name": name, "status": status, "reply": reply, "processed_at": done},
            )
            insert_messages(conn, messages)

        await tx.commit_with(write)
        if messages and self.on_outbox is not None:
            self.on_outbox()
        return InboxRecord(participant, message_id, name, status, reply, done), True

    async def prune_messages(self, before: float, limit: int) -> tuple[int, int]:
        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            params = {"before": before, "limit": limit}
            outbox = conn.execute(OQ["prune_outbox"], params).rowcount
            inbox = conn.execute(OQ["prune_inbox"], params).rowcount
            return outbox, inbox

        counts: tuple[int, int] = await self._queue_write(op)
        return counts

    async def take_relay_lease(self, owner: str, seconds: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            now = time.time()
            params = {"name": RELAY_LEASE, "owner": owner, "until": now + seconds, "now": now}
            conn.execute(OQ["take_relay_lease"], params)
            row = conn.execute(OQ["relay_owner"], {"name": RELAY_LEASE}).fetchone()
            return row is not None and row[0] == owner

        return bool(await self._queue_write(op))
