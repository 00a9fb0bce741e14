"""Crash recovery with real processes: SIGKILL a process that runs sagas on a SQLite file, start
a fresh one with the same workflows, and check that it finishes every saga with the journaled
work done once.

The workflows live in ``tests/crash_app.py`` and run as ``python -m tests.crash_app``; each step
and compensation appends a line to a ledger file, so the test counts real executions per process
(the ledger) and compares them with what the engine recorded (the journal, ``engine.get``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import Engine, SagaSnapshot, SagaStatus
from tests.processes import WAIT, AppProcesses

pytestmark = pytest.mark.slow

STEPS_FORWARD = ["S1", "S2", "S3", "S4"]


class App(AppProcesses):
    """One SQLite file and one ledger, shared by the processes a test starts and kills."""

    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path, f"sqlite:///{tmp_path / 'sagas.db'}", "tests.crash_app")

    def wait_for(
        self,
        proc: subprocess.Popen[bytes],
        what: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
    ) -> list[dict[str, Any]]:
        """Poll the ledger until ``predicate`` holds; fail if ``proc`` dies or time runs out."""
        self.wait_until(proc, what, lambda: predicate(self.events()))
        return self.events()

    def snapshots(self, *saga_ids: str) -> dict[str, SagaSnapshot]:
        """The sagas as the database has them (read by an engine that registers nothing, so its
        worker never claims anything)."""

        async def read() -> dict[str, SagaSnapshot]:
            async with Engine(self.url) as engine:
                return {saga_id: await engine.get(saga_id) for saga_id in saga_ids}

        return asyncio.run(read())

    def all_sagas(self) -> list[SagaSnapshot]:
        async def read() -> list[SagaSnapshot]:
            async with Engine(self.url) as engine:
                return await engine.list(limit=1000)

        return asyncio.run(read())


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    app = App(tmp_path)
    try:
        yield app
    finally:
        app.stop_all()


def blocked(saga_id: str, what: str, step: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: any(
        e["ev"] == "blocked" and e["saga"] == saga_id and e["what"] == what and e["step"] == step
        for e in events
    )


def runs(events: list[dict[str, Any]], ev: str, saga_id: str) -> Counter[str]:
    """How many times each step (ev="step") or compensation (ev="comp") of a saga started."""
    return Counter(e["step"] for e in events if e["ev"] == ev and e.get("saga") == saga_id)


def pids(events: list[dict[str, Any]], ev: str, saga_id: str, step: str) -> list[int]:
    return [
        e["pid"]
        for e in events
        if e["ev"] == ev and e.get("saga") == saga_id and e.get("step") == step
    ]


def journal(snap: SagaSnapshot) -> list[tuple[int, str, str, str]]:
    return [(s.seq, s.kind, s.name, s.status) for s in snap.steps]


# the new process either only recovers, or is the same program started again: it calls
# start() with the same saga id, which must return the existing saga and run nothing twice
@pytest.mark.parametrize("restart", ["recover", "start-again"])
def test_sigkill_in_a_step_then_a_new_process_completes_the_saga(app: App, restart: str) -> None:
    first = app.spawn("start", "--saga", "crash-1", "{}", "--block", "step:S3")
    app.wait_for(first, "S3 to block", blocked("crash-1", "step", "S3"))
    app.kill(first)

    before = app.snapshots("crash-1")["crash-1"]
    assert before.status == SagaStatus.RUNNING
    assert journal(before) == [
        (0, "uuid", "uuid", "completed"),
        (1, "step", "S1", "completed"),
        (2, "step", "S2", "completed"),
    ]

    if restart == "recover":
        second = app.spawn("recover", "--wait", "crash-1")
    else:
        second = app.spawn("start", "--saga", "crash-1", "{}")
    summary = app.finish(second)
    assert summary["crash-1"]["status"] == "COMPLETED"

    after = app.snapshots("crash-1")["crash-1"]
    assert after.status == SagaStatus.COMPLETED
    assert journal(after) == [
        (0, "uuid", "uuid", "completed"),
        (1, "step", "S1", "completed"),
        (2, "step", "S2", "completed"),
        (3, "step", "S3", "completed"),
        (4, "step", "S4", "completed"),
    ]
    # what was journaled kept its recorded results: replay did not rewrite them
    assert after.steps[:3] == before.steps

    events = app.events()
    # journaled before the kill: exactly once; crashed before its result was journaled: twice
    assert runs(events, "step", "crash-1") == {"S1": 1, "S2": 1, "S3": 2, "S4": 1}
    assert pids(events, "step", "crash-1", "S1") == [first.pid]
    assert pids(events, "step", "crash-1", "S2") == [first.pid]
    assert pids(events, "step", "crash-1", "S3") == [first.pid, second.pid]
    assert pids(events, "step", "crash-1", "S4") == [second.pid]
    assert pids(events, "step_done", "crash-1", "S3") == [second.pid]
    assert runs(events, "comp", "crash-1") == {}
    # the replayed ctx.uuid() gave the second process the value the first one journaled
    assert {e["nonce"] for e in events if e["ev"] == "step"} == {before.steps[0].output}
    # the saga's output holds the step outputs: S1 and S2 replayed from the first process's run
    keys = {e["step"]: e["key"] for e in events if e["ev"] == "step_done"}
    assert after.output == {"keys": [keys["S1"], keys["S2"], keys["S3"], keys["S4"]]}


def test_sigkill_during_rollback_resumes_the_rollback(app: App) -> None:
    first = app.spawn(
        "start", "--saga", "rollback-1", json.dumps({"fail_at": 4}), "--block", "comp:S3"
    )
    app.wait_for(first, "the compensation of S3 to block", blocked("rollback-1", "comp", "S3"))
    # a compensation's entry commits behind the next compensation (the rollback waits for the
    # failure to be durable once): kill only once S4's undo, with COMPENSATING, is in the journal
    deadline = time.monotonic() + WAIT
    while app.snapshots("rollback-1")["rollback-1"].status != SagaStatus.COMPENSATING:
        assert time.monotonic() < deadline, "the rollback's first entry never committed"
        time.sleep(0.02)
    app.kill(first)

    before = app.snapshots("rollback-1")["rollback-1"]
    assert before.status == SagaStatus.COMPENSATING
    assert journal(before) == [
        (0, "uuid", "uuid", "completed"),
        (1, "step", "S1", "completed"),
        (2, "step", "S2", "completed"),
        (3, "step", "S3", "completed"),
        (4, "step", "S4", "failed"),
        (5, "compensation", "S4", "completed"),
    ]

    second = app.spawn("recover", "--wait", "rollback-1")
    summary = app.finish(second)
    assert summary["rollback-1"]["status"] == "COMPENSATED"

    after = app.snapshots("rollback-1")["rollback-1"]
    assert after.status == SagaStatus.COMPENSATED
    assert journal(after) == [
        *journal(before),
        (6, "compensation", "S3", "completed"),
        (7, "compensation", "S2", "completed"),
        (8, "compensation", "S1", "completed"),
    ]
    assert after.error is not None
    assert after.error["cause"]["type"] == "TerminalError"
    assert after.error["cause"]["step"] == "S4"

    events = app.events()
    assert runs(events, "step", "rollback-1") == {"S1": 1, "S2": 1, "S3": 1, "S4": 1}
    assert {e["pid"] for e in events if e["ev"] == "step"} == {first.pid}
    # the compensation that finished before the kill is not run again; the interrupted one is
    assert runs(events, "comp", "rollback-1") == {"S4": 1, "S3": 2, "S2": 1, "S1": 1}
    assert pids(events, "comp", "rollback-1", "S4") == [first.pid]
    assert pids(events, "comp", "rollback-1", "S3") == [first.pid, second.pid]
    assert pids(events, "comp", "rollback-1", "S2") == [second.pid]
    assert pids(events, "comp", "rollback-1", "S1") == [second.pid]
    # reverse order of registration, across both processes
    comps = [e for e in events if e["ev"] == "comp" and e["saga"] == "rollback-1"]
    assert [e["step"] for e in comps] == ["S4", "S3", "S3", "S2", "S1"]
    # the failed hybrid step is compensated with failed=True and its input; the others with
    # failed=False and the data their step returned (the same data before and after the crash)
    assert [e["failed"] for e in comps] == [True, False, False, False, False]
    nonce = before.steps[0].output
    assert comps[0]["data"] == {
        "saga": "rollback-1",
        "step": "S4",
        "nonce": nonce,
        "fail": True,
        "sleep": 0,
    }
    step_keys = {e["step"]: e["key"] for e in events if e["ev"] == "step"}
    for comp in comps[1:]:
        assert comp["data"] == {
            "saga": "rollback-1",
            "step": comp["step"],
            "key": step_keys[comp["step"]],
        }


# (fail_at, what the first process blocks in): every kind of in-flight state at the kill
SCENARIOS: list[tuple[int | None, str | None]] = [
    (None, "step:S1"),
    (None, "step:S3"),
    (None, "step:S4"),
    (4, "step:S4"),  # blocks in the step that will fail: the failure happens after recovery
    (4, "comp:S2"),
    (2, "comp:S1"),
    (None, None),  # not blocked: slow steps, killed wherever they are
    (3, None),
]


def test_sigkill_with_many_sagas_in_flight_recovers_every_one(app: App) -> None:
    sagas: dict[str, tuple[int | None, str | None]] = {
        f"many-{i:02d}": SCENARIOS[i % len(SCENARIOS)] for i in range(20)
    }
    args: list[str] = []
    for saga_id, (fail_at, block) in sagas.items():
        inp: dict[str, Any] = {"fail_at": fail_at}
        if block is None:
            inp["sleep"] = 0.15
        args += ["--saga", saga_id, json.dumps(inp)]
        if block is not None:
            args += ["--block", f"{block}@{saga_id}"]
    first = app.spawn("start", *args)

    def in_flight(events: list[dict[str, Any]]) -> bool:
        # every blocking saga blocks, and every slow one has got past its first step
        seen = {(e["saga"], f"{e['what']}:{e['step']}") for e in events if e["ev"] == "blocked"}
        done = {(e["saga"], e["step"]) for e in events if e["ev"] == "step_done"}
        return all(
            (s, b) in seen if b is not None else (s, "S1") in done for s, (_, b) in sagas.items()
        )

    app.wait_for(first, "every saga to be in flight", in_flight)
    app.kill(first)
    before = app.snapshots(*sagas)
    assert any(not snap.status.is_terminal for snap in before.values())

    second = app.spawn("recover", *[a for s in sagas for a in ("--wait", s)])
    summary = app.finish(second)
    after = app.snapshots(*sagas)
    events = app.events()

    for saga_id, (fail_at, block) in sagas.items():
        snap = after[saga_id]
        expected = SagaStatus.COMPLETED if fail_at is None else SagaStatus.COMPENSATED
        assert snap.status == expected, (saga_id, block, journal(snap))
        assert summary[saga_id]["status"] == str(expected)
        # the journal of a saga ended in one terminal state: the forward steps up to the failure,
        # then (only when it failed) one compensation per step, in reverse order
        forward = STEPS_FORWARD[: fail_at or 4]
        assert [s.name for s in snap.steps if s.kind == "step"] == forward, saga_id
        comps = [s.name for s in snap.steps if s.kind == "compensation"]
        assert comps == ([] if fail_at is None else forward[::-1]), saga_id
        assert all(s.status == "completed" for s in snap.steps if s.kind == "compensation")
        if fail_at is None:
            assert [s.status for s in snap.steps] == ["completed"] * 5
        else:
            assert [s for s in snap.steps if s.kind == "step"][fail_at - 1].status == "failed"

        # what was journaled before the kill ran exactly once, in the first process; what was
        # not journaled ran once more in the second process
        journaled = {(s.kind, s.name) for s in before[saga_id].steps}
        for entry in snap.steps:
            if entry.kind not in ("step", "compensation"):
                continue
            ev = "step" if entry.kind == "step" else "comp"
            who = pids(events, ev, saga_id, entry.name)
            if (entry.kind, entry.name) in journaled:
                assert who == [first.pid], (saga_id, entry.kind, entry.name, who)
            else:
                assert who in ([second.pid], [first.pid, second.pid]), (
                    saga_id,
                    entry.kind,
                    entry.name,
                    who,
                )
        # the saga's journaled uuid is what every step got, in both processes
        assert snap.steps[0].kind == "uuid"
        nonces = {e["nonce"] for e in events if e["ev"] == "step" and e["saga"] == saga_id}
        assert nonces == {snap.steps[0].output}, saga_id
        # nothing ran that the journal does not show
        assert set(runs(events, "step", saga_id)) == set(forward)
        assert set(runs(events, "comp", saga_id)) == set(comps)

    # the blocked ones were all caught in flight, so the second process really recovered them
    for saga_id, (_, block) in sagas.items():
        if block is not None:
            assert not before[saga_id].status.is_terminal, saga_id
    # and no other saga appeared, none is left behind
    everything = app.all_sagas()
    assert sorted(s.saga_id for s in everything) == sorted(sagas)
    assert all(s.status.is_terminal for s in everything)


def test_step_key_is_stable_across_retries_and_recoveries(app: App) -> None:
    # first process: S2 fails its first attempt (retryable), blocks in its second; killed
    first = app.spawn("start", "--saga", "keys-1", "{}", "--flaky", "S2", "--block", "step:S2")
    app.wait_for(first, "S2 to block", blocked("keys-1", "step", "S2"))
    app.kill(first)
    # second process: recovers, finishes S2, blocks in S3; killed as well
    second = app.spawn("recover", "--wait", "keys-1", "--block", "step:S3")
    app.wait_for(second, "S3 to block", blocked("keys-1", "step", "S3"))
    app.kill(second)
    # third process: finishes the saga
    third = app.spawn("recover", "--wait", "keys-1")
    assert app.finish(third)["keys-1"]["status"] == "COMPLETED"

    events = [e for e in app.events() if e["ev"] == "step" and e["saga"] == "keys-1"]
    by_step: dict[str, list[tuple[int, int, str]]] = {}
    for e in events:
        by_step.setdefault(e["step"], []).append((e["pid"], e["attempt"], e["key"]))
    s2_key = by_step["S2"][0][2]
    assert by_step["S2"] == [
        (first.pid, 1, s2_key),
        (first.pid, 2, s2_key),
        (second.pid, 1, s2_key),
    ]
    s3_key = by_step["S3"][0][2]
    assert by_step["S3"] == [(second.pid, 1, s3_key), (third.pid, 1, s3_key)]
    assert [p for p, _, _ in by_step["S1"]] == [first.pid]
    assert [p for p, _, _ in by_step["S4"]] == [third.pid]
    # each step has its own key
    keys = [by_step[name][0][2] for name in STEPS_FORWARD]
    assert len(set(keys)) == 4

    snap = app.snapshots("keys-1")["keys-1"]
    assert snap.status == SagaStatus.COMPLETED
    # the results recorded by three processes carry the keys each step saw
    assert [s.output["key"] for s in snap.steps if s.kind == "step"] == keys
    assert snap.output == {"keys": keys}


def test_a_live_owner_keeps_its_saga_until_it_is_killed(app: App) -> None:
    # a step that runs for several leases: its owner renews the lease, so a second process that
    # polls the whole time takes nothing over, until the owner dies
    first = app.spawn("start", "--saga", "slow-1", "{}", "--block", "step:S2")
    app.wait_for(first, "S2 to block", blocked("slow-1", "step", "S2"))
    second = app.spawn("recover", "--wait", "slow-1")
    app.wait_for(
        second,
        "the second engine to be up",
        lambda events: any(e["ev"] == "up" and e["pid"] == second.pid for e in events),
    )
    deadline = time.monotonic() + 3.0  # three leases of one second
    while time.monotonic() < deadline:
        assert first.poll() is None, app.describe(first)
        assert second.poll() is None, app.describe(second)
        owner = app.snapshots("slow-1")["slow-1"].owner
        assert owner is not None and f":{first.pid}:" in owner, owner
        time.sleep(0.1)
    assert [e["ev"] for e in app.events() if e["pid"] == second.pid] == ["up"]

    app.kill(first)
    assert app.finish(second)["slow-1"]["status"] == "COMPLETED"
    events = app.events()
    assert pids(events, "step", "slow-1", "S1") == [first.pid]
    assert pids(events, "step", "slow-1", "S2") == [first.pid, second.pid]
    assert pids(events, "step", "slow-1", "S3") == [second.pid]
    assert pids(events, "step", "slow-1", "S4") == [second.pid]
