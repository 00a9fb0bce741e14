"""Workflows for the wait tests that use real processes (tests/test_waits_restart.py).

Not a test module: the tests run it as a subprocess, and import its workflows to finish in the
test process what the child started::

    python -m tests.sleeper_app sleep  DB_URL SAGA_ID LEDGER SECONDS
    python -m tests.sleeper_app memory DB_URL --count N --warmup W

``sleep`` starts one ``Sleeper`` saga (step First, a durable sleep of SECONDS, step Second) and
then idles until it is killed. Each step appends one JSON line to LEDGER (``O_APPEND``, one
``write``, fsynced, so it survives a SIGKILL): ``{"ev": "First"|"Second", "saga", "pid", "at"}``.

``memory`` measures the resident memory of a worker holding many suspended sagas. It prints one
JSON line per phase on stdout:

* ``{"phase": "idle", "rss_idle_mb", ...}`` after a warm-up: W ``SignalWaiter`` sagas started
  (at most W at once), suspended, signalled by this process and completed;
* ``{"phase": "suspended", "rss_suspended_mb", "start_seconds", ...}`` once N more
  ``SignalWaiter`` sagas (ids ``mem-0`` ... ``mem-{N-1}``) are started, in batches of W, and
  every run of them has ended in its wait (nothing of them is left in this engine);

then keeps running them (its worker takes the sagas that the parent signals) until a line
arrives on stdin (or stdin closes), and prints ``{"phase": "end", "rss_end_mb", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
import time
from datetime import timedelta
from typing import Any

from sagakit import Engine, SagaContext, SagaStatus, saga_step, saga_workflow

POLL = timedelta(milliseconds=50)
LEASE = timedelta(seconds=5)


def record(ledger: str, **event: Any) -> None:
    """Append one event to the ledger, durably, in one write."""
    event["pid"] = os.getpid()
    event["at"] = time.time()
    line = (json.dumps(event, sort_keys=True) + "\n").encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


@saga_step("First")
async def first(ctx: SagaContext, inp: dict[str, Any]) -> float:
    record(inp["ledger"], ev="First", saga=ctx.saga_id)
    return time.time()


@saga_step("Second")
async def second(ctx: SagaContext, inp: dict[str, Any]) -> float:
    record(inp["ledger"], ev="Second", saga=ctx.saga_id)
    return time.time()


@saga_workflow("Sleeper")
async def sleeper(saga: SagaContext, inp: dict[str, Any]) -> dict[str, float]:
    """Step First, a durable sleep of ``inp["seconds"]``, step Second; returns when each step
    ran (epoch seconds)."""
    at_first = await first(saga, inp)
    await saga.sleep(inp["seconds"])
    at_second = await second(saga, inp)
    return {"first": at_first, "second": at_second}


@saga_workflow("SignalWaiter")
async def signal_waiter(saga: SagaContext, inp: Any) -> Any:
    """Waits for the signal "go" and returns its payload."""
    return await saga.wait_for_signal("go")


WORKFLOWS = [sleeper, signal_waiter]


def rss_mb() -> float:
    """This process's resident set size (VmRSS), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def run_sleep(args: argparse.Namespace) -> int:
    engine = Engine(args.db, lease=LEASE, poll_interval=POLL)
    engine.register(*WORKFLOWS)
    async with engine:
        inp = {"ledger": args.ledger, "seconds": args.seconds}
        await engine.start(sleeper, inp, saga_id=args.saga)
        emit(phase="started", saga=args.saga)
        await asyncio.Event().wait()  # idle until killed
    return 0  # pragma: no cover - the test kills this process


async def _until(predicate: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _start_batches(engine: Engine, ids: list[str], batch: int) -> None:
    """Start the sagas, at most ``batch`` running at once; return when every run has ended (in
    its wait: a run of SignalWaiter ends only by suspending)."""
    for offset in range(0, len(ids), batch):
        await asyncio.gather(
            *(engine.start(signal_waiter, None, saga_id=s) for s in ids[offset : offset + batch])
        )
        await _until(lambda: not engine._tasks, "the started sagas to suspend")


async def _count(engine: Engine, status: SagaStatus, prefix: str) -> int:
    snaps = await engine.list(status=status, limit=1_000_000)
    return sum(1 for s in snaps if s.saga_id.startswith(prefix))


async def run_memory(args: argparse.Namespace) -> int:
    engine = Engine(args.db, lease=LEASE, poll_interval=POLL, max_concurrency=args.warmup)
    engine.register(*WORKFLOWS)
    async with engine:
        # warm up: the same work at the same concurrency, signalled and completed here
        warm = [f"warm-{i}" for i in range(args.warmup)]
        await _start_batches(engine, warm, args.warmup)
        for saga_id in warm:
            await engine.signal(saga_id, "go", {"warm": saga_id})
        for saga_id in warm:
            assert await engine.handle(saga_id).result(timeout=60) == {"warm": saga_id}
        await _until(lambda: not engine._tasks, "the warm-up sagas to end")
        gc.collect()
        emit(phase="idle", rss_idle_mb=rss_mb())

        began = time.monotonic()
        ids = [f"mem-{i}" for i in range(args.count)]
        await _start_batches(engine, ids, args.warmup)
        start_seconds = time.monotonic() - began
        gc.collect()
        rss_suspended = rss_mb()
        # measured before counting: the count reads every saga into this process
        suspended = await _count(engine, SagaStatus.SUSPENDED, "mem-")
        emit(
            phase="suspended",
            rss_suspended_mb=rss_suspended,
            start_seconds=start_seconds,
            suspended=suspended,
            tasks=len(engine._tasks),
        )

        # the parent signals them; this worker runs them; the parent says when it is done
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        gc.collect()
        emit(phase="end", rss_end_mb=rss_mb(), tasks=len(engine._tasks))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sleeper_app")
    sub = parser.add_subparsers(dest="mode", required=True)
    sleep = sub.add_parser("sleep")
    sleep.add_argument("db")
    sleep.add_argument("saga")
    sleep.add_argument("ledger")
    sleep.add_argument("seconds", type=float)
    memory = sub.add_parser("memory")
    memory.add_argument("db")
    memory.add_argument("--count", type=int, default=10_000)
    memory.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    if args.mode == "sleep":
        return asyncio.run(run_sleep(args))
    return asyncio.run(run_memory(args))


if __name__ == "__main__":
    sys.exit(main())
