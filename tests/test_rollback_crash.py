"""A crash inside a compensation never repeats the compensation that finished before it (issue
14, defect 1), on SQLite and PostgreSQL, with real processes.

Three strict steps, the third fails for good: the rollback undoes S2, then S1, and the process
is SIGKILLed inside the compensation of S1. A new worker finishes the rollback: the compensation
of S1 runs again (it was cut short: compensations are at least once), that of S2 does not (it
had finished, and its end was durable before S1's compensation began). Two kills: the test's
SIGKILL once the compensation of S1 is blocked in its body, and the process killing itself at
the start of that compensation, before its event loop runs anything else (the case where a
write queued behind the compensation had no chance to commit).

The workflow lives in tests/rollback_crash_app.py (``python -m tests.rollback_crash_app``).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sagakit import SagaSnapshot, SagaStatus
from tests.conftest import make_engine
from tests.processes import WAIT, AppProcesses, journal_rows

pytestmark = pytest.mark.slow

SAGA = "rollback-crash"


class Workers(AppProcesses):
    """The ``python -m tests.rollback_crash_app`` processes of one test."""

    def __init__(self, tmp_path: Path, url: str):
        super().__init__(tmp_path, url, "tests.rollback_crash_app")

    def app_args(self) -> list[str]:
        return [str(self.ledger), str(self.markers), SAGA]

    async def compensation_blocked(self, proc: subprocess.Popen[bytes], step: str) -> None:
        await self.blocked_in(proc, step, f"the compensation of {step}")

    def ledger_line(self) -> list[str]:
        """The ledger as ``s1 s2 s3 c2 c1``: one word per step or compensation run."""
        return [f"{e['ev'][0]}{e['step'][1:]}" for e in self.events()]

    async def snapshot(self) -> SagaSnapshot:
        async with make_engine(self.url, worker=False) as reader:
            return await reader.admin.get_saga(SAGA)


@pytest.fixture
async def workers(tmp_path: Path, process_db_url: str) -> AsyncIterator[Workers]:
    workers = Workers(tmp_path, process_db_url)
    try:
        yield workers
    finally:
        workers.stop_all()


@pytest.mark.parametrize("kill", ["by-the-test", "at-once"])
async def test_sigkill_inside_a_compensation_repeats_only_that_one(
    workers: Workers, kill: str
) -> None:
    if kill == "by-the-test":
        workers.switch("S1", "block")
        first = workers.spawn("start")
        await workers.compensation_blocked(first, "S1")
        workers.kill(first)
        workers.switch("S1", "block", on=False)
    else:
        workers.switch("S1", "die")
        first = workers.spawn("start")
        assert first.wait(timeout=WAIT) == -signal.SIGKILL, workers.describe(first)
        workers.switch("S1", "die", on=False)
    assert workers.ledger_line() == ["s1", "s2", "s3", "c2", "c1"]
    before = await workers.snapshot()

    second = workers.spawn("worker")
    summary = workers.finish(second)
    assert summary["status"] == "COMPENSATED", workers.describe(second)

    # c2 ran once; c1 twice, since the kill cut its first run short
    assert workers.ledger_line() == ["s1", "s2", "s3", "c2", "c1", "c1"]
    # the compensation of S2 finished before that of S1 began: its end was in the journal
    assert before.status == SagaStatus.COMPENSATING
    assert journal_rows(before)[3:] == [("compensation", "S2", "completed")]
    comps = [e["pid"] for e in workers.events() if e["ev"] == "comp"]
    assert comps == [first.pid, first.pid, second.pid]
    after = await workers.snapshot()
    assert after.status == SagaStatus.COMPENSATED
    assert journal_rows(after) == [
        ("step", "S1", "completed"),
        ("step", "S2", "completed"),
        ("step", "S3", "failed"),
        ("compensation", "S2", "completed"),
        ("compensation", "S1", "completed"),
    ]
