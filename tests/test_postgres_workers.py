"""Workers sharing a PostgreSQL database: wake-ups by LISTEN/NOTIFY, not by polling."""

from __future__ import annotations

from datetime import timedelta

from sagakit import Engine, SagaContext, saga_step, saga_workflow


@saga_step("Echo")
async def echo(ctx: SagaContext, inp: str) -> str:
    return inp


@saga_workflow("Notified")
async def notified(saga: SagaContext, inp: str) -> str:
    return await echo(saga, inp)


async def test_an_idle_worker_is_woken_by_notify(pg_url: str) -> None:
    # the worker polls once an hour: only a NOTIFY can make it take the saga in time
    async with (
        Engine(pg_url, poll_interval=timedelta(hours=1)) as worker,
        Engine(pg_url, worker=False) as client,
    ):
        worker.register(notified)
        client.register(notified)
        for i in range(3):
            handle = await client.start(notified, f"hello {i}", saga_id=f"n-{i}", run_here=False)
            assert await handle.result(timeout=10) == f"hello {i}"
        snapshot = await client.get("n-2")
        assert [s.name for s in snapshot.steps] == ["Echo"]
