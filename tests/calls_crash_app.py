"""A durable call (``saga.call``) for the crash tests of tests/test_durable_calls.py, run as a
real process that the tests SIGKILL.

    python -m tests.calls_crash_app start   DB_URL LEDGER MARKERS CALLER_ID [--block Work]
    python -m tests.calls_crash_app recover DB_URL LEDGER MARKERS CALLER_ID

The caller runs step Before, ``await saga.call(callee, ...)``, step After. The callee runs step
Work (whose effect is written to LEDGER under its ``ctx.step_key``, once per key: an
idempotent side effect) and then waits for the signal ``go``. ``--block Work`` makes Work write
``MARKERS/Work.blocked`` and hang before its effect (the test kills the process there).
``start`` starts the caller here and waits; ``recover`` is a worker that waits until the caller
ended. Both print one JSON line: the caller's status, output and error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from sagakit import Engine, SagaContext, SagaError, saga_step, saga_workflow
from tests.processes import AppSwitches, saga_summary

LEASE = timedelta(seconds=1)
POLL = timedelta(milliseconds=100)

app = AppSwitches()
_blocks: set[str] = set()


class CalleeInput(BaseModel):
    order: str


class CalleeOutput(BaseModel):
    order: str
    work_key: str


@saga_step("Work")
async def work(ctx: SagaContext, order: str) -> str:
    app.record(ev="step", step="Work", key=ctx.step_key)
    if "Work" in _blocks:
        app.write_marker("Work")
        await asyncio.sleep(3600)  # the test kills this process here
    app.record(ev="effect", step="Work", key=ctx.step_key)
    return ctx.step_key


@saga_step("Before")
async def before(ctx: SagaContext, order: str) -> str:
    app.record(ev="effect", step="Before", key=ctx.step_key)
    return order


@saga_step("After")
async def after(ctx: SagaContext, out: dict[str, Any]) -> str:
    app.record(ev="effect", step="After", key=ctx.step_key)
    return "after"


@saga_workflow("Callee")
async def callee(saga: SagaContext, inp: CalleeInput) -> CalleeOutput:
    key = await work(saga, inp.order)
    await saga.wait_for_signal("go")
    return CalleeOutput(order=inp.order, work_key=key)


@saga_workflow("Caller")
async def caller(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    order = await before(saga, inp["order"])
    out = await saga.call(callee, {"order": order})
    if not isinstance(out, CalleeOutput):
        raise TypeError(f"saga.call gave a {type(out).__name__}, not the callee's output model")
    await after(saga, out.model_dump())
    return {"callee": out.model_dump()}


async def main_async(args: argparse.Namespace) -> int:
    engine = Engine(args.db, lease=LEASE, poll_interval=POLL)
    engine.register(caller, callee)
    async with engine:
        if args.mode == "start":
            await engine.start(caller, {"order": "o-1"}, saga_id=args.caller)
        with contextlib.suppress(SagaError, TimeoutError):
            await engine.handle(args.caller).result(timeout=60)
        print(json.dumps(await saga_summary(engine, args.caller)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.calls_crash_app")
    parser.add_argument("mode", choices=["start", "recover"])
    parser.add_argument("db")
    parser.add_argument("ledger")
    parser.add_argument("markers")
    parser.add_argument("caller")
    parser.add_argument("--block", action="append", default=[], metavar="STEP")
    args = parser.parse_args(argv)
    app.configure(args.ledger, args.markers)
    _blocks.update(args.block)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
