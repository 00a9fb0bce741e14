"""The TypeScript restate-saga's README examples (@kowalski21/restate-saga), translated to Python
on sagakit's native API (and the compat where it fits), on SQLite and PostgreSQL.

TypeScript -> sagakit: ``createSagaStep({name, run, compensate})`` -> ``create_saga_step(name,
run, compensate)``; ``serviceClient``/``workflowClient`` -> ``saga.call``; ``objectClient`` ->
``saga.call_object``; the send clients -> ``saga.send`` / ``saga.send_object``; the Restate
ingress client -> ``engine.client(workflow)``; Awilix containers -> ``Engine(services=factory)``
(``ctx.services`` in a step, a keyword-only ``services`` in a compensation); the per-request
factory -> a factory that reads the request's data from ``ServiceScope.input``.

Fake services record every call in a ledger: each test asserts what ran, in which order, and
that each compensation ran once.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    Engine,
    HandlerContext,
    ObjectContext,
    SagaCompensatedError,
    SagaContext,
    SagaStepOptions,
    SagaWorkflowOptions,
    SharedObjectContext,
    StepResponse,
    TerminalError,
    create_saga_long_workflow,
    create_saga_step,
    create_saga_step_strict,
    create_saga_virtual_object,
    create_saga_workflow,
    register_terminal_errors,
    set_global_error_mapper,
)
from sagakit.compat import restate_saga as compat
from sagakit.services import ServiceScope
from tests.conftest import fast_retry, make_engine, make_store_url
from tests.waiting import suspended, within


class Declined(Exception):
    """A fake service's failure."""


@dataclass
class Ledger:
    entries: list[str] = field(default_factory=list)
    fail: dict[str, list[BaseException]] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def act(self, what: str, *args: Any) -> str:
        self.entries.append(f"{what}({', '.join(map(str, args))})")
        planned = self.fail.get(what)
        if planned:
            raise planned.pop(0)
        return f"{what.split('.')[0]}-{next(self.ids)}"

    def fail_next(self, what: str, error: BaseException | None = None, times: int = 1) -> None:
        self.fail[what] = [error or TerminalError(f"{what} failed") for _ in range(times)]


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_store_url(request.param, tmp_path, request)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
async def engine(url: str) -> AsyncIterator[Engine]:
    async with make_engine(url) as started:
        yield started


# -- 01 basic checkout (the README's quick start) -----------------------------------------------


def checkout_workflow(ledger: Ledger) -> Any:
    async def reserve(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[Any]:
        reservation = ledger.act("inventory.reserve", inp["product_id"], inp["quantity"])
        return StepResponse({"reservation_id": reservation}, {"reservation_id": reservation})

    async def release(data: dict[str, Any]) -> None:
        ledger.act("inventory.release", data["reservation_id"])

    reserve_inventory = create_saga_step("ReserveInventory", reserve, release)

    async def charge(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[Any]:
        payment = ledger.act("payment.charge", inp["amount"])
        return StepResponse(
            {"payment_id": payment}, {"payment_id": payment, "amount": inp["amount"]}
        )

    async def refund(data: dict[str, Any]) -> None:
        if "payment_id" in data:
            ledger.act("payment.refund", data["payment_id"], data["amount"])

    charge_payment = create_saga_step("ChargePayment", charge, refund)

    async def checkout(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        # If charge_payment fails, reserve_inventory's compensation runs automatically
        inventory = await reserve_inventory(saga, inp)
        payment = await charge_payment(saga, {"amount": inp["amount"]})
        return {"reservation_id": inventory["reservation_id"], "payment_id": payment["payment_id"]}

    return create_saga_workflow("CheckoutWorkflow", checkout)


async def test_basic_checkout_and_typed_client(engine: Engine, ledger: Ledger) -> None:
    workflow = checkout_workflow(ledger)
    # InferServiceType + the Restate ingress client -> engine.client(workflow)
    client = engine.client(workflow)
    result = await client.run({"product_id": "89", "quantity": 34, "amount": 40}, saga_id="c1")
    assert result == {"reservation_id": "inventory-1", "payment_id": "payment-2"}
    ledger.fail_next("payment.charge")
    with pytest.raises(SagaCompensatedError):
        await client.run({"product_id": "89", "quantity": 1, "amount": 40}, saga_id="c2")
    # hybrid: the payment's compensation was registered before it ran and got its input (no
    # payment_id: nothing to refund); the reservation is released once
    assert ledger.entries[2:] == [
        "inventory.reserve(89, 1)",
        "payment.charge(40)",
        "inventory.release(inventory-3)",
    ]


# -- 05 hybrid vs strict, 02 validation ----------------------------------------------------------


async def test_hybrid_strict_and_validation(engine: Engine, ledger: Ledger) -> None:
    told: list[Any] = []

    async def create(ctx: SagaContext, inp: Any) -> StepResponse[Any]:
        order = ledger.act("order.create", inp)
        return StepResponse(order, {"order_id": order})

    async def cancel(data: Any, failed: bool) -> None:
        told.append(failed)
        ledger.act("order.cancel", data.get("order_id", data) if isinstance(data, dict) else data)

    hybrid = create_saga_step("CreateOrder", create, cancel)
    strict = create_saga_step_strict("CreateOrderStrict", create, cancel)

    async def validate(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[Any]:
        if not inp.get("email"):
            return StepResponse.permanent_failure("Email required", None)
        return StepResponse({"valid": True}, None)

    validate_input = create_saga_step("ValidateInput", validate)

    async def register(saga: SagaContext, inp: dict[str, Any]) -> Any:
        step = hybrid if inp["mode"] == "hybrid" else strict
        await step(saga, inp["email"])
        return await validate_input(saga, inp)

    workflow = create_saga_workflow("Registration", register)
    ledger.fail_next("order.create")
    with pytest.raises(SagaCompensatedError):
        await engine.run(workflow, {"mode": "hybrid", "email": "a"}, saga_id="h")
    assert told == [True] and ledger.entries[-1] == "order.cancel(a)"
    ledger.fail_next("order.create")
    with pytest.raises(SagaCompensatedError):
        await engine.run(workflow, {"mode": "strict", "email": "b"}, saga_id="s")
    assert told == [True]  # strict: a failed step is not undone
    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(workflow, {"mode": "strict", "email": ""}, saga_id="v")
    assert failed.value.cause_message == "Email required"
    assert told == [True, False] and ledger.entries[-1] == "order.cancel(order-2)"


# -- 06 error handling -----------------------------------------------------------------------------


class ValidationError(Exception): ...


class NotFoundError(Exception): ...


class HttpError(Exception):
    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


async def test_error_registry_mappers_and_step_mapper(engine: Engine, ledger: Ledger) -> None:
    register_terminal_errors([ValidationError, NotFoundError])
    set_global_error_mapper(
        lambda err: (
            TerminalError(str(err))
            if isinstance(err, HttpError) and 400 <= err.status < 500
            else None
        )
    )
    attempts: list[str] = []

    async def my_step(ctx: SagaContext, inp: str) -> None:
        attempts.append(inp)
        errors: dict[str, Exception] = {
            "validation": ValidationError("Invalid input"),
            "http": HttpError(404),
            "step": Declined("card"),
        }
        raise errors[inp]

    def step_mapper(err: BaseException) -> TerminalError | None:
        return TerminalError(f"mapped {err}") if isinstance(err, Declined) else None

    step = create_saga_step(
        "MyStep",
        my_step,
        options=SagaStepOptions(retry=fast_retry(3), as_terminal_error=step_mapper),
    )

    async def undo(data: Any) -> None:
        ledger.act("order.cancel", data)

    async def before(ctx: SagaContext, inp: str) -> str:
        return ledger.act("order.create", inp)

    first = create_saga_step_strict("Before", before, undo)

    async def flow(saga: SagaContext, inp: str) -> None:
        await first(saga, inp)
        await step(saga, inp)

    workflow = create_saga_workflow("Errors", flow)
    for kind in ("validation", "http", "step"):
        with pytest.raises(SagaCompensatedError):
            await engine.run(workflow, kind, saga_id=kind)
    assert attempts == ["validation", "http", "step"]  # each terminal at once: no retry
    assert [e for e in ledger.entries if e.startswith("order.cancel")] == [
        "order.cancel(order-1)",
        "order.cancel(order-3)",
        "order.cancel(order-5)",
    ]


# -- 03 composed workflows: runAsStep vs a remote call ------------------------------------------


def composition(ledger: Ledger) -> tuple[Any, Any, Any]:
    async def authorize(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        return {"id": ledger.act("payment.authorize", inp["amount"])}

    async def void(data: dict[str, Any]) -> None:
        ledger.act("payment.void", data["id"])

    authorize_payment = create_saga_step_strict("Authorize", authorize, void)

    async def create(ctx: SagaContext, inp: Any) -> dict[str, Any]:
        return {"id": ledger.act("order.create", inp), "total": 40}

    async def cancel(data: dict[str, Any]) -> None:
        ledger.act("order.cancel", data["id"])

    create_order = create_saga_step_strict("CreateOrder", create, cancel)

    async def ship(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        return {"id": ledger.act("shipping.ship", inp["order_id"])}

    create_shipment = create_saga_step_strict("CreateShipment", ship)

    async def payment(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        auth = await authorize_payment(saga, inp)
        return {"payment_id": auth["id"]}

    payment_workflow = create_saga_workflow("PaymentWorkflow", payment)

    async def order(saga: SagaContext, inp: Any) -> dict[str, Any]:
        created = await create_order(saga, inp)
        # embedded: payment's compensations join this saga's stack
        paid = await payment_workflow.run_as_step(saga, {"amount": created["total"]})
        await create_shipment(saga, {"order_id": created["id"]})
        return {"order_id": created["id"], "payment_id": paid["payment_id"]}

    return payment_workflow, create_saga_workflow("OrderWorkflow", order), create_order


async def test_run_as_step_shares_the_rollback(engine: Engine, ledger: Ledger) -> None:
    _, order_workflow, _ = composition(ledger)
    ledger.fail_next("shipping.ship")
    with pytest.raises(SagaCompensatedError):
        await engine.run(order_workflow, "c1", saga_id="o1")
    assert ledger.entries == [
        "order.create(c1)",
        "payment.authorize(40)",
        "shipping.ship(order-1)",
        "payment.void(payment-2)",
        "order.cancel(order-1)",
    ]


async def test_workflow_client_is_an_independent_saga(engine: Engine, ledger: Ledger) -> None:
    async def note(ctx: SagaContext, inp: dict[str, Any]) -> str:
        return ledger.act("notify.prepare", inp["user_id"])

    async def unnote(data: str) -> None:
        ledger.act("notify.discard", data)

    prepare = create_saga_step_strict("Prepare", note, unnote)

    async def deliver(ctx: SagaContext, inp: dict[str, Any]) -> str:
        return ledger.act("notify.send", inp["message"])

    send = create_saga_step_strict("Send", deliver)

    async def notification(saga: SagaContext, inp: dict[str, Any]) -> Any:
        await prepare(saga, inp)
        return await send(saga, inp)

    notification_workflow = create_saga_workflow("NotificationWorkflow", notification)
    _, _, create_order = composition(ledger)

    async def order(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        created = await create_order(saga, inp["user_id"])
        # workflowClient(saga.ctx, notificationWorkflow).run(...) -> saga.call: a child saga
        # with its own rollback; if it fails, this saga decides (here: it goes on)
        try:
            await saga.call(notification_workflow, {"user_id": inp["user_id"], "message": "hi"})
            notified = True
        except SagaCompensatedError:
            notified = False
        return {"order_id": created["id"], "notified": notified}

    workflow = create_saga_workflow("RemoteOrder", order)
    engine.register(notification_workflow)
    assert await engine.run(workflow, {"user_id": "u1"}, saga_id="r1") == {
        "order_id": "order-1",
        "notified": True,
    }
    ledger.fail_next("notify.send")
    assert await engine.run(workflow, {"user_id": "u2"}, saga_id="r2") == {
        "order_id": "order-4",
        "notified": False,
    }
    assert ledger.entries[-3:] == [
        "notify.prepare(u2)",
        "notify.send(hi)",
        "notify.discard(notify-5)",
    ]
    assert "order.cancel(order-4)" not in ledger.entries


# -- clients: service, object, send ---------------------------------------------------------------


async def test_service_object_and_send_clients(engine: Engine, ledger: Ledger) -> None:
    stock = {"p1": 5}

    async def check(saga: SagaContext, inp: dict[str, Any]) -> dict[str, int]:
        return {"available": stock.get(inp["product_id"], 0)}

    inventory_check = create_saga_workflow("InventoryCheck", check)

    async def reserve(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[Any]:
        reservation = ledger.act("inventory.reserve", inp["product_id"], inp["quantity"])
        return StepResponse({"reservation_id": reservation}, {"reservation_id": reservation})

    async def release(data: dict[str, Any]) -> None:
        ledger.act("inventory.release", data["reservation_id"])

    reserve_step = create_saga_step("Reserve", reserve, release)

    wallet = create_saga_virtual_object("Wallet")

    @wallet.handler()
    async def debit(saga: SagaContext, obj: ObjectContext, inp: dict[str, Any]) -> dict[str, Any]:
        balance = await obj.get("balance", 100)
        obj.set("balance", balance - inp["amount"])
        return {"transaction_id": f"tx-{balance}"}

    stats = create_saga_virtual_object("UserStats")

    @stats.handler()
    async def increment_order_count(saga: SagaContext, obj: ObjectContext, inp: Any) -> int:
        count = int(await obj.get("orders", 0)) + 1
        obj.set("orders", count)
        return count

    async def email(saga: SagaContext, inp: dict[str, Any]) -> None:
        ledger.act("email.send", inp["to"], inp["template"])

    email_workflow = create_saga_workflow("EmailService", email)

    async def order(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        # serviceClient(ctx, inventoryService).checkStock(...) -> saga.call
        available = await saga.call(inventory_check, {"product_id": inp["product_id"]})
        if available["available"] < inp["quantity"]:
            raise TerminalError("Insufficient stock")
        reservation = await reserve_step(saga, inp)
        # objectClient(ctx, walletObject, userId).debit(...) -> saga.call_object
        paid = await saga.call_object(wallet, inp["user_id"], "debit", {"amount": inp["amount"]})
        # the send clients -> saga.send / saga.send_object: started, not waited for
        sent = await saga.send(email_workflow, {"to": inp["email"], "template": "order-complete"})
        queued = await saga.send_object(stats, inp["user_id"], "increment_order_count")
        return {**reservation, **paid, "sent": [sent, queued]}

    workflow = create_saga_workflow("ClientOrder", order)
    engine.register(inventory_check, wallet, stats, email_workflow)
    inp = {"product_id": "p1", "quantity": 2, "amount": 30, "user_id": "u1", "email": "a@b"}
    result = await engine.run(workflow, inp, saga_id="k1")
    assert result["transaction_id"] == "tx-100"
    for started in result["sent"]:
        await within(engine.handle(started).result())
    assert await engine.object_state("Wallet", "u1") == {"balance": 70}
    assert await engine.object_state("UserStats", "u1") == {"orders": 1}
    assert ledger.entries == ["inventory.reserve(p1, 2)", "email.send(a@b, order-complete)"]
    with pytest.raises(SagaCompensatedError) as failed:
        await engine.run(workflow, {**inp, "quantity": 9}, saga_id="k2")
    assert failed.value.cause_message == "Insufficient stock"
    assert len(ledger.entries) == 2


# -- 04 virtual object, function form -------------------------------------------------------


async def test_virtual_object_function_form(engine: Engine, ledger: Ledger) -> None:
    async def move(ctx: SagaContext, inp: dict[str, Any]) -> None:
        ledger.act("bank.move", inp["to"], inp["amount"])

    account_step = create_saga_step_strict("Move", move)

    async def transfer(saga: SagaContext, obj: ObjectContext, inp: dict[str, Any]) -> Any:
        await account_step(saga, inp)
        balance = await obj.get("balance", 0)
        obj.set("balance", balance - inp["amount"])
        return {"success": True}

    async def get_balance(obj: SharedObjectContext) -> int:
        return int(await obj.get("balance") or 0)

    wallet = create_saga_virtual_object(
        "Wallet", {"transfer": transfer}, {"get_balance": get_balance}
    )
    engine.register(wallet)
    assert await engine.call_object("Wallet", "w1", "transfer", {"to": "w2", "amount": 5}) == {
        "success": True
    }
    assert await engine.client(wallet).call("w1", "get_balance") == -5
    assert ledger.entries == ["bank.move(w2, 5)"]

    # the same through the compat: handlers as dicts, shared (ctx) handlers
    async def peek(ctx: Any) -> Any:
        return await ctx.get("balance")

    same = compat.create_saga_virtual_object("Wallet2", shared={"peek": peek})
    engine.register(same)
    assert await engine.call_object("Wallet2", "w1", "peek") is None


# -- 07/08 container workflows: services per run, per request -----------------------------------


@dataclass
class ItemsService:
    collection: str
    accountability: str
    ledger: Ledger

    async def create_one(self, item: Any) -> str:
        return self.ledger.act(f"{self.collection}.create", self.accountability, item)

    async def delete_one(self, key: str) -> None:
        self.ledger.act(f"{self.collection}.delete", self.accountability, key)


@dataclass
class DirectusServices:
    orders_service: ItemsService
    payments_service: ItemsService


def container_steps() -> tuple[Any, Any]:
    async def create(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[Any]:
        services: DirectusServices = ctx.services
        order = await services.orders_service.create_one(inp["items"])
        return StepResponse({"order_id": order}, {"order_id": order})

    async def delete(data: dict[str, Any], *, services: DirectusServices) -> None:
        await services.orders_service.delete_one(data["order_id"])

    async def pay(ctx: SagaContext, inp: dict[str, Any]) -> StepResponse[Any]:
        payment = await ctx.services.payments_service.create_one(inp["amount"])
        return StepResponse({"payment_id": payment}, {"payment_id": payment})

    return (
        create_saga_step("CreateOrder", create, delete),
        create_saga_step_strict("ProcessPayment", pay),
    )


async def test_per_request_services_factory(url: str, ledger: Ledger) -> None:
    create_order, process_payment = container_steps()
    built: list[str] = []

    def per_request(scope: ServiceScope) -> DirectusServices:
        # defineContainerWorkflow's factory: the request's accountability travels in the input
        who = scope.input["accountability"]
        built.append(who)
        return DirectusServices(
            ItemsService("orders", who, ledger), ItemsService("payments", who, ledger)
        )

    async def pay_flow(saga: SagaContext, inp: dict[str, Any]) -> Any:
        return await process_payment(saga, inp)

    payment_workflow = create_saga_workflow("PaymentWorkflow", pay_flow)

    async def order(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        made = await create_order(saga, inp)
        # nested with runAsStep: the parent's services
        paid = await payment_workflow.run_as_step(
            saga, {"order_id": made["order_id"], "amount": inp["amount"]}
        )
        return {**made, **paid}

    workflow = create_saga_workflow(
        "OrderWorkflow", order, SagaWorkflowOptions(services=per_request)
    )
    async with make_engine(url) as engine:
        alice = {"accountability": "alice", "items": ["book"], "amount": 10}
        bob = {"accountability": "bob", "items": ["pen"], "amount": 3}
        assert await engine.run(workflow, alice, saga_id="a") == {
            "order_id": "orders-1",
            "payment_id": "payments-2",
        }
        ledger.fail_next("payments.create")
        with pytest.raises(SagaCompensatedError):
            await engine.run(workflow, bob, saga_id="b")
    assert ledger.entries == [
        "orders.create(alice, ['book'])",
        "payments.create(alice, 10)",
        "orders.create(bob, ['pen'])",
        "payments.create(bob, 3)",
        "orders.delete(bob, orders-3)",
    ]
    assert built == ["alice", "bob"]


async def test_container_long_workflow_rebuilds_services_on_resume(
    url: str, ledger: Ledger
) -> None:
    create_order, _ = container_steps()
    built: list[str] = []

    def container(scope: ServiceScope) -> DirectusServices:
        built.append(scope.saga_id)
        who = scope.input["accountability"]
        return DirectusServices(
            ItemsService("orders", who, ledger), ItemsService("payments", who, ledger)
        )

    wf = create_saga_long_workflow("ApprovalWorkflow")

    @wf.main()
    async def run(saga: SagaContext, inp: dict[str, Any]) -> Any:
        made = await create_order(saga, inp)
        saga.set_state("status", "awaiting approval")
        if not await saga.promise("approval").value():
            raise TerminalError("Order rejected")
        saga.set_state("status", "approved")
        return made

    @wf.handler()
    async def approve(ctx: HandlerContext, inp: dict[str, Any]) -> None:
        await ctx.promise("approval").resolve(inp["approved"])

    @wf.handler()
    async def get_status(ctx: HandlerContext, inp: Any) -> Any:
        return await ctx.get_state("status")

    async with make_engine(url, services=container) as engine:
        client = engine.client(wf)
        await client.start({"accountability": "carol", "items": [1]}, saga_id="w1")
        await suspended(engine, "w1")
        assert await client.call("w1", "get_status") == "awaiting approval"
        await client.call("w1", "approve", {"approved": False})
        with pytest.raises(SagaCompensatedError):
            await within(client.handle("w1").result())
    assert ledger.entries == ["orders.create(carol, [1])", "orders.delete(carol, orders-1)"]
    assert built == ["w1", "w1"]  # built for the first run, and again when it resumed
