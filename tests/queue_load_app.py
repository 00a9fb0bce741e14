"""A queue worker for the load tests of queues, run as a real process that the tests SIGKILL.

Not a test module: ``tests/test_queue_load.py`` runs it as a subprocess::

    python -m tests.queue_load_app worker DB_URL LEDGER MARKERS

The worker registers the workflow ``Job`` and the queues ``LOAD`` and ``TENANTS``, and runs
queued sagas until the file ``MARKERS/stop`` exists; then it leaves (its runs finished) and
prints one JSON line, ``{"pid": ...}``, exit 0. The sagas are enqueued by the test (a client
engine), not here.

The one step of ``Job`` appends to the LEDGER file (one fsynced write per line, so a SIGKILL
loses nothing written before it, see ``tests.processes.append_to_ledger``):

* ``{"ev": "enter", "saga", "t", "pid"}`` when the step starts (``t``: ``time.time()``, the
  clock the SQLite store stamps ``dequeued_at`` with, and the PostgreSQL server's on this host);
* ``{"ev": "exit", "saga", "t", "pid"}`` when it returns;
* ``{"ev": "up", "pid"}`` once the engine is open.

A saga enqueued with ``{"hold": true}`` blocks in its step while ``MARKERS/hold-SAGA_ID``
exists, so a test can SIGKILL the process that runs it in the middle of the step.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from datetime import timedelta
from typing import Any

from sagakit import Engine, Queue, RateLimit, SagaContext, saga_step, saga_workflow
from tests.processes import append_to_ledger

#: a killed worker's sagas are taken over about this long after its last renewal
LEASE = timedelta(seconds=2)
#: across processes on SQLite nothing wakes a worker but its poll (and its queue's rate hint)
POLL = timedelta(milliseconds=50)

#: the queue of the load test: 5 at once across every worker, 3 per worker, 80 starts/s (below
#: what 5 at once reach here, so that the rate binds: 2,000 sagas take 25 s at least)
LOAD = Queue(
    "load",
    concurrency=5,
    worker_concurrency=3,
    rate=RateLimit(40, per=timedelta(milliseconds=500)),
)
#: the queue of the fairness test: per tenant 2 at once and 30 starts per 0.5 s; 3 per worker
TENANTS = Queue(
    "tenants",
    concurrency=2,
    worker_concurrency=3,
    rate=RateLimit(30, per=timedelta(milliseconds=500)),
    priority=True,
    partitioned=True,
)

_ledger: str | None = None
_markers: str | None = None


def record(**event: Any) -> None:
    assert _ledger is not None, "the ledger path is not set"
    append_to_ledger(_ledger, event)


@saga_step("Work")
async def work(ctx: SagaContext, inp: dict[str, Any]) -> str:
    record(ev="enter", saga=ctx.saga_id, t=time.time())
    if inp.get("hold"):
        assert _markers is not None, "the markers folder is not set"
        hold = os.path.join(_markers, f"hold-{ctx.saga_id}")
        while os.path.exists(hold):  # noqa: ASYNC110 (a file another process removes)
            await asyncio.sleep(0.01)
    await asyncio.sleep(inp.get("sleep", 0.0))
    record(ev="exit", saga=ctx.saga_id, t=time.time())
    return ctx.saga_id


@saga_workflow("Job")
async def job(saga: SagaContext, inp: dict[str, Any]) -> str:
    """One step, ``Work``: what the ledger times."""
    done: str = await work(saga, inp)
    return done


async def main_async(args: argparse.Namespace) -> int:
    engine = Engine(args.db, lease=LEASE, poll_interval=POLL)
    engine.register(job, LOAD, TENANTS)
    stop = os.path.join(args.markers, "stop")
    async with engine:
        record(ev="up")
        while not os.path.exists(stop):  # noqa: ASYNC110 (a file the test writes)
            await asyncio.sleep(0.05)
    print(f'{{"pid": {os.getpid()}}}')
    return 0


def main(argv: list[str] | None = None) -> int:
    global _ledger, _markers
    parser = argparse.ArgumentParser(prog="python -m tests.queue_load_app")
    parser.add_argument("mode", choices=["worker"])
    parser.add_argument("db")
    parser.add_argument("ledger")
    parser.add_argument("markers")
    args = parser.parse_args(argv)
    _ledger, _markers = args.ledger, args.markers
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
