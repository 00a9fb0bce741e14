"""The service process of the SIGKILL test (tests/test_restate_crash.py):
``python -m tests.restate_crash_app PORT LEDGER`` serves a saga on 127.0.0.1:PORT with hypercorn
in this process's main thread, so that SIGKILL of this pid really kills the endpoint.

Every step and compensation appends a JSON line to LEDGER. In "Crashy" the second step hangs on
its first execution, and so does its compensation, so that the test can kill the process in the
middle of a step and in the middle of the rollback; later executions go on. In "CrashyBranches"
leg b1 of three parallel branches hangs on its first execution.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import sagakit.restate
from sagakit import SagaContext, TerminalError, saga_step, saga_workflow

from .restate_server import hypercorn_config

LEDGER = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("ledger.jsonl")


def note(**event: Any) -> None:
    with LEDGER.open("a") as out:
        out.write(json.dumps(event) + "\n")


def executions(what: str, step: str) -> int:
    if not LEDGER.exists():
        return 0
    lines = [json.loads(line) for line in LEDGER.read_text().splitlines() if line.strip()]
    return sum(1 for e in lines if e.get(what) == step)


async def undo(data: Any) -> None:
    seen = executions("undoing", data["step"])
    note(undoing=data["step"])
    if data["step"] == "second" and seen == 0:
        await asyncio.sleep(120)  # the test kills the process here too
    note(undo=data["step"], saga=data["saga"])


@saga_step("first", compensate=undo)
async def first(ctx: SagaContext, inp: Any) -> dict[str, Any]:
    note(do="first", key=ctx.step_key)
    return {"step": "first", "saga": ctx.saga_id}


@saga_step("second", compensate=undo)
async def second(ctx: SagaContext, inp: Any) -> dict[str, Any]:
    seen = executions("do", "second")
    note(do="second", key=ctx.step_key)
    if seen == 0:
        await asyncio.sleep(120)  # the test kills the process here
    return {"step": "second", "saga": ctx.saga_id}


@saga_step("third")
async def third(ctx: SagaContext, inp: Any) -> None:
    note(do="third", key=ctx.step_key)
    raise TerminalError("the third step refuses")


@saga_workflow("Crashy")
async def crashy(saga: SagaContext, inp: Any) -> str:
    await first(saga, None)
    await second(saga, None)
    await third(saga, None)
    return "unreachable"


@saga_step("leg", compensate=undo)
async def leg(ctx: SagaContext, inp: dict[str, Any]) -> str:
    name = inp["name"]
    seen = executions("do", name)
    note(do=name, key=ctx.step_key)
    if name == "b1" and seen == 0:
        await asyncio.sleep(120)  # the test kills the process here
    await asyncio.sleep(inp["seconds"])
    note(done=name)
    return name


async def branch(saga: SagaContext, name: str, seconds: float) -> list[str]:
    first_leg = await leg(saga, {"name": f"{name}0", "seconds": seconds})
    second_leg = await leg(saga, {"name": f"{name}1", "seconds": seconds})
    return [first_leg, second_leg]


@saga_workflow("CrashyBranches")
async def crashy_branches(saga: SagaContext, inp: Any) -> list[Any]:
    # the legs complete in another order than the branches were given: b, c, then a
    return await saga.gather(branch(saga, "a", 0.3), branch(saga, "b", 0.0), branch(saga, "c", 0.1))


app = sagakit.restate.app(crashy, crashy_branches)


async def main(port: int) -> None:
    from hypercorn.asyncio import serve

    await serve(app, hypercorn_config(port))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
