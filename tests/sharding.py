"""Sharded store URLs for tests: several SQLite files, or several databases of the session's
PostgreSQL server, as one ``shards:`` URL (see sagakit/stores/sharded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import fresh_pg_database

#: the sharded store kinds the store contract runs on (not in conftest's STORE_KINDS: that
#: would run every store-facing test of the suite on them too)
SHARDED_KINDS = ["sharded-sqlite", "sharded-postgres"]


def sqlite_shards(folder: Path, count: int) -> list[str]:
    return [f"sqlite:///{folder}/shard{i}.db" for i in range(count)]


def postgres_shards(request: pytest.FixtureRequest, count: int) -> list[str]:
    server = request.getfixturevalue("pg_server")
    return [fresh_pg_database(server) for _ in range(count)]


def make_sharded_url(
    kind: str, folder: Path, request: pytest.FixtureRequest, count: int = 2
) -> str:
    """A ``shards:`` URL of ``count`` empty databases of this kind."""
    if kind == "sharded-sqlite":
        urls = sqlite_shards(folder, count)
    elif kind == "sharded-postgres":
        urls = postgres_shards(request, count)
    else:
        raise ValueError(f"no URL recipe for sharded store kind {kind!r}")
    return "shards:" + " ".join(urls)
