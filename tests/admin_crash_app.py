"""A workflow for the admin crash tests, run as a real process that the tests SIGKILL while an
operator steers its saga.

Not a test module: ``tests/test_admin_crash.py`` runs it as a subprocess::

    python -m tests.admin_crash_app start  DB_URL LEDGER MARKERS SAGA_ID [--for SECONDS]
    python -m tests.admin_crash_app worker DB_URL LEDGER MARKERS SAGA_ID [--for SECONDS]

``start`` starts the ``AdminCrash`` saga SAGA_ID (running it in this process); both modes then
work as a worker (recovering, taking what operators hand back) until the saga has ended, or
until ``--for`` seconds passed. Each prints one JSON line, ``{"status", "output", "error"}``
of the saga, and exits 0 (3 when the saga has not ended in time and no ``--for`` was given).

The saga: steps S1, S2, S3, each compensated. S2 parks when it runs out of its two attempts.
The steps read switches from the MARKERS folder at every attempt, so that the test steers them
between processes: ``MARKERS/STEP.fail`` makes STEP raise (retried, then parked);
``MARKERS/STEP.block`` makes STEP write ``MARKERS/STEP.blocked`` (its pid) and sleep for an
hour: the test waits for that marker and kills the process there. Every step attempt appends
one JSON line to LEDGER (``O_APPEND``, one ``write``, fsynced)::

    {"ev": "step" | "step_done" | "comp", "step", "key", "attempt", "pid"}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from datetime import timedelta
from typing import Any

from sagakit import Engine, RetryPolicy, SagaContext, SagaStatus, saga_step, saga_workflow
from tests.processes import AppSwitches, saga_summary

#: short lease and poll: a killed owner's sagas are recovered about a second later
LEASE = timedelta(seconds=1)
POLL = timedelta(milliseconds=100)
TWO_QUICK = RetryPolicy(max_attempts=2, initial_interval=timedelta(0))

SWITCHES = AppSwitches()


def record(**event: Any) -> None:
    SWITCHES.record(at=time.time(), **event)


def _make_step(name: str, *, park: bool = False) -> Any:
    async def undo(data: Any) -> None:
        record(ev="comp", step=name)

    @saga_step(
        name,
        compensate=undo,
        retry=TWO_QUICK,
        on_exhausted="park" if park else "compensate",
    )
    async def run(ctx: SagaContext, inp: Any) -> str:
        event = {"step": name, "key": ctx.step_key, "attempt": ctx.attempt}
        record(ev="step", **event)
        if SWITCHES.on(name, "block"):
            SWITCHES.write_marker(name)
            await asyncio.sleep(3600)  # the test kills this process here
        if SWITCHES.on(name, "fail"):
            raise RuntimeError(f"{name} is down")
        record(ev="step_done", **event)
        return f"{name}-out"

    return run


S1, S2, S3 = _make_step("S1"), _make_step("S2", park=True), _make_step("S3")


@saga_workflow("AdminCrash")
async def admin_crash(saga: SagaContext, inp: Any) -> list[str]:
    return [await S1(saga, None), await S2(saga, None), await S3(saga, None)]


async def main_async(args: argparse.Namespace) -> int:
    engine = Engine(args.db, lease=LEASE, poll_interval=POLL)
    engine.register(admin_crash)
    async with engine:
        record(ev="up")
        if args.mode == "start":
            await engine.start(admin_crash, None, saga_id=args.saga)
        deadline = time.monotonic() + (args.for_seconds or args.timeout)
        while time.monotonic() < deadline:
            record_ = await engine._store_or_raise().load_saga(args.saga)
            if record_ is not None and SagaStatus(record_.status).is_terminal:
                break
            await asyncio.sleep(0.05)
        else:
            if not args.for_seconds:
                print(json.dumps(await saga_summary(engine, args.saga)))
                print(f"timed out after {args.timeout}s", file=sys.stderr)
                return 3
        print(json.dumps(await saga_summary(engine, args.saga)))
        record(ev="finished")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.admin_crash_app")
    parser.add_argument("mode", choices=["start", "worker"])
    parser.add_argument("db")
    parser.add_argument("ledger")
    parser.add_argument("markers")
    parser.add_argument("saga")
    parser.add_argument("--for", dest="for_seconds", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=50.0)
    args = parser.parse_args(argv)
    SWITCHES.configure(args.ledger, args.markers)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
