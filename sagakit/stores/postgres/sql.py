"""The PostgreSQL store's statements (queries.sql) and schema migrations, loaded once."""

from __future__ import annotations

from ..schema import migration_names
from ..sqlfile import load_migrations, load_queries

Q = load_queries(__package__ or "sagakit.stores.postgres", "queries.sql")
MIGRATIONS = load_migrations("sagakit.stores.postgres.migrations")
MIGRATION_NAMES = migration_names("sagakit.stores.postgres.migrations")
SCHEMA_VERSION = MIGRATIONS[-1][0]
