"""Rolling back the children of a cancelled saga (the policy is in docs/reliability.md,
"Cancelling a saga with children").

Cancelling a saga stops it without rollback. Its descendants that have not ended are rolled
back, each as by an operator's ``compensate``: it stops going forward, its registered
compensations run newest first in whichever worker takes it, and an audit entry says which saga
was cancelled, by whom and why. The walk goes top-down: a saga is stopped (new fence) before its
children are looked at, so that once the walk has passed a saga it can neither start a new child
nor act on the outcome of one. A descendant that has already ended is left as it is, and so is
everything below it; one that is already COMPENSATING finishes the rollback it is in.

Every rollback is made against the status and fence the walk saw, so a child that moved meanwhile
(it completed, suspended, was claimed) is looked at again rather than overwritten: whichever of
"the child recorded its end" and "the walk stopped the child" commits first decides.

The same rollback is made by a child itself, so that nothing depends on the process that
cancelled staying alive: a child whose run starts, or that is about to record that it completed,
looks up its ancestors (:func:`find_cancellation`) and, under a cancelled one, rolls itself back
the same way. The cancel's transaction sends each live child a wake-up event, so that a child
suspended in a wait runs (and finds out) even if the canceller died before its walk.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .. import serde
from ..stores.base import (
    AdminChange,
    EntryKind,
    EventKind,
    SagaFilter,
    SagaRecord,
    SagaStatus,
    Store,
)
from .operators import PARENT_CANCELLED, audit_entry, parent_cancelled_message

log = logging.getLogger("sagakit.admin")

#: the NOTIFY a cancel sends each live child (no wait's token looks like it: it answers none)
WAKE_PREFIX = "parent-cancelled:"
#: how many children one read lists
_PAGE = 500
#: how many times a child that keeps changing is looked at again before it is left to roll
#: itself back (it does, the next time its run starts or before it records its end)
_TRIES = 8
#: the deepest chain of ancestors looked up (a guard: ids cannot form a cycle)
_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Cancellation:
    """The cancel a rollback comes from: the cancelled saga, who cancelled it and why."""

    saga_id: str
    by: str | None
    reason: str

    def details(self) -> dict[str, str | None]:
        return {"saga": self.saga_id, "by": self.by, "reason": self.reason}


class ChildFate(StrEnum):
    """What the rollback of a cancelled saga's descendants did to one of them."""

    #: stopped (new fence) and handed to a worker to run its compensations
    ROLLED_BACK = "rolled_back"
    #: it was COMPENSATING already: left to finish its own rollback
    ROLLING_BACK = "rolling_back"
    #: it had ended first: left as it is
    ENDED = "ended"
    #: it kept changing: it rolls itself back when its run next starts or before it completes
    MOVING = "moving"


@dataclass(frozen=True, slots=True)
class ChildOutcome:
    saga_id: str
    parent_id: str | None
    fate: ChildFate
    #: the status it was rolled back from, or the one it was left in
    status: str


def wake_calls(
    parent_id: str, children: Sequence[SagaRecord]
) -> tuple[tuple[str, str, str, str], ...]:
    """The events (``AdminChange.tell``) that make each of these children look at its parent
    (a SUSPENDED one becomes due; a running one sees events arrived at its next wait)."""
    name = f"{WAKE_PREFIX}{parent_id}"
    return tuple((c.saga_id, EventKind.NOTIFY.value, name, "null") for c in children)


async def live_children(store: Store, parent_id: str) -> list[SagaRecord]:
    """The children of ``parent_id`` that have not ended, newest first."""
    return [r for r in await _children(store, parent_id) if not SagaStatus(r.status).is_terminal]


async def _children(store: Store, parent_id: str) -> list[SagaRecord]:
    found: list[SagaRecord] = []
    after: tuple[float, str] | None = None
    while True:
        page = await store.list_sagas(SagaFilter(parent_id=parent_id, after=after), _PAGE)
        found.extend(page)
        if len(page) < _PAGE:
            return found
        after = (page[-1].created_at, page[-1].saga_id)


async def roll_back(
    store: Store,
    child: SagaRecord,
    cancellation: Cancellation,
    stopped: Callable[[SagaRecord], None] | None = None,
) -> ChildOutcome:
    """Roll back ``child`` (as it was read) because ``cancellation`` cancelled an ancestor;
    if it changed meanwhile, look again. ``stopped`` hears of the saga as the rollback left it
    (new fence), so that a stale run of it in this process can be stopped."""
    record: SagaRecord | None = child
    for _ in range(_TRIES):
        if record is None:  # pragma: no cover - sagas are never deleted
            return ChildOutcome(child.saga_id, child.parent_id, ChildFate.ENDED, "gone")
        status = SagaStatus(record.status)
        if _for_a_cancel(record):
            # the child (or a worker of it) found the cancel first and rolled itself back
            fate = ChildFate.ROLLED_BACK
            return ChildOutcome(record.saga_id, record.parent_id, fate, status.value)
        if status.is_terminal:
            return ChildOutcome(record.saga_id, record.parent_id, ChildFate.ENDED, status.value)
        if status == SagaStatus.COMPENSATING:
            # rolling back for its own failure: doing what it would be made to do
            fate = ChildFate.ROLLING_BACK
            return ChildOutcome(record.saga_id, record.parent_id, fate, status.value)
        below = await live_children(store, record.saga_id)
        updated = await store.administer(_rollback_change(record, cancellation, below))
        if updated is not None:
            log.info(
                "saga %s (%s) rolls back: %s",
                record.saga_id,
                status.value,
                _cause(record, cancellation),
                extra={"saga_id": record.saga_id, "action": "compensate", "by": cancellation.by},
            )
            if stopped is not None:
                stopped(updated)
            fate = ChildFate.ROLLED_BACK
            return ChildOutcome(record.saga_id, record.parent_id, fate, status.value)
        record = await store.load_saga(record.saga_id)
    last = child if record is None else record
    log.warning(
        "saga %s kept changing while it was being rolled back after %s was cancelled; it rolls "
        "itself back when its run next starts or before it completes",
        last.saga_id,
        cancellation.saga_id,
        extra={"saga_id": last.saga_id},
    )
    return ChildOutcome(last.saga_id, last.parent_id, ChildFate.MOVING, last.status)


async def roll_back_descendants(
    store: Store,
    saga_id: str,
    cancellation: Cancellation,
    stopped: Callable[[SagaRecord], None] | None = None,
) -> list[ChildOutcome]:
    """Roll back every descendant of ``saga_id`` that has not ended, top-down (see the module
    docstring); what was done to each, in the order it was done."""
    outcomes: list[ChildOutcome] = []
    seen = {saga_id}
    parents = deque([saga_id])
    while parents:
        parent_id = parents.popleft()
        for child in await _children(store, parent_id):
            ended = SagaStatus(child.status).is_terminal
            if child.saga_id in seen or (ended and not _for_a_cancel(child)):
                continue  # it had ended before the cancel: left as it is, and what is below it
            seen.add(child.saga_id)
            outcome = await roll_back(store, child, cancellation, stopped)
            outcomes.append(outcome)
            if outcome.fate != ChildFate.ENDED:
                parents.append(child.saga_id)
    return outcomes


async def find_cancellation(store: Store, parent_id: str | None) -> Cancellation | None:
    """The cancel a saga whose parent is ``parent_id`` must roll back for, if any: its parent
    or an ancestor was cancelled, or is rolling back because one of its own was. The walk up
    goes through ancestors that have not ended and stops at the first that ended otherwise."""
    seen: set[str] = set()
    current = parent_id
    while current is not None and current not in seen and len(seen) < _MAX_DEPTH:
        seen.add(current)
        record = await store.load_saga(current)
        if record is None:
            return None
        if record.status == SagaStatus.CANCELLED:
            error = _error(record)
            by = error.get("by")
            reason = str(error.get("reason") or "no reason given")
            return Cancellation(record.saga_id, by if isinstance(by, str) else None, reason)
        if _for_a_cancel(record):
            return await _cancellation_of(store, record)
        if SagaStatus(record.status).is_terminal:
            return None
        current = record.parent_id
    return None


def _error(record: SagaRecord) -> dict[str, Any]:
    error = serde.loads(record.error) if record.error else None
    return error if isinstance(error, dict) else {}


def _for_a_cancel(record: SagaRecord) -> bool:
    """The saga is rolling back (or was rolled back) because a saga above it was cancelled."""
    cause = _error(record).get("cause")
    return isinstance(cause, dict) and cause.get("type") == PARENT_CANCELLED


async def _cancellation_of(store: Store, record: SagaRecord) -> Cancellation:
    """The cancel that ``record`` (a saga rolling back because of it) names in its audit."""
    for entry in reversed(await store.load_journal(record.saga_id)):
        if entry.kind == EntryKind.ADMIN and entry.name == "compensate":
            data = serde.loads(entry.output) or {}
            found = (data.get("details") or {}).get("cancelled")
            if isinstance(found, dict) and isinstance(found.get("saga"), str):
                by = found.get("by")
                return Cancellation(
                    found["saga"],
                    by if isinstance(by, str) else None,
                    str(found.get("reason") or "no reason given"),
                )
    # not reached: that cause is only ever written together with its audit entry
    return Cancellation(record.saga_id, None, "an ancestor was cancelled")  # pragma: no cover


def _cause(record: SagaRecord, cancellation: Cancellation) -> str:
    return parent_cancelled_message(
        cancellation.saga_id,
        cancellation.by,
        cancellation.reason,
        direct=record.parent_id == cancellation.saga_id,
    )


def _rollback_change(
    record: SagaRecord, cancellation: Cancellation, below: Sequence[SagaRecord]
) -> AdminChange:
    """The change that rolls ``record`` back (see :meth:`sagakit.SagaAdmin.compensate`): it
    becomes COMPENSATING, due at once, with a new fence; its own live children are woken."""
    cause = {
        "type": PARENT_CANCELLED,
        "message": _cause(record, cancellation),
        "step": None,
        "seq": None,
    }
    key = uuid.uuid4().hex
    direct = record.parent_id == cancellation.saga_id
    whose = "parent" if direct else "ancestor"
    audit = audit_entry(
        record.saga_id,
        "compensate",
        reason=f"its {whose} saga {cancellation.saga_id!r} was cancelled: {cancellation.reason}",
        by=cancellation.by,
        details={
            "cancelled": cancellation.details(),
            "parent": record.parent_id,
            "previous_status": record.status,
        },
        action_id=key,
    )
    return AdminChange(
        saga_id=record.saga_id,
        expect_status=record.status,
        expect_fence=record.fence,
        status=SagaStatus.COMPENSATING.value,
        due_at=0.0,
        audit=audit,
        output=record.output,
        error=serde.dumps({"kind": "compensating", "cause": cause}),
        tell=wake_calls(record.saga_id, below),
        key=key,
    )


__all__ = [
    "WAKE_PREFIX",
    "Cancellation",
    "ChildFate",
    "ChildOutcome",
    "find_cancellation",
    "live_children",
    "roll_back",
    "roll_back_descendants",
    "wake_calls",
]
