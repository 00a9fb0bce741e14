"""The ``sagakit`` command: ``demo``, ``list``, ``show`` and ``worker`` (a click group, one
function per command, so that ``retry`` and the other operator commands slot in beside them).

Errors that sagakit raises on purpose (:class:`~sagakit.SagaError`) become one line on stderr and
exit code 1; a traceback means a bug.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from . import Engine, SagaError, SagaNotFoundError, SagaSnapshot, SagaStatus, __version__
from .errors import StoreError
from .stores.sqlite.store import path_from_url
from .timeline import render_saga_table, render_timeline, snapshot_to_dict

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DB = "sqlite:///sagakit.db"
_SYMBOLS = "✓✗—→←─·↩✂…"


def db_url(value: str) -> str:
    """A store URL from ``--db``: URLs pass through, a bare path becomes a SQLite URL
    (``./x.db`` → ``sqlite:///./x.db``, ``/data/x.db`` → ``sqlite:////data/x.db``)."""
    if "://" in value or value.startswith("sqlite:"):
        return value
    return "sqlite:///" + os.path.expanduser(value)


def _check_readable(url: str) -> None:
    """Refuse a SQLite file that does not exist or holds no sagas, before the engine opens it:
    opening would create the file (or add sagakit's tables to someone else's database)."""
    if not url.startswith("sqlite:"):
        return
    try:
        path = Path(path_from_url(url))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    if path.is_dir():
        raise click.ClickException(f"{str(path)!r} is a folder, not a saga database (--db {url})")
    if not path.is_file():
        raise click.ClickException(
            f"no saga database at {str(path)!r} (--db {url}): the file does not exist. "
            "Point --db at an existing database, e.g. the one `sagakit demo --keep` prints."
        )
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'saga_instances'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise click.ClickException(
            f"cannot read {str(path)!r} as a SQLite database: {exc}"
        ) from exc
    if found is None:
        raise click.ClickException(f"{str(path)!r} is not a sagakit database (it holds no sagas)")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; a SagaError becomes click's one-line error and exit code 1."""
    try:
        return asyncio.run(coro)
    except SagaError as exc:
        raise click.ClickException(str(exc)) from exc


def _color() -> bool:
    # https://no-color.org: any value of NO_COLOR turns colour off
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _unicode() -> bool:
    try:
        _SYMBOLS.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _dump_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def db_option(fn: F) -> F:
    """The ``--db`` option shared by the commands that read a database."""
    return click.option(
        "--db",
        "db",
        default=DEFAULT_DB,
        show_default=True,
        envvar="SAGAKIT_DB",
        show_envvar=True,
        metavar="URL",
        help="The saga database: sqlite:///path.db (or a bare path to a SQLite file), "
        "or postgresql://user@host:port/db.",
    )(fn)


def json_option(fn: F) -> F:
    """The ``--json`` flag: machine-readable output instead of text."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sagakit")
@click.option("-v", "--verbose", is_flag=True, help="Log what the engine does (INFO level).")
def main(verbose: bool) -> None:
    """sagakit: durable sagas (steps with compensations) that survive crashes."""
    # an unprintable character must not crash a command halfway through its output
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="sagakit: %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.option("--keep", is_flag=True, help="Keep the temporary folder (its path is printed).")
@click.pass_context
def demo(ctx: click.Context, keep: bool) -> None:
    """Run a checkout saga three ways: it completes, it rolls back, and it is recovered after
    its process is killed. Takes a few seconds; uses a temporary folder."""
    from .demo import run_demo  # the example's models and steps load only when asked for

    ctx.exit(run_demo(keep=keep, color=_color(), unicode=_unicode()))


@main.command("list")
@db_option
@click.option(
    "--status",
    type=click.Choice([s.value for s in SagaStatus], case_sensitive=False),
    help="Only sagas in this status.",
)
@click.option("--name", metavar="WORKFLOW", help="Only sagas of this workflow.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many."
)
@json_option
def list_command(db: str, status: str | None, name: str | None, limit: int, as_json: bool) -> None:
    """List sagas, newest first."""
    url = db_url(db)
    _check_readable(url)

    async def fetch() -> list[SagaSnapshot]:
        async with Engine(url, worker=False) as engine:
            return await engine.list(status=status, name=name, limit=limit)

    sagas = _run(fetch())
    if as_json:
        _dump_json([snapshot_to_dict(s, with_steps=False) for s in sagas])
        return
    if not sagas:
        filters = [f"{k} {v}" for k, v in (("status", status), ("workflow", name)) if v]
        where = f" with {' and '.join(filters)}" if filters else ""
        click.echo(f"no sagas{where} in {url}")
        return
    color = _color()
    click.echo(render_saga_table(sagas, color=color, unicode=_unicode()), color=color)


@main.command("show")
@click.argument("saga_id")
@db_option
@json_option
def show_command(saga_id: str, db: str, as_json: bool) -> None:
    """Show one saga's timeline: its status, output or error, and every journal entry."""
    url = db_url(db)
    _check_readable(url)

    async def fetch() -> SagaSnapshot:
        async with Engine(url, worker=False) as engine:
            return await engine.get(saga_id)

    try:
        snapshot = _run(fetch())
    except click.ClickException as exc:
        if isinstance(exc.__cause__, SagaNotFoundError):
            raise click.ClickException(f"no saga with id {saga_id!r} in {url}") from None
        raise
    if as_json:
        _dump_json(snapshot_to_dict(snapshot))
        return
    color = _color()
    click.echo(render_timeline(snapshot, color=color, unicode=_unicode()), color=color)


@main.command("worker")
@click.option(
    "--db",
    "db",
    required=True,
    envvar="SAGAKIT_DB",
    show_envvar=True,
    metavar="URL",
    help="The saga database: postgresql://user@host:port/db, or sqlite:///path.db.",
)
@click.option(
    "--app",
    required=True,
    metavar="MODULE:ATTRIBUTE",
    help="Where the workflows are: an Engine, a workflow, or a list of workflows.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="The most sagas this worker runs at once.",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds a saga stays owned without renewal before another worker takes it.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Seconds between looks for work (PostgreSQL also wakes workers at once by NOTIFY).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGTERM, seconds to let running steps finish before their sagas are released.",
)
def worker_command(
    db: str, app: str, concurrency: int, lease: float, poll: float, grace: float
) -> None:
    """Run and recover sagas until SIGTERM or SIGINT, then drain and exit 0.

    Start as many workers as you like, on as many machines: they share the work through the
    database, and a saga whose worker dies is taken over when its lease expires.
    """
    from datetime import timedelta

    from .worker import load_workflows, run_worker

    url = db_url(db)
    try:
        workflows = load_workflows(app)
    except SagaError as exc:
        raise click.ClickException(str(exc)) from exc
    _run(
        run_worker(
            url,
            workflows,
            concurrency=concurrency,
            lease=timedelta(seconds=lease),
            poll_interval=timedelta(seconds=poll),
            grace=timedelta(seconds=grace),
        )
    )


if __name__ == "__main__":
    main(prog_name="sagakit")
