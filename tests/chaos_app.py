"""Workflows for the chaos test, run by real ``sagakit worker`` processes.

Every execution of a step body and of a compensation records itself as one row of the
``chaos_ledger`` table (in the same PostgreSQL database as the sagas, named by
SAGAKIT_CHAOS_DB, reached directly rather than through the test's fault proxy): the step's
``ctx.step_key``, the worker's pid, and when the execution began (``started``, the machine's
clock, which the server's ``clock_timestamp()`` shares). The rows are written outside the saga's
journal on purpose: they are the "external service" whose calls the engine may repeat
(at-least-once) but must never repeat once the step's end is durable.

A PostgreSQL restart can break the ledger's own connection in the middle of a step: the insert
is then retried under an id chosen before its first attempt (``execution``), so that every
execution that reached its insert leaves exactly one row, and a step never fails because of
the ledger. The steps retry up to 20 times, so that a step whose workers die again and again
(each recovery counts an attempt) is not given up on: the test checks repetition, not a retry
budget.

``JOURNAL_LOG_DDL`` (applied by the test once the store's schema exists) adds a deferred
trigger to ``saga_journal`` that copies every committed write of a step's or compensation's
end into ``chaos_journal_log``, with the server's clock at commit time: the journal itself keeps
only the last write of an entry (a re-execution would overwrite the first one's
``finished_at``), this log keeps the first.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from datetime import timedelta
from typing import Any

import asyncpg

from sagakit import (
    RetryPolicy,
    SagaContext,
    StepResponse,
    TerminalError,
    saga_step,
    saga_workflow,
)

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS chaos_ledger (
    id bigserial PRIMARY KEY,
    execution text NOT NULL UNIQUE,
    step_key text NOT NULL,
    saga_id text NOT NULL,
    step_index int NOT NULL,
    action text NOT NULL,
    pid int NOT NULL,
    started double precision NOT NULL,
    at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
)
"""

JOURNAL_LOG_DDL = """
CREATE TABLE IF NOT EXISTS chaos_journal_log (
    id bigserial PRIMARY KEY,
    saga_id text NOT NULL,
    seq int NOT NULL,
    kind text NOT NULL,
    name text NOT NULL,
    status text NOT NULL,
    finished_at double precision NOT NULL,
    owner text,
    fence bigint,
    at double precision NOT NULL
);
CREATE OR REPLACE FUNCTION chaos_log_journal() RETURNS trigger AS $$
BEGIN
    INSERT INTO chaos_journal_log
        (saga_id, seq, kind, name, status, finished_at, owner, fence, at)
    SELECT NEW.saga_id, NEW.seq, NEW.kind, NEW.name, NEW.status, NEW.finished_at,
           s.owner, s.fence, extract(epoch FROM clock_timestamp())
    FROM (SELECT 1) one LEFT JOIN saga_instances s ON s.saga_id = NEW.saga_id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS chaos_log_journal ON saga_journal;
-- deferred: it runs as the transaction commits, so "at" is as late as a trigger can see
CREATE CONSTRAINT TRIGGER chaos_log_journal AFTER INSERT OR UPDATE ON saga_journal
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.kind IN ('step', 'compensation') AND NEW.status IN ('completed', 'failed'))
    EXECUTE FUNCTION chaos_log_journal();
"""

#: how long one ledger insert keeps trying through a database restart (seconds)
LEDGER_DEADLINE = 60.0

_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


async def _ledger() -> asyncpg.Pool:
    global _pool
    async with _pool_lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(
                os.environ["SAGAKIT_CHAOS_DB"], min_size=1, max_size=8, command_timeout=10
            )
        return _pool


async def _record(step_key: str, saga_id: str, index: int, action: str, started: float) -> None:
    execution = uuid.uuid4().hex
    gives_up = time.monotonic() + LEDGER_DEADLINE
    while True:
        try:
            pool = await _ledger()
            await pool.execute(
                "INSERT INTO chaos_ledger "
                "(execution, step_key, saga_id, step_index, action, pid, started) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (execution) DO NOTHING",
                execution,
                step_key,
                saga_id,
                index,
                action,
                os.getpid(),
                started,
            )
            return
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            # the server restarts under the test: the same row again, once it is back
            if time.monotonic() > gives_up:
                raise
            await asyncio.sleep(0.1)


async def _undo(data: dict[str, Any]) -> None:
    await _record(data["step_key"], data["saga_id"], data["index"], "undo", time.time())


async def _do(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[dict[str, Any]]:
    started = time.time()
    # long enough that a SIGKILL often lands in the middle of a step
    await asyncio.sleep(random.uniform(0.002, 0.02))
    await _record(ctx.step_key, ctx.saga_id, inp["index"], "do", started)
    if inp["fail"]:
        raise TerminalError(f"planned failure at step {inp['index']}")
    data = {"step_key": ctx.step_key, "saga_id": ctx.saga_id, "index": inp["index"]}
    return StepResponse({"done": inp["index"]}, compensation_data=data)


PATIENT = RetryPolicy(max_attempts=20, initial_interval=timedelta(0))

STEPS = [
    saga_step(f"Step{i}", compensate=_undo, retry=PATIENT, compensation_retry=PATIENT)(_do)
    for i in range(5)
]


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
