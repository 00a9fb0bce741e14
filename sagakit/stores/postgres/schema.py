"""The PostgreSQL schema sagakit's tables live in, and bringing it up to date.

The tables live in a schema of their own (``sagakit`` unless the URL's ``?schema=name`` or
``schema=`` names another); the store sets every connection's ``search_path`` to it. What an
open does with an empty or older schema is decided by :mod:`sagakit.stores.schema`; here the
migrations are applied: under the schema's advisory lock (the two-key form, which never meets
an application's single-key locks nor another sagakit schema's), consecutive scripts in one
transaction, a ``-- sagakit: no-transaction`` script (``CREATE INDEX CONCURRENTLY``) alone,
statement by statement, rebuilding an index an interrupted concurrent build left INVALID.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from ...errors import StoreError
from ..schema import runs_outside_transaction, should_migrate, split_statements
from .sql import MIGRATION_NAMES, MIGRATIONS, SCHEMA_VERSION, Q

log = logging.getLogger("sagakit.store.postgres")

#: the schema sagakit's tables live in unless the URL or ``schema=`` names another
DEFAULT_SCHEMA = "sagakit"
#: where releases before the schema of its own made the tables
LEGACY_SCHEMA = "public"
#: lower case so that the name means the same quoted and unquoted; short enough that the
#: NOTIFY channel named after it fits PostgreSQL's 63 bytes
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
#: how long one migration script may run (an index built on a large table takes minutes)
MIGRATION_TIMEOUT = 3600.0


def check_schema(name: str) -> str:
    """``name`` if it is a schema name sagakit takes, else StoreError saying the rule."""
    if not _SCHEMA_NAME.fullmatch(name) or name.startswith("pg_"):
        raise StoreError(
            f"invalid PostgreSQL schema name {name!r}: use a plain identifier of lower-case "
            "letters, digits and underscores, starting with a letter or underscore, at most "
            "48 characters, not starting with pg_ (e.g. sagakit, tenant_a)"
        )
    return name


def split_schema(url: str) -> tuple[str, str | None]:
    """The URL without its ``schema`` query parameter, and that parameter (None without)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    if not schemas:
        return url, None
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return urlunsplit(parts._replace(query=rest)), schemas[-1]


def schema_lock_key(schema: str) -> int:
    """A stable int4 from the schema's name: the second key of its advisory locks."""
    unsigned = zlib.crc32(schema.encode())
    return unsigned - 2**32 if unsigned >= 2**31 else unsigned


async def schema_version(conn: asyncpg.Connection) -> int:
    """The database's schema version, 0 without sagakit's tables (reads only)."""
    if not await conn.fetchval(Q["schema_version_exists"]):
        return 0
    return int(await conn.fetchval(Q["schema_version"]))


async def migrate_schema(
    conn: asyncpg.Connection,
    schema: str,
    *,
    migrate: bool | None,
    read_only: bool,
    where: str,
    command: str,
) -> list[str]:
    """Create or upgrade the schema on ``conn`` as the policy allows; the names of the scripts
    applied. ``where`` and ``command`` name the database and its ``sagakit migrate`` line in
    refusals (StoreError)."""

    def decide(current: int) -> bool:
        return should_migrate(
            current,
            SCHEMA_VERSION,
            migrate=migrate,
            read_only=read_only,
            embedded=False,
            where=where,
            command=command,
        )

    # a database with a current schema is opened without a lock or a write
    current = await schema_version(conn)
    if current == SCHEMA_VERSION:
        return []
    if read_only or migrate is False or current > SCHEMA_VERSION:
        decide(current)  # refuses, or accepts the next release's schema as it is
        return []
    # the advisory lock serialises processes that create or migrate at once; the version is
    # read again under it, as another may have migrated (or be halfway) meanwhile
    key = schema_lock_key(schema)
    await _lock_schema(conn, key, where)
    try:
        # quoted by the name's rule (check_schema); identifiers cannot be parameters
        await conn.execute(Q["create_schema"].replace("$schema", f'"{schema}"'))
        await conn.execute(Q["schema_version_table"])
        current = await schema_version(conn)
        applied: list[str] = []
        if decide(current):
            pending = [(v, script) for v, script in MIGRATIONS if v > current]
            for group in transaction_groups(pending):
                await _apply(conn, group)
                for version, _ in group:
                    applied.append(MIGRATION_NAMES[version])
                    log.info("applied migration %s", MIGRATION_NAMES[version])
        return applied
    finally:
        await conn.execute(Q["unlock_schema"], key)


async def _lock_schema(conn: asyncpg.Connection, key: int, where: str) -> None:
    # Polled, not waited for in pg_advisory_lock: a waiting statement holds a snapshot, and a
    # CREATE INDEX CONCURRENTLY run by the lock's holder waits for every such snapshot to go,
    # a deadlock. Between two tries this connection holds nothing.
    loop = asyncio.get_running_loop()
    gives_up = loop.time() + MIGRATION_TIMEOUT
    delay = 0.01
    while not await conn.fetchval(Q["try_lock_schema"], key):
        if loop.time() > gives_up:
            raise StoreError(
                f"another process has been migrating {where} for over "
                f"{MIGRATION_TIMEOUT:.0f}s (it holds the schema's advisory lock); look for a "
                "stuck `sagakit migrate`"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def _apply(conn: asyncpg.Connection, group: list[tuple[int, str]]) -> None:
    if len(group) == 1 and runs_outside_transaction(group[0][1]):
        # CREATE INDEX CONCURRENTLY cannot run in a transaction: each statement runs on its
        # own and is idempotent (IF NOT EXISTS), so a crash before the version row is written
        # only makes the next migrate run the script again
        version, script = group[0]
        for statement in split_statements(script):
            await _drop_invalid_index(conn, statement)
            await conn.execute(statement, timeout=MIGRATION_TIMEOUT)
        await conn.execute(Q["set_schema_version"], version)
        return
    async with conn.transaction():
        for version, script in group:
            await conn.execute(script, timeout=MIGRATION_TIMEOUT)
            await conn.execute(Q["set_schema_version"], version)


_CONCURRENT_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE
)


async def _drop_invalid_index(conn: asyncpg.Connection, statement: str) -> None:
    """Drop the index ``statement`` builds CONCURRENTLY if an interrupted build left it
    INVALID: ``IF NOT EXISTS`` would take it for built, and it would never be used (nor, for
    a unique index, stop being enforced on writes)."""
    found = _CONCURRENT_INDEX.search(statement)
    if found is None:
        return
    name = found.group(1)
    if await conn.fetchval(Q["index_is_invalid"], name):
        log.warning(
            "dropping index %s, left invalid by an interrupted build; building it again", name
        )
        # the name comes from our own script, matched as \w+: safe to quote
        drop = Q["drop_index"].replace("$index", f'"{name}"')
        await conn.execute(drop, timeout=MIGRATION_TIMEOUT)


def transaction_groups(pending: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """The pending migrations in the transactions they run in: consecutive scripts together
    (nobody sees the schema halfway through them), a no-transaction script on its own."""
    groups: list[list[tuple[int, str]]] = []
    for version, script in pending:
        alone = runs_outside_transaction(script)
        if alone or not groups or runs_outside_transaction(groups[-1][-1][1]):
            groups.append([(version, script)])
        else:
            groups[-1].append((version, script))
    return groups
