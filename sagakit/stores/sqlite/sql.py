"""The SQLite store's statements (queries.sql), loaded once."""

from __future__ import annotations

from ..sqlfile import load_queries

Q = load_queries(__package__ or "sagakit.stores.sqlite", "queries.sql")
