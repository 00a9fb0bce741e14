"""A workflow for tests/test_shutdown_faults.py, run by ``sagakit worker`` in a subprocess.

Not a test module. ``Blocked`` has one step, ``Hold``, which appends ``{"ev": "Hold", "pid"}``
to the ledger named in the input and then waits until the file named ``release`` exists.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sagakit import SagaContext, saga_step, saga_workflow
from tests.processes import append_to_ledger


@saga_step("Hold")
async def hold(ctx: SagaContext, inp: dict[str, Any]) -> str:
    append_to_ledger(inp["ledger"], {"ev": "Hold", "saga": ctx.saga_id})
    # the release is a file the test process writes: nothing here to await but a poll
    while not Path(inp["release"]).exists():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return "held"


@saga_workflow("Blocked")
async def blocked(saga: SagaContext, inp: dict[str, Any]) -> str:
    return await hold(saga, inp)


workflows = [blocked]
