"""A saga with parallel branches (``saga.gather``), run as a real process that the tests SIGKILL.

Not a test module: ``tests/test_gather_crash.py`` runs it as a subprocess::

    python -m tests.gather_crash_app start   DB_URL LEDGER SAGA_ID INPUT_JSON [--block ...]
    python -m tests.gather_crash_app recover DB_URL LEDGER SAGA_ID [--block ...]

The workflow ``GatherCrash``: step ``P``, then ``saga.gather`` of three branches, ``A1, A2``,
``B1, B2`` and ``C1, C2`` (each branch's steps in order), then step ``Z``. Its input
``{"fail": [NAMES]}`` makes those steps fail for good (TerminalError): the saga rolls back. The
numbers: P 0, the gather 1, then ``2 + 3k + i`` (A1 2, B1 3, C1 4, A2 5, B2 6, C2 7), Z 8.

``start`` starts the saga (running it in this process) and waits for it; ``recover`` starts an
engine with the same workflow and waits until its background worker has taken the saga over
(once the killed owner's lease expired) and finished it. Both print one JSON line,
``{"status", "output", "error"}``, and exit 0 when the saga ended; 3 on a timeout.

``--block step:NAME`` / ``--block comp:NAME`` (process-local, never journaled): that step (or
compensation) writes a ``blocked`` event and then sleeps for an hour, for the test to kill the
process there.

Every step attempt and every compensation appends one JSON line to the LEDGER (``O_APPEND``, one
``write``, fsynced, so it survives the SIGKILL that follows):
``{"ev": "step"|"step_done", "step", "attempt", "key", "pid"}``,
``{"ev": "comp"|"comp_done", "step", "failed", "data", "pid"}``, ``{"ev": "blocked", "what",
"step", "pid"}``, ``{"ev": "up"}`` once the engine is open, ``{"ev": "finished"}`` at the end.
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

from sagakit import (
    Engine,
    RetryPolicy,
    SagaContext,
    SagaError,
    TerminalError,
    saga_step,
    saga_workflow,
)
from tests.processes import append_to_ledger, saga_summary

#: short lease and poll: a killed owner's saga is recovered about a second later
LEASE = timedelta(seconds=1)
POLL = timedelta(milliseconds=100)
RETRY = RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=10))
BRANCHES = (("A1", "A2"), ("B1", "B2"), ("C1", "C2"))

_ledger_path: str | None = None
_blocks: set[tuple[str, str]] = set()


def record(**event: Any) -> None:
    """Append one event to the ledger, durably, in one write."""
    assert _ledger_path is not None, "the ledger path is not set"
    append_to_ledger(_ledger_path, event)


async def _block(what: str, name: str) -> None:
    if (what, name) in _blocks:
        record(ev="blocked", what=what, step=name)
        await asyncio.sleep(3600)  # the process is meant to be killed here


def _make_step(name: str) -> Any:
    async def undo(data: Any, failed: bool = False) -> None:
        record(ev="comp", step=name, failed=failed, data=data)
        await _block("comp", name)
        record(ev="comp_done", step=name, failed=failed)

    @saga_step(name, compensate=undo, retry=RETRY)
    async def run(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        event = {"step": name, "attempt": ctx.attempt, "key": ctx.step_key}
        record(ev="step", **event)
        await _block("step", name)
        await asyncio.sleep(0.01)
        if name in inp["fail"]:
            raise TerminalError(f"{name} fails for good")
        record(ev="step_done", **event)
        return {"step": name, "key": ctx.step_key}

    return run


STEPS = {name: _make_step(name) for name in ("P", "Z", *(s for b in BRANCHES for s in b))}


@saga_workflow("GatherCrash")
async def gather_crash(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    fail = list(inp.get("fail", []))

    async def branch(names: tuple[str, ...]) -> list[str]:
        keys = []
        for name in names:
            out = await STEPS[name](saga, {"fail": fail})
            keys.append(out["key"])
        return keys

    first = await STEPS["P"](saga, {"fail": fail})
    groups = await saga.gather(*(branch(names) for names in BRANCHES))
    last = await STEPS["Z"](saga, {"fail": fail})
    return {"keys": [first["key"], *groups, last["key"]]}


async def main_async(args: argparse.Namespace) -> int:
    engine = Engine(args.db, lease=LEASE, poll_interval=POLL)
    engine.register(gather_crash)
    async with engine:
        record(ev="up")
        if args.mode == "start":
            await engine.start(gather_crash, json.loads(args.input), saga_id=args.saga)
        try:
            with contextlib.suppress(SagaError):  # compensated or failed: the summary says
                await engine.handle(args.saga).result(timeout=args.timeout)
        except TimeoutError:
            print(json.dumps(await saga_summary(engine, args.saga)))
            print(f"timed out after {args.timeout}s", file=sys.stderr)
            return 3
        print(json.dumps(await saga_summary(engine, args.saga)))
        record(ev="finished")
    return 0


def main(argv: list[str] | None = None) -> int:
    global _ledger_path
    parser = argparse.ArgumentParser(prog="python -m tests.gather_crash_app")
    parser.add_argument("mode", choices=["start", "recover"])
    parser.add_argument("db")
    parser.add_argument("ledger")
    parser.add_argument("saga")
    parser.add_argument("input", nargs="?", default="{}")
    parser.add_argument("--block", action="append", default=[], metavar="step|comp:NAME")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    _ledger_path = args.ledger
    for spec in args.block:
        what, _, name = spec.partition(":")
        if what not in ("step", "comp") or not name:
            parser.error(f"--block takes step:NAME or comp:NAME, got {spec!r}")
        _blocks.add((what, name))
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
