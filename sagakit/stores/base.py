"""The Store protocol: what the engine needs from a database, and nothing about steps or workflows.

A store keeps: saga rows (status, input, output, error, lease), journal entries (one per
durable operation, ordered by ``seq``), leases (who runs a saga until when), events delivered to
sagas (signals, promise outcomes, notifications; numbered per saga in arrival order), and
published state (key/value pairs in a scope: a saga's queryable state, a virtual object's state).

A saga row's ``lease_expires_at`` is the time from which a worker may take the saga: the end of
its owner's lease while it runs, the wake-up time while it is SUSPENDED (:data:`NEVER` when only
an event can wake it). Delivering an event to a SUSPENDED saga makes it due at once.

Rules every implementation keeps (the contract tests check them):

* ``append`` is fenced: it writes only while the saga's ``fence`` is still the one the writer
  holds, else it raises :class:`~sagakit.errors.LeaseLost` and writes nothing.
* an ``append`` that carries a saga update commits the entry and the update together.
* ``append`` returns only after its transaction committed (durably, for a durable store).
* an ``append`` with a ``guard`` writes only if the saga has received exactly ``guard`` events,
  else it raises :class:`~sagakit.errors.EventsArrived` and writes nothing: a wait decides on
  the events it has seen and must not miss one that arrived meanwhile.
* a saga with an ``object_key`` runs only when every saga of that key that arrived before it is
  finished (claim skips it; create gives it its owner only then).
* lease expiry is judged by the store's clock, so that workers on machines with skewed clocks
  agree on who owns what.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from .queueing import QueueLimits, QueueState
from .scheduling import Schedule, ScheduleState
from .searching import FieldMatch


class SagaStatus(StrEnum):
    """Where a saga is in its life."""

    #: enqueued (``engine.enqueue``): it waits until its queue's limits let it start
    QUEUED = "QUEUED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    #: a step ran out of retries with ``on_exhausted="park"``: the saga waits for an operator
    PARKED = "PARKED"
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
#: The statuses ``Store.prune`` deletes when it is given none: a FAILED saga waits for an
#: operator (its rollback is incomplete), so retention removes it only when asked to.
PRUNABLE_STATUSES: tuple[str, ...] = (
    SagaStatus.COMPLETED.value,
    SagaStatus.COMPENSATED.value,
    SagaStatus.CANCELLED.value,
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
    SLEEP = "sleep"
    SIGNAL = "signal"
    PROMISE = "promise"
    #: a value published with ``set_state`` or a virtual object's ``set``/``clear``
    STATE = "state"
    #: a virtual object's ``get``: the value read, so that a replay reads the same
    STATE_GET = "state_get"
    #: the start of a group of parallel branches (``saga.gather``)
    GATHER = "gather"
    #: a child saga started (``saga.start_child``); its output is the child's id
    CHILD = "child"
    #: waiting for a child saga's outcome (``child.result()``)
    CHILD_RESULT = "child_result"
    #: the signals a saga had received at that point (a declarative saga's input context)
    SIGNALS = "signals"
    #: a durable call answered at once (a shared object handler, a long workflow's handler):
    #: its result, or its error
    CALL = "call"
    #: a saga started without waiting (``saga.send``); its output is that saga's id
    SEND = "send"
    #: a code change the saga went through (``saga.patched``): its name is the change id
    PATCH = "patch"
    #: a command sent to another service and its reply (``saga.send_command``): RUNNING
    #: while the saga waits for the reply; its name is ``"<participant>.<command>"``
    REMOTE = "remote"
    #: an operator's action (``engine.admin``), at a negative ``seq`` outside the saga
    #: function's numbering so that a replay never meets it
    ADMIN = "admin"


class EntryStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    #: an attempt started in a run that took the saga over from a dead worker; replaced by the
    #: operation's result when it finishes, and counted if that worker dies too
    RUNNING = "running"
    #: an attempt failed and the next one waits for a long backoff (sagakit.engine.backoff)
    RETRYING = "retrying"


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


#: ``lease_expires_at`` of a saga that only an event (or an operator) wakes
NEVER = 1e18


@dataclass(frozen=True, slots=True)
class SagaUpdate:
    """A change of a saga's status, written in the same transaction as a journal entry.

    ``SUSPENDED`` releases the saga (no owner) until ``wake_at`` (:data:`NEVER` for no time)
    and publishes ``wait_token``, the token of the wait it is suspended in. ``clear_wait``
    withdraws the token once that wait is over.
    """

    status: str | None = None
    output: str | None = None
    error: str | None = None
    wake_at: float | None = None
    wait_token: str | None = None
    clear_wait: bool = False


@dataclass(frozen=True, slots=True)
class StateWrite:
    """Set (``value`` is JSON text) or clear (``value`` is None) ``key`` in ``scope``."""

    scope: str
    key: str
    value: str | None


class EventKind(StrEnum):
    SIGNAL = "signal"
    PROMISE = "promise"
    #: an event for the wait whose token is ``name`` (``engine.notify``)
    NOTIFY = "notify"
    #: the outcome of the child saga ``name``, told to its parent
    CHILD = "child"
    #: a participant's reply to the command whose message id is ``name`` (a remote step)
    REPLY = "reply"


@dataclass(frozen=True, slots=True)
class SagaEvent:
    """Something delivered to a saga, kept until a wait of the saga takes it."""

    saga_id: str
    #: 1, 2, 3... in the order the saga received them
    seq: int
    kind: str
    name: str
    payload: str
    created_at: float


class DeliveryOutcome(StrEnum):
    DELIVERED = "delivered"
    NOT_FOUND = "not_found"
    #: the saga has ended: nothing will ever take the event
    FINISHED = "finished"
    #: a NOTIFY whose token is not the saga's current wait token
    STALE = "stale"
    #: a unique event (a promise outcome) that the saga has already received
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Delivery:
    outcome: DeliveryOutcome
    #: the saga's status (None when not found)
    status: str | None = None
    #: for DUPLICATE: the payload received first
    existing: str | None = None


@dataclass(frozen=True, slots=True)
class AdminChange:
    """An operator's change of a saga (see ``Store.administer``), made only if the saga is
    still in ``expect_status`` with ``expect_fence``: what the operator looked at.

    The saga gets ``status``, ``output`` and ``error`` as given, no owner, a new fence (a worker
    still running it can write nothing more), ``due_at`` as the time from which a worker may
    take it (0: now, :data:`NEVER`: only another operator action), and ``wait_token``. The
    journal entries of ``delete`` go, those of ``replace`` are written, and ``audit`` is added
    at the next free negative ``seq`` (its own ``seq`` is ignored). ``tell`` delivers events
    (``(saga_id, kind, name, payload)``, unique) in the same transaction: a cancelled child's
    outcome to its parent.
    """

    saga_id: str
    expect_status: str
    expect_fence: int
    status: str
    due_at: float
    audit: JournalEntry
    output: str | None = None
    error: str | None = None
    wait_token: str | None = None
    replace: tuple[JournalEntry, ...] = ()
    delete: tuple[int, ...] = ()
    tell: tuple[tuple[str, str, str, str], ...] = ()
    #: the action's id, chosen before the first attempt and kept in the audit entry's output
    #: as ``action_id``: a store that retries the change after a lost acknowledgement finds
    #: it applied and returns the saga instead of None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class SagaFork:
    """A new saga made from another's journal (``Store.fork_saga``, ``engine.admin.fork``).

    ``new`` is inserted PENDING with no owner (any worker of its workflow takes it), with
    ``entries`` as its journal, the source's events numbered up to ``events_upto`` copied (the
    kept waits recorded which events they took), ``state`` written, and ``audit`` added at seq
    -1. ``source_audit`` is added to the source saga at its next free negative ``seq``; the
    source is otherwise left as it is. ``key`` is the ``action_id`` of both audit entries: a
    retry after a lost acknowledgement finds the fork made and returns it.
    """

    new: NewSaga
    source_id: str
    entries: tuple[JournalEntry, ...]
    events_upto: int
    state: tuple[StateWrite, ...]
    audit: JournalEntry
    source_audit: JournalEntry
    key: str


def saga_scope(saga_id: str) -> str:
    """The state scope of a saga's own published state (``set_state``), which
    ``Store.delete_saga`` deletes with the saga."""
    return f"saga:{saga_id}"


def prunable_statuses(statuses: Sequence[str] | None) -> list[str]:
    """The statuses a ``Store.prune`` given ``statuses`` deletes: the ended ones among them
    (default :data:`PRUNABLE_STATUSES`)."""
    given = PRUNABLE_STATUSES if statuses is None else statuses
    return [s.value for s in SagaStatus if s.is_terminal and s.value in given]


def audit_key(entry: JournalEntry) -> str | None:
    """The ``action_id`` an audit entry was written with (see :attr:`AdminChange.key`)."""
    if entry.kind != EntryKind.ADMIN or not entry.output:
        return None
    try:
        found = json.loads(entry.output).get("action_id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


@dataclass(frozen=True, slots=True)
class SagaFilter:
    """Which sagas ``Store.list_sagas`` returns: all given conditions hold."""

    status: str | None = None
    name: str | None = None
    #: ``created_at`` at or after this epoch time
    created_after: float | None = None
    #: ``created_at`` before this epoch time
    created_before: float | None = None
    #: paging: only sagas after this ``(created_at, saga_id)`` in newest-first order
    after: tuple[float, str] | None = None
    #: only the children of this saga (those it started with ``saga.start_child``)
    parent_id: str | None = None
    #: the operator's search (:mod:`sagakit.stores.searching`): ids starting with this
    id_prefix: str | None = None
    #: a value inside the input or output (all of them hold)
    where: tuple[FieldMatch, ...] = ()
    #: the status is one of these
    statuses: tuple[str, ...] | None = None
    #: ``updated_at`` (the saga's last write) before this epoch time
    updated_before: float | None = None
    #: ``lease_expires_at`` (when a worker may take it) before this epoch time
    due_before: float | None = None

    @property
    def searches(self) -> bool:
        """Whether the filter uses a condition of the operator's search (the SQL stores
        build those queries in their ``search`` modules)."""
        return (
            self.id_prefix is not None
            or bool(self.where)
            or self.statuses is not None
            or self.updated_before is not None
            or self.due_before is not None
        )


@dataclass(frozen=True, slots=True)
class NewSaga:
    saga_id: str
    name: str
    input: str
    #: the worker that will run it now, or ``None`` to leave it PENDING for any worker
    owner: str | None
    lease_seconds: float
    #: sagas of one object key run one at a time, in arrival order (virtual objects)
    object_key: str | None = None
    #: the saga that started this one as its child (``saga.start_child``)
    parent_id: str | None = None
    #: the version of the workflow definition that starts it (``None``: unversioned)
    version: str | None = None
    #: the queue it waits in (QUEUED, owner None) until the queue's limits let it start
    queue: str | None = None
    #: its place among the queue's sagas: smaller first, then in arrival order
    priority: int = 0
    #: the partition of the queue whose limits it counts against (a partitioned queue)
    partition_key: str | None = None
    #: no other saga of the queue with this id may be created until this one ends
    dedup_id: str | None = None
    #: epoch seconds before which no worker takes it (a delayed start); None: at once
    not_before: float | None = None


@dataclass(frozen=True, slots=True)
class NextRun:
    """Run ``run`` of a saga ends and the saga goes on as run ``run + 1``
    (``Store.continue_as_new``).

    Only while the saga is at ``fence`` and ``run``: its journal is moved to the earlier runs'
    journals as run ``run`` (its negative-seq audit entries included), its events numbered in
    ``consumed`` are deleted (the run took them: the next run must not take them again; the
    others stay for it, and ``event_count`` keeps counting), its input becomes ``input``, its
    version ``version`` (``None``: unversioned), its fence ``fence + 1`` (a late write of the
    old run is refused) and its run ``run + 1``. Status, owner, lease, children, published
    state and queue slot stay as they are. Run ``run``'s :class:`RunRecord` is written with
    the input and version the saga row had before.
    """

    saga_id: str
    fence: int
    run: int
    input: str
    version: str | None
    consumed: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RunRecord:
    """An earlier run of a saga that continued as new (``Store.load_runs``), written in the
    transaction that continued it: the input (JSON) and version it ran with, its journal
    entries (``seq >= 0``), its first entry's start (``None``: it had none) and when it
    continued (epoch seconds)."""

    run: int
    input: str
    version: str | None
    entries: int
    started_at: float | None
    ended_at: float


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
    wait_token: str | None = None
    event_count: int = 0
    object_key: str | None = None
    parent_id: str | None = None
    #: the version of the definition that started it (``None``: unversioned; stored as ``''``)
    version: str | None = None
    #: the queue it was enqueued in (``None``: started directly)
    queue: str | None = None
    priority: int = 0
    partition_key: str | None = None
    dedup_id: str | None = None
    #: the saga's run: 1, then N+1 once run N continued as new (``saga.continue_as_new``)
    run: int = 1


#: a worker counts as live while its last heartbeat is younger than this many of its leases
LIVE_LEASES = 3

#: what a worker serves: ``(workflow name, version)``, ``None`` for an unversioned definition
Served = tuple[str, str | None]


def claim_keys(names: Sequence[str | Served]) -> list[tuple[str, str | None]]:
    """``Store.claim``'s ``names`` as ``(name, stored version)`` pairs: a stored version is
    ``''`` for unversioned sagas, and ``None`` stands for every version of a plain name."""
    keys: list[tuple[str, str | None]] = []
    for item in names:
        if isinstance(item, str):
            keys.append((item, None))
        else:
            name, version = item
            keys.append((name, version or ""))
    return keys


def served_keys(served: Sequence[Served]) -> list[tuple[str, str]]:
    """A worker's served pairs as stored (``''`` for unversioned)."""
    return sorted({(name, version or "") for name, version in served})


def record_from_row(row: Sequence[Any]) -> SagaRecord:
    """A SagaRecord from a row whose columns are in the field order (as the stores select)."""
    return SagaRecord(*row)


def entry_from_row(row: Sequence[Any]) -> JournalEntry:
    """A JournalEntry from a row whose columns are in the field order."""
    return JournalEntry(*row)


def event_from_row(row: Sequence[Any]) -> SagaEvent:
    """A SagaEvent from a row whose columns are in the field order."""
    return SagaEvent(*row)


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
    #: the events the saga has received (for its waits)
    events: list[SagaEvent] = field(default_factory=list)


class StoreTransaction(Protocol):
    """A database transaction opened for one operation of a saga (:meth:`Store.begin`): the
    user's code writes through ``connection``, then :meth:`commit` appends the operation's
    journal entry, fenced, in the same transaction, so that both commit or neither does."""

    @property
    def connection(self) -> Any:
        """The store's own connection, inside the open transaction (``sqlite3.Connection``,
        ``asyncpg.Connection``)."""
        ...

    async def commit(
        self,
        entry: JournalEntry,
        update: SagaUpdate | None = None,
        state: Sequence[StateWrite] = (),
    ) -> None:
        """Append ``entry`` (and ``update``, ``state``) as :meth:`Store.append` would, then
        commit. Raises :class:`~sagakit.errors.LeaseLost` (the fence moved: nothing commits),
        StoreError (the database failed: nothing committed, or a commit whose answer was lost
        and that did not happen), or the database's own error when it refuses the transaction
        at commit (a deferred constraint): then nothing committed either."""
        ...

    async def rollback(self) -> None:
        """Undo everything written in the transaction and give the connection back."""
        ...

    def abandon(self) -> None:
        """Roll back without waiting (a run stopped between the body and the commit)."""
        ...


@runtime_checkable
class Store(Protocol):
    """What the engine asks of a database. Implementations: memory, SQLite, PostgreSQL."""

    url: str
    #: set by the engine: a store that hears of new work from other processes (PostgreSQL's
    #: LISTEN/NOTIFY) calls it so that an idle worker looks at once instead of at its next poll
    on_work: Callable[[], None] | None
    #: set by each claim: when a rate-limited queue with sagas waiting admits its next start
    #: (epoch seconds, the store's clock), so that the worker looks again then; None: no queue
    #: waits on its rate
    queue_retry_at: float | None

    async def open(self) -> None:
        """Connect and create or upgrade the schema. Safe when several processes do it at once."""
        ...

    async def close(self, timeout: float | None = None) -> None:
        """Commit what is queued and disconnect. With ``timeout``, return within it even when
        the database does not answer: writes still queued then fail with StoreError (what
        they belonged to is recovered from the journal, nothing is lost)."""
        ...

    async def create_saga(self, new: NewSaga) -> CreateResult:
        """Insert the saga unless its id exists; return the row that is there either way.

        With ``new.queue`` the saga is QUEUED with no owner; with ``new.not_before`` no worker
        takes it before then (a PENDING or QUEUED saga, whatever ``new.owner`` says). With
        ``new.dedup_id``, if a saga of the same queue with that id has not ended, nothing is
        written and that saga is returned (``created`` False, another ``saga_id``)."""
        ...

    def append(
        self,
        saga_id: str,
        fence: int,
        entry: JournalEntry | None,
        update: SagaUpdate | None = None,
        *,
        guard: int | None = None,
        state: Sequence[StateWrite] = (),
    ) -> asyncio.Future[None]:
        """Queue a journal entry, a status change and state writes, fenced (and guarded, see
        the module's rules), to commit together; the future is done once they committed (or
        failed: :class:`~sagakit.errors.LeaseLost`, ``EventsArrived``, StoreError).

        The write is queued when this is called, not when the future is awaited: appends of
        one saga commit in the order they were called, so a caller may queue an entry, go on
        with pure computation, and await the future only before its next side effect.
        """
        ...

    async def begin(self, saga_id: str, fence: int) -> StoreTransaction:
        """Open a transaction for one operation of the saga (a transactional step), once the
        saga's appends queued before it committed; raises LeaseLost if ``fence`` is not the
        saga's any more, :class:`~sagakit.errors.TransactionsUnsupportedError` on a store with
        no database."""
        ...

    async def load_saga(self, saga_id: str) -> SagaRecord | None: ...

    async def load_journal(self, saga_id: str) -> list[JournalEntry]: ...

    async def load_run(self, saga_id: str, run: int) -> list[JournalEntry]:
        """The journal of the saga's earlier run ``run`` (kept when it continued as new), in
        order; empty when there is no such run (the current run's is :meth:`load_journal`)."""
        ...

    async def load_runs(
        self, saga_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """The saga's earlier runs numbered below ``before`` (all: ``None``), newest first, at
        most ``limit``: one indexed read, whatever the number of runs and their journals."""
        ...

    async def continue_as_new(self, cont: NextRun) -> None:
        """Continue a saga as a fresh run of itself, in one transaction (see
        :class:`NextRun`). Raises :class:`~sagakit.errors.LeaseLost`, writing nothing,
        when the saga is not at ``cont.fence`` and ``cont.run`` any more; returns quietly when
        it is at ``cont.fence + 1`` and ``cont.run + 1`` already (a retry of this very
        continue after a lost acknowledgement)."""
        ...

    async def deliver(
        self,
        saga_id: str,
        kind: str,
        name: str,
        payload: str,
        *,
        token: str | None = None,
        unique: bool = False,
        key: str | None = None,
    ) -> Delivery:
        """Give a saga an event, in one transaction: refused when the saga is unknown or has
        ended, when ``token`` is given and is not the saga's wait token, or when ``unique`` and
        an event of this kind and name was received already (DUPLICATE, with the payload
        received first, takes precedence over FINISHED: a repeated promise outcome or child
        outcome is recognised after the saga ended too). A SUSPENDED saga becomes due.

        A delivery with ``token`` consumes it: the saga's wait token is withdrawn in the same
        transaction, so any later delivery with that token is STALE (a token answers once).

        ``key`` (chosen by the caller before the first attempt) makes the delivery idempotent:
        if an event with this key was stored already, nothing is written and the answer is
        DELIVERED, whatever happened to the saga since (a retry after a lost acknowledgement
        gets the first outcome)."""
        ...

    async def load_events(self, saga_id: str, after: int = 0) -> list[SagaEvent]:
        """The saga's events numbered above ``after``, in order."""
        ...

    async def load_state(self, scope: str) -> dict[str, str]:
        """Every key of ``scope`` with its JSON text."""
        ...

    async def renew_leases(self, owner: str, lease_seconds: float, saga_ids: Sequence[str]) -> int:
        """Push back the lease of those of ``saga_ids`` that ``owner`` holds and that have not
        ended; return how many. The engine passes the sagas it has a live run of: a saga it
        holds without knowing it (a claim whose answer was lost) expires within one lease."""
        ...

    async def claim(
        self, owner: str, names: Sequence[str | Served], lease_seconds: float, limit: int
    ) -> list[ClaimedSaga]:
        """Take up to ``limit`` runnable sagas of these workflows whose lease expired, and
        read their journals and events, in one transaction. A queued saga that is QUEUED, or
        due again after a wait, is taken only as its queue's limits allow (see
        :mod:`sagakit.stores.queueing`), read in the same transaction; sets
        ``queue_retry_at``. An item of ``names`` is a
        workflow name (a saga of any version of it) or a ``(name, version)`` pair (only the
        sagas started at that version; ``None``: unversioned sagas)."""
        ...

    async def heartbeat(
        self, worker_id: str, served: Sequence[Served], lease_seconds: float
    ) -> None:
        """Record (or refresh) that ``worker_id`` is alive now, serving these ``(name,
        version)`` pairs, with this lease: it counts as live for 3 leases from now."""
        ...

    async def forget_worker(self, worker_id: str) -> None:
        """Delete the worker's heartbeat (it closed cleanly and serves nothing any more)."""
        ...

    async def list_stranded(self, limit: int = 50) -> list[SagaRecord]:
        """Sagas that have not ended whose ``(name, version)`` no live worker serves (a live
        worker: its heartbeat is younger than 3 of its leases), newest first."""
        ...

    async def count_stranded(self) -> int:
        """How many sagas :meth:`list_stranded` would return without a limit."""
        ...

    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        """Give these sagas back (lease expired now) so another worker may take them at once."""
        ...

    async def list_sagas(self, where: SagaFilter, limit: int = 50) -> list[SagaRecord]:
        """Newest first (by ``created_at``, then ``saga_id``, both descending)."""
        ...

    async def count_sagas(self, where: SagaFilter) -> int:
        """How many sagas :meth:`list_sagas` would return without a limit (``where.after``
        is ignored)."""
        ...

    async def count_by_status(self) -> dict[str, int]:
        """How many sagas are in each status (statuses with none are left out)."""
        ...

    async def administer(self, change: AdminChange) -> SagaRecord | None:
        """Apply an operator's change in one transaction (see :class:`AdminChange`); return the
        saga as it is then, or ``None`` (nothing written) if it is not in the expected status
        and fence any more: someone or something changed it meanwhile."""
        ...

    async def fork_saga(self, fork: SagaFork) -> SagaRecord | None:
        """Make the new saga of ``fork`` in one transaction (see :class:`SagaFork`); return it.
        If its id is taken already, write nothing and return that saga when it is this fork
        (its audit entry carries ``fork.key``: a retry), else ``None``; ``None`` too, writing
        nothing, when the source saga is gone."""
        ...

    async def delete_saga(self, saga_id: str) -> bool:
        """Delete an ended saga (COMPLETED, COMPENSATED, FAILED or CANCELLED): its row, journal,
        events and published state (its ``saga:`` scope; a virtual object's state is the
        object's and stays), in one transaction. True if it was deleted; False, deleting
        nothing, if there is no such saga (unknown, deleted already: a retry after a lost
        answer) or it has not ended."""
        ...

    async def prune(
        self, ended_before: float, statuses: Sequence[str] | None = None, limit: int = 500
    ) -> list[str]:
        """Delete up to ``limit`` ended sagas in ``statuses`` (default
        :data:`PRUNABLE_STATUSES`; statuses that are not terminal are ignored) whose row was
        last changed before ``ended_before`` (epoch seconds, the store's clock), each with
        what ``delete_saga`` deletes, in one short transaction; return their ids (none: there
        is nothing left to prune). A saga is kept while its parent has not ended (the parent
        may still read its outcome) or one of its children has not ended (the child looks up
        at it, for a cancel above it). It never waits for a saga another transaction holds:
        that one is left for the next call."""
        ...

    async def count_prunable(
        self, ended_before: float, statuses: Sequence[str] | None = None
    ) -> int:
        """How many sagas ``prune`` with these arguments would delete, over all its calls, as
        things stand now (writes nothing)."""
        ...

    async def declare_queue(self, name: str, limits: QueueLimits) -> None:
        """Record the limits code declares for queue ``name`` (``engine.register(queue)``):
        insert the queue, or replace its declared limits; an operator's override stays."""
        ...

    async def set_queue_override(
        self, name: str, changes: dict[str, Any] | None
    ) -> QueueState | None:
        """Merge ``changes`` into an operator's override of queue ``name``'s limits, key by key
        and in one transaction (two operators changing different limits at once both hold; a
        ``None`` value lifts that limit); ``changes=None`` drops the override (the declared
        limits hold again). Every worker's next claim obeys it. The queue as it is then, or
        None if no such queue."""
        ...

    async def list_queues(self) -> list[QueueState]:
        """Every declared queue with its limits and counts, by name."""
        ...

    async def queue_position(self, saga_id: str) -> int | None:
        """1 for the QUEUED saga its queue (its partition) starts next, 2 after it...; None
        when the saga is not QUEUED. Sagas due again after a wait are not counted."""
        ...

    async def declare_schedule(self, schedule: Schedule, now: float) -> None:
        """Record a cron schedule declared in code (``engine.schedule``): insert it, firing
        from ``now`` on, or replace its definition (an operator's pause and where it stands
        stay; a new cron or time zone makes it fire from ``now`` on)."""
        ...

    async def due_schedules(self, names: Sequence[str], now: float) -> list[ScheduleState]:
        """The schedules of ``names`` that are not paused and whose ``fire_from`` is at or
        before ``now`` (a tick of theirs may be due), by name."""
        ...

    async def fire_schedule(
        self,
        name: str,
        expect: float,
        fire_from: float,
        tick: float | None,
        saga: NewSaga | None,
    ) -> bool:
        """Move schedule ``name`` forward, in one transaction: only if it is not paused and its
        ``fire_from`` is still ``expect`` (what the caller read), set ``fire_from`` and (with
        ``tick``) ``last_tick``, and create ``saga`` (as ``create_saga`` would; an id taken
        already is left as it is). True if the schedule moved; False, writing nothing, if
        another worker moved it first (or an operator paused it)."""
        ...

    async def list_schedules(self) -> list[ScheduleState]:
        """Every schedule, by name."""
        ...

    async def set_schedule_paused(
        self, name: str, paused: bool, now: float
    ) -> ScheduleState | None:
        """Pause or resume schedule ``name``. Resuming a paused schedule passes over the ticks
        that fell while it was paused (``fire_from`` becomes at least ``now``). The schedule as
        it is then, or None if there is no such schedule."""
        ...
