"""``engine.run_due`` (a worker's round, run from the caller's own loop), ``engine.settle`` and
``engine.is_open``, on every store kind, with an engine that is not a background worker (as a
program that moves sagas on by its own calls uses one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagakit import (
    Engine,
    EngineNotStartedError,
    SagaContext,
    SagaStatus,
    UnknownWorkflowError,
    saga_step,
    saga_workflow,
)
from tests.conftest import make_engine
from tests.waiting import WAIT

ran: list[str] = []


@saga_step("Note")
async def note(ctx: SagaContext, inp: str) -> str:
    await asyncio.sleep(0.01)  # the run is not over when the step is called
    ran.append(inp)
    return inp


@saga_workflow("Alpha")
async def alpha(saga: SagaContext, inp: str) -> str:
    return await note(saga, inp)


@saga_workflow("Beta")
async def beta(saga: SagaContext, inp: str) -> str:
    return await note(saga, inp)


@saga_workflow("Gate")
async def gate(saga: SagaContext, inp: str) -> Any:
    await note(saga, inp)
    return await saga.wait_for_signal("open")


@pytest.fixture
async def client(store_url: str) -> Any:
    """An engine whose background worker claims nothing: sagas move on by run_due."""
    ran.clear()
    engine = make_engine(store_url, worker=False)
    engine.register(alpha, beta, gate)
    async with engine:
        yield engine


async def statuses(engine: Engine, *saga_ids: str) -> list[SagaStatus]:
    return [(await engine.get(s)).status for s in saga_ids]


async def test_run_due_takes_at_most_limit_of_the_named_workflows_and_waits_for_them(
    client: Engine,
) -> None:
    for saga_id in ("a1", "a2", "a3"):
        await client.start(alpha, saga_id, saga_id=saga_id, run_here=False)
    await client.start(beta, "b1", saga_id="b1", run_here=False)

    first = await client.run_due(2, workflows=["Alpha"])
    assert len(first) == 2 and set(first) <= {"a1", "a2", "a3"}
    # returned once their runs stopped: they are COMPLETED, nothing else ran
    assert await statuses(client, *first) == [SagaStatus.COMPLETED] * 2
    assert sorted(ran) == sorted(first)
    assert await statuses(client, "b1") == [SagaStatus.PENDING]

    rest = await client.run_due()
    assert sorted(rest) == sorted({"a1", "a2", "a3", "b1"} - set(first))
    assert await statuses(client, "a1", "a2", "a3", "b1") == [SagaStatus.COMPLETED] * 4
    assert await client.run_due() == []
    assert sorted(ran) == ["a1", "a2", "a3", "b1"]


async def test_run_due_runs_a_saga_to_its_wait_and_again_once_an_event_makes_it_due(
    client: Engine,
) -> None:
    await client.start(gate, "g1", saga_id="g1", run_here=False)
    assert await client.run_due() == ["g1"]
    assert await statuses(client, "g1") == [SagaStatus.SUSPENDED]
    assert await client.run_due() == []  # waiting for its signal: not due
    await client.signal("g1", "open", "ok")
    assert await client.run_due(workflows=["Gate"]) == ["g1"]
    assert (await client.get("g1")).output == "ok"
    assert ran == ["g1"]  # its step ran once


async def test_run_due_refuses_unknown_workflows_and_a_closed_engine(store_url: str) -> None:
    engine = make_engine(store_url, worker=False)
    engine.register(alpha)
    with pytest.raises(EngineNotStartedError):
        await engine.run_due()
    async with engine:
        with pytest.raises(UnknownWorkflowError, match="'Nope' is not registered"):
            await engine.run_due(workflows=["Alpha", "Nope"])
        assert await engine.run_due(0) == []


async def test_settle_waits_for_this_process_run_and_is_open_tells_the_state(
    store_url: str,
) -> None:
    engine = make_engine(store_url, worker=False)
    engine.register(alpha)
    assert engine.is_open is False
    async with engine:
        assert engine.is_open is True
        handle = await engine.start(alpha, "s1", saga_id="s1")
        await engine.settle("s1")
        assert await statuses(engine, "s1") == [SagaStatus.COMPLETED]
        await engine.settle("s1")  # no run of it here any more: returns at once
        await engine.settle("unknown")
        assert await handle.result(timeout=WAIT) == "s1"
    assert engine.is_open is False


async def test_recover_still_takes_every_due_saga(client: Engine) -> None:
    for saga_id in ("r1", "r2"):
        await client.start(alpha, saga_id, saga_id=saga_id, run_here=False)
    await client.start(gate, "r3", saga_id="r3", run_here=False)
    assert await client.recover(wait=True) == 3
    assert await statuses(client, "r1", "r2", "r3") == [
        SagaStatus.COMPLETED,
        SagaStatus.COMPLETED,
        SagaStatus.SUSPENDED,
    ]
    assert await client.recover() == 0
