"""``sagakit migrate``: upgrade a database's schema, deliberately, once per release.

Engines never upgrade a PostgreSQL schema on their own (``Engine(migrate=None)`` refuses an
older one, naming this command), so that a newer CLI or worker pointed at production does not
upgrade the schema under the workers still running the previous release."""

from __future__ import annotations

from typing import Protocol, cast

import click

from ..stores import open_store
from .common import db_option, db_url, run, safe_url


class _Migratable(Protocol):
    """What the SQLite and PostgreSQL stores offer this command."""

    applied_migrations: list[str]

    async def open(self) -> None: ...

    async def close(self, timeout: float | None = None) -> None: ...

    async def pending_migrations(self) -> list[tuple[str, str]]: ...


@click.command("migrate")
@db_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the migration scripts that would run, and change nothing.",
)
def migrate_command(db: str, dry_run: bool) -> None:
    """Bring the database's schema up to this sagakit's version: create it in an empty
    database, or apply the pending migrations, each printed as it is applied. Run it once per
    release, before starting the new workers; workers of the previous release keep running on
    the upgraded schema."""
    url = db_url(db)
    if url.startswith("memory:"):
        raise click.ClickException("a memory:// store keeps no schema: there is nothing to migrate")
    store = cast(_Migratable, open_store(url, migrate=True))
    where = safe_url(url)

    if dry_run:
        pending = run(store.pending_migrations())
        if not pending:
            click.echo(f"the schema of {where} is current: nothing to migrate")
            return
        click.echo(f"{len(pending)} migration(s) pending for {where} (dry run: nothing written)")
        for name, script in pending:
            click.echo(f"\n-- {name}\n{script.strip()}")
        return

    async def migrate() -> list[str]:
        await store.open()
        try:
            return list(store.applied_migrations)
        finally:
            await store.close()

    applied = run(migrate())
    for name in applied:
        click.echo(f"applied {name}")
    if applied:
        click.echo(f"the schema of {where} is now current ({len(applied)} migration(s) applied)")
    else:
        click.echo(f"the schema of {where} is current: nothing to migrate")
