"""Helpers shared by the tests of waits, workflow handlers and virtual objects: bounded waits
(a bug fails a test, it never hangs it) and a gate that holds a step in its body."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sagakit import Engine, SagaSnapshot, SagaStatus
from sagakit.engine.observe import Observer, RunInfo

#: the longest any one wait of these tests may take
WAIT = 10.0
#: how long a saga must stay put for a test to believe it does not move on its own
STILL = 0.3


class Gate:
    """Holds a step inside its body until the test opens it; tells the test it got there."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    async def hold(self) -> None:
        self.entered.set()
        await self.opened.wait()

    async def reached(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.entered.wait()


class RunLog(Observer):
    """How each run of each saga ended (its status then, or None), in order: an engine given
    ``observers=[RunLog()]`` tells a test how many times a saga ran and whether it suspended
    in between, an order that no timing can fake."""

    def __init__(self) -> None:
        self.ended: dict[str, list[str | None]] = {}

    def run_ended(self, run: RunInfo, status: str | None, error: BaseException | None) -> None:
        self.ended.setdefault(run.saga_id, []).append(status)

    def runs(self, saga_id: str) -> list[str | None]:
        return self.ended.get(saga_id, [])


async def within(awaitable: Awaitable[Any], seconds: float = WAIT) -> Any:
    """Await with a bound: a bug fails the test, it never hangs it."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def suspended(engine: Engine, saga_id: str) -> SagaSnapshot:
    """Wait until the saga is SUSPENDED in the store and no task of this engine runs it."""
    found: list[SagaSnapshot] = []

    async def check() -> bool:
        snap = await engine.get(saga_id)
        if snap.status == SagaStatus.SUSPENDED and saga_id not in engine._tasks:
            found.append(snap)
            return True
        return False

    await eventually(check, f"saga {saga_id!r} to be SUSPENDED")
    return found[-1]
