"""The commands that run something until told to stop: ``demo``, ``worker`` and
``dashboard``."""

from __future__ import annotations

from datetime import timedelta

import click

from ..errors import SagaError
from .common import check_readable, db_option, db_url, run, use_color, use_unicode


@click.command()
@click.option("--keep", is_flag=True, help="Keep the temporary folder (its path is printed).")
@click.pass_context
def demo(ctx: click.Context, keep: bool) -> None:
    """Run a checkout saga three ways: it completes, it rolls back, and it is recovered after
    its process is killed. Takes a few seconds; uses a temporary folder."""
    from ..demo import run_demo  # the example's models and steps load only when asked for

    ctx.exit(run_demo(keep=keep, color=use_color(), unicode=use_unicode()))


@click.command("worker")
@click.option(
    "--db",
    "db",
    required=True,
    envvar="SAGAKIT_DB",
    show_envvar=True,
    metavar="URL",
    help="The saga database: postgresql://user@host:port/db, sqlite:///path.db, or "
    "'shards:URL URL...' (several databases).",
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
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="After the grace period, the most seconds to spend releasing sagas and closing the "
    "database (it may be unreachable); what is left expires with its lease.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    metavar="PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port, printed). "
    "Needs sagakit[metrics].",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="The address the metrics listen on (0.0.0.0 for a Prometheus on another machine).",
)
def worker_command(
    db: str,
    app: str,
    concurrency: int,
    lease: float,
    poll: float,
    grace: float,
    shutdown_timeout: float,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run and recover sagas until SIGTERM or SIGINT, then drain and exit 0.

    Start as many workers as you like, on as many machines: they share the work through the
    database, and a saga whose worker dies is taken over when its lease expires.
    """
    from ..worker import load_app, run_worker

    url = db_url(db)
    try:
        workflows = load_app(app)
    except SagaError as exc:
        raise click.ClickException(str(exc)) from exc
    run(
        run_worker(
            url,
            workflows,
            concurrency=concurrency,
            lease=timedelta(seconds=lease),
            poll_interval=timedelta(seconds=poll),
            grace=timedelta(seconds=grace),
            shutdown_timeout=timedelta(seconds=shutdown_timeout),
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
    )


@click.command("dashboard")
@db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on; any but a loopback one needs --read-token.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8700,
    show_default=True,
    help="The port (0: any free port, printed at start).",
)
@click.option(
    "--token",
    envvar="SAGAKIT_DASHBOARD_TOKEN",
    show_envvar=True,
    metavar="TOKEN",
    help="The token that the page's admin actions require; without one the page is read-only.",
)
@click.option(
    "--read-token",
    envvar="SAGAKIT_DASHBOARD_READ_TOKEN",
    show_envvar=True,
    metavar="TOKEN",
    help="The token reading needs (a bearer header, or the login form); required off loopback.",
)
def dashboard_command(
    db: str, host: str, port: int, token: str | None, read_token: str | None
) -> None:
    """Serve a web page on the sagas (with uvicorn): counts by status and alerts, a
    filterable list, a timeline chart per saga, and the admin actions as buttons (with
    --token). Runs until Ctrl-C or SIGTERM."""
    url = db_url(db)
    check_readable(url)
    from ..dashboard import serve_dashboard  # its web server loads only when asked for

    try:
        serve_dashboard(url, host=host, port=port, token=token, read_token=read_token)
    except SagaError as exc:
        raise click.ClickException(str(exc)) from exc
