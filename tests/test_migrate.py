"""Deliberate schema upgrades: what an engine does on open with an empty, older or current
schema (``Engine(migrate=...)``), ``sagakit migrate [--dry-run]``, and readers that never
write (a PostgreSQL role with only SELECT), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from sagakit import Engine, SagaContext, StoreError, saga_workflow
from sagakit.dashboard.server import Dashboard
from sagakit.stores import open_store
from sagakit.stores.postgres.sql import MIGRATIONS as PG_MIGRATIONS
from sagakit.stores.postgres.sql import Q as PG_Q
from sagakit.stores.schema import runs_outside_transaction, split_statements
from sagakit.stores.sqlite.store import MIGRATION_NAMES, _split_statements
from sagakit.stores.sqlite.store import MIGRATIONS as SQLITE_MIGRATIONS
from sagakit.stores.sqlite.store import Q as SQLITE_Q

from .conftest import make_engine, make_store_url
from .test_cli import assert_clean_error, sagakit

LATEST = SQLITE_MIGRATIONS[-1][0]
#: where the tests' own connections find sagakit's tables: its schema, or public where a test
#: built an earlier release's tables (there, CREATE lands in public: sagakit does not exist)
TABLES = {"search_path": "sagakit, public"}
assert PG_MIGRATIONS[-1][0] == LATEST


@saga_workflow("Hello")
async def hello(saga: SagaContext, inp: Any) -> str:
    return "hello"


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database (a SQLite file not created yet)."""
    return make_store_url(kind, tmp_path, request, shared=True)


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


async def build_old_schema(url: str, version: int = LATEST - 1) -> None:
    """The schema as the sagakit of ``version`` left it (no sagas)."""
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(_sqlite_path(url))
        conn.execute("CREATE TABLE saga_schema_version (version INTEGER NOT NULL)")
        for number, script in SQLITE_MIGRATIONS:
            if number <= version:
                for statement in _split_statements(script):
                    conn.execute(statement)
                conn.execute("INSERT INTO saga_schema_version VALUES (?)", (number,))
        conn.commit()
        conn.close()
        return
    pg = await asyncpg.connect(url, server_settings=TABLES)
    try:
        await pg.execute("CREATE TABLE saga_schema_version (version integer NOT NULL)")
        for number, script in PG_MIGRATIONS:
            if number <= version:
                # a CONCURRENTLY script (0007) runs statement by statement, as the runner does
                parts = split_statements(script) if runs_outside_transaction(script) else [script]
                for part in parts:
                    await pg.execute(part)
                await pg.execute("INSERT INTO saga_schema_version VALUES ($1)", number)
    finally:
        await pg.close()


async def schema_version(url: str) -> int | None:
    """The database's schema version; None when it has no version table."""
    if url.startswith("sqlite:"):
        path = _sqlite_path(url)
        if not path.exists():
            return None
        conn = sqlite3.connect(path)
        try:
            if not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'saga_schema_version'"
            ).fetchone():
                return None
            found: int = conn.execute("SELECT max(version) FROM saga_schema_version").fetchone()[0]
            return found
        finally:
            conn.close()
    pg = await asyncpg.connect(url, server_settings=TABLES)
    try:
        if not await pg.fetchval("SELECT to_regclass('saga_schema_version') IS NOT NULL"):
            return None
        value: int = await pg.fetchval("SELECT max(version) FROM saga_schema_version")
        return value
    finally:
        await pg.close()


async def run_one(engine: Engine, saga_id: str) -> None:
    engine.register(hello)
    assert await engine.run(hello, None, saga_id) == "hello"


# -- Engine(migrate=None), the default ----------------------------------------------------


async def test_an_engine_creates_the_schema_in_an_empty_database(url: str) -> None:
    async with make_engine(url) as engine:
        await run_one(engine, "first")
    assert await schema_version(url) == LATEST


async def test_an_older_sqlite_file_is_upgraded_by_default(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    await build_old_schema(url)
    async with make_engine(url) as engine:
        await run_one(engine, "after-upgrade")
    assert await schema_version(url) == LATEST


async def test_an_older_postgres_schema_is_refused_until_sagakit_migrate_upgrades_it(
    pg_url: str,
) -> None:
    await build_old_schema(pg_url)
    with pytest.raises(StoreError) as refused:
        async with make_engine(pg_url):
            pass
    assert f"sagakit migrate --db {pg_url}" in str(refused.value)
    assert f"version {LATEST - 1}, older" in str(refused.value)
    assert await schema_version(pg_url) == LATEST - 1  # nothing written

    result = sagakit("migrate", "--db", pg_url)
    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if line.startswith("applied")]
    assert applied == [f"applied {MIGRATION_NAMES[LATEST]}"]
    assert await schema_version(pg_url) == LATEST

    async with make_engine(pg_url) as engine:
        await run_one(engine, "after-migrate")
    again = sagakit("migrate", "--db", pg_url)
    assert again.returncode == 0 and "nothing to migrate" in again.stdout


async def test_migrate_true_upgrades_an_older_postgres_schema(pg_url: str) -> None:
    await build_old_schema(pg_url, version=1)
    async with make_engine(pg_url, migrate=True) as engine:
        await run_one(engine, "upgraded-from-1")
    assert await schema_version(pg_url) == LATEST


# -- Engine(migrate=False) -----------------------------------------------------------------


async def test_migrate_false_refuses_an_empty_database_and_writes_nothing(url: str) -> None:
    with pytest.raises(StoreError, match="sagakit migrate --db"):
        async with make_engine(url, migrate=False):
            pass
    assert await schema_version(url) is None
    if url.startswith("sqlite:"):
        assert not _sqlite_path(url).exists()  # not even an empty file left behind


async def test_migrate_false_refuses_an_older_schema(url: str) -> None:
    await build_old_schema(url)
    with pytest.raises(StoreError, match="migrate=False: run `sagakit migrate --db"):
        async with make_engine(url, migrate=False):
            pass
    assert await schema_version(url) == LATEST - 1


async def test_migrate_false_opens_a_current_schema(url: str) -> None:
    async with make_engine(url) as engine:
        await run_one(engine, "created")
    async with make_engine(url, migrate=False) as engine:
        await run_one(engine, "second")


# -- sagakit migrate ------------------------------------------------------------------------


async def test_dry_run_prints_the_pending_scripts_and_writes_nothing(url: str) -> None:
    await build_old_schema(url, version=LATEST - 2)
    result = sagakit("migrate", "--db", url, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "2 migration(s) pending" in result.stdout
    names = [line for line in result.stdout.splitlines() if line.startswith("-- 00")]
    assert names == [f"-- {MIGRATION_NAMES[LATEST - 1]}", f"-- {MIGRATION_NAMES[LATEST]}"]
    assert "saga_outbox" in result.stdout  # the scripts' text itself (0008's, 0009's)
    assert "saga_journal_runs" in result.stdout
    assert await schema_version(url) == LATEST - 2

    result = sagakit("migrate", "--db", url)
    assert result.returncode == 0, result.stderr
    expected = "".join(f"applied {MIGRATION_NAMES[v]}\n" for v in (LATEST - 1, LATEST))
    assert expected in result.stdout
    assert await schema_version(url) == LATEST
    current = sagakit("migrate", "--db", url, "--dry-run")
    assert "is current: nothing to migrate" in current.stdout


def test_dry_run_on_a_missing_sqlite_file_lists_every_script_and_creates_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new.db"
    result = sagakit("migrate", "--db", str(path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"{LATEST} migration(s) pending" in result.stdout
    assert not path.exists()
    created = sagakit("migrate", "--db", str(path))
    assert created.returncode == 0, created.stderr
    assert created.stdout.count("applied ") == LATEST


# -- readers never write --------------------------------------------------------------------


async def _reader_role(url: str) -> str:
    """A role that may only read sagakit's tables; the URL that connects as it."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    database = url.rsplit("/", 1)[1]
    pg = await asyncpg.connect(url, server_settings=TABLES)
    try:
        await pg.execute(f"CREATE ROLE {role} LOGIN")
        await pg.execute(f"GRANT CONNECT ON DATABASE {database} TO {role}")
        await pg.execute(f"GRANT USAGE ON SCHEMA sagakit TO {role}")
        await pg.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA sagakit TO {role}")
    finally:
        await pg.close()
    return url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)


async def _row_counts(url: str) -> dict[str, int]:
    pg = await asyncpg.connect(url, server_settings=TABLES)
    try:
        tables = await pg.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'sagakit' ORDER BY 1"
        )
        return {t[0]: await pg.fetchval(f"SELECT count(*) FROM {t[0]}") for t in tables}
    finally:
        await pg.close()


async def test_readers_work_with_a_read_only_postgres_role_and_write_nothing(
    pg_url: str,
) -> None:
    async with make_engine(pg_url) as engine:
        await run_one(engine, "done-1")
    reader = await _reader_role(pg_url)
    before = await _row_counts(pg_url)

    listed = sagakit("list", "--db", reader)
    assert listed.returncode == 0, listed.stderr
    assert "done-1" in listed.stdout
    shown = sagakit("show", "done-1", "--db", reader)
    assert shown.returncode == 0, shown.stderr
    assert "COMPLETED" in shown.stdout
    stats = sagakit("stats", "--db", reader)
    assert stats.returncode == 0, stats.stderr
    assert "stranded" in stats.stdout
    exported = sagakit("export", "done-1", "--db", reader)
    assert exported.returncode == 0, exported.stderr

    dashboard = Dashboard(reader, port=0)  # no token: read-only
    await asyncio.to_thread(dashboard.start)
    await asyncio.to_thread(dashboard.stop)

    assert await _row_counts(pg_url) == before
    # the role really cannot write (so the commands above wrote nothing)
    pg = await asyncpg.connect(reader, server_settings=TABLES)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pg.execute("DELETE FROM saga_instances")
    finally:
        await pg.close()


async def test_readers_refuse_an_older_schema_with_a_sentence(url: str) -> None:
    await build_old_schema(url)
    for args in (["list"], ["stats"], ["show", "x"], ["export", "x"]):
        result = sagakit(*args, "--db", url)
        assert_clean_error(result, f"older than this sagakit's ({LATEST})", "sagakit migrate")
    assert await schema_version(url) == LATEST - 1


async def test_actions_refuse_an_older_schema_and_do_not_migrate(url: str) -> None:
    await build_old_schema(url)
    result = sagakit("cancel", "some-saga", "--reason", "test", "--db", url)
    assert_clean_error(result, "migrate=False: run `sagakit migrate --db")
    assert await schema_version(url) == LATEST - 1


async def test_a_reader_on_an_empty_postgres_database_refuses_and_creates_nothing(
    pg_url: str,
) -> None:
    result = sagakit("list", "--db", pg_url)
    assert_clean_error(result, "holds no sagakit schema")
    assert await schema_version(pg_url) is None


# -- migration 0006: the retention index, built CONCURRENTLY on PostgreSQL ------------------


def test_a_script_marked_no_transaction_is_run_on_its_own() -> None:
    pg_scripts = dict(PG_MIGRATIONS)
    assert runs_outside_transaction(pg_scripts[6])
    assert not any(runs_outside_transaction(pg_scripts[v]) for v in range(1, 6))
    assert not runs_outside_transaction("CREATE INDEX x ON t (c);\n-- sagakit: no-transaction")


async def test_the_retention_index_is_built_concurrently_on_an_upgrade(pg_url: str) -> None:
    # CREATE INDEX CONCURRENTLY fails inside a transaction block: that the upgrade succeeds
    # shows the runner honoured the script's marker
    await build_old_schema(pg_url, version=5)
    result = sagakit("migrate", "--db", pg_url)
    assert result.returncode == 0, result.stderr
    assert f"applied {MIGRATION_NAMES[6]}" in result.stdout
    pg = await asyncpg.connect(pg_url, server_settings=TABLES)
    try:
        valid = await pg.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'saga_instances_ended'::regclass"
        )
    finally:
        await pg.close()
    assert valid is True


async def test_an_index_an_interrupted_concurrent_build_left_invalid_is_built_again(
    pg_url: str,
) -> None:
    """A CREATE INDEX CONCURRENTLY that fails (here: a unique index over duplicates; in life:
    a cancelled or killed migrate) leaves an INVALID index that IF NOT EXISTS would take for
    built. The next migrate drops it and builds it again."""
    await build_old_schema(pg_url, version=6)
    script = dict(PG_MIGRATIONS)[7]
    statements = split_statements(script)
    alters = [s for s in statements if s.startswith("ALTER TABLE")]
    dedup = next(s for s in statements if "saga_instances_dedup" in s)
    pg = await asyncpg.connect(pg_url, server_settings=TABLES)
    try:
        for statement in alters:  # the part of the interrupted run that got through
            await pg.execute(statement)
        for saga_id in ("one", "two"):
            await pg.execute(
                "INSERT INTO saga_instances (saga_id, name, status, input, created_at, "
                "updated_at, queue, dedup_id) VALUES ($1, 'Hello', 'QUEUED', 'null', 0, 0, "
                "'q', 'same')",
                saga_id,
            )
        with pytest.raises(asyncpg.UniqueViolationError):
            await pg.execute(dedup)
        invalid = "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)"
        assert await pg.fetchval(invalid, "saga_instances_dedup") is True
        await pg.execute("DELETE FROM saga_instances WHERE saga_id = 'two'")
    finally:
        await pg.close()
    result = sagakit("migrate", "--db", pg_url)
    assert result.returncode == 0, result.stderr
    pg = await asyncpg.connect(pg_url, server_settings=TABLES)
    try:
        assert await pg.fetchval(invalid, "saga_instances_dedup") is False
        # and it is enforced: a second saga holding the id is refused
        with pytest.raises(asyncpg.UniqueViolationError):
            await pg.execute(
                "INSERT INTO saga_instances (saga_id, name, status, input, created_at, "
                "updated_at, queue, dedup_id) VALUES ('three', 'Hello', 'QUEUED', 'null', 0, 0, "
                "'q', 'same')"
            )
    finally:
        await pg.close()
    assert await schema_version(pg_url) == LATEST


async def test_the_prune_queries_use_the_retention_index(url: str) -> None:
    async with make_engine(url) as engine:
        await run_one(engine, "ended")
    ended_before = time.time() + 60
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(_sqlite_path(url))
        try:
            for name in ("prunable", "count_prunable"):
                plan = conn.execute(
                    "EXPLAIN QUERY PLAN " + SQLITE_Q[name],
                    {"statuses": '["COMPLETED"]', "ended_before": ended_before, "limit": 10},
                ).fetchall()
                assert "saga_instances_ended" in str(plan), (name, plan)
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(url, server_settings=TABLES)
    try:
        # as the store's own connections plan (see PostgresStore._connect)
        await pg.execute("SET enable_seqscan = off")
        for name, args in (
            ("prune", (["COMPLETED"], ended_before, 10, "saga:")),
            ("count_prunable", (["COMPLETED"], ended_before)),
        ):
            async with pg.transaction():
                pg_plan = "\n".join(r[0] for r in await pg.fetch("EXPLAIN " + PG_Q[name], *args))
            assert "saga_instances_ended" in pg_plan, (name, pg_plan)
    finally:
        await pg.close()


async def test_several_processes_migrating_at_once_all_open(
    pg_server: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # the waiters must not deadlock with the CREATE INDEX CONCURRENTLY the lock's holder runs
    # (it waits for every open snapshot), and none may see the schema halfway
    for round_, version in enumerate((LATEST - 1, LATEST - 2, 0)):
        url = make_store_url("postgres", tmp_path / str(round_), request, shared=True)
        if version:
            await build_old_schema(url, version=version)
        stores = [open_store(url, migrate=True) for _ in range(4)]
        results = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
        try:
            assert [r for r in results if r is not None] == []
        finally:
            for s in stores:
                await s.close()
        assert await schema_version(url) == LATEST


@pytest.mark.parametrize("token", [None, "secret"])
async def test_the_dashboard_refuses_an_older_schema_and_does_not_migrate(
    url: str, token: str | None
) -> None:
    await build_old_schema(url)
    dashboard = Dashboard(url, port=0, token=token)
    with pytest.raises(StoreError, match="sagakit migrate --db"):
        await asyncio.to_thread(dashboard.start)
    assert await schema_version(url) == LATEST - 1


async def test_a_worker_of_the_previous_release_runs_beside_a_migrated_database(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rolling upgrades: the database is on this release's schema; a worker of the previous
    release (whose sagakit knows one schema version less) opens it as it is, writes no schema,
    and runs sagas beside a worker of this release."""
    async with make_engine(url, worker=False) as current:
        current.register(hello)
        assert await current.run(hello, None, saga_id="new-1") == "hello"
    module = (
        "sagakit.stores.sqlite.schema"
        if url.startswith("sqlite:")
        else "sagakit.stores.postgres.schema"
    )
    # the previous release: the same code, one migration fewer known
    monkeypatch.setattr(f"{module}.SCHEMA_VERSION", LATEST - 1)
    async with make_engine(url) as previous, make_engine(url) as this_one:
        for engine in (previous, this_one):
            engine.register(hello)
        handles = [
            await engine.start(hello, None, saga_id=f"{name}-{i}", run_here=False)
            for i in range(5)
            for name, engine in (("prev", previous), ("this", this_one))
        ]
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
        assert results == ["hello"] * len(handles)
    assert await schema_version(url) == LATEST  # untouched by the older worker


async def test_a_schema_two_releases_newer_is_refused(url: str) -> None:
    async with make_engine(url) as engine:
        engine.register(hello)
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(_sqlite_path(url))
        conn.execute("UPDATE saga_schema_version SET version = ?", (LATEST + 2,))
        conn.commit()
        conn.close()
    else:
        pg = await asyncpg.connect(url, server_settings=TABLES)
        try:
            await pg.execute("UPDATE saga_schema_version SET version = $1", LATEST + 2)
        finally:
            await pg.close()
    with pytest.raises(StoreError, match="by more than one release; upgrade sagakit"):
        async with make_engine(url):
            pass
