"""Steering live sagas: look at them, and retry, skip, compensate, cancel or resume them.

``engine.admin`` (or ``SagaAdmin(engine)``) works from any process that opens the saga's
database, with or without the saga's code: each action is a change of the saga's row and
journal, made in one transaction, and the saga then goes on in whichever worker takes it.

Every action is checked against the saga's status first (:class:`~sagakit.SagaStateError`
names the status and what allows the action; nothing is written), and leaves an audit entry in
the saga's journal: what was done, why, when and by whom. Audit entries sit at negative journal
numbers, outside the saga function's own numbering, so that a replay never meets them.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import serde
from .engine.cascade import (
    Cancellation,
    ChildFate,
    ChildOutcome,
    live_children,
    roll_back_descendants,
    wake_calls,
)
from .engine.operators import audit_entry
from .engine.retention import prune_ended
from .engine.snapshots import AuditEntry, SagaSnapshot
from .engine.starts import check_saga_id
from .errors import (
    OutputNotSerializableError,
    SagaConflictError,
    SagaNotFoundError,
    SagaStateError,
    SagaValidationError,
    UnknownWorkflowError,
)
from .fork_plans import fork_plan
from .health import HealthAdmin
from .operator_plans import RERUNNABLE, Plan, compensate_plan, retry_plan, skip_plan
from .queue_admin import QueueAdmin
from .run_admin import RunAdmin
from .schedule_admin import ScheduleAdmin
from .search import FieldMatch, check_id_prefix, parse_wheres
from .stores.base import (
    AdminChange,
    EntryKind,
    EntryStatus,
    EventKind,
    JournalEntry,
    NewSaga,
    SagaFilter,
    SagaFork,
    SagaRecord,
    SagaStatus,
    Store,
)
from .stores.outbox import outbox_store

if TYPE_CHECKING:
    from .engine.engine import Engine

log = logging.getLogger("sagakit.admin")

#: the statuses in the order a saga goes through them (for counts and menus)
LIFECYCLE = (
    SagaStatus.QUEUED,
    SagaStatus.PENDING,
    SagaStatus.RUNNING,
    SagaStatus.SUSPENDED,
    SagaStatus.PARKED,
    SagaStatus.COMPENSATING,
    SagaStatus.COMPLETED,
    SagaStatus.COMPENSATED,
    SagaStatus.FAILED,
    SagaStatus.CANCELLED,
)
_MAX_LIMIT = 1000
_MICROSECOND = 1e-6
#: how many times a cancel is planned again when the saga moved on meanwhile (a child's outcome
#: woke it, a worker claimed it): cancel is allowed from every status that has not ended
_CANCEL_TRIES = 8

__all__ = ["AuditEntry", "SagaAdmin", "SagaPage"]


@dataclass(frozen=True, slots=True)
class SagaPage:
    """One page of :meth:`SagaAdmin.list_sagas`: the sagas, newest first, and the cursor of the
    next page (``None`` on the last page)."""

    sagas: list[SagaSnapshot]
    next_cursor: str | None

    def __iter__(self) -> Iterator[SagaSnapshot]:
        return iter(self.sagas)

    def __len__(self) -> int:
        return len(self.sagas)


class SagaAdmin(RunAdmin, QueueAdmin, ScheduleAdmin, HealthAdmin):
    """The operator's view of an engine's database (see the module docstring); its queues
    in :class:`~sagakit.queue_admin.QueueAdmin`, its schedules in
    :class:`~sagakit.schedule_admin.ScheduleAdmin`, its alert conditions in
    :class:`~sagakit.health.HealthAdmin`."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def _store(self) -> Store:
        return self._engine._store_or_raise()

    # -- looking ---------------------------------------------------------------------------

    async def get_saga(self, saga_id: str) -> SagaSnapshot:
        """The saga with its journal (``steps``), its audit entries (``audit``) and the events
        delivered to it (``events``).

        Raises SagaNotFoundError.
        """
        store = self._store()
        record = await store.load_saga(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        journal = await store.load_journal(saga_id)
        return SagaSnapshot.build(record, journal, await store.load_events(saga_id))

    async def list_sagas(
        self,
        status: str | None = None,
        name: str | None = None,
        created_after: datetime | float | None = None,
        created_before: datetime | float | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        id_prefix: str | None = None,
        where: Sequence[str | FieldMatch] = (),
    ) -> SagaPage:
        """Sagas newest first, without their journals, filtered by status, workflow name,
        creation time (``created_after`` inclusive, ``created_before`` exclusive; a datetime
        (naive ones are taken as UTC) or an epoch time), the start of their id (``id_prefix``)
        and values inside their input or output (``where``: ``"input.customer_id=42"``, see
        :mod:`sagakit.search`; all must hold). Pass ``page.next_cursor`` as ``cursor`` for the
        next page; paging is stable while new sagas arrive (they are newer than every page).

        Raises SagaValidationError for an unknown status, a bad limit, a cursor this method
        did not give out, or a search condition it cannot use
        (:class:`~sagakit.search.SearchError`).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIMIT:
            raise SagaValidationError(
                f"limit must be a whole number from 1 to {_MAX_LIMIT}, got {limit!r}"
            )
        query = SagaFilter(
            status=_status(status),
            name=name,
            created_after=_epoch(created_after, "created_after", inclusive=True),
            created_before=_epoch(created_before, "created_before"),
            after=None if cursor is None else _decode_cursor(cursor),
            id_prefix=None if id_prefix is None else check_id_prefix(id_prefix),
            where=parse_wheres(where),
        )
        records = await self._store().list_sagas(query, limit + 1)
        page = records[:limit]
        more = len(records) > limit
        return SagaPage(
            [SagaSnapshot.build(r, None) for r in page],
            _encode_cursor(page[-1]) if more else None,
        )

    async def outbox_backlog(self) -> int | None:
        """How many outbox messages wait for the relay (None: the store keeps no outbox)."""
        outbox = outbox_store(self._store())
        return None if outbox is None else await outbox.outbox_backlog()

    async def count_by_status(self) -> dict[str, int]:
        """How many sagas are in each status: every status, in lifecycle order, zeros
        included."""
        counts = await self._store().count_by_status()
        return {status.value: counts.get(status.value, 0) for status in LIFECYCLE}

    async def stranded(self, limit: int = 50) -> list[SagaSnapshot]:
        """Sagas that have not ended and that no live worker can run: no worker whose
        heartbeat is younger than 3 of its leases serves their ``(workflow name, version)``
        (every worker records what it serves on each lease renewal tick, and deletes its
        heartbeat when it closes). Newest first, without their journals. Deploy (or keep) a
        worker that registers their version, and they go on."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIMIT:
            raise SagaValidationError(
                f"limit must be a whole number from 1 to {_MAX_LIMIT}, got {limit!r}"
            )
        records = await self._store().list_stranded(limit)
        return [SagaSnapshot.build(r, None) for r in records]

    async def count_stranded(self) -> int:
        """How many sagas :meth:`stranded` would list without a limit."""
        return await self._store().count_stranded()

    # -- steering --------------------------------------------------------------------------

    async def retry_step(
        self,
        saga_id: str,
        *,
        forward: bool = False,
        reason: str | None = None,
        by: str | None = None,
    ) -> SagaSnapshot:
        """Run the failed step again, with a fresh retry budget.

        * PARKED: the step that ran out of retries runs again, and the saga goes on.
        * COMPENSATED (DBOS's resume): the saga goes forward again from the step whose failure
          rolled it back. The steps its rollback undid run again (their effects were undone),
          the steps it did not undo (no compensation) keep their recorded outputs, and the
          failed step runs again; the rollback's entries leave the journal (the audit entry
          lists them). A saga an operator rolled back goes on from where it stopped.
        * FAILED because compensations failed: those compensations run again, and the
          rollback goes on (the saga ends COMPENSATED if they succeed). With ``forward=True``
          the rollback is abandoned instead, and the saga goes forward again as a COMPENSATED
          one does (the steps whose compensations ran, or failed, run again).
        * FAILED because the code no longer replays its journal (non-determinism): the saga is
          replayed again, with the code the workers run now.
        * SUSPENDED while a step (or compensation) waits out a retry backoff: its next attempt
          runs now, as the first of a fresh retry budget (``resume`` makes it now too, but
          counts the attempts made so far). A SUSPENDED saga that waits for something else
          (a signal, a timer, a child) is refused with SagaStateError: deliver what it waits
          for, resume, cancel or compensate it.

        A child saga (its parent has its outcome) and a virtual object's handler are not made
        to go forward again once they ended (SagaStateError).
        """

        def plan(record: SagaRecord, journal: dict[int, JournalEntry]) -> Plan:
            return retry_plan(record, journal, forward=forward)

        return await self._act(saga_id, "retry", RERUNNABLE, plan, reason, by)

    async def skip_step(
        self,
        saga_id: str,
        mock_output: Any = None,
        *,
        forward: bool = False,
        reason: str | None = None,
        by: str | None = None,
    ) -> SagaSnapshot:
        """Record ``mock_output`` as the output of the failed step and go on as if the step had
        returned it (the step is not compensated on a later rollback: the saga did not do it).

        * PARKED: the step the saga is stopped at.
        * COMPENSATED: the step whose failure rolled the saga back; the saga goes forward again
          as with :meth:`retry_step` (what the rollback undid runs again), from after that
          step. One rolled back by an operator has no failed step unless it was parked.
        * FAILED because compensations failed: those compensations are recorded as done (an
          operator undid by hand what they should have) and the rollback finishes;
          ``mock_output`` must then be left out. With ``forward=True`` the rollback is
          abandoned instead and the saga goes forward with ``mock_output``, as a COMPENSATED
          saga does.
        * SUSPENDED while a step waits out a retry backoff: that step, with nothing to undo;
          the saga goes on from it. A compensation waiting so is recorded as done (an operator
          undid by hand what it should have; ``mock_output`` must be left out) and the
          rollback goes on. Refused (SagaStateError) when several operations wait so (retry
          them), or when the saga waits for something else (a signal, a timer, a child): the
          error says what it waits for.

        Raises SagaValidationError, before anything is written, for an output that is not
        JSON. An output that does not fit the step's output type parks the saga again when a
        worker replays it, with the reason in its error.
        """
        try:
            output = serde.dumps(mock_output, what="the mock output")
        except OutputNotSerializableError as exc:
            raise SagaValidationError(exc.message) from exc
        now = self._engine.clock.now()

        def plan(record: SagaRecord, journal: dict[int, JournalEntry]) -> Plan:
            return skip_plan(
                record, journal, mock_output=mock_output, output=output, now=now, forward=forward
            )

        return await self._act(saga_id, "skip", RERUNNABLE, plan, reason, by)

    async def compensate(
        self, saga_id: str, *, reason: str | None = None, by: str | None = None
    ) -> SagaSnapshot:
        """Roll the saga back now: it stops going forward (a wait ends, a parked step stays
        failed) and the compensations of what it did run, newest first. Allowed while it is
        PENDING, SUSPENDED or PARKED (a RUNNING saga may be in the middle of a step whose
        outcome nobody could record: cancel it, or wait until it waits or parks), and once it
        is COMPLETED: a finished saga is rolled back, every compensation newest first, and
        ends COMPENSATED (FAILED if a compensation fails for good); its output is kept in the
        audit entry. A completed child saga or virtual object handler is not rolled back
        (SagaStateError): its parent, or the object's next handler, went on from it."""

        def plan(record: SagaRecord, journal: dict[int, JournalEntry]) -> Plan:
            return compensate_plan(record, by, reason)

        allowed = (
            SagaStatus.QUEUED,
            SagaStatus.PENDING,
            SagaStatus.SUSPENDED,
            SagaStatus.PARKED,
            SagaStatus.COMPLETED,
        )
        return await self._act(saga_id, "compensate", allowed, plan, reason, by)

    async def delete(
        self, saga_id: str, *, reason: str | None = None, by: str | None = None
    ) -> SagaSnapshot:
        """Remove an ended saga from the database: its row, journal, events and published
        state. Returns the saga as it was just before (the only record left of it: the
        deletion is logged, with ``reason`` and ``by``, on the ``sagakit.admin`` logger).

        Raises SagaNotFoundError, and SagaStateError for a saga that has not ended (cancel or
        compensate it first). Deleting is idempotent in the store: a retry after a lost answer
        deletes nothing more.
        """
        store = self._store()
        snapshot = await self.get_saga(saga_id)
        ended = [s for s in LIFECYCLE if s.is_terminal]
        hint = (
            "it has not ended: cancel it (it stops where it is) or compensate it (it rolls "
            "back), then delete it"
        )
        if not snapshot.status.is_terminal:
            raise SagaStateError(saga_id, snapshot.status, "delete", ended, hint)
        if not await store.delete_saga(saga_id):
            now = await store.load_saga(saga_id)
            if now is not None:  # an operator made it go on meanwhile
                raise SagaConflictError(
                    f"saga {saga_id!r} changed while delete was being made (it was "
                    f"{snapshot.status}, it is {now.status} now); nothing was deleted: look "
                    "at it again"
                )
        log.info(
            "operator%s: delete saga %s (%s)%s",
            f" {by}" if by else "",
            saga_id,
            snapshot.status,
            f": {reason}" if reason else "",
            extra={"saga_id": saga_id, "action": "delete", "by": by, "status": snapshot.status},
        )
        return snapshot

    async def prune(
        self,
        older_than: timedelta | datetime,
        *,
        statuses: Sequence[str] | None = None,
        batch: int = 500,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
        by: str | None = None,
    ) -> int:
        """Delete every ended saga whose last change is older than ``older_than`` (an age, or
        a moment), as :meth:`delete` does, in batches of ``batch`` (one short transaction
        each, which waits for no saga another transaction holds) until none is left; return
        how many were deleted, or with ``dry_run`` how many would be (nothing is deleted).

        ``statuses`` defaults to COMPLETED, COMPENSATED and CANCELLED: a FAILED saga goes
        only when named (its rollback is incomplete); a status that has not ended is refused
        (SagaValidationError). A saga whose parent, or one of whose children, has not ended
        is kept. ``progress`` hears the running total after each batch. Logged on the
        ``sagakit.admin`` logger with ``by``."""
        if isinstance(older_than, timedelta):
            ended_before = self._engine.clock.now() - older_than.total_seconds()
        else:
            ended_before = older_than.timestamp()
        count = await prune_ended(
            self._store(),
            ended_before,
            statuses=statuses,
            batch=batch,
            dry_run=dry_run,
            progress=progress,
        )
        moment = datetime.fromtimestamp(ended_before, UTC).isoformat()
        if not dry_run:
            log.info(
                "operator%s: pruned %d sagas that ended before %s",
                f" {by}" if by else "",
                count,
                moment,
                extra={"action": "prune", "by": by, "deleted": count},
            )
        return count

    async def cancel(self, saga_id: str, reason: str, *, by: str | None = None) -> SagaSnapshot:
        """Stop the saga for good without rolling it back: it becomes CANCELLED. Allowed while
        it has not ended. A worker running it stops at its next durable write (a step executing
        at that moment finishes, its result is not recorded); a parent waiting for it gets
        SagaCancelledError.

        Its child sagas that have not ended, and theirs, are rolled back, top-down: each stops
        going forward (new fence; a step executing in it finishes unrecorded) and its
        compensations run newest first in a worker, as with :meth:`compensate`; it ends
        COMPENSATED (FAILED if a compensation fails for good), with an audit entry that names
        this saga, ``by`` and ``reason``. A child that has ended is left as it is (and so is
        what is below it); one that is COMPENSATING finishes its own rollback. When there were
        children, a second audit entry on this saga (``roll_back_children``) says what was done
        to each. See "Cancelling a saga with children" in docs/reliability.md.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise SagaValidationError(
                "cancel needs a reason (it is kept in the saga's audit entry and error): "
                "say why the saga is stopped without rollback"
            )
        store = self._store()
        # woken in the cancel's own transaction: if this process dies before it rolls them
        # back below, each finds the cancel when it next runs (see engine/cascade.py)
        children = await live_children(store, saga_id)

        def plan(record: SagaRecord, journal: dict[int, JournalEntry]) -> Plan:
            error = serde.dumps({"kind": "cancelled", "reason": reason, "by": by})
            tell: tuple[tuple[str, str, str, str], ...] = ()
            if record.parent_id is not None:
                outcome = {"status": SagaStatus.CANCELLED.value, "output": None, "error": error}
                tell = ((record.parent_id, EventKind.CHILD, saga_id, serde.dumps(outcome)),)
            tell += wake_calls(saga_id, children)
            return Plan(SagaStatus.CANCELLED, None, None, {}, error=error, tell=tell)

        allowed = tuple(s for s in LIFECYCLE if not s.is_terminal)
        snapshot = await self._act(
            saga_id, "cancel", allowed, plan, reason, by, tries=_CANCEL_TRIES
        )
        running = self._engine._tasks.get(saga_id)
        if running is not None:
            running.cancel()  # its fence is stale: it could write nothing more anyway
        cancellation = Cancellation(saga_id, by, reason)
        outcomes = await roll_back_descendants(store, saga_id, cancellation, self._stop_stale_run)
        if not outcomes:
            return snapshot
        self._engine._poke()  # a worker in this process rolls them back at once
        await self._record_children(saga_id, outcomes, reason, by)
        return await self.get_saga(saga_id)

    def _stop_stale_run(self, record: SagaRecord) -> None:
        """A run of this saga in this process that an action fenced out stops now (it could
        record nothing more), as a cancelled saga's does."""
        task = self._engine._tasks.get(record.saga_id)
        if task is not None and task.sagakit_run.fence < record.fence:  # type: ignore[attr-defined]
            task.cancel()

    async def _record_children(
        self, saga_id: str, outcomes: list[ChildOutcome], reason: str, by: str | None
    ) -> None:
        """Add to a cancelled saga's audit what its cancel did to each of its descendants."""
        details: dict[str, Any] = {}
        for fate in ChildFate:
            chosen = [o for o in outcomes if o.fate == fate]
            if fate == ChildFate.ENDED and chosen:
                details[fate.value] = {o.saga_id: o.status for o in chosen}
            elif chosen:
                details[fate.value] = [o.saga_id for o in chosen]
        store = self._store()
        record = await store.load_saga(saga_id)
        if record is None or record.status != SagaStatus.CANCELLED:  # pragma: no cover
            return
        key = uuid.uuid4().hex
        change = AdminChange(
            saga_id=saga_id,
            expect_status=record.status,
            expect_fence=record.fence,
            status=record.status,
            due_at=0.0,
            audit=audit_entry(
                saga_id, "roll_back_children", reason=reason, by=by, details=details, action_id=key
            ),
            output=record.output,
            error=record.error,
            key=key,
        )
        if await store.administer(change) is None:  # pragma: no cover - nothing else acts on it
            log.warning("could not add the rollback of its children to cancelled saga %s", saga_id)

    async def resume(
        self, saga_id: str, *, reason: str | None = None, by: str | None = None
    ) -> SagaSnapshot:
        """Wake a SUSPENDED saga now: its timers (``saga.sleep``) end early, a step or
        compensation waiting out a retry backoff makes its next attempt at once; a wait for a
        signal, a promise or a child looks at its events again and goes on waiting if none
        answered it."""

        def plan(record: SagaRecord, journal: dict[int, JournalEntry]) -> Plan:
            tokens = [
                serde.loads(e.output)["token"]
                for e in journal.values()
                if e.kind == EntryKind.SLEEP and e.status == EntryStatus.RUNNING and e.output
            ]
            # a notification for a sleep's token ends it, as engine.notify does
            tell = tuple((saga_id, EventKind.NOTIFY, token, "null") for token in tokens)
            # a step or compensation waiting out a retry backoff makes its next attempt now
            now = self._engine.clock.now()
            retries = tuple(
                replace(e, error=serde.dumps({**(serde.loads(e.error) or {}), "retry_at": now}))
                for e in journal.values()
                if e.status == EntryStatus.RETRYING
            )
            details: dict[str, Any] = {"timers_ended": len(tokens)}
            if retries:
                details["retries_now"] = [e.seq for e in retries]
            return Plan(
                SagaStatus.SUSPENDED,
                None,
                None,
                details,
                error=record.error,
                wait_token=record.wait_token,
                tell=tell,
                replace=retries,
            )

        return await self._act(saga_id, "resume", (SagaStatus.SUSPENDED,), plan, reason, by)

    async def fork(
        self,
        source_id: str,
        /,
        *,
        from_seq: int,
        saga_id: str | None = None,
        reason: str | None = None,
        by: str | None = None,
    ) -> SagaSnapshot:
        """A new saga of the same workflow with the same input, whose journal is the entries
        of saga ``source_id`` numbered below ``from_seq`` (DBOS's fork): a worker replays those
        from their records and runs the rest on the code registered now, for recovering a
        saga after a bug fix. The new saga (id ``saga_id``, or a fresh one) is PENDING; a
        worker of this process takes it at once. The source is left as it is, whatever its
        status: cancel it if the fork replaces it (compensating it would undo the steps the
        fork reuses). Both get an audit entry: ``fork`` on the new saga (naming the source
        and ``from_seq``), ``forked`` on the source (naming the new saga).

        Idempotent: forking again with the same ``saga_id`` (a retry after a lost answer)
        returns the fork made the first time.

        Raises SagaNotFoundError; SagaValidationError (nothing written) for ``from_seq`` out
        of range (0 reuses nothing, one past the last entry reuses all), an entry below it
        that did not complete, belongs to a rollback or was undone by one, or starts or
        calls another saga (a child, a durable call, a send: the fork would share it), and
        for a virtual object's handler (its object's queue decides when it runs);
        UnknownWorkflowError when this engine runs sagas but has not registered the workflow
        (the fork would run on no code here); SagaConflictError when ``saga_id`` is taken by
        another saga.
        """
        store = self._store()
        new_id = check_saga_id(saga_id)
        source = await store.load_saga(source_id)
        if source is None:
            raise SagaNotFoundError(source_id)
        if source.object_key is not None:
            raise SagaValidationError(
                f"saga {source_id!r} is a handler of virtual object {source.object_key!r}: its "
                "object's queue decides when it runs, and a fork would run beside it on the "
                "same state; call the object again instead"
            )
        if new_id == source_id:
            raise SagaConflictError(f"a fork needs an id of its own, not {source_id!r}")
        workflow = self._engine.workflows.get(source.name)
        if workflow is None and (self._engine.is_worker or self._engine.workflows):
            raise UnknownWorkflowError(source.name, self._engine.workflows)
        plan = fork_plan(source, await store.load_journal(source_id), from_seq, new_id)
        # the same for a retry of this very fork: the store recognises it by this key
        key = f"fork:{source_id}:{from_seq}:{new_id}"
        details = {"source": source_id, "from_seq": from_seq, **plan.details}
        version = getattr(workflow, "version", None) or getattr(source, "version", None)
        made = await store.fork_saga(
            SagaFork(
                new=NewSaga(
                    saga_id=new_id,
                    name=source.name,
                    input=source.input,
                    owner=None,
                    lease_seconds=self._engine.lease.total_seconds(),
                    version=version,
                ),
                source_id=source_id,
                entries=plan.entries,
                events_upto=plan.events_upto,
                state=plan.state,
                audit=audit_entry(
                    new_id, "fork", reason=reason, by=by, details=details, action_id=key
                ),
                source_audit=audit_entry(
                    source_id,
                    "forked",
                    reason=reason,
                    by=by,
                    details={"fork": new_id, "from_seq": from_seq},
                    action_id=key,
                ),
                key=key,
            )
        )
        if made is None:
            taken = await store.load_saga(new_id)
            if taken is None:
                raise SagaNotFoundError(source_id)  # deleted meanwhile
            raise SagaConflictError(
                f"saga id {new_id!r} is taken by another saga (of workflow {taken.name!r}, "
                f"not a fork of {source_id!r} from seq {from_seq}); choose another id"
            )
        log.info(
            "operator%s: fork saga %s from seq %d as %s%s",
            f" {by}" if by else "",
            source_id,
            from_seq,
            new_id,
            f": {reason}" if reason else "",
            extra={"saga_id": source_id, "action": "fork", "by": by, "fork": new_id},
        )
        self._engine._poke()  # a worker in this process takes the fork at once
        return await self.get_saga(new_id)

    async def _act(
        self,
        saga_id: str,
        action: str,
        allowed: tuple[SagaStatus, ...],
        plan: Callable[[SagaRecord, dict[int, JournalEntry]], Plan],
        reason: str | None,
        by: str | None,
        *,
        tries: int = 1,
    ) -> SagaSnapshot:
        """Check the saga's status, plan the change from what it is now, and make it in one
        transaction that holds only if nothing changed the saga meanwhile. With ``tries`` above
        1 (an action whose meaning does not depend on what the operator saw), a saga that moved
        on by itself meanwhile (a worker took it, it suspended) is looked at and planned for
        again, up to ``tries`` times in all; one that another operator changed is not."""
        store = self._store()
        # chosen before the first attempt: a store retrying the change after a lost answer
        # recognises it as made (see AdminChange.key); one action however often it is planned
        key = uuid.uuid4().hex
        first: SagaRecord | None = None
        actions_seen = 0
        while True:
            record = await store.load_saga(saga_id)
            if record is None:
                raise SagaNotFoundError(saga_id)
            journal: dict[int, JournalEntry] | None = None
            if first is not None:
                journal = {e.seq: e for e in await store.load_journal(saga_id)}
                if sum(1 for seq in journal if seq < 0) != actions_seen:
                    raise _conflict(saga_id, action, first, record)  # another operator acted
            if record.status not in allowed:
                raise SagaStateError(
                    saga_id, record.status, action, [s.value for s in allowed], _hint(record.status)
                )
            if journal is None:
                journal = {e.seq: e for e in await store.load_journal(saga_id)}
            first = first or record
            actions_seen = sum(1 for seq in journal if seq < 0)
            change = plan(record, journal)
            entry = audit_entry(
                saga_id,
                action,
                reason=reason,
                by=by,
                details=change.details,
                action_id=key,
                step=change.step,
                seq=change.seq,
            )
            updated = await store.administer(
                AdminChange(
                    saga_id=saga_id,
                    expect_status=record.status,
                    expect_fence=record.fence,
                    status=change.status.value,
                    due_at=0.0,
                    audit=entry,
                    output=record.output if change.keep_output else None,
                    error=change.error,
                    wait_token=change.wait_token,
                    replace=change.replace,
                    delete=change.delete,
                    tell=change.tell,
                    key=key,
                )
            )
            if updated is not None:
                done = updated
                break
            tries -= 1
            if tries <= 0:
                raise _conflict(saga_id, action, first, await store.load_saga(saga_id))
        log.info(
            "operator%s: %s saga %s (%s → %s)%s",
            f" {by}" if by else "",
            action,
            saga_id,
            record.status,
            done.status,
            f": {reason}" if reason else "",
            extra={
                "saga_id": saga_id,
                "action": action,
                "by": by,
                "step": change.step,
                "seq": change.seq,
                "status": done.status,
            },
        )
        self._engine._poke()  # a worker in this process takes the saga at once
        return await self.get_saga(saga_id)


def _conflict(
    saga_id: str, action: str, seen: SagaRecord, now: SagaRecord | None
) -> SagaConflictError:
    state = "gone" if now is None else now.status
    return SagaConflictError(
        f"saga {saga_id!r} changed while {action} was being made (it was {seen.status}, it is "
        f"{state} now); nothing was done: look at it again"
    )


def _hint(status: str) -> str:
    hints = {
        SagaStatus.COMPLETED: "it has ended: compensate rolls it back, delete removes it",
        SagaStatus.COMPENSATED: "it was rolled back and has ended: retry_step or skip_step "
        "makes it go forward again from its failed step, delete removes it",
        SagaStatus.CANCELLED: "it was cancelled and has ended: delete removes it",
        SagaStatus.FAILED: "it has ended: retry_step or skip_step takes it up again, delete "
        "removes it",
        SagaStatus.RUNNING: "a worker is running it: cancel it, or wait until it waits or parks",
        SagaStatus.COMPENSATING: "a worker is rolling it back: wait until it ends, or cancel it",
    }
    return hints.get(SagaStatus(status), "")


def _status(status: str | None) -> str | None:
    if status is None:
        return None
    try:
        return SagaStatus(str(status).upper()).value
    except ValueError:
        choices = ", ".join(s.value for s in LIFECYCLE)
        raise SagaValidationError(f"unknown status {status!r}; use one of {choices}") from None


def _epoch(value: datetime | float | None, what: str, *, inclusive: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        # a datetime holds microseconds, a saga's created_at finer: the saga whose created_at
        # shows as this datetime (rounded to the microsecond) must be "at or after" it
        return value.timestamp() - (_MICROSECOND if inclusive else 0.0)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise SagaValidationError(f"{what} must be a datetime or an epoch time, got {value!r}")


def _encode_cursor(record: SagaRecord) -> str:
    raw = json.dumps([record.created_at, record.saga_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, saga_id = json.loads(raw)
        if isinstance(created_at, int | float) and isinstance(saga_id, str):
            return float(created_at), saga_id
    except (ValueError, TypeError, binascii.Error):
        pass
    raise SagaValidationError(
        f"cursor {cursor!r} is not one list_sagas gave out: pass page.next_cursor as it is"
    )
