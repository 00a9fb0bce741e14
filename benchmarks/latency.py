"""The lone saga: how close one saga alone comes to the floor its durable commits set.

    python -m benchmarks.latency [--store sqlite|postgres|both] [--sagas N] [--rounds R]
        [--commits N] [--steps K]

One saga at a time (K no-op steps, 3 by default), N sagas per round; p50/p90 of one saga's
latency (``start`` to its result, in this process). In the same run and on the same database,
the raw commit latency: a loop of one-row INSERT + COMMIT on a connection set up exactly like
the store's writer (SQLite: WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE``; PostgreSQL: the
store's session settings, an autocommitted statement). Rounds alternate raw and saga so that
both see the same machine.

The floor is (commits a lone saga must make) x (raw commit p50). Under the write path's rules
(../shared/DESIGN.md, "The write path") a saga of K steps must make K + 1 commits in a row:

* its creation is durable before its first step runs (1);
* each step's end is durable before the next step starts (K - 1);
* the last step's entry and the COMPLETED status may share one commit (1): nothing leaves the
  run between them, and the caller hears of the result only after that commit.

So 4 commits for 3 steps. The run prints the floor, the figure (saga p50) and their ratio per
round, and their spread over the rounds. Each store starts its own database: a SQLite file in a
temporary folder, a throwaway PostgreSQL server with the durable defaults (fsync and
synchronous_commit on).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.throughput import database
from sagakit import Engine, SagaContext, saga_step, saga_workflow


def commits_per_lone_saga(steps: int) -> int:
    """Commits in a row a lone saga of ``steps`` steps must make (see the module docstring)."""
    return steps + 1


# -- the workflow under test -------------------------------------------------------------------


def _make_step(index: int) -> Any:
    @saga_step(f"LoneStep{index}")
    async def step(ctx: SagaContext, inp: int) -> int:
        return index

    return step


STEPS = [_make_step(i) for i in range(10)]


@saga_workflow("Lone")
async def lone(saga: SagaContext, steps: int) -> int:
    for i in range(steps):
        await STEPS[i](saga, i)
    return steps


# -- measuring ---------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def saga_latencies(engine: Engine, sagas: int, steps: int, tag: str) -> list[float]:
    """Seconds from ``start`` to the result of each of ``sagas`` sagas run one after another."""
    out: list[float] = []
    for i in range(sagas):
        began = time.perf_counter()
        handle = await engine.start(lone, steps, saga_id=f"{tag}-{i}")
        await handle.result()
        out.append(time.perf_counter() - began)
    return out


def sqlite_commit_latencies(path: str, commits: int) -> list[float]:
    """One-row INSERT + COMMIT, ``commits`` times, on a connection set up like the store's
    writer (sagakit/stores/sqlite/store.py ``_connect``)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA cache_size = -65536")
    conn.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, v TEXT)")
    out: list[float] = []
    try:
        for _ in range(commits):
            began = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO raw (v) VALUES (?)", ("x" * 100,))
            conn.execute("COMMIT")
            out.append(time.perf_counter() - began)
    finally:
        conn.close()
    return out


async def postgres_commit_latencies(engine: Engine, commits: int) -> list[float]:
    """One-row INSERT, autocommitted, ``commits`` times, on a connection the store itself
    opens (its session settings: search_path, plan_cache_mode, enable_seqscan, timeouts)."""
    from sagakit.stores.postgres.store import PostgresStore

    store = engine._store
    assert isinstance(store, PostgresStore)
    conn = await store._connect()
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS raw (id bigserial PRIMARY KEY, v text)")
        out: list[float] = []
        for _ in range(commits):
            began = time.perf_counter()
            await conn.execute("INSERT INTO raw (v) VALUES ($1)", "x" * 100)
            out.append(time.perf_counter() - began)
        return out
    finally:
        await conn.close()


async def postgres_statement_latencies(engine: Engine, sagas: int, steps: int) -> list[float]:
    """The store's own statements for a lone saga, with no engine around them: one
    ``create_sagas`` and ``steps`` ``append_one`` (a step's fenced entry), back to back on a
    connection the store opens, per saga. Their sum is what the statements alone cost against
    the floor: the part of the gap no engine work can remove."""
    from sagakit.stores.postgres.sql import Q
    from sagakit.stores.postgres.store import PostgresStore

    store = engine._store
    assert isinstance(store, PostgresStore)
    conn = await store._connect()
    out: list[float] = []
    try:
        for i in range(sagas):
            saga_id = f"bare-{time.monotonic_ns()}-{i}"
            began = time.perf_counter()
            await conn.fetch(
                Q["create_sagas"], [saga_id], ["Bare"], ["0"], ["bench"], [30.0], [None], [""]
            )
            for seq in range(steps):
                now = time.time()
                await conn.fetch(
                    Q["append_one"], saga_id, 1, None, None, None, None, None, False, None,
                    seq, "step", f"LoneStep{seq}", "completed", 1, str(seq), None, None, now, now,
                )  # fmt: skip
            out.append(time.perf_counter() - began)
        return out
    finally:
        await conn.close()


async def measure(store: str, args: argparse.Namespace) -> dict[str, Any]:
    commits = commits_per_lone_saga(args.steps)
    rows: list[dict[str, float]] = []
    with database(store, None) as url:
        async with Engine(url) as engine:
            engine.register(lone)
            # warm up: imports, prepared statements, the first pages of the tables
            await saga_latencies(engine, 100, args.steps, "warm")
            for r in range(args.rounds):
                if store == "sqlite":
                    raw_path = str(Path(url.removeprefix("sqlite:///")).with_name("raw.db"))
                    raw = sqlite_commit_latencies(raw_path, args.commits)
                else:
                    raw = await postgres_commit_latencies(engine, args.commits)
                lat = await saga_latencies(engine, args.sagas, args.steps, f"r{r}")
                raw_p50 = _pct(raw, 0.5)
                row = {
                    "raw_p50": raw_p50,
                    "floor": commits * raw_p50,
                    "p50": _pct(lat, 0.5),
                    "p90": _pct(lat, 0.9),
                }
                row["ratio"] = row["p50"] / row["floor"]
                bare = ""
                if store == "postgres":
                    statements = await postgres_statement_latencies(engine, args.sagas, args.steps)
                    row["bare"] = _pct(statements, 0.5) / row["floor"]
                    bare = f"; the store's statements alone {row['bare']:.2f}x the floor"
                rows.append(row)
                print(
                    f"{store:<8} round {r + 1}: raw commit p50 {raw_p50:.3f} ms, floor "
                    f"{commits} x {raw_p50:.3f} = {row['floor']:.2f} ms; lone saga p50/p90 "
                    f"{row['p50']:.2f}/{row['p90']:.2f} ms; ratio {row['ratio']:.2f}{bare}",
                    flush=True,
                )
    ratios = [r["ratio"] for r in rows]
    return {
        "store": store,
        "floor": statistics.median(r["floor"] for r in rows),
        "p50": statistics.median(r["p50"] for r in rows),
        "p90": statistics.median(r["p90"] for r in rows),
        "ratio": statistics.median(ratios),
        "low": min(ratios),
        "high": max(ratios),
        "bare": statistics.median(r["bare"] for r in rows) if store == "postgres" else None,
    }


async def main(args: argparse.Namespace) -> None:
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    commits = commits_per_lone_saga(args.steps)
    print(
        f"sagakit lone saga: {args.steps} no-op steps, {args.sagas} sagas one at a time per round, "
        f"{args.rounds} rounds, {args.commits} raw commits per round, {os.cpu_count()} CPUs; "
        f"floor = {commits} commits x raw commit p50"
    )
    results = [await measure(store, args) for store in stores]
    for res in results:
        print(
            f"{res['store']:<8} median of {args.rounds}: floor {res['floor']:.2f} ms, lone saga "
            f"p50 {res['p50']:.2f} ms (p90 {res['p90']:.2f}), ratio {res['ratio']:.2f} "
            f"(rounds {res['low']:.2f}-{res['high']:.2f})"
            + (
                f"; the store's statements alone: {res['bare']:.2f}x the floor"
                if res["bare"] is not None
                else ""
            )
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--sagas", type=int, default=300, help="sagas per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commits", type=int, default=500, help="raw commits per round")
    parser.add_argument("--steps", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
