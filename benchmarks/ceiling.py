"""What one saga costs a PostgreSQL server: the figures behind docs/scaling.md.

    python -m benchmarks.ceiling [--sagas 3000] [--concurrency 16 64] [--steps 3] [--url URL]

For each concurrency it runs ``--sagas`` sagas of ``--steps`` no-op steps in this process on a
throwaway PostgreSQL (durable defaults: fsync and synchronous_commit on) and prints, per saga:
the server's CPU (every PostgreSQL process, from /proc: the backends, the WAL writer, the
checkpointer), this process's CPU (the engine), the transactions the server committed
(``pg_stat_database.xact_commit``) and the WAL bytes written (``pg_current_wal_lsn``). Beside
them, the raw commit rate of the same server with 1 and with 16 clients, measured in the same run.

From these a ceiling for one database follows (docs/scaling.md works it through):
sagas/s <= min(server cores / server CPU per saga, commit rate x sagas per commit,
WAL bandwidth / WAL bytes per saga), while the engine's CPU is spread over worker processes.
With --url the server's CPU is read only if it runs on this machine and this user can read
/proc of its processes (its data folder is found with ``SHOW data_directory``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import asyncpg

from benchmarks.throughput import bench, database, postgres_raw_rate, run_load
from sagakit import Engine

TICKS = os.sysconf("SC_CLK_TCK")


def _server_cpu_seconds(data_directory: str) -> float | None:
    """CPU seconds used so far by the postmaster, its live children and its reaped children."""
    try:
        postmaster = int(Path(data_directory, "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster:
            # utime, stime, and the children it reaped (backends that ended)
            total += sum(int(v) for v in fields[11:15])
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


async def _server_counters(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        # cumulative statistics reach the shared view only when a backend flushes them
        await asyncio.sleep(1.5)
        commits = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        return int(commits), int(wal)
    finally:
        await conn.close()


async def measure(url: str, data_directory: str, sagas: int, concurrency: int, steps: int) -> None:
    engine = Engine(url, max_concurrency=max(100, concurrency))
    engine.register(bench)
    async with engine:
        await run_load(engine, 200, concurrency, steps, 0.0, 0.0, f"warm-{concurrency}")
        commits0, wal0 = await _server_counters(url)
        server0 = _server_cpu_seconds(data_directory)
        figures = await run_load(engine, sagas, concurrency, steps, 0.0, 0.0, f"c{concurrency}")
        server1 = _server_cpu_seconds(data_directory)
        commits1, wal1 = await _server_counters(url)
    # the counters include the few transactions of the measurement itself and of the worker's
    # background loop (claims, heartbeats): they are part of what sagas cost a database
    commits = (commits1 - commits0) / sagas
    server = (
        f"{(server1 - server0) / sagas * 1000:.3f} ms"
        if server0 is not None and server1 is not None
        else "not readable"
    )
    print(
        f"concurrency {concurrency}: {figures['sagas_per_s']:.0f} sagas/s; per saga: server CPU "
        f"{server}, engine CPU {figures['cpu_ms']:.3f} ms, {commits:.2f} server commits "
        f"({1 / commits if commits else 0:.1f} sagas per commit), "
        f"{(wal1 - wal0) / sagas / 1024:.1f} KiB of WAL"
    )


async def main(args: argparse.Namespace) -> None:
    with database("postgres", args.url) as url:
        conn = await asyncpg.connect(url)
        data_directory = str(await conn.fetchval("SHOW data_directory"))
        version = await conn.fetchval("SHOW server_version")
        await conn.close()
        raw1 = await postgres_raw_rate(url, 1)
        raw16 = await postgres_raw_rate(url, 16)
        print(
            f"sagakit ceiling: PostgreSQL {version}, {args.sagas} sagas of {args.steps} steps, "
            f"{os.cpu_count()} CPUs; raw durable commits {raw1:.0f}/s with 1 client, "
            f"{raw16:.0f}/s with 16"
        )
        began = time.perf_counter()
        for concurrency in args.concurrency:
            await measure(url, data_directory, args.sagas, concurrency, args.steps)
        print(f"measured in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="an existing PostgreSQL instead of a new one")
    parser.add_argument("--sagas", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    asyncio.run(main(parser.parse_args()))
