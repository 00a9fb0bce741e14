"""Property test: random saga shapes, run by the engine, against a pure-Python model of what
must happen.

A saga is 1-6 steps; each step is hybrid, strict or has no compensation, and succeeds (three
ways), fails with a TerminalError, fails retryably until its attempts run out, fails retryably
once then succeeds, or returns ``StepResponse.permanent_failure``; a compensation may fail once
(retryably) before it succeeds; the saga function itself may raise after step k. The model says
which steps run (and how many attempts), whether the saga COMPLETES or is COMPENSATED, which
compensations run (reverse order of registration, each once, ``failed=True`` only for a hybrid
step that itself failed) and with which data, and what the journal holds.

Optionally the run is interrupted: at the k-th effect (step attempt or compensation call) the
operation blocks, the engine is closed (its run cancelled, its lease released), and a fresh
engine with freshly built workflows on the same store recovers the saga. The model then says
that everything journaled ran once and only the interrupted operation ran again from scratch,
and the end state is the same as without the interruption.

Each example runs in its own ``asyncio.run`` with fresh engines (hypothesis and async fixtures
do not mix): on the memory store, and with fewer examples on a SQLite file and on PostgreSQL
(one database per test, emptied before each example).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagakit import (
    Engine,
    RetryPolicy,
    SagaCompensatedError,
    SagaContext,
    SagaSnapshot,
    SagaStatus,
    SagaStepOptions,
    StepResponse,
    TerminalError,
    create_saga_step,
    create_saga_step_strict,
    create_saga_workflow,
)
from tests.conftest import empty_pg_database

KINDS = ("hybrid", "strict", "none")
#: ok: StepResponse(output, compensation_data={"undo": i}); ok_plain: returns the output
#: (which is then the compensation data); ok_nothing: StepResponse(output, compensation_data=None)
#: (nothing to compensate); flaky_once: fails retryably on attempt 1, then as ok; terminal: raises
#: TerminalError; exhaust: raises a retryable error on every attempt; permanent:
#: StepResponse.permanent_failure(msg, {"pf": i}); permanent_input: permanent_failure(msg)
BEHAVIOURS = (
    "ok",
    "ok_plain",
    "ok_nothing",
    "flaky_once",
    "terminal",
    "exhaust",
    "permanent",
    "permanent_input",
)
SAGA_ID = "prop-saga"


class FlakyError(Exception):
    """A retryable failure."""


class SagaBodyError(Exception):
    """Raised by the saga function's own code, outside any step."""


@dataclass(frozen=True)
class StepSpec:
    kind: str
    behaviour: str
    max_attempts: int
    comp_flaky: bool


@dataclass(frozen=True)
class SagaSpec:
    steps: tuple[StepSpec, ...]
    #: the saga function raises SagaBodyError before step ``raise_after`` (== len: after the last)
    raise_after: int | None
    #: interrupt at this effect (taken modulo the number of effects); None: run uninterrupted
    interrupt_at: int | None


step_specs = st.builds(
    StepSpec,
    kind=st.sampled_from(KINDS),
    behaviour=st.sampled_from(BEHAVIOURS),
    max_attempts=st.integers(1, 3),
    comp_flaky=st.booleans(),
)


@st.composite
def saga_specs(draw: st.DrawFn, interrupt: bool) -> SagaSpec:
    steps = tuple(draw(st.lists(step_specs, min_size=1, max_size=6)))
    raise_after = draw(st.none() | st.integers(0, len(steps)))
    interrupt_at = draw(st.none() | st.integers(0, 40)) if interrupt else None
    return SagaSpec(steps, raise_after, interrupt_at)


def step_name(i: int) -> str:
    return f"step{i}"


def step_input(i: int) -> dict[str, Any]:
    return {"i": i, "payload": ["in", i]}


def step_output(i: int) -> dict[str, Any]:
    return {"out": i, "x": [i, "s"]}


# -- the model ----------------------------------------------------------------------------


@dataclass
class Expected:
    status: SagaStatus
    #: effects in order: ("step", i, attempt) and ("comp", i, data, failed, call)
    effects: list[tuple[Any, ...]] = field(default_factory=list)
    #: the journal: (kind, name, status, attempts), in seq order
    journal: list[tuple[str, str, str, int]] = field(default_factory=list)
    output: Any = None
    cause_type: str | None = None
    cause_step: str | None = None


def model(spec: SagaSpec) -> Expected:
    """What must happen, computed without the engine."""
    effects: list[tuple[Any, ...]] = []
    journal: list[tuple[str, str, str, int]] = []
    stack: list[tuple[int, Any, bool]] = []  # registered compensations: (step, data, failed)
    outputs: list[Any] = []
    cause: tuple[str, str | None] | None = None
    for i, s in enumerate(spec.steps):
        if spec.raise_after == i:
            cause = ("SagaBodyError", None)
            break
        hybrid, has_comp = s.kind == "hybrid", s.kind != "none"
        failure: tuple[str, Any] | None = None  # (error type, hybrid compensation data)
        attempts = 1
        if s.behaviour in ("terminal", "permanent", "permanent_input"):
            error_type = "TerminalError" if s.behaviour == "terminal" else "PermanentFailure"
            data = {"pf": i} if s.behaviour == "permanent" else step_input(i)
            failure = (error_type, data)
        elif s.behaviour == "exhaust" or (s.behaviour == "flaky_once" and s.max_attempts == 1):
            attempts = s.max_attempts
            failure = ("FlakyError", step_input(i))
        elif s.behaviour == "flaky_once":
            attempts = 2
        effects += [("step", i, a) for a in range(1, attempts + 1)]
        if failure is not None:
            journal.append(("step", step_name(i), "failed", attempts))
            if hybrid:
                stack.append((i, failure[1], True))
            cause = (failure[0], step_name(i))
            break
        journal.append(("step", step_name(i), "completed", attempts))
        outputs.append(step_output(i))
        comp_data = {
            "ok": {"undo": i},
            "flaky_once": {"undo": i},
            "ok_plain": step_output(i),
            "ok_nothing": None,
        }[s.behaviour]
        if has_comp and comp_data is not None:
            stack.append((i, comp_data, False))
    else:
        if spec.raise_after == len(spec.steps):
            cause = ("SagaBodyError", None)
    if cause is None:
        return Expected(SagaStatus.COMPLETED, effects, journal, output={"outs": outputs})
    for i, data, failed in reversed(stack):
        calls = 2 if spec.steps[i].comp_flaky else 1
        effects += [("comp", i, data, failed, c) for c in range(1, calls + 1)]
        journal.append(("compensation", step_name(i), "completed", calls))
    return Expected(
        SagaStatus.COMPENSATED, effects, journal, cause_type=cause[0], cause_step=cause[1]
    )


def effect_op(effect: tuple[Any, ...]) -> tuple[str, int]:
    return effect[0], effect[1]


def split_at(effects: list[tuple[Any, ...]], k: int) -> tuple[list[Any], list[Any]]:
    """The effects of the first engine (interrupted while doing effect k) and of the second one
    (the interrupted operation again from its start, then the rest)."""
    op = effect_op(effects[k])
    last = max(n for n, e in enumerate(effects) if effect_op(e) == op)
    return effects[: k + 1], [e for e in effects if effect_op(e) == op] + effects[last + 1 :]


# -- the saga under test --------------------------------------------------------------------


class Recorder:
    """The effects one engine's workflow performed, and where to stop (block) if asked."""

    def __init__(self, block_at: int | None, shared: list[tuple[Any, ...]]):
        self.effects: list[tuple[Any, ...]] = []
        self.keys: list[tuple[int, str]] = []
        self.block_at = block_at
        self.shared = shared  # every effect of every engine, in order: numbers block_at
        self.blocked = asyncio.Event()

    async def effect(self, effect: tuple[Any, ...]) -> None:
        self.effects.append(effect)
        self.shared.append(effect)
        if self.block_at is not None and len(self.shared) == self.block_at + 1:
            self.blocked.set()
            await asyncio.Event().wait()  # until the engine is closed (the run cancelled)


def build(spec: SagaSpec, rec: Recorder) -> Any:
    """Fresh step and workflow objects for one engine (a new process would build its own)."""
    steps = []
    for i, s in enumerate(spec.steps):
        steps.append(_build_step(i, s, rec))

    async def handler(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        assert inp == {"steps": len(spec.steps)}
        outs = []
        for i, step in enumerate(steps):
            if spec.raise_after == i:
                raise SagaBodyError(f"the saga function fails before step {i}")
            outs.append(await step(saga, step_input(i)))
        if spec.raise_after == len(steps):
            raise SagaBodyError("the saga function fails after its last step")
        return {"outs": outs}

    return create_saga_workflow("PropSaga", handler)


def _build_step(i: int, s: StepSpec, rec: Recorder) -> Any:
    comp_calls = 0

    async def compensate(data: Any, failed: bool) -> None:
        nonlocal comp_calls
        comp_calls += 1
        await rec.effect(("comp", i, data, failed, comp_calls))
        if s.comp_flaky and comp_calls == 1:
            raise FlakyError(f"compensation of step {i} fails once")

    async def run(ctx: SagaContext, inp: dict[str, Any]) -> Any:
        assert inp == step_input(i)
        rec.keys.append((i, ctx.step_key))
        await rec.effect(("step", i, ctx.attempt))
        b = s.behaviour
        if b == "terminal":
            raise TerminalError(f"step {i} refuses")
        if b == "exhaust" or (b == "flaky_once" and ctx.attempt == 1):
            raise FlakyError(f"step {i} is flaky")
        if b == "permanent":
            return StepResponse.permanent_failure(f"step {i} gives up", {"pf": i})
        if b == "permanent_input":
            return StepResponse.permanent_failure(f"step {i} gives up")
        if b == "ok_plain":
            return step_output(i)
        if b == "ok_nothing":
            return StepResponse(step_output(i), compensation_data=None)
        return StepResponse(step_output(i), compensation_data={"undo": i})

    options = SagaStepOptions(
        retry=RetryPolicy(max_attempts=s.max_attempts, initial_interval=timedelta(0)),
        compensation_retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(0)),
    )
    factory = create_saga_step_strict if s.kind == "strict" else create_saga_step
    return factory(step_name(i), run, None if s.kind == "none" else compensate, options)


@dataclass
class Observed:
    result: Any
    error: SagaCompensatedError | None
    snapshot: SagaSnapshot
    recorders: list[Recorder]


async def execute(url: str, spec: SagaSpec, block_at: int | None) -> Observed:
    shared: list[tuple[Any, ...]] = []
    first = Recorder(block_at, shared)
    recorders = [first]
    poll = timedelta(milliseconds=20)
    async with Engine(url, poll_interval=poll) as engine:
        handle = await engine.start(build(spec, first), {"steps": len(spec.steps)}, SAGA_ID)
        outcome = asyncio.ensure_future(handle.result(timeout=30))
        if block_at is None:
            await asyncio.wait({outcome})
            snapshot = await engine.get(SAGA_ID)
        else:
            blocked = asyncio.ensure_future(first.blocked.wait())
            await asyncio.wait({outcome, blocked}, return_when=asyncio.FIRST_COMPLETED)
            assert blocked.done(), f"the saga ended before effect {block_at}: {first.effects}"
            outcome.cancel()
            await asyncio.wait({outcome})
            # leaving `async with` closes the engine while the operation blocks: its run is
            # cancelled in the middle of the operation and its lease released
    if block_at is not None:
        assert len(shared) == block_at + 1
        second = Recorder(None, shared)
        recorders.append(second)
        async with Engine(url, poll_interval=poll) as engine:
            engine.register(build(spec, second))
            await engine.recover()
            outcome = asyncio.ensure_future(engine.handle(SAGA_ID).result(timeout=30))
            await asyncio.wait({outcome})
            snapshot = await engine.get(SAGA_ID)
    error = outcome.exception()
    if error is not None and not isinstance(error, SagaCompensatedError):
        raise error
    return Observed(None if error else outcome.result(), error, snapshot, recorders)


def check(spec: SagaSpec, url: str) -> None:
    expected = model(spec)
    block_at = None
    if spec.interrupt_at is not None and expected.effects:
        block_at = spec.interrupt_at % len(expected.effects)
    got = asyncio.run(execute(url, spec, block_at))

    # the effects, engine by engine
    if block_at is None:
        assert [r.effects for r in got.recorders] == [expected.effects]
    else:
        assert [r.effects for r in got.recorders] == list(split_at(expected.effects, block_at))

    # the outcome
    snap = got.snapshot
    assert snap.status == expected.status
    if expected.status == SagaStatus.COMPLETED:
        assert got.error is None
        assert got.result == expected.output
        assert snap.output == expected.output
    else:
        assert got.error is not None
        assert got.error.saga_id == SAGA_ID
        assert got.error.cause_type == expected.cause_type
        assert got.error.step == expected.cause_step
        assert snap.error is not None
        assert snap.error["cause"]["type"] == expected.cause_type
        assert snap.error["cause"]["step"] == expected.cause_step

    # the journal: every step and compensation once, in order, with its attempts
    assert [(s.kind, s.name, s.status, s.attempts) for s in snap.steps] == expected.journal
    assert [s.seq for s in snap.steps] == list(range(len(expected.journal)))
    for entry in snap.steps:
        if entry.kind == "step" and entry.status == "completed":
            assert entry.output == step_output(int(entry.name.removeprefix("step")))
        if entry.status == "failed":
            assert entry.error is not None

    # ctx.step_key: one key per step, the same in every attempt and in both engines
    keys: dict[int, set[str]] = {}
    for rec in got.recorders:
        for i, key in rec.keys:
            keys.setdefault(i, set()).add(key)
    assert all(len(k) == 1 for k in keys.values()), keys
    assert len({next(iter(k)) for k in keys.values()}) == len(keys)


@settings(max_examples=500, deadline=None)
@given(spec=saga_specs(interrupt=False))
def test_memory_store_matches_the_model(spec: SagaSpec) -> None:
    check(spec, "memory://")


@settings(max_examples=300, deadline=None)
@given(spec=saga_specs(interrupt=True))
def test_interrupted_and_recovered_run_matches_the_model(spec: SagaSpec) -> None:
    # a named memory store, so that the second engine sees what the first one wrote
    check(spec, f"memory://prop-{uuid.uuid4().hex}")


@pytest.mark.slow
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(spec=saga_specs(interrupt=True))
def test_sqlite_store_matches_the_model(spec: SagaSpec) -> None:
    folder = Path(tempfile.mkdtemp(prefix="sagakit-prop-"))
    try:
        check(spec, f"sqlite:///{folder / 'prop.db'}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    # one database per test (pg_url), emptied at the start of each example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(spec=saga_specs(interrupt=True))
def test_postgres_store_matches_the_model(pg_url: str, spec: SagaSpec) -> None:
    asyncio.run(empty_pg_database(pg_url))
    check(spec, pg_url)


def test_the_model_itself() -> None:
    """The model is simple, but check it on hand-made shapes so its mistakes are not hidden."""
    ok = StepSpec("hybrid", "ok", 3, False)
    strict = StepSpec("strict", "ok_plain", 3, True)
    failing = StepSpec("hybrid", "exhaust", 2, False)
    exp = model(SagaSpec((ok, strict, failing), None, None))
    assert exp.status == SagaStatus.COMPENSATED
    assert exp.cause_type == "FlakyError" and exp.cause_step == "step2"
    assert exp.effects == [
        ("step", 0, 1),
        ("step", 1, 1),
        ("step", 2, 1),
        ("step", 2, 2),
        ("comp", 2, step_input(2), True, 1),
        ("comp", 1, step_output(1), False, 1),
        ("comp", 1, step_output(1), False, 2),
        ("comp", 0, {"undo": 0}, False, 1),
    ]
    assert model(SagaSpec((ok,), None, None)).output == {"outs": [step_output(0)]}
    first, second = split_at(exp.effects, 3)
    assert first == exp.effects[:4]
    assert second == exp.effects[2:]
