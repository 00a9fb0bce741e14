"""The PostgreSQL store's outbox, inbox and relay lease (see :mod:`sagakit.stores.outbox`).

A remote step's journal entry and its command's outbox row are written by one function on
the writer connection, in one transaction, after the saga's row was locked under the writer's
fence; the transaction ends with a NOTIFY on the schema's outbox channel, which wakes the
relay of whichever process holds the relay lease. Writes are idempotent under the writer's
retry: the entry is an upsert and each outbox row carries a key chosen before the first
attempt.

A participant whose handler is transactional (:meth:`PostgresOutbox.inbox_transaction`) runs
on a pool connection inside one transaction that also holds its inbox row and its reply's
outbox row: the handler's writes, the record that the message was processed and the reply
commit together or not at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import astuple
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from ...errors import LeaseLost, StoreError
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
from .batch import Batch, Call

OQ = load_queries(__package__ or "sagakit.stores.postgres", "outbox.sql")
T = TypeVar("T")
#: the NOTIFY channel of the outbox in ``public`` (``<this>_<schema>`` elsewhere)
OUTBOX_CHANNEL = "sagakit_outbox"


async def insert_messages(conn: asyncpg.Connection, messages: Sequence[OutboxMessage]) -> None:
    for m in messages:
        await conn.execute(
            OQ["insert_outbox"],
            m.message_id,
            m.destination,
            m.kind,
            m.name,
            m.payload,
            m.reply_to,
            m.correlation_id,
            m.headers_json(),
            m.saga_id,
            m.key,
        )
    if messages:
        await conn.execute(OQ["notify_outbox"])


def _deleted(status: str) -> int:
    """The row count of a ``DELETE n`` command status."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresOutbox:
    """Mixed into :class:`~sagakit.stores.postgres.store.PostgresStore`."""

    on_outbox: Callable[[], None] | None = None

    if TYPE_CHECKING:  # provided by PostgresStore
        schema: str
        _pool: asyncpg.Pool | None

        def _call(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> Awaitable[T]: ...

        def _enqueue(self) -> Batch: ...

        def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> Awaitable[T]: ...

    @property
    def outbox_channel(self) -> str:
        """The NOTIFY channel of this schema's outbox (outbox.sql names it alike)."""
        return OUTBOX_CHANNEL if self.schema == "public" else f"{OUTBOX_CHANNEL}_{self.schema}"

    def _outbox_notified(self, *_args: object) -> None:
        if self.on_outbox is not None:
            self.on_outbox()

    def append_outbox(
        self,
        saga_id: str,
        fence: int,
        entry: JournalEntry,
        messages: Sequence[OutboxMessage],
    ) -> asyncio.Future[None]:
        async def fn(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                if await conn.fetchval(OQ["fence_saga"], saga_id, fence) is None:
                    return False
                await conn.execute(OQ["upsert_entry"], *astuple(entry))
                await insert_messages(conn, messages)
                return True

        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(written: asyncio.Future[bool]) -> None:
            if done.done():
                return
            if written.cancelled():
                done.set_exception(StoreError("the PostgreSQL store closed before the write"))
            elif (exc := written.exception()) is not None:
                done.set_exception(exc)
            elif not written.result():
                done.set_exception(LeaseLost(saga_id))
            else:
                done.set_result(None)

        # queued now, as an append is: the writes of one saga commit in the order they were made
        written: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._enqueue().calls.append(Call(fn, written))
        written.add_done_callback(settle)
        return done

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        async def fn(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await insert_messages(conn, messages)

        await self._call(fn)

    async def unpublished(self, limit: int = 100) -> list[OutboxRow]:
        async def fn(conn: asyncpg.Connection) -> list[OutboxRow]:
            return [row_from_columns(tuple(r)) for r in await conn.fetch(OQ["unpublished"], limit)]

        return await self._read(fn)

    async def mark_published(self, positions: Sequence[int]) -> None:
        async def fn(conn: asyncpg.Connection) -> None:
            await conn.execute(OQ["mark_published"], list(positions))

        await self._call(fn)

    async def mark_publish_failed(self, position: int, error: str) -> None:
        async def fn(conn: asyncpg.Connection) -> None:
            await conn.execute(OQ["mark_publish_failed"], position, error[:2000])

        await self._call(fn)

    async def outbox_backlog(self) -> int:
        async def fn(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(OQ["outbox_backlog"]))

        return await self._read(fn)

    async def saga_messages(self, saga_id: str) -> list[OutboxRow]:
        async def fn(conn: asyncpg.Connection) -> list[OutboxRow]:
            rows = await conn.fetch(OQ["saga_messages"], saga_id)
            return [row_from_columns(tuple(r)) for r in rows]

        return await self._read(fn)

    async def find_inbox(self, participant: str, message_id: str) -> InboxRecord | None:
        async def fn(conn: asyncpg.Connection) -> InboxRecord | None:
            row = await conn.fetchrow(OQ["find_inbox"], participant, message_id)
            return None if row is None else inbox_from_columns(tuple(row))

        return await self._read(fn)

    async def record_inbox(
        self, record: InboxRecord, replies: Sequence[OutboxMessage]
    ) -> InboxRecord:
        async def fn(conn: asyncpg.Connection) -> InboxRecord:
            async with conn.transaction():
                if await conn.fetchval(OQ["insert_inbox"], *astuple(record)) is None:
                    row = await conn.fetchrow(
                        OQ["find_inbox"], record.participant, record.message_id
                    )
                    return inbox_from_columns(tuple(row))
                await insert_messages(conn, replies)
                return record

        return await self._call(fn)

    async def inbox_transaction(
        self,
        participant: str,
        message_id: str,
        name: str,
        handle: Callable[[asyncpg.Connection], Awaitable[tuple[str, str]]],
        replies: Callable[[str, str], Sequence[OutboxMessage]],
    ) -> tuple[InboxRecord, bool]:
        """Process a message exactly once: in one transaction on a pool connection, claim its
        inbox row (a concurrent delivery of the same message waits for this transaction, then
        finds the row), run ``handle(conn)`` -> ``(status, reply)``, store the reply and the
        outbox rows ``replies(status, reply)``. The stored record, and whether ``handle`` ran
        (False: the message was processed before). A raise rolls everything back."""
        pool = self._pool
        if pool is None:
            raise StoreError("the PostgreSQL store is not open")
        async with pool.acquire() as conn, conn.transaction():
            now = time.time()
            claimed = await conn.fetchval(
                OQ["insert_inbox"], participant, message_id, name, "running", "null", now
            )
            if claimed is None:
                row = await conn.fetchrow(OQ["find_inbox"], participant, message_id)
                return inbox_from_columns(tuple(row)), False
            status, reply = await handle(conn)
            done = time.time()
            await conn.execute(OQ["update_inbox"], participant, message_id, status, reply, done)
            await insert_messages(conn, replies(status, reply))
            return InboxRecord(participant, message_id, name, status, reply, done), True

    async def prune_messages(self, before: float, limit: int) -> tuple[int, int]:
        async def fn(conn: asyncpg.Connection) -> tuple[int, int]:
            async with conn.transaction():
                outbox = await conn.execute(OQ["prune_outbox"], before, limit)
                inbox = await conn.execute(OQ["prune_inbox"], before, limit)
            return _deleted(outbox), _deleted(inbox)

        return await self._call(fn)

    async def take_relay_lease(self, owner: str, seconds: float) -> bool:
        async def fn(conn: asyncpg.Connection) -> bool:
            holder = await conn.fetchval(OQ["take_relay_lease"], RELAY_LEASE, owner, seconds)
            return bool(holder == owner)

        return await self._call(fn)


__all__ = ["OUTBOX_CHANNEL", "PostgresOutbox", "insert_messages"]
