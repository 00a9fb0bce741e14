"""Transactional steps on SQLite: the step's writes and its journal entry in one transaction.

The transaction runs on the store's one writer connection, which it *holds* from ``BEGIN
IMMEDIATE`` to ``COMMIT``: while it is held the group commit does not run (``_flush`` returns
at once and the writes queued meanwhile wait for the next one), because a batch committed on
that connection would commit the step's half-done writes with it. Everything queued before the
transaction is flushed first, so the saga's earlier appends (settled by the engine anyway) and
other sagas' writes do not wait behind the step.

The user's body runs on the event loop, and its ``sqlite3`` calls are synchronous: they block
the loop for as long as they take, which for a local file is microseconds to a millisecond a
statement. A body should do its database work and return; while it runs, every other saga of
this store waits to commit. A body must not wait for a write of this store (start a saga,
send a signal, await another step): that write waits for the transaction, which waits for it.

A participant's transactional handler (:meth:`SqliteOutbox.inbox_transaction
<sagakit.stores.sqlite.outbox.SqliteOutbox.inbox_transaction>`) runs the same way, with no saga
and so no fence: its writes commit with its inbox row and its reply's outbox row.

Only one transaction holds the writer at a time; the others wait their turn (in arrival order).
Another *process* writing the file makes ``BEGIN IMMEDIATE`` answer "locked": it is retried
with backoff, without blocking the loop, up to the store's retry deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from ...errors import LeaseLost, SagaError, StoreError
from ..base import JournalEntry, SagaUpdate, StateWrite
from ..retrying import Backoff
from .sql import Q
from .writes import append_in

if TYPE_CHECKING:
    from .store import SqliteStore

log = logging.getLogger("sagakit.store.sqlite")
T = TypeVar("T")

_FIRST_BUSY_DELAY = 0.001
_MAX_BUSY_DELAY = 0.1


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


async def begin(
    store: SqliteStore,
    saga_id: str | None,
    fence: int | None,
    *,
    what: str = "",
    body: str = "the step",
) -> SqliteTransaction:
    """Hold the writer connection, flush what was queued before, and ``BEGIN IMMEDIATE``;
    LeaseLost (released again) if the saga's fence is not ``fence`` any more. ``fence=None``:
    a transaction of no saga (a participant's transactional handler), no fence to check;
    ``what`` names it in errors, ``body`` the code that runs in it."""
    while store._held is not None:
        await asyncio.shield(store._held)
    if not store._open or store._closing or store._writer_conn is None:
        raise StoreError("the SQLite store is not open")
    if store._pending:
        # what was queued before the transaction commits before it (the write-behind rule)
        store._flush()
    held: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    store._held = held
    tx = SqliteTransaction(store, store._writer_conn, saga_id, fence)
    if what:
        tx.what = what
    tx.body = body
    try:
        await tx._begin()
    except BaseException:
        tx.abandon()
        raise
    return tx


class SqliteTransaction:
    """One transactional step's (or compensation's, or participant handler's) transaction on
    the writer connection."""

    def __init__(
        self, store: SqliteStore, conn: sqlite3.Connection, saga_id: str | None, fence: int | None
    ):
        self._store = store
        self._conn = conn
        self.saga_id = saga_id
        self.fence = fence
        #: what runs in the transaction, for the errors
        self.what = f"the transaction of saga {saga_id!r}"
        #: the user's code that runs in it
        self.body = "the step"
        self._done = False

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    async def _begin(self) -> None:
        backoff = Backoff(
            "SQLite transaction",
            self._store.retry_deadline,
            first_delay=_FIRST_BUSY_DELAY,
            max_delay=_MAX_BUSY_DELAY,
        )
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise StoreError(f"SQLite could not begin a transaction: {exc}") from exc
                # another process writes the file: wait without blocking the loop
                await asyncio.sleep(backoff.next_delay(exc))
        if self.saga_id is None or self.fence is None:
            return
        row = self._conn.execute(Q["saga_fence"], {"saga_id": self.saga_id}).fetchone()
        if row is None or row[0] != self.fence:
            raise LeaseLost(self.saga_id)

    async def commit(
        self,
        entry: JournalEntry,
        update: SagaUpdate | None = None,
        state: Sequence[StateWrite] = (),
    ) -> None:
        if self.saga_id is None or self.fence is None:
            raise StoreError(f"{self.what} belongs to no saga: end it with commit_with()")
        saga_id, fence = self.saga_id, self.fence
        await self.commit_with(
            lambda conn: append_in(conn, saga_id, fence, entry, update, None, state)
        )

    async def commit_with(self, write: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``write`` on the connection (sagakit's own rows: a journal entry, an inbox row)
        and commit it with what the body wrote; its result."""
        if self._done:
            raise StoreError("this transaction has ended already")
        if not self._conn.in_transaction:
            self.abandon()
            # the body committed or rolled back on its own: its writes (if any) stand alone,
            # without the record (journal entry, inbox row) that would stop them being redone
            raise SagaError(
                f"{self.what} was ended by {self.body}'s own code (commit() or rollback() "
                "on ctx.connection): leave that to sagakit"
            )
        try:
            result = write(self._conn)
            self._conn.execute("COMMIT")
        except sqlite3.IntegrityError:
            self.abandon()  # the database refused the user's writes (a deferred constraint)
            raise
        except sqlite3.Error as exc:
            self.abandon()
            raise StoreError(f"SQLite transaction failed: {exc}") from exc
        except BaseException:  # LeaseLost (the fence moved), or ``write``'s own error
            self.abandon()
            raise
        self._store.commits += 1
        self._store.writes += 1
        self._release()
        return result

    async def rollback(self) -> None:
        self.abandon()

    def abandon(self) -> None:
        if self._done:
            return
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
        self._release()

    def _release(self) -> None:
        """Give the writer back to the group commit (and to the next transaction)."""
        self._done = True
        store = self._store
        held, store._held = store._held, None
        if held is not None and not held.done():
            held.set_result(None)
        if store._pending and store._flush_handle is None:
            store._flush_handle = asyncio.get_running_loop().call_soon(store._flush)
