"""``sagakit check``: exit non-zero when the saga database needs an operator (a cron job, a
Kubernetes probe, a CI smoke test). The conditions are :mod:`sagakit.health`'s.

Exit codes: 0 every condition holds; 1 one or more are breached (each is named on stdout with
a few saga ids); 2 the command line is wrong; 3 the database could not be read (unreachable,
too slow for ``--timeout``, no saga database at that path, a schema to migrate).
"""

from __future__ import annotations

import asyncio
import re
import sys
from typing import Any, NoReturn

import click

from ..errors import SagaError
from ..health import HealthReport
from ..urls import redact_url
from .common import check_readable, db_option, db_url, dump_json, open_admin

#: exit code: a condition is breached
BREACHED = 1
#: exit code: the database could not be read
UNREACHABLE = 3

_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)?\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(
    ctx: click.Context | None, param: click.Parameter | None, value: str | None
) -> float | None:
    """An age from the command line: ``90s``, ``10m``, ``1h``, ``2d``, ``1w``, or seconds."""
    if value is None:
        return None
    found = _AGE.match(value.strip().lower())
    if found is None or float(found[1]) <= 0:
        raise click.BadParameter(
            f"{value!r} is not an age: write a positive number with a unit (90s, 10m, 1h, 2d, "
            "1w), or seconds",
            ctx,
            param,
        )
    return float(found[1]) * _UNIT_SECONDS[found[2] or "s"]


@click.command("check")
@db_option
@click.option(
    "--max-running-age",
    callback=parse_age,
    metavar="AGE",
    help="Breached when a RUNNING or COMPENSATING saga has written nothing for longer than "
    "this, or a PENDING one has been due that long (10m, 1h).",
)
@click.option(
    "--max-failed",
    type=click.IntRange(min=0),
    metavar="N",
    help="Breached when more than N sagas are FAILED (their rollback is incomplete).",
)
@click.option(
    "--max-parked",
    type=click.IntRange(min=0),
    metavar="N",
    help="Breached when more than N sagas are PARKED (waiting for an operator).",
)
@click.option(
    "--max-stranded",
    type=click.IntRange(min=0),
    metavar="N",
    help="Breached when more than N sagas have a workflow version no live worker serves.",
)
@click.option(
    "--max-queue-age",
    callback=parse_age,
    metavar="AGE",
    help="Breached when a saga has waited QUEUED (and due) for longer than this.",
)
@click.option(
    "--examples",
    type=click.IntRange(min=0, max=50),
    default=3,
    show_default=True,
    help="Saga ids shown per breached condition.",
)
@click.option(
    "--timeout",
    callback=parse_age,
    default="30s",
    show_default=True,
    metavar="AGE",
    help="Give up (exit 3) when the database has not answered by then.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_command(
    db: str,
    max_running_age: float | None,
    max_failed: int | None,
    max_parked: int | None,
    max_stranded: int | None,
    max_queue_age: float | None,
    examples: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Check that no saga needs an operator; exit 1 naming each breached condition.

    With no condition given: --max-running-age 10m --max-failed 0 --max-stranded 0. Given
    some, only those are checked. Exit codes: 0 all hold, 1 breached, 2 usage error, 3 the
    database could not be read.
    """
    thresholds: dict[str, Any] = {
        "max_running_age": max_running_age,
        "max_failed": max_failed,
        "max_parked": max_parked,
        "max_stranded": max_stranded,
        "max_queue_age": max_queue_age,
    }
    if all(value is None for value in thresholds.values()):
        thresholds = {}  # the defaults of engine.admin.health()
    url = db_url(db)

    async def report() -> HealthReport:
        async with open_admin(url, read_only=True) as admin:
            return await admin.health(examples=examples, **thresholds)

    try:
        check_readable(url)
        found = asyncio.run(asyncio.wait_for(report(), timeout))
    except (SagaError, click.ClickException, OSError, TimeoutError) as exc:
        _unreachable(url, exc, timeout, as_json)
    if as_json:
        dump_json({"db": redact_url(url), **found.to_json()})
    else:
        if found.ok:
            click.echo(f"{found.summary()} in {redact_url(url)}")
        else:
            count = len(found.breached)
            click.echo(
                f"{count} of {len(found.conditions)} conditions breached in {redact_url(url)}:"
            )
        for condition in found.conditions:
            click.echo(f"  {condition.describe()}")
    sys.exit(0 if found.ok else BREACHED)


def _unreachable(url: str, exc: BaseException, timeout: float, as_json: bool) -> NoReturn:
    if isinstance(exc, TimeoutError):
        reason = f"no answer within {timeout:g}s (--timeout)"
    elif isinstance(exc, click.ClickException):
        reason = exc.format_message()
    else:
        reason = str(exc) or type(exc).__name__
    message = f"cannot check {redact_url(url)}: {reason}"
    if as_json:
        dump_json({"db": redact_url(url), "ok": False, "error": message})
    click.echo(f"sagakit check: {message}", err=True)
    sys.exit(UNREACHABLE)
