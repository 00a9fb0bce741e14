"""A worker process with one schedule ticking every second, for the schedule's crash test.

Not a test module: ``tests/test_schedules.py`` runs it as a subprocess::

    python -m tests.schedule_app worker DB_URL LEDGER

Its engine declares the schedule ``every-second`` (``* * * * * *``, catch_up="all") of the
workflow ``Tick``, whose one step appends ``{"ev": "step", "saga", "pid"}`` to the LEDGER when
an execution starts and ``{"ev": "step_done", ...}`` when it returns; the process appends
``{"ev": "up"}`` once its worker runs, then runs until it is killed (SIGKILL) or told to stop
(SIGTERM: it closes its engine and exits 0).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import timedelta

from sagakit import Engine, SagaContext, StepResponse, saga_step, saga_workflow
from tests.processes import append_to_ledger

SCHEDULE = "every-second"
_ledger = ""


@saga_step("Record")
async def record(ctx: SagaContext, inp: dict[str, str]) -> StepResponse:
    append_to_ledger(_ledger, {"ev": "step", "saga": ctx.saga_id})
    await asyncio.sleep(0.05)  # a kill may land inside an execution
    append_to_ledger(_ledger, {"ev": "step_done", "saga": ctx.saga_id})
    return StepResponse(output={"ok": True})


@saga_workflow("Tick")
async def tick(saga: SagaContext, inp: dict[str, str]) -> dict[str, bool]:
    result: dict[str, bool] = await record(saga, inp)
    return result


def engine(url: str) -> Engine:
    made = Engine(url, lease=timedelta(seconds=1), poll_interval=timedelta(milliseconds=200))
    made.schedule(SCHEDULE, "* * * * * *", tick, {"from": "schedule"}, catch_up="all")
    return made


async def main(url: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with engine(url):
        append_to_ledger(_ledger, {"ev": "up"})
        await stop.wait()


if __name__ == "__main__":
    mode, db_url, _ledger = sys.argv[1], sys.argv[2], sys.argv[3]
    assert mode == "worker", f"unknown mode {mode!r}"
    asyncio.run(main(db_url))
