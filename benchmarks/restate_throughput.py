"""Throughput of the same saga on a Restate server beside the embedded engine on SQLite.

    python -m benchmarks.restate_throughput [--sagas N] [--concurrency C] [--steps K]

The saga is benchmarks.throughput's ``Bench`` (K steps that do nothing, each with a
compensation). On Restate it is served by ``sagakit.restate.app`` with hypercorn in a child
process (one event loop, like one embedded engine), the Restate server is npm's
``restate-server`` on loopback with its data in a temporary folder (tests/restate_server.py),
and each saga is one ingress request (``RestateSagaClient.run``). The embedded engine runs the
same sagas on a SQLite file (WAL, synchronous=FULL). Both print sagas/s at C concurrent sagas
and the latency of one saga at that load and alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.throughput import bench, run_load
from sagakit import Engine, SagaCompensatedError

REPO = Path(__file__).resolve().parent.parent


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def restate_load(
    ingress: str, sagas: int, concurrency: int, steps: int, tag: str
) -> dict[str, float]:
    from sagakit.restate import RestateSagaClient

    latencies: list[float] = []
    queue = iter(range(sagas))
    inp = {"steps": steps, "delay": 0.0, "fail_at": -1}
    async with RestateSagaClient(ingress) as client:

        async def lane() -> None:
            for i in queue:
                began = time.perf_counter()
                with contextlib.suppress(SagaCompensatedError):
                    await client.run(bench, inp, f"{tag}-{i}")
                latencies.append(time.perf_counter() - began)

        wall0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        wall = time.perf_counter() - wall0
    return {
        "sagas_per_s": sagas / wall,
        "p50": _pct(latencies, 0.50),
        "p95": _pct(latencies, 0.95),
        "p99": _pct(latencies, 0.99),
    }


def _line(label: str, load: dict[str, float], alone: dict[str, float]) -> str:
    return (
        f"{label:<22} {load['sagas_per_s']:>7.0f} sagas/s  p50/p95/p99 "
        f"{load['p50']:.1f}/{load['p95']:.1f}/{load['p99']:.1f} ms  alone p50 {alone['p50']:.2f} ms"
    )


def _wait_up(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def on_restate(args: argparse.Namespace) -> str:
    from tests.restate_server import RestateServer, free_port

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "benchmarks.restate_throughput", "--serve", str(port)]
    service = subprocess.Popen(command, cwd=REPO, env=env)
    try:
        with RestateServer() as server:
            _wait_up(port)
            server.register(f"http://127.0.0.1:{port}")
            url = server.ingress_url
            await restate_load(url, 200, args.concurrency, args.steps, "warm")
            load = await restate_load(url, args.sagas, args.concurrency, args.steps, "load")
            alone = await restate_load(url, min(300, args.sagas), 1, args.steps, "alone")
    finally:
        service.send_signal(signal.SIGINT)  # the SDK takes SIGTERM for itself
        try:
            service.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=10)
    return _line("restate 1.7.12", load, alone)


async def embedded(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="sagakit-bench-") as folder:
        async with Engine(f"sqlite:///{folder}/bench.db", observers=[]) as engine:
            engine.register(bench)
            await run_load(engine, 200, args.concurrency, args.steps, 0.0, 0.0, "warm")
            load = await run_load(engine, args.sagas, args.concurrency, args.steps, 0.0, 0.0, "l")
            alone = await run_load(engine, min(300, args.sagas), 1, args.steps, 0.0, 0.0, "a")
    return _line("embedded (sqlite)", load, alone)


def serve(port: int) -> None:
    """The child process: serve Bench on 127.0.0.1:port until SIGINT."""
    from hypercorn.asyncio import serve as hypercorn_serve

    import sagakit.restate
    from tests.restate_server import hypercorn_config

    app: Any = sagakit.restate.app(bench)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(hypercorn_serve(app, hypercorn_config(port)))


async def main(args: argparse.Namespace) -> None:
    print(f"{args.steps}-step saga, {args.sagas} sagas, {args.concurrency} concurrent")
    print(await embedded(args))
    print(await on_restate(args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve:
        serve(parsed.serve)
    else:
        asyncio.run(main(parsed))
