"""Inline composition: ``workflow.run_as_step``, ``run_nested_saga`` and ``create_saga_module``,
each checked on every store kind.

Inlined saga logic shares the calling saga: its steps are journaled in the caller's journal and
join the caller's compensation stack, so that a later failure of the caller undoes them too, in
reverse order together with the caller's own steps. Nothing of it is a saga of its own.

Steps and workflows are defined inside each test, so that their logs belong to that test alone.
A restart is an engine closed while a step is held on a gate and a new engine opened on the same
database (``shared_store_url``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    Engine,
    SagaCompensatedError,
    SagaContext,
    SagaError,
    SagaModule,
    SagaStatus,
    SagaValidationError,
    SagaWorkflowOptions,
    StepFailedError,
    StepResponse,
    TerminalError,
    create_saga_module,
    run_nested_saga,
    saga_step,
    saga_workflow,
)
from tests.conftest import engine_with
from tests.waiting import WAIT, Gate, within


class Item(BaseModel):
    sku: str
    qty: int


class Reserved(BaseModel):
    sku: str
    reserved: int


class Ledger:
    """Steps whose runs and compensations are logged in order: ``("run", name)`` when a step
    body runs, ``("undo", name, data, failed)`` when its compensation runs."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.runs = Counter[str]()
        self.gates: dict[str, Gate] = {}

    def step(self, name: str, *, fail: bool = False, hold_first: bool = False) -> Any:
        """A hybrid step ``name`` returning ``f"{name}-out"`` (its compensation data)."""
        gate = self.gates.setdefault(name, Gate()) if hold_first else None

        async def undo(data: Any, failed: bool) -> None:
            self.events.append(("undo", name, data, failed))

        @saga_step(name, compensate=undo)
        async def run(ctx: SagaContext, inp: Any) -> str:
            self.runs[name] += 1
            self.events.append(("run", name))
            if gate is not None and self.runs[name] == 1:
                await gate.hold()  # the "crash" (engine closed) happens here
            if fail:
                raise TerminalError(f"{name} fails for good")
            return f"{name}-out"

        return run

    def undone(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "undo"]

    def ran(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "run"]


def journal(snap: Any) -> list[tuple[str, str, str]]:
    return [(s.kind, s.name, s.status) for s in snap.steps]


# -- run_as_step ------------------------------------------------------------------------------


async def test_run_as_step_journals_the_workflows_steps_in_the_parent(engine: Engine) -> None:
    log = Ledger()
    i1, i2 = log.step("I1"), log.step("I2")
    p1, p2 = log.step("P1"), log.step("P2")

    @saga_workflow("Inner")
    async def inner(saga: SagaContext, inp: Any) -> dict[str, Any]:
        return {"i1": await i1(saga, inp), "i2": await i2(saga, inp), "inner_saga": saga.saga_id}

    @saga_workflow("Outer")
    async def outer(saga: SagaContext, inp: Any) -> dict[str, Any]:
        first = await p1(saga, None)
        nested = await inner.run_as_step(saga, {"x": 1})
        return {"p1": first, "nested": nested, "p2": await p2(saga, None)}

    result = await engine.run(outer, None, saga_id="outer", timeout=WAIT)
    assert result == {
        "p1": "P1-out",
        "nested": {"i1": "I1-out", "i2": "I2-out", "inner_saga": "outer"},
        "p2": "P2-out",
    }
    assert log.ran() == ["P1", "I1", "I2", "P2"]
    snap = await engine.get("outer")
    assert snap.status == SagaStatus.COMPLETED
    assert journal(snap) == [
        ("step", "P1", "completed"),
        ("step", "I1", "completed"),
        ("step", "I2", "completed"),
        ("step", "P2", "completed"),
    ]
    # the inlined workflow is not a saga of its own
    assert [(s.saga_id, s.name) for s in await engine.list()] == [("outer", "Outer")]


async def test_a_later_failure_undoes_inlined_steps_in_reverse_order_with_the_callers(
    engine: Engine,
) -> None:
    log = Ledger()
    p1, p2, p3 = log.step("P1"), log.step("P2"), log.step("P3")
    i1, i2 = log.step("I1"), log.step("I2")
    m1, m2 = log.step("M1"), log.step("M2")
    n1 = log.step("N1")
    boom = log.step("Boom", fail=True)

    @saga_workflow("InnerWf")
    async def inner(saga: SagaContext, inp: Any) -> str:
        await i1(saga, inp)
        await i2(saga, inp)
        return "inner-done"

    async def module_fn(saga: SagaContext, inp: Any) -> str:
        await m1(saga, inp)
        await m2(saga, inp)
        return "module-done"

    module = create_saga_module(module_fn)

    @saga_workflow("Composite")
    async def composite(saga: SagaContext, inp: Any) -> None:
        await p1(saga, None)
        assert await inner.run_as_step(saga, None) == "inner-done"
        await p2(saga, None)
        assert await module(saga, None) == "module-done"
        assert await run_nested_saga(saga, lambda s: n1(s, None)) == "N1-out"
        await p3(saga, None)
        await boom(saga, "boom-in")

    with pytest.raises(SagaCompensatedError) as caught:
        await engine.run(composite, None, saga_id="comp", timeout=WAIT)
    assert caught.value.step == "Boom"
    assert caught.value.cause_type == "TerminalError"
    assert log.ran() == ["P1", "I1", "I2", "P2", "M1", "M2", "N1", "P3", "Boom"]
    # one stack: the failed hybrid step first (failed=True, its input), then everything else in
    # reverse order of registration, whether inlined, a module, nested, or the saga's own
    assert [e for e in log.events if e[0] == "undo"] == [
        ("undo", "Boom", "boom-in", True),
        ("undo", "P3", "P3-out", False),
        ("undo", "N1", "N1-out", False),
        ("undo", "M2", "M2-out", False),
        ("undo", "M1", "M1-out", False),
        ("undo", "P2", "P2-out", False),
        ("undo", "I2", "I2-out", False),
        ("undo", "I1", "I1-out", False),
        ("undo", "P1", "P1-out", False),
    ]
    snap = await engine.get("comp")
    assert snap.status == SagaStatus.COMPENSATED
    assert [s.name for s in snap.steps if s.kind == "compensation"] == [
        "Boom",
        "P3",
        "N1",
        "M2",
        "M1",
        "P2",
        "I2",
        "I1",
        "P1",
    ]
    assert all(s.status == "completed" for s in snap.steps if s.kind == "compensation")


async def test_a_failure_inside_the_inlined_workflow_undoes_the_caller_too(engine: Engine) -> None:
    log = Ledger()
    p1, p2 = log.step("P1"), log.step("P2")
    i1, i2 = log.step("I1"), log.step("I2", fail=True)

    @saga_workflow("FailingInner")
    async def inner(saga: SagaContext, inp: Any) -> None:
        await i1(saga, inp)
        await i2(saga, "i2-in")

    @saga_workflow("Caller")
    async def caller(saga: SagaContext, inp: Any) -> None:
        await p1(saga, None)
        await inner.run_as_step(saga, None)
        await p2(saga, None)

    with pytest.raises(SagaCompensatedError) as caught:
        await engine.run(caller, None, saga_id="caller", timeout=WAIT)
    assert caught.value.step == "I2"
    assert log.ran() == ["P1", "I1", "I2"]
    assert log.undone() == ["I2", "I1", "P1"]


async def test_a_caught_inlined_failure_undoes_nothing_until_the_caller_fails(
    engine: Engine,
) -> None:
    log = Ledger()
    p1 = log.step("P1")
    i1, i2 = log.step("I1"), log.step("I2", fail=True)
    after = log.step("After")

    @saga_workflow("InnerCaught")
    async def inner(saga: SagaContext, inp: Any) -> None:
        await i1(saga, inp)
        await i2(saga, inp)

    @saga_workflow("Catcher")
    async def catcher(saga: SagaContext, inp: Any) -> dict[str, Any]:
        await p1(saga, None)
        try:
            await inner.run_as_step(saga, None)
        except StepFailedError as exc:
            caught = {"step": exc.step, "type": exc.error_type}
        return {"caught": caught, "after": await after(saga, None)}

    result = await engine.run(catcher, None, saga_id="catcher", timeout=WAIT)
    assert result == {"caught": {"step": "I2", "type": "TerminalError"}, "after": "After-out"}
    assert log.undone() == []
    assert (await engine.get("catcher")).status == SagaStatus.COMPLETED


async def test_run_as_step_validates_a_dict_input_into_the_workflows_model(
    engine: Engine,
) -> None:
    seen: list[Any] = []

    @saga_step("Reserve")
    async def reserve(ctx: SagaContext, inp: Item) -> Reserved:
        return Reserved(sku=inp.sku, reserved=inp.qty)

    @saga_workflow("Reserver")
    async def reserver(saga: SagaContext, inp: Item) -> Reserved:
        seen.append(inp)
        out: Reserved = await reserve(saga, inp)
        return out

    @saga_workflow("ReserveCaller")
    async def caller(saga: SagaContext, inp: Any) -> dict[str, Any]:
        out = await reserver.run_as_step(saga, {"sku": "apple", "qty": "3"})
        model_in = await reserver.run_as_step(saga, Item(sku="pear", qty=1))
        return {"type": type(out).__name__, "out": out, "second": model_in}

    result = await engine.run(caller, None, saga_id="rc", timeout=WAIT)
    assert result == {
        "type": "Reserved",
        "out": {"sku": "apple", "reserved": 3},
        "second": {"sku": "pear", "reserved": 1},
    }
    assert seen == [Item(sku="apple", qty=3), Item(sku="pear", qty=1)]
    assert all(type(s) is Item for s in seen)


async def test_run_as_step_refuses_an_invalid_input_before_running_anything(
    engine: Engine,
) -> None:
    log = Ledger()
    i1 = log.step("I1")

    @saga_workflow("Picky")
    async def picky(saga: SagaContext, inp: Item) -> None:
        await i1(saga, inp.sku)

    @saga_workflow("PickyCaller")
    async def caller(saga: SagaContext, inp: Any) -> dict[str, Any]:
        try:
            await picky.run_as_step(saga, {"sku": "apple", "qty": "many"})
        except SagaValidationError as exc:
            return {"error": type(exc).__name__, "fields": [e["loc"] for e in exc.errors]}
        return {"error": None}

    result = await engine.run(caller, None, saga_id="picky", timeout=WAIT)
    assert result == {"error": "SagaValidationError", "fields": [["qty"]]}
    assert log.ran() == []
    assert (await engine.get("picky")).steps == ()


async def test_run_as_step_inside_a_step_raises_saga_error(engine: Engine) -> None:
    log = Ledger()
    i1 = log.step("I1")
    p1 = log.step("P1")
    errors: list[BaseException] = []

    @saga_workflow("NotHere")
    async def not_here(saga: SagaContext, inp: Any) -> None:
        await i1(saga, inp)

    @saga_step("Wrapper")
    async def wrapper(ctx: SagaContext, inp: Any) -> str:
        try:
            await not_here.run_as_step(ctx, None)
        except SagaError as exc:
            errors.append(exc)
            raise
        return "unreachable"

    @saga_workflow("Misuse")
    async def misuse(saga: SagaContext, inp: Any) -> None:
        await p1(saga, None)
        await wrapper(saga, None)

    with pytest.raises(SagaCompensatedError) as caught:
        await engine.run(misuse, None, saga_id="misuse", timeout=WAIT)
    assert len(errors) == 1
    assert type(errors[0]) is SagaError
    assert "Wrapper" in str(errors[0]) and "NotHere" in str(errors[0])
    # a misuse is terminal: not retried, and the saga rolls back
    assert caught.value.step == "Wrapper"
    assert caught.value.cause_type == "SagaError"
    assert log.ran() == ["P1"]
    assert log.undone() == ["P1"]
    snap = await engine.get("misuse")
    wrapper_entry = next(s for s in snap.steps if s.name == "Wrapper")
    assert (wrapper_entry.status, wrapper_entry.attempts) == ("failed", 1)


async def test_the_inlined_workflows_deadline_does_not_apply_the_callers_does(
    engine: Engine,
) -> None:
    @saga_step("Slow")
    async def slow(ctx: SagaContext, inp: float) -> str:
        await asyncio.sleep(inp)
        return "slow-done"

    @saga_workflow("Hasty", options=SagaWorkflowOptions(deadline=timedelta(milliseconds=50)))
    async def hasty(saga: SagaContext, inp: float) -> str:
        out: str = await slow(saga, inp)
        return out

    @saga_workflow("Patient")
    async def patient(saga: SagaContext, inp: Any) -> str:
        out: str = await hasty.run_as_step(saga, 0.3)
        return out

    @saga_workflow("Strict", options=SagaWorkflowOptions(deadline=timedelta(milliseconds=300)))
    async def strict(saga: SagaContext, inp: Any) -> str:
        out: str = await hasty.run_as_step(saga, 5.0)
        return out

    assert await engine.run(patient, None, saga_id="patient", timeout=WAIT) == "slow-done"
    with pytest.raises(SagaCompensatedError) as caught:
        await engine.run(strict, None, saga_id="strict", timeout=WAIT)
    assert caught.value.cause_type == "SagaTimeoutError"
    assert caught.value.step == "Slow"


# -- run_nested_saga and saga modules ---------------------------------------------------------


async def test_run_nested_saga_returns_the_handlers_value_and_shares_the_stack(
    engine: Engine,
) -> None:
    log = Ledger()
    p1, n1, n2 = log.step("P1"), log.step("N1"), log.step("N2")
    boom = log.step("Boom", fail=True)
    seen_ctx: list[SagaContext] = []

    async def nested(saga: SagaContext) -> list[str]:
        seen_ctx.append(saga)
        return [await n1(saga, None), await n2(saga, None)]

    @saga_workflow("Nesting")
    async def nesting(saga: SagaContext, inp: Any) -> Any:
        await p1(saga, None)
        got = await run_nested_saga(saga, nested)
        if inp == "fail":
            await boom(saga, None)
        return got

    assert await engine.run(nesting, "ok", saga_id="nest-ok", timeout=WAIT) == ["N1-out", "N2-out"]
    assert [c.saga_id for c in seen_ctx] == ["nest-ok"]
    assert log.undone() == []

    with pytest.raises(SagaCompensatedError):
        await engine.run(nesting, "fail", saga_id="nest-fail", timeout=WAIT)
    assert log.undone() == ["Boom", "N2", "N1", "P1"]


async def test_run_nested_saga_refuses_what_is_not_callable(engine: Engine) -> None:
    @saga_workflow("BadNesting")
    async def bad(saga: SagaContext, inp: Any) -> str:
        try:
            await run_nested_saga(saga, "not a function")  # type: ignore[arg-type]
        except TypeError as exc:
            return f"TypeError: {exc}"
        return "accepted"

    out = await engine.run(bad, None, saga_id="bad-nest", timeout=WAIT)
    assert out.startswith("TypeError: run_nested_saga takes a function")


def test_create_saga_module_refuses_a_non_async_function_or_a_wrong_arity() -> None:
    def sync_fn(saga: SagaContext, inp: Any) -> Any:
        return None

    async def one_arg(saga: SagaContext) -> None:
        return None

    async def no_args() -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        create_saga_module(sync_fn)
    with pytest.raises(TypeError, match="async def"):
        create_saga_module(lambda saga, inp: None)
    with pytest.raises(TypeError, match=r"must take \(saga, inp\)"):
        create_saga_module(one_arg)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"must take \(saga, inp\)"):
        create_saga_module(no_args)  # type: ignore[arg-type]

    async def ok(saga: SagaContext, inp: Any, extra: int = 0) -> None:
        return None

    module = create_saga_module(ok)
    assert isinstance(module, SagaModule)
    assert module.name.endswith("ok")
    assert module.function is ok


async def test_a_saga_module_validates_a_dict_input_and_can_run_twice(engine: Engine) -> None:
    log = Ledger()
    r1 = log.step("R1")
    boom = log.step("Boom", fail=True)
    inputs: list[Any] = []

    async def reserve(saga: SagaContext, inp: Item) -> str:
        inputs.append(inp)
        out: str = await r1(saga, inp.sku)
        return f"{out}:{inp.sku}x{inp.qty}"

    module = create_saga_module(reserve)

    @saga_workflow("ModuleTwice")
    async def twice(saga: SagaContext, inp: Any) -> list[str]:
        first = await module(saga, {"sku": "a", "qty": "2"})
        second = await module(saga, Item(sku="b", qty=5))
        if inp == "fail":
            await boom(saga, None)
        return [first, second]

    assert await engine.run(twice, "ok", saga_id="mod-ok", timeout=WAIT) == [
        "R1-out:ax2",
        "R1-out:bx5",
    ]
    assert inputs == [Item(sku="a", qty=2), Item(sku="b", qty=5)]
    assert [(s.name, s.status) for s in (await engine.get("mod-ok")).steps] == [
        ("R1", "completed"),
        ("R1", "completed"),
    ]

    with pytest.raises(SagaCompensatedError):
        await engine.run(twice, "fail", saga_id="mod-fail", timeout=WAIT)
    # both runs of the module are undone, the later one first
    assert [e for e in log.events if e[0] == "undo"] == [
        ("undo", "Boom", None, True),
        ("undo", "R1", "R1-out", False),
        ("undo", "R1", "R1-out", False),
    ]

    @saga_workflow("ModuleBadInput")
    async def bad_input(saga: SagaContext, inp: Any) -> str:
        try:
            await module(saga, {"sku": "a"})
        except SagaValidationError as exc:
            return type(exc).__name__
        return "accepted"

    assert await engine.run(bad_input, None, saga_id="mod-bad", timeout=WAIT) == (
        "SagaValidationError"
    )


# -- replay after a restart -------------------------------------------------------------------


async def test_a_restart_mid_inlined_workflow_does_not_rerun_its_finished_steps(
    shared_store_url: str,
) -> None:
    log = Ledger()
    p1, p2 = log.step("P1"), log.step("P2")
    i1, i2 = log.step("I1"), log.step("I2", hold_first=True)
    i3 = log.step("I3")

    @saga_workflow("RestartInner")
    async def inner(saga: SagaContext, inp: Item) -> dict[str, Any]:
        return {
            "i1": await i1(saga, inp.sku),
            "i2": await i2(saga, inp.sku),
            "i3": await i3(saga, inp.sku),
        }

    @saga_workflow("RestartOuter")
    async def outer(saga: SagaContext, inp: Any) -> dict[str, Any]:
        first = await p1(saga, None)
        nested = await inner.run_as_step(saga, {"sku": "s", "qty": 1})
        return {"p1": first, "nested": nested, "p2": await p2(saga, None)}

    async with engine_with(shared_store_url, outer) as first:
        await first.start(outer, None, saga_id="restart")
        await log.gates["I2"].reached()
        before = await first.get("restart")
    assert log.ran() == ["P1", "I1", "I2"]
    assert journal(before) == [("step", "P1", "completed"), ("step", "I1", "completed")]

    async with engine_with(shared_store_url, outer) as second:
        assert await within(second.recover(wait=True)) == 1
        result = await second.handle("restart").result(timeout=WAIT)
        after = await second.get("restart")
        sagas = await second.list()
    assert result == {
        "p1": "P1-out",
        "nested": {"i1": "I1-out", "i2": "I2-out", "i3": "I3-out"},
        "p2": "P2-out",
    }
    # the finished steps (the caller's and the inlined ones) replayed from the journal; only the
    # step in flight at the restart ran again
    assert log.runs == {"P1": 1, "I1": 1, "I2": 2, "I3": 1, "P2": 1}
    assert log.ran() == ["P1", "I1", "I2", "I2", "I3", "P2"]
    assert journal(after) == [
        ("step", "P1", "completed"),
        ("step", "I1", "completed"),
        ("step", "I2", "completed"),
        ("step", "I3", "completed"),
        ("step", "P2", "completed"),
    ]
    assert after.steps[:2] == before.steps
    assert [(s.saga_id, s.status) for s in sagas] == [("restart", SagaStatus.COMPLETED)]


async def test_a_rollback_after_a_restart_undoes_inlined_steps_of_both_runs(
    shared_store_url: str,
) -> None:
    log = Ledger()
    p1, i1 = log.step("P1"), log.step("I1")
    m1 = log.step("M1", hold_first=True)
    n1 = log.step("N1")
    boom = log.step("Boom", fail=True)

    @saga_workflow("RollbackInner")
    async def inner(saga: SagaContext, inp: Any) -> None:
        await i1(saga, inp)

    async def module_fn(saga: SagaContext, inp: Any) -> None:
        await m1(saga, inp)

    module = create_saga_module(module_fn)

    @saga_workflow("RollbackOuter")
    async def outer(saga: SagaContext, inp: Any) -> None:
        await p1(saga, None)
        await inner.run_as_step(saga, None)
        await module(saga, None)
        await run_nested_saga(saga, lambda s: n1(s, None))
        await boom(saga, None)

    async with engine_with(shared_store_url, outer) as first:
        await first.start(outer, None, saga_id="rb-restart")
        await log.gates["M1"].reached()
    assert log.ran() == ["P1", "I1", "M1"]

    async with engine_with(shared_store_url, outer) as second:
        assert await within(second.recover(wait=True)) == 1
        with pytest.raises(SagaCompensatedError) as caught:
            await second.handle("rb-restart").result(timeout=WAIT)
        snap = await second.get("rb-restart")
    assert caught.value.step == "Boom"
    assert log.runs == {"P1": 1, "I1": 1, "M1": 2, "N1": 1, "Boom": 1}
    # steps journaled by the first engine are undone by the second, with their journaled data
    assert [e for e in log.events if e[0] == "undo"] == [
        ("undo", "Boom", None, True),
        ("undo", "N1", "N1-out", False),
        ("undo", "M1", "M1-out", False),
        ("undo", "I1", "I1-out", False),
        ("undo", "P1", "P1-out", False),
    ]
    assert snap.status == SagaStatus.COMPENSATED
    assert journal(snap) == [
        ("step", "P1", "completed"),
        ("step", "I1", "completed"),
        ("step", "M1", "completed"),
        ("step", "N1", "completed"),
        ("step", "Boom", "failed"),
        ("compensation", "Boom", "completed"),
        ("compensation", "N1", "completed"),
        ("compensation", "M1", "completed"),
        ("compensation", "I1", "completed"),
        ("compensation", "P1", "completed"),
    ]


async def test_a_step_response_in_an_inlined_workflow_gives_its_compensation_data(
    engine: Engine,
) -> None:
    undone: list[Any] = []

    async def release(data: Any) -> None:
        undone.append(data)

    @saga_step("Hold", compensate=release)
    async def hold(ctx: SagaContext, inp: str) -> StepResponse[str]:
        return StepResponse(f"held-{inp}", compensation_data={"hold_id": inp, "key": ctx.step_key})

    @saga_step("Fail")
    async def fail(ctx: SagaContext, inp: Any) -> None:
        raise TerminalError("no")

    @saga_workflow("Holder")
    async def holder(saga: SagaContext, inp: str) -> str:
        out: str = await hold(saga, inp)
        return out

    @saga_workflow("HoldTwice")
    async def hold_twice(saga: SagaContext, inp: Any) -> None:
        assert await holder.run_as_step(saga, "a") == "held-a"
        assert await holder.run_as_step(saga, "b") == "held-b"
        await fail(saga, None)

    with pytest.raises(SagaCompensatedError):
        await engine.run(hold_twice, None, saga_id="ht", timeout=WAIT)
    # the step keys are the caller saga's: the inlined steps are numbered in its journal
    assert undone == [{"hold_id": "b", "key": "ht:1"}, {"hold_id": "a", "key": "ht:0"}]
