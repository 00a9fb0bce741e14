"""The operator's view of a saga that continued as new (``saga.continue_as_new``): the list of
its runs (``engine.admin.runs``) and the journal of an earlier one (``engine.admin.get_run``).

A saga keeps one id across its runs; the current run's journal is the saga's journal, and each
earlier run's is kept, as it was when that run continued, until the saga is deleted or pruned,
with a row that says what the run started with (input, version), so that listing the runs reads
no earlier journal: a saga that continued 10,000 times lists its last runs as fast as one that
continued once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import serde
from .engine.snapshots import SagaSnapshot
from .errors import SagaError, SagaNotFoundError
from .stores.base import JournalEntry, RunRecord, SagaRecord, Store

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["RunAdmin", "RunSummary"]


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run of a saga: its number (1, 2, ...), whether it is the saga's current run, how
    many journal entries it has, when its first entry was written (``None`` for a run with
    none), when it ended (an earlier run: when it continued as new; the current run: its last
    entry's end so far, ``None`` with none yet), and the input (decoded JSON) and version
    (``None``: unversioned) it ran with."""

    run: int
    current: bool
    entries: int
    started_at: datetime | None
    ended_at: datetime | None
    input: Any = None
    version: str | None = None


class RunAdmin:
    """The runs part of :class:`~sagakit.SagaAdmin` (``engine.admin``)."""

    if TYPE_CHECKING:  # provided by SagaAdmin
        _engine: Engine

        def _store(self) -> Store: ...

        async def get_saga(self, saga_id: str) -> SagaSnapshot: ...

    async def runs(
        self, saga_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[RunSummary]:
        """The saga's last ``limit`` runs numbered below ``before`` (``None``: all, the current
        one included), oldest first: without ``before`` the last one is the current run (a saga
        that never continued as new has one). How many runs there are in all is the current
        run's number (``get_saga(id).runs``); the page before one is
        ``runs(id, before=page[0].run)``. Reads the earlier runs' rows and the current run's
        journal, never an earlier run's journal.

        Raises SagaNotFoundError.
        """
        store = self._store()
        record = await store.load_saga(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        limit = max(0, limit)
        found: list[RunSummary] = []
        if limit and (before is None or before > record.run):
            found.append(_current(record, await store.load_journal(saga_id)))
        if limit > len(found):
            bound = record.run if before is None else min(before, record.run)
            rows = await store.load_runs(saga_id, before=bound, limit=limit - len(found))
            found.extend(_earlier(row) for row in rows)
        return found[::-1]

    async def get_run(self, saga_id: str, run: int) -> SagaSnapshot:
        """The saga with the journal of its run ``run`` (``steps``; ``snapshot.run`` says which,
        ``snapshot.runs`` how many there are): an earlier run's as it was when it continued as
        new, with the input and version it ran with; the current run's as :meth:`get_saga` has
        it. The rest (status, output, error, events) is the saga's as it is now.

        Raises SagaNotFoundError, and SagaError for a run the saga has not had.
        """
        store = self._store()
        record = await store.load_saga(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        if not 1 <= run <= record.run:
            raise SagaError(
                f"saga {saga_id!r} has no run {run}: it has had {record.run} run(s), numbered "
                f"1 to {record.run}"
            )
        if run == record.run:
            return await self.get_saga(saga_id)
        rows = await store.load_runs(saga_id, before=run + 1, limit=1)
        if rows and rows[0].run == run:  # the input and version that run ran with
            record = replace(record, input=rows[0].input, version=rows[0].version)
        return SagaSnapshot.build(record, await store.load_run(saga_id, run), run=run)


def _current(record: SagaRecord, journal: list[JournalEntry]) -> RunSummary:
    entries = [e for e in journal if e.seq >= 0]
    started = min((e.started_at for e in entries), default=None)
    ended = max((e.finished_at for e in entries), default=None)
    return RunSummary(
        record.run,
        True,
        len(entries),
        _time(started),
        _time(ended),
        serde.loads(record.input),
        record.version,
    )


def _earlier(row: RunRecord) -> RunSummary:
    return RunSummary(
        row.run,
        False,
        row.entries,
        _time(row.started_at),
        _time(row.ended_at),
        serde.loads(row.input),
        row.version,
    )


def _time(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)
