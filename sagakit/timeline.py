"""Render sagas for a terminal: one saga's timeline, and a table of sagas.

Pure functions from snapshots to strings, so the command line, the demo and tests share them.
Colour is opt-in (``color=True`` adds ANSI styles through :func:`click.style`); callers decide
whether their output is a terminal. ``unicode=False`` swaps ✓/✗/— for ASCII, for terminals whose
encoding cannot print them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from .engine.snapshots import SagaSnapshot, StepSnapshot
from .stores.base import SagaStatus

__all__ = [
    "format_duration",
    "format_error",
    "format_time",
    "render_saga_table",
    "render_timeline",
    "snapshot_to_dict",
]

_STATUS_COLORS: dict[str, str] = {
    SagaStatus.COMPLETED: "green",
    SagaStatus.COMPENSATED: "yellow",
    SagaStatus.FAILED: "red",
    SagaStatus.CANCELLED: "magenta",
    SagaStatus.RUNNING: "cyan",
    SagaStatus.COMPENSATING: "cyan",
    SagaStatus.SUSPENDED: "blue",
    SagaStatus.PENDING: "blue",
}

#: journal kinds that record a value rather than run user code
_VALUE_KINDS = frozenset({"now", "uuid", "random", "state_get", "signals", "gather", "child"})

_JSON_PREVIEW = 100


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
    return f"{hours} h {minutes:02d} min"


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


def _preview(value: Any, ellipsis: str = "…") -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > _JSON_PREVIEW:
        text = text[: _JSON_PREVIEW - len(ellipsis)] + ellipsis
    return text


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


def _header(snapshot: SagaSnapshot, style: _Style) -> list[str]:
    status = SagaStatus(snapshot.status)
    lines = [
        f"{style(snapshot.saga_id, bold=True)}  {snapshot.name}  {style.status(status)}",
        f"  created   {format_time(snapshot.created_at, millis=True)}",
    ]
    elapsed = snapshot.updated_at - snapshot.created_at
    if status.is_terminal:
        lines.append(f"  duration  {format_duration(elapsed)}")
    else:
        lines.append(f"  updated   +{format_duration(elapsed)} (saga still in progress)")
        if snapshot.owner:
            lease = format_time(snapshot.lease_expires_at)
            lines.append(f"  owner     {snapshot.owner} (lease until {lease})")
    lines.append(f"  input     {_preview(snapshot.input, style.ellipsis)}")
    if status == SagaStatus.COMPLETED:
        lines.append(f"  output    {_preview(snapshot.output, style.ellipsis)}")
    lines.extend(_error_lines(snapshot, style))
    return lines


def _error_lines(snapshot: SagaSnapshot, style: _Style) -> list[str]:
    error = snapshot.error
    if not error:
        return []
    lines: list[str] = []
    if error.get("kind") == "non_determinism":
        message = error.get("message") or "the saga function is not deterministic"
        return [f"  error     {style('NonDeterminismError', fg='red')}: {message}"]
    cause = error.get("cause")
    if cause:
        lines.append(f"  cause     {style(format_error(cause), fg='red')}")
    elif error.get("message"):
        lines.append(f"  error     {style(str(error['message']), fg='red')}")
    compensations = [s for s in snapshot.steps if s.kind == "compensation"]
    failures: list[dict[str, Any]] = list(error.get("compensation_failures") or [])
    if failures:
        plural = "s" if len(failures) != 1 else ""
        lines.append(
            f"  rollback  {style('incomplete', fg='red', bold=True)}: "
            f"{len(failures)} compensation{plural} failed for good "
            "(the saga waits for an operator)"
        )
        for failure in failures:
            lines.append(f"              {style(style.bad, fg='red')} {format_error(failure)}")
    elif snapshot.status == SagaStatus.COMPENSATED:
        plural = "" if len(compensations) == 1 else "s"
        lines.append(
            f"  rollback  complete ({len(compensations)} compensation{plural}, in reverse order)"
        )
    elif snapshot.status == SagaStatus.COMPENSATING:
        lines.append(f"  rollback  under way ({len(compensations)} compensation(s) done so far)")
    return lines


def _attempts(step: StepSnapshot) -> str:
    if step.kind in _VALUE_KINDS:
        return ""
    return f"{step.attempts} attempt" + ("" if step.attempts == 1 else "s")


def _offset(step: StepSnapshot, start: datetime) -> str:
    if step.started_at is None:
        return "?"
    return "+" + format_duration(step.started_at - start)


def _note(step: StepSnapshot, style: _Style) -> str:
    if step.status == "failed":
        return format_error(step.error, with_step=False)
    if step.kind in _VALUE_KINDS:
        return f"= {_preview(step.output, style.ellipsis)}"
    return ""


def _journal(snapshot: SagaSnapshot, style: _Style) -> list[str]:
    if not snapshot.steps:
        return ["  (no journal entries yet)"]
    rows: list[tuple[str, ...]] = []
    for step in sorted(snapshot.steps, key=lambda s: s.seq):
        failed = step.status == "failed"
        mark = style.bad if failed else style.ok
        duration = "" if step.kind in _VALUE_KINDS else format_duration(step.duration)
        rows.append(
            (
                str(step.seq),
                step.kind,
                step.name,
                f"{mark} {step.status}",
                _attempts(step),
                duration,
                _offset(step, snapshot.created_at),
                _note(step, style),
            )
        )
    head = ("seq", "kind", "name", "status", "attempts", "duration", "at", "")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    right = {0, 5, 6}  # numbers read best right-aligned

    def line(cells: tuple[str, ...], *, is_head: bool = False) -> str:
        parts = []
        for i, cell in enumerate(cells[:-1]):
            padded = cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            if is_head:
                padded = style(padded, dim=True)
            elif i == 3:
                padded = style(padded, fg="red" if cell.startswith(style.bad) else "green")
            parts.append(padded)
        note = cells[-1]
        if note and not is_head:
            note = style(note, fg="red") if note[0] != "=" else style(note, dim=True)
        return ("  " + "  ".join(parts) + ("  " + note if note else "")).rstrip()

    return [line(head, is_head=True), *(line(r) for r in rows)]


def render_timeline(snapshot: SagaSnapshot, *, color: bool = False, unicode: bool = True) -> str:
    """A saga's header (id, workflow, status, times, output or error) and its journal, one line
    per entry in ``seq`` order: kind, name, status, attempts, duration, offset from the saga's
    creation, and the error of a failed entry (or the value a ``now``/``uuid``/``random`` entry
    recorded)."""
    style = _Style(color, unicode)
    lines = _header(snapshot, style)
    lines.append("")
    lines.extend(_journal(snapshot, style))
    if not SagaStatus(snapshot.status).is_terminal and snapshot.steps:
        lines.append(f"  {style.dash} the next entry appears once it is journaled")
    return "\n".join(lines)


def render_saga_table(
    snapshots: Sequence[SagaSnapshot], *, color: bool = False, unicode: bool = True
) -> str:
    """A table of sagas (id, workflow, status, created, updated), in the order given."""
    style = _Style(color, unicode)
    if not snapshots:
        return "no sagas"
    head = ("SAGA ID", "WORKFLOW", "STATUS", "CREATED", "UPDATED")
    rows = [
        (s.saga_id, s.name, str(s.status), format_time(s.created_at), format_time(s.updated_at))
        for s in snapshots
    ]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    title = "  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()
    out = [style(title, bold=True)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        cells[2] = style.status(row[2], cells[2])
        out.append("  ".join(cells).rstrip())
    count = len(snapshots)
    out.append(f"{count} saga" + ("" if count == 1 else "s"))
    return "\n".join(out)


def snapshot_to_dict(snapshot: SagaSnapshot, *, with_steps: bool = True) -> dict[str, Any]:
    """The snapshot as JSON-ready data: datetimes become ISO 8601 strings, statuses strings.

    ``with_steps=False`` drops ``steps``, for listings whose snapshots carry no journal.
    """
    data = dataclasses.asdict(snapshot)
    data["status"] = str(snapshot.status)
    if not with_steps:
        del data["steps"]
    return _iso(data)  # type: ignore[no-any-return]


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _iso(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_iso(v) for v in value]
    return value
