"""Remote-step sagas/s through each transport, beside local-step sagas/s in the same run.

    python -m benchmarks.services [--sagas N] [--concurrency C]
        [--transports memory,postgres,rabbitmq,nats] [--url POSTGRES_URL]

Every saga has two steps. The *local* saga runs two steps that do nothing; the *remote* saga
sends two commands (``reserve`` to inventory, ``charge`` to payments) and waits for each reply.
The store is PostgreSQL throughout: the saga's engine and the two participant services each
get a fresh database of their own on one server (a throwaway one started with the durable
defaults, or ``--url``), and the participants' handlers do nothing but return (each command is
still recorded in its participant's inbox with its reply, in one transaction). The engine, its
relay and both participants run in this one process, ``C`` sagas at a time; the brokers are
throwaway servers started here (tests/brokers.py): RabbitMQ (quorum queues, publisher
confirms), NATS JetStream (file storage), the PostgreSQL-only transport (its table in the
saga's database, LISTEN/NOTIFY) and the in-process memory transport.

It prints one row per run: sagas/s, p50 and p95 of one saga's latency (start to result), the
CPU time of this process per saga (engine, relays, participants and clients; not the servers'),
and the remote rate as a fraction of the local one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import asyncpg

from benchmarks.throughput import database
from sagakit import Engine, SagaContext, saga_step, saga_workflow
from sagakit.participant import CommandContext, Participant
from sagakit.transports import MemoryBroker, MemoryTransport, Transport

TRANSPORTS = ("memory", "postgres", "rabbitmq", "nats")


@saga_step("Reserve")
async def reserve_locally(ctx: SagaContext, inp: dict[str, Any]) -> str:
    return f"r-{inp['item']}"


@saga_step("Charge")
async def charge_locally(ctx: SagaContext, inp: dict[str, Any]) -> str:
    return "paid"


@saga_workflow("LocalOrder")
async def local_order(saga: SagaContext, inp: dict[str, Any]) -> list[str]:
    return [await reserve_locally(saga, inp), await charge_locally(saga, inp)]


@saga_workflow("RemoteOrder")
async def remote_order(saga: SagaContext, inp: dict[str, Any]) -> list[Any]:
    reserved = await saga.send_command(
        "reserve",
        {"item": inp["item"]},
        to="inventory",
        compensate_with=("release", {"item": inp["item"]}),
    )
    paid = await saga.send_command("charge", {"amount": inp["amount"]}, to="payments")
    return [reserved, paid]


def participants(urls: dict[str, str], make: Callable[[], Transport]) -> list[Participant]:
    inventory = Participant("inventory", urls["inventory"], transport=make())
    payments = Participant("payments", urls["payments"], transport=make())

    @inventory.command("reserve")
    async def reserve(ctx: CommandContext, payload: dict[str, Any]) -> str:
        return f"r-{payload['item']}"

    @inventory.command("release")
    async def release(ctx: CommandContext, payload: dict[str, Any]) -> None:
        return None

    @payments.command("charge")
    async def charge(ctx: CommandContext, payload: dict[str, Any]) -> str:
        return "paid"

    return [inventory, payments]


async def new_databases(server_url: str, *names: str) -> dict[str, str]:
    """Fresh databases on the server of ``server_url``, by role."""
    conn = await asyncpg.connect(server_url)
    urls = {}
    try:
        for name in names:
            db = f"bench_{name}_{uuid.uuid4().hex[:8]}"
            await conn.execute(f"CREATE DATABASE {db}")
            urls[name] = f"{server_url.rsplit('/', 1)[0]}/{db}"
    finally:
        await conn.close()
    return urls


@contextlib.contextmanager
def broker_url(kind: str) -> Iterator[str]:
    """A throwaway broker of this kind (none for memory and postgres)."""
    if kind in ("memory", "postgres"):
        yield ""
        return
    from tests.brokers import NatsServer, RabbitServer

    with RabbitServer() if kind == "rabbitmq" else NatsServer() as server:
        yield server.url


def transport_maker(kind: str, url: str, orders: str) -> Callable[[], Transport]:
    if kind == "memory":
        broker = MemoryBroker()
        return lambda: MemoryTransport(broker)
    if kind == "postgres":
        from sagakit.transports.postgres import PostgresOutboxTransport

        return lambda: PostgresOutboxTransport(orders, poll_interval=0.5)
    if kind == "rabbitmq":
        from sagakit.transports.rabbitmq import RabbitTransport

        return lambda: RabbitTransport(url)
    from sagakit.transports.nats import NatsTransport

    return lambda: NatsTransport(url)


@contextlib.asynccontextmanager
async def remote_setup(kind: str, server_url: str) -> AsyncIterator[Engine]:
    urls = await new_databases(server_url, "orders", "inventory", "payments")
    with broker_url(kind) as url:
        make = transport_maker(kind, url, urls["orders"])
        engine = Engine(urls["orders"], lease=timedelta(seconds=5), transport=make())
        engine.register(remote_order)
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(engine)
            for participant in participants(urls, make):
                await stack.enter_async_context(participant)
            yield engine


@contextlib.asynccontextmanager
async def local_setup(server_url: str) -> AsyncIterator[Engine]:
    urls = await new_databases(server_url, "orders")
    engine = Engine(urls["orders"], lease=timedelta(seconds=5))
    engine.register(local_order)
    async with engine:
        yield engine


async def load(
    engine: Engine, workflow: Any, sagas: int, concurrency: int, tag: str
) -> dict[str, float]:
    """Run ``sagas`` sagas, ``concurrency`` at a time: sagas/s and latency percentiles."""
    latencies: list[float] = []
    queue = iter(range(sagas))

    async def lane() -> None:
        for i in queue:
            began = time.perf_counter()
            handle = await engine.start(
                workflow, {"item": f"i{i}", "amount": i}, saga_id=f"{tag}-{i}"
            )
            await handle.result(timeout=120)
            latencies.append(time.perf_counter() - began)

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    latencies.sort()
    return {
        "rate": sagas / wall,
        "cpu": cpu / sagas * 1000,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p95": latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))] * 1000,
    }


async def measure(
    setup: contextlib.AbstractAsyncContextManager[Engine], workflow: Any, args: argparse.Namespace
) -> dict[str, float]:
    async with setup as engine:
        warmup = max(10, args.sagas // 10)
        await load(engine, workflow, warmup, args.concurrency, "warm")
        return await load(engine, workflow, args.sagas, args.concurrency, "bench")


async def main(args: argparse.Namespace) -> None:
    kinds = [k.strip() for k in args.transports.split(",") if k.strip()]
    unknown = set(kinds) - set(TRANSPORTS)
    if unknown:
        sys.exit(f"unknown transport(s) {sorted(unknown)}: choose from {', '.join(TRANSPORTS)}")
    with database("postgres", args.url) as server_url:
        print(
            f"sagakit services: {args.sagas} sagas of 2 steps, {args.concurrency} concurrent, "
            f"PostgreSQL store, {os.cpu_count()} CPUs"
        )
        rows: list[tuple[str, dict[str, float]]] = []
        local = await measure(local_setup(server_url), local_order, args)
        rows.append(("local steps (no transport)", local))
        for kind in kinds:
            figures = await measure(remote_setup(kind, server_url), remote_order, args)
            rows.append((f"remote steps, {kind}", figures))
        print(
            f"{'saga of 2 steps':<28} {'sagas/s':>8} {'p50 ms':>7} {'p95 ms':>7} "
            f"{'CPU ms/saga':>11} {'vs local':>8}"
        )
        for label, f in rows:
            print(
                f"{label:<28} {f['rate']:>8.1f} {f['p50']:>7.1f} {f['p95']:>7.1f} "
                f"{f['cpu']:>11.2f} {f['rate'] / local['rate']:>8.1%}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help=f"comma-separated, from {','.join(TRANSPORTS)}",
    )
    parser.add_argument("--url", default=None, help="an existing PostgreSQL server's database")
    asyncio.run(main(parser.parse_args()))
