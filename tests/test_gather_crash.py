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
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import Engine, SagaSnapshot, SagaStatus
from tests.conftest import make_store_url

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
#: the longest any one wait of these tests may take (a hang fails the test, it never blocks CI)
WAIT = 60.0
SAGA = "gather-crash"
#: the journal of the forward part: P 0, gather 1, then 2 + 3k + i, Z after the 2 rounds
SEQS = {"P": 0, "A1": 2, "B1": 3, "C1": 4, "A2": 5, "B2": 6, "C2": 7, "Z": 8}


class App:
    """One database and one ledger, shared by the processes a test starts and kills."""

    def __init__(self, tmp_path: Path, url: str):
        self.dir = tmp_path
        self.url = url
        self.ledger = tmp_path / "ledger.jsonl"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.names: dict[int, str] = {}

    def spawn(self, mode: str, *args: str) -> subprocess.Popen[bytes]:
        name = f"proc{len(self.procs) + 1}-{mode}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-m", "tests.gather_crash_app", mode, self.url]
        with (
            open(self.dir / f"{name}.out", "wb") as out,
            open(self.dir / f"{name}.err", "wb") as err,
        ):
            proc = subprocess.Popen(
                [*command, str(self.ledger), SAGA, *args],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=err,
            )
        self.names[proc.pid] = name
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> tuple[str, str]:
        name = self.names[proc.pid]
        return (
            (self.dir / f"{name}.out").read_text(errors="replace"),
            (self.dir / f"{name}.err").read_text(errors="replace"),
        )

    def describe(self, proc: subprocess.Popen[bytes]) -> str:
        out, err = self.output(proc)
        return (
            f"{self.names[proc.pid]} (pid {proc.pid}, exit {proc.returncode})\n"
            f"--- stdout\n{out}\n--- stderr (tail)\n{err[-4000:]}\n--- ledger (tail)\n"
            + "\n".join(json.dumps(e) for e in self.events()[-30:])
        )

    def events(self) -> list[dict[str, Any]]:
        """The ledger's events; a torn last line (a write cut by SIGKILL) is left out."""
        if not self.ledger.exists():
            return []
        events = []
        for line in self.ledger.read_bytes().split(b"\n"):
            if line.strip():
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def wait_until(
        self, proc: subprocess.Popen[bytes], what: str, check: Callable[[], bool]
    ) -> None:
        """Poll ``check`` until it holds; fail if ``proc`` dies or time runs out."""
        deadline = time.monotonic() + WAIT
        while not check():
            if proc.poll() is not None:
                pytest.fail(f"the process exited before {what}:\n{self.describe(proc)}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.describe(proc)}")
            time.sleep(0.05)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.poll() is None, f"expected a live process to kill:\n{self.describe(proc)}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=WAIT) == -signal.SIGKILL

    def finish(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        """Wait for a process to end on its own; return its JSON summary."""
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)
            pytest.fail(f"the process did not finish in {WAIT}s:\n{self.describe(proc)}")
        assert proc.returncode == 0, self.describe(proc)
        out, _ = self.output(proc)
        summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return summary

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
        for proc in app.procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=WAIT)


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
