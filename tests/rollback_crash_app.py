"""A workflow for the rollback crash test, run as a real process that the test SIGKILLs inside a
compensation.

Not a test module: ``tests/test_rollback_crash.py`` runs it as a subprocess::

    python -m tests.rollback_crash_app start  DB_URL LEDGER MARKERS SAGA_ID
    python -m tests.rollback_crash_app worker DB_URL LEDGER MARKERS SAGA_ID

``start`` starts the ``StrictThree`` saga SAGA_ID (running it in this process); both modes then
work as a worker (recovering what a dead process left) until the saga has ended, print one JSON
line, ``{"status", "output", "error"}`` of the saga, and exit 0 (3 on a timeout).

The saga: strict steps S1, S2, S3, each with a compensation; S3 raises ``TerminalError``, so
the rollback undoes S2, then S1 (S3 failed: a strict step is not undone). Every step and
compensation appends one JSON line to LEDGER (``O_APPEND``, one ``write``, fsynced)::

    {"ev": "step" | "comp", "step", "pid"}

Switches in the MARKERS folder steer the compensation of S1 at its start, right after its
ledger line: ``MARKERS/S1.block`` makes it write ``MARKERS/S1.blocked`` (its pid) and sleep for
an hour (the test kills the process there); ``MARKERS/S1.die`` makes the process SIGKILL itself
at once, before the event loop runs anything else (no write queued before can commit after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from datetime import timedelta
from typing import Any

from sagakit import (
    Engine,
    SagaContext,
    SagaStatus,
    TerminalError,
    saga_step_strict,
    saga_workflow,
)
from tests.processes import AppSwitches, saga_summary

#: short lease and poll: a killed owner's saga is recovered about a second later
LEASE = timedelta(seconds=1)
POLL = timedelta(milliseconds=100)

SWITCHES = AppSwitches()


def _make_step(name: str, *, fails: bool = False) -> Any:
    async def undo(data: Any) -> None:
        SWITCHES.record(ev="comp", step=name)
        if SWITCHES.on(name, "die"):
            os.kill(os.getpid(), signal.SIGKILL)
        if SWITCHES.on(name, "block"):
            SWITCHES.write_marker(name)
            await asyncio.sleep(3600)  # the test kills this process here

    @saga_step_strict(name, compensate=undo)
    async def run(ctx: SagaContext, inp: Any) -> str:
        SWITCHES.record(ev="step", step=name)
        if fails:
            raise TerminalError(f"{name} fails for good")
        return f"{name}-out"

    return run


S1, S2, S3 = _make_step("S1"), _make_step("S2"), _make_step("S3", fails=True)


@saga_workflow("StrictThree")
async def strict_three(saga: SagaContext, inp: Any) -> list[str]:
    return [await S1(saga, None), await S2(saga, None), await S3(saga, None)]


async def main_async(args: argparse.Namespace) -> int:
    engine = Engine(args.db, lease=LEASE, poll_interval=POLL)
    engine.register(strict_three)
    async with engine:
        if args.mode == "start":
            await engine.start(strict_three, None, saga_id=args.saga)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            found = await engine._store_or_raise().load_saga(args.saga)
            if found is not None and SagaStatus(found.status).is_terminal:
                break
            await asyncio.sleep(0.05)
        else:
            print(json.dumps(await saga_summary(engine, args.saga)))
            print(f"timed out after {args.timeout}s", file=sys.stderr)
            return 3
        print(json.dumps(await saga_summary(engine, args.saga)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.rollback_crash_app")
    parser.add_argument("mode", choices=["start", "worker"])
    parser.add_argument("db")
    parser.add_argument("ledger")
    parser.add_argument("markers")
    parser.add_argument("saga")
    parser.add_argument("--timeout", type=float, default=50.0)
    args = parser.parse_args(argv)
    SWITCHES.configure(args.ledger, args.markers)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
