"""sagakit.testing: the test environment's virtual clock (sleeps, waits, retry backoffs,
schedules, delayed and rate-limited starts skip time), run_until_idle and advance, crash
injection, and the saga_env pytest fixture (run in a pytest subprocess)."""

from __future__ import annotations

import gc
import itertools
import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sagakit import (
    Engine,
    Queue,
    RateLimit,
    RetryPolicy,
    SagaContext,
    SagaError,
    SagaTimeoutError,
    saga_step,
    saga_workflow,
)
from sagakit.clock import SYSTEM_CLOCK, VirtualClock
from sagakit.stores import MemoryStore
from sagakit.testing import ProcessCrash, ReplayError, SagaTestEnvironment, replay, replay_async

START = datetime(2030, 1, 7, 9, 0, 30, tzinfo=UTC)


@saga_workflow("KitWeekSleep")
async def week_sleep(saga: SagaContext, inp: None) -> dict[str, str]:
    before = await saga.now()
    await saga.sleep(timedelta(days=7))
    after = await saga.now()
    return {"before": before.isoformat(), "after": after.isoformat()}


@saga_workflow("KitWaitForApproval")
async def wait_for_approval(saga: SagaContext, hours: float) -> str:
    try:
        answer = await saga.wait_for_signal("approve", timeout=timedelta(hours=hours))
    except SagaTimeoutError:
        return "timed out"
    return f"approved by {answer['by']}"


flaky_calls: list[datetime] = []


BACKOFF = RetryPolicy(
    max_attempts=3, initial_interval=timedelta(minutes=10), max_interval=timedelta(hours=1)
)


@saga_step("KitFlaky", retry=BACKOFF)
async def flaky(ctx: SagaContext, inp: None) -> int:
    flaky_calls.append(await ctx.now())
    if len(flaky_calls) < 3:
        raise ConnectionError("the payment API is down")
    return len(flaky_calls)


@saga_workflow("KitRetrying")
async def retrying(saga: SagaContext, inp: None) -> int:
    return await flaky(saga, None)


@saga_workflow("KitTick")
async def tick(saga: SagaContext, inp: None) -> str:
    return (await saga.now()).isoformat()


charges: list[int] = []


@saga_step("KitCreateOrder")
async def kit_create_order(ctx: SagaContext, amount: int) -> str:
    return f"ord-{ctx.saga_id}"


@saga_step("KitChargeCard")
async def kit_charge_card(ctx: SagaContext, amount: int) -> str:
    charges.append(amount)
    return f"pay-{ctx.step_key}"


@saga_workflow("KitCheckout")
async def kit_checkout(saga: SagaContext, amount: int) -> str:
    await kit_create_order(saga, amount)
    return await kit_charge_card(saga, amount)


@pytest.fixture(autouse=True)
def _reset() -> None:
    flaky_calls.clear()
    charges.clear()


# -- the clock ----------------------------------------------------------------------------------


def test_the_engine_reads_the_system_clock_unless_given_one() -> None:
    assert Engine("memory://").clock is SYSTEM_CLOCK
    clock = VirtualClock(1000.0)
    assert Engine("memory://", clock=clock).clock is clock
    assert MemoryStore("memory://", clock=clock).clock is clock


def test_a_virtual_clock_moves_forward_only() -> None:
    clock = VirtualClock(100.0)
    clock.advance(5)
    assert clock.now() == 105.0
    clock.set(200.0)
    with pytest.raises(SagaError, match="only moves forward"):
        clock.set(150.0)
    with pytest.raises(SagaError, match="only moves forward"):
        clock.advance(-1)


async def test_an_engine_on_a_virtual_clock_gives_its_memory_store_the_clock() -> None:
    clock = VirtualClock(START.timestamp())
    engine = Engine("memory://", clock=clock)
    async with engine:
        handle = await engine.start(tick, None, "t-1")
        assert await handle.result() == START.isoformat()
        assert (await engine.get("t-1")).created_at == START


# -- time skipping ------------------------------------------------------------------------------


async def test_a_week_long_sleep_completes_at_once_a_week_later_in_virtual_time() -> None:
    async with SagaTestEnvironment(workflows=[week_sleep], start=START) as env:
        handle = await env.engine.start(week_sleep, None, "sleeper")
        await env.engine.settle("sleeper")
        assert await handle.status() == "SUSPENDED"
        assert await env.run_until_idle() == ["sleeper"]
        result = await handle.result()
    before = datetime.fromisoformat(result["before"])
    after = datetime.fromisoformat(result["after"])
    assert before == START
    assert timedelta(days=7) <= after - before < timedelta(days=7, seconds=1)


async def test_a_wait_times_out_on_the_virtual_clock_and_a_signal_ends_it_before() -> None:
    async with SagaTestEnvironment(workflows=[wait_for_approval], start=START) as env:
        late = await env.engine.start(wait_for_approval, 2, "late")
        await env.run_until_idle()
        assert await late.result() == "timed out"
        assert env.now() - START >= timedelta(hours=2)

        moment = env.now()
        early = await env.engine.start(wait_for_approval, 2, "early")
        await env.advance(timedelta(hours=1))
        assert await early.status() == "SUSPENDED"
        await env.engine.signal("early", "approve", {"by": "ops"})
        await env.run_until_idle()
        assert await early.result() == "approved by ops"
        assert env.now() - moment == timedelta(hours=1)


async def test_a_durable_retry_backoff_is_skipped() -> None:
    async with SagaTestEnvironment(workflows=[retrying], start=START) as env:
        assert await env.run(retrying, None) == 3
    # the second attempt 10 minutes after the first, the third 20 minutes after the second
    gaps = [b - a for a, b in itertools.pairwise(flaky_calls)]
    assert [round(g.total_seconds() / 60) for g in gaps] == [10, 20]


async def test_a_cron_schedule_fires_at_each_tick_of_an_advanced_hour() -> None:
    async with SagaTestEnvironment(workflows=[tick], start=START) as env:
        env.engine.schedule("every-5-minutes", "*/5 * * * *", tick)
        ran = await env.advance(timedelta(hours=1))
        assert len(ran) == 12
        completed = await env.engine.list("COMPLETED", limit=100)
        fired_at = sorted(
            [datetime.fromisoformat(await env.engine.handle(s.saga_id).result()) for s in completed]
        )
    # each tick's saga ran at its own moment, 09:05 to 10:00
    assert [t.strftime("%H:%M") for t in fired_at] == [
        f"{9 + m // 60:02d}:{m % 60:02d}" for m in range(5, 61, 5)
    ]
    assert env.now() == START + timedelta(hours=1)


async def test_a_delayed_start_and_a_rate_limited_queue_skip_their_wait() -> None:
    queue = Queue("kit-mails", rate=RateLimit(1, per=timedelta(hours=1)))
    async with SagaTestEnvironment(workflows=[tick, queue], start=START) as env:
        delayed = await env.engine.start(tick, None, "delayed", delay=timedelta(days=3))
        for n in range(3):
            await env.engine.enqueue(queue, tick, None, f"mail-{n}")
        await env.run_until_idle()
        started = datetime.fromisoformat(await delayed.result())
        assert started - START >= timedelta(days=3)
        mails = [
            datetime.fromisoformat(await env.engine.handle(f"mail-{n}").result()) for n in range(3)
        ]
    assert mails == sorted(mails)
    assert all(b - a >= timedelta(hours=1) for a, b in itertools.pairwise(mails))


# -- run_until_idle and advance -----------------------------------------------------------------


async def test_run_until_idle_stops_at_a_wait_without_timeout_and_keeps_the_clock() -> None:
    async with SagaTestEnvironment(workflows=[wait_for_approval], start=START) as env:
        # a wait of a year: its timeout is the only thing due, far away
        handle = await env.engine.start(wait_for_approval, 24 * 365, "patient")
        assert await env.run_until_idle(until=timedelta(days=1)) == []
        assert env.now() == START + timedelta(days=1)
        assert await handle.status() == "SUSPENDED"
        await env.engine.signal("patient", "approve", {"by": "boss"})
        assert await env.run_until_idle() == ["patient"]
        assert await handle.result() == "approved by boss"
        assert env.now() == START + timedelta(days=1)  # nothing needed time to pass


async def test_env_run_refuses_a_saga_that_waits_for_an_outside_event() -> None:
    @saga_workflow("KitForever")
    async def forever(saga: SagaContext, inp: None) -> None:
        await saga.wait_for_signal("never")

    async with SagaTestEnvironment(workflows=[forever]) as env:
        with pytest.raises(SagaError, match="waits for a signal"):
            await env.run(forever, None, "forever")


async def test_run_until_idle_has_a_bound_on_clock_jumps() -> None:
    async with SagaTestEnvironment(workflows=[tick], start=START) as env:
        env.engine.schedule("forever", "* * * * *", tick)
        with pytest.raises(SagaError, match="jumped the clock 5 times"):
            await env.run_until_idle(max_jumps=5)


async def test_advance_without_await_only_moves_the_clock_and_warns_nothing() -> None:
    async with SagaTestEnvironment(workflows=[week_sleep], start=START) as env:
        handle = await env.engine.start(week_sleep, None, "sleeper")
        await env.engine.settle("sleeper")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            env.advance(timedelta(days=8))
            gc.collect()
        assert env.now() == START + timedelta(days=8)
        assert await handle.status() == "SUSPENDED"  # nothing ran yet
        assert await env.run_until_idle() == ["sleeper"]
        result = await handle.result()
        # it woke at the moved clock, as a worker that was down for a while would
        assert datetime.fromisoformat(result["after"]) == START + timedelta(days=8)


async def test_time_skipping_needs_the_memory_store() -> None:
    async with SagaTestEnvironment(workflows=[week_sleep], store="sqlite") as env:
        assert env.clock is None
        with pytest.raises(SagaError, match=r"keeps the real\s+time"):
            env.advance(timedelta(days=1))
        await env.engine.start(week_sleep, None, "sleeper")
        with pytest.raises(SagaError, match="store='memory'"):
            await env.run_until_idle()


# -- crash injection ----------------------------------------------------------------------------


async def test_a_crash_after_a_step_runs_its_body_again_on_replay() -> None:
    async with SagaTestEnvironment(workflows=[kit_checkout], start=START) as env:
        env.crash_at(step="KitChargeCard", when="after")
        assert await env.run(kit_checkout, 40, "order-1") == "pay-order-1:1"
        assert charges == [40, 40]  # the charge ran, was not journaled, and ran again
        assert [(c.saga_id, c.step, c.when) for c in env.crashes] == [
            ("order-1", "KitChargeCard", "after")
        ]
        steps = (await env.engine.get("order-1")).steps
        charge = [s for s in steps if s.name == "KitChargeCard"]
        assert [c.status for c in charge] == ["completed"]
        # taken over once the dead run's lease (30 s) ran out on the virtual clock
        assert env.now() - START >= timedelta(seconds=30)


async def test_a_crash_before_a_step_runs_its_body_once() -> None:
    async with SagaTestEnvironment(workflows=[kit_checkout]) as env:
        env.crash_at(step="KitChargeCard", when="before", times=2)
        assert await env.run(kit_checkout, 40, "order-1") == "pay-order-1:1"
        assert charges == [40]
        assert len(env.crashes) == 2


async def test_a_crash_is_no_error_of_the_saga_and_is_not_caught_by_it() -> None:
    caught: list[BaseException] = []

    @saga_workflow("KitCatchAll")
    async def catch_all(saga: SagaContext, amount: int) -> str:
        try:
            return await kit_charge_card(saga, amount)
        except Exception as exc:  # a crash is no Exception: the saga cannot swallow it
            caught.append(exc)
            return "swallowed"

    async with SagaTestEnvironment(workflows=[catch_all]) as env:
        env.crash_at(step="KitChargeCard", saga_id="other")
        env.crash_at(step="KitChargeCard", saga_id="c-1")
        assert await env.run(catch_all, 7, "c-1") == "pay-c-1:0"
    assert caught == []
    assert issubclass(ProcessCrash, BaseException) and not issubclass(ProcessCrash, Exception)


async def test_a_crash_on_the_sqlite_store_is_taken_over_when_the_real_lease_expires() -> None:
    async with SagaTestEnvironment(workflows=[kit_checkout], store="sqlite") as env:
        env.crash_at(step="KitChargeCard")
        assert await env.run(kit_checkout, 5, "order-1") == "pay-order-1:1"
    assert charges == [5, 5]


# -- the replayer stays importable from sagakit.testing -----------------------------------------


def test_the_replayer_is_exported() -> None:
    assert callable(replay) and callable(replay_async)
    assert issubclass(ReplayError, SagaError)


# -- the pytest plugin --------------------------------------------------------------------------

_USER_TEST = """
from datetime import timedelta

import pytest

from sagakit import SagaContext, saga_step, saga_workflow

sent = []


@saga_step("SendReminder")
async def send_reminder(ctx: SagaContext, email: str) -> None:
    sent.append(email)


@saga_workflow("Reminder")
async def reminder(saga: SagaContext, email: str) -> str:
    await saga.sleep(timedelta(days=30))
    await send_reminder(saga, email)
    return "sent"


async def test_default_environment(saga_env):
    assert saga_env.time_skipping
    assert await saga_env.run(reminder, "a@example.com") == "sent"
    assert sent == ["a@example.com"]


@pytest.mark.saga_env(workflows=[reminder], store="sqlite")
async def test_marked_environment(saga_env):
    assert saga_env.store_kind == "sqlite"
    assert "Reminder" in saga_env.engine.workflows
"""


def test_the_saga_env_fixture_in_a_users_suite(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(_USER_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
