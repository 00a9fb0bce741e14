"""What a user's type checker sees of sagakit: every ``assert_type`` here must hold under
``mypy --strict`` (tests/test_typing.py). This module is only type-checked, never run."""

from datetime import timedelta
from typing import Any, assert_type

from pydantic import BaseModel

from sagakit import (
    BaseStep,
    ChildSaga,
    Engine,
    InputContext,
    Queue,
    SagaBuilder,
    SagaContext,
    SagaHandle,
    SagaStep,
    SagaStepOptions,
    SagaWorkflow,
    StepRef,
    StepResponse,
    WorkflowClient,
    create_saga_step,
    create_saga_step_strict,
    create_saga_workflow,
    saga_step,
    saga_step_strict,
    saga_workflow,
)


class Order(BaseModel):
    order_id: str
    amount: int


class Payment(BaseModel):
    payment_id: str


async def cancel_order(data: dict[str, Any], failed: bool) -> None: ...


async def refund(data: dict[str, Any]) -> None: ...


# -- steps: the decorators keep the input type, and unwrap StepResponse[T] to T ------------------


@saga_step("CreateOrder", compensate=cancel_order)
async def create_order(ctx: SagaContext, amount: int) -> StepResponse[Order]:
    return StepResponse(Order(order_id=f"ord-{ctx.saga_id}", amount=amount))


@saga_step_strict("ChargeCard", compensate=refund, timeout=timedelta(seconds=10))
async def charge_card(ctx: SagaContext, order: Order) -> Payment:
    return Payment(payment_id=f"pay-{ctx.step_key}")


@saga_step("Notify")
async def notify(ctx: SagaContext, inp: dict[str, Any]) -> None:
    return None


@saga_step("MaybeFail")
async def maybe_fail(ctx: SagaContext, inp: str) -> StepResponse[list[str]]:
    if not inp:
        return StepResponse.permanent_failure("empty input")
    return StepResponse([inp], compensation_data=None)


assert_type(create_order, SagaStep[int, Order])
assert_type(charge_card, SagaStep[Order, Payment])
assert_type(notify, SagaStep[dict[str, Any], None])
assert_type(maybe_fail, SagaStep[str, list[str]])


# -- the function forms ---------------------------------------------------------------------------


async def reserve_fn(ctx: SagaContext, sku: str) -> StepResponse[dict[str, str]]:
    return StepResponse({"reservation_id": f"res-{sku}"})


async def ship_fn(ctx: SagaContext, order: Order) -> str:
    return f"ship-{order.order_id}"


reserve = create_saga_step("Reserve", reserve_fn)
ship = create_saga_step_strict(
    "Ship", ship_fn, refund, SagaStepOptions(timeout=timedelta(seconds=5))
)
assert_type(reserve, SagaStep[str, dict[str, str]])
assert_type(ship, SagaStep[Order, str])


# -- workflows: input and output types; steps, run_as_step, call and children inside -------------


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, amount: int) -> Payment:
    order = await create_order(saga, amount)
    assert_type(order, Order)
    assert_type(await charge_card(saga, order), Payment)
    assert_type(await notify(saga, {"order_id": order.order_id}), None)
    assert_type(await reserve(saga, "sku-1"), dict[str, str])
    both = await saga.gather(ship(saga, order), reserve(saga, "sku-2"))
    assert_type(both, list[Any])
    return await charge_card(saga, order)


assert_type(checkout, SagaWorkflow[int, Payment])


async def refund_all_fn(saga: SagaContext, payments: list[str]) -> int:
    return len(payments)


refund_all = create_saga_workflow("RefundAll", refund_all_fn)
assert_type(refund_all, SagaWorkflow[list[str], int])


@saga_workflow("Parent")
async def parent(saga: SagaContext, inp: dict[str, Any]) -> str:
    inline = await checkout.run_as_step(saga, 40)
    assert_type(inline, Payment)
    called = await saga.call(checkout, 40)
    assert_type(called, Payment)
    child = await saga.start_child(refund_all, ["pay-1"])
    assert_type(child, ChildSaga[int])
    assert_type(await child.result(timeout=timedelta(minutes=5)), int)
    return called.payment_id


# -- the engine: run, start, enqueue, handle, client ----------------------------------------------


async def outside(engine: Engine) -> None:
    assert_type(await engine.run(checkout, 40, saga_id="order-1"), Payment)
    assert_type(await engine.run(checkout, {"amount": 40}), Payment)
    assert_type(await engine.run("Checkout", 40), Any)

    handle = await engine.start(checkout, 40, saga_id="order-2")
    assert_type(handle, SagaHandle[Payment])
    assert_type(await handle.result(timeout=30), Payment)
    assert_type(await engine.start("Checkout", 40), SagaHandle[Any])

    queued = await engine.enqueue(Queue("payments", concurrency=2), checkout, 40)
    assert_type(queued, SagaHandle[Payment])
    assert_type(await engine.enqueue("payments", "Checkout", 40), SagaHandle[Any])

    assert_type(engine.handle("order-2"), SagaHandle[Any])
    assert_type(engine.handle("order-2", checkout), SagaHandle[Payment])
    assert_type(await engine.handle("order-2", checkout).result(), Payment)

    client = engine.client(checkout)
    assert_type(client, WorkflowClient[int, Payment])
    assert_type(await client.run(40), Payment)
    assert_type(await client.start(40), SagaHandle[Payment])
    assert_type(client.handle("order-2"), SagaHandle[Payment])


def kept_by_name(handle: SagaHandle) -> SagaHandle[Any]:
    """A bare SagaHandle (as code written before it was generic has it) is a SagaHandle[Any]."""
    return handle


# -- declarative steps: BaseStep[In, Out], typed references and input maps ------------------------


class OrderRequest(BaseModel):
    customer_id: str
    amount: int


class ChargeRequest(BaseModel):
    order_id: str
    amount: int


class CreateOrder(BaseStep[OrderRequest, Order]):
    async def execute(self, inp: OrderRequest) -> Order:
        return Order(order_id=f"ord-{inp.customer_id}", amount=inp.amount)

    async def compensate(self, inp: OrderRequest, out: Order) -> None: ...


class ChargeCard(BaseStep[ChargeRequest, Payment]):
    async def execute(self, inp: ChargeRequest) -> Payment:
        return Payment(payment_id=f"pay-{inp.order_id}")


def first_input(ctx: InputContext) -> dict[str, Any]:
    return dict(ctx.initial_data)


builder = SagaBuilder()
order_ref = builder.add_step(step=CreateOrder(), input_map=first_input)
assert_type(order_ref, StepRef[Order])
charge_ref = builder.add_step(
    step=ChargeCard(),
    depends_on=order_ref,
    # checked against the dependency's output (an Order) and the step's input
    input_map=lambda order: ChargeRequest(order_id=order.order_id, amount=order.amount),
)
assert_type(charge_ref, StepRef[Payment])
assert_type(builder.add_wait("approved"), StepRef[Any])
assert_type(StepRef("CreateOrder"), StepRef[Any])
