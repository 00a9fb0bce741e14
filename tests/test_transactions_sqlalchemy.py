"""``ctx.session`` (issue 20): SQLAlchemy's ``AsyncSession`` in a transactional step, on a real
PostgreSQL server. Its writes commit with the step's journal entry; its own ``commit()`` only
releases a savepoint inside the step's transaction. SQLite refuses it, naming ctx.connection.

Rows are read through a connection of the test's own: what another client would see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sagakit import (
    Engine,
    SagaContext,
    SagaSnapshot,
    SagaStatus,
    TerminalError,
    TransactionContext,
    saga_step,
    saga_transaction,
    saga_workflow,
)
from sagakit.stores.base import EntryStatus
from tests.conftest import fast_retry, make_engine, make_store_url
from tests.waiting import eventually


class Base(DeclarativeBase):
    pass


class Reservation(Base):
    __tablename__ = "reservations"
    order_id: Mapped[str] = mapped_column(String, primary_key=True)
    sku: Mapped[str] = mapped_column(String)


#: what each test's steps do and saw
calls: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


async def rows(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch("SELECT order_id FROM reservations ORDER BY 1")]
    finally:
        await conn.close()


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[str]:
    """A PostgreSQL database with sagakit's schema and the application's table."""
    async with Engine(pg_url):
        pass
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("CREATE TABLE reservations (order_id TEXT PRIMARY KEY, sku TEXT)")
    finally:
        await conn.close()
    yield pg_url


async def release(ctx: TransactionContext, data: dict[str, Any]) -> None:
    row = await ctx.session.get(Reservation, data["order_id"])
    assert row is not None
    await ctx.session.delete(row)
    calls.setdefault("released", []).append(data["order_id"])


@saga_transaction("Reserve", compensate=release, retry=fast_retry(3))
async def reserve(ctx: TransactionContext, inp: dict[str, Any]) -> dict[str, Any]:
    calls.setdefault("attempts", []).append(ctx.attempt)
    ctx.session.add(Reservation(order_id=inp["order_id"], sku=inp["sku"]))
    hook = calls.get("in_body")
    if hook is not None:
        await hook(ctx, inp)
    if ctx.attempt <= calls.get("fail_attempts", 0):
        raise RuntimeError(f"attempt {ctx.attempt} fails after session.add")
    return {"order_id": inp["order_id"]}


@saga_step("Charge", retry=fast_retry(1))
async def charge(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    if calls.get("charge_fails"):
        raise TerminalError("card declined")
    return {"charged": inp["order_id"]}


@saga_workflow("OrmCheckout")
async def checkout(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    reservation = await reserve(saga, inp)
    return {**reservation, **await charge(saga, reservation)}


async def ended(engine: Engine, saga_id: str) -> SagaSnapshot:
    async def done() -> bool:
        return (await engine.get(saga_id)).status.is_terminal

    await eventually(done, f"saga {saga_id} to end", timeout=30)
    return await engine.get(saga_id)


async def test_an_orm_row_commits_with_the_journal_entry(pg: str) -> None:
    seen: list[Any] = []

    async def in_body(ctx: TransactionContext, inp: dict[str, Any]) -> None:
        await ctx.session.flush()
        # in the step's transaction: the body sees it, another client does not yet
        found = await ctx.session.scalar(
            select(Reservation.sku).where(Reservation.order_id == "o1")
        )
        seen.append((found, await ctx.connection.fetchval("SELECT count(*) FROM reservations")))
        seen.append(await rows(pg))

    calls["in_body"] = in_body
    async with make_engine(pg) as engine:
        engine.register(checkout)
        assert await engine.run(checkout, {"order_id": "o1", "sku": "s1"}, saga_id="a") == {
            "order_id": "o1",
            "charged": "o1",
        }
        snap = await engine.get("a")
        # the store's pool connection went back usable: another saga runs on it
        calls.pop("in_body")
        await engine.run(checkout, {"order_id": "o2", "sku": "s2"}, saga_id="b")
    assert seen == [("s1", 1), []]
    assert [(s.name, s.status, s.attempts) for s in snap.steps] == [
        ("Reserve", EntryStatus.COMPLETED, 1),
        ("Charge", EntryStatus.COMPLETED, 1),
    ]
    assert await rows(pg) == ["o1", "o2"]


async def test_a_failing_body_leaves_no_row_even_after_session_commit(pg: str) -> None:
    async def in_body(ctx: TransactionContext, inp: dict[str, Any]) -> None:
        await ctx.session.commit()  # releases the savepoint only

    calls["in_body"] = in_body
    calls["fail_attempts"] = 2  # attempts 1 and 2 insert the same key, commit, then raise
    async with make_engine(pg) as engine:
        engine.register(checkout)
        await engine.run(checkout, {"order_id": "o1", "sku": "s1"}, saga_id="r")
        snap = await engine.get("r")
    assert calls["attempts"] == [1, 2, 3]  # no duplicate key: each failure rolled back
    assert snap.steps[0].attempts == 3
    assert await rows(pg) == ["o1"]


async def test_session_commit_cannot_commit_the_step_transaction(pg: str) -> None:
    seen: list[Any] = []

    async def in_body(ctx: TransactionContext, inp: dict[str, Any]) -> None:
        await ctx.session.commit()
        seen.append((ctx.connection.is_in_transaction(), await rows(pg)))
        raise TerminalError("out of stock")

    calls["in_body"] = in_body
    async with make_engine(pg) as engine:
        engine.register(checkout)
        await engine.start(checkout, {"order_id": "o1", "sku": "s1"}, saga_id="t")
        snap = await ended(engine, "t")
    assert seen == [(True, [])]
    assert snap.status == SagaStatus.COMPENSATED
    assert calls.get("released") is None  # strict: a failed step is not compensated
    assert await rows(pg) == []


async def test_session_rollback_undoes_only_the_session_since_its_last_commit(pg: str) -> None:
    async def in_body(ctx: TransactionContext, inp: dict[str, Any]) -> None:
        await ctx.session.commit()  # o1 joins the step's transaction
        await ctx.connection.execute("INSERT INTO reservations VALUES ('raw', 'r')")
        ctx.session.add(Reservation(order_id="dropped", sku="d"))
        await ctx.session.flush()
        await ctx.session.rollback()  # back to the savepoint: 'dropped' goes, the rest stays

    calls["in_body"] = in_body
    async with make_engine(pg) as engine:
        engine.register(checkout)
        await engine.run(checkout, {"order_id": "o1", "sku": "s1"}, saga_id="s")
    assert await rows(pg) == ["o1", "raw"]


async def test_a_flush_refused_at_the_end_fails_the_attempt(pg: str) -> None:
    conn = await asyncpg.connect(pg)
    try:
        await conn.execute("INSERT INTO reservations VALUES ('taken', 'x')")
    finally:
        await conn.close()
    async with make_engine(pg) as engine:
        engine.register(checkout)
        # session.add of a taken key: the flush sagakit makes when the body returns fails
        await engine.start(checkout, {"order_id": "taken", "sku": "s"}, saga_id="f")
        snap = await ended(engine, "f")
    assert calls["attempts"] == [1, 2, 3]
    assert snap.status == SagaStatus.COMPENSATED
    assert snap.steps[0].status == EntryStatus.FAILED
    assert IntegrityError.__name__ in str(snap.error)
    assert await rows(pg) == ["taken"]


async def test_a_compensation_writes_through_its_session(pg: str) -> None:
    calls["charge_fails"] = True
    async with make_engine(pg) as engine:
        engine.register(checkout)
        await engine.start(checkout, {"order_id": "o1", "sku": "s1"}, saga_id="c")
        snap = await ended(engine, "c")
    assert snap.status == SagaStatus.COMPENSATED
    assert calls["released"] == ["o1"]
    assert await rows(pg) == []


async def test_sqlite_refuses_the_session_and_names_the_connection(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = make_store_url("sqlite", tmp_path, request, shared=True)
    async with make_engine(url) as engine:
        engine.register(checkout)
        await engine.start(checkout, {"order_id": "o1", "sku": "s1"}, saga_id="q")
        snap = await ended(engine, "q")
    assert snap.status == SagaStatus.COMPENSATED
    assert snap.steps[0].status == EntryStatus.FAILED
    assert "TransactionsUnsupportedError" in str(snap.error)
    assert "ctx.connection" in str(snap.error)
