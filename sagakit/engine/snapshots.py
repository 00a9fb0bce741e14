"""Read-only views of a saga and its journal, and the errors a finished saga stands for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import serde
from ..errors import (
    CompensationFailedError,
    ErrorInfo,
    NonDeterminismError,
    SagaCancelledError,
    SagaCompensatedError,
    SagaError,
)
from ..stores.base import NEVER, EntryStatus, JournalEntry, SagaEvent, SagaRecord, SagaStatus


def _time(epoch: float | None) -> datetime | None:
    return None if not epoch or epoch >= NEVER else datetime.fromtimestamp(epoch, UTC)


@dataclass(frozen=True, slots=True)
class StepSnapshot:
    """One journal entry: a step, a compensation, or a recorded value (now/uuid/random)."""

    seq: int
    name: str
    kind: str
    status: str
    attempts: int
    output: Any
    error: dict[str, Any] | None
    started_at: datetime | None
    finished_at: datetime | None
    #: for a step: the data its compensation gets, as JSON data (a declarative step's is
    #: ``{"inp": ..., "out": ...}``), None when it has nothing to undo; for a compensation:
    #: ``{"undoes": seq}``, the step it undoes
    compensation: Any = None

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def retry_at(self) -> datetime | None:
        """When the next attempt runs, for an entry waiting out a retry backoff (status
        ``retrying``: ``attempts`` failed so far, ``error`` is the last one's)."""
        if self.status != EntryStatus.RETRYING or not self.error:
            return None
        at = self.error.get("retry_at")
        return _time(at) if isinstance(at, int | float) else None

    @property
    def max_attempts(self) -> int | None:
        """The attempts the retry policy allows, for an entry waiting out a retry backoff."""
        if self.status != EntryStatus.RETRYING or not self.error:
            return None
        most = self.error.get("max_attempts")
        return most if isinstance(most, int) else None

    @classmethod
    def from_entry(cls, entry: JournalEntry) -> StepSnapshot:
        return cls(
            seq=entry.seq,
            name=entry.name,
            kind=entry.kind,
            status=entry.status,
            attempts=entry.attempts,
            output=serde.loads(entry.output),
            error=serde.loads(entry.error),
            started_at=_time(entry.started_at),
            finished_at=_time(entry.finished_at),
            compensation=serde.loads(entry.compensation) if entry.compensation else None,
        )


@dataclass(frozen=True, slots=True)
class EventSnapshot:
    """An event delivered to a saga: a signal (``engine.signal``), a notification
    (``engine.notify``: ``name`` is the wait's token), a promise's outcome or a child saga's
    outcome (``name`` is the child's id). Kept with the saga whether a wait took it or not."""

    #: 1, 2, 3... in the order the saga received them
    seq: int
    #: ``"signal"``, ``"notify"``, ``"promise"`` or ``"child"``
    kind: str
    name: str
    #: the event's payload, as JSON data
    payload: Any
    received_at: datetime | None

    @classmethod
    def from_event(cls, event: SagaEvent) -> EventSnapshot:
        return cls(
            seq=event.seq,
            kind=event.kind,
            name=event.name,
            payload=serde.loads(event.payload),
            received_at=_time(event.created_at),
        )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An operator's action on a saga (``engine.admin``), as its journal records it."""

    action: str
    at: datetime
    reason: str | None
    by: str | None
    #: the step (or compensation) the action was about, if any
    step: str | None
    seq: int | None
    #: what the action changed (the entries it replaced, the output it recorded, ...)
    details: dict[str, Any]

    @classmethod
    def from_entry(cls, entry: JournalEntry) -> AuditEntry:
        data: dict[str, Any] = serde.loads(entry.output) or {}
        at = _time(entry.started_at)
        assert at is not None
        return cls(
            action=entry.name,
            at=at,
            reason=data.get("reason"),
            by=data.get("by"),
            step=data.get("step"),
            seq=data.get("seq"),
            details=data.get("details") or {},
        )


@dataclass(frozen=True, slots=True)
class SagaSnapshot:
    """A saga as the store has it now, with its journal (``steps``) in order."""

    saga_id: str
    name: str
    status: SagaStatus
    input: Any
    output: Any
    error: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    steps: tuple[StepSnapshot, ...]
    owner: str | None = None
    lease_expires_at: datetime | None = None
    #: while the saga waits: the token of its wait, for ``engine.notify``
    wait_token: str | None = None
    #: while SUSPENDED on a timer: when it wakes
    wake_at: datetime | None = None
    #: the virtual object (``Name/key``) a handler saga runs for
    object_key: str | None = None
    #: the saga that started this one as its child
    parent_id: str | None = None
    #: operators' actions on the saga, oldest first (``engine.admin``)
    audit: tuple[AuditEntry, ...] = ()
    #: the events delivered to the saga, oldest first (``engine.get`` and
    #: ``admin.get_saga``; empty in lists)
    events: tuple[EventSnapshot, ...] = ()
    #: the version of the definition that started the saga (``None``: unversioned)
    version: str | None = None
    #: the queue it was enqueued in (``engine.enqueue``; ``None``: started directly), its
    #: priority there (0: none), partition (``None``: none) and deduplication id
    queue: str | None = None
    priority: int = 0
    partition_key: str | None = None
    dedup_id: str | None = None
    #: the run whose journal ``steps`` holds (``sagakit show ID --run N``), and how many runs
    #: the saga has had: 1, then one more each time it continued as new
    run: int = 1
    runs: int = 1

    @property
    def retrying(self) -> tuple[StepSnapshot, ...]:
        """The steps and compensations waiting out a retry backoff (see ``retry_at``)."""
        return tuple(s for s in self.steps if s.status == EntryStatus.RETRYING)

    @classmethod
    def build(
        cls,
        record: SagaRecord,
        journal: list[JournalEntry] | None,
        events: list[SagaEvent] | None = None,
        run: int | None = None,
    ) -> SagaSnapshot:
        """The saga of ``record`` with ``journal``: its current run's, or that of the earlier
        run ``run``."""
        created = _time(record.created_at)
        updated = _time(record.updated_at)
        assert created is not None and updated is not None
        return cls(
            saga_id=record.saga_id,
            name=record.name,
            status=SagaStatus(record.status),
            input=serde.loads(record.input),
            output=serde.loads(record.output),
            error=serde.loads(record.error),
            created_at=created,
            updated_at=updated,
            steps=tuple(StepSnapshot.from_entry(e) for e in journal or () if e.seq >= 0),
            owner=record.owner,
            lease_expires_at=_time(record.lease_expires_at),
            wait_token=record.wait_token,
            wake_at=(
                _time(record.lease_expires_at) if record.status == SagaStatus.SUSPENDED else None
            ),
            object_key=record.object_key,
            parent_id=record.parent_id,
            audit=tuple(
                AuditEntry.from_entry(e)
                for e in sorted(journal or (), key=lambda e: -e.seq)
                if e.seq < 0
            ),
            events=tuple(EventSnapshot.from_event(e) for e in events or ()),
            version=record.version,
            queue=record.queue,
            priority=record.priority,
            partition_key=record.partition_key or None,
            dedup_id=record.dedup_id,
            run=record.run if run is None else run,
            runs=record.run,
        )


def error_for(saga_id: str, status: str, error_json: str | None) -> SagaError:
    """The exception that ``result()`` raises for a saga that ended without an output."""
    error: dict[str, Any] = serde.loads(error_json) or {}
    cause = ErrorInfo.from_json(error.get("cause") or {"type": "Error", "message": "unknown"})
    kind = error.get("kind")
    if kind == "non_determinism":
        return NonDeterminismError(
            saga_id,
            int(error.get("seq", -1)),
            str(error.get("recorded", "?")),
            str(error.get("replayed", "?")),
        )
    if status == SagaStatus.COMPENSATED:
        return SagaCompensatedError(saga_id, cause)
    if status == SagaStatus.FAILED:
        failures = [ErrorInfo.from_json(f) for f in error.get("compensation_failures", [])]
        return CompensationFailedError(saga_id, cause, failures)
    if status == SagaStatus.CANCELLED:
        return SagaCancelledError(saga_id, str(error.get("reason", "")), error.get("by"))
    return SagaError(f"saga {saga_id!r} ended as {status}: {error.get('message', '')}".rstrip())
