"""sagakit's tables in a PostgreSQL schema of their own: ``sagakit`` by default, another named
by ``?schema=`` or ``Engine(schema=...)`` (two sets of sagas in one database), an earlier
release's tables in ``public`` kept, and advisory locks in a key space of their own."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from sagakit import SagaContext, SagaNotFoundError, StoreError, saga_workflow
from sagakit.stores import open_store
from sagakit.stores.postgres.schema import schema_lock_key
from sagakit.stores.postgres.sql import MIGRATIONS, Q
from sagakit.stores.postgres.store import PostgresStore
from sagakit.stores.schema import runs_outside_transaction, split_statements

from .conftest import make_engine
from .test_cli import sagakit


@saga_workflow("Hello")
async def hello(saga: SagaContext, name: str) -> str:
    await saga.sleep(0.01)  # a journal entry, and a wake-up through the store
    return f"hello {name}"


async def tables_by_schema(url: str) -> dict[str, set[str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_name LIKE 'saga%'"
        )
    finally:
        await conn.close()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["table_schema"], set()).add(row["table_name"])
    return found


async def test_a_new_database_gets_its_tables_in_schema_sagakit(pg_url: str) -> None:
    async with make_engine(pg_url) as engine:
        engine.register(hello)
        assert await engine.run(hello, "a", "s1") == "hello a"
    tables = await tables_by_schema(pg_url)
    assert set(tables) == {"sagakit"}
    assert {"saga_instances", "saga_journal", "saga_schema_version"} <= tables["sagakit"]


async def test_two_schemas_in_one_database_keep_separate_sagas(pg_url: str) -> None:
    async with (
        make_engine(f"{pg_url}?schema=tenant_a") as a,
        make_engine(pg_url, schema="tenant_b") as b,
    ):
        a.register(hello)
        b.register(hello)
        # one saga id in both: each schema has its own
        assert await a.run(hello, "a", "same-id") == "hello a"
        assert await b.run(hello, "b", "same-id") == "hello b"
        assert await a.run(hello, "a2", "only-a") == "hello a2"
        with pytest.raises(SagaNotFoundError):
            await b.admin.get_saga("only-a")
        assert (await a.admin.get_saga("only-a")).saga_id == "only-a"
        assert [s.saga_id for s in await b.admin.list_sagas()] == ["same-id"]
    tables = await tables_by_schema(pg_url)
    assert {"tenant_a", "tenant_b"} <= set(tables)
    assert "sagakit" not in tables and "public" not in tables


async def test_two_schemas_have_their_own_wakeup_channel_and_lock(pg_url: str) -> None:
    a = PostgresStore(f"{pg_url}?schema=tenant_a")
    b = PostgresStore(pg_url, schema="tenant_b")
    assert a.channel != b.channel
    assert schema_lock_key("tenant_a") != schema_lock_key("tenant_b")
    # a NOTIFY sent on one schema's connections reaches that schema's channel only
    await a.open()
    await b.open()
    try:
        woken: list[str] = []
        a.on_work = lambda: woken.append("a")
        b.on_work = lambda: woken.append("b")
        await asyncio.sleep(0.2)  # the listeners' first (catch-up) wake-up
        woken.clear()
        conn = await asyncpg.connect(pg_url, server_settings={"search_path": "tenant_a"})
        try:
            await conn.execute(Q["notify_work"])
        finally:
            await conn.close()
        for _ in range(100):
            if woken:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert woken == ["a"]
    finally:
        await a.close()
        await b.close()


async def build_public_schema(url: str) -> None:
    """The tables as an earlier release made them: in public."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE saga_schema_version (version integer NOT NULL)")
        for number, script in MIGRATIONS:
            # a no-transaction script (CREATE INDEX CONCURRENTLY) runs statement by statement
            alone = runs_outside_transaction(script)
            for statement in split_statements(script) if alone else [script]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO saga_schema_version VALUES ($1)", number)
    finally:
        await conn.close()


async def test_tables_an_earlier_release_made_in_public_stay_in_use(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await build_public_schema(pg_url)
    with caplog.at_level(logging.INFO, logger="sagakit.store.postgres"):
        async with make_engine(pg_url) as engine:
            engine.register(hello)
            assert await engine.run(hello, "old", "in-public") == "hello old"
    assert "SET SCHEMA sagakit" in caplog.text
    assert set(await tables_by_schema(pg_url)) == {"public"}
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM public.saga_instances") == 1
    finally:
        await conn.close()


async def test_a_schema_asked_for_is_used_beside_tables_in_public(pg_url: str) -> None:
    await build_public_schema(pg_url)
    async with make_engine(pg_url, schema="sagakit") as engine:
        engine.register(hello)
        assert await engine.run(hello, "new", "s1") == "hello new"
    tables = await tables_by_schema(pg_url)
    assert "saga_instances" in tables["sagakit"] and "saga_instances" in tables["public"]


@pytest.mark.parametrize(
    "name", ["Tenant", "tenant-a", "1tenant", "pg_mine", "a" * 49, "", 'x"; DROP']
)
def test_an_invalid_schema_name_is_refused(pg_url: str, name: str) -> None:
    with pytest.raises(StoreError, match="plain identifier of lower-case letters"):
        open_store(pg_url, schema=name)
    with pytest.raises(StoreError, match="plain identifier"):
        PostgresStore(f"{pg_url}?schema={name}")


def test_schema_is_refused_for_sqlite_and_a_conflicting_url() -> None:
    with pytest.raises(StoreError, match="for PostgreSQL stores"):
        open_store("sqlite:///x.db", schema="tenant_a")
    with pytest.raises(StoreError, match="name one"):
        PostgresStore("postgresql://u@h/db?schema=a", schema="b")


async def test_the_schema_lock_is_a_two_key_advisory_lock(pg_url: str) -> None:
    """While a migration holds the schema lock, pg_locks shows the two-key form (objsubid 2),
    with the schema's key; a second store waits for it."""
    store = PostgresStore(pg_url, schema="tenant_a", migrate=True)
    holder = await asyncpg.connect(pg_url)
    try:
        key = schema_lock_key("tenant_a")
        assert await holder.fetchval(Q["try_lock_schema"], key)
        locks = await holder.fetch(
            "SELECT classid, objid, objsubid FROM pg_locks "
            "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert [
            (r["classid"], r["objid"] - 2**32 if r["objid"] >= 2**31 else r["objid"]) for r in locks
        ] == [(7261001, key)]
        assert [r["objsubid"] for r in locks] == [2]
        opening = asyncio.create_task(store.open())
        await asyncio.sleep(0.5)
        assert not opening.done()  # it waits for the lock
        # another schema's lock is another key: its migration does not wait
        async with make_engine(pg_url, schema="tenant_b") as other:
            other.register(hello)
            assert await other.run(hello, "b", "s1") == "hello b"
        assert not opening.done()
        await holder.execute(Q["unlock_schema"], key)
        await asyncio.wait_for(opening, 30)
    finally:
        await holder.close()
        await store.close()
    assert "saga_instances" in (await tables_by_schema(pg_url))["tenant_a"]


async def test_the_cli_takes_a_schema_in_the_url(pg_url: str) -> None:
    url = f"{pg_url}?schema=tenant_c"
    async with make_engine(url) as engine:
        engine.register(hello)
        await engine.run(hello, "c", "cli-saga")
    listed = await asyncio.to_thread(sagakit, "list", "--db", url)
    assert listed.returncode == 0, listed.stderr
    assert "cli-saga" in listed.stdout
    # the default schema of this database is empty: the saga is tenant_c's alone
    other = await asyncio.to_thread(sagakit, "list", "--db", f"{pg_url}?schema=tenant_d")
    assert "cli-saga" not in other.stdout
