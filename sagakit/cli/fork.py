"""``sagakit fork``: a new saga that reuses another's journal below ``--from-seq`` and runs the
rest on the workers' current code (``engine.admin.fork``)."""

from __future__ import annotations

import click

from ..engine import Engine
from ..errors import SagaError
from .common import check_readable, db_option, db_url, operator_name, run


@click.command("fork")
@click.argument("saga_id")
@click.option(
    "--from-seq",
    "from_seq",
    type=int,
    required=True,
    metavar="N",
    help="Reuse the saga's journal entries numbered below N (see `sagakit show`); the rest "
    "runs again, on the current code. 0 reuses nothing.",
)
@click.option("--new-id", metavar="ID", help="The new saga's id (default: a fresh one).")
@click.option("--reason", help="Why: kept in the audit entries of both sagas.")
@click.option("--by", help="Who: kept in the audit entries (default: the OS user).")
@click.option(
    "--app",
    metavar="MODULE:ATTRIBUTE",
    help="The current workflows (as for `sagakit worker`): the fork is checked against them "
    "and pinned to their version. Without it, the workers that serve the workflow take it.",
)
@db_option
def fork_command(
    saga_id: str,
    from_seq: int,
    new_id: str | None,
    reason: str | None,
    by: str | None,
    app: str | None,
    db: str,
) -> None:
    """Fork SAGA_ID: a new saga of the same workflow and input that reuses the entries below
    --from-seq and runs the rest on the current code (after a bug fix, say). The original is
    left as it is. Prints the new saga's id."""
    url = db_url(db)
    check_readable(url)
    # an action writes rows but never migrates: an older schema is refused naming `sagakit migrate`
    engine = Engine(url, worker=False, migrate=False)
    if app is not None:
        from ..worker import load_app

        try:
            engine = load_app(app).engine(url, worker=False, migrate=False)
        except SagaError as exc:
            raise click.ClickException(str(exc)) from exc

    async def fork() -> str:
        async with engine:
            made = await engine.admin.fork(
                saga_id,
                from_seq=from_seq,
                saga_id=new_id,
                reason=reason,
                by=by if by is not None else operator_name(),
            )
            return made.saga_id

    click.echo(run(fork()))
