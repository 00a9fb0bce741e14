"""Operators' actions and real crashes, on SQLite and PostgreSQL: SIGKILL the worker process that
runs a saga while an operator retries its parked step or cancels it, start a fresh worker, and
check from the ledger and the journal what ran, and how often.

The workflow lives in tests/admin_crash_app.py (``python -m tests.admin_crash_app``): steps S1,
S2 (parks after two attempts) and S3, switched from the test by files in a markers folder. The
operator is the test process itself: an engine on the same database that runs nothing.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaSnapshot, SagaStatus
from tests.conftest import make_engine
from tests.processes import AppProcesses, journal_rows, step_pids

pytestmark = pytest.mark.slow

SAGA = "admin-crash"


class Workers(AppProcesses):
    """The ``python -m tests.admin_crash_app`` processes of one test, with their database,
    ledger and folder of switches and markers."""

    def __init__(self, tmp_path: Path, url: str):
        super().__init__(tmp_path, url, "tests.admin_crash_app")

    def app_args(self) -> list[str]:
        return [str(self.ledger), str(self.markers), SAGA]

    async def step_blocked(self, proc: subprocess.Popen[bytes], step: str) -> None:
        await self.blocked_in(proc, step, f"step {step}")

    async def status_is(self, proc: subprocess.Popen[bytes], status: SagaStatus) -> None:
        async def check() -> bool:
            async with make_engine(self.url, worker=False) as reader:
                record = await reader._store_or_raise().load_saga(SAGA)
            return record is not None and record.status == status

        await self.until(proc, f"saga {SAGA!r} to be {status}", check)

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


def count(events: list[dict[str, Any]], ev: str) -> Counter[str]:
    return Counter(e["step"] for e in events if e["ev"] == ev)


async def test_sigkill_while_a_retried_step_runs(workers: Workers) -> None:
    workers.switch("S2", "fail")
    first = workers.spawn("start")
    await workers.status_is(first, SagaStatus.PARKED)
    parked = await workers.snapshot()
    assert journal_rows(parked) == [("step", "S1", "completed"), ("step", "S2", "failed")]
    assert parked.steps[1].attempts == 2

    # the operator fixes the cause and retries; the worker takes it, and dies in S2
    workers.switch("S2", "fail", on=False)
    workers.switch("S2", "block")
    async with make_engine(workers.url, worker=False) as ops:
        await ops.admin.retry_step(SAGA, reason="the service is back", by="ops")
    await workers.step_blocked(first, "S2")
    workers.kill(first)

    workers.switch("S2", "block", on=False)
    second = workers.spawn("worker")
    summary = workers.finish(second)
    assert summary["status"] == "COMPLETED", summary
    assert summary["output"] == ["S1-out", "S2-out", "S3-out"]

    after = await workers.snapshot()
    events = workers.events()
    assert journal_rows(after) == [
        ("step", "S1", "completed"),
        ("step", "S2", "completed"),
        ("step", "S3", "completed"),
    ]
    assert after.steps[0] == parked.steps[0]  # S1 kept its recorded result
    # a fresh budget: the two parked attempts do not count (nor, as for any first run, the
    # attempt a dead worker began without a marker)
    assert after.steps[1].attempts == 1
    assert [e.action for e in after.audit] == ["retry"]
    assert count(events, "step_done") == {"S1": 1, "S2": 1, "S3": 1}
    assert count(events, "step") == {"S1": 1, "S2": 4, "S3": 1}
    assert step_pids(events, "step", "S2") == [first.pid] * 3 + [second.pid]
    assert step_pids(events, "step_done", "S2") == [second.pid]
    assert count(events, "comp") == {}
    # every attempt of S2, in either process, under the same key
    assert len({e["key"] for e in events if e["ev"] == "step" and e["step"] == "S2"}) == 1


@pytest.mark.parametrize("order", ["cancel-then-kill", "kill-then-cancel"])
async def test_sigkill_around_a_cancel_of_a_running_saga(workers: Workers, order: str) -> None:
    workers.switch("S2", "block")
    first = workers.spawn("start")
    await workers.step_blocked(first, "S2")
    if order == "kill-then-cancel":
        workers.kill(first)  # its lease has not expired: the saga is still RUNNING, owned
    async with make_engine(workers.url, worker=False) as ops:
        snap = await ops.admin.cancel(SAGA, "wrong customer", by="ops")
    assert snap.status == SagaStatus.CANCELLED
    if order == "cancel-then-kill":
        workers.kill(first)
    workers.switch("S2", "block", on=False)

    # a fresh worker, long past the dead owner's lease, takes nothing up again
    second = workers.spawn("worker", "--for", "2.5")
    summary = workers.finish(second)
    assert summary["status"] == "CANCELLED", summary

    after = await workers.snapshot()
    events = workers.events()
    assert after.status == SagaStatus.CANCELLED
    assert journal_rows(after) == [("step", "S1", "completed")]
    assert after.owner is None
    assert [(e.action, e.reason) for e in after.audit] == [("cancel", "wrong customer")]
    assert step_pids(events, "step", "S2") == [first.pid]
    assert count(events, "step_done") == {"S1": 1}
    assert count(events, "comp") == {}
