"""Workflows for the child-saga crash tests, run as a real process that the tests SIGKILL.

Not a test module: ``tests/test_children_crash.py`` runs it as a subprocess::

    python -m tests.children_crash_app start   DB_URL LEDGER MARKERS PARENT_ID [--block STEP ...]
    python -m tests.children_crash_app recover DB_URL LEDGER MARKERS PARENT_ID

``start`` starts one ``CrashParent`` saga (running it, and the child it starts, in this process)
and waits for it; the tests kill it long before. ``recover`` opens an engine with the same
workflows, lets its background worker recover what the dead process left (once the dead owner's
lease expired), and waits until the parent ended. Both print one JSON line, saga id ->
``{"status", "output", "error", "parent_id"}`` for every saga in the database, and exit 0 when
the parent ended; 3 on a timeout.

The parent: step PA, ``start_child(CrashChild)``, step PB, ``await child.result()``, step PC.
The child: steps CA, CB, CC. Every step attempt appends one JSON line to LEDGER (``O_APPEND``,
one ``write``, fsynced: it survives the SIGKILL that follows)::

    {"ev": "step" | "step_done" | "comp", "saga", "step", "key", "attempt", "pid"}

``--block STEP`` (process-local, never part of a saga's input, so a recovering process runs the
same workflows without it) makes step STEP, once it has logged its start, write the marker file
``MARKERS/STEP.blocked`` (its pid, written to a temporary name and renamed) and sleep for an
hour: the test waits for the marker and kills the process there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from sagakit import Engine, SagaContext, SagaError, StepResponse, saga_step, saga_workflow
from tests.processes import append_to_ledger

#: short lease and poll: a killed owner's sagas are recovered about a second later
LEASE = timedelta(seconds=1)
POLL = timedelta(milliseconds=100)

_ledger_path: str | None = None
_marker_dir: str | None = None
_blocks: set[str] = set()


class ChildInput(BaseModel):
    tag: str


class ChildResult(BaseModel):
    child: str
    tag: str
    keys: list[str]


def record(**event: Any) -> None:
    """Append one event to the ledger, durably, in one write."""
    assert _ledger_path is not None, "the ledger path is not set"
    event["at"] = time.time()
    append_to_ledger(_ledger_path, event)


def write_marker(step: str) -> None:
    """``MARKERS/STEP.blocked`` holding this pid, complete as soon as it exists."""
    assert _marker_dir is not None, "the marker folder is not set"
    final = os.path.join(_marker_dir, f"{step}.blocked")
    temporary = f"{final}.{os.getpid()}.tmp"
    with open(temporary, "w") as out:
        out.write(str(os.getpid()))
        out.flush()
        os.fsync(out.fileno())
    os.rename(temporary, final)


def _make_step(name: str) -> Any:
    async def undo(data: Any) -> None:
        record(ev="comp", step=name, data=data)

    @saga_step(name, compensate=undo)
    async def run(ctx: SagaContext, inp: Any) -> StepResponse[str]:
        event = {"saga": ctx.saga_id, "step": name, "key": ctx.step_key, "attempt": ctx.attempt}
        record(ev="step", **event)
        if name in _blocks:
            write_marker(name)
            await asyncio.sleep(3600)  # the test kills this process here
        record(ev="step_done", **event)
        return StepResponse(ctx.step_key, compensation_data={"saga": ctx.saga_id})

    return run


STEP_A, STEP_B, STEP_C = (_make_step(n) for n in ("PA", "PB", "PC"))
CHILD_A, CHILD_B, CHILD_C = (_make_step(n) for n in ("CA", "CB", "CC"))


@saga_workflow("CrashChild")
async def crash_child(saga: SagaContext, inp: ChildInput) -> ChildResult:
    keys = [await CHILD_A(saga, None), await CHILD_B(saga, None), await CHILD_C(saga, None)]
    return ChildResult(child=saga.saga_id, tag=inp.tag, keys=keys)


@saga_workflow("CrashParent")
async def crash_parent(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    pa = await STEP_A(saga, None)
    child = await saga.start_child(crash_child, {"tag": inp["tag"]})
    pb = await STEP_B(saga, None)
    out = await child.result()
    if not isinstance(out, ChildResult):
        raise TypeError(f"child.result() gave a {type(out).__name__}, not a ChildResult")
    pc = await STEP_C(saga, None)
    return {"child_id": child.saga_id, "child": out, "keys": [pa, pb, pc]}


WORKFLOWS = [crash_parent, crash_child]


async def _summary(engine: Engine) -> dict[str, Any]:
    store = engine._store_or_raise()
    out = {}
    for snap in await engine.list(limit=1000):
        record_ = await store.load_saga(snap.saga_id)
        out[snap.saga_id] = {
            "status": str(snap.status),
            "output": snap.output,
            "error": snap.error,
            "parent_id": None if record_ is None else record_.parent_id,
        }
    return out


async def main_async(args: argparse.Namespace) -> int:
    engine = Engine(args.db, lease=LEASE, poll_interval=POLL)
    engine.register(*WORKFLOWS)
    async with engine:
        record(ev="up")
        if args.mode == "start":
            await engine.start(crash_parent, {"tag": args.parent}, saga_id=args.parent)
            record(ev="ready")
        try:
            # compensated or failed: the summary says which
            with contextlib.suppress(SagaError):
                await engine.handle(args.parent).result(timeout=args.timeout)
        except TimeoutError:
            print(json.dumps(await _summary(engine)))
            print(f"timed out after {args.timeout}s", file=sys.stderr)
            return 3
        print(json.dumps(await _summary(engine)))
        record(ev="finished")
    return 0


def main(argv: list[str] | None = None) -> int:
    global _ledger_path, _marker_dir
    parser = argparse.ArgumentParser(prog="python -m tests.children_crash_app")
    parser.add_argument("mode", choices=["start", "recover"])
    parser.add_argument("db")
    parser.add_argument("ledger")
    parser.add_argument("markers")
    parser.add_argument("parent")
    parser.add_argument("--block", action="append", default=[], metavar="STEP")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    _ledger_path = args.ledger
    _marker_dir = args.markers
    _blocks.update(args.block)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
