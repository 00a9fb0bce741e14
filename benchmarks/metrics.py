"""What metrics cost: the throughput benchmark's workload with metrics off and on, in one run.

    python -m benchmarks.metrics [--store sqlite|postgres|memory] [--sagas N] [--rounds R]
        [--concurrency C] [--steps K] [--url URL]

Each round runs N sagas of K no-op steps (the engine's own overhead, where metrics weigh the
most) on a fresh engine without metrics (``Engine(metrics=False)``) and then with them
(``Engine(metrics=True)``: Prometheus counters and histograms on every saga, attempt and
commit), alternating so that a drift of the machine touches both alike. It prints this
process's CPU seconds per saga for each (the median over the rounds) and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from benchmarks.throughput import bench, database, run_load
from sagakit import Engine


async def one_round(url: str, args: argparse.Namespace, metrics: bool, tag: str) -> float:
    """CPU seconds per saga of one load, with or without metrics."""
    async with Engine(url, metrics=metrics) as engine:
        engine.register(bench)
        await run_load(engine, 100, args.concurrency, args.steps, 0.0, 0.0, f"w{tag}")
        load = await run_load(engine, args.sagas, args.concurrency, args.steps, 0.0, 0.0, tag)
        if metrics:
            assert engine.metrics is not None and engine.metrics.registry is not None
            started = engine.metrics.registry.get_sample_value(
                "sagakit_sagas_started_total", {"workflow": "Bench"}
            )
            assert started == args.sagas + 100, started  # they were measured indeed
    return load["cpu_ms"] / 1000


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        off: list[float] = []
        on: list[float] = []
        for r in range(args.rounds):
            for metrics, figures in ((False, off), (True, on)):
                if args.url:
                    url = args.url
                elif args.store == "memory":
                    url = "memory://"
                else:
                    url = f"sqlite:///{Path(folder) / f'm{r}{int(metrics)}.db'}"
                figures.append(await one_round(url, args, metrics, f"r{r}m{int(metrics)}"))
        base, measured = statistics.median(off), statistics.median(on)
        print(
            f"{args.store}: {args.sagas} sagas x {args.steps} steps, {args.rounds} rounds, "
            f"concurrency {args.concurrency}"
        )
        print(f"  metrics off: {base * 1e6:8.1f} us CPU per saga (median)")
        print(f"  metrics on:  {measured * 1e6:8.1f} us CPU per saga (median)")
        print(f"  ratio on/off: {measured / base:.3f} ({(measured / base - 1) * 100:+.1f}% CPU)")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--store", choices=["sqlite", "postgres", "memory"], default="sqlite")
    parser.add_argument("--url", default=None, help="an existing database instead of a new one")
    parser.add_argument("--sagas", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.store == "postgres":
        with database("postgres", args.url) as url:
            args.url = url
            asyncio.run(main(args))
        return
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
