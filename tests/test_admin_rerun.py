"""Operators taking ended sagas up again (``engine.admin``), on every store kind: a COMPENSATED
saga retried or skipped from its failed step (DBOS's resume), a FAILED rollback abandoned with
``forward=True``, a COMPLETED saga rolled back, an ended saga deleted; and each refusal.

A ledger counts every side effect (each run of a step, each compensation), so that a test
asserts what ran again and what did not: the steps a rollback undid run twice, a step with no
compensation once (its recorded output is replayed).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sagakit import (
    Engine,
    NonDeterminismError,
    RetryPolicy,
    SagaCompensatedError,
    SagaContext,
    SagaNotFoundError,
    SagaSnapshot,
    SagaStateError,
    SagaStatus,
    SagaStep,
    SagaValidationError,
    SagaWorkflow,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)
from sagakit.stores import open_store
from sagakit.stores.base import AdminChange, EntryKind, SagaRecord, Store
from tests.conftest import fast_retry, make_engine
from tests.waiting import WAIT, eventually, suspended
from tests.wrapped_store import WrappedStore


class Ledger:
    """Steps that write every run and every compensation down; ``failing`` steps raise a
    TerminalError (the saga rolls back at once), ``undo_failing`` compensations too."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.failing: set[str] = set()
        self.undo_failing: set[str] = set()

    def step(self, name: str, *, undo: bool = True) -> SagaStep[Any]:
        async def compensate(data: Any, failed: bool) -> None:
            self.log.append(("undo", name))
            if name in self.undo_failing:
                raise TerminalError(f"the compensation of {name} fails")

        @saga_step(
            name,
            compensate=compensate if undo else None,
            retry=fast_retry(1),
            compensation_retry=fast_retry(1),
        )
        async def run(ctx: SagaContext, inp: Any) -> str:
            self.log.append(("run", name))
            if name in self.failing:
                raise TerminalError(f"{name} fails for good")
            return f"{name}-out"

        return run

    def runs(self, name: str) -> int:
        return self.log.count(("run", name))

    def undone(self) -> list[str]:
        return [name for kind, name in self.log if kind == "undo"]

    def counts(self, *names: str) -> list[int]:
        return [self.runs(n) for n in names]


def order_saga(ledger: Ledger, name: str) -> SagaWorkflow[Any, Any]:
    """Reserve (undone), Note (nothing to undo), Charge (undone), Ship, Email: in order."""
    steps = [
        ledger.step("Reserve"),
        ledger.step("Note", undo=False),
        ledger.step("Charge"),
        ledger.step("Ship"),
        ledger.step("Email"),
    ]

    @saga_workflow(name)
    async def workflow(saga: SagaContext, inp: Any) -> list[str]:
        return [await step(saga, inp) for step in steps]

    return workflow


STEPS = ("Reserve", "Note", "Charge", "Ship", "Email")
ALL_OUT = [f"{n}-out" for n in STEPS]


async def ended(engine: Engine, saga_id: str, status: SagaStatus) -> SagaSnapshot:
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


async def compensated_at_ship(engine: Engine, ledger: Ledger, saga_id: str) -> SagaSnapshot:
    """Start the order saga with Ship failing for good: it is rolled back (Ship itself, whose
    compensation undoes what it did before it failed, then Charge and Reserve)."""
    ledger.failing.add("Ship")
    await engine.start(order_saga(ledger, f"Order-{saga_id}"), None, saga_id=saga_id)
    snap = await ended(engine, saga_id, SagaStatus.COMPENSATED)
    assert ledger.undone() == ["Ship", "Charge", "Reserve"]
    assert ledger.counts(*STEPS) == [1, 1, 1, 1, 0]
    return snap


def comps(snap: SagaSnapshot) -> list[str]:
    return [s.name for s in snap.steps if s.kind == EntryKind.COMPENSATION]


# -- COMPENSATED: retry and skip --------------------------------------------------------------


async def test_a_compensated_saga_retried_goes_on_from_its_failed_step(engine: Engine) -> None:
    ledger = Ledger()
    await compensated_at_ship(engine, ledger, "r1")
    ledger.failing.clear()
    made = await engine.admin.retry_step("r1", reason="carrier is back", by="ann")
    assert made.status == SagaStatus.RUNNING
    (audit,) = made.audit
    assert (audit.action, audit.step, audit.seq, audit.by) == ("retry", "Ship", 3, "ann")
    assert audit.details["rerun"] is True and audit.details["from"] == "COMPENSATED"
    assert audit.details["runs_again"] == [0, 2, 3]  # Reserve, Charge and Ship: undone
    assert audit.details["seqs"] == [3]
    assert [c["name"] for c in audit.details["compensations"]] == ["Ship", "Charge", "Reserve"]
    assert audit.details["cause"]["type"] == "TerminalError"
    assert await engine.handle("r1").result(timeout=WAIT) == ALL_OUT
    # the undone steps ran again, the one without compensation did not; nothing undone again
    assert ledger.counts(*STEPS) == [2, 1, 2, 2, 1]
    assert ledger.undone() == ["Ship", "Charge", "Reserve"]
    done = await ended(engine, "r1", SagaStatus.COMPLETED)
    assert comps(done) == [] and done.error is None
    assert [(s.seq, s.name) for s in done.steps] == list(enumerate(STEPS))


async def test_a_compensated_saga_that_fails_again_rolls_back_again(engine: Engine) -> None:
    ledger = Ledger()
    await compensated_at_ship(engine, ledger, "r2")
    await engine.admin.retry_step("r2")  # Ship still fails
    again = await ended(engine, "r2", SagaStatus.COMPENSATED)
    assert ledger.counts(*STEPS) == [2, 1, 2, 2, 0]
    assert ledger.undone() == ["Ship", "Charge", "Reserve"] * 2
    assert comps(again) == ["Ship", "Charge", "Reserve"]
    ledger.failing.clear()
    await engine.admin.retry_step("r2")
    assert await engine.handle("r2").result(timeout=WAIT) == ALL_OUT
    assert ledger.counts(*STEPS) == [3, 1, 3, 3, 1]
    assert [a.action for a in (await engine.admin.get_saga("r2")).audit] == ["retry", "retry"]


async def test_skip_on_a_compensated_saga_records_the_output_and_goes_on(engine: Engine) -> None:
    ledger = Ledger()
    await compensated_at_ship(engine, ledger, "s1")
    made = await engine.admin.skip_step("s1", "shipped-by-hand", reason="sent it ourselves")
    (audit,) = made.audit
    assert (audit.action, audit.step, audit.details["output"]) == (
        "skip",
        "Ship",
        "shipped-by-hand",
    )
    out = await engine.handle("s1").result(timeout=WAIT)
    assert out == ["Reserve-out", "Note-out", "Charge-out", "shipped-by-hand", "Email-out"]
    assert ledger.counts(*STEPS) == [2, 1, 2, 1, 1]  # Ship not run again
    assert ledger.undone() == ["Ship", "Charge", "Reserve"]


async def test_retry_goes_forward_again_after_an_operator_rolled_the_saga_back(
    engine: Engine,
) -> None:
    ledger = Ledger()
    workflow = order_saga(ledger, "OrderC")
    assert await engine.run(workflow, None, saga_id="c1", timeout=WAIT) == ALL_OUT
    # a finished saga rolled back: every compensation, newest first; its output kept
    made = await engine.admin.compensate("c1", reason="order returned", by="bob")
    assert made.status == SagaStatus.COMPENSATING and made.output is None
    assert made.audit[0].details == {"output": ALL_OUT}
    with pytest.raises(SagaCompensatedError, match="bob asked to roll the saga back"):
        await engine.handle("c1").result(timeout=WAIT)
    assert ledger.undone() == ["Email", "Ship", "Charge", "Reserve"]
    assert ledger.counts(*STEPS) == [1] * 5  # replayed to its end, not run again
    # no failed step: there is nothing to skip, but retry makes it go forward again
    with pytest.raises(SagaStateError, match="nothing to skip"):
        await engine.admin.skip_step("c1", "x")
    await engine.admin.retry_step("c1", reason="customer kept it after all")
    assert await engine.handle("c1").result(timeout=WAIT) == ALL_OUT
    assert ledger.counts(*STEPS) == [2, 1, 2, 2, 2]
    assert ledger.undone() == ["Email", "Ship", "Charge", "Reserve"]
    snap = await engine.admin.get_saga("c1")
    assert [a.action for a in snap.audit] == ["compensate", "retry"]


async def test_compensate_a_completed_saga_whose_compensation_fails_ends_failed(
    engine: Engine,
) -> None:
    ledger = Ledger()
    ledger.undo_failing.add("Charge")
    assert await engine.run(order_saga(ledger, "OrderF"), None, saga_id="c2", timeout=WAIT)
    await engine.admin.compensate("c2")
    failed = await ended(engine, "c2", SagaStatus.FAILED)
    assert failed.error is not None and failed.error["kind"] == "compensation_failed"
    assert ledger.undone() == ["Email", "Ship", "Charge", "Reserve"]


async def test_a_strict_failed_step_is_not_undone_but_runs_again(engine: Engine) -> None:
    ledger = Ledger()
    ledger.failing.add("Pay")

    @saga_step_strict("Pay", compensate=lambda data, failed: ledger.log.append(("undo", "Pay")))
    async def pay(ctx: SagaContext, inp: Any) -> str:
        ledger.log.append(("run", "Pay"))
        if "Pay" in ledger.failing:
            raise TerminalError("card declined")
        return "Pay-out"

    reserve = ledger.step("Reserve")

    @saga_workflow("Strict")
    async def workflow(saga: SagaContext, inp: Any) -> list[str]:
        return [await reserve(saga, inp), await pay(saga, inp)]

    await engine.start(workflow, None, saga_id="t1")
    await ended(engine, "t1", SagaStatus.COMPENSATED)
    assert ledger.undone() == ["Reserve"]  # a strict step that failed did nothing to undo
    ledger.failing.clear()
    made = await engine.admin.retry_step("t1")
    assert made.audit[0].details["runs_again"] == [0]
    assert made.audit[0].details["seqs"] == [1]
    assert await engine.handle("t1").result(timeout=WAIT) == ["Reserve-out", "Pay-out"]
    assert ledger.counts("Reserve", "Pay") == [2, 2]


async def test_parallel_branches_run_again_only_where_undone(engine: Engine) -> None:
    ledger = Ledger()
    ledger.failing.add("Ship")
    reserve, note, ship = (
        ledger.step("Reserve"),
        ledger.step("Note", undo=False),
        ledger.step("Ship"),
    )

    async def branch(saga: SagaContext, first: SagaStep[Any], then: SagaStep[Any]) -> str:
        await first(saga, None)
        return str(await then(saga, None))

    @saga_workflow("Branches")
    async def workflow(saga: SagaContext, inp: Any) -> list[str]:
        return list(await saga.gather(branch(saga, reserve, note), branch(saga, note, ship)))

    await engine.start(workflow, None, saga_id="g1")
    await ended(engine, "g1", SagaStatus.COMPENSATED)
    assert sorted(ledger.undone()) == ["Reserve", "Ship"]
    ledger.failing.clear()
    await engine.admin.retry_step("g1")
    assert await engine.handle("g1").result(timeout=WAIT) == ["Note-out", "Ship-out"]
    # Reserve and Ship were undone: they ran again; Note (twice, no compensation) did not
    assert ledger.counts("Reserve", "Note", "Ship") == [2, 2, 2]


# -- FAILED in its rollback: forward ----------------------------------------------------------


async def test_forward_retry_abandons_a_failed_rollback(engine: Engine) -> None:
    ledger = Ledger()
    ledger.failing.add("Ship")
    ledger.undo_failing.add("Charge")
    await engine.start(order_saga(ledger, "OrderW"), None, saga_id="f1")
    await ended(engine, "f1", SagaStatus.FAILED)
    assert ledger.undone() == ["Ship", "Charge", "Reserve"]
    ledger.failing.clear()
    made = await engine.admin.retry_step("f1", forward=True, reason="undo the undo")
    (audit,) = made.audit
    assert audit.details["rerun"] is True and audit.details["from"] == "FAILED"
    assert [(c["name"], c["status"]) for c in audit.details["compensations"]] == [
        ("Ship", "completed"),
        ("Charge", "failed"),
        ("Reserve", "completed"),
    ]
    # every compensation ran (one of them failed): their steps run again
    assert audit.details["runs_again"] == [0, 2, 3]
    assert await engine.handle("f1").result(timeout=WAIT) == ALL_OUT
    assert ledger.counts(*STEPS) == [2, 1, 2, 2, 1]


async def test_forward_skip_and_the_default_retry_of_a_failed_rollback(engine: Engine) -> None:
    ledger = Ledger()
    ledger.failing.add("Ship")
    ledger.undo_failing.add("Charge")
    workflow = order_saga(ledger, "OrderS")
    await engine.start(workflow, None, saga_id="f2")
    await ended(engine, "f2", SagaStatus.FAILED)
    # without forward, a mock output is refused (it would finish the rollback)
    with pytest.raises(SagaValidationError, match="forward=True"):
        await engine.admin.skip_step("f2", "by-hand")
    await engine.admin.skip_step("f2", "by-hand", forward=True)
    out = await engine.handle("f2").result(timeout=WAIT)
    assert out == ["Reserve-out", "Note-out", "Charge-out", "by-hand", "Email-out"]
    assert ledger.counts(*STEPS) == [2, 1, 2, 1, 1]
    # the default still retries the failed compensations, and the rollback finishes
    ledger.failing.add("Ship")
    await engine.start(workflow, None, saga_id="f3")
    await ended(engine, "f3", SagaStatus.FAILED)
    ledger.undo_failing.clear()
    await engine.admin.retry_step("f3")
    await ended(engine, "f3", SagaStatus.COMPENSATED)


# -- idempotent actions -----------------------------------------------------------------------


class AnswerLost(WrappedStore):
    """Applies every admin change twice, as a store retrying after a lost answer does."""

    async def administer(self, change: AdminChange) -> SagaRecord | None:
        await self.inner.administer(change)
        return await self.inner.administer(change)


async def test_a_rerun_retried_after_a_lost_answer_is_made_once(store_url: str) -> None:
    ledger = Ledger()
    async with make_engine(store_url, store=AnswerLost(open_store(store_url))) as engine:
        await compensated_at_ship(engine, ledger, "i1")
        ledger.failing.clear()
        made = await engine.admin.retry_step("i1")
        assert [a.action for a in made.audit] == ["retry"]
        assert await engine.handle("i1").result(timeout=WAIT) == ALL_OUT
        assert ledger.counts(*STEPS) == [2, 1, 2, 2, 1]


# -- delete -----------------------------------------------------------------------------------


async def test_delete_removes_an_ended_saga_and_refuses_one_that_has_not_ended(
    engine: Engine,
) -> None:
    @saga_workflow("Waiter")
    async def waiter(saga: SagaContext, inp: Any) -> Any:
        saga.set_state("stage", "waiting")
        return await saga.wait_for_signal("go")

    await engine.start(waiter, None, saga_id="d1")
    await suspended(engine, "d1")
    with pytest.raises(SagaStateError, match=r"cancel it .* or compensate it") as caught:
        await engine.admin.delete("d1")
    assert caught.value.allowed == ("COMPLETED", "COMPENSATED", "FAILED", "CANCELLED")
    await engine.signal("d1", "go", 7)
    assert await engine.handle("d1").result(timeout=WAIT) == 7
    store: Store = engine._store_or_raise()
    gone = await engine.admin.delete("d1", reason="test data", by="ann")
    assert gone.status == SagaStatus.COMPLETED and gone.output == 7
    with pytest.raises(SagaNotFoundError):
        await engine.admin.get_saga("d1")
    assert await store.load_journal("d1") == []
    assert await store.load_events("d1") == []
    assert await store.load_state("saga:d1") == {}  # its published state
    with pytest.raises(SagaNotFoundError):
        await engine.query("d1", "stage")
    with pytest.raises(SagaNotFoundError):
        await engine.admin.delete("d1")
    assert not await store.delete_saga("d1")


# -- refusals ---------------------------------------------------------------------------------


async def test_refusals_say_what_to_do_and_write_nothing(engine: Engine) -> None:
    ledger = Ledger()
    assert await engine.run(order_saga(ledger, "OrderR"), None, saga_id="x1", timeout=WAIT)
    for act in (engine.admin.retry_step, engine.admin.skip_step):
        with pytest.raises(SagaStateError, match="compensate rolls it back") as caught:
            await act("x1")
        assert caught.value.allowed == ("PARKED", "FAILED", "COMPENSATED", "SUSPENDED")
    assert (await engine.admin.get_saga("x1")).audit == ()

    # a saga that failed on non-determinism has no rollback to abandon
    version = ["v1"]
    a, b = ledger.step("A"), ledger.step("B")

    @saga_workflow("Drift")
    async def drift(saga: SagaContext, inp: Any) -> str:
        out: str = await (a if version[0] == "v1" else b)(saga, None)
        await saga.wait_for_signal("go")
        return out

    await engine.start(drift, None, saga_id="x2")
    await suspended(engine, "x2")
    version[0] = "v2"
    await engine.signal("x2", "go")
    await ended(engine, "x2", SagaStatus.FAILED)
    with pytest.raises(NonDeterminismError):
        await engine.handle("x2").result(timeout=WAIT)
    for act in (engine.admin.retry_step, engine.admin.skip_step):
        with pytest.raises(SagaStateError, match="without forward=True replays it"):
            await act("x2", forward=True)
    assert (await engine.admin.get_saga("x2")).audit == ()


async def test_a_child_saga_is_not_taken_up_again_once_ended(engine: Engine) -> None:
    ledger = Ledger()
    ledger.failing.add("Ship")
    child = order_saga(ledger, "ChildOrder")

    @saga_workflow("Parent")
    async def parent(saga: SagaContext, inp: Any) -> str:
        try:
            await saga.call(child, None, saga_id="kid")
        except SagaCompensatedError:
            return "child rolled back"
        return "child done"

    engine.register(child)
    assert await engine.run(parent, None, saga_id="mom", timeout=WAIT) == "child rolled back"
    await ended(engine, "kid", SagaStatus.COMPENSATED)
    with pytest.raises(SagaStateError, match="child of saga 'mom'"):
        await engine.admin.retry_step("kid")
    assert (await engine.admin.get_saga("kid")).audit == ()


# -- a step waiting out a retry backoff (SUSPENDED) -------------------------------------------

#: a backoff far longer than a test: the saga suspends until an operator acts
LONG_BACKOFF = RetryPolicy(max_attempts=2, initial_interval=timedelta(hours=1))


def quoting_saga(ledger: Ledger, name: str, *, undo_quote: bool = False) -> SagaWorkflow[Any, Any]:
    """Reserve (undone), Quote (fails until ``"Quote"`` leaves ``ledger.failing``, then waits
    an hour to retry), Ship (undone): in order."""
    reserve, ship = ledger.step("Reserve"), ledger.step("Ship")

    async def unquote(data: Any, failed: bool) -> None:
        ledger.log.append(("undo", "Quote"))

    @saga_step("Quote", compensate=unquote if undo_quote else None, retry=LONG_BACKOFF)
    async def quote(ctx: SagaContext, inp: Any) -> dict[str, int]:
        ledger.log.append(("run", "Quote"))
        if "Quote" in ledger.failing:
            raise RuntimeError("the quote service is down")
        return {"price": 5}

    @saga_workflow(name)
    async def order(saga: SagaContext, inp: Any) -> Any:
        await reserve(saga, None)
        price = await quote(saga, None)
        await ship(saga, None)
        return price

    return order


async def waiting_to_retry(engine: Engine, ledger: Ledger, saga_id: str, runs: int) -> Any:
    """Wait until Quote ran ``runs`` times in all and the saga suspended to retry it."""

    async def check() -> bool:
        return ledger.runs("Quote") == runs

    await eventually(check, f"Quote to run {runs} times")
    snapshot = await suspended(engine, saga_id)
    assert [(s.name, s.status) for s in snapshot.retrying] == [("Quote", "retrying")]
    return snapshot


async def test_skip_step_records_the_output_of_a_step_waiting_to_retry(engine: Engine) -> None:
    ledger = Ledger()
    ledger.failing.add("Quote")
    await engine.start(quoting_saga(ledger, "QuoteS", undo_quote=True), None, saga_id="q1")
    await waiting_to_retry(engine, ledger, "q1", 1)

    made = await engine.admin.skip_step("q1", {"price": 7}, reason="quoted by phone", by="ann")
    assert [(a.action, a.step, a.details["output"]) for a in made.audit] == [
        ("skip", "Quote", {"price": 7})
    ]
    assert await engine.handle("q1").result(timeout=WAIT) == {"price": 7}
    assert ledger.counts("Reserve", "Quote", "Ship") == [1, 1, 1]  # Quote did not run again

    # the skipped step did nothing, so a rollback has nothing of it to undo
    await engine.admin.compensate("q1", reason="customer cancelled")
    await ended(engine, "q1", SagaStatus.COMPENSATED)
    assert ledger.undone() == ["Ship", "Reserve"]


async def test_retry_step_attempts_now_with_a_fresh_budget_and_resume_keeps_the_count(
    engine: Engine,
) -> None:
    ledger = Ledger()
    ledger.failing.add("Quote")
    await engine.start(quoting_saga(ledger, "QuoteR"), None, saga_id="q2")
    first = await waiting_to_retry(engine, ledger, "q2", 1)
    assert first.retrying[0].attempts == 1

    # retry_step: the attempt runs now, as the first of 2 again, so failing it waits to retry
    await engine.admin.retry_step("q2", reason="the service is back")
    again = await waiting_to_retry(engine, ledger, "q2", 2)
    assert again.retrying[0].attempts == 1
    assert [a.action for a in again.audit] == ["retry"]

    # resume: the attempt runs now too, but as the second of 2: failing it gives up
    await engine.admin.resume("q2")
    with pytest.raises(SagaCompensatedError, match="quote service is down"):
        await engine.handle("q2").result(timeout=WAIT)
    assert ledger.counts("Reserve", "Quote", "Ship") == [1, 3, 0]
    assert ledger.undone() == ["Reserve"]


async def test_retry_step_of_a_step_waiting_to_retry_that_now_succeeds(engine: Engine) -> None:
    ledger = Ledger()
    ledger.failing.add("Quote")
    await engine.start(quoting_saga(ledger, "QuoteOk"), None, saga_id="q3")
    await waiting_to_retry(engine, ledger, "q3", 1)
    ledger.failing.clear()
    await engine.admin.retry_step("q3")
    assert await engine.handle("q3").result(timeout=WAIT) == {"price": 5}
    assert ledger.counts("Reserve", "Quote", "Ship") == [1, 2, 1]


async def test_retry_and_skip_refuse_a_saga_waiting_for_something_else(engine: Engine) -> None:
    @saga_workflow("AwaitGo")
    async def await_go(saga: SagaContext, inp: Any) -> Any:
        return await saga.wait_for_signal("go")

    @saga_workflow("Nap")
    async def nap(saga: SagaContext, inp: Any) -> str:
        await saga.sleep(3600)
        return "rested"

    await engine.start(await_go, None, saga_id="w1")
    await engine.start(nap, None, saga_id="w2")
    waiting = await suspended(engine, "w1")
    await suspended(engine, "w2")
    assert waiting.wait_token is not None
    for act in (engine.admin.retry_step, engine.admin.skip_step):
        with pytest.raises(SagaStateError, match=r"waits for signal 'go'") as caught:
            await act("w1")
        message = str(caught.value)
        assert waiting.wait_token in message and "engine.notify" in message
        assert "resume it" in message and "cancel" in message
        assert caught.value.allowed[-1] == "SUSPENDED waiting out a retry backoff"
        with pytest.raises(SagaStateError, match=r"waits for a timer"):
            await act("w2")
    for saga_id in ("w1", "w2"):
        assert (await engine.admin.get_saga(saga_id)).audit == ()
    await engine.signal("w1", "go", 3)
    assert await engine.handle("w1").result(timeout=WAIT) == 3
