"""What ``engine.admin.fork`` copies from a saga into its fork, planned from the saga's row and
journal alone (see :meth:`sagakit.admin.SagaAdmin.fork`).

A fork reuses the source's journal entries numbered below ``from_seq``, as DBOS's fork does:
those operations are replayed from their records, the rest run on the code registered now.
Only what a replay can stand on is reused: completed entries of the saga's own operations. An
entry that did not finish, a rollback, a step a rollback undid, and an entry that names another
saga (a child, a durable call, a send: the fork would share the source's) are refused, with
the reason and what to do. Besides the entries, the fork gets the events its kept waits took
(numbered as in the source, so that a later wait does not take one twice) and the state its
kept ``set_state`` calls published.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from . import serde
from .errors import SagaValidationError
from .stores.base import (
    EntryKind,
    EntryStatus,
    JournalEntry,
    SagaRecord,
    StateWrite,
    saga_scope,
)

#: entries whose result is another saga's: a fork replaying them would share that saga
_SHARED = {
    EntryKind.CHILD: "starts child saga {ref}",
    EntryKind.CHILD_RESULT: "waits for child saga {ref}",
    EntryKind.CALL: "makes a durable call",
    EntryKind.SEND: "sends to saga {ref}",
}

__all__ = ["ForkPlan", "fork_plan"]


@dataclass(frozen=True, slots=True)
class ForkPlan:
    """The fork's journal (already under its id), the source's events it takes, its state."""

    entries: tuple[JournalEntry, ...]
    events_upto: int
    state: tuple[StateWrite, ...]
    #: for the audit entries: the seqs reused, and the last one (None: nothing reused)
    details: dict[str, Any]


def fork_plan(
    record: SagaRecord, journal: list[JournalEntry], from_seq: int, new_id: str
) -> ForkPlan:
    """The fork of ``record`` from ``from_seq`` as saga ``new_id``; raises SagaValidationError
    (nothing is written) when it cannot be made."""
    saga_id = record.saga_id
    own = sorted((e for e in journal if e.seq >= 0), key=lambda e: e.seq)
    last = own[-1].seq if own else -1
    if isinstance(from_seq, bool) or not isinstance(from_seq, int) or not 0 <= from_seq <= last + 1:
        raise SagaValidationError(
            f"from_seq must be a whole number from 0 (reuse nothing) to {last + 1} (reuse "
            f"every entry of saga {saga_id!r}), got {from_seq!r}; `sagakit show {saga_id}` "
            "lists the entries with their numbers"
        )
    kept = [e for e in own if e.seq < from_seq]
    undone = _undone(own)
    for entry in kept:
        _check_reusable(saga_id, entry, undone)
    events_upto = 0
    values: dict[str, str | None] = {}
    for entry in kept:
        data = serde.loads(entry.output) if entry.output else None
        if isinstance(data, dict) and isinstance(data.get("event"), int):
            events_upto = max(events_upto, data["event"])
        if entry.kind == EntryKind.STATE:
            values[entry.name] = None if entry.output in (None, "null") else entry.output
    scope = saga_scope(new_id)
    state = tuple(StateWrite(scope, key, value) for key, value in values.items())
    details = {
        "reused": [e.seq for e in kept],
        "events": events_upto,
    }
    entries = tuple(replace(e, saga_id=new_id) for e in kept)
    return ForkPlan(entries, events_upto, state, details)


def _check_reusable(saga_id: str, entry: JournalEntry, undone: set[int | str]) -> None:
    what = f"entry {entry.seq} of saga {saga_id!r} ({entry.kind} {entry.name!r})"
    earlier = f"fork from seq {entry.seq} or earlier (it runs again in the fork)"
    shared = _SHARED.get(EntryKind(entry.kind)) if entry.kind in set(EntryKind) else None
    if shared is not None:
        ref = repr(entry.output and serde.loads(entry.output))
        raise SagaValidationError(
            f"{what} {shared.format(ref=ref)}: a fork reusing it would share that saga with "
            f"the original instead of having its own; {earlier}"
        )
    if entry.kind == EntryKind.COMPENSATION:
        raise SagaValidationError(
            f"{what} is part of the saga's rollback: a fork must start before the rollback; "
            f"{earlier}"
        )
    if entry.status != EntryStatus.COMPLETED:
        raise SagaValidationError(
            f"{what} is {entry.status}, not completed: a fork reuses only finished "
            f"operations; {earlier}"
        )
    if entry.seq in undone or (entry.kind == EntryKind.STEP and entry.name in undone):
        raise SagaValidationError(
            f"{what} was undone by the saga's rollback (its compensation ran): a fork reusing "
            f"it would go on as if its effect were still there; {earlier}, or use retry_step, "
            "which runs again what the rollback undid"
        )


def _undone(own: list[JournalEntry]) -> set[int | str]:
    """The steps whose compensation ran (or began): each compensation entry names its step's
    seq (one written before they did: the step's name, to be safe)."""
    undone: set[int | str] = set()
    for entry in own:
        if entry.kind != EntryKind.COMPENSATION or not entry.compensation:
            continue
        named = serde.loads(entry.compensation)
        seq = named.get("undoes") if isinstance(named, dict) else None
        undone.add(seq if isinstance(seq, int) else entry.name)
    return undone
