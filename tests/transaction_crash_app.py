"""A saga with a transactional step, run as a real process that the tests SIGKILL.

Not a test module: ``tests/test_transaction_crash.py`` runs it as a subprocess::

    python -m tests.transaction_crash_app start   DB_URL LEDGER MARKERS --saga SAGA_ID
    python -m tests.transaction_crash_app recover DB_URL LEDGER MARKERS --wait SAGA_ID

The workflow ``Stock`` runs the transactional step ``Reserve`` (three INSERTs into the
application's table ``items``, through ``ctx.connection``), then the ordinary step ``Ship``.
Switches (files ``MARKERS/STEP.block``, see tests/processes.py) make a step block forever
after its work, for the test to SIGKILL the process there: ``Reserve.block`` after the body's
INSERTs, before the commit; ``Ship.block`` in the next step, after Reserve committed. A
blocked step writes ``MARKERS/STEP.blocked`` (its pid). Every body attempt appends
``{"ev": "body", "saga", "attempt", "pid"}`` to the ledger.

Both modes print one JSON object, saga id -> ``{"status", "output", "error"}``, and exit 0
once every saga ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sqlite3
import sys
from datetime import timedelta
from typing import Any

from sagakit import (
    Engine,
    SagaContext,
    SagaError,
    TransactionContext,
    saga_step,
    saga_transaction,
    saga_workflow,
)
from tests.processes import AppSwitches, saga_summary

LEASE = timedelta(seconds=1)
POLL = timedelta(milliseconds=100)

app = AppSwitches()


async def _block(step: str) -> None:
    if app.on(step, "block"):
        app.write_marker(step)
        await asyncio.sleep(3600)  # the test kills the process here


@saga_transaction("Reserve")
async def reserve(ctx: TransactionContext, inp: dict[str, Any]) -> dict[str, Any]:
    app.record(ev="body", saga=ctx.saga_id, attempt=ctx.attempt)
    names = [f"{ctx.saga_id}-{n}" for n in ("a", "b", "c")]
    conn = ctx.connection
    for name in names:
        if isinstance(conn, sqlite3.Connection):
            conn.execute("INSERT INTO items (name) VALUES (?)", (name,))
        else:
            await conn.execute("INSERT INTO items (name) VALUES ($1)", name)
    # the INSERTs are made, not committed: a SIGKILL here must leave none of them
    await _block("Reserve")
    return {"items": names}


@saga_step("Ship")
async def ship(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    await _block("Ship")
    return {"shipped": len(inp["items"])}


@saga_workflow("Stock")
async def stock(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    reserved = await reserve(saga, inp)
    return await ship(saga, reserved)


async def main_async(args: argparse.Namespace) -> int:
    engine = Engine(args.db, lease=LEASE, poll_interval=POLL)
    engine.register(stock)
    async with engine:
        if args.mode == "start":
            for saga_id in args.saga:
                await engine.start(stock, {}, saga_id=saga_id)
        saga_ids = list(args.saga or args.wait)

        async def wait(saga_id: str) -> None:
            with contextlib.suppress(SagaError):
                await engine.handle(saga_id).result(timeout=args.timeout)

        await asyncio.gather(*(wait(s) for s in saga_ids))
        print(json.dumps({s: await saga_summary(engine, s) for s in saga_ids}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.transaction_crash_app")
    parser.add_argument("mode", choices=["start", "recover"])
    parser.add_argument("db")
    parser.add_argument("ledger")
    parser.add_argument("markers")
    parser.add_argument("--saga", action="append", default=[], metavar="SAGA_ID")
    parser.add_argument("--wait", action="append", default=[], metavar="SAGA_ID")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    app.configure(args.ledger, args.markers)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
