"""Property test of parking and the admin API: random sagas steered by random operators, run by
the engine, against a pure-Python model of what must happen.

A saga is 1-4 steps ``S0, S1, ...`` in order, each hybrid or strict, parking when it runs out of
its two attempts (``on_exhausted="park"``), with an optional ``saga.sleep(1 hour)`` after one of
them. Each step first fails (retryably) for 0-2 whole budgets, so it parks that many times,
then either succeeds or fails for good (TerminalError). Whenever the saga stops (PARKED, or
SUSPENDED in the sleep), the operator does the next action of a random list (retry, skip,
compensate, cancel, resume); an action the status does not allow must be refused with
SagaStateError and leave nothing behind, and the operator then does what does go on (retry a
parked saga, resume a sleeping one).

The model: a step's attempts are counted for real (two per park, one for the attempt that
succeeds or fails for good); a skipped step is never run again nor undone; a rollback (a step
failing for good, or an operator's compensate) undoes, newest first and each once, the steps
that completed (not skipped) and the hybrid step that failed (``failed=True``); a cancel undoes
nothing. The saga's final status, its output or error, the audit trail and the ledger of runs
and compensations must all match.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sagakit import (
    Engine,
    SagaCancelledError,
    SagaCompensatedError,
    SagaContext,
    SagaError,
    SagaSnapshot,
    SagaStateError,
    SagaStatus,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)
from tests.conftest import empty_pg_database, engine_with, fast_retry

pytestmark = pytest.mark.slow

SAGA_ID = "admin-prop"
WAIT = 30.0
ACTIONS = ("retry", "skip", "compensate", "cancel", "resume")


@dataclass(frozen=True)
class StepSpec:
    strict: bool
    #: how many whole retry budgets (two attempts each) fail before the step's last attempt
    parks: int
    #: the last attempt fails for good instead of succeeding
    terminal: bool
    #: the first call of its compensation fails for good (the saga is left FAILED)
    undo_fails: bool = False


@dataclass(frozen=True)
class SagaSpec:
    steps: tuple[StepSpec, ...]
    #: the saga sleeps an hour after this step (None: it never sleeps)
    sleep_after: int | None
    actions: tuple[str, ...]


@st.composite
def saga_specs(draw: st.DrawFn) -> SagaSpec:
    steps = draw(
        st.lists(
            st.builds(
                StepSpec,
                strict=st.booleans(),
                parks=st.integers(0, 2),
                terminal=st.sampled_from([False, False, False, True]),
                undo_fails=st.sampled_from([False, False, True]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    sleep_after = draw(st.none() | st.integers(0, len(steps) - 1))
    actions = draw(st.lists(st.sampled_from(ACTIONS), max_size=8))
    return SagaSpec(tuple(steps), sleep_after, tuple(actions))


# -- the model --------------------------------------------------------------------------------


@dataclass
class Expected:
    status: SagaStatus
    output: list[str] | None
    #: attempts per step
    runs: list[int]
    #: compensations, in order: (step, failed)
    undone: list[tuple[str, bool]]
    #: the actions made (audit entries), in order
    audit: list[str]
    #: the actions refused, in order
    refused: list[str]
    cause_type: str | None = None
    #: a compensation failed for good, leaving the saga FAILED for the operator
    rollback_failed: bool = False


def model(spec: SagaSpec) -> Expected:
    actions = iter(spec.actions)
    runs = [0] * len(spec.steps)
    done: list[tuple[int, bool]] = []  # (step, skipped)
    audit: list[str] = []
    refused: list[str] = []
    outputs: list[str] = []

    def rollback(failed_step: int | None, cause: str) -> Expected:
        undone = []
        if failed_step is not None and not spec.steps[failed_step].strict:
            undone.append((failed_step, True))
        undone += [(i, False) for i, skipped in reversed(done) if not skipped]
        ran = [(f"S{i}", failed) for i, failed in undone]
        failures = [(f"S{i}", failed) for i, failed in undone if spec.steps[i].undo_fails]
        if failures and stopped(SagaStatus.FAILED) == "retry":
            ran += failures  # the failed ones run again, newest first; they work now
        end = SagaStatus.COMPENSATED
        return Expected(end, None, runs, ran, audit, refused, cause, bool(failures))

    def stopped(status: SagaStatus) -> str:
        """The action the operator makes on a saga stopped in ``status``."""
        default = "resume" if status == SagaStatus.SUSPENDED else "retry"
        allowed = {
            SagaStatus.PARKED: {"retry", "skip", "compensate", "cancel"},
            SagaStatus.SUSPENDED: {"resume", "compensate", "cancel"},
            SagaStatus.FAILED: {"retry", "skip"},
        }[status]
        action = next(actions, default)
        if action not in allowed:
            refused.append(action)
            action = default
        audit.append(action)
        return action

    for i, step in enumerate(spec.steps):
        parks_left = step.parks
        skipped = False
        while parks_left:
            runs[i] += 2
            parks_left -= 1
            action = stopped(SagaStatus.PARKED)
            if action == "skip":
                skipped = True
                break
            if action == "compensate":
                return rollback(i, "OperatorRollback")
            if action == "cancel":
                return Expected(SagaStatus.CANCELLED, None, runs, [], audit, refused)
        if skipped:
            done.append((i, True))
            outputs.append(f"S{i}-skipped")
        else:
            runs[i] += 1
            if step.terminal:
                return rollback(i, "TerminalError")
            done.append((i, False))
            outputs.append(f"S{i}-out")
        if spec.sleep_after == i:
            action = stopped(SagaStatus.SUSPENDED)
            if action == "compensate":
                return rollback(None, "OperatorRollback")
            if action == "cancel":
                return Expected(SagaStatus.CANCELLED, None, runs, [], audit, refused)
    return Expected(SagaStatus.COMPLETED, outputs, runs, [], audit, refused)


# -- the engine -------------------------------------------------------------------------------


@dataclass
class Observed:
    status: SagaStatus
    output: Any
    runs: list[int]
    undone: list[tuple[str, bool]]
    audit: list[str]
    refused: list[str]
    cause_type: str | None
    snapshot: SagaSnapshot
    raised: BaseException | None = None


def build(spec: SagaSpec, runs: list[int], undone: list[tuple[str, bool]]) -> Any:
    steps = []
    for i, step_spec in enumerate(spec.steps):
        name = f"S{i}"

        def make(i: int, name: str, step_spec: StepSpec) -> Any:
            async def undo(data: Any, failed: bool) -> None:
                first = (name, failed) not in undone
                undone.append((name, failed))
                if step_spec.undo_fails and first:
                    raise TerminalError(f"the compensation of {name} fails")

            decorate = saga_step_strict if step_spec.strict else saga_step

            @decorate(name, compensate=undo, retry=fast_retry(2), on_exhausted="park")
            async def run(ctx: SagaContext, inp: Any) -> str:
                runs[i] += 1
                if runs[i] <= 2 * step_spec.parks:
                    raise RuntimeError(f"{name} is down")
                if step_spec.terminal:
                    raise TerminalError(f"{name} fails for good")
                return f"{name}-out"

            return run

        steps.append(make(i, name, step_spec))

    @saga_workflow("AdminProperty")
    async def workflow(saga: SagaContext, inp: Any) -> list[str]:
        out = []
        for i, step in enumerate(steps):
            out.append(await step(saga, None))
            if spec.sleep_after == i:
                await saga.sleep(timedelta(hours=1))
        return out

    return workflow


async def settled(engine: Engine, after_fence: int) -> SagaSnapshot:
    """Wait until the saga has ended, or stopped (PARKED or SUSPENDED) in a run that began
    after the operator's last action (a worker took it: its fence is above ``after_fence``)."""
    store = engine._store_or_raise()
    deadline = time.monotonic() + WAIT
    while True:
        record = await store.load_saga(SAGA_ID)
        assert record is not None
        status = SagaStatus(record.status)
        idle = SAGA_ID not in engine._tasks
        if idle and (
            status.is_terminal
            or (status in (SagaStatus.PARKED, SagaStatus.SUSPENDED) and record.fence > after_fence)
        ):
            return await engine.admin.get_saga(SAGA_ID)
        if time.monotonic() > deadline:
            raise AssertionError(f"the saga did not stop in {WAIT}s: {record}")
        await asyncio.sleep(0.005)


async def execute(url: str, spec: SagaSpec) -> Observed:
    runs = [0] * len(spec.steps)
    undone: list[tuple[str, bool]] = []
    refused: list[str] = []
    workflow = build(spec, runs, undone)
    actions: Iterator[str] = iter(spec.actions)
    async with engine_with(url, workflow) as engine:
        admin = engine.admin
        handle = await engine.start(workflow, None, saga_id=SAGA_ID)
        fence = 0
        while True:
            snap = await settled(engine, fence)
            if snap.status.is_terminal and snap.status != SagaStatus.FAILED:
                break
            default = "resume" if snap.status == SagaStatus.SUSPENDED else "retry"
            action = next(actions, default)
            for attempt in (action, default):
                store = engine._store_or_raise()
                before = await store.load_journal(SAGA_ID)
                looked = await store.load_saga(SAGA_ID)
                assert looked is not None
                try:
                    if attempt == "retry":
                        made = await admin.retry_step(SAGA_ID)
                    elif attempt == "skip" and snap.status == SagaStatus.FAILED:
                        made = await admin.skip_step(SAGA_ID)  # the failed compensations
                    elif attempt == "skip":
                        step = (snap.error or {}).get("step")  # none when it is not PARKED
                        made = await admin.skip_step(SAGA_ID, f"{step}-skipped")
                    elif attempt == "compensate":
                        made = await admin.compensate(SAGA_ID)
                    elif attempt == "cancel":
                        made = await admin.cancel(SAGA_ID, "property")
                    else:
                        made = await admin.resume(SAGA_ID)
                except SagaStateError:
                    refused.append(attempt)
                    # refused: nothing written
                    assert await store.load_journal(SAGA_ID) == before
                    assert await store.load_saga(SAGA_ID) == looked
                    continue
                assert len(made.audit) == len(snap.audit) + 1
                fence = looked.fence + 1  # the action's; a worker taking the saga raises it
                break
        raised: BaseException | None = None
        output: Any = None
        try:
            output = await handle.result(timeout=WAIT)
        except SagaError as exc:
            raised = exc
        final = await engine.admin.get_saga(SAGA_ID)
    cause = None
    if isinstance(raised, SagaCompensatedError):
        cause = raised.cause_type
    return Observed(
        final.status,
        output,
        runs,
        undone,
        [e.action for e in final.audit],
        refused,
        cause,
        final,
        raised,
    )


def check(spec: SagaSpec, seen: Observed) -> None:
    want = model(spec)
    event(f"ends {want.status.value}")
    if want.rollback_failed:
        event("a compensation failed: the operator retried or skipped it")
    for action in want.audit:
        event(f"operator: {action}")
    if want.refused:
        event("an action was refused")
    context = f"spec={spec}\nseen={seen}\nwant={want}"
    assert seen.status == want.status, context
    assert seen.runs == want.runs, context
    assert seen.undone == want.undone, context
    assert seen.audit == want.audit, context
    assert seen.refused == want.refused, context
    if want.status == SagaStatus.COMPLETED:
        assert seen.output == want.output, context
    elif want.status == SagaStatus.CANCELLED:
        assert isinstance(seen.raised, SagaCancelledError), context
    else:
        assert seen.cause_type == want.cause_type, context
    # audit entries never show among the steps, and the steps are numbered without gaps
    seqs = [s.seq for s in seen.snapshot.steps]
    assert seqs == list(range(len(seqs))), context
    assert all(s.kind != "admin" for s in seen.snapshot.steps), context


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=saga_specs())
def test_operators_steer_sagas_as_the_model_says(spec: SagaSpec) -> None:
    check(spec, asyncio.run(execute("memory://", spec)))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=saga_specs())
def test_operators_steer_sagas_on_sqlite_as_the_model_says(
    tmp_path_factory: pytest.TempPathFactory, spec: SagaSpec
) -> None:
    folder: Path = tmp_path_factory.mktemp("admin-prop")
    check(spec, asyncio.run(execute(f"sqlite:///{folder}/t.db", spec)))


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    # one database per test (pg_url), emptied at the start of each example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(spec=saga_specs())
def test_operators_steer_sagas_on_postgres_as_the_model_says(pg_url: str, spec: SagaSpec) -> None:
    asyncio.run(empty_pg_database(pg_url))
    check(spec, asyncio.run(execute(pg_url, spec)))


def test_the_model_itself() -> None:
    ok, flaky, bad = StepSpec(False, 0, False), StepSpec(False, 1, False), StepSpec(True, 0, True)
    plain = model(SagaSpec((ok, ok), None, ()))
    assert plain.status == SagaStatus.COMPLETED
    assert (plain.output, plain.runs) == (["S0-out", "S1-out"], [1, 1])
    retried = model(SagaSpec((ok, flaky), None, ("resume",)))
    assert retried.refused == ["resume"] and retried.audit == ["retry"]
    assert retried.runs == [1, 3] and retried.status == SagaStatus.COMPLETED
    skipped = model(SagaSpec((flaky, bad), None, ("skip",)))
    # the skipped step is not undone; the strict step that failed is not either
    assert skipped.status == SagaStatus.COMPENSATED and skipped.undone == []
    rolled = model(SagaSpec((ok, flaky), 0, ("resume", "compensate")))
    assert rolled.undone == [("S1", True), ("S0", False)]
    assert rolled.cause_type == "OperatorRollback"
    slept = model(SagaSpec((ok,), 0, ("cancel",)))
    assert (slept.status, slept.undone, slept.audit) == (SagaStatus.CANCELLED, [], ["cancel"])
