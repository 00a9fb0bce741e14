"""Cancelling a saga with children (``engine.admin.cancel``), each checked on every store kind.

Cancel stops the saga itself without rollback; its children (``saga.start_child``) that have not
ended, and theirs, are rolled back top-down as by ``compensate``: each ends COMPENSATED with its
completed steps compensated once, newest first, and an audit entry naming the cancelled saga,
who and why. A child that ended first is left as it is. The races (a child completing, moving on
or being started while its parent is cancelled) are driven step by step through a store whose
calls the test can hold (``HeldStore``), never by sleeps. A worker that the test wants to keep
from taking a saga is an engine opened with ``worker=False``; the operator is another such
engine on the same database (another "process", like the CLI). The SIGKILL of a canceller is at
the end (tests/cancel_crash_app.py is the process killed).

Steps and workflows are defined inside each test, so that their logs belong to that test alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    Engine,
    SagaCancelledError,
    SagaCompensatedError,
    SagaContext,
    SagaSnapshot,
    SagaStatus,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)
from sagakit.engine.cascade import WAKE_PREFIX
from sagakit.stores import open_store
from sagakit.stores.base import (
    AdminChange,
    CreateResult,
    Delivery,
    EventKind,
    NewSaga,
    SagaFilter,
    SagaRecord,
    SagaUpdate,
    Store,
)
from tests.conftest import engine_with, fast_retry, make_engine
from tests.processes import REPO
from tests.test_cli import sagakit
from tests.waiting import STILL, WAIT, Gate, eventually, within
from tests.wrapped_store import WrappedStore

# -- helpers ----------------------------------------------------------------------------------


class Ledger:
    """Hybrid steps (called with their saga's id) that log ``("run", saga, name)`` when their
    body runs and ``("undo", saga, name)`` when their compensation runs. A step in ``gates`` is
    held in its body (first run only), a compensation in ``undo_gates`` before it ends;
    ``failing`` steps raise a retried error (they park with ``park=True``), ``terminal`` ones
    fail for good."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.gates: dict[str, Gate] = {}
        self.undo_gates: dict[str, Gate] = {}
        self.failing: set[str] = set()
        self.terminal: set[str] = set()

    def step(self, name: str, *, park: bool = False, strict: bool = False) -> Any:
        async def undo(data: Any, failed: bool) -> None:
            # a step's output names its saga; a step that failed is undone with its input
            saga = data["saga"] if isinstance(data, dict) else str(data)
            self.events.append(("undo", saga, name))
            gate = self.undo_gates.get(name)
            if gate is not None and not gate.opened.is_set():
                await gate.hold()

        decorate = saga_step_strict if strict else saga_step

        @decorate(
            name,
            compensate=undo,
            retry=fast_retry(2),
            compensation_retry=fast_retry(2),
            on_exhausted="park" if park else "compensate",
        )
        async def run(ctx: SagaContext, inp: Any) -> Any:
            self.events.append(("run", ctx.saga_id, name))
            gate = self.gates.get(name)
            if gate is not None and not gate.opened.is_set():
                await gate.hold()
            if name in self.terminal:
                raise TerminalError(f"{name} fails for good")
            if name in self.failing:
                raise RuntimeError(f"{name} is down")
            return {"saga": ctx.saga_id}

        return run

    def ran(self, name: str) -> int:
        return sum(1 for e in self.events if e[0] == "run" and e[2] == name)

    def undone(self) -> list[tuple[str, str]]:
        return [(saga, name) for kind, saga, name in self.events if kind == "undo"]


async def reaches(engine: Engine, saga_id: str, status: SagaStatus) -> SagaSnapshot:
    """Wait until the saga has ``status`` in the store and no task of this engine runs it."""
    found: list[SagaSnapshot] = []

    async def check() -> bool:
        if await engine._store_or_raise().load_saga(saga_id) is None:
            return False  # not started yet
        snap = await engine.admin.get_saga(saga_id)
        if snap.status == status and saga_id not in engine._tasks:
            found.append(snap)
            return True
        return False

    await eventually(check, f"saga {saga_id!r} to be {status}")
    return found[-1]


async def stays(engine: Engine, saga_id: str, status: SagaStatus) -> SagaSnapshot:
    """The saga is in ``status`` now, and still is a while later."""
    await reaches(engine, saga_id, status)
    await asyncio.sleep(STILL)
    return await reaches(engine, saga_id, status)


async def status_of(engine: Engine, saga_id: str) -> SagaStatus:
    return (await engine.admin.get_saga(saga_id)).status


def rows(snap: SagaSnapshot) -> list[tuple[str, str, str]]:
    return [(s.kind, s.name, s.status) for s in snap.steps]


@asynccontextmanager
async def operator(url: str, store: Store | None = None) -> AsyncIterator[Engine]:
    """The operator's engine: another "process" on the same database that runs nothing."""
    async with make_engine(url, worker=False, store=store) as engine:
        yield engine


async def run_ends(engine: Engine, saga_id: str) -> None:
    """Wait until no run of the saga is left in this engine."""

    async def check() -> bool:
        return saga_id not in engine._tasks

    await eventually(check, f"the run of {saga_id!r} to stop")


class Hold:
    """A point where a store call waits until the test lets it go; it tells the test when the
    call got there."""

    def __init__(self, then: Callable[[], Awaitable[None]] | None = None) -> None:
        self.gate = Gate()
        #: run when the call gets there, before it waits
        self.then = then

    async def hold(self) -> None:
        if self.then is not None:
            await self.then()
        await self.gate.hold()

    async def reached(self) -> None:
        await self.gate.reached()

    def release(self) -> None:
        self.gate.opened.set()


class HeldStore(WrappedStore):
    """A real store whose calls the test can hold, once each: ``administer`` of a saga (before
    it is made), a child's outcome told to its parent (before or after it is delivered, by the
    child's id) and the creation of a saga (before it is made)."""

    def __init__(self, inner: Store):
        super().__init__(inner)
        self.before_administer: dict[str, Hold] = {}
        self.before_outcome: dict[str, Hold] = {}
        self.after_outcome: dict[str, Hold] = {}
        self.before_create: dict[str, Hold] = {}

    async def administer(self, change: AdminChange) -> SagaRecord | None:
        hold = self.before_administer.pop(change.saga_id, None)
        if hold is not None:
            await hold.hold()
        return await self.inner.administer(change)

    async def deliver(self, saga_id: str, kind: str, name: str, payload: str, **kw: Any) -> Any:
        outcome = kind == EventKind.CHILD
        hold = self.before_outcome.pop(name, None) if outcome else None
        if hold is not None:
            await hold.hold()
        delivery: Delivery = await self.inner.deliver(saga_id, kind, name, payload, **kw)
        hold = self.after_outcome.pop(name, None) if outcome else None
        if hold is not None:
            await hold.hold()
        return delivery

    async def create_saga(self, new: NewSaga) -> CreateResult:
        hold = self.before_create.pop(new.saga_id, None)
        if hold is not None:
            await hold.hold()
        return await self.inner.create_saga(new)


def held(url: str) -> HeldStore:
    return HeldStore(open_store(url))


def child_audit(snap: SagaSnapshot) -> tuple[str, str | None, str | None, dict[str, Any]]:
    (entry,) = snap.audit
    return entry.action, entry.by, entry.reason, entry.details


# -- finding children ---------------------------------------------------------------------------


async def test_list_sagas_finds_the_children_of_a_saga(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    try:
        for saga_id, parent_id in [
            ("a", None),
            ("a/1", "a"),
            ("b", None),
            ("a/2", "a"),
            ("a/2/1", "a/2"),
            ("a/3", "a"),
        ]:
            await store.create_saga(NewSaga(saga_id, "W", "null", None, 30.0, parent_id=parent_id))
        await store.append("a/3", 1, None, SagaUpdate(SagaStatus.COMPLETED.value, output="1"))

        async def ids(limit: int = 50, **where: Any) -> list[str]:
            return [r.saga_id for r in await store.list_sagas(SagaFilter(**where), limit)]

        assert await ids(parent_id="a") == ["a/3", "a/2", "a/1"]  # newest first
        assert await ids(parent_id="a/2") == ["a/2/1"]
        assert await ids(parent_id="b") == []
        assert await ids(parent_id="a", status="PENDING") == ["a/2", "a/1"]
        first = await store.list_sagas(SagaFilter(parent_id="a"), 2)
        after = (first[-1].created_at, first[-1].saga_id)
        assert await ids(parent_id="a", after=after) == ["a/1"]
        assert len(await ids()) == 6  # no parent_id: every saga, as before
    finally:
        await store.close()


# -- the policy -------------------------------------------------------------------------------


async def test_cancelling_a_parent_rolls_back_its_suspended_child(store_url: str) -> None:
    log = Ledger()
    pa, ca, cb = log.step("PA"), log.step("CA"), log.step("CB")

    @saga_workflow("WaitingChild")
    async def child(saga: SagaContext, inp: Any) -> str:
        await ca(saga, saga.saga_id)
        await cb(saga, saga.saga_id)
        await saga.wait_for_signal("approved")
        return "child-out"

    @saga_workflow("WaitingParent")
    async def parent(saga: SagaContext, inp: Any) -> str:
        await pa(saga, saga.saga_id)
        handle = await saga.start_child(child, None)
        out: str = await handle.result()
        return out

    async with engine_with(store_url, parent, child) as engine:
        handle = await engine.start(parent, None, saga_id="p1")
        await reaches(engine, "p1/child-1", SagaStatus.SUSPENDED)
        await reaches(engine, "p1", SagaStatus.SUSPENDED)

        snap = await engine.admin.cancel("p1", "order withdrawn", by="dave")
        assert snap.status == SagaStatus.CANCELLED
        with pytest.raises(SagaCancelledError, match="order withdrawn"):
            await handle.result(timeout=WAIT)

        done = await stays(engine, "p1/child-1", SagaStatus.COMPENSATED)
        # the child's completed steps, each undone once, newest first; the parent's kept
        assert log.undone() == [("p1/child-1", "CB"), ("p1/child-1", "CA")]
        assert rows(done) == [
            ("step", "CA", "completed"),
            ("step", "CB", "completed"),
            ("signal", "approved", "running"),
            ("compensation", "CB", "completed"),
            ("compensation", "CA", "completed"),
        ]
        action, by, reason, details = child_audit(done)
        assert (action, by) == ("compensate", "dave")
        assert reason == "its parent saga 'p1' was cancelled: order withdrawn"
        assert details["cancelled"] == {"saga": "p1", "by": "dave", "reason": "order withdrawn"}
        assert details["parent"] == "p1"
        assert done.error is not None and done.error["cause"]["type"] == "ParentCancelled"
        with pytest.raises(SagaCompensatedError) as caught:
            await engine.handle("p1/child-1").result(timeout=WAIT)
        assert caught.value.cause_type == "ParentCancelled"
        assert "its parent saga 'p1' was cancelled by dave: order withdrawn" in str(caught.value)

        cancelled = await stays(engine, "p1", SagaStatus.CANCELLED)
        assert [(a.action, a.by, a.reason) for a in cancelled.audit] == [
            ("cancel", "dave", "order withdrawn"),
            ("roll_back_children", "dave", "order withdrawn"),
        ]
        assert cancelled.audit[0].details == {}
        assert cancelled.audit[1].details == {"rolled_back": ["p1/child-1"]}
        assert rows(cancelled) == [
            ("step", "PA", "completed"),
            ("child", "WaitingChild", "completed"),
            ("child_result", "p1/child-1", "running"),
        ]
        assert log.ran("PA") == log.ran("CA") == log.ran("CB") == 1


async def test_grandchildren_are_stopped_top_down_and_rolled_back(store_url: str) -> None:
    log = Ledger()
    pa, ma, la = log.step("PA"), log.step("MA"), log.step("LA")

    @saga_workflow("Leaf")
    async def leaf(saga: SagaContext, inp: Any) -> str:
        await la(saga, saga.saga_id)
        await saga.wait_for_signal("never")
        return "leaf"

    @saga_workflow("Middle")
    async def middle(saga: SagaContext, inp: Any) -> str:
        await ma(saga, saga.saga_id)
        out: str = await (await saga.start_child(leaf, None)).result()
        return out

    @saga_workflow("Top")
    async def top(saga: SagaContext, inp: Any) -> str:
        await pa(saga, saga.saga_id)
        out: str = await (await saga.start_child(middle, None)).result()
        return out

    mid, low = "g1/child-1", "g1/child-1/child-1"
    async with engine_with(store_url, top, middle, leaf) as engine:
        await engine.start(top, None, saga_id="g1")
        for saga_id in (low, mid, "g1"):
            await reaches(engine, saga_id, SagaStatus.SUSPENDED)
        await engine.admin.cancel("g1", "duplicate", by="erin")

        low_done = await stays(engine, low, SagaStatus.COMPENSATED)
        mid_done = await stays(engine, mid, SagaStatus.COMPENSATED)
        assert sorted(log.undone()) == sorted([(mid, "MA"), (low, "LA")])
        assert len(log.undone()) == 2
        # the middle saga was stopped before its child was looked at
        assert mid_done.audit[0].at <= low_done.audit[0].at
        _, by, reason, details = child_audit(low_done)
        assert by == "erin"
        assert reason == "its ancestor saga 'g1' was cancelled: duplicate"
        assert details["parent"] == mid
        assert low_done.error is not None
        assert "an ancestor, saga 'g1' was cancelled by erin" in low_done.error["cause"]["message"]
        assert child_audit(mid_done)[2] == "its parent saga 'g1' was cancelled: duplicate"

        cancelled = await stays(engine, "g1", SagaStatus.CANCELLED)
        assert cancelled.audit[-1].details == {"rolled_back": [mid, low]}
        assert log.undone().count((mid, "MA")) == 1 and ("g1", "PA") not in log.undone()


async def test_a_parked_child_is_rolled_back_with_its_parked_step(store_url: str) -> None:
    log = Ledger()
    ca, cb = log.step("CA"), log.step("CB", park=True)
    log.failing.add("CB")

    @saga_workflow("ParkedChild")
    async def child(saga: SagaContext, inp: Any) -> str:
        await ca(saga, saga.saga_id)
        await cb(saga, saga.saga_id)
        return "child"

    @saga_workflow("ParkedParent")
    async def parent(saga: SagaContext, inp: Any) -> str:
        out: str = await (await saga.start_child(child, None)).result()
        return out

    async with engine_with(store_url, parent, child) as engine:
        await engine.start(parent, None, saga_id="k1")
        await reaches(engine, "k1/child-0", SagaStatus.PARKED)
        await engine.admin.cancel("k1", "not needed", by="fay")
        done = await stays(engine, "k1/child-0", SagaStatus.COMPENSATED)
        # as with compensate: the parked hybrid step may have done part of its work: undone too
        assert log.undone() == [("k1/child-0", "CB"), ("k1/child-0", "CA")]
        assert log.ran("CB") == 2  # its two attempts before it parked; none after
        assert child_audit(done)[3]["previous_status"] == SagaStatus.PARKED


@pytest.mark.parametrize("canceller", ["another process", "the same engine"])
async def test_a_child_inside_a_step_stops_and_that_step_is_not_recorded(
    shared_store_url: str, canceller: str
) -> None:
    """The child's worker is inside CB's body when the parent is cancelled: CB's result is never
    recorded, the rollback undoes what was recorded (CA). CB is a hybrid step that had no
    RUNNING marker (its first attempt in a worker that did not die), so nothing tells the
    rollback it began: it is not compensated (see docs/reliability.md)."""
    log = Ledger()
    ca, cb, cc = log.step("CA"), log.step("CB"), log.step("CC")
    log.gates["CB"] = Gate()

    @saga_workflow("BusyChild")
    async def child(saga: SagaContext, inp: Any) -> str:
        await ca(saga, saga.saga_id)
        await cb(saga, saga.saga_id)
        await cc(saga, saga.saga_id)
        return "child"

    @saga_workflow("BusyParent")
    async def parent(saga: SagaContext, inp: Any) -> str:
        out: str = await (await saga.start_child(child, None)).result()
        return out

    # the runner takes nothing by itself: the test says when the rollback may run
    async with (
        engine_with(shared_store_url, parent, child, worker=False) as runner,
        operator(shared_store_url) as ops,
    ):
        await runner.start(parent, None, saga_id="b1")
        await log.gates["CB"].reached()
        await reaches(runner, "b1", SagaStatus.SUSPENDED)
        assert await status_of(runner, "b1/child-0") == SagaStatus.RUNNING

        admin = ops.admin if canceller == "another process" else runner.admin
        await admin.cancel("b1", "stop everything", by="gus")
        assert await status_of(runner, "b1/child-0") == SagaStatus.COMPENSATING
        if canceller == "the same engine":
            await run_ends(runner, "b1/child-0")  # its run here was stopped in CB's body
        log.gates["CB"].opened.set()  # CB's body ends (if it still runs)
        await run_ends(runner, "b1/child-0")
        stopped = await runner.admin.get_saga("b1/child-0")
        assert stopped.status == SagaStatus.COMPENSATING
        assert rows(stopped) == [("step", "CA", "completed")]  # CB's result was not recorded

        await within(runner.recover(wait=True))
        done = await stays(runner, "b1/child-0", SagaStatus.COMPENSATED)
        assert rows(done) == [("step", "CA", "completed"), ("compensation", "CA", "completed")]
        assert log.undone() == [("b1/child-0", "CA")]
        assert log.ran("CB") == 1 and log.ran("CC") == 0
        assert child_audit(done)[3]["previous_status"] == SagaStatus.RUNNING


async def test_a_child_already_rolling_back_finishes_its_own_rollback(store_url: str) -> None:
    """A child COMPENSATING for its own failure is doing what the cancel would make it do: it
    is left to finish, and the compensation it is in runs once. (In its first compensation a
    saga still shows RUNNING; a cancel then stops it like any running child.)"""
    log = Ledger()
    ca, cb, cc = log.step("CA"), log.step("CB"), log.step("CC", strict=True)
    log.terminal.add("CC")
    log.undo_gates["CA"] = Gate()

    @saga_workflow("FailingChild")
    async def child(saga: SagaContext, inp: Any) -> str:
        await ca(saga, saga.saga_id)
        await cb(saga, saga.saga_id)
        await cc(saga, saga.saga_id)
        return "child"

    @saga_workflow("PatientParent")
    async def parent(saga: SagaContext, inp: Any) -> str:
        handle = await saga.start_child(child, None)
        await saga.wait_for_signal("never")
        out: str = await handle.result()
        return out

    async with engine_with(store_url, parent, child) as engine:
        await engine.start(parent, None, saga_id="f1")
        await log.undo_gates["CA"].reached()  # CB is undone (journaled), CA's undo under way
        assert await status_of(engine, "f1/child-0") == SagaStatus.COMPENSATING
        await reaches(engine, "f1", SagaStatus.SUSPENDED)
        snap = await engine.admin.cancel("f1", "give up", by="hal")
        assert snap.audit[-1].details == {"rolling_back": ["f1/child-0"]}
        log.undo_gates["CA"].opened.set()
        done = await stays(engine, "f1/child-0", SagaStatus.COMPENSATED)
        assert log.undone() == [("f1/child-0", "CB"), ("f1/child-0", "CA")]
        assert done.audit == ()
        assert done.error is not None and done.error["cause"]["type"] == "TerminalError"


async def test_a_finished_child_is_left_as_it_is(store_url: str) -> None:
    log = Ledger()
    ca = log.step("CA")

    @saga_workflow("QuickChild")
    async def child(saga: SagaContext, inp: Any) -> str:
        await ca(saga, saga.saga_id)
        return "child"

    @saga_workflow("SlowParent")
    async def parent(saga: SagaContext, inp: Any) -> str:
        out: str = await (await saga.start_child(child, None)).result()
        await saga.wait_for_signal("never")
        return out

    async with engine_with(store_url, parent, child) as engine:
        await engine.start(parent, None, saga_id="q1")
        await reaches(engine, "q1/child-0", SagaStatus.COMPLETED)
        await reaches(engine, "q1", SagaStatus.SUSPENDED)
        snap = await engine.admin.cancel("q1", "too late for the child", by="ida")
        # cancel is "stop without rollback": what the saga's children finished stays done
        assert [a.action for a in snap.audit] == ["cancel"]
        assert snap.audit[0].details == {}
        await stays(engine, "q1/child-0", SagaStatus.COMPLETED)
        assert log.undone() == []


async def test_cancel_of_a_saga_without_children_is_unchanged(store_url: str) -> None:
    log = Ledger()
    a = log.step("A")

    @saga_workflow("Lonely")
    async def lonely(saga: SagaContext, inp: Any) -> str:
        await a(saga, saga.saga_id)
        await saga.wait_for_signal("never")
        return "done"

    async with engine_with(store_url, lonely) as engine:
        await engine.start(lonely, None, saga_id="n1")
        await reaches(engine, "n1", SagaStatus.SUSPENDED)
        snap = await engine.admin.cancel("n1", "not wanted", by="jo")
        assert snap.status == SagaStatus.CANCELLED
        (audit,) = snap.audit
        assert (audit.action, audit.by, audit.reason, audit.details) == (
            "cancel",
            "jo",
            "not wanted",
            {},
        )
        await stays(engine, "n1", SagaStatus.CANCELLED)
        assert log.undone() == []
        assert await engine._store_or_raise().load_events("n1") == []


# -- races --------------------------------------------------------------------------------------


def reporting_child(log: Ledger) -> Any:
    ca = log.step("CA")

    @saga_workflow("ReportingChild")
    async def child(saga: SagaContext, inp: Any) -> str:
        await ca(saga, saga.saga_id)
        return "child-out"

    return child


async def start_and_let_the_child_finish(
    runner: Engine, parent: Any, log: Ledger, saga_id: str
) -> None:
    """Start the parent; once it waits SUSPENDED for its child, let the child finish CA (and so
    report to its parent, which nobody then runs: ``runner`` takes no saga by itself)."""
    log.gates["CA"] = Gate()
    await runner.start(parent, None, saga_id=saga_id)
    await log.gates["CA"].reached()
    await reaches(runner, saga_id, SagaStatus.SUSPENDED)
    log.gates["CA"].opened.set()


def waiting_parent(log: Ledger, child: Any) -> Any:
    pb = log.step("PB")

    @saga_workflow("RacedParent")
    async def parent(saga: SagaContext, inp: Any) -> str:
        out: str = await (await saga.start_child(child, None)).result()
        await pb(saga, saga.saga_id)
        return out

    return parent


async def test_a_child_that_told_its_parent_is_still_rolled_back_if_it_had_not_ended(
    shared_store_url: str,
) -> None:
    """The child has delivered "COMPLETED" to its parent and not yet recorded it when the
    parent is cancelled: the walk stops it, its own end is refused, and it is rolled back."""
    log = Ledger()
    child = reporting_child(log)
    parent = waiting_parent(log, child)
    store = held(shared_store_url)
    told = store.after_outcome["r1/child-0"] = Hold()
    async with (
        make_engine(shared_store_url, store=store, worker=False) as runner,
        operator(shared_store_url) as ops,
    ):
        runner.register(parent, child)
        await start_and_let_the_child_finish(runner, parent, log, "r1")
        await told.reached()
        assert await status_of(ops, "r1/child-0") == SagaStatus.RUNNING

        snap = await within(ops.admin.cancel("r1", "raced", by="kim"))
        assert snap.audit[-1].details == {"rolled_back": ["r1/child-0"]}
        told.release()  # the child now records that it completed: refused, its fence is stale
        await run_ends(runner, "r1/child-0")
        assert await status_of(ops, "r1/child-0") == SagaStatus.COMPENSATING

        await within(runner.recover(wait=True))
        await stays(runner, "r1/child-0", SagaStatus.COMPENSATED)
        await stays(runner, "r1", SagaStatus.CANCELLED)
        assert log.undone() == [("r1/child-0", "CA")]
        assert log.ran("PB") == 0
        # the parent got the child's word that it completed; being cancelled, it never reads it
        events = await runner._store_or_raise().load_events("r1")
        assert [(e.kind, e.name) for e in events] == [(EventKind.CHILD, "r1/child-0")]


async def test_a_child_that_records_its_end_first_is_left_completed(
    shared_store_url: str,
) -> None:
    """The walk saw the child RUNNING; before its rollback is made the child records that it
    completed: the rollback is refused, the walk looks again and leaves the child COMPLETED,
    and the cancel succeeds."""
    log = Ledger()
    child = reporting_child(log)
    parent = waiting_parent(log, child)
    store, ops_store = held(shared_store_url), held(shared_store_url)
    told = store.after_outcome["c1/child-0"] = Hold()
    looked = ops_store.before_administer["c1/child-0"] = Hold()  # the walk's rollback of it
    async with (
        make_engine(shared_store_url, store=store, worker=False) as runner,
        operator(shared_store_url, ops_store) as ops,
    ):
        runner.register(parent, child)
        await start_and_let_the_child_finish(runner, parent, log, "c1")
        await told.reached()

        cancelling = asyncio.create_task(ops.admin.cancel("c1", "raced", by="lee"))
        await looked.reached()  # the parent is CANCELLED; the walk is about to stop the child
        assert await status_of(runner, "c1") == SagaStatus.CANCELLED
        told.release()
        await reaches(runner, "c1/child-0", SagaStatus.COMPLETED)
        looked.release()
        snap = await within(cancelling)

        assert snap.status == SagaStatus.CANCELLED
        assert snap.audit[-1].details == {"ended": {"c1/child-0": "COMPLETED"}}
        await stays(runner, "c1/child-0", SagaStatus.COMPLETED)
        assert log.undone() == []
        assert (await runner.admin.get_saga("c1/child-0")).audit == ()


async def test_a_child_about_to_report_rolls_itself_back_under_a_cancelled_parent(
    shared_store_url: str,
) -> None:
    """The child is about to tell its parent it completed when the parent is cancelled, and the
    canceller has not reached it yet: the child learns from the delivery that its parent was
    cancelled and rolls itself back; the canceller then finds it rolling back already."""
    log = Ledger()
    child = reporting_child(log)
    parent = waiting_parent(log, child)
    store, ops_store = held(shared_store_url), held(shared_store_url)
    telling = store.before_outcome["s1/child-0"] = Hold()
    looked = ops_store.before_administer["s1/child-0"] = Hold()
    async with (
        make_engine(shared_store_url, store=store, worker=False) as runner,
        operator(shared_store_url, ops_store) as ops,
    ):
        runner.register(parent, child)
        await start_and_let_the_child_finish(runner, parent, log, "s1")
        await telling.reached()

        cancelling = asyncio.create_task(ops.admin.cancel("s1", "raced", by="max"))
        await looked.reached()
        telling.release()  # the delivery finds the parent CANCELLED
        await run_ends(runner, "s1/child-0")
        stopped = await runner.admin.get_saga("s1/child-0")
        assert stopped.status == SagaStatus.COMPENSATING
        assert child_audit(stopped)[:3] == (
            "compensate",
            "max",
            "its parent saga 's1' was cancelled: raced",
        )
        looked.release()
        snap = await within(cancelling)
        # rolled back for this cancel, if not by the canceller
        assert snap.audit[-1].details == {"rolled_back": ["s1/child-0"]}

        await within(runner.recover(wait=True))
        await stays(runner, "s1/child-0", SagaStatus.COMPENSATED)
        assert log.undone() == [("s1/child-0", "CA")]
        # the child never delivered "COMPLETED": the cancelled parent took nothing
        assert await runner._store_or_raise().load_events("s1") == []


async def test_a_child_that_moved_on_is_rolled_back_from_where_it_is(store_url: str) -> None:
    """Between the walk's look (SUSPENDED) and its rollback, a worker claims the child (RUNNING,
    new fence): the rollback is refused, the walk looks again and rolls it back from there.
    No SagaConflictError reaches the operator."""
    log = Ledger()
    ca = log.step("CA")

    @saga_workflow("ClaimedChild")
    async def child(saga: SagaContext, inp: Any) -> str:
        await ca(saga, saga.saga_id)
        await saga.wait_for_signal("never")
        return "child"

    @saga_workflow("ClaimedParent")
    async def parent(saga: SagaContext, inp: Any) -> str:
        out: str = await (await saga.start_child(child, None)).result()
        return out

    store = held(store_url)

    async def another_worker_claims() -> None:
        claimed = await store.inner.claim("another-worker", ["ClaimedChild"], 60.0, 10)
        assert [c.record.saga_id for c in claimed] == ["m1/child-0"]

    store.before_administer["m1/child-0"] = Hold(then=another_worker_claims)
    store.before_administer["m1/child-0"].release()
    async with make_engine(store_url, store=store, worker=False) as engine:
        engine.register(parent, child)
        await engine.start(parent, None, saga_id="m1")
        await reaches(engine, "m1/child-0", SagaStatus.SUSPENDED)
        await reaches(engine, "m1", SagaStatus.SUSPENDED)
        snap = await within(engine.admin.cancel("m1", "moved", by="ned"))
        assert snap.audit[-1].details == {"rolled_back": ["m1/child-0"]}
        stopped = await engine.admin.get_saga("m1/child-0")
        assert stopped.status == SagaStatus.COMPENSATING
        assert child_audit(stopped)[3]["previous_status"] == SagaStatus.RUNNING
        await within(engine.recover(wait=True))
        await stays(engine, "m1/child-0", SagaStatus.COMPENSATED)
        assert log.undone() == [("m1/child-0", "CA")]


async def test_a_parent_woken_by_its_child_during_the_cancel_is_still_cancelled(
    shared_store_url: str,
) -> None:
    """The child's outcome wakes the parent, and a worker takes it, while the cancel is being
    made: the cancel looks again and is made; the cancel never fails because a child raced it.
    The child had recorded its end: it stays COMPLETED."""
    log = Ledger()
    child = reporting_child(log)
    parent = waiting_parent(log, child)
    log.gates["PB"] = Gate()
    log.gates["CA"] = Gate()

    async def the_child_finishes_and_the_parent_goes_on() -> None:
        log.gates["CA"].opened.set()
        await log.gates["PB"].reached()  # the parent took the outcome and went on

    ops_store = held(shared_store_url)
    ops_store.before_administer["w1"] = Hold(then=the_child_finishes_and_the_parent_goes_on)
    ops_store.before_administer["w1"].release()
    async with (
        engine_with(shared_store_url, parent, child) as worker,
        operator(shared_store_url, ops_store) as ops,
    ):
        await worker.start(parent, None, saga_id="w1")
        await log.gates["CA"].reached()
        await reaches(worker, "w1", SagaStatus.SUSPENDED)

        snap = await within(ops.admin.cancel("w1", "raced", by="ola"))
        assert snap.status == SagaStatus.CANCELLED
        assert [a.action for a in snap.audit] == ["cancel"]
        log.gates["PB"].opened.set()
        await stays(worker, "w1", SagaStatus.CANCELLED)
        await stays(worker, "w1/child-0", SagaStatus.COMPLETED)
        assert log.undone() == []
        assert [s.name for s in (await ops.admin.get_saga("w1")).steps] == [
            "ReportingChild",
            "w1/child-0",
        ]  # PB's result was not recorded


async def test_a_child_started_as_its_parent_is_cancelled_rolls_itself_back(
    shared_store_url: str,
) -> None:
    """The parent's run creates a child after the cancel's walk looked for children (the run,
    in another worker, does not know yet that it was fenced out): the child finds its parent
    cancelled as soon as it runs, and rolls back before any of its steps."""
    log = Ledger()
    pa, ca = log.step("PA"), log.step("CA")

    @saga_workflow("LateChild")
    async def child(saga: SagaContext, inp: Any) -> str:
        await ca(saga, saga.saga_id)
        return "child"

    @saga_workflow("LateParent")
    async def parent(saga: SagaContext, inp: Any) -> str:
        await pa(saga, saga.saga_id)
        out: str = await (await saga.start_child(child, None)).result()
        return out

    store = held(shared_store_url)
    creating = store.before_create["l1/child-1"] = Hold()
    async with (
        make_engine(shared_store_url, store=store) as worker,
        operator(shared_store_url) as ops,
    ):
        worker.register(parent, child)
        await worker.start(parent, None, saga_id="l1")
        await creating.reached()  # PA is journaled; the child is about to be created
        snap = await within(ops.admin.cancel("l1", "late", by="pat"))
        assert [a.action for a in snap.audit] == ["cancel"]  # no child existed yet
        creating.release()

        done = await stays(worker, "l1/child-1", SagaStatus.COMPENSATED)
        assert log.ran("CA") == 0 and log.undone() == []
        action, by, reason, details = child_audit(done)
        assert (action, by, reason) == (
            "compensate",
            "pat",
            "its parent saga 'l1' was cancelled: late",
        )
        assert details["parent"] == "l1"
        await stays(worker, "l1", SagaStatus.CANCELLED)
        assert rows(await ops.admin.get_saga("l1")) == [("step", "PA", "completed")]


# -- the command line ---------------------------------------------------------------------------


@saga_workflow("CliChild")
async def cli_child(saga: SagaContext, inp: Any) -> str:
    await saga.wait_for_signal("never")
    return "child"


@saga_workflow("CliParent")
async def cli_parent(saga: SagaContext, inp: Any) -> str:
    out: str = await (await saga.start_child(cli_child, None)).result()
    return out


def test_sagakit_cancel_says_which_children_it_rolls_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ops.db'}"

    async def prepare() -> None:
        async with engine_with(url, cli_parent, cli_child) as engine:
            await engine.start(cli_parent, None, saga_id="o1")
            await reaches(engine, "o1/child-0", SagaStatus.SUSPENDED)
            await reaches(engine, "o1", SagaStatus.SUSPENDED)

    asyncio.run(prepare())
    result = sagakit("cancel", "o1", "--reason", "no longer wanted", "--by", "bob", "--db", url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("cancelled o1: now CANCELLED; rolling back 1 child saga: o1/child-0\n")
    shown = sagakit("show", "o1/child-0", "--db", url).stdout
    assert "its parent saga 'o1' was cancelled: no longer wanted" in shown


# -- a canceller killed half-way ---------------------------------------------------------------

CRASH_LOG = Ledger()
CRASH_PA, CRASH_MA, CRASH_LA = CRASH_LOG.step("PA"), CRASH_LOG.step("MA"), CRASH_LOG.step("LA")


@saga_workflow("CrashLeaf")
async def crash_leaf(saga: SagaContext, inp: Any) -> str:
    await CRASH_LA(saga, saga.saga_id)
    await saga.wait_for_signal("never")
    return "leaf"


@saga_workflow("CrashMiddle")
async def crash_middle(saga: SagaContext, inp: Any) -> str:
    await CRASH_MA(saga, saga.saga_id)
    out: str = await (await saga.start_child(crash_leaf, None)).result()
    return out


@saga_workflow("CrashTop")
async def crash_top(saga: SagaContext, inp: Any) -> str:
    await CRASH_PA(saga, saga.saga_id)
    out: str = await (await saga.start_child(crash_middle, None)).result()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("killed_after", ["x1", "x1/child-1"])
async def test_a_canceller_killed_before_the_children_are_rolled_back(
    process_db_url: str, killed_after: str
) -> None:
    """``sagakit``'s cancel runs in a process that is SIGKILLed right after the parent's cancel
    (or the middle child's rollback) committed, before the rest of the walk. The cancel woke
    each live child in its own transaction: any worker then finishes the rollback."""
    CRASH_LOG.events.clear()
    mid, low = "x1/child-1", "x1/child-1/child-1"
    workflows = (crash_top, crash_middle, crash_leaf)
    async with engine_with(process_db_url, *workflows) as engine:
        await engine.start(crash_top, None, saga_id="x1")
        for saga_id in (low, mid, "x1"):
            await reaches(engine, saga_id, SagaStatus.SUSPENDED)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "tests.cancel_crash_app", process_db_url, "x1", killed_after]
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, err = await within(proc.communicate(), 120)
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")

    async with operator(process_db_url) as ops:
        assert await status_of(ops, "x1") == SagaStatus.CANCELLED
        if killed_after == "x1":
            assert await status_of(ops, mid) == SagaStatus.SUSPENDED
            woken = mid
        else:
            assert await status_of(ops, mid) == SagaStatus.COMPENSATING
            woken = low
        assert await status_of(ops, low) == SagaStatus.SUSPENDED
        events = await ops._store_or_raise().load_events(woken)
        assert [(e.kind, e.name) for e in events] == [
            (EventKind.NOTIFY, f"{WAKE_PREFIX}{woken.rsplit('/child-1', 1)[0]}")
        ]
        assert CRASH_LOG.undone() == []

    async with engine_with(process_db_url, *workflows) as engine:
        await stays(engine, low, SagaStatus.COMPENSATED)
        await stays(engine, mid, SagaStatus.COMPENSATED)
        await stays(engine, "x1", SagaStatus.CANCELLED)
        assert sorted(CRASH_LOG.undone()) == sorted([(mid, "MA"), (low, "LA")])
        leaf_done = await engine.admin.get_saga(low)
        action, by, _, details = child_audit(leaf_done)
        assert (action, by) == ("compensate", "quinn")
        assert details["cancelled"] == {"saga": "x1", "by": "quinn", "reason": "killed half-way"}
