"""The commands that look without touching: ``list``, ``show`` and ``stats``."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import click

from ..admin import SagaAdmin, SagaPage
from ..engine import SagaSnapshot
from ..errors import SagaNotFoundError
from ..search import SearchError, parse_wheres
from ..stores.base import SagaStatus
from ..stores.queueing import QueueState
from ..timeline import (
    render_saga_table,
    render_status_counts,
    render_timeline,
    snapshot_to_dict,
)
from .common import (
    check_readable,
    db_option,
    db_url,
    dump_json,
    filter_options,
    iso_utc,
    json_option,
    open_admin,
    run,
    safe_url,
    use_color,
    use_unicode,
)


def next_page_command(
    status: str | None,
    name: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    limit: int,
    cursor: str,
    *,
    id_prefix: str | None = None,
    where: Sequence[str] = (),
) -> str:
    """The ``sagakit list`` command line that shows the next page: the same filters, with
    ages (``1h``) pinned to the times they meant, so that the pages fit together. ``--db`` is
    left out: a PostgreSQL URL may hold a password, and it must not end up on the screen."""
    args = ["sagakit", "list"]
    if id_prefix:
        args += ["--id-prefix", id_prefix]
    for condition in where:
        args += ["--where", condition]
    if status:
        args += ["--status", status]
    if name:
        args += ["--name", name]
    if created_after:
        args += ["--created-after", iso_utc(created_after)]
    if created_before:
        args += ["--created-before", iso_utc(created_before)]
    if limit != 50:
        args += ["--limit", str(limit)]
    args += ["--cursor", cursor]
    return shlex.join(args)


def _check_where(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    """Refuse a malformed ``--where`` before the database is opened (a usage error)."""
    try:
        parse_wheres(value)
    except SearchError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


@click.command("list")
@db_option
@filter_options
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="At most this many (one page).",
)
@click.option(
    "--cursor", metavar="CURSOR", help="Start after the page whose hint gave this cursor."
)
@click.option(
    "--id-prefix", metavar="PREFIX", help="Only sagas whose id starts with this (case matters)."
)
@click.option(
    "--where",
    "where",
    multiple=True,
    callback=_check_where,
    metavar="FIELD=VALUE",
    help="Only sagas with this value inside their input or output: input.customer_id=42, "
    "input.customer.id=7, output.status=shipped (42 matches the number and the string "
    '"42"). Repeat: all must hold.',
)
@click.option(
    "--stranded",
    is_flag=True,
    help="Only sagas not ended whose workflow version no live worker serves (up to --limit).",
)
@json_option
def list_command(
    db: str,
    status: str | None,
    name: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    limit: int,
    cursor: str | None,
    id_prefix: str | None,
    where: tuple[str, ...],
    stranded: bool,
    as_json: bool,
) -> None:
    """List sagas, newest first, a page at a time.

    When more sagas match than --limit, the last line gives the command for the next page.
    """
    url = db_url(db)
    check_readable(url)
    if stranded:
        if status or name or created_after or created_before or cursor or id_prefix or where:
            raise click.UsageError(
                "--stranded lists every stranded saga (up to --limit); drop the other filters"
            )
        _list_stranded(url, limit, as_json)
        return

    async def fetch() -> tuple[SagaPage, dict[str, int]]:
        async with open_admin(url, read_only=True) as admin:
            page = await admin.list_sagas(
                status=status,
                name=name,
                created_after=created_after,
                created_before=created_before,
                limit=limit,
                cursor=cursor,
                id_prefix=id_prefix,
                where=where,
            )
            return page, await _positions(admin, page.sagas)

    page, positions = run(fetch())
    if as_json:
        sagas = [_with_position(s, positions, with_steps=False) for s in page.sagas]
        dump_json({"sagas": sagas, "next_cursor": page.next_cursor})
        return
    if not page.sagas:
        filters = [
            f"{label} {value}".strip()
            for label, value in (
                ("status", status),
                ("workflow", name),
                ("created at or after", created_after and iso_utc(created_after)),
                ("created before", created_before and iso_utc(created_before)),
                ("an id starting with", id_prefix),
                *(("", condition) for condition in where),
            )
            if value
        ]
        matching = f" with {' and '.join(filters)}" if filters else ""
        after = " after that cursor" if cursor else ""
        click.echo(f"no sagas{matching}{after} in {safe_url(url)}")
        return
    color = use_color()
    table = render_saga_table(page.sagas, color=color, unicode=use_unicode(), positions=positions)
    click.echo(table, color=color)
    if page.next_cursor:
        hint = next_page_command(
            status,
            name,
            created_after,
            created_before,
            limit,
            page.next_cursor,
            id_prefix=id_prefix,
            where=where,
        )
        click.echo(f"more sagas match; next page: {hint}")


async def _positions(admin: SagaAdmin, sagas: Sequence[SagaSnapshot]) -> dict[str, int]:
    """The place of each QUEUED saga among ``sagas`` in its queue."""
    found: dict[str, int] = {}
    for saga in sagas:
        if saga.status != SagaStatus.QUEUED:
            continue
        with contextlib.suppress(SagaNotFoundError):  # it was deleted since the listing
            position = await admin.queue_position(saga.saga_id)
            if position is not None:
                found[saga.saga_id] = position
    return found


def _with_position(
    saga: SagaSnapshot, positions: Mapping[str, int], *, with_steps: bool = True
) -> dict[str, Any]:
    data = snapshot_to_dict(saga, with_steps=with_steps)
    data["queue_position"] = positions.get(saga.saga_id)
    return data


def _list_stranded(url: str, limit: int, as_json: bool) -> None:
    async def fetch() -> list[SagaSnapshot]:
        async with open_admin(url, read_only=True) as admin:
            return await admin.stranded(limit)

    sagas = run(fetch())
    if as_json:
        dump_json({"sagas": [snapshot_to_dict(s, with_steps=False) for s in sagas]})
        return
    if not sagas:
        click.echo(f"no stranded sagas in {safe_url(url)}: a live worker serves every version")
        return
    color = use_color()
    click.echo(render_saga_table(sagas, color=color, unicode=use_unicode()), color=color)
    click.echo(
        "no live worker serves these sagas' workflow versions (see `sagakit show ID`); "
        "run a worker that registers them"
    )


@click.command("show")
@click.argument("saga_id")
@click.option(
    "--run",
    "run_number",
    type=click.IntRange(min=1),
    default=None,
    help="Show the journal of this run of a saga that continued as new (default: its current run).",
)
@db_option
@json_option
def show_command(saga_id: str, run_number: int | None, db: str, as_json: bool) -> None:
    """Show one saga's timeline: its status, output or error, every journal entry (steps,
    compensations, waits, retries, durations), what it waits for or where it parked, and the
    operators' actions on it. A saga that continued as new shows "run N of M"; --run shows an
    earlier run's journal."""
    url = db_url(db)
    check_readable(url)

    async def fetch() -> tuple[SagaSnapshot, dict[str, int]]:
        async with open_admin(url, read_only=True) as admin:
            if run_number is None:
                snapshot = await admin.get_saga(saga_id)
            else:
                snapshot = await admin.get_run(saga_id, run_number)
            return snapshot, await _positions(admin, [snapshot])

    try:
        snapshot, positions = run(fetch())
    except click.ClickException as exc:
        if isinstance(exc.__cause__, SagaNotFoundError):
            raise click.ClickException(f"no saga with id {saga_id!r} in {safe_url(url)}") from None
        raise
    if as_json:
        dump_json(_with_position(snapshot, positions))
        return
    color = use_color()
    position = positions.get(snapshot.saga_id)
    timeline = render_timeline(snapshot, color=color, unicode=use_unicode(), position=position)
    click.echo(timeline, color=color)


@click.command("stats")
@db_option
@json_option
def stats_command(db: str, as_json: bool) -> None:
    """Count the sagas in each status (every status, zeros included), and those waiting and
    running in each queue."""
    url = db_url(db)
    check_readable(url)

    async def fetch() -> tuple[dict[str, int], int, list[QueueState], int | None]:
        async with open_admin(url, read_only=True) as admin:
            counts = await admin.count_by_status()
            stranded = await admin.count_stranded()
            return counts, stranded, await admin.queues(), await admin.outbox_backlog()

    counts, stranded, queues, backlog = run(fetch())
    if as_json:
        dump_json(counts)
        return
    color = use_color()
    click.echo(render_status_counts(counts, color=color, unicode=use_unicode()), color=color)
    # not a status: sagas of any unended status whose version no live worker serves
    click.echo(f"stranded  {stranded}  (no live worker serves them: sagakit list --stranded)")
    if backlog is not None:  # messages to other services the relay has not published yet
        click.echo(f"outbox    {backlog}  (messages waiting for the relay)")
    for queue in queues:
        click.echo(
            f"queue {queue.name}  queued {queue.queued}  running {queue.running}"
            + ("  (paused)" if queue.limits.paused else "")
        )
