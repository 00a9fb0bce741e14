"""The signals scenario of ``benchmarks.throughput``: N sagas suspended on a signal, the worker's
memory while they wait, then each signalled and the latency from the signal to the saga going
on (its next step starting), in one process that is both the signaller and the worker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import time
from datetime import timedelta
from typing import Any

from sagakit import Engine, SagaContext, SagaStatus, saga_step, saga_workflow

#: saga id -> perf_counter when its step after the wait started
_RESUMED: dict[str, float] = {}


class _Watch:
    """Wakes the benchmark once every saga it waits for has resumed."""

    def __init__(self) -> None:
        self.waiting: set[str] = set()
        self.done = asyncio.Event()

    def resumed(self, saga_id: str) -> None:
        self.waiting.discard(saga_id)
        if not self.waiting:
            self.done.set()

    async def everyone(self, saga_ids: set[str]) -> None:
        self.waiting = saga_ids - set(_RESUMED)
        self.done.clear()
        if self.waiting:
            await self.done.wait()


_WATCH = _Watch()


@saga_step("Resumed")
async def _resumed(ctx: SagaContext, inp: Any) -> None:
    _RESUMED.setdefault(ctx.saga_id, time.perf_counter())
    _WATCH.resumed(ctx.saga_id)


@saga_workflow("BenchWaiter")
async def waiter(saga: SagaContext, inp: Any) -> Any:
    payload = await saga.wait_for_signal("go")
    await _resumed(saga, payload)
    return payload


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _suspend_all(engine: Engine, prefix: str, count: int, concurrency: int) -> None:
    ids = iter(range(count))

    async def lane() -> None:
        for i in ids:
            await engine.start(waiter, i, saga_id=f"{prefix}{i}")

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    while engine._tasks:  # every run has reached its wait and left memory
        await asyncio.wait(list(engine._tasks.values()))


async def _signal_all(
    engine: Engine, prefix: str, count: int, concurrency: int
) -> tuple[list[float], float]:
    sent: dict[str, float] = {}
    ids = iter(range(count))

    async def lane() -> None:
        for i in ids:
            saga_id = f"{prefix}{i}"
            sent[saga_id] = time.perf_counter()
            await engine.signal(saga_id, "go", i)

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_WATCH.everyone(set(sent)), timeout=120)
    wall = time.perf_counter() - began
    return [_RESUMED[s] - sent[s] for s in sent if s in _RESUMED], wall


async def scenario_signals(url: str, args: argparse.Namespace) -> dict[str, float]:
    """Suspend ``args.signal_sagas`` sagas, measure RSS, signal them all, measure latency."""
    count = args.signal_sagas
    tag = f"sig{os.urandom(3).hex()}-"  # fresh saga ids even on a reused database (--url)
    async with Engine(url, max_concurrency=1000, poll_interval=timedelta(seconds=1)) as engine:
        engine.register(waiter)
        # warm up: imports, statements, caches; then the idle size
        await _suspend_all(engine, tag + "w", 200, args.concurrency)
        await _signal_all(engine, tag + "w", 200, 4)
        gc.collect()
        idle = rss_mb()
        began = time.perf_counter()
        await _suspend_all(engine, tag, count, args.concurrency)
        suspend_wall = time.perf_counter() - began
        gc.collect()
        suspended = rss_mb()
        listed = await engine.list(status=SagaStatus.SUSPENDED, name="BenchWaiter", limit=count)
        latencies, wall = await _signal_all(engine, tag, count, args.signal_concurrency)
    figures = {
        "suspended": float(len(listed)),
        "suspend_per_s": count / suspend_wall,
        "rss_idle": idle,
        "rss_growth": suspended - idle,
        "resumed": float(len(latencies)),
        "resume_per_s": len(latencies) / wall,
        "p50": _pct(latencies, 0.50),
        "p95": _pct(latencies, 0.95),
        "p99": _pct(latencies, 0.99),
    }
    print(
        f"signals       {count} sagas suspended at {figures['suspend_per_s']:.0f}/s "
        f"({figures['suspended']:.0f} SUSPENDED in the store), RSS {idle:.0f} MB idle, "
        f"+{figures['rss_growth']:.1f} MB with them all waiting; {len(latencies)} signalled "
        f"({args.signal_concurrency} senders) and resumed at {figures['resume_per_s']:.0f}/s, "
        f"signal-to-resume p50/p95/p99 {figures['p50']:.1f}/{figures['p95']:.1f}/"
        f"{figures['p99']:.1f} ms"
    )
    return figures
