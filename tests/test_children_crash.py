"""Child sagas and real crashes, on SQLite and PostgreSQL: SIGKILL the process that runs a parent
and its child, start a fresh one with the same workflows, and check that it finishes both with
every journaled step done once, and that there is still exactly one child.

The workflows live in tests/children_crash_app.py and run as
``python -m tests.children_crash_app``: the parent runs PA, starts the child (CA, CB, CC), runs
PB, waits for the child's result and runs PC. Each step attempt appends a line to a ledger file,
so the test counts real executions per process and compares them with the journals.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaSnapshot, SagaStatus
from sagakit.stores.base import EventKind
from tests.conftest import make_engine
from tests.processes import AppProcesses, journal_rows, step_pids

pytestmark = pytest.mark.slow

PARENT = "crash-p"
CHILD = f"{PARENT}/child-1"  # PA takes seq 0, start_child seq 1


class Workers(AppProcesses):
    """The ``python -m tests.children_crash_app`` processes of one test, one database, one
    ledger and one folder of marker files."""

    def __init__(self, tmp_path: Path, url: str):
        super().__init__(tmp_path, url, "tests.children_crash_app")

    def app_args(self) -> list[str]:
        return [str(self.ledger), str(self.markers), PARENT]

    def marker(self, step: str) -> Path:
        return self.markers / f"{step}.blocked"

    async def blocked_in(self, proc: subprocess.Popen[bytes], step: str) -> None:
        async def check() -> bool:
            return self.marker(step).exists()

        await self.until(proc, f"step {step} to block", check)
        assert self.marker(step).read_text() == str(proc.pid)

    async def status_is(
        self, proc: subprocess.Popen[bytes], saga_id: str, status: SagaStatus
    ) -> None:
        async def check() -> bool:
            async with make_engine(self.url) as reader:
                record = await reader._store_or_raise().load_saga(saga_id)
            return record is not None and record.status == status

        await self.until(proc, f"saga {saga_id!r} to be {status}", check)

    async def snapshots(self) -> dict[str, SagaSnapshot]:
        """Every saga with its journal, as the database has them (read by an engine that
        registers nothing, so that its worker never claims anything)."""
        async with make_engine(self.url) as reader:
            found = await reader.list(limit=1000)
            return {s.saga_id: await reader.get(s.saga_id) for s in found}

    async def parent_ids(self) -> dict[str, str | None]:
        async with make_engine(self.url) as reader:
            store = reader._store_or_raise()
            out = {}
            for snap in await reader.list(limit=1000):
                record = await store.load_saga(snap.saga_id)
                assert record is not None
                out[snap.saga_id] = record.parent_id
            return out

    async def events_of(self, saga_id: str) -> list[tuple[str, str]]:
        async with make_engine(self.url) as reader:
            events = await reader._store_or_raise().load_events(saga_id)
        return [(e.kind, e.name) for e in events]


@pytest.fixture
async def workers(tmp_path: Path, process_db_url: str) -> AsyncIterator[Workers]:
    workers = Workers(tmp_path, process_db_url)
    try:
        yield workers
    finally:
        workers.stop_all()


def starts(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["step"] for e in events if e["ev"] == "step")


def check_finished(
    after: dict[str, SagaSnapshot], parent_ids: dict[str, str | None], events: list[Any]
) -> None:
    """What every scenario ends with: one parent and one child, both COMPLETED, the parent's
    output holding the child's, each step done once, nothing compensated."""
    assert sorted(after) == [PARENT, CHILD]
    assert parent_ids == {PARENT: None, CHILD: PARENT}
    parent, child = after[PARENT], after[CHILD]
    assert parent.status == child.status == SagaStatus.COMPLETED
    assert journal_rows(parent) == [
        ("step", "PA", "completed"),
        ("child", "CrashChild", "completed"),
        ("step", "PB", "completed"),
        ("child_result", CHILD, "completed"),
        ("step", "PC", "completed"),
    ]
    assert journal_rows(child) == [
        ("step", "CA", "completed"),
        ("step", "CB", "completed"),
        ("step", "CC", "completed"),
    ]
    keys = {e["step"]: e["key"] for e in events if e["ev"] == "step"}
    child_keys = [keys["CA"], keys["CB"], keys["CC"]]
    assert child.output == {"child": CHILD, "tag": PARENT, "keys": child_keys}
    assert parent.output == {
        "child_id": CHILD,
        "child": child.output,
        "keys": [keys["PA"], keys["PB"], keys["PC"]],
    }
    # every step's side effect is done once: it returned once, wherever it ran
    done = Counter(e["step"] for e in events if e["ev"] == "step_done")
    assert done == {"PA": 1, "PB": 1, "PC": 1, "CA": 1, "CB": 1, "CC": 1}
    assert [e for e in events if e["ev"] == "comp"] == []
    # a step run again after the crash ran under the same key
    for step in ("PA", "PB", "PC", "CA", "CB", "CC"):
        assert len({e["key"] for e in events if e["ev"] == "step" and e["step"] == step}) == 1


async def test_sigkill_in_a_childs_step_while_the_parent_waits(workers: Workers) -> None:
    first = workers.spawn("start", "--block", "CB")
    await workers.blocked_in(first, "CB")
    # the parent has gone past PB and sleeps in child.result()
    await workers.status_is(first, PARENT, SagaStatus.SUSPENDED)
    workers.kill(first)

    before = await workers.snapshots()
    assert sorted(before) == [PARENT, CHILD]
    assert before[PARENT].status == SagaStatus.SUSPENDED
    assert journal_rows(before[PARENT]) == [
        ("step", "PA", "completed"),
        ("child", "CrashChild", "completed"),
        ("step", "PB", "completed"),
        ("child_result", CHILD, "running"),
    ]
    assert before[CHILD].status == SagaStatus.RUNNING
    assert journal_rows(before[CHILD]) == [("step", "CA", "completed")]
    assert await workers.events_of(PARENT) == []

    second = workers.spawn("recover")
    summary = workers.finish(second)
    assert summary[PARENT]["status"] == "COMPLETED"
    assert summary[CHILD]["status"] == "COMPLETED"

    after = await workers.snapshots()
    events = workers.events()
    check_finished(after, await workers.parent_ids(), events)
    # what was journaled kept its recorded results
    assert after[PARENT].steps[:3] == before[PARENT].steps[:3]
    assert after[CHILD].steps[:1] == before[CHILD].steps
    # journaled before the kill: once, in the first process; in flight at the kill: twice
    assert starts(events) == {"PA": 1, "PB": 1, "PC": 1, "CA": 1, "CB": 2, "CC": 1}
    assert step_pids(events, "step", "CB") == [first.pid, second.pid]
    assert step_pids(events, "step_done", "CB") == [second.pid]
    for step in ("PA", "PB", "CA"):
        assert step_pids(events, "step", step) == [first.pid], step
    for step in ("CC", "PC"):
        assert step_pids(events, "step", step) == [second.pid], step
    assert await workers.events_of(PARENT) == [(EventKind.CHILD, CHILD)]


@pytest.mark.parametrize("child_state", ["child-done", "child-in-flight"])
async def test_sigkill_in_the_parents_step_after_start_child(
    workers: Workers, child_state: str
) -> None:
    blocks = ["--block", "PB"]
    if child_state == "child-in-flight":
        blocks += ["--block", "CB"]
    first = workers.spawn("start", *blocks)
    await workers.blocked_in(first, "PB")
    if child_state == "child-done":
        # the child ended and told its parent, which is still in PB
        await workers.status_is(first, CHILD, SagaStatus.COMPLETED)
        assert await workers.events_of(PARENT) == [(EventKind.CHILD, CHILD)]
    else:
        await workers.blocked_in(first, "CB")
    workers.kill(first)

    before = await workers.snapshots()
    assert sorted(before) == [PARENT, CHILD]
    assert before[PARENT].status == SagaStatus.RUNNING
    assert journal_rows(before[PARENT]) == [
        ("step", "PA", "completed"),
        ("child", "CrashChild", "completed"),
    ]
    assert before[PARENT].steps[1].output == CHILD
    if child_state == "child-done":
        assert before[CHILD].status == SagaStatus.COMPLETED
        assert [s.name for s in before[CHILD].steps] == ["CA", "CB", "CC"]
    else:
        assert before[CHILD].status == SagaStatus.RUNNING
        assert journal_rows(before[CHILD]) == [("step", "CA", "completed")]

    second = workers.spawn("recover")
    summary = workers.finish(second)
    assert summary[PARENT]["status"] == "COMPLETED"

    after = await workers.snapshots()
    events = workers.events()
    # the replayed parent found its journaled child: still exactly one child saga
    check_finished(after, await workers.parent_ids(), events)
    assert after[PARENT].steps[:2] == before[PARENT].steps
    expected = {"PA": 1, "PB": 2, "PC": 1, "CA": 1, "CB": 1, "CC": 1}
    if child_state == "child-in-flight":
        expected["CB"] = 2
    assert starts(events) == expected
    assert step_pids(events, "step", "PB") == [first.pid, second.pid]
    assert step_pids(events, "step_done", "PB") == [second.pid]
    assert step_pids(events, "step", "PC") == [second.pid]
    assert step_pids(events, "step", "PA") == [first.pid]
    if child_state == "child-done":
        # the child's outcome was kept for the parent across the crash; the child never re-ran
        assert after[CHILD].steps == before[CHILD].steps
        assert {e["pid"] for e in events if e["ev"] == "step" and e["saga"] == CHILD} == {first.pid}
    else:
        assert step_pids(events, "step", "CB") == [first.pid, second.pid]
        assert step_pids(events, "step", "CC") == [second.pid]
    assert await workers.events_of(PARENT) == [(EventKind.CHILD, CHILD)]
