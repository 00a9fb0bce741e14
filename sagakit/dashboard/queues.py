"""The dashboard's view of queues: the "Queues" card of the front page (each queue's limits in
force, how many of its sagas wait and run); a queued saga's place on its page is part of the
saga page's template (``templates/queue_meta.html``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta

from ..queue_admin import format_rate
from ..stores.queueing import QueueState
from ..timeline import format_duration
from .templating import render

__all__ = ["render_queues_card"]


def render_queues_card(
    queues: Sequence[QueueState], now: float | None = None, base: str = ""
) -> str:
    """The front page's "Queues" card: one row per queue (nothing when there is none)."""
    if not queues:
        return ""
    now = time.time() if now is None else now
    rows = []
    for queue in queues:
        limits = queue.limits
        concurrency = "none" if limits.concurrency is None else str(limits.concurrency)
        if limits.partitioned and limits.concurrency is not None:
            concurrency += " per partition"
        oldest = "—"
        if queue.oldest_queued_at is not None:
            oldest = format_duration(timedelta(seconds=max(0.0, now - queue.oldest_queued_at)))
        rows.append(
            {
                "name": queue.name,
                "override": queue.override,
                "concurrency": concurrency,
                "worker": "none"
                if limits.worker_concurrency is None
                else str(limits.worker_concurrency),
                "rate": format_rate(limits.rate_limit, limits.rate_per),
                "paused": limits.paused,
                "queued": queue.queued,
                "delayed": queue.delayed,
                "running": queue.running,
                "oldest": oldest,
            }
        )
    return render("queues.html", rows=rows, changed=any(q.override for q in queues), base=base)
