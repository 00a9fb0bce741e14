"""A child saga started on a queue (``saga.start_child(..., queue=...)``): how one step shared by
many sagas is limited. Checked on every store kind: the children wait QUEUED, start as their
queue allows (never more at once than its concurrency, whatever the number of parents), their
outcomes reach their parents, and a replay of a parent finds its child instead of enqueueing
another.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagakit import (
    Queue,
    SagaCompensatedError,
    SagaContext,
    SagaError,
    SagaStatus,
    TerminalError,
    saga_step,
    saga_workflow,
)

from .conftest import make_engine


class Gauge:
    """How many children are inside their step at once, and the most there ever were."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def inside(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.01)
        self.now -= 1


async def test_queued_children_run_within_their_queue_s_limit(store_url: str) -> None:
    gauge = Gauge()
    payments = Queue("payments", concurrency=2)

    @saga_workflow("Charge")
    async def charge(saga: SagaContext, inp: dict[str, int]) -> int:
        await gauge.inside()
        return inp["n"] * 10

    @saga_workflow("Checkout")
    async def checkout(saga: SagaContext, inp: dict[str, int]) -> int:
        child = await saga.start_child(charge, inp, queue=payments)
        return await child.result()

    async with make_engine(store_url) as engine:
        engine.register(checkout, charge, payments)
        handles = [await engine.start(checkout, {"n": n}, f"order-{n}") for n in range(8)]
        results = [await h.result(timeout=60) for h in handles]
        assert results == [n * 10 for n in range(8)]
        assert gauge.peak <= 2
        children = [s for s in await engine.list(limit=100) if s.name == "Charge"]
        assert len(children) == 8  # one per parent, each enqueued once
        for child in children:
            record = await engine._store_or_raise().load_saga(child.saga_id)
            assert record is not None and record.queue == "payments"
            assert record.parent_id is not None and record.parent_id.startswith("order-")


async def test_a_queued_child_that_fails_rolls_back_and_its_parent_sees_it(store_url: str) -> None:
    undone: list[str] = []

    async def refund(data: Any, failed: bool) -> None:
        undone.append("refund")

    @saga_step("Hold", compensate=refund)
    async def hold(saga: SagaContext, inp: Any) -> str:
        return "held"

    @saga_workflow("Charge")
    async def charge(saga: SagaContext, inp: dict[str, int]) -> int:
        await hold(saga, inp)
        raise TerminalError("card declined")

    @saga_workflow("Checkout")
    async def checkout(saga: SagaContext, inp: dict[str, int]) -> str:
        child = await saga.start_child(charge, inp, queue="payments")
        try:
            await child.result()
        except SagaCompensatedError:
            return "declined"
        return "charged"

    async with make_engine(store_url) as engine:
        engine.register(checkout, charge, Queue("payments", concurrency=1))
        assert await engine.run(checkout, {"n": 1}, "order") == "declined"
        assert undone == ["refund"]


async def test_a_replayed_parent_finds_its_queued_child(shared_store_url: str) -> None:
    """The parent's run stops (its engine closes) while the child waits in its queue; a new
    engine replays the parent, which finds the same child (journaled), not a second one."""
    gate = asyncio.Event()
    paused = Queue("slow", concurrency=1)

    @saga_workflow("Job")
    async def job(saga: SagaContext, inp: dict[str, int]) -> int:
        await gate.wait()
        return inp["n"]

    @saga_workflow("Parent")
    async def parent(saga: SagaContext, inp: dict[str, int]) -> int:
        child = await saga.start_child(job, inp, queue=paused)
        return await child.result()

    async with make_engine(shared_store_url) as first:
        first.register(parent, job, paused)
        await first.start(parent, {"n": 7}, "p")
        for _ in range(500):
            sagas = await first.list(limit=10)
            if any(s.name == "Job" for s in sagas):
                break
            await asyncio.sleep(0.01)
    gate.set()
    async with make_engine(shared_store_url) as second:
        second.register(parent, job, paused)
        assert await second.handle("p").result(timeout=60) == 7
        jobs = [s for s in await second.list(limit=10) if s.name == "Job"]
        assert len(jobs) == 1 and jobs[0].status == SagaStatus.COMPLETED


async def test_priority_without_a_queue_is_refused(store_url: str) -> None:
    @saga_workflow("Job")
    async def job(saga: SagaContext, inp: Any) -> int:
        return 1

    @saga_workflow("Parent")
    async def parent(saga: SagaContext, inp: Any) -> str:
        try:
            await saga.start_child(job, inp, priority=3)
        except SagaError as refused:
            return str(refused)
        return "started"

    async with make_engine(store_url) as engine:
        engine.register(parent, job)
        message = await engine.run(parent, {}, "p")
        assert "needs queue=" in message
        assert [s.name for s in await engine.list(limit=10)] == ["Parent"]


@pytest.mark.parametrize("queue", ["nowhere", Queue("other", priority=False)])
async def test_an_unknown_queue_or_a_bad_priority_fails_the_parent_before_any_child(
    store_url: str, queue: Any
) -> None:
    @saga_workflow("Job")
    async def job(saga: SagaContext, inp: Any) -> int:
        return 1

    @saga_workflow("Parent")
    async def parent(saga: SagaContext, inp: Any) -> str:
        await saga.start_child(job, inp, queue=queue, priority=2)
        return "started"

    async with make_engine(store_url) as engine:
        engine.register(parent, job)
        with pytest.raises(SagaCompensatedError):
            await engine.run(parent, {}, "p")
        assert [s.name for s in await engine.list(limit=10)] == ["Parent"]
