"""The semantic rules of the engine (issue 2), each checked on every store kind.

Steps and workflows are defined inside each test, so that their counters and logs belong to
that test alone. Crashes are simulated by closing an engine while a step blocks (``close()``
cancels the run and releases its lease) and opening a new engine on the same database.
"""

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    CompensationFailedError,
    Engine,
    EngineNotStartedError,
    NonDeterminismError,
    SagaCompensatedError,
    SagaConflictError,
    SagaContext,
    SagaError,
    SagaNotFoundError,
    SagaStatus,
    SagaValidationError,
    StepFailedError,
    StepResponse,
    TerminalError,
    UnknownWorkflowError,
    clear_terminal_errors,
    register_terminal_errors,
    saga_step,
    saga_step_strict,
    saga_workflow,
    set_global_error_mapper,
    unregister_terminal_errors,
)
from sagakit.stores import open_store
from sagakit.stores.base import NewSaga
from tests.conftest import engine_with, fast_retry, make_engine
from tests.waiting import within

WAIT = 15.0  # generous bound on every wait, so that a bug hangs no test for long


class CheckoutInput(BaseModel):
    customer_id: str
    amount: int


class Receipt(BaseModel):
    order_id: str
    total: int


class Order(BaseModel):
    order_id: str


class Gate:
    """Lets a test hold a step (or compensation) inside its body, and see that it got there."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    async def hold(self) -> None:
        self.entered.set()
        await self.opened.wait()

    async def reached(self) -> None:
        await within(self.entered.wait())


class Compensations:
    """Records every compensation call: (step name, data, failed)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, bool]] = []

    def of(self, name: str) -> Any:
        async def compensate(data: Any, failed: bool) -> None:
            self.calls.append((name, data, failed))

        return compensate

    @property
    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


# -- the happy path ---------------------------------------------------------------------------


async def test_run_returns_the_workflow_output(engine: Engine) -> None:
    calls: list[Any] = []

    @saga_step("Double")
    async def double(ctx: SagaContext, inp: int) -> int:
        calls.append(inp)
        return inp * 2

    @saga_workflow("Doubler")
    async def doubler(saga: SagaContext, inp: dict) -> dict:
        a = await double(saga, inp["n"])
        b = await double(saga, a)
        return {"result": b}

    assert await engine.run(doubler, {"n": 5}, saga_id="d1", timeout=WAIT) == {"result": 20}
    assert calls == [5, 10]
    snapshot = await engine.get("d1")
    assert snapshot.status == SagaStatus.COMPLETED
    assert snapshot.output == {"result": 20}


async def test_pydantic_input_and_return_annotations_give_models(engine: Engine) -> None:
    seen: list[Any] = []

    @saga_step("CreateOrder")
    async def create_order(ctx: SagaContext, inp: CheckoutInput) -> Order:
        seen.append(inp)
        return Order(order_id=f"o-{inp.customer_id}")

    @saga_workflow("Checkout")
    async def checkout(saga: SagaContext, inp: CheckoutInput) -> Receipt:
        seen.append(inp)
        order = await create_order(saga, inp)
        seen.append(order)
        return Receipt(order_id=order.order_id, total=inp.amount)

    result = await engine.run(
        checkout, {"customer_id": "c1", "amount": 40}, saga_id="p1", timeout=WAIT
    )
    assert isinstance(result, Receipt)
    assert result == Receipt(order_id="o-c1", total=40)
    assert [type(x) for x in seen] == [CheckoutInput, CheckoutInput, Order]
    # a handle made later (read from the store) converts the same way
    assert await engine.handle("p1").result(timeout=WAIT) == result
    assert (await engine.get("p1")).output == {"order_id": "o-c1", "total": 40}


async def test_start_by_registered_name(engine: Engine) -> None:
    @saga_workflow("Named")
    async def named(saga: SagaContext, inp: dict) -> str:
        return f"hello {inp['who']}"

    engine.register(named)
    handle = await engine.start("Named", {"who": "you"}, saga_id="n1")
    assert handle.saga_id == "n1"
    assert await handle.result(timeout=WAIT) == "hello you"


# -- compensation -----------------------------------------------------------------------------


async def test_compensations_run_in_reverse_order_each_once(engine: Engine) -> None:
    comps = Compensations()

    @saga_step("A", compensate=comps.of("A"))
    async def a(ctx: SagaContext, inp: Any) -> dict:
        return {"a": 1}

    @saga_step_strict("B", compensate=comps.of("B"))
    async def b(ctx: SagaContext, inp: Any) -> dict:
        return {"b": 2}

    @saga_step("NoUndo")
    async def no_undo(ctx: SagaContext, inp: Any) -> dict:
        return {"read": True}

    @saga_step("C", compensate=comps.of("C"))
    async def c(ctx: SagaContext, inp: Any) -> dict:
        return {"c": 3}

    @saga_step("D", compensate=comps.of("D"))
    async def d(ctx: SagaContext, inp: Any) -> dict:
        raise TerminalError("no stock")

    @saga_workflow("Reverse")
    async def wf(saga: SagaContext, inp: dict) -> dict:
        await a(saga, inp)
        await b(saga, inp)
        await no_undo(saga, inp)
        await c(saga, inp)
        await d(saga, {"d_input": 4})
        return {}

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, {}, saga_id="rev", timeout=WAIT)
    assert info.value.saga_id == "rev"
    assert info.value.cause_type == "TerminalError"
    assert info.value.cause_message == "no stock"
    assert info.value.step == "D"
    assert comps.calls == [
        ("D", {"d_input": 4}, True),
        ("C", {"c": 3}, False),
        ("B", {"b": 2}, False),
        ("A", {"a": 1}, False),
    ]
    snapshot = await engine.get("rev")
    assert snapshot.status == SagaStatus.COMPENSATED
    rollback = [(s.kind, s.name, s.status) for s in snapshot.steps if s.kind == "compensation"]
    assert rollback == [
        ("compensation", "D", "completed"),
        ("compensation", "C", "completed"),
        ("compensation", "B", "completed"),
        ("compensation", "A", "completed"),
    ]
    assert snapshot.error is not None
    assert snapshot.error["cause"]["message"] == "no stock"


async def test_a_hybrid_step_is_undone_with_the_input_it_was_called_with(engine: Engine) -> None:
    """A step that gives no compensation data and changes its own input (a list it appends
    to) does not change what its compensation gets: the input as called, the same as a
    replay (which does not run the step again) sees."""
    undone: list[Any] = []

    async def unreserve(data: Any, failed: bool) -> None:
        undone.append(data)

    @saga_step("Reserve", compensate=unreserve)
    async def reserve(ctx: SagaContext, inp: dict[str, Any]) -> None:
        inp["items"].append("added by the step")
        # returns no data: its compensation gets its input

    @saga_step("Pay")
    async def pay(ctx: SagaContext, inp: Any) -> None:
        raise TerminalError("card declined")

    @saga_workflow("Mutating")
    async def mutating(saga: SagaContext, inp: Any) -> None:
        await reserve(saga, {"items": ["book"]})
        await pay(saga, None)

    with pytest.raises(SagaCompensatedError):
        await engine.run(mutating, None, saga_id="mutating", timeout=WAIT)
    assert undone == [{"items": ["book"]}]


async def test_gathered_steps_are_compensated_in_reverse_call_order(engine: Engine) -> None:
    comps = Compensations()

    @saga_step("Slow", compensate=comps.of("Slow"))
    async def slow(ctx: SagaContext, inp: Any) -> str:
        await asyncio.sleep(0.05)
        return "slow"

    @saga_step_strict("Fast", compensate=comps.of("Fast"))
    async def fast(ctx: SagaContext, inp: Any) -> str:
        return "fast"

    @saga_step("Fail")
    async def fail(ctx: SagaContext, inp: Any) -> None:
        raise TerminalError("stop")

    @saga_workflow("Gathered")
    async def wf(saga: SagaContext, inp: Any) -> None:
        await asyncio.gather(slow(saga, 1), fast(saga, 2))
        await fail(saga, 3)

    with pytest.raises(SagaCompensatedError):
        await engine.run(wf, None, saga_id="g1", timeout=WAIT)
    # Slow was called first (seq 0) though it finished last: it is undone last
    assert comps.calls == [("Fast", "fast", False), ("Slow", "slow", False)]


async def test_rollback_waits_for_a_sibling_step_still_running(engine: Engine) -> None:
    events: list[Any] = []

    async def undo_slow(data: Any, failed: bool) -> None:
        events.append(("undo Slow", data, failed))

    @saga_step("Slow", compensate=undo_slow)
    async def slow(ctx: SagaContext, inp: Any) -> str:
        events.append("Slow started")
        await asyncio.sleep(0.1)
        events.append("Slow finished")
        return "slow-out"

    @saga_step("FailsFast")
    async def fails_fast(ctx: SagaContext, inp: Any) -> None:
        raise TerminalError("fast failure")

    @saga_workflow("SiblingInFlight")
    async def wf(saga: SagaContext, inp: Any) -> None:
        # gather does not cancel Slow when FailsFast raises: the saga must not undo Slow
        # while it is still running, nor journal anything after it ended
        await asyncio.gather(slow(saga, "slow-in"), fails_fast(saga, None))

    with pytest.raises(SagaCompensatedError):
        await engine.run(wf, None, saga_id="sib", timeout=WAIT)
    assert events == ["Slow started", "Slow finished", ("undo Slow", "slow-out", False)]
    snapshot = await engine.get("sib")
    assert [(s.seq, s.kind, s.name, s.status) for s in snapshot.steps] == [
        (0, "step", "Slow", "completed"),
        (1, "step", "FailsFast", "failed"),
        (2, "compensation", "Slow", "completed"),
    ]


async def test_hybrid_compensation_runs_when_its_own_step_fails(engine: Engine) -> None:
    comps = Compensations()

    @saga_step("Reserve", compensate=comps.of("Reserve"), retry=fast_retry(3))
    async def reserve(ctx: SagaContext, inp: dict) -> dict:
        raise RuntimeError("warehouse down")

    @saga_workflow("HybridFails")
    async def wf(saga: SagaContext, inp: dict) -> dict:
        return await reserve(saga, {"sku": inp["sku"], "qty": 2})

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, {"sku": "x"}, saga_id="h1", timeout=WAIT)
    # no compensation data came out of the step: the compensation gets the step's input
    assert comps.calls == [("Reserve", {"sku": "x", "qty": 2}, True)]
    assert info.value.cause_type == "RuntimeError"
    assert "warehouse down" in info.value.cause_message


async def test_permanent_failure_gives_its_data_to_the_compensation(engine: Engine) -> None:
    comps = Compensations()
    attempts = Counter[str]()

    @saga_step("Charge", compensate=comps.of("Charge"), retry=fast_retry(3))
    async def charge(ctx: SagaContext, inp: dict) -> StepResponse[Any]:
        attempts["Charge"] += 1
        return StepResponse.permanent_failure("card declined", {"hold_id": "h-7"})

    @saga_workflow("Declined")
    async def wf(saga: SagaContext, inp: dict) -> dict:
        return await charge(saga, inp)

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, {"amount": 5}, saga_id="pf", timeout=WAIT)
    assert attempts["Charge"] == 1  # a permanent failure is not retried
    assert comps.calls == [("Charge", {"hold_id": "h-7"}, True)]
    assert info.value.cause_message == "card declined"
    assert info.value.step == "Charge"


async def test_permanent_failure_without_data_compensates_with_the_input(engine: Engine) -> None:
    comps = Compensations()

    @saga_step("Charge", compensate=comps.of("Charge"))
    async def charge(ctx: SagaContext, inp: dict) -> StepResponse[Any]:
        return StepResponse.permanent_failure("card declined")

    @saga_workflow("DeclinedNoData")
    async def wf(saga: SagaContext, inp: dict) -> dict:
        return await charge(saga, inp)

    with pytest.raises(SagaCompensatedError):
        await engine.run(wf, {"amount": 5}, saga_id="pf2", timeout=WAIT)
    assert comps.calls == [("Charge", {"amount": 5}, True)]


async def test_strict_step_is_compensated_only_after_success(engine: Engine) -> None:
    comps = Compensations()

    @saga_step_strict("Ok", compensate=comps.of("Ok"))
    async def ok(ctx: SagaContext, inp: Any) -> dict:
        return {"ok": True}

    @saga_step_strict("Broken", compensate=comps.of("Broken"))
    async def broken(ctx: SagaContext, inp: Any) -> dict:
        raise TerminalError("broken")

    @saga_step_strict("Declined", compensate=comps.of("Declined"))
    async def declined(ctx: SagaContext, inp: Any) -> StepResponse[Any]:
        return StepResponse.permanent_failure("declined", {"would": "be undone"})

    @saga_workflow("StrictFails")
    async def raising(saga: SagaContext, inp: Any) -> None:
        await ok(saga, inp)
        await broken(saga, inp)

    @saga_workflow("StrictDeclines")
    async def declining(saga: SagaContext, inp: Any) -> None:
        await ok(saga, inp)
        await declined(saga, inp)

    with pytest.raises(SagaCompensatedError):
        await engine.run(raising, None, saga_id="s1", timeout=WAIT)
    assert comps.calls == [("Ok", {"ok": True}, False)]

    comps.calls.clear()
    with pytest.raises(SagaCompensatedError):
        await engine.run(declining, None, saga_id="s2", timeout=WAIT)
    assert comps.calls == [("Ok", {"ok": True}, False)]


async def test_compensation_data_none_means_nothing_to_compensate(engine: Engine) -> None:
    comps = Compensations()

    @saga_step("Hybrid", compensate=comps.of("Hybrid"))
    async def hybrid(ctx: SagaContext, inp: Any) -> StepResponse[Any]:
        return StepResponse({"done": 1}, compensation_data=None)

    @saga_step_strict("Strict", compensate=comps.of("Strict"))
    async def strict(ctx: SagaContext, inp: Any) -> StepResponse[Any]:
        return StepResponse({"done": 2}, compensation_data=None)

    @saga_step("Other", compensate=comps.of("Other"))
    async def other(ctx: SagaContext, inp: Any) -> StepResponse[Any]:
        return StepResponse({"out": 3}, compensation_data={"undo": 3})

    @saga_step("Plain", compensate=comps.of("Plain"))
    async def plain(ctx: SagaContext, inp: Any) -> list:
        return ["plain", 4]

    @saga_workflow("NothingToUndo")
    async def wf(saga: SagaContext, inp: Any) -> None:
        outputs = [
            await hybrid(saga, inp),
            await strict(saga, inp),
            await other(saga, inp),
            await plain(saga, inp),
        ]
        assert outputs == [{"done": 1}, {"done": 2}, {"out": 3}, ["plain", 4]]
        raise TerminalError("undo what can be undone")

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="none", timeout=WAIT)
    assert info.value.cause_message == "undo what can be undone"
    # compensation data defaults to the output; explicit None means there is nothing to undo
    assert comps.calls == [("Plain", ["plain", 4], False), ("Other", {"undo": 3}, False)]


async def test_both_compensation_signatures_work(engine: Engine) -> None:
    calls: list[tuple[str, Any]] = []

    async def data_only(data: Any) -> None:
        calls.append(("data_only", data))

    async def with_failed(data: Any, failed: bool) -> None:
        calls.append(("with_failed", (data, failed)))

    async def failed_keyword(data: Any, failed: bool = False) -> None:
        calls.append(("failed_keyword", (data, failed)))

    @saga_step("One", compensate=data_only)
    async def one(ctx: SagaContext, inp: Any) -> int:
        return 1

    @saga_step("Two", compensate=with_failed)
    async def two(ctx: SagaContext, inp: Any) -> int:
        return 2

    @saga_step("Three", compensate=failed_keyword)
    async def three(ctx: SagaContext, inp: Any) -> int:
        raise TerminalError("three fails")

    @saga_workflow("Signatures")
    async def wf(saga: SagaContext, inp: Any) -> None:
        await one(saga, inp)
        await two(saga, inp)
        await three(saga, "three-input")

    with pytest.raises(SagaCompensatedError):
        await engine.run(wf, None, saga_id="sig", timeout=WAIT)
    assert calls == [
        ("failed_keyword", ("three-input", True)),
        ("with_failed", (2, False)),
        ("data_only", 1),
    ]


async def test_steps_without_compensation_are_fine(engine: Engine) -> None:
    @saga_step("Validate")
    async def validate(ctx: SagaContext, inp: dict) -> bool:
        return inp["amount"] > 0

    @saga_step_strict("Read")
    async def read(ctx: SagaContext, inp: Any) -> str:
        return "data"

    @saga_step("Reject")
    async def reject(ctx: SagaContext, inp: Any) -> None:
        raise TerminalError("rejected")

    @saga_workflow("NoComp")
    async def wf(saga: SagaContext, inp: dict) -> dict:
        valid = await validate(saga, inp)
        data = await read(saga, None)
        if inp.get("reject"):
            await reject(saga, None)
        return {"valid": valid, "data": data}

    assert await engine.run(wf, {"amount": 3}, saga_id="nc1", timeout=WAIT) == {
        "valid": True,
        "data": "data",
    }
    with pytest.raises(SagaCompensatedError):
        await engine.run(wf, {"amount": 3, "reject": True}, saga_id="nc2", timeout=WAIT)
    snapshot = await engine.get("nc2")
    assert snapshot.status == SagaStatus.COMPENSATED
    assert not [s for s in snapshot.steps if s.kind == "compensation"]


async def test_a_crash_during_rollback_resumes_it(shared_store_url: str) -> None:
    comps = Compensations()
    gate = Gate()
    b_comp_runs = 0

    async def undo_b(data: Any, failed: bool) -> None:
        nonlocal b_comp_runs
        b_comp_runs += 1
        if b_comp_runs == 1:
            await gate.hold()  # the "crash" happens here
        comps.calls.append(("B", data, failed))

    @saga_step("A", compensate=comps.of("A"))
    async def a(ctx: SagaContext, inp: Any) -> str:
        return "a"

    @saga_step("B", compensate=undo_b)
    async def b(ctx: SagaContext, inp: Any) -> str:
        return "b"

    @saga_step("C", compensate=comps.of("C"))
    async def c(ctx: SagaContext, inp: Any) -> str:
        raise TerminalError("c failed")

    @saga_workflow("RollbackCrash")
    async def wf(saga: SagaContext, inp: Any) -> None:
        await a(saga, inp)
        await b(saga, inp)
        await c(saga, "c-in")

    async with engine_with(shared_store_url, wf) as first:
        await first.start(wf, None, saga_id="rc")
        await gate.reached()
        assert await first.handle("rc").status() == SagaStatus.COMPENSATING
    assert comps.calls == [("C", "c-in", True)]

    async with engine_with(shared_store_url, wf) as second:
        await within(second.recover(wait=True))
        with pytest.raises(SagaCompensatedError) as info:
            await second.handle("rc").result(timeout=WAIT)
        snapshot = await second.get("rc")
    assert info.value.cause_message == "c failed"
    # C's compensation was journaled before the crash: not run again; B's was not: run again
    assert comps.calls == [("C", "c-in", True), ("B", "b", False), ("A", "a", False)]
    assert b_comp_runs == 2
    assert snapshot.status == SagaStatus.COMPENSATED
    assert [s.name for s in snapshot.steps if s.kind == "compensation"] == ["C", "B", "A"]


# -- retries and the terminal-error registry --------------------------------------------------


def failing_saga(
    name: str, error: BaseException, attempts: Counter[str], comps: Compensations
) -> Any:
    """A saga with a compensated first step and a second step that always raises ``error``."""

    @saga_step("First", compensate=comps.of("First"))
    async def first(ctx: SagaContext, inp: Any) -> str:
        return "first"

    @saga_step("Flaky", retry=fast_retry(3))
    async def flaky(ctx: SagaContext, inp: Any) -> None:
        attempts["Flaky"] += 1
        raise error

    @saga_workflow(name)
    async def wf(saga: SagaContext, inp: Any) -> None:
        await first(saga, inp)
        await flaky(saga, inp)

    return wf


async def test_retryable_error_is_retried_then_compensates(engine: Engine) -> None:
    attempts = Counter[str]()
    comps = Compensations()
    wf = failing_saga("Retried", ValueError("bad luck"), attempts, comps)

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="r1", timeout=WAIT)
    assert attempts["Flaky"] == 3
    assert comps.calls == [("First", "first", False)]
    assert info.value.cause_type == "ValueError"
    assert "bad luck" in info.value.cause_message
    step = (await engine.get("r1")).steps[1]
    assert (step.name, step.status, step.attempts) == ("Flaky", "failed", 3)
    assert step.error is not None
    assert step.error["type"] == "ValueError"


async def test_a_retry_that_succeeds_completes_the_saga(engine: Engine) -> None:
    seen_attempts: list[int] = []

    @saga_step("SecondTime", retry=fast_retry(3))
    async def second_time(ctx: SagaContext, inp: Any) -> str:
        seen_attempts.append(ctx.attempt)
        if ctx.attempt < 2:
            raise ConnectionError("try again")
        return "ok"

    @saga_workflow("RetryOk")
    async def wf(saga: SagaContext, inp: Any) -> str:
        return await second_time(saga, inp)

    assert await engine.run(wf, None, saga_id="ro", timeout=WAIT) == "ok"
    assert seen_attempts == [1, 2]
    step = (await engine.get("ro")).steps[0]
    assert (step.status, step.attempts, step.output) == ("completed", 2, "ok")


async def test_terminal_error_is_not_retried(engine: Engine) -> None:
    attempts = Counter[str]()
    comps = Compensations()
    wf = failing_saga("Terminal", TerminalError("final"), attempts, comps)

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="t1", timeout=WAIT)
    assert attempts["Flaky"] == 1
    assert comps.calls == [("First", "first", False)]
    assert info.value.cause_message == "final"


class QuotaExceeded(LookupError):
    pass


async def test_registered_terminal_errors_are_not_retried(engine: Engine) -> None:
    attempts = Counter[str]()
    comps = Compensations()
    wf = failing_saga("Registered", QuotaExceeded("over quota"), attempts, comps)

    register_terminal_errors([LookupError])  # a base class covers its subclasses
    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="reg1", timeout=WAIT)
    assert attempts["Flaky"] == 1
    assert info.value.cause_type == "QuotaExceeded"
    assert info.value.cause_message == "over quota"

    unregister_terminal_errors([LookupError])
    attempts.clear()
    with pytest.raises(SagaCompensatedError):
        await engine.run(wf, None, saga_id="reg2", timeout=WAIT)
    assert attempts["Flaky"] == 3

    register_terminal_errors([QuotaExceeded])
    clear_terminal_errors()
    attempts.clear()
    with pytest.raises(SagaCompensatedError):
        await engine.run(wf, None, saga_id="reg3", timeout=WAIT)
    assert attempts["Flaky"] == 3


async def test_global_error_mapper_decides_what_is_terminal(engine: Engine) -> None:
    attempts = Counter[str]()
    comps = Compensations()
    mapped = failing_saga("Mapped", PermissionError("denied"), attempts, comps)

    def mapper(exc: BaseException) -> TerminalError | None:
        if isinstance(exc, PermissionError):
            return TerminalError(f"not allowed: {exc}", error_type="Forbidden")
        return None

    set_global_error_mapper(mapper)
    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(mapped, None, saga_id="m1", timeout=WAIT)
    assert attempts["Flaky"] == 1
    assert info.value.cause_type == "Forbidden"
    assert info.value.cause_message == "not allowed: denied"

    unmapped_attempts = Counter[str]()
    unmapped = failing_saga("Unmapped", TimeoutError("slow"), unmapped_attempts, Compensations())
    with pytest.raises(SagaCompensatedError):
        await engine.run(unmapped, None, saga_id="m2", timeout=WAIT)
    assert unmapped_attempts["Flaky"] == 3  # the mapper returned None: retried

    set_global_error_mapper(None)
    attempts.clear()
    with pytest.raises(SagaCompensatedError):
        await engine.run(mapped, None, saga_id="m3", timeout=WAIT)
    assert attempts["Flaky"] == 3


# -- the saga function's own failures ----------------------------------------------------------


async def test_exception_in_saga_code_is_terminal_and_compensates(engine: Engine) -> None:
    comps = Compensations()
    attempts = Counter[str]()

    @saga_step("Book", compensate=comps.of("Book"), retry=fast_retry(3))
    async def book(ctx: SagaContext, inp: Any) -> str:
        attempts["Book"] += 1
        return "booked"

    @saga_workflow("OwnCodeFails")
    async def wf(saga: SagaContext, inp: Any) -> None:
        await book(saga, inp)
        raise RuntimeError("bug in the saga function")

    handle = await engine.start(wf, None, saga_id="own")
    with pytest.raises(SagaCompensatedError) as info:
        await handle.result(timeout=WAIT)
    assert info.value.cause_type == "RuntimeError"
    assert info.value.cause_message == "bug in the saga function"
    assert comps.calls == [("Book", "booked", False)]
    assert attempts["Book"] == 1
    assert await handle.status() == SagaStatus.COMPENSATED


async def test_exception_before_any_step_ends_the_saga(engine: Engine) -> None:
    @saga_workflow("FailsAtOnce")
    async def wf(saga: SagaContext, inp: Any) -> None:
        raise KeyError("missing")

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="early", timeout=WAIT)
    assert info.value.cause_type == "KeyError"
    assert (await engine.get("early")).status == SagaStatus.COMPENSATED


async def test_saga_code_may_catch_a_failed_step_and_go_on(engine: Engine) -> None:
    @saga_step("Optional", retry=fast_retry(2))
    async def optional(ctx: SagaContext, inp: Any) -> None:
        raise ValueError("not today")

    @saga_workflow("CatchesFailure")
    async def wf(saga: SagaContext, inp: Any) -> dict:
        try:
            await optional(saga, inp)
        except StepFailedError as exc:
            return {"step": exc.step, "type": exc.error_type, "attempts": exc.attempts}
        return {}

    assert await engine.run(wf, None, saga_id="catch", timeout=WAIT) == {
        "step": "Optional",
        "type": "ValueError",
        "attempts": 2,
    }
    assert (await engine.get("catch")).status == SagaStatus.COMPLETED


# -- replay after a crash ----------------------------------------------------------------------


async def test_replay_does_not_rerun_journaled_steps(shared_store_url: str) -> None:
    runs = Counter[str]()
    gate = Gate()

    @saga_step("A")
    async def a(ctx: SagaContext, inp: Any) -> Order:
        runs["A"] += 1
        return Order(order_id="o-1")

    @saga_step("B")
    async def b(ctx: SagaContext, inp: Any) -> dict:
        runs["B"] += 1
        if runs["B"] == 1:
            await gate.hold()
        return {"b": 2}

    @saga_step("C")
    async def c(ctx: SagaContext, inp: Any) -> dict:
        runs["C"] += 1
        return {"c": 3}

    @saga_workflow("Replayed")
    async def wf(saga: SagaContext, inp: Any) -> dict:
        order = await a(saga, inp)
        assert isinstance(order, Order)  # the replayed output is converted like the live one
        b_out = await b(saga, order.order_id)
        c_out = await c(saga, b_out)
        return {"order": order.order_id, **b_out, **c_out}

    async with engine_with(shared_store_url, wf) as first:
        await first.start(wf, None, saga_id="rp")
        await gate.reached()
    assert runs == {"A": 1, "B": 1}

    async with engine_with(shared_store_url, wf) as second:
        assert await within(second.recover(wait=True)) == 1
        result = await second.handle("rp").result(timeout=WAIT)
        snapshot = await second.get("rp")
    assert result == {"order": "o-1", "b": 2, "c": 3}
    assert runs == {"A": 1, "B": 2, "C": 1}
    assert [(s.name, s.attempts) for s in snapshot.steps] == [("A", 1), ("B", 1), ("C", 1)]


async def test_non_determinism_is_caught_on_replay(shared_store_url: str) -> None:
    gate = Gate()

    @saga_step("Reserve")
    async def reserve(ctx: SagaContext, inp: Any) -> str:
        return "reserved"

    @saga_step("Charge")
    async def charge(ctx: SagaContext, inp: Any) -> str:
        await gate.hold()
        return "charged"

    @saga_step("Ship")
    async def ship(ctx: SagaContext, inp: Any) -> str:
        return "shipped"

    @saga_workflow("Changing")
    async def v1(saga: SagaContext, inp: Any) -> None:
        await reserve(saga, inp)
        await charge(saga, inp)

    @saga_workflow("Changing")
    async def v2(saga: SagaContext, inp: Any) -> None:
        await ship(saga, inp)  # the code changed under a saga in flight
        await charge(saga, inp)

    async with engine_with(shared_store_url, v1) as first:
        await first.start(v1, None, saga_id="nd")
        await gate.reached()

    async with engine_with(shared_store_url, v2) as second:
        await within(second.recover(wait=True))
        with pytest.raises(NonDeterminismError) as info:
            await second.handle("nd").result(timeout=WAIT)
        snapshot = await second.get("nd")
        # read back from the store (no run in memory any more), it is the same error
        with pytest.raises(NonDeterminismError) as again:
            await second.handle("nd").result(timeout=WAIT)
    message = str(info.value)
    assert info.value.seq == 0
    assert "seq 0" in message and "'Reserve'" in message and "'Ship'" in message
    assert "'Reserve'" in info.value.recorded and "'Ship'" in info.value.replayed
    assert again.value.seq == 0 and "'Ship'" in str(again.value)
    assert snapshot.status == SagaStatus.FAILED
    assert snapshot.error is not None
    assert snapshot.error["kind"] == "non_determinism"


async def test_non_determinism_when_the_replay_stops_early(shared_store_url: str) -> None:
    gate = Gate()

    @saga_step("One")
    async def one(ctx: SagaContext, inp: Any) -> int:
        return 1

    @saga_step("Two")
    async def two(ctx: SagaContext, inp: Any) -> int:
        return 2

    @saga_step("Three")
    async def three(ctx: SagaContext, inp: Any) -> int:
        await gate.hold()
        return 3

    @saga_workflow("Shrinking")
    async def v1(saga: SagaContext, inp: Any) -> int:
        return await one(saga, inp) + await two(saga, inp) + await three(saga, inp)

    @saga_workflow("Shrinking")
    async def v2(saga: SagaContext, inp: Any) -> int:
        return await one(saga, inp)

    async with engine_with(shared_store_url, v1) as first:
        await first.start(v1, None, saga_id="short")
        await gate.reached()

    async with engine_with(shared_store_url, v2) as second:
        await within(second.recover(wait=True))
        with pytest.raises(NonDeterminismError) as info:
            await second.handle("short").result(timeout=WAIT)
        assert (await second.get("short")).status == SagaStatus.FAILED
    assert info.value.seq == 1
    assert "'Two'" in str(info.value)


# -- rollback failures -------------------------------------------------------------------------


async def test_compensation_failure_carries_cause_and_every_failure(engine: Engine) -> None:
    comps = Compensations()
    undo_attempts = Counter[str]()

    def broken_undo(name: str, error: Exception) -> Any:
        async def undo(data: Any) -> None:
            undo_attempts[name] += 1
            raise error

        return undo

    @saga_step("A", compensate=comps.of("A"))
    async def a(ctx: SagaContext, inp: Any) -> str:
        return "a"

    @saga_step(
        "B", compensate=broken_undo("B", RuntimeError("refund API down")), retry=fast_retry(2)
    )
    async def b(ctx: SagaContext, inp: Any) -> str:
        return "b"

    @saga_step("C", compensate=comps.of("C"))
    async def c(ctx: SagaContext, inp: Any) -> str:
        return "c"

    @saga_step("D", compensate=broken_undo("D", TerminalError("cannot unship")))
    async def d(ctx: SagaContext, inp: Any) -> str:
        return "d"

    @saga_step("E")
    async def e(ctx: SagaContext, inp: Any) -> str:
        raise TerminalError("payment rejected")

    @saga_workflow("RollbackFails")
    async def wf(saga: SagaContext, inp: Any) -> None:
        for step in (a, b, c, d, e):
            await step(saga, inp)

    with pytest.raises(CompensationFailedError) as info:
        await engine.run(wf, None, saga_id="cf", timeout=WAIT)
    error = info.value
    assert error.saga_id == "cf"
    assert (error.cause.type, error.cause.message, error.cause.step) == (
        "TerminalError",
        "payment rejected",
        "E",
    )
    assert [(f.step, f.type) for f in error.failures] == [
        ("D", "TerminalError"),
        ("B", "RuntimeError"),
    ]
    assert "cannot unship" in error.failures[0].message
    assert "refund API down" in error.failures[1].message
    assert "payment rejected" in str(error) and "refund API down" in str(error)
    # the other compensations still ran; a terminal compensation error is not retried
    assert comps.calls == [("C", "c", False), ("A", "a", False)]
    assert undo_attempts == {"D": 1, "B": 2}

    snapshot = await engine.get("cf")
    assert snapshot.status == SagaStatus.FAILED
    assert snapshot.error is not None
    assert snapshot.error["cause"]["message"] == "payment rejected"
    assert [f["step"] for f in snapshot.error["compensation_failures"]] == ["D", "B"]
    rollback = [(s.name, s.status, s.attempts) for s in snapshot.steps if s.kind == "compensation"]
    assert rollback == [
        ("D", "failed", 1),
        ("C", "completed", 1),
        ("B", "failed", 2),
        ("A", "completed", 1),
    ]

    # read back from the store, the error is the same
    with pytest.raises(CompensationFailedError) as again:
        await engine.handle("cf").result(timeout=WAIT)
    assert again.value.cause.message == "payment rejected"
    assert [f.step for f in again.value.failures] == ["D", "B"]


# -- JSON only ---------------------------------------------------------------------------------


async def test_non_json_step_output_fails_the_step_for_good(engine: Engine) -> None:
    comps = Compensations()
    runs = Counter[str]()

    @saga_step("Before", compensate=comps.of("Before"))
    async def before(ctx: SagaContext, inp: Any) -> str:
        return "before"

    @saga_step("Opaque", compensate=comps.of("Opaque"), retry=fast_retry(3))
    async def opaque(ctx: SagaContext, inp: Any) -> Any:
        runs["Opaque"] += 1
        return object()

    @saga_workflow("NonJsonStep")
    async def wf(saga: SagaContext, inp: Any) -> None:
        await before(saga, inp)
        await opaque(saga, {"opaque": "in"})

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="nj", timeout=WAIT)
    assert runs["Opaque"] == 1  # its side effect happened once: never repeated
    assert info.value.cause_type == "OutputNotSerializableError"
    assert "JSON" in info.value.cause_message
    assert comps.calls == [("Opaque", {"opaque": "in"}, True), ("Before", "before", False)]
    step = (await engine.get("nj")).steps[1]
    assert (step.name, step.status, step.attempts) == ("Opaque", "failed", 1)


async def test_non_json_compensation_data_fails_the_step_for_good(engine: Engine) -> None:
    runs = Counter[str]()

    @saga_step("OpaqueUndo", compensate=Compensations().of("x"), retry=fast_retry(3))
    async def opaque_undo(ctx: SagaContext, inp: Any) -> StepResponse[Any]:
        runs["OpaqueUndo"] += 1
        return StepResponse({"fine": True}, compensation_data={"conn": object()})

    @saga_workflow("NonJsonUndo")
    async def wf(saga: SagaContext, inp: Any) -> None:
        await opaque_undo(saga, inp)

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="nju", timeout=WAIT)
    assert runs["OpaqueUndo"] == 1
    assert info.value.cause_type == "OutputNotSerializableError"


async def test_non_json_saga_output_compensates(engine: Engine) -> None:
    comps = Compensations()

    @saga_step("Done", compensate=comps.of("Done"))
    async def done(ctx: SagaContext, inp: Any) -> str:
        return "done"

    @saga_workflow("NonJsonSaga")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await done(saga, inp)
        return {"handle": object()}

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="njs", timeout=WAIT)
    assert info.value.cause_type == "OutputNotSerializableError"
    assert comps.calls == [("Done", "done", False)]
    assert (await engine.get("njs")).status == SagaStatus.COMPENSATED


# -- input validation --------------------------------------------------------------------------


async def test_invalid_input_is_refused_before_anything_is_written(engine: Engine) -> None:
    runs = Counter[str]()

    @saga_workflow("Validated")
    async def wf(saga: SagaContext, inp: CheckoutInput) -> int:
        runs["wf"] += 1
        return inp.amount

    with pytest.raises(SagaValidationError) as info:
        await engine.start(wf, {"customer_id": "c1", "amount": "a lot"}, saga_id="bad")
    assert "amount" in str(info.value)
    assert any("amount" in err["loc"] for err in info.value.errors)

    with pytest.raises(SagaValidationError) as missing:
        await engine.run(wf, {"amount": 3}, saga_id="bad2", timeout=WAIT)
    assert "customer_id" in str(missing.value)

    assert isinstance(info.value, SagaError)
    assert await engine.list() == []
    for saga_id in ("bad", "bad2"):
        with pytest.raises(SagaNotFoundError):
            await engine.get(saga_id)
    assert runs["wf"] == 0
    # the same id is free for a valid start
    assert (
        await engine.run(wf, {"customer_id": "c1", "amount": 3}, saga_id="bad", timeout=WAIT) == 3
    )


# -- idempotent start --------------------------------------------------------------------------


def counted_saga(name: str, runs: Counter[str], delay: float = 0.0) -> Any:
    @saga_step("Work")
    async def work(ctx: SagaContext, inp: dict) -> dict:
        runs["Work"] += 1
        await asyncio.sleep(delay)
        return {"doubled": inp["n"] * 2}

    @saga_workflow(name)
    async def wf(saga: SagaContext, inp: dict) -> dict:
        runs["wf"] += 1
        return await work(saga, inp)

    return wf


async def test_starting_a_saga_id_twice_runs_it_once(engine: Engine) -> None:
    runs = Counter[str]()
    wf = counted_saga("Twice", runs, delay=0.05)

    first = await engine.start(wf, {"n": 1}, saga_id="tw")
    while_running = await engine.start(wf, {"n": 1}, saga_id="tw")
    assert while_running.saga_id == first.saga_id == "tw"
    assert await first.result(timeout=WAIT) == {"doubled": 2}
    assert await while_running.result(timeout=WAIT) == {"doubled": 2}
    after = await engine.start(wf, {"n": 99}, saga_id="tw")  # the first input stays
    assert await after.result(timeout=WAIT) == {"doubled": 2}
    assert runs == {"Work": 1, "wf": 1}
    assert len(await engine.list()) == 1


async def test_many_concurrent_starts_create_one_saga(engine: Engine) -> None:
    runs = Counter[str]()
    wf = counted_saga("Crowd", runs, delay=0.02)

    results = await within(
        asyncio.gather(
            *(engine.run(wf, {"n": 21}, saga_id="crowd", timeout=WAIT) for _ in range(20))
        )
    )
    assert results == [{"doubled": 42}] * 20
    assert runs == {"Work": 1, "wf": 1}
    assert [s.saga_id for s in await engine.list()] == ["crowd"]


async def test_starts_from_several_engines_create_one_saga(shared_store_url: str) -> None:
    runs = Counter[str]()
    wf = counted_saga("Shared", runs, delay=0.05)
    engines = [engine_with(shared_store_url, wf) for _ in range(3)]

    async with engines[0], engines[1], engines[2]:
        results = await within(
            asyncio.gather(
                *(
                    e.run(wf, {"n": 5}, saga_id="many", timeout=WAIT)
                    for e in engines
                    for _ in range(4)
                )
            )
        )
        listed = await engines[2].list()
    assert results == [{"doubled": 10}] * 12
    assert runs == {"Work": 1, "wf": 1}
    assert [s.saga_id for s in listed] == ["many"]


async def test_a_saga_id_of_another_workflow_is_a_conflict(engine: Engine) -> None:
    gate = Gate()

    @saga_workflow("Mine")
    async def mine(saga: SagaContext, inp: Any) -> str:
        return "mine"

    @saga_step("Hold")
    async def hold(ctx: SagaContext, inp: Any) -> None:
        await gate.hold()

    @saga_workflow("Held")
    async def held(saga: SagaContext, inp: Any) -> str:
        await hold(saga, inp)
        return "held"

    @saga_workflow("Theirs")
    async def theirs(saga: SagaContext, inp: Any) -> str:
        return "theirs"

    assert await engine.run(mine, None, saga_id="taken", timeout=WAIT) == "mine"
    with pytest.raises(SagaConflictError) as info:
        await engine.start(theirs, None, saga_id="taken")
    assert "Mine" in str(info.value)
    assert (await engine.get("taken")).name == "Mine"

    # the same while the first saga is still running in this engine
    handle = await engine.start(held, None, saga_id="busy")
    await gate.reached()
    with pytest.raises(SagaConflictError):
        await engine.start(theirs, None, saga_id="busy")
    gate.opened.set()
    assert await handle.result(timeout=WAIT) == "held"


# -- leases ------------------------------------------------------------------------------------


async def test_a_long_step_keeps_its_lease(shared_store_url: str) -> None:
    runs = Counter[str]()

    @saga_step("Long")
    async def long(ctx: SagaContext, inp: Any) -> str:
        runs["Long"] += 1
        await asyncio.sleep(2.5)  # longer than two leases
        return "done"

    @saga_workflow("LongRunning")
    async def wf(saga: SagaContext, inp: Any) -> str:
        return await long(saga, inp)

    lease = timedelta(seconds=1)
    owner = engine_with(shared_store_url, wf, lease=lease)
    watcher = engine_with(shared_store_url, wf, lease=lease)
    async with owner, watcher:
        handle = await owner.start(wf, None, saga_id="long")
        assert await watcher.recover() == 0
        assert await handle.result(timeout=WAIT) == "done"
        assert await watcher.handle("long").result(timeout=WAIT) == "done"
        assert await watcher.recover() == 0
        snapshot = await watcher.get("long")
    assert runs["Long"] == 1
    assert snapshot.steps[0].attempts == 1


async def test_a_saga_whose_owner_stopped_renewing_is_recovered(shared_store_url: str) -> None:
    runs = Counter[str]()
    gate = Gate()

    @saga_step("Work")
    async def work(ctx: SagaContext, inp: Any) -> dict:
        runs["Work"] += 1
        if runs["Work"] == 1:
            await gate.hold()  # the owner hangs here, and stops renewing
        return {"run": runs["Work"]}

    @saga_workflow("Hung")
    async def wf(saga: SagaContext, inp: Any) -> dict:
        return await work(saga, inp)

    lease = timedelta(milliseconds=500)
    hung = engine_with(shared_store_url, wf, lease=lease)
    rescuer = engine_with(shared_store_url, wf, lease=lease)
    async with hung, rescuer:
        handle = await hung.start(wf, None, saga_id="hung")
        await gate.reached()
        assert hung._background is not None
        hung._background.cancel()  # the owner's worker dies: its lease is no longer renewed
        assert await rescuer.handle("hung").result(timeout=WAIT) == {"run": 2}
        # the old owner wakes up: its late write is fenced off, and it sees the real outcome
        gate.opened.set()
        assert await handle.result(timeout=WAIT) == {"run": 2}
        snapshot = await rescuer.get("hung")
    assert runs["Work"] == 2
    assert snapshot.status == SagaStatus.COMPLETED
    assert snapshot.output == {"run": 2}
    assert [(s.name, s.output) for s in snapshot.steps] == [("Work", {"run": 2})]


async def test_a_saga_left_by_a_dead_worker_is_recovered(shared_store_url: str) -> None:
    runs = Counter[str]()
    wf = counted_saga("Orphan", runs)

    store = open_store(shared_store_url)
    await store.open()
    try:
        created = await store.create_saga(
            NewSaga("orphan", "Orphan", '{"n": 4}', owner="dead-worker", lease_seconds=0.3)
        )
        assert created.created
    finally:
        await store.close()

    bystander = make_engine(shared_store_url)  # does not know the workflow: must not take it
    async with bystander:
        await asyncio.sleep(0.4)
        assert await bystander.recover() == 0
        assert await bystander.handle("orphan").status() == SagaStatus.RUNNING

    async with engine_with(shared_store_url, wf) as rescuer:
        assert await rescuer.handle("orphan").result(timeout=WAIT) == {"doubled": 8}
    assert runs == {"Work": 1, "wf": 1}


async def test_a_saga_started_for_a_worker_is_run_by_one(shared_store_url: str) -> None:
    runs = Counter[str]()
    wf = counted_saga("Queued", runs)
    producer = engine_with(shared_store_url)
    workers = [engine_with(shared_store_url, wf) for _ in range(2)]
    async with producer, workers[0], workers[1]:
        handle = await producer.start(wf, {"n": 3}, saga_id="queued", run_here=False)
        assert await handle.result(timeout=WAIT) == {"doubled": 6}
    assert runs == {"Work": 1, "wf": 1}


# -- the context --------------------------------------------------------------------------------


async def test_step_key_is_stable_across_retries_and_recovery(shared_store_url: str) -> None:
    keys: list[tuple[str, int]] = []
    other_keys: list[str] = []
    gate = Gate()

    @saga_step("Pay", retry=fast_retry(3))
    async def pay(ctx: SagaContext, inp: Any) -> str:
        keys.append((ctx.step_key, ctx.attempt))
        if len(keys) < 3:
            raise ConnectionError("flaky")
        if len(keys) == 3:
            await gate.hold()  # the crash comes on the third attempt
        return ctx.step_key

    @saga_step("Other")
    async def other(ctx: SagaContext, inp: Any) -> str:
        other_keys.append(ctx.step_key)
        return ctx.step_key

    @saga_workflow("Keys")
    async def wf(saga: SagaContext, inp: Any) -> list:
        return [await pay(saga, inp), await other(saga, inp)]

    async with engine_with(shared_store_url, wf) as first:
        await first.start(wf, None, saga_id="keys")
        await gate.reached()
    async with engine_with(shared_store_url, wf) as second:
        await within(second.recover(wait=True))
        result = await second.handle("keys").result(timeout=WAIT)

    assert [attempt for _, attempt in keys] == [1, 2, 3, 1]
    assert len({key for key, _ in keys}) == 1
    key = keys[0][0]
    assert "keys" in key
    assert result == [key, other_keys[0]]
    assert other_keys[0] != key


async def test_context_values_are_the_same_after_replay(shared_store_url: str) -> None:
    seen: list[tuple[datetime, uuid.UUID, float]] = []
    gate = Gate()
    runs = Counter[str]()

    @saga_step("Wait")
    async def wait_step(ctx: SagaContext, inp: Any) -> None:
        runs["Wait"] += 1
        if runs["Wait"] == 1:
            await gate.hold()

    @saga_workflow("Values")
    async def wf(saga: SagaContext, inp: Any) -> dict:
        now, uid, rnd = await saga.now(), await saga.uuid(), await saga.random()
        seen.append((now, uid, rnd))
        await wait_step(saga, inp)
        return {"now": now.isoformat(), "uuid": str(uid), "random": rnd}

    async with engine_with(shared_store_url, wf) as first:
        await first.start(wf, None, saga_id="vals")
        await gate.reached()
        await asyncio.sleep(0.01)  # a clock read again now would differ
    async with engine_with(shared_store_url, wf) as second:
        await within(second.recover(wait=True))
        result = await second.handle("vals").result(timeout=WAIT)
        kinds = [s.kind for s in (await second.get("vals")).steps]

    assert len(seen) == 2
    assert seen[0] == seen[1]
    now, uid, rnd = seen[0]
    assert now.tzinfo is not None and abs(datetime.now(UTC) - now) < timedelta(minutes=5)
    assert isinstance(uid, uuid.UUID) and uid.version == 4
    assert 0.0 <= rnd < 1.0
    assert result == {"now": now.isoformat(), "uuid": str(uid), "random": rnd}
    assert kinds == ["now", "uuid", "random", "step"]


# -- snapshots, handles and misuse --------------------------------------------------------------


async def test_snapshot_describes_the_saga_and_its_steps(engine: Engine) -> None:
    comps = Compensations()

    @saga_step("Reserve", compensate=comps.of("Reserve"))
    async def reserve(ctx: SagaContext, inp: dict) -> dict:
        return {"reservation": "r-1"}

    @saga_step("Charge", retry=fast_retry(2))
    async def charge(ctx: SagaContext, inp: dict) -> None:
        raise ValueError("insufficient funds")

    @saga_workflow("Snap")
    async def wf(saga: SagaContext, inp: dict) -> None:
        await reserve(saga, inp)
        await charge(saga, inp)

    @saga_workflow("SnapOk")
    async def ok(saga: SagaContext, inp: dict) -> dict:
        return await reserve(saga, inp)

    before = datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(SagaCompensatedError):
        await engine.run(wf, {"qty": 1}, saga_id="snap", timeout=WAIT)
    assert await engine.run(ok, {"qty": 2}, saga_id="snap-ok", timeout=WAIT) == {
        "reservation": "r-1"
    }

    s = await engine.get("snap")
    assert (s.saga_id, s.name, s.status) == ("snap", "Snap", SagaStatus.COMPENSATED)
    assert s.input == {"qty": 1}
    assert s.output is None
    assert s.error is not None and s.error["cause"]["type"] == "ValueError"
    assert before <= s.created_at <= s.updated_at
    assert [(x.seq, x.name, x.kind, x.status, x.attempts) for x in s.steps] == [
        (0, "Reserve", "step", "completed", 1),
        (1, "Charge", "step", "failed", 2),
        (2, "Reserve", "compensation", "completed", 1),
    ]
    reserve_step, charge_step, _ = s.steps
    assert reserve_step.output == {"reservation": "r-1"} and reserve_step.error is None
    assert charge_step.output is None
    assert charge_step.error is not None and charge_step.error["type"] == "ValueError"
    assert "insufficient funds" in charge_step.error["message"]
    for step in s.steps:
        assert step.started_at is not None and step.finished_at is not None
        assert before <= step.started_at <= step.finished_at

    good = await engine.get("snap-ok")
    assert (good.status, good.output, good.error) == (
        SagaStatus.COMPLETED,
        {"reservation": "r-1"},
        None,
    )

    listed = await engine.list()
    assert [x.saga_id for x in listed] == ["snap-ok", "snap"]
    assert all(x.steps == () for x in listed)
    assert [x.saga_id for x in await engine.list(status=SagaStatus.COMPENSATED)] == ["snap"]
    assert [x.saga_id for x in await engine.list(status="COMPLETED")] == ["snap-ok"]
    assert [x.saga_id for x in await engine.list(name="Snap")] == ["snap"]
    assert len(await engine.list(limit=1)) == 1


async def test_handle_status_and_result_timeout(engine: Engine) -> None:
    gate = Gate()

    @saga_step("Slow")
    async def slow(ctx: SagaContext, inp: Any) -> str:
        await gate.hold()
        return "finally"

    @saga_workflow("Waiting")
    async def wf(saga: SagaContext, inp: Any) -> str:
        return await slow(saga, inp)

    handle = await engine.start(wf, None, saga_id="slow")
    await gate.reached()
    assert await handle.status() == SagaStatus.RUNNING
    with pytest.raises(TimeoutError):
        await handle.result(timeout=0.05)
    with pytest.raises(TimeoutError):
        await engine.handle("slow").result(timeout=timedelta(milliseconds=50))
    assert await handle.status() == SagaStatus.RUNNING  # the saga goes on
    gate.opened.set()
    assert await handle.result(timeout=WAIT) == "finally"
    assert await handle.status() == SagaStatus.COMPLETED


async def test_unknown_ids_and_names(engine: Engine) -> None:
    with pytest.raises(SagaNotFoundError) as info:
        await engine.get("nope")
    assert "nope" in str(info.value)
    with pytest.raises(SagaNotFoundError):
        await engine.handle("nope").status()
    with pytest.raises(SagaNotFoundError):
        await engine.handle("nope").result(timeout=WAIT)
    with pytest.raises(UnknownWorkflowError) as unknown:
        await engine.start("NotRegistered", {})
    assert "NotRegistered" in str(unknown.value)
    assert await engine.list() == []


async def test_engine_outside_async_with_raises(store_url: str) -> None:
    @saga_workflow("Idle")
    async def wf(saga: SagaContext, inp: Any) -> None:
        return None

    engine = make_engine(store_url)
    engine.register(wf)  # registering needs no store
    with pytest.raises(EngineNotStartedError):
        await engine.start(wf, None)
    with pytest.raises(EngineNotStartedError):
        await engine.get("x")
    with pytest.raises(EngineNotStartedError):
        await engine.list()
    with pytest.raises(EngineNotStartedError):
        await engine.recover()
    async with engine:
        assert await engine.run(wf, None, saga_id="once", timeout=WAIT) is None
    with pytest.raises(EngineNotStartedError):
        await engine.run(wf, None, timeout=WAIT)  # closed again


# -- step timeouts ------------------------------------------------------------------------------


async def test_a_step_attempt_past_its_timeout_is_retried(engine: Engine) -> None:
    attempts: list[int] = []

    @saga_step("Sluggish", retry=fast_retry(3), timeout=timedelta(milliseconds=100))
    async def sluggish(ctx: SagaContext, inp: Any) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(30)
        return "in time"

    @saga_workflow("TimeoutRetry")
    async def wf(saga: SagaContext, inp: Any) -> str:
        return await sluggish(saga, inp)

    assert await engine.run(wf, None, saga_id="to1", timeout=WAIT) == "in time"
    assert attempts == [1, 2]
    assert (await engine.get("to1")).steps[0].attempts == 2


async def test_a_step_that_always_times_out_compensates(engine: Engine) -> None:
    comps = Compensations()
    attempts: list[int] = []

    @saga_step("Before", compensate=comps.of("Before"))
    async def before(ctx: SagaContext, inp: Any) -> str:
        return "before"

    @saga_step(
        "Stuck",
        compensate=comps.of("Stuck"),
        retry=fast_retry(2),
        timeout=timedelta(milliseconds=100),
    )
    async def stuck(ctx: SagaContext, inp: Any) -> None:
        attempts.append(ctx.attempt)
        await asyncio.sleep(30)

    @saga_workflow("TimeoutFails")
    async def wf(saga: SagaContext, inp: Any) -> None:
        await before(saga, inp)
        await stuck(saga, "stuck-in")

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="to2", timeout=WAIT)
    assert attempts == [1, 2]
    assert info.value.step == "Stuck"
    assert "timeout" in info.value.cause_type.lower()
    assert comps.calls == [("Stuck", "stuck-in", True), ("Before", "before", False)]
    step = (await engine.get("to2")).steps[1]
    assert (step.status, step.attempts) == ("failed", 2)
