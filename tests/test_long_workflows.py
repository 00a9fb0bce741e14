"""Long workflows (``create_saga_long_workflow``): a main saga function plus handlers that other
code calls on a running saga to read its published state, resolve or reject its promises and
signal it. Each test runs on every store kind.

Workflows are defined inside each test, so that their counters and logs belong to that test
alone. A "restart" is an engine closed while the saga is suspended and a new engine opened on
the same database (``shared_store_url``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    Engine,
    HandlerContext,
    PromiseAlreadyCompletedError,
    PromiseRejectedError,
    SagaCompensatedError,
    SagaContext,
    SagaError,
    SagaFinishedError,
    SagaNotFoundError,
    SagaStatus,
    SagaValidationError,
    UnknownHandlerError,
    create_saga_long_workflow,
    saga_step,
    saga_workflow,
)
from tests.conftest import make_engine
from tests.waiting import STILL, WAIT, Gate, eventually, suspended

# -- helpers ----------------------------------------------------------------------------------


def approval_workflow(name: str = "Approval") -> tuple[Any, list[Any]]:
    """The approval flow: the saga publishes what it waits for, waits for the promise
    ``decision`` and returns it; the handler ``approve`` reads the published state and resolves
    the promise. Returns the workflow and the log of what its step did."""
    wf = create_saga_long_workflow(name)
    prepared: list[Any] = []

    @saga_step("Prepare")
    async def prepare(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        prepared.append(inp["amount"])
        return {"request": f"req-{inp['amount']}"}

    @wf.main()
    async def run(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        request = await prepare(saga, inp)
        saga.set_state("request", request["request"])
        saga.set_state("status", "awaiting approval")
        decision = await saga.promise("decision").value()
        saga.set_state("status", "decided")
        return {"request": request["request"], "decision": decision}

    @wf.handler()
    async def approve(ctx: HandlerContext, inp: dict[str, Any]) -> dict[str, Any]:
        request = await ctx.get_state("request")
        status = await ctx.get_state("status")
        await ctx.promise("decision").resolve({"approved": True, "by": inp["by"]})
        return {"saga": ctx.saga_id, "request": request, "status": status}

    @wf.handler()
    async def deny(ctx: HandlerContext, inp: str) -> None:
        await ctx.promise("decision").reject(inp)

    return wf, prepared


# -- the approval flow ------------------------------------------------------------------------


async def test_the_approval_flow(engine: Engine) -> None:
    wf, prepared = approval_workflow()
    engine.register(wf)
    handle = await engine.start(wf, {"amount": 120}, saga_id="approval-1")
    await suspended(engine, "approval-1")
    assert await engine.query("approval-1", "status") == "awaiting approval"

    answer = await engine.call("approval-1", "approve", {"by": "alice"})
    assert answer == {"saga": "approval-1", "request": "req-120", "status": "awaiting approval"}

    result = await handle.result(timeout=WAIT)
    assert result == {"request": "req-120", "decision": {"approved": True, "by": "alice"}}
    assert prepared == [120]  # the replay after the wake did not run the step again
    assert await engine.query("approval-1", "status") == "decided"
    assert (await engine.get("approval-1")).status == SagaStatus.COMPLETED


async def test_a_handler_called_before_the_saga_waits_keeps_its_promise(engine: Engine) -> None:
    wf = create_saga_long_workflow("EarlyApproval")
    gate = Gate()

    @saga_step("Slow")
    async def slow(ctx: SagaContext, inp: Any) -> str:
        await gate.hold()
        return "slow done"

    @wf.main()
    async def run(saga: SagaContext, inp: Any) -> Any:
        first = await slow(saga, None)
        return [first, await saga.promise("go").value()]

    @wf.handler()
    async def go(ctx: HandlerContext, inp: Any) -> str:
        await ctx.promise("go").resolve(inp)
        return "resolved"

    engine.register(wf)
    handle = await engine.start(wf, None, saga_id="early")
    await gate.reached()  # the saga is in its step: it has not reached the wait yet
    assert await engine.call("early", "go", {"v": 7}) == "resolved"
    gate.opened.set()
    assert await handle.result(timeout=WAIT) == ["slow done", {"v": 7}]


async def test_a_handler_called_on_a_saga_not_yet_running_keeps_its_promise(
    engine: Engine,
) -> None:
    """Started for a worker (``run_here=False``): the handler may run before the saga did."""
    wf = create_saga_long_workflow("NotYetRunning")

    @wf.main()
    async def run(saga: SagaContext, inp: Any) -> Any:
        return await saga.promise("p").value()

    @wf.handler()
    async def give(ctx: HandlerContext, inp: Any) -> None:
        await ctx.promise("p").resolve(inp)

    engine.register(wf)
    handle = await engine.start(wf, None, saga_id="nyr", run_here=False)
    await engine.call("nyr", "give", "early bird")
    assert await handle.result(timeout=WAIT) == "early bird"


async def test_a_rejected_promise_compensates_the_saga(engine: Engine) -> None:
    wf = create_saga_long_workflow("Rejectable")
    undone: list[Any] = []

    async def release(data: Any) -> None:
        undone.append(data)

    @saga_step("Hold", compensate=release)
    async def hold(ctx: SagaContext, inp: str) -> str:
        return f"held {inp}"

    @wf.main()
    async def run(saga: SagaContext, inp: str) -> Any:
        await hold(saga, inp)
        return await saga.promise("decision").value()

    @wf.handler()
    async def deny(ctx: HandlerContext, reason: str) -> str:
        await ctx.promise("decision").reject(reason)
        return "denied"

    engine.register(wf)
    handle = await engine.start(wf, "seat 4A", saga_id="rejected")
    await suspended(engine, "rejected")
    assert await engine.call("rejected", "deny", "over budget") == "denied"

    with pytest.raises(SagaCompensatedError) as info:
        await handle.result(timeout=WAIT)
    assert info.value.cause_type == "PromiseRejectedError"
    assert "over budget" in info.value.cause_message
    assert undone == ["held seat 4A"]  # a completed step is compensated with its output
    assert (await engine.get("rejected")).status == SagaStatus.COMPENSATED


def lingering_workflow(name: str) -> Any:
    """Waits for the promise ``decision``, then (resolved or rejected) stays alive until the
    signal ``done``: later completions of the promise meet a running saga."""
    wf = create_saga_long_workflow(name)

    @wf.main()
    async def run(saga: SagaContext, inp: Any) -> Any:
        try:
            decision = await saga.promise("decision").value()
        except PromiseRejectedError:
            saga.set_state("outcome", "rejected")
            await saga.wait_for_signal("done")
            raise
        saga.set_state("outcome", "resolved")
        await saga.wait_for_signal("done")
        return decision

    @wf.handler()
    async def approve(ctx: HandlerContext, inp: Any) -> None:
        await ctx.promise("decision").resolve(inp)

    @wf.handler()
    async def deny(ctx: HandlerContext, inp: str) -> None:
        await ctx.promise("decision").reject(inp)

    @wf.handler()
    async def finish(ctx: HandlerContext, inp: Any) -> None:
        await ctx.signal("done")

    return wf


async def test_a_promise_completes_once(engine: Engine) -> None:
    wf = lingering_workflow("CompletesOnce")
    engine.register(wf)
    handle = await engine.start(wf, None, saga_id="once")
    await suspended(engine, "once")

    await engine.call("once", "approve", {"by": "alice"})
    # the same value again is fine, from a handler or from the engine
    await engine.call("once", "approve", {"by": "alice"})
    await engine.resolve_promise("once", "decision", {"by": "alice"})

    async def taken() -> bool:
        return await engine.query("once", "outcome") == "resolved"

    await eventually(taken, "the saga to take the promise's value")
    # the saga has taken the value; the same again is still fine
    await engine.call("once", "approve", {"by": "alice"})
    # anything else is refused, before and after the saga took the value
    with pytest.raises(PromiseAlreadyCompletedError) as info:
        await engine.call("once", "approve", {"by": "mallory"})
    assert info.value.saga_id == "once" and info.value.name == "decision"
    with pytest.raises(PromiseAlreadyCompletedError):
        await engine.call("once", "deny", "changed my mind")
    with pytest.raises(PromiseAlreadyCompletedError):
        await engine.resolve_promise("once", "decision", {"by": "bob"})
    with pytest.raises(PromiseAlreadyCompletedError):
        await engine.resolve_promise("once", "decision", None, error="no")

    await engine.call("once", "finish", None)
    assert await handle.result(timeout=WAIT) == {"by": "alice"}
    # the saga is over: nothing can complete its promise any more
    with pytest.raises(SagaFinishedError):
        await engine.call("once", "approve", {"by": "alice"})


async def test_a_rejection_is_final_too(engine: Engine) -> None:
    wf = lingering_workflow("RejectedOnce")
    engine.register(wf)
    handle = await engine.start(wf, None, saga_id="rej-once")
    await engine.call("rej-once", "deny", "no")
    await engine.call("rej-once", "deny", "no")  # the same rejection again is fine

    async def taken() -> bool:
        return await engine.query("rej-once", "outcome") == "rejected"

    await eventually(taken, "the saga to see the rejection")
    with pytest.raises(PromiseAlreadyCompletedError):
        await engine.call("rej-once", "deny", "never")
    with pytest.raises(PromiseAlreadyCompletedError):
        await engine.call("rej-once", "approve", {"by": "alice"})
    await engine.call("rej-once", "finish", None)
    with pytest.raises(SagaCompensatedError) as info:
        await handle.result(timeout=WAIT)
    assert info.value.cause_type == "PromiseRejectedError"
    assert info.value.cause_message == "no"


async def test_engine_resolve_promise_answers_the_saga(engine: Engine) -> None:
    wf, _ = approval_workflow("ResolvedByEngine")
    engine.register(wf)
    handle = await engine.start(wf, {"amount": 1}, saga_id="by-engine")
    await suspended(engine, "by-engine")
    await engine.resolve_promise("by-engine", "decision", "ok")
    assert (await handle.result(timeout=WAIT))["decision"] == "ok"


async def test_a_handler_signals_the_saga(engine: Engine) -> None:
    wf = create_saga_long_workflow("Signalled")

    @wf.main()
    async def run(saga: SagaContext, inp: Any) -> Any:
        first = await saga.wait_for_signal("item")
        saga.set_state("items", [first])
        second = await saga.wait_for_signal("item")
        return [first, second]

    @wf.handler("add-item")
    async def add_item(ctx: HandlerContext, inp: str) -> int:
        await ctx.signal("item", {"name": inp})
        return len(inp)

    engine.register(wf)
    handle = await engine.start(wf, None, saga_id="sig")
    await suspended(engine, "sig")
    assert await engine.call("sig", "add-item", "apple") == 5

    async def published() -> bool:
        return await engine.query("sig", "items") == [{"name": "apple"}]

    await eventually(published, "the first signal to be taken")
    assert await engine.call("sig", "add-item", "pear") == 4
    assert await handle.result(timeout=WAIT) == [{"name": "apple"}, {"name": "pear"}]
    # the handler was registered under its given name only
    with pytest.raises(UnknownHandlerError):
        await engine.call("sig", "add_item", "x")


async def test_signals_sent_before_the_wait_are_kept(engine: Engine) -> None:
    wf = create_saga_long_workflow("SignalledEarly")
    gate = Gate()

    @saga_step("Busy")
    async def busy(ctx: SagaContext, inp: Any) -> None:
        await gate.hold()

    @wf.main()
    async def run(saga: SagaContext, inp: Any) -> Any:
        await busy(saga, None)
        return [await saga.wait_for_signal("s"), await saga.wait_for_signal("s")]

    @wf.handler()
    async def send(ctx: HandlerContext, inp: Any) -> None:
        await ctx.signal("s", inp)

    engine.register(wf)
    handle = await engine.start(wf, None, saga_id="sig-early")
    await gate.reached()
    await engine.call("sig-early", "send", 1)
    await engine.call("sig-early", "send", 2)
    gate.opened.set()
    assert await handle.result(timeout=WAIT) == [1, 2]


# -- errors -----------------------------------------------------------------------------------


class Approval(BaseModel):
    approver: str
    level: int


async def test_calling_an_unknown_saga_raises_saga_not_found(engine: Engine) -> None:
    wf, _ = approval_workflow("NotFound")
    engine.register(wf)
    with pytest.raises(SagaNotFoundError) as info:
        await engine.call("no-such-saga", "approve", {"by": "alice"})
    assert info.value.saga_id == "no-such-saga"


async def test_calling_an_unknown_handler_raises(engine: Engine) -> None:
    wf, _ = approval_workflow("UnknownHandler")
    engine.register(wf)
    await engine.start(wf, {"amount": 1}, saga_id="uh")
    with pytest.raises(UnknownHandlerError) as info:
        await engine.call("uh", "escalate", None)
    assert info.value.name == "escalate"
    assert "approve" in str(info.value)  # it lists the handlers it has

    # a plain workflow has no handlers at all
    @saga_workflow("Plain")
    async def plain(saga: SagaContext, inp: Any) -> Any:
        return await saga.wait_for_signal("never")

    await engine.start(plain, None, saga_id="plain")
    with pytest.raises(UnknownHandlerError):
        await engine.call("plain", "approve", {"by": "alice"})


async def test_a_handler_input_is_validated_against_its_type(engine: Engine) -> None:
    wf = create_saga_long_workflow("Typed")
    seen: list[Approval] = []

    @wf.main()
    async def run(saga: SagaContext, inp: Any) -> Any:
        return await saga.promise("approval").value()

    @wf.handler()
    async def approve(ctx: HandlerContext, inp: Approval) -> str:
        seen.append(inp)
        # Resolved on the second good call only: once it resolves, the saga may
        # finish before the next call reaches it, and a finished saga takes no calls.
        if len(seen) == 2:
            await ctx.promise("approval").resolve(inp.model_dump())
        return inp.approver

    engine.register(wf)
    handle = await engine.start(wf, None, saga_id="typed")
    with pytest.raises(SagaValidationError):
        await engine.call("typed", "approve", {"approver": "bob"})  # no level
    with pytest.raises(SagaValidationError):
        await engine.call("typed", "approve", {"approver": "bob", "level": "high"})
    assert seen == []  # the handler never ran on bad input
    # a dict is converted to the model; a model is taken as it is
    assert await engine.call("typed", "approve", {"approver": "bob", "level": 2}) == "bob"
    assert await engine.call("typed", "approve", Approval(approver="bob", level=2)) == "bob"
    assert all(isinstance(s, Approval) for s in seen) and len(seen) == 2
    assert await handle.result(timeout=WAIT) == {"approver": "bob", "level": 2}


async def test_a_long_workflow_without_main_cannot_be_registered(engine: Engine) -> None:
    wf = create_saga_long_workflow("Headless")

    @wf.handler()
    async def poke(ctx: HandlerContext, inp: Any) -> None:
        return None

    with pytest.raises(SagaError, match="main"):
        engine.register(wf)
    with pytest.raises(SagaError, match="main"):
        await engine.start(wf, None)
    assert "Headless" not in engine.workflows


def test_a_long_workflow_takes_one_main_and_unique_handler_names() -> None:
    wf = create_saga_long_workflow("Once")

    @wf.main()
    async def run(saga: SagaContext, inp: Any) -> Any:
        return None

    with pytest.raises(SagaError):

        @wf.main()
        async def run_again(saga: SagaContext, inp: Any) -> Any:
            return None

    @wf.handler("h")
    async def h(ctx: HandlerContext, inp: Any) -> None:
        return None

    with pytest.raises(SagaError):

        @wf.handler("h")
        async def h2(ctx: HandlerContext, inp: Any) -> None:
            return None

    with pytest.raises(TypeError):

        @wf.handler()
        async def no_input(ctx: HandlerContext) -> None:
            return None

    with pytest.raises(TypeError):

        @wf.handler()
        def not_async(ctx: HandlerContext, inp: Any) -> None:
            return None

    assert sorted(wf.handlers) == ["h"]


# -- several engines on one database ----------------------------------------------------------


async def test_a_handler_called_from_a_second_engine(shared_store_url: str) -> None:
    wf, prepared = approval_workflow("TwoEngines")
    async with (
        make_engine(shared_store_url) as runner,
        make_engine(shared_store_url, worker=False) as caller,
    ):
        runner.register(wf)
        handle = await runner.start(wf, {"amount": 42}, saga_id="two")
        await suspended(runner, "two")

        # the caller needs the workflow registered to know its handlers
        with pytest.raises(UnknownHandlerError):
            await caller.call("two", "approve", {"by": "carol"})
        caller.register(wf)
        answer = await caller.call("two", "approve", {"by": "carol"})
        assert answer["request"] == "req-42" and answer["status"] == "awaiting approval"

        result = await handle.result(timeout=WAIT)
        assert result["decision"] == {"approved": True, "by": "carol"}
        assert await caller.handle("two").result(timeout=WAIT) == result
        assert prepared == [42]
        # the second engine is a client: the saga ran in the first one only
        snap = await caller.get("two")
        assert snap.status == SagaStatus.COMPLETED


async def test_a_waiting_saga_survives_a_restart_and_a_handler_elsewhere(
    shared_store_url: str,
) -> None:
    wf, prepared = approval_workflow("Restarted")
    first = make_engine(shared_store_url)
    first.register(wf)
    async with first:
        await first.start(wf, {"amount": 99}, saga_id="restart")
        await suspended(first, "restart")
    # first is closed: nothing runs the saga now
    async with make_engine(shared_store_url) as second:
        second.register(wf)
        assert (await second.get("restart")).status == SagaStatus.SUSPENDED
        await asyncio.sleep(STILL)
        assert (await second.get("restart")).status == SagaStatus.SUSPENDED  # it waits on
        assert await second.query("restart", "status") == "awaiting approval"

        answer = await second.call("restart", "approve", {"by": "dave"})
        assert answer["status"] == "awaiting approval"
        result = await second.handle("restart").result(timeout=WAIT)
        assert result == {"request": "req-99", "decision": {"approved": True, "by": "dave"}}
        assert prepared == [99]  # recovered from the journal: the step did not run again
        assert await second.query("restart", "status") == "decided"


async def test_a_saga_resolved_while_no_engine_runs_it_finishes_at_the_next_start(
    shared_store_url: str,
) -> None:
    wf, prepared = approval_workflow("ResolvedOffline")
    first = make_engine(shared_store_url)
    first.register(wf)
    async with first:
        await first.start(wf, {"amount": 3}, saga_id="offline")
        await suspended(first, "offline")
    # a client (no worker) resolves it while no worker is up
    async with make_engine(shared_store_url, worker=False) as client:
        client.register(wf)
        await client.call("offline", "approve", {"by": "erin"})
        await asyncio.sleep(STILL)
        assert (await client.get("offline")).status != SagaStatus.COMPLETED
    async with make_engine(shared_store_url) as third:
        third.register(wf)
        result = await third.handle("offline").result(timeout=WAIT)
        assert result["decision"] == {"approved": True, "by": "erin"}
        assert prepared == [3]


async def test_racing_completions_from_several_engines_have_one_winner(
    shared_store_url: str,
) -> None:
    """Handlers in two processes complete the same promise at once, with different values:
    one wins, the other is told PromiseAlreadyCompletedError, and the saga gets the winner's."""
    wf = create_saga_long_workflow("Raced")

    @wf.main()
    async def run(saga: SagaContext, inp: Any) -> Any:
        return await saga.promise("p").value()

    @wf.handler()
    async def give(ctx: HandlerContext, inp: str) -> str:
        await ctx.promise("p").resolve(inp)
        return inp

    async with (
        make_engine(shared_store_url) as runner,
        make_engine(shared_store_url, worker=False) as left,
        make_engine(shared_store_url, worker=False) as right,
    ):
        for engine in (runner, left, right):
            engine.register(wf)
        for i in range(30):  # the race is lost often, not always
            saga_id = f"raced-{i}"
            handle = await runner.start(wf, None, saga_id=saga_id, run_here=False)
            outcomes = await asyncio.gather(
                left.call(saga_id, "give", "left"),
                right.call(saga_id, "give", "right"),
                return_exceptions=True,
            )
            winners = [o for o in outcomes if isinstance(o, str)]
            losers = [o for o in outcomes if isinstance(o, PromiseAlreadyCompletedError)]
            assert len(winners) == 1 and len(losers) == 1, (saga_id, outcomes)
            assert await handle.result(timeout=WAIT) == winners[0]


def test_a_main_with_restate_sagas_three_parameters_is_refused_at_definition() -> None:
    """restate-saga's ``main(saga, ctx, input_val)`` would fail every saga at run time: it is
    refused when it is defined, with the spelling that works here."""
    wf = create_saga_long_workflow("ThreeParameters")

    async def main(saga: SagaContext, ctx: Any, input_val: Any) -> Any:
        return input_val

    with pytest.raises(TypeError, match=r"main\(saga, inp\)"):
        wf.main()(main)
    with pytest.raises(TypeError, match="requires \\(saga, ctx, input_val\\)"):
        saga_workflow("ThreeAsWell")(main)
    with pytest.raises(SagaError, match="no main function"):
        wf.check_ready()  # nothing was taken

    async def with_default(saga: SagaContext, inp: Any, extra: int = 1) -> Any:
        return inp

    wf.main()(with_default)  # a third parameter with a default is fine
    wf.check_ready()
