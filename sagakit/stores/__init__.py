"""Stores: where sagas, journal entries and leases are kept. The engine sees only the Store
protocol; each implementation keeps its SQL beside it."""

from __future__ import annotations

from ..errors import StoreError
from ..urls import redact_url
from .base import Store
from .memory import MemoryStore
from .sharded import ShardedStore, is_sharded_url
from .sqlite import SqliteStore

__all__ = ["MemoryStore", "ShardedStore", "SqliteStore", "Store", "open_store"]


def open_store(
    url: str, *, migrate: bool | None = None, read_only: bool = False, schema: str | None = None
) -> Store:
    """The store for a URL: ``sqlite:///file.db``, ``postgresql://user@host/db``, ``memory://``
    (or ``memory://name``), or ``shards:URL URL...`` (a :class:`ShardedStore` over several
    databases of one kind, the URLs separated by spaces: see docs/sharding.md).

    ``migrate`` chooses what opening does with an empty or older schema, ``read_only`` opens
    without writing anything (see :mod:`sagakit.stores.schema`; the memory store has no
    schema and ignores both). ``schema`` names the PostgreSQL schema of sagakit's tables
    (``sagakit`` by default; also ``?schema=name`` in the URL); other stores refuse it."""
    if is_sharded_url(url):
        return ShardedStore(url, migrate=migrate, read_only=read_only, schema=schema)
    if schema is not None and not url.startswith(("postgresql://", "postgres://")):
        raise StoreError(
            f"schema={schema!r} is for PostgreSQL stores; {redact_url(url)!r} is not one: "
            "leave it out"
        )
    if url.startswith("sqlite:"):
        return SqliteStore(url, migrate=migrate, read_only=read_only)
    if url.startswith("memory:"):
        return MemoryStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        # asyncpg is the optional extra sagakit[postgres]: a SQLite user need not install it
        try:
            from .postgres import PostgresStore
        except ModuleNotFoundError as exc:
            if exc.name != "asyncpg":
                raise
            raise StoreError(
                "a postgresql:// URL needs the PostgreSQL store, whose driver asyncpg is not "
                "installed: pip install 'sagakit[postgres]'"
            ) from exc

        return PostgresStore(url, migrate=migrate, read_only=read_only, schema=schema)
    raise StoreError(
        f"unknown store URL {redact_url(url)!r}: use sqlite:///path.db, "
        "postgresql://user@host/db, 'shards:postgresql://host/db1 postgresql://host/db2', "
        "or memory:// for tests"
    )
