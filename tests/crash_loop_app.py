"""A saga whose step kills its own process on every attempt (as an out-of-memory kill would),
for the crash-loop test: ``python -m tests.crash_loop_app start|recover DB_URL LEDGER``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from datetime import timedelta
from typing import Any

from sagakit import Engine, RetryPolicy, SagaContext, SagaError, saga_step, saga_workflow

LEDGER = ""


def _log(line: str) -> None:
    with open(LEDGER, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


async def _undo(data: Any, failed: bool) -> None:
    _log(f"undo failed={failed}")


@saga_step(
    "Boom", compensate=_undo, retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(0))
)
async def boom(ctx: SagaContext, inp: Any) -> None:
    _log(f"boom attempt={ctx.attempt} pid={os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)


@saga_workflow("CrashLoop")
async def crash_loop(saga: SagaContext, inp: Any) -> None:
    await boom(saga, inp)


async def main(mode: str, url: str) -> None:
    async with Engine(url, lease=timedelta(seconds=1), poll_interval=timedelta(seconds=0.1)) as e:
        e.register(crash_loop)
        if mode == "start":
            await e.run(crash_loop, {}, saga_id="loop")
        else:
            with contextlib.suppress(SagaError):  # it ends compensated: that is the point
                await e.handle("loop").result()


if __name__ == "__main__":
    LEDGER = sys.argv[3]
    asyncio.run(main(sys.argv[1], sys.argv[2]))
