"""Mistakes a user's type checker catches: ``mypy --strict`` must report exactly one error on
each line marked ``# E: <code>``, with that error code, and nothing else (tests/test_typing.py).
This module is only type-checked, never run."""

from typing import Any

from pydantic import BaseModel

from sagakit import (
    BaseStep,
    Engine,
    SagaBuilder,
    SagaContext,
    StepResponse,
    saga_step,
    saga_workflow,
)


class Order(BaseModel):
    order_id: str
    amount: int


class ChargeRequest(BaseModel):
    order_id: str
    amount: int


class Payment(BaseModel):
    payment_id: str


@saga_step("CreateOrder")
async def create_order(ctx: SagaContext, amount: int) -> StepResponse[Order]:
    return StepResponse(Order(order_id="o", amount=amount))


@saga_step("ChargeCard")
async def charge_card(ctx: SagaContext, order: Order) -> Payment:
    return Payment(payment_id="p")


@saga_step("NotAsync")  # E: arg-type
def not_async(ctx: SagaContext, inp: int) -> int:
    return inp


@saga_step("NoInput")  # E: arg-type
async def no_input(ctx: SagaContext) -> int:
    return 1


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, amount: int) -> Payment:
    await create_order(saga, "forty")  # E: arg-type
    order = await create_order(saga, amount)
    # a step is called with (ctx, inp) only: whatever else its function takes is not passed
    await charge_card(saga, order, "extra")  # E: call-arg
    await charge_card(saga, order=order)  # E: call-arg
    wrong: str = await create_order(saga, amount)  # E: assignment
    print(wrong)
    return await charge_card(saga, order)


@saga_workflow("Refunds")
async def refunds(saga: SagaContext, ids: list[str]) -> int:
    return len(ids)


@saga_workflow("Parent")
async def parent(saga: SagaContext, inp: dict[str, Any]) -> str:
    payment = await saga.call(checkout, "forty")  # E: misc
    child = await saga.start_child(refunds, ["p-1"])
    count: str = await child.result()  # E: assignment
    inline: int = await checkout.run_as_step(saga, 40)  # E: assignment
    print(payment, count, inline)
    return "done"


async def outside(engine: Engine) -> None:
    # mypy: "Cannot infer value of type parameter InT": the input fits neither the workflow's
    # input type nor a dict
    await engine.run(checkout, "forty")  # E: misc
    text: str = await engine.run(checkout, 40)  # E: arg-type
    handle = await engine.start(checkout, 40)
    print((await handle.result()).order_id)  # E: attr-defined
    typed = engine.handle("order-1", checkout)
    print((await typed.result()).order_id)  # E: attr-defined
    print(text)


class CreateOrder(BaseStep[ChargeRequest, Order]):
    async def execute(self, inp: ChargeRequest) -> Order:
        return Order(order_id=inp.order_id, amount=inp.amount)


class ChargeCard(BaseStep[ChargeRequest, Payment]):
    async def execute(self, inp: ChargeRequest) -> Payment:
        return Payment(payment_id="p")


class NotAModel(BaseStep[int, Payment]):  # E: type-var
    async def execute(self, inp: int) -> Payment:
        return Payment(payment_id="p")


# an input_map is checked against the output of depends_on (an Order) and the step's input
b = SagaBuilder()
ref = b.add_step(step=CreateOrder())
b.add_step(step=ChargeCard(), depends_on=ref, input_map=lambda o: o.total)  # E: attr-defined
b.add_step(step=ChargeCard(), depends_on=ref, input_map=lambda o: o)  # E: arg-type, return-value
