"""restate-saga's (Python) README examples, ported to sagakit's native API (``from sagakit
import ...``), as a user moving off restate-saga without the compat module writes them.

The compat port (tests/test_compat_restate_saga.py) runs the README's code unchanged but for
its imports; this one is the same examples in sagakit's own spelling: a step gets sagakit's
``SagaContext`` (``ctx.step_key``, ``ctx.attempt``), a long workflow's main is ``(saga, inp)``
and waits on ``saga.promise(...)``, a handler gets a ``HandlerContext``, an object handler an
``ObjectContext``, and ``TerminalError`` is sagakit's. The services the README leaves undefined
are a ledger (tests/seed_ledger.py), and every test asserts on it: the order of the effects,
each compensation exactly once, and what did not run. Every test runs on SQLite and on
PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    CompensationFailedError,
    Engine,
    HandlerContext,
    ObjectContext,
    RetryPolicy,
    SagaCompensatedError,
    SagaContext,
    SagaNotFoundError,
    SagaStatus,
    SagaStepOptions,
    SagaValidationError,
    SagaWorkflowOptions,
    SharedObjectContext,
    StepResponse,
    TerminalError,
    create_saga_long_workflow,
    create_saga_module,
    create_saga_step,
    create_saga_step_strict,
    create_saga_virtual_object,
    create_saga_workflow,
    register_terminal_errors,
    run_nested_saga,
    saga_step,
    saga_step_strict,
    saga_workflow,
    set_global_error_mapper,
    unregister_terminal_errors,
)
from tests.conftest import fast_retry, make_engine, make_store_url
from tests.seed_ledger import Declined, Ledger
from tests.waiting import suspended, within


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_store_url(request.param, tmp_path, request)


@pytest.fixture
async def engine(url: str) -> AsyncIterator[Engine]:
    async with make_engine(url) as started:
        yield started


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def cause(exc: pytest.ExceptionInfo[SagaCompensatedError]) -> tuple[str, str]:
    return exc.value.cause_type, exc.value.cause_message


# -- Quick Start ------------------------------------------------------------------------------


def quick_start(ledger: Ledger) -> Any:
    async def cancel_order(data: dict[str, Any]) -> None:
        ledger.act("order.cancel", data["order_id"])

    @saga_step_strict("CreateOrder", compensate=cancel_order)
    async def create_order(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[Any]:
        order_id = ledger.act("order.create", inp["customer_id"])
        return StepResponse(output={"order_id": order_id})

    async def refund_payment(data: dict[str, Any]) -> None:
        ledger.act("payment.refund", data["payment_id"])

    @saga_step_strict("ProcessPayment", compensate=refund_payment)
    async def process_payment(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[Any]:
        payment_id = ledger.act("payment.charge", inp["order_id"])
        return StepResponse(output={"payment_id": payment_id})

    @saga_workflow("CheckoutWorkflow")
    async def checkout_workflow(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        # if process_payment fails, create_order's compensation runs
        order = await create_order(saga, inp)
        payment = await process_payment(saga, {"order_id": order["order_id"]})
        return {"order_id": order["order_id"], "payment_id": payment["payment_id"]}

    return checkout_workflow


async def test_quick_start(engine: Engine, ledger: Ledger) -> None:
    checkout_workflow = quick_start(ledger)
    result = await engine.run(checkout_workflow, {"customer_id": "cust_123"}, saga_id="o1")
    assert result == {"order_id": "order-1", "payment_id": "payment-2"}
    assert ledger.entries == ["order.create(cust_123)", "payment.charge(order-1)"]

    ledger.fail_next("payment.charge", TerminalError("card declined"))
    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(checkout_workflow, {"customer_id": "cust_456"}, saga_id="o2")
    assert cause(failed) == ("TerminalError", "card declined")
    assert ledger.entries[2:] == [
        "order.create(cust_456)",
        "payment.charge(order-3)",
        "order.cancel(order-3)",  # once; the payment that failed is not refunded
    ]
    assert (await engine.get("o2")).status == SagaStatus.COMPENSATED


# -- Step types: hybrid and strict ------------------------------------------------------------


async def test_hybrid_step_is_compensated_even_when_it_fails_midway(
    engine: Engine, ledger: Ledger
) -> None:
    seen: list[tuple[Any, bool]] = []

    async def cancel_order(data: dict[str, Any], failed: bool = False) -> None:
        seen.append((data, failed))  # `failed`: the forward action did not complete
        ledger.act("order.cancel", data.get("order_id"))

    @saga_step("CreateOrder", compensate=cancel_order)
    async def create_order(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[Any]:
        order_id = ledger.act("order.create", inp["order_id"])
        return StepResponse(output={"order_id": order_id}, compensation_data={"order_id": order_id})

    @saga_workflow("Hybrid")
    async def hybrid(saga: SagaContext, inp: dict[str, Any]) -> Any:
        order = await create_order(saga, inp)
        if inp.get("then_fail"):
            raise TerminalError("a later step failed")
        return order

    # the step fails after the order service acted: its compensation runs, with failed=True
    ledger.fail_next("order.create", TerminalError("db down"))
    with pytest.raises(SagaCompensatedError):
        await engine.run(hybrid, {"order_id": "o-9"}, saga_id="h1")
    # it succeeded, and a later failure undoes it, with failed=False and its compensation data
    with pytest.raises(SagaCompensatedError):
        await engine.run(hybrid, {"order_id": "o-8", "then_fail": True}, saga_id="h2")
    assert seen == [({"order_id": "o-9"}, True), ({"order_id": "order-1"}, False)]
    assert ledger.entries == [
        "order.create(o-9)",
        "order.cancel(o-9)",
        "order.create(o-8)",
        "order.cancel(order-1)",
    ]


async def test_strict_step_is_compensated_only_once_it_succeeded(
    engine: Engine, ledger: Ledger
) -> None:
    async def cancel_order(data: dict[str, Any]) -> None:
        ledger.act("order.cancel", data["order_id"])

    @saga_step_strict("CreateOrder", compensate=cancel_order)
    async def create_order(ctx: SagaContext, inp: str) -> StepResponse[Any]:
        order_id = ledger.act("order.create", inp)
        return StepResponse(output={"order_id": order_id}, compensation_data={"order_id": order_id})

    @saga_workflow("Strict")
    async def strict(saga: SagaContext, inp: str) -> Any:
        order = await create_order(saga, inp)
        if inp == "then-fail":
            raise TerminalError("a later step failed")
        return order

    ledger.fail_next("order.create", TerminalError("refused"))
    with pytest.raises(SagaCompensatedError):
        await engine.run(strict, "c1", saga_id="s1")
    assert ledger.undone() == []  # a strict step that failed is not undone
    with pytest.raises(SagaCompensatedError):
        await engine.run(strict, "then-fail", saga_id="s2")
    assert ledger.undone() == ["order.cancel(order-1)"]


# -- StepResponse, steps without compensation -----------------------------------------------------


async def test_step_response_forms(engine: Engine, ledger: Ledger) -> None:
    got: dict[str, Any] = {}

    def undo(name: str) -> Any:
        async def compensate(data: Any, failed: bool = False) -> None:
            got[name] = (data, failed)
            ledger.act(f"{name}.void", data)

        return compensate

    @saga_step_strict("Default", compensate=undo("default"))
    async def default(ctx: SagaContext, inp: Any) -> StepResponse[Any]:
        # compensation_data defaults to output when omitted
        return StepResponse(output={"order_id": "123"})

    @saga_step_strict("Explicit", compensate=undo("explicit"))
    async def explicit(ctx: SagaContext, inp: Any) -> StepResponse[Any]:
        return StepResponse(
            output={"order_id": "123"}, compensation_data={"order_id": "123", "extra": True}
        )

    @saga_step_strict("Nothing", compensate=undo("nothing"))
    async def nothing(ctx: SagaContext, inp: Any) -> StepResponse[Any]:
        # no compensation data (e.g. a validation step): nothing to undo
        return StepResponse(output={"valid": True}, compensation_data=None)

    @saga_step("Authorize", compensate=undo("authorize"))
    async def authorize(ctx: SagaContext, inp: Any) -> StepResponse[Any]:
        ledger.act("payment.authorize", inp)
        # permanent failure: no retry, compensation with the data given
        return StepResponse.permanent_failure("Payment declined", {"auth_id": "abc"})

    @saga_workflow("Forms")
    async def forms(saga: SagaContext, inp: Any) -> Any:
        outputs = [await default(saga, inp), await explicit(saga, inp), await nothing(saga, inp)]
        await authorize(saga, inp)
        return outputs

    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(forms, 40, saga_id="f1")
    assert cause(failed) == ("PermanentFailure", "Payment declined")
    assert got == {
        "authorize": ({"auth_id": "abc"}, True),
        "explicit": ({"order_id": "123", "extra": True}, False),
        "default": ({"order_id": "123"}, False),
    }
    assert ledger.entries == [
        "payment.authorize(40)",
        "authorize.void({'auth_id': 'abc'})",
        "explicit.void({'order_id': '123', 'extra': True})",
        "default.void({'order_id': '123'})",
    ]
    assert ledger.count("payment.authorize(40)") == 1  # a permanent failure is not retried


async def test_step_without_compensation(engine: Engine, ledger: Ledger) -> None:
    @saga_step("ValidateInput")
    async def validate_input(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[Any]:
        if not inp.get("email"):
            return StepResponse.permanent_failure("Email required", None)
        return StepResponse(output={"valid": True}, compensation_data=None)

    async def cancel_order(data: dict[str, Any]) -> None:
        ledger.act("order.cancel", data["order_id"])

    @saga_step_strict("CreateOrder", compensate=cancel_order)
    async def create_order(ctx: SagaContext, inp: str) -> dict[str, Any]:
        return {"order_id": ledger.act("order.create", inp)}

    @saga_workflow("Register")
    async def register(saga: SagaContext, inp: dict[str, Any]) -> Any:
        await create_order(saga, inp["email"] or "anonymous")
        return await validate_input(saga, inp)

    assert await engine.run(register, {"email": "a@b.c"}, saga_id="v1") == {"valid": True}
    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(register, {"email": ""}, saga_id="v2")
    assert failed.value.cause_message == "Email required"
    assert ledger.entries == [
        "order.create(a@b.c)",
        "order.create(anonymous)",
        "order.cancel(order-2)",
    ]


# -- Function API -------------------------------------------------------------------------------


async def test_function_api(engine: Engine, ledger: Ledger) -> None:
    async def create_order_handler(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[Any]:
        return StepResponse(output={"order_id": ledger.act("order.create", inp["c"])})

    async def cancel_order(data: dict[str, Any], failed: bool = False) -> None:
        ledger.act("order.cancel", data["order_id"])

    async def ship_handler(ctx: SagaContext, order_id: str) -> str:
        return ledger.act("shipping.ship", order_id)

    create_order = create_saga_step(
        name="CreateOrder",
        run=create_order_handler,
        compensate=cancel_order,
    )
    ship = create_saga_step_strict(name="Ship", run=ship_handler, options=fast_retry_options(1))

    async def checkout_handler(saga: SagaContext, inp: dict[str, Any]) -> Any:
        order = await create_order(saga, inp)
        await ship(saga, order["order_id"])
        return order

    checkout = create_saga_workflow(
        name="CheckoutWorkflow",
        handler=checkout_handler,
    )

    assert await engine.run(checkout, {"c": "c1"}, saga_id="f1") == {"order_id": "order-1"}
    ledger.fail_next("shipping.ship")
    with pytest.raises(SagaCompensatedError):
        await engine.run(checkout, {"c": "c2"}, saga_id="f2")
    assert ledger.entries == [
        "order.create(c1)",
        "shipping.ship(order-1)",
        "order.create(c2)",
        "shipping.ship(order-3)",
        "order.cancel(order-3)",
    ]


def fast_retry_options(attempts: int) -> SagaStepOptions:
    return SagaStepOptions(retry=fast_retry(attempts))


# -- Global error registry, error mappers -------------------------------------------------------


class ValidationError(Exception): ...


class NotFoundError(Exception): ...


class BusinessError(Exception): ...


def one_step_workflow(name: str, step: Any, ledger: Ledger) -> Any:
    """A workflow that creates an order (undone by a rollback) and then runs ``step``."""

    async def cancel(data: Any) -> None:
        ledger.act("order.cancel", data)

    @saga_step_strict("Before", compensate=cancel)
    async def before(ctx: SagaContext, inp: Any) -> Any:
        return ledger.act("order.create", inp)

    @saga_workflow(name)
    async def workflow(saga: SagaContext, inp: Any) -> Any:
        await before(saga, inp)
        return await step(saga, inp)

    return workflow


async def test_registered_terminal_errors_compensate_without_retry(
    engine: Engine, ledger: Ledger
) -> None:
    attempts: list[int] = []
    register_terminal_errors([ValidationError, NotFoundError])

    @saga_step("MyStep", retry=fast_retry(3))
    async def my_step(ctx: SagaContext, inp: Any) -> Any:
        attempts.append(ctx.attempt)
        raise ValidationError("Invalid input")  # registered: no retry, the saga compensates

    workflow = one_step_workflow("Registry", my_step, ledger)
    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(workflow, "x", saga_id="r1")
    assert cause(failed) == ("ValidationError", "Invalid input")
    assert attempts == [1]
    assert ledger.entries == ["order.create(x)", "order.cancel(order-1)"]

    # unregistered, the same error is retried by the step's policy before the rollback
    unregister_terminal_errors([ValidationError])
    attempts.clear()
    with pytest.raises(SagaCompensatedError):
        await engine.run(workflow, "y", saga_id="r2")
    assert attempts == [1, 2, 3]
    assert ledger.undone() == ["order.cancel(order-1)", "order.cancel(order-2)"]


async def test_global_error_mapper_and_a_steps_own(engine: Engine, ledger: Ledger) -> None:
    attempts: list[str] = []

    def my_mapper(err: BaseException) -> TerminalError | None:
        if isinstance(err, BusinessError):
            return TerminalError(str(err))
        return None

    set_global_error_mapper(my_mapper)

    @saga_step("MyStep", retry=fast_retry(3))
    async def my_step(ctx: SagaContext, inp: Any) -> Any:
        attempts.append(f"my_step#{ctx.attempt}")
        raise BusinessError("over the limit")

    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(one_step_workflow("Mapped", my_step, ledger), "y", saga_id="m1")
    assert cause(failed) == ("TerminalError", "over the limit")

    # a step's own mapper (restate-saga's per-step as_terminal_error) is asked first
    def step_mapper(err: BaseException) -> TerminalError | None:
        return TerminalError(f"declined: {err}") if isinstance(err, Declined) else None

    set_global_error_mapper(lambda err: TerminalError("global mapper"))
    charge = create_saga_step(
        "Charge",
        run=charge_declined(ledger, attempts),
        options=SagaStepOptions(retry=fast_retry(3), as_terminal_error=step_mapper),
    )
    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(one_step_workflow("StepMapper", charge, ledger), "z", saga_id="m2")
    assert cause(failed) == ("TerminalError", "declined: insufficient funds")
    assert attempts == ["my_step#1", "charge#1"]  # neither was retried
    assert ledger.entries == [
        "order.create(y)",
        "order.cancel(order-1)",
        "order.create(z)",
        "order.cancel(order-2)",
    ]


def charge_declined(ledger: Ledger, attempts: list[str]) -> Any:
    async def charge(ctx: SagaContext, inp: Any) -> Any:
        attempts.append(f"charge#{ctx.attempt}")
        raise Declined("insufficient funds")

    return charge


async def test_a_failing_compensation_does_not_stop_the_rollback(
    engine: Engine, ledger: Ledger
) -> None:
    async def cancel(data: Any) -> None:
        ledger.act("order.cancel", data)

    async def refund(data: Any) -> None:
        ledger.act("payment.refund", data)

    @saga_step_strict("CreateOrder", compensate=cancel)
    async def create_order(ctx: SagaContext, inp: Any) -> Any:
        return ledger.act("order.create", inp)

    @saga_step_strict("Charge", compensate=refund)
    async def charge(ctx: SagaContext, inp: Any) -> Any:
        return ledger.act("payment.charge", inp)

    @saga_workflow("Broken")
    async def broken(saga: SagaContext, inp: Any) -> Any:
        await create_order(saga, inp)
        await charge(saga, inp)
        raise TerminalError("shipping refused")

    ledger.fail_next("payment.refund", TerminalError("gateway gone"))
    with pytest.raises(CompensationFailedError) as failed:
        await engine.run(broken, "c1", saga_id="b1")
    assert (failed.value.cause_type, failed.value.cause_message) == (
        "TerminalError",
        "shipping refused",
    )
    assert [f.message for f in failed.value.failures] == ["gateway gone"]
    assert ledger.undone() == ["payment.refund(payment-2)", "order.cancel(order-1)"]
    assert (await engine.get("b1")).status == SagaStatus.FAILED


# -- Composing workflows, nested sagas, saga modules ----------------------------------------------


def payment_steps(ledger: Ledger) -> tuple[Any, Any, Any, Any]:
    async def void(data: dict[str, Any]) -> None:
        ledger.act("payment.void", data["id"])

    @saga_step_strict("Authorize", compensate=void)
    async def authorize(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        return {"id": ledger.act("payment.authorize", inp["amount"])}

    async def refund(data: dict[str, Any]) -> None:
        ledger.act("payment.refund", data["id"])

    @saga_step_strict("Capture", compensate=refund)
    async def capture(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        return {"id": ledger.act("payment.capture", inp["auth_id"])}

    async def cancel(data: dict[str, Any]) -> None:
        ledger.act("order.cancel", data["id"])

    @saga_step_strict("CreateOrder", compensate=cancel)
    async def create_order(ctx: SagaContext, inp: Any) -> dict[str, Any]:
        return {"id": ledger.act("order.create", inp), "total": 40}

    async def unship(data: dict[str, Any]) -> None:
        ledger.act("shipping.unship", data["id"])

    @saga_step_strict("CreateShipment", compensate=unship, retry=fast_retry(1))
    async def create_shipment(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        return {"id": ledger.act("shipping.ship", inp["order_id"])}

    return authorize, capture, create_order, create_shipment


async def test_composing_workflows_with_run_as_step(engine: Engine, ledger: Ledger) -> None:
    authorize, capture, create_order, create_shipment = payment_steps(ledger)

    @saga_workflow("PaymentWorkflow")
    async def payment_workflow(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        auth = await authorize(saga, inp)
        captured = await capture(saga, {"auth_id": auth["id"]})
        return {"payment_id": captured["id"]}

    @saga_workflow("OrderWorkflow")
    async def order_workflow(saga: SagaContext, inp: Any) -> dict[str, Any]:
        order = await create_order(saga, inp)
        # the payment workflow's compensations join this saga
        payment = await payment_workflow.run_as_step(saga, {"amount": order["total"]})
        # if shipping fails, both the order and the payment are compensated
        await create_shipment(saga, {"order_id": order["id"]})
        return {"order_id": order["id"], "payment_id": payment["payment_id"]}

    result = await engine.run(order_workflow, "c1", saga_id="ok")
    assert result == {"order_id": "order-1", "payment_id": "payment-3"}
    ledger.entries.clear()
    ledger.fail_next("shipping.ship")
    with pytest.raises(SagaCompensatedError):
        await engine.run(order_workflow, "c2", saga_id="ko")
    assert ledger.entries == [
        "order.create(c2)",
        "payment.authorize(40)",
        "payment.capture(payment-6)",
        "shipping.ship(order-5)",
        "payment.refund(payment-7)",
        "payment.void(payment-6)",
        "order.cancel(order-5)",
    ]


async def test_nested_saga_and_saga_module(engine: Engine, ledger: Ledger) -> None:
    authorize, capture, create_order, create_shipment = payment_steps(ledger)

    async def payment_handler(saga: SagaContext, inp: dict[str, Any]) -> Any:
        auth = await authorize(saga, inp)
        return await capture(saga, {"auth_id": auth["id"]})

    payment_module = create_saga_module(payment_handler)  # reusable, not a workflow

    @saga_workflow("Nested")
    async def nested(saga: SagaContext, inp: Any) -> Any:
        order = await create_order(saga, inp)

        async def handle_payment(saga: SagaContext) -> Any:  # inline nested saga
            auth = await authorize(saga, {"amount": 100})
            return await capture(saga, {"auth_id": auth["id"]})

        inline = await run_nested_saga(saga, handle_payment)
        module = await payment_module(saga, {"amount": 7})
        await create_shipment(saga, {"order_id": order["id"]})
        return [inline, module]

    ledger.fail_next("shipping.ship")
    with pytest.raises(SagaCompensatedError):
        await engine.run(nested, "c1", saga_id="n1")
    assert ledger.entries == [
        "order.create(c1)",
        "payment.authorize(100)",
        "payment.capture(payment-2)",
        "payment.authorize(7)",
        "payment.capture(payment-4)",
        "shipping.ship(order-1)",
        "payment.refund(payment-5)",
        "payment.void(payment-4)",
        "payment.refund(payment-3)",
        "payment.void(payment-2)",
        "order.cancel(order-1)",
    ]


# -- Virtual objects ----------------------------------------------------------------------------


async def test_virtual_object(engine: Engine, ledger: Ledger) -> None:
    async def refund(data: dict[str, Any]) -> None:
        ledger.act("payment.refund", data["order_id"])

    @saga_step_strict("ChargePayment", compensate=refund)
    async def charge_payment(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": ledger.act("payment.charge", inp["amount"])}

    @saga_step_strict("ReserveStock", retry=fast_retry(1))
    async def reserve_stock(ctx: SagaContext, items: list[str]) -> str:
        return ledger.act("stock.reserve", *items)

    cart = create_saga_virtual_object("ShoppingCart")

    @cart.handler()
    async def checkout(saga: SagaContext, obj: ObjectContext, inp: dict[str, Any]) -> Any:
        payment = await charge_payment(saga, {"amount": inp["total"]})
        await reserve_stock(saga, await obj.get("items", []))
        obj.clear("items")
        return {"order_id": payment["order_id"]}

    @cart.handler(kind="shared")
    async def get_items(obj: SharedObjectContext) -> list[str]:
        return list(await obj.get("items") or [])

    @cart.handler()
    async def add_item(saga: SagaContext, obj: ObjectContext, item: str) -> int:
        items = await obj.get("items") or []
        obj.set("items", [*items, item])
        return len(items) + 1

    engine.register(cart)
    assert await engine.call_object("ShoppingCart", "cart-1", "add_item", "book") == 1
    assert await engine.call_object("ShoppingCart", "cart-1", "add_item", "pen") == 2
    assert await engine.call_object("ShoppingCart", "cart-1", "get_items") == ["book", "pen"]
    # a checkout whose stock step fails: the payment is refunded once, the cart is kept
    ledger.fail_next("stock.reserve", TerminalError("out of stock"))
    with pytest.raises(SagaCompensatedError):
        await engine.call_object("ShoppingCart", "cart-1", "checkout", {"total": 12})
    assert await engine.call_object("ShoppingCart", "cart-1", "get_items") == ["book", "pen"]
    result = await engine.call_object("ShoppingCart", "cart-1", "checkout", {"total": 12})
    assert result == {"order_id": "payment-2"}
    assert await engine.call_object("ShoppingCart", "cart-1", "get_items") == []
    assert await engine.object_state("ShoppingCart", "cart-2") == {}  # another key, untouched
    assert ledger.entries == [
        "payment.charge(12)",
        "stock.reserve(book, pen)",
        "payment.refund(payment-1)",
        "payment.charge(12)",
        "stock.reserve(book, pen)",
    ]


# -- Long-running workflows: a promise and a handler ----------------------------------------------


def approval_workflow(ledger: Ledger) -> Any:
    async def cancel(data: dict[str, Any]) -> None:
        ledger.act("order.cancel", data["order_id"])

    @saga_step_strict("CreateOrder", compensate=cancel)
    async def create_order(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": ledger.act("order.create", inp["c"])}

    @saga_step_strict("CreateShipment")
    async def create_shipment(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        return {"id": ledger.act("shipping.ship", inp["order_id"])}

    wf = create_saga_long_workflow("ApprovalWorkflow")

    @wf.main()
    async def run(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        order = await create_order(saga, inp)
        # wait for the approval (a durable promise: the saga is suspended, nothing in memory)
        approved = await saga.promise("approval").value()
        if not approved:
            raise TerminalError("Order rejected")
        await create_shipment(saga, {"order_id": order["order_id"]})
        return {"order_id": order["order_id"]}

    @wf.handler()
    async def approve(ctx: HandlerContext, inp: dict[str, Any]) -> None:
        await ctx.promise("approval").resolve(inp["approved"])

    return wf


async def test_long_workflow_with_a_promise_and_a_handler(engine: Engine, ledger: Ledger) -> None:
    wf = approval_workflow(ledger)
    approved = await engine.start(wf, {"c": "c1"}, saga_id="approval-1")
    rejected = await engine.start(wf, {"c": "c2"}, saga_id="approval-2")
    await suspended(engine, "approval-1")
    await suspended(engine, "approval-2")
    assert ledger.entries == ["order.create(c1)", "order.create(c2)"]  # then they wait

    await engine.call("approval-1", "approve", {"approved": True})
    assert await within(approved.result()) == {"order_id": "order-1"}
    await engine.call("approval-2", "approve", {"approved": False})
    with pytest.raises(SagaCompensatedError) as failed:
        await within(rejected.result())
    assert cause(failed) == ("TerminalError", "Order rejected")
    assert ledger.entries == [
        "order.create(c1)",
        "order.create(c2)",
        "shipping.ship(order-1)",
        "order.cancel(order-2)",
    ]


def test_a_long_workflow_main_with_restate_sagas_three_parameters_is_refused_at_definition() -> (
    None
):
    wf = create_saga_long_workflow("ThreeParameters")
    with pytest.raises(TypeError, match=r"main\(saga, inp\)"):

        @wf.main()  # type: ignore[arg-type]
        async def run(saga: SagaContext, ctx: Any, inp: Any) -> None: ...


# -- Pydantic validation ------------------------------------------------------------------------


class CheckoutInput(BaseModel):
    customer_id: str


async def test_pydantic_input_is_validated(engine: Engine, ledger: Ledger) -> None:
    @saga_step_strict("CreateOrder")
    async def create_order(ctx: SagaContext, inp: CheckoutInput) -> dict[str, Any]:
        return {"order_id": ledger.act("order.create", inp.customer_id)}

    @saga_workflow("CheckoutWorkflow")
    async def checkout(saga: SagaContext, inp: CheckoutInput) -> dict[str, Any]:
        assert isinstance(inp, CheckoutInput)  # validated and converted
        order = await create_order(saga, inp)
        return {"order_id": order["order_id"]}

    result = await engine.run(checkout, {"customer_id": "c9"}, saga_id="p1")
    assert result == {"order_id": "order-1"}
    with pytest.raises(SagaValidationError):
        await engine.run(checkout, {"customer": "c9"}, saga_id="p2")
    with pytest.raises(SagaNotFoundError):  # refused before anything was written
        await engine.get("p2")
    assert ledger.entries == ["order.create(c9)"]


# -- Step and workflow options ------------------------------------------------------------------


async def test_step_and_workflow_options(engine: Engine, ledger: Ledger) -> None:
    async def charge_handler(ctx: SagaContext, inp: int) -> str:
        return ledger.act("payment.charge", inp)

    async def refund_handler(payment_id: str) -> None:
        ledger.act("payment.refund", payment_id)

    charge = create_saga_step(
        name="ChargePayment",
        run=charge_handler,
        compensate=refund_handler,
        options=SagaStepOptions(
            retry=RetryPolicy(
                max_attempts=3,
                initial_interval=timedelta(0),
                backoff_factor=2.0,
                max_interval=timedelta(seconds=30),
            ),
            compensation_retry=RetryPolicy(max_attempts=5, initial_interval=timedelta(0)),
        ),
    )

    async def order_handler(saga: SagaContext, inp: int) -> Any:
        payment = await charge(saga, inp)
        if inp < 0:  # a refund wanted: wait for a confirmation that never comes
            await saga.wait_for_signal("confirmed")
        return payment

    workflow = create_saga_workflow(
        name="OrderWorkflow",
        handler=order_handler,
        options=SagaWorkflowOptions(
            description="charge, then wait for a confirmation",
            deadline=timedelta(milliseconds=500),
        ),
    )

    ledger.fail_next("payment.charge", times=2)  # the third attempt succeeds
    assert await engine.run(workflow, 5, saga_id="opt1") == "payment-1"
    # the saga's deadline ends the wait; the refund fails 4 times and succeeds on its 5th
    ledger.fail_next("payment.refund", times=4)
    with pytest.raises(SagaCompensatedError) as failed:
        await within(engine.run(workflow, -1, saga_id="opt2"))
    assert failed.value.cause_type == "SagaTimeoutError"
    assert ledger.count("payment.charge(5)") == 3
    assert ledger.count("payment.charge(-1)") == 1
    assert ledger.undone() == ["payment.refund(payment-2)"] * 5
