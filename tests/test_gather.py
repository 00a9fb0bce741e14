"""Parallel branches (``saga.gather``), checked on every store kind where durability matters.

What is checked (see the module docstring of sagakit/engine/parallel.py for the rules):

* results in argument order, whatever order the branches finish in; step calls and coroutines
  that run several operations as branches; gathers nest;
* the numbering: the gather takes one number, the k-th operation of branch i of n takes
  ``base + k * n + i``; the parent goes on after the furthest round; a "gather" entry is
  journaled;
* a failing branch does not stop its siblings; the first failed branch (by position) gives the
  error; the rollback undoes the latest round first, the last branch first within a round,
  then what came before the gather (hybrid failed steps with ``failed=True``, strict failed
  steps not at all);
* ``limit``: never more than ``limit`` branches run at once (and exactly that many do); a run
  stopped while branches wait for a slot closes their coroutines (no "never awaited" warning
  later, wherever the garbage collector runs) and another engine resumes the saga;
* bad arguments are refused before anything runs or is journaled, and the coroutines closed;
* plain ``asyncio.gather`` over step calls works, over multi-operation coroutines it fails the
  saga with a message pointing at ``saga.gather``;
* a waiting branch keeps the group waiting (SUSPENDED), and the resumed run does not redo the
  other branches' steps;
* a step of a branch starts only once the earlier steps of its branch are committed (even when a
  sibling is waiting for the same writes);
* a run stopped in the middle of a gather (engine closed) is resumed by another engine with the
  same numbers: no NonDeterminismError, every finished step ran once.

Steps and workflows are defined inside each test (or built per engine), so their counters belong
to that test alone.
"""

from __future__ import annotations

import asyncio
import gc
import random
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    Engine,
    SagaCompensatedError,
    SagaContext,
    SagaError,
    SagaStatus,
    SagaWorkflow,
    StepFailedError,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)
from tests.conftest import make_engine
from tests.waiting import WAIT, Gate, RunLog, eventually, suspended

# -- helpers ----------------------------------------------------------------------------------


class Ledger:
    """What the steps of one test really did."""

    def __init__(self) -> None:
        self.starts: Counter[str] = Counter()
        self.done: Counter[str] = Counter()
        #: compensation calls, in order: (step name, data, failed)
        self.comps: list[tuple[str, Any, bool]] = []
        #: step bodies in the order they started, and in the order they returned
        self.order: list[str] = []
        self.finished: list[str] = []

    def step(
        self,
        name: str,
        *,
        strict: bool = False,
        fail: bool = False,
        sleep: float | Callable[[], float] = 0.0,
        hold: Callable[[], Any] | None = None,
    ) -> Any:
        """A step that returns ``"<name>:<input>"`` (also its compensation data), after
        sleeping ``sleep`` seconds; ``fail``: raises a TerminalError instead; ``hold``: an
        async callable awaited first (to hold the step in its body, e.g. :meth:`after`)."""

        async def undo(data: Any, failed: bool) -> None:
            self.comps.append((name, data, failed))

        decorate = saga_step_strict if strict else saga_step

        @decorate(name, compensate=undo)
        async def run(ctx: SagaContext, inp: Any) -> str:
            self.starts[name] += 1
            self.order.append(name)
            if hold is not None:
                await hold()
            seconds = sleep() if callable(sleep) else sleep
            if seconds:
                await asyncio.sleep(seconds)
            if fail:
                raise TerminalError(f"{name} fails for good")
            self.done[name] += 1
            self.finished.append(name)
            return f"{name}:{inp}"

        return run

    def after(self, *names: str) -> Callable[[], Any]:
        """A ``hold`` that keeps a step in its body until the steps ``names`` have finished:
        an order of finishing that does not depend on how fast the machine is."""

        async def wait() -> None:
            async def finished() -> bool:
                return set(names) <= set(self.finished)

            await eventually(finished, f"{', '.join(names)} to finish")

        return wait


def journal(snapshot: Any) -> list[tuple[int, str, str, str]]:
    return [(s.seq, s.kind, s.name, s.status) for s in snapshot.steps]


def forward(snapshot: Any) -> list[tuple[int, str, str, str]]:
    """The journal without the compensations."""
    return [e for e in journal(snapshot) if e[1] != "compensation"]


def unawaited_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "never awaited" in str(w.message)]


# -- results and numbering --------------------------------------------------------------------


async def test_results_come_in_argument_order_whatever_finishes_first(engine: Engine) -> None:
    led = Ledger()
    # the first branches finish last: each is held until the ones after it have finished
    slow = led.step("Slow", hold=led.after("Medium", "M2", "Fast"))
    medium = led.step("Medium", hold=led.after("Fast"))
    m1, m2 = led.step("M1", hold=led.after("Fast")), led.step("M2")
    fast = led.step("Fast")

    async def multi(saga: SagaContext) -> list[str]:
        return [await m1(saga, "a"), await m2(saga, "b")]

    @saga_workflow("Order")
    async def wf(saga: SagaContext, inp: Any) -> list[Any]:
        return await saga.gather(slow(saga, 1), medium(saga, 2), multi(saga), fast(saga, 4))

    result = await engine.run(wf, None, saga_id="order", timeout=WAIT)
    assert result == ["Slow:1", "Medium:2", ["M1:a", "M2:b"], "Fast:4"]
    assert led.starts == {"Slow": 1, "Medium": 1, "M1": 1, "M2": 1, "Fast": 1}
    # they ran at the same time (Slow was inside while the others ran: no deadlock), and
    # finished in another order than the results come in
    assert led.finished[0] == "Fast" and led.finished[-1] == "Slow", led.finished
    assert (await engine.get("order")).status == SagaStatus.COMPLETED


async def test_numbers_follow_the_branches_not_the_timing(engine: Engine) -> None:
    led = Ledger()
    pre, post = led.step("Pre"), led.step("Post")
    # branch 0 waits for branch 2 to finish, branch 1 sleeps before each operation: they
    # interleave in another order than their numbers
    a = [led.step("A0", hold=led.after("C0")), led.step("A1", sleep=0.04)]
    b = [led.step(f"B{k}", sleep=0.01) for k in range(3)]
    c = led.step("C0")

    async def branch_a(saga: SagaContext) -> list[str]:
        return [await a[0](saga, 0), await a[1](saga, 1)]

    async def branch_b(saga: SagaContext) -> list[Any]:
        nonce = str(await saga.uuid())  # a recorded value is an operation too
        return [nonce, await b[0](saga, 0), await b[1](saga, 1), await b[2](saga, 2)]

    async def branch_c(saga: SagaContext) -> str:
        return await c(saga, 0)

    @saga_workflow("Numbers")
    async def wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        first = await pre(saga, "p")
        groups = await saga.gather(branch_a(saga), branch_b(saga), branch_c(saga))
        return {"pre": first, "groups": groups, "post": await post(saga, "z")}

    result = await engine.run(wf, None, saga_id="numbers", timeout=WAIT)
    assert result["groups"][0] == ["A0:0", "A1:1"]
    assert result["groups"][1][1:] == ["B0:0", "B1:1", "B2:2"]
    assert result["groups"][2] == "C0:0"
    snap = await engine.get("numbers")
    assert snap.status == SagaStatus.COMPLETED
    # gather at 1, base 2, n = 3: branch i's k-th operation at 2 + 3k + i; branch 1 reached
    # round 3 (4 operations), so Post comes at 2 + 4 * 3 = 14
    assert journal(snap) == [
        (0, "step", "Pre", "completed"),
        (1, "gather", "3 branches", "completed"),
        (2, "step", "A0", "completed"),
        (3, "uuid", "uuid", "completed"),
        (4, "step", "C0", "completed"),
        (5, "step", "A1", "completed"),
        (6, "step", "B0", "completed"),
        (9, "step", "B1", "completed"),
        (12, "step", "B2", "completed"),
        (14, "step", "Post", "completed"),
    ]
    assert snap.steps[3].output == result["groups"][1][0]
    # the steps did finish out of number order (the point of this test)
    assert led.finished.index("C0") < led.finished.index("A0")


async def test_the_gather_is_journaled_as_a_gather_entry(engine: Engine) -> None:
    led = Ledger()
    one, two = led.step("One"), led.step("Two")

    @saga_workflow("Entry")
    async def wf(saga: SagaContext, inp: Any) -> list[Any]:
        return await saga.gather(one(saga, 1), two(saga, 2))

    assert await engine.run(wf, None, saga_id="entry", timeout=WAIT) == ["One:1", "Two:2"]
    snap = await engine.get("entry")
    gathers = [s for s in snap.steps if s.kind == "gather"]
    assert len(gathers) == 1
    assert gathers[0].name == "2 branches"
    assert gathers[0].status == "completed"
    assert gathers[0].output == {"branches": 2}
    # the same in the store's own journal
    assert engine._store is not None
    entries = await engine._store.load_journal("entry")
    assert [(e.kind, e.name) for e in entries if e.kind == "gather"] == [("gather", "2 branches")]


async def test_a_gather_of_no_branches_returns_an_empty_list(engine: Engine) -> None:
    led = Ledger()
    after = led.step("After")

    @saga_workflow("Empty")
    async def wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        empty = await saga.gather()
        empty_limited = await saga.gather(limit=3)
        return {"empty": empty, "limited": empty_limited, "after": await after(saga, 1)}

    result = await engine.run(wf, None, saga_id="empty", timeout=WAIT)
    assert result == {"empty": [], "limited": [], "after": "After:1"}
    assert journal(await engine.get("empty")) == [
        (0, "gather", "0 branches", "completed"),
        (1, "gather", "0 branches", "completed"),
        (2, "step", "After", "completed"),
    ]


async def test_gathers_nest(engine: Engine) -> None:
    led = Ledger()
    l1, l2 = led.step("L1"), led.step("L2")
    sa1, sb1, sb2 = led.step("SA1", sleep=0.02), led.step("SB1"), led.step("SB2")
    r1, r2 = led.step("R1"), led.step("R2")
    after = led.step("After")

    async def sub_a(saga: SagaContext) -> str:
        return await sa1(saga, "a")

    async def sub_b(saga: SagaContext) -> list[str]:
        return [await sb1(saga, "b1"), await sb2(saga, "b2")]

    async def left(saga: SagaContext) -> list[Any]:
        first = await l1(saga, "l")
        inner = await saga.gather(sub_a(saga), sub_b(saga))
        return [first, inner, await l2(saga, "l")]

    async def right(saga: SagaContext) -> list[str]:
        return [await r1(saga, "r"), await r2(saga, "r")]

    @saga_workflow("Nested")
    async def wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        outer = await saga.gather(left(saga), right(saga))
        return {"outer": outer, "after": await after(saga, "z")}

    result = await engine.run(wf, None, saga_id="nested", timeout=WAIT)
    assert result == {
        "outer": [["L1:l", ["SA1:a", ["SB1:b1", "SB2:b2"]], "L2:l"], ["R1:r", "R2:r"]],
        "after": "After:z",
    }
    snap = await engine.get("nested")
    assert snap.status == SagaStatus.COMPLETED
    # outer gather 0, base 1, n = 2: left takes 1, 3, 5, ..., right 2, 4, ...; left's inner
    # gather is its operation 1 (seq 3), its branches take 5 + 4k and 7 + 4k; it reached 2
    # rounds, so left goes on at 5 + 2 * 2 * 2 = 13 (its 7th number); the saga goes on after
    # left's 7 rounds, at 1 + 7 * 2 = 15
    assert journal(snap) == [
        (0, "gather", "2 branches", "completed"),
        (1, "step", "L1", "completed"),
        (2, "step", "R1", "completed"),
        (3, "gather", "2 branches", "completed"),
        (4, "step", "R2", "completed"),
        (5, "step", "SA1", "completed"),
        (7, "step", "SB1", "completed"),
        (11, "step", "SB2", "completed"),
        (13, "step", "L2", "completed"),
        (15, "step", "After", "completed"),
    ]
    assert all(count == 1 for count in led.starts.values())


async def test_a_saga_may_end_right_after_a_nested_gather() -> None:
    led = Ledger()
    a, b = led.step("A"), led.step("B")

    async def inner(saga: SagaContext) -> list[Any]:
        async def one(s: SagaContext) -> str:
            return await a(s, 1)

        async def two(s: SagaContext) -> str:
            return await b(s, 2)

        return await saga.gather(one(saga), two(saga))

    async def nothing(saga: SagaContext) -> None:
        return None

    @saga_workflow("NestedLast")
    async def wf(saga: SagaContext, inp: Any) -> list[Any]:
        return await saga.gather(inner(saga), nothing(saga))

    async with make_engine("memory://") as engine:
        result = await engine.run(wf, None, saga_id="nested-last", timeout=WAIT)
        assert result == [["A:1", "B:2"], None]
        snap = await engine.get("nested-last")
        assert snap.status == SagaStatus.COMPLETED
        assert [(s.kind, s.name) for s in snap.steps] == [
            ("gather", "2 branches"),
            ("gather", "2 branches"),
            ("step", "A"),
            ("step", "B"),
        ]


# -- failures and rollback --------------------------------------------------------------------


async def test_a_failing_branch_lets_its_siblings_run_to_their_end(engine: Engine) -> None:
    led = Ledger()
    ok = led.step("Ok", sleep=0.05)
    late = led.step("Late", sleep=0.1, fail=True)
    early = led.step("Early", fail=True)
    long = [led.step(f"Long{k}", sleep=0.03) for k in range(3)]

    async def long_branch(saga: SagaContext) -> list[str]:
        return [await step(saga, k) for k, step in enumerate(long)]

    @saga_workflow("Siblings")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        try:
            await saga.gather(ok(saga, 0), late(saga, 1), early(saga, 2), long_branch(saga))
        except StepFailedError as exc:
            # the first failed branch by position (Late), not the first to fail (Early)
            return {"step": exc.step, "message": exc.message}
        return "no error"

    result = await engine.run(wf, None, saga_id="siblings", timeout=WAIT)
    assert result == {"step": "Late", "message": "Late fails for good"}
    # every branch ran to its end, though Early failed before the others were done
    assert led.starts == {"Ok": 1, "Late": 1, "Early": 1, "Long0": 1, "Long1": 1, "Long2": 1}
    assert led.done == {"Ok": 1, "Long0": 1, "Long1": 1, "Long2": 1}
    assert led.comps == []  # the saga caught the error and completed


async def test_the_first_failed_branch_by_position_is_the_saga_cause(engine: Engine) -> None:
    led = Ledger()
    ok = led.step("Ok", sleep=0.05)
    late = led.step("Late", sleep=0.1, fail=True)
    early = led.step("Early", fail=True)

    @saga_workflow("Cause")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return await saga.gather(ok(saga, 0), late(saga, 1), early(saga, 2))

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="cause", timeout=WAIT)
    assert info.value.step == "Late"
    assert info.value.cause_type == "TerminalError"
    assert info.value.cause_message == "Late fails for good"
    # hybrid steps: Early (seq 2) and Late (seq 1) failed, Ok (seq 0) completed
    assert led.comps == [("Early", 2, True), ("Late", 1, True), ("Ok", "Ok:0", False)]


@pytest.mark.parametrize("failing_kind", ["hybrid", "strict"])
async def test_rollback_order_of_a_gather_of_multi_step_branches(
    engine: Engine, failing_kind: str
) -> None:
    led = Ledger()
    pre = led.step("P")
    # branch A: 3 steps, branch B: its 2nd step fails for good (B3 never runs), branch C: 2
    # steps; random-ish sleeps so that the interleaving is not the numbering order
    a = [led.step("A1", sleep=0.03), led.step("A2"), led.step("A3", sleep=0.02)]
    b = [
        led.step("B1"),
        led.step("B2", fail=True, strict=failing_kind == "strict", sleep=0.01),
        led.step("B3"),
    ]
    c = [led.step("C1", sleep=0.01), led.step("C2", strict=True)]
    never = led.step("Never")

    def branch(steps: list[Any], tag: str) -> Callable[[SagaContext], Any]:
        async def run(saga: SagaContext) -> list[str]:
            return [await step(saga, f"{tag}{k}") for k, step in enumerate(steps, start=1)]

        return run

    @saga_workflow("RollbackOrder")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await pre(saga, "p")
        await saga.gather(branch(a, "a")(saga), branch(b, "b")(saga), branch(c, "c")(saga))
        return await never(saga, None)

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="order-rb", timeout=WAIT)
    assert info.value.step == "B2"
    assert led.starts == {"P": 1, "A1": 1, "A2": 1, "A3": 1, "B1": 1, "B2": 1, "C1": 1, "C2": 1}
    # P 0, gather 1, then 2 + 3k + i: A1 2, B1 3, C1 4, A2 5, B2 6, C2 7, A3 8; undone from the
    # highest number down, P last; a hybrid B2 gets its input and failed=True, a strict one is
    # not undone
    expected = [
        ("A3", "A3:a3", False),
        ("C2", "C2:c2", False),
        ("B2", "b2", True),
        ("A2", "A2:a2", False),
        ("C1", "C1:c1", False),
        ("B1", "B1:b1", False),
        ("A1", "A1:a1", False),
        ("P", "P:p", False),
    ]
    if failing_kind == "strict":
        expected.remove(("B2", "b2", True))
    assert led.comps == expected

    snap = await engine.get("order-rb")
    assert snap.status == SagaStatus.COMPENSATED
    assert forward(snap) == [
        (0, "step", "P", "completed"),
        (1, "gather", "3 branches", "completed"),
        (2, "step", "A1", "completed"),
        (3, "step", "B1", "completed"),
        (4, "step", "C1", "completed"),
        (5, "step", "A2", "completed"),
        (6, "step", "B2", "failed"),
        (7, "step", "C2", "completed"),
        (8, "step", "A3", "completed"),
    ]
    compensations = [s.name for s in snap.steps if s.kind == "compensation"]
    assert compensations == [name for name, _, _ in expected]
    assert all(s.status == "completed" for s in snap.steps if s.kind == "compensation")


# -- limit ------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["step calls", "coroutines"])
@pytest.mark.parametrize("limit", [1, 2, 3, None])
async def test_limit_caps_the_branches_running_at_once(
    engine: Engine, limit: int | None, form: str
) -> None:
    """Every branch is held in its step until the test releases it, one at a time in the order
    they started: each time, exactly ``min(limit, left)`` are inside at once (the limit is
    reached), never more (the limit caps). The test waits for what it checks (a branch to end,
    the next to start) instead of giving it a time to happen in, so a slow commit does not fail
    it; a branch over the limit fails it."""
    n = 5
    running = 0
    peak = 0
    ended = 0
    started: list[int] = []
    release = [asyncio.Event() for _ in range(n)]

    @saga_step("Work")
    async def work(ctx: SagaContext, i: int) -> int:
        nonlocal running, peak, ended
        running += 1
        peak = max(peak, running)
        started.append(i)
        try:
            await release[i].wait()
        finally:
            running -= 1
            ended += 1
        return i * 10

    async def branch(saga: SagaContext, i: int) -> int:
        return await work(saga, i)

    @saga_workflow("Limited")
    async def wf(saga: SagaContext, inp: Any) -> list[Any]:
        if form == "step calls":
            return await saga.gather(*(work(saga, i) for i in range(n)), limit=limit)
        return await saga.gather(*(branch(saga, i) for i in range(n)), limit=limit)

    cap = n if limit is None else limit
    handle = await engine.start(wf, None, saga_id="limited")
    for released in range(n):
        # `released` branches have ended; the next `want` must all get inside, and stay
        want = min(cap, n - released)

        async def full(want: int = want, released: int = released) -> bool:
            return len(started) >= released + want

        await eventually(full, f"{want} branches to run at once")
        # a window for a branch over the limit to start (it can only make the test fail)
        await asyncio.sleep(0.05)
        assert (running, len(started)) == (want, released + want), started
        release[started[released]].set()

        async def gone(released: int = released) -> bool:
            return ended == released + 1

        await eventually(gone, f"branch {started[released]} to end")
    assert await handle.result(timeout=WAIT) == [i * 10 for i in range(n)]
    # every branch was held until released: more at once than the limit would show here
    assert peak == cap
    assert sorted(started) == list(range(n))


@pytest.mark.parametrize("form", ["step calls", "coroutines"])
async def test_branches_queued_behind_the_limit_are_dropped_quietly_when_the_run_stops(
    shared_store_url: str, form: str
) -> None:
    """A run stopped while branches wait for a slot (here: the engine closes) never starts
    them; their coroutines are closed, not left to warn "never awaited" in whatever code the
    garbage collector next runs in. The saga is resumed by the next engine."""
    gate = Gate()
    holding = {"on": True}
    calls: Counter[int] = Counter()

    @saga_step("Slot")
    async def slot(ctx: SagaContext, i: int) -> int:
        calls[i] += 1
        if holding["on"]:
            await gate.hold()
        return i

    async def branch(saga: SagaContext, i: int) -> int:
        return await slot(saga, i)

    @saga_workflow("Queued")
    async def wf(saga: SagaContext, inp: Any) -> list[Any]:
        if form == "step calls":
            return await saga.gather(*(slot(saga, i) for i in range(4)), limit=1)
        return await saga.gather(*(branch(saga, i) for i in range(4)), limit=1)

    gc.collect()  # what earlier tests left behind is theirs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with make_engine(shared_store_url) as first:
            first.register(wf)
            await first.start(wf, None, saga_id="queued")
            await gate.reached()
            # leaving the block closes the engine: branch 0 is cancelled in its step, branches
            # 1 to 3 while they wait for its slot
        gc.collect()
    assert unawaited_warnings(caught) == []
    assert calls == {0: 1}
    holding["on"] = False
    async with make_engine(shared_store_url) as second:
        second.register(wf)
        await second.recover()
        assert await second.handle("queued").result(timeout=WAIT) == [0, 1, 2, 3]
    assert calls == {0: 2, 1: 1, 2: 1, 3: 1}


async def test_a_branch_keeps_its_slot_for_all_its_operations() -> None:
    led = Ledger()
    steps = {f"{b}{k}": led.step(f"{b}{k}", sleep=0.005) for b in "ABCD" for k in range(3)}

    async def branch(saga: SagaContext, b: str) -> list[str]:
        return [await steps[f"{b}{k}"](saga, k) for k in range(3)]

    @saga_workflow("OneAtATime")
    async def wf(saga: SagaContext, inp: Any) -> list[Any]:
        return await saga.gather(*(branch(saga, b) for b in "ABCD"), limit=1)

    async with make_engine("memory://") as engine:
        result = await engine.run(wf, None, saga_id="one", timeout=WAIT)
    assert result == [[f"{b}{k}:{k}" for k in range(3)] for b in "ABCD"]
    # limit=1: one branch at a time, each branch's operations back to back
    runs = [name[0] for name in led.order]
    blocks = [runs[i] for i in range(len(runs)) if i == 0 or runs[i] != runs[i - 1]]
    assert sorted(blocks) == list("ABCD"), led.order
    assert len(led.order) == 12


# -- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"limit": 0}, "saga.gather(limit=...) must be a positive whole number or None, got 0"),
        ({"limit": -1}, "saga.gather(limit=...) must be a positive whole number or None, got -1"),
        (
            {"limit": True},
            "saga.gather(limit=...) must be a positive whole number or None, got True",
        ),
        ({"limit": 1.5}, "saga.gather(limit=...) must be a positive whole number or None, got 1.5"),
        ({"limit": "2"}, "saga.gather(limit=...) must be a positive whole number or None, got '2'"),
        ({"step": True}, "call the step: `saga.gather(step(saga, x))`, not `saga.gather(step)`"),
    ],
    ids=["limit0", "limit-1", "limitTrue", "limit1.5", "limit-str", "not-awaitable"],
)
async def test_bad_arguments_are_refused_before_anything_runs(
    engine: Engine, bad: dict[str, Any], message: str
) -> None:
    led = Ledger()
    pre, post = led.step("Pre"), led.step("Post")
    inside, called = led.step("Inside"), led.step("Called", strict=True)
    branch_ran: list[str] = []

    async def branch(saga: SagaContext) -> str:
        branch_ran.append("yes")
        return await inside(saga, 1)

    @saga_workflow("BadArgs")
    async def wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        await pre(saga, 0)
        branches: list[Any] = [branch(saga), called(saga, 2)]
        if "step" in bad:
            branches.append(called)  # the step itself, not a call of it
        try:
            await saga.gather(*branches, limit=bad.get("limit"))
        except SagaError as exc:
            refused = {"type": type(exc).__name__, "message": str(exc)}
        else:
            refused = {"type": None, "message": ""}
        return {"refused": refused, "post": await post(saga, 3)}

    gc.collect()  # what earlier tests left behind is theirs
    # the detector itself: an unawaited coroutine does warn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        orphan = branch(None)  # type: ignore[arg-type]
        del orphan
        gc.collect()
    assert len(unawaited_warnings(caught)) == 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = await engine.run(wf, None, saga_id="bad", timeout=WAIT)
        gc.collect()
    assert unawaited_warnings(caught) == []
    assert result["refused"]["type"] == "SagaError"
    assert message in result["refused"]["message"]
    assert result["post"] == "Post:3"
    # the branch never started; nothing was journaled for it nor for the step call
    assert branch_ran == []
    assert led.starts == {"Pre": 1, "Post": 1}
    snap = await engine.get("bad")
    assert snap.status == SagaStatus.COMPLETED
    assert [(s.kind, s.name) for s in snap.steps] == [("step", "Pre"), ("step", "Post")]


@pytest.mark.parametrize("caught", [True, False], ids=["caught", "uncaught"])
async def test_a_refused_hybrid_step_call_is_never_compensated(
    engine: Engine, caught: bool
) -> None:
    """A step call handed to a refused gather never runs (its coroutine is closed): a rollback
    must not undo it (nothing is journaled for it, not even a compensation)."""
    led = Ledger()
    pre = led.step("Pre")
    refused = led.step("Refused")  # hybrid: its compensation is registered when it is called
    fails = led.step("Fails", fail=True)

    @saga_workflow("RefusedHybrid")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await pre(saga, 0)
        try:
            await saga.gather(refused(saga, 1), limit=0)
        except SagaError:
            if not caught:
                raise
        return await fails(saga, 2)

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="refused", timeout=WAIT)
    if caught:
        assert info.value.step == "Fails"
    else:
        assert info.value.cause_type == "SagaError"
        assert "limit" in info.value.cause_message
    assert led.starts["Refused"] == 0
    assert [name for name, _, _ in led.comps] == (["Fails", "Pre"] if caught else ["Pre"])
    snap = await engine.get("refused")
    assert "Refused" not in [s.name for s in snap.steps]


# -- plain asyncio.gather ---------------------------------------------------------------------


async def test_asyncio_gather_over_step_calls_is_numbered_in_call_order(engine: Engine) -> None:
    led = Ledger()
    slow, fast = led.step("SlowA", sleep=0.08), led.step("FastB")

    @saga_workflow("PlainGather")
    async def wf(saga: SagaContext, inp: Any) -> list[Any]:
        return list(await asyncio.gather(slow(saga, 1), fast(saga, 2)))

    assert await engine.run(wf, None, saga_id="plain", timeout=WAIT) == ["SlowA:1", "FastB:2"]
    assert led.finished == ["FastB", "SlowA"]
    # numbered when called, not when finished
    assert journal(await engine.get("plain")) == [
        (0, "step", "SlowA", "completed"),
        (1, "step", "FastB", "completed"),
    ]


async def test_asyncio_gather_over_step_calls_replays_after_a_restart(
    shared_store_url: str,
) -> None:
    led = Ledger()
    gate = Gate()
    holding = {"on": True}

    async def hold() -> None:
        if holding["on"]:
            await gate.hold()

    def build() -> SagaWorkflow[Any, Any]:
        pre, held, free = led.step("Pre"), led.step("Held", hold=hold), led.step("Free")

        @saga_workflow("PlainGatherRestart")
        async def wf(saga: SagaContext, inp: Any) -> list[Any]:
            first = await pre(saga, 0)
            both = list(await asyncio.gather(held(saga, 1), free(saga, 2)))
            return [first, *both]

        return wf

    async with make_engine(shared_store_url) as first:
        await first.start(build(), None, saga_id="plain-restart")
        await gate.reached()

        async def free_journaled() -> bool:
            return (2, "step", "Free", "completed") in journal(await first.get("plain-restart"))

        await eventually(free_journaled, "Free to be journaled")
    holding["on"] = False
    async with make_engine(shared_store_url) as second:
        second.register(build())
        await second.recover()
        result = await second.handle("plain-restart").result(timeout=WAIT)
        snap = await second.get("plain-restart")
    assert result == ["Pre:0", "Held:1", "Free:2"]
    assert snap.status == SagaStatus.COMPLETED
    assert journal(snap) == [
        (0, "step", "Pre", "completed"),
        (1, "step", "Held", "completed"),
        (2, "step", "Free", "completed"),
    ]
    # Held was stopped in its body and ran again; what was journaled did not
    assert led.starts == {"Pre": 1, "Held": 2, "Free": 1}
    assert led.done == {"Pre": 1, "Held": 1, "Free": 1}


async def test_asyncio_gather_over_multi_operation_coroutines_fails_the_saga(
    engine: Engine,
) -> None:
    led = Ledger()
    pre = led.step("Pre")
    one, two = led.step("One"), led.step("Two")

    async def branch(saga: SagaContext, tag: str) -> list[str]:
        return [await one(saga, tag), await two(saga, tag)]

    @saga_workflow("ForeignTasks")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await pre(saga, 0)
        return await asyncio.gather(branch(saga, "x"), branch(saga, "y"))

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="foreign", timeout=WAIT)
    assert info.value.cause_type == "SagaError"
    assert "saga.gather" in info.value.cause_message
    assert "asyncio.gather" in info.value.cause_message
    # refused before any branch's step ran; the step before it was rolled back
    assert led.starts == {"Pre": 1}
    assert led.comps == [("Pre", "Pre:0", False)]
    snap = await engine.get("foreign")
    assert snap.status == SagaStatus.COMPENSATED
    assert snap.error is not None
    assert "saga.gather" in snap.error["cause"]["message"]
    assert [(s.kind, s.name) for s in snap.steps] == [("step", "Pre"), ("compensation", "Pre")]


async def test_asyncio_gather_inside_a_branch_is_refused_too(engine: Engine) -> None:
    led = Ledger()
    one, two = led.step("One"), led.step("Two")

    async def multi(saga: SagaContext) -> list[str]:
        return [await one(saga, 1), await two(saga, 2)]

    async def branch(saga: SagaContext) -> Any:
        return await asyncio.gather(multi(saga), multi(saga))

    @saga_workflow("ForeignInBranch")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return await saga.gather(branch(saga))

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="foreign-branch", timeout=WAIT)
    assert "saga.gather" in info.value.cause_message
    assert led.starts == {}


# -- waits inside branches --------------------------------------------------------------------


async def test_a_waiting_branch_keeps_the_group_waiting(engine: Engine) -> None:
    led = Ledger()
    a1, a2 = led.step("A1"), led.step("A2")
    b1, b2 = led.step("B1", sleep=0.02), led.step("B2")
    c1 = led.step("C1")
    after = led.step("After")

    async def waiter(saga: SagaContext) -> list[Any]:
        first = await a1(saga, 1)
        signal = await saga.wait_for_signal("go")
        return [first, signal, await a2(saga, signal)]

    async def worker(saga: SagaContext) -> list[str]:
        return [await b1(saga, 1), await b2(saga, 2)]

    @saga_workflow("WaitInBranch")
    async def wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        groups = await saga.gather(waiter(saga), worker(saga), c1(saga, 3))
        return {"groups": groups, "after": await after(saga, 0)}

    await engine.start(wf, None, saga_id="wait-branch")
    snap = await suspended(engine, "wait-branch")
    # the other branches ran to their end while the first one waits; the group did not go on
    assert led.done == {"C1": 1, "A1": 1, "B1": 1, "B2": 1}
    assert "After" not in [s.name for s in snap.steps]
    assert ("signal", "go", "running") in [(s.kind, s.name, s.status) for s in snap.steps]

    await engine.signal("wait-branch", "go", "payload")
    result = await engine.handle("wait-branch").result(timeout=WAIT)
    assert result == {
        "groups": [["A1:1", "payload", "A2:payload"], ["B1:1", "B2:2"], "C1:3"],
        "after": "After:0",
    }
    # the resumed run replayed the finished steps: none of them ran again
    assert led.starts == {"C1": 1, "A1": 1, "B1": 1, "B2": 1, "A2": 1, "After": 1}
    snap = await engine.get("wait-branch")
    assert snap.status == SagaStatus.COMPLETED
    # C1 was called before the gather: 0; gather 1; base 2, n = 3 (the step call branch takes
    # no number of its own inside the group)
    assert forward(snap) == [
        (0, "step", "C1", "completed"),
        (1, "gather", "3 branches", "completed"),
        (2, "step", "A1", "completed"),
        (3, "step", "B1", "completed"),
        (5, "signal", "go", "completed"),
        (6, "step", "B2", "completed"),
        (8, "step", "A2", "completed"),
        (11, "step", "After", "completed"),
    ]


async def test_a_durable_sleep_in_a_branch_suspends_then_resumes_on_its_own(
    store_url: str,
) -> None:
    led = Ledger()
    done_at_wake: list[Counter[str]] = []

    async def note() -> None:
        done_at_wake.append(led.done.copy())

    s1, s2 = led.step("S1"), led.step("S2", hold=note)
    w1 = led.step("W1")

    async def sleeper(saga: SagaContext) -> list[str]:
        first = await s1(saga, 1)
        await saga.sleep(0.3)
        return [first, await s2(saga, 2)]

    async def worker(saga: SagaContext) -> str:
        return await w1(saga, 1)

    @saga_workflow("SleepInBranch")
    async def wf(saga: SagaContext, inp: Any) -> list[Any]:
        return await saga.gather(sleeper(saga), worker(saga))

    # the runs, as the engine ended them: no need to catch the saga while it sleeps
    runs = RunLog()
    async with make_engine(store_url, observers=[runs]) as engine:
        await engine.start(wf, None, saga_id="sleep-branch")
        result = await engine.handle("sleep-branch").result(timeout=WAIT)
    assert result == [["S1:1", "S2:2"], "W1:1"]
    # the group suspended once, the other branch done; its timer woke it (nothing else did)
    assert runs.runs("sleep-branch") == [SagaStatus.SUSPENDED, SagaStatus.COMPLETED]
    assert done_at_wake == [{"S1": 1, "W1": 1}]
    assert led.starts == {"S1": 1, "W1": 1, "S2": 1}


async def test_a_failure_in_one_branch_waits_for_a_branch_that_waits(engine: Engine) -> None:
    led = Ledger()
    fails = led.step("Fails", fail=True)
    before, after = led.step("Before"), led.step("AfterSignal")

    async def waiter(saga: SagaContext) -> list[Any]:
        first = await before(saga, 1)
        await saga.wait_for_signal("go")
        return [first, await after(saga, 2)]

    async def failing(saga: SagaContext) -> str:
        return await fails(saga, 0)

    @saga_workflow("FailWhileWaiting")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return await saga.gather(waiter(saga), failing(saga))

    await engine.start(wf, None, saga_id="fail-wait")
    await suspended(engine, "fail-wait")
    assert led.comps == []  # not rolled back while a branch still waits
    await engine.signal("fail-wait", "go")
    with pytest.raises(SagaCompensatedError) as info:
        await engine.handle("fail-wait").result(timeout=WAIT)
    assert info.value.step == "Fails"
    assert led.starts == {"Before": 1, "Fails": 1, "AfterSignal": 1}
    # gather 0; Before 1, Fails 2, the signal 3, AfterSignal 5: undone from the highest down
    assert led.comps == [
        ("AfterSignal", "AfterSignal:2", False),
        ("Fails", 0, True),
        ("Before", "Before:1", False),
    ]


# -- durability inside a branch ---------------------------------------------------------------


async def test_a_step_starts_only_once_the_earlier_steps_of_its_branch_are_durable(
    engine: Engine,
) -> None:
    """A step's body starts only once what its strand did before is committed, so that a crash
    makes at most the step in flight run again (run.py, ``_execute_step``). Here a sibling
    branch starts a step (and waits in ``_settle`` for the writes queued so far, Y1's among
    them) just before branch Y goes on to Y2: Y2 must still wait for Y1's write."""
    assert engine._store is not None
    store = engine._store
    queued: dict[str, asyncio.Future[None]] = {}
    append = store.append

    def watching_append(saga_id: str, fence: int, entry: Any, *args: Any, **kwargs: Any) -> Any:
        future = append(saga_id, fence, entry, *args, **kwargs)
        if entry is not None and entry.kind == "step":
            queued[entry.name] = future
        return future

    store.append = watching_append  # type: ignore[method-assign]
    y1_ran = asyncio.Event()
    durable_at_start: dict[str, bool] = {}

    @saga_step("Y1")
    async def y1(ctx: SagaContext, inp: Any) -> str:
        y1_ran.set()
        return "y1"

    @saga_step("Y2")
    async def y2(ctx: SagaContext, inp: Any) -> str:
        durable_at_start["Y2"] = queued["Y1"].done()
        return "y2"

    @saga_step("X1")
    async def x1(ctx: SagaContext, inp: Any) -> str:
        return "x1"

    async def branch_y(saga: SagaContext) -> list[str]:
        first = await y1(saga, 1)
        await asyncio.sleep(0)  # branch code may await anything between two steps
        return [first, await y2(saga, 2)]

    async def branch_x(saga: SagaContext) -> str:
        await y1_ran.wait()
        return await x1(saga, 3)

    @saga_workflow("DurableBeforeNext")
    async def wf(saga: SagaContext, inp: Any) -> list[Any]:
        return await saga.gather(branch_y(saga), branch_x(saga))

    result = await engine.run(wf, None, saga_id="durable", timeout=WAIT)
    assert result == [["y1", "y2"], "x1"]
    # Y1's result was committed before Y2's body began
    assert durable_at_start == {"Y2": True}


# -- a run stopped in the middle of a gather --------------------------------------------------


def build_random_sleep_saga(
    led: Ledger, hold: Callable[[str], Any], seed: int
) -> SagaWorkflow[Any, Any]:
    """A prefix step, a gather of 3 branches of 3 steps each, a step after it; every step and
    every branch sleeps a random time (a new random sequence per engine)."""
    rng = random.Random(seed)

    def jitter() -> float:
        return rng.uniform(0, 0.02)

    def held(name: str) -> Callable[[], Any]:
        async def wait() -> None:
            await hold(name)

        return wait

    pre = led.step("Pre", sleep=jitter)
    post = led.step("Post", sleep=jitter)
    steps = {
        f"B{i}S{k}": led.step(f"B{i}S{k}", sleep=jitter, hold=held(f"B{i}S{k}"))
        for i in range(3)
        for k in range(3)
    }

    async def branch(saga: SagaContext, i: int) -> list[str]:
        outs = []
        for k in range(3):
            await asyncio.sleep(jitter())  # not durable: only shuffles the interleaving
            outs.append(await steps[f"B{i}S{k}"](saga, k))
        return outs

    @saga_workflow("RandomSleeps")
    async def wf(saga: SagaContext, inp: Any) -> dict[str, Any]:
        first = await pre(saga, 0)
        groups = await saga.gather(*(branch(saga, i) for i in range(3)))
        return {"pre": first, "groups": groups, "post": await post(saga, 9)}

    return wf


EXPECTED_RANDOM_SLEEPS = [
    (0, "step", "Pre", "completed"),
    (1, "gather", "3 branches", "completed"),
    *sorted((2 + 3 * k + i, "step", f"B{i}S{k}", "completed") for i in range(3) for k in range(3)),
    (11, "step", "Post", "completed"),
]


@pytest.mark.parametrize("held", ["B0S0", "B1S1", "B2S2"])
async def test_a_gather_stopped_midway_is_resumed_by_another_engine(
    shared_store_url: str, held: str
) -> None:
    led = Ledger()
    gate = Gate()
    holding = {"on": True}

    async def hold(name: str) -> None:
        if holding["on"] and name == held:
            await gate.hold()

    saga_id = f"stopped-{held}"
    async with make_engine(shared_store_url) as first:
        await first.start(build_random_sleep_saga(led, hold, 1), {}, saga_id=saga_id)
        await gate.reached()
        # the held branch stops at its held step; the others run to their end
        branch, step = int(held[1]), int(held[3])
        finished = {
            (2 + 3 * k + i, "step", f"B{i}S{k}", "completed")
            for i in range(3)
            for k in range(3)
            if i != branch or k < step
        }

        async def others_journaled() -> bool:
            return finished <= set(journal(await first.get(saga_id)))

        await eventually(others_journaled, "the other branches to be journaled")
        before = await first.get(saga_id)
        # leaving the block closes the engine: the run is cancelled inside the held step
    holding["on"] = False
    assert before.status == SagaStatus.RUNNING
    assert set(journal(before)) == finished | set(EXPECTED_RANDOM_SLEEPS[:2])

    async with make_engine(shared_store_url) as second:
        second.register(build_random_sleep_saga(led, hold, 2))
        await second.recover()
        result = await second.handle(saga_id).result(timeout=WAIT)
        after = await second.get(saga_id)
    assert after.status == SagaStatus.COMPLETED  # no NonDeterminismError
    assert result == {
        "pre": "Pre:0",
        "groups": [[f"B{i}S{k}:{k}" for k in range(3)] for i in range(3)],
        "post": "Post:9",
    }
    assert journal(after) == EXPECTED_RANDOM_SLEEPS
    # what was journaled kept its recorded results
    assert {s.seq: s.output for s in before.steps} == {
        s.seq: s.output for s in after.steps if s.seq in {b.seq for b in before.steps}
    }
    # every finished step ran once; the held one was stopped in its body and ran again
    names = ["Pre", "Post", *(f"B{i}S{k}" for i in range(3) for k in range(3))]
    assert led.done == dict.fromkeys(names, 1)
    assert led.starts == {**dict.fromkeys(names, 1), held: 2}


@pytest.mark.parametrize("seed", range(6))
async def test_a_gather_stopped_at_a_random_moment_resumes_deterministically(
    shared_store_url: str, seed: int
) -> None:
    """Close the engine after a random delay (anywhere in the gather): the second engine
    finishes the saga with the same numbers; only steps not journaled before the close may
    have run twice."""
    led = Ledger()

    async def no_hold(name: str) -> None:
        return None

    saga_id = f"random-stop-{seed}"
    async with make_engine(shared_store_url) as first:
        await first.start(build_random_sleep_saga(led, no_hold, seed), {}, saga_id=saga_id)
        await asyncio.sleep(random.Random(seed).uniform(0.0, 0.06))
        before = await first.get(saga_id)
    journaled_before = {s.name for s in before.steps if s.kind == "step"}
    async with make_engine(shared_store_url) as second:
        second.register(build_random_sleep_saga(led, no_hold, seed + 100))
        await second.recover()
        result = await second.handle(saga_id).result(timeout=WAIT)
        after = await second.get(saga_id)
    assert after.status == SagaStatus.COMPLETED
    assert result["groups"] == [[f"B{i}S{k}:{k}" for k in range(3)] for i in range(3)]
    assert journal(after) == EXPECTED_RANDOM_SLEEPS
    for name in journaled_before:
        assert led.starts[name] == 1, (name, led.starts)
    assert all(1 <= count <= 2 for count in led.starts.values()), led.starts
    assert set(led.starts) == {s.name for s in after.steps if s.kind == "step"}
