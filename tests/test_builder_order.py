"""The builder's order (issue 15): nodes added without ``depends_on`` run one after another in
the order added, as python-saga-orchestrator and minos users rely on; ``builder.parallel()``
asks for parallel branches; ``InputContext.outputs`` and ``input_map(out, ctx)``; and
``add_wait``, a node that waits durably for a signal or a notify, also across a SIGKILL.

In-process tests run once per store kind (the ``engine`` / ``store_url`` fixtures); the restart
tests run real processes (tests/builder_wait_app.py) on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    BaseStep,
    Engine,
    InputContext,
    SagaBuilder,
    SagaCompensatedError,
    SagaDefinition,
    SagaDefinitionError,
    SagaStatus,
    StepRef,
    TerminalError,
)
from tests.conftest import fast_retry
from tests.processes import AppProcesses
from tests.waiting import eventually, within

REPO = Path(__file__).resolve().parent.parent
WAIT = 15.0


class Item(BaseModel):
    n: int


class Done(BaseModel):
    step: str
    n: int


class Pair(BaseModel):
    first: int
    second: int


def ledger_step(name: str, log: list[tuple[str, str]], fail: bool = False) -> BaseStep[Any, Any]:
    """A step called ``name`` that takes an ``Item`` or a ``Done`` (as ``n``), logs when it
    starts and ends (or fails), and logs its compensation."""

    class Logged(BaseStep[Item, Done]):
        async def execute(self, inp: Item) -> Done:
            log.append(("start", name))
            await asyncio.sleep(0.01)  # a later step started too early would log in between
            if fail:
                log.append(("fail", name))
                raise TerminalError(f"{name} failed")
            log.append(("end", name))
            return Done(step=name, n=inp.n + 1)

        async def compensate(self, inp: Item, out: Done) -> None:
            log.append(("undo", name))

    Logged.name = name
    return Logged()


# -- the order --------------------------------------------------------------------------------


async def test_steps_run_in_the_order_added_and_a_failing_middle_step_stops_the_rest(
    engine: Engine,
) -> None:
    log: list[tuple[str, str]] = []
    builder = SagaBuilder()
    for name in ("S1", "S2"):
        builder.add_step(step=ledger_step(name, log))
    builder.add_step(step=ledger_step("S3", log, fail=True), retry_policy=fast_retry(1))
    builder.add_step(step=ledger_step("S4", log))
    engine.register("ordered_v1", builder.build())

    with pytest.raises(SagaCompensatedError) as caught:
        await within(engine.run("ordered_v1", {"n": 0}, saga_id="ord"), WAIT)

    assert caught.value.step == "S3"
    # one after another; S4 never ran; the compensations ran newest first
    assert log == [
        ("start", "S1"),
        ("end", "S1"),
        ("start", "S2"),
        ("end", "S2"),
        ("start", "S3"),
        ("fail", "S3"),
        ("undo", "S2"),
        ("undo", "S1"),
    ]
    snapshot = await engine.get("ord")
    assert snapshot.status == SagaStatus.COMPENSATED
    assert [(s.kind, s.name, s.status) for s in snapshot.steps] == [
        ("step", "S1", "completed"),
        ("step", "S2", "completed"),
        ("step", "S3", "failed"),
        ("compensation", "S2", "completed"),
        ("compensation", "S1", "completed"),
    ]


async def test_depends_on_chooses_the_input_not_the_order(engine: Engine) -> None:
    log: list[tuple[str, str]] = []
    seen: list[Any] = []
    builder = SagaBuilder()
    first = builder.add_step(step=ledger_step("S1", log))
    builder.add_step(step=ledger_step("S2", log), input_map=lambda ctx: {"n": 100})

    def from_first(done: Done) -> Item:
        seen.append(done)
        return Item(n=done.n * 10)

    builder.add_step(step=ledger_step("S3", log), depends_on=first, input_map=from_first)
    engine.register("chosen_v1", builder.build())

    result = await within(engine.run("chosen_v1", {"n": 1}), WAIT)

    assert [e for e in log if e[0] == "start"] == [
        ("start", "S1"),
        ("start", "S2"),
        ("start", "S3"),
    ]
    assert seen == [Done(step="S1", n=2)]  # S1's output, although S2 ran in between
    assert result == {
        "S1": {"step": "S1", "n": 2},
        "S2": {"step": "S2", "n": 101},
        "S3": {"step": "S3", "n": 21},
    }


# -- parallel blocks --------------------------------------------------------------------------


async def test_a_parallel_block_runs_after_what_came_before_and_before_what_comes_after(
    engine: Engine,
) -> None:
    log: list[tuple[str, str]] = []
    started = {name: asyncio.Event() for name in ("A", "B")}
    contexts: list[InputContext] = []

    def branch(me: str, other: str) -> BaseStep[Any, Any]:
        class Branch(BaseStep[Done, Done]):
            name = me

            async def execute(self, inp: Done) -> Done:
                log.append(("start", me))
                started[me].set()
                # each waits for its sibling to start: one after the other, they would hang
                await within(started[other].wait(), 5.0)
                log.append(("end", me))
                return Done(step=me, n=inp.n + 1)

        return Branch()

    def summing(ctx: InputContext) -> Item:
        contexts.append(ctx)
        return Item(n=ctx.outputs["A"].n + ctx.outputs["B"].n)

    def peek(ctx: InputContext) -> Done:
        contexts.append(ctx)
        return Done(step="peek", n=len(ctx.outputs))

    builder = SagaBuilder()
    first = builder.add_step(step=ledger_step("First", log))
    with builder.parallel():
        builder.add_step(step=branch("A", "B"), depends_on=first)
        builder.add_step(step=branch("B", "A"), depends_on=first)
        peeked = branch("C", "C")
        started["C"] = asyncio.Event()
        builder.add_step(step=peeked, input_map=peek)
    builder.add_step(step=ledger_step("After", log), input_map=summing)
    definition = builder.build()
    engine.register("block_v1", definition)

    result = await within(engine.run("block_v1", {"n": 0}, saga_id="blk"), WAIT)

    # First before any branch; After once every branch ended
    starts = [name for kind, name in log if kind == "start"]
    assert starts[0] == "First" and starts[-1] == "After"
    assert sorted(starts[1:-1]) == ["A", "B", "C"]
    assert log.index(("start", "After")) > max(log.index(("end", n)) for n in ("A", "B", "C"))
    # a branch sees what came before the block, not its siblings
    assert list(contexts[0].outputs) == ["First"]
    assert list(contexts[1].outputs) == ["First", "A", "B", "C"]
    assert result["After"] == {"step": "After", "n": 5}  # A's n (2) + B's n (2), plus one
    assert list(result) == ["First", "A", "B", "C", "After"]
    steps = [(s.kind, s.name) for s in (await engine.get("blk")).steps]
    # the signals are read once, before the block whose branch needs an InputContext
    assert [kind for kind, _ in steps[:3]] == ["step", "signals", "gather"]
    assert sorted(name for _, name in steps[3:6]) == ["A", "B", "C"]
    assert steps[6:] == [("step", "After")]
    assert "parallel(step 'A' from 'First', step 'B' from 'First', step 'C')" in repr(definition)


async def test_a_failing_branch_rolls_back_the_block_and_what_came_before(engine: Engine) -> None:
    log: list[tuple[str, str]] = []
    builder = SagaBuilder()
    builder.add_step(step=ledger_step("Before", log))
    with builder.parallel():
        builder.add_step(step=ledger_step("Ok", log))
        builder.add_step(step=ledger_step("Bad", log, fail=True), retry_policy=fast_retry(1))
    builder.add_step(step=ledger_step("Never", log))
    engine.register("block_fail_v1", builder.build())

    with pytest.raises(SagaCompensatedError) as caught:
        await within(engine.run("block_fail_v1", {"n": 0}), WAIT)

    assert caught.value.step == "Bad"
    assert ("start", "Never") not in log
    undone = [name for kind, name in log if kind == "undo"]
    assert undone == ["Ok", "Before"]


def test_the_builder_refuses_what_makes_no_sense_with_the_fix() -> None:
    log: list[tuple[str, str]] = []

    nested = SagaBuilder()
    with (
        pytest.raises(SagaDefinitionError, match=r"inside another builder\.parallel\(\)"),
        nested.parallel(),
        nested.parallel(),
    ):
        pass

    empty = SagaBuilder()
    with pytest.raises(SagaDefinitionError, match="added no node"), empty.parallel():
        pass

    sibling = SagaBuilder()
    with sibling.parallel():
        a = sibling.add_step(step=ledger_step("A", log))
        with pytest.raises(SagaDefinitionError, match="same parallel block") as caught:
            sibling.add_step(step=ledger_step("B", log), depends_on=a)
        assert "add it after the `with builder.parallel():` block" in str(caught.value)
        # a reference made by hand to a sibling is refused as well
        with pytest.raises(SagaDefinitionError, match="same parallel block"):
            sibling.add_step(step=ledger_step("C", log), depends_on=StepRef("A"))
        # (one to a sibling added later, by build(): it names a node added after it)
        sibling.add_step(step=ledger_step("D", log), depends_on=StepRef("E"))
        sibling.add_step(step=ledger_step("E", log))
    with pytest.raises(SagaDefinitionError, match="'E', added after it"):
        sibling.build()

    unfinished = SagaBuilder()
    with unfinished.parallel():
        unfinished.add_step(step=ledger_step("A", log))
        with pytest.raises(SagaDefinitionError, match=r"inside a `with builder\.parallel"):
            unfinished.build()

    later = SagaBuilder()
    later.add_step(step=ledger_step("A", log), depends_on=StepRef("B"))
    later.add_step(step=ledger_step("B", log))
    with pytest.raises(SagaDefinitionError, match="must name a node added earlier"):
        later.build()

    mappers = SagaBuilder()
    first = mappers.add_step(step=ledger_step("A", log))
    with pytest.raises(SagaDefinitionError, match="no depends_on to give `out`"):
        mappers.add_step(step=ledger_step("B", log), input_map=lambda out, ctx: out)
    with pytest.raises(SagaDefinitionError, match=r"must take one argument .* or two"):
        mappers.add_step(step=ledger_step("B", log), depends_on=first, input_map=lambda a, b, c: a)
    with pytest.raises(SagaDefinitionError, match="no depends_on to give `out`"):
        mappers.add_condition(lambda out, ctx: True, then=mappers.build())

    waits = SagaBuilder()
    waits.add_wait("approved")
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: waits.add_wait(""), "needs a name"),
        (lambda: waits.add_wait("approved"), "'approved' are already used"),
        (lambda: waits.add_wait("later", timeout=0), "timeout must be positive"),
        (lambda: waits.add_wait("later", timeout=-1), "must not be negative"),
        (lambda: waits.add_wait("later", timeout="1h"), "timedelta or a number"),  # type: ignore[arg-type]
    ]
    for bad, message in cases:
        with pytest.raises(SagaDefinitionError, match=message):
            bad()


# -- what an input_map sees -------------------------------------------------------------------


async def test_outputs_and_two_parameter_input_maps(engine: Engine) -> None:
    got: list[Any] = []
    log: list[tuple[str, str]] = []

    class Combine(BaseStep[Pair, Done]):
        async def execute(self, inp: Pair) -> Done:
            return Done(step="Combine", n=inp.first * 100 + inp.second)

    def combine(out: Done, ctx: InputContext) -> Pair:
        got.append((out, ctx))
        return Pair(first=ctx.outputs["S1"].n, second=out.n)

    builder = SagaBuilder()
    builder.add_step(step=ledger_step("S1", log))
    second = builder.add_step(step=ledger_step("S2", log), input_map=lambda ctx: {"n": 7})
    builder.add_step(step=Combine(), depends_on=second, input_map=combine)
    engine.register("outputs_v1", builder.build())

    result = await within(engine.run("outputs_v1", {"n": 1}), WAIT)

    assert result["Combine"] == {"step": "Combine", "n": 208}
    [(out, ctx)] = got
    assert out == Done(step="S2", n=8)  # the dependency's output, as its model
    assert isinstance(ctx, InputContext)
    assert ctx.initial_data == {"n": 1}
    assert ctx.outputs == {"S1": Done(step="S1", n=2), "S2": Done(step="S2", n=8)}


# -- waits ------------------------------------------------------------------------------------


def waiting_saga(log: list[tuple[str, str]], timeout: float | None = None) -> SagaDefinition:
    builder = SagaBuilder()
    builder.add_step(step=ledger_step("Reserve", log))
    approval = builder.add_wait("approved", timeout=timeout)
    builder.add_step(
        step=ledger_step("Ship", log),
        depends_on=approval,
        input_map=lambda payload, ctx: {"n": payload["n"] + ctx.outputs["Reserve"].n},
    )
    builder.add_step(
        step=ledger_step("Note", log),
        input_map=lambda ctx: {"n": len(ctx.events) * 1000 + ctx.events[-1]["payload"]["n"]},
    )
    return builder.build()


async def suspended_token(engine: Engine, saga_id: str) -> str:
    async def waiting() -> bool:
        snap = await engine.get(saga_id)
        return snap.status == SagaStatus.SUSPENDED and snap.wait_token is not None

    await eventually(waiting, "the saga to suspend in its wait")
    token = (await engine.get(saga_id)).wait_token
    assert token is not None
    return token


@pytest.mark.parametrize("how", ["signal", "notify"])
async def test_a_wait_suspends_until_its_signal_or_a_notify(engine: Engine, how: str) -> None:
    log: list[tuple[str, str]] = []
    engine.register("wait_v1", waiting_saga(log))
    handle = await engine.start("wait_v1", {"n": 0}, saga_id="w")
    token = await suspended_token(engine, "w")
    assert [name for kind, name in log if kind == "start"] == ["Reserve"]  # Ship waits

    await engine.signal("w", "other", {"n": 5})  # not this wait's signal: stays waiting
    if how == "signal":
        await engine.signal("w", "approved", {"n": 40})
    else:
        assert await engine.notify("w", token, {"n": 40})
    result = await within(handle.result(), WAIT)

    assert result["approved"] == {"n": 40}  # the wait's output is the payload
    assert result["Ship"] == {"step": "Ship", "n": 42}  # 40 + Reserve's n (1) + 1
    # the signals read before the wait began (none), then the wait's event
    assert result["Note"] == {"step": "Note", "n": 1041}
    assert list(result) == ["Reserve", "approved", "Ship", "Note"]
    kinds = [(s.kind, s.name) for s in (await engine.get("w")).steps]
    assert kinds == [
        ("step", "Reserve"),
        ("signals", "signals"),
        ("signal", "approved"),
        ("step", "Ship"),
        ("step", "Note"),
    ]


async def test_a_signal_sent_before_the_wait_is_taken_and_listed_once(engine: Engine) -> None:
    log: list[tuple[str, str]] = []
    engine.register("early_v1", waiting_saga(log))
    await engine.start("early_v1", {"n": 0}, saga_id="e", run_here=False)
    await engine.signal("e", "approved", {"n": 3})
    result = await within(engine.handle("e").result(), WAIT)
    assert result["Ship"] == {"step": "Ship", "n": 5}
    assert result["Note"] == {"step": "Note", "n": 1004}  # one event (3), not two; plus one


async def test_a_wait_past_its_timeout_rolls_the_saga_back(engine: Engine) -> None:
    log: list[tuple[str, str]] = []
    engine.register("late_v1", waiting_saga(log, timeout=0.2))
    with pytest.raises(SagaCompensatedError) as caught:
        await within(engine.run("late_v1", {"n": 0}, saga_id="late"), WAIT)
    assert caught.value.cause_type == "SagaTimeoutError"
    assert "no signal 'approved' arrived within its timeout" in caught.value.cause_message
    assert [e for e in log if e[1] != "Reserve" or e[0] == "undo"] == [("undo", "Reserve")]


async def test_waits_in_a_parallel_block_list_their_events_in_block_order(
    engine: Engine,
) -> None:
    log: list[tuple[str, str]] = []
    contexts: list[InputContext] = []

    def after(ctx: InputContext) -> Item:
        contexts.append(ctx)
        return Item(n=sum(e["payload"] for e in ctx.events))

    builder = SagaBuilder()
    with builder.parallel():
        builder.add_wait("legal")
        builder.add_wait("finance")
    builder.add_step(step=ledger_step("Go", log), input_map=after)
    engine.register("two_approvals_v1", builder.build())

    handle = await engine.start("two_approvals_v1", {"n": 0}, saga_id="two")
    await suspended_token(engine, "two")
    await engine.signal("two", "finance", 20)  # the second branch's answer comes first
    await engine.signal("two", "legal", 1)
    result = await within(handle.result(), WAIT)

    assert result == {"legal": 1, "finance": 20, "Go": {"step": "Go", "n": 22}}
    # whatever order the answers came in, the events follow the block's order
    assert [e["name"] for e in contexts[-1].events] == ["legal", "finance"]
    assert contexts[-1].outputs == {"legal": 1, "finance": 20}


# -- across a restart -------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path, process_db_url: str) -> Iterator[AppProcesses]:
    procs = AppProcesses(tmp_path, process_db_url, "tests.builder_wait_app")
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["signal", "notify"])
def test_a_waiting_builder_saga_outlives_a_killed_process(app: AppProcesses, how: str) -> None:
    saga_id = f"approval-{how}"
    starter = app.spawn("start", saga_id)
    app.wait_until(
        starter,
        "the saga to suspend in its wait",
        lambda: any(e["ev"] == "suspended" for e in app.events()),
    )
    app.kill(starter)

    finisher = app.spawn("finish", saga_id, how)
    summary = app.finish(finisher)

    assert summary["status"] == "COMPLETED", summary
    by = "signal" if how == "signal" else "token"
    assert summary["output"] == {
        "Reserve": {"reservation_id": f"res-{saga_id}"},
        "approved": {"by": by},
        "Ship": {"tracking": f"res-{saga_id}/{by}"},
        "Confirm": {"text": f"res-{saga_id}/{by} after approved={by}"},
    }
    if how == "notify":
        assert summary["notified"] is True
    done = [(e["step"], e["pid"]) for e in app.events() if e["ev"] == "do"]
    # Reserve ran once, before the kill; the rest once, in the new process
    assert done == [
        ("Reserve", starter.pid),
        ("Ship", finisher.pid),
        ("Confirm", finisher.pid),
    ]
    assert not [e for e in app.events() if e["ev"] == "undo"]


# -- the documents' examples ------------------------------------------------------------------


def python_blocks(path: Path, start: str | None = None, stop: str | None = None) -> list[str]:
    """The ```python blocks of a Markdown file (between the headings ``start`` and ``stop``)."""
    text = path.read_text()
    if start is not None:
        text = text[text.index(start) :]
    if stop is not None:
        text = text[: text.index(stop)]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_example(source: str, tmp_path: Path) -> str:
    import subprocess
    import sys

    script = tmp_path / "example.py"
    script.write_text(source)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("section", ["## A complete example", "## Waiting for events"])
def test_the_guides_examples_run_as_written_and_print_what_it_says(
    tmp_path: Path, section: str
) -> None:
    guide = REPO / "docs" / "declarative.md"
    [example, *_] = python_blocks(guide, section)
    out = run_example(example, tmp_path)
    text = guide.read_text()
    printed = text[text.index("It prints:", text.index(section)) :]
    expected = re.findall(r"```text\n(.*?)```", printed, flags=re.S)[0]
    assert_same_lines(out, expected)


def assert_same_lines(out: str, expected: str) -> None:
    """``expected`` may abbreviate a dict's values as ``{...}``."""
    got, want = out.strip().splitlines(), expected.strip().splitlines()
    assert len(got) == len(want), (got, want)
    for line, pattern in zip(got, want, strict=True):
        regex = ".*".join(re.escape(part) for part in pattern.split("{...}"))
        assert re.fullmatch(regex, line), (line, pattern)


@pytest.mark.slow
def test_the_composition_docs_builder_example_runs_as_written(tmp_path: Path) -> None:
    # the README's chapter on composition lives in docs/composition.md
    [example] = python_blocks(
        REPO / "docs" / "composition.md",
        "## The declarative front end: typed steps and a builder",
    )
    out = run_example(example, tmp_path)
    committed, result = out.strip().splitlines()
    assert committed.startswith("committed {'customer_id': 'c1'")
    assert (
        result.startswith("{'CreateOrder': {") and "'ReserveStock': {'ref': 'stock-o-c1'}" in result
    )
    assert "'ChargeCard': {'ref': 'pay-" in result
