"""Stores: where sagas, journal entries and leases are kept. The engine sees only the Store
protocol; each implementation keeps its SQL beside it."""

from __future__ import annotations

from ..errors import StoreError
from .base import Store
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = ["MemoryStore", "SqliteStore", "Store", "open_store"]


def open_store(url: str) -> Store:
    """The store for a URL: ``sqlite:///file.db``, ``memory://`` (or ``memory://name``)."""
    if url.startswith("sqlite:"):
        return SqliteStore(url)
    if url.startswith("memory:"):
        return MemoryStore(url)
    if url.startswith(("postgresql:", "postgres:")):
        raise StoreError(
            "the PostgreSQL store is not available in this version of sagakit yet; "
            "use sqlite:///sagakit.db or memory://"
        )
    raise StoreError(f"unknown store URL {url!r}: use sqlite:///path.db, or memory:// for tests")
