"""Durable calls between sagas (``saga.call``, ``saga.call_object``, ``saga.call_handler``,
``saga.send``, ``saga.send_object``), journaled so that a replay returns the recorded result
without calling again, on SQLite and PostgreSQL; typed clients outside sagas
(``engine.client``); and a durable call surviving a SIGKILL of the process that runs it."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    Engine,
    SagaCompensatedError,
    SagaContext,
    SagaError,
    SagaStatus,
    SagaVirtualObject,
    SagaWorkflow,
    TerminalError,
    create_saga_long_workflow,
    create_saga_virtual_object,
    saga_step,
    saga_workflow,
)
from tests.conftest import make_engine, make_store_url
from tests.processes import AppProcesses, journal_rows


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_store_url(request.param, tmp_path, request)


ran: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()


class Quote(BaseModel):
    sku: str


class Price(BaseModel):
    sku: str
    cents: int


@saga_step("PriceIt")
async def price_it(ctx: SagaContext, sku: str) -> int:
    ran["PriceIt"] += 1
    return 100 * len(sku)


@saga_workflow("Pricing")
async def pricing(saga: SagaContext, inp: Quote) -> Price:
    return Price(sku=inp.sku, cents=await price_it(saga, inp.sku))


@saga_workflow("Refuses")
async def refuses(saga: SagaContext, inp: Quote) -> Price:
    raise TerminalError(f"no price for {inp.sku}")


cart = create_saga_virtual_object("Cart")


@cart.handler()
async def add(saga: SagaContext, obj: Any, qty: int) -> int:
    ran["Cart.add"] += 1
    total: int = await obj.get("items", 0) + qty
    obj.set("items", total)
    return total


@cart.handler(kind="shared")
async def count(obj: Any, _: Any) -> int:
    ran["Cart.count"] += 1
    items: int = await obj.get("items", 0)
    return items


approval = create_saga_long_workflow("Approval")


@approval.main()
async def approval_main(saga: SagaContext, inp: dict[str, Any]) -> str:
    decision: str = await saga.promise("decision").value()
    return decision


@approval.handler()
async def decide(ctx: Any, decision: str) -> str:
    ran["Approval.decide"] += 1
    if decision == "maybe":
        raise ValueError("decide yes or no")
    await ctx.promise("decision").resolve(decision)
    return f"decided {decision}"


@saga_workflow("Caller")
async def caller(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    price = await saga.call(pricing, {"sku": inp["sku"]})
    added = await saga.call_object(cart, inp["cart"], "add", 2)
    items = await saga.call_object(cart, inp["cart"], "count")
    try:
        await saga.call_handler(approval, inp["approval"], "decide", "maybe")
    except TerminalError as exc:
        refused = exc.error_type
    decided = await saga.call_handler(approval, inp["approval"], "decide", "yes")
    sent = await saga.send(pricing, {"sku": "sent"})
    queued = await saga.send_object(cart, inp["cart"], "add", 5)
    try:
        await saga.call(refuses, {"sku": "x"})
    except SagaCompensatedError as exc:
        failed = str(exc)
    # the saga suspends here: its next run replays every call above from the journal
    await saga.wait_for_signal("finish")
    return {
        "price": price.model_dump(),
        "typed": isinstance(price, Price),
        "added": added,
        "items": items,
        "refused": refused,
        "decided": decided,
        "sent": sent,
        "queued": queued,
        "failed": "no price for x" in failed,
    }


WORKFLOWS: list[SagaWorkflow[Any, Any] | SagaVirtualObject] = [
    caller,
    pricing,
    refuses,
    cart,
    approval,
]


async def test_each_call_form_is_journaled_and_replayed_without_calling_again(db_url: str) -> None:
    async with make_engine(db_url) as engine:
        engine.register(*WORKFLOWS)
        await engine.start(approval, {}, "ap")
        handle = await engine.start(caller, {"sku": "abc", "cart": "c1", "approval": "ap"}, "k")
        await _until_waiting_for_signal(engine, "k")
        before = dict(ran)
        await engine.signal("k", "finish")
        out = await handle.result(timeout=30)
        assert await engine.handle("k/send-7").result(timeout=30) == Price(sku="sent", cents=400)
        assert await engine.handle("k/send-8").result(timeout=30) == 7
        assert await engine.handle("ap").result(timeout=30) == "yes"
        snap = await engine.get("k")
    assert out == {
        "price": {"sku": "abc", "cents": 300},
        "typed": True,
        "added": 2,
        "items": 2,
        "refused": "ValueError",
        "decided": "decided yes",
        "sent": "k/send-7",
        "queued": "k/send-8",
        "failed": True,
    }
    # the replay after the signal called nothing again
    assert ran["PriceIt"] == before["PriceIt"] == 2  # the call, and the sent saga
    assert ran["Cart.count"] == 1
    assert ran["Approval.decide"] == 2
    assert ran["Cart.add"] == 2  # the call, and the queued one
    assert [(kind, name) for kind, name, _ in journal_rows(snap)] == [
        ("child", "Pricing"),
        ("child_result", "k/child-0"),
        ("child", "Cart/add"),
        ("child_result", "k/child-2"),
        ("call", "Cart/c1.count"),
        ("call", "Approval/ap.decide"),
        ("call", "Approval/ap.decide"),
        ("send", "Pricing"),
        ("send", "Cart/add"),
        ("child", "Refuses"),
        ("child_result", "k/child-9"),
        ("signal", "finish"),
    ]
    assert journal_rows(snap)[5][2] == "failed"


async def _until_waiting_for_signal(engine: Engine, saga_id: str) -> None:
    for _ in range(6000):
        snap = await engine.get(saga_id)
        if snap.status == SagaStatus.SUSPENDED and snap.steps[-1].kind == "signal":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"saga {saga_id} never waited for its signal")


async def test_misuse_is_refused_clearly() -> None:
    @saga_step("Inside")
    async def inside(ctx: SagaContext, _: Any) -> None:
        await ctx.call(pricing, {"sku": "a"})

    @saga_workflow("CallsInStep")
    async def calls_in_step(saga: SagaContext, _: Any) -> None:
        await inside(saga, None)

    @saga_workflow("Unregistered")
    async def unregistered(saga: SagaContext, _: Any) -> None:
        await saga.call(refuses, {"sku": "a"})

    @saga_workflow("SendsShared")
    async def sends_shared(saga: SagaContext, _: Any) -> None:
        await saga.send_object(cart, "c", "count")

    @saga_workflow("NotLong")
    async def not_long(saga: SagaContext, _: Any) -> None:
        await saga.call_handler(pricing, "x", "decide")  # type: ignore[arg-type]

    async with make_engine("memory://") as engine:
        engine.register(pricing, cart, calls_in_step, unregistered, sends_shared, not_long)
        with pytest.raises(SagaCompensatedError, match="inside step 'Inside'"):
            await engine.run(calls_in_step, None)
        with pytest.raises(SagaCompensatedError, match=r"'Refuses' is not registered.*register"):
            await engine.run(unregistered, None)
        with pytest.raises(SagaCompensatedError, match=r"is shared.*call_object"):
            await engine.run(sends_shared, None)
        with pytest.raises(SagaCompensatedError, match="takes a long workflow"):
            await engine.run(not_long, None)
        with pytest.raises(SagaError, match="takes a saga workflow"):
            engine.client("Pricing")  # type: ignore[call-overload]


async def test_clients_outside_sagas(db_url: str) -> None:
    async with make_engine(db_url) as engine:
        prices = engine.client(pricing)
        price: Price = await prices.run({"sku": "ab"}, "p1")
        assert price == Price(sku="ab", cents=200)
        assert await prices.run(Quote(sku="zz"), "p1") == price  # idempotent by saga id
        handle = await prices.start({"sku": "xyz"})
        assert await prices.handle(handle.saga_id).result(timeout=30) == Price(sku="xyz", cents=300)

        approvals = engine.client(approval)
        await approvals.start({}, "ap2")
        assert await approvals.call("ap2", "decide", "no") == "decided no"
        assert await approvals.handle("ap2").result(timeout=30) == "no"

        carts = engine.client(cart)
        assert await carts.call("c9", "add", 3) == 3
        queued = await carts.send("c9", "add", 4, call_id="c9-second")
        assert await engine.handle(queued).result(timeout=30) == 7
        assert await carts.call("c9", "count") == 7
        with pytest.raises(SagaError, match="is shared"):
            await carts.send("c9", "count")


# -- a durable call and SIGKILL ---------------------------------------------------------------

CALLER = "call-crash"
CALLEE = f"{CALLER}/child-1"  # Before takes seq 0, the call's start seq 1


class Callers(AppProcesses):
    def app_args(self) -> list[str]:
        return [str(self.ledger), str(self.markers), CALLER]

    async def status_is(self, proc: subprocess.Popen[bytes], saga_id: str, status: str) -> None:
        async def check() -> bool:
            async with make_engine(self.url) as reader:
                record = await reader._store_or_raise().load_saga(saga_id)
            return record is not None and record.status == status

        await self.until(proc, f"saga {saga_id!r} to be {status}", check)


@pytest.fixture
def callers(tmp_path: Path, process_db_url: str) -> Iterator[Callers]:
    procs = Callers(tmp_path, process_db_url, "tests.calls_crash_app")
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["callee-runs", "caller-waits"])
async def test_a_durable_call_survives_sigkill_of_the_caller(callers: Callers, moment: str) -> None:
    if moment == "callee-runs":
        first = callers.spawn("start", "--block", "Work")
        await callers.blocked_in(first, "Work", "the callee's step")
    else:
        first = callers.spawn("start")
        # the callee did its work and waits for "go"; the caller waits for the callee
        await callers.status_is(first, CALLEE, SagaStatus.SUSPENDED)
        await callers.status_is(first, CALLER, SagaStatus.SUSPENDED)
    callers.kill(first)

    second = callers.spawn("recover")
    async with make_engine(callers.url) as sender:
        await sender.signal(CALLEE, "go")
    summary = callers.finish(second)
    assert summary["status"] == "COMPLETED", summary
    events = callers.events()
    work_key = next(e["key"] for e in events if e["step"] == "Work")
    assert summary["output"] == {"callee": {"order": "o-1", "work_key": work_key}}

    async with make_engine(callers.url) as reader:
        sagas = sorted(s.saga_id for s in await reader.list(limit=100))
        caller_snap = await reader.get(CALLER)
        callee_snap = await reader.get(CALLEE)
    # exactly one callee saga, and the caller's journal holds one call of it
    assert sagas == [CALLER, CALLEE]
    assert journal_rows(caller_snap) == [
        ("step", "Before", "completed"),
        ("child", "Callee", "completed"),
        ("child_result", CALLEE, "completed"),
        ("step", "After", "completed"),
    ]
    assert callee_snap.status == SagaStatus.COMPLETED
    # each step's effect happened once, the callee's included, under one key
    effects = Counter(e["step"] for e in events if e["ev"] == "effect")
    assert effects == {"Before": 1, "Work": 1, "After": 1}
    starts = [e["pid"] for e in events if e["ev"] == "step" and e["step"] == "Work"]
    if moment == "callee-runs":
        # in flight at the kill: started again by the second process, under the same key
        assert starts == [first.pid, second.pid]
        assert len({e["key"] for e in events if e["step"] == "Work"}) == 1
    else:
        assert starts == [first.pid]
