"""A worker with a backlog claims again as its runs end, not at its next poll: a claim that
filled every free slot means more sagas may be due."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from sagakit import Engine, SagaContext, saga_step, saga_workflow
from tests.conftest import make_store_url


@saga_step("BacklogStep")
async def backlog_step(ctx: SagaContext, inp: int) -> int:
    return inp


@saga_workflow("Backlog")
async def backlog(saga: SagaContext, inp: int) -> int:
    return await backlog_step(saga, inp)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_worker_drains_a_backlog_larger_than_its_slots_without_polling(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = make_store_url(kind, tmp_path, request, shared=True)
    async with Engine(url, worker=False) as client:
        client.register(backlog)
        for i in range(60):
            await client.start(backlog, i, saga_id=f"b{i}", run_here=False)
    # a poll so long that only the claims its own runs' ends trigger can drain the backlog
    worker = Engine(url, max_concurrency=8, poll_interval=timedelta(hours=1))
    worker.register(backlog)
    async with worker, Engine(url, worker=False) as reader:
        async with asyncio.timeout(60):
            while True:
                done = await reader.list(status="COMPLETED", limit=100)
                if len(done) == 60:
                    break
                await asyncio.sleep(0.05)
        results = [await reader.handle(f"b{i}").result() for i in range(60)]
    assert results == list(range(60))
