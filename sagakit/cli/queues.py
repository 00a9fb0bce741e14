"""``sagakit queues`` (look at every queue) and ``sagakit queue set`` / ``queue reset``
(change a queue's limits at run time, through ``engine.admin``; every worker obeys at its next
claim)."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any, Literal

import click

from ..queue_admin import KEEP, Keep, format_rate, format_window
from ..queues import RateLimit
from ..stores.queueing import QueueLimits, QueueState
from ..timeline import format_duration
from .common import (
    check_readable,
    db_option,
    db_url,
    dump_json,
    json_option,
    open_admin,
    operator_name,
    run,
    safe_url,
)

__all__ = ["QUEUE_COMMANDS", "format_rate", "parse_rate"]

#: ``50/1s``, ``50/s``, ``100/1m``, ``10/500ms``, ``3/2.5h``
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|sec|m|min|h)\s*$", re.IGNORECASE)
_UNIT = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
#: what marks a limit an operator changed (``sagakit queue reset`` puts it back)
_MARK = "*"
_NONE = ("none", "off", "no")


def parse_rate(text: str) -> RateLimit | None:
    """A rate limit from the command line: ``50/1s``, ``50/s``, ``100/1m``, ``10/500ms``;
    ``none`` lifts it. ValueError with what to type instead."""
    if text.strip().lower() in _NONE:
        return None
    found = _RATE.match(text)
    if found is None:
        raise ValueError(
            f"{text!r} is not a rate: give STARTS/WINDOW, e.g. 50/1s, 50/s, 100/1m or 10/500ms "
            "(ms, s, m, h), or none to lift the rate limit"
        )
    count, amount, unit = int(found[1]), float(found[2] or 1), found[3].lower()
    seconds = amount * _UNIT[unit]
    if count < 1 or seconds <= 0:
        raise ValueError(
            f"{text!r}: a rate needs at least 1 start per window, and a window longer than "
            "zero (e.g. 50/1s), or none to lift the rate limit"
        )
    return RateLimit(count, per=timedelta(seconds=seconds))


def _limit_option(value: str | None, name: str) -> int | Literal[Keep.KEEP] | None:
    if value is None:
        return KEEP
    if value.strip().lower() in _NONE:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise click.BadParameter(
            f"{value!r} is not a limit: give a whole number >= 1, or none to lift it",
            param_hint=f"'--{name}'",
        )
    return number


def _cells(queue: QueueState) -> dict[str, str]:
    """A queue's limits in force as text, each marked when an operator changed it."""
    limits, override = queue.limits, queue.override

    def mark(text: str, *keys: str) -> str:
        return text + (_MARK if any(k in override for k in keys) else "")

    def number(value: int | None) -> str:
        return "none" if value is None else str(value)

    per_partition = "/partition" if limits.partitioned and limits.concurrency else ""
    return {
        "concurrency": mark(number(limits.concurrency) + per_partition, "concurrency"),
        "worker": mark(number(limits.worker_concurrency), "worker_concurrency"),
        "rate": mark(format_rate(limits.rate_limit, limits.rate_per), "rate_limit", "rate_per"),
        "state": mark("paused", "paused") if limits.paused else "active",
    }


def _age(queue: QueueState, now: float) -> str:
    if queue.oldest_queued_at is None:
        return "-"
    return format_duration(timedelta(seconds=max(0.0, now - queue.oldest_queued_at)))


def render_queues(queues: list[QueueState], now: float | None = None) -> str:
    """The table of ``sagakit queues``."""
    now = time.time() if now is None else now
    head = (
        "QUEUE",
        "CONCURRENCY",
        "PER WORKER",
        "RATE",
        "STATE",
        "QUEUED",
        "DELAYED",
        "RUNNING",
        "RECENT STARTS",
        "OLDEST WAITING",
    )
    rows = []
    for queue in queues:
        cells = _cells(queue)
        limits = queue.limits
        recent = "-"
        if limits.rate_per is not None:
            recent = f"{queue.recent_starts}/{format_window(limits.rate_per)}"
        kinds = [k for k in ("priority", "partitioned") if getattr(limits, k)]
        rows.append(
            (
                queue.name + (f" ({', '.join(kinds)})" if kinds else ""),
                cells["concurrency"],
                cells["worker"],
                cells["rate"],
                cells["state"],
                str(queue.queued),
                str(queue.delayed),
                str(queue.running),
                recent,
                _age(queue, now),
            )
        )
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    right = {5, 6, 7, 8}
    lines = [
        "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)
        ).rstrip()
        for row in (head, *rows)
    ]
    if any(queue.override for queue in queues):
        lines.append(
            f"{_MARK} changed by an operator (sagakit queue reset NAME puts back the limits "
            "declared in code)"
        )
    return "\n".join(lines)


def _as_json(queue: QueueState) -> dict[str, Any]:
    def limits(value: QueueLimits) -> dict[str, Any]:
        return {
            "concurrency": value.concurrency,
            "worker_concurrency": value.worker_concurrency,
            "rate": format_rate(value.rate_limit, value.rate_per),
            "rate_limit": value.rate_limit,
            "rate_per_seconds": value.rate_per,
            "priority": value.priority,
            "partitioned": value.partitioned,
            "paused": value.paused,
        }

    return {
        "name": queue.name,
        "limits": limits(queue.limits),
        "declared": limits(queue.declared),
        "override": queue.override,
        "queued": queue.queued,
        "delayed": queue.delayed,
        "running": queue.running,
        "recent_starts": queue.recent_starts,
        "oldest_queued_at": queue.oldest_queued_at,
    }


def _summary(queue: QueueState) -> str:
    cells = _cells(queue)
    return (
        f"queue {queue.name}: concurrency {cells['concurrency']}, per worker "
        f"{cells['worker']}, rate {cells['rate']}, {cells['state']}; {queue.queued} queued, "
        f"{queue.running} running"
    )


@click.command("queues")
@db_option
@json_option
def queues_command(db: str, as_json: bool) -> None:
    """List the queues: the limits in force (those an operator changed marked *), how many
    sagas wait (queued; delayed ones among them), run, started in the last rate window, and
    how long the oldest has waited."""
    url = db_url(db)
    check_readable(url)

    async def fetch() -> list[QueueState]:
        async with open_admin(url, read_only=True) as admin:
            return await admin.queues()

    queues = run(fetch())
    if as_json:
        dump_json({"queues": [_as_json(q) for q in queues]})
        return
    if not queues:
        click.echo(
            f"no queues in {safe_url(url)}: a queue appears once an engine that registers it "
            "(engine.register(Queue(...))) has opened the database"
        )
        return
    click.echo(render_queues(queues))


@click.group("queue")
def queue_group() -> None:
    """Change a queue's limits at run time (every worker obeys at its next claim), or put
    back those declared in code."""


def _who(fn: Any) -> Any:
    fn = click.option(
        "--by", metavar="NAME", help="Who acts, for the log.  [default: your OS user name]"
    )(fn)
    return click.option("--reason", metavar="TEXT", help="Why: logged with the change.")(fn)


@queue_group.command("set")
@click.argument("name")
@click.option(
    "--concurrency",
    metavar="N|none",
    help="The most sagas of the queue running at once across every worker (per partition "
    "in a partitioned queue); none lifts the limit.",
)
@click.option(
    "--worker-concurrency",
    "worker_concurrency",
    metavar="N|none",
    help="The most sagas of the queue one worker process runs at once; none lifts it.",
)
@click.option(
    "--rate",
    metavar="N/WINDOW|none",
    help="At most N starts in any window, across every worker: 50/1s, 50/s, 100/1m, 10/500ms; "
    "none lifts it.",
)
@click.option(
    "--pause/--resume",
    "paused",
    default=None,
    help="Start no new saga of the queue (started ones go on) / start them again.",
)
@_who
@db_option
def queue_set_command(
    name: str,
    concurrency: str | None,
    worker_concurrency: str | None,
    rate: str | None,
    paused: bool | None,
    reason: str | None,
    by: str | None,
    db: str,
) -> None:
    """Change queue NAME's limits: only the options given change, and the change holds (across
    restarts and redeploys) until `sagakit queue reset NAME`. Every worker obeys it at its
    next claim."""
    limit = _limit_option(concurrency, "concurrency")
    per_worker = _limit_option(worker_concurrency, "worker-concurrency")
    new_rate: RateLimit | Literal[Keep.KEEP] | None = KEEP
    if rate is not None:
        try:
            new_rate = parse_rate(rate)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--rate'") from None
    if all(v is KEEP for v in (limit, per_worker, new_rate)) and paused is None:
        raise click.UsageError(
            "say what to change: --concurrency, --worker-concurrency, --rate, --pause or "
            "--resume (none lifts a limit; `sagakit queue reset NAME` drops every change)"
        )
    url = db_url(db)
    check_readable(url)

    async def change() -> QueueState:
        async with open_admin(url) as admin:
            return await admin.set_queue_limits(
                name,
                concurrency=limit,
                worker_concurrency=per_worker,
                rate=new_rate,
                paused=KEEP if paused is None else paused,
                reason=reason,
                by=by if by is not None else operator_name(),
            )

    click.echo(_summary(run(change())))


@queue_group.command("reset")
@click.argument("name")
@_who
@db_option
def queue_reset_command(name: str, reason: str | None, by: str | None, db: str) -> None:
    """Drop every change an operator made to queue NAME (a pause too): the limits declared in
    code hold again, from every worker's next claim."""
    url = db_url(db)
    check_readable(url)

    async def reset() -> QueueState:
        async with open_admin(url) as admin:
            return await admin.reset_queue_limits(
                name, reason=reason, by=by if by is not None else operator_name()
            )

    click.echo(_summary(run(reset())))


QUEUE_COMMANDS = (queues_command, queue_group)
