"""Render sagas for a terminal: one saga's timeline, a table of sagas, the counts by status, and
the one-line status that ``--wait`` keeps up to date.

Pure functions from snapshots to strings, so the command line, the demo and tests share them.
Colour is opt-in (``color=True`` adds ANSI styles through :func:`click.style`); callers decide
whether their output is a terminal. ``unicode=False`` swaps ✓/✗/— for ASCII, for terminals whose
encoding cannot print them. Functions that say "in 3 min" take ``now``, so that tests can fix it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from .engine.snapshots import AuditEntry, SagaSnapshot, StepSnapshot
from .stores.base import SagaStatus

__all__ = [
    "describe_queue",
    "describe_retry",
    "format_duration",
    "format_error",
    "format_time",
    "render_saga_table",
    "render_status_counts",
    "render_status_line",
    "render_timeline",
    "snapshot_to_dict",
]

_STATUS_COLORS: dict[str, str] = {
    SagaStatus.COMPLETED: "green",
    SagaStatus.COMPENSATED: "yellow",
    SagaStatus.FAILED: "red",
    SagaStatus.CANCELLED: "magenta",
    SagaStatus.PARKED: "bright_red",
    SagaStatus.RUNNING: "cyan",
    SagaStatus.COMPENSATING: "cyan",
    SagaStatus.SUSPENDED: "blue",
    SagaStatus.PENDING: "blue",
    SagaStatus.QUEUED: "bright_blue",
}

#: journal kinds that record a value rather than run user code (the dashboard uses it too)
VALUE_KINDS = frozenset(
    {"now", "uuid", "random", "state_get", "signals", "gather", "child", "patch", "send"}
)
#: journal kinds a saga suspends on; their entry is "running" while the wait is under way
_WAIT_KINDS = frozenset({"sleep", "signal", "promise", "child_result", "remote"})
#: statuses in which a worker is (or is about to be) moving the saga on by itself
_MOVING = frozenset({SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING})
#: entry statuses of an operation that has not ended (an attempt runs, or waits to be retried)
_UNFINISHED = frozenset({"running", "retrying"})

_JSON_PREVIEW = 100
#: an audit entry's details share a line with four other columns
_DETAILS_PREVIEW = 60


def format_duration(value: timedelta | None) -> str:
    """A short human duration: ``0.4 ms``, ``205 ms``, ``2.31 s``, ``3 min 04 s``, ``2 h 03 min``.

    ``None`` (not known) renders as ``?``; negative values (clock skew between workers) as 0.
    """
    if value is None:
        return "?"
    seconds = max(value.total_seconds(), 0.0)
    ms = seconds * 1000
    if ms < 0.1:
        return "0 ms" if ms == 0 else "<0.1 ms"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def format_time(value: datetime | None, *, millis: bool = False) -> str:
    """A timestamp in UTC, ``2025-01-31 12:00:00 UTC`` (``millis`` adds ``.123``)."""
    if value is None:
        return "?"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)  # naive values are taken as UTC already
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    if millis:
        text += f".{value.microsecond // 1000:03d}"
    return f"{text} UTC"


def format_error(error: dict[str, Any] | None, *, with_step: bool = True) -> str:
    """One line for a recorded error: ``TerminalError in step 'ChargeCard' (seq 3): declined``."""
    if not error:
        return ""
    kind = error.get("type") or "Error"
    where = ""
    if with_step and error.get("step"):
        where = f" in step {error['step']!r}"
        if error.get("seq") is not None:
            where += f" (seq {error['seq']})"
    message = error.get("message") or ""
    return f"{kind}{where}: {message}" if message else f"{kind}{where}"


def _preview(value: Any, ellipsis: str = "…", *, limit: int = _JSON_PREVIEW) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > limit:
        text = text[: limit - len(ellipsis)] + ellipsis
    return text


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


class _Style:
    """Styling that is a no-op without colour, so the layout code stays one path."""

    def __init__(self, color: bool, unicode: bool):
        self.color = color
        self.ok = "✓" if unicode else "ok"
        self.bad = "✗" if unicode else "x"
        self.dash = "—" if unicode else "-"
        self.ellipsis = "…" if unicode else "..."

    def __call__(self, text: str, **styles: Any) -> str:
        return click.style(text, **styles) if self.color else text

    def status(self, status: str, text: str | None = None) -> str:
        return self(text if text is not None else status, fg=_STATUS_COLORS.get(status), bold=True)


def _table(
    head: tuple[str, ...], rows: Sequence[tuple[str, ...]], right: frozenset[int] = frozenset()
) -> Callable[[tuple[str, ...]], list[str]]:
    """A function that pads one row's cells to the widths of ``head`` and ``rows``."""
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def pad(cells: tuple[str, ...]) -> list[str]:
        return [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]

    return pad


# -- one saga's timeline --------------------------------------------------------------------


def describe_queue(snapshot: SagaSnapshot, position: int | None = None) -> str:
    """Where a queued saga stands: ``payments, position 3 in its partition (partition t1,
    priority 5, dedup id d1)``; empty for a saga started without a queue."""
    if not snapshot.queue:
        return ""
    text = snapshot.queue
    if position is not None:
        text += f", position {position}" + (" in its partition" if snapshot.partition_key else "")
    details = ["next to start"] if position == 1 else []
    details += [
        f"{label} {value}"
        for label, value in (
            ("partition", snapshot.partition_key),
            ("priority", snapshot.priority or None),
            ("dedup id", snapshot.dedup_id),
        )
        if value is not None
    ]
    return text + (f" ({', '.join(details)})" if details else "")


def _header(
    snapshot: SagaSnapshot, style: _Style, now: datetime, position: int | None = None
) -> list[str]:
    status = SagaStatus(snapshot.status)
    lines = [
        f"{style(snapshot.saga_id, bold=True)}  {snapshot.name}  {style.status(status)}",
        f"  created   {format_time(snapshot.created_at, millis=True)}",
    ]
    elapsed = snapshot.updated_at - snapshot.created_at
    if status.is_terminal:
        lines.append(f"  duration  {format_duration(elapsed)}")
    else:
        state = {
            SagaStatus.SUSPENDED: "suspended",
            SagaStatus.PARKED: "parked, waiting for an operator",
            SagaStatus.QUEUED: "queued, waiting for its queue's limits to let it start",
        }.get(status, "saga still in progress")
        lines.append(f"  updated   +{format_duration(elapsed)} ({state})")
        if snapshot.owner:
            lease = format_time(snapshot.lease_expires_at)
            lines.append(f"  owner     {snapshot.owner} (lease until {lease})")
    if snapshot.runs > 1:
        lines.append(f"  run       {_runs_line(snapshot)}")
    if snapshot.version is not None:
        lines.append(f"  version   {snapshot.version}")
    if snapshot.parent_id:
        lines.append(f"  parent    {snapshot.parent_id}")
    if snapshot.object_key:
        lines.append(f"  object    {snapshot.object_key}")
    if snapshot.queue:
        lines.append(f"  queue     {describe_queue(snapshot, position)}")
    lines.append(f"  input     {_preview(snapshot.input, style.ellipsis)}")
    if status == SagaStatus.COMPLETED:
        lines.append(f"  output    {_preview(snapshot.output, style.ellipsis)}")
    if status == SagaStatus.SUSPENDED:
        lines.extend(_wait_lines(snapshot, now))
        if (snapshot.error or {}).get("kind") == "compensating":
            lines.extend(_error_lines(snapshot, style))  # a compensation waits to retry
    elif status == SagaStatus.PARKED:
        lines.extend(_parked_lines(snapshot, style))
    else:
        lines.extend(_error_lines(snapshot, style))
    return lines


def _wait_target(step: StepSnapshot) -> str:
    if step.kind == "sleep":
        return "a timer (saga.sleep)"
    if _sent(step) is not None:
        return f"a reply from {_sent(step)}"
    what = {"child_result": "child saga"}.get(step.kind, step.kind)
    return f"{what} {step.name!r}"


def _sent(step: StepSnapshot) -> str | None:
    """``'inventory' to command 'reserve'`` for a remote step or compensation command."""
    out = step.output
    if not isinstance(out, dict) or "message_id" not in out:
        return None
    return f"{out.get('to')!r} to command {out.get('command')!r}"


def _open_waits(snapshot: SagaSnapshot) -> list[StepSnapshot]:
    return [s for s in snapshot.steps if s.kind in _WAIT_KINDS and s.status == "running"]


def describe_retry(step: StepSnapshot, now: datetime | None = None) -> str:
    """What an entry waiting out a retry backoff waits for: ``retrying ChargeCard, attempt 3
    of 5 at 12:04:31 CEST`` (the next attempt's number, the attempts allowed, and when it runs,
    in the local time zone; with the date when it is not ``now``'s)."""
    what = step.name if step.kind == "step" else f"the compensation of {step.name}"
    return f"retrying {what}, {_next_attempt(step, now)}"


def _next_attempt(step: StepSnapshot, now: datetime | None) -> str:
    text = f"attempt {step.attempts + 1}"
    if step.max_attempts is not None:
        text += f" of {step.max_attempts}"
    at = step.retry_at
    if at is None:
        return text
    local = at.astimezone()
    today = (now or datetime.now(UTC)).astimezone(local.tzinfo).date()
    shape = "%H:%M:%S %Z" if local.date() == today else "%Y-%m-%d %H:%M:%S %Z"
    return f"{text} at {local.strftime(shape)}"


def _retry_lines(snapshot: SagaSnapshot, now: datetime) -> list[str]:
    lines = []
    for step in snapshot.retrying:
        lines.append(f"  waiting   {describe_retry(step, now)}")
        if step.error:
            lines.append(f"            after {format_error(step.error, with_step=False)}")
    return lines


def _wait_lines(snapshot: SagaSnapshot, now: datetime) -> list[str]:
    targets = [_wait_target(s) for s in _open_waits(snapshot)]
    lines = _retry_lines(snapshot, now)
    if targets or not lines:
        lines.append(f"  waiting   for {', '.join(targets) if targets else 'an event'}")
    if snapshot.wake_at is not None:
        remaining = snapshot.wake_at - now
        due = "due now" if remaining <= timedelta(0) else f"in {format_duration(remaining)}"
        lines.append(f"  wakes     {format_time(snapshot.wake_at)} ({due})")
    else:
        lines.append("  wakes     when an event arrives (no timer)")
    if snapshot.wait_token:
        lines.append(f"  token     {snapshot.wait_token} (engine.notify)")
    if snapshot.wake_at is not None:
        # resume ends timers; a wait for an event goes on until the event comes
        lines.append(f"            `sagakit resume {snapshot.saga_id}` wakes it now")
    return lines


def _parked_step(snapshot: SagaSnapshot) -> tuple[dict[str, Any] | None, StepSnapshot | None]:
    """The error that parked the saga, and the journal entry of the step that ran out of
    retries (either may be missing from an odd record: the other one still tells)."""
    error = snapshot.error or {}
    cause: dict[str, Any] | None = error.get("cause") or (error if error.get("type") else None)
    failed = [s for s in snapshot.steps if s.status == "failed"]
    step: StepSnapshot | None = None
    if cause is not None and cause.get("seq") is not None:
        step = next((s for s in failed if s.seq == cause["seq"]), None)
    if step is None and failed:
        step = max(failed, key=lambda s: s.seq)
    if cause is None and step is not None:
        cause = step.error
    return cause, step


def _parked_lines(snapshot: SagaSnapshot, style: _Style) -> list[str]:
    cause, step = _parked_step(snapshot)
    if step is not None:
        where = f"step {step.name!r} (seq {step.seq})"
        tries = f" after {_plural(step.attempts, 'attempt')}"
    elif cause and cause.get("step"):
        where = f"step {cause['step']!r}" + (
            f" (seq {cause['seq']})" if cause.get("seq") is not None else ""
        )
        tries = ""
    else:
        where, tries = "a step", ""
    lines = [f"  parked    {style(where, bold=True)} ran out of retries{tries}"]
    if cause:
        lines.append(f"  error     {style(format_error(cause, with_step=False), fg='red')}")
    lines.append(
        "            it waits for an operator: "
        f"sagakit retry|skip|compensate|cancel {snapshot.saga_id}"
    )
    return lines


def _error_lines(snapshot: SagaSnapshot, style: _Style) -> list[str]:
    error = snapshot.error
    if not error:
        return []
    lines: list[str] = []
    if error.get("kind") == "non_determinism":
        message = error.get("message") or "the saga function is not deterministic"
        return [f"  error     {style('NonDeterminismError', fg='red')}: {message}"]
    if snapshot.status == SagaStatus.CANCELLED:
        who = f" by {error['by']}" if error.get("by") else ""
        return [f"  cancelled{who}: {error.get('reason') or '(no reason given)'}"]
    cause = error.get("cause")
    if cause:
        lines.append(f"  cause     {style(format_error(cause), fg='red')}")
    elif error.get("message"):
        lines.append(f"  error     {style(str(error['message']), fg='red')}")
    compensations = [s for s in snapshot.steps if s.kind == "compensation"]
    failures: list[dict[str, Any]] = list(error.get("compensation_failures") or [])
    if failures:
        lines.append(
            f"  rollback  {style('incomplete', fg='red', bold=True)}: "
            f"{_plural(len(failures), 'compensation')} failed for good "
            "(the saga waits for an operator)"
        )
        for failure in failures:
            lines.append(f"              {style(style.bad, fg='red')} {format_error(failure)}")
    elif snapshot.status == SagaStatus.COMPENSATED:
        lines.append(
            f"  rollback  complete ({_plural(len(compensations), 'compensation')}, "
            "in reverse order)"
        )
    elif snapshot.status == SagaStatus.COMPENSATING or error.get("kind") == "compensating":
        done = [c for c in compensations if c.status == "completed"]
        lines.append(f"  rollback  under way ({len(done)} compensation(s) done so far)")
    return lines


def _attempts(step: StepSnapshot) -> str:
    if step.kind in VALUE_KINDS or step.kind in _WAIT_KINDS:
        return ""  # recorded, not tried: a wait is not retried either
    return _plural(step.attempts, "attempt")


def _offset(step: StepSnapshot, start: datetime) -> str:
    if step.started_at is None:
        return "?"
    return "+" + format_duration(step.started_at - start)


def _status_cell(step: StepSnapshot, style: _Style, *, ended: bool = False) -> str:
    if step.status == "failed":
        return f"{style.bad} failed"
    if step.status in _UNFINISHED and ended:
        return f"{style.dash} unfinished"  # the saga ended (cancelled, say) during it
    if step.status == "retrying":
        return f"{style.ellipsis} retrying"
    if step.status == "running":
        return f"{style.ellipsis} " + ("waiting" if step.kind in _WAIT_KINDS else "running")
    return f"{style.ok} {step.status}"


def _note(
    step: StepSnapshot, style: _Style, *, ended: bool = False, now: datetime | None = None
) -> str:
    if step.status == "failed":
        return format_error(step.error, with_step=False)
    if step.status == "retrying":
        last = format_error(step.error, with_step=False)
        if ended:
            return last
        return f"{_next_attempt(step, now)}, after {last}"
    if step.status == "running" and ended:
        return ""
    if step.status == "running" and _sent(step) is not None:  # a remote step (issue 20)
        until = _epoch(step.output.get("until"))
        ends = "" if until is None else f", times out {format_time(until)}"
        return f"sent, waiting for a reply from {_sent(step)}{ends}"
    if step.kind == "remote" and step.status == "completed" and isinstance(step.output, dict):
        return f"replied = {_preview(step.output.get('value'), style.ellipsis)}"
    if step.kind == "patch":
        return "took the new code path (saga.patched)"
    if step.kind in VALUE_KINDS:
        return f"= {_preview(step.output, style.ellipsis)}"
    if step.kind in _WAIT_KINDS and isinstance(step.output, dict):
        if step.status == "running":
            until = step.output.get("until")
            ends = "wakes" if step.kind == "sleep" else "times out"
            ends = "" if until is None else f", {ends} {format_time(_epoch(until))}"
            return f"token {step.output.get('token')}{ends}"
        if step.output.get("value") is not None:
            return f"= {_preview(step.output['value'], style.ellipsis)}"
    return ""


_DONE_BY_OPERATOR = {"skip": "skipped", "retry": "retried"}


def _operator_marks(snapshot: SagaSnapshot) -> dict[int, str]:
    """For each journal entry an operator's action replaced, what was done and by whom (a
    skipped step's entry looks completed: the note keeps it from passing for the step's own
    work)."""
    marks: dict[int, str] = {}
    for entry in snapshot.audit:  # oldest first: the latest action on an entry wins
        seqs = entry.details.get("seqs") or ([entry.seq] if entry.seq is not None else [])
        done = _DONE_BY_OPERATOR.get(entry.action, entry.action)
        who = f" by {entry.by}" if entry.by else " by an operator"
        for seq in seqs:
            if isinstance(seq, int):
                marks[seq] = f"({done}{who})"
    return marks


def _epoch(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _journal(snapshot: SagaSnapshot, style: _Style, now: datetime) -> list[str]:
    if not snapshot.steps:
        return ["  (no journal entries yet)"]
    ended = snapshot.status.is_terminal
    marks = _operator_marks(snapshot)
    rows: list[tuple[str, ...]] = []
    for step in sorted(snapshot.steps, key=lambda s: s.seq):
        note = _note(step, style, ended=ended, now=now)
        if step.seq in marks:
            note = f"{note} {marks[step.seq]}".lstrip()
        duration = "" if step.kind in VALUE_KINDS else format_duration(step.duration)
        if step.status == "running":
            duration = ""  # not over yet: the offset says when it began
        rows.append(
            (
                str(step.seq),
                step.kind,
                step.name,
                _status_cell(step, style, ended=ended),
                _attempts(step),
                duration,
                _offset(step, snapshot.created_at),
                note,
            )
        )
    head = ("seq", "kind", "name", "status", "attempts", "duration", "at", "")
    pad = _table(head, rows, right=frozenset({0, 5, 6}))  # numbers read best right-aligned
    status_colors = {style.bad: "red", style.ellipsis: "cyan", style.dash: "yellow"}

    def line(cells: tuple[str, ...], *, is_head: bool = False) -> str:
        parts = pad(cells[:-1])
        if is_head:
            parts = [style(p, dim=True) for p in parts]
        else:
            parts[3] = style(parts[3], fg=status_colors.get(cells[3].split(" ")[0], "green"))
        note = cells[-1]
        if note and not is_head:
            failed = cells[3].startswith(style.bad)
            note = style(note, fg="red") if failed else style(note, dim=True)
        return ("  " + "  ".join(parts) + ("  " + note if note else "")).rstrip()

    return [line(head, is_head=True), *(line(r) for r in rows)]


def _audit_step(entry: AuditEntry) -> str:
    if not entry.step:
        return ""
    return f"{entry.step!r}" + (f" (seq {entry.seq})" if entry.seq is not None else "")


def _audit(entries: Sequence[AuditEntry], style: _Style) -> list[str]:
    rows = [
        (
            format_time(e.at),
            e.action,
            e.by or "",
            _audit_step(e),
            e.reason or "",
            _preview(e.details, style.ellipsis, limit=_DETAILS_PREVIEW) if e.details else "",
        )
        for e in entries
    ]
    columns = ("at", "action", "by", "step", "reason", "details")
    # a column nobody filled in (no step, no details) would only push the others apart
    keep = [i for i in range(len(columns)) if i < 2 or any(r[i] for r in rows)]
    head = tuple(columns[i] for i in keep)
    cells = [tuple(r[i] for i in keep) for r in rows]
    pad = _table(head, cells)
    lines = [f"  {style('operator actions', bold=True)}"]
    lines.append(style("    " + "  ".join(pad(head)).rstrip(), dim=True))
    lines.extend("    " + "  ".join(pad(r)).rstrip() for r in cells)
    return lines


def _runs_line(snapshot: SagaSnapshot) -> str:
    """Which of a continued saga's runs the journal below is (see docs/long-running.md)."""
    if snapshot.run == snapshot.runs:
        earlier = "1" if snapshot.runs == 2 else f"1-{snapshot.runs - 1}"
        return f"{snapshot.run} of {snapshot.runs} (earlier runs: --run {earlier})"
    return (
        f"{snapshot.run} of {snapshot.runs}: an earlier run's journal, as it continued as new "
        "(the version and input below are that run's; the status above is the saga's now)"
    )


def render_timeline(
    snapshot: SagaSnapshot,
    *,
    color: bool = False,
    unicode: bool = True,
    now: datetime | None = None,
    position: int | None = None,
) -> str:
    """A saga's header and its journal.

    The header has the id, workflow, status, times, input, and then what the status calls for:
    the output, the error and rollback, what a SUSPENDED saga waits for (wake time, wait
    token), or which step a PARKED saga stopped at and why. The journal has one line per entry
    in ``seq`` order: kind, name, status, attempts, duration, offset from the saga's creation,
    and the error of a failed entry (or the value an entry recorded). Operators' actions
    (``engine.admin``) follow, oldest first. ``now`` (default: the clock) is what "wakes in 3
    min" counts from; ``position`` a QUEUED saga's place in its queue.
    """
    style = _Style(color, unicode)
    now = now or datetime.now(UTC)
    lines = _header(snapshot, style, now, position)
    lines.append("")
    lines.extend(_journal(snapshot, style, now))
    if snapshot.status in _MOVING and snapshot.steps:
        lines.append(f"  {style.dash} the next entry appears once it is journaled")
    if snapshot.audit:
        lines.append("")
        lines.extend(_audit(snapshot.audit, style))
    return "\n".join(lines)


# -- many sagas -----------------------------------------------------------------------------


def render_saga_table(
    snapshots: Sequence[SagaSnapshot],
    *,
    color: bool = False,
    unicode: bool = True,
    positions: Mapping[str, int] | None = None,
) -> str:
    """A table of sagas (id, workflow, status, created, updated), in the order given; and
    their queue (``positions``: a QUEUED saga's place in it, by saga id) when one has one."""
    style = _Style(color, unicode)
    if not snapshots:
        return "no sagas"
    head: tuple[str, ...] = ("SAGA ID", "WORKFLOW", "STATUS", "CREATED", "UPDATED")
    rows: list[tuple[str, ...]] = [
        (s.saga_id, s.name, str(s.status), format_time(s.created_at), format_time(s.updated_at))
        for s in snapshots
    ]
    if any(s.queue for s in snapshots):
        head += ("QUEUE",)
        where = positions or {}
        rows = [
            (*row, _queue_cell(s, where.get(s.saga_id)))
            for row, s in zip(rows, snapshots, strict=True)
        ]
    pad = _table(head, rows)
    out = [style("  ".join(pad(head)).rstrip(), bold=True)]
    for row in rows:
        cells = pad(row)
        cells[2] = style.status(row[2], cells[2])
        out.append("  ".join(cells).rstrip())
    out.append(_plural(len(snapshots), "saga"))
    return "\n".join(out)


def _queue_cell(snapshot: SagaSnapshot, position: int | None) -> str:
    if not snapshot.queue:
        return ""
    return snapshot.queue + (f" #{position}" if position is not None else "")


def render_status_counts(
    counts: Mapping[str, int], *, color: bool = False, unicode: bool = True
) -> str:
    """How many sagas are in each status, in the order given, and the total."""
    style = _Style(color, unicode)
    total = sum(counts.values())
    rows = [(status, str(count)) for status, count in counts.items()]
    head, foot = ("STATUS", "SAGAS"), ("total", str(total))
    pad = _table(head, [*rows, foot], right=frozenset({1}))
    out = [style("  ".join(pad(head)), bold=True)]
    for status, count in rows:
        cells = pad((status, count))
        if count == "0":
            out.append(style("  ".join(cells), dim=True))
        else:
            out.append(f"{style.status(status, cells[0])}  {cells[1]}")
    out.append("  ".join(pad(foot)))
    return "\n".join(out)


def render_status_line(
    snapshot: SagaSnapshot, *, unicode: bool = True, now: datetime | None = None
) -> str:
    """One line on where a saga is now, for following it live: its status and the step it is
    at (or what it waits for, where it parked, how it ended)."""
    style = _Style(False, unicode)
    status = SagaStatus(snapshot.status)
    now = now or datetime.now(UTC)
    text = f"{snapshot.saga_id}  {status}"
    if status == SagaStatus.PARKED:
        cause, step = _parked_step(snapshot)
        where = f"step {step.name!r}" if step is not None else "a step"
        return f"{text}  at {where}: {format_error(cause, with_step=False)}".rstrip(": ")
    if status == SagaStatus.SUSPENDED:
        targets = [_wait_target(s) for s in _open_waits(snapshot)]
        retries = [describe_retry(s, now) for s in snapshot.retrying]
        if retries:
            text += "  " + "; ".join(retries)
        if targets or not retries:
            text += f"  waiting for {', '.join(targets) if targets else 'an event'}"
        if snapshot.wake_at is not None:
            text += f" (wakes in {format_duration(snapshot.wake_at - now)})"
        return text
    if status.is_terminal:
        return f"{text}  after {format_duration(snapshot.updated_at - snapshot.created_at)}"
    # a wait left open by a rollback or an operator says nothing about where the saga is now
    work = [s for s in snapshot.steps if s.kind not in VALUE_KINDS | _WAIT_KINDS]
    if work:
        last = max(work, key=lambda s: s.seq)
        if last.status == "running":
            text += f"  in {last.kind} {last.name!r} (attempt {last.attempts})"
        elif last.status == "retrying":
            text += f"  {describe_retry(last, now)}"
        else:
            mark = _status_cell(last, style).split(" ")[0]
            text += f"  last {last.kind} {last.name!r} {mark}"
    elif status == SagaStatus.PENDING:
        text += "  (waiting for a worker to take it)"
    elif status == SagaStatus.QUEUED:
        text += f"  (waiting in queue {snapshot.queue})"
    return f"{text}  +{format_duration(now - snapshot.created_at)}"


def snapshot_to_dict(snapshot: SagaSnapshot, *, with_steps: bool = True) -> dict[str, Any]:
    """The snapshot as JSON-ready data: datetimes become ISO 8601 strings, statuses strings.

    ``with_steps=False`` drops ``steps`` and ``audit``, for listings whose snapshots carry no
    journal.
    """
    data = dataclasses.asdict(snapshot)
    data["status"] = str(snapshot.status)
    if not with_steps:
        del data["steps"]
        del data["audit"]
    return _iso(data)  # type: ignore[no-any-return]


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _iso(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_iso(v) for v in value]
    return value
