"""What operators' actions (audit entries in the journal, see sagakit.admin) mean to a run.

The admin API changes a saga's journal and status; the few things a run must know besides come
from the audit entries themselves, so that every worker that replays the saga agrees:
a ``compensate`` makes the run roll back at its first operation that is not journaled yet, and
a ``skip`` marks the step whose output an operator recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import serde
from ..errors import TerminalError
from ..stores.base import EntryKind, JournalEntry

#: the error type of a rollback an operator asked for
OPERATOR_ROLLBACK = "OperatorRollback"


def operator_rollback(actions: Sequence[JournalEntry]) -> TerminalError | None:
    """The error the saga fails with if an operator asked it to roll back, else None."""
    for entry in actions:
        if entry.kind == EntryKind.ADMIN and entry.name == "compensate":
            data = serde.loads(entry.output) or {}
            reason = data.get("reason") or "no reason given"
            return TerminalError(
                operator_rollback_message(data.get("by"), reason),
                error_type=OPERATOR_ROLLBACK,
            )
    return None


def operator_rollback_message(by: str | None, reason: str | None) -> str:
    """Why the saga rolls back, in its error: who asked, and why."""
    return f"{by or 'an operator'} asked to roll the saga back: {reason or 'no reason given'}"


def skipped_seqs(actions: Sequence[JournalEntry]) -> frozenset[int]:
    """The journal numbers of the steps whose output an operator recorded (``skip``)."""
    seqs = set()
    for entry in actions:
        if entry.kind == EntryKind.ADMIN and entry.name == "skip":
            data = serde.loads(entry.output) or {}
            for seq in data.get("details", {}).get("seqs", []):
                seqs.add(int(seq))
    return frozenset(seqs)


__all__ = ["OPERATOR_ROLLBACK", "operator_rollback", "operator_rollback_message", "skipped_seqs"]
