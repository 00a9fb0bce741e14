"""Database faults on a real PostgreSQL: connections killed with pg_terminate_backend and the
server stopped (as a crash would) and started again while sagas run. The engine reconnects with
backoff and carries on: every saga completes, and no step runs twice (nothing here kills the
engine's process, so even at-least-once execution must come out as exactly once)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import asyncpg
import pytest

from sagakit import Engine, SagaContext, saga_step, saga_workflow

from .pgserver import PgServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgServer]:
    """A server of this module's own: these tests stop and restart it. Durable (fsync and
    synchronous_commit on): an immediate stop of a server with synchronous_commit off loses
    commits it had acknowledged, which would make steps run again for reasons of the test's
    own making."""
    with PgServer(durable=True) as pg:
        yield pg


def _workflow(executions: Counter[str]):  # type: ignore[no-untyped-def]
    @saga_step("Slow")
    async def slow(ctx: SagaContext, inp: int) -> int:
        executions[ctx.step_key] += 1
        await asyncio.sleep(0.05)
        return inp + 1

    @saga_workflow("Faulty")
    async def faulty(saga: SagaContext, inp: int) -> int:
        value = inp
        for _ in range(4):
            value = await slow(saga, value)
        return value

    return faulty


async def _terminate_others(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
        )
    finally:
        await conn.close()


async def test_connections_terminated_mid_run(own_pg: PgServer) -> None:
    executions: Counter[str] = Counter()
    faulty = _workflow(executions)
    async with Engine(own_pg.url, lease=timedelta(seconds=30)) as engine:
        engine.register(faulty)
        runs = asyncio.gather(
            *(engine.run(faulty, i, saga_id=f"term-{i}", timeout=60) for i in range(100))
        )
        terminated = 0
        for _ in range(3):
            await asyncio.sleep(0.08)
            terminated += await _terminate_others(own_pg.url)
        results = await runs
        assert results == [i + 4 for i in range(100)]
        assert terminated > 0
        assert len(executions) == 400
        assert set(executions.values()) == {1}
        snapshot = await engine.get("term-7")
        assert [s.name for s in snapshot.steps] == ["Slow"] * 4


async def test_server_restart_mid_run(own_pg: PgServer) -> None:
    executions: Counter[str] = Counter()
    faulty = _workflow(executions)
    async with Engine(own_pg.url, lease=timedelta(seconds=30)) as engine:
        engine.register(faulty)
        runs = asyncio.gather(
            *(engine.run(faulty, i, saga_id=f"restart-{i}", timeout=90) for i in range(50))
        )
        await asyncio.sleep(0.1)
        await asyncio.to_thread(own_pg.restart, "immediate")
        results = await runs
        assert results == [i + 4 for i in range(50)]
        assert len(executions) == 200
        assert set(executions.values()) == {1}
        listed = await engine.list(name="Faulty", limit=1000)
        assert {s.status for s in listed if s.saga_id.startswith("restart-")} == {"COMPLETED"}
