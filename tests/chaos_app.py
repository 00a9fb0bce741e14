"""Workflows for the chaos test, run by real ``sagakit worker`` processes.

Every step and every compensation records its side effect as a row of the ``chaos_ledger`` table
(in the same PostgreSQL database as the sagas, named by SAGAKIT_CHAOS_DB), keyed by the step's
``ctx.step_key``. The test then checks the ledger against the journal. The rows are inserted
outside the saga's journal on purpose: they are the "external service" whose calls the engine
may repeat (at-least-once) but must never repeat once the step's result is journaled.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import asyncpg

from sagakit import SagaContext, StepResponse, TerminalError, saga_step, saga_workflow

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS chaos_ledger (
    id bigserial PRIMARY KEY,
    step_key text NOT NULL,
    saga_id text NOT NULL,
    step_index int NOT NULL,
    action text NOT NULL,
    pid int NOT NULL,
    at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
)
"""

_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


async def _ledger() -> asyncpg.Pool:
    global _pool
    async with _pool_lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(
                os.environ["SAGAKIT_CHAOS_DB"], min_size=1, max_size=8
            )
        return _pool


async def _record(step_key: str, saga_id: str, index: int, action: str) -> None:
    pool = await _ledger()
    await pool.execute(
        "INSERT INTO chaos_ledger (step_key, saga_id, step_index, action, pid) "
        "VALUES ($1, $2, $3, $4, $5)",
        step_key,
        saga_id,
        index,
        action,
        os.getpid(),
    )


async def _undo(data: dict[str, Any]) -> None:
    await _record(data["step_key"], data["saga_id"], data["index"], "undo")


async def _do(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[dict[str, Any]]:
    # long enough that a SIGKILL often lands in the middle of a step
    await asyncio.sleep(random.uniform(0.002, 0.02))
    await _record(ctx.step_key, ctx.saga_id, inp["index"], "do")
    if inp["fail"]:
        raise TerminalError(f"planned failure at step {inp['index']}")
    data = {"step_key": ctx.step_key, "saga_id": ctx.saga_id, "index": inp["index"]}
    return StepResponse({"done": inp["index"]}, compensation_data=data)


STEPS = [saga_step(f"Step{i}", compensate=_undo)(_do) for i in range(5)]


@saga_workflow("Chaos")
async def chaos(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    done = []
    for index in range(inp["steps"]):
        # a hybrid step that fails is compensated with its input: give the input what _undo
        # needs (the step key of step `index` is "<saga_id>:<index>": one durable op per step)
        step_input = {
            "index": index,
            "fail": index == inp["fail_at"],
            "saga_id": saga.saga_id,
            "step_key": f"{saga.saga_id}:{index}",
        }
        done.append(await STEPS[index](saga, step_input))
    return {"steps": len(done)}


workflows = [chaos]
