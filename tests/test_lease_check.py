"""A run whose lease may have run out looks at the saga's fence before its next side effect.

A worker that stopped renewing (paused past its lease) must not start a step that the worker
which took the saga over has already finished. Engine A runs a saga to between two steps and
stops renewing; engine B takes the saga over when the lease expires and completes it; then A
goes on: it must stop before the second step, which B's journal already holds. On every store.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sagakit import SagaContext, SagaStatus, saga_step, saga_workflow
from tests.conftest import engine_with
from tests.waiting import WAIT, eventually

LEASE = timedelta(seconds=1)


async def test_a_run_past_its_lease_does_not_start_a_step_finished_elsewhere(
    shared_store_url: str,
) -> None:
    executions: list[str] = []
    first_run_between_steps = asyncio.Event()
    go_on = asyncio.Event()
    runs = 0

    @saga_step("First")
    async def first(ctx: SagaContext, inp: Any) -> str:
        executions.append("First")
        return "one"

    @saga_step("Second")
    async def second(ctx: SagaContext, inp: Any) -> str:
        executions.append("Second")
        return "two"

    @saga_workflow("Paused")
    async def paused(saga: SagaContext, inp: Any) -> list[str]:
        nonlocal runs
        runs += 1
        one = await first(saga, inp)
        if runs == 1:  # only the first run pauses here, as a stalled process would
            first_run_between_steps.set()
            await go_on.wait()
        return [one, await second(saga, inp)]

    a = engine_with(shared_store_url, paused, lease=LEASE, poll_interval=timedelta(hours=1))
    b = engine_with(shared_store_url, paused, lease=LEASE, poll_interval=timedelta(seconds=0.05))
    async with a:
        await a.start(paused, None, saga_id="stalled")
        async with asyncio.timeout(WAIT):
            await first_run_between_steps.wait()
        # A stops renewing: its background worker is gone, its run lives on
        assert a._background is not None
        a._background.cancel()
        async with b:
            assert await b.handle("stalled").result(timeout=WAIT) == ["one", "two"]
        assert executions == ["First", "Second"]
        task = a._tasks.get("stalled")
        assert task is not None
        go_on.set()  # A wakes up, past its lease

        async def a_stopped() -> bool:
            return task.done()

        await eventually(a_stopped, "engine A's run to stop")
        assert task.result() is None  # stopped: the saga is not its own any more
        assert executions == ["First", "Second"]  # A did not run Second again
        assert (await a.get("stalled")).status == SagaStatus.COMPLETED
