"""The seed's view of a saga (``SagaStatus``, ``SagaSnapshot``, ``step_history``), computed
from sagakit's own snapshot of it (``engine.get``: its row, journal, audit and events), which
stays the source of truth."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from ...engine import SagaSnapshot as NativeSnapshot
from ...engine import StepSnapshot
from ...stores.base import EntryKind, EntryStatus, EventKind
from ...stores.base import SagaStatus as NativeStatus
from .builder import ENVELOPE


class SagaStatus(StrEnum):
    """The seed's statuses, plus ``COMPENSATED`` (a saga rolled back to the start: the seed's
    0.1 said ``FAILED``, its later versions say ``COMPENSATED``, as sagakit does). See
    :data:`FROM_NATIVE` for how sagakit's statuses map to these."""

    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    FAILED = "FAILED"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"

    @property
    def is_terminal(self) -> bool:
        return self in {SagaStatus.FAILED, SagaStatus.COMPLETED, SagaStatus.COMPENSATED}


#: sagakit's status -> the seed's. PARKED (a step out of retries, waiting for an operator) is
#: the seed's SUSPENDED step that an admin retries or skips; CANCELLED (``abort``) is FAILED.
FROM_NATIVE: dict[NativeStatus, SagaStatus] = {
    NativeStatus.PENDING: SagaStatus.RUNNING,
    NativeStatus.RUNNING: SagaStatus.RUNNING,
    NativeStatus.SUSPENDED: SagaStatus.SUSPENDED,
    NativeStatus.PARKED: SagaStatus.SUSPENDED,
    NativeStatus.COMPENSATING: SagaStatus.COMPENSATING,
    NativeStatus.COMPLETED: SagaStatus.COMPLETED,
    NativeStatus.COMPENSATED: SagaStatus.COMPENSATED,
    NativeStatus.FAILED: SagaStatus.FAILED,
    NativeStatus.CANCELLED: SagaStatus.FAILED,
}


@dataclass(frozen=True)
class SagaSnapshot:
    """One saga as the seed showed it (``get_snapshot``), plus ``saga_name``, ``context``,
    ``step_history`` and ``native_status`` (sagakit's own status: PARKED and CANCELLED are
    told apart there)."""

    id: UUID
    aggregation_id: str
    status: SagaStatus
    current_step_index: int
    retry_counter: int
    deadline_at: datetime | None
    trace_id: str
    #: the token of the saga's current wait, for ``notify`` (a string: sagakit's wait token)
    step_execution_token: str | None
    last_error: str | None
    saga_name: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    step_history: list[dict[str, Any]] = field(default_factory=list)
    native_status: NativeStatus = NativeStatus.RUNNING


@dataclass(frozen=True)
class SagaAdminSnapshot(SagaSnapshot):
    """What ``SagaAdmin.get_saga`` returns (the seed's admin view: the same fields)."""


def project(saga: NativeSnapshot) -> SagaAdminSnapshot:
    """The seed's view of one saga, from sagakit's snapshot of it (``engine.get``)."""
    native = saga.status
    inp = saga.input
    meta: dict[str, Any] = {}
    if isinstance(inp, dict) and isinstance(inp.get(ENVELOPE), dict):
        meta = inp[ENVELOPE]
        inp = inp.get("initial_data")
    entries = sorted(saga.steps, key=lambda e: e.seq)
    steps = [e for e in entries if e.kind == EntryKind.STEP]
    undone = [e for e in entries if e.kind == EntryKind.COMPENSATION]
    done = [e for e in steps if e.status == EntryStatus.COMPLETED]
    payloads = [e.payload for e in saga.events if e.kind in (EventKind.SIGNAL, EventKind.NOTIFY)]
    context: dict[str, Any] = {
        "saga_name": saga.name,
        "initial_data": inp,
        "step_outputs": {e.name: e.output for e in done},
    }
    if payloads:
        context["events"] = payloads
        context["latest_event"] = payloads[-1]
    last = steps[-1] if steps else None
    open_step = last if last is not None and last.status != EntryStatus.COMPLETED else None
    skipped = _skipped(saga)
    return SagaAdminSnapshot(
        id=_uuid(saga.saga_id),
        aggregation_id=str(meta.get("aggregation_id", "")),
        status=FROM_NATIVE[native],
        current_step_index=len(done) - sum(1 for e in undone if e.status == "completed"),
        retry_counter=open_step.attempts if open_step is not None else 0,
        deadline_at=_deadline(saga),
        trace_id=str(meta.get("trace_id", "")),
        step_execution_token=saga.wait_token,
        last_error=_last_error(saga, open_step),
        saga_name=saga.name,
        context=context,
        step_history=[_history(e, e.seq in skipped) for e in entries if e.kind in _HISTORY_KINDS],
        native_status=native,
    )


_HISTORY_KINDS = {EntryKind.STEP, EntryKind.COMPENSATION, EntryKind.SIGNAL}
_PHASES: dict[str, str] = {EntryKind.STEP: "execute", EntryKind.COMPENSATION: "compensate"}
_OUTCOMES: dict[str, str] = {EntryStatus.COMPLETED: "SUCCESS", EntryStatus.RUNNING: "RUNNING"}


def _skipped(saga: NativeSnapshot) -> set[int]:
    """The journal numbers of the steps an operator's ``skip_step`` recorded as done (a skipped
    step has nothing to undo; one that ran since has its own compensation data)."""
    seqs: set[int] = set()
    for action in saga.audit:
        if action.action == "skip" and action.seq is not None:
            seqs.add(action.seq)
    return {
        e.seq
        for e in saga.steps
        if e.seq in seqs
        and e.kind == EntryKind.STEP
        and e.status == EntryStatus.COMPLETED
        and e.compensation is None
    }


def _history(entry: StepSnapshot, skipped: bool) -> dict[str, Any]:
    """One journal entry as a seed ``step_history`` record (one per step or compensation, with
    the number of attempts it took, rather than one per attempt)."""
    data = entry.compensation
    at = entry.finished_at or entry.started_at
    return {
        "timestamp": at.isoformat() if at else None,
        "phase": _PHASES.get(entry.kind, "wait"),
        "status": _OUTCOMES.get(entry.status, "ERROR"),
        "step_id": entry.name,
        "step_name": entry.name,
        "attempt": entry.attempts,
        "seq": entry.seq,
        "input": data.get("inp") if isinstance(data, dict) else None,
        "output": entry.output if entry.kind != EntryKind.COMPENSATION else None,
        "error": _error_text(entry.error) if isinstance(entry.error, dict) else None,
        "skipped": skipped,
    }


def _error_text(error: dict[str, Any]) -> str:
    """An error as the seed wrote it: ``repr(exc)``, e.g. ``RuntimeError('publish failed')``."""
    cause = error.get("cause") if isinstance(error.get("cause"), dict) else error
    assert isinstance(cause, dict)
    return f"{cause.get('type', 'Error')}({str(cause.get('message', ''))!r})"


def _last_error(saga: NativeSnapshot, open_step: StepSnapshot | None) -> str | None:
    error = saga.error
    if saga.status == NativeStatus.CANCELLED and isinstance(error, dict):
        return str(error.get("reason") or "Aborted by admin")
    if isinstance(error, dict) and (error.get("cause") or error.get("type")):
        return _error_text(error)
    if open_step is not None and isinstance(open_step.error, dict):
        return _error_text(open_step.error)
    return None


def _deadline(saga: NativeSnapshot) -> datetime | None:
    """When the saga is next due: its wake-up time while it waits, its lease while it runs."""
    if saga.status.is_terminal or saga.status == NativeStatus.PARKED:
        return None
    return saga.lease_expires_at


def _uuid(saga_id: str) -> UUID:
    try:
        return UUID(saga_id)
    except ValueError:  # a saga started by sagakit itself, with an id of its own
        return uuid.uuid5(uuid.NAMESPACE_URL, f"sagakit:{saga_id}")


def row_values(snapshot: SagaSnapshot) -> dict[str, Any]:
    """The columns of :class:`SagaStateMixin` for a snapshot."""
    return {
        "id": snapshot.id,
        "aggregation_id": snapshot.aggregation_id,
        "trace_id": snapshot.trace_id,
        "status": snapshot.status,
        "current_step_index": snapshot.current_step_index,
        "step_execution_token": snapshot.step_execution_token,
        "context": snapshot.context,
        "step_history": snapshot.step_history,
        "deadline_at": snapshot.deadline_at,
        "retry_counter": snapshot.retry_counter,
        "last_error": snapshot.last_error,
    }


__all__ = [
    "FROM_NATIVE",
    "SagaAdminSnapshot",
    "SagaSnapshot",
    "SagaStatus",
    "project",
    "row_values",
]
