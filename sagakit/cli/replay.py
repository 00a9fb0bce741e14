"""Before a deploy: ``export`` (one saga's recorded history as JSON) and ``replay`` (the
recorded journals against the code about to be deployed). Both only read the database."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import click

from ..errors import SagaError, SagaNotFoundError
from ..history import History, history_to_json, read_history
from ..stores import open_store
from ..stores.base import SagaFilter, SagaRecord, SagaStatus, Store
from ..testing import ReplayError, replay_async
from ..workflows import SagaWorkflow
from .common import check_readable, db_option, db_url, parse_moment, run, safe_url

#: how many saga rows one listing query reads
_PAGE = 500
#: the statuses of sagas that have not ended: what a deploy's new code will replay
_IN_FLIGHT = tuple(s.value for s in SagaStatus if not s.is_terminal)


@asynccontextmanager
async def _reading(url: str) -> AsyncIterator[Store]:
    """The store at ``url``, opened read-only: the commands here never write."""
    store = open_store(url, read_only=True)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@click.command("export")
@click.argument("saga_id")
@db_option
def export_command(saga_id: str, db: str) -> None:
    """Print one saga's recorded history (its row, journal and events) as JSON, the
    "sagakit-history/1" format that `sagakit.testing.replay(history, workflow)` reads:
    `sagakit export order-1 > tests/histories/order-1.json`. Only reads the database."""
    url = db_url(db)
    check_readable(url)

    async def fetch() -> History:
        async with _reading(url) as store:
            return await read_history(store, saga_id)

    try:
        history = run(fetch())
    except click.ClickException as exc:
        if isinstance(exc.__cause__, SagaNotFoundError):
            raise click.ClickException(f"no saga with id {saga_id!r} in {safe_url(url)}") from None
        raise
    click.echo(json.dumps(history_to_json(history), indent=2, ensure_ascii=False))


@dataclass(slots=True)
class _Tally:
    replayed: int = 0
    compatible: int = 0
    problems: list[str] = field(default_factory=list)


@click.command("replay")
@click.option(
    "--app",
    required=True,
    metavar="MODULE:ATTRIBUTE",
    help="The code about to be deployed, as for `sagakit worker`: an Engine, a workflow, or a "
    "list of workflows.",
)
@db_option
@click.option(
    "--workflow",
    "workflows",
    multiple=True,
    metavar="NAME",
    help="Only sagas of this workflow (repeatable; default: every workflow of the app).",
)
@click.option(
    "--since",
    callback=parse_moment,
    metavar="TIME",
    help="Only sagas created at or after this time: ISO (2025-01-31T12:00, UTC unless an "
    "offset is given) or an age (30m, 1h, 2d).",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in SagaStatus], case_sensitive=False),
    help="Only sagas in this status (repeatable; default: those that have not ended).",
)
@click.option("--all", "everything", is_flag=True, help="Sagas that have ended too.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    metavar="N",
    help="At most N sagas, the newest first (default: all that match).",
)
@click.option("--ok", "show_ok", is_flag=True, help="Also print a line for each saga that replays.")
@click.pass_context
def replay_command(
    ctx: click.Context,
    app: str,
    db: str,
    workflows: tuple[str, ...],
    since: datetime | None,
    statuses: tuple[str, ...],
    everything: bool,
    limit: int | None,
    show_ok: bool,
) -> None:
    """Replay recorded journals against the code of --app, without running any step: report
    each saga a worker of that code would fail (a step order changed, a step removed, an input
    it no longer accepts) with the first differing entry. Exit 1 if any diverges, 0 if all
    replay. Only reads the database.

    Default: the sagas of the app's workflows that have not ended (what the new code will
    replay after the deploy)."""
    from ..worker import load_app

    url = db_url(db)
    check_readable(url)
    try:
        loaded = load_app(app)
    except SagaError as exc:
        raise click.ClickException(str(exc)) from exc
    # each definition under the version a worker of the app serves it at
    by_name: dict[str, list[tuple[str | None, SagaWorkflow[Any, Any]]]] = {}
    for workflow in loaded.workflows:
        served = workflow.version or loaded.app_version
        by_name.setdefault(workflow.name, []).append((served, workflow))
    unknown = [name for name in workflows if name not in by_name]
    if unknown:
        raise click.ClickException(
            f"--workflow {unknown[0]!r} is not a workflow of {app} "
            f"(it has: {', '.join(sorted(by_name))})"
        )
    names = list(workflows) or sorted(by_name)
    if statuses:
        wanted: tuple[str | None, ...] = tuple(s.upper() for s in statuses)
    else:
        wanted = (None,) if everything else _IN_FLIGHT
    tally = run(
        _replay_all(
            url,
            by_name,
            names,
            wanted,
            None if since is None else since.timestamp(),
            limit,
            show_ok,
        )
    )
    diverging = len(tally.problems)
    summary = (
        f"replayed {tally.replayed} saga(s) of {', '.join(names)} from {safe_url(url)}: "
        f"{tally.compatible} replay, {diverging} diverge"
    )
    click.echo(summary)
    ctx.exit(1 if diverging else 0)


async def _replay_all(
    url: str,
    by_name: dict[str, list[tuple[str | None, SagaWorkflow[Any, Any]]]],
    names: Sequence[str],
    statuses: Sequence[str | None],
    since: float | None,
    limit: int | None,
    show_ok: bool,
) -> _Tally:
    tally = _Tally()
    async with _reading(url) as store:
        records = await _select(store, names, statuses, since, limit)
        for record in records:
            tally.replayed += 1
            line = await _replay_one(store, record, by_name[record.name])
            if line is None:
                tally.compatible += 1
            else:
                tally.problems.append(line)
                click.echo(line)
            if line is None and show_ok:
                click.echo(f"ok        {record.saga_id} ({_label(record)}, {record.status})")
    return tally


async def _select(
    store: Store,
    names: Sequence[str],
    statuses: Sequence[str | None],
    since: float | None,
    limit: int | None,
) -> list[SagaRecord]:
    """The sagas to replay, newest first: each (workflow, status) listing paged through, at
    most ``limit`` of each (the newest ``limit`` overall are among them)."""
    found: list[SagaRecord] = []
    for name in names:
        for status in statuses:
            after: tuple[float, str] | None = None
            taken = 0
            while limit is None or taken < limit:
                size = _PAGE if limit is None else min(_PAGE, limit - taken)
                where = SagaFilter(status=status, name=name, created_after=since, after=after)
                page = await store.list_sagas(where, size)
                found.extend(page)
                taken += len(page)
                if len(page) < size:
                    break
                after = (page[-1].created_at, page[-1].saga_id)
    found.sort(key=lambda r: (r.created_at, r.saga_id), reverse=True)
    return found if limit is None else found[:limit]


async def _replay_one(
    store: Store, record: SagaRecord, candidates: list[tuple[str | None, SagaWorkflow[Any, Any]]]
) -> str | None:
    """None when the code accepts the saga's journal, else the line that says why not."""
    workflow = _definition(record, candidates)
    label = f"{record.saga_id} ({_label(record)}, {record.status})"
    if workflow is None:
        served = ", ".join(sorted(str(version) for version, _ in candidates))
        return f"NOT SERVED {label}: the app registers {record.name} versions {served} only"
    try:
        history = await read_history(store, record.saga_id)
    except SagaNotFoundError:
        return None  # gone since it was listed (pruned): nothing will replay it
    try:
        await replay_async(history, workflow)
    except ReplayError as exc:
        where = f"seq {exc.seq}" if exc.seq is not None else "overall"
        what = f"the journal has {exc.recorded}, the code does {exc.replayed}"
        return f"DIVERGES  {label}: {where}: {what}"
    except SagaError as exc:
        return f"DIVERGES  {label}: {exc}"
    return None


def _definition(
    record: SagaRecord, candidates: list[tuple[str | None, SagaWorkflow[Any, Any]]]
) -> SagaWorkflow[Any, Any] | None:
    """The definition a worker of the app would run this saga with: the one it serves at the
    saga's version (None: no worker of the app would claim the saga)."""
    for served, workflow in candidates:
        if served == record.version:
            return workflow
    return None


def _label(record: SagaRecord) -> str:
    return record.name if record.version is None else f"{record.name} v{record.version}"


REPLAY_COMMANDS = (export_command, replay_command)

__all__ = ["REPLAY_COMMANDS", "export_command", "replay_command"]
