"""Many worker processes on one PostgreSQL: how throughput scales with `sagakit worker`s.

    python -m benchmarks.workers [--workers 1,2,4] [--sagas N] [--rounds R] [--concurrency C]
        [--worker-concurrency W] [--poll S]

One throwaway PostgreSQL server (durable defaults: fsync and synchronous_commit on). Each
measurement gets a fresh database of that server, so that no measurement inherits another's
dead rows:

* ``in-process``: one Engine in this process starts N sagas and runs them here (``start`` +
  ``result``, C at a time), as ``benchmarks.throughput --scenario noop`` does;
* ``K workers``: K ``sagakit worker`` processes (real subprocesses, ``python -m sagakit.cli
  worker --app benchmarks.throughput:bench``) are started and registered first; then this
  process starts N sagas with ``run_here=False`` (C starts at a time, an Engine with
  ``worker=False``), and the figure is N over the time from the first start until the last
  saga COMPLETED. The workers do all of the sagas' work; this process only writes the starts
  and polls a count.

The workflow is throughput's ``Bench``: 3 no-op steps. For each measurement it prints sagas/s,
the ratio to one worker, and the CPU each process used over the measurement, in cores (CPU
seconds / wall seconds, from /proc/<pid>/stat): each worker, this process (the starter), the
PostgreSQL server (all its processes) and the whole machine (/proc/stat). The order of the
measurements is rotated from round to round, so that a slow moment of the shared host does not
always fall on the same one; the summary gives the median and the spread of each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from benchmarks.throughput import bench, run_load
from sagakit import Engine

REPO = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")
_INPUT = {"steps": 3, "delay": 0.0, "fail_at": -1}


# -- CPU from /proc ----------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def _children(ppid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                found.append(int(entry.name))
    return found


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / _TICK, sum(values) / _TICK


class CpuMeter:
    """CPU used by some processes and by the machine between ``start`` and ``stop``."""

    def __init__(self, groups: dict[str, list[int]], server_pid: int):
        self.groups = groups
        self.server_pid = server_pid

    def _sample(self) -> dict[str, float]:
        out = {name: sum(_cpu_seconds(p) for p in pids) for name, pids in self.groups.items()}
        server = [self.server_pid, *_children(self.server_pid)]
        out["postgres"] = sum(_cpu_seconds(p) for p in server)
        out["machine"] = _machine_busy()[0]
        return out

    def start(self) -> None:
        self._began = time.perf_counter()
        self._first = self._sample()

    def stop(self) -> dict[str, float]:
        """Cores each group used (CPU seconds per wall second) since ``start``."""
        last = self._sample()
        wall = time.perf_counter() - self._began
        return {name: (last[name] - self._first[name]) / wall for name in last}


# -- one measurement ---------------------------------------------------------------------------


@dataclass
class Figure:
    label: str
    sagas_per_s: float
    cores: dict[str, float] = field(default_factory=dict)


async def _fresh_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


async def _count(conn: asyncpg.Connection, status: str) -> int:
    value = await conn.fetchval(
        "SELECT count(*) FROM sagakit.saga_instances WHERE status = $1", status
    )
    return int(value)


async def in_process(url: str, args: argparse.Namespace, server_pid: int, tag: str) -> Figure:
    """One engine in this process: start + run here, ``args.concurrency`` at a time."""
    async with Engine(url) as engine:
        engine.register(bench)
        await run_load(engine, 200, args.concurrency, 3, 0.0, 0.0, f"warm{tag}")
        meter = CpuMeter({"this process": [os.getpid()]}, server_pid)
        meter.start()
        load = await run_load(engine, args.sagas, args.concurrency, 3, 0.0, 0.0, f"in{tag}")
        cores = meter.stop()
    return Figure("in-process engine", load["sagas_per_s"], cores)


def _spawn_worker(
    url: str, args: argparse.Namespace, log_dir: Path, n: int
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "sagakit.cli",
        "worker",
        "--db",
        url,
        "--app",
        "benchmarks.throughput:bench",
        "--concurrency",
        str(args.worker_concurrency),
        "--poll",
        str(args.poll),
        "--grace",
        "5",
    ]
    with (
        open(log_dir / f"worker{n}.out", "wb") as out,
        open(log_dir / f"worker{n}.err", "wb") as err,
    ):
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)


async def workers(
    url: str, count: int, args: argparse.Namespace, server_pid: int, log_dir: Path, tag: str
) -> Figure:
    """``count`` worker processes drain sagas started here with ``run_here=False``."""
    async with Engine(url, worker=False) as starter:  # creates the schema before the workers
        starter.register(bench)
        procs = [_spawn_worker(url, args, log_dir, n) for n in range(count)]
        conn = await asyncpg.connect(url)
        try:
            ends = time.monotonic() + 60
            while await conn.fetchval("SELECT count(*) FROM sagakit.saga_workers") < count:
                for proc in procs:
                    if proc.poll() is not None:
                        raise SystemExit(f"a worker exited early; see {log_dir}")
                if time.monotonic() > ends:
                    raise SystemExit(f"the workers did not register within 60 s; see {log_dir}")
                await asyncio.sleep(0.05)
            # a warm-up the workers run (imports, prepared statements), not measured
            await _feed(starter, 200 * count, args.concurrency, f"warm{tag}")
            await _wait_completed(conn, 200 * count)
            meter = CpuMeter({f"worker {n + 1}": [p.pid] for n, p in enumerate(procs)}, server_pid)
            meter.groups["this process (starts)"] = [os.getpid()]
            began = time.perf_counter()
            meter.start()
            await _feed(starter, args.sagas, args.concurrency, f"w{tag}")
            await _wait_completed(conn, 200 * count + args.sagas)
            wall = time.perf_counter() - began
            cores = meter.stop()
        finally:
            await conn.close()
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    label = f"{count} worker process{'es' if count > 1 else ''}"
    return Figure(label, args.sagas / wall, cores)


async def _feed(engine: Engine, sagas: int, concurrency: int, tag: str) -> None:
    ids = iter(range(sagas))

    async def lane() -> None:
        for i in ids:
            await engine.start(bench, _INPUT, saga_id=f"{tag}-{i}", run_here=False)

    await asyncio.gather(*(lane() for _ in range(concurrency)))


async def _wait_completed(conn: asyncpg.Connection, total: int) -> None:
    ends = time.monotonic() + 600
    while await _count(conn, "COMPLETED") < total:
        if time.monotonic() > ends:
            raise SystemExit("the workers did not finish the sagas within 600 s")
        await asyncio.sleep(0.02)


# -- the run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def server() -> Iterator[tuple[str, int]]:
    from tests.pgserver import PgServer

    with PgServer(durable=True) as pg:
        pid = int((pg.data / "postmaster.pid").read_text().split()[0])
        yield pg.url, pid


def _show(figure: Figure, one: float | None) -> None:
    scale = "" if one is None else f"  {figure.sagas_per_s / one:.2f}x one worker"
    cores = ", ".join(f"{name} {value:.2f}" for name, value in figure.cores.items())
    print(
        f"  {figure.label:<22} {figure.sagas_per_s:>7.0f} sagas/s{scale}   cores: {cores}",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    counts = [int(c) for c in args.workers.split(",")]
    print(
        f"sagakit workers: {args.sagas} sagas of 3 no-op steps per measurement, starts "
        f"{args.concurrency} at a time, workers --concurrency {args.worker_concurrency} "
        f"--poll {args.poll}, {args.rounds} rounds, {os.cpu_count()} CPUs"
    )
    results: dict[str, list[Figure]] = {}
    with server() as (admin_url, server_pid), tempfile.TemporaryDirectory(prefix="sagakit-w-") as d:
        log_dir = Path(d)
        shapes: list[int] = [0, *counts]  # 0: the in-process engine
        for r in range(args.rounds):
            print(f"round {r + 1}:")
            order = shapes[r % len(shapes) :] + shapes[: r % len(shapes)]
            figures: dict[int, Figure] = {}
            for shape in order:
                url = await _fresh_database(admin_url, f"bench_{r}_{shape}")
                tag = f"{r}-{shape}"
                if shape == 0:
                    figure = await in_process(url, args, server_pid, tag)
                else:
                    figure = await workers(url, shape, args, server_pid, log_dir, tag)
                figures[shape] = figure
                results.setdefault(figure.label, []).append(figure)
            one = figures[counts[0]].sagas_per_s if counts else None
            for shape in shapes:
                _show(figures[shape], one if shape else None)
    print("summary (median of the rounds, spread in brackets):")
    one_runs = results.get(f"{counts[0]} worker process", [])
    for label, figs in results.items():
        line = f"  {label:<22} {_spread([f.sagas_per_s for f in figs], '.0f')} sagas/s"
        if one_runs and figs is not one_runs:
            ratios = [f.sagas_per_s / o.sagas_per_s for f, o in zip(figs, one_runs, strict=True)]
            line += f", {_spread(ratios, '.2f')}x one worker process"
        cores = {k: statistics.median(f.cores[k] for f in figs) for k in figs[0].cores}
        line += "; cores " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items())
        print(line)


def _spread(values: list[float], fmt: str) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:{fmt}} ({low:{fmt}}-{high:{fmt}})"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--sagas", type=int, default=3000, help="sagas per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="starts (or runs) at a time")
    parser.add_argument("--worker-concurrency", type=int, default=100)
    parser.add_argument("--poll", type=float, default=1.0, help="each worker's --poll (seconds)")
    asyncio.run(main(parser.parse_args()))
