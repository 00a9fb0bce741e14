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
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
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
from .engine.operators import OPERATOR_ROLLBACK, audit_entry, operator_rollback_message
from .engine.snapshots import AuditEntry, SagaSnapshot
from .errors import (
    OutputNotSerializableError,
    SagaConflictError,
    SagaNotFoundError,
    SagaStateError,
    SagaValidationError,
)
from .stores.base import (
    AdminChange,
    EntryKind,
    EntryStatus,
    EventKind,
    JournalEntry,
    SagaFilter,
    SagaRecord,
    SagaStatus,
    Store,
)

if TYPE_CHECKING:
    from .engine.engine import Engine

log = logging.getLogger("sagakit.admin")

#: the statuses in the order a saga goes through them (for counts and menus)
LIFECYCLE = (
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
#: compensation data that means "nothing to undo" (a skipped step did nothing to undo)
_NOTHING_TO_COMPENSATE = "null"

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


class SagaAdmin:
    """The operator's view of an engine's database (see the module docstring)."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def _store(self) -> Store:
        return self._engine._store_or_raise()

    # -- looking ---------------------------------------------------------------------------

    async def get_saga(self, saga_id: str) -> SagaSnapshot:
        """The saga with its journal (``steps``) and its audit entries (``audit``).

        Raises SagaNotFoundError.
        """
        store = self._store()
        record = await store.load_saga(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        return SagaSnapshot.build(record, await store.load_journal(saga_id))

    async def list_sagas(
        self,
        status: str | None = None,
        name: str | None = None,
        created_after: datetime | float | None = None,
        created_before: datetime | float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SagaPage:
        """Sagas newest first, without their journals, filtered by status, workflow name and
        creation time (``created_after`` inclusive, ``created_before`` exclusive; a datetime
        (naive ones are taken as UTC) or an epoch time). Pass ``page.next_cursor`` as
        ``cursor`` for the next page; paging is stable while new sagas arrive (they are newer
        than every page).

        Raises SagaValidationError for an unknown status, a bad limit or a cursor this method
        did not give out.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIMIT:
            raise SagaValidationError(
                f"limit must be a whole number from 1 to {_MAX_LIMIT}, got {limit!r}"
            )
        where = SagaFilter(
            status=_status(status),
            name=name,
            created_after=_epoch(created_after, "created_after", inclusive=True),
            created_before=_epoch(created_before, "created_before"),
            after=None if cursor is None else _decode_cursor(cursor),
        )
        records = await self._store().list_sagas(where, limit + 1)
        page = records[:limit]
        more = len(records) > limit
        return SagaPage(
            [SagaSnapshot.build(r, None) for r in page],
            _encode_cursor(page[-1]) if more else None,
        )

    async def count_by_status(self) -> dict[str, int]:
        """How many sagas are in each status: every status, in lifecycle order, zeros
        included."""
        counts = await self._store().count_by_status()
        return {status.value: counts.get(status.value, 0) for status in LIFECYCLE}

    # -- steering --------------------------------------------------------------------------

    async def retry_step(
        self, saga_id: str, *, reason: str | None = None, by: str | None = None
    ) -> SagaSnapshot:
        """Run the failed step again, with a fresh retry budget.

        * PARKED: the step that ran out of retries runs again, and the saga goes on.
        * FAILED because compensations failed: those compensations run again, and the
          rollback goes on (the saga ends COMPENSATED if they succeed).
        * FAILED because the code no longer replays its journal (non-determinism): the saga is
          replayed again, with the code the workers run now.
        """

        def plan(record: SagaRecord, journal: dict[int, JournalEntry]) -> _Plan:
            error = serde.loads(record.error) or {}
            if record.status == SagaStatus.PARKED:
                seq = _parked_seq(record, error, journal)
                entry = journal[seq]
                details = {"seqs": [seq], "previous": _previous(entry)}
                return _Plan(SagaStatus.RUNNING, entry.name, seq, details, delete=(seq,))
            if error.get("kind") == "non_determinism":
                return _Plan(SagaStatus.RUNNING, None, None, {"replay": True})
            failed = _failed_compensations(record, error, journal, "retry_step")
            return _go_on_rolling_back(journal, failed, error, delete=tuple(failed))

        return await self._act(
            saga_id, "retry", (SagaStatus.PARKED, SagaStatus.FAILED), plan, reason, by
        )

    async def skip_step(
        self,
        saga_id: str,
        mock_output: Any = None,
        *,
        reason: str | None = None,
        by: str | None = None,
    ) -> SagaSnapshot:
        """Record ``mock_output`` as the output of the step a PARKED saga is stopped at, and go
        on as if the step had returned it (the step is not compensated on a later rollback:
        the saga did not do it). On a saga FAILED because compensations failed, record those
        compensations as done (an operator undid by hand what they should have) and finish the
        rollback; ``mock_output`` must then be left out.

        Raises SagaValidationError, before anything is written, for an output that is not
        JSON. An output that does not fit the step's output type parks the saga again when a
        worker replays it, with the reason in its error.
        """
        try:
            output = serde.dumps(mock_output, what="the mock output")
        except OutputNotSerializableError as exc:
            raise SagaValidationError(exc.message) from exc
        now = time.time()

        def plan(record: SagaRecord, journal: dict[int, JournalEntry]) -> _Plan:
            error = serde.loads(record.error) or {}
            if record.status == SagaStatus.PARKED:
                seq = _parked_seq(record, error, journal)
                old = journal[seq]
                done = replace(
                    old,
                    status=EntryStatus.COMPLETED,
                    output=output,
                    compensation=_NOTHING_TO_COMPENSATE,
                    error=None,
                    finished_at=now,
                )
                details = {"seqs": [seq], "output": mock_output, "previous": _previous(old)}
                return _Plan(SagaStatus.RUNNING, old.name, seq, details, replace=(done,))
            if mock_output is not None:
                raise SagaValidationError(
                    f"saga {saga_id!r} is FAILED because compensations failed: skipping records "
                    "them as done and takes no mock output; leave mock_output out"
                )
            failed = _failed_compensations(record, error, journal, "skip_step")
            entries = tuple(
                replace(journal[s], status=EntryStatus.COMPLETED, error=None, finished_at=now)
                for s in failed
            )
            return _go_on_rolling_back(journal, failed, error, replace=entries)

        return await self._act(
            saga_id, "skip", (SagaStatus.PARKED, SagaStatus.FAILED), plan, reason, by
        )

    async def compensate(
        self, saga_id: str, *, reason: str | None = None, by: str | None = None
    ) -> SagaSnapshot:
        """Roll the saga back now: it stops going forward (a wait ends, a parked step stays
        failed) and the compensations of what it did run, newest first. Allowed while it is
        PENDING, SUSPENDED or PARKED (a RUNNING saga may be in the middle of a step whose
        outcome nobody could record: cancel it, or wait until it waits or parks)."""

        def plan(record: SagaRecord, journal: dict[int, JournalEntry]) -> _Plan:
            cause = {
                "type": OPERATOR_ROLLBACK,
                "message": operator_rollback_message(by, reason),
                "step": None,
                "seq": None,
            }
            error = serde.dumps({"kind": "compensating", "cause": cause})
            return _Plan(SagaStatus.COMPENSATING, None, None, {}, error=error)

        allowed = (SagaStatus.PENDING, SagaStatus.SUSPENDED, SagaStatus.PARKED)
        return await self._act(saga_id, "compensate", allowed, plan, reason, by)

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

        def plan(record: SagaRecord, journal: dict[int, JournalEntry]) -> _Plan:
            error = serde.dumps({"kind": "cancelled", "reason": reason, "by": by})
            tell: tuple[tuple[str, str, str, str], ...] = ()
            if record.parent_id is not None:
                outcome = {"status": SagaStatus.CANCELLED.value, "output": None, "error": error}
                tell = ((record.parent_id, EventKind.CHILD, saga_id, serde.dumps(outcome)),)
            tell += wake_calls(saga_id, children)
            return _Plan(SagaStatus.CANCELLED, None, None, {}, error=error, tell=tell)

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

        def plan(record: SagaRecord, journal: dict[int, JournalEntry]) -> _Plan:
            tokens = [
                serde.loads(e.output)["token"]
                for e in journal.values()
                if e.kind == EntryKind.SLEEP and e.status == EntryStatus.RUNNING and e.output
            ]
            # a notification for a sleep's token ends it, as engine.notify does
            tell = tuple((saga_id, EventKind.NOTIFY, token, "null") for token in tokens)
            # a step or compensation waiting out a retry backoff makes its next attempt now
            now = time.time()
            retries = tuple(
                replace(e, error=serde.dumps({**(serde.loads(e.error) or {}), "retry_at": now}))
                for e in journal.values()
                if e.status == EntryStatus.RETRYING
            )
            details: dict[str, Any] = {"timers_ended": len(tokens)}
            if retries:
                details["retries_now"] = [e.seq for e in retries]
            return _Plan(
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

    async def _act(
        self,
        saga_id: str,
        action: str,
        allowed: tuple[SagaStatus, ...],
        plan: Callable[[SagaRecord, dict[int, JournalEntry]], _Plan],
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
                    output=record.output,
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


@dataclass(frozen=True, slots=True)
class _Plan:
    """What an action changes: the new status, the step it is about, the audit details."""

    status: SagaStatus
    step: str | None
    seq: int | None
    details: dict[str, Any]
    error: str | None = None
    wait_token: str | None = None
    replace: tuple[JournalEntry, ...] = ()
    delete: tuple[int, ...] = ()
    tell: tuple[tuple[str, str, str, str], ...] = ()


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
        SagaStatus.COMPLETED: "it has ended: nothing is left to steer",
        SagaStatus.COMPENSATED: "it was rolled back and has ended",
        SagaStatus.CANCELLED: "it was cancelled and has ended",
        SagaStatus.RUNNING: "a worker is running it: cancel it, or wait until it waits or parks",
        SagaStatus.COMPENSATING: "a worker is rolling it back: wait until it ends, or cancel it",
    }
    return hints.get(SagaStatus(status), "")


def _parked_seq(record: SagaRecord, error: dict[str, Any], journal: dict[int, JournalEntry]) -> int:
    seq = error.get("seq")
    if not isinstance(seq, int) or seq not in journal:
        raise SagaStateError(
            record.saga_id,
            record.status,
            "find the parked step of",
            [],
            "its error names no journaled step; this is a bug, please report it",
        )
    return seq


def _failed_compensations(
    record: SagaRecord, error: dict[str, Any], journal: dict[int, JournalEntry], action: str
) -> list[int]:
    """The journal numbers of the compensations (and after-rollback step) of a FAILED saga
    that failed for good."""
    if error.get("kind") != "compensation_failed":
        raise SagaStateError(
            record.saga_id,
            record.status,
            action,
            [SagaStatus.PARKED.value, "FAILED because compensations failed"],
            f"it failed in a way that has no step to {action.removesuffix('_step')} "
            f"({error.get('kind') or 'unknown'})",
        )
    seqs = [
        f["seq"]
        for f in error.get("compensation_failures", [])
        if isinstance(f.get("seq"), int)
        and f["seq"] in journal
        and journal[f["seq"]].status == EntryStatus.FAILED
    ]
    if not seqs:
        raise SagaStateError(
            record.saga_id, record.status, action, [], "its failed compensations are not in its "
            "journal any more; this is a bug, please report it",
        )  # fmt: skip
    return sorted(set(seqs), reverse=True)


def _go_on_rolling_back(
    journal: dict[int, JournalEntry],
    failed: list[int],
    error: dict[str, Any],
    *,
    delete: tuple[int, ...] = (),
    replace: tuple[JournalEntry, ...] = (),
) -> _Plan:
    """The plan for a FAILED saga whose failed compensations are done again (``delete``) or
    recorded as done (``replace``): it goes on rolling back, for its original cause."""
    details = {"seqs": failed, "previous": [_previous(journal[s]) for s in failed]}
    return _Plan(
        SagaStatus.COMPENSATING,
        journal[failed[0]].name,
        failed[0],
        details,
        error=serde.dumps({"kind": "compensating", "cause": error.get("cause")}),
        replace=replace,
        delete=delete,
    )


def _previous(entry: JournalEntry) -> dict[str, Any]:
    """What an action replaced, for the audit entry."""
    return {
        "kind": entry.kind,
        "name": entry.name,
        "status": entry.status,
        "attempts": entry.attempts,
        "error": serde.loads(entry.error),
        "started_at": entry.started_at,
        "finished_at": entry.finished_at,
    }


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
