"""Sagas across two participant services over a real broker survive SIGKILL and a broker
restart (issue 20).

A saga worker (whose engine runs the orders database's relay and consumes the replies) and two
participant services (inventory and payments, each with a PostgreSQL database of its own and
the relay of that database) run as real processes over a RabbitMQ node or a nats-server of the
test's own. In the middle of a flow of sagas the test SIGKILLs the worker (its relay with it)
and the inventory service, restarts the broker, then SIGKILLs the payments service and the
worker again, starting each anew. Every saga must end COMPLETED or COMPENSATED (every fifth is
declined by payments), every command must be processed exactly once by its participant (a
ledger row written in the transaction of its inbox row), and every compensation command once.

The issue's 500 sagas run in CI (about 30 s per broker here, most of it the ten seconds a
SIGKILLed relay's lease takes to expire, twice, and RabbitMQ's start and restart);
``SAGAKIT_BROKER_CRASH_SAGAS=N`` runs another number.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from sagakit import SagaStatus
from tests.brokers import NatsServer, RabbitServer
from tests.conftest import make_engine, make_store_url
from tests.processes import AppProcesses
from tests.services_broker_crash_app import DECLINE_EVERY, LEDGER, broker_order

SAGAS = int(os.environ.get("SAGAKIT_BROKER_CRASH_SAGAS", "500"))
WAIT = 240.0


@pytest.mark.parametrize("kind", ["rabbitmq", "nats"])
async def test_sagas_across_services_survive_kills_and_a_broker_restart(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    urls = {}
    for name in ("orders", "inventory", "payments"):
        (tmp_path / name).mkdir()
        urls[name] = make_store_url("postgres", tmp_path / name, request)
    ledgers = []
    for name in ("inventory", "payments"):
        conn = await asyncpg.connect(urls[name])
        await conn.execute(
            f"CREATE TABLE {LEDGER} (participant text, command text, message_id text, key text)"
        )
        ledgers.append(conn)

    async def processed(n: int) -> bool:
        counts = [int(await c.fetchval(f"SELECT count(*) FROM {LEDGER}")) for c in ledgers]
        return sum(counts) >= n

    # a broker of this test's own: the session's must not restart under other tests
    server: RabbitServer | NatsServer = RabbitServer() if kind == "rabbitmq" else NatsServer()
    app = AppProcesses(tmp_path, urls["orders"], "tests.services_broker_crash_app")
    client = make_engine(urls["orders"], worker=False)
    client.register(broker_order)
    commands = 2 * SAGAS + SAGAS // DECLINE_EVERY
    try:
        with server:
            broker = f"{kind}:{server.url}"
            app.app_args = lambda: [broker]  # type: ignore[method-assign]
            began = time.monotonic()
            async with client:
                worker = app.spawn("worker")
                inventory = app.spawn("inventory", urls["inventory"])
                payments = app.spawn("payments", urls["payments"])
                for i in range(1, SAGAS + 1):
                    await client.start(
                        broker_order,
                        {"item": f"i{i}", "amount": i},
                        saga_id=f"s{i}",
                        run_here=False,
                    )
                # mid-flow: kill the worker (and its relay) and the inventory service
                await app.until(inventory, "the first commands", lambda: processed(commands // 4))
                app.kill(worker)
                app.kill(inventory)
                worker = app.spawn("worker")
                inventory = app.spawn("inventory", urls["inventory"])
                # restart the broker under everyone
                await app.until(inventory, "more commands", lambda: processed(commands // 2))
                down = time.monotonic()
                await asyncio.to_thread(server.stop)
                await asyncio.to_thread(server.start_again)
                restart = time.monotonic() - down
                # then kill the payments service and the worker again
                await app.until(payments, "more commands", lambda: processed(3 * commands // 4))
                app.kill(payments)
                app.kill(worker)
                payments = app.spawn("payments", urls["payments"])
                worker = app.spawn("worker")

                ends = time.monotonic() + WAIT
                while True:
                    counts = await client._store_or_raise().count_by_status()
                    ended = counts.get("COMPLETED", 0) + counts.get("COMPENSATED", 0)
                    if ended == SAGAS:
                        break
                    for proc in (worker, inventory, payments):
                        assert proc.poll() is None, app.describe(proc)
                    assert time.monotonic() < ends, (counts, app.describe(worker))
                    await asyncio.sleep(0.2)
                elapsed = time.monotonic() - began
                statuses = {
                    f"s{i}": (await client.get(f"s{i}")).status for i in range(1, SAGAS + 1)
                }
        rows = [r for c in ledgers for r in await c.fetch(f"SELECT * FROM {LEDGER}")]
    finally:
        app.stop_all()
        for conn in ledgers:
            await conn.close()
    declined = {f"s{i}" for i in range(1, SAGAS + 1) if i % DECLINE_EVERY == 0}
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
        assert by_command[("release", f"i{i}")] == (1 if i % DECLINE_EVERY == 0 else 0), i
    assert len(rows) == commands
    print(
        f"\n{kind}: {SAGAS} sagas in {elapsed:.1f}s with 4 SIGKILLs and a broker restart "
        f"({restart:.1f}s down): {len(rows)} commands processed once each, "
        f"{len(declined)} sagas compensated"
    )
