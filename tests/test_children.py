"""Child sagas (``saga.start_child``), each checked on every store kind.

A child is a separate durable saga, with its own journal and its own rollback, recorded with its
parent's id. ``await child.result()`` waits durably (the parent is SUSPENDED meanwhile) and
returns the child's output, or raises ``SagaCompensatedError`` when the child failed and rolled
back. A completed child is not undone by a later failure of its parent.

Steps and workflows are defined inside each test, so that their logs belong to that test alone.
A restart is an engine closed while a step is held on a gate and a new engine opened on the same
database (``shared_store_url``); real processes are in test_children_crash.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    ChildSaga,
    CompensationFailedError,
    Engine,
    SagaCompensatedError,
    SagaConflictError,
    SagaContext,
    SagaError,
    SagaStatus,
    SagaTimeoutError,
    SagaValidationError,
    TerminalError,
    saga_step,
    saga_workflow,
    serde,
)
from sagakit.engine.children import default_child_id
from sagakit.stores.base import EventKind, NewSaga
from tests.conftest import engine_with, fast_retry
from tests.waiting import WAIT, Gate, RunLog, eventually, suspended, within


class ChildIn(BaseModel):
    n: int


class ChildOut(BaseModel):
    doubled: int
    child_id: str


class Ledger:
    """Steps whose runs and compensations are logged in order: ``("run", saga, name)`` when a
    step body runs, ``("undo", name)`` when its compensation runs."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.runs = Counter[str]()
        self.gates: dict[str, Gate] = {}

    def step(
        self, name: str, *, fail: bool = False, hold_first: bool = False, undo_fails: bool = False
    ) -> Any:
        """A hybrid step ``name`` returning ``f"{name}-out"``."""
        gate = self.gates.setdefault(name, Gate()) if hold_first else None

        async def undo(data: Any) -> None:
            self.events.append(("undo", name))
            if undo_fails:
                raise TerminalError(f"the compensation of {name} fails")

        @saga_step(name, compensate=undo, retry=fast_retry(2), compensation_retry=fast_retry(2))
        async def run(ctx: SagaContext, inp: Any) -> str:
            self.runs[name] += 1
            self.events.append(("run", ctx.saga_id, name))
            if gate is not None and self.runs[name] == 1:
                await gate.hold()
            if fail:
                raise TerminalError(f"{name} fails for good")
            return f"{name}-out"

        return run

    def undone(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "undo"]

    def ran(self) -> list[tuple[str, str]]:
        return [(e[1], e[2]) for e in self.events if e[0] == "run"]


def journal(snap: Any) -> list[tuple[str, str, str]]:
    return [(s.kind, s.name, s.status) for s in snap.steps]


async def saga_ids(engine: Engine) -> list[str]:
    return sorted(s.saga_id for s in await engine.list(limit=1000))


async def parent_of(engine: Engine, saga_id: str) -> str | None:
    record = await engine._store_or_raise().load_saga(saga_id)
    assert record is not None, f"no saga {saga_id!r}"
    return record.parent_id


# -- starting a child and waiting for it ------------------------------------------------------


async def test_a_child_is_a_separate_saga_and_result_returns_its_output(engine: Engine) -> None:
    log = Ledger()
    p1, c1, c2 = log.step("P1"), log.step("C1"), log.step("C2")
    handles: list[ChildSaga[Any]] = []

    @saga_workflow("Child")
    async def child_wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        return {"c1": await c1(saga, inp), "c2": await c2(saga, inp), "n": inp["n"] * 2}

    @saga_workflow("Parent")
    async def parent_wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        await p1(saga, None)
        child = await saga.start_child(child_wf, {"n": 21})
        handles.append(child)
        return {"child_id": child.saga_id, "out": await child.result()}

    result = await engine.run(parent_wf, None, saga_id="par", timeout=WAIT)
    assert result == {"child_id": "par/child-1", "out": {"c1": "C1-out", "c2": "C2-out", "n": 42}}
    assert handles[0].workflow_name == "Child"
    assert "par/child-1" in repr(handles[0])

    # two sagas: each with its own journal
    assert await saga_ids(engine) == ["par", "par/child-1"]
    parent = await engine.get("par")
    child = await engine.get("par/child-1")
    assert parent.status == child.status == SagaStatus.COMPLETED
    assert journal(parent) == [
        ("step", "P1", "completed"),
        ("child", "Child", "completed"),
        ("child_result", "par/child-1", "completed"),
    ]
    assert parent.steps[1].output == "par/child-1"
    assert journal(child) == [("step", "C1", "completed"), ("step", "C2", "completed")]
    assert child.input == {"n": 21}
    assert child.output == {"c1": "C1-out", "c2": "C2-out", "n": 42}
    # the child is recorded with its parent; the parent has none
    assert await parent_of(engine, "par/child-1") == "par"
    assert await parent_of(engine, "par") is None
    # the child's steps ran under the child's id
    assert log.ran() == [("par", "P1"), ("par/child-1", "C1"), ("par/child-1", "C2")]


async def test_the_parent_is_suspended_while_it_waits_for_the_child(engine: Engine) -> None:
    log = Ledger()
    c1 = log.step("C1", hold_first=True)
    after = log.step("After")

    @saga_workflow("SlowChild")
    async def child_wf(saga: SagaContext, inp: Any) -> str:
        out: str = await c1(saga, inp)
        return out

    @saga_workflow("WaitingParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> list[str]:
        child = await saga.start_child(child_wf, None)
        got = await child.result()
        return [got, await after(saga, None)]

    handle = await engine.start(parent_wf, None, saga_id="wp")
    await log.gates["C1"].reached()
    snap = await suspended(engine, "wp")
    # nothing of the parent runs or stays in memory; the child is still at work
    assert "wp" not in engine._tasks
    assert snap.owner is None
    assert journal(snap) == [
        ("child", "SlowChild", "completed"),
        ("child_result", "wp/child-0", "running"),
    ]
    assert (await engine.get("wp/child-0")).status == SagaStatus.RUNNING
    assert log.runs["After"] == 0

    log.gates["C1"].opened.set()
    assert await handle.result(timeout=WAIT) == ["C1-out", "After-out"]
    assert await engine.handle("wp/child-0").result(timeout=WAIT) == "C1-out"
    assert log.runs == {"C1": 1, "After": 1}


async def test_a_child_with_pydantic_models_gives_the_parent_its_output_model(
    engine: Engine,
) -> None:
    seen: list[Any] = []

    @saga_workflow("ModelChild")
    async def child_wf(saga: SagaContext, inp: ChildIn) -> ChildOut:
        seen.append(inp)
        return ChildOut(doubled=inp.n * 2, child_id=saga.saga_id)

    @saga_workflow("ModelParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        child = await saga.start_child(child_wf, {"n": "4"})  # validated: "4" -> 4
        out = await child.result()
        again = await child.result()
        return {
            "type": type(out).__name__,
            "out": out,
            "same": out == again,
            "again_type": type(again).__name__,
        }

    result = await engine.run(parent_wf, None, saga_id="mp", timeout=WAIT)
    assert result == {
        "type": "ChildOut",
        "out": {"doubled": 8, "child_id": "mp/child-0"},
        "same": True,
        "again_type": "ChildOut",
    }
    assert seen == [ChildIn(n=4)]
    assert type(seen[0]) is ChildIn
    assert (await engine.get("mp/child-0")).input == {"n": 4}
    # engine.handle(...).result() of the child gives the model too
    assert await engine.handle("mp/child-0").result(timeout=WAIT) == ChildOut(
        doubled=8, child_id="mp/child-0"
    )


async def test_result_twice_gives_the_same_value(engine: Engine) -> None:
    calls = Counter[str]()

    @saga_step("Roll")
    async def roll(ctx: SagaContext, inp: Any) -> float:
        calls["roll"] += 1
        return time.time()

    @saga_workflow("OnceChild")
    async def child_wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        return {"at": await roll(saga, None), "uuid": str(await saga.uuid())}

    @saga_workflow("TwiceParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> list[Any]:
        child = await saga.start_child(child_wf, None)
        first = await child.result()
        second = await child.result()
        return [first, second]

    first, second = await engine.run(parent_wf, None, saga_id="tw", timeout=WAIT)
    assert first == second
    assert calls == {"roll": 1}
    snap = await engine.get("tw")
    assert journal(snap) == [
        ("child", "OnceChild", "completed"),
        ("child_result", "tw/child-0", "completed"),
        ("child_result", "tw/child-0", "completed"),
    ]
    assert snap.steps[1].output == snap.steps[2].output


async def test_a_child_that_finished_before_the_parent_waited_is_kept_for_it(
    store_url: str,
) -> None:
    log = Ledger()
    c1 = log.step("C1")
    p2 = log.step("P2", hold_first=True)

    @saga_workflow("QuickChild")
    async def child_wf(saga: SagaContext, inp: Any) -> str:
        return f"quick:{await c1(saga, inp)}"

    @saga_workflow("LateParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> list[str]:
        child = await saga.start_child(child_wf, None)
        await p2(saga, None)  # held until the child has finished
        return [await child.result(), await p2(saga, None)]

    runs = RunLog()
    async with engine_with(store_url, parent_wf, child_wf, observers=[runs]) as engine:
        handle = await engine.start(parent_wf, None, saga_id="lp")
        await log.gates["P2"].reached()

        async def child_done() -> bool:
            return (await engine.get("lp/child-0")).status == SagaStatus.COMPLETED

        await eventually(child_done, "the child to complete")
        # the child told the parent before it recorded its end: the event waits in the parent
        events = await engine._store_or_raise().load_events("lp")
        assert [(e.kind, e.name) for e in events] == [(EventKind.CHILD, "lp/child-0")]
        assert (await engine.get("lp")).status == SagaStatus.RUNNING

        log.gates["P2"].opened.set()
        assert await handle.result(timeout=WAIT) == ["quick:C1-out", "P2-out"]
    # the kept event answered the wait without a suspension (a run that finds the event only as
    # it suspends runs again at once, ending with no status: None)
    assert SagaStatus.SUSPENDED not in runs.runs("lp")
    assert runs.runs("lp")[-1] == SagaStatus.COMPLETED
    assert log.runs == {"C1": 1, "P2": 2}


async def test_a_parent_that_does_not_wait_ends_and_its_child_still_completes(
    engine: Engine,
) -> None:
    log = Ledger()
    c1 = log.step("C1", hold_first=True)

    @saga_workflow("Orphan")
    async def child_wf(saga: SagaContext, inp: Any) -> str:
        out: str = await c1(saga, inp)
        return out

    @saga_workflow("Leaver")
    async def parent_wf(saga: SagaContext, inp: Any) -> str:
        child = await saga.start_child(child_wf, None)
        return child.saga_id

    assert await engine.run(parent_wf, None, saga_id="lv", timeout=WAIT) == "lv/child-0"
    await log.gates["C1"].reached()
    log.gates["C1"].opened.set()
    # telling a finished parent is not an error for the child
    assert await engine.handle("lv/child-0").result(timeout=WAIT) == "C1-out"
    assert (await engine.get("lv")).status == SagaStatus.COMPLETED
    assert (await engine.get("lv/child-0")).status == SagaStatus.COMPLETED


async def test_several_children_and_a_grandchild(engine: Engine) -> None:
    @saga_workflow("Leaf")
    async def leaf(saga: SagaContext, inp: int) -> dict[str, Any]:
        return {"id": saga.saga_id, "sq": inp * inp}

    @saga_workflow("Middle")
    async def middle(saga: SagaContext, inp: int) -> dict[str, Any]:
        grandchild = await saga.start_child(leaf, inp + 10)
        return {"id": saga.saga_id, "leaf": await grandchild.result()}

    @saga_workflow("Root")
    async def root(saga: SagaContext, inp: Any) -> list[Any]:
        children = [await saga.start_child(leaf, n) for n in (1, 2, 3)]
        nested = await saga.start_child(middle, 4)
        # waited in another order than started; and the nested one in between
        outs = [await children[2].result(), await nested.result()]
        outs += [await children[0].result(), await children[1].result()]
        return outs

    result = await engine.run(root, None, saga_id="root", timeout=WAIT)
    assert result == [
        {"id": "root/child-2", "sq": 9},
        {"id": "root/child-3", "leaf": {"id": "root/child-3/child-0", "sq": 196}},
        {"id": "root/child-0", "sq": 1},
        {"id": "root/child-1", "sq": 4},
    ]
    assert await saga_ids(engine) == [
        "root",
        "root/child-0",
        "root/child-1",
        "root/child-2",
        "root/child-3",
        "root/child-3/child-0",
    ]
    assert await parent_of(engine, "root/child-3/child-0") == "root/child-3"
    for n in range(4):
        assert await parent_of(engine, f"root/child-{n}") == "root"


async def test_a_long_parent_id_gives_a_short_derived_child_id(engine: Engine) -> None:
    parent_id = "p" * 195

    @saga_workflow("ShortChild")
    async def child_wf(saga: SagaContext, inp: Any) -> str:
        return saga.saga_id

    @saga_workflow("LongParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> list[str]:
        child = await saga.start_child(child_wf, None)
        return [child.saga_id, await child.result()]

    child_id, seen = await engine.run(parent_wf, None, saga_id=parent_id, timeout=WAIT)
    assert child_id == seen == default_child_id(parent_id, 0)
    assert len(child_id) <= 200
    assert child_id != f"{parent_id}/child-0"
    assert await parent_of(engine, child_id) == parent_id
    assert (await engine.get(child_id)).status == SagaStatus.COMPLETED


# -- a child that fails -----------------------------------------------------------------------


async def test_a_compensated_child_raises_in_the_parent_which_may_go_on(engine: Engine) -> None:
    log = Ledger()
    p1, p2 = log.step("P1"), log.step("P2")
    c1, c2 = log.step("C1"), log.step("C2", fail=True)

    @saga_workflow("FailingChild")
    async def child_wf(saga: SagaContext, inp: Any) -> None:
        await c1(saga, None)
        await c2(saga, None)

    @saga_workflow("ForgivingParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        await p1(saga, None)
        child = await saga.start_child(child_wf, None)
        try:
            await child.result()
        except SagaCompensatedError as exc:
            caught = {"saga": exc.saga_id, "type": exc.cause_type, "step": exc.step}
        return {"caught": caught, "p2": await p2(saga, None)}

    result = await engine.run(parent_wf, None, saga_id="fp", timeout=WAIT)
    assert result == {
        "caught": {"saga": "fp/child-1", "type": "TerminalError", "step": "C2"},
        "p2": "P2-out",
    }
    # the child rolled itself back; the parent undid nothing
    assert log.undone() == ["C2", "C1"]
    assert (await engine.get("fp")).status == SagaStatus.COMPLETED
    child = await engine.get("fp/child-1")
    assert child.status == SagaStatus.COMPENSATED
    assert [s.name for s in child.steps if s.kind == "compensation"] == ["C2", "C1"]
    parent_wait = [s for s in (await engine.get("fp")).steps if s.kind == "child_result"]
    assert [(s.name, s.status) for s in parent_wait] == [("fp/child-1", "completed")]


async def test_an_uncaught_child_failure_rolls_back_the_parents_own_steps(engine: Engine) -> None:
    log = Ledger()
    p1 = log.step("P1")
    c1, c2 = log.step("C1"), log.step("C2", fail=True)

    @saga_workflow("FailingChild2")
    async def child_wf(saga: SagaContext, inp: Any) -> None:
        await c1(saga, None)
        await c2(saga, None)

    @saga_workflow("StrictParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> None:
        await p1(saga, None)
        child = await saga.start_child(child_wf, None)
        await child.result()

    with pytest.raises(SagaCompensatedError) as caught:
        await engine.run(parent_wf, None, saga_id="sp", timeout=WAIT)
    assert caught.value.saga_id == "sp"
    assert caught.value.cause_type == "SagaCompensatedError"
    assert "sp/child-1" in caught.value.cause_message
    # the child's own rollback first, then the parent's
    assert log.undone() == ["C2", "C1", "P1"]
    assert (await engine.get("sp")).status == SagaStatus.COMPENSATED
    assert (await engine.get("sp/child-1")).status == SagaStatus.COMPENSATED


async def test_a_child_whose_rollback_failed_raises_compensation_failed(engine: Engine) -> None:
    log = Ledger()
    c1 = log.step("C1", undo_fails=True)
    c2 = log.step("C2", fail=True)

    @saga_workflow("BrokenChild")
    async def child_wf(saga: SagaContext, inp: Any) -> None:
        await c1(saga, None)
        await c2(saga, None)

    @saga_workflow("BrokenParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        child = await saga.start_child(child_wf, None)
        try:
            await child.result()
        except CompensationFailedError as exc:
            return {"type": type(exc).__name__, "cause": exc.cause_type, "n": len(exc.failures)}
        return {"type": None}

    result = await engine.run(parent_wf, None, saga_id="bp", timeout=WAIT)
    assert result == {"type": "CompensationFailedError", "cause": "TerminalError", "n": 1}
    assert (await engine.get("bp/child-0")).status == SagaStatus.FAILED


async def test_a_completed_child_is_not_undone_by_the_parents_failure(engine: Engine) -> None:
    log = Ledger()
    p1 = log.step("P1")
    c1 = log.step("C1")
    boom = log.step("Boom", fail=True)

    @saga_workflow("DoneChild")
    async def child_wf(saga: SagaContext, inp: Any) -> str:
        out: str = await c1(saga, None)
        return out

    @saga_workflow("FailingParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> None:
        await p1(saga, None)
        child = await saga.start_child(child_wf, None)
        assert await child.result() == "C1-out"
        await boom(saga, None)

    with pytest.raises(SagaCompensatedError) as caught:
        await engine.run(parent_wf, None, saga_id="fpar", timeout=WAIT)
    assert caught.value.step == "Boom"
    assert log.undone() == ["Boom", "P1"]
    parent = await engine.get("fpar")
    assert [s.name for s in parent.steps if s.kind == "compensation"] == ["Boom", "P1"]
    child = await engine.get("fpar/child-1")
    assert child.status == SagaStatus.COMPLETED
    assert child.output == "C1-out"
    assert [s.kind for s in child.steps] == ["step"]


# -- timeouts ---------------------------------------------------------------------------------


async def test_result_with_a_timeout_raises_and_the_child_goes_on(engine: Engine) -> None:
    @saga_workflow("Dawdler")
    async def child_wf(saga: SagaContext, inp: Any) -> Any:
        return {"got": await saga.wait_for_signal("go")}

    @saga_workflow("Impatient")
    async def parent_wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        child = await saga.start_child(child_wf, None)
        began = await saga.now()
        try:
            await child.result(timeout=0.3)
        except SagaTimeoutError as exc:
            timed_out = type(exc).__name__
        waited = (await saga.now()) - began
        # a second wait for the same child, without a timeout, gets its output later
        return {
            "timed_out": timed_out,
            "waited": waited.total_seconds(),
            "then": await child.result(),
        }

    handle = await engine.start(parent_wf, None, saga_id="imp")

    async def timed_out() -> bool:
        steps = (await engine.get("imp")).steps
        return any(s.kind == "child_result" and s.status == "failed" for s in steps)

    await eventually(timed_out, "the first wait to time out")
    await suspended(engine, "imp")
    assert (await engine.get("imp/child-0")).status == SagaStatus.SUSPENDED
    await engine.signal("imp/child-0", "go", 7)
    result = await handle.result(timeout=WAIT)
    assert result["timed_out"] == "SagaTimeoutError"
    assert result["waited"] >= 0.3
    assert result["then"] == {"got": 7}
    snap = await engine.get("imp")
    assert [(s.kind, s.status) for s in snap.steps if s.kind == "child_result"] == [
        ("child_result", "failed"),
        ("child_result", "completed"),
    ]


async def test_an_uncaught_timeout_rolls_back_the_parent_but_not_the_child(
    engine: Engine,
) -> None:
    log = Ledger()
    p1 = log.step("P1")
    c1 = log.step("C1")

    @saga_workflow("SlowSignalChild")
    async def child_wf(saga: SagaContext, inp: Any) -> Any:
        await c1(saga, None)
        return await saga.wait_for_signal("go")

    @saga_workflow("TimingOutParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> Any:
        await p1(saga, None)
        child = await saga.start_child(child_wf, None)
        return await child.result(timeout=0.2)

    with pytest.raises(SagaCompensatedError) as caught:
        await engine.run(parent_wf, None, saga_id="top", timeout=WAIT)
    assert caught.value.cause_type == "SagaTimeoutError"
    assert log.undone() == ["P1"]
    # the child goes on, on its own: it still waits, and completes when signalled
    assert (await suspended(engine, "top/child-1")).status == SagaStatus.SUSPENDED
    await engine.signal("top/child-1", "go", "late")
    assert await engine.handle("top/child-1").result(timeout=WAIT) == "late"
    assert log.undone() == ["P1"]
    assert (await engine.get("top")).status == SagaStatus.COMPENSATED


# -- refused children -------------------------------------------------------------------------


async def test_an_explicit_child_id_is_used_and_recorded_with_its_parent(engine: Engine) -> None:
    @saga_workflow("NamedChild")
    async def child_wf(saga: SagaContext, inp: Any) -> str:
        return f"I am {saga.saga_id}"

    @saga_workflow("Namer")
    async def parent_wf(saga: SagaContext, inp: Any) -> list[str]:
        child = await saga.start_child(child_wf, None, saga_id="my-child")
        # starting the same id again in the same parent is the same child
        again = await saga.start_child(child_wf, None, saga_id="my-child")
        return [child.saga_id, again.saga_id, await child.result(), await again.result()]

    result = await engine.run(parent_wf, None, saga_id="namer", timeout=WAIT)
    assert result == ["my-child", "my-child", "I am my-child", "I am my-child"]
    assert await saga_ids(engine) == ["my-child", "namer"]
    assert await parent_of(engine, "my-child") == "namer"


async def test_a_child_id_taken_by_an_unrelated_saga_raises_conflict(engine: Engine) -> None:
    log = Ledger()
    c1 = log.step("C1")

    @saga_workflow("Target")
    async def target(saga: SagaContext, inp: Any) -> str:
        out: str = await c1(saga, inp)
        return out

    @saga_workflow("Other")
    async def other(saga: SagaContext, inp: Any) -> str:
        return "other"

    @saga_workflow("Grabber")
    async def grabber(saga: SagaContext, inp: str) -> dict[str, Any]:
        try:
            await saga.start_child(target, "from-grabber", saga_id=inp)
        except SagaConflictError as exc:
            return {"conflict": type(exc).__name__, "message": str(exc)}
        return {"conflict": None}

    # the same workflow, started on its own (no parent); and another workflow
    assert await engine.run(target, "standalone", saga_id="taken-same", timeout=WAIT) == "C1-out"
    assert await engine.run(other, None, saga_id="taken-other", timeout=WAIT) == "other"
    before = {s.saga_id: (s.status, s.input, s.updated_at) for s in await engine.list()}

    same = await engine.run(grabber, "taken-same", saga_id="g1", timeout=WAIT)
    assert same["conflict"] == "SagaConflictError"
    assert "no parent" in same["message"]
    other_wf = await engine.run(grabber, "taken-other", saga_id="g2", timeout=WAIT)
    assert other_wf["conflict"] == "SagaConflictError"
    assert "Other" in other_wf["message"]

    # the unrelated sagas are untouched, nothing ran again, no other saga appeared
    after = {s.saga_id: (s.status, s.input, s.updated_at) for s in await engine.list()}
    assert {k: after[k] for k in before} == before
    assert sorted(after) == ["g1", "g2", "taken-other", "taken-same"]
    assert await parent_of(engine, "taken-same") is None
    assert log.runs == {"C1": 1}

    # a child of another parent is unrelated too
    @saga_workflow("Adopter")
    async def adopter(saga: SagaContext, inp: Any) -> str:
        child = await saga.start_child(target, "from-adopter", saga_id="kid")
        out: str = await child.result()
        return out

    assert await engine.run(adopter, None, saga_id="adopter", timeout=WAIT) == "C1-out"
    kid = await engine.get("kid")
    adopted = await engine.run(grabber, "kid", saga_id="g3", timeout=WAIT)
    assert adopted["conflict"] == "SagaConflictError"
    assert "parent 'adopter'" in adopted["message"]
    assert await parent_of(engine, "kid") == "adopter"
    assert (await engine.get("kid")).updated_at == kid.updated_at
    assert log.runs == {"C1": 2}


async def test_an_uncaught_conflict_rolls_back_the_parent(engine: Engine) -> None:
    log = Ledger()
    p1 = log.step("P1")

    @saga_workflow("Occupant")
    async def occupant(saga: SagaContext, inp: Any) -> str:
        return "here first"

    @saga_workflow("Clumsy")
    async def clumsy(saga: SagaContext, inp: Any) -> None:
        await p1(saga, None)
        await saga.start_child(occupant, None, saga_id="occupied")

    await engine.run(occupant, None, saga_id="occupied", timeout=WAIT)
    with pytest.raises(SagaCompensatedError) as caught:
        await engine.run(clumsy, None, saga_id="clumsy", timeout=WAIT)
    assert caught.value.cause_type == "SagaConflictError"
    assert log.undone() == ["P1"]
    assert await parent_of(engine, "occupied") is None


async def test_start_child_refuses_what_is_not_a_workflow(engine: Engine) -> None:
    @saga_step("AStep")
    async def a_step(ctx: SagaContext, inp: Any) -> None:
        return None

    @saga_workflow("Real")
    async def real(saga: SagaContext, inp: Any) -> None:
        return None

    @saga_workflow("Confused")
    async def confused(saga: SagaContext, inp: Any) -> list[str]:
        errors = []
        for thing in ("Real", a_step, real.function, None):
            try:
                await saga.start_child(thing, None)  # type: ignore[arg-type]
            except SagaError as exc:
                errors.append(type(exc).__name__)
        return errors

    result = await engine.run(confused, None, saga_id="confused", timeout=WAIT)
    assert result == ["SagaError"] * 4
    assert await saga_ids(engine) == ["confused"]
    assert (await engine.get("confused")).steps == ()


async def test_start_child_inside_a_step_raises_saga_error(engine: Engine) -> None:
    @saga_workflow("Unreachable")
    async def child_wf(saga: SagaContext, inp: Any) -> None:
        return None

    @saga_step("Starter")
    async def starter(ctx: SagaContext, inp: Any) -> str:
        try:
            await ctx.start_child(child_wf, None)
        except SagaError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "started"

    @saga_workflow("InStep")
    async def parent_wf(saga: SagaContext, inp: Any) -> str:
        out: str = await starter(saga, None)
        return out

    out = await engine.run(parent_wf, None, saga_id="instep", timeout=WAIT)
    assert out.startswith("SagaError: ctx.start_child was called inside step 'Starter'")
    assert await saga_ids(engine) == ["instep"]


async def test_waiting_for_a_child_inside_a_step_raises_saga_error(engine: Engine) -> None:
    # like every durable operation, waiting for a child belongs in the saga function: a step
    # that waits would be cut off midway by the suspension and run again from its start
    handles: dict[str, ChildSaga[Any]] = {}
    runs = Counter[str]()

    @saga_workflow("KidOfAStep")
    async def kid(saga: SagaContext, inp: Any) -> Any:
        return await saga.wait_for_signal("go")

    @saga_step("WaitsInside")
    async def waits_inside(ctx: SagaContext, inp: Any) -> str:
        runs["WaitsInside"] += 1
        try:
            await handles["child"].result()
        except SagaError as exc:
            return type(exc).__name__
        return "waited inside a step"

    @saga_workflow("StepWaiter")
    async def parent_wf(saga: SagaContext, inp: Any) -> str:
        handles["child"] = await saga.start_child(kid, None)
        out: str = await waits_inside(saga, None)
        return out

    handle = await engine.start(parent_wf, None, saga_id="sw")

    async def child_exists() -> bool:
        return await engine._store_or_raise().load_saga("sw/child-0") is not None

    await eventually(child_exists, "the child to exist")
    # the child ends either way, so that a wait inside the step cannot hang this test
    await engine.signal("sw/child-0", "go", "done")
    assert await handle.result(timeout=WAIT) == "SagaError"
    assert runs == {"WaitsInside": 1}


async def test_a_bad_child_input_fails_the_parent_and_creates_no_child(engine: Engine) -> None:
    log = Ledger()
    p1 = log.step("P1")
    c1 = log.step("C1")

    @saga_workflow("TypedChild")
    async def child_wf(saga: SagaContext, inp: ChildIn) -> int:
        await c1(saga, None)
        return inp.n

    @saga_workflow("SloppyParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> Any:
        await p1(saga, None)
        child = await saga.start_child(child_wf, {"n": "not a number"})
        return await child.result()

    with pytest.raises(SagaCompensatedError) as caught:
        await engine.run(parent_wf, None, saga_id="sloppy", timeout=WAIT)
    assert caught.value.cause_type == "SagaValidationError"
    assert "n" in caught.value.cause_message
    assert log.undone() == ["P1"]
    assert log.runs == {"P1": 1}
    assert await saga_ids(engine) == ["sloppy"]
    assert [s.kind for s in (await engine.get("sloppy")).steps] == ["step", "compensation"]

    @saga_workflow("CarefulParent")
    async def careful(saga: SagaContext, inp: Any) -> str:
        try:
            await saga.start_child(child_wf, {"n": []})
        except SagaValidationError as exc:
            return f"caught {type(exc).__name__}"
        return "started"

    assert await engine.run(careful, None, saga_id="careful", timeout=WAIT) == (
        "caught SagaValidationError"
    )
    assert await saga_ids(engine) == ["careful", "sloppy"]


# -- restarts ---------------------------------------------------------------------------------


async def test_a_restarted_parent_finds_the_same_child_and_gets_its_result(
    shared_store_url: str,
) -> None:
    log = Ledger()
    p1 = log.step("P1")
    p2 = log.step("P2", hold_first=True)
    c1 = log.step("C1")

    @saga_workflow("ReplayChild")
    async def child_wf(saga: SagaContext, inp: Any) -> str:
        return f"{await c1(saga, None)}@{saga.saga_id}"

    @saga_workflow("ReplayParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        await p1(saga, None)
        child = await saga.start_child(child_wf, {"from": saga.saga_id})
        await p2(saga, None)  # the first engine is closed here
        return {"id": child.saga_id, "out": await child.result()}

    async with engine_with(shared_store_url, parent_wf, child_wf) as first:
        await first.start(parent_wf, None, saga_id="rpar")
        await log.gates["P2"].reached()

        async def child_done() -> bool:
            return (await first.get("rpar/child-1")).status == SagaStatus.COMPLETED

        await eventually(child_done, "the child to complete")
        assert await saga_ids(first) == ["rpar", "rpar/child-1"]

    async with engine_with(shared_store_url, parent_wf, child_wf) as second:
        assert await within(second.recover(wait=True)) == 1
        result = await second.handle("rpar").result(timeout=WAIT)
        ids = await saga_ids(second)
        parent = await second.get("rpar")
        child_parent = await parent_of(second, "rpar/child-1")
    assert result == {"id": "rpar/child-1", "out": "C1-out@rpar/child-1"}
    # no second child: the replay found the journaled one
    assert ids == ["rpar", "rpar/child-1"]
    assert child_parent == "rpar"
    assert log.runs == {"P1": 1, "C1": 1, "P2": 2}
    assert journal(parent) == [
        ("step", "P1", "completed"),
        ("child", "ReplayChild", "completed"),
        ("step", "P2", "completed"),
        ("child_result", "rpar/child-1", "completed"),
    ]


async def test_a_restart_while_the_child_runs_finishes_both(shared_store_url: str) -> None:
    log = Ledger()
    c1 = log.step("C1")
    c2 = log.step("C2", hold_first=True)
    after = log.step("After")

    @saga_workflow("InterruptedChild")
    async def child_wf(saga: SagaContext, inp: Any) -> list[str]:
        return [await c1(saga, None), await c2(saga, None)]

    @saga_workflow("PatientParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        child = await saga.start_child(child_wf, None)
        out = await child.result()
        return {"out": out, "after": await after(saga, None)}

    async with engine_with(shared_store_url, parent_wf, child_wf) as first:
        await first.start(parent_wf, None, saga_id="ipar")
        await log.gates["C2"].reached()
        await suspended(first, "ipar")

    async with engine_with(shared_store_url, parent_wf, child_wf) as second:
        # the parent sleeps until the child tells it; the child was released by the close
        result = await second.handle("ipar").result(timeout=WAIT)
        ids = await saga_ids(second)
        child = await second.get("ipar/child-0")
    assert result == {"out": ["C1-out", "C2-out"], "after": "After-out"}
    assert ids == ["ipar", "ipar/child-0"]
    assert log.runs == {"C1": 1, "C2": 2, "After": 1}
    assert journal(child) == [("step", "C1", "completed"), ("step", "C2", "completed")]
    assert child.status == SagaStatus.COMPLETED


async def test_a_child_created_before_a_crash_but_not_journaled_is_adopted(
    engine: Engine,
) -> None:
    # the parent's run created its child, then died before the start was journaled: the child
    # exists (recorded with its parent), the parent's journal does not know it
    await engine._store_or_raise().create_saga(
        NewSaga(
            saga_id="adopt/child-0",
            name="AdoptedChild",
            input=serde.dumps("before the crash"),
            owner=None,
            lease_seconds=2.0,
            parent_id="adopt",
        )
    )
    runs: list[Any] = []

    @saga_workflow("AdoptedChild")
    async def child_wf(saga: SagaContext, inp: Any) -> str:
        runs.append(inp)
        return f"child got {inp}"

    @saga_workflow("AdoptingParent")
    async def parent_wf(saga: SagaContext, inp: Any) -> list[str]:
        child = await saga.start_child(child_wf, "after the crash")
        return [child.saga_id, await child.result()]

    result = await engine.run(parent_wf, None, saga_id="adopt", timeout=WAIT)
    # the replay's start found the child its first run created: no second child, no second run
    assert result == ["adopt/child-0", "child got before the crash"]
    assert runs == ["before the crash"]
    assert await saga_ids(engine) == ["adopt", "adopt/child-0"]


async def test_children_awaited_in_a_gather(engine: Engine) -> None:
    gate = Gate()

    @saga_step("Square")
    async def square(ctx: SagaContext, inp: int) -> int:
        if inp == 3:
            await gate.hold()
        return inp * inp

    @saga_workflow("GatherLeaf")
    async def leaf(saga: SagaContext, inp: int) -> int:
        out: int = await square(saga, inp)
        return out

    @saga_workflow("Fan")
    async def fan(saga: SagaContext, inp: Any) -> dict[str, Any]:
        a = await saga.start_child(leaf, 2)
        b = await saga.start_child(leaf, 3)
        outs = await saga.gather(a.result(), b.result())

        async def branch(n: int) -> list[Any]:
            child = await saga.start_child(leaf, n)
            return [child.saga_id, await child.result()]

        more = await saga.gather(branch(5), branch(6))
        return {"outs": outs, "more": more}

    handle = await engine.start(fan, None, saga_id="fan")
    await gate.reached()
    # one branch waits for a child that is held: the whole group (and the parent) waits
    await suspended(engine, "fan")
    gate.opened.set()
    result = await handle.result(timeout=WAIT)
    assert result["outs"] == [4, 9]
    (id5, out5), (id6, out6) = result["more"]
    assert (out5, out6) == (25, 36)
    assert len({"fan/child-0", "fan/child-1", id5, id6}) == 4
    assert await saga_ids(engine) == sorted(["fan", "fan/child-0", "fan/child-1", id5, id6])
    for child_id in ("fan/child-0", "fan/child-1", id5, id6):
        assert await parent_of(engine, child_id) == "fan"


async def test_a_child_ending_during_the_parents_sleep_does_not_cut_the_sleep(
    engine: Engine,
) -> None:
    @saga_step("Stamp")
    async def stamp(ctx: SagaContext, inp: Any) -> float:
        return time.time()

    @saga_workflow("FastChild")
    async def child_wf(saga: SagaContext, inp: Any) -> str:
        return "fast"

    @saga_workflow("Sleepy")
    async def parent_wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        began = await stamp(saga, None)
        child = await saga.start_child(child_wf, None)
        await saga.sleep(0.6)
        woke = await stamp(saga, None)
        return {"slept": woke - began, "out": await child.result(timeout=WAIT)}

    handle = await engine.start(parent_wf, None, saga_id="sleepy")

    async def child_done() -> bool:
        record = await engine._store_or_raise().load_saga("sleepy/child-1")
        return record is not None and record.status == SagaStatus.COMPLETED

    await eventually(child_done, "the child to complete")
    result = await handle.result(timeout=WAIT)
    assert result["out"] == "fast"
    assert result["slept"] >= 0.6
    snap = await engine.get("sleepy")
    assert [(s.kind, s.status) for s in snap.steps] == [
        ("step", "completed"),
        ("child", "completed"),
        ("sleep", "completed"),
        ("step", "completed"),
        ("child_result", "completed"),
    ]


async def test_result_twice_across_a_restart_gives_the_same_value(shared_store_url: str) -> None:
    log = Ledger()
    hold = log.step("Hold", hold_first=True)

    @saga_workflow("StableChild")
    async def child_wf(saga: SagaContext, inp: Any) -> ChildOut:
        return ChildOut(doubled=int(await saga.random() * 1_000_000), child_id=saga.saga_id)

    @saga_workflow("TwiceAcrossRestart")
    async def parent_wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        child = await saga.start_child(child_wf, None)
        first = await child.result()
        await hold(saga, None)  # the first engine is closed here
        second = await child.result()
        return {
            "first": first,
            "second": second,
            "types": [type(first).__name__, type(second).__name__],
        }

    async with engine_with(shared_store_url, parent_wf, child_wf) as first_engine:
        await first_engine.start(parent_wf, None, saga_id="tar")
        await log.gates["Hold"].reached()

    async with engine_with(shared_store_url, parent_wf, child_wf) as second_engine:
        assert await within(second_engine.recover(wait=True)) == 1
        result = await second_engine.handle("tar").result(timeout=WAIT)
        child = await second_engine.get("tar/child-0")
        ids = await saga_ids(second_engine)
    assert result["first"] == result["second"] == child.output
    assert result["types"] == ["ChildOut", "ChildOut"]
    assert ids == ["tar", "tar/child-0"]


async def test_a_result_timeout_passes_while_no_engine_runs(shared_store_url: str) -> None:
    @saga_workflow("NeverDone")
    async def child_wf(saga: SagaContext, inp: Any) -> Any:
        return await saga.wait_for_signal("go")

    @saga_workflow("GivesUp")
    async def parent_wf(saga: SagaContext, inp: Any) -> str:
        child = await saga.start_child(child_wf, None)
        try:
            await child.result(timeout=0.5)
        except SagaTimeoutError:
            return "gave up"
        return "got it"

    async with engine_with(shared_store_url, parent_wf, child_wf) as first:
        await first.start(parent_wf, None, saga_id="gu")
        snap = await suspended(first, "gu")
        await suspended(first, "gu/child-0")
    assert snap.wake_at is not None
    wake_at = snap.wake_at.timestamp()
    # every engine is closed past the timeout; a new one wakes the parent for it
    await asyncio.sleep(max(0.0, wake_at - time.time()) + 0.2)
    async with engine_with(shared_store_url, parent_wf, child_wf) as second:
        assert await second.handle("gu").result(timeout=WAIT) == "gave up"
        assert (await second.get("gu/child-0")).status == SagaStatus.SUSPENDED
        await second.signal("gu/child-0", "go", "finally")
        assert await second.handle("gu/child-0").result(timeout=WAIT) == "finally"
        assert (await second.get("gu")).output == "gave up"
