"""Workflows for the operator-command tests (tests/test_cli_admin.py).

Not a test module: the tests prepare sagas with these workflows in their own engine, then steer
them with the real ``sagakit`` command, while ``sagakit worker --app
tests.cli_admin_app:WORKFLOWS`` runs them on. One workflow, ``Transfer``, whose input decides
how it goes:

* ``{"n": 1}``: Debit, then Credit; completes.
* ``"flag": PATH``: Credit fails until the file PATH exists; it runs out of its three quick
  attempts and, being ``on_exhausted="park"``, parks the saga for an operator.
* ``"nap": SECONDS``: a durable sleep between Debit and Credit.
* ``"approval": true``: a wait for the signal ``approval`` between Debit and Credit.
* ``"decline": true``: Credit fails for good; Debit is compensated.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from typing import Any

from sagakit import (
    Engine,
    RetryPolicy,
    SagaContext,
    SagaStatus,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)

#: three attempts 20 ms apart: a failing Credit parks the saga within a fraction of a second
QUICK = RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=20), backoff_factor=1)
#: the longest the preparation waits for a saga to settle
SETTLE_SECONDS = 20.0


async def undo_debit(data: dict[str, Any], failed: bool = False) -> None:
    """Nothing to undo outside the journal: the compensation's entry is what tests look at."""


@saga_step("Debit", compensate=undo_debit)
async def debit(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    return {"debited": inp.get("amount", 10)}


@saga_step_strict("Credit", retry=QUICK, on_exhausted="park")
async def credit(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    if inp.get("decline"):
        raise TerminalError("account closed")
    flag = inp.get("flag")
    if flag and not os.path.exists(flag):
        raise ConnectionError("ledger service unavailable")
    return {"credited": inp.get("amount", 10)}


@saga_workflow("Transfer")
async def transfer(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    debited = await debit(saga, inp)
    if inp.get("nap"):
        await saga.sleep(float(inp["nap"]))
    if inp.get("approval"):
        await saga.wait_for_signal("approval")
    credited = await credit(saga, inp)
    return {**debited, **credited}


WORKFLOWS = [transfer]

#: where each prepared saga comes to rest
SETTLED = {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.PARKED, SagaStatus.SUSPENDED}


async def prepare(url: str, sagas: dict[str, dict[str, Any]], *, spacing: float = 0.0) -> None:
    """Run the sagas (id → input), in order, until each completes, rolls back, parks or
    suspends, then close the engine: the database is left for the command to steer.
    ``spacing`` seconds between starts give the sagas distinct creation times."""
    async with Engine(url, poll_interval=timedelta(milliseconds=20)) as engine:
        engine.register(*WORKFLOWS)
        for saga_id, inp in sagas.items():
            await engine.start(transfer, inp, saga_id=saga_id)
            if spacing:
                await asyncio.sleep(spacing)
        deadline = time.monotonic() + SETTLE_SECONDS
        for saga_id in sagas:
            # the runs that suspended or parked release their sagas: let them end here too
            while (await engine.get(saga_id)).status not in SETTLED or saga_id in engine._tasks:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"saga {saga_id} did not settle while preparing")
                await asyncio.sleep(0.02)
