"""The engine facing faults that are not the saga's: a step that kills its process on every
attempt, a store that fails mid-run, broken definitions and a broken error mapper."""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    Engine,
    SagaCompensatedError,
    SagaContext,
    SagaError,
    SagaStatus,
    StoreError,
    saga_step,
    saga_workflow,
    set_global_error_mapper,
)
from sagakit.stores import MemoryStore

from .conftest import fast_retry
from .waiting import eventually

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
async def test_a_step_that_kills_its_worker_every_time_is_given_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/loop.db"
    ledger = tmp_path / "ledger"
    ledger.touch()
    codes = []
    for mode in ["start"] + ["recover"] * 5:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.crash_loop_app", mode, url, str(ledger), cwd=ROOT
        )
        codes.append(await asyncio.wait_for(proc.wait(), 60))
        if codes[-1] == 0:
            break
    lines = ledger.read_text().splitlines()
    # max_attempts=2: the first process's attempt (unrecorded, it died with it) and two more
    # recorded ones; the next worker gives up and compensates instead of dying again
    assert [line.split(" pid")[0] for line in lines if line.startswith("boom")] == [
        "boom attempt=1",
        "boom attempt=1",
        "boom attempt=2",
    ]
    assert codes == [-signal.SIGKILL] * 3 + [0]
    assert lines[-1] == "undo failed=True"
    async with Engine(url, worker=False) as engine:
        snapshot = await engine.get("loop")
    assert snapshot.status == SagaStatus.COMPENSATED
    assert snapshot.error is not None
    assert snapshot.error["cause"]["type"] == "WorkerDiedError"
    step = snapshot.steps[0]
    assert (step.name, step.status, step.attempts) == ("Boom", "failed", 2)


class FlakyStore(MemoryStore):
    """A memory store whose appends fail (as a full disk would) while ``failing`` is set."""

    failing = False

    def append(self, *args: Any, **kwargs: Any) -> asyncio.Future[None]:
        if self.failing:
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(StoreError("disk full"))
            return failed
        return super().append(*args, **kwargs)


async def test_a_store_failure_stops_the_run_without_compensating() -> None:
    store = FlakyStore("memory://")
    undone: list[Any] = []
    ran: list[str] = []

    async def undo(data: Any) -> None:
        undone.append(data)

    @saga_step("First", compensate=undo)
    async def first(ctx: SagaContext, inp: int) -> int:
        ran.append("first")
        if ran == ["first"]:
            store.failing = True  # the store breaks while this step's result is being recorded
        return inp

    @saga_step("Second", compensate=undo)
    async def second(ctx: SagaContext, inp: int) -> int:
        ran.append("second")
        return inp

    @saga_workflow("Flaky")
    async def flaky(saga: SagaContext, inp: int) -> int:
        return await second(saga, await first(saga, inp))

    # a slow poll: only the explicit recover() below takes the saga back
    async with Engine(store=store, poll_interval=timedelta(hours=1)) as engine:
        engine.register(flaky)
        handle = await engine.start(flaky, 1, saga_id="f")

        async def stopped() -> bool:
            return not engine._tasks

        await eventually(stopped, "the run to stop")
        # the run stopped: nothing compensated, nothing terminal, the saga given back
        assert undone == []
        snapshot = await engine.get("f")
        assert snapshot.status == SagaStatus.RUNNING
        assert snapshot.owner is None
        # the store recovers: the saga goes on from its journal and completes
        store.failing = False
        assert await engine.recover(wait=True) == 1
        assert await handle.result(timeout=5) == 1
    assert ran == ["first", "first", "second"]
    assert undone == []


def test_a_plain_function_is_refused_as_a_step() -> None:
    def not_async(ctx: SagaContext, inp: Any) -> Any:
        return inp

    with pytest.raises(TypeError, match="async def"):
        saga_step("Sync")(not_async)


@pytest.mark.parametrize("mapper_result", ["raises", "wrong type"])
async def test_a_broken_error_mapper_fails_the_step_with_a_recorded_error(
    mapper_result: str,
) -> None:
    def mapper(exc: BaseException) -> Any:
        if mapper_result == "raises":
            raise RuntimeError("mapper bug")
        return "not a TerminalError"

    set_global_error_mapper(mapper)
    calls = 0

    @saga_step("Fails", retry=fast_retry(3))
    async def fails(ctx: SagaContext, inp: Any) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("boom")

    @saga_workflow("Mapped")
    async def mapped(saga: SagaContext, inp: Any) -> None:
        await fails(saga, inp)

    async with Engine("memory://") as engine:
        with pytest.raises(SagaCompensatedError) as info:
            await engine.run(mapped, None, saga_id="m")
        assert info.value.cause_type == "ErrorMapperError"
        assert "ValueError: boom" in info.value.cause_message
        step = (await engine.get("m")).steps[0]
        assert (step.name, step.status, step.attempts) == ("Fails", "failed", 1)
    assert calls == 1


async def test_a_caller_waiting_when_the_engine_closes_gets_a_clear_error() -> None:
    gate = asyncio.Event()

    @saga_step("Hold")
    async def hold(ctx: SagaContext, inp: Any) -> None:
        await gate.wait()

    @saga_workflow("Held")
    async def held(saga: SagaContext, inp: Any) -> None:
        await hold(saga, inp)

    engine = Engine("memory://")
    async with engine:
        handle = await engine.start(held, None, saga_id="h")
        waiter = asyncio.create_task(handle.result())
        await asyncio.sleep(0.05)
    with pytest.raises(SagaError, match="stopped while waiting"):
        await waiter
