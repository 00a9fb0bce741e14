"""What operators' actions (audit entries in the journal, see sagakit.admin) mean to a run.

The admin API changes a saga's journal and status; the few things a run must know besides come
from the audit entries themselves, so that every worker that replays the saga agrees:
a ``compensate`` makes the run roll back at its first operation that is not journaled yet (the
rollback of a child whose parent was cancelled is such a ``compensate``, which says so), and a
``skip`` marks the step whose output an operator recorded. A ``retry`` or ``skip`` that made an
ended saga go forward again (its details say ``rerun``) voids the ``compensate`` before it: the
rollback it asked for ran, and the operator undid it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .. import serde
from ..errors import TerminalError
from ..stores.base import EntryKind, EntryStatus, JournalEntry

#: the error type of a rollback an operator asked for
OPERATOR_ROLLBACK = "OperatorRollback"
#: the error type of the rollback of a child saga whose parent (or an ancestor) was cancelled
PARENT_CANCELLED = "ParentCancelled"
#: the key, in an action's details, of a retry or skip that made an ended saga go forward again
RERUN = "rerun"


def operator_rollback(actions: Sequence[JournalEntry]) -> TerminalError | None:
    """The error the saga fails with if an operator asked it to roll back (since the last
    time an operator made it go forward again), else None. ``actions`` oldest first."""
    asked: TerminalError | None = None
    for entry in actions:
        if entry.kind != EntryKind.ADMIN:
            continue
        data = serde.loads(entry.output) or {}
        details = data.get("details") or {}
        if details.get(RERUN):
            asked = None
        elif entry.name == "compensate" and asked is None:
            asked = _rollback_error(data, details)
    return asked


def _rollback_error(data: dict[str, Any], details: dict[str, Any]) -> TerminalError:
    cancelled = details.get("cancelled")
    if isinstance(cancelled, dict):
        return TerminalError(
            parent_cancelled_message(
                str(cancelled.get("saga")),
                cancelled.get("by"),
                cancelled.get("reason"),
                direct=cancelled.get("saga") == details.get("parent"),
            ),
            error_type=PARENT_CANCELLED,
        )
    reason = data.get("reason") or "no reason given"
    return TerminalError(
        operator_rollback_message(data.get("by"), reason), error_type=OPERATOR_ROLLBACK
    )


def operator_rollback_message(by: str | None, reason: str | None) -> str:
    """Why the saga rolls back, in its error: who asked, and why."""
    return f"{by or 'an operator'} asked to roll the saga back: {reason or 'no reason given'}"


def parent_cancelled_message(
    cancelled: str, by: str | None, reason: str | None, *, direct: bool
) -> str:
    """Why a child saga rolls back, in its error: which saga was cancelled, by whom, why."""
    whose = "its parent" if direct else "an ancestor,"
    return (
        f"rolled back because {whose} saga {cancelled!r} was cancelled by "
        f"{by or 'an operator'}: {reason or 'no reason given'}"
    )


def skipped_seqs(actions: Sequence[JournalEntry]) -> frozenset[int]:
    """The journal numbers of the steps whose output an operator recorded (``skip``)."""
    seqs = set()
    for entry in actions:
        if entry.kind == EntryKind.ADMIN and entry.name == "skip":
            data = serde.loads(entry.output) or {}
            for seq in data.get("details", {}).get("seqs", []):
                seqs.add(int(seq))
    return frozenset(seqs)


def audit_entry(
    saga_id: str,
    action: str,
    *,
    reason: str | None,
    by: str | None,
    details: dict[str, Any],
    action_id: str,
    step: str | None = None,
    seq: int | None = None,
) -> JournalEntry:
    """The journal entry that records an operator's action (the store gives it its negative
    ``seq``). ``action_id`` is the key the action is made with (see ``AdminChange.key``)."""
    now = time.time()
    audit = {
        "action": action,
        "reason": reason,
        "by": by,
        "at": now,
        "step": step,
        "seq": seq,
        "details": details,
        "action_id": action_id,
    }
    return JournalEntry(
        saga_id, 0, EntryKind.ADMIN, action, EntryStatus.COMPLETED, 1,
        serde.dumps(audit), None, None, now, now,
    )  # fmt: skip


__all__ = [
    "OPERATOR_ROLLBACK",
    "PARENT_CANCELLED",
    "RERUN",
    "audit_entry",
    "operator_rollback",
    "operator_rollback_message",
    "parent_cancelled_message",
    "skipped_seqs",
]
