"""Durable retry backoff (issue 14, defect 6), on every store kind: a step or compensation whose
next attempt is further away than ``DURABLE_BACKOFF_AFTER`` suspends the saga with the attempt's
time in the journal (lease released, nothing in memory), and the next attempt runs when that
time comes, in whichever engine takes the saga then, never before it.

The threshold is lowered for these tests (a module attribute) so that backoffs of a fraction of
a second are durable and the tests stay quick. Times are asserted from below only ("not before
the recorded retry time"): the machine may be slow, never early.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    CompensationFailedError,
    Engine,
    RetryPolicy,
    SagaCancelledError,
    SagaCompensatedError,
    SagaContext,
    SagaSnapshot,
    SagaStatus,
    SagaWorkflowOptions,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)
from sagakit.dashboard.pages import render_saga
from sagakit.engine import backoff
from sagakit.stores.base import EntryKind, EntryStatus, JournalEntry, NewSaga
from sagakit.timeline import describe_retry, render_status_line, render_timeline
from tests.conftest import engine_with, make_engine
from tests.waiting import STILL, WAIT, eventually, within

#: the durable threshold in these tests, and a backoff above it
THRESHOLD = 0.2
DELAY = 0.6


def backoff_policy(max_attempts: int = 3, delay: float = DELAY) -> RetryPolicy:
    """A policy whose every backoff is ``delay`` seconds (above the lowered threshold)."""
    return RetryPolicy(
        max_attempts=max_attempts,
        initial_interval=timedelta(seconds=delay),
        backoff_factor=1.0,
    )


@pytest.fixture(autouse=True)
def _low_threshold(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(backoff, "DURABLE_BACKOFF_AFTER", THRESHOLD)
    yield


class Flaky(Exception):
    """A retryable failure."""


def retrying_entry(snap: SagaSnapshot, name: str) -> Any:
    found = [s for s in snap.steps if s.name == name and s.status == EntryStatus.RETRYING]
    assert len(found) == 1, snap.steps
    return found[0]


async def retrying(engine: Engine, saga_id: str, attempts: int) -> SagaSnapshot:
    """Wait until the saga is SUSPENDED with an entry that failed ``attempts`` times and waits
    to retry; return that snapshot."""
    found: list[SagaSnapshot] = []

    async def check() -> bool:
        snap = await engine.get(saga_id)
        waiting = [s for s in snap.steps if s.status == EntryStatus.RETRYING]
        if (
            snap.status == SagaStatus.SUSPENDED
            and saga_id not in engine._tasks
            and any(s.attempts == attempts for s in waiting)
        ):
            found.append(snap)
            return True
        return False

    await eventually(check, f"saga {saga_id!r} to wait for attempt {attempts + 1}")
    return found[-1]


# -- a step ------------------------------------------------------------------------------------


async def test_a_long_backoff_suspends_the_saga_and_wakes_it_on_time(engine: Engine) -> None:
    attempts: list[float] = []

    @saga_step("Charge", retry=backoff_policy())
    async def charge(ctx: SagaContext, inp: Any) -> str:
        attempts.append(time.time())
        assert ctx.attempt == len(attempts)  # attempts count across the suspensions
        if ctx.attempt < 3:
            raise Flaky(f"card service down ({ctx.attempt})")
        return "paid"

    @saga_workflow("Pay")
    async def pay(saga: SagaContext, inp: Any) -> str:
        return str(await charge(saga, None))

    handle = await engine.start(pay, None, saga_id="pay-1")
    snap = await retrying(engine, "pay-1", 1)
    assert snap.owner is None  # the lease is released: no worker holds the saga
    entry = retrying_entry(snap, "Charge")
    assert (entry.kind, entry.attempts) == ("step", 1)
    assert entry.error["type"] == "Flaky"
    assert entry.error["message"] == "card service down (1)"
    assert entry.max_attempts == 3
    assert entry.retry_at is not None
    first_retry_at = entry.retry_at.timestamp()
    assert first_retry_at >= attempts[0] + DELAY
    assert snap.wake_at == entry.retry_at
    assert snap.wait_token is None  # nothing to notify: only the time wakes it

    second = await retrying(engine, "pay-1", 2)
    second_retry_at = retrying_entry(second, "Charge").retry_at.timestamp()
    assert await handle.result(timeout=WAIT) == "paid"
    assert len(attempts) == 3
    assert attempts[1] >= first_retry_at
    assert attempts[2] >= second_retry_at
    done = await engine.get("pay-1")
    assert [(s.kind, s.name, s.status, s.attempts) for s in done.steps] == [
        ("step", "Charge", "completed", 3)
    ]
    assert done.steps[0].started_at is not None
    # the entry's start is the first attempt's, kept across the suspensions
    assert abs(done.steps[0].started_at.timestamp() - attempts[0]) < 0.5


async def test_a_short_backoff_stays_in_memory(engine: Engine) -> None:
    seen: list[tuple[str, str | None, list[str]]] = []

    @saga_step("Quick", retry=backoff_policy(delay=THRESHOLD / 4))
    async def quick(ctx: SagaContext, inp: Any) -> str:
        snap = await engine.get(ctx.saga_id)
        seen.append((str(snap.status), snap.owner, [s.status for s in snap.steps]))
        if ctx.attempt == 1:
            raise Flaky("once")
        return "ok"

    @saga_workflow("QuickRetry")
    async def wf(saga: SagaContext, inp: Any) -> str:
        return str(await quick(saga, None))

    assert await engine.run(wf, None, saga_id="quick", timeout=WAIT) == "ok"
    # the second attempt ran in the same run: RUNNING, owned, nothing journaled in between
    assert seen == [("RUNNING", engine.worker_id, []), ("RUNNING", engine.worker_id, [])]


async def test_the_backoff_survives_closing_the_engine(shared_store_url: str) -> None:
    attempts: list[float] = []

    @saga_step("Ship", retry=backoff_policy(delay=1.0))
    async def ship(ctx: SagaContext, inp: Any) -> str:
        attempts.append(time.time())
        if ctx.attempt == 1:
            raise Flaky("carrier down")
        return f"shipped on attempt {ctx.attempt}"

    @saga_workflow("Shipping")
    async def wf(saga: SagaContext, inp: Any) -> str:
        return str(await ship(saga, None))

    async with engine_with(shared_store_url, wf) as first:
        await first.start(wf, None, saga_id="ship-1")
        snap = await retrying(first, "ship-1", 1)
    retry_at = retrying_entry(snap, "Ship").retry_at.timestamp()
    assert len(attempts) == 1
    # a new engine on the same database runs the next attempt at its time, not before
    async with engine_with(shared_store_url, wf) as second:
        assert await second.handle("ship-1").result(timeout=WAIT) == "shipped on attempt 2"
    assert len(attempts) == 2
    assert attempts[1] >= retry_at


async def test_max_attempts_holds_across_suspensions_and_restarts(shared_store_url: str) -> None:
    attempts: list[float] = []

    @saga_step_strict("Reserve", compensate=lambda data: None, retry=backoff_policy())
    async def reserve(ctx: SagaContext, inp: Any) -> str:
        attempts.append(time.time())
        raise Flaky(f"no stock ({ctx.attempt})")

    @saga_workflow("Reserving")
    async def wf(saga: SagaContext, inp: Any) -> str:
        return str(await reserve(saga, None))

    async with engine_with(shared_store_url, wf) as first:
        await first.start(wf, None, saga_id="res-1")
        await retrying(first, "res-1", 2)
    async with engine_with(shared_store_url, wf) as second:
        with pytest.raises(SagaCompensatedError) as failed:
            await second.handle("res-1").result(timeout=WAIT)
        snap = await second.get("res-1")
    assert len(attempts) == 3
    assert "gave up after 3 attempts" in failed.value.cause_message
    assert [(s.name, s.status, s.attempts) for s in snap.steps] == [("Reserve", "failed", 3)]


async def test_fewer_attempts_after_a_deploy_end_the_retries(shared_store_url: str) -> None:
    calls: list[int] = []

    def version(max_attempts: int) -> Any:
        @saga_step("Sync", retry=backoff_policy(max_attempts=max_attempts))
        async def sync(ctx: SagaContext, inp: Any) -> str:
            calls.append(ctx.attempt)
            raise Flaky("remote down")

        @saga_workflow("Syncing")
        async def wf(saga: SagaContext, inp: Any) -> str:
            return str(await sync(saga, None))

        return wf

    async with engine_with(shared_store_url, version(5)) as first:
        await first.start("Syncing", None, saga_id="sync-1")
        await retrying(first, "sync-1", 2)
    # the new code allows two attempts: both are spent, the step fails with the last error
    async with engine_with(shared_store_url, version(2)) as second:
        with pytest.raises(SagaCompensatedError) as failed:
            await second.handle("sync-1").result(timeout=WAIT)
    assert calls == [1, 2]
    assert failed.value.cause_type == "Flaky"
    assert failed.value.cause_message == "remote down (gave up after 2 attempts)"


async def test_a_taken_over_saga_marks_the_attempt_after_the_retrying_ones(
    store_url: str,
) -> None:
    seen: list[tuple[int, list[tuple[str, int]]]] = []

    async with make_engine(store_url) as engine:

        @saga_step("Post", retry=backoff_policy(max_attempts=4))
        async def post(ctx: SagaContext, inp: Any) -> str:
            journal = await engine._store_or_raise().load_journal(ctx.saga_id)
            seen.append((ctx.attempt, [(e.status, e.attempts) for e in journal]))
            return "posted"

        @saga_workflow("Posting")
        async def wf(saga: SagaContext, inp: Any) -> str:
            return str(await post(saga, None))

        # a worker that died after journaling two failed attempts (retry due already) while
        # it held the saga: the next owner takes it over
        store = engine._store_or_raise()
        created = await store.create_saga(NewSaga("post-1", "Posting", "null", "dead", 0.05))
        now = time.time()
        error = '{"type": "Flaky", "message": "x", "step": "Post", "seq": 0, "retry_at": 0}'
        entry = JournalEntry(
            "post-1",
            0,
            EntryKind.STEP,
            "Post",
            EntryStatus.RETRYING,
            2,
            None,
            None,
            error,
            now,
            now,
        )
        await store.append("post-1", created.record.fence, entry)
        engine.register(wf)
        assert await engine.handle("post-1").result(timeout=WAIT) == "posted"
    # attempt 3 was journaled as running before it began: a crash in it would count it
    assert seen == [(3, [(EntryStatus.RUNNING, 3)])]


async def test_the_saga_deadline_cuts_a_backoff_short(engine: Engine) -> None:
    calls: list[int] = []

    @saga_step("Fetch", retry=backoff_policy(delay=3600))
    async def fetch(ctx: SagaContext, inp: Any) -> str:
        calls.append(ctx.attempt)
        raise Flaky("source down")

    deadline = timedelta(seconds=0.8)

    @saga_workflow("Fetching", options=SagaWorkflowOptions(deadline=deadline))
    async def wf(saga: SagaContext, inp: Any) -> str:
        return str(await fetch(saga, None))

    handle = await engine.start(wf, None, saga_id="fetch-1")
    snap = await retrying(engine, "fetch-1", 1)
    # it sleeps until the deadline, not the hour of its backoff
    assert snap.wake_at is not None
    assert snap.wake_at <= snap.created_at + deadline + timedelta(milliseconds=1)
    with pytest.raises(SagaCompensatedError) as failed:
        await handle.result(timeout=WAIT)
    assert failed.value.cause_type == "SagaTimeoutError"
    assert calls == [1]
    done = await engine.get("fetch-1")
    assert done.updated_at >= done.created_at + deadline


async def test_an_event_during_the_backoff_does_not_hurry_the_attempt(engine: Engine) -> None:
    attempts: list[float] = []

    @saga_step("Load", retry=backoff_policy(delay=1.0))
    async def load(ctx: SagaContext, inp: Any) -> str:
        attempts.append(time.time())
        if ctx.attempt == 1:
            raise Flaky("busy")
        return "loaded"

    @saga_workflow("Loading")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        first = await load(saga, None)
        return [first, await saga.wait_for_signal("more")]

    handle = await engine.start(wf, None, saga_id="load-1")
    snap = await retrying(engine, "load-1", 1)
    retry_at = retrying_entry(snap, "Load").retry_at.timestamp()
    # a signal wakes the saga early: it looks, finds the attempt not due, and sleeps again
    await engine.signal("load-1", "more", 7)
    assert await handle.result(timeout=WAIT) == ["loaded", 7]
    assert len(attempts) == 2
    assert attempts[1] >= retry_at


# -- operators ---------------------------------------------------------------------------------


async def test_cancel_during_the_backoff_stops_the_saga(engine: Engine) -> None:
    calls: list[int] = []
    undone: list[str] = []

    async def undo(data: Any, failed: bool = False) -> None:
        undone.append("Notify")

    @saga_step("Notify", compensate=undo, retry=backoff_policy(delay=0.5))
    async def notify(ctx: SagaContext, inp: Any) -> None:
        calls.append(ctx.attempt)
        raise Flaky("mail server down")

    @saga_workflow("Notifying")
    async def wf(saga: SagaContext, inp: Any) -> None:
        await notify(saga, None)

    handle = await engine.start(wf, None, saga_id="note-1")
    snap = await retrying(engine, "note-1", 1)
    await engine.admin.cancel("note-1", "customer withdrew", by="ops")
    with pytest.raises(SagaCancelledError):
        await handle.result(timeout=WAIT)
    # past the retry time, nothing ran again and nothing was undone
    retry_at = retrying_entry(snap, "Notify").retry_at.timestamp()
    await asyncio.sleep(max(0.0, retry_at - time.time()) + STILL)
    assert calls == [1]
    assert undone == []
    assert (await engine.get("note-1")).status == SagaStatus.CANCELLED


@pytest.mark.parametrize("strict", [False, True], ids=["hybrid", "strict"])
async def test_compensate_during_the_backoff(engine: Engine, strict: bool) -> None:
    calls: list[str] = []
    undone: list[tuple[str, bool]] = []

    def undo(name: str) -> Any:
        async def run(data: Any, failed: bool = False) -> None:
            undone.append((name, failed))

        return run

    @saga_step("Book", compensate=undo("Book"))
    async def book(ctx: SagaContext, inp: Any) -> str:
        calls.append("Book")
        return "booked"

    decorator = saga_step_strict if strict else saga_step
    policy = backoff_policy(delay=3600)  # only an operator moves the saga on

    @decorator("Charge", compensate=undo("Charge"), retry=policy)
    async def charge(ctx: SagaContext, inp: Any) -> str:
        calls.append("Charge")
        raise Flaky("card service down")

    @saga_workflow("Checkout")
    async def wf(saga: SagaContext, inp: Any) -> str:
        await book(saga, None)
        return str(await charge(saga, None))

    handle = await engine.start(wf, None, saga_id="co-1")
    await retrying(engine, "co-1", 1)
    await engine.admin.compensate("co-1", reason="give up", by="ops")
    with pytest.raises(SagaCompensatedError):
        await handle.result(timeout=WAIT)
    assert calls == ["Book", "Charge"]
    if strict:  # it never succeeded: nothing of it to undo
        assert undone == [("Book", False)]
    else:  # it may have done part of its work in the attempt that failed
        assert undone == [("Charge", True), ("Book", False)]


async def test_resume_runs_the_next_attempt_now(engine: Engine) -> None:
    calls: list[int] = []

    @saga_step("Import", retry=backoff_policy(delay=3600))
    async def import_(ctx: SagaContext, inp: Any) -> int:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise Flaky("feed not ready")
        return ctx.attempt

    @saga_workflow("Importing")
    async def wf(saga: SagaContext, inp: Any) -> int:
        return int(await import_(saga, None))

    handle = await engine.start(wf, None, saga_id="imp-1")
    await retrying(engine, "imp-1", 1)
    await asyncio.sleep(STILL)
    assert calls == [1]
    resumed = await engine.admin.resume("imp-1", reason="feed is up", by="ops")
    assert resumed.audit[-1].details["retries_now"] == [0]
    assert await handle.result(timeout=WAIT) == 2
    assert calls == [1, 2]


# -- compensations -----------------------------------------------------------------------------


async def test_a_compensation_with_a_long_backoff_suspends_and_resumes(engine: Engine) -> None:
    undo_calls: list[float] = []

    async def release(data: Any) -> None:
        undo_calls.append(time.time())
        if len(undo_calls) == 1:
            raise Flaky("warehouse API down")

    @saga_step_strict("Hold", compensate=release, compensation_retry=backoff_policy())
    async def hold(ctx: SagaContext, inp: Any) -> str:
        return "held"

    @saga_step_strict("Pay")
    async def pay(ctx: SagaContext, inp: Any) -> str:
        raise TerminalError("card declined")

    @saga_workflow("HoldThenPay")
    async def wf(saga: SagaContext, inp: Any) -> str:
        await hold(saga, None)
        return str(await pay(saga, None))

    handle = await engine.start(wf, None, saga_id="hp-1")
    snap = await retrying(engine, "hp-1", 1)
    entry = retrying_entry(snap, "Hold")
    assert entry.kind == "compensation"
    assert snap.owner is None
    assert snap.error is not None and snap.error["kind"] == "compensating"
    assert snap.error["cause"]["message"] == "card declined"
    retry_at = entry.retry_at.timestamp()
    with pytest.raises(SagaCompensatedError):
        await handle.result(timeout=WAIT)
    assert len(undo_calls) == 2
    assert undo_calls[1] >= retry_at
    done = await engine.get("hp-1")
    assert [(s.kind, s.name, s.status, s.attempts) for s in done.steps] == [
        ("step", "Hold", "completed", 1),
        ("step", "Pay", "failed", 1),
        ("compensation", "Hold", "completed", 2),
    ]


async def test_a_compensation_out_of_retries_fails_the_saga(shared_store_url: str) -> None:
    undo_calls: list[int] = []

    async def release(data: Any) -> None:
        undo_calls.append(1)
        raise Flaky("warehouse API down")

    policy = backoff_policy(max_attempts=2)

    @saga_step_strict("Hold", compensate=release, compensation_retry=policy)
    async def hold(ctx: SagaContext, inp: Any) -> str:
        return "held"

    @saga_step_strict("Pay")
    async def pay(ctx: SagaContext, inp: Any) -> str:
        raise TerminalError("card declined")

    @saga_workflow("HoldThenPay2")
    async def wf(saga: SagaContext, inp: Any) -> str:
        await hold(saga, None)
        return str(await pay(saga, None))

    async with engine_with(shared_store_url, wf) as first:
        await first.start(wf, None, saga_id="hp-2")
        await retrying(first, "hp-2", 1)
    async with engine_with(shared_store_url, wf) as second:
        with pytest.raises(CompensationFailedError) as failed:
            await second.handle("hp-2").result(timeout=WAIT)
    assert undo_calls == [1, 1]
    assert "gave up after 2 attempts" in failed.value.failures[0].message


# -- parallel branches -------------------------------------------------------------------------


async def test_a_backoff_inside_a_gather_branch(engine: Engine) -> None:
    calls: list[str] = []

    @saga_step("Flaky", retry=backoff_policy())
    async def flaky(ctx: SagaContext, inp: Any) -> str:
        calls.append(f"flaky{ctx.attempt}")
        if ctx.attempt == 1:
            raise Flaky("once")
        return "f"

    @saga_step("Steady")
    async def steady(ctx: SagaContext, inp: Any) -> str:
        calls.append(f"steady-{inp}")
        return str(inp)

    async def left(saga: SagaContext) -> list[str]:
        return [await steady(saga, "a"), await flaky(saga, None), await steady(saga, "b")]

    async def right(saga: SagaContext) -> list[str]:
        return [await steady(saga, "c"), await steady(saga, "d")]

    @saga_workflow("Branches")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        both = await saga.gather(left(saga), right(saga))
        return [both, await steady(saga, "after")]

    handle = await engine.start(wf, None, saga_id="br-1")
    snap = await retrying(engine, "br-1", 1)
    assert retrying_entry(snap, "Flaky").kind == "step"
    assert await handle.result(timeout=WAIT) == [[["a", "f", "b"], ["c", "d"]], "after"]
    assert sorted(calls) == sorted(
        ["steady-a", "flaky1", "flaky2", "steady-b", "steady-c", "steady-d", "steady-after"]
    )
    assert calls.index("flaky2") < calls.index("steady-b") < calls.index("steady-after")


async def test_a_sibling_failure_waits_for_a_step_in_its_backoff(engine: Engine) -> None:
    events: list[str] = []

    def undo(name: str) -> Any:
        async def run(data: Any, failed: bool = False) -> None:
            events.append(f"undo {name}{' (failed)' if failed else ''}")

        return run

    @saga_step("Reserve", compensate=undo("Reserve"), retry=backoff_policy())
    async def reserve(ctx: SagaContext, inp: Any) -> str:
        events.append(f"reserve {ctx.attempt}")
        if ctx.attempt == 1:
            raise Flaky("once")
        return "r"

    @saga_step("Charge", compensate=undo("Charge"))
    async def charge(ctx: SagaContext, inp: Any) -> str:
        events.append("charge")
        raise TerminalError("card declined")

    @saga_workflow("BothAtOnce")
    async def wf(saga: SagaContext, inp: Any) -> Any:
        return await asyncio.gather(reserve(saga, None), charge(saga, None))

    handle = await engine.start(wf, None, saga_id="both-1")
    with pytest.raises(SagaCompensatedError):
        await handle.result(timeout=WAIT)
    # like a step still executing, the one in its backoff finishes before anything is undone
    assert sorted(events[:3]) == ["charge", "reserve 1", "reserve 2"]
    assert events[3:] == ["undo Charge (failed)", "undo Reserve"]


# -- what operators see ------------------------------------------------------------------------


def test_describe_retry_gives_the_next_attempt_and_its_local_time() -> None:
    snap_at = datetime(2025, 1, 31, 12, 4, 31, tzinfo=UTC)
    step = _retrying_step(snap_at, attempts=2, max_attempts=5)
    local = snap_at.astimezone()
    text = describe_retry(step, now=snap_at)
    assert text == f"retrying ChargeCard, attempt 3 of 5 at {local:%H:%M:%S %Z}"


def _retrying_step(at: datetime, *, attempts: int, max_attempts: int) -> Any:
    from sagakit import StepSnapshot

    error = {
        "type": "Flaky",
        "message": "down",
        "step": "ChargeCard",
        "seq": 1,
        "retry_at": at.timestamp(),
        "max_attempts": max_attempts,
    }
    return StepSnapshot(1, "ChargeCard", "step", "retrying", attempts, None, error, at, at)


async def test_show_says_which_attempt_comes_when(store_url: str) -> None:
    @saga_step("ChargeCard", retry=backoff_policy(max_attempts=5, delay=3600))
    async def charge(ctx: SagaContext, inp: Any) -> str:
        raise Flaky("card service down")

    @saga_workflow("ShowRetry")
    async def wf(saga: SagaContext, inp: Any) -> str:
        return str(await charge(saga, None))

    async with engine_with(store_url, wf) as engine:
        await engine.start(wf, None, saga_id="show-1")
        snap = await retrying(engine, "show-1", 1)
    step = retrying_entry(snap, "ChargeCard")
    when = step.retry_at.astimezone().strftime("%H:%M:%S")
    expected = f"retrying ChargeCard, attempt 2 of 5 at {when}"
    out = render_timeline(snap, now=step.retry_at)
    assert f"waiting   {expected}" in out
    assert "after Flaky: card service down" in out
    assert "… retrying" in out
    assert expected in render_status_line(snap, now=step.retry_at)
    page = render_saga(snap, db=store_url, read_only=True)
    assert "↻ retrying" in page
    assert expected in page


def test_sagakit_show_prints_the_retry_in_local_time(tmp_path: Path) -> None:
    db = tmp_path / "show.db"

    @saga_step("ChargeCard", retry=backoff_policy(max_attempts=5, delay=3600))
    async def charge(ctx: SagaContext, inp: Any) -> str:
        raise Flaky("card service down")

    @saga_workflow("ShowRetryCli")
    async def wf(saga: SagaContext, inp: Any) -> str:
        return str(await charge(saga, None))

    async def prepare() -> SagaSnapshot:
        async with engine_with(f"sqlite:///{db}", wf) as engine:
            await engine.start(wf, None, saga_id="cli-1")
            snap: SagaSnapshot = await within(retrying(engine, "cli-1", 1))
            return snap

    snap = asyncio.run(prepare())
    retry_at = retrying_entry(snap, "ChargeCard").retry_at
    # a zone 5 h 30 min east of UTC, named XST, that needs no time zone database
    env = {**os.environ, "TZ": "XST-05:30", "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run(
        [sys.executable, "-m", "sagakit.cli", "show", "cli-1", "--db", str(db)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    local = retry_at.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert "SUSPENDED" in result.stdout.splitlines()[0]
    # (with the date before the time when the retry is on another day, local time)
    same_day = f"retrying ChargeCard, attempt 2 of 5 at {local:%H:%M:%S} XST"
    next_day = f"retrying ChargeCard, attempt 2 of 5 at {local:%Y-%m-%d %H:%M:%S} XST"
    assert same_day in result.stdout or next_day in result.stdout, result.stdout
