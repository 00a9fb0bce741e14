"""Child sagas: a run starts one (journaled, under an id a replay finds again), waits for its
outcome like any other wait, and, when it is a child itself, tells its parent how it ended.
Mixed into :class:`~sagakit.engine.run.SagaRun`.

A child tells its parent *before* it records its own terminal status, as an event the parent's
store keeps once (a duplicate is ignored). A crash in between leaves the child unfinished: it is
recovered, replays to the same outcome from its journal and tells the parent again. So the
parent never misses the outcome, and never gets two.

A child whose parent (or an ancestor) was cancelled is rolled back (see engine/cascade.py). The
canceller does it; so does the child itself when its run starts, or when telling its parent that
it completed shows that the parent will not go on: it finds the cancel above it, rolls itself
back the same way and stops this run (its fence is stale then), for a worker to roll it back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .. import serde
from ..errors import LeaseLost, StoreError, StoreUnavailable
from ..queues import QueuedStart
from ..stores.base import (
    EntryKind,
    EntryStatus,
    EventKind,
    JournalEntry,
    SagaEvent,
    SagaStatus,
)
from ..workflows import SagaWorkflow
from .cascade import find_cancellation, roll_back, roll_back_descendants
from .core import RunCore
from .snapshots import error_for

#: what the engine gives a run to start a child: (workflow, input, child id, parent id, the
#: virtual object key it is a call of, if it is one)
ChildStarter = Callable[
    [SagaWorkflow[Any, Any], Any, str, str, str | None, QueuedStart | None], Awaitable[None]
]

#: the longest saga id the engine takes (see Engine)
_MAX_ID = 200
#: a parent in one of these statuses goes no further: maybe because it was cancelled
_STOPPED = frozenset(
    {SagaStatus.CANCELLED, SagaStatus.COMPENSATING, SagaStatus.COMPENSATED, SagaStatus.FAILED}
)


def default_child_id(parent_id: str, seq: int) -> str:
    """The id of the child started at ``seq``: the same on every replay of the parent."""
    child_id = f"{parent_id}/child-{seq}"
    if len(child_id) <= _MAX_ID:
        return child_id
    digest = hashlib.sha256(parent_id.encode()).hexdigest()[:24]
    return f"child-{digest}-{seq}"


def _child_matcher(child_id: str) -> Callable[[list[SagaEvent], str], tuple[SagaEvent, Any] | None]:
    def match(events: list[SagaEvent], token: str) -> tuple[SagaEvent, Any] | None:
        for event in events:
            if event.kind == EventKind.CHILD and event.name == child_id:
                return event, serde.loads(event.payload)
        return None

    return match


class ChildrenMixin(RunCore):
    """Starting children, waiting for them, and telling a parent (see the module docstring)."""

    _children: ChildStarter | None

    if TYPE_CHECKING:  # provided by SagaRun and its mixins

        def _entry(
            self,
            seq: int,
            kind: str,
            name: str,
            output: str | None,
            *,
            status: EntryStatus = EntryStatus.COMPLETED,
            started_at: float | None = None,
        ) -> JournalEntry: ...

        async def _wait(
            self,
            seq: int,
            kind: str,
            name: str,
            timeout: float | None,
            match: Callable[[list[SagaEvent], str], tuple[SagaEvent, Any] | None],
        ) -> Any: ...

    # -- the RunDriver protocol --------------------------------------------------------------

    def start_child(
        self, workflow: SagaWorkflow[Any, Any], inp: Any, saga_id: str | None
    ) -> Awaitable[str]:
        return self._start_child(self._take_seq(), workflow, inp, saga_id)

    def child_result(
        self, child_id: str, workflow: SagaWorkflow[Any, Any], timeout: float | None
    ) -> Awaitable[Any]:
        return self._child_result(self._take_seq(), child_id, workflow, timeout)

    # -- the EngineDriver protocol -----------------------------------------------------------

    def start_queued_child(
        self, workflow: SagaWorkflow[Any, Any], inp: Any, saga_id: str | None, queued: QueuedStart
    ) -> Awaitable[str]:
        return self._start_child(self._take_seq(), workflow, inp, saga_id, queued=queued)

    # -- helpers -----------------------------------------------------------------------------

    async def _start_child(
        self,
        seq: int,
        workflow: SagaWorkflow[Any, Any],
        inp: Any,
        saga_id: str | None,
        object_key: str | None = None,
        *,
        queued: QueuedStart | None = None,
    ) -> str:
        entry = self._recorded(seq, EntryKind.CHILD, workflow.name)
        if entry is not None:
            child_id: str = serde.loads(entry.output)
            return child_id
        if self._operator_rollback is not None:
            raise self._operator_rollback
        self._check_draining()
        assert self._children is not None, "the engine gives every run a way to start children"
        child_id = saga_id if saga_id is not None else default_child_id(self.key_base, seq)
        await self._settle()  # what the parent did before is durable before the child exists
        await self._children(workflow, inp, child_id, self.saga_id, object_key, queued)
        self._write_behind(self._entry(seq, EntryKind.CHILD, workflow.name, serde.dumps(child_id)))
        return child_id

    async def _child_result(
        self, seq: int, child_id: str, workflow: SagaWorkflow[Any, Any], timeout: float | None
    ) -> Any:
        outcome = await self._wait(
            seq, EntryKind.CHILD_RESULT, child_id, timeout, _child_matcher(child_id)
        )
        status = SagaStatus(outcome["status"])
        if status == SagaStatus.COMPLETED:
            return workflow.output.validate(serde.loads(outcome["output"]))
        raise error_for(child_id, status, outcome["error"])

    async def _tell_parent(self, status: SagaStatus, output: str | None, error: str | None) -> None:
        """Deliver this saga's outcome to its parent, if it has one (before it is recorded)."""
        parent_id = self.record.parent_id
        if parent_id is None:
            return
        await self._settle()
        payload = serde.dumps({"status": status.value, "output": output, "error": error})
        try:
            # a parent that has ended or is gone takes nothing: nothing waits for this any more
            delivery = await self._store.deliver(
                parent_id, EventKind.CHILD, self.saga_id, payload, unique=True
            )
        except StoreError as exc:
            raise StoreUnavailable(self.saga_id, exc) from exc
        if status == SagaStatus.COMPLETED and delivery.status in _STOPPED:
            # completing now would outlive a cancelled parent that the canceller had not
            # reached this child from yet (or never will: it died)
            await self._roll_back_if_cancelled()

    async def _stop_if_ancestor_cancelled(self) -> None:
        """Before a run of a child goes forward: roll it back instead if a saga above it was
        cancelled (a child started as its parent was being cancelled, one woken by the cancel,
        one recovered after the canceller died)."""
        if (
            self.record.parent_id is None
            or self.record.status != SagaStatus.RUNNING
            or self._operator_rollback is not None  # rolling back already
        ):
            return
        await self._roll_back_if_cancelled()

    async def _roll_back_if_cancelled(self) -> None:
        """If a saga above this one was cancelled, roll this one (and what is below it) back as
        the canceller would, and stop this run: LeaseLost, its fence is stale now."""
        try:
            cancellation = await find_cancellation(self._store, self.record.parent_id)
            if cancellation is None:
                return
            mine = replace(self.record, status=SagaStatus.RUNNING.value, fence=self.fence)
            await roll_back(self._store, mine, cancellation)
            await roll_back_descendants(self._store, self.saga_id, cancellation)
        except StoreError as exc:
            raise StoreUnavailable(self.saga_id, exc) from exc
        raise LeaseLost(self.saga_id)


__all__ = ["ChildStarter", "ChildrenMixin", "default_child_id"]
