"""The shared scenario suite: the same saga definitions (tests/restate_scenarios_app.py), run by
the embedded engine and by a real Restate server, must behave the same.

Each test gets a ``backend`` that reads the same on both: ``run``, ``start``/``result``,
``signal``, ``call``, ``object_call``. The Restate server (npm's ``restate-server``, on
loopback, data in a temporary folder) and the app's hypercorn are started once per session.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import sagakit.restate
from sagakit import (
    CompensationFailedError,
    Engine,
    SagaCompensatedError,
    SagaError,
    SagaStatus,
    SagaValidationError,
)
from sagakit.restate import RestateSagaClient

from .conftest import make_engine
from .restate_scenarios_app import DEFINITIONS, LEDGER
from .restate_server import AppServer, RestateServer

BACKENDS = ["embedded", "restate", "restate-replay"]


class Backend:
    """One way to run the scenario sagas, with the same calls on every backend."""

    name: str

    async def start(self, workflow: Any, inp: Any, saga_id: str) -> None:
        raise NotImplementedError

    async def result(self, workflow: Any, saga_id: str) -> Any:
        raise NotImplementedError

    async def run(self, workflow: Any, inp: Any, saga_id: str) -> Any:
        await self.start(workflow, inp, saga_id)
        return await self.result(workflow, saga_id)

    async def signal(self, workflow: Any, saga_id: str, name: str, payload: Any) -> None:
        raise NotImplementedError

    async def call(self, workflow: Any, saga_id: str, handler: str, inp: Any) -> Any:
        raise NotImplementedError

    async def object_call(self, obj: Any, key: str, handler: str, inp: Any) -> Any:
        raise NotImplementedError

    async def parked_steps(self, workflow: Any, saga_id: str) -> list[str]:
        raise NotImplementedError

    async def operate(self, workflow: Any, saga_id: str, action: str, output: Any = None) -> None:
        raise NotImplementedError


class EmbeddedBackend(Backend):
    name = "embedded"

    def __init__(self, engine: Engine):
        self.engine = engine

    async def start(self, workflow: Any, inp: Any, saga_id: str) -> None:
        await self.engine.start(workflow, inp, saga_id=saga_id)

    async def result(self, workflow: Any, saga_id: str) -> Any:
        return await self.engine.handle(saga_id).result(timeout=30)

    async def signal(self, workflow: Any, saga_id: str, name: str, payload: Any) -> None:
        await self.engine.signal(saga_id, name, payload)

    async def call(self, workflow: Any, saga_id: str, handler: str, inp: Any) -> Any:
        return await self.engine.call(saga_id, handler, inp)

    async def object_call(self, obj: Any, key: str, handler: str, inp: Any) -> Any:
        return await self.engine.call_object(obj.name, key, handler, inp, timeout=30)

    async def parked_steps(self, workflow: Any, saga_id: str) -> list[str]:
        snapshot = await self.engine.get(saga_id)
        if snapshot.status != SagaStatus.PARKED:
            return []
        return [s.name for s in snapshot.steps if s.kind == "step" and s.status == "failed"]

    async def operate(self, workflow: Any, saga_id: str, action: str, output: Any = None) -> None:
        admin = self.engine.admin
        if action == "retry":
            await admin.retry_step(saga_id)
        elif action == "skip":
            await admin.skip_step(saga_id, output)
        else:
            await admin.compensate(saga_id)


class RestateBackend(Backend):
    name = "restate"

    def __init__(self, client: RestateSagaClient):
        self.client = client

    async def start(self, workflow: Any, inp: Any, saga_id: str) -> None:
        await self.client.start(workflow, inp, saga_id)

    async def result(self, workflow: Any, saga_id: str) -> Any:
        return await self.client.result(workflow, saga_id)

    async def signal(self, workflow: Any, saga_id: str, name: str, payload: Any) -> None:
        await self.client.signal(workflow, saga_id, name, payload)

    async def call(self, workflow: Any, saga_id: str, handler: str, inp: Any) -> Any:
        return await self.client.call(workflow, saga_id, handler, inp)

    async def object_call(self, obj: Any, key: str, handler: str, inp: Any) -> Any:
        return await self.client.object_call(obj, key, handler, inp)

    async def parked_steps(self, workflow: Any, saga_id: str) -> list[str]:
        return [entry["step"] for entry in await self.client.parked(workflow, saga_id)]

    async def operate(self, workflow: Any, saga_id: str, action: str, output: Any = None) -> None:
        if action == "retry":
            await self.client.retry_step(workflow, saga_id)
        elif action == "skip":
            await self.client.skip_step(workflow, saga_id, output)
        else:
            await self.client.compensate(workflow, saga_id)


def _deployment(always_replay: bool) -> Iterator[RestateServer]:
    with (
        RestateServer(always_replay=always_replay) as server,
        AppServer(sagakit.restate.app(*DEFINITIONS)) as app,
    ):
        server.register(app.url)
        yield server


@pytest.fixture(scope="session")
def restate_deployment() -> Iterator[RestateServer]:
    """A Restate server with the scenario app registered, for the whole session."""
    yield from _deployment(always_replay=False)


@pytest.fixture(scope="session")
def restate_replay_deployment() -> Iterator[RestateServer]:
    """The same, on a server that suspends the saga at every await: each step then runs in an
    invocation attempt of its own, after a replay of everything before it."""
    yield from _deployment(always_replay=True)


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "embedded":
        engine = make_engine("memory://")
        engine.register(*DEFINITIONS)
        async with engine:
            yield EmbeddedBackend(engine)
    else:
        fixture = (
            "restate_deployment" if request.param == "restate" else "restate_replay_deployment"
        )
        server: RestateServer = request.getfixturevalue(fixture)
        async with RestateSagaClient(server.ingress_url, server.admin_url) as client:
            yield RestateBackend(client)


def new_id() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


def did(saga_id: str, kind: str = "do") -> list[tuple[Any, ...]]:
    return [e for e in LEDGER[saga_id] if e[0] == kind]


# -- the scenarios ---------------------------------------------------------------------------


async def test_happy_path(backend: Backend) -> None:
    from .restate_scenarios_app import checkout

    sid = new_id()
    result = await backend.run(checkout, {}, sid)
    assert result == {
        "reserve": {"step": "reserve", "attempts": 1},
        "charge": {"step": "charge", "attempts": 1},
        "ship": {"step": "ship", "attempts": 1},
    }
    # each step ran once, with a step key that names the saga and the step's place
    assert did(sid) == [
        ("do", "reserve", f"{sid}:0"),
        ("do", "charge", f"{sid}:1"),
        ("do", "ship", f"{sid}:2"),
    ]
    assert did(sid, "undo") == []


async def test_rollback_runs_compensations_in_reverse(backend: Backend) -> None:
    from .restate_scenarios_app import checkout

    sid = new_id()
    with pytest.raises(SagaCompensatedError) as caught:
        await backend.run(checkout, {"fail": {"ship": "terminal"}}, sid)
    assert caught.value.cause.step == "ship"
    assert caught.value.cause.message == "ship refused"
    # ship is hybrid: undone too (failed=True, with its input); then charge, then reserve;
    # charge's compensation takes no `failed`, reserve's and ship's do
    assert did(sid, "undo") == [
        ("undo", "ship", None, True),
        ("undo", "charge", "charge"),
        ("undo", "reserve", "reserve", False),
    ]


async def test_retries_then_success(backend: Backend) -> None:
    from .restate_scenarios_app import checkout

    sid = new_id()
    result = await backend.run(checkout, {"fail": {"charge": "flaky"}}, sid)
    assert result["charge"] == {"step": "charge", "attempts": 3}
    # the same step key on every attempt
    assert [e[2] for e in did(sid) if e[1] == "charge"] == [f"{sid}:1"] * 3
    assert did(sid, "undo") == []


async def test_retries_run_out_and_the_saga_is_compensated(backend: Backend) -> None:
    from .restate_scenarios_app import checkout

    sid = new_id()
    with pytest.raises(SagaCompensatedError) as caught:
        await backend.run(checkout, {"fail": {"ship": "always"}}, sid)
    assert caught.value.cause.step == "ship"
    assert caught.value.cause_type == "ValueError"
    assert "ship is down" in caught.value.cause_message
    assert "gave up after 2 attempts" in caught.value.cause_message
    assert len([e for e in did(sid) if e[1] == "ship"]) == 2
    assert did(sid, "undo") == [
        ("undo", "ship", None, True),
        ("undo", "charge", "charge"),
        ("undo", "reserve", "reserve", False),
    ]


async def test_permanent_failure_on_a_hybrid_step(backend: Backend) -> None:
    from .restate_scenarios_app import checkout

    sid = new_id()
    with pytest.raises(SagaCompensatedError) as caught:
        await backend.run(checkout, {"fail": {"reserve": "permanent"}}, sid)
    assert caught.value.cause_type == "PermanentFailure"
    assert caught.value.cause_message == "reserve is out of stock"
    # tried once, compensated with the data the failure gave
    assert did(sid) == [("do", "reserve", f"{sid}:0")]
    assert did(sid, "undo") == [("undo", "reserve", "partial", True)]


async def test_permanent_failure_on_a_strict_step_is_not_compensated(backend: Backend) -> None:
    from .restate_scenarios_app import checkout

    sid = new_id()
    with pytest.raises(SagaCompensatedError):
        await backend.run(checkout, {"fail": {"charge": "permanent"}}, sid)
    assert did(sid, "undo") == [("undo", "reserve", "reserve", False)]


async def test_output_that_is_not_json_fails_once(backend: Backend) -> None:
    from .restate_scenarios_app import checkout

    sid = new_id()
    with pytest.raises(SagaCompensatedError) as caught:
        await backend.run(checkout, {"fail": {"charge": "not_json"}}, sid)
    assert caught.value.cause_type == "OutputNotSerializableError"
    # the side effect happened once: not retried
    assert [e for e in did(sid) if e[1] == "charge"] == [("do", "charge", f"{sid}:1")]
    assert did(sid, "undo") == [("undo", "reserve", "reserve", False)]


async def test_a_failing_compensation_does_not_stop_the_others(backend: Backend) -> None:
    from .restate_scenarios_app import checkout

    sid = new_id()
    inp = {"fail": {"ship": "terminal"}, "undo_ship_fails": True}
    with pytest.raises(CompensationFailedError) as caught:
        await backend.run(checkout, inp, sid)
    error = caught.value
    assert error.cause.step == "ship" and error.cause_message == "ship refused"
    assert [(f.step, f.message) for f in error.failures] == [
        ("ship", "the courier refuses the return")
    ]
    assert did(sid, "undo") == [
        ("undo", "charge", "charge"),
        ("undo", "reserve", "reserve", False),
    ]


async def test_a_compensation_whose_retries_run_out(backend: Backend) -> None:
    from .restate_scenarios_app import checkout

    sid = new_id()
    inp = {"fail": {"ship": "terminal"}, "undo_ship_fails": "retries"}
    with pytest.raises(CompensationFailedError) as caught:
        await backend.run(checkout, inp, sid)
    [failure] = caught.value.failures
    assert (failure.step, failure.type) == ("ship", "ValueError")
    assert "the courier does not answer (gave up after 3 attempts)" in failure.message
    assert did(sid, "undo") == [
        ("undo", "charge", "charge"),
        ("undo", "reserve", "reserve", False),
    ]


@pytest.mark.parametrize(
    ("inp", "undone"),
    [
        # hybrid: undone with its input and failed=True even though it failed
        ({"hybrid_fails": True}, [("undo", "hold", 10, True)]),
        # strict: a failed strict step is not undone; the hybrid one before it is
        ({"strict_fails": True}, [("undo", "hold", 10, False)]),
    ],
)
async def test_hybrid_and_strict(backend: Backend, inp: dict[str, Any], undone: Any) -> None:
    from .restate_scenarios_app import holds

    sid = new_id()
    with pytest.raises(SagaCompensatedError):
        await backend.run(holds, inp, sid)
    assert did(sid, "undo") == undone


async def test_sleep(backend: Backend) -> None:
    from .restate_scenarios_app import sleeper

    sid = new_id()
    assert await backend.run(sleeper, {"seconds": 0.3}, sid) == "woke"
    assert did(sid) == [("do", "mark", "before"), ("do", "mark", "after")]


async def test_signals_are_taken_in_order(backend: Backend) -> None:
    from .restate_scenarios_app import waiter

    sid = new_id()
    await backend.start(waiter, {}, sid)
    await backend.signal(waiter, sid, "go", 1)
    await backend.signal(waiter, sid, "go", {"second": True})
    assert await asyncio.wait_for(backend.result(waiter, sid), 30) == [1, {"second": True}]


async def test_promise_resolved_by_a_handler(backend: Backend) -> None:
    from .restate_scenarios_app import approval

    sid = new_id()
    await backend.start(approval, {}, sid)
    await _until(lambda: did(sid) == [("do", "mark", "asked")])
    assert await backend.call(approval, sid, "decide", {"ok": True}) == "decided"
    assert await asyncio.wait_for(backend.result(approval, sid), 30) == {"ok": True}


async def test_run_as_step_joins_the_callers_rollback(backend: Backend) -> None:
    from .restate_scenarios_app import outer

    sid = new_id()
    assert await backend.run(outer, {}, sid) == 2
    sid = new_id()
    with pytest.raises(SagaCompensatedError):
        await backend.run(outer, {"fail": True}, sid)
    assert did(sid, "undo") == [("undo", "inner", 2, False), ("undo", "inner", 1, False)]


async def test_parallel_steps(backend: Backend) -> None:
    from .restate_scenarios_app import fanout

    sid = new_id()
    assert await backend.run(fanout, {"n": 3}, sid) == [0, 1, 2]
    sid = new_id()
    with pytest.raises(SagaCompensatedError):
        await backend.run(fanout, {"n": 3, "fail": True}, sid)
    # every branch is undone, in reverse order of the branches
    assert did(sid, "undo") == [("undo", "inner", n, False) for n in (2, 1, 0)]


async def test_an_attempt_past_the_step_timeout_is_retried(backend: Backend) -> None:
    from .restate_scenarios_app import timed_out

    sid = new_id()
    assert await backend.run(timed_out, None, sid) == 2
    assert did(sid) == [("do", "slow_once", 1), ("do", "slow_once", 2)]


async def test_parallel_branches_of_several_operations(backend: Backend) -> None:
    from .restate_scenarios_app import branches

    sid = new_id()
    assert await backend.run(branches, None, sid) == [[[1, 10], [2, 20]], [0, 1, 2, 3]]
    assert sorted(e[2] for e in did(sid)) == [0, 1, 1, 2, 2, 3, 10, 20]


#: every leg of the three 2-leg branches of "Trips"
ALL_LEGS = ["a0", "a1", "b0", "b1", "c0", "c1"]


def _finished_legs(saga_id: str) -> list[str]:
    return sorted(e[1] for e in LEDGER[saga_id] if e[0] == "end")


def _most_in_flight(events: list[tuple[Any, ...]]) -> int:
    """The most legs that had started and not ended at one time, from the ledger's order."""
    running = most = 0
    for event in events:
        if event[0] == "start":
            running += 1
            most = max(most, running)
        elif event[0] == "end":
            running -= 1
    return most


async def test_branches_of_several_steps_run_in_parallel(backend: Backend) -> None:
    from .restate_scenarios_app import trips

    sid = new_id()
    result = await backend.run(trips, {"steps": 2, "seconds": 0.2}, sid)
    assert result == [["a0", "a1"], ["b0", "b1"], ["c0", "c1"]]
    # each leg of a round started before any leg of it ended: the branches overlapped
    assert _most_in_flight(LEDGER[sid]) == 3
    # and each leg ran once
    assert _finished_legs(sid) == ALL_LEGS


async def test_a_failing_branch_lets_the_others_end_then_everything_is_undone(
    backend: Backend,
) -> None:
    from .restate_scenarios_app import trips

    sid = new_id()
    with pytest.raises(SagaCompensatedError, match="b1 refused"):
        await backend.run(trips, {"steps": 2, "seconds": 0.05, "fail": "b1"}, sid)
    assert _finished_legs(sid) == ALL_LEGS
    expected = [
        ("undo", "c1", False),
        ("undo", "b1", True),  # the failed hybrid leg is undone too
        ("undo", "a1", False),
        ("undo", "c0", False),
        ("undo", "b0", False),
        ("undo", "a0", False),
    ]
    undone = did(sid, "undo")
    assert sorted(undone) == sorted(expected)
    for branch in "abc":  # newest first within each branch, on every backend
        assert [e[1] for e in undone if e[1][0] == branch] == [f"{branch}1", f"{branch}0"]
    if backend.name == "embedded":
        # by position: latest round first, last branch first within a round (on Restate:
        # newest first in the order the legs were journaled, which is when they completed)
        assert undone == expected


async def test_a_limit_keeps_branches_of_several_steps_in_bounds(backend: Backend) -> None:
    from .restate_scenarios_app import trips

    sid = new_id()
    result = await backend.run(trips, {"steps": 2, "seconds": 0.1, "limit": 2}, sid)
    assert result == [["a0", "a1"], ["b0", "b1"], ["c0", "c1"]]
    assert _most_in_flight(LEDGER[sid]) == 2


async def test_branches_that_wait_for_signals_sleep_and_gather(backend: Backend) -> None:
    from .restate_scenarios_app import mixed_branches

    sid = new_id()
    await backend.start(mixed_branches, {"steps": 2, "seconds": 0.05}, sid)
    await backend.signal(mixed_branches, sid, "go", "green")
    assert await asyncio.wait_for(backend.result(mixed_branches, sid), 30) == [
        ["green", "s0"],
        [["x0", "x1"], ["y0", "y1"]],
        ["a0", "a1"],
    ]
    assert _finished_legs(sid) == ["a0", "a1", "s0", "x0", "x1", "y0", "y1"]


async def _parked(backend: Backend, workflow: Any, saga_id: str) -> list[str]:
    for _ in range(300):
        steps = await backend.parked_steps(workflow, saga_id)
        if steps:
            return steps
        await asyncio.sleep(0.05)
    raise AssertionError(f"saga {saga_id} did not park")


async def test_a_parked_step_retried_by_an_operator_goes_on(backend: Backend) -> None:
    from .restate_scenarios_app import BROKEN, parking

    sid = new_id()
    await backend.start(parking, None, sid)
    assert await _parked(backend, parking, sid) == ["stubborn"]
    assert did(sid) == [("do", "book"), ("do", "stubborn"), ("do", "stubborn")]
    BROKEN[sid] = False
    await backend.operate(parking, sid, "retry")
    assert await asyncio.wait_for(backend.result(parking, sid), 30) == {"fixed": True}
    assert did(sid)[3:] == [("do", "stubborn"), ("do", "mark", "after")]
    assert did(sid, "undo") == []
    assert await backend.parked_steps(parking, sid) == []


async def test_a_parked_step_skipped_by_an_operator_takes_its_output(backend: Backend) -> None:
    from .restate_scenarios_app import parking

    sid = new_id()
    await backend.start(parking, None, sid)
    await _parked(backend, parking, sid)
    await backend.operate(parking, sid, "skip", {"fixed": "by hand"})
    assert await asyncio.wait_for(backend.result(parking, sid), 30) == {"fixed": "by hand"}
    assert did(sid)[-1] == ("do", "mark", "after")
    assert did(sid).count(("do", "stubborn")) == 2


async def test_a_parked_step_given_up_by_an_operator_is_compensated(backend: Backend) -> None:
    from .restate_scenarios_app import parking

    sid = new_id()
    await backend.start(parking, None, sid)
    await _parked(backend, parking, sid)
    await backend.operate(parking, sid, "compensate")
    with pytest.raises(SagaCompensatedError):
        await asyncio.wait_for(backend.result(parking, sid), 30)
    assert ("do", "mark", "after") not in did(sid)
    # the hybrid step's attempts may have done part of the work: it is undone too
    assert did(sid, "undo") == [("undo", "stubborn", True), ("undo", "book", False)]


async def test_operating_a_saga_with_nothing_parked_is_refused(
    restate_deployment: RestateServer,
) -> None:
    from .restate_scenarios_app import parking

    sid = new_id()
    url = restate_deployment.ingress_url
    async with RestateSagaClient(url) as client:
        with pytest.raises(SagaError, match="no parked step"):
            await client.retry_step(parking, sid)
        with pytest.raises(SagaError, match="operator request"):
            await client._operate(parking, sid, {"action": "explode"})


async def test_a_declarative_saga_and_its_on_reject_hook(backend: Backend) -> None:
    from .restate_scenarios_app import declarative

    sid = new_id()
    result = await backend.run(declarative, {"customer": sid}, sid)
    assert result["ChargeCard"] == {"payment_id": f"p-o-{sid}"}
    sid = new_id()
    before = len(LEDGER["rejected"])
    with pytest.raises(SagaCompensatedError) as caught:
        await backend.run(declarative, {"customer": sid, "declined": True}, sid)
    assert caught.value.step == "ChargeCard"
    assert did(sid, "undo") == [("undo", "create", f"o-{sid}")]
    # the hook ran once, after the rollback, with the cause
    assert LEDGER["rejected"][before:] == [("TerminalError", "card declined", "ChargeCard")]


async def test_child_saga(backend: Backend) -> None:
    from .restate_scenarios_app import parent

    sid = new_id()
    assert await backend.run(parent, {}, sid) == {"child": f"{sid}/child-0", "result": 2}
    sid = new_id()
    child = f"{sid}/child-0"
    # the child rolled itself back; the parent sees why and goes on
    assert await backend.run(parent, {"child_fails": True}, sid) == {
        "child": child,
        "failed": "boom",
    }
    assert did(child, "undo") == [("undo", "inner", 2, False), ("undo", "inner", 1, False)]


async def test_starting_a_saga_id_again_runs_nothing_again(backend: Backend) -> None:
    from .restate_scenarios_app import checkout

    sid = new_id()
    first = await backend.run(checkout, {}, sid)
    assert await backend.run(checkout, {}, sid) == first
    assert len(did(sid)) == 3


async def test_invalid_input_is_refused(backend: Backend) -> None:
    from .restate_scenarios_app import typed

    sid = new_id()
    assert await backend.run(typed, {"customer": "c1", "amount": 3}, sid) == {"customer": "c1"}
    with pytest.raises(SagaValidationError):
        await backend.run(typed, {"customer": "c1", "amount": "lots"}, new_id())


async def test_journaled_values_are_the_same_on_replay(backend: Backend) -> None:
    from .restate_scenarios_app import values

    sid = new_id()
    made = await backend.run(values, None, sid)
    assert did(sid) == [("do", "mark", made)]
    assert 0.0 <= made[1] < 1.0


async def test_a_signal_that_never_comes_times_out(backend: Backend) -> None:
    from .restate_scenarios_app import impatient

    sid = new_id()
    with pytest.raises(SagaCompensatedError) as caught:
        await backend.run(impatient, None, sid)
    assert caught.value.cause_type == "SagaTimeoutError"
    assert did(sid, "undo") == [("undo", "book", False)]


async def test_a_saga_that_ends_before_its_deadline(backend: Backend) -> None:
    from .restate_scenarios_app import hurried

    sid = new_id()
    assert await backend.run(hurried, "in time", sid) == "late"
    assert did(sid) == [("do", "book"), ("do", "dawdle"), ("do", "dawdled")]


@pytest.mark.parametrize("what", ["step", "signal", "sleep"])
async def test_the_deadline_cuts_the_saga_and_it_rolls_back(backend: Backend, what: str) -> None:
    from .restate_scenarios_app import hurried

    sid = new_id()
    with pytest.raises(SagaCompensatedError, match="deadline") as caught:
        await asyncio.wait_for(backend.run(hurried, what, sid), 30)
    assert caught.value.cause_type == "SagaTimeoutError"
    assert did(sid, "undo") == [("undo", "book", False)]
    # a step cut by the deadline did not finish, and is not run again
    assert ("do", "dawdled") not in did(sid)
    assert did(sid).count(("do", "dawdle")) == (1 if what == "step" else 0)


async def test_a_rejected_promise_rolls_the_saga_back(backend: Backend) -> None:
    from .restate_scenarios_app import approval

    sid = new_id()
    await backend.start(approval, {}, sid)
    await _until(lambda: did(sid) == [("do", "mark", "asked")])
    assert await backend.call(approval, sid, "refuse", "over budget") == "refused"
    with pytest.raises(SagaCompensatedError) as caught:
        await asyncio.wait_for(backend.result(approval, sid), 30)
    assert caught.value.cause_type == "PromiseRejectedError"
    assert caught.value.cause_message == "over budget"


async def test_a_saga_output_that_is_not_json_rolls_back(backend: Backend) -> None:
    from .restate_scenarios_app import not_json

    sid = new_id()
    with pytest.raises(SagaCompensatedError) as caught:
        await backend.run(not_json, None, sid)
    assert caught.value.cause_type == "OutputNotSerializableError"
    assert did(sid, "undo") == [("undo", "book", False)]


async def test_virtual_object_state(backend: Backend) -> None:
    from .restate_scenarios_app import counter

    key = new_id()
    assert await backend.object_call(counter, key, "add", 2) == 2
    assert await backend.object_call(counter, key, "add", 3) == 5
    assert await backend.object_call(counter, key, "total", None) == 5


async def test_a_step_reads_its_objects_state(backend: Backend) -> None:
    from .restate_scenarios_app import inventory

    key = new_id()
    await backend.object_call(inventory, key, "stock", 5)
    assert await backend.object_call(inventory, key, "restock", 2) == 9
    assert (await backend.object_call(inventory, key, "view", None))["stock"] == 9


async def test_a_rolled_back_object_call_leaves_state_as_its_compensations_make_it(
    backend: Backend,
) -> None:
    from .restate_scenarios_app import inventory

    key = new_id()
    await backend.object_call(inventory, key, "stock", 5)
    with pytest.raises(SagaCompensatedError) as caught:
        await backend.object_call(inventory, key, "order", {"item": "o-1", "fail": True})
    assert caught.value.step == "Pay"
    assert await backend.object_call(inventory, key, "view", None) == {
        "stock": 5,
        "reserved": None,
        "last_order": "o-1",
    }
    assert await backend.object_call(inventory, key, "order", {"item": "o-2"}) == "ordered"
    assert await backend.object_call(inventory, key, "view", None) == {
        "stock": 5,
        "reserved": "o-2",
        "last_order": "o-2",
    }


async def _until(check: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


# -- Restate only ------------------------------------------------------------------------------


async def test_cancelling_through_the_admin_api_runs_the_compensations(
    restate_deployment: RestateServer,
) -> None:
    from .restate_scenarios_app import cancellable

    sid = new_id()
    async with RestateSagaClient(
        restate_deployment.ingress_url, restate_deployment.admin_url
    ) as client:
        invocation = await client.start(cancellable, None, sid)
        await _until(lambda: did(sid) == [("do", "book")])
        await client.cancel(invocation)
        with pytest.raises(SagaCompensatedError) as caught:
            await asyncio.wait_for(client.result(cancellable, sid), 30)
    assert caught.value.cause_type == "SagaCancelledError"
    assert did(sid, "undo") == [("undo", "book", False)]


async def test_cancelling_parallel_branches_stops_each_at_its_wait_and_rolls_back(
    restate_deployment: RestateServer,
) -> None:
    from .restate_scenarios_app import cancellable_branches

    sid = new_id()
    url, admin = restate_deployment.ingress_url, restate_deployment.admin_url
    async with RestateSagaClient(url, admin) as client:
        invocation = await client.start(cancellable_branches, None, sid)
        await _parked(RestateBackend(client), cancellable_branches, sid)
        # a run's transient failure ends Restate's invocation attempt: a run in flight beside it
        # may lose its result and run again (steps are at least once), and Restate counts a
        # run's attempts since the last entry it journaled, so the budget can start over
        assert did(sid).count(("do", "stubborn")) >= 2
        assert did(sid).count(("do", "book")) >= 1
        await client.cancel(invocation)
        with pytest.raises(SagaCompensatedError) as caught:
            await asyncio.wait_for(client.result(cancellable_branches, sid), 30)
    assert caught.value.cause_type == "SagaCancelledError"
    # the parked hybrid step and the booking are undone, newest first
    assert did(sid, "undo") == [("undo", "stubborn", True), ("undo", "book", False)]


@pytest.mark.parametrize("fixture", ["restate_deployment", "restate_replay_deployment"])
async def test_a_declarative_root_sees_the_signals_sent_before_the_saga_started(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    from .restate_scenarios_app import with_events

    server: RestateServer = request.getfixturevalue(fixture)
    sid = new_id()
    async with RestateSagaClient(server.ingress_url) as client:
        await client.signal(with_events, sid, "coupon", "SPRING")
        await client.signal(with_events, sid, "other", "ignored")
        await client.signal(with_events, sid, "coupon", "VIP")
        result = await client.run(with_events, {}, sid)
    assert result == {"ApplyCoupons": {"codes": ["SPRING", "VIP"]}}


async def test_always_replay_mode_replays_the_saga_function(
    restate_replay_deployment: RestateServer,
) -> None:
    """The replay backend really suspends at every await: the saga function is entered once per
    step (and once more to finish), while each step ran once."""
    from .restate_scenarios_app import ENTERED, counted

    sid = new_id()
    url = restate_replay_deployment.ingress_url
    async with RestateSagaClient(url) as client:
        assert await client.run(counted, None, sid) == 3
    assert did(sid) == [("do", "mark", 1), ("do", "mark", 2), ("do", "mark", 3)]
    assert ENTERED[sid] >= 4
