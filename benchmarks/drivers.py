"""Which PostgreSQL driver for the store: asyncpg or psycopg 3, measured on our write path.

    python -m benchmarks.drivers [--url URL] [--n 3000]

Without --url it starts a throwaway server (fsync and synchronous_commit on, the defaults).
For each driver it measures, on one connection: single-row INSERT + COMMIT transactions (the
floor of a durable write), batched transactions of 50 rows through executemany (our group
commit), and single-row SELECTs by key (journal loads); it prints operations per second and the
client CPU time per operation, which is what bounds a Python engine on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

SETUP = "DROP TABLE IF EXISTS bench_drv; CREATE TABLE bench_drv (k text PRIMARY KEY, v text)"


async def _measure(label: str, n: int, fn: Callable[[int], Awaitable[Any]]) -> tuple[float, float]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(n):
        await fn(i)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"  {label:<34} {n / wall:>9.0f} ops/s   {cpu / n * 1e6:>7.1f} µs CPU/op")
    return n / wall, cpu / n


async def bench_asyncpg(url: str, n: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    await conn.execute(SETUP)
    print("asyncpg", asyncpg.__version__)

    async def single(i: int) -> None:
        async with conn.transaction():
            await conn.execute("INSERT INTO bench_drv VALUES ($1, $2)", f"a{i}", "x" * 100)

    async def batch(i: int) -> None:
        rows = [(f"b{i}:{j}", "x" * 100) for j in range(50)]
        async with conn.transaction():
            await conn.executemany("INSERT INTO bench_drv VALUES ($1, $2)", rows)

    async def select(i: int) -> None:
        await conn.fetchrow("SELECT k, v FROM bench_drv WHERE k = $1", f"a{i}")

    await _measure("single-row INSERT + COMMIT", n, single)
    await _measure("50-row executemany + COMMIT", n // 10, batch)
    await _measure("SELECT by key", n, select)
    await conn.close()


async def bench_psycopg(url: str, n: int) -> None:
    import psycopg

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=0)
    await conn.execute(SETUP.split(";")[0])
    await conn.execute(SETUP.split(";")[1])
    print("psycopg", psycopg.__version__)

    async def single(i: int) -> None:
        async with conn.transaction():
            await conn.execute("INSERT INTO bench_drv VALUES (%s, %s)", (f"a{i}", "x" * 100))

    async def batch(i: int) -> None:
        rows = [(f"b{i}:{j}", "x" * 100) for j in range(50)]
        async with conn.transaction(), conn.cursor() as cur:
            await cur.executemany("INSERT INTO bench_drv VALUES (%s, %s)", rows)

    async def select(i: int) -> None:
        cur = await conn.execute("SELECT k, v FROM bench_drv WHERE k = %s", (f"a{i}",))
        await cur.fetchone()

    await _measure("single-row INSERT + COMMIT", n, single)
    await _measure("50-row executemany + COMMIT", n // 10, batch)
    await _measure("SELECT by key", n, select)
    await conn.close()


async def main(url: str, n: int) -> None:
    await bench_asyncpg(url, n)
    await bench_psycopg(url, n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None)
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    if args.url:
        asyncio.run(main(args.url, args.n))
    else:
        from tests.pgserver import PgServer

        with PgServer(durable=True) as pg:
            print("throwaway PostgreSQL, fsync=on, synchronous_commit=on")
            asyncio.run(main(pg.url, args.n))
