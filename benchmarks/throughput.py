"""Throughput and latency of durable sagas, beside the raw commit rate of the same database.

    python -m benchmarks.throughput --store sqlite|postgres [--scenario noop|io|compensation|
        recovery|signals|all|pairs] [--sagas N] [--concurrency C] [--steps K] [--fail-rate F]
        [--url URL] [--prefill N] [--pairs N]

For one run it prints: sagas/s and steps/s at C concurrent sagas; p50/p95/p99 of one saga's
latency (start to result) at that load and alone; CPU ms per saga (this process: the engine and
the driver, not the database server); journal writes and commits per saga; the raw durable commit
rate of the same database measured in the same run (a loop of single-row INSERT + COMMIT, with one
client and with C clients) and the ratio of sagas/s to it; and the durability settings in force.

Without --url, PostgreSQL is a throwaway server started with the durable defaults (fsync and
synchronous_commit on) and SQLite a file in a temporary folder (WAL, synchronous=FULL).

Scenarios: ``noop`` (K steps that do nothing: the engine's overhead), ``io`` (each step awaits
``asyncio.sleep(0.005)``, like a call to a service), ``compensation`` (the last step fails for
good and all K are compensated, the failed one too: the steps are hybrid ``saga_step``s, whose
compensation also runs when they fail midway; with K=3 that is 3 steps and 3 compensations, 8
journal writes and 7 commits in a row for a saga alone, against 5 and 4 on the happy path; the
run prints the kinds of entries one saga journaled), ``pairs`` (``--pairs`` rounds of a noop
run then a compensation run, each on a fresh engine: the compensation / happy path ratio of each
round, since that ratio moves from run to run on a shared host), ``recovery`` (N sagas
interrupted by a SIGKILL of their process in their second step, then drained by one fresh
engine), ``signals`` (N sagas suspended on a signal: the worker's RSS while they wait, then the
latency from each signal to its saga going on; see benchmarks/signals.py).

With ``--prefill N`` a load scenario is measured on the store as it is, then again after N
finished sagas were inserted into it, in the same run (claims too, and the sagas run by a
background worker); see benchmarks/growth.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.signals import scenario_signals
from sagakit import (
    Engine,
    SagaCompensatedError,
    SagaContext,
    TerminalError,
    saga_step,
    saga_workflow,
)

STEP_DELAY = {"noop": 0.0, "io": 0.005, "compensation": 0.0}


# -- the workflow under test -------------------------------------------------------------------


async def _undo(data: Any) -> None:
    return None


def _make_step(index: int) -> Any:
    @saga_step(f"Step{index}", compensate=_undo)
    async def step(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        if inp["delay"]:
            await asyncio.sleep(inp["delay"])
        if inp["fail"]:
            raise TerminalError("planned failure")
        return {"i": index}

    return step


STEPS = [_make_step(i) for i in range(10)]


@saga_workflow("Bench")
async def bench(saga: SagaContext, inp: dict[str, Any]) -> int:
    for i in range(inp["steps"]):
        await STEPS[i](saga, {"delay": inp["delay"], "fail": i == inp["fail_at"]})
    return inp["steps"]


# -- measuring ---------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _counters(engine: Engine) -> tuple[int, int]:
    store = engine._store
    return (getattr(store, "writes", 0), getattr(store, "commits", 0))


async def run_load(
    engine: Engine,
    sagas: int,
    concurrency: int,
    steps: int,
    delay: float,
    fail_rate: float,
    tag: str,
    run_here: bool = True,
) -> dict[str, float]:
    """Run ``sagas`` sagas, ``concurrency`` at a time; return the figures. With
    ``run_here=False`` each is only stored, and run by the engine's background worker."""
    latencies: list[float] = []
    queue = iter(range(sagas))
    fail_every = round(1 / fail_rate) if fail_rate > 0 else 0

    async def one(i: int) -> None:
        fail_at = steps - 1 if fail_every and i % fail_every == 0 else -1
        inp = {"steps": steps, "delay": delay, "fail_at": fail_at}
        began = time.perf_counter()
        with contextlib.suppress(SagaCompensatedError):
            handle = await engine.start(bench, inp, saga_id=f"{tag}-{i}", run_here=run_here)
            await handle.result()
        latencies.append(time.perf_counter() - began)

    async def lane() -> None:
        for i in queue:
            await one(i)

    writes0, commits0 = _counters(engine)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    writes1, commits1 = _counters(engine)
    return {
        "sagas_per_s": sagas / wall,
        "steps_per_s": sagas * steps / wall,
        "p50": _pct(latencies, 0.50),
        "p95": _pct(latencies, 0.95),
        "p99": _pct(latencies, 0.99),
        "cpu_ms": cpu / sagas * 1000,
        "writes": (writes1 - writes0) / sagas,
        "commits": (commits1 - commits0) / sagas,
    }


# -- raw commit rate ---------------------------------------------------------------------------


def sqlite_raw_rate(path: str, clients: int, seconds: float = 2.0) -> float:
    """Single-row INSERT + COMMIT per transaction, WAL and synchronous=FULL, ``clients`` threads."""
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode = WAL")
    setup.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, v TEXT)")
    setup.close()
    counts = [0] * clients
    stop = time.perf_counter() + seconds

    def work(n: int) -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA synchronous = FULL")
        while time.perf_counter() < stop:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO raw (v) VALUES (?)", ("x" * 100,))
            conn.execute("COMMIT")
            counts[n] += 1
        conn.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - began)


async def postgres_raw_rate(url: str, clients: int, seconds: float = 2.0) -> float:
    import asyncpg

    setup = await asyncpg.connect(url)
    await setup.execute("CREATE TABLE IF NOT EXISTS raw (id bigserial PRIMARY KEY, v text)")
    await setup.close()
    stop = time.perf_counter() + seconds

    async def work() -> int:
        conn = await asyncpg.connect(url)
        done = 0
        while time.perf_counter() < stop:
            await conn.execute("INSERT INTO raw (v) VALUES ($1)", "x" * 100)  # autocommit
            done += 1
        await conn.close()
        return done

    began = time.perf_counter()
    counts = await asyncio.gather(*(work() for _ in range(clients)))
    return sum(counts) / (time.perf_counter() - began)


async def durability(url: str) -> str:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path)
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        conn.close()
        return f"SQLite journal_mode={mode}, synchronous=FULL (the store's default)"
    import asyncpg

    conn = await asyncpg.connect(url)
    settings = {
        name: await conn.fetchval(f"SHOW {name}")
        for name in ("fsync", "synchronous_commit", "full_page_writes")
    }
    version = await conn.fetchval("SHOW server_version")
    await conn.close()
    return f"PostgreSQL {version}: " + ", ".join(f"{k}={v}" for k, v in settings.items())


# -- scenarios ---------------------------------------------------------------------------------


async def scenario_load(url: str, args: argparse.Namespace, scenario: str) -> None:
    delay = STEP_DELAY[scenario]
    fail_rate = 1.0 if scenario == "compensation" else args.fail_rate
    # the engine's default observers (logging; tracing when a provider is set), or none at all
    observers = [] if args.observers == "none" else None
    async with Engine(url, observers=observers) as engine:
        engine.register(bench)
        # warm up: imports, prepared statements, the first pages of the tables
        await run_load(engine, 200, args.concurrency, args.steps, delay, fail_rate, f"w{scenario}")
        load = await run_load(
            engine, args.sagas, args.concurrency, args.steps, delay, fail_rate, scenario
        )
        alone = await run_load(
            engine, min(500, args.sagas), 1, args.steps, delay, fail_rate, f"a{scenario}"
        )
        kinds = _journal_kinds(await engine._store_or_raise().load_journal(f"{scenario}-0"))
    print(
        f"{scenario:<13} {load['sagas_per_s']:>8.0f} sagas/s {load['steps_per_s']:>8.0f} steps/s"
        f"  p50/p95/p99 {load['p50']:.1f}/{load['p95']:.1f}/{load['p99']:.1f} ms"
        f"  alone p50 {alone['p50']:.2f} ms  CPU {load['cpu_ms']:.2f} ms/saga"
        f"  {load['writes']:.1f} writes, {load['commits']:.2f} commits per saga"
        f"  (alone: {alone['writes']:.1f} writes, {alone['commits']:.2f} commits; journal: {kinds})"
    )
    RESULTS[scenario] = load["sagas_per_s"]


def _journal_kinds(entries: list[Any]) -> str:
    counts: dict[str, int] = {}
    for entry in entries:
        key = f"{entry.kind} {entry.status}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {key}" for key, n in sorted(counts.items()))


async def scenario_pairs(url: str, args: argparse.Namespace) -> None:
    """``--pairs`` rounds of noop then compensation, each on a fresh engine; each round's
    ratio of sagas/s, and CPU, writes and commits per saga of each path."""
    ratios: list[float] = []
    for r in range(args.pairs):
        figures: dict[str, dict[str, float]] = {}
        for scenario in ("noop", "compensation"):
            fail_rate = 1.0 if scenario == "compensation" else 0.0
            async with Engine(url) as engine:
                engine.register(bench)
                await run_load(engine, 200, args.concurrency, args.steps, 0.0, fail_rate, f"pw{r}")
                figures[scenario] = await run_load(
                    engine,
                    args.sagas,
                    args.concurrency,
                    args.steps,
                    0.0,
                    fail_rate,
                    f"p{r}{scenario}",
                )
        noop, comp = figures["noop"], figures["compensation"]
        ratios.append(comp["sagas_per_s"] / noop["sagas_per_s"])
        print(
            f"pair {r + 1}: noop {noop['sagas_per_s']:.0f} sagas/s (CPU {noop['cpu_ms']:.2f} ms, "
            f"{noop['writes']:.1f} writes, {noop['commits']:.2f} commits per saga), compensation "
            f"{comp['sagas_per_s']:.0f} sagas/s (CPU {comp['cpu_ms']:.2f} ms, "
            f"{comp['writes']:.1f} writes, {comp['commits']:.2f} commits per saga): "
            f"{ratios[-1]:.0%}, CPU x{comp['cpu_ms'] / noop['cpu_ms']:.2f}",
            flush=True,
        )
    ordered = sorted(ratios)
    print(
        "compensation path / happy path, each pair: "
        + ", ".join(f"{r:.0%}" for r in ratios)
        + f" (median {ordered[len(ordered) // 2]:.0%}, lowest {ordered[0]:.0%})"
    )


def _recovery_child(url: str, sagas: int, ready: str) -> None:
    """Start ``sagas`` sagas whose second step hangs, say so, and wait to be killed."""

    async def main() -> None:
        gate = asyncio.Event()

        @saga_step("Hang1")
        async def first(ctx: SagaContext, inp: Any) -> int:
            return 1

        @saga_step("Hang2")
        async def second(ctx: SagaContext, inp: Any) -> int:
            if inp == "hang":
                await gate.wait()
            return 2

        @saga_workflow("Interrupted")
        async def interrupted(saga: SagaContext, inp: Any) -> int:
            await first(saga, inp)
            return await second(saga, inp)

        async with Engine(url, lease=timedelta(seconds=1)) as engine:
            engine.register(interrupted)
            for start in range(0, sagas, 500):
                await asyncio.gather(
                    *(
                        engine.start(interrupted, "hang", saga_id=f"r-{i}")
                        for i in range(start, min(sagas, start + 500))
                    )
                )
            while True:  # every saga has journaled its first step: ready to be killed
                sample = range(0, sagas, 97)
                done = [len((await engine.get(f"r-{i}")).steps) for i in sample]
                if all(done):
                    break
                await asyncio.sleep(0.2)
            Path(ready).touch()
            await asyncio.sleep(3600)

    asyncio.run(main())


async def scenario_recovery(url: str, args: argparse.Namespace) -> None:
    sagas = args.recovery_sagas
    ready = tempfile.mktemp(prefix="sagakit-ready-")
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.throughput", "--recovery-child", url, str(sagas), ready]
    )
    try:
        while not os.path.exists(ready):
            if child.poll() is not None:
                raise SystemExit("the recovery child died before it was ready")
            await asyncio.sleep(0.2)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
        with contextlib.suppress(FileNotFoundError):
            os.remove(ready)
    await asyncio.sleep(1.2)  # the dead process's leases expire

    @saga_step("Hang1")
    async def first(ctx: SagaContext, inp: Any) -> int:
        return 1

    @saga_step("Hang2")
    async def second(ctx: SagaContext, inp: Any) -> int:
        return 2

    @saga_workflow("Interrupted")
    async def interrupted(saga: SagaContext, inp: Any) -> int:
        await first(saga, inp)
        return await second(saga, inp)

    rss0 = _rss_mb()
    # a restart: the engine's own worker claims the expired sagas as soon as it starts
    began, cpu0 = time.perf_counter(), time.process_time()
    async with Engine(url, max_concurrency=sagas) as engine:
        engine.register(interrupted)
        while True:
            listed = await engine.list(name="Interrupted", limit=sagas)
            if all(s.status.is_terminal for s in listed):
                break
            await asyncio.sleep(0.1)
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu0
        statuses = sorted({str(s.status) for s in listed})
    print(
        f"{'recovery':<13} {len(listed)} interrupted sagas drained by one restarted engine in "
        f"{wall:.1f} s ({len(listed) / wall:.0f} sagas/s, CPU {cpu / len(listed) * 1000:.2f} "
        f"ms/saga, RSS +{_rss_mb() - rss0:.0f} MB); final statuses: {', '.join(statuses)}"
    )


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


RESULTS: dict[str, float] = {}


@contextlib.contextmanager
def database(store: str, url: str | None) -> Iterator[str]:
    if url:
        yield url
    elif store == "postgres":
        from tests.pgserver import PgServer

        with PgServer(durable=True) as pg:
            yield pg.url
    else:
        with tempfile.TemporaryDirectory(prefix="sagakit-bench-") as folder:
            yield f"sqlite:///{folder}/bench.db"


async def main(args: argparse.Namespace) -> None:
    with database(args.store, args.url) as url:
        print(
            f"sagakit throughput: store={args.store}, {args.sagas} sagas of {args.steps} steps, "
            f"{args.concurrency} concurrent, {os.cpu_count()} CPUs"
        )
        if url.startswith("sqlite"):
            raw_path = str(Path(url.removeprefix("sqlite:///")).with_name("raw.db"))
            raw1 = await asyncio.to_thread(sqlite_raw_rate, raw_path, 1)
            rawc = await asyncio.to_thread(sqlite_raw_rate, raw_path, args.concurrency)
        else:
            raw1 = await postgres_raw_rate(url, 1)
            rawc = await postgres_raw_rate(url, args.concurrency)
        print(
            f"raw durable commits: {raw1:.0f}/s with 1 client, {rawc:.0f}/s with "
            f"{args.concurrency} clients"
        )
        scenarios = (
            ["noop", "io", "compensation", "recovery", "signals"]
            if args.scenario == "all"
            else [args.scenario]
        )
        for scenario in scenarios:
            if scenario == "recovery":
                await scenario_recovery(url, args)
            elif scenario == "pairs":
                await scenario_pairs(url, args)
            elif scenario == "signals":
                await scenario_signals(url, args)
            elif args.prefill:
                from benchmarks.growth import scenario_growth

                await scenario_growth(url, args, scenario)
            else:
                await scenario_load(url, args, scenario)
        print("durability in force:", await durability(url))
        for scenario, rate in RESULTS.items():
            print(
                f"ratio {scenario}: {rate / raw1:.2f}x the 1-client raw commit rate, "
                f"{rate / rawc:.2f}x the {args.concurrency}-client rate"
            )
        if "noop" in RESULTS and "compensation" in RESULTS:
            print(
                f"compensation path / happy path: {RESULTS['compensation'] / RESULTS['noop']:.0%}"
            )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--recovery-child":
        _recovery_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--url", default=None, help="an existing database instead of a new one")
    parser.add_argument(
        "--scenario",
        choices=["noop", "io", "compensation", "recovery", "signals", "all", "pairs"],
        default="noop",
    )
    parser.add_argument("--sagas", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--pairs", type=int, default=5, help="rounds of --scenario pairs")
    parser.add_argument("--recovery-sagas", type=int, default=10000)
    parser.add_argument("--signal-sagas", type=int, default=10000)
    parser.add_argument("--signal-concurrency", type=int, default=4)
    parser.add_argument(
        "--prefill",
        type=int,
        default=0,
        help="noop/io/compensation: measure on the store as it is, then again after inserting "
        "this many finished sagas (a month of them) in the same run; print the ratios",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="with --prefill: measurements of each store"
    )
    parser.add_argument(
        "--observers",
        choices=["default", "none"],
        default="default",
        help="the engine's default observers (logging, tracing if configured), or none: "
        "compare the two to see what observability costs",
    )
    asyncio.run(main(parser.parse_args()))
