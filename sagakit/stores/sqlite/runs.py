"""Continue-as-new on SQLite: a saga's run ends and it goes on as the next run, in one
transaction of the store's writer (see :class:`~sagakit.stores.base.NextRun`)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import LeaseLost
from ..base import JournalEntry, NextRun, RunRecord, entry_from_row
from .sql import Q

T = TypeVar("T")


class SqliteRuns:
    """Mixed into :class:`~sagakit.stores.sqlite.store.SqliteStore`: the Store protocol's
    ``continue_as_new``, ``load_run`` and ``load_runs``."""

    if TYPE_CHECKING:  # provided by SqliteStore

        async def _write(self, op: Callable[[sqlite3.Connection], Any]) -> Any: ...

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def load_run(self, saga_id: str, run: int) -> list[JournalEntry]:
        return await self._read(lambda conn: run_journal(conn, saga_id, run))

    async def load_runs(
        self, saga_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[RunRecord]:
        params = {"saga_id": saga_id, "before": before, "limit": max(0, limit)}
        rows = await self._read(lambda conn: conn.execute(Q["get_runs"], params).fetchall())
        return [RunRecord(*row) for row in rows]

    async def continue_as_new(self, cont: NextRun) -> None:
        await self._write(lambda conn: continue_in(conn, cont))


def continue_in(conn: sqlite3.Connection, cont: NextRun) -> None:
    """Record the run (its row in saga_runs, its journal archived), retire the events it
    took, and start the next run."""
    params = {
        "saga_id": cont.saga_id,
        "fence": cont.fence,
        "run": cont.run,
        "input": cont.input,
        "version": cont.version,
        "now": time.time(),
    }
    # the fenced read and update first: when they are refused, nothing was written (the one
    # writer connection runs nothing between them)
    old = conn.execute(Q["run_input"], params).fetchone()
    if old is None or conn.execute(Q["continue_saga"], params).rowcount != 1:
        row = conn.execute(Q["saga_fence_run"], {"saga_id": cont.saga_id}).fetchone()
        if row is not None and tuple(row) == (cont.fence + 1, cont.run + 1):
            return  # this continue committed already: a retry after a lost answer
        raise LeaseLost(cont.saga_id)
    conn.execute(Q["insert_run"], {**params, "old_input": old[0], "old_version": old[1]})
    conn.execute(Q["archive_journal"], {"saga_id": cont.saga_id, "run": cont.run})
    conn.execute(Q["delete_saga_journal"], {"saga_id": cont.saga_id})
    if cont.consumed:
        seqs = json.dumps(list(cont.consumed))
        conn.execute(Q["retire_events"], {"saga_id": cont.saga_id, "seqs": seqs})


def run_journal(conn: sqlite3.Connection, saga_id: str, run: int) -> list[JournalEntry]:
    """The journal of the saga's earlier run ``run``, in order."""
    rows = conn.execute(Q["get_run_journal"], {"saga_id": saga_id, "run": run})
    return [entry_from_row(r) for r in rows]
