"""The operator's view of a saga that continued as new (``saga.continue_as_new``): the list of
its runs (``engine.admin.runs``) and the journal of an earlier one (``engine.admin.get_run``).

A saga keeps one id across its runs; the current run's journal is the saga's journal, and each
earlier run's is kept, as it was when that run continued, until the saga is deleted or pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .engine.snapshots import SagaSnapshot
from .errors import SagaError, SagaNotFoundError
from .stores.base import JournalEntry, Store

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["RunAdmin", "RunSummary"]


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run of a saga: its number (1, 2, ...), whether it is the saga's current run, how
    many journal entries it has, and when its first and last entries were written (``None``
    for a run with none yet)."""

    run: int
    current: bool
    entries: int
    started_at: datetime | None
    ended_at: datetime | None


class RunAdmin:
    """The runs part of :class:`~sagakit.SagaAdmin` (``engine.admin``)."""

    if TYPE_CHECKING:  # provided by SagaAdmin
        _engine: Engine

        def _store(self) -> Store: ...

        async def get_saga(self, saga_id: str) -> SagaSnapshot: ...

    async def runs(self, saga_id: str) -> list[RunSummary]:
        """The saga's runs, oldest first; the last is the current one (a saga that never
        continued as new has one). Reads every earlier run's journal: for a saga with very
        many runs, look at one with :meth:`get_run`.

        Raises SagaNotFoundError.
        """
        store = self._store()
        record = await store.load_saga(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        found = []
        for run in range(1, record.run + 1):
            current = run == record.run
            journal = await (
                store.load_journal(saga_id) if current else store.load_run(saga_id, run)
            )
            found.append(_summary(run, current, journal))
        return found

    async def get_run(self, saga_id: str, run: int) -> SagaSnapshot:
        """The saga with the journal of its run ``run`` (``steps``; ``snapshot.run`` says which,
        ``snapshot.runs`` how many there are): an earlier run's as it was when it continued as
        new, the current run's as :meth:`get_saga` has it. The rest (status, input, output) is
        the saga's as it is now.

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
        return SagaSnapshot.build(record, await store.load_run(saga_id, run), run=run)


def _summary(run: int, current: bool, journal: list[JournalEntry]) -> RunSummary:
    entries = [e for e in journal if e.seq >= 0]
    started = min((e.started_at for e in entries), default=None)
    ended = max((e.finished_at for e in entries), default=None)
    return RunSummary(run, current, len(entries), _time(started), _time(ended))


def _time(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)
