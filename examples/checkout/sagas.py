"""The shop's checkout saga. The web app (app.py) imports it to start sagas; the worker process
runs them: ``sagakit worker --app sagas:WORKFLOWS``.

An order reserves stock, charges the card, then stays open for a cancellation window: a
``cancel`` signal within it rolls the order back (the card is refunded, the stock released);
after it, the order ships. A declined card rolls back what was done before it.

The warehouse and the payment provider are stand-ins that print what they do; a real one gets
``ctx.step_key`` as its idempotency key, so that a step run again after a crash (at-least-once
execution) does not reserve or charge twice.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from sagakit import (
    SagaContext,
    SagaTimeoutError,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)

#: the signal that cancels an order within its window (app.py sends it)
CANCEL = "cancel"
#: the saga state key the app reads to show where an order is
STAGE = "stage"
#: the payment token the stand-in provider declines
DECLINED_CARD = "tok_declined"


class Item(BaseModel):
    sku: str = Field(min_length=1)
    quantity: int = Field(gt=0)


class Order(BaseModel):
    """The saga's input: what the customer ordered, and the window the shop allows for
    cancelling (set by the app, not the customer)."""

    customer_id: str = Field(min_length=1)
    items: list[Item] = Field(min_length=1)
    card: str = Field(min_length=1, description="a payment token")
    amount_cents: int = Field(gt=0)
    cancel_window_seconds: float = Field(default=60.0, ge=0)


class Receipt(BaseModel):
    """The saga's output once the order shipped."""

    reservation_id: str
    payment_id: str
    shipment_id: str


def _say(what: str) -> None:
    print(what, flush=True)


async def release_stock(data: dict[str, Any], failed: bool) -> None:
    # hybrid step: registered before the reservation runs, so it may undo a half-done one
    _say(f"warehouse: release reservation {data['reservation_id']}")


@saga_step("ReserveStock", compensate=release_stock)
async def reserve_stock(ctx: SagaContext, order: Order) -> dict[str, Any]:
    reservation_id = f"res-{ctx.step_key}"
    skus = ", ".join(f"{i.quantity} x {i.sku}" for i in order.items)
    _say(f"warehouse: reserve {skus} as {reservation_id}")
    return {"reservation_id": reservation_id}


async def refund(data: dict[str, Any]) -> None:
    _say(f"payments: refund {data['payment_id']} ({data['amount_cents']} cents)")


@saga_step_strict("ChargeCard", compensate=refund)
async def charge_card(ctx: SagaContext, order: Order) -> dict[str, Any]:
    if order.card == DECLINED_CARD:
        raise TerminalError("the card was declined")  # no retry: the order rolls back
    payment_id = f"pay-{ctx.step_key}"
    _say(f"payments: charge {order.amount_cents} cents as {payment_id}")
    return {"payment_id": payment_id, "amount_cents": order.amount_cents}


@saga_step("Ship")
async def ship(ctx: SagaContext, reservation: dict[str, Any]) -> dict[str, Any]:
    shipment_id = f"ship-{ctx.step_key}"
    _say(f"warehouse: ship {reservation['reservation_id']} as {shipment_id}")
    return {"shipment_id": shipment_id}


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, order: Order) -> Receipt:
    reservation = await reserve_stock(saga, order)
    payment = await charge_card(saga, order)
    saga.set_state(STAGE, "paid: can be cancelled")
    try:
        # durable: the saga is suspended meanwhile, and a cancel sent earlier is kept for it
        request = await saga.wait_for_signal(CANCEL, timeout=order.cancel_window_seconds)
    except SagaTimeoutError:
        pass  # nobody cancelled in time: the order ships
    else:
        reason = (request or {}).get("reason") or "no reason given"
        saga.set_state(STAGE, "cancelled: rolling back")
        raise TerminalError(f"cancelled by the customer: {reason}")
    saga.set_state(STAGE, "shipping")
    shipment = await ship(saga, reservation)
    saga.set_state(STAGE, "shipped")
    return Receipt(
        reservation_id=reservation["reservation_id"],
        payment_id=payment["payment_id"],
        shipment_id=shipment["shipment_id"],
    )


#: what ``sagakit worker --app sagas:WORKFLOWS`` runs
WORKFLOWS = [checkout]
