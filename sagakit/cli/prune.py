"""``sagakit prune``: delete the ended sagas older than an age, in batches (retention on demand,
for a cron job or before turning ``Engine(retention=...)`` on over a large backlog)."""

from __future__ import annotations

import sys
import time
from datetime import datetime

import click

from ..engine.retention import DEFAULT_BATCH
from ..stores.base import PRUNABLE_STATUSES, SagaStatus
from .common import (
    check_readable,
    db_option,
    db_url,
    iso_utc,
    open_admin,
    operator_name,
    parse_moment,
    run,
)

#: how often, at most, a progress line goes to a stderr that is not a terminal (a log)
_LOG_EVERY = 5.0


class _Progress:
    """The running total on stderr: one line rewritten in place on a terminal, a line every
    few seconds in a log."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = time.monotonic()
        self.shown = False

    def __call__(self, total: int) -> None:
        now = time.monotonic()
        if self.tty:
            click.echo(f"\rpruned {total} sagas so far…", err=True, nl=False)
            self.shown = True
        elif now - self.last >= _LOG_EVERY:
            click.echo(f"pruned {total} sagas so far", err=True)
            self.last = now

    def done(self) -> None:
        if self.shown:
            click.echo("", err=True)


@click.command("prune")
@db_option
@click.option(
    "--older-than",
    "older_than",
    required=True,
    callback=parse_moment,
    metavar="AGE",
    help="Delete sagas that ended before this: an age (30d, 12h, 1w) or an ISO time "
    "(2025-01-31T12:00, UTC unless an offset is given).",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in SagaStatus if s.is_terminal], case_sensitive=False),
    help="Only sagas in this status; repeat for several. Default: "
    f"{', '.join(PRUNABLE_STATUSES)} (FAILED sagas wait for an operator: name FAILED to "
    "delete them too).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print how many sagas would be deleted; delete nothing."
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Sagas deleted per transaction (small batches never hold up running sagas).",
)
def prune_command(
    db: str, older_than: datetime, statuses: tuple[str, ...], dry_run: bool, batch: int
) -> None:
    """Delete ended sagas with their journals, events and published state, once they ended
    before --older-than. A saga whose parent or one of whose children is still going is
    kept; sagas that have not ended are never touched."""
    url = db_url(db)
    check_readable(url)
    chosen = [s.upper() for s in statuses] or None
    progress = _Progress()

    async def prune() -> int:
        async with open_admin(url) as admin:
            return await admin.prune(
                older_than,
                statuses=chosen,
                batch=batch,
                dry_run=dry_run,
                progress=progress,
                by=operator_name(),
            )

    try:
        count = run(prune())
    finally:
        progress.done()
    which = ", ".join(chosen or PRUNABLE_STATUSES)
    sagas = f"{count} saga{'' if count == 1 else 's'} ({which}) that ended before"
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {sagas} {iso_utc(older_than)}")
