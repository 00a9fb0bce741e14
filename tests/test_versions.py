"""Workflow versions (issue 16): each saga records the version that started it, workers claim
only the versions they registered, several versions run side by side, sagas no live worker
serves are reported as stranded. Upgrading a database of every earlier schema version with
sagas in flight: tests/test_upgrade_from_every_schema.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    BaseStep,
    Engine,
    SagaBuilder,
    SagaConflictError,
    SagaContext,
    SagaStatus,
    create_saga_long_workflow,
    create_saga_virtual_object,
    create_saga_workflow,
    saga_step,
    saga_workflow,
)
from sagakit.worker import load_app

from .conftest import make_engine

ran: list[str] = []


@saga_step("ReserveV1")
async def reserve_v1(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    ran.append("reserve-v1")
    return {"reserved": inp["item"]}


@saga_step("ShipV1")
async def ship_v1(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    ran.append("ship-v1")
    return {"shipped": inp["reserved"]}


@saga_step("ReserveV2")
async def reserve_v2(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    ran.append("reserve-v2")
    return {"reserved": inp["item"], "warehouse": "B"}


@saga_workflow("Checkout", version="1")
async def checkout_v1(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    reserved = await reserve_v1(saga, inp)
    if inp.get("wait"):
        await saga.wait_for_signal("go")
    shipped = await ship_v1(saga, reserved)
    return {"code": "v1", **shipped}


@saga_workflow("Checkout", version="2")
async def checkout_v2(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    reserved = await reserve_v2(saga, inp)
    if inp.get("wait"):
        await saga.wait_for_signal("go")
    return {"code": "v2", **reserved}


async def plain(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    reserved = await reserve_v1(saga, inp)
    if inp.get("wait"):
        await saga.wait_for_signal("go")
    return {"code": "plain", **reserved}


class NoteIn(BaseModel):
    text: str


class Note(BaseStep[NoteIn, NoteIn]):
    async def execute(self, inp: NoteIn) -> NoteIn:
        return inp


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check()`` holds (a background worker's tick), failing after a generous
    while: the test asserts that it happens, not how fast."""
    for _ in range(600):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    ran.clear()


# -- definitions ------------------------------------------------------------------------------


def test_every_kind_of_definition_takes_a_version() -> None:
    assert checkout_v1.version == "1" and checkout_v2.version == "2"
    assert create_saga_workflow("P", plain).version is None
    assert create_saga_workflow("P", plain, version="7").version == "7"

    long_wf = create_saga_long_workflow("Approval", version="3")

    @long_wf.main()
    async def main(saga: SagaContext, inp: dict[str, Any]) -> str:
        return "ok"

    assert long_wf.version == "3"

    obj = create_saga_virtual_object("Cart", version="4")

    @obj.handler()
    async def add(saga: SagaContext, o: Any, inp: dict[str, Any]) -> None:
        return None

    assert obj.version == "4"
    assert [w.version for w in obj.workflows] == ["4"]
    with pytest.raises(ValueError, match="non-empty string"):
        create_saga_workflow("P", plain, version="")


def test_two_definitions_at_one_version_conflict() -> None:
    other_v1 = create_saga_workflow("Checkout", plain, version="1")
    engine = Engine("memory://")
    engine.register(checkout_v1, checkout_v2)  # side by side: no conflict
    with pytest.raises(SagaConflictError, match="at version '1'"):
        engine.register(other_v1)
    assert engine.served == [("Checkout", "1"), ("Checkout", "2")]


# -- side by side -------------------------------------------------------------------------------


async def test_v1_and_v2_side_by_side_in_one_engine(engine: Engine) -> None:
    engine.register(checkout_v1, checkout_v2)
    assert await engine.run(checkout_v1, {"item": "a"}, "s1") == {"code": "v1", "shipped": "a"}
    assert await engine.run(checkout_v2, {"item": "b"}, "s2") == {
        "code": "v2",
        "reserved": "b",
        "warehouse": "B",
    }
    await engine.run(checkout_v1, {"item": "d"}, "s4")  # starting v1 again changes nothing
    # a start by name starts the version registered last
    assert (await engine.run("Checkout", {"item": "c"}, "s3"))["code"] == "v2"
    versions = {s: (await engine.get(s)).version for s in ("s1", "s2", "s3", "s4")}
    assert versions == {"s1": "1", "s2": "2", "s3": "2", "s4": "1"}
    listed = {s.saga_id: s.version for s in await engine.list(name="Checkout")}
    assert listed == versions


async def test_a_suspended_saga_resumes_on_the_code_of_its_own_version(engine: Engine) -> None:
    engine.register(checkout_v1, checkout_v2)
    await engine.start(checkout_v1, {"item": "a", "wait": True}, "old")
    await engine.settle("old")
    await engine.start(checkout_v2, {"item": "b", "wait": True}, "new")
    await engine.settle("new")
    for saga_id in ("old", "new"):
        await engine.signal(saga_id, "go")
    assert (await engine.handle("old").result(timeout=60))["code"] == "v1"
    assert (await engine.handle("new").result(timeout=60))["code"] == "v2"
    assert [s.name for s in (await engine.get("old")).steps if s.kind == "step"] == [
        "ReserveV1",
        "ShipV1",
    ]


async def test_app_version_is_the_version_of_definitions_that_name_none(
    shared_store_url: str,
) -> None:
    wf = create_saga_workflow("Plain", plain)
    async with make_engine(shared_store_url, app_version="2024.06") as engine:
        engine.register(wf, checkout_v2)
        assert engine.served == [("Plain", "2024.06"), ("Checkout", "2")]
        await engine.run(wf, {"item": "a"}, "p1")
        await engine.run(checkout_v2, {"item": "a"}, "c1")  # its own version wins
        assert (await engine.get("p1")).version == "2024.06"
        assert (await engine.get("c1")).version == "2"
        await engine.start(wf, {"item": "b", "wait": True}, "p2")
        await engine.settle("p2")
    # an unversioned engine does not serve the sagas of app version 2024.06
    async with make_engine(shared_store_url) as unversioned:
        unversioned.register(wf)
        assert unversioned.served == [("Plain", None)]
        await unversioned.signal("p2", "go")
        assert await unversioned.run_due() == []
        assert [s.saga_id for s in await unversioned.admin.stranded()] == ["p2"]
        await unversioned.run(wf, {"item": "c"}, "p3")
        assert (await unversioned.get("p3")).version is None


async def test_builder_definitions_are_registered_at_a_version(engine: Engine) -> None:
    builder = SagaBuilder()
    builder.add_step(step=Note())
    definition = builder.build()
    engine.register("orders", definition, version="5")
    engine.register("orders", definition, version="5")  # the same again: nothing
    assert ("orders", "5") in engine.served
    await engine.run("orders", {"text": "hi"}, "o1")
    assert (await engine.get("o1")).version == "5"
    with pytest.raises(TypeError, match="declarative definition"):
        engine.register(checkout_v1, version="9")  # type: ignore[call-overload]


# -- deploying a new version beside sagas of the old one ----------------------------------------


async def test_a_worker_of_v2_leaves_v1_sagas_stranded_until_a_v1_worker_runs_them(
    shared_store_url: str,
) -> None:
    async with make_engine(shared_store_url) as old:
        old.register(checkout_v1)
        await old.start(checkout_v1, {"item": "a", "wait": True}, "v1-saga")
        await old.settle("v1-saga")
        assert (await old.get("v1-saga")).status == SagaStatus.SUSPENDED
        assert await old.admin.stranded() == []  # its worker is live
    assert ran == ["reserve-v1"]

    # code v2 deployed: an engine that registers only v2
    async with make_engine(shared_store_url) as new:
        new.register(checkout_v2)
        await new.signal("v1-saga", "go")  # due now: a v1 worker would run it at once
        assert await new.run_due() == []
        assert await new.recover(wait=True) == 0
        await new.run(checkout_v2, {"item": "b"}, "v2-saga")
        snapshot = await new.get("v1-saga")
        assert (snapshot.status, snapshot.owner, snapshot.version) == (
            SagaStatus.SUSPENDED,
            None,
            "1",
        )

        async def v2_worker_is_live() -> bool:
            return await new.admin.count_stranded() == 1

        await eventually(v2_worker_is_live, "the v2 worker's heartbeat")
        stranded = await new.admin.stranded()
        assert [(s.saga_id, s.name, s.version) for s in stranded] == [("v1-saga", "Checkout", "1")]

        # an engine serving v1 comes back: it runs the saga to its end, on v1 code
        async with make_engine(shared_store_url) as v1_again:
            v1_again.register(checkout_v1)
            result = await v1_again.handle("v1-saga").result(timeout=60)
            assert result == {"code": "v1", "shipped": "a"}

            async def none_stranded() -> bool:
                return await new.admin.count_stranded() == 0

            await eventually(none_stranded, "the v1 saga no longer stranded")
    assert ran == ["reserve-v1", "reserve-v2", "ship-v1"]


async def test_a_closed_worker_no_longer_serves_its_versions(shared_store_url: str) -> None:
    async with make_engine(shared_store_url) as client:
        client.register(checkout_v1)
        await client.start(checkout_v1, {"item": "a", "wait": True}, "waiting")
        await client.settle("waiting")

        async def served() -> bool:
            return await client.admin.count_stranded() == 0

        await eventually(served, "the worker's own heartbeat")
        async with make_engine(shared_store_url, worker=False) as reader:
            assert await reader.admin.stranded() == []
    async with make_engine(shared_store_url, worker=False) as reader:
        # the only worker closed (and deleted its heartbeat); a client engine serves nothing
        assert [s.saga_id for s in await reader.admin.stranded()] == ["waiting"]
        assert await reader.admin.count_stranded() == 1


async def test_long_workflow_handlers_of_the_saga_s_own_version(engine: Engine) -> None:
    def approval(version: str) -> Any:
        wf = create_saga_long_workflow("Approval", version=version)

        @wf.main()
        async def main(saga: SagaContext, inp: dict[str, Any]) -> str:
            return str(await saga.wait_for_signal("done"))

        @wf.handler()
        async def which(ctx: Any, inp: Any) -> str:
            return f"handler v{version}"

        return wf

    v1, v2 = approval("1"), approval("2")
    engine.register(v1, v2)
    await engine.start(v1, {}, "a1")
    await engine.settle("a1")
    await engine.start(v2, {}, "a2")
    await engine.settle("a2")
    assert await engine.call("a1", "which") == "handler v1"
    assert await engine.call("a2", "which") == "handler v2"


def test_a_worker_app_engine_serves_every_version_and_its_app_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sagakit worker --app module:engine` (and replay, fork) serve what the app's engine
    serves: each registered version, and its app_version for definitions that name none."""
    (tmp_path / "versioned_app.py").write_text(
        "from sagakit import Engine, saga_workflow\n"
        "@saga_workflow('Pay', version='1')\n"
        "async def pay_v1(saga, inp): return 1\n"
        "@saga_workflow('Pay', version='2')\n"
        "async def pay_v2(saga, inp): return 2\n"
        "@saga_workflow('Ship')\n"
        "async def ship(saga, inp): return 'shipped'\n"
        "engine = Engine('memory://', app_version='2024.06')\n"
        "engine.register(pay_v1, pay_v2, ship)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_app("versioned_app:engine")
    assert loaded.app_version == "2024.06"
    served = loaded.engine("memory://").served
    assert sorted(served) == [("Pay", "1"), ("Pay", "2"), ("Ship", "2024.06")]
