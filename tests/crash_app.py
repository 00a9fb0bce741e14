"""Workflows for the crash-recovery tests, run as a real process that the tests SIGKILL.

Not a test module: ``tests/test_crash_recovery.py`` runs it as a subprocess::

    python -m tests.crash_app start   DB_URL LEDGER --saga SAGA_ID INPUT_JSON [--saga ...]
                                       [--block step:NAME[@SAGA_ID]] [--block comp:NAME[@SAGA_ID]]
                                       [--flaky NAME[@SAGA_ID]]
    python -m tests.crash_app recover DB_URL LEDGER --wait SAGA_ID [--wait ...]
                                       [--block ...] [--flaky ...]

``start`` starts the sagas (running them in this process) and waits for them (started again
on sagas that exist, it is what a restarted program does: ``start`` returns the existing saga and
the worker recovers it once its lease expired); ``recover``
starts an engine with the same workflows and waits until its background worker has recovered
the given sagas (after the dead owner's lease expired). Both print one JSON object, saga id →
``{"status", "output", "error"}``, and exit 0 when every saga ended; 3 on a timeout.

Every step attempt and every compensation appends one JSON line to the LEDGER file (written with
``O_APPEND`` in one ``write`` and fsynced, so that it survives the SIGKILL that follows), so the
test can count how many times each one really ran, and in which process:

* ``{"ev": "step", "saga", "step", "key", "attempt", "nonce", "pid"}`` when a step attempt
  starts (``nonce``: the saga's journaled ``ctx.uuid()``, the same in every process);
  ``"step_done"`` when it returns;
* ``{"ev": "comp", "saga", "step", "key", "failed", "data", "pid"}`` when a compensation starts;
  ``"comp_done"`` when it returns;
* ``{"ev": "blocked", "what": "step"|"comp", ...}`` when a step or compensation told to block
  has started blocking (forever: the process is meant to be killed there);
* ``{"ev": "up"}`` once the engine is open (its worker polling), ``{"ev": "ready"}`` once
  every saga of ``start`` is written and launched,
  ``{"ev": "finished"}`` at the end.

``--block`` and ``--flaky`` are process-local (never part of a saga's journaled input), so the
recovering process runs the same workflows without them. ``--flaky NAME`` makes the first
attempt of step NAME in this process fail with a retryable error (before any ``--block``
check), so ``--flaky S2 --block step:S2`` fails attempt 1 of S2 and blocks in attempt 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from datetime import timedelta
from typing import Any

from sagakit import (
    Engine,
    RetryPolicy,
    SagaContext,
    SagaError,
    StepResponse,
    TerminalError,
    saga_step,
    saga_workflow,
)
from tests.processes import append_to_ledger

#: short lease and poll: a killed owner's sagas are recovered about a second later
LEASE = timedelta(seconds=1)
POLL = timedelta(milliseconds=100)
RETRY = RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=10))

STEP_NAMES = ("S1", "S2", "S3", "S4")

_ledger_path: str | None = None
_blocks: set[tuple[str, str, str | None]] = set()
_flaky: set[tuple[str, str | None]] = set()


class FlakyError(Exception):
    """A retryable failure (not terminal)."""


def record(**event: Any) -> None:
    """Append one event to the ledger, durably, in one write."""
    assert _ledger_path is not None, "the ledger path is not set"
    append_to_ledger(_ledger_path, event)


def _matches(targets: set[Any], kind: str | None, name: str, saga_id: str) -> bool:
    if kind is None:
        return (name, None) in targets or (name, saga_id) in targets
    return (kind, name, None) in targets or (kind, name, saga_id) in targets


async def _block_forever(**event: Any) -> None:
    record(ev="blocked", **event)
    await asyncio.Event().wait()


def _make_step(name: str) -> Any:
    async def undo(data: dict[str, Any], failed: bool = False) -> None:
        saga_id = data["saga"]
        event = {"saga": saga_id, "step": name, "key": data.get("key"), "failed": failed}
        record(ev="comp", data=data, **event)
        if _matches(_blocks, "comp", name, saga_id):
            await _block_forever(what="comp", **event)
        record(ev="comp_done", **event)

    @saga_step(name, compensate=undo, retry=RETRY)
    async def run(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[dict[str, Any]]:
        event = {"saga": ctx.saga_id, "step": name, "key": ctx.step_key, "attempt": ctx.attempt}
        record(ev="step", nonce=inp["nonce"], **event)
        if ctx.attempt == 1 and _matches(_flaky, None, name, ctx.saga_id):
            raise FlakyError(f"{name} fails its first attempt in process {os.getpid()}")
        if _matches(_blocks, "step", name, ctx.saga_id):
            await _block_forever(what="step", **event)
        if inp.get("sleep"):
            await asyncio.sleep(inp["sleep"])
        if inp.get("fail"):
            raise TerminalError(f"{name} fails for good")
        record(ev="step_done", **event)
        output = {"step": name, "key": ctx.step_key}
        return StepResponse(output, compensation_data={"saga": ctx.saga_id, **output})

    return run


STEPS = [_make_step(name) for name in STEP_NAMES]


@saga_workflow("Chain4")
async def chain4(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    """A journaled uuid (the nonce, given to every step), then four hybrid steps S1..S4;
    ``fail_at`` (1-4) makes that step fail with a TerminalError."""
    nonce = str(await saga.uuid())
    keys = []
    for number, step in enumerate(STEPS, start=1):
        out = await step(
            saga,
            {
                "saga": saga.saga_id,
                "step": step.name,
                "nonce": nonce,
                "fail": inp.get("fail_at") == number,
                "sleep": inp.get("sleep", 0),
            },
        )
        keys.append(out["key"])
    return {"keys": keys}


WORKFLOWS = [chain4]


def _target(spec: str) -> tuple[str, str | None]:
    name, _, saga_id = spec.partition("@")
    return name, saga_id or None


async def _summary(engine: Engine, saga_ids: list[str]) -> dict[str, Any]:
    out = {}
    for saga_id in saga_ids:
        snap = await engine.get(saga_id)
        out[saga_id] = {"status": str(snap.status), "output": snap.output, "error": snap.error}
    return out


async def main_async(args: argparse.Namespace) -> int:
    engine = Engine(args.db, lease=timedelta(seconds=args.lease), poll_interval=POLL)
    engine.register(*WORKFLOWS)
    async with engine:
        record(ev="up")  # the engine is open and its worker polls for sagas to recover
        if args.mode == "start":
            saga_ids = []
            for saga_id, input_json in args.saga:
                await engine.start("Chain4", json.loads(input_json), saga_id=saga_id)
                saga_ids.append(saga_id)
            record(ev="ready")
        else:
            saga_ids = list(args.wait)

        async def wait(saga_id: str) -> None:
            # compensated or failed: the summary says which
            with contextlib.suppress(SagaError):
                await engine.handle(saga_id).result(timeout=args.timeout)

        try:
            await asyncio.gather(*(wait(s) for s in saga_ids))
        except TimeoutError:
            print(json.dumps(await _summary(engine, saga_ids)))
            print(f"timed out after {args.timeout}s", file=sys.stderr)
            return 3
        print(json.dumps(await _summary(engine, saga_ids)))
        record(ev="finished")
    return 0


def main(argv: list[str] | None = None) -> int:
    global _ledger_path
    parser = argparse.ArgumentParser(prog="python -m tests.crash_app")
    parser.add_argument("mode", choices=["start", "recover"])
    parser.add_argument("db")
    parser.add_argument("ledger")
    parser.add_argument("--saga", nargs=2, action="append", default=[], metavar=("ID", "JSON"))
    parser.add_argument("--wait", action="append", default=[], metavar="SAGA_ID")
    parser.add_argument("--block", action="append", default=[], metavar="step|comp:NAME[@ID]")
    parser.add_argument("--flaky", action="append", default=[], metavar="NAME[@ID]")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--lease", type=float, default=LEASE.total_seconds(), metavar="SECONDS")
    args = parser.parse_args(argv)
    _ledger_path = args.ledger
    for spec in args.block:
        kind, _, rest = spec.partition(":")
        if kind not in ("step", "comp") or not rest:
            parser.error(f"--block takes step:NAME or comp:NAME, got {spec!r}")
        _blocks.add((kind, *_target(rest)))
    _flaky.update(_target(spec) for spec in args.flaky)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
