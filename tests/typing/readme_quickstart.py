# ruff: noqa: I001  # typing-only: the imports as the README has them
# typing-only: a copy of README.md's Quick start with assert_type lines on its calls. Lines marked
# typing-only: "typing-only" and the assert_type lines are stripped before tests/test_typing.py
# typing-only: compares it with the README. mypy --strict reads it; nothing runs it.
import asyncio
from typing import assert_type

from sagakit import Engine, SagaCompensatedError, SagaContext, TerminalError
from sagakit import saga_step, saga_workflow
from sagakit import SagaStep, SagaWorkflow  # typing-only


async def cancel_order(order: dict[str, str]) -> None:  # the compensation: gets the step's output
    print("  undo: cancel", order["order_id"])


@saga_step("CreateOrder", compensate=cancel_order)
async def create_order(ctx: SagaContext, amount: int) -> dict[str, str]:
    return {"order_id": f"ord-{ctx.saga_id}"}


assert_type(create_order, SagaStep[int, dict[str, str]])


@saga_step("ChargeCard")
async def charge_card(ctx: SagaContext, amount: int) -> str:
    if amount > 100:
        raise TerminalError("card declined")  # no retry: the saga rolls back
    return f"pay-{ctx.step_key}"  # ctx.step_key: the payment API's idempotency key


assert_type(charge_card, SagaStep[int, str])


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, amount: int) -> str:
    await create_order(saga, amount)
    assert_type(await create_order(saga, amount), dict[str, str])
    return await charge_card(saga, amount)


assert_type(checkout, SagaWorkflow[int, str])


async def main() -> None:
    engine = Engine("sqlite:///shop.db")  # the journal: a SQLite file, or PostgreSQL
    engine.register(checkout)
    async with engine:
        print("order-1:", await engine.run(checkout, 40, saga_id="order-1"))
        assert_type(await engine.run(checkout, 40, saga_id="order-1"), str)
        try:
            await engine.run(checkout, 500, saga_id="order-2")
        except SagaCompensatedError as exc:
            print("order-2 rolled back:", exc.cause)


asyncio.run(main())
