"""How a run ends when it does not roll back: the saga finishes, suspends in its waits, parks
for an operator, or continues as new. Mixed into :class:`~sagakit.engine.run.SagaRun`.

Continue-as-new (``saga.continue_as_new(inp)``, as in Temporal): the saga function raises
:class:`~sagakit.errors.ContinueAsNew`; once every write of the run committed, one store
transaction archives the run's journal, retires the events the run took, and makes the saga's
input the new one, its run the next, its fence the next (a late write of the old run is refused);
then the next run starts here at once, from an empty journal. A crash before that transaction
replays the old run, which reaches the same call and continues again; after it, the next run is
claimed like any saga. The old run's compensations are dropped: continuing commits the run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

from .. import serde
from ..errors import (
    ContinueAsNew,
    ErrorInfo,
    EventsArrived,
    NonDeterminismError,
    SagaError,
    StoreError,
    StoreUnavailable,
)
from ..objects import operation_writes
from ..stores.base import (
    NEVER,
    EntryKind,
    EventKind,
    NextRun,
    SagaEvent,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
)
from ..workflows import SagaWorkflow
from .core import RunCore
from .outcome import Outcome
from .parallel import Strand
from .waits import PendingWait

if TYPE_CHECKING:
    from .run import SagaRun

log = logging.getLogger("sagakit.engine")

#: the definition (and the version to record) a saga of this name continues on: the one
#: registered last under the name in the engine running it (as ``engine.start("Name")``)
Successor = Callable[[str], tuple[SagaWorkflow[Any, Any], str | None] | None]

#: the kinds of entries whose output names the event that answered them (``{"event": seq}``)
_ANSWERED = frozenset(
    {EntryKind.SIGNAL, EntryKind.PROMISE, EntryKind.SLEEP, EntryKind.CHILD_RESULT}
)


class EndingMixin(RunCore):
    """The endings of a run other than its rollback (see the module docstring)."""

    _events: list[SagaEvent] | None
    _events_floor: int
    _pending_waits: list[PendingWait]
    _in_flight: set[asyncio.Future[None]]
    _forward_done: bool
    _root: Strand
    #: set by the engine (see running.py); None: continue on this run's own definition
    successor: Successor | None = None
    #: the definition and version chosen by ``continue_as_new`` for the next run
    _continuing: tuple[SagaWorkflow[Any, Any], str | None] | None = None

    if TYPE_CHECKING:  # provided by SagaRun, ChildrenMixin, WaitsMixin and ParallelMixin

        async def _tell_parent(
            self, status: SagaStatus, output: str | None, error: str | None
        ) -> None: ...

        async def _load_events(self) -> list[SagaEvent]: ...

        def _strand(self) -> Strand: ...

        def _next_run(
            self, workflow: SagaWorkflow[Any, Any], record: SagaRecord, live_input: Any
        ) -> SagaRun: ...

    # -- continue-as-new ---------------------------------------------------------------------

    def continue_as_new(self, inp: Any) -> NoReturn:
        """``saga.continue_as_new(inp)``: check where it is called and the new input (against
        the input type of the definition the next run will use), then end the run."""
        where = None
        if operation_writes.get() is not None:
            where = "inside a step or a compensation"
        elif self._forward_done:
            where = "after the saga function ended (in its rollback)"
        elif self._strand() is not self._root:
            where = "inside a branch of saga.gather"
        elif self._root.owner is not None and asyncio.current_task() is not self._root.owner:
            where = "from a task the saga did not start (asyncio.gather, create_task)"
        if where is not None:
            raise SagaError(
                f"saga {self.saga_id!r}: saga.continue_as_new was called {where}; call it from "
                "the saga function itself, as its last act (`saga.continue_as_new(next_input)`)"
            )
        found = None if self.successor is None else self.successor(self.workflow.name)
        workflow, version = found or (self.workflow, self.record.version)
        # SagaValidationError, before anything is written: the saga function may catch it
        value = workflow.input.validate(inp)
        text = self._dumps(value, f"the input of saga {workflow.name!r}")
        self._continuing = (workflow, version)
        raise ContinueAsNew(self.saga_id, value, text)

    async def _continue(self, request: ContinueAsNew) -> Outcome:
        """Commit this run and start the next (see the module docstring)."""
        await self._settle()  # the run's own entries first: they are archived with it
        workflow, version = self._continuing or (self.workflow, self.record.version)
        events = await self._load_events()
        taken = _taken(self._journal.values(), events)
        step = NextRun(
            self.saga_id, self.fence, self.record.run, request.text, version, tuple(sorted(taken))
        )
        try:
            await self._store.continue_as_new(step)
        except StoreError as exc:
            raise StoreUnavailable(self.saga_id, exc) from exc
        record = replace(
            self.record,
            input=request.text,
            version=version,
            fence=self.fence + 1,
            run=self.record.run + 1,
        )
        successor = self._next_run(workflow, record, request.input)
        # the events this run saw are numbered up to here, even once the taken ones are gone
        successor._events_floor = max(self._events_floor, events[-1].seq if events else 0)
        log.debug(
            "saga %s continues as run %d",
            self.saga_id,
            record.run,
            extra={"saga_id": self.saga_id, "workflow": workflow.name},
        )
        return Outcome(SagaStatus.RUNNING, None, None, next_run=successor)

    # -- the other endings -------------------------------------------------------------------

    async def _suspend(self) -> Outcome:
        """Leave the saga SUSPENDED in its waits, released, until a timer or an event."""
        waits = sorted(self._pending_waits, key=lambda w: w.seq)
        times = [w.until for w in waits if w.until is not None]
        wake_at = min(times) if times else None
        update = SagaUpdate(
            SagaStatus.SUSPENDED,
            wake_at=NEVER if wake_at is None else wake_at,
            wait_token=next((w.token for w in waits if w.token is not None), None),
        )
        # parallel waits may each have decided on a different number of events: the saga may
        # sleep only if no event arrived since the oldest of those decisions
        known = self._events_seen(self._events)
        seen = min((w.seen for w in waits), default=known)
        try:
            await self._write(None, update, guard=seen)
        except EventsArrived:
            self._events = None  # read them again in the next run
            return Outcome(SagaStatus.RUNNING, None, None, again=True)
        return Outcome(SagaStatus.SUSPENDED, None, None, wake_at=wake_at)

    def _events_seen(self, events: list[SagaEvent] | None) -> int:
        """How many events the saga had received when ``events`` were read: the last one's
        number (events are numbered 1, 2, 3... per saga), or, when the last ones were taken by
        an earlier run and are gone, the count known when this run began."""
        return max(self._events_floor, events[-1].seq if events else 0)

    async def _park(self, cause: ErrorInfo) -> Outcome:
        """Leave the saga PARKED, released, until an operator acts (see sagakit.admin)."""
        error = serde.dumps(
            {"kind": "parked", "step": cause.step, "seq": cause.seq, "cause": cause.to_json()}
        )
        await self._write(None, SagaUpdate(SagaStatus.PARKED, error=error))
        return Outcome(SagaStatus.PARKED, None, error)

    async def _wait_in_flight(self) -> None:
        """Let steps still executing finish and journal their result before the saga ends.

        A branch of ``asyncio.gather`` goes on when its sibling fails: it must not be undone
        while it runs (its compensation gets its real outcome), and nothing may be journaled
        after the saga's terminal status.
        """
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))

    async def _fail_nondeterministic(self, exc: NonDeterminismError) -> Outcome:
        log.error("%s", exc, extra={"saga_id": self.saga_id})
        error = serde.dumps(
            {
                "kind": "non_determinism",
                "message": str(exc),
                "seq": exc.seq,
                "recorded": exc.recorded,
                "replayed": exc.replayed,
            }
        )
        return await self._finish(SagaStatus.FAILED, None, error)

    async def _finish(self, status: SagaStatus, output: str | None, error: str | None) -> Outcome:
        """Record the saga's terminal status (its parent, if any, is told first)."""
        await self._tell_parent(status, output, error)
        await self._write(None, SagaUpdate(status, output=output, error=error))
        return Outcome(status, output, error)


def _taken(entries: Any, events: list[SagaEvent]) -> set[int]:
    """The numbers of the events a run took: those its waits' entries name, and the outcomes
    of its promises and of the children it waited for (a rejected promise's entry names no
    event, and a promise or a child outcome answers every wait for it)."""
    taken: set[int] = set()
    promises: set[str] = set()
    children: set[str] = set()
    for entry in entries:
        if entry.seq < 0:
            continue
        if entry.kind == EntryKind.PROMISE:
            promises.add(entry.name)
        elif entry.kind == EntryKind.CHILD_RESULT:
            children.add(entry.name)
        if entry.kind in _ANSWERED and entry.output:
            found = serde.loads(entry.output)
            if isinstance(found, dict) and isinstance(found.get("event"), int):
                taken.add(found["event"])
    for event in events:
        if (event.kind == EventKind.PROMISE and event.name in promises) or (
            event.kind == EventKind.CHILD and event.name in children
        ):
            taken.add(event.seq)
    return taken


__all__ = ["EndingMixin", "Successor"]
