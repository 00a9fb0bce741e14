"""Replaying a recorded journal without doing anything: the engine's own replay, stopped at the
first operation the journal does not hold.

:class:`ReplayOnlyRun` is a :class:`~sagakit.engine.run.SagaRun` whose every live start (a
step's body, a compensation, a wait, a child, a call, a recorded value: each passes through
``_check_draining`` right after looking the operation up in the journal) raises
:class:`NewWork` instead. So what it accepts is exactly what a worker replaying the saga would
accept, and it never runs user code besides the saga function itself. It runs over a throwaway
memory store holding a copy of the saga: the terminal status a fully replayed saga reaches is
written there, never to the saga's own database.
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from .. import serde
from ..errors import Drained, NonDeterminismError
from ..services import ServicesFactory
from ..stores.base import JournalEntry, NewSaga, SagaEvent, SagaRecord
from ..stores.memory import MemoryStore
from ..workflows import SagaWorkflow
from .outcome import Outcome
from .run import SagaRun

#: set while a replay check runs: what the engine logs about the copy it replays (a mismatch
#: it fails the copy for) is the check's answer, reported by its caller, not an error of a saga
_checking: contextvars.ContextVar[bool] = contextvars.ContextVar("sagakit_replay", default=False)


class _QuietWhileChecking(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _checking.get()


_engine_log = logging.getLogger("sagakit.engine")
_engine_log.addFilter(_QuietWhileChecking())


@dataclass(frozen=True, slots=True)
class Frontier:
    """The first operation past the recorded journal: where a worker would do new work."""

    seq: int
    kind: str
    name: str
    #: the status of an entry the journal holds there but that has not ended (an attempt in
    #: progress, a wait begun, a retry backing off); None when the journal holds nothing there
    unfinished: str | None = None

    def describe(self) -> str:
        what = f"{self.kind} {self.name!r} at seq {self.seq}"
        if self.unfinished is not None:
            what += f" (recorded {self.unfinished}, not ended)"
        return what


class NewWork(Drained):
    """Internal: the replay reached work the journal does not hold, and stops there."""

    def __init__(self, saga_id: str, frontier: Frontier | None):
        super().__init__(saga_id)
        self.frontier = frontier


class ReplayOnlyRun(SagaRun):
    """A run that replays and never executes (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._looked_up: Frontier | None = None
        #: the journal's seqs the replay met, with the entry recorded there
        self.matched: set[int] = set()

    def _recorded(self, seq: int, kind: str, name: str) -> JournalEntry | None:
        entry = super()._recorded(seq, kind, name)
        if entry is not None:
            self.matched.add(seq)
        # every live start looks its operation up first, synchronously before it starts
        self._looked_up = Frontier(seq, kind, name, None if entry is None else entry.status)
        return entry

    def _check_draining(self) -> None:
        raise NewWork(self.saga_id, self._looked_up)

    @property
    def nondeterminism(self) -> NonDeterminismError | None:
        """The first mismatch the replay met (also when a parallel branch met it while
        another stopped at new work)."""
        return self._nondeterminism


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """How a replay ended: at new work (``frontier``), or with the ``outcome`` the recorded
    journal leads to; ``nondeterminism`` when the code and the journal differ."""

    outcome: Outcome | None
    frontier: Frontier | None
    nondeterminism: NonDeterminismError | None
    #: how many of the journal's entries the replay met
    matched: int


async def replay_only(
    workflow: SagaWorkflow[Any, Any],
    record: SagaRecord,
    journal: list[JournalEntry],
    events: list[SagaEvent],
    *,
    services: ServicesFactory | None = None,
) -> ReplayOutcome:
    """Replay ``journal`` with ``workflow``'s saga function (see the module docstring)."""
    store = MemoryStore()
    await store.open()
    token = _checking.set(True)
    try:
        created = await store.create_saga(
            NewSaga(record.saga_id, record.name, record.input, "replay", 1e9)
        )
        for entry in journal:
            await store.append(record.saga_id, created.record.fence, entry)
        # no parent to tell or to be cancelled by: the copy stands alone
        copy = replace(
            record,
            fence=created.record.fence,
            owner="replay",
            lease_expires_at=time.time() + 1e9,
            parent_id=None,
        )
        run = ReplayOnlyRun(
            store, workflow, copy, list(journal), events=list(events), services=services
        )
        try:
            outcome: Outcome | None = await run.execute()
            frontier = None
        except NewWork as stop:
            outcome, frontier = None, stop.frontier
        mismatch = run.nondeterminism or _recorded_mismatch(record.saga_id, outcome)
        return ReplayOutcome(outcome, frontier, mismatch, len(run.matched))
    finally:
        _checking.reset(token)
        await store.close()


def _recorded_mismatch(saga_id: str, outcome: Outcome | None) -> NonDeterminismError | None:
    """The mismatch a run failed the saga for without meeting it in the journal (the saga
    function returned while the journal holds more)."""
    if outcome is None or outcome.error is None:
        return None
    error = serde.loads(outcome.error)
    if not isinstance(error, dict) or error.get("kind") != "non_determinism":
        return None
    return NonDeterminismError(saga_id, error["seq"], error["recorded"], error["replayed"])


__all__ = ["Frontier", "NewWork", "ReplayOnlyRun", "ReplayOutcome", "replay_only"]
