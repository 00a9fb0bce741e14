"""A saga's timeline as an inline SVG chart: one bar per step, compensation and wait on a
shared time axis, operators' actions as vertical markers.

Sagas spend most of their life waiting (a durable sleep, a signal, an operator), while their
steps take milliseconds; on a plain linear axis the steps would be invisible slivers. So spans
of time in which no step or compensation runs are drawn compressed to a fixed width, marked
on the axis with a break and the time they stand for. Everything else is to scale.

The markup carries classes and ``data-*`` attributes (``bar``, ``bar-failed``,
``failure-mark``, ``audit-mark``, ``data-seq``...) so that tests and stylesheets can find the
parts; every text from the database is escaped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape

from ..engine.snapshots import AuditEntry, SagaSnapshot, StepSnapshot
from ..stores.base import SagaStatus
from ..timeline import format_duration, format_time

__all__ = ["CHART_KINDS", "WAIT_KINDS", "render_timeline_svg"]

#: journal kinds that wait for something outside the saga (drawn as hatched bars); a remote
#: step waits for its participant's reply
WAIT_KINDS = frozenset({"sleep", "signal", "promise", "child", "child_result", "remote"})
#: journal kinds the chart draws; the others record a value and take no time worth drawing
CHART_KINDS = frozenset({"step", "compensation"}) | WAIT_KINDS

WIDTH = 1000
LABEL_W = 190
PLOT_X = LABEL_W + 12
#: room right of the plot for the label after the last bar
NOTE_W = 170
PLOT_W = WIDTH - PLOT_X - NOTE_W
GAP_W = 56
ROW_H = 26
BAR_H = 14
#: room above the rows for the operators' actions' labels (two staggered lines)
TOP_AUDIT = 40
TOP_PLAIN = 12
AXIS_H = 34
LEGEND_H = 26
MIN_BAR = 3.0
#: shorter idle spans stay to scale: compressing milliseconds would only confuse
MIN_GAP = 0.5

_WAIT_TEXT = {
    "sleep": "timer",
    "signal": "signal",
    "promise": "promise",
    "child": "child started",
    "child_result": "child saga",
    "remote": "remote",
}


@dataclass(frozen=True, slots=True)
class _Row:
    label: str
    kind: str
    css: str
    start: float
    end: float
    note: str
    tooltip: str
    failed: bool
    attempts: int
    seq: int | None
    open_end: bool = False


@dataclass(frozen=True, slots=True)
class _Segment:
    start: float
    end: float
    x: float
    width: float
    compressed: bool


class _Axis:
    """Maps epoch seconds to x, linear except in the compressed segments."""

    def __init__(
        self,
        start: float,
        end: float,
        busy: list[tuple[float, float]],
        splits: Iterable[float] = (),
    ):
        end = max(end, start + 0.001)
        # a wait and the idle time after it are compressed (or not) each on its own merits:
        # a short sleep stays to scale while the hour the saga sat parked after it shrinks
        gaps = _split(_gaps(start, end, busy), splits)
        linear = end - start
        budget = float(PLOT_W)
        compressed: set[tuple[float, float]] = set()
        for gap in sorted(gaps, key=lambda g: g[0] - g[1]):
            length = gap[1] - gap[0]
            # a gap is compressed while, drawn to scale, it would take more than three times
            # the room it gets compressed; what is left to scale must not vanish
            if length < MIN_GAP or linear - length <= 0 or length / linear * budget <= 3 * GAP_W:
                break
            compressed.add(gap)
            linear -= length
            budget -= GAP_W
        # neighbours (a wait, then the idle time after it) share one break on the axis
        merged: list[tuple[float, float]] = []
        for gap in sorted(compressed):
            if merged and gap[0] <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(gap[1], merged[-1][1]))
            else:
                merged.append(gap)
        self.scale = (PLOT_W - GAP_W * len(merged)) / linear
        self.segments: list[_Segment] = []
        x = float(PLOT_X)
        cursor = start
        for gap in merged:
            if gap[0] > cursor:
                width = (gap[0] - cursor) * self.scale
                self.segments.append(_Segment(cursor, gap[0], x, width, False))
                x += width
            self.segments.append(_Segment(gap[0], gap[1], x, GAP_W, True))
            x += GAP_W
            cursor = gap[1]
        if end > cursor or not self.segments:
            self.segments.append(_Segment(cursor, end, x, (end - cursor) * self.scale, False))
        self.start = start
        self.end = end

    def x(self, t: float) -> float:
        for seg in self.segments:
            if t <= seg.end:
                if seg.end <= seg.start:
                    return seg.x
                fraction = max(0.0, (t - seg.start) / (seg.end - seg.start))
                return seg.x + fraction * seg.width
        last = self.segments[-1]
        return last.x + last.width

    def ticks(self) -> list[tuple[float, float]]:
        """``(x, offset seconds)`` for labelled ticks at a round step, at least 80 px apart."""
        step = _nice_step(80 / self.scale)
        ticks: list[tuple[float, float]] = [(float(PLOT_X), 0.0)]
        for seg in self.segments:
            if seg.compressed:
                # after a break the offsets jump: say where the axis picks up again
                resume = seg.x + seg.width
                if resume < PLOT_X + PLOT_W - 20 and all(abs(resume - o) >= 60 for o, _ in ticks):
                    ticks.append((resume, seg.end - self.start))
                continue
            k = math.ceil((seg.start - self.start) / step - 1e-9)
            while True:
                offset = k * step
                t = self.start + offset
                if t > seg.end + 1e-9:
                    break
                x = self.x(t)
                if all(abs(x - other) >= 80 for other, _ in ticks) and not self._near_gap(x):
                    ticks.append((x, offset))
                k += 1
        return ticks

    def _near_gap(self, x: float) -> bool:
        return any(s.compressed and s.x - 30 < x < s.x + s.width + 60 for s in self.segments)


def _gaps(start: float, end: float, busy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The spans of ``[start, end]`` that no busy interval covers."""
    gaps: list[tuple[float, float]] = []
    cursor = start
    for lo, hi in sorted(busy):
        if lo > cursor:
            gaps.append((cursor, lo))
        cursor = max(cursor, hi)
    if end > cursor:
        gaps.append((cursor, end))
    return gaps


def _split(gaps: list[tuple[float, float]], points: Iterable[float]) -> list[tuple[float, float]]:
    cuts = sorted(set(points))
    out: list[tuple[float, float]] = []
    for lo, hi in gaps:
        edges = [lo, *(c for c in cuts if lo < c < hi), hi]
        out.extend(itertools.pairwise(edges))
    return out


def _nice_step(minimum: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``minimum`` seconds."""
    minimum = max(minimum, 1e-6)
    power = 10.0 ** math.floor(math.log10(minimum))
    for factor in (1, 2, 5, 10):
        if factor * power >= minimum:
            return float(factor * power)
    return 10.0 * power  # pragma: no cover - the loop always returns


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _offset_text(seconds: float) -> str:
    return "0" if seconds <= 0 else "+" + format_duration(timedelta(seconds=seconds))


def _text_width(text: str, per_char: float = 6.3) -> float:
    """About how wide ``text`` is at the chart's 11 px size (no layout engine here); bold
    text takes about 7.2 px a character."""
    return per_char * len(text)


def _step_row(step: StepSnapshot, now: float | None) -> _Row | None:
    """The bar of a journal entry; ``now`` ends the bar of an entry still running (``None``
    once the saga has ended: the entry was cut short)."""
    start = _epoch(step.started_at)
    if start is None:
        return None
    end = _epoch(step.finished_at) or start
    failed = step.status == "failed"
    running = step.status == "running"
    if running and now is not None:
        end = max(end, now)
    wait = step.kind in WAIT_KINDS
    css = "wait" if wait else step.kind
    # a command to another service: a remote step, or a remote step's compensation command
    sent_to = _sent_to(step)
    if sent_to is not None:
        css += " remote"
    if failed:
        css += " bar-failed"
    if running:
        css += " bar-running"
    duration = format_duration(timedelta(seconds=end - start))
    parts = [duration]
    if running and now is not None:
        until = step.output.get("until") if isinstance(step.output, dict) else None
        if isinstance(until, int | float):
            when = format_time(datetime.fromtimestamp(until, UTC))
            parts = [f"{duration} so far, until {when}"]
        else:
            parts = [f"{duration} so far"]
    if sent_to is not None and running and now is not None:
        parts.insert(0, f"sent, waiting for a reply from {sent_to}")
    elif step.kind == "remote" and step.status == "completed":
        parts.insert(0, "replied")
    if step.attempts > 1:
        parts.append(f"{step.attempts} attempts")
    if failed:
        parts.append(str((step.error or {}).get("type") or "failed"))
    elif running and now is None:
        parts.append("cut short")
    tooltip = [
        f"#{step.seq} {step.kind} {step.name}: {step.status}",
        f"attempts: {step.attempts}",
        f"started {format_time(step.started_at, millis=True)}",
        f"took {duration}",
    ]
    if step.error:
        tooltip.append(f"{step.error.get('type', 'Error')}: {step.error.get('message', '')}")
    return _Row(
        label=step.name or step.kind,
        kind=_WAIT_TEXT.get(step.kind, step.kind),
        css=css,
        start=start,
        end=max(end, start),
        note=" · ".join(parts),
        tooltip="\n".join(tooltip),
        failed=failed,
        attempts=step.attempts,
        seq=step.seq,
    )


def _sent_to(step: StepSnapshot) -> str | None:
    """The participant a remote step (or its compensation command) was sent to; None for
    other entries. Such an entry's output, while it waits, records the command it sent."""
    out = step.output
    if step.kind == "remote" or (isinstance(out, dict) and "message_id" in out):
        return str(out.get("to")) if isinstance(out, dict) and out.get("to") else step.name
    return None


def _replaced_rows(audit: Iterable[AuditEntry]) -> list[_Row]:
    """Bars for journal entries that an operator's retry replaced, when the audit entry kept
    their times: the failure that led to the retry stays on the timeline."""
    rows: list[_Row] = []
    for entry in audit:
        previous = entry.details.get("previous")
        items = previous if isinstance(previous, list) else [previous]
        for item in items:
            if not isinstance(item, dict):
                continue
            start, end = item.get("started_at"), item.get("finished_at")
            if not isinstance(start, int | float) or not isinstance(end, int | float):
                continue
            error = item.get("error") if isinstance(item.get("error"), dict) else {}
            raw_attempts = item.get("attempts")
            attempts = raw_attempts if isinstance(raw_attempts, int) else 1
            failed = item.get("status") == "failed"
            kind = str(item.get("kind") or "step")
            name = str(item.get("name") or entry.step or "step")
            parts = [format_duration(timedelta(seconds=max(end - start, 0)))]
            if attempts > 1:
                parts.append(f"{attempts} attempts")
            if failed:
                parts.append(str((error or {}).get("type") or "failed"))
            rows.append(
                _Row(
                    label=name,
                    kind=f"before {entry.action}",
                    css=("compensation" if kind == "compensation" else "step")
                    + (" bar-failed" if failed else "")
                    + " replaced",
                    start=float(start),
                    end=float(max(end, start)),
                    note=" · ".join(parts),
                    tooltip=f"{name}: {item.get('status')} after {attempts} attempt(s), then "
                    f"replaced by the operator's {entry.action}\n"
                    f"{(error or {}).get('type', '')}: {(error or {}).get('message', '')}",
                    failed=failed,
                    attempts=attempts,
                    seq=entry.seq,
                )
            )
    return rows


def _open_row(snapshot: SagaSnapshot, since: float, now: float) -> _Row | None:
    """A bar for what the saga is doing now, while it waits or runs."""
    status = snapshot.status
    if status == SagaStatus.PARKED:
        label, note = "parked", "waiting for an operator"
    elif status == SagaStatus.SUSPENDED:
        label = "waiting"
        note = f"wakes {format_time(snapshot.wake_at)}" if snapshot.wake_at else "for an event"
    elif status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.PENDING):
        label, note = status.value.lower(), "in progress"
    elif status == SagaStatus.QUEUED:
        label, note = "queued", f"waiting in queue {snapshot.queue}"
    else:
        return None
    start = min(since, now)
    return _Row(
        label=label,
        kind="now",
        css=f"open open-{status.value.lower()}",
        start=start,
        end=now,
        note=note,
        tooltip=f"{status.value} since {format_time(datetime.fromtimestamp(start, UTC))}",
        failed=False,
        attempts=0,
        seq=None,
        open_end=True,
    )


def _rows(snapshot: SagaSnapshot, now: float) -> list[_Row]:
    live = None if snapshot.status.is_terminal else now
    rows = [
        row
        for step in snapshot.steps
        if step.kind in CHART_KINDS and (row := _step_row(step, live)) is not None
    ]
    rows.extend(_replaced_rows(snapshot.audit))
    rows.sort(key=lambda r: (r.start, r.seq if r.seq is not None else 0))
    waiting = any("bar-running" in r.css for r in rows)
    if not snapshot.status.is_terminal and not waiting:
        last = max((r.end for r in rows), default=snapshot.created_at.timestamp())
        row = _open_row(snapshot, last, now)
        if row is not None:
            rows.append(row)
    return rows


def _legend(y: float, has: Iterable[str]) -> list[str]:
    items = [
        ("step", "legend-step", "step"),
        ("failed", "legend-failed", "failed"),
        ("compensation", "legend-compensation", "compensation"),
        ("wait", "legend-wait", "wait"),
        ("remote", "legend-remote", "command to a service"),
        ("audit", "legend-audit", "operator action"),
        ("gap", "legend-gap", "time compressed"),
    ]
    wanted = set(has)
    out: list[str] = []
    x = float(PLOT_X)
    for key, css, text in items:
        if key not in wanted:
            continue
        if key == "audit":
            out.append(
                f'<line class="audit-line" x1="{x + 6:.1f}" y1="{y - 1:.1f}" '
                f'x2="{x + 6:.1f}" y2="{y + 11:.1f}"/>'
            )
        elif key == "gap":
            out.append(
                f'<path class="axis-break" d="M{x + 1:.1f},{y + 10:.1f} l5,-10 m3,10 l5,-10"/>'
            )
        else:
            out.append(
                f'<rect class="legend-swatch {css}" x="{x:.1f}" y="{y:.1f}" width="12" '
                'height="10" rx="2"/>'
            )
        out.append(f'<text class="legend" x="{x + 18:.1f}" y="{y + 9:.1f}">{text}</text>')
        x += 34 + _text_width(text)
    return out


def _note(row: _Row, x1: float, x2: float, y: float) -> str:
    """The text beside a bar: after it, or before it when it would leave the chart."""
    width = _text_width(row.note)
    css = "bar-note" + (" note-failed" if row.failed else "")
    after = x2 + (14 if row.failed else 8)
    if after + width <= WIDTH - 4:
        return f'<text class="{css}" x="{after:.1f}" y="{y:.1f}">{escape(row.note)}</text>'
    if x1 - 8 - width >= PLOT_X:
        return (
            f'<text class="{css}" x="{x1 - 8:.1f}" y="{y:.1f}" text-anchor="end">'
            f"{escape(row.note)}</text>"
        )
    inside = x2 - (12 if row.failed else 6)
    if inside - width >= x1 + 4:
        return (
            f'<text class="{css} note-inside" x="{inside:.1f}" y="{y:.1f}" '
            f'text-anchor="end">{escape(row.note)}</text>'
        )
    return f'<text class="{css}" x="{after:.1f}" y="{y:.1f}">{escape(row.note)}</text>'


def render_timeline_svg(snapshot: SagaSnapshot, *, now: datetime | None = None) -> str:
    """The saga's timeline as an ``<svg>`` element (see the module docstring).

    ``now`` (default: the current time) ends the bar of a saga that is still waiting or
    running.
    """
    now_t = (now or datetime.now(UTC)).timestamp()
    rows = _rows(snapshot, now_t)
    audit = list(snapshot.audit)
    start = min([snapshot.created_at.timestamp(), *(r.start for r in rows)])
    end = max(
        [start + 0.001, *(r.end for r in rows), *(a.at.timestamp() for a in audit)]
        + ([snapshot.updated_at.timestamp()] if snapshot.status.is_terminal else [])
    )
    waits = [r for r in rows if r.open_end or r.css.startswith("wait") or "bar-running" in r.css]
    busy = [(r.start, r.end) for r in rows if r not in waits]
    splits = [t for r in waits for t in (r.start, r.end)]
    axis = _Axis(start, end, busy, splits)

    top = TOP_AUDIT if audit else TOP_PLAIN
    body_h = max(len(rows), 1) * ROW_H
    axis_y = top + body_h + 22
    height = axis_y + AXIS_H + LEGEND_H
    out: list[str] = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} '
        f'{height}" width="100%" role="img" aria-label="timeline of saga '
        f'{escape(snapshot.saga_id)}" data-rows="{len(rows)}">',
        "<defs>"
        '<pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" class="hatch-bg"/>'
        '<line x1="0" y1="0" x2="0" y2="6" class="hatch-line"/></pattern></defs>',
    ]
    for i in range(0, len(rows), 2):
        out.append(
            f'<rect class="row-band" x="0" y="{top + i * ROW_H}" width="{WIDTH}" height="{ROW_H}"/>'
        )
    # compressed time: a band behind the bars, a break on the axis, the time it stands for
    for seg in axis.segments:
        if not seg.compressed:
            continue
        mid = seg.x + seg.width / 2
        text = format_duration(timedelta(seconds=seg.end - seg.start))
        out.append(
            f'<g class="gap" data-seconds="{seg.end - seg.start:.3f}">'
            f"<title>{escape(text)} not drawn to scale (no step ran)</title>"
            f'<rect class="gap-band" x="{seg.x + 3:.1f}" y="{top - 6}" '
            f'width="{seg.width - 6:.1f}" height="{axis_y - top + 6}"/>'
            f'<rect class="gap-mask" x="{seg.x + 9:.1f}" y="{axis_y - 3}" '
            f'width="{seg.width - 18:.1f}" height="6"/>'
            f'<path class="axis-break" d="M{seg.x + 6:.1f},{axis_y + 5} l5,-10 '
            f'M{seg.x + seg.width - 11:.1f},{axis_y + 5} l5,-10"/>'
            f'<text class="gap-label" x="{mid:.1f}" y="{axis_y - 6}" text-anchor="middle">'
            f"{escape(text)}</text></g>"
        )
    out.append(
        f'<line class="axis" x1="{PLOT_X}" y1="{axis_y}" x2="{PLOT_X + PLOT_W}" y2="{axis_y}"/>'
    )
    for seg in axis.segments:  # the axis line is interrupted where time is compressed
        if seg.compressed:
            out.append(
                f'<rect class="gap-mask" x="{seg.x + 9:.1f}" y="{axis_y - 2}" '
                f'width="{seg.width - 18:.1f}" height="4"/>'
            )
    for i, row in enumerate(rows):
        y = top + i * ROW_H
        label = row.label if len(row.label) <= 24 else row.label[:23] + "…"
        out.append(
            f'<text class="row-label" x="{LABEL_W - 52}" y="{y + 17}" text-anchor="end">'
            f"{escape(label)}<title>{escape(row.label)}</title></text>"
            f'<text class="row-kind" x="{LABEL_W - 44}" y="{y + 17}">{escape(row.kind)}</text>'
        )
        x1 = axis.x(row.start)
        x2 = max(axis.x(row.end), x1 + MIN_BAR)
        bar_y = y + (ROW_H - BAR_H) / 2
        seq = "" if row.seq is None else f' data-seq="{row.seq}"'
        out.append(
            f'<g class="bar-group"{seq} data-name="{escape(row.label)}" '
            f'data-attempts="{row.attempts}">'
            f'<rect class="bar {row.css}" x="{x1:.1f}" y="{bar_y:.1f}" '
            f'width="{x2 - x1:.1f}" height="{BAR_H}" rx="3">'
            f"<title>{escape(row.tooltip)}</title></rect>"
        )
        # one notch per attempt beyond the first: retries visible at a glance
        if row.attempts > 1 and x2 - x1 >= 5 * row.attempts:
            for k in range(1, row.attempts):
                nx = x1 + (x2 - x1) * k / row.attempts
                out.append(
                    f'<line class="attempt-notch" x1="{nx:.1f}" y1="{bar_y + 3:.1f}" '
                    f'x2="{nx:.1f}" y2="{bar_y + BAR_H - 3:.1f}"/>'
                )
        if row.failed:
            cy = bar_y + BAR_H / 2
            out.append(
                f'<g class="failure-mark" data-seq="{row.seq}">'
                f'<circle cx="{x2:.1f}" cy="{cy:.1f}" r="7"/>'
                f'<path d="M{x2 - 2.8:.1f},{cy - 2.8:.1f} l5.6,5.6 '
                f'M{x2 + 2.8:.1f},{cy - 2.8:.1f} l-5.6,5.6"/></g>'
            )
        out.append(_note(row, x1, x2, y + 17) + "</g>")
    # operators' actions: labels on two lines, so that close ones do not overlap
    line_end = [-1e9, -1e9]
    for entry in audit:
        x = axis.x(entry.at.timestamp())
        text = entry.action + (f" {entry.step}" if entry.step else "")
        width = _text_width(text, 7.2)
        end_anchor = x + 4 + width > WIDTH - 4
        left = x - 4 - width if end_anchor else x + 4
        level = 0 if line_end[0] < left - 6 else (1 if line_end[1] < left - 6 else 0)
        line_end[level] = left + width
        who = f" by {entry.by}" if entry.by else ""
        why = f": {entry.reason}" if entry.reason else ""
        tip = f"{entry.action}{who} at {format_time(entry.at, millis=True)}{why}"
        anchor, tx = ("end", x - 4) if end_anchor else ("start", x + 4)
        out.append(
            f'<g class="audit-mark" data-action="{escape(entry.action)}">'
            f"<title>{escape(tip)}</title>"
            f'<line class="audit-line" x1="{x:.1f}" y1="{4 + level * 14}" x2="{x:.1f}" '
            f'y2="{top + body_h}"/>'
            f'<text class="audit-label" x="{tx:.1f}" y="{13 + level * 14}" '
            f'text-anchor="{anchor}">{escape(text)}</text></g>'
        )
    for x, offset in axis.ticks():
        out.append(
            f'<line class="tick" x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}"/>'
            f'<text class="tick-label" x="{x:.1f}" y="{axis_y + 17}" text-anchor="middle">'
            f"{escape(_offset_text(offset))}</text>"
        )
    kinds: set[str] = set()
    for row in rows:
        if not row.open_end:
            kinds.add("failed" if row.failed else row.css.split()[0])
            if "remote" in row.css.split():
                kinds.add("remote")
    if audit:
        kinds.add("audit")
    if any(seg.compressed for seg in axis.segments):
        kinds.add("gap")
    out.extend(_legend(axis_y + AXIS_H - 6, kinds))
    out.append("</svg>")
    return "".join(out)
