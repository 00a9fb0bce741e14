"""The logging observer: one record per state change of a saga under the ``sagakit.saga``
logger, with the saga id, workflow, step, seq and status in ``extra``, on every store kind."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    Engine,
    SagaCompensatedError,
    SagaContext,
    SagaStatus,
    TerminalError,
    saga_step,
    saga_workflow,
)
from sagakit.observability import SAGA_LOGGER, LoggingObserver
from tests.conftest import engine_with, fast_retry, make_store_url
from tests.waiting import WAIT, eventually, suspended, within

KEYS = ("saga_id", "workflow", "change", "step", "seq", "status")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_store_url(request.param, tmp_path, request)


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="sagakit")
    return caplog


def changes(caplog: pytest.LogCaptureFixture, saga_id: str) -> list[tuple[Any, ...]]:
    """(level, change, step, seq, status) of each saga record of ``saga_id``, in order."""
    found = []
    for r in caplog.records:
        if r.name != SAGA_LOGGER or getattr(r, "saga_id", None) != saga_id:
            continue
        # every record carries every key, whatever it is about
        assert all(hasattr(r, key) for key in KEYS), r.__dict__
        found.append((r.levelname, r.change, r.step, r.seq, r.status))  # type: ignore[attr-defined]
    return found


class Calls:
    """Steps whose failures the test switches on and off."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.terminal: set[str] = set()
        self.undo_failing: set[str] = set()

    def step(self, name: str, *, park: bool = False, undo: bool = True) -> Any:
        async def compensate(data: Any) -> None:
            if name in self.undo_failing:
                raise TerminalError(f"the undo of {name} fails")

        @saga_step(
            name,
            compensate=compensate if undo else None,
            retry=fast_retry(2),
            compensation_retry=fast_retry(1),
            on_exhausted="park" if park else "compensate",
        )
        async def run(ctx: SagaContext, inp: int) -> int:
            if name in self.terminal:
                raise TerminalError(f"{name} refused")
            if name in self.failing:
                raise ConnectionError(f"{name} is down")
            return inp + 1

        return run


def chain(name: str, steps: list[Any]) -> Any:
    @saga_workflow(name)
    async def workflow(saga: SagaContext, inp: int) -> int:
        for step in steps:
            inp = await step(saga, inp)
        return inp

    return workflow


async def status_is(engine: Engine, saga_id: str, status: SagaStatus) -> None:
    async def check() -> bool:
        return (await engine.get(saga_id)).status == status and saga_id not in engine._tasks

    await eventually(check, f"saga {saga_id} to be {status}")


async def test_a_saga_that_completes_logs_each_step_once(
    url: str, records: pytest.LogCaptureFixture
) -> None:
    calls = Calls()
    workflow = chain("Happy", [calls.step("A"), calls.step("B"), calls.step("C")])
    async with engine_with(url, workflow) as engine:
        assert await within(engine.run(workflow, 1, saga_id="h1")) == 4
    assert changes(records, "h1") == [
        ("INFO", "saga_started", None, None, "RUNNING"),
        ("INFO", "step_completed", "A", 0, "completed"),
        ("INFO", "step_completed", "B", 1, "completed"),
        ("INFO", "step_completed", "C", 2, "completed"),
        ("INFO", "saga_completed", None, None, "COMPLETED"),
    ]
    (done,) = [r for r in records.records if getattr(r, "change", None) == "saga_completed"]
    assert done.workflow == "Happy"  # type: ignore[attr-defined]
    assert done.getMessage() == "saga h1 (Happy) completed"
    # the engine's own logger no longer says the same thing again
    assert not [r for r in records.records if r.name == "sagakit.engine"]


async def test_a_compensated_saga_logs_the_failure_and_each_compensation(
    url: str, records: pytest.LogCaptureFixture
) -> None:
    calls = Calls()
    calls.terminal.add("C")
    workflow = chain("Sad", [calls.step("A"), calls.step("B"), calls.step("C", undo=False)])
    async with engine_with(url, workflow) as engine:
        with pytest.raises(SagaCompensatedError):
            await within(engine.run(workflow, 1, saga_id="c1"))
    assert changes(records, "c1") == [
        ("INFO", "saga_started", None, None, "RUNNING"),
        ("INFO", "step_completed", "A", 0, "completed"),
        ("INFO", "step_completed", "B", 1, "completed"),
        ("WARNING", "step_failed", "C", 2, "failed"),
        ("INFO", "saga_compensating", None, None, "COMPENSATING"),
        ("INFO", "compensation_done", "B", 3, "completed"),
        ("INFO", "compensation_done", "A", 4, "completed"),
        ("INFO", "saga_compensated", None, None, "COMPENSATED"),
    ]
    messages = {getattr(r, "change", None): r.getMessage() for r in records.records}
    assert "C refused" in messages["step_failed"]
    assert "C refused" in messages["saga_compensated"]


async def test_a_failing_compensation_is_an_error(
    url: str, records: pytest.LogCaptureFixture
) -> None:
    calls = Calls()
    calls.terminal.add("B")
    calls.undo_failing.add("A")
    workflow = chain("Stuck", [calls.step("A"), calls.step("B", undo=False)])
    async with engine_with(url, workflow) as engine:
        await engine.start(workflow, 1, saga_id="f1")
        await status_is(engine, "f1", SagaStatus.FAILED)
    assert changes(records, "f1")[-2:] == [
        ("ERROR", "compensation_failed", "A", 2, "failed"),
        ("ERROR", "saga_failed", None, None, "FAILED"),
    ]


async def test_a_parked_saga_logs_a_warning_and_its_retry(
    url: str, records: pytest.LogCaptureFixture
) -> None:
    calls = Calls()
    calls.failing.add("B")
    workflow = chain("Parker", [calls.step("A"), calls.step("B", park=True)])
    async with engine_with(url, workflow) as engine:
        handle = await engine.start(workflow, 1, saga_id="p1")
        await status_is(engine, "p1", SagaStatus.PARKED)
        assert changes(records, "p1") == [
            ("INFO", "saga_started", None, None, "RUNNING"),
            ("INFO", "step_completed", "A", 0, "completed"),
            ("WARNING", "step_failed", "B", 1, "failed"),
            ("WARNING", "saga_parked", "B", 1, "PARKED"),
        ]
        parked = [r for r in records.records if getattr(r, "change", None) == "saga_parked"]
        assert "B is down" in parked[0].getMessage()
        records.clear()
        calls.failing.clear()
        await engine.admin.retry_step("p1", reason="B is back")
        assert await handle.result(timeout=WAIT) == 3
    assert changes(records, "p1") == [
        ("INFO", "saga_resumed", None, None, "RUNNING"),
        ("INFO", "step_completed", "B", 1, "completed"),
        ("INFO", "saga_completed", None, None, "COMPLETED"),
    ]


async def test_a_wait_logs_its_start_the_suspension_and_its_answer(
    url: str, records: pytest.LogCaptureFixture
) -> None:
    calls = Calls()
    a, b = calls.step("A"), calls.step("B")

    @saga_workflow("Approval")
    async def approval(saga: SagaContext, inp: int) -> int:
        inp = await a(saga, inp)
        await saga.wait_for_signal("approve")
        return int(await b(saga, inp))

    async with engine_with(url, approval) as engine:
        handle = await engine.start(approval, 1, saga_id="w1")
        await suspended(engine, "w1")
        await engine.signal("w1", "approve", {"by": "ada"})
        assert await handle.result(timeout=WAIT) == 3
    assert changes(records, "w1") == [
        ("INFO", "saga_started", None, None, "RUNNING"),
        ("INFO", "step_completed", "A", 0, "completed"),
        ("INFO", "wait_started", "approve", 1, "running"),
        ("INFO", "saga_suspended", None, None, "SUSPENDED"),
        ("INFO", "saga_resumed", None, None, "RUNNING"),
        ("INFO", "wait_answered", "approve", 1, "completed"),
        ("INFO", "step_completed", "B", 2, "completed"),
        ("INFO", "saga_completed", None, None, "COMPLETED"),
    ]


async def test_a_retried_step_is_one_record_with_its_attempts(
    url: str, records: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    @saga_step("Flaky", retry=fast_retry(3))
    async def flaky(ctx: SagaContext, inp: int) -> int:
        attempts.append(ctx.attempt)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return inp

    @saga_workflow("Retrying")
    async def retrying(saga: SagaContext, inp: int) -> int:
        return int(await flaky(saga, inp))

    async with engine_with(url, retrying) as engine:
        assert await within(engine.run(retrying, 7, saga_id="r1")) == 7
    steps = [c for c in changes(records, "r1") if c[1].startswith("step")]
    assert steps == [("INFO", "step_completed", "Flaky", 0, "completed")]
    (record,) = [r for r in records.records if getattr(r, "change", None) == "step_completed"]
    assert record.getMessage() == "step Flaky (seq 0) of saga r1 completed after 3 attempts"


async def test_nothing_is_built_when_info_is_disabled(
    url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    emit = LoggingObserver._emit

    def counting(self: LoggingObserver, level: int, change: str, *args: Any) -> None:
        built.append(change)
        emit(self, level, change, *args)

    monkeypatch.setattr(LoggingObserver, "_emit", counting)
    caplog.set_level(logging.WARNING, logger="sagakit")
    calls = Calls()
    calls.terminal.add("B")
    workflow = chain("Quiet", [calls.step("A"), calls.step("B", undo=False)])
    async with engine_with(url, workflow) as engine:
        assert await within(engine.run(chain("Quiet2", [calls.step("A")]), 1)) == 2
        with pytest.raises(SagaCompensatedError):
            await within(engine.run(workflow, 1, saga_id="q1"))
    # only the warning is built; the INFO records cost an isEnabledFor each
    assert built == ["step_failed"]
    assert changes(caplog, "q1") == [("WARNING", "step_failed", "B", 1, "failed")]


async def test_a_logger_can_be_given_and_observers_can_be_left_out(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    mine = logging.getLogger("myapp.sagas")
    workflow = chain("Mine", [Calls().step("A")])
    async with engine_with(url, workflow, observers=[LoggingObserver(mine)]) as engine:
        await within(engine.run(workflow, 1, saga_id="m1"))
    async with engine_with(url, workflow, observers=[]) as engine:
        await within(engine.run(workflow, 1, saga_id="m2"))
    names = {(r.name, getattr(r, "saga_id", None)) for r in caplog.records}
    assert ("myapp.sagas", "m1") in names
    assert not any(saga_id == "m2" for _, saga_id in names)
