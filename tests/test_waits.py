"""Waits (durable timers, signals, promises, notify), deadlines and published state, each checked
on every store kind.

Workflows and steps are defined inside each test, so that their counters and logs belong to that
test alone. A "restart" is an engine closed while the saga is suspended and a new engine opened
on the same database (``shared_store_url``); real processes are in test_waits_restart.py.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from sagakit import (
    Engine,
    SagaCompensatedError,
    SagaContext,
    SagaError,
    SagaNotFoundError,
    SagaStatus,
    SagaValidationError,
    SagaWorkflowOptions,
    saga_step,
    saga_workflow,
)
from sagakit.errors import (
    PromiseAlreadyCompletedError,
    PromiseRejectedError,
    SagaFinishedError,
    SagaTimeoutError,
)
from tests.conftest import engine_with, fast_retry, make_engine
from tests.waiting import STILL, WAIT, Gate, RunLog, eventually, suspended

# -- helpers ----------------------------------------------------------------------------------


async def published(engine: Engine, saga_id: str, key: str) -> Any:
    """Wait until the saga published ``key`` (set_state); return the value."""
    missing = object()
    seen: list[Any] = []

    async def check() -> bool:
        value = await engine.query(saga_id, key, default=missing)
        seen.append(value)
        return value is not missing

    await eventually(check, f"saga {saga_id!r} to publish {key!r}")
    return seen[-1]


async def stays_suspended(engine: Engine, saga_id: str, absent_key: str | None = None) -> None:
    """The saga is SUSPENDED now and still is (with ``absent_key`` unpublished) after a while."""
    await suspended(engine, saga_id)
    await asyncio.sleep(STILL)
    snap = await engine.get(saga_id)
    assert snap.status == SagaStatus.SUSPENDED
    assert saga_id not in engine._tasks
    if absent_key is not None:
        assert await engine.query(saga_id, absent_key, default="<none>") == "<none>"


# -- durable timers ---------------------------------------------------------------------------


async def test_sleep_suspends_the_saga_and_leaves_nothing_in_memory(engine: Engine) -> None:
    ran: list[str] = []

    @saga_step("Before")
    async def before(ctx: SagaContext, inp: Any) -> str:
        ran.append("before")
        return "b"

    @saga_step("After")
    async def after(ctx: SagaContext, inp: Any) -> str:
        ran.append("after")
        return "a"

    @saga_workflow("Napper")
    async def napper(saga: SagaContext, inp: Any) -> list[str]:
        first = await before(saga, None)
        await saga.sleep(0.5)
        return [first, await after(saga, None)]

    handle = await engine.start(napper, None, saga_id="nap")
    snap = await suspended(engine, "nap")
    assert "nap" not in engine._tasks
    assert ran == ["before"]
    assert isinstance(snap.wait_token, str) and snap.wait_token
    assert snap.wake_at is not None
    assert snap.owner is None
    kinds = [(s.kind, s.name, s.status) for s in snap.steps]
    assert kinds[0] == ("step", "Before", "completed")
    assert len(kinds) == 2 and kinds[1][0] == "sleep" and kinds[1][2] == "running"
    assert await handle.result(timeout=WAIT) == ["b", "a"]
    assert ran == ["before", "after"]
    done = await engine.get("nap")
    assert done.status == SagaStatus.COMPLETED
    assert done.wait_token is None


@pytest.mark.parametrize("duration", [0.4, timedelta(milliseconds=400)], ids=["float", "timedelta"])
async def test_sleep_wakes_on_time(store_url: str, duration: float | timedelta) -> None:
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration

    @saga_step("Clock")
    async def clock(ctx: SagaContext, inp: Any) -> float:
        return time.time()

    @saga_workflow("Timed")
    async def timed(saga: SagaContext, inp: Any) -> list[float]:
        start = await clock(saga, "start")
        await saga.sleep(duration)
        return [start, await clock(saga, "end")]

    # this engine looks for due sagas once an hour: only the saga's own timer can wake it
    # before the run's time is up (WAIT)
    async with make_engine(store_url, poll_interval=timedelta(hours=1)) as engine:
        begun = time.monotonic()
        start, end = await engine.run(timed, None, saga_id="timed", timeout=WAIT)
        elapsed = time.monotonic() - begun
    # and not before its time
    assert end - start >= seconds
    assert elapsed >= seconds


async def test_sleep_survives_closing_the_engine(shared_store_url: str) -> None:
    ran: list[str] = []

    @saga_step("Before")
    async def before(ctx: SagaContext, inp: Any) -> str:
        ran.append("before")
        return "b"

    @saga_step("After")
    async def after(ctx: SagaContext, inp: Any) -> float:
        ran.append("after")
        return time.time()

    @saga_workflow("RestartNap")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await before(saga, None)
        await saga.sleep(0.4)
        return await after(saga, None)

    async with engine_with(shared_store_url, wf) as first:
        await first.start(wf, None, saga_id="rnap")
        snap = await suspended(first, "rnap")
    assert snap.wake_at is not None
    wake_at = snap.wake_at.timestamp()
    assert ran == ["before"]
    # every engine is closed past the wake time; a new one finishes the saga
    await asyncio.sleep(max(0.0, wake_at - time.time()) + 0.1)
    assert ran == ["before"]
    async with engine_with(shared_store_url, wf) as second:
        woke = await second.handle("rnap").result(timeout=WAIT)
    assert woke >= wake_at
    assert ran == ["before", "after"]


async def test_a_new_engine_wakes_a_sleep_on_time_not_before(shared_store_url: str) -> None:
    ran: list[str] = []

    @saga_step("Before")
    async def before(ctx: SagaContext, inp: Any) -> str:
        ran.append("before")
        return "b"

    @saga_step("After")
    async def after(ctx: SagaContext, inp: Any) -> float:
        ran.append("after")
        return time.time()

    @saga_workflow("RestartNap2")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await before(saga, None)
        await saga.sleep(0.5)
        return await after(saga, None)

    async with engine_with(shared_store_url, wf) as first:
        await first.start(wf, None, saga_id="rnap2")
        snap = await suspended(first, "rnap2")
    assert snap.wake_at is not None
    wake_at = snap.wake_at.timestamp()
    # the new engine opens before the wake time: it must not run the rest early
    async with engine_with(shared_store_url, wf) as second:
        woke = await second.handle("rnap2").result(timeout=WAIT)
    # not before its time; that it woke at all (by the new engine's poll: the timer was the
    # closed engine's) is the result arriving within WAIT
    assert woke >= wake_at
    assert ran == ["before", "after"]


# -- signals ----------------------------------------------------------------------------------


async def test_a_signal_sent_before_the_wait_is_kept(engine: Engine) -> None:
    gate = Gate()

    @saga_step("Hold")
    async def hold(ctx: SagaContext, inp: Any) -> None:
        await gate.hold()

    @saga_workflow("Early")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await hold(saga, None)
        return await saga.wait_for_signal("go")

    handle = await engine.start(wf, None, saga_id="early")
    await gate.reached()
    await engine.signal("early", "go", {"n": 1})
    gate.opened.set()
    assert await handle.result(timeout=WAIT) == {"n": 1}
    signal_entries = [s for s in (await engine.get("early")).steps if s.kind == "signal"]
    assert [(s.name, s.status) for s in signal_entries] == [("go", "completed")]


async def test_a_signal_wakes_a_saga_suspended_in_its_wait(engine: Engine) -> None:
    @saga_workflow("Late")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return {"got": await saga.wait_for_signal("go")}

    handle = await engine.start(wf, None, saga_id="late")
    snap = await suspended(engine, "late")
    assert isinstance(snap.wait_token, str)
    assert snap.wake_at is None  # no timer: only an event wakes it
    await asyncio.sleep(STILL)
    assert (await engine.get("late")).status == SagaStatus.SUSPENDED
    await engine.signal("late", "go", [1, "two", None])
    assert await handle.result(timeout=WAIT) == {"got": [1, "two", None]}


async def test_a_wait_with_a_timeout_gets_a_signal_sent_in_time(engine: Engine) -> None:
    @saga_workflow("InTime")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return await saga.wait_for_signal("go", timeout=timedelta(hours=1))

    handle = await engine.start(wf, None, saga_id="intime")
    snap = await suspended(engine, "intime")
    assert snap.wake_at is not None  # the timeout is a timer
    await engine.signal("intime", "go", "yes")
    # the signal woke it: its timer is an hour away
    assert await handle.result(timeout=WAIT) == "yes"


async def test_signals_of_one_name_are_taken_in_order_one_each(engine: Engine) -> None:
    gate = Gate()

    @saga_step("Hold")
    async def hold(ctx: SagaContext, inp: Any) -> None:
        await gate.hold()

    @saga_workflow("Fifo")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await hold(saga, None)
        a = await saga.wait_for_signal("go")
        saga.set_state("a", a)
        b = await saga.wait_for_signal("go")
        saga.set_state("b", b)
        c = await saga.wait_for_signal("go")
        return [a, b, c]

    handle = await engine.start(wf, None, saga_id="fifo")
    await gate.reached()
    await engine.signal("fifo", "go", "first")
    await engine.signal("fifo", "go", "second")
    gate.opened.set()
    assert await published(engine, "fifo", "b") == "second"
    assert await engine.query("fifo", "a") == "first"
    # two signals, three waits: the third one suspends and stays so
    await stays_suspended(engine, "fifo")
    await engine.signal("fifo", "go", "third")
    assert await handle.result(timeout=WAIT) == ["first", "second", "third"]
    # nothing is left over for a fourth wait, and a finished saga takes no more signals
    with pytest.raises(SagaFinishedError):
        await engine.signal("fifo", "go", "fourth")


async def test_signals_sent_while_suspended_are_taken_in_send_order(engine: Engine) -> None:
    @saga_workflow("Burst")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return [await saga.wait_for_signal("go") for _ in range(4)]

    handle = await engine.start(wf, None, saga_id="burst")
    await suspended(engine, "burst")
    for i in range(4):
        await engine.signal("burst", "go", i)
    assert await handle.result(timeout=WAIT) == [0, 1, 2, 3]


async def test_signals_of_other_names_are_not_taken(engine: Engine) -> None:
    @saga_workflow("Names")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        a = await saga.wait_for_signal("a")
        saga.set_state("a", a)
        b = await saga.wait_for_signal("b")
        return [a, b]

    handle = await engine.start(wf, None, saga_id="names")
    await suspended(engine, "names")
    await engine.signal("names", "b", "B1")
    await engine.signal("names", "b", "B2")
    # "b" wakes the saga, but its wait for "a" does not take it
    await stays_suspended(engine, "names", absent_key="a")
    await engine.signal("names", "a", "A1")
    # the signals of "b" were kept for the wait that asks for them, the first one first
    assert await handle.result(timeout=WAIT) == ["A1", "B1"]


async def test_a_signal_reaches_a_saga_that_has_not_run_yet(shared_store_url: str) -> None:
    @saga_workflow("NotYet")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return await saga.wait_for_signal("go")

    async with make_engine(shared_store_url, worker=False) as client:
        client.register(wf)
        await client.start(wf, None, saga_id="notyet", run_here=False)
        assert (await client.get("notyet")).status == SagaStatus.PENDING
        await client.signal("notyet", "go", "kept")
        async with engine_with(shared_store_url, wf) as worker:
            assert await worker.handle("notyet").result(timeout=WAIT) == "kept"


async def test_gathered_waits_of_one_name_take_different_signals(engine: Engine) -> None:
    gate = Gate()

    @saga_step("Hold")
    async def hold(ctx: SagaContext, inp: Any) -> None:
        await gate.hold()

    @saga_workflow("GatheredWaits")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await hold(saga, None)
        return list(await asyncio.gather(saga.wait_for_signal("go"), saga.wait_for_signal("go")))

    handle = await engine.start(wf, None, saga_id="gw")
    await gate.reached()
    await engine.signal("gw", "go", "one")
    await engine.signal("gw", "go", "two")
    gate.opened.set()
    # each signal is taken by one wait: the two waits cannot both get "one"
    assert sorted(await handle.result(timeout=WAIT)) == ["one", "two"]


async def test_a_signal_does_not_end_a_sleep(engine: Engine) -> None:
    @saga_step("Clock")
    async def clock(ctx: SagaContext, inp: Any) -> float:
        return time.time()

    @saga_workflow("SleepThenWait")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        start = await clock(saga, "start")
        await saga.sleep(0.5)
        end = await clock(saga, "end")
        return [start, end, await saga.wait_for_signal("go")]

    handle = await engine.start(wf, None, saga_id="stw")
    token = (await suspended(engine, "stw")).wait_token
    await engine.signal("stw", "go", "early")  # wakes the saga: its sleep goes on
    await asyncio.sleep(0.1)
    snap = await suspended(engine, "stw")
    assert snap.wait_token == token  # still the same wait
    start, end, got = await handle.result(timeout=WAIT)
    assert end - start >= 0.5
    assert got == "early"


async def test_an_unrelated_wake_does_not_restart_a_wait_timeout(store_url: str) -> None:
    @saga_workflow("NoRestart")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        try:
            # long enough for the wake below to be over before it times out, on a slow machine
            await saga.wait_for_signal("a", timeout=2.0)
        except SagaTimeoutError:
            return "timed out"
        return "signalled"

    runs = RunLog()
    async with make_engine(store_url, observers=[runs]) as engine:
        handle = await engine.start(wf, None, saga_id="norestart")
        first = await suspended(engine, "norestart")
        assert runs.runs("norestart") == [SagaStatus.SUSPENDED]
        await engine.signal("norestart", "b", None)  # not what it waits for: a wake all the same

        async def woken() -> bool:
            return len(runs.runs("norestart")) == 2

        await eventually(woken, "the saga to run again for the other signal")
        again = await suspended(engine, "norestart")
        # it went back to the same wait, with the same timer: the deadline did not move
        assert runs.runs("norestart") == [SagaStatus.SUSPENDED] * 2
        assert again.wait_token == first.wait_token
        assert first.wake_at is not None and again.wake_at == first.wake_at
        waits = [(s.seq, s.output) for s in again.steps if s.kind == "signal"]
        assert waits == [(s.seq, s.output) for s in first.steps if s.kind == "signal"]
        assert await handle.result(timeout=WAIT) == "timed out"
        snap = await engine.get("norestart")
    wait = next(s for s in snap.steps if s.kind == "signal")
    assert wait.status == "failed" and wait.finished_at is not None
    # it timed out at the deadline set when it began waiting, not before
    assert wait.finished_at >= first.wake_at


async def test_two_workers_on_one_database_take_each_signal_once_in_order(
    shared_store_url: str,
) -> None:
    @saga_workflow("Collector")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return [await saga.wait_for_signal("item") for _ in range(3)]

    ids = [f"col-{i}" for i in range(20)]
    async with (
        engine_with(shared_store_url, wf) as one,
        engine_with(shared_store_url, wf) as two,
        make_engine(shared_store_url, worker=False) as client,
    ):
        for n, saga_id in enumerate(ids):
            await (one if n % 2 else two).start(wf, None, saga_id=saga_id)
        for saga_id in ids:
            await suspended(client, saga_id)
        # sent in bursts, while either worker may be running the saga the previous one woke
        for k in range(3):
            await asyncio.gather(*(client.signal(s, "item", f"{s}#{k}") for s in ids))
        for saga_id in ids:
            result = await client.handle(saga_id).result(timeout=WAIT)
            assert result == [f"{saga_id}#0", f"{saga_id}#1", f"{saga_id}#2"]


async def test_a_wait_past_its_timeout_compensates_the_saga(engine: Engine) -> None:
    undone: list[Any] = []

    async def undo(data: Any) -> None:
        undone.append(data)

    @saga_step("Reserve", compensate=undo)
    async def reserve(ctx: SagaContext, inp: Any) -> str:
        return "r1"

    @saga_workflow("Impatient")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await reserve(saga, None)
        return await saga.wait_for_signal("approve", timeout=0.3)

    begun = time.monotonic()
    handle = await engine.start(wf, None, saga_id="impatient")
    snap = await suspended(engine, "impatient")
    assert snap.wake_at is not None
    with pytest.raises(SagaCompensatedError) as info:
        await handle.result(timeout=WAIT)
    elapsed = time.monotonic() - begun
    assert info.value.cause_type == "SagaTimeoutError"
    assert elapsed >= 0.3  # not before its time
    assert undone == ["r1"]
    done = await engine.get("impatient")
    assert done.status == SagaStatus.COMPENSATED
    waits = [(s.kind, s.name, s.status) for s in done.steps if s.kind == "signal"]
    assert waits == [("signal", "approve", "failed")]
    with pytest.raises(SagaFinishedError):
        await engine.signal("impatient", "approve", True)


async def test_a_saga_may_catch_a_wait_timeout_and_complete(engine: Engine) -> None:
    undone: list[Any] = []

    async def undo(data: Any) -> None:
        undone.append(data)

    @saga_step("Reserve", compensate=undo)
    async def reserve(ctx: SagaContext, inp: Any) -> str:
        return "r1"

    @saga_workflow("Patient")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await reserve(saga, None)
        try:
            await saga.wait_for_signal("go", timeout=timedelta(milliseconds=200))
            timed_out = False
        except SagaTimeoutError:
            timed_out = True
        saga.set_state("phase", "second wait")
        # the wait that timed out took nothing: the next one gets the first signal sent
        late = await saga.wait_for_signal("go")
        return {"timed_out": timed_out, "late": late}

    handle = await engine.start(wf, None, saga_id="patient")
    assert await published(engine, "patient", "phase") == "second wait"
    await suspended(engine, "patient")
    await engine.signal("patient", "go", "finally")
    assert await handle.result(timeout=WAIT) == {"timed_out": True, "late": "finally"}
    assert undone == []
    assert (await engine.get("patient")).status == SagaStatus.COMPLETED


# -- durable promises -------------------------------------------------------------------------


async def test_a_promise_resolved_by_another_branch_of_the_saga(engine: Engine) -> None:
    prepared: list[int] = []

    @saga_step("Prepare")
    async def prepare(ctx: SagaContext, inp: int) -> int:
        prepared.append(inp)
        await asyncio.sleep(0.05)  # the other branch is waiting by now
        return inp * 2

    @saga_workflow("Promised")
    async def wf(saga: SagaContext, inp: int) -> Any:
        ready = saga.promise("ready")

        async def resolver() -> None:
            value = await prepare(saga, inp)
            await ready.resolve({"v": value})

        # branches that run their own operations go through saga.gather (numbered per branch)
        got, _ = await saga.gather(ready.value(), resolver())
        return got

    assert await engine.run(wf, 21, saga_id="promised", timeout=WAIT) == {"v": 42}
    assert prepared == [21]  # the replay after the wake did not run the step again


async def test_a_promise_resolved_after_a_signal(engine: Engine) -> None:
    @saga_workflow("PromiseAfterSignal")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        p = saga.promise("answer")
        sent = await saga.wait_for_signal("answer-is")
        await p.resolve(sent)
        return [await p.value(), await p.value()]

    handle = await engine.start(wf, None, saga_id="pas")
    await suspended(engine, "pas")
    await engine.signal("pas", "answer-is", {"a": 42})
    assert await handle.result(timeout=WAIT) == [{"a": 42}, {"a": 42}]


async def test_a_rejected_promise_raises_in_the_waiter(engine: Engine) -> None:
    @saga_workflow("Rejected")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        p = saga.promise("p")
        await p.reject("out of stock")
        try:
            await p.value()
        except PromiseRejectedError as exc:
            return {"rejected": str(exc)}
        return {"rejected": None}

    result = await engine.run(wf, None, saga_id="rej", timeout=WAIT)
    assert "out of stock" in result["rejected"]


async def test_a_rejection_that_wakes_the_waiter_is_the_same_on_replay(engine: Engine) -> None:
    @saga_step("Check")
    async def check(ctx: SagaContext, inp: Any) -> str:
        await asyncio.sleep(0.05)  # the waiting branch has suspended by now
        return "no stock"

    @saga_workflow("RejectedLater")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        p = saga.promise("stock")

        async def waiter() -> str:
            try:
                await p.value()
            except PromiseRejectedError as exc:
                return f"rejected: {exc}"
            return "resolved"

        async def rejecter() -> None:
            await p.reject(await check(saga, None))

        outcome, _ = await saga.gather(waiter(), rejecter())
        saga.set_state("outcome", outcome)
        # one more suspension: the wake replays the rejected wait from the journal
        after = await saga.wait_for_signal("after")
        return [outcome, after]

    handle = await engine.start(wf, None, saga_id="rejlater")
    assert await published(engine, "rejlater", "outcome") == "rejected: no stock"
    await suspended(engine, "rejlater")
    await engine.signal("rejlater", "after", 1)
    assert await handle.result(timeout=WAIT) == ["rejected: no stock", 1]
    promise_entries = [s for s in (await engine.get("rejlater")).steps if s.kind == "promise"]
    assert [(s.name, s.status) for s in promise_entries] == [("stock", "failed")]


async def test_an_uncaught_rejection_compensates(engine: Engine) -> None:
    undone: list[Any] = []

    async def undo(data: Any) -> None:
        undone.append(data)

    @saga_step("Reserve", compensate=undo)
    async def reserve(ctx: SagaContext, inp: Any) -> str:
        return "r1"

    @saga_workflow("RejectedUncaught")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await reserve(saga, None)
        p = saga.promise("p")
        await p.reject("no")
        return await p.value()

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="rej2", timeout=WAIT)
    assert info.value.cause_type == "PromiseRejectedError"
    assert undone == ["r1"]


async def test_a_promise_completes_once(engine: Engine) -> None:
    @saga_workflow("Twice")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        p = saga.promise("p")
        await p.resolve({"v": 1})
        await p.resolve({"v": 1})  # the same value again is fine
        refused = []
        try:
            await p.resolve({"v": 2})
        except PromiseAlreadyCompletedError:
            refused.append("resolve")
        try:
            await p.reject("too late")
        except PromiseAlreadyCompletedError:
            refused.append("reject")
        return {"value": await p.value(), "refused": refused}

    result = await engine.run(wf, None, saga_id="twice", timeout=WAIT)
    assert result == {"value": {"v": 1}, "refused": ["resolve", "reject"]}


# -- notify -----------------------------------------------------------------------------------


async def test_notify_answers_the_current_wait_only(engine: Engine) -> None:
    @saga_workflow("Notified")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        first = await saga.wait_for_signal("first")
        saga.set_state("first", first)
        second = await saga.wait_for_signal("second")
        return [first, second]

    handle = await engine.start(wf, None, saga_id="nt")
    snap1 = await suspended(engine, "nt")
    token1 = snap1.wait_token
    assert isinstance(token1, str) and token1

    # a made-up token delivers nothing
    assert await engine.notify("nt", "not-a-token", "bogus") is False
    assert await engine.notify("nt", token1 + "x", "bogus") is False
    await stays_suspended(engine, "nt", absent_key="first")
    assert (await engine.get("nt")).wait_token == token1

    # the first wait ends by a signal; its token is then stale
    await engine.signal("nt", "first", "by signal")
    assert await published(engine, "nt", "first") == "by signal"
    snap2 = await suspended(engine, "nt")
    token2 = snap2.wait_token
    assert isinstance(token2, str) and token2 != token1
    assert await engine.notify("nt", token1, "stale") is False
    await stays_suspended(engine, "nt")

    # the current token answers the wait with the event, as its payload
    assert await engine.notify("nt", token2, {"by": "notify"}) is True
    assert await handle.result(timeout=WAIT) == ["by signal", {"by": "notify"}]
    done = await engine.get("nt")
    assert done.wait_token is None
    # the saga ended: every token is stale
    assert await engine.notify("nt", token2, "after the end") is False
    assert await engine.notify("nt", token1, "after the end") is False
    with pytest.raises(SagaNotFoundError):
        await engine.notify("no-such-saga", token2, None)


async def test_a_notification_is_not_taken_as_a_signal_by_a_later_wait(engine: Engine) -> None:
    @saga_workflow("NotifyThenSignal")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        first = await saga.wait_for_signal("go")
        saga.set_state("first", first)
        second = await saga.wait_for_signal("go")
        return [first, second]

    handle = await engine.start(wf, None, saga_id="nts")
    token = (await suspended(engine, "nts")).wait_token
    assert token is not None
    assert await engine.notify("nts", token, "notified") is True
    assert await published(engine, "nts", "first") == "notified"
    await stays_suspended(engine, "nts")
    await engine.signal("nts", "go", "signalled")
    assert await handle.result(timeout=WAIT) == ["notified", "signalled"]


async def test_notify_ends_a_sleep_early(engine: Engine) -> None:
    @saga_workflow("Alarm")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        slept = await saga.sleep(timedelta(hours=1))
        return {"slept": slept}

    handle = await engine.start(wf, None, saga_id="alarm")
    token = (await suspended(engine, "alarm")).wait_token
    assert token is not None
    assert await engine.notify("alarm", token, "wake up") is True
    # ended by the notification: the sleep had an hour to go
    assert await handle.result(timeout=WAIT) == {"slept": None}


async def test_notify_resolves_a_promise_wait(engine: Engine) -> None:
    @saga_workflow("PromiseByNotify")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return await saga.promise("p").value()

    handle = await engine.start(wf, None, saga_id="pbn")
    token = (await suspended(engine, "pbn")).wait_token
    assert token is not None
    assert await engine.notify("pbn", "wrong", {"v": 0}) is False
    assert await engine.notify("pbn", token, {"v": 7}) is True
    assert await handle.result(timeout=WAIT) == {"v": 7}


# -- deadlines and step timeouts --------------------------------------------------------------


async def test_a_deadline_cuts_a_long_step_and_compensates(engine: Engine) -> None:
    undone: list[str] = []
    finished: list[str] = []

    async def undo_reserve(data: Any) -> None:
        undone.append("Reserve")

    @saga_step("Reserve", compensate=undo_reserve)
    async def reserve(ctx: SagaContext, inp: Any) -> str:
        return "r1"

    @saga_step("Long")
    async def long(ctx: SagaContext, inp: Any) -> str:
        await asyncio.sleep(3600)  # cut by the deadline, or the run's time (WAIT) is up
        finished.append("Long")
        return "done"

    @saga_workflow("Hurried", options=SagaWorkflowOptions(deadline=timedelta(seconds=0.3)))
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await reserve(saga, None)
        return await long(saga, None)

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="hurried", timeout=WAIT)
    assert info.value.cause_type == "SagaTimeoutError"
    assert info.value.step == "Long"
    assert undone == ["Reserve"]
    assert finished == []
    snap = await engine.get("hurried")
    assert snap.status == SagaStatus.COMPENSATED
    long_entry = next(s for s in snap.steps if s.name == "Long" and s.kind == "step")
    assert long_entry.status == "failed"
    assert long_entry.error is not None and long_entry.error["type"] == "SagaTimeoutError"


async def test_a_deadline_wakes_a_wait_without_a_timer(engine: Engine) -> None:
    undone: list[str] = []

    async def undo_reserve(data: Any) -> None:
        undone.append("Reserve")

    @saga_step("Reserve", compensate=undo_reserve)
    async def reserve(ctx: SagaContext, inp: Any) -> str:
        return "r1"

    @saga_workflow("Bounded", options=SagaWorkflowOptions(deadline=timedelta(seconds=0.4)))
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await reserve(saga, None)
        return await saga.wait_for_signal("never")

    begun = time.monotonic()
    handle = await engine.start(wf, None, saga_id="bounded")
    snap = await suspended(engine, "bounded")
    # no timeout was asked for, but the deadline sets a timer
    assert snap.wake_at is not None
    with pytest.raises(SagaCompensatedError) as info:
        await handle.result(timeout=WAIT)
    elapsed = time.monotonic() - begun
    assert info.value.cause_type == "SagaTimeoutError"
    assert elapsed >= 0.4  # not before the deadline; that it woke at all: within WAIT
    assert undone == ["Reserve"]


@pytest.mark.parametrize("wait", ["timeout", "sleep", "promise"])
async def test_a_deadline_before_a_wait_timeout_wins(engine: Engine, wait: str) -> None:
    @saga_workflow("Bounded2", options=SagaWorkflowOptions(deadline=timedelta(seconds=0.3)))
    async def wf(saga: SagaContext, inp: Any) -> Any:
        # an hour: only the deadline can end the wait before the run's time (WAIT) is up
        if wait == "timeout":
            return await saga.wait_for_signal("never", timeout=3600)
        if wait == "sleep":
            return await saga.sleep(3600)
        return await saga.promise("never").value()

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id=f"bounded-{wait}", timeout=WAIT)
    assert info.value.cause_type == "SagaTimeoutError"


async def test_a_deadline_caught_by_the_saga(engine: Engine) -> None:
    @saga_workflow("CatchDeadline", options=SagaWorkflowOptions(deadline=timedelta(seconds=0.3)))
    async def wf(saga: SagaContext, inp: Any) -> Any:
        try:
            await saga.wait_for_signal("never")
        except SagaTimeoutError:
            return "gave up"
        return "got it"

    assert await engine.run(wf, None, saga_id="catchdl", timeout=WAIT) == "gave up"


async def test_a_saga_within_its_deadline_completes(engine: Engine) -> None:
    @saga_workflow("InDeadline", options=SagaWorkflowOptions(deadline=timedelta(seconds=5)))
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await saga.sleep(0.1)
        return await saga.wait_for_signal("go")

    handle = await engine.start(wf, None, saga_id="indl")
    await eventually(
        lambda: _has_entry(engine, "indl", "signal"), "the saga to wait for its signal"
    )
    await suspended(engine, "indl")
    await engine.signal("indl", "go", "ok")
    assert await handle.result(timeout=WAIT) == "ok"


async def test_a_deadline_is_measured_from_the_creation_of_the_saga(
    shared_store_url: str,
) -> None:
    ran: list[str] = []

    @saga_step("Work")
    async def work(ctx: SagaContext, inp: Any) -> str:
        ran.append("work")
        return "w"

    @saga_workflow("LateStart", options=SagaWorkflowOptions(deadline=timedelta(seconds=0.3)))
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return await work(saga, None)

    async with make_engine(shared_store_url, worker=False) as client:
        client.register(wf)
        await client.start(wf, None, saga_id="latestart", run_here=False)
        await asyncio.sleep(0.4)  # created, not run: the deadline passes meanwhile
        async with engine_with(shared_store_url, wf) as worker:
            with pytest.raises(SagaCompensatedError) as info:
                await worker.handle("latestart").result(timeout=WAIT)
    assert info.value.cause_type == "SagaTimeoutError"
    assert ran == []


async def _has_entry(engine: Engine, saga_id: str, kind: str) -> bool:
    return any(s.kind == kind for s in (await engine.get(saga_id)).steps)


async def test_a_step_timeout_that_retries_then_compensates(engine: Engine) -> None:
    attempts: list[int] = []
    undone: list[str] = []

    async def undo_reserve(data: Any) -> None:
        undone.append("Reserve")

    @saga_step("Reserve", compensate=undo_reserve)
    async def reserve(ctx: SagaContext, inp: Any) -> str:
        return "r1"

    @saga_step("Slow", retry=fast_retry(3), timeout=timedelta(milliseconds=100))
    async def slow(ctx: SagaContext, inp: Any) -> str:
        attempts.append(ctx.attempt)
        await asyncio.sleep(3600)  # only the step timeout ends an attempt
        return "never"

    @saga_workflow("TimesOut")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        await reserve(saga, None)
        return await slow(saga, None)

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id="timesout", timeout=WAIT)
    assert attempts == [1, 2, 3]
    assert info.value.cause_type == "StepTimeoutError"
    assert info.value.step == "Slow"
    assert undone == ["Reserve"]
    entry = next(s for s in (await engine.get("timesout")).steps if s.name == "Slow")
    assert (entry.status, entry.attempts) == ("failed", 3)


@pytest.mark.parametrize("misuse", ["sleep", "wait_for_signal", "promise", "set_state"])
async def test_waits_and_state_are_refused_inside_a_step(engine: Engine, misuse: str) -> None:
    @saga_step("Misuse")
    async def misuse_step(ctx: SagaContext, inp: Any) -> Any:
        if misuse == "sleep":
            await ctx.sleep(0.01)
        elif misuse == "wait_for_signal":
            await ctx.wait_for_signal("go")
        elif misuse == "promise":
            await ctx.promise("p").value()
        else:
            ctx.set_state("k", 1)
        return "done"

    @saga_workflow("MisuseWf")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return await misuse_step(saga, None)

    with pytest.raises(SagaCompensatedError) as info:
        await engine.run(wf, None, saga_id=f"misuse-{misuse}", timeout=WAIT)
    assert info.value.cause_type == "SagaError"
    assert misuse in info.value.cause_message


# -- published state --------------------------------------------------------------------------


async def test_state_is_queried_from_another_engine(shared_store_url: str) -> None:
    @saga_workflow("Progress")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        saga.set_state("progress", {"stage": 1})
        saga.set_state("note", "started")
        more = await saga.wait_for_signal("go")
        saga.set_state("progress", {"stage": 2, "more": more})
        return "done"

    async with (
        engine_with(shared_store_url, wf) as worker,
        make_engine(shared_store_url) as reader,  # registers nothing: it never runs a saga
    ):
        handle = await worker.start(wf, None, saga_id="prog")
        await suspended(worker, "prog")
        assert await reader.query("prog", "progress") == {"stage": 1}
        assert await reader.query("prog", "note") == "started"
        assert await reader.query("prog", "missing") is None
        assert await reader.query("prog", "missing", default=0) == 0
        with pytest.raises(SagaNotFoundError):
            await reader.query("no-such-saga", "progress")
        # the reader also signals; the worker, which runs the saga, takes it up
        await reader.signal("prog", "go", "x")
        assert await handle.result(timeout=WAIT) == "done"
        assert await reader.query("prog", "progress") == {"stage": 2, "more": "x"}
        # published state outlives the saga
        assert await worker.query("prog", "note") == "started"


# -- signal errors ----------------------------------------------------------------------------


async def test_signal_to_an_unknown_saga(engine: Engine) -> None:
    with pytest.raises(SagaNotFoundError):
        await engine.signal("no-such-saga", "go", 1)


async def test_signal_to_finished_sagas(engine: Engine) -> None:
    @saga_workflow("Quick")
    async def quick(saga: SagaContext, inp: Any) -> Any:
        if inp == "fail":
            raise SagaError("boom")
        return "ok"

    assert await engine.run(quick, "ok", saga_id="q-ok", timeout=WAIT) == "ok"
    with pytest.raises(SagaCompensatedError):
        await engine.run(quick, "fail", saga_id="q-fail", timeout=WAIT)
    for saga_id in ("q-ok", "q-fail"):
        with pytest.raises(SagaFinishedError):
            await engine.signal(saga_id, "go", 1)


@pytest.mark.parametrize(
    "payload", [object(), float("nan"), {"k": b"bytes"}], ids=["object", "nan", "bytes"]
)
async def test_a_bad_payload_is_refused_and_writes_nothing(engine: Engine, payload: Any) -> None:
    @saga_workflow("Careful")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return await saga.wait_for_signal("go")

    handle = await engine.start(wf, None, saga_id="careful")
    await suspended(engine, "careful")
    with pytest.raises(SagaValidationError):
        await engine.signal("careful", "go", payload)
    with pytest.raises(SagaValidationError):
        await engine.signal("careful", "", "empty name")
    await stays_suspended(engine, "careful")
    assert engine._store is not None
    assert await engine._store.load_events("careful") == []
    await engine.signal("careful", "go", "good")
    assert await handle.result(timeout=WAIT) == "good"
