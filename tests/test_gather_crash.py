"""Crash recovery of parallel branches with real processes: SIGKILL a process in the middle of a
``saga.gather`` (on SQLite and PostgreSQL), start a fresh one with the same workflow, and check
that it finishes the saga (or its rollback) with every journaled step and compensation done
exactly once, and only the operation in flight at the kill done twice.

The workflow lives in ``tests/gather_crash_app.py`` (P, then branches A1-A2 | B1-B2 | C1-C2,
then Z); each step attempt and compensation appends a line to a ledger file, so the test counts
real executions per process and compares them with the journal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagakit import Engine, SagaSnapshot, SagaStatus
from tests.conftest import make_store_url
from tests.processes import AppProcesses

pytestmark = pytest.mark.slow

SAGA = "gather-crash"
#: the journal of the forward part: P 0, gather 1, then 2 + 3k + i, Z after the 2 rounds
SEQS = {"P": 0, "A1": 2, "B1": 3, "C1": 4, "A2": 5, "B2": 6, "C2": 7, "Z": 8}


class App(AppProcesses):
    """One database and one ledger, shared by the processes a test starts and kills."""

    def __init__(self, tmp_path: Path, url: str):
        super().__init__(tmp_path, url, "tests.gather_crash_app")

    def app_args(self) -> list[str]:
        return [str(self.ledger), SAGA]

    def snapshot(self) -> SagaSnapshot:
        """The saga as the database has it (read by an engine that registers nothing, so its
        worker never claims anything)."""

        async def read() -> SagaSnapshot:
            async with Engine(self.url) as engine:
                return await engine.get(SAGA)

        return asyncio.run(read())

    def journal(self) -> list[tuple[int, str, str, str]]:
        return [(s.seq, s.kind, s.name, s.status) for s in self.snapshot().steps]

    def blocked(self, what: str, step: str) -> bool:
        return any(
            e["ev"] == "blocked" and e["what"] == what and e["step"] == step for e in self.events()
        )

    def pids(self, ev: str, step: str) -> list[int]:
        """The processes that did ``ev`` ("step", "step_done", "comp", ...) for ``step``, in
        order: one entry per execution."""
        return [e["pid"] for e in self.events() if e["ev"] == ev and e["step"] == step]


@pytest.fixture(params=["sqlite", "postgres"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    app = App(tmp_path, make_store_url(request.param, tmp_path, request, shared=True))
    try:
        yield app
    finally:
        app.stop_all()


def entry(name: str, status: str = "completed") -> tuple[int, str, str, str]:
    return (SEQS[name], "step", name, status)


def key(name: str) -> str:
    """A step's ``ctx.step_key``: the saga id and its sequence number."""
    return f"{SAGA}:{SEQS[name]}"


GATHER = (1, "gather", "3 branches", "completed")


def test_sigkill_in_a_branch_then_a_new_process_completes_the_saga(app: App) -> None:
    # A1 blocks; B and C run to their end meanwhile; the process is killed there
    first = app.spawn("start", json.dumps({"fail": []}), "--block", "step:A1")
    app.wait_until(first, "A1 to block", lambda: app.blocked("step", "A1"))
    journaled = [entry("P"), GATHER, entry("B1"), entry("C1"), entry("B2"), entry("C2")]
    app.wait_until(first, "B and C to be journaled", lambda: app.journal() == journaled)
    app.kill(first)

    before = app.snapshot()
    assert before.status == SagaStatus.RUNNING
    assert [(s.seq, s.kind, s.name, s.status) for s in before.steps] == journaled

    second = app.spawn("recover")
    summary = app.finish(second)
    assert summary["status"] == "COMPLETED", summary

    after = app.snapshot()
    assert after.status == SagaStatus.COMPLETED
    assert [(s.seq, s.kind, s.name, s.status) for s in after.steps] == sorted(
        [*journaled, entry("A1"), entry("A2"), entry("Z")]
    )
    # what was journaled before the kill kept its recorded results
    recorded = {s.seq: s.output for s in before.steps}
    assert {s.seq: s.output for s in after.steps if s.seq in recorded} == recorded

    # journaled before the kill: once, in the first process; A1 was in flight: it ran again
    for name in ("P", "B1", "B2", "C1", "C2"):
        assert app.pids("step", name) == [first.pid], name
        assert app.pids("step_done", name) == [first.pid], name
    assert app.pids("step", "A1") == [first.pid, second.pid]
    assert app.pids("step_done", "A1") == [second.pid]
    for name in ("A2", "Z"):
        assert app.pids("step", name) == [second.pid], name
        assert app.pids("step_done", name) == [second.pid], name
    assert [e for e in app.events() if e["ev"].startswith("comp")] == []
    # A1 kept its step key across the processes, and the output holds the keys in order
    keys = {e["key"] for e in app.events() if e["ev"] == "step" and e["step"] == "A1"}
    assert keys == {key("A1")}
    assert after.output == {
        "keys": [
            key("P"),
            [key("A1"), key("A2")],
            [key("B1"), key("B2")],
            [key("C1"), key("C2")],
            key("Z"),
        ]
    }


def test_sigkill_in_a_branch_while_a_sibling_failed_then_the_new_process_rolls_back(
    app: App,
) -> None:
    # C1 fails for good (branch C stops there) while A1 is held; killed before the rollback
    first = app.spawn("start", json.dumps({"fail": ["C1"]}), "--block", "step:A1")
    app.wait_until(first, "A1 to block", lambda: app.blocked("step", "A1"))
    journaled = [entry("P"), GATHER, entry("B1"), entry("C1", "failed"), entry("B2")]
    app.wait_until(first, "B and C to be journaled", lambda: app.journal() == journaled)
    app.kill(first)
    assert app.snapshot().status == SagaStatus.RUNNING

    second = app.spawn("recover")
    summary = app.finish(second)
    assert summary["status"] == "COMPENSATED", summary
    assert summary["error"]["cause"]["step"] == "C1"

    after = app.snapshot()
    forward = [(s.seq, s.kind, s.name, s.status) for s in after.steps if s.kind != "compensation"]
    assert forward == sorted([*journaled, entry("A1"), entry("A2")])
    # branch A went on to its end after the recovery, then everything was undone from the
    # highest number down: B2 6, A2 5, C1 4 (hybrid, failed), B1 3, A1 2, P 0
    order = ["B2", "A2", "C1", "B1", "A1", "P"]
    assert [s.name for s in after.steps if s.kind == "compensation"] == order
    assert all(s.status == "completed" for s in after.steps if s.kind == "compensation")
    comps = [(e["step"], e["failed"], e["pid"]) for e in app.events() if e["ev"] == "comp"]
    assert comps == [(name, name == "C1", second.pid) for name in order]

    for name in ("P", "B1", "B2", "C1"):
        assert app.pids("step", name) == [first.pid], name
    assert app.pids("step", "A1") == [first.pid, second.pid]
    assert app.pids("step_done", "A1") == [second.pid]
    assert app.pids("step", "A2") == [second.pid]
    assert app.pids("step", "C2") == []  # branch C stopped at its failure
    assert app.pids("step", "Z") == []


def test_sigkill_in_the_rollback_of_a_gather_then_the_new_process_finishes_it(app: App) -> None:
    # everything runs in the first process; C1 fails, the rollback undoes B2, A2, C1 and is
    # killed inside B1's compensation
    first = app.spawn("start", json.dumps({"fail": ["C1"]}), "--block", "comp:B1")
    app.wait_until(first, "B1's compensation to block", lambda: app.blocked("comp", "B1"))
    undone = ["B2", "A2", "C1"]

    def undone_journaled() -> bool:
        comps = [(n, st) for _, kind, n, st in app.journal() if kind == "compensation"]
        return comps == [(name, "completed") for name in undone]

    app.wait_until(first, "the first compensations to be journaled", undone_journaled)
    app.kill(first)
    assert app.snapshot().status == SagaStatus.COMPENSATING

    second = app.spawn("recover")
    summary = app.finish(second)
    assert summary["status"] == "COMPENSATED", summary

    after = app.snapshot()
    forward = [(s.seq, s.kind, s.name, s.status) for s in after.steps if s.kind != "compensation"]
    assert forward == sorted(
        [
            entry("P"),
            GATHER,
            entry("A1"),
            entry("B1"),
            entry("C1", "failed"),
            entry("A2"),
            entry("B2"),
        ]
    )
    order = ["B2", "A2", "C1", "B1", "A1", "P"]
    assert [s.name for s in after.steps if s.kind == "compensation"] == order
    # the forward steps all ran once, in the first process; none ran again on replay
    for name in ("P", "A1", "A2", "B1", "B2", "C1"):
        assert app.pids("step", name) == [first.pid], name
    assert app.pids("step", "C2") == [] and app.pids("step", "Z") == []
    # compensations journaled before the kill: once; B1's was in flight: twice; the rest once
    for name in undone:
        assert app.pids("comp", name) == [first.pid], name
    assert app.pids("comp", "B1") == [first.pid, second.pid]
    assert app.pids("comp_done", "B1") == [second.pid]
    for name in ("A1", "P"):
        assert app.pids("comp", name) == [second.pid], name
