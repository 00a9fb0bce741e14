"""Workflows for the dashboard tests (tests/test_dashboard.py, tests/test_dashboard_browser.py).

Not a test module: the browser test runs these workflows in a real worker process
(``sagakit worker --app tests.dashboard_app:WORKFLOWS``), the HTTP tests in an engine of their
own. One workflow, ``Checkout``, whose input decides how it goes:

* ``{"order": "1"}``: CreateOrder, ReserveStock, ChargeCard, ShipOrder; completes.
* ``"decline": true``: ChargeCard fails for good (a TerminalError); the saga is compensated.
* ``"flag": PATH``: ChargeCard fails until the file PATH exists; with its quick retry policy
  it runs out of attempts within a fraction of a second and, being ``on_exhausted="park"``,
  parks the saga for an operator.
* ``"flaky_stock": true``: the first attempt of ReserveStock fails (a retry shows on the
  timeline).
* ``"fraud_check": SECONDS``: a durable sleep before ChargeCard (a wait on the timeline).
* ``"stuck_release": true``: the compensation of ReserveStock fails for good, so that a
  rollback ends FAILED.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from sagakit import (
    Engine,
    RetryPolicy,
    SagaContext,
    StepResponse,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)

#: three attempts 50 ms apart: a failing step gives up (and parks) within a fraction of a second
QUICK = RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=50), backoff_factor=1)


async def cancel_order(data: dict[str, Any], failed: bool = False) -> None:
    """Nothing to undo outside the journal: the compensation's entry is what the tests see."""


async def release_stock(data: dict[str, Any]) -> None:
    """See cancel_order; fails when the input says so."""
    if data.get("stuck_release"):
        raise RuntimeError("warehouse API refused to release the reservation (HTTP 409)")


async def refund(data: dict[str, Any]) -> None:
    """See cancel_order."""


@saga_step("CreateOrder", compensate=cancel_order)
async def create_order(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": f"ord-{inp['order']}", "customer": inp.get("customer")}


@saga_step_strict("ReserveStock", compensate=release_stock, retry=QUICK)
async def reserve_stock(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[dict[str, Any]]:
    if inp.get("flaky_stock") and ctx.attempt == 1:
        raise ConnectionError("stock service timed out")
    reservation = {"reservation": f"res-{inp['order']}", "items": inp.get("items", 1)}
    # the release gets the reservation and whether this test wants the release to fail
    return StepResponse(
        reservation, {**reservation, "stuck_release": bool(inp.get("stuck_release"))}
    )


@saga_step_strict("ChargeCard", compensate=refund, retry=QUICK, on_exhausted="park")
async def charge_card(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    if inp.get("decline"):
        raise TerminalError("card declined by the issuer")
    flag = inp.get("flag")
    if flag and not os.path.exists(flag):
        raise RuntimeError("payment provider unavailable (HTTP 503)")
    return {"payment_id": f"pay-{inp['order']}", "amount": inp.get("amount", 0)}


@saga_step("ShipOrder")
async def ship_order(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    return {"tracking": f"trk-{inp['order']}"}


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    order = await create_order(saga, inp)
    await reserve_stock(saga, inp)
    if inp.get("fraud_check"):
        await saga.sleep(float(inp["fraud_check"]))
    payment = await charge_card(saga, inp)
    shipment = await ship_order(saga, inp)
    return {**order, **payment, **shipment}


WORKFLOWS = [checkout]


async def start(url: str, sagas: dict[str, dict[str, Any]]) -> None:
    """Write the sagas (id → input) for a worker to run, from a client engine."""
    engine = Engine(url, worker=False)
    engine.register(*WORKFLOWS)
    async with engine:
        for saga_id, inp in sagas.items():
            await engine.start(checkout, inp, saga_id=saga_id, run_here=False)
