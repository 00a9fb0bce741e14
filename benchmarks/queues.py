"""What a queue costs, and how close its rate limit comes to the rate it is given (issue 17).

    python -m benchmarks.queues [--store sqlite|postgres|both] [--sagas N] [--workers W]
        [--concurrency C] [--poll S] [--rounds R] [--rate R/s] [--rate-sagas M] [--url URL]

Dispatch overhead: N sagas of 3 no-op steps are written first, with no worker running, either
started (``engine.start(..., run_here=False)``, PENDING) or enqueued in a Queue without limits
(``engine.enqueue``, QUEUED), from a client engine (``worker=False``); then W worker engines
(each ``max_concurrency=C``, polling every ``--poll`` seconds, in this process) open and drain
them. It prints the write rate (starts/s, enqueues/s) and the drain rate (sagas/s from the
workers' opening to the last saga COMPLETED), for both, alternating ``start`` and ``queue`` for
R rounds, in the same run on the same database; then the best of each and their ratio.

Rate: M sagas enqueued in a queue with ``RateLimit(R, per=1 s)`` (and no other limit), then
drained by the same W workers. From the ``dequeued_at`` of each saga (the store's stamp of its
start), sorted, it prints: the steady start rate, (M - R) / (t[M-1] - t[R-1]) (the first R
start at once, as a sliding window allows; each later start i may come 1 s after start i - R,
so a limiter that wastes nothing gives exactly R/s); how late the starts after the first
window came against that earliest moment (p50 and p99, ms); and the most starts in any 1-second
window (never more than R).

Without --url, PostgreSQL is a throwaway server started with the durable defaults (fsync and
synchronous_commit on) and SQLite a file in a temporary folder (WAL, synchronous=FULL), as
benchmarks/throughput.py does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg

from benchmarks.throughput import bench, database
from sagakit import Engine, Queue, RateLimit

INPUT: dict[str, Any] = {"steps": 3, "delay": 0.0, "fail_at": -1}
#: how often the drain is looked at (the figure is rounded up to it: ~1% of a 2-second drain)
LOOK = 0.02


@contextlib.asynccontextmanager
async def reader(url: str) -> AsyncIterator[Any]:
    """A connection of its own for counting, beside the engines' (SQLite: WAL readers never
    block the writer)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)
        try:
            yield conn
        finally:
            conn.close()
    else:
        pg = await asyncpg.connect(url, server_settings={"search_path": "sagakit, public"})
        try:
            yield pg
        finally:
            await pg.close()


async def fetch(conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    if isinstance(conn, sqlite3.Connection):
        return [tuple(r) for r in conn.execute(sql.replace("$1", "?"), args).fetchall()]
    return [tuple(r) for r in await conn.fetch(sql, *args)]


async def completed(conn: Any, prefix: str) -> int:
    rows = await fetch(
        conn,
        "SELECT count(*) FROM saga_instances WHERE status = 'COMPLETED' AND saga_id LIKE $1",
        f"{prefix}%",
    )
    return int(rows[0][0])


async def write(url: str, sagas: int, prefix: str, queue: Queue | None) -> float:
    """Start (``queue`` None) or enqueue ``sagas`` sagas from a client engine, 16 at a time;
    the rate it wrote them at."""
    async with Engine(url, worker=False) as client:
        client.register(bench)
        if queue is not None:
            client.register(queue)
        ids = iter(range(sagas))

        async def lane() -> None:
            for i in ids:
                if queue is None:
                    await client.start(bench, INPUT, saga_id=f"{prefix}{i}", run_here=False)
                else:
                    await client.enqueue(queue, bench, INPUT, saga_id=f"{prefix}{i}")

        began = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(16)))
        return sagas / (time.perf_counter() - began)


async def drain(
    url: str, args: argparse.Namespace, sagas: int, prefix: str, *queues: Queue
) -> float:
    """Open the workers, wait for the ``sagas`` sagas to complete; their rate."""
    workers = [
        Engine(
            url,
            max_concurrency=args.concurrency,
            poll_interval=timedelta(seconds=args.poll),
        )
        for _ in range(args.workers)
    ]
    async with reader(url) as conn, contextlib.AsyncExitStack() as stack:
        began = time.perf_counter()
        for worker in workers:
            worker.register(bench, *queues)
            await stack.enter_async_context(worker)
        while await completed(conn, prefix) < sagas:  # noqa: ASYNC110 (another connection's)
            await asyncio.sleep(LOOK)
        return sagas / (time.perf_counter() - began)


async def dispatch(url: str, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Best (write rate, drain rate) of ``start`` and of ``queue`` over the rounds."""
    free = Queue("free")
    best: dict[str, tuple[float, float]] = {}
    # warm up: imports, prepared statements, the first pages of the tables
    await write(url, 200, "warm-", None)
    await drain(url, args, 200, "warm-")
    for r in range(args.rounds):
        for kind, queue in (("start", None), ("queue", free)):
            prefix = f"{kind}{r}-"
            written = await write(url, args.sagas, prefix, queue)
            drained = await drain(url, args, args.sagas, prefix, *([queue] if queue else []))
            print(
                f"  round {r + 1} {kind:<5}: written {written:7.0f}/s, drained {drained:7.0f} "
                "sagas/s"
            )
            known = best.get(kind, (0.0, 0.0))
            best[kind] = (max(known[0], written), max(known[1], drained))
    return best


def most_in_window(starts: list[float], per: float) -> int:
    """The most starts in any window (t - per, t]: what the store's sliding window bounds."""
    most = first = 0
    for last, at in enumerate(starts):
        while starts[first] <= at - per:
            first += 1
        most = max(most, last - first + 1)
    return most


async def rate(url: str, args: argparse.Namespace) -> dict[str, float]:
    per = 1.0
    queue = Queue("rated", rate=RateLimit(args.rate, per=timedelta(seconds=per)))
    await write(url, args.rate_sagas, "rated-", queue)
    await drain(url, args, args.rate_sagas, "rated-", queue)
    async with reader(url) as conn:
        rows = await fetch(
            conn,
            "SELECT dequeued_at FROM saga_instances WHERE queue = $1 ORDER BY dequeued_at",
            "rated",
        )
    starts = [float(r[0]) for r in rows]
    limit = args.rate
    late = sorted(starts[i] - starts[i - limit] - per for i in range(limit, len(starts)))
    return {
        "steady": (len(starts) - limit) / (starts[-1] - starts[limit - 1]),
        "late_p50": late[len(late) // 2] * 1000,
        "late_p99": late[min(len(late) - 1, int(0.99 * len(late)))] * 1000,
        "most": most_in_window(starts, per),
        "seconds": starts[-1] - starts[0],
    }


async def one_store(store: str, args: argparse.Namespace) -> list[str]:
    with database(store, args.url) as url:
        print(
            f"{store}: {args.sagas} sagas of 3 no-op steps, {args.workers} workers x "
            f"{args.concurrency}"
        )
        best = await dispatch(url, args)
        print(f"{store}: rate limit {args.rate}/s over {args.rate_sagas} sagas")
        seen = await rate(url, args)
    start, queued = best["start"], best["queue"]
    return [
        f"| {store} | {start[0]:,.0f} | {queued[0]:,.0f} | {start[1]:,.0f} | {queued[1]:,.0f} "
        f"| {queued[1] / start[1]:.2f} | {seen['steady']:,.1f} ({seen['steady'] / args.rate:.1%}) "
        f"| {seen['late_p50']:.1f} / {seen['late_p99']:.1f} ms | {seen['most']} "
        f"| {seen['seconds']:.2f} s |"
    ]


async def main(args: argparse.Namespace) -> None:
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    if args.url and len(stores) > 1:
        raise SystemExit("--url names one database: give --store sqlite or --store postgres too")
    print(f"sagakit queues: {os.cpu_count()} CPUs, best of {args.rounds} rounds")
    lines = []
    for store in stores:
        lines += await one_store(store, args)
    print()
    print(
        "| store | start: written/s | enqueue: written/s | start: drained sagas/s "
        f"| queue: drained sagas/s | queue/start | RateLimit({args.rate}/s): steady starts/s "
        "| late p50 / p99 | most starts in 1 s | all started in |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--url", default=None, help="an existing database instead of a new one")
    parser.add_argument("--sagas", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--concurrency", type=int, default=100, help="each worker's max_concurrency"
    )
    parser.add_argument("--poll", type=float, default=0.05, help="the workers' poll, seconds")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=int, default=200, help="the rate limit's starts per second")
    parser.add_argument("--rate-sagas", type=int, default=2000)
    asyncio.run(main(parser.parse_args()))
