"""``saga.patched`` / ``saga.deprecate_patch``: one workflow changed in place while sagas of it
are in flight (Temporal's patching), on every store kind.

"Deploying" a version is closing the engine that ran the old code and opening one on the same
database with the new function registered under the same name. A crash is an engine closed
while a step blocks (its run is cancelled, its lease released), as in test_engine_semantics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sagakit import Engine, SagaContext, SagaError, SagaStatus, saga_step, saga_workflow
from sagakit.timeline import render_timeline
from tests.conftest import engine_with
from tests.waiting import WAIT, Gate, suspended, within

SagaFunction = Callable[[SagaContext, Any], Awaitable[Any]]


class Shop:
    """The steps of the worked example, with a ledger of what really ran (not replayed)."""

    def __init__(self) -> None:
        self.ran: list[str] = []

        @saga_step("Reserve")
        async def reserve(ctx: SagaContext, order: str) -> str:
            self.ran.append(f"reserve {order}")
            return f"r-{order}"

        @saga_step("FraudCheck")
        async def fraud_check(ctx: SagaContext, order: str) -> str:
            self.ran.append(f"fraud {order}")
            return "ok"

        @saga_step("Charge")
        async def charge(ctx: SagaContext, order: str) -> str:
            self.ran.append(f"charge {order}")
            return f"c-{order}"

        self.reserve, self.fraud_check, self.charge = reserve, fraud_check, charge

    def v1(self) -> Any:
        @saga_workflow("Checkout")
        async def checkout(saga: SagaContext, order: str) -> list[str]:
            await self.reserve(saga, order)
            await saga.wait_for_signal("approved")
            return [await self.charge(saga, order)]

        return checkout

    def v2(self) -> Any:
        """The change, in place: a fraud check between the reservation and the approval."""

        @saga_workflow("Checkout")
        async def checkout(saga: SagaContext, order: str) -> list[str]:
            await self.reserve(saga, order)
            checked = []
            if saga.patched("add-fraud-check"):
                checked.append(await self.fraud_check(saga, order))
            await saga.wait_for_signal("approved")
            return [*checked, await self.charge(saga, order)]

        return checkout

    def v3(self) -> Any:
        """The cleanup, once no saga that began on v1 is in flight: the old branch is gone."""

        @saga_workflow("Checkout")
        async def checkout(saga: SagaContext, order: str) -> list[str]:
            await self.reserve(saga, order)
            saga.deprecate_patch("add-fraud-check")
            checked = [await self.fraud_check(saga, order)]
            await saga.wait_for_signal("approved")
            return [*checked, await self.charge(saga, order)]

        return checkout


async def kinds(engine: Engine, saga_id: str) -> list[tuple[str, str]]:
    snapshot = await engine.get(saga_id)
    return [(s.kind, s.name) for s in snapshot.steps if s.seq >= 0]


async def approve(engine: Engine, saga_id: str) -> Any:
    await engine.signal(saga_id, "approved", True)
    return await engine.handle(saga_id).result(timeout=WAIT)


# -- the worked example -----------------------------------------------------------------------


async def test_old_sagas_keep_the_old_path_and_new_ones_take_the_new(
    shared_store_url: str,
) -> None:
    shop = Shop()
    async with engine_with(shared_store_url, shop.v1()) as v1:
        await v1.start("Checkout", "done-on-v1", saga_id="done-on-v1")
        assert await approve(v1, "done-on-v1") == ["c-done-on-v1"]
        await v1.start("Checkout", "old", saga_id="old")
        await suspended(v1, "old")
    assert shop.ran == ["reserve done-on-v1", "charge done-on-v1", "reserve old"]
    shop.ran.clear()

    async with engine_with(shared_store_url, shop.v2()) as v2:
        # the old saga had gone past the patch point: it replays its journal down the old path
        assert await approve(v2, "old") == ["c-old"]
        assert await kinds(v2, "old") == [
            ("step", "Reserve"), ("signal", "approved"), ("step", "Charge"),
        ]  # fmt: skip
        # a new saga reaches it first: the new path, with the marker journaled before the step
        await v2.start("Checkout", "new", saga_id="new")
        await suspended(v2, "new")
        assert await approve(v2, "new") == ["ok", "c-new"]
        assert await kinds(v2, "new") == [
            ("step", "Reserve"), ("patch", "add-fraud-check"), ("step", "FraudCheck"),
            ("signal", "approved"), ("step", "Charge"),
        ]  # fmt: skip
        finished = await v2.get("done-on-v1")
    assert shop.ran == ["charge old", "reserve new", "fraud new", "charge new"]
    assert finished.status == SagaStatus.COMPLETED


async def test_a_saga_patched_then_resumed_replays_the_new_path(shared_store_url: str) -> None:
    shop = Shop()
    async with engine_with(shared_store_url, shop.v2()) as first:
        await first.start("Checkout", "n", saga_id="n")
        await suspended(first, "n")
    async with engine_with(shared_store_url, shop.v2()) as second:
        assert await approve(second, "n") == ["ok", "c-n"]
    # the fraud check ran once: the resumed run found the marker and took the same path
    assert shop.ran == ["reserve n", "fraud n", "charge n"]


async def test_the_cleanup_phase_replays_journals_with_and_without_the_marker(
    shared_store_url: str,
) -> None:
    shop = Shop()
    async with engine_with(shared_store_url, shop.v2()) as v2:
        await v2.start("Checkout", "patched", saga_id="patched")
        await suspended(v2, "patched")
    async with engine_with(shared_store_url, shop.v3()) as v3:
        await v3.start("Checkout", "clean", saga_id="clean")
        await suspended(v3, "clean")
    shop.ran.clear()
    async with engine_with(shared_store_url, shop.v3()) as v3:
        # written by v2's new path: deprecate_patch takes its marker
        assert await approve(v3, "patched") == ["ok", "c-patched"]
        # written by v3: no marker, nothing taken
        assert await approve(v3, "clean") == ["ok", "c-clean"]
        assert [k for k, _ in await kinds(v3, "clean")] == ["step", "step", "signal", "step"]
        assert ("patch", "add-fraud-check") in await kinds(v3, "patched")
    assert shop.ran == ["charge patched", "charge clean"]


async def test_deprecating_while_sagas_of_the_old_path_are_in_flight_is_caught(
    shared_store_url: str,
) -> None:
    shop = Shop()
    async with engine_with(shared_store_url, shop.v1()) as v1:
        await v1.start("Checkout", "old", saga_id="old")
        await suspended(v1, "old")
    async with engine_with(shared_store_url, shop.v3()) as v3:
        await v3.signal("old", "approved", True)
        with pytest.raises(SagaError):
            await v3.handle("old").result(timeout=WAIT)
        snapshot = await v3.get("old")
    assert snapshot.status == SagaStatus.FAILED
    assert snapshot.error is not None and snapshot.error["kind"] == "non_determinism"
    assert "FraudCheck" in snapshot.error["message"]
    assert shop.ran == ["reserve old"]  # nothing ran on the wrong journal


async def test_a_saga_that_crashed_before_the_patch_point_takes_the_new_path(
    shared_store_url: str,
) -> None:
    shop = Shop()
    gate = Gate()
    holds = 0

    @saga_step("Hold")
    async def hold(ctx: SagaContext, order: str) -> str:
        nonlocal holds
        holds += 1
        if holds == 1:
            await gate.hold()  # the worker dies here, before the patch point
        return "held"

    def version(patched: bool) -> Any:
        @saga_workflow("Held")
        async def held(saga: SagaContext, order: str) -> list[str]:
            await shop.reserve(saga, order)
            await hold(saga, order)
            checked = []
            if patched and saga.patched("add-fraud-check"):
                checked.append(await shop.fraud_check(saga, order))
            return [*checked, await shop.charge(saga, order)]

        return held

    async with engine_with(shared_store_url, version(False)) as v1:
        await v1.start("Held", "x", saga_id="x")
        await gate.reached()
    async with engine_with(shared_store_url, version(True)) as v2:
        await within(v2.recover(wait=True))
        assert await v2.handle("x").result(timeout=WAIT) == ["ok", "c-x"]
    assert shop.ran == ["reserve x", "fraud x", "charge x"]
    assert holds == 2


# -- determinism ------------------------------------------------------------------------------


def gathered(shop: Shop, patched: bool) -> Any:
    @saga_workflow("Gathered")
    async def wf(saga: SagaContext, order: str) -> list[list[str]]:
        async def branch(i: int) -> list[str]:
            out = [await shop.reserve(saga, f"{order}.{i}")]
            if patched and saga.patched("add-fraud-check"):
                out.append(await shop.fraud_check(saga, f"{order}.{i}"))
            await saga.wait_for_signal(f"go-{i}")
            return out

        return await saga.gather(branch(0), branch(1), branch(2))

    return wf


async def go(engine: Engine, saga_id: str) -> Any:
    for i in range(3):
        await engine.signal(saga_id, f"go-{i}")
    return await engine.handle(saga_id).result(timeout=WAIT)


async def test_patched_in_gather_branches_is_deterministic(shared_store_url: str) -> None:
    shop = Shop()
    async with engine_with(shared_store_url, gathered(shop, False)) as v1:
        await v1.start("Gathered", "old", saga_id="old")
        await suspended(v1, "old")
    async with engine_with(shared_store_url, gathered(shop, True)) as v2:
        await v2.start("Gathered", "new", saga_id="new")
        await suspended(v2, "new")
        first = await kinds(v2, "new")
    shop.ran.clear()
    async with engine_with(shared_store_url, gathered(shop, True)) as v2:
        # each branch decides on its own numbers, whatever order the branches ran in
        assert await go(v2, "old") == [["r-old.0"], ["r-old.1"], ["r-old.2"]]
        assert await go(v2, "new") == [["r-new.0", "ok"], ["r-new.1", "ok"], ["r-new.2", "ok"]]
        after = await kinds(v2, "new")
        old = await kinds(v2, "old")
    assert shop.ran == []  # every step was replayed, none ran again
    assert [k for k in first if k[0] == "patch"] == [("patch", "add-fraud-check")] * 3
    assert after[: len(first)] == first
    assert not [k for k in old if k[0] in ("patch", "step") and k[1] != "Reserve"]


async def test_an_older_patch_of_the_same_place_is_found_after_a_newer_one(
    shared_store_url: str,
) -> None:
    """`if patched("v3") ... elif patched("v2") ... else ...`: each saga keeps the path its
    journal took."""
    ran: list[str] = []

    @saga_step("Path")
    async def path(ctx: SagaContext, which: str) -> str:
        ran.append(which)
        return which

    def version(newest: int) -> Any:
        @saga_workflow("Stacked")
        async def stacked(saga: SagaContext, inp: Any) -> str:
            chosen: str
            if newest >= 3 and saga.patched("v3"):
                chosen = await path(saga, "v3")
            elif newest >= 2 and saga.patched("v2"):
                chosen = await path(saga, "v2")
            else:
                chosen = await path(saga, "v1")
            await saga.wait_for_signal("go")
            return chosen

        return stacked

    for newest, saga_id in [(1, "s1"), (2, "s2"), (3, "s3")]:
        async with engine_with(shared_store_url, version(newest)) as engine:
            await engine.start("Stacked", None, saga_id=saga_id)
            await suspended(engine, saga_id)
    ran.clear()
    async with engine_with(shared_store_url, version(3)) as engine:
        results = []
        for saga_id in ("s1", "s2", "s3"):
            await engine.signal(saga_id, "go")
            results.append(await engine.handle(saga_id).result(timeout=WAIT))
    assert results == ["v1", "v2", "v3"]
    assert ran == []


# -- misuse -----------------------------------------------------------------------------------


async def test_patching_inside_a_step_is_refused(shared_store_url: str) -> None:
    refusals: list[str] = []

    @saga_step("Inside")
    async def inside(ctx: SagaContext, inp: Any) -> None:
        for call in (lambda: ctx.patched("x"), lambda: ctx.deprecate_patch("x")):
            try:
                call()
            except SagaError as exc:
                refusals.append(str(exc))

    @saga_workflow("InsideStep")
    async def wf(saga: SagaContext, inp: Any) -> None:
        await inside(saga, None)

    @saga_workflow("BadId")
    async def bad_id(saga: SagaContext, inp: Any) -> None:
        saga.patched("")

    async with engine_with(shared_store_url, wf, bad_id) as engine:
        await engine.run(wf, None, timeout=WAIT)
        with pytest.raises(SagaError, match="change id must be a non-empty string"):
            await engine.run(bad_id, None, timeout=WAIT)
    assert len(refusals) == 2
    assert "ctx.patched was called inside step 'Inside'" in refusals[0]
    assert "ctx.deprecate_patch was called inside step 'Inside'" in refusals[1]


async def test_a_marker_of_another_change_fails_deprecate_patch_naming_both(
    shared_store_url: str,
) -> None:
    def version(deprecated: bool) -> Any:
        @saga_workflow("Renamed")
        async def renamed(saga: SagaContext, inp: Any) -> None:
            if deprecated:
                saga.deprecate_patch("fraud-v2")
            else:
                saga.patched("fraud")
            await saga.wait_for_signal("go")

        return renamed

    async with engine_with(shared_store_url, version(False)) as first:
        await first.start("Renamed", None, saga_id="r")
        await suspended(first, "r")
    async with engine_with(shared_store_url, version(True)) as second:
        await second.signal("r", "go")
        with pytest.raises(SagaError):
            await second.handle("r").result(timeout=WAIT)
        snapshot = await second.get("r")
    assert snapshot.status == SagaStatus.FAILED
    assert snapshot.error is not None
    assert "patch 'fraud'" in snapshot.error["message"]
    assert "saga.deprecate_patch('fraud-v2')" in snapshot.error["message"]


async def test_a_removed_patch_call_with_its_marker_in_flight_is_caught(
    shared_store_url: str,
) -> None:
    shop = Shop()
    async with engine_with(shared_store_url, shop.v2()) as v2:
        await v2.start("Checkout", "p", saga_id="p")
        await suspended(v2, "p")
    async with engine_with(shared_store_url, shop.v1()) as v1:
        await v1.signal("p", "approved", True)
        with pytest.raises(SagaError):
            await v1.handle("p").result(timeout=WAIT)
        snapshot = await v1.get("p")
    assert snapshot.error is not None and snapshot.error["kind"] == "non_determinism"
    assert "patch 'add-fraud-check'" in snapshot.error["message"]


async def test_the_timeline_labels_the_marker(shared_store_url: str) -> None:
    shop = Shop()
    async with engine_with(shared_store_url, shop.v2()) as engine:
        await engine.start("Checkout", "t", saga_id="t")
        await suspended(engine, "t")
        text = render_timeline(await engine.get("t"))
    line = next(line for line in text.splitlines() if "add-fraud-check" in line)
    assert "patch" in line and "took the new code path" in line
