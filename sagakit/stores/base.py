"""The Store protocol: what the engine needs from a database, and nothing about steps or workflows.

A store keeps three things: saga rows (status, input, output, error, lease), journal entries
(one per durable operation, ordered by ``seq``), and leases (who runs a saga until when).

Rules every implementation keeps (the contract tests check them):

* ``append`` is fenced: it writes only while the saga's ``fence`` is still the one the writer
  holds, else it raises :class:`~sagakit.errors.LeaseLost` and writes nothing.
* an ``append`` that carries a saga update commits the entry and the update together.
* ``append`` returns only after its transaction committed (durably, for a durable store).
* lease expiry is judged by the store's clock, so that workers on machines with skewed clocks
  agree on who owns what.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class SagaStatus(StrEnum):
    """Where a saga is in its life."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.CANCELLED}
)
#: Statuses a worker may claim once the lease has expired.
RUNNABLE_STATUSES: tuple[str, ...] = (
    SagaStatus.PENDING.value,
    SagaStatus.RUNNING.value,
    SagaStatus.COMPENSATING.value,
)


class EntryKind(StrEnum):
    STEP = "step"
    COMPENSATION = "compensation"
    NOW = "now"
    UUID = "uuid"
    RANDOM = "random"


class EntryStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    #: an attempt started in a run that took the saga over from a dead worker; replaced by the
    #: operation's result when it finishes, and counted if that worker dies too
    RUNNING = "running"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One durable operation of a saga. JSON payloads are kept as text."""

    saga_id: str
    seq: int
    kind: str
    name: str
    status: str
    attempts: int
    output: str | None
    #: JSON text of the compensation data; ``None`` when the step gave none (use its input).
    compensation: str | None
    error: str | None
    started_at: float
    finished_at: float


@dataclass(frozen=True, slots=True)
class SagaUpdate:
    """A change of a saga's status, written in the same transaction as a journal entry."""

    status: str
    output: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class NewSaga:
    saga_id: str
    name: str
    input: str
    #: the worker that will run it now, or ``None`` to leave it PENDING for any worker
    owner: str | None
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class SagaRecord:
    saga_id: str
    name: str
    status: str
    input: str
    output: str | None
    error: str | None
    owner: str | None
    fence: int
    lease_expires_at: float
    created_at: float
    updated_at: float


def record_from_row(row: Sequence[Any]) -> SagaRecord:
    """A SagaRecord from a row whose columns are in the field order (as the stores select)."""
    return SagaRecord(*row)


def entry_from_row(row: Sequence[Any]) -> JournalEntry:
    """A JournalEntry from a row whose columns are in the field order."""
    return JournalEntry(*row)


@dataclass(frozen=True, slots=True)
class CreateResult:
    created: bool
    record: SagaRecord


@dataclass(frozen=True, slots=True)
class ClaimedSaga:
    """A saga this worker now owns, with everything needed to replay it."""

    record: SagaRecord
    journal: list[JournalEntry]
    #: the saga still had an owner, whose lease expired: that worker died or hung mid-saga
    #: (a PENDING or released saga has none)
    taken_over: bool = False


@runtime_checkable
class Store(Protocol):
    """What the engine asks of a database. Implementations: memory, SQLite, PostgreSQL."""

    url: str
    #: set by the engine: a store that hears of new work from other processes (PostgreSQL's
    #: LISTEN/NOTIFY) calls it so that an idle worker looks at once instead of at its next poll
    on_work: Callable[[], None] | None

    async def open(self) -> None:
        """Connect and create or upgrade the schema. Safe when several processes do it at once."""
        ...

    async def close(self) -> None: ...

    async def create_saga(self, new: NewSaga) -> CreateResult:
        """Insert the saga unless its id exists; return the row that is there either way."""
        ...

    def append(
        self,
        saga_id: str,
        fence: int,
        entry: JournalEntry | None,
        update: SagaUpdate | None = None,
    ) -> asyncio.Future[None]:
        """Queue a journal entry and/or a status change, fenced; the future is done once it
        committed (or failed: :class:`~sagakit.errors.LeaseLost`, StoreError).

        The write is queued when this is called, not when the future is awaited: appends of
        one saga commit in the order they were called, so a caller may queue an entry, go on
        with pure computation, and await the future only before its next side effect.
        """
        ...

    async def load_saga(self, saga_id: str) -> SagaRecord | None: ...

    async def load_journal(self, saga_id: str) -> list[JournalEntry]: ...

    async def renew_leases(self, owner: str, lease_seconds: float) -> int:
        """Push back the lease of every non-terminal saga ``owner`` holds; return how many."""
        ...

    async def claim(
        self, owner: str, names: Sequence[str], lease_seconds: float, limit: int
    ) -> list[ClaimedSaga]:
        """Take up to ``limit`` runnable sagas of these workflows whose lease expired."""
        ...

    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        """Give these sagas back (lease expired now) so another worker may take them at once."""
        ...

    async def list_sagas(
        self, status: str | None = None, name: str | None = None, limit: int = 50
    ) -> list[SagaRecord]:
        """Newest first."""
        ...
