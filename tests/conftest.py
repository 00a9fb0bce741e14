"""Shared fixtures: every store-facing test runs once per store kind.

To add a store kind, append it to ``STORE_KINDS`` and teach ``make_store_url`` how to build its
URL. PostgreSQL tests run on one throwaway server per session (started from Debian's package by
tests/pgserver.py), with a fresh database per test.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from sagakit import Engine, RetryPolicy, clear_terminal_errors

from .brokers import NatsServer, RabbitServer
from .pgserver import PgServer

STORE_KINDS = ["memory", "sqlite", "postgres"]

#: the engine settings tests use: short enough to recover fast, long enough to be renewed
TEST_LEASE = timedelta(seconds=2)
TEST_POLL = timedelta(milliseconds=50)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the whole session (fsync off: tests, not benchmarks)."""
    with PgServer(durable=False) as server:
        yield server


@pytest.fixture(scope="session")
def rabbit_server() -> Iterator[RabbitServer]:
    """One throwaway RabbitMQ node for the whole session (about 6 s to start): isolate by queue."""
    with RabbitServer() as server:
        yield server


@pytest.fixture(scope="session")
def rabbit_url(rabbit_server: RabbitServer) -> str:
    """The AMQP URL of the session's RabbitMQ node (guest/guest on loopback)."""
    return rabbit_server.url


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One throwaway nats-server with JetStream for the whole session: isolate by subject."""
    with NatsServer() as server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    """The URL of the session's nats-server (JetStream on, loopback)."""
    return nats_server.url


def fresh_pg_database(server: PgServer) -> str:
    """A new empty database on the session's server; its URL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(server.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            f"CREATE DATABASE {name}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return f"postgresql://postgres@127.0.0.1:{server.port}/{name}"


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """An empty PostgreSQL database for this test."""
    return fresh_pg_database(pg_server)


async def empty_pg_database(url: str) -> None:
    """Delete every row of every table of this database, keeping its schema: a fresh store for
    each example of a hypothesis test on one database (CREATE DATABASE per example would cost
    a subprocess and a copy of the template each time)."""
    # sagakit's tables are in its own schema (public in a database an earlier release made)
    conn = await asyncpg.connect(url, server_settings={"search_path": "sagakit, public"})
    try:
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) FROM pg_tables "
            "WHERE schemaname = current_schema() AND tablename <> 'saga_schema_version'"
        )
        if tables:
            await conn.execute(f"TRUNCATE {', '.join(t[0] for t in tables)}")
    finally:
        await conn.close()


def make_store_url(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, *, shared: bool = False
) -> str:
    """A URL for a store of this kind, empty at the start of the test.

    ``shared=True`` gives a URL that every engine (and store) of this process opening it sees as
    the same database, for tests with several engines or a restart (file and server databases
    are shared by nature).
    """
    if kind == "memory":
        return f"memory://test-{uuid.uuid4().hex}" if shared else "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/t.db"
    if kind == "postgres":
        return fresh_pg_database(request.getfixturevalue("pg_server"))
    raise ValueError(f"no URL recipe for store kind {kind!r}")


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def store_url(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh store for this test (``memory://`` is private to the engine that opens it)."""
    return make_store_url(store_kind, tmp_path, request)


@pytest.fixture
def shared_store_url(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh store that several engines of this test open as the same database."""
    return make_store_url(store_kind, tmp_path, request, shared=True)


@pytest.fixture(params=["sqlite", "postgres"])
def process_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database that worker processes and the test process share (a file or a server:
    the memory store lives in one process)."""
    return make_store_url(request.param, tmp_path, request, shared=True)


def make_engine(url: str, **overrides: object) -> Engine:
    options: dict[str, object] = {"lease": TEST_LEASE, "poll_interval": TEST_POLL}
    options.update(overrides)
    return Engine(url, **options)  # type: ignore[arg-type]


def engine_with(url: str, *workflows: Any, **options: Any) -> Engine:
    """An engine (not yet opened) with these workflows registered."""
    engine = make_engine(url, **options)
    engine.register(*workflows)
    return engine


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[Engine]:
    async with make_engine(store_url) as started:
        yield started


def fast_retry(max_attempts: int) -> RetryPolicy:
    """A retry policy that retries at once (tests must not sleep through backoffs)."""
    return RetryPolicy(max_attempts=max_attempts, initial_interval=timedelta(0))


@pytest.fixture(autouse=True)
def _reset_terminal_errors() -> Iterator[None]:
    """The terminal-error registry is process-global: leave it empty for the next test."""
    clear_terminal_errors()
    yield
    clear_terminal_errors()
