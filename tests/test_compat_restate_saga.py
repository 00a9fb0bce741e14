"""Every code example of restate-saga's (Python) README, run on sagakit through
``sagakit.compat.restate_saga`` and ``sagakit.compat.restate``.

Each example is the README's code with only the import lines changed (``import restate`` ->
``import sagakit.compat.restate as restate``, ``from restate_saga import`` -> ``from
sagakit.compat.restate_saga import``) and one ``Engine(...)`` line to run it (``make_engine``:
an Engine with the test lease). Where the README leaves a name undefined (``order_service``,
``authorize``, ``BusinessError``...), the test defines it: fake services that record every call
in a ledger, so that each test asserts what ran, in which order, and that each compensation ran
once. Every test runs on SQLite and on PostgreSQL.

Definitions are made inside each test: a workflow's steps and its ledger belong to that test.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import sagakit.compat.restate as restate
from sagakit import (
    CompensationFailedError,
    Engine,
    RetryPolicy,
    SagaCompensatedError,
    SagaNotFoundError,
    SagaStatus,
    SagaValidationError,
    TerminalError,
)
from sagakit.compat.restate_saga import (
    SagaContext,
    SagaStepOptions,
    SagaWorkflowOptions,
    StepResponse,
    StepRetryPolicy,
    WorkflowRetryPolicy,
    clear_terminal_errors,
    create_saga_module,
    create_saga_restate_workflow,
    create_saga_step,
    create_saga_step_strict,
    create_saga_virtual_object,
    create_saga_workflow,
    register_terminal_errors,
    resolve_terminal_error,
    run_nested_saga,
    saga_step,
    saga_step_strict,
    saga_workflow,
    set_global_error_mapper,
    unregister_terminal_errors,
)
from tests.conftest import make_engine, make_store_url
from tests.waiting import eventually, suspended, within

# -- the fake services the README's examples call ---------------------------------------------


class Ref(str):
    """An id that is also an object with ``.id``: the README's services return either."""

    @property
    def id(self) -> str:
        return str(self)


class Declined(Exception):
    """A fake service's failure (retryable unless registered or mapped)."""


@dataclass
class Services:
    """Fake order, payment and shipping services; ``ledger`` records every call in order."""

    ledger: list[str] = field(default_factory=list)
    fail: dict[str, list[BaseException]] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def act(self, what: str, *args: Any) -> Ref:
        self.ledger.append(f"{what}({', '.join(map(str, args))})")
        planned = self.fail.get(what)
        if planned:
            raise planned.pop(0)
        return Ref(f"{what.split('.')[0]}-{next(self.ids)}")

    def fail_next(self, what: str, error: BaseException | None = None, times: int = 1) -> None:
        self.fail[what] = [error or Declined(f"{what} failed") for _ in range(times)]

    def compensations(self) -> list[str]:
        undo = ("cancel", "refund", "void", "release", "unship")
        return [e for e in self.ledger if e.split("(")[0].split(".")[1] in undo]


class OrderService:
    def __init__(self, services: Services):
        self.s = services

    async def create(self, customer: Any) -> Ref:
        return self.s.act("order.create", customer)

    async def cancel(self, order_id: Any) -> None:
        self.s.act("order.cancel", order_id)


class PaymentService:
    def __init__(self, services: Services):
        self.s = services

    async def charge(self, order_id: Any) -> Ref:
        return self.s.act("payment.charge", order_id)

    async def refund(self, payment_id: Any) -> None:
        self.s.act("payment.refund", payment_id)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_store_url(request.param, tmp_path, request)


@pytest.fixture
def services() -> Services:
    return Services()


@pytest.fixture
async def engine(url: str) -> AsyncIterator[Engine]:
    async with make_engine(url) as started:  # the one line the README has no counterpart for
        yield started


def cause_of(exc: pytest.ExceptionInfo[SagaCompensatedError]) -> tuple[str, str]:
    return exc.value.cause_type, exc.value.cause_message


# -- Quick Start ------------------------------------------------------------------------------


def quick_start(services: Services) -> Any:
    order_service, payment_service = OrderService(services), PaymentService(services)

    # the README's Quick Start, verbatim but for the imports
    async def cancel_order(data):  # type: ignore[no-untyped-def]
        await order_service.cancel(data["order_id"])

    @saga_step_strict("CreateOrder", compensate=cancel_order)
    async def create_order(ctx: restate.Context, input_val):  # type: ignore[no-untyped-def]
        order = await order_service.create(input_val["customer_id"])
        return StepResponse(output={"order_id": order.id})

    async def refund_payment(data):  # type: ignore[no-untyped-def]
        await payment_service.refund(data["payment_id"])

    @saga_step_strict("ProcessPayment", compensate=refund_payment)
    async def process_payment(ctx: restate.Context, input_val):  # type: ignore[no-untyped-def]
        payment = await payment_service.charge(input_val["order_id"])
        return StepResponse(output={"payment_id": payment.id})

    @saga_workflow("CheckoutWorkflow")
    async def checkout_workflow(saga: SagaContext, input_val):  # type: ignore[no-untyped-def]
        # If process_payment fails, create_order.compensate() runs automatically
        order = await create_order(saga, input_val)
        payment = await process_payment(saga, {"order_id": order["order_id"]})
        return {"order_id": order["order_id"], "payment_id": payment["payment_id"]}

    return checkout_workflow


async def test_quick_start_checkout_completes(engine: Engine, services: Services) -> None:
    checkout_workflow = quick_start(services)
    result = await engine.run(checkout_workflow, {"customer_id": "cust_123"}, saga_id="o1")
    assert result == {"order_id": "order-1", "payment_id": "payment-2"}
    assert services.ledger == ["order.create(cust_123)", "payment.charge(order-1)"]


async def test_quick_start_failed_payment_cancels_the_order_once(
    engine: Engine, services: Services
) -> None:
    checkout_workflow = quick_start(services)
    services.fail_next("payment.charge", restate.TerminalError("card declined"))
    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(checkout_workflow, {"customer_id": "cust_123"}, saga_id="o2")
    assert cause_of(failed) == ("TerminalError", "card declined")
    assert services.ledger == [
        "order.create(cust_123)",
        "payment.charge(order-1)",
        "order.cancel(order-1)",
    ]
    assert (await engine.get("o2")).status == SagaStatus.COMPENSATED


# -- Step types ---------------------------------------------------------------------------------


async def test_hybrid_step_is_compensated_when_it_fails_midway(
    engine: Engine, services: Services
) -> None:
    order_service = OrderService(services)
    seen: list[tuple[Any, bool]] = []

    async def cancel_order(data, failed=False):  # type: ignore[no-untyped-def]
        # `failed` tells you if the step threw an error
        seen.append((data, failed))
        await order_service.cancel(data.get("order_id"))

    @saga_step("CreateOrder", compensate=cancel_order)
    async def create_order(ctx: restate.Context, input_val):  # type: ignore[no-untyped-def]
        order_id = await order_service.create(input_val)
        return StepResponse(
            output={"order_id": order_id},
            compensation_data={"order_id": order_id},
        )

    @saga_workflow("Hybrid")
    async def hybrid(saga: SagaContext, input_val):  # type: ignore[no-untyped-def]
        return await create_order(saga, input_val)

    assert await engine.run(hybrid, {"order_id": "o-9"}, saga_id="h1") == {"order_id": "order-1"}
    # the step fails midway (after the order service acted): its compensation runs, told so
    services.fail_next("order.create", restate.TerminalError("db down"))
    with pytest.raises(SagaCompensatedError):
        await engine.run(hybrid, {"order_id": "o-9"}, saga_id="h2")
    assert seen == [({"order_id": "o-9"}, True)]
    assert services.ledger[-1] == "order.cancel(o-9)"


async def test_strict_step_is_compensated_only_once_it_succeeded(
    engine: Engine, services: Services
) -> None:
    order_service = OrderService(services)

    async def cancel_order(data):  # type: ignore[no-untyped-def]
        await order_service.cancel(data["order_id"])

    @saga_step_strict("CreateOrder", compensate=cancel_order)
    async def create_order(ctx: restate.Context, input_val):  # type: ignore[no-untyped-def]
        order = await order_service.create(input_val)
        return StepResponse(
            output={"order_id": order.id},
            compensation_data={"order_id": order.id},
        )

    @saga_workflow("Strict")
    async def strict(saga: SagaContext, input_val):  # type: ignore[no-untyped-def]
        order = await create_order(saga, input_val)
        if input_val == "then-fail":
            raise restate.TerminalError("later step failed")
        return order

    services.fail_next("order.create", restate.TerminalError("refused"))
    with pytest.raises(SagaCompensatedError):
        await engine.run(strict, "c1", saga_id="s1")
    assert services.compensations() == []  # a strict step that failed is not undone
    with pytest.raises(SagaCompensatedError):
        await engine.run(strict, "then-fail", saga_id="s2")
    assert services.compensations() == ["order.cancel(order-1)"]


# -- StepResponse, steps without compensation ----------------------------------------------------


def test_step_response_forms() -> None:
    # compensation_data defaults to output when omitted
    assert StepResponse(output={"order_id": "123"}).compensation_data == {"order_id": "123"}
    # explicit compensation_data
    explicit = StepResponse(
        output={"order_id": "123"}, compensation_data={"order_id": "123", "extra": True}
    )
    assert explicit.compensation_data == {"order_id": "123", "extra": True}
    # no compensation data (e.g. validation step)
    assert StepResponse(output={"valid": True}, compensation_data=None).compensation_data is None
    # permanent failure — triggers compensation with provided data
    failure = StepResponse.permanent_failure("Payment declined", {"auth_id": "abc"})
    assert (failure.failed, failure.error_message) == (True, "Payment declined")
    assert failure.compensation_data == {"auth_id": "abc"}


async def test_permanent_failure_compensates_with_its_data(
    engine: Engine, services: Services
) -> None:
    got: list[Any] = []

    async def void(data, failed=False):  # type: ignore[no-untyped-def]
        got.append((data, failed))
        services.act("payment.void", data["auth_id"])

    @saga_step("Authorize", compensate=void)
    async def authorize(ctx: restate.Context, input_val):  # type: ignore[no-untyped-def]
        services.act("payment.authorize", input_val)
        return StepResponse.permanent_failure("Payment declined", {"auth_id": "abc"})

    @saga_workflow("Declines")
    async def declines(saga: SagaContext, input_val):  # type: ignore[no-untyped-def]
        return await authorize(saga, input_val)

    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(declines, 40, saga_id="d1")
    assert failed.value.cause_message == "Payment declined"
    assert got == [({"auth_id": "abc"}, True)]
    assert services.ledger == ["payment.authorize(40)", "payment.void(abc)"]


async def test_step_without_compensation_validates(engine: Engine, services: Services) -> None:
    order_service = OrderService(services)

    @saga_step("ValidateInput")
    async def validate_input(ctx: restate.Context, input_val):  # type: ignore[no-untyped-def]
        if not input_val.get("email"):
            return StepResponse.permanent_failure("Email required", None)
        return StepResponse(output={"valid": True}, compensation_data=None)

    async def cancel_order(data):  # type: ignore[no-untyped-def]
        await order_service.cancel(data["order_id"])

    @saga_step_strict("CreateOrder", compensate=cancel_order)
    async def create_order(ctx: restate.Context, input_val):  # type: ignore[no-untyped-def]
        return StepResponse(output={"order_id": (await order_service.create(input_val)).id})

    @saga_workflow("Register")
    async def register(saga: SagaContext, input_val):  # type: ignore[no-untyped-def]
        await create_order(saga, input_val["email"] or "anonymous")
        return await validate_input(saga, input_val)

    assert await engine.run(register, {"email": "a@b.c"}, saga_id="v1") == {"valid": True}
    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(register, {"email": ""}, saga_id="v2")
    assert failed.value.cause_message == "Email required"
    assert services.compensations() == ["order.cancel(order-2)"]


# -- Function API -------------------------------------------------------------------------------


async def test_function_api(engine: Engine, services: Services) -> None:
    order_service = OrderService(services)

    async def create_order_handler(ctx: restate.Context, input_val: dict[str, Any]) -> Any:
        return StepResponse(output={"order_id": (await order_service.create(input_val["c"])).id})

    async def cancel_order(data: dict[str, Any], failed: bool = False) -> None:
        await order_service.cancel(data.get("order_id", data.get("c")))

    async def ship(ctx: restate.Context, input_val: Any) -> Any:
        services.act("shipping.ship", input_val)

    # the README's Function API, verbatim
    create_order = create_saga_step(
        name="CreateOrder",
        run=create_order_handler,
        compensate=cancel_order,
    )

    async def checkout_handler(saga: SagaContext, input_val: dict[str, Any]) -> Any:
        order = await create_order(saga, input_val)
        await create_saga_step_strict("Ship", ship)(saga, order["order_id"])
        return order

    checkout = create_saga_workflow(
        name="CheckoutWorkflow",
        handler=checkout_handler,
    )

    services.fail_next("shipping.ship", restate.TerminalError("no courier"))
    with pytest.raises(SagaCompensatedError):
        await engine.run(checkout, {"c": "c1"}, saga_id="f1")
    assert services.ledger == [
        "order.create(c1)",
        "shipping.ship(order-1)",
        "order.cancel(order-1)",
    ]


# -- Global Error Registry ----------------------------------------------------------------------


class ValidationError(Exception): ...


class NotFoundError(Exception): ...


class BusinessError(Exception): ...


def one_step_workflow(name: str, step: Any, services: Services) -> Any:
    async def undo(data: Any, failed: bool = False) -> None:
        services.act("order.cancel", data)

    @saga_step_strict("Before", compensate=undo)
    async def before(ctx: restate.Context, input_val: Any) -> Any:
        services.act("order.create", input_val)
        return StepResponse(output=input_val)

    @saga_workflow(name)
    async def workflow(saga: SagaContext, input_val: Any) -> Any:
        await before(saga, input_val)
        return await step(saga, input_val)

    return workflow


async def test_registered_terminal_errors_compensate_without_retry(
    engine: Engine, services: Services
) -> None:
    attempts: list[int] = []
    register_terminal_errors([ValidationError, NotFoundError])

    # Now any step that raises these will trigger compensation
    @saga_step("MyStep")
    async def my_step(ctx, input_val):  # type: ignore[no-untyped-def]
        attempts.append(ctx.attempt)
        raise ValidationError("Invalid input")  # → triggers compensation

    workflow = one_step_workflow("Registry", my_step, services)
    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(workflow, "x", saga_id="r1")
    assert cause_of(failed) == ("ValidationError", "Invalid input")
    assert attempts == [1]
    assert services.ledger == ["order.create(x)", "order.cancel(x)"]

    unregister_terminal_errors([ValidationError])
    assert resolve_terminal_error(ValidationError("v")) is None
    assert isinstance(resolve_terminal_error(NotFoundError("n")), TerminalError)


async def test_global_error_mapper(engine: Engine, services: Services) -> None:
    attempts: list[int] = []

    # the README's custom error mapping, verbatim
    def my_mapper(err: Exception) -> restate.TerminalError | None:
        if isinstance(err, BusinessError):
            return restate.TerminalError(str(err))
        return None

    set_global_error_mapper(my_mapper)

    @saga_step("MyStep")
    async def my_step(ctx, input_val):  # type: ignore[no-untyped-def]
        attempts.append(ctx.attempt)
        raise BusinessError("over the limit")

    workflow = one_step_workflow("Mapped", my_step, services)
    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(workflow, "y", saga_id="m1")
    assert cause_of(failed) == ("TerminalError", "over the limit")
    assert attempts == [1]
    assert services.compensations() == ["order.cancel(y)"]
    # restate-saga's clear_terminal_errors forgets the classes, not the mapper
    register_terminal_errors([NotFoundError])
    clear_terminal_errors()
    assert resolve_terminal_error(NotFoundError("n")) is None
    assert isinstance(resolve_terminal_error(BusinessError("b")), restate.TerminalError)


async def test_step_level_as_terminal_error_comes_first(engine: Engine, services: Services) -> None:
    attempts: list[int] = []

    def step_mapper(err: Exception) -> TerminalError | None:
        if isinstance(err, Declined):
            return restate.TerminalError(f"declined: {err}", status_code=402)
        return None

    set_global_error_mapper(lambda err: restate.TerminalError("global mapper"))

    @saga_step("Charge", options=SagaStepOptions(as_terminal_error=step_mapper))
    async def charge(ctx: restate.Context, input_val: Any) -> Any:
        attempts.append(len(attempts) + 1)
        raise Declined("insufficient funds")

    workflow = one_step_workflow("StepMapper", charge, services)
    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(workflow, "z", saga_id="sm1")
    assert cause_of(failed) == ("TerminalError", "declined: insufficient funds")
    assert attempts == [1]
    mapped = resolve_terminal_error(Declined("x"), step_mapper)
    assert isinstance(mapped, restate.TerminalError) and mapped.status_code == 402
    assert resolve_terminal_error(KeyError("k"), step_mapper).message == "global mapper"  # type: ignore[union-attr]


async def test_a_failing_compensation_does_not_stop_the_rollback(
    engine: Engine, services: Services
) -> None:
    # restate-saga stops at a compensation that throws and loses the original error; sagakit
    # runs the older compensations all the same and keeps both errors
    async def cancel(data: Any) -> None:
        services.act("order.cancel", data)

    async def refund(data: Any) -> None:
        services.act("payment.refund", data)

    @saga_step_strict("CreateOrder", compensate=cancel)
    async def create_order(ctx: restate.Context, input_val: Any) -> Any:
        return StepResponse(output=services.act("order.create", input_val))

    @saga_step_strict("Charge", compensate=refund)
    async def charge(ctx: restate.Context, input_val: Any) -> Any:
        return StepResponse(output=services.act("payment.charge", input_val))

    @saga_workflow("Broken")
    async def broken(saga: SagaContext, input_val: Any) -> Any:
        await create_order(saga, input_val)
        await charge(saga, input_val)
        raise restate.TerminalError("shipping refused")

    services.fail_next("payment.refund", restate.TerminalError("gateway gone"))
    with pytest.raises(CompensationFailedError) as failed:
        await engine.run(broken, "c1", saga_id="b1")
    assert (failed.value.cause_type, failed.value.cause_message) == (
        "TerminalError",
        "shipping refused",
    )
    assert [f.message for f in failed.value.failures] == ["gateway gone"]
    assert services.compensations() == ["payment.refund(payment-2)", "order.cancel(order-1)"]
    assert (await engine.get("b1")).status == SagaStatus.FAILED


# -- Composing workflows, nested sagas ----------------------------------------------------------


def payment_steps(services: Services) -> tuple[Any, Any, Any, Any]:
    async def void(data: dict[str, Any]) -> None:
        services.act("payment.void", data["id"])

    @saga_step_strict("Authorize", compensate=void)
    async def authorize_payment(ctx: restate.Context, input_val: dict[str, Any]) -> Any:
        return StepResponse(output={"id": services.act("payment.authorize", input_val["amount"])})

    async def refund(data: dict[str, Any]) -> None:
        services.act("payment.refund", data["id"])

    @saga_step_strict("Capture", compensate=refund)
    async def capture_payment(ctx: restate.Context, input_val: dict[str, Any]) -> Any:
        return StepResponse(output={"id": services.act("payment.capture", input_val["auth_id"])})

    async def cancel(data: dict[str, Any]) -> None:
        services.act("order.cancel", data["id"])

    @saga_step_strict("CreateOrder", compensate=cancel)
    async def create_order(ctx: restate.Context, input_val: Any) -> Any:
        return StepResponse(output={"id": services.act("order.create", input_val), "total": 40})

    async def unship(data: dict[str, Any]) -> None:
        services.act("shipping.unship", data["id"])

    @saga_step_strict("CreateShipment", compensate=unship)
    async def create_shipment(ctx: restate.Context, input_val: dict[str, Any]) -> Any:
        return StepResponse(output={"id": services.act("shipping.ship", input_val["order_id"])})

    return authorize_payment, capture_payment, create_order, create_shipment


async def test_composing_workflows_with_run_as_step(engine: Engine, services: Services) -> None:
    authorize_payment, capture_payment, create_order, create_shipment = payment_steps(services)

    # the README's Composing Workflows, verbatim
    @saga_workflow("PaymentWorkflow")
    async def payment_workflow(saga, input_val):  # type: ignore[no-untyped-def]
        auth = await authorize_payment(saga, input_val)
        capture = await capture_payment(saga, {"auth_id": auth["id"]})
        return {"payment_id": capture["id"]}

    @saga_workflow("OrderWorkflow")
    async def order_workflow(saga, input_val):  # type: ignore[no-untyped-def]
        order = await create_order(saga, input_val)

        # Payment workflow's compensations join this saga
        payment = await payment_workflow.run_as_step(saga, {"amount": order["total"]})

        # If shipping fails, both order AND payment are compensated
        shipment = await create_shipment(saga, {"order_id": order["id"]})  # noqa: F841

        return {"order_id": order["id"], "payment_id": payment["payment_id"]}

    result = await engine.run(order_workflow, "c1", saga_id="ok")
    assert result == {"order_id": "order-1", "payment_id": "payment-3"}
    services.ledger.clear()
    services.fail_next("shipping.ship", restate.TerminalError("no courier"))
    with pytest.raises(SagaCompensatedError):
        await engine.run(order_workflow, "c2", saga_id="ko")
    assert services.ledger == [
        "order.create(c2)",
        "payment.authorize(40)",
        "payment.capture(payment-6)",
        "shipping.ship(order-5)",
        "payment.refund(payment-7)",
        "payment.void(payment-6)",
        "order.cancel(order-5)",
    ]


async def test_nested_saga_and_saga_module(engine: Engine, services: Services) -> None:
    authorize, capture, create_order, create_shipment = payment_steps(services)

    async def payment_handler(saga: SagaContext, input_val: dict[str, Any]) -> Any:
        auth = await authorize(saga, input_val)
        return await capture(saga, {"auth_id": auth["id"]})

    @saga_workflow("Nested")
    async def nested(saga: SagaContext, input_val: Any) -> Any:
        order = await create_order(saga, input_val)

        # the README's Nested Sagas, verbatim
        # Inline nested saga
        async def handle_payment(saga):  # type: ignore[no-untyped-def]
            auth = await authorize(saga, {"amount": 100})
            capture_ = await capture(saga, {"auth_id": auth["id"]})
            return capture_

        result = await run_nested_saga(saga, handle_payment)

        # Reusable saga module (not a Restate service)
        payment_module = create_saga_module(payment_handler)
        result2 = await payment_module(saga, {"amount": 7})

        await create_shipment(saga, {"order_id": order["id"]})
        return [result, result2]

    services.fail_next("shipping.ship", restate.TerminalError("no courier"))
    with pytest.raises(SagaCompensatedError):
        await engine.run(nested, "c1", saga_id="n1")
    assert services.compensations() == [
        "payment.refund(payment-5)",
        "payment.void(payment-4)",
        "payment.refund(payment-3)",
        "payment.void(payment-2)",
        "order.cancel(order-1)",
    ]


# -- Virtual objects ----------------------------------------------------------------------------


async def test_virtual_object_exclusive_and_shared_handlers(
    engine: Engine, services: Services
) -> None:
    async def refund(data: dict[str, Any]) -> None:
        services.act("payment.refund", data["order_id"])

    @saga_step_strict("ChargePayment", compensate=refund)
    async def charge_payment(ctx: restate.Context, input_val: dict[str, Any]) -> Any:
        return StepResponse(
            output={"order_id": services.act("payment.charge", input_val["amount"])}
        )

    # the README's Virtual Objects, verbatim
    cart = create_saga_virtual_object("ShoppingCart")

    @cart.handler()
    async def checkout(saga: SagaContext, ctx: restate.ObjectContext, input_val):  # type: ignore[no-untyped-def]
        payment = await charge_payment(saga, {"amount": input_val["total"]})
        ctx.clear("items")
        return {"order_id": payment["order_id"]}

    @cart.handler(kind="shared")
    async def get_items(ctx: restate.ObjectSharedContext):  # type: ignore[no-untyped-def]
        return await ctx.get("items") or []

    # not in the README: something to put items in the cart, and a checkout that fails
    @cart.handler()
    async def add_item(saga: SagaContext, ctx: restate.ObjectContext, item: str) -> int:
        assert ctx.key() == "cart-1" and saga.ctx is not None
        items = await ctx.get("items") or []
        ctx.set("items", [*items, item])
        return len(items) + 1

    engine.register(cart)
    assert await engine.call_object("ShoppingCart", "cart-1", "add_item", "book") == 1
    assert await engine.call_object("ShoppingCart", "cart-1", "add_item", "pen") == 2
    assert await engine.call_object("ShoppingCart", "cart-1", "get_items") == ["book", "pen"]
    services.fail_next("payment.charge", restate.TerminalError("declined"))
    with pytest.raises(SagaCompensatedError):
        await engine.call_object("ShoppingCart", "cart-1", "checkout", {"total": 12})
    assert await engine.call_object("ShoppingCart", "cart-1", "get_items") == ["book", "pen"]
    result = await engine.call_object("ShoppingCart", "cart-1", "checkout", {"total": 12})
    assert result == {"order_id": "payment-1"}
    assert await engine.call_object("ShoppingCart", "cart-1", "get_items") == []
    assert services.ledger == ["payment.charge(12)", "payment.charge(12)"]


# -- Restate workflows (long-running) -----------------------------------------------------------


def approval_workflow(services: Services) -> Any:
    async def cancel(data: dict[str, Any]) -> None:
        services.act("order.cancel", data["order_id"])

    @saga_step_strict("CreateOrder", compensate=cancel)
    async def create_order(ctx: restate.Context, input_val: Any) -> Any:
        return StepResponse(output={"order_id": services.act("order.create", input_val["c"])})

    @saga_step_strict("CreateShipment")
    async def create_shipment(ctx: restate.Context, input_val: Any) -> Any:
        return StepResponse(output={"id": services.act("shipping.ship", input_val["order_id"])})

    # the README's Restate Workflows, verbatim
    wf = create_saga_restate_workflow("ApprovalWorkflow")

    @wf.main()
    async def run(saga: SagaContext, ctx: restate.WorkflowContext, input_val):  # type: ignore[no-untyped-def]
        order = await create_order(saga, input_val)

        # Wait for approval signal (durable promise)
        approved = await ctx.promise("approval").value()

        if not approved:
            raise restate.TerminalError("Order rejected")

        shipment = await create_shipment(saga, {"order_id": order["order_id"]})  # noqa: F841
        return {"order_id": order["order_id"]}

    @wf.handler()
    async def approve(ctx: restate.WorkflowSharedContext, input_val):  # type: ignore[no-untyped-def]
        await ctx.promise("approval").resolve(input_val["approved"])

    return wf


async def test_long_workflow_waits_for_its_promise(engine: Engine, services: Services) -> None:
    wf = approval_workflow(services)
    handle = await engine.start(wf, {"c": "c1"}, saga_id="approval-1")
    await suspended(engine, "approval-1")
    assert services.ledger == ["order.create(c1)"]
    await engine.call("approval-1", "approve", {"approved": True})
    assert await within(handle.result()) == {"order_id": "order-1"}
    assert services.ledger == ["order.create(c1)", "shipping.ship(order-1)"]


async def test_long_workflow_rejected_rolls_back(engine: Engine, services: Services) -> None:
    wf = approval_workflow(services)
    handle = await engine.start(wf, {"c": "c2"}, saga_id="approval-2")
    await suspended(engine, "approval-2")
    await engine.call("approval-2", "approve", {"approved": False})
    with pytest.raises(SagaCompensatedError) as failed:
        await within(handle.result())
    assert cause_of(failed) == ("TerminalError", "Order rejected")
    assert services.ledger == ["order.create(c2)", "order.cancel(order-1)"]


# -- Pydantic validation ------------------------------------------------------------------------


class CheckoutInput(BaseModel):
    customer_id: str


async def test_pydantic_input_is_validated(engine: Engine, services: Services) -> None:
    @saga_step_strict("CreateOrder")
    async def create_order(ctx: restate.Context, input_val: CheckoutInput) -> Any:
        return StepResponse(
            output={"order_id": services.act("order.create", input_val.customer_id)}
        )

    # the README's Pydantic Validation, verbatim
    @saga_workflow("CheckoutWorkflow")
    async def checkout(saga: SagaContext, input_val: CheckoutInput):  # type: ignore[no-untyped-def]
        # input_val is validated and converted to CheckoutInput
        order = await create_order(saga, input_val)
        return {"order_id": order["order_id"]}

    assert await engine.run(checkout, {"customer_id": "c9"}, saga_id="p1") == {
        "order_id": "order-1"
    }
    with pytest.raises(SagaValidationError):
        await engine.run(checkout, {"customer": "c9"}, saga_id="p2")
    with pytest.raises(SagaNotFoundError):  # refused before anything was written
        await engine.get("p2")


# -- Step & workflow options ----------------------------------------------------------------------


def test_options_translate_to_sagakit() -> None:
    async def charge_handler(ctx: restate.Context, input_val: Any) -> Any:
        return StepResponse(output=None)

    async def refund_handler(data: Any) -> None:
        return None

    # the README's Step & Workflow Options, verbatim
    # Step-level retry
    step = create_saga_step(
        name="ChargePayment",
        run=charge_handler,
        compensate=refund_handler,
        options=SagaStepOptions(
            retry=StepRetryPolicy(
                max_retry_attempts=3,
                initial_retry_interval=timedelta(seconds=1),
                retry_interval_factor=2.0,
                max_retry_interval=timedelta(seconds=30),
            ),
            compensation_retry=StepRetryPolicy(max_retry_attempts=5),
        ),
    )

    async def order_handler(saga: SagaContext, input_val: Any) -> Any:
        return None

    # Workflow-level options
    workflow = create_saga_workflow(
        name="OrderWorkflow",
        handler=order_handler,
        options=SagaWorkflowOptions(
            retry_policy=WorkflowRetryPolicy(max_attempts=3),
            idempotency_retention=timedelta(days=1),
            ingress_private=True,
        ),
    )

    assert step.retry == RetryPolicy(
        max_attempts=3,
        initial_interval=timedelta(seconds=1),
        backoff_factor=2.0,
        max_interval=timedelta(seconds=30),
    )
    assert step.compensation_retry is not None and step.compensation_retry.max_attempts == 5
    assert workflow.restate_options.idempotency_retention == timedelta(days=1)
    assert workflow.restate_options.ingress_private is True
    # a retry budget in time becomes the attempts whose waits fit in it: 1 + 2 + 4 <= 7 < 15
    budget = StepRetryPolicy(
        max_retry_duration=timedelta(seconds=7), initial_retry_interval=timedelta(seconds=1)
    )
    assert budget.to_retry_policy().max_attempts == 4


async def test_step_retry_policy_retries(engine: Engine, services: Services) -> None:
    @saga_step(
        "ChargePayment",
        options=SagaStepOptions(
            retry=StepRetryPolicy(max_retry_attempts=3, initial_retry_interval=timedelta(0))
        ),
    )
    async def charge(ctx: restate.Context, input_val: Any) -> Any:
        return StepResponse(output=services.act("payment.charge", input_val))

    @saga_workflow("Retries")
    async def retries(saga: SagaContext, input_val: Any) -> Any:
        return await charge(saga, input_val)

    services.fail_next("payment.charge", times=2)
    assert await engine.run(retries, 5, saga_id="rt1") == "payment-1"
    services.fail_next("payment.charge", times=3)
    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(retries, 6, saga_id="rt2")
    assert failed.value.cause_type == "Declined"
    assert services.ledger.count("payment.charge(6)") == 3


async def test_workflow_retry_policy_is_the_default_of_its_steps(
    engine: Engine, services: Services
) -> None:
    @saga_step("Flaky")
    async def flaky(ctx: restate.Context, input_val: Any) -> Any:
        return services.act("payment.charge", input_val)

    async def handler(saga: SagaContext, input_val: Any) -> Any:
        return await flaky(saga, input_val)

    workflow = create_saga_workflow(
        "Patient",
        handler,
        SagaWorkflowOptions(
            retry_policy=WorkflowRetryPolicy(max_attempts=5, initial_interval=timedelta(0))
        ),
    )
    services.fail_next("payment.charge", times=4)  # sagakit's default would give up after 3
    assert await engine.run(workflow, 1, saga_id="wr1") == "payment-1"

    parking = create_saga_workflow(
        "Parking",
        handler,
        SagaWorkflowOptions(
            retry_policy=WorkflowRetryPolicy(
                max_attempts=2, initial_interval=timedelta(0), on_max_attempts="pause"
            )
        ),
    )
    services.fail_next("payment.charge", times=2)
    await engine.start(parking, 2, saga_id="wr2")

    async def parked() -> bool:
        return (await engine.get("wr2")).status == SagaStatus.PARKED

    await eventually(parked, "the saga to park when its step ran out of attempts")
    assert services.ledger.count("payment.charge(2)") == 2


# -- SagaContext ------------------------------------------------------------------------------


async def test_saga_context_ctx_and_compensations(engine: Engine, services: Services) -> None:
    async def undo(data: Any) -> None:
        services.act("order.cancel", data)

    @saga_step_strict("A", compensate=undo)
    async def a(ctx: restate.Context, input_val: Any) -> Any:
        return StepResponse(output=services.act("order.create", input_val))

    seen: list[Any] = []

    @saga_workflow("Ctx")
    async def workflow(saga: SagaContext, input_val: Any) -> Any:
        seen.append(list(saga.compensations))
        await a(saga, input_val)
        seen.append(list(saga.compensations))
        stamp = await saga.ctx.run("stamp", lambda: "stamped")
        with pytest.raises(Exception, match="read-only"):
            saga.compensations.append("x")
        return stamp

    assert await engine.run(workflow, "c", saga_id="ctx1") == "stamped"
    assert seen[0] == [] and seen[-1] == ["A"]
