"""Continue-as-new on PostgreSQL: a saga's run ends and it goes on as the next run, in one
transaction (see :class:`~sagakit.stores.base.NextRun`). Run on the writer's connection, which
runs it again after a dropped connection: the fence and run make that retry a no-op."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from ...errors import LeaseLost
from ..base import JournalEntry, NextRun, RunRecord, entry_from_row
from .sql import Q

T = TypeVar("T")


class PostgresRuns:
    """Mixed into :class:`~sagakit.stores.postgres.store.PostgresStore`: the Store protocol's
    ``continue_as_new``, ``load_run`` and ``load_runs``."""

    if TYPE_CHECKING:  # provided by PostgresStore

        def _call(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> Awaitable[T]: ...

        def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> Awaitable[T]: ...

    async def load_run(self, saga_id: str, run: int) -> list[JournalEntry]:
        return await self._read(lambda conn: run_journal(conn, saga_id, run))

    async def load_runs(
        self, saga_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[RunRecord]:
        rows = await self._read(
            lambda conn: conn.fetch(Q["get_runs"], saga_id, before, max(0, limit))
        )
        return [RunRecord(*row) for row in rows]

    async def continue_as_new(self, cont: NextRun) -> None:
        # a refusal is an answer, not a failure of the database (which _call would wrap)
        if not await self._call(lambda conn: continue_as_new(conn, cont)):
            raise LeaseLost(cont.saga_id)


async def continue_as_new(conn: asyncpg.Connection, cont: NextRun) -> bool:
    """Record the run (its row in saga_runs, its journal archived), retire the events it
    took, and start the next run; False, writing nothing, when the saga is not at the run's
    fence and run any more."""
    async with conn.transaction():
        # the fenced read first: it locks the saga's row (so the update below is not refused),
        # and when it is refused nothing is written
        old = await conn.fetchrow(Q["run_input"], cont.saga_id, cont.fence, cont.run)
        if old is None or (
            await conn.fetchval(
                Q["continue_saga"], cont.saga_id, cont.fence, cont.run, cont.input, cont.version
            )
            is None
        ):
            row = await conn.fetchrow(Q["saga_fence_run"], cont.saga_id)
            # True: this continue committed already (a retry after a lost answer)
            return row is not None and tuple(row) == (cont.fence + 1, cont.run + 1)
        await conn.execute(Q["insert_run"], cont.saga_id, cont.run, old[0], old[1])
        await conn.execute(Q["archive_journal"], cont.saga_id, cont.run)
        await conn.execute(Q["clear_journal"], cont.saga_id)
        if cont.consumed:
            await conn.execute(Q["retire_events"], cont.saga_id, list(cont.consumed))
    return True


async def run_journal(conn: asyncpg.Connection, saga_id: str, run: int) -> list[JournalEntry]:
    """The journal of the saga's earlier run ``run``, in order."""
    rows = await conn.fetch(Q["get_run_journal"], saga_id, run)
    return [entry_from_row(tuple(r)) for r in rows]
