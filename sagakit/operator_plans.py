"""What an operator's retry, skip or compensate changes in a saga (see :mod:`sagakit.admin`):
the new status, the journal entries removed or written, and the audit details, planned from
the saga's row and journal alone (the operator's process may not have the saga's code).

Making an ended saga go forward again (a retry or skip on a COMPENSATED saga, or on a FAILED
one with ``forward=True``: DBOS's "resume") is journal surgery. The rollback's entries go (its
compensations and the after-rollback step, from the ``rollback_seq`` its error records); so do
the entries of the steps those compensations undid (each compensation entry names its step), so
that a replay runs them again, their effects having been undone; the failed step's entry goes
(retry) or becomes the operator's output (skip). Everything else is replayed as recorded: a step
that was not undone (it has no compensation) keeps its output and does not run again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from . import serde
from .engine.operators import OPERATOR_ROLLBACK, RERUN, operator_rollback_message
from .errors import SagaStateError, SagaValidationError
from .stores.base import EntryKind, EntryStatus, JournalEntry, SagaRecord, SagaStatus

#: compensation data that means "nothing to undo" (a skipped step did nothing to undo)
NOTHING_TO_COMPENSATE = "null"
#: where ``retry_step`` and ``skip_step`` are allowed (SUSPENDED: only a saga waiting out a
#: retry backoff, which the plans check)
RERUNNABLE = (
    SagaStatus.PARKED,
    SagaStatus.FAILED,
    SagaStatus.COMPENSATED,
    SagaStatus.SUSPENDED,
)

__all__ = ["RERUNNABLE", "Plan", "compensate_plan", "retry_plan", "skip_plan"]


@dataclass(frozen=True, slots=True)
class Plan:
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
    #: the saga's output is kept (else it is cleared: the saga is not COMPLETED any more)
    keep_output: bool = True


Journal = dict[int, JournalEntry]


def retry_plan(record: SagaRecord, journal: Journal, *, forward: bool) -> Plan:
    """``admin.retry_step``: see its docstring."""
    if record.status == SagaStatus.SUSPENDED:
        return _retry_now(record, journal)
    error = serde.loads(record.error) or {}
    if record.status == SagaStatus.PARKED:
        seq = parked_seq(record, error, journal)
        entry = journal[seq]
        details = {"seqs": [seq], "previous": previous(entry)}
        return Plan(SagaStatus.RUNNING, entry.name, seq, details, delete=(seq,))
    if error.get("kind") == "non_determinism":
        if forward:
            raise _no_forward(record, error, "retry_step")
        return Plan(SagaStatus.RUNNING, None, None, {"replay": True})
    if record.status == SagaStatus.COMPENSATED or forward:
        return _rerun(record, error, journal, "retry_step", None)
    failed = failed_compensations(record, error, journal, "retry_step")
    return go_on_rolling_back(journal, failed, error, delete=tuple(failed))


def skip_plan(
    record: SagaRecord,
    journal: Journal,
    *,
    mock_output: Any,
    output: str,
    now: float,
    forward: bool,
) -> Plan:
    """``admin.skip_step``: see its docstring. ``output`` is ``mock_output`` as JSON."""
    if record.status == SagaStatus.SUSPENDED:
        return _skip_waiting(record, journal, mock_output, output, now)
    error = serde.loads(record.error) or {}
    if record.status == SagaStatus.PARKED:
        seq = parked_seq(record, error, journal)
        old = journal[seq]
        done = _skipped(old, output, now)
        details = {"seqs": [seq], "output": mock_output, "previous": previous(old)}
        return Plan(SagaStatus.RUNNING, old.name, seq, details, replace=(done,))
    if record.status == SagaStatus.COMPENSATED or forward:
        return _rerun(record, error, journal, "skip_step", (mock_output, output, now))
    if mock_output is not None:
        raise SagaValidationError(
            f"saga {record.saga_id!r} is FAILED because compensations failed: skipping records "
            "them as done and takes no mock output; leave mock_output out, or pass "
            "forward=True to record it as the failed step's output and go forward instead"
        )
    failed = failed_compensations(record, error, journal, "skip_step")
    entries = tuple(
        replace(journal[s], status=EntryStatus.COMPLETED, error=None, finished_at=now)
        for s in failed
    )
    return go_on_rolling_back(journal, failed, error, replace=entries)


def compensate_plan(record: SagaRecord, by: str | None, reason: str | None) -> Plan:
    """``admin.compensate``: the saga rolls back for the operator's reason. A COMPLETED saga
    gives up its output (kept in the audit entry) and replays to its end before it does."""
    cause = {
        "type": OPERATOR_ROLLBACK,
        "message": operator_rollback_message(by, reason),
        "step": None,
        "seq": None,
    }
    error = serde.dumps({"kind": "compensating", "cause": cause})
    if record.status != SagaStatus.COMPLETED:
        return Plan(SagaStatus.COMPENSATING, None, None, {}, error=error)
    _check_alone(record, "compensate")
    details = {"output": serde.loads(record.output)}
    return Plan(SagaStatus.COMPENSATING, None, None, details, error=error, keep_output=False)


# -- a step waiting out a retry backoff ---------------------------------------------------------

#: what a SUSPENDED saga's unfinished entries of these kinds wait for
_WAITS: dict[str, str] = {
    EntryKind.SLEEP: "a timer (saga.sleep)",
    EntryKind.SIGNAL: "signal {name!r}",
    EntryKind.PROMISE: "promise {name!r}",
    EntryKind.CHILD_RESULT: "the outcome of child saga {name!r}",
}


def _retrying(record: SagaRecord, journal: Journal, action: str) -> list[JournalEntry]:
    """The steps and compensations of a SUSPENDED saga waiting out a retry backoff; refuse a
    saga that waits for something else, saying what and what to do."""
    waiting = [e for s, e in sorted(journal.items()) if s >= 0 and e.status == EntryStatus.RETRYING]
    if waiting:
        return waiting
    waits = [
        _WAITS[e.kind].format(name=e.name)
        for s, e in sorted(journal.items())
        if s >= 0 and e.status == EntryStatus.RUNNING and e.kind in _WAITS
    ]
    what = ", ".join(waits) or "an event or a timer"
    raise SagaStateError(
        record.saga_id,
        record.status,
        action,
        [
            *(s.value for s in RERUNNABLE if s != SagaStatus.SUSPENDED),
            "SUSPENDED waiting out a retry backoff",
        ],
        f"it waits for {what}, not for a retry: deliver what it waits for (engine.signal, "
        f"or engine.notify with its wait_token {record.wait_token!r}), resume it (its timers "
        "end now), or cancel or compensate it",
    )


def _retry_now(record: SagaRecord, journal: Journal) -> Plan:
    """Each step or compensation waiting out a retry backoff makes its next attempt now, as
    the first of a fresh retry budget (its entry goes; the audit keeps it)."""
    waiting = _retrying(record, journal, "retry_step")
    first = waiting[0]
    details = {
        "seqs": [e.seq for e in waiting],
        "previous": previous(first) if len(waiting) == 1 else [previous(e) for e in waiting],
    }
    return _staying_suspended(record, first, details, delete=tuple(e.seq for e in waiting))


def _skip_waiting(
    record: SagaRecord, journal: Journal, mock_output: Any, output: str, now: float
) -> Plan:
    """The step waiting out a retry backoff is recorded done with ``output`` (a compensation
    waiting so, as done: someone undid by hand what it should have)."""
    waiting = _retrying(record, journal, "skip_step")
    if len(waiting) > 1:
        names = ", ".join(f"{e.kind} {e.name!r} (seq {e.seq})" for e in waiting)
        raise SagaStateError(
            record.saga_id,
            record.status,
            "skip_step",
            [],
            f"several operations wait out a retry backoff ({names}) and skip_step records one "
            "output: retry_step (or resume) makes each attempt now, cancel or compensate stops "
            "the saga",
        )
    old = waiting[0]
    details: dict[str, Any] = {"seqs": [old.seq], "previous": previous(old)}
    if old.kind == EntryKind.COMPENSATION:
        if mock_output is not None:
            raise SagaValidationError(
                f"saga {record.saga_id!r} waits to retry the compensation of step "
                f"{old.name!r}: skipping records it as done and takes no mock output; leave "
                "mock_output out"
            )
        done = replace(old, status=EntryStatus.COMPLETED, error=None, finished_at=now)
    else:
        done = _skipped(old, output, now)
        details["output"] = mock_output
    return _staying_suspended(record, old, details, replace=(done,))


def _staying_suspended(
    record: SagaRecord,
    entry: JournalEntry,
    details: dict[str, Any],
    *,
    delete: tuple[int, ...] = (),
    replace: tuple[JournalEntry, ...] = (),
) -> Plan:
    """A change of a SUSPENDED saga's journal that leaves it SUSPENDED, with its error and wait
    token, and due now (as ``admin.resume`` does): the worker that takes it replays it."""
    return Plan(
        SagaStatus.SUSPENDED,
        entry.name,
        entry.seq,
        details,
        error=record.error,
        wait_token=record.wait_token,
        replace=replace,
        delete=delete,
    )


# -- going forward again ------------------------------------------------------------------------


def _rerun(
    record: SagaRecord,
    error: dict[str, Any],
    journal: Journal,
    action: str,
    skip: tuple[Any, str, float] | None,
) -> Plan:
    """The plan that makes an ended saga (COMPENSATED, or FAILED in its rollback) go forward
    from its failed step (see the module docstring). ``skip``: (mock output, its JSON, now)."""
    if record.status == SagaStatus.FAILED and error.get("kind") != "compensation_failed":
        raise _no_forward(record, error, action)
    _check_alone(record, action)
    start = _rollback_start(error, journal)
    rollback = sorted(s for s in journal if start is not None and s >= start)
    undone = _undone_steps(journal, rollback, start)
    failed = _failed_step(error, journal, start)
    details: dict[str, Any] = {
        RERUN: True,
        "from": record.status,
        "cause": error.get("cause"),
        "seqs": [] if failed is None else [failed],
        "previous": None if failed is None else previous(journal[failed]),
        "runs_again": undone,
        "compensations": [
            {"seq": s, "name": journal[s].name, "status": journal[s].status}
            for s in rollback
            if journal[s].kind == EntryKind.COMPENSATION
        ],
    }
    gone = {*rollback, *undone}
    written: tuple[JournalEntry, ...] = ()
    if skip is None:
        if failed is not None:
            gone.add(failed)
    else:
        if failed is None:
            raise SagaStateError(
                record.saga_id,
                record.status,
                action,
                [],
                "no step of it failed (an operator rolled it back): there is nothing to skip; "
                "retry_step makes it go forward again",
            )
        mock_output, output, now = skip
        gone.discard(failed)
        written = (_skipped(journal[failed], output, now),)
        details["output"] = mock_output
    details["removed"] = sorted(gone)
    step = None if failed is None else journal[failed].name
    return Plan(
        SagaStatus.RUNNING,
        step,
        failed,
        details,
        replace=written,
        delete=tuple(sorted(gone)),
        keep_output=False,
    )


def _rollback_start(error: dict[str, Any], journal: Journal) -> int | None:
    """The first journal number of the rollback: as its error records it (or, for a saga
    rolled back before errors recorded it, its first compensation's)."""
    start = error.get("rollback_seq")
    if isinstance(start, int) and not isinstance(start, bool):
        return start
    found = [s for s, e in journal.items() if s >= 0 and e.kind == EntryKind.COMPENSATION]
    return min(found) if found else None


def _undone_steps(journal: Journal, rollback: list[int], start: int | None) -> list[int]:
    """The journal numbers of the steps whose compensations ran (succeeded or failed)."""
    compensations = [journal[s] for s in rollback if journal[s].kind == EntryKind.COMPENSATION]
    # newest first, as the rollback undid them: a compensation that names no step (written
    # before they did) is matched by name with the next such step
    steps = sorted(
        (
            e
            for s, e in journal.items()
            if s >= 0
            and (start is None or s < start)
            and e.kind == EntryKind.STEP
            and e.compensation != NOTHING_TO_COMPENSATE
        ),
        key=lambda e: -e.seq,
    )
    undone: list[int] = []
    for comp in compensations:
        named = (serde.loads(comp.compensation) or {}) if comp.compensation else {}
        seq = named.get("undoes") if isinstance(named, dict) else None
        if not isinstance(seq, int):
            seq = next((e.seq for e in steps if e.name == comp.name and e.seq not in undone), None)
        if isinstance(seq, int) and seq in journal and seq not in undone:
            undone.append(seq)
        steps = [e for e in steps if seq is None or e.seq < seq]
    return sorted(undone)


def _failed_step(error: dict[str, Any], journal: Journal, start: int | None) -> int | None:
    """The step whose failure made the saga roll back; for a rollback an operator asked for,
    the step the saga was parked at (if it was)."""

    def failed(seq: int) -> bool:
        entry = journal.get(seq)
        return (
            entry is not None
            and entry.kind == EntryKind.STEP
            and entry.status == EntryStatus.FAILED
            and (start is None or seq < start)
        )

    seq = (error.get("cause") or {}).get("seq")
    if isinstance(seq, int) and failed(seq):
        return seq
    parked = [
        s for s, e in journal.items() if failed(s) and (serde.loads(e.error) or {}).get("parked")
    ]
    return max(parked) if parked else None


def _check_alone(record: SagaRecord, action: str) -> None:
    """Refuse to make a saga go on after it ended when something else already went on from
    its outcome: its parent (which received it), or the next handler of its virtual object."""
    if record.parent_id is not None:
        raise SagaStateError(
            record.saga_id,
            record.status,
            action,
            [],
            f"it is a child of saga {record.parent_id!r}, which has its outcome already and "
            f"went on from it: act on the parent (or start a new child)",
        )
    if record.object_key is not None:
        raise SagaStateError(
            record.saga_id,
            record.status,
            action,
            [],
            f"it is a handler of virtual object {record.object_key!r}, whose later handlers "
            "may be running: start a new handler call instead",
        )


def _no_forward(record: SagaRecord, error: dict[str, Any], action: str) -> SagaStateError:
    """A FAILED saga that did not fail in its rollback has no rollback to abandon."""
    kind = error.get("kind") or "unknown"
    hint = f"it did not fail in its rollback but with {kind}"
    if kind == "non_determinism":
        hint += ": retry_step without forward=True replays it with the code the workers run now"
    return SagaStateError(
        record.saga_id,
        record.status,
        f"{action.removesuffix('_step')} forward",
        [SagaStatus.COMPENSATED.value, "FAILED because compensations failed"],
        hint,
    )


def _skipped(entry: JournalEntry, output: str, now: float) -> JournalEntry:
    """The step's entry as a skip records it: done, with the operator's output, and nothing
    to undo (the saga did not do it)."""
    return replace(
        entry,
        status=EntryStatus.COMPLETED,
        output=output,
        compensation=NOTHING_TO_COMPENSATE,
        error=None,
        finished_at=now,
    )


# -- staying where it is ------------------------------------------------------------------------


def parked_seq(record: SagaRecord, error: dict[str, Any], journal: Journal) -> int:
    """The journal number of the step a PARKED saga is stopped at."""
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


def failed_compensations(
    record: SagaRecord, error: dict[str, Any], journal: Journal, action: str
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


def go_on_rolling_back(
    journal: Journal,
    failed: list[int],
    error: dict[str, Any],
    *,
    delete: tuple[int, ...] = (),
    replace: tuple[JournalEntry, ...] = (),
) -> Plan:
    """The plan for a FAILED saga whose failed compensations are done again (``delete``) or
    recorded as done (``replace``): it goes on rolling back, for its original cause."""
    details = {"seqs": failed, "previous": [previous(journal[s]) for s in failed]}
    return Plan(
        SagaStatus.COMPENSATING,
        journal[failed[0]].name,
        failed[0],
        details,
        error=serde.dumps({"kind": "compensating", "cause": error.get("cause")}),
        replace=replace,
        delete=delete,
    )


def previous(entry: JournalEntry) -> dict[str, Any]:
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
