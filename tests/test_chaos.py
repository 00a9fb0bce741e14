"""Chaos: 4 real `sagakit worker` processes on a real PostgreSQL, one SIGKILLed and restarted
every 0.5-1 s while they run 2,000 sagas of 3-5 steps, about 20% of which fail at a random step.

At the end every saga is in a terminal state and the ledger the steps wrote (keyed by
``ctx.step_key``) agrees with it: a completed saga applied every step once or more and undid
none; a compensated saga undid every step it applied; and no step or compensation ran again
after its result was journaled. The steps re-executed because a worker died mid-step are
counted and printed (pytest -s shows them).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import asyncpg
import pytest

from sagakit import Engine

from .chaos_app import LEDGER_DDL, chaos

ROOT = Path(__file__).resolve().parent.parent
SAGAS = 2000
WORKERS = 4
DEADLINE = 240.0

pytestmark = pytest.mark.slow


def _spawn_worker(url: str, log_dir: Path, n: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SAGAKIT_CHAOS_DB=url, PYTHONPATH=str(ROOT))
    log = open(log_dir / f"worker-{n}.log", "ab")  # noqa: SIM115 - owned by the process
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sagakit.cli",
            "worker",
            "--db",
            url,
            "--app",
            "tests.chaos_app:workflows",
            "--concurrency",
            "64",
            "--lease",
            "2",
            "--poll",
            "0.2",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def _wait_ready(log: Path, pid: int) -> None:
    for _ in range(300):
        if f":{pid}:" in log.read_text(errors="replace"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"worker {pid} never said it was ready; see {log}")


async def test_kill_the_workers(pg_url: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(pg_url)
    await conn.execute(LEDGER_DDL)
    rng = random.Random(20261122)
    plans: dict[str, tuple[int, int | None]] = {}
    for i in range(SAGAS):
        steps = rng.randint(3, 5)
        fail_at = rng.randrange(steps) if rng.random() < 0.2 else None
        plans[f"chaos-{i}"] = (steps, fail_at)

    workers = [_spawn_worker(pg_url, tmp_path, n) for n in range(WORKERS)]
    killed_pids: set[int] = set()
    kills = 0
    try:
        # a client engine: starts sagas for the workers, runs none itself
        async with Engine(pg_url, worker=False) as client:
            client.register(chaos)
            for start in range(0, SAGAS, 200):
                await asyncio.gather(
                    *(
                        client.start(chaos, {"steps": s, "fail_at": f}, saga_id=sid, run_here=False)
                        for sid, (s, f) in list(plans.items())[start : start + 200]
                    )
                )

        began = time.monotonic()
        while True:
            done = await conn.fetchval(
                "SELECT count(*) FROM saga_instances "
                "WHERE status IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')"
            )
            if done == SAGAS:
                break
            assert time.monotonic() - began < DEADLINE, f"only {done}/{SAGAS} sagas ended"
            await asyncio.sleep(rng.uniform(0.5, 1.0))
            victim = rng.randrange(WORKERS)
            killed_pids.add(workers[victim].pid)
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait(timeout=10)
            kills += 1
            workers[victim] = _spawn_worker(pg_url, tmp_path, victim)
        elapsed = time.monotonic() - began

        # a graceful stop: SIGTERM drains and exits 0 (once each worker has installed its
        # handlers: a process killed while it is still importing is not a drain)
        for n, w in enumerate(workers):
            await _wait_ready(tmp_path / f"worker-{n}.log", w.pid)
        for w in workers:
            w.send_signal(signal.SIGTERM)
        codes = [w.wait(timeout=60) for w in workers]
        assert codes == [0] * WORKERS, codes
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()

    statuses = dict(await conn.fetch("SELECT saga_id, status FROM saga_instances"))
    ledger = await conn.fetch(
        "SELECT saga_id, step_index, action, step_key, at FROM chaos_ledger ORDER BY id"
    )
    journal = await conn.fetch("SELECT saga_id, seq, kind, name, finished_at FROM saga_journal")
    await conn.close()

    applied: dict[str, Counter[int]] = defaultdict(Counter)
    undone: dict[str, Counter[int]] = defaultdict(Counter)
    times: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for row in ledger:
        target = applied if row["action"] == "do" else undone
        target[row["saga_id"]][row["step_index"]] += 1
        times[(row["saga_id"], row["step_index"], row["action"])].append(row["at"])
        assert row["step_key"] == f"{row['saga_id']}:{row['step_index']}"

    for saga_id, (steps, fail_at) in plans.items():
        status = statuses[saga_id]
        if fail_at is None:
            assert status == "COMPLETED", (saga_id, status)
            assert set(applied[saga_id]) == set(range(steps)), saga_id
            assert not undone[saga_id], saga_id
        else:
            assert status == "COMPENSATED", (saga_id, status)
            assert set(applied[saga_id]) == set(range(fail_at + 1)), saga_id
            assert set(undone[saga_id]) == set(applied[saga_id]), saga_id

    # nothing ran again once its result was journaled
    late = []
    for entry in journal:
        if entry["kind"] not in ("step", "compensation"):
            continue
        index = int(entry["name"].removeprefix("Step"))
        action = "do" if entry["kind"] == "step" else "undo"
        late += [t for t in times[(entry["saga_id"], index, action)] if t > entry["finished_at"]]
    assert not late, f"{len(late)} executions happened after their result was journaled"

    re_done = sum(c - 1 for counts in applied.values() for c in counts.values())
    re_undone = sum(c - 1 for counts in undone.values() for c in counts.values())
    compensated = sum(1 for s in statuses.values() if s == "COMPENSATED")
    print(
        f"\nchaos: {SAGAS} sagas ({compensated} compensated) in {elapsed:.1f}s with {kills} "
        f"SIGKILLs; steps re-executed after a worker died mid-step: {re_done}; "
        f"compensations re-executed: {re_undone}"
    )
    assert kills >= 3
