"""Property test of ``saga.gather``: random groups of branches, run by the engine, against a
pure-Python model of what must happen.

A saga is one prefix step ``P``, then ``saga.gather`` of 1-6 branches (at most ``limit`` at
once, ``limit`` random or None), then one step ``Z``. A branch is 1-3 steps run in order
(``for s in steps: await s(saga, ...)``); each step is hybrid or strict, and either succeeds,
fails for good (TerminalError), or fails once (retryably) then succeeds (retry policy
``fast_retry(2)``); each attempt first sleeps a random 0-2 ms, so the branches interleave
differently from example to example.

The model: a branch runs its steps in order until one fails for good (the branch stops
there; its siblings go on to their end). The saga COMPLETES (and runs Z) iff no step failed for
good; else the first failed branch by position gives the cause, and the rollback undoes exactly
the steps that completed plus the hybrid steps that failed for good (``failed=True``), each once,
from the highest sequence number down (step k of branch i of n is ``2 + k * n + i``), then P.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagakit import (
    Engine,
    SagaCompensatedError,
    SagaContext,
    SagaSnapshot,
    SagaStatus,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)
from tests.conftest import empty_pg_database, fast_retry

SAGA_ID = "gather-prop"
WAIT = 30.0
OUTCOMES = ("ok", "terminal", "flaky_once")


class FlakyError(Exception):
    """A retryable failure."""


@dataclass(frozen=True)
class StepSpec:
    kind: str  # "hybrid" | "strict"
    outcome: str  # see OUTCOMES
    jitter_us: int  # each attempt sleeps this long first (0-2 ms)


@dataclass(frozen=True)
class GatherSpec:
    branches: tuple[tuple[StepSpec, ...], ...]
    limit: int | None


step_specs = st.builds(
    StepSpec,
    kind=st.sampled_from(("hybrid", "strict")),
    outcome=st.sampled_from(OUTCOMES),
    jitter_us=st.integers(0, 2000),
)
gather_specs = st.builds(
    GatherSpec,
    branches=st.lists(
        st.lists(step_specs, min_size=1, max_size=3).map(tuple), min_size=1, max_size=6
    ).map(tuple),
    limit=st.none() | st.integers(1, 4),
)


def name(i: int, k: int) -> str:
    return f"b{i}s{k}"


def seq_of(spec: GatherSpec, i: int, k: int) -> int:
    return 2 + k * len(spec.branches) + i


def step_input(step: str) -> dict[str, str]:
    return {"step": step}


def step_output(step: str) -> str:
    return f"{step}-out"


# -- the model ----------------------------------------------------------------------------


@dataclass
class Expected:
    status: SagaStatus
    #: per branch, the step attempts in order: (name, attempt)
    attempts: list[list[tuple[str, int]]] = field(default_factory=list)
    #: the compensation calls in order: (name, data, failed)
    comps: list[tuple[str, Any, bool]] = field(default_factory=list)
    #: the journal without compensations: (seq, kind, name, status, attempts)
    journal: list[tuple[int, str, str, str, int]] = field(default_factory=list)
    cause_step: str | None = None
    output: Any = None


def model(spec: GatherSpec) -> Expected:
    n = len(spec.branches)
    attempts: list[list[tuple[str, int]]] = []
    entries = [(0, "step", "P", "completed", 1), (1, "gather", f"{n} branches", "completed", 1)]
    undo: list[tuple[int, str, Any, bool]] = []  # (seq, name, data, failed)
    outputs: list[list[str]] = []
    cause: str | None = None
    rounds = 0
    for i, steps in enumerate(spec.branches):
        done: list[tuple[str, int]] = []
        branch_outputs: list[str] = []
        for k, s in enumerate(steps):
            step, seq = name(i, k), seq_of(spec, i, k)
            rounds = max(rounds, k + 1)
            tries = 2 if s.outcome == "flaky_once" else 1
            done += [(step, a) for a in range(1, tries + 1)]
            if s.outcome == "terminal":
                entries.append((seq, "step", step, "failed", 1))
                if s.kind == "hybrid":
                    undo.append((seq, step, step_input(step), True))
                cause = cause or step  # branches are visited by position
                break
            entries.append((seq, "step", step, "completed", tries))
            undo.append((seq, step, step_output(step), False))
            branch_outputs.append(step_output(step))
        attempts.append(done)
        outputs.append(branch_outputs)
    entries.sort()
    if cause is None:
        entries.append((2 + rounds * n, "step", "Z", "completed", 1))
        output = {"groups": outputs, "z": step_output("Z")}
        return Expected(SagaStatus.COMPLETED, attempts, [], entries, None, output)
    comps = [(step, data, failed) for _, step, data, failed in sorted(undo, reverse=True)]
    comps.append(("P", step_output("P"), False))
    return Expected(SagaStatus.COMPENSATED, attempts, comps, entries, cause)


# -- the saga under test --------------------------------------------------------------------


class Recorder:
    """What the steps did, and how many step bodies ran at once."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []
        self.comps: list[tuple[str, Any, bool]] = []
        self.running = 0
        self.peak = 0
        #: a step body that ran after its own branch had a step fail for good
        self.after_failure: list[str] = []
        self.failed_branches: set[int] = set()


def build(spec: GatherSpec, rec: Recorder) -> Any:
    def make(step: str, branch: int | None, s: StepSpec) -> Any:
        async def undo(data: Any, failed: bool) -> None:
            rec.comps.append((step, data, failed))

        decorate = saga_step_strict if s.kind == "strict" else saga_step

        @decorate(step, compensate=undo, retry=fast_retry(2))
        async def run(ctx: SagaContext, inp: Any) -> str:
            assert inp == step_input(step)
            if branch is not None and branch in rec.failed_branches:
                rec.after_failure.append(step)
            rec.attempts.append((step, ctx.attempt))
            rec.running += 1
            rec.peak = max(rec.peak, rec.running)
            try:
                await asyncio.sleep(s.jitter_us / 1_000_000)
                if s.outcome == "terminal":
                    if branch is not None:
                        rec.failed_branches.add(branch)
                    raise TerminalError(f"{step} fails for good")
                if s.outcome == "flaky_once" and ctx.attempt == 1:
                    raise FlakyError(f"{step} fails once")
            finally:
                rec.running -= 1
            return step_output(step)

        return run

    plain = StepSpec("hybrid", "ok", 0)
    prefix, last = make("P", None, plain), make("Z", None, plain)
    branches = [
        [make(name(i, k), i, s) for k, s in enumerate(steps)]
        for i, steps in enumerate(spec.branches)
    ]

    async def branch(saga: SagaContext, steps: list[Any]) -> list[str]:
        outs = []
        for step in steps:
            outs.append(await step(saga, step_input(step.name)))
        return outs

    @saga_workflow("GatherProp")
    async def wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        await prefix(saga, step_input("P"))
        groups = await saga.gather(*(branch(saga, b) for b in branches), limit=spec.limit)
        return {"groups": groups, "z": await last(saga, step_input("Z"))}

    return wf


async def execute(
    spec: GatherSpec, rec: Recorder, url: str
) -> tuple[Any, BaseException | None, Any]:
    async with Engine(url) as engine:
        try:
            result = await engine.run(build(spec, rec), None, saga_id=SAGA_ID, timeout=WAIT)
            error = None
        except SagaCompensatedError as exc:
            result, error = None, exc
        snapshot: SagaSnapshot = await engine.get(SAGA_ID)
    return result, error, snapshot


def check(spec: GatherSpec, url: str = "memory://") -> None:
    expected = model(spec)
    rec = Recorder()
    result, error, snap = asyncio.run(execute(spec, rec, url))

    # the outcome
    assert snap.status == expected.status
    if expected.status == SagaStatus.COMPLETED:
        assert error is None
        assert result == expected.output
    else:
        assert isinstance(error, SagaCompensatedError)
        assert error.step == expected.cause_step
        assert error.cause_type == "TerminalError"

    # each branch ran its steps in order, each as many attempts as the model says, and stopped
    # at a step that failed for good (only the retry of a flaky step runs twice)
    for i, want in enumerate(expected.attempts):
        names = {name(i, k) for k in range(len(spec.branches[i]))}
        assert [a for a in rec.attempts if a[0] in names] == want, (i, rec.attempts)
    assert rec.after_failure == []
    ran = {a[0] for a in rec.attempts}
    assert {"P"} <= ran and ("Z" in ran) == (expected.status == SagaStatus.COMPLETED)

    # the rollback: exactly the completed steps and the hybrid steps that failed for good, each
    # once, in the model's order (from the highest number down, P last)
    assert rec.comps == expected.comps
    undone = [c[0] for c in rec.comps]
    assert len(undone) == len(set(undone))
    if expected.comps:
        assert undone[-1] == "P"
        for i in range(len(spec.branches)):
            mine = [c for c in undone if c.startswith(f"b{i}s")]
            assert mine == sorted(mine, reverse=True), (i, undone)
        for step, _, failed in rec.comps:
            if failed:
                i, k = (int(x) for x in step[1:].split("s"))
                s = spec.branches[i][k]
                assert s.kind == "hybrid" and s.outcome == "terminal", step

    # the limit held
    cap = len(spec.branches) if spec.limit is None else spec.limit
    assert rec.peak <= cap, (rec.peak, cap)

    # the journal: the numbers of the model, each step once with its attempts
    got = [(s.seq, s.kind, s.name, s.status, s.attempts) for s in snap.steps]
    assert [e for e in got if e[1] != "compensation"] == expected.journal
    assert [e[2] for e in got if e[1] == "compensation"] == undone
    assert all(e[3] == "completed" for e in got if e[1] == "compensation")


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=gather_specs)
def test_gather_matches_the_model(spec: GatherSpec) -> None:
    check(spec)


@pytest.mark.slow
@settings(
    max_examples=30,
    deadline=None,
    # one database per test (pg_url), emptied at the start of each example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(spec=gather_specs)
def test_gather_on_postgres_matches_the_model(pg_url: str, spec: GatherSpec) -> None:
    asyncio.run(empty_pg_database(pg_url))
    check(spec, pg_url)


def test_the_model_itself() -> None:
    """The model on a hand-made shape, written out, so that its own mistakes are not hidden."""
    ok_h, ok_s = StepSpec("hybrid", "ok", 0), StepSpec("strict", "ok", 0)
    flaky = StepSpec("strict", "flaky_once", 0)
    term_h, term_s = StepSpec("hybrid", "terminal", 0), StepSpec("strict", "terminal", 0)
    spec = GatherSpec(((ok_h, flaky, ok_s), (ok_s, term_s, ok_h), (term_h, ok_h)), limit=2)
    exp = model(spec)
    assert exp.status == SagaStatus.COMPENSATED
    assert exp.cause_step == "b1s1"
    assert exp.attempts == [
        [("b0s0", 1), ("b0s1", 1), ("b0s1", 2), ("b0s2", 1)],
        [("b1s0", 1), ("b1s1", 1)],
        [("b2s0", 1)],
    ]
    # seqs: b0s0 2, b1s0 3, b2s0 4, b0s1 5, b1s1 6, b0s2 8
    assert exp.journal == [
        (0, "step", "P", "completed", 1),
        (1, "gather", "3 branches", "completed", 1),
        (2, "step", "b0s0", "completed", 1),
        (3, "step", "b1s0", "completed", 1),
        (4, "step", "b2s0", "failed", 1),
        (5, "step", "b0s1", "completed", 2),
        (6, "step", "b1s1", "failed", 1),
        (8, "step", "b0s2", "completed", 1),
    ]
    assert exp.comps == [
        ("b0s2", "b0s2-out", False),
        ("b0s1", "b0s1-out", False),
        ("b2s0", {"step": "b2s0"}, True),
        ("b1s0", "b1s0-out", False),
        ("b0s0", "b0s0-out", False),
        ("P", "P-out", False),
    ]
    done = model(GatherSpec(((ok_h,), (ok_s, flaky)), limit=None))
    assert done.status == SagaStatus.COMPLETED
    assert done.journal[-1] == (2 + 2 * 2, "step", "Z", "completed", 1)
    assert done.output == {"groups": [["b0s0-out"], ["b1s0-out", "b1s1-out"]], "z": "Z-out"}


def test_one_hand_made_shape_runs_as_the_model_says() -> None:
    flaky_h = StepSpec("hybrid", "flaky_once", 500)
    term_h = StepSpec("hybrid", "terminal", 1500)
    ok_s = StepSpec("strict", "ok", 0)
    check(GatherSpec(((flaky_h, ok_s, ok_s), (ok_s, term_h, ok_s), (ok_s,)), limit=2))
