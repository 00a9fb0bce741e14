"""Upgrading from every earlier schema version with sagas in flight (issue 16).

The rows are what each earlier release really wrote (tests/upgrade_fixtures, made by
``python -m tests.upgrade_fixtures.make`` running that release's code): a saga whose worker died
after its first step, one that died in the middle of its rollback, one never claimed, one
suspended in a wait for a signal (schema 2 on), one parked for an operator (schema 3 on) and one
completed. Here the schema is rebuilt from the migration scripts 1..N as that release ran them
(on PostgreSQL in ``public``, where the releases before schema 6's kept it), the rows go back
in, and today's engine (SQLite upgrades on open; PostgreSQL with ``migrate=True``) finishes
every saga on the same workflow code, running again only what the journal does not record as
done.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from sagakit import Engine, SagaCompensatedError, SagaStatus
from sagakit.stores.postgres.schema import LEGACY_SCHEMA
from sagakit.stores.postgres.sql import MIGRATIONS as PG_MIGRATIONS
from sagakit.stores.schema import runs_outside_transaction, split_statements
from sagakit.stores.sqlite.store import MIGRATIONS as SQLITE_MIGRATIONS
from sagakit.stores.sqlite.store import _split_statements

from .conftest import make_engine, make_store_url
from .upgrade_fixtures import scenario
from .upgrade_fixtures.cases import CASES, cases_for
from .upgrade_fixtures.make import RELEASES, fixture_path

LATEST = SQLITE_MIGRATIONS[-1][0]
STEPS = {"Reserve": "reserve", "Charge": "charge", "Notify": "notify", "Ship": "ship"}
UNDO = {"Reserve": "release", "Charge": "refund", "Notify": "unnotify"}


def load_fixture(version: int, kind: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(fixture_path(version, kind).read_text())
    assert (document["schema_version"], document["store"]) == (version, kind)
    assert document["commit"] == RELEASES[version]
    return document


def test_every_release_s_fixtures_are_there() -> None:
    # a new migration makes the schema before it an earlier one: generate its fixtures
    assert sorted(RELEASES) == list(range(1, len(RELEASES) + 1))
    assert set(range(1, LATEST)) <= set(RELEASES), "add the release of each earlier schema"
    for version in RELEASES:
        for kind in ("sqlite", "postgres"):
            assert load_fixture(version, kind)["cases"] == cases_for(version)


# -- the schema and rows of an earlier release ------------------------------------------------


def _columns(row: dict[str, Any]) -> str:
    return ", ".join(row)


def build_sqlite(path: Path, version: int, tables: dict[str, list[dict[str, Any]]]) -> None:
    """Schema ``version`` as that release's runner made it (version table, then each script and
    its version row), and the release's rows."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS saga_schema_version (version INTEGER NOT NULL)")
    for number, script in SQLITE_MIGRATIONS:
        if number <= version:
            for statement in _split_statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO saga_schema_version (version) VALUES (?)", (number,))
    for table, rows in tables.items():
        if table == "saga_schema_version":
            continue
        for row in rows:
            marks = ", ".join("?" * len(row))
            conn.execute(
                f"INSERT INTO {table} ({_columns(row)}) VALUES ({marks})", list(row.values())
            )
    conn.commit()
    conn.close()


async def build_postgres(url: str, version: int, document: dict[str, Any]) -> None:
    """The same on PostgreSQL, in the schema that release used: ``public`` before schema 6's
    release (the default search_path of a fresh database), ``sagakit`` from then on."""
    schema = document["pg_schema"]
    assert (schema == LEGACY_SCHEMA) == (version < 6)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(f"SET search_path = {schema}")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS saga_schema_version (version integer NOT NULL)"
        )
        for number, script in PG_MIGRATIONS:
            if number <= version:
                # a CONCURRENTLY script (0007) runs statement by statement, as the runner does
                parts = split_statements(script) if runs_outside_transaction(script) else [script]
                for part in parts:
                    await conn.execute(part)
                await conn.execute("INSERT INTO saga_schema_version (version) VALUES ($1)", number)
        for table, rows in document["tables"].items():
            if table == "saga_schema_version":
                continue
            for row in rows:
                marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
                await conn.execute(
                    f"INSERT INTO {table} ({_columns(row)}) VALUES ({marks})", *row.values()
                )
        for sequence, state in document["sequences"].items():
            await conn.execute(
                "SELECT setval($1, $2, $3)", sequence, state["last_value"], state["is_called"]
            )
    finally:
        await conn.close()


async def versions_after(url: str) -> tuple[list[int], str]:
    """The version rows, and the schema the version table is in (PostgreSQL)."""
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute("SELECT version FROM saga_schema_version ORDER BY 1").fetchall()
        finally:
            conn.close()
        return [r[0] for r in rows], "main"
    pg = await asyncpg.connect(url)
    try:
        where = await pg.fetchval(
            "SELECT schemaname FROM pg_tables WHERE tablename = 'saga_schema_version'"
        )
        rows = await pg.fetch(f"SELECT version FROM {where}.saga_schema_version ORDER BY 1")
    finally:
        await pg.close()
    return [r[0] for r in rows], str(where)


# -- the test ----------------------------------------------------------------------------------


def journaled(tables: dict[str, list[dict[str, Any]]], saga_id: str, kind: str) -> list[str]:
    """The names of the saga's entries of this kind that the old release recorded as done."""
    return [
        e["name"]
        for e in tables["saga_journal"]
        if e["saga_id"] == saga_id and e["kind"] == kind and e["status"] == "completed"
    ]


def ran_for(saga_id: str) -> list[str]:
    return [e.split(":")[0] for e in scenario.ledger if e.endswith(f":{saga_id}")]


@pytest.fixture(autouse=True)
def _today() -> None:
    """The scenario's workflows as today's test runs them: no kill, Pack works, empty ledger."""
    scenario.ledger.clear()
    scenario.KILL_IN.clear()
    scenario.PACK_FAILS = False


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.parametrize("version", sorted(RELEASES))
async def test_sagas_in_flight_finish_after_the_upgrade(
    version: int, kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    document = load_fixture(version, kind)
    tables: dict[str, list[dict[str, Any]]] = document["tables"]
    left = {r["saga_id"]: r["status"] for r in tables["saga_instances"]}
    assert left == {CASES[c][0]: CASES[c][4] for c in document["cases"]}
    # what the old release journaled: the died saga its first step; the rollback the failed
    # step and the first compensation, dying in the second
    assert journaled(tables, "died", "step") == ["Reserve"]
    assert journaled(tables, "rollback", "compensation") == ["Notify"]
    completed_output = next(
        r["output"] for r in tables["saga_instances"] if r["saga_id"] == "completed"
    )

    url = make_store_url(kind, tmp_path, request, shared=True)
    if kind == "sqlite":
        build_sqlite(tmp_path / "t.db", version, tables)
    else:
        await build_postgres(url, version, document)
    assert [r["version"] for r in tables["saga_schema_version"]] == list(range(1, version + 1))

    # an embedded SQLite file is upgraded by default; a PostgreSQL schema only when asked
    engine: Engine = make_engine(url, migrate=True if kind == "postgres" else None)
    engine.register(scenario.order, scenario.parkable)
    async with engine:
        # the worker died after Reserve: the rest runs, Reserve is not run again
        died = await engine.handle("died").result(timeout=60)
        assert died == {"id": "died", "charged": 40, "signal": None}
        assert ran_for("died") == ["charge", "notify", "ship"]

        # died in the middle of the rollback: Notify's undo was journaled and is not done again,
        # Charge's (in flight) and Reserve's are done once; no step runs again
        with pytest.raises(SagaCompensatedError):
            await engine.handle("rollback").result(timeout=60)
        assert (await engine.get("rollback")).status == SagaStatus.COMPENSATED
        assert ran_for("rollback") == ["refund", "release"]

        # never claimed by the old release: runs whole
        pending = await engine.handle("pending").result(timeout=60)
        assert pending == {"id": "pending", "charged": 40, "signal": None}
        assert ran_for("pending") == ["reserve", "charge", "notify", "ship"]

        if "suspended" in document["cases"]:
            assert (await engine.get("suspended")).status == SagaStatus.SUSPENDED
            await engine.signal("suspended", "go", {"by": "upgrade test"})
            resumed = await engine.handle("suspended").result(timeout=60)
            assert resumed == {"id": "suspended", "charged": 40, "signal": {"by": "upgrade test"}}
            assert ran_for("suspended") == ["ship"]

        if "parked" in document["cases"]:
            assert (await engine.get("parked")).status == SagaStatus.PARKED
            await engine.admin.retry_step("parked", reason="the station is back", by="test")
            unparked = await engine.handle("parked").result(timeout=60)
            assert unparked == {"id": "parked", "packed": True}
            assert ran_for("parked") == ["pack"]

        # the completed saga keeps its output and runs nothing
        assert await engine.handle("completed").result(timeout=60) == json.loads(completed_output)
        assert (await engine.get("completed")).output == json.loads(completed_output)
        assert ran_for("completed") == []

        # and new sagas run on the upgraded schema
        assert (await engine.run(scenario.order, {"id": "new"}, "new"))["id"] == "new"
        assert await engine.admin.stranded() == []

    found, where = await versions_after(url)
    assert found == list(range(1, LATEST + 1))
    if kind == "postgres":
        assert where == document["pg_schema"]  # upgraded where the old release left it
