"""What the ``sagakit`` commands share: the ``--db`` URL and the check that a SQLite file is a
saga database, opening the admin API, options, and how output reaches the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from ..admin import SagaAdmin
from ..engine import Engine
from ..errors import SagaError, StoreError
from ..stores import open_store
from ..stores.base import SagaStatus
from ..stores.sqlite.store import path_from_url
from ..urls import redact_url

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


def safe_url(url: str) -> str:
    """``url`` fit for the screen: a password in it becomes ``***`` (see
    :func:`sagakit.urls.redact_url`)."""
    return redact_url(url)


def check_readable(url: str) -> None:
    """Refuse a SQLite file that does not exist or holds no sagas, before the engine opens it:
    opening would create the file (or add sagakit's tables to someone else's database), and a
    mistyped ``--db`` must never leave an empty database behind. Each SQLite file of a
    ``shards:`` URL is checked the same way."""
    if url.startswith("shards:"):
        for shard in url.removeprefix("shards:").split():
            check_readable(shard)
        return
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


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; a SagaError becomes click's one-line error and exit code 1."""
    try:
        return asyncio.run(coro)
    except SagaError as exc:
        raise click.ClickException(str(exc)) from exc


@contextlib.asynccontextmanager
async def open_admin(url: str, *, read_only: bool = False) -> AsyncIterator[SagaAdmin]:
    """The admin API on ``url``, through an engine that runs no sagas itself: the commands look
    at and steer sagas, the workers run them. None of them migrates (an older schema is refused
    naming ``sagakit migrate``); ``read_only`` (list, show, stats) writes nothing at all."""
    store = open_store(url, migrate=False, read_only=read_only)
    async with Engine(store=store, worker=False) as engine:
        yield engine.admin


def use_color() -> bool:
    """Whether stdout gets ANSI colours: a terminal, and NO_COLOR unset."""
    # https://no-color.org: any value of NO_COLOR turns colour off
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def use_unicode() -> bool:
    """Whether stdout's encoding can print the timeline's symbols (✓, ✗, …)."""
    try:
        _SYMBOLS.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def dump_json(data: Any) -> None:
    """Print ``data`` as indented JSON (datetimes and other odd values as strings)."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def operator_name() -> str | None:
    """The OS user running the command, the default ``--by`` of the actions (``None`` where
    the OS knows no name, in a bare container say)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_moment(
    ctx: click.Context | None, param: click.Parameter | None, value: str | None
) -> datetime | None:
    """A point in time from the command line: ISO 8601 (``2025-01-31``, ``2025-01-31T12:00``,
    with an offset or without, then UTC), or an age (``90s``, ``30m``, ``1h``, ``2d``, ``1w``:
    that long ago)."""
    if value is None:
        return None
    text = value.strip()
    relative = _RELATIVE.match(text.lower())
    if relative:
        age = float(relative[1]) * _UNIT_SECONDS[relative[2]]
        return datetime.now(UTC) - timedelta(seconds=age)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO date/time (2025-01-31, 2025-01-31T12:00) nor an age "
            "(90s, 30m, 1h, 2d, 1w)",
            ctx,
            param,
        ) from None
    # the commands print times in UTC, so a time typed without an offset means UTC too
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def iso_utc(moment: datetime) -> str:
    """``moment`` in ISO 8601 UTC, ``2025-01-31T12:00:00Z``, exact (an age such as ``1h``
    gives a time with microseconds), so that a command line printed with it means the same."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def db_option(fn: F) -> F:
    """The ``--db`` option shared by the commands that open a database."""
    return click.option(
        "--db",
        "db",
        default=DEFAULT_DB,
        show_default=True,
        envvar="SAGAKIT_DB",
        show_envvar=True,
        metavar="URL",
        help="The saga database: sqlite:///path.db (or a bare path to a SQLite file), "
        "postgresql://user@host:port/db, or 'shards:URL URL...' (several databases).",
    )(fn)


def json_option(fn: F) -> F:
    """The ``--json`` flag: machine-readable output instead of text."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


def filter_options(fn: F) -> F:
    """``--status``, ``--name``, ``--created-after`` and ``--created-before``: which sagas a
    listing shows, or an action applies to."""
    options = [
        click.option(
            "--status",
            type=click.Choice([s.value for s in SagaStatus], case_sensitive=False),
            help="Only sagas in this status (any case).",
        ),
        click.option("--name", metavar="WORKFLOW", help="Only sagas of this workflow."),
        click.option(
            "--created-after",
            "--since",
            "created_after",
            callback=parse_moment,
            metavar="TIME",
            help="Only sagas created at or after this time: ISO (2025-01-31T12:00, UTC unless "
            "an offset is given) or an age (30m, 1h, 2d).",
        ),
        click.option(
            "--created-before",
            "--until",
            "created_before",
            callback=parse_moment,
            metavar="TIME",
            help="Only sagas created before this time (same forms as --created-after).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
