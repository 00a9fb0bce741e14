"""A builder saga that waits for an event, run by real processes that the tests SIGKILL
(tests/test_builder_order.py).

Not a test module: the tests run it as a subprocess::

    python -m tests.builder_wait_app start  DB_URL LEDGER SAGA_ID
    python -m tests.builder_wait_app finish DB_URL LEDGER SAGA_ID signal|notify

``start`` starts one ``approval_v1`` saga (step Reserve, then ``add_wait("approved")``, then
step Ship, then step Confirm), waits until it is suspended in its wait, appends
``{"ev": "suspended", "saga", "token"}`` to LEDGER and idles until it is killed. ``finish``
opens another engine on the same database, delivers the approval (``engine.signal(saga_id,
"approved", ...)``, or ``engine.notify(saga_id, snapshot.wait_token, ...)``), waits for the saga
and prints one JSON line: ``{"status", "output", "error", "notified"}``.

Each step execution and compensation appends ``{"ev": "do"|"undo", "step", "saga", "pid"}``
(one fsynced write, so it survives the SIGKILL).
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

from pydantic import BaseModel

from sagakit import BaseStep, Engine, InputContext, SagaBuilder, SagaDefinition, SagaStatus
from tests.processes import WAIT, append_to_ledger, saga_summary

NAME = "approval_v1"
POLL = timedelta(milliseconds=50)
LEASE = timedelta(seconds=5)

#: the ledger of this process (set by main)
LEDGER: list[str] = []


def record(ev: str, step: str, saga: str) -> None:
    append_to_ledger(LEDGER[0], {"ev": ev, "step": step, "saga": saga})


class OrderIn(BaseModel):
    order_id: str


class Reserved(BaseModel):
    reservation_id: str


class ShipIn(BaseModel):
    reservation_id: str
    approved_by: str


class Shipped(BaseModel):
    tracking: str


class ConfirmIn(BaseModel):
    text: str


class Confirmed(BaseModel):
    text: str


class Reserve(BaseStep[OrderIn, Reserved]):
    async def execute(self, inp: OrderIn) -> Reserved:
        record("do", "Reserve", self.saga_context.saga_id)
        return Reserved(reservation_id=f"res-{inp.order_id}")

    async def compensate(self, inp: OrderIn, out: Reserved) -> None:
        record("undo", "Reserve", out.reservation_id)


class Ship(BaseStep[ShipIn, Shipped]):
    async def execute(self, inp: ShipIn) -> Shipped:
        record("do", "Ship", self.saga_context.saga_id)
        return Shipped(tracking=f"{inp.reservation_id}/{inp.approved_by}")


class Confirm(BaseStep[ConfirmIn, Confirmed]):
    async def execute(self, inp: ConfirmIn) -> Confirmed:
        record("do", "Confirm", self.saga_context.saga_id)
        return Confirmed(text=inp.text)


def ship_input(approval: Any, ctx: InputContext) -> ShipIn:
    # the wait's output is the event's payload; ctx.outputs has every earlier step's model
    reserved: Reserved = ctx.outputs["Reserve"]
    return ShipIn(reservation_id=reserved.reservation_id, approved_by=approval["by"])


def confirm_input(ctx: InputContext) -> ConfirmIn:
    events = ", ".join(f"{e['name']}={e['payload']['by']}" for e in ctx.events)
    return ConfirmIn(text=f"{ctx.outputs['Ship'].tracking} after {events}")


def approval_saga() -> SagaDefinition:
    builder = SagaBuilder()
    builder.add_step(step=Reserve())
    approved = builder.add_wait("approved")
    builder.add_step(step=Ship(), depends_on=approved, input_map=ship_input)
    builder.add_step(step=Confirm(), input_map=confirm_input)
    return builder.build()


def make(url: str) -> Engine:
    engine = Engine(url, lease=LEASE, poll_interval=POLL)
    engine.register(NAME, approval_saga())
    return engine


async def start(url: str, saga_id: str) -> int:
    async with make(url) as engine:
        await engine.start(NAME, {"order_id": saga_id}, saga_id=saga_id)
        deadline = time.monotonic() + WAIT
        while True:
            snap = await engine.get(saga_id)
            if snap.status == SagaStatus.SUSPENDED and snap.wait_token is not None:
                break
            if time.monotonic() > deadline:
                print(json.dumps({"timeout": str(snap.status)}), flush=True)
                return 3
            await asyncio.sleep(0.02)
        append_to_ledger(LEDGER[0], {"ev": "suspended", "saga": saga_id, "token": snap.wait_token})
        await asyncio.Event().wait()  # until the test kills this process
    return 0  # pragma: no cover


async def finish(url: str, saga_id: str, how: str) -> int:
    async with make(url) as engine:
        notified = None
        if how == "signal":
            await engine.signal(saga_id, "approved", {"by": "signal"})
        else:
            snap = await engine.get(saga_id)
            assert snap.wait_token is not None, snap
            notified = await engine.notify(saga_id, snap.wait_token, {"by": "token"})
        try:
            await engine.handle(saga_id).result(timeout=WAIT)
        except Exception as exc:  # the summary says what happened
            logging.getLogger(__name__).warning("saga ended with %r", exc)
        summary = await saga_summary(engine, saga_id)
        summary["notified"] = notified
        print(json.dumps(summary), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["start", "finish"])
    parser.add_argument("url")
    parser.add_argument("ledger")
    parser.add_argument("saga_id")
    parser.add_argument("how", nargs="?", choices=["signal", "notify"], default="signal")
    args = parser.parse_args(argv)
    LEDGER.append(args.ledger)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.mode == "start":
        return asyncio.run(start(args.url, args.saga_id))
    return asyncio.run(finish(args.url, args.saga_id, args.how))


if __name__ == "__main__":
    sys.exit(main())
