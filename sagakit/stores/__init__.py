"""Stores: where sagas, journal entries and leases are kept. The engine sees only the Store
protocol; each implementation keeps its SQL beside it."""

from __future__ import annotations

from ..errors import StoreError
from .base import Store
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = ["MemoryStore", "SqliteStore", "Store", "open_store"]


def open_store(url: str) -> Store:
    """The store for a URL: ``sqlite:///file.db``, ``postgresql://user@host/db``, ``memory://``
    (or ``memory://name``)."""
    if url.startswith("sqlite:"):
        return SqliteStore(url)
    if url.startswith("memory:"):
        return MemoryStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    raise StoreError(f"unknown store URL {url!r}: use sqlite:///path.db, or memory:// for tests")
