"""``ctx.session``: SQLAlchemy's ``AsyncSession`` inside a transactional step's transaction.

PostgreSQL only. The session's engine is bound to the transaction's own ``asyncpg``
connection (``async_creator`` returns it, a ``StaticPool`` keeps it and never closes it), so
whatever the session writes commits or rolls back with the step's journal entry. SQLAlchemy
begins a transaction of its own on that connection; asyncpg, seeing one open already, makes it
a ``SAVEPOINT``. Hence, inside the body:

* ``await ctx.session.commit()`` flushes and *releases the savepoint*: the writes join the
  step's transaction, durable only when the step's journal entry commits (a later failure of
  the body still rolls them back). It cannot commit the step's transaction.
* ``await ctx.session.rollback()`` rolls back to the savepoint: the session's writes since its
  last commit go, the rest of the step's transaction stays.
* When the body returns, sagakit commits the session (flushing what is pending) before it
  appends the journal entry; a flush the database refuses fails the attempt like any exception.

The session is made on first use of ``ctx.session`` (SQLAlchemy asks the server a few
questions then, a few milliseconds a step); the JSON codecs SQLAlchemy installs on the
connection are reset before it goes back to the store's pool.

SQLite is refused (:class:`~sagakit.errors.TransactionsUnsupportedError`): SQLAlchemy's
``pysqlite`` dialect ends transactions with ``sqlite3.Connection.commit()``/``rollback()``,
which act on the store's own ``BEGIN IMMEDIATE`` (its very first connect rolls back), and
``aiosqlite`` cannot wrap an existing ``sqlite3`` connection. Use ``ctx.connection`` there.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import TYPE_CHECKING, Any

from .errors import SagaError, TransactionsUnsupportedError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


class SqlAlchemyNotInstalled(SagaError):
    """``ctx.session`` was used without SQLAlchemy installed."""


class StepSession:
    """The ``AsyncSession`` of one transactional attempt, and how it ends."""

    __slots__ = ("_connection", "session")

    def __init__(self, connection: Any, step_name: str | None):
        if isinstance(connection, sqlite3.Connection):
            raise TransactionsUnsupportedError(
                f"ctx.session in transactional step {step_name!r}: SQLAlchemy's session "
                "cannot share the SQLite store's connection without committing or rolling back "
                "its transaction; write through ctx.connection (sqlite3) instead, or use a "
                "PostgreSQL store"
            )
        try:
            from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
            from sqlalchemy.pool import StaticPool
        except ImportError as exc:
            raise SqlAlchemyNotInstalled(
                "ctx.session needs SQLAlchemy: pip install 'sagakit[sqlalchemy]' "
                "(or write through ctx.connection)"
            ) from exc
        self._connection = connection

        async def lend() -> Any:
            return connection

        # StaticPool: the session gives the connection back on close, and nothing closes it
        engine = create_async_engine(
            "postgresql+asyncpg://", async_creator=lend, poolclass=StaticPool
        )
        # its commit only releases a savepoint: the rows stay loaded, nothing to expire
        self.session: AsyncSession = AsyncSession(engine, expire_on_commit=False)

    async def finish(self, ok: bool) -> None:
        """Commit (``ok``: flush and release the savepoint) or roll back the session, close it,
        and give the connection its own JSON codecs back. A commit's error propagates (the
        attempt fails); the step's transaction itself is sagakit's to commit or roll back."""
        try:
            if ok:
                await self.session.commit()
        finally:
            try:
                with contextlib.suppress(Exception):
                    await self.session.close()
            finally:
                await self._reset_codecs()

    async def _reset_codecs(self) -> None:
        conn = self._connection
        if conn.is_closed():
            return
        # asyncpg answers "in failed transaction" to the introspection if the body left the
        # transaction aborted: that transaction is rolled back next, then the codecs stay
        # SQLAlchemy's (str in and out, like asyncpg's own) until the connection is replaced
        with contextlib.suppress(Exception):
            for name in ("json", "jsonb"):
                await conn.reset_type_codec(name, schema="pg_catalog")
