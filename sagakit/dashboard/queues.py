"""The dashboard's view of queues: the "Queues" card of the front page (each queue's limits in
force, how many of its sagas wait and run) and a queued saga's place on its page. Pure
functions of the data they get, escaped like every other page (see :mod:`.pages`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from html import escape
from typing import Any

from ..engine.snapshots import SagaSnapshot
from ..queue_admin import format_rate
from ..stores.queueing import QueueState
from ..timeline import format_duration

__all__ = ["QUEUE_STYLE", "render_queue_meta", "render_queues_card"]

#: the colour of QUEUED (badges and the count), and the card's layout
QUEUE_STYLE = (
    ".s-QUEUED{background:#e9e7fd;color:#3e3a9e}.c-QUEUED{border-left-color:#6e6ae0}"
    "section.queues{margin:0 0 16px}section.queues h2{margin-top:8px}"
    "table.queues td.changed{font-weight:650}table.queues .paused{color:#9a3412}"
    ".timeline .bar.open-queued{stroke:#6e6ae0}"
)


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _cell(text: str, changed: bool, css: str = "num") -> str:
    if not changed:
        return f'<td class="{css}">{_e(text)}</td>'
    return (
        f'<td class="{css} changed" title="changed by an operator (declared in code: see '
        f'sagakit queue reset)">{_e(text)}*</td>'
    )


def render_queues_card(queues: Sequence[QueueState], now: float | None = None) -> str:
    """The front page's "Queues" card: one row per queue (nothing when there is none)."""
    if not queues:
        return ""
    now = time.time() if now is None else now
    rows = []
    for queue in queues:
        limits, override = queue.limits, queue.override
        concurrency = "none" if limits.concurrency is None else str(limits.concurrency)
        if limits.partitioned and limits.concurrency is not None:
            concurrency += " per partition"
        worker = "none" if limits.worker_concurrency is None else str(limits.worker_concurrency)
        oldest = "—"
        if queue.oldest_queued_at is not None:
            oldest = format_duration(timedelta(seconds=max(0.0, now - queue.oldest_queued_at)))
        state = (
            f'<span class="paused">paused{"*" if "paused" in override else ""}</span>'
            if limits.paused
            else "active"
        )
        queued_link = f'<a href="/?status=QUEUED">{queue.queued:,}</a>' if queue.queued else "0"
        rows.append(
            f'<tr data-queue="{_e(queue.name)}"><td class="mono">{_e(queue.name)}</td>'
            + _cell(concurrency, "concurrency" in override)
            + _cell(worker, "worker_concurrency" in override)
            + _cell(format_rate(limits.rate_limit, limits.rate_per), "rate_limit" in override)
            + f'<td class="state">{state}</td>'
            f'<td class="num queued">{queued_link}</td>'
            f'<td class="num delayed">{queue.delayed:,}</td>'
            f'<td class="num running">{queue.running:,}</td>'
            f'<td class="num">{_e(oldest)}</td></tr>'
        )
    changed = any(q.override for q in queues)
    note = (
        '<p class="small muted">* changed at run time by an operator; <code>sagakit queue '
        "reset NAME</code> puts back the limits declared in code.</p>"
        if changed
        else ""
    )
    return (
        '<section class="queues" id="queues"><h2>Queues</h2>'
        '<table class="queues"><thead><tr><th>Queue</th><th>Concurrency</th>'
        "<th>Per worker</th><th>Rate</th><th>State</th><th>Queued</th><th>Delayed</th>"
        "<th>Running</th><th>Oldest waiting</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{note}"
        '<p class="small muted">Change limits with <code>sagakit queue set NAME '
        "--concurrency N --rate 50/1s</code> (or <code>engine.admin.set_queue_limits</code>)"
        "; every worker obeys at its next claim.</p></section>"
    )


def render_queue_meta(saga: SagaSnapshot, position: int | None = None) -> str:
    """A queued saga's queue, partition, priority, deduplication id and place in line, as
    more lines of the saga page's facts (nothing for a saga started without a queue)."""
    if not saga.queue:
        return ""
    items = [("queue", f'<span class="mono" id="queue">{_e(saga.queue)}</span>')]
    if position is not None:
        where = " in its partition" if saga.partition_key else ""
        nxt = " (next to start)" if position == 1 else ""
        items.append(("position", f'<span id="queue-position">{position}</span>{where}{nxt}'))
    if saga.partition_key:
        items.append(("partition", f'<span class="mono">{_e(saga.partition_key)}</span>'))
    if saga.priority:
        items.append(("priority", f"{saga.priority}"))
    if saga.dedup_id:
        items.append(("dedup id", f'<span class="mono">{_e(saga.dedup_id)}</span>'))
    cells = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return f'<dl class="meta queue-meta">{cells}</dl>'
