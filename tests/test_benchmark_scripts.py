"""The benchmark scripts of issue 21 run as BENCHMARKS.md documents them, at a tiny size.

Only that they run and print their figures is checked here: speed is measured by running them
at full size, never asserted in a test. PostgreSQL runs use the suite's server (``--url``)
where the script takes one; ``benchmarks.workers`` and ``benchmarks.latency`` start their own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(*args: str, timeout: float = 300) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_long_sagas_prints_each_measurement(store: str) -> None:
    out = run_benchmark(
        "benchmarks.long_sagas", "--store", store, "--steps", "200", "--signals", "40",
        "--every", "10",
    )  # fmt: skip
    assert re.search(r"per-step cost: .* ratio \d+\.\d+x", out), out
    assert re.search(r"memory held by a running saga: .* bytes per entry", out), out
    assert "40 signals, no continue_as_new" in out
    assert "40 signals, continue_as_new every 10" in out
    if store == "sqlite":
        assert re.search(r"resume after a signal: .*per entry read and replayed", out), out


def test_long_sagas_on_postgres(pg_url: str) -> None:
    out = run_benchmark(
        "benchmarks.long_sagas", "--store", "postgres", "--url", pg_url, "--steps", "100",
        "--signals", "20", "--every", "5",
    )  # fmt: skip
    assert "resume after a signal" in out and "continue_as_new every 5" in out


def test_ceiling_prints_the_per_saga_costs(pg_url: str) -> None:
    out = run_benchmark(
        "benchmarks.ceiling", "--url", pg_url, "--sagas", "100", "--concurrency", "4"
    )
    assert re.search(r"concurrency 4: \d+ sagas/s; per saga: server CPU .* KiB of WAL", out), out


def test_latency_prints_the_floor_and_the_ratio() -> None:
    out = run_benchmark(
        "benchmarks.latency", "--store", "sqlite", "--sagas", "20", "--rounds", "2",
        "--commits", "50",
    )  # fmt: skip
    assert re.search(r"sqlite +median of 2: floor .* ratio \d+\.\d+", out), out


def test_latency_on_postgres_times_the_statements_alone() -> None:
    out = run_benchmark(
        "benchmarks.latency", "--store", "postgres", "--sagas", "10", "--rounds", "1",
        "--commits", "20",
    )  # fmt: skip
    assert re.search(r"postgres +median of 1: .* statements alone: \d+\.\d+x the floor", out), out


def test_payloads_prints_a_row_per_size() -> None:
    out = run_benchmark("benchmarks.payloads", "--sizes", "0.2", "--stores", "sqlite")
    assert "0.2" in out and "sqlite" in out.lower(), out


@pytest.mark.slow
def test_workers_prints_the_scaling() -> None:
    out = run_benchmark(
        "benchmarks.workers", "--workers", "1,2", "--sagas", "200", "--rounds", "1",
        "--poll", "0.2",
    )  # fmt: skip
    assert re.search(r"2 workers?.*\d+\.\d+x", out), out
