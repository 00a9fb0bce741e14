"""Transactional steps (issue 20): the step's writes to the saga's own database commit in the
same transaction as its journal entry, on SQLite and PostgreSQL, against the real databases.

Each test counts the rows of the application's own table (``reservations``), read through a
connection of its own: what a user would see."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

from sagakit import (
    BaseStep,
    Engine,
    SagaBuilder,
    SagaContext,
    SagaDefinition,
    SagaError,
    SagaSnapshot,
    SagaStatus,
    SagaStepOptions,
    StepResponse,
    TerminalError,
    TransactionContext,
    TransactionsUnsupportedError,
    create_saga_transaction,
    saga_step,
    saga_transaction,
    saga_workflow,
)
from sagakit.engine.crashes import ProcessCrash, StepPoint
from sagakit.stores import open_store
from sagakit.stores.base import EntryStatus, Store, StoreTransaction
from tests.conftest import fast_retry, make_engine, make_store_url
from tests.waiting import eventually
from tests.wrapped_store import WrappedStore

TABLES = (
    "CREATE TABLE reservations (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL)",
    "CREATE TABLE releases (order_id TEXT NOT NULL)",
)


class AppDb:
    """The application's own tables, in the database the saga store uses."""

    def __init__(self, url: str, tmp_path: Path):
        self.url = url
        self.sqlite = url.startswith("sqlite")
        self.path = str(tmp_path / "t.db")
        self.dsn = url

    async def create(self) -> None:
        if self.sqlite:
            with sqlite3.connect(self.path) as conn:
                for sql in TABLES:
                    conn.execute(sql)
            return
        conn = await asyncpg.connect(self.dsn)
        try:
            for sql in TABLES:
                await conn.execute(sql)
        finally:
            await conn.close()

    async def rows(self, table: str) -> list[str]:
        sql = f"SELECT order_id FROM {table} ORDER BY order_id"
        if self.sqlite:
            with sqlite3.connect(self.path) as conn:
                return [r[0] for r in conn.execute(sql).fetchall()]
        conn = await asyncpg.connect(self.dsn)
        try:
            return [r[0] for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    async def bump_fence(self, saga_id: str) -> None:
        """What another worker's claim (or an operator's change) does to the saga's row."""
        if self.sqlite:
            with sqlite3.connect(self.path) as conn:
                conn.execute(
                    "UPDATE saga_instances SET fence = fence + 1 WHERE saga_id = ?", (saga_id,)
                )
            return
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(
                "UPDATE sagakit.saga_instances SET fence = fence + 1 WHERE saga_id = $1", saga_id
            )
        finally:
            await conn.close()


async def insert(ctx: TransactionContext, table: str, order_id: str, sku: str = "") -> None:
    """One INSERT through the step's own connection, in either database's dialect."""
    conn = ctx.connection
    if isinstance(conn, sqlite3.Connection):
        if table == "reservations":
            conn.execute("INSERT INTO reservations VALUES (?, ?)", (order_id, sku))
        else:
            conn.execute(f"INSERT INTO {table} VALUES (?)", (order_id,))
    elif table == "reservations":
        await conn.execute("INSERT INTO reservations VALUES ($1, $2)", order_id, sku)
    else:
        await conn.execute(f"INSERT INTO {table} VALUES ($1)", order_id)


async def delete(ctx: TransactionContext, order_id: str) -> None:
    conn = ctx.connection
    if isinstance(conn, sqlite3.Connection):
        conn.execute("DELETE FROM reservations WHERE order_id = ?", (order_id,))
    else:
        await conn.execute("DELETE FROM reservations WHERE order_id = $1", order_id)


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AppDb]:
    url = make_store_url(request.param, tmp_path, request, shared=True)
    app = AppDb(url, tmp_path)
    # the store's schema first (an engine opened once), then the application's tables
    async with Engine(url):
        pass
    await app.create()
    yield app


#: what each test's steps saw: attempts, failures to inject
calls: dict[str, Any] = {}


async def release_stock(ctx: TransactionContext, data: dict[str, Any]) -> None:
    calls.setdefault("compensations", []).append(data["order_id"])
    await delete(ctx, data["order_id"])
    await insert(ctx, "releases", data["order_id"])


@saga_transaction("ReserveStock", compensate=release_stock, retry=fast_retry(3))
async def reserve_stock(ctx: TransactionContext, inp: dict[str, Any]) -> dict[str, Any]:
    calls.setdefault("attempts", []).append(ctx.attempt)
    await insert(ctx, "reservations", inp["order_id"], inp["sku"])
    fail = calls.get("fail_attempts", 0)
    if ctx.attempt <= fail:
        raise RuntimeError(f"attempt {ctx.attempt} fails after its INSERT")
    if calls.get("terminal"):
        raise TerminalError("out of stock")
    hook = calls.pop("in_body", None)
    if hook is not None:
        await hook(ctx)
    return {"order_id": inp["order_id"], "reserved": True}


@saga_step("Charge", retry=fast_retry(1))
async def charge(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    if calls.get("charge_fails"):
        raise TerminalError("card declined")
    return {"charged": inp["order_id"]}


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    reservation = await reserve_stock(saga, inp)
    payment = await charge(saga, reservation)
    return {**reservation, **payment}


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


async def ended(engine: Engine, saga_id: str) -> SagaSnapshot:
    """The saga once it reached a terminal state (bounded: a bug fails the test)."""

    async def done() -> bool:
        return (await engine.get(saga_id)).status.is_terminal

    await eventually(done, f"saga {saga_id} to end", timeout=30)
    return await engine.get(saga_id)


async def _journal(engine: Engine, saga_id: str) -> list[tuple[str, str, str, int]]:
    snap = await engine.get(saga_id)
    return [(s.kind, s.name, s.status, s.attempts) for s in snap.steps]


async def test_the_writes_and_the_journal_entry_commit_together(db: AppDb) -> None:
    async with make_engine(db.url) as engine:
        engine.register(checkout)
        result = await engine.run(checkout, {"order_id": "o1", "sku": "s1"}, saga_id="t-1")
        assert result == {"order_id": "o1", "reserved": True, "charged": "o1"}
        assert await _journal(engine, "t-1") == [
            ("step", "ReserveStock", "completed", 1),
            ("step", "Charge", "completed", 1),
        ]
    assert await db.rows("reservations") == ["o1"]


async def test_a_failed_attempt_leaves_no_row_and_the_retry_commits_once(db: AppDb) -> None:
    calls["fail_attempts"] = 2  # attempts 1 and 2 INSERT, then raise: their rows roll back
    async with make_engine(db.url) as engine:
        engine.register(checkout)
        await engine.run(checkout, {"order_id": "o2", "sku": "s"}, saga_id="t-2")
        assert await _journal(engine, "t-2") == [
            ("step", "ReserveStock", "completed", 3),
            ("step", "Charge", "completed", 1),
        ]
    assert calls["attempts"] == [1, 2, 3]
    # the primary key would have refused a second row: each attempt began from nothing
    assert await db.rows("reservations") == ["o2"]


async def test_a_body_that_raises_for_good_leaves_no_row_and_no_compensation(db: AppDb) -> None:
    calls["terminal"] = True
    async with make_engine(db.url) as engine:
        engine.register(checkout)
        await engine.start(checkout, {"order_id": "o3", "sku": "s"}, saga_id="t-3")
        snap = await ended(engine, "t-3")
        assert snap.status == SagaStatus.COMPENSATED
        assert await _journal(engine, "t-3") == [("step", "ReserveStock", "failed", 1)]
    assert await db.rows("reservations") == []
    # strict: an attempt that failed left nothing to undo
    assert "compensations" not in calls


async def test_a_terminal_error_later_runs_the_transactional_compensation(db: AppDb) -> None:
    calls["charge_fails"] = True
    async with make_engine(db.url) as engine:
        engine.register(checkout)
        await engine.start(checkout, {"order_id": "o4", "sku": "s"}, saga_id="t-4")
        snap = await ended(engine, "t-4")
        assert snap.status == SagaStatus.COMPENSATED
        assert await _journal(engine, "t-4") == [
            ("step", "ReserveStock", "completed", 1),
            ("step", "Charge", "failed", 1),
            ("compensation", "ReserveStock", "completed", 1),
        ]
    assert calls["compensations"] == ["o4"]
    # the compensation's DELETE and INSERT committed with its journal entry
    assert await db.rows("reservations") == []
    assert await db.rows("releases") == ["o4"]


async def test_a_permanent_failure_returned_by_the_body_rolls_its_writes_back(db: AppDb) -> None:
    async def body(ctx: TransactionContext, inp: dict[str, Any]) -> StepResponse[Any]:
        await insert(ctx, "reservations", inp["order_id"])
        return StepResponse.permanent_failure("no stock after all")

    step = create_saga_transaction("Reserve", body)

    @saga_workflow("PermanentFailure")
    async def flow(saga: SagaContext, inp: dict[str, Any]) -> Any:
        return await step(saga, inp)

    async with make_engine(db.url) as engine:
        engine.register(flow)
        await engine.start(flow, {"order_id": "o5"}, saga_id="t-5")
        snap = await ended(engine, "t-5")
        assert snap.status == SagaStatus.COMPENSATED
    assert await db.rows("reservations") == []


async def test_a_worker_that_lost_the_saga_at_begin_commits_nothing(db: AppDb) -> None:
    """Another worker claims the saga just before the step's transaction begins."""
    bumped: list[str] = []

    def hook(point: StepPoint) -> None:
        if point.step == "ReserveStock" and point.when == "before" and not bumped:
            bumped.append(point.saga_id)
            # a synchronous write by "another worker", between the steps of this run
            if db.sqlite:
                with sqlite3.connect(db.path) as conn:
                    conn.execute(
                        "UPDATE saga_instances SET fence = fence + 1 WHERE saga_id = ?",
                        (point.saga_id,),
                    )

    async def bump(ctx: TransactionContext) -> None:
        # on PostgreSQL, "another worker" changes the row while the body runs: the saga's row
        # is not locked until the commit's fenced append
        await db.bump_fence(ctx.saga_id)

    if not db.sqlite:
        calls["in_body"] = bump
    async with make_engine(db.url) as engine:
        engine.step_hook = hook
        engine.register(checkout)
        await engine.start(checkout, {"order_id": "o6", "sku": "s"}, saga_id="t-6")
        # the run stopped (LeaseLost) and wrote nothing; the saga's lease runs out and this
        # engine's worker takes it over, as another worker would: the step then commits once
        snap = await ended(engine, "t-6")
        assert snap.status == SagaStatus.COMPLETED
        journal = await _journal(engine, "t-6")
    assert bumped == ["t-6"]
    assert [row[:3] for row in journal] == [
        ("step", "ReserveStock", "completed"),
        ("step", "Charge", "completed"),
    ]
    assert await db.rows("reservations") == ["o6"]


async def test_the_commit_is_fenced(db: AppDb) -> None:
    """The fence moves inside the transaction itself: the journal append at commit refuses,
    and the user's write rolls back with it."""

    async def bump_in_tx(ctx: TransactionContext) -> None:
        conn = ctx.connection
        if isinstance(conn, sqlite3.Connection):
            conn.execute(
                "UPDATE saga_instances SET fence = fence + 1 WHERE saga_id = ?", (ctx.saga_id,)
            )
        else:
            await conn.execute(
                "UPDATE sagakit.saga_instances SET fence = fence + 1 WHERE saga_id = $1",
                ctx.saga_id,
            )

    calls["in_body"] = bump_in_tx
    async with make_engine(db.url) as engine:
        engine.register(checkout)
        await engine.start(checkout, {"order_id": "o7", "sku": "s"}, saga_id="t-7")
        snap = await ended(engine, "t-7")
        assert snap.status == SagaStatus.COMPLETED
    # attempt 1 of the first run committed nothing; the recovered run's attempt did
    assert len(calls["attempts"]) == 2
    assert await db.rows("reservations") == ["o7"]


async def test_a_crash_between_the_body_and_the_commit_applies_the_writes_once(
    db: AppDb,
) -> None:
    """The simulated crash (engine/crashes.py) stops the run after the body returned: its open
    transaction rolls back, and the recovered run applies the writes once."""
    crashed: list[int] = []

    def hook(point: StepPoint) -> None:
        if point.step == "ReserveStock" and point.when == "after" and not crashed:
            crashed.append(point.attempt)
            raise ProcessCrash(point)

    async with make_engine(db.url) as engine:
        engine.step_hook = hook
        engine.register(checkout)
        await engine.start(checkout, {"order_id": "o8", "sku": "s"}, saga_id="t-8")
        snap = await ended(engine, "t-8")
        assert snap.status == SagaStatus.COMPLETED
    assert crashed == [1]
    assert len(calls["attempts"]) == 2
    assert await db.rows("reservations") == ["o8"]


async def test_the_commit_refused_by_the_database_fails_the_step(db: AppDb) -> None:
    """A deferred constraint is checked at COMMIT: the step fails for good, nothing stays."""

    async def body(ctx: TransactionContext, inp: dict[str, Any]) -> dict[str, Any]:
        conn = ctx.connection
        if isinstance(conn, sqlite3.Connection):
            conn.execute("CREATE TABLE IF NOT EXISTS parent (id TEXT PRIMARY KEY)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS child (id TEXT REFERENCES parent (id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
            conn.execute("INSERT INTO child VALUES ('orphan')")
            conn.execute("INSERT INTO reservations VALUES (?, '')", (inp["order_id"],))
        else:
            await conn.execute("CREATE TABLE IF NOT EXISTS parent (id TEXT PRIMARY KEY)")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS child (id TEXT REFERENCES parent (id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
            await conn.execute("INSERT INTO child VALUES ('orphan')")
            await conn.execute("INSERT INTO reservations VALUES ($1, '')", inp["order_id"])
        return {"ok": True}

    step = create_saga_transaction("Deferred", body)

    @saga_workflow("DeferredFailure")
    async def flow(saga: SagaContext, inp: dict[str, Any]) -> Any:
        return await step(saga, inp)

    async with make_engine(db.url) as engine:
        engine.register(flow)
        await engine.start(flow, {"order_id": "o9"}, saga_id="t-9")
        snap = await ended(engine, "t-9")
        assert snap.status == SagaStatus.COMPENSATED
        assert snap.steps[0].status == EntryStatus.FAILED
        assert "could not commit" in (snap.steps[0].error or {}).get(
            "message", str(snap.steps[0].error)
        )
    assert await db.rows("reservations") == []


async def test_the_memory_store_refuses_a_transactional_step() -> None:
    async with make_engine("memory://") as engine:
        engine.register(checkout)
        await engine.start(checkout, {"order_id": "m", "sku": "s"}, saga_id="mem")
        snap = await ended(engine, "mem")
    assert snap.status == SagaStatus.COMPENSATED
    assert snap.steps[0].status == EntryStatus.FAILED
    assert TransactionsUnsupportedError.__name__ in str(snap.error)
    assert "memory store has none" in str(snap.error)


def test_a_transactional_compensation_must_take_ctx_and_data() -> None:
    async def body(ctx: TransactionContext, inp: dict[str, Any]) -> None:
        return None

    def undo(data: dict[str, Any]) -> None:
        return None

    with pytest.raises(TypeError, match=r"must take \(ctx, data\)"):
        create_saga_transaction("Bad", body, compensate=undo)


async def test_a_timed_out_attempt_rolls_back(db: AppDb) -> None:
    async def slow(ctx: TransactionContext, inp: dict[str, Any]) -> dict[str, Any]:
        await insert(ctx, "reservations", f"{inp['order_id']}-{ctx.attempt}")
        if ctx.attempt == 1:
            await asyncio.sleep(30)  # cut by the step's timeout: its INSERT rolls back
        return {"ok": ctx.attempt}

    step = create_saga_transaction(
        "Slow",
        slow,
        options=SagaStepOptions(retry=fast_retry(2), timeout=timedelta(milliseconds=300)),
    )

    @saga_workflow("SlowTx")
    async def flow(saga: SagaContext, inp: dict[str, Any]) -> Any:
        return await step(saga, inp)

    async with make_engine(db.url) as engine:
        engine.register(flow)
        assert await engine.run(flow, {"order_id": "o10"}, saga_id="t-10") == {"ok": 2}
    assert await db.rows("reservations") == ["o10-2"]


class Order(BaseModel):
    order_id: str


class Reserved(BaseModel):
    order_id: str
    rows: int


class DeclaredReserve(BaseStep[Order, Reserved]):
    """The declarative counterpart: ``transactional = True`` and ``self.connection``."""

    name = "DeclaredReserve"
    transactional = True

    async def execute(self, inp: Order) -> Reserved:
        ctx = self.saga_context
        assert isinstance(ctx, TransactionContext) and self.connection is ctx.connection
        await insert(ctx, "reservations", inp.order_id)
        return Reserved(order_id=inp.order_id, rows=1)

    async def compensate(self, inp: Order, out: Reserved) -> None:
        ctx = self.saga_context
        assert isinstance(ctx, TransactionContext)
        await delete(ctx, out.order_id)
        await insert(ctx, "releases", out.order_id)


class Decline(BaseStep[Reserved, Reserved]):
    name = "Decline"

    async def execute(self, inp: Reserved) -> Reserved:
        if calls.get("charge_fails"):
            raise TerminalError("card declined")
        return inp


def _declared() -> SagaDefinition:
    builder = SagaBuilder()
    reserved = builder.add_step(step=DeclaredReserve())
    builder.add_step(step=Decline(), depends_on=reserved)
    return builder.build()


async def test_a_declarative_transactional_step_and_its_compensation(db: AppDb) -> None:
    definition = _declared()
    async with make_engine(db.url) as engine:
        engine.register("declared_v1", definition)
        out = await engine.run("declared_v1", {"order_id": "d1"}, saga_id="d-1")
        assert out["DeclaredReserve"] == {"order_id": "d1", "rows": 1}
        assert await db.rows("reservations") == ["d1"]
        calls["charge_fails"] = True
        await engine.start("declared_v1", {"order_id": "d2"}, saga_id="d-2")
        snap = await ended(engine, "d-2")
        assert snap.status == SagaStatus.COMPENSATED
    # d2's reservation was made, then undone by the transactional compensation
    assert await db.rows("reservations") == ["d1"]
    assert await db.rows("releases") == ["d2"]


def test_connection_outside_a_transactional_step_is_refused() -> None:
    with pytest.raises(SagaError, match="only available while execute"):
        _ = DeclaredReserve().connection


async def test_a_body_that_commits_on_its_own_fails_the_step_for_good(db: AppDb) -> None:
    async def body(ctx: TransactionContext, inp: dict[str, Any]) -> dict[str, Any]:
        calls.setdefault("attempts", []).append(ctx.attempt)
        await insert(ctx, "reservations", inp["order_id"])
        conn = ctx.connection
        if isinstance(conn, sqlite3.Connection):
            conn.commit()
        else:
            await conn.execute("COMMIT")
        return {"ok": True}

    step = create_saga_transaction("SelfCommit", body, options=SagaStepOptions(retry=fast_retry(3)))

    @saga_workflow("SelfCommitFlow")
    async def flow(saga: SagaContext, inp: dict[str, Any]) -> Any:
        return await step(saga, inp)

    async with make_engine(db.url) as engine:
        engine.register(flow)
        await engine.start(flow, {"order_id": "o11"}, saga_id="t-11")
        snap = await ended(engine, "t-11")
        assert snap.status == SagaStatus.COMPENSATED
        assert "ended by the step's own code" in str(snap.steps[0].error)
    # not retried (a retry would commit its writes once more)
    assert calls["attempts"] == [1]


class LosingCommitAnswers(WrappedStore):
    """PostgreSQL: the first transactional COMMIT loses its answer. The connection drops after
    the server committed (``committed=True``) or before the COMMIT reached it."""

    def __init__(self, inner: Store, *, committed: bool):
        super().__init__(inner)
        self.committed = committed
        self.lost = 0

    async def begin(self, saga_id: str, fence: int) -> StoreTransaction:
        tx = await self.inner.begin(saga_id, fence)
        if not self.lost:
            self.lost += 1
            # asyncpg's Transaction has slots: its stand-in loses the answer of its COMMIT
            real: Any = tx._tr  # type: ignore[attr-defined]
            tx._tr = _LostAnswer(real, tx.connection, self.committed)  # type: ignore[attr-defined]
        return tx


class _LostAnswer:
    def __init__(self, real: Any, conn: Any, committed: bool):
        self.real, self.conn, self.committed = real, conn, committed

    async def commit(self) -> None:
        if self.committed:
            await self.real.commit()
        self.conn.terminate()
        raise ConnectionResetError("the connection dropped before COMMIT's answer (test)")

    async def rollback(self) -> None:
        await self.real.rollback()


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not-committed"])
async def test_a_commit_whose_answer_is_lost_is_resolved_from_the_journal(
    pg_url: str, tmp_path: Path, committed: bool
) -> None:
    db = AppDb(pg_url, tmp_path)
    async with Engine(pg_url):
        pass
    await db.create()
    store = LosingCommitAnswers(open_store(pg_url), committed=committed)
    async with make_engine(pg_url, store=store) as engine:
        engine.register(checkout)
        await engine.start(checkout, {"order_id": "l1", "sku": "s"}, saga_id="lost-1")
        snap = await ended(engine, "lost-1")
        assert snap.status == SagaStatus.COMPLETED
    assert store.lost == 1
    # committed: recognised, the run went on; not committed: the run stopped and the recovered
    # run did the step again, from nothing
    assert calls["attempts"] == ([1] if committed else [1, 1])
    assert await db.rows("reservations") == ["l1"]


async def test_parallel_transactional_steps_each_commit_once(db: AppDb) -> None:
    """Branches of one gather: on SQLite they take the writer in turn, on PostgreSQL each has
    a connection of its own."""

    async def body(ctx: TransactionContext, order_id: str) -> str:
        await insert(ctx, "reservations", order_id)
        return order_id

    step = create_saga_transaction("Branch", body)

    @saga_workflow("Branches")
    async def flow(saga: SagaContext, inp: dict[str, Any]) -> Any:
        return await saga.gather(*(step(saga, f"b{n}") for n in range(4)))

    async with make_engine(db.url) as engine:
        engine.register(flow)
        assert await engine.run(flow, {}, saga_id="t-12") == ["b0", "b1", "b2", "b3"]
    assert await db.rows("reservations") == ["b0", "b1", "b2", "b3"]


async def test_a_backend_with_no_transaction_to_give_is_refused_clearly() -> None:
    """Another backend (Restate) calls a step's run with a plain context."""
    plain = SagaContext(None, step_seq=0, step_name="ReserveStock", attempt=1)  # type: ignore[arg-type]
    with pytest.raises(TransactionsUnsupportedError, match="runs only on sagakit's engine"):
        await reserve_stock.run(plain, {"order_id": "r", "sku": "s"})
    with pytest.raises(TransactionsUnsupportedError, match="needs a transaction"):
        await reserve_stock.call_compensation({"order_id": "r"}, False)


async def test_a_body_that_swallows_its_own_sql_error(db: AppDb) -> None:
    """SQLite undoes only the failed statement; PostgreSQL aborts the whole transaction, so
    the commit is refused and the step fails for good (never a loop of recoveries)."""

    async def body(ctx: TransactionContext, inp: dict[str, Any]) -> dict[str, Any]:
        calls.setdefault("attempts", []).append(ctx.attempt)
        await insert(ctx, "reservations", inp["order_id"])
        with contextlib.suppress(sqlite3.IntegrityError, asyncpg.UniqueViolationError):
            await insert(ctx, "reservations", inp["order_id"])  # the primary key refuses it
        return {"ok": True}

    step = create_saga_transaction("Swallow", body, options=SagaStepOptions(retry=fast_retry(3)))

    @saga_workflow("SwallowFlow")
    async def flow(saga: SagaContext, inp: dict[str, Any]) -> Any:
        return await step(saga, inp)

    async with make_engine(db.url) as engine:
        engine.register(flow)
        await engine.start(flow, {"order_id": "o13"}, saga_id="t-13")
        snap = await ended(engine, "t-13")
    assert calls["attempts"] == [1]
    if db.sqlite:
        assert snap.status == SagaStatus.COMPLETED
        assert await db.rows("reservations") == ["o13"]
    else:
        assert snap.status == SagaStatus.COMPENSATED
        assert "could not commit" in str(snap.steps[0].error)
        assert await db.rows("reservations") == []
