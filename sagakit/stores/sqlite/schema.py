"""The SQLite file's schema: its version, the migrations it lacks, and applying them.

What an open does with an empty or older file is decided by :mod:`sagakit.stores.schema`; here
the migrations are applied, all of them in one ``BEGIN IMMEDIATE`` transaction on the writer's
connection, so that another process opening the file at once waits for them and never sees the
schema halfway.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from ..schema import migration_names, should_migrate, split_statements
from ..sqlfile import load_migrations
from .sql import Q

MIGRATIONS = load_migrations("sagakit.stores.sqlite.migrations")
MIGRATION_NAMES = migration_names("sagakit.stores.sqlite.migrations")
SCHEMA_VERSION = MIGRATIONS[-1][0]


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's schema version, 0 for a file without sagakit's tables (reads only)."""
    if conn.execute(Q["schema_version_exists"]).fetchone() is None:
        return 0
    return int(conn.execute(Q["schema_version"]).fetchone()[0] or 0)


def pending_scripts(path: str) -> list[tuple[str, str]]:
    """The migration scripts (file name, text) the file at ``path`` lacks, read without
    writing; every script for a file that does not exist yet."""
    current = 0
    if Path(path).is_file():
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        try:
            current = schema_version(conn)
        finally:
            conn.close()
    return [(MIGRATION_NAMES[v], script) for v, script in MIGRATIONS if v > current]


def migrate_schema(
    conn: sqlite3.Connection,
    *,
    migrate: bool | None,
    read_only: bool,
    where: str,
    command: str,
    begin: Callable[[sqlite3.Connection], None],
) -> list[str] | None:
    """Create or upgrade the schema on ``conn`` as the policy allows; the names of the scripts
    applied, or None when the schema was current (nothing locked or written). ``begin`` opens
    the ``BEGIN IMMEDIATE`` transaction (retrying while another process writes); ``where`` and
    ``command`` name the file and its ``sagakit migrate`` line in refusals (StoreError)."""

    def decide(current: int) -> bool:
        return should_migrate(
            current,
            SCHEMA_VERSION,
            migrate=migrate,
            read_only=read_only,
            embedded=True,
            where=where,
            command=command,
        )

    # a file with a current schema is opened without taking the write lock or writing
    if not decide(schema_version(conn)):
        return None
    begin(conn)
    try:
        conn.execute(Q["schema_version_table"])
        # another process may have migrated it while we waited for the lock
        current = schema_version(conn)
        applied = []
        if decide(current):
            for version, script in MIGRATIONS:
                if version > current:
                    for statement in split_statements(script):
                        conn.execute(statement)
                    conn.execute(Q["set_schema_version"], {"version": version})
                    applied.append(MIGRATION_NAMES[version])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied
