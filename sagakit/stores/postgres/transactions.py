"""Transactional steps on PostgreSQL: the step's writes and its journal entry in one transaction.

The transaction runs on a connection of the store's pool (``read_pool_size`` bounds how many
run at once): ``BEGIN``, the fence checked, the user's body, then the journal entry appended
with the statement the writer uses (fenced: a worker that lost the saga commits nothing), and
``COMMIT``. Other sagas' writes go on meanwhile on the writer connection.

A ``COMMIT`` whose answer is lost (the connection dropped) may or may not have happened. It is
resolved before the run goes on: on another connection, the saga's row is locked, which waits
until the lost transaction (whose fenced append locked that row) has ended either way; then the
journal entry is read: there with this attempt's count and end time means committed. If it is
not there, nothing of the attempt was applied and the run stops (StoreError), to be recovered
from the journal like any run the database failed.

The step's own SQL sees PostgreSQL's default ``search_path`` (``"$user", public``: the
application's tables), not sagakit's schema, which the journal entry's statements switch back
to. The server ends a transaction left idle longer than the store's ``command_timeout`` (a body
that awaits something else than its database for that long, or a client gone silent), so that
the saga's row is never locked for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from ...errors import LeaseLost, SagaError, StoreError
from ..base import JournalEntry, SagaUpdate, StateWrite
from ..retrying import retry
from .batch import Append, write_appends
from .sql import Q
from .store import PostgresStore
from .writer import CONNECT_TIMEOUT as _CONNECT_TIMEOUT
from .writer import is_connection_error as _is_connection_error

log = logging.getLogger("sagakit.store.postgres")

#: the search_path a step's own SQL sees: PostgreSQL's default (the store's connections have
#: sagakit's schema), so that ``INSERT INTO orders`` finds the application's table
USER_SEARCH_PATH = '"$user", public'
#: rollbacks started by abandon(), kept until done (a task nobody references may be collected)
_abandoning: set[asyncio.Task[None]] = set()


async def begin(store: PostgresStore, saga_id: str, fence: int) -> PostgresTransaction:
    """Take a pool connection, ``BEGIN`` and check the fence (LeaseLost if it moved);
    connection failures are retried up to the store's retry deadline."""
    pool = store._pool
    if pool is None or store._closing:
        raise StoreError("the PostgreSQL store is not open")
    idle_ms = str(int(store.command_timeout * 1000))

    async def attempt(_retrying: bool) -> PostgresTransaction:
        conn: asyncpg.Connection = await pool.acquire(timeout=_CONNECT_TIMEOUT)
        tx = PostgresTransaction(store, pool, conn, saga_id, fence)
        try:
            await tx._tr.start()
            found = await conn.fetchval(Q["saga_fence"], saga_id)
            await conn.execute(Q["transaction_settings"], idle_ms, USER_SEARCH_PATH)
        except BaseException:
            await tx._end(rollback=True)
            raise
        if found != fence:
            await tx._end(rollback=True)
            raise LeaseLost(saga_id)
        return tx

    try:
        return await retry(
            attempt,
            what="PostgreSQL transaction",
            transient=_is_connection_error,
            deadline=store.retry_deadline,
            log=log,
        )
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"PostgreSQL transaction failed: {type(exc).__name__}: {exc}") from exc


class PostgresTransaction:
    """One transactional step's (or compensation's) transaction on a pool connection."""

    def __init__(
        self,
        store: PostgresStore,
        pool: asyncpg.Pool,
        conn: asyncpg.Connection,
        saga_id: str,
        fence: int,
    ):
        self._store = store
        self._pool = pool
        self._conn = conn
        self._tr: Any = conn.transaction()
        self.saga_id = saga_id
        self.fence = fence
        self._done = False

    @property
    def connection(self) -> asyncpg.Connection:
        return self._conn

    async def commit(
        self,
        entry: JournalEntry,
        update: SagaUpdate | None = None,
        state: Sequence[StateWrite] = (),
    ) -> None:
        if self._done:
            raise StoreError("this transaction has ended already")
        if not self._conn.is_in_transaction():
            await self._end(rollback=False)
            raise SagaError(
                f"the transaction of saga {self.saga_id!r} was ended by the step's own code "
                "(COMMIT or ROLLBACK on ctx.connection): leave that to sagakit"
            )
        loop = asyncio.get_running_loop()
        appended: asyncio.Future[None] = loop.create_future()
        op = Append(self.saga_id, self.fence, entry, update, appended, None, tuple(state))
        try:
            await self._conn.execute(Q["transaction_schema"], f'"{self._store.schema}"')
            await write_appends(self._conn, False, [op])
        except BaseException as exc:
            await self._end(rollback=True)
            if isinstance(exc, Exception) and _is_connection_error(exc):
                raise StoreError(
                    f"PostgreSQL transaction failed: {type(exc).__name__}: {exc}"
                ) from exc
            # the database refused: the step's code caught an error of its own, and the
            # transaction is aborted (a retry of the commit would be refused the same way)
            raise
        refused = appended.exception()
        if refused is not None:  # LeaseLost: the fence moved
            await self._end(rollback=True)
            raise refused
        try:
            await self._tr.commit()
        except Exception as exc:
            if not _is_connection_error(exc):
                # the server refused the commit (a deferred constraint, a serialization
                # failure): it rolled the transaction back
                await self._end(rollback=False)
                raise
            with contextlib.suppress(Exception):  # gone already
                self._conn.terminate()  # the server side sees the client gone at once
            await self._end(rollback=False)
            if await self._committed(entry):
                log.info(
                    "the lost COMMIT of saga %s (seq %d) had happened", self.saga_id, entry.seq
                )
            else:
                raise StoreError(
                    f"PostgreSQL connection lost at COMMIT ({exc}); the transaction of saga "
                    f"{self.saga_id!r} did not commit: it runs again once the saga is recovered"
                ) from exc
        else:
            await self._end(rollback=False)
        self._store.commits += 1
        self._store.writes += 1

    async def _committed(self, entry: JournalEntry) -> bool:
        """Whether a COMMIT whose answer was lost happened (see the module docstring)."""
        pool = self._pool

        async def attempt(_retrying: bool) -> bool:
            async with pool.acquire(timeout=_CONNECT_TIMEOUT) as conn, conn.transaction():
                await conn.fetchval(Q["lock_saga_row"], self.saga_id)
                row = await conn.fetchrow(Q["entry_outcome"], self.saga_id, entry.seq)
            return (
                row is not None
                and row["status"] == entry.status
                and row["attempts"] == entry.attempts
                and row["finished_at"] == entry.finished_at
            )

        try:
            return await retry(
                attempt,
                what="PostgreSQL commit check",
                transient=_is_connection_error,
                deadline=self._store.retry_deadline,
                log=log,
            )
        except Exception as exc:
            raise StoreError(
                f"could not tell whether the transaction of saga {self.saga_id!r} committed "
                f"({exc}); the saga is recovered from its journal"
            ) from exc

    async def rollback(self) -> None:
        await self._end(rollback=True)

    def abandon(self) -> None:
        if self._done:
            return
        task = asyncio.get_running_loop().create_task(self._end(rollback=True))
        _abandoning.add(task)
        task.add_done_callback(_abandoning.discard)

    async def _end(self, *, rollback: bool) -> None:
        """Roll back (if asked and still open) and give the connection back to the pool; a
        connection that fails meanwhile is closed instead."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        try:
            if rollback and not conn.is_closed() and conn.is_in_transaction():
                try:
                    await self._tr.rollback()
                except asyncpg.InterfaceError:  # not ours to end any more (the step's code)
                    await conn.execute("ROLLBACK")
            await self._pool.release(conn)
        except Exception:
            conn.terminate()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)
