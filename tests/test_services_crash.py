"""Sagas across two participant services survive SIGKILL (issue 20): the saga worker and the
participants' process are killed in the middle of a flow of sagas over the PostgreSQL transport
and started again; every saga ends COMPLETED or COMPENSATED, every command is processed exactly
once by its participant (a ledger in the participant's database, written in the transaction of
its inbox row), and every compensation command once."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from sagakit import SagaStatus
from tests.conftest import make_engine, make_store_url
from tests.processes import AppProcesses
from tests.services_crash_app import LEDGER, cross_order

#: the flow's size (SAGAKIT_SERVICES_SAGAS=500 for the figures of BENCHMARKS.md)
SAGAS = int(os.environ.get("SAGAKIT_SERVICES_SAGAS", "60"))
WAIT = 180.0


async def test_sagas_across_services_survive_killed_workers_and_participants(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = make_store_url("postgres", tmp_path, request)
    conn = await asyncpg.connect(url)
    await conn.execute(
        f"CREATE TABLE {LEDGER} (participant text, command text, message_id text, key text)"
    )
    app = AppProcesses(tmp_path, url, "tests.services_crash_app")
    app.app_args = lambda: []  # type: ignore[method-assign]
    began = time.monotonic()
    client = make_engine(url, worker=False, migrate=True)
    client.register(cross_order)
    try:
        async with client:
            worker = app.spawn("worker")
            services = app.spawn("participants")
            for i in range(1, SAGAS + 1):
                await client.start(
                    cross_order, {"item": f"i{i}", "amount": i}, saga_id=f"s{i}", run_here=False
                )

            async def processed(n: int) -> bool:
                return int(await conn.fetchval(f"SELECT count(*) FROM {LEDGER}")) >= n

            # mid-flow: kill the saga worker, then the participants, and start them again
            await app.until(services, "the first commands", lambda: processed(SAGAS // 4))
            app.kill(worker)
            worker = app.spawn("worker")
            await app.until(worker, "more commands", lambda: processed(SAGAS // 2))
            app.kill(services)
            services = app.spawn("participants")
            await app.until(services, "more commands", lambda: processed(SAGAS))
            app.kill(worker)
            worker = app.spawn("worker")

            ends = time.monotonic() + WAIT
            while True:
                counts = await client._store_or_raise().count_by_status()
                ended = counts.get("COMPLETED", 0) + counts.get("COMPENSATED", 0)
                if ended == SAGAS:
                    break
                assert time.monotonic() < ends, (counts, app.describe(worker))
                assert worker.poll() is None and services.poll() is None, app.describe(worker)
                await asyncio.sleep(0.2)
            statuses = {f"s{i}": (await client.get(f"s{i}")).status for i in range(1, SAGAS + 1)}
        rows = await conn.fetch(f"SELECT participant, command, message_id, key FROM {LEDGER}")
    finally:
        app.stop_all()
        await conn.close()
    declined = {f"s{i}" for i in range(1, SAGAS + 1) if i % 5 == 0}
    assert {s for s, st in statuses.items() if st == SagaStatus.COMPENSATED} == declined
    assert {s for s, st in statuses.items() if st == SagaStatus.COMPLETED} == (
        set(statuses) - declined
    )
    # exactly once: one ledger row per message, and the rows each saga should have
    per_message = Counter(r["message_id"] for r in rows)
    assert [m for m, n in per_message.items() if n != 1] == []
    by_command = Counter((r["command"], r["key"]) for r in rows)
    for i in range(1, SAGAS + 1):
        assert by_command[("reserve", f"i{i}")] == 1, i
        assert by_command[("charge", str(i))] == 1, i
        assert by_command[("release", f"i{i}")] == (1 if i % 5 == 0 else 0), i
    print(
        f"{SAGAS} sagas in {time.monotonic() - began:.1f}s with 3 kills: {len(rows)} commands "
        f"processed once each, {len(declined)} sagas compensated"
    )
