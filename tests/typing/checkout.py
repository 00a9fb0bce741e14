# ruff: noqa: I001  # typing-only: the imports as the page has them
# typing-only: a copy of the checkout saga of docs/getting-started.md (the README's former Quick
# typing-only: start) with assert_type lines on its calls. Lines marked "typing-only" and the
# typing-only: assert_type lines are stripped before tests/test_typing.py compares it with the
# typing-only: page. mypy --strict reads it; nothing runs it.
import asyncio
from typing import Any, assert_type

from pydantic import BaseModel

from sagakit import (
    Engine,
    SagaCompensatedError,
    SagaContext,
    StepResponse,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)
from sagakit import SagaStep, SagaWorkflow  # typing-only


class CheckoutInput(BaseModel):
    customer_id: str
    amount: int


class CheckoutResult(BaseModel):
    order_id: str
    payment_id: str


# Compensations get the step's compensation data; `failed` says whether the step itself failed.
async def cancel_order(data: dict[str, Any], failed: bool) -> None:
    print(f"  undo: cancel order {data.get('order_id', '(none was created)')}")


async def refund(data: dict[str, Any]) -> None:
    print(f"  undo: refund payment {data['payment_id']}")


# Hybrid: the compensation is registered before the step runs, so it also runs if the step fails.
@saga_step("CreateOrder", compensate=cancel_order)
async def create_order(ctx: SagaContext, inp: CheckoutInput) -> StepResponse[dict[str, Any]]:
    order_id = f"ord-{ctx.saga_id}"  # a real service would get ctx.step_key as idempotency key
    print(f"  create order {order_id} for {inp.customer_id}")
    return StepResponse({"order_id": order_id})


assert_type(create_order, SagaStep[CheckoutInput, dict[str, Any]])


# Strict: the compensation is registered only once the step succeeded.
@saga_step_strict("ChargeCard", compensate=refund)
async def charge_card(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    if inp["amount"] > 100:
        raise TerminalError("card declined")  # no retry: the saga rolls back
    print(f"  charge {inp['amount']} (idempotency key {ctx.step_key})")
    return {"payment_id": f"pay-{ctx.step_key}"}


assert_type(charge_card, SagaStep[dict[str, Any], dict[str, Any]])


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, inp: CheckoutInput) -> CheckoutResult:
    order = await create_order(saga, inp)
    assert_type(order, dict[str, Any])
    payment = await charge_card(saga, {"order_id": order["order_id"], "amount": inp.amount})
    assert_type(payment, dict[str, Any])
    return CheckoutResult(order_id=order["order_id"], payment_id=payment["payment_id"])


assert_type(checkout, SagaWorkflow[CheckoutInput, CheckoutResult])


async def main() -> None:
    engine = Engine()  # the SQLite file ./sagakit.db
    engine.register(checkout)
    async with engine:
        # fmt: off
        result = await engine.run(
            checkout, {"customer_id": "c1", "amount": 40}, saga_id="order-1"
        )
        # fmt: on
        print("order-1 completed:", result)
        assert_type(result, CheckoutResult)
        try:
            await engine.run(checkout, {"customer_id": "c2", "amount": 500}, saga_id="order-2")
        except SagaCompensatedError as exc:
            print("order-2 rolled back:", exc.cause)


asyncio.run(main())
