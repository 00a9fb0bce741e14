"""Property test: signals sent in random order and timing to a saga that performs a random
sequence of ``wait_for_signal`` calls, against a per-name FIFO model.

The saga first blocks in a step (so that some signals arrive before it waits at all), then does
its waits one by one, publishing each result (``set_state``). The test sends the signals: a
random prefix while the saga is held in that step, the rest after releasing it, each one either
at once, after a short pause, or once the saga has suspended. The model: the k-th wait for name
N returns the k-th signal sent with name N; no signal is taken twice; when the signals run out
the saga stays SUSPENDED in the first wait they cannot answer; a signal is refused with
SagaFinishedError only once the saga has ended.

Each example runs in its own ``asyncio.run`` with a fresh engine (hypothesis and async fixtures
do not mix): on the memory store, on a SQLite file, and with fewer examples on PostgreSQL (one
database per test, emptied before each example).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagakit import Engine, SagaContext, SagaStatus, saga_step, saga_workflow
from sagakit.errors import SagaFinishedError
from tests.conftest import empty_pg_database

NAMES = ("a", "b")
SAGA_ID = "waits-prop"
WAIT = 10.0
#: how long a saga must stay put for the test to believe it does not move on its own
STILL = 0.2

payloads = st.one_of(
    st.integers(-1000, 1000),
    st.text(max_size=4),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 9), max_size=2),
)


@dataclass(frozen=True)
class Send:
    name: str
    payload: Any
    #: what the test does before sending it (after the saga was released): "now" sends at
    #: once, "pause" sleeps a few milliseconds, "settle" waits until the saga is suspended
    before: str
    pause_ms: int


@dataclass(frozen=True)
class Program:
    waits: tuple[str, ...]
    sends: tuple[Send, ...]
    #: how many of the sends go out while the saga is held before its first wait
    early: int


@st.composite
def programs(draw: st.DrawFn) -> Program:
    waits = tuple(draw(st.lists(st.sampled_from(NAMES), max_size=6)))
    sends = tuple(
        draw(
            st.lists(
                st.builds(
                    Send,
                    name=st.sampled_from(NAMES),
                    payload=payloads,
                    before=st.sampled_from(["now", "pause", "settle"]),
                    pause_ms=st.integers(0, 30),
                ),
                max_size=8,
            )
        )
    )
    early = draw(st.integers(0, len(sends)))
    return Program(waits, sends, early)


def expected_results(waits: tuple[str, ...], sent: list[tuple[str, Any]]) -> list[Any]:
    """What the waits return, in order, up to the first one no signal answers (per-name FIFO)."""
    queues: dict[str, deque[Any]] = {name: deque() for name in NAMES}
    for name, body in sent:
        queues[name].append(body)
    results = []
    for name in waits:
        if not queues[name]:
            break
        results.append(queues[name].popleft())
    return results


async def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def _suspended(engine: Engine) -> bool:
    snap = await engine.get(SAGA_ID)
    return snap.status == SagaStatus.SUSPENDED and SAGA_ID not in engine._tasks


async def _settled(engine: Engine) -> bool:
    """Suspended in a wait, or ended: either way it does nothing until a signal arrives."""
    if SAGA_ID in engine._tasks:
        return False
    status = (await engine.get(SAGA_ID)).status
    return status == SagaStatus.SUSPENDED or status.is_terminal


async def run_program(url: str, program: Program) -> None:
    held = asyncio.Event()
    release = asyncio.Event()

    @saga_step("Hold")
    async def hold(ctx: SagaContext, inp: Any) -> None:
        held.set()
        await release.wait()

    @saga_workflow("SignalFifo")
    async def wf(saga: SagaContext, waits: list[str]) -> list[Any]:
        await hold(saga, None)
        results = []
        for index, name in enumerate(waits):
            value = await saga.wait_for_signal(name)
            saga.set_state(f"r{index}", value)
            results.append(value)
        return results

    engine = Engine(url, lease=timedelta(seconds=2), poll_interval=timedelta(milliseconds=20))
    engine.register(wf)
    async with engine:
        handle = await engine.start(wf, list(program.waits), saga_id=SAGA_ID)
        async with asyncio.timeout(WAIT):
            await held.wait()

        sent: list[tuple[str, Any]] = []  # (name, body) of every signal delivered, in order
        refused_after_end = False

        async def send(number: int, item: Send) -> None:
            nonlocal refused_after_end
            # a body that names the signal, so that a signal taken twice shows
            body = {"n": number, "p": item.payload}
            try:
                await engine.signal(SAGA_ID, item.name, body)
            except SagaFinishedError:
                # refused only when the saga has ended, which it can only once every wait
                # had its signal
                status = (await engine.get(SAGA_ID)).status
                assert status == SagaStatus.COMPLETED, status
                assert len(expected_results(program.waits, sent)) == len(program.waits)
                refused_after_end = True
                return
            assert not refused_after_end, "a signal was taken after the saga ended"
            sent.append((item.name, body))

        for number, item in enumerate(program.sends[: program.early]):
            await send(number, item)
        release.set()
        for number, item in enumerate(program.sends[program.early :], start=program.early):
            if item.before == "pause":
                await asyncio.sleep(item.pause_ms / 1000)
            elif item.before == "settle":
                await _until(lambda: _settled(engine), "the saga to suspend or end")
            await send(number, item)

        expected = expected_results(program.waits, sent)
        if len(expected) == len(program.waits):
            results = await handle.result(timeout=WAIT)
            assert results == expected
        else:
            # the waits up to the first unanswered one have their signals, and it suspends
            async def progressed() -> bool:
                if not await _suspended(engine):
                    return False
                missing = object()
                for index in range(len(expected)):
                    if await engine.query(SAGA_ID, f"r{index}", missing) is missing:
                        return False
                return True

            await _until(progressed, f"the saga to take {len(expected)} signals and suspend")
            await asyncio.sleep(STILL)
            snap = await engine.get(SAGA_ID)
            assert snap.status == SagaStatus.SUSPENDED
            assert isinstance(snap.wait_token, str)
            results = [await engine.query(SAGA_ID, f"r{i}") for i in range(len(expected))]
            assert results == expected
            unanswered = await engine.query(SAGA_ID, f"r{len(expected)}", "<none>")
            assert unanswered == "<none>", "a wait returned with no signal left for it"
            signal_entries = [s for s in snap.steps if s.kind == "signal"]
            assert [s.status for s in signal_entries] == ["completed"] * len(expected) + ["running"]
        # no signal was taken twice
        numbers = [r["n"] for r in results]
        assert len(numbers) == len(set(numbers))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@settings(max_examples=30, deadline=None)
@given(program=programs())
def test_signals_are_taken_per_name_in_send_order(kind: str, program: Program) -> None:
    if kind == "memory":
        asyncio.run(run_program("memory://", program))
        return
    folder = tempfile.mkdtemp(prefix="sagakit-waits-prop-")
    try:
        asyncio.run(run_program(f"sqlite:///{folder}/t.db", program))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@settings(
    max_examples=20,
    deadline=None,
    # one database per test (pg_url), emptied at the start of each example
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(program=programs())
def test_signals_are_taken_per_name_in_send_order_on_postgres(
    pg_url: str, program: Program
) -> None:
    asyncio.run(empty_pg_database(pg_url))
    asyncio.run(run_program(pg_url, program))
