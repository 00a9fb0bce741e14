"""Waits with real processes, on SQLite and PostgreSQL: a durable sleep outlives the process that
started it (SIGKILL), and a worker holding 10,000 suspended sagas keeps its memory flat.

The workflows live in tests/sleeper_app.py and run as ``python -m tests.sleeper_app``; this
module imports the same workflows to finish the sagas in the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaSnapshot, SagaStatus
from tests import sleeper_app
from tests.conftest import make_engine

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
#: the longest one wait of these tests may take: a bug fails the test, it never hangs it
WAIT = 60.0
#: how many suspended sagas the memory test holds, and how far the worker's RSS may grow
MANY = 10_000
WARMUP = 200
MAX_GROWTH_MB = 50.0


class Child:
    """A ``python -m tests.sleeper_app`` process; its stdout is read line by line (JSON)."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path):
        self.proc = proc
        self.stderr = stderr

    def describe(self) -> str:
        err = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        return f"pid {self.proc.pid}, exit {self.proc.returncode}\n--- stderr (tail)\n{err[-4000:]}"

    async def phase(self, name: str, timeout: float = WAIT) -> dict[str, Any]:
        """The next JSON line the child prints, which must be phase ``name``."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                line = await self.proc.stdout.readline()
        except TimeoutError:
            pytest.fail(f"the child printed no {name!r} line in {timeout}s:\n{self.describe()}")
        if not line:
            await self.proc.wait()
            pytest.fail(f"the child exited before phase {name!r}:\n{self.describe()}")
        data: dict[str, Any] = json.loads(line)
        assert data.get("phase") == name, (data, self.describe())
        return data

    def alive(self) -> bool:
        return self.proc.returncode is None


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Any]:
    children: list[Child] = []

    async def start(*args: str) -> Child:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        stderr = tmp_path / f"child{len(children)}.err"
        with open(stderr, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.sleeper_app",
                *args,
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        child = Child(proc, stderr)
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            if child.proc.returncode is None:
                child.proc.kill()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WAIT):
                        await child.proc.wait()


def ledger_events(ledger: Path) -> list[dict[str, Any]]:
    if not ledger.exists():
        return []
    events = []
    for line in ledger.read_bytes().split(b"\n"):
        if line.strip():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


async def test_a_sleep_outlives_a_killed_process(
    process_db_url: str, tmp_path: Path, spawn: Any
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    child = await spawn("sleep", process_db_url, "sleeper-1", str(ledger), "1.5")
    await child.phase("started")

    # a reader registers nothing: its worker never takes the saga
    async with make_engine(process_db_url) as reader:
        deadline = time.monotonic() + WAIT
        while True:
            snap: SagaSnapshot = await reader.get("sleeper-1")
            if snap.status == SagaStatus.SUSPENDED:
                break
            if not child.alive() or time.monotonic() > deadline:
                pytest.fail(f"the saga did not suspend ({snap.status}):\n{child.describe()}")
            await asyncio.sleep(0.02)
    assert snap.wake_at is not None
    wake_at = snap.wake_at.timestamp()
    assert [(s.kind, s.name, s.status) for s in snap.steps] == [
        ("step", "First", "completed"),
        ("sleep", "sleep", "running"),
    ]

    killed_at = time.time()
    os.kill(child.proc.pid, signal.SIGKILL)
    assert await child.proc.wait() == -signal.SIGKILL
    # killed before its wake time: the process that finishes the saga has to wait for it
    assert time.time() < wake_at
    before = ledger_events(ledger)
    assert [(e["ev"], e["pid"]) for e in before] == [("First", child.proc.pid)]

    async with make_engine(process_db_url) as engine:
        engine.register(*sleeper_app.WORKFLOWS)
        result = await engine.handle("sleeper-1").result(timeout=WAIT)
        done = await engine.get("sleeper-1")

    events = ledger_events(ledger)
    # First ran once, in the killed process; Second once, here, not before the wake time
    assert [(e["ev"], e["pid"]) for e in events] == [
        ("First", child.proc.pid),
        ("Second", os.getpid()),
    ]
    assert events[1]["at"] >= wake_at
    assert result["second"] >= wake_at
    # First's output is the one the killed process recorded (read back, not made again here)
    assert before[0]["at"] <= result["first"] < killed_at
    assert result["second"] - result["first"] >= 1.5
    assert done.status == SagaStatus.COMPLETED
    assert [(s.kind, s.name, s.status, s.attempts) for s in done.steps] == [
        ("step", "First", "completed", 1),
        ("sleep", "sleep", "completed", 1),
        ("step", "Second", "completed", 1),
    ]


async def test_many_suspended_sagas_leave_the_worker_memory_flat(
    process_db_url: str, spawn: Any, record_property: Any
) -> None:
    began = time.monotonic()
    child = await spawn("memory", process_db_url, "--count", str(MANY), "--warmup", str(WARMUP))
    idle = await child.phase("idle")
    suspended = await child.phase("suspended", timeout=120)
    assert suspended["tasks"] == 0, "suspended sagas must leave nothing running in the worker"
    assert suspended["suspended"] == MANY

    ids = [f"mem-{i}" for i in range(MANY)]
    async with make_engine(process_db_url, worker=False) as client:
        # counted here too, in another process than the worker's
        waiting = await client.list(status=SagaStatus.SUSPENDED, limit=2 * MANY)
        assert {s.saga_id for s in waiting} == set(ids)
        assert all(s.owner is None for s in waiting)

        signalled_at = time.monotonic()
        for offset in range(0, MANY, 100):
            await asyncio.gather(
                *(client.signal(f"mem-{i}", "go", {"i": i}) for i in range(offset, offset + 100))
            )
        signal_seconds = time.monotonic() - signalled_at

        deadline = time.monotonic() + 120
        while True:
            completed = await client.list(status=SagaStatus.COMPLETED, limit=3 * MANY)
            mine = {s.saga_id: s.output for s in completed if s.saga_id.startswith("mem-")}
            if len(mine) == MANY:
                break
            if not child.alive() or time.monotonic() > deadline:
                pytest.fail(f"{len(mine)} of {MANY} sagas completed:\n{child.describe()}")
            await asyncio.sleep(0.2)
        complete_seconds = time.monotonic() - signalled_at
        wrong = {k: v for k, v in mine.items() if v != {"i": int(k.removeprefix("mem-"))}}
        assert wrong == {}
        assert await client.list(status=SagaStatus.SUSPENDED, limit=10) == []

    assert child.proc.stdin is not None
    child.proc.stdin.write(b"done\n")
    await child.proc.stdin.drain()
    end = await child.phase("end")
    assert await child.proc.wait() == 0, child.describe()

    figures = {
        "rss_idle_mb": round(idle["rss_idle_mb"], 1),
        "rss_suspended_mb": round(suspended["rss_suspended_mb"], 1),
        "rss_end_mb": round(end["rss_end_mb"], 1),
        "start_seconds": round(suspended["start_seconds"], 1),
        "signal_seconds": round(signal_seconds, 1),
        "complete_seconds": round(complete_seconds, 1),
        "total_seconds": round(time.monotonic() - began, 1),
    }
    record_property("memory_figures", json.dumps(figures))
    print(f"\nmemory figures ({process_db_url.split(':')[0]}): {json.dumps(figures)}")
    growth = suspended["rss_suspended_mb"] - idle["rss_idle_mb"]
    assert growth < MAX_GROWTH_MB, figures
