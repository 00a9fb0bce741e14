"""A saga that continues as new, run as a real process that the tests SIGKILL.

Not a test module: ``tests/test_continue_as_new_crash.py`` runs it as a subprocess::

    python -m tests.continue_crash_app start   DB_URL LEDGER MARKERS SAGA_ID
    python -m tests.continue_crash_app recover DB_URL LEDGER MARKERS SAGA_ID

``start`` starts one ``Looping`` saga (running it in this process, or finding the one that
exists) and waits for it; ``recover`` opens an engine with the same workflow and waits until its
worker recovered the saga (once the dead owner's lease expired) and it ended. Both print one
JSON line ``{"status", "output", "error", "run"}`` and exit 0 when the saga ended; 3 on a
timeout.

The saga adds the numbers 0..8 with one step ``Add`` each, three per run, continuing as new
after each three (runs 1, 2, 3). Every step attempt appends ``{"ev": "step" | "step_done",
"i", "key", "pid"}`` to LEDGER (``O_APPEND``, one ``write``, fsynced). Two switches (files in
MARKERS, turned on by the test before it starts a process) make this process block where the
test kills it, after writing ``MARKERS/<where>.blocked`` with its pid:

* ``continue.block``: in the saga function of run 1, after its steps were journaled and
  before it continues (the continue's transaction is not written);
* ``add4.block``: in the step of i=4, the second of run 2 (the continue was committed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from datetime import timedelta
from typing import Any

from sagakit import Engine, SagaContext, SagaError, saga_step, saga_workflow
from tests.processes import AppSwitches

LEASE = timedelta(seconds=1)
POLL = timedelta(milliseconds=100)

app = AppSwitches()


async def block_here(where: str) -> None:
    app.write_marker(where)
    await asyncio.sleep(3600)  # the test kills this process here


@saga_step("Add")
async def add(ctx: SagaContext, i: int) -> int:
    event = {"i": i, "key": ctx.step_key}
    app.record(ev="step", **event)
    if i == 4 and app.on("add4", "block"):
        await block_here("add4")
    app.record(ev="step_done", **event)
    return i


@saga_workflow("Looping")
async def looping(saga: SagaContext, inp: dict[str, int]) -> int:
    total, i = inp["total"], inp["i"]
    for _ in range(3):
        total += await add(saga, i)
        i += 1
    if i >= 9:
        return total
    if i == 3 and app.on("continue", "block"):
        await block_here("continue")  # not journaled: a test's hook, process-local
    saga.continue_as_new({"i": i, "total": total})


async def main_async(args: argparse.Namespace) -> int:
    engine = Engine(args.db, lease=LEASE, poll_interval=POLL)
    engine.register(looping)
    async with engine:
        app.record(ev="up")
        if args.mode == "start":
            await engine.start(looping, {"i": 0, "total": 0}, saga_id=args.saga)
        try:
            with contextlib.suppress(SagaError):  # the summary says how it ended
                await engine.handle(args.saga).result(timeout=args.timeout)
        except TimeoutError:
            print(f"timed out after {args.timeout}s", file=sys.stderr)
            return 3
        snap = await engine.get(args.saga)
        record = await engine._store_or_raise().load_saga(args.saga)
        summary: dict[str, Any] = {
            "status": str(snap.status),
            "output": snap.output,
            "error": snap.error,
            "run": None if record is None else record.run,
        }
        print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.continue_crash_app")
    parser.add_argument("mode", choices=["start", "recover"])
    parser.add_argument("db")
    parser.add_argument("ledger")
    parser.add_argument("markers")
    parser.add_argument("saga")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    app.configure(args.ledger, args.markers)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
