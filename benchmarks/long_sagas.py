"""Long sagas: what a saga pays for its history, with and without ``saga.continue_as_new``.

    python -m benchmarks.long_sagas --store sqlite|postgres|memory [--steps 10000]
        [--signals 2000] [--every 100] [--url URL]

Four measurements, in one run on one database:

* **per-step cost**: one saga of ``--steps`` steps against sagas of 10 steps run one after
  another (the same total of steps), each alone, so that both are bound by the same commits;
  the ratio is the price of a long journal per step (the issue's goal: at most 1.5x);
* **resume**: a saga suspended on a signal after ``--steps`` steps is woken by a fresh engine
  (claim, read the journal, replay it, go on), against a saga suspended after 10 steps;
* **memory**: what a running saga holds (tracemalloc, this process) once it has ``--steps``
  entries, against one with 10;
* **a saga that loops on signals**: ``--signals`` signals, each waited for (the saga is suspended
  between them, so each one wakes it and it replays its journal) and recorded by a step; once
  without ``continue_as_new`` (the replay grows with every signal) and once continuing as new
  every ``--every`` signals (each replay is at most that long). It prints the mean wake-up
  latency of the first and the last 10% of the signals.

Without --url, PostgreSQL is a throwaway server with the durable defaults and SQLite a file in a
temporary folder (WAL, synchronous=FULL), as in benchmarks/throughput.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
import tracemalloc
from typing import Any

from benchmarks.throughput import database
from sagakit import Engine, SagaContext, saga_step, saga_workflow

SHORT = 10


@saga_step("Record")
async def record(ctx: SagaContext, inp: int) -> int:
    return inp


HOLD: dict[str, asyncio.Event] = {}


@saga_step("Hold")
async def hold(ctx: SagaContext, inp: str) -> None:
    # keeps the saga running (its journal in memory) until the driver lets it go
    HOLD[inp].set()
    await HOLD[inp + ":release"].wait()


@saga_workflow("LongSteps")
async def long_steps(saga: SagaContext, inp: dict[str, Any]) -> int:
    for i in range(inp["steps"]):
        await record(saga, i)
    if inp.get("hold"):
        await hold(saga, inp["hold"])
    if inp.get("wait"):
        await saga.wait_for_signal("go")
    return int(inp["steps"])


SEEN: dict[str, asyncio.Queue[int]] = {}


@saga_step("Tick")
async def tick(ctx: SagaContext, inp: int) -> int:
    queue = SEEN.get(ctx.saga_id)
    if queue is not None:
        queue.put_nowait(inp)
    return inp


@saga_workflow("Ticker")
async def ticker(saga: SagaContext, inp: dict[str, Any]) -> int:
    done = int(inp["done"])
    while done < inp["total"]:
        await saga.wait_for_signal("tick")
        done = await tick(saga, done + 1)
        if inp["every"] and done % inp["every"] == 0 and done < inp["total"]:
            saga.continue_as_new({**inp, "done": done})
    return done


WORKFLOWS = (long_steps, ticker)


def _engine(url: str) -> Engine:
    engine = Engine(url)
    for workflow in WORKFLOWS:
        engine.register(workflow)
    return engine


async def per_step_cost(url: str, steps: int) -> float:
    async with _engine(url) as engine:
        await engine.run(long_steps, {"steps": SHORT})  # warm up
        began = time.perf_counter()
        for _ in range(steps // SHORT):
            await engine.run(long_steps, {"steps": SHORT})
        short = (time.perf_counter() - began) / steps
        began = time.perf_counter()
        await engine.run(long_steps, {"steps": steps})
        long = (time.perf_counter() - began) / steps
    print(
        f"per-step cost: {SHORT}-step sagas {short * 1e6:.0f} us/step, one {steps}-step saga "
        f"{long * 1e6:.0f} us/step: ratio {long / short:.2f}x"
    )
    return long / short


async def resume_time(url: str, steps: int) -> None:
    times = {}
    for n in (SHORT, steps):
        saga_id = f"resume-{n}-{time.monotonic_ns()}"
        async with _engine(url) as engine:
            await engine.start(long_steps, {"steps": n, "wait": True}, saga_id=saga_id)
            for _ in range(60_000):  # at most ten minutes
                if (await engine.get(saga_id)).status == "SUSPENDED":
                    break
                await asyncio.sleep(0.01)
        async with _engine(url) as engine:
            began = time.perf_counter()
            await engine.signal(saga_id, "go")
            await engine.handle(saga_id).result(timeout=600)
            times[n] = time.perf_counter() - began
    print(
        f"resume after a signal: {SHORT}-entry journal {times[SHORT] * 1000:.1f} ms, "
        f"{steps}-entry journal {times[steps] * 1000:.1f} ms "
        f"({(times[steps] - times[SHORT]) / steps * 1e6:.1f} us per entry read and replayed)"
    )


async def held_memory(url: str, steps: int) -> None:
    held = {}
    async with _engine(url) as engine:
        for n in (SHORT, steps):
            key = f"hold-{n}"
            HOLD[key], HOLD[key + ":release"] = asyncio.Event(), asyncio.Event()
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            handle = await engine.start(long_steps, {"steps": n, "hold": key})
            await HOLD[key].wait()
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            held[n] = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
            HOLD[key + ":release"].set()
            await handle.result(timeout=600)
    print(
        f"memory held by a running saga: {SHORT} entries {held[SHORT] / 1024:.0f} KiB, "
        f"{steps} entries {held[steps] / 1024:.0f} KiB "
        f"({(held[steps] - held[SHORT]) / steps:.0f} bytes per entry)"
    )


async def signal_loop(url: str, signals: int, every: int) -> tuple[float, float]:
    async with _engine(url) as engine:
        saga_id = f"ticker-{every}-{time.monotonic_ns()}"
        SEEN[saga_id] = asyncio.Queue()
        handle = await engine.start(
            ticker, {"done": 0, "total": signals, "every": every}, saga_id=saga_id
        )
        latencies = []
        began_all = time.perf_counter()
        for i in range(1, signals + 1):
            began = time.perf_counter()
            await engine.signal(saga_id, "tick", i)
            while (await SEEN[saga_id].get()) != i:
                pass
            latencies.append(time.perf_counter() - began)
        assert await handle.result(timeout=600) == signals
        wall = time.perf_counter() - began_all
    tenth = max(1, signals // 10)
    first = sum(latencies[:tenth]) / tenth
    last = sum(latencies[-tenth:]) / tenth
    label = f"continue_as_new every {every}" if every else "no continue_as_new"
    print(
        f"{signals} signals, {label}: {signals / wall:.0f} signals/s; wake-up latency first 10% "
        f"{first * 1000:.2f} ms, last 10% {last * 1000:.2f} ms ({last / first:.1f}x)"
    )
    return first, last


async def main(args: argparse.Namespace) -> None:
    with database(args.store if args.store != "memory" else "sqlite", args.url) as url:
        if args.store == "memory":
            url = "memory://"
        print(
            f"sagakit long sagas: store={args.store}, {args.steps} steps, {args.signals} "
            f"signals, {os.cpu_count()} CPUs"
        )
        await per_step_cost(url, args.steps)
        if args.store != "memory":
            await resume_time(url, args.steps)
        await held_memory(url, args.steps)
        await signal_loop(url, args.signals, 0)
        await signal_loop(url, args.signals, args.every)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "memory"], default="sqlite")
    parser.add_argument("--url", default=None, help="an existing database instead of a new one")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--signals", type=int, default=2_000)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    if args.steps % SHORT:
        sys.exit(f"--steps must be a multiple of {SHORT}")
    asyncio.run(main(args))
