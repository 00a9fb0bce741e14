"""Two releases of one application, for the replay check (tests/test_replay_check.py).

``current`` is the code the sagas were recorded with; ``next_release`` changes the order of
Checkout's first two steps and leaves Refund as it is; ``appended`` adds a step after
Checkout's last. Every step body and compensation writes to ``LEDGER``: a replay must leave
it as it was.
"""

from __future__ import annotations

from typing import Any

from sagakit import SagaContext, TerminalError, create_saga_workflow, saga_step, saga_workflow

LEDGER: list[str] = []


async def release(data: Any) -> None:
    LEDGER.append("release")


async def refund_card(data: Any) -> None:
    LEDGER.append("refund card")


@saga_step("Reserve", compensate=release)
async def reserve(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    LEDGER.append("reserve")
    return {"reservation": f"r-{inp['order']}"}


@saga_step("Charge", compensate=refund_card)
async def charge(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    LEDGER.append("charge")
    if inp.get("decline"):
        raise TerminalError("card declined")
    return {"payment": f"p-{inp['order']}"}


@saga_step("Ship")
async def ship(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    LEDGER.append("ship")
    return {"parcel": f"s-{inp['order']}"}


@saga_step("Notify")
async def notify(ctx: SagaContext, inp: dict[str, Any]) -> None:
    LEDGER.append("notify")


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    held = await reserve(saga, inp)
    paid = await charge(saga, inp)
    await saga.wait_for_signal("approve")
    sent = await ship(saga, inp)
    return {**held, **paid, **sent}


async def _checkout_reordered(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    paid = await charge(saga, inp)  # charged first now: recorded sagas reserved first
    held = await reserve(saga, inp)
    await saga.wait_for_signal("approve")
    sent = await ship(saga, inp)
    return {**held, **paid, **sent}


async def _checkout_appended(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    held = await reserve(saga, inp)
    paid = await charge(saga, inp)
    await saga.wait_for_signal("approve")
    sent = await ship(saga, inp)
    await notify(saga, inp)  # new work after the recorded steps
    return {**held, **paid, **sent}


checkout_reordered = create_saga_workflow("Checkout", _checkout_reordered)
checkout_appended = create_saga_workflow("Checkout", _checkout_appended)


@saga_workflow("Refund")
async def refund(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    held: dict[str, Any] = await reserve(saga, inp)
    await saga.wait_for_signal("approve")
    return held


current = [checkout, refund]
next_release = [checkout_reordered, refund]
appended = [checkout_appended, refund]
