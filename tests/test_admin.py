"""The admin API (``engine.admin``) and parking (``on_exhausted="park"``), each checked on every
store kind.

A parked saga waits, with nothing of it in memory, until an operator retries, skips,
compensates or cancels it; every action is checked against the saga's status and leaves one
audit entry (at a negative journal number, so that replays never meet it). The operator's
engine may be another process with none of the workflows (the CLI): here another ``Engine`` on
the same database (``shared_store_url``), opened with ``worker=False``.

Steps and workflows are defined inside each test (through ``Script``), so that their logs belong
to that test alone. Real processes are in test_admin_crash.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    CompensationFailedError,
    Engine,
    NonDeterminismError,
    SagaCancelledError,
    SagaCompensatedError,
    SagaConflictError,
    SagaContext,
    SagaError,
    SagaNotFoundError,
    SagaSnapshot,
    SagaStateError,
    SagaStatus,
    SagaStep,
    SagaStepOptions,
    SagaValidationError,
    SagaWorkflow,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)
from sagakit.errors import StoreError
from sagakit.stores import open_store
from sagakit.stores.base import (
    NEVER,
    AdminChange,
    EntryKind,
    EntryStatus,
    JournalEntry,
    SagaUpdate,
    StateWrite,
    Store,
)
from tests.conftest import engine_with, fast_retry, make_engine
from tests.waiting import STILL, WAIT, Gate, eventually, suspended, within
from tests.wrapped_store import WrappedStore

# -- helpers ----------------------------------------------------------------------------------


class Script:
    """Steps that log each run and each compensation attempt, with failures the test switches
    on and off between runs: ``failing`` raise a retried RuntimeError, ``terminal`` a
    TerminalError, ``undo_failing`` make the compensation fail for good; a step in ``gates``
    is held in its body until the gate opens."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.failing: set[str] = set()
        self.terminal: set[str] = set()
        self.undo_failing: set[str] = set()
        self.gates: dict[str, Gate] = {}
        self.undo_gates: dict[str, Gate] = {}

    def step(
        self,
        name: str,
        *,
        park: bool = False,
        attempts: int = 3,
        strict: bool = False,
        undo: bool = True,
    ) -> SagaStep[Any]:
        async def compensate(data: Any, failed: bool) -> None:
            self.log.append(("undo", name))
            gate = self.undo_gates.get(name)
            if gate is not None and not gate.opened.is_set():
                await gate.hold()
            if name in self.undo_failing:
                raise TerminalError(f"the compensation of {name} fails")

        decorate = saga_step_strict if strict else saga_step

        @decorate(
            name,
            compensate=compensate if undo else None,
            retry=fast_retry(attempts),
            compensation_retry=fast_retry(2),
            on_exhausted="park" if park else "compensate",
        )
        async def run(ctx: SagaContext, inp: Any) -> str:
            self.log.append(("run", name))
            gate = self.gates.get(name)
            if gate is not None and not gate.opened.is_set():
                await gate.hold()
            if name in self.terminal:
                raise TerminalError(f"{name} fails for good")
            if name in self.failing:
                raise RuntimeError(f"{name} is down")
            return f"{name}-out"

        return run

    def runs(self, name: str) -> int:
        return self.log.count(("run", name))

    def undone(self) -> list[str]:
        return [name for kind, name in self.log if kind == "undo"]


def linear(name: str, steps: Sequence[SagaStep[Any]]) -> SagaWorkflow[Any, Any]:
    """A workflow that runs ``steps`` in order and returns their outputs."""

    @saga_workflow(name)
    async def workflow(saga: SagaContext, inp: Any) -> list[str]:
        return [await step(saga, inp) for step in steps]

    return workflow


async def reaches(engine: Engine, saga_id: str, status: SagaStatus) -> SagaSnapshot:
    """Wait until the saga has ``status`` in the store and no task of this engine runs it."""
    found: list[SagaSnapshot] = []

    async def check() -> bool:
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


async def journal_of(engine: Engine, saga_id: str) -> list[JournalEntry]:
    return await engine._store_or_raise().load_journal(saga_id)


def kinds(snap: SagaSnapshot) -> list[tuple[str, str, str]]:
    return [(s.kind, s.name, s.status) for s in snap.steps]


@asynccontextmanager
async def operator(url: str) -> AsyncIterator[Engine]:
    """The operator's engine: another "process" on the same database, without the workflows,
    that runs nothing itself (``sagakit`` CLI, the dashboard)."""
    async with make_engine(url, worker=False) as engine:
        yield engine


# -- parking ----------------------------------------------------------------------------------


async def test_a_step_out_of_retries_parks_the_saga_with_nothing_in_memory(engine: Engine) -> None:
    script = Script()
    a, b, c = script.step("A"), script.step("B", park=True), script.step("C")
    script.failing.add("B")
    workflow = linear("Parker", [a, b, c])
    handle = await engine.start(workflow, None, saga_id="p1")
    snap = await reaches(engine, "p1", SagaStatus.PARKED)
    assert script.runs("B") == 3 and script.runs("C") == 0
    assert script.undone() == []
    assert snap.owner is None
    assert snap.error is not None
    assert snap.error["kind"] == "parked"
    assert (snap.error["step"], snap.error["seq"]) == ("B", 1)
    assert snap.error["cause"]["type"] == "RuntimeError"
    assert "B is down" in snap.error["cause"]["message"]
    assert "3 attempts" in snap.error["cause"]["message"]
    failed = snap.steps[1]
    assert (failed.name, failed.status, failed.attempts) == ("B", "failed", 3)
    assert failed.error is not None and failed.error["parked"] is True
    # the caller keeps waiting: a parked saga has not ended
    with pytest.raises(TimeoutError):
        await handle.result(timeout=STILL)
    # no worker takes it: only an operator does
    assert await engine.recover(wait=True) == 0
    await stays(engine, "p1", SagaStatus.PARKED)
    assert script.runs("B") == 3 and script.undone() == []


async def test_a_terminal_error_in_a_parking_step_still_compensates(engine: Engine) -> None:
    script = Script()
    a, b = script.step("A"), script.step("B", park=True, strict=True)
    script.terminal.add("B")
    with pytest.raises(SagaCompensatedError) as caught:
        await engine.run(linear("TerminalPark", [a, b]), None, saga_id="t1", timeout=WAIT)
    assert caught.value.cause_type == "TerminalError"
    assert script.runs("B") == 1  # terminal: no retry
    assert script.undone() == ["A"]
    assert (await engine.admin.get_saga("t1")).status == SagaStatus.COMPENSATED


async def test_the_default_on_exhaustion_is_to_compensate(engine: Engine) -> None:
    script = Script()
    a, b = script.step("A"), script.step("B", strict=True)
    assert b.options.on_exhausted == "compensate" and not b.parks
    script.failing.add("B")
    with pytest.raises(SagaCompensatedError):
        await engine.run(linear("NoPark", [a, b]), None, saga_id="d1", timeout=WAIT)
    assert script.runs("B") == 3
    assert script.undone() == ["A"]


def test_an_unknown_on_exhausted_is_refused() -> None:
    with pytest.raises(ValueError, match="on_exhausted"):
        SagaStepOptions(on_exhausted="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_exhausted"):

        @saga_step("Bogus", on_exhausted="later")  # type: ignore[arg-type]
        async def bogus(ctx: SagaContext, inp: Any) -> None:
            return None

    assert SagaStepOptions(on_exhausted="park").on_exhausted == "park"


async def test_a_park_in_a_gather_waits_for_the_other_branches(engine: Engine) -> None:
    script = Script()
    a, b, c = script.step("A"), script.step("B", park=True), script.step("C")
    after = script.step("After")
    script.failing.add("B")
    script.gates["C"] = Gate()

    @saga_workflow("GatherPark")
    async def workflow(saga: SagaContext, inp: Any) -> list[Any]:
        branches = await saga.gather(a(saga, 1), b(saga, 2), c(saga, 3))
        return [*branches, await after(saga, None)]

    handle = await engine.start(workflow, None, saga_id="g1")
    await script.gates["C"].reached()
    # B has run out of retries while C is still in its body: the saga does not park yet
    await eventually(async_true(lambda: script.runs("B") == 3), "B to run out of retries")
    await asyncio.sleep(STILL)
    assert (await engine.admin.get_saga("g1")).status == SagaStatus.RUNNING
    script.gates["C"].opened.set()
    snap = await reaches(engine, "g1", SagaStatus.PARKED)
    steps = {s.name: s.status for s in snap.steps if s.kind == EntryKind.STEP}
    assert steps == {"A": "completed", "B": "failed", "C": "completed"}
    assert snap.error is not None and snap.error["step"] == "B"
    assert script.undone() == [] and script.runs("After") == 0
    # retried, the saga goes on with the branches' journaled results
    script.failing.clear()
    await engine.admin.retry_step("g1")
    assert await handle.result(timeout=WAIT) == ["A-out", "B-out", "C-out", "After-out"]
    assert [script.runs(n) for n in "ABC"] == [1, 4, 1]


def async_true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped


class ProxyStore(WrappedStore):
    """A store that passes everything to a real one, with hooks for the tests: ``drop_parks``
    PARKED status writes fail (as if the worker died between the failed step's entry and the
    saga's status), and ``before_journal`` runs once before the next ``load_journal``."""

    def __init__(self, inner: Store):
        super().__init__(inner)
        self.drop_parks = 0
        self.parks_written = 0
        self.before_journal: Callable[[], Awaitable[Any]] | None = None

    def append(
        self,
        saga_id: str,
        fence: int,
        entry: JournalEntry | None,
        update: SagaUpdate | None = None,
        *,
        guard: int | None = None,
        state: Sequence[StateWrite] = (),
    ) -> asyncio.Future[None]:
        if update is not None and update.status == SagaStatus.PARKED:
            if self.drop_parks:
                self.drop_parks -= 1
                failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                failed.set_exception(StoreError("the worker died before the PARKED status"))
                return failed
            self.parks_written += 1
        return self.inner.append(saga_id, fence, entry, update, guard=guard, state=state)

    async def load_journal(self, saga_id: str) -> list[JournalEntry]:
        hook, self.before_journal = self.before_journal, None
        if hook is not None:
            await hook()
        return await self.inner.load_journal(saga_id)


async def test_a_crash_before_the_parked_status_parks_again_on_replay(store_url: str) -> None:
    script = Script()
    a, b = script.step("A"), script.step("B", park=True)
    script.failing.add("B")
    store = ProxyStore(open_store(store_url))
    store.drop_parks = 1
    workflow = linear("CrashPark", [a, b])
    async with make_engine(store_url, store=store) as engine:
        engine.register(workflow)
        await engine.start(workflow, None, saga_id="c1")
        snap = await reaches(engine, "c1", SagaStatus.PARKED)
        # the first run's PARKED was lost; the replay found the entry marked parked, and
        # parked again instead of running B again or compensating
        assert store.drop_parks == 0 and store.parks_written == 1
        assert script.runs("B") == 3
        assert script.undone() == []
        assert snap.error is not None and snap.error["step"] == "B"


async def test_two_parked_branches_are_retried_one_after_the_other(engine: Engine) -> None:
    script = Script()
    a, b = script.step("A", park=True), script.step("B", park=True)
    script.failing.update({"A", "B"})

    @saga_workflow("TwoParked")
    async def workflow(saga: SagaContext, inp: Any) -> list[Any]:
        return list(await saga.gather(a(saga, 1), b(saga, 2)))

    handle = await engine.start(workflow, None, saga_id="g2")
    first = await reaches(engine, "g2", SagaStatus.PARKED)
    assert first.error is not None and first.error["step"] == "A"  # the first by position
    script.failing.clear()
    await engine.admin.retry_step("g2")
    # A ran again and is journaled; B is still parked and parks the saga again
    second = await reaches(engine, "g2", SagaStatus.PARKED)
    assert second.error is not None and second.error["step"] == "B"
    await engine.admin.retry_step("g2")
    assert await handle.result(timeout=WAIT) == ["A-out", "B-out"]
    assert [script.runs(n) for n in "AB"] == [4, 4]
    assert script.undone() == []


async def test_compensate_two_parked_branches_undoes_both(engine: Engine) -> None:
    script = Script()
    before = script.step("Before")
    a, b = script.step("A", park=True), script.step("B", park=True)
    script.failing.update({"A", "B"})

    @saga_workflow("TwoParkedUndo")
    async def workflow(saga: SagaContext, inp: Any) -> list[Any]:
        await before(saga, None)
        return list(await saga.gather(a(saga, 1), b(saga, 2)))

    handle = await engine.start(workflow, None, saga_id="g3")
    await reaches(engine, "g3", SagaStatus.PARKED)
    await engine.admin.compensate("g3")
    with pytest.raises(SagaCompensatedError):
        await handle.result(timeout=WAIT)
    assert script.undone() == ["B", "A", "Before"]


# -- retry ------------------------------------------------------------------------------------


async def test_retry_runs_the_parked_step_again_and_the_saga_completes(engine: Engine) -> None:
    script = Script()
    a, b, c = script.step("A"), script.step("B", park=True), script.step("C")
    script.failing.add("B")
    handle = await engine.start(linear("RetryMe", [a, b, c]), None, saga_id="r1")
    await reaches(engine, "r1", SagaStatus.PARKED)
    script.failing.clear()
    snap = await engine.admin.retry_step("r1", reason="the bank is back", by="alice")
    assert snap.status in (SagaStatus.RUNNING, SagaStatus.COMPLETED)
    assert await handle.result(timeout=WAIT) == ["A-out", "B-out", "C-out"]
    assert [script.runs(n) for n in "ABC"] == [1, 4, 1]
    assert script.undone() == []
    done = await engine.admin.get_saga("r1")
    assert done.status == SagaStatus.COMPLETED
    assert [s.attempts for s in done.steps] == [1, 1, 1]
    (audit,) = done.audit
    assert (audit.action, audit.reason, audit.by, audit.step, audit.seq) == (
        "retry",
        "the bank is back",
        "alice",
        "B",
        1,
    )
    assert audit.details["seqs"] == [1]
    assert audit.details["previous"]["status"] == "failed"
    assert audit.details["previous"]["attempts"] == 3


async def test_a_retried_step_that_fails_again_parks_again_with_a_fresh_budget(
    engine: Engine,
) -> None:
    script = Script()
    a, b = script.step("A"), script.step("B", park=True)
    script.failing.add("B")
    await engine.start(linear("RetryAgain", [a, b]), None, saga_id="r2")
    await reaches(engine, "r2", SagaStatus.PARKED)
    await engine.admin.retry_step("r2")
    await eventually(async_true(lambda: script.runs("B") == 6), "B to run three more times")
    snap = await reaches(engine, "r2", SagaStatus.PARKED)
    assert script.runs("A") == 1 and script.runs("B") == 6
    assert script.undone() == []
    assert snap.steps[1].attempts == 3
    assert [e.action for e in snap.audit] == ["retry"]


async def test_retry_on_failed_compensations_runs_them_again(engine: Engine) -> None:
    script = Script()
    a, b, c = script.step("A"), script.step("B"), script.step("C", strict=True)
    d = script.step("D", strict=True, undo=False)
    script.undo_failing.update({"A", "C"})
    script.terminal.add("D")
    handle = await engine.start(linear("UndoFails", [a, b, c, d]), None, saga_id="f1")
    with pytest.raises(CompensationFailedError):
        await handle.result(timeout=WAIT)
    failed = await engine.admin.get_saga("f1")
    assert failed.status == SagaStatus.FAILED
    assert script.undone() == ["C", "B", "A"]
    script.undo_failing.clear()
    snap = await engine.admin.retry_step("f1", reason="fixed the ledger")
    assert snap.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)
    done = await reaches(engine, "f1", SagaStatus.COMPENSATED)
    # the failed ones ran again, the one that had succeeded did not
    assert script.undone() == ["C", "B", "A", "C", "A"]
    assert [e.action for e in done.audit] == ["retry"]
    assert done.audit[0].details["seqs"] == sorted(done.audit[0].details["seqs"], reverse=True)
    assert len(done.audit[0].details["seqs"]) == 2
    comps = [(s.name, s.status) for s in done.steps if s.kind == EntryKind.COMPENSATION]
    assert comps == [("C", "completed"), ("B", "completed"), ("A", "completed")]
    assert done.error is not None and done.error["kind"] == "compensated"
    assert done.error["cause"]["type"] == "TerminalError"
    assert script.runs("D") == 1
    with pytest.raises(SagaCompensatedError):
        await engine.handle("f1").result(timeout=WAIT)


async def test_retry_after_non_determinism_replays_with_the_current_code(engine: Engine) -> None:
    script = Script()
    a, b, c = script.step("A"), script.step("B"), script.step("C")
    version = ["v1"]

    @saga_workflow("Drifting")
    async def workflow(saga: SagaContext, inp: Any) -> list[str]:
        first = await (a if version[0] == "v1" else b)(saga, None)
        await saga.wait_for_signal("go")
        return [first, await c(saga, None)]

    handle = await engine.start(workflow, None, saga_id="n1")
    await suspended(engine, "n1")
    version[0] = "v2"  # a deploy that no longer replays the journal
    await engine.signal("n1", "go")
    with pytest.raises(NonDeterminismError):
        await handle.result(timeout=WAIT)
    failed = await engine.admin.get_saga("n1")
    assert failed.status == SagaStatus.FAILED
    assert failed.error is not None and failed.error["kind"] == "non_determinism"
    version[0] = "v1"  # rolled back
    await engine.admin.retry_step("n1")
    done = await reaches(engine, "n1", SagaStatus.COMPLETED)
    assert done.output == ["A-out", "C-out"]
    assert [script.runs(n) for n in "ABC"] == [1, 0, 1]
    (audit,) = done.audit
    assert audit.action == "retry" and audit.details == {"replay": True}


async def test_retry_is_refused_on_sagas_that_are_not_parked_or_failed(engine: Engine) -> None:
    script = Script()
    await engine.run(linear("Fine", [script.step("A")]), None, saga_id="ok", timeout=WAIT)
    with pytest.raises(SagaStateError) as caught:
        await engine.admin.retry_step("ok")
    message = str(caught.value)
    assert "COMPLETED" in message and "PARKED" in message and "FAILED" in message
    assert caught.value.status == SagaStatus.COMPLETED
    assert (await engine.admin.get_saga("ok")).audit == ()
    with pytest.raises(SagaNotFoundError):
        await engine.admin.retry_step("nobody")


# -- skip -------------------------------------------------------------------------------------


async def test_skip_records_the_output_and_the_saga_goes_on_with_it(engine: Engine) -> None:
    script = Script()
    a, b = script.step("A"), script.step("B", park=True)

    @saga_workflow("Skipper")
    async def workflow(saga: SagaContext, inp: Any) -> list[Any]:
        return [await a(saga, None), await b(saga, None)]

    script.failing.add("B")
    handle = await engine.start(workflow, None, saga_id="s1")
    await reaches(engine, "s1", SagaStatus.PARKED)
    snap = await engine.admin.skip_step("s1", {"by": "hand"}, reason="done by hand", by="bob")
    assert await handle.result(timeout=WAIT) == ["A-out", {"by": "hand"}]
    assert script.runs("B") == 3  # not run again
    done = await engine.admin.get_saga("s1")
    assert done.steps[1].output == {"by": "hand"}
    assert done.steps[1].status == "completed"
    (audit,) = done.audit
    assert (audit.action, audit.step, audit.seq, audit.by) == ("skip", "B", 1, "bob")
    assert audit.details["output"] == {"by": "hand"}
    assert snap.audit == done.audit


async def test_a_skipped_step_is_not_compensated_by_a_later_rollback(engine: Engine) -> None:
    script = Script()
    a, b, c = script.step("A"), script.step("B", park=True), script.step("C", strict=True)
    script.failing.add("B")
    script.terminal.add("C")
    handle = await engine.start(linear("SkipThenFail", [a, b, c]), None, saga_id="s2")
    await reaches(engine, "s2", SagaStatus.PARKED)
    await engine.admin.skip_step("s2", "B-by-hand")
    with pytest.raises(SagaCompensatedError) as caught:
        await handle.result(timeout=WAIT)
    assert caught.value.step == "C"
    assert script.undone() == ["A"]  # B did nothing the saga has to undo


class Receipt(BaseModel):
    receipt_id: str
    amount: int


async def test_a_mock_output_that_does_not_fit_parks_the_saga_again(engine: Engine) -> None:
    attempts: list[int] = []
    down = [True]

    @saga_step("Pay", retry=fast_retry(2), on_exhausted="park")
    async def pay(ctx: SagaContext, inp: Any) -> Receipt:
        attempts.append(ctx.attempt)
        if down[0]:
            raise RuntimeError("payments are down")
        return Receipt(receipt_id="real", amount=5)

    @saga_workflow("Typed")
    async def workflow(saga: SagaContext, inp: Any) -> dict[str, Any]:
        receipt = await pay(saga, None)
        assert isinstance(receipt, Receipt)
        return receipt.model_dump()

    handle = await engine.start(workflow, None, saga_id="s3")
    await reaches(engine, "s3", SagaStatus.PARKED)
    await engine.admin.skip_step("s3", {"receipt_id": "manual"})  # no amount
    snap = await reaches(engine, "s3", SagaStatus.PARKED)
    await stays(engine, "s3", SagaStatus.PARKED)
    assert snap.error is not None
    assert snap.error["cause"]["type"] == "SkipOutputInvalid"
    assert (snap.error["step"], snap.error["seq"]) == ("Pay", 0)
    assert "amount" in snap.error["cause"]["message"]
    assert len(attempts) == 2
    # skipped again with one that fits, it goes on
    await engine.admin.skip_step("s3", {"receipt_id": "manual", "amount": 7})
    assert await handle.result(timeout=WAIT) == {"receipt_id": "manual", "amount": 7}
    assert len(attempts) == 2
    assert [e.action for e in (await engine.admin.get_saga("s3")).audit] == ["skip", "skip"]


async def test_retry_after_an_invalid_mock_output_runs_the_step_for_real(engine: Engine) -> None:
    down = [True]

    @saga_step("Pay", retry=fast_retry(2), on_exhausted="park")
    async def pay(ctx: SagaContext, inp: Any) -> Receipt:
        if down[0]:
            raise RuntimeError("payments are down")
        return Receipt(receipt_id="real", amount=5)

    @saga_workflow("TypedRetry")
    async def workflow(saga: SagaContext, inp: Any) -> Any:
        return await pay(saga, None)

    handle = await engine.start(workflow, None, saga_id="s3b")
    await reaches(engine, "s3b", SagaStatus.PARKED)
    await engine.admin.skip_step("s3b", [1, 2, 3])
    snap = await reaches(engine, "s3b", SagaStatus.PARKED)
    assert snap.error is not None and snap.error["cause"]["type"] == "SkipOutputInvalid"
    down[0] = False
    await engine.admin.retry_step("s3b")
    assert await handle.result(timeout=WAIT) == {"receipt_id": "real", "amount": 5}
    done = await engine.admin.get_saga("s3b")
    assert [e.action for e in done.audit] == ["skip", "retry"]
    assert done.audit[1].details["previous"]["status"] == "completed"


async def test_compensate_after_an_invalid_mock_output_rolls_back(engine: Engine) -> None:
    """A saga parked because a skip's output did not fit the step can still be rolled back."""
    script = Script()
    a = script.step("A")

    @saga_step("Pay", retry=fast_retry(2), on_exhausted="park")
    async def pay(ctx: SagaContext, inp: Any) -> Receipt:
        raise RuntimeError("payments are down")

    @saga_workflow("TypedUndo")
    async def workflow(saga: SagaContext, inp: Any) -> Any:
        await a(saga, None)
        return await pay(saga, None)

    handle = await engine.start(workflow, None, saga_id="s4")
    await reaches(engine, "s4", SagaStatus.PARKED)
    await engine.admin.skip_step("s4", {"nonsense": True})
    snap = await reaches(engine, "s4", SagaStatus.PARKED)
    await stays(engine, "s4", SagaStatus.PARKED)
    assert snap.error is not None and snap.error["cause"]["type"] == "SkipOutputInvalid"
    await engine.admin.compensate("s4", reason="give up")
    with pytest.raises(SagaCompensatedError) as caught:
        await handle.result(timeout=WAIT)
    assert caught.value.cause_type == "OperatorRollback"
    assert script.undone() == ["A"]


async def test_a_non_json_mock_output_is_refused_before_anything_is_written(
    engine: Engine,
) -> None:
    script = Script()
    script.failing.add("B")
    workflow = linear("NoJson", [script.step("A"), script.step("B", park=True)])
    await engine.start(workflow, None, saga_id="s5")
    await reaches(engine, "s5", SagaStatus.PARKED)
    before = await engine._store_or_raise().load_saga("s5")
    journal = await journal_of(engine, "s5")
    for bad in (object(), {"n": float("nan")}, {1, object()}):
        with pytest.raises(SagaValidationError, match="mock output"):
            await engine.admin.skip_step("s5", bad)
    assert await journal_of(engine, "s5") == journal
    assert await engine._store_or_raise().load_saga("s5") == before


async def test_skip_on_failed_compensations_records_them_as_done(engine: Engine) -> None:
    script = Script()
    a, b = script.step("A"), script.step("B")
    c = script.step("C", strict=True, undo=False)
    script.undo_failing.add("A")
    script.terminal.add("C")
    handle = await engine.start(linear("SkipUndo", [a, b, c]), None, saga_id="s6")
    with pytest.raises(CompensationFailedError):
        await handle.result(timeout=WAIT)
    with pytest.raises(SagaValidationError, match="mock_output"):
        await engine.admin.skip_step("s6", {"some": "output"})
    assert (await engine.admin.get_saga("s6")).audit == ()
    await engine.admin.skip_step("s6", reason="refunded by hand")
    done = await reaches(engine, "s6", SagaStatus.COMPENSATED)
    assert script.undone() == ["B", "A"]  # A's compensation is not run again
    comps = [(s.name, s.status) for s in done.steps if s.kind == EntryKind.COMPENSATION]
    assert comps == [("B", "completed"), ("A", "completed")]
    (audit,) = done.audit
    assert (audit.action, audit.step, audit.reason) == ("skip", "A", "refunded by hand")
    with pytest.raises(SagaCompensatedError):
        await engine.handle("s6").result(timeout=WAIT)


async def test_skip_and_retry_are_refused_on_a_failed_saga_with_nothing_to_redo(
    engine: Engine,
) -> None:
    version = ["v1"]
    script = Script()
    a, b = script.step("A"), script.step("B")

    @saga_workflow("Drift2")
    async def workflow(saga: SagaContext, inp: Any) -> str:
        out: str = await (a if version[0] == "v1" else b)(saga, None)
        await saga.wait_for_signal("go")
        return out

    await engine.start(workflow, None, saga_id="s7")
    await suspended(engine, "s7")
    version[0] = "v2"
    await engine.signal("s7", "go")
    await reaches(engine, "s7", SagaStatus.FAILED)
    with pytest.raises(SagaStateError, match="non_determinism"):
        await engine.admin.skip_step("s7")
    assert (await engine.admin.get_saga("s7")).audit == ()


# -- compensate -------------------------------------------------------------------------------


async def test_compensate_a_parked_saga_rolls_back_what_ran(engine: Engine) -> None:
    script = Script()
    a, b, c = script.step("A"), script.step("B", strict=True), script.step("C", park=True)
    script.failing.add("C")
    handle = await engine.start(linear("UndoParked", [a, b, c]), None, saga_id="u1")
    await reaches(engine, "u1", SagaStatus.PARKED)
    await engine.admin.compensate("u1", reason="customer gave up", by="carol")
    with pytest.raises(SagaCompensatedError) as caught:
        await handle.result(timeout=WAIT)
    assert caught.value.cause_type == "OperatorRollback"
    assert "customer gave up" in caught.value.cause_message
    assert "carol" in caught.value.cause_message
    # C is hybrid: its attempts may have done part of the work, so it is undone too
    assert script.undone() == ["C", "B", "A"]
    assert [script.runs(n) for n in "ABC"] == [1, 1, 3]
    done = await engine.admin.get_saga("u1")
    assert done.status == SagaStatus.COMPENSATED
    assert done.error is not None and done.error["cause"]["type"] == "OperatorRollback"
    assert [e.action for e in done.audit] == ["compensate"]


@pytest.mark.parametrize("wait", ["signal", "sleep"])
async def test_compensate_a_waiting_saga_rolls_back_what_ran(engine: Engine, wait: str) -> None:
    script = Script()
    a, b, c = script.step("A"), script.step("B"), script.step("C")

    @saga_workflow("UndoWaiting")
    async def workflow(saga: SagaContext, inp: Any) -> list[str]:
        done = [await a(saga, None), await b(saga, None)]
        if wait == "signal":
            await saga.wait_for_signal("approve")
        else:
            await saga.sleep(timedelta(hours=1))
        return [*done, await c(saga, None)]

    handle = await engine.start(workflow, None, saga_id="u2")
    await suspended(engine, "u2")
    await engine.admin.compensate("u2")
    with pytest.raises(SagaCompensatedError) as caught:
        await handle.result(timeout=WAIT)
    assert caught.value.cause_type == "OperatorRollback"
    assert script.undone() == ["B", "A"]
    assert script.runs("C") == 0
    done = await engine.admin.get_saga("u2")
    assert done.status == SagaStatus.COMPENSATED
    assert done.wait_token is None


async def test_compensate_a_pending_saga_runs_nothing(shared_store_url: str) -> None:
    script = Script()
    workflow = linear("UndoPending", [script.step("A"), script.step("B")])
    async with operator(shared_store_url) as ops:
        ops.register(workflow)  # to start it; the operator's engine runs nothing
        await ops.start(workflow, None, saga_id="u3", run_here=False)
        assert (await ops.admin.get_saga("u3")).status == SagaStatus.PENDING
        await ops.admin.compensate("u3")
        async with engine_with(shared_store_url, workflow) as worker:
            done = await reaches(worker, "u3", SagaStatus.COMPENSATED)
        assert done.error is not None and done.error["cause"]["type"] == "OperatorRollback"
        assert script.log == []


async def test_a_saga_that_catches_the_operators_stop_is_rolled_back_anyway(
    engine: Engine,
) -> None:
    script = Script()
    a, b, c = script.step("A"), script.step("B", park=True), script.step("C")
    script.failing.add("B")
    caught: list[str] = []

    @saga_workflow("Stubborn")
    async def workflow(saga: SagaContext, inp: Any) -> str:
        await a(saga, None)
        try:
            await b(saga, None)
        except SagaError as exc:
            caught.append(type(exc).__name__)
            return "carried on"
        out: str = await c(saga, None)
        return out

    handle = await engine.start(workflow, None, saga_id="u4")
    await reaches(engine, "u4", SagaStatus.PARKED)
    await engine.admin.compensate("u4")
    with pytest.raises(SagaCompensatedError) as raised:
        await handle.result(timeout=WAIT)
    assert raised.value.cause_type == "OperatorRollback"
    assert caught  # it did catch the stop
    assert script.undone() == ["B", "A"]
    assert script.runs("C") == 0


async def test_compensate_is_refused_while_running_or_ended(engine: Engine) -> None:
    script = Script()
    script.gates["A"] = Gate()
    workflow = linear("Busy", [script.step("A")])
    handle = await engine.start(workflow, None, saga_id="u5")
    await script.gates["A"].reached()
    with pytest.raises(SagaStateError) as caught:
        await engine.admin.compensate("u5")
    message = str(caught.value)
    assert "RUNNING" in message
    for allowed in ("PENDING", "SUSPENDED", "PARKED"):
        assert allowed in message
    assert caught.value.allowed == ("QUEUED", "PENDING", "SUSPENDED", "PARKED", "COMPLETED")
    script.gates["A"].opened.set()
    assert await handle.result(timeout=WAIT) == ["A-out"]
    # a COMPLETED saga is rolled back (test_admin_rerun.py); one that ended otherwise is not
    script.gates["A"] = Gate()
    await engine.start(workflow, None, saga_id="u5b")
    await script.gates["A"].reached()
    await engine.admin.cancel("u5b", "stopped for the test")
    script.gates["A"].opened.set()
    with pytest.raises(SagaStateError, match="CANCELLED"):
        await engine.admin.compensate("u5b")
    assert (await engine.admin.get_saga("u5")).audit == ()
    assert script.undone() == []


# -- cancel -----------------------------------------------------------------------------------


async def test_cancel_needs_a_reason(engine: Engine) -> None:
    script = Script()
    script.failing.add("A")
    await engine.start(linear("NoReason", [script.step("A", park=True)]), None, saga_id="x0")
    await reaches(engine, "x0", SagaStatus.PARKED)
    for reason in ("", "   ", None):
        with pytest.raises(SagaValidationError, match="reason"):
            await engine.admin.cancel("x0", reason)  # type: ignore[arg-type]
    snap = await engine.admin.get_saga("x0")
    assert snap.status == SagaStatus.PARKED and snap.audit == ()


@pytest.mark.parametrize("where", ["parked", "signal", "sleep", "pending"])
async def test_cancel_stops_a_saga_without_rollback(shared_store_url: str, where: str) -> None:
    script = Script()
    a, b, c = script.step("A"), script.step("B", park=True), script.step("C")
    if where == "parked":
        script.failing.add("B")

    @saga_workflow("Cancelled")
    async def workflow(saga: SagaContext, inp: Any) -> list[str]:
        done = [await a(saga, None), await b(saga, None)]
        if where == "signal":
            await saga.wait_for_signal("approve")
        elif where == "sleep":
            await saga.sleep(timedelta(hours=1))
        return [*done, await c(saga, None)]

    if where == "pending":  # cancelled before any worker is there to take it
        async with operator(shared_store_url) as ops:
            ops.register(workflow)
            await ops.start(workflow, None, saga_id="x1", run_here=False)
            assert (await ops.admin.get_saga("x1")).status == SagaStatus.PENDING
            await ops.admin.cancel("x1", "not wanted", by="dave")
    async with engine_with(shared_store_url, workflow) as engine:
        if where != "pending":
            await engine.start(workflow, None, saga_id="x1")
            expected = SagaStatus.PARKED if where == "parked" else SagaStatus.SUSPENDED
            await reaches(engine, "x1", expected)
            snap = await engine.admin.cancel("x1", "not wanted", by="dave")
            assert snap.status == SagaStatus.CANCELLED
        with pytest.raises(SagaCancelledError) as caught:
            await engine.handle("x1").result(timeout=WAIT)
        assert caught.value.reason == "not wanted" and caught.value.by == "dave"
        done = await stays(engine, "x1", SagaStatus.CANCELLED)
        assert script.undone() == []
        assert script.runs("C") == 0
        assert done.error is not None and done.error["reason"] == "not wanted"
        (audit,) = done.audit
        assert (audit.action, audit.reason, audit.by) == ("cancel", "not wanted", "dave")
        if where == "pending":
            assert script.log == []
        # it has ended: no second cancel, nor anything else
        for act in (
            engine.admin.cancel("x1", "again"),
            engine.admin.compensate("x1"),
            engine.admin.retry_step("x1"),
            engine.admin.skip_step("x1"),
            engine.admin.resume("x1"),
        ):
            with pytest.raises(SagaStateError, match="CANCELLED"):
                await act
        assert len((await engine.admin.get_saga("x1")).audit) == 1


async def test_cancel_stops_a_step_running_in_this_engine(engine: Engine) -> None:
    script = Script()
    script.gates["B"] = Gate()
    workflow = linear("CancelHere", [script.step("A"), script.step("B"), script.step("C")])
    handle = await engine.start(workflow, None, saga_id="x2")
    await script.gates["B"].reached()
    await engine.admin.cancel("x2", "stop it")
    with pytest.raises(SagaCancelledError, match="stop it"):
        await handle.result(timeout=WAIT)
    await eventually(async_true(lambda: "x2" not in engine._tasks), "the run to stop")
    done = await stays(engine, "x2", SagaStatus.CANCELLED)
    assert kinds(done) == [("step", "A", "completed")]
    assert script.runs("C") == 0 and script.undone() == []


async def test_cancel_stops_a_worker_of_another_process_mid_step(shared_store_url: str) -> None:
    script = Script()
    script.gates["B"] = Gate()
    workflow = linear("CancelThere", [script.step("A"), script.step("B"), script.step("C")])
    async with engine_with(shared_store_url, workflow) as worker, operator(shared_store_url) as ops:
        await worker.start(workflow, None, saga_id="x3")
        await script.gates["B"].reached()
        await ops.admin.cancel("x3", "stop it", by="ops")
        journal = await journal_of(ops, "x3")
        script.gates["B"].opened.set()  # B finishes; its result must not be recorded
        with pytest.raises(SagaCancelledError):
            await worker.handle("x3").result(timeout=WAIT)
        await eventually(async_true(lambda: "x3" not in worker._tasks), "the worker to stop")
        await asyncio.sleep(STILL)
        assert await journal_of(ops, "x3") == journal
        done = await ops.admin.get_saga("x3")
        assert done.status == SagaStatus.CANCELLED
        assert kinds(done) == [("step", "A", "completed")]
        assert script.runs("C") == 0 and script.undone() == []


async def test_a_cancelled_step_is_not_retried_by_a_worker_of_another_process(
    shared_store_url: str,
) -> None:
    """Cancelled while a worker is in the first attempt of a step that then fails: the worker
    must not go on with more attempts of a step of a cancelled saga."""
    script = Script()
    script.gates["B"] = Gate()
    script.failing.add("B")
    workflow = linear("CancelRetrying", [script.step("A"), script.step("B", attempts=4)])
    async with engine_with(shared_store_url, workflow) as worker, operator(shared_store_url) as ops:
        await worker.start(workflow, None, saga_id="x4")
        await script.gates["B"].reached()
        await ops.admin.cancel("x4", "stop it")
        script.gates["B"].opened.set()  # attempt 1 fails
        await eventually(async_true(lambda: "x4" not in worker._tasks), "the worker to stop")
        assert script.runs("B") == 1, "attempts of a cancelled saga's step ran"


async def test_a_parent_waiting_for_a_cancelled_child_gets_cancelled_error(
    engine: Engine,
) -> None:
    script = Script()
    pa, ca = script.step("PA"), script.step("CA")

    @saga_workflow("CancelChild")
    async def child(saga: SagaContext, inp: Any) -> str:
        await ca(saga, None)
        await saga.wait_for_signal("never")
        return "child-out"

    @saga_workflow("CancelParent")
    async def parent(saga: SagaContext, inp: Any) -> str:
        await pa(saga, None)
        handle = await saga.start_child(child, None, saga_id="x5-child")
        result: str = await handle.result()
        return result

    engine.register(child)
    handle = await engine.start(parent, None, saga_id="x5")
    await suspended(engine, "x5")
    await suspended(engine, "x5-child")
    await engine.admin.cancel("x5-child", "the child is wrong", by="erin")
    with pytest.raises(SagaCompensatedError) as caught:
        await handle.result(timeout=WAIT)
    assert caught.value.cause_type == "SagaCancelledError"
    assert "the child is wrong" in caught.value.cause_message
    assert script.undone() == ["PA"]  # the cancelled child undoes nothing
    assert (await engine.admin.get_saga("x5-child")).status == SagaStatus.CANCELLED


async def test_cancel_stops_a_rollback_in_progress(engine: Engine) -> None:
    script = Script()
    a, b, c = script.step("A"), script.step("B"), script.step("C", strict=True)
    script.terminal.add("C")
    script.undo_gates["A"] = Gate()
    handle = await engine.start(linear("CancelRollback", [a, b, c]), None, saga_id="x6")
    await script.undo_gates["A"].reached()  # B is undone, A's compensation is under way
    assert (await engine.admin.get_saga("x6")).status == SagaStatus.COMPENSATING
    await engine.admin.cancel("x6", "leave the rest to finance")
    with pytest.raises(SagaCancelledError):
        await handle.result(timeout=WAIT)
    done = await stays(engine, "x6", SagaStatus.CANCELLED)
    assert script.undone() == ["B", "A"]
    # A's compensation was stopped: nothing of it is recorded, and it is not run again
    assert [(s.kind, s.name) for s in done.steps if s.kind == EntryKind.COMPENSATION] == [
        ("compensation", "B")
    ]


async def test_unknown_sagas_are_not_found(engine: Engine) -> None:
    admin = engine.admin
    for act in (
        admin.get_saga("ghost"),
        admin.retry_step("ghost"),
        admin.skip_step("ghost", 1),
        admin.compensate("ghost"),
        admin.cancel("ghost", "why not"),
        admin.resume("ghost"),
    ):
        with pytest.raises(SagaNotFoundError):
            await act


# -- resume -----------------------------------------------------------------------------------


async def test_resume_ends_a_long_sleep_now(engine: Engine) -> None:
    script = Script()
    a, b = script.step("A"), script.step("B")

    @saga_workflow("Sleeper")
    async def workflow(saga: SagaContext, inp: Any) -> list[str]:
        first = await a(saga, None)
        await saga.sleep(timedelta(hours=1))
        return [first, await b(saga, None)]

    handle = await engine.start(workflow, None, saga_id="w1")
    snap = await suspended(engine, "w1")
    assert snap.wake_at is not None and snap.wake_at > datetime.now(UTC) + timedelta(minutes=50)
    resumed = await engine.admin.resume("w1", reason="no need to wait", by="frank")
    assert resumed.audit[0].details == {"timers_ended": 1}
    assert await handle.result(timeout=WAIT) == ["A-out", "B-out"]
    assert [script.runs(n) for n in "AB"] == [1, 1]
    done = await engine.admin.get_saga("w1")
    (audit,) = done.audit
    assert (audit.action, audit.reason, audit.by) == ("resume", "no need to wait", "frank")
    sleep = done.steps[1]
    assert (sleep.kind, sleep.status) == ("sleep", "completed")


async def test_resume_a_saga_waiting_for_a_signal_keeps_it_waiting(engine: Engine) -> None:
    script = Script()
    a, b = script.step("A"), script.step("B")

    @saga_workflow("Listener")
    async def workflow(saga: SagaContext, inp: Any) -> list[Any]:
        first = await a(saga, None)
        got = await saga.wait_for_signal("approve")
        return [first, got, await b(saga, None)]

    handle = await engine.start(workflow, None, saga_id="w2")
    before = await suspended(engine, "w2")
    resumed = await engine.admin.resume("w2")
    assert resumed.audit[0].details == {"timers_ended": 0}
    # it runs (a replay), finds no signal, and waits again (only an event wakes it)
    store = engine._store_or_raise()

    async def waits_again() -> bool:
        record = await store.load_saga("w2")
        assert record is not None
        return record.status == SagaStatus.SUSPENDED and record.lease_expires_at >= NEVER

    await eventually(waits_again, "the resumed saga to wait again")
    snap = await stays(engine, "w2", SagaStatus.SUSPENDED)
    assert snap.wait_token == before.wait_token
    assert [script.runs(n) for n in "AB"] == [1, 0]
    await engine.signal("w2", "approve", {"ok": True})
    assert await handle.result(timeout=WAIT) == ["A-out", {"ok": True}, "B-out"]
    assert [script.runs(n) for n in "AB"] == [1, 1]
    assert [e.action for e in (await engine.admin.get_saga("w2")).audit] == ["resume"]


async def test_resume_is_refused_unless_suspended(engine: Engine) -> None:
    script = Script()
    script.failing.add("B")
    workflow = linear("NotAsleep", [script.step("A"), script.step("B", park=True)])
    await engine.start(workflow, None, saga_id="w3")
    await reaches(engine, "w3", SagaStatus.PARKED)
    with pytest.raises(SagaStateError) as caught:
        await engine.admin.resume("w3")
    assert "PARKED" in str(caught.value) and "SUSPENDED" in str(caught.value)
    await engine.run(linear("Done", [script.step("Z")]), None, saga_id="w4", timeout=WAIT)
    with pytest.raises(SagaStateError, match="COMPLETED"):
        await engine.admin.resume("w4")


# -- audit and conflicts ----------------------------------------------------------------------


async def in_signal_wait(engine: Engine, saga_id: str) -> bool:
    """The saga's sleep has ended and it is SUSPENDED in its signal wait."""
    snap = await engine.get(saga_id)
    kinds = {(s.kind, s.status) for s in snap.steps}
    return (
        snap.status == SagaStatus.SUSPENDED
        and ("sleep", "completed") in kinds
        and ("signal", "running") in kinds
    )


async def test_audit_entries_stay_out_of_the_steps_and_out_of_replays(engine: Engine) -> None:
    script = Script()
    a, b = script.step("A"), script.step("B", park=True)
    c, d = script.step("C", park=True), script.step("D")

    @saga_workflow("Audited")
    async def workflow(saga: SagaContext, inp: Any) -> list[Any]:
        first = [await a(saga, None), await b(saga, None)]
        await saga.sleep(timedelta(hours=1))
        got = await saga.wait_for_signal("go")
        return [*first, got, await c(saga, None), await d(saga, None)]

    script.failing.update({"B", "C"})
    handle = await engine.start(workflow, None, saga_id="a1")
    await reaches(engine, "a1", SagaStatus.PARKED)
    await engine.admin.retry_step("a1", reason="try once more")  # B parks again
    await eventually(async_true(lambda: script.runs("B") == 6), "B to be retried")
    await reaches(engine, "a1", SagaStatus.PARKED)
    await engine.admin.skip_step("a1", "B-manual", by="ops")
    await suspended(engine, "a1")
    await engine.admin.resume("a1")  # the sleep ends
    # resume leaves the saga SUSPENDED (due at once): wait until a worker took it, ended the
    # sleep and suspended it again in the signal wait, else the next resume races that worker
    await eventually(lambda: in_signal_wait(engine, "a1"), "the saga to wait for the signal")
    await suspended(engine, "a1")
    await engine.admin.resume("a1")  # the signal wait goes on waiting
    await suspended(engine, "a1")
    await engine.signal("a1", "go", 1)
    await reaches(engine, "a1", SagaStatus.PARKED)  # C
    script.failing.clear()
    await engine.admin.retry_step("a1")
    assert await handle.result(timeout=WAIT) == ["A-out", "B-manual", 1, "C-out", "D-out"]
    done = await engine.admin.get_saga("a1")
    assert [e.action for e in done.audit] == ["retry", "skip", "resume", "resume", "retry"]
    assert all(s.kind != EntryKind.ADMIN and s.seq >= 0 for s in done.steps)
    assert [s.seq for s in done.steps] == list(range(len(done.steps)))
    times = [e.at for e in done.audit]
    assert times == sorted(times)
    assert done.audit[1].details["output"] == "B-manual"
    assert done.audit[-1].step == "C"
    entries = await journal_of(engine, "a1")
    audit_seqs = sorted(e.seq for e in entries if e.kind == EntryKind.ADMIN)
    assert audit_seqs == [-5, -4, -3, -2, -1]
    assert [script.runs(n) for n in "ABCD"] == [1, 6, 4, 1]


async def test_an_action_on_a_saga_that_changed_meanwhile_is_refused(store_url: str) -> None:
    script = Script()
    script.failing.add("B")
    workflow = linear("Raced", [script.step("A"), script.step("B", park=True)])
    store = ProxyStore(open_store(store_url))
    async with make_engine(store_url, store=store) as engine:
        engine.register(workflow)
        await engine.start(workflow, None, saga_id="k1")
        await reaches(engine, "k1", SagaStatus.PARKED)

        async def someone_else_cancels() -> None:
            await engine.admin.cancel("k1", "beaten to it")

        # the retry looks at the saga, then someone cancels it before the retry is made
        store.before_journal = someone_else_cancels
        with pytest.raises(SagaConflictError) as caught:
            await engine.admin.retry_step("k1")
        assert "PARKED" in str(caught.value) and "CANCELLED" in str(caught.value)
        snap = await stays(engine, "k1", SagaStatus.CANCELLED)
        assert [e.action for e in snap.audit] == ["cancel"]
        assert script.runs("B") == 3

        # and at the store: a change made against a stale fence writes nothing
        record = await store.load_saga("k1")
        assert record is not None
        audit = JournalEntry(
            "k1", 0, EntryKind.ADMIN, "cancel", EntryStatus.COMPLETED, 1, "{}", None, None, 0, 0
        )
        stale = AdminChange(
            saga_id="k1",
            expect_status=record.status,
            expect_fence=record.fence - 1,
            status=SagaStatus.RUNNING.value,
            due_at=0.0,
            audit=audit,
        )
        assert await store.administer(stale) is None
        assert await store.load_saga("k1") == record


async def test_two_actions_at_once_only_one_is_made(store_url: str) -> None:
    script = Script()
    script.failing.add("B")
    workflow = linear("Twice", [script.step("A"), script.step("B", park=True)])
    async with engine_with(store_url, workflow, worker=False) as engine:
        await engine.start(workflow, None, saga_id="k2")
        await reaches(engine, "k2", SagaStatus.PARKED)
        outcomes = await within(
            asyncio.gather(
                engine.admin.cancel("k2", "first"),
                engine.admin.compensate("k2"),
                engine.admin.skip_step("k2", "x"),
                return_exceptions=True,
            )
        )
        made = [o for o in outcomes if isinstance(o, SagaSnapshot)]
        refused = [o for o in outcomes if isinstance(o, SagaConflictError | SagaStateError)]
        assert len(made) == 1 and len(refused) == 2, outcomes
        snap = await engine.admin.get_saga("k2")
        assert len(snap.audit) == 1


# -- listing ----------------------------------------------------------------------------------


async def make_sagas(engine: Engine, count: int) -> list[str]:
    """``count`` PENDING sagas of two workflows (nobody runs them), oldest first."""
    first = linear("ListA", [])
    second = linear("ListB", [])
    engine.register(first, second)
    ids = []
    for i in range(count):
        workflow = first if i % 2 == 0 else second
        await engine.start(workflow, None, saga_id=f"l{i:02d}", run_here=False)
        ids.append(f"l{i:02d}")
        await asyncio.sleep(0.002)  # distinct creation times, for the time filters below
    return ids


async def test_list_sagas_pages_newest_first_each_saga_once(store_url: str) -> None:
    async with make_engine(store_url, worker=False) as engine:
        ids = await make_sagas(engine, 25)
        seen: list[str] = []
        sizes = []
        cursor: str | None = None
        while True:
            page = await engine.admin.list_sagas(limit=10, cursor=cursor)
            sizes.append(len(page))
            seen += [s.saga_id for s in page]
            assert all(s.steps == () for s in page)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert sizes == [10, 10, 5]
        assert seen == ids[::-1]
        # a page of exactly the rest has no next page
        assert (await engine.admin.list_sagas(limit=25)).next_cursor is None
        # new sagas arriving meanwhile do not disturb the pages
        page = await engine.admin.list_sagas(limit=10)
        await engine.start("ListA", None, saga_id="newer", run_here=False)
        rest = await engine.admin.list_sagas(limit=100, cursor=page.next_cursor)
        assert [s.saga_id for s in [*page, *rest]] == ids[::-1]
        # with a filter too
        names: list[str] = []
        cursor = None
        while True:
            page = await engine.admin.list_sagas(name="ListB", limit=4, cursor=cursor)
            names += [s.saga_id for s in page]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert names == ids[1::2][::-1]


async def test_list_sagas_filters(store_url: str) -> None:
    async with make_engine(store_url, worker=False) as engine:
        ids = await make_sagas(engine, 12)
        for saga_id in ids[:3]:
            await engine.admin.cancel(saga_id, "filtered")
        admin = engine.admin
        assert [s.saga_id for s in await admin.list_sagas(status="CANCELLED")] == ids[:3][::-1]
        assert [s.saga_id for s in await admin.list_sagas(status="cancelled")] == ids[:3][::-1]
        pending = await admin.list_sagas(status=SagaStatus.PENDING)
        assert [s.saga_id for s in pending] == ids[3:][::-1]
        assert all(s.status == SagaStatus.PENDING for s in pending)
        listed = await admin.list_sagas(status="PENDING", name="ListA")
        assert [s.saga_id for s in listed] == [i for i in ids[3:] if int(i[1:]) % 2 == 0][::-1]
        assert len(await admin.list_sagas(name="Nothing")) == 0
        # creation time: after inclusive, before exclusive, epoch or datetime
        records = {s.saga_id: s for s in await admin.list_sagas(limit=100)}
        store = engine._store_or_raise()
        created = [(await store.load_saga(i)).created_at for i in ids]  # type: ignore[union-attr]
        assert created == sorted(created) and len(set(created)) == len(created)
        after = await admin.list_sagas(created_after=created[5])
        assert [s.saga_id for s in after] == ids[5:][::-1]
        before = await admin.list_sagas(created_before=created[5])
        assert [s.saga_id for s in before] == ids[:5][::-1]
        window = await admin.list_sagas(created_after=created[2], created_before=created[7])
        assert [s.saga_id for s in window] == ids[2:7][::-1]
        middle = datetime.fromtimestamp((created[4] + created[5]) / 2, UTC)
        assert [s.saga_id for s in await admin.list_sagas(created_after=middle)] == ids[5:][::-1]
        naive = middle.replace(tzinfo=None)  # taken as UTC
        assert [s.saga_id for s in await admin.list_sagas(created_before=naive)] == ids[:5][::-1]
        assert records[ids[0]].created_at <= records[ids[1]].created_at


async def test_a_sagas_shown_creation_time_finds_it_as_created_after(store_url: str) -> None:
    # a snapshot's created_at is rounded to the microsecond, half the time upwards: an operator
    # who copies it into created_after must still find that saga
    async with make_engine(store_url, worker=False) as engine:
        ids = await make_sagas(engine, 40)
        for saga_id in ids:
            shown = (await engine.admin.get_saga(saga_id)).created_at
            found = await engine.admin.list_sagas(created_after=shown, limit=1000)
            assert saga_id in {s.saga_id for s in found}


async def test_list_sagas_refuses_bad_arguments(store_url: str) -> None:
    async with make_engine(store_url, worker=False) as engine:
        await make_sagas(engine, 3)
        admin = engine.admin
        for limit in (0, -1, 1001, True, 2.5, "10"):
            with pytest.raises(SagaValidationError, match="limit"):
                await admin.list_sagas(limit=limit)  # type: ignore[arg-type]
        for cursor in ("garbage", "", "bm90IGpzb24", "WzEsMiwzXQ", "eyJhIjogMX0", "é"):
            with pytest.raises(SagaValidationError, match="cursor"):
                await admin.list_sagas(cursor=cursor)
        with pytest.raises(SagaValidationError, match="unknown status"):
            await admin.list_sagas(status="DONE")
        with pytest.raises(SagaValidationError, match="created_after"):
            await admin.list_sagas(created_after="yesterday")  # type: ignore[arg-type]
        assert len(await admin.list_sagas(limit=1000)) == 3


async def test_count_by_status_has_every_status(store_url: str) -> None:
    async with make_engine(store_url, worker=False) as engine:
        assert await engine.admin.count_by_status() == {s.value: 0 for s in admin_order()}
        ids = await make_sagas(engine, 5)
        await engine.admin.cancel(ids[0], "counted")
        await engine.admin.cancel(ids[1], "counted")
        counts = await engine.admin.count_by_status()
        assert list(counts) == [s.value for s in admin_order()]
        assert counts["PENDING"] == 3 and counts["CANCELLED"] == 2
        assert sum(counts.values()) == 5


def admin_order() -> list[SagaStatus]:
    from sagakit.admin import LIFECYCLE

    assert set(LIFECYCLE) == set(SagaStatus)
    return list(LIFECYCLE)


# -- the operator's process -------------------------------------------------------------------


@pytest.mark.parametrize("action", ["retry", "skip", "compensate", "cancel"])
async def test_an_operator_without_the_code_steers_a_parked_saga(
    shared_store_url: str, action: str
) -> None:
    script = Script()
    a, b, c = script.step("A"), script.step("B", park=True), script.step("C")
    script.failing.add("B")
    workflow = linear("Remote", [a, b, c])
    async with engine_with(shared_store_url, workflow) as worker, operator(shared_store_url) as ops:
        assert ops.workflows == {}
        await worker.start(workflow, None, saga_id="o1")
        await reaches(worker, "o1", SagaStatus.PARKED)
        listed = await ops.admin.list_sagas(status="PARKED")
        assert [s.saga_id for s in listed] == ["o1"]
        script.failing.clear()
        if action == "retry":
            await ops.admin.retry_step("o1", by="ops")
            assert await ops.handle("o1").result(timeout=WAIT) == ["A-out", "B-out", "C-out"]
        elif action == "skip":
            await ops.admin.skip_step("o1", "manual", by="ops")
            assert await ops.handle("o1").result(timeout=WAIT) == ["A-out", "manual", "C-out"]
        elif action == "compensate":
            await ops.admin.compensate("o1", by="ops")
            with pytest.raises(SagaCompensatedError):
                await ops.handle("o1").result(timeout=WAIT)
            assert script.undone() == ["B", "A"]
        else:
            await ops.admin.cancel("o1", "wrong order", by="ops")
            with pytest.raises(SagaCancelledError):
                await ops.handle("o1").result(timeout=WAIT)
        snap = await ops.admin.get_saga("o1")
        assert len(snap.audit) == 1 and snap.audit[0].by == "ops"
        assert "o1" not in ops._tasks
        assert script.runs("A") == 1


async def test_an_operator_without_the_code_resumes_a_sleeping_saga(shared_store_url: str) -> None:
    script = Script()
    a, b = script.step("A"), script.step("B")

    @saga_workflow("RemoteSleeper")
    async def workflow(saga: SagaContext, inp: Any) -> list[str]:
        first = await a(saga, None)
        await saga.sleep(timedelta(hours=1))
        return [first, await b(saga, None)]

    async with engine_with(shared_store_url, workflow) as worker, operator(shared_store_url) as ops:
        await worker.start(workflow, None, saga_id="o2")
        await suspended(worker, "o2")
        await ops.admin.resume("o2")
        assert await ops.handle("o2").result(timeout=WAIT) == ["A-out", "B-out"]
        assert "o2" not in ops._tasks
