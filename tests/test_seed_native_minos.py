"""minos's execution-engine examples (the seed's "Usage Examples"), ported to sagakit's native
API (``from sagakit import ...``), as a user moving off minos without the compat module writes
them:

* a committed ``Saga`` of local steps is a ``@saga_workflow`` calling ``saga_step_strict``
  steps (``on_failure`` is the step's compensation), and ``manager.run`` is ``engine.run``;
* ``autocommit=False`` with ``commit()`` / ``reject()`` is a saga that publishes its context
  (``saga.set_state``) and then waits for a ``"decision"`` signal;
* a remote step paused on disk is a step that publishes the request, then
  ``saga.wait_for_signal("reply")``; ``manager.run(response=...)`` is
  ``engine.signal(saga_id, "reply", content, key=<the broker message id>)``;
* ``storage.load(uuid).status`` is ``engine.get(saga_id)``, ``rollback()`` of a finished
  execution is ``engine.admin.compensate``, ``storage.delete`` is ``engine.admin.delete``.

The compat port is tests/test_compat_minos.py. Here every callback records its effect in a
ledger (tests/seed_ledger.py) and every test asserts on it: the order of the effects, each
compensation exactly once, and what did not run. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    Engine,
    SagaCompensatedError,
    SagaContext,
    SagaNotFoundError,
    SagaStateError,
    SagaStatus,
    SagaWorkflow,
    TerminalError,
    saga_step_strict,
    saga_workflow,
)
from tests.conftest import fast_retry, make_engine, make_store_url
from tests.seed_ledger import Ledger
from tests.waiting import eventually, suspended, within


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_store_url(request.param, tmp_path, request, shared=True)


@pytest.fixture
async def engine(url: str) -> AsyncIterator[Engine]:
    async with make_engine(url) as started:
        yield started


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


# -- the order saga: two local steps, then a remote one -------------------------------------------


def order_steps(ledger: Ledger) -> tuple[Any, Any]:
    """minos's ``.local_step(reserve_stock).on_failure(release_stock)`` and
    ``.local_step(create_order).on_failure(cancel_order)``."""

    async def release_stock(context: dict[str, Any]) -> None:
        ledger.act("stock.release", context["reservation"])

    @saga_step_strict("reserve_stock", compensate=release_stock, retry=fast_retry(1))
    async def reserve_stock(ctx: SagaContext, context: dict[str, Any]) -> dict[str, Any]:
        return {**context, "reservation": ledger.act("stock.reserve", context["order"]["id"])}

    async def cancel_order(context: dict[str, Any]) -> None:
        ledger.act("order.cancel", context["order_id"])

    @saga_step_strict("create_order", compensate=cancel_order, retry=fast_retry(1))
    async def create_order(ctx: SagaContext, context: dict[str, Any]) -> dict[str, Any]:
        return {**context, "order_id": ledger.act("order.create", context["reservation"])}

    return reserve_stock, create_order


def basic_order_saga(ledger: Ledger) -> SagaWorkflow[Any, Any]:
    reserve_stock, create_order = order_steps(ledger)

    @saga_step_strict("notify_customer", retry=fast_retry(1))
    async def notify_customer(ctx: SagaContext, context: dict[str, Any]) -> dict[str, Any]:
        return {**context, "notified": ledger.act("mail.send", context["order_id"])}

    @saga_workflow("OrderSaga")
    async def order_saga(saga: SagaContext, context: dict[str, Any]) -> Any:
        context = await reserve_stock(saga, context)
        context = await create_order(saga, context)
        return await notify_customer(saga, context)

    return order_saga


# -- Basic Saga Execution ------------------------------------------------------------------------


async def test_basic_saga_execution(engine: Engine, ledger: Ledger) -> None:
    saga_definition = basic_order_saga(ledger)

    # manager.run(definition=, context=SagaContext(order=...), autocommit=True,
    # raise_on_error=True): the final context, or the error
    result = await within(engine.run(saga_definition, {"order": {"id": 7}}, saga_id="e-7"))
    assert result == {
        "order": {"id": 7},
        "reservation": "stock-1",
        "order_id": "order-2",
        "notified": "mail-3",
    }

    ledger.fail_next("order.create", TerminalError("no such customer"))
    with pytest.raises(SagaCompensatedError) as failed:
        await within(engine.run(saga_definition, {"order": {"id": 8}}, saga_id="e-8"))
    assert (failed.value.step, failed.value.cause_message) == ("create_order", "no such customer")
    assert ledger.entries == [
        "stock.reserve(7)",
        "order.create(stock-1)",
        "mail.send(order-2)",
        "stock.reserve(8)",
        "order.create(stock-4)",
        "stock.release(stock-4)",  # once; the failed step is not undone, the mail never sent
    ]


# -- Manual Execution Control: commit / reject ----------------------------------------------------


def manual_order_saga(ledger: Ledger) -> SagaWorkflow[Any, Any]:
    reserve_stock, create_order = order_steps(ledger)

    @saga_workflow("ManualOrderSaga")
    async def manual_order_saga(saga: SagaContext, context: dict[str, Any]) -> dict[str, Any]:
        context = await reserve_stock(saga, context)
        context = await create_order(saga, context)
        saga.set_state("context", context)  # what the caller validates
        decision = await saga.wait_for_signal("decision")  # execute(autocommit=False)
        if decision != "commit":
            raise TerminalError(f"rejected: {decision}")  # reject(): every on_failure runs
        return context

    return manual_order_saga


async def test_manual_execution_control(engine: Engine, ledger: Ledger) -> None:
    saga_definition = manual_order_saga(ledger)

    def validate_results(context: dict[str, Any]) -> bool:
        return bool(context["order"]["id"] % 2)

    handles = []
    for n in (1, 2):
        handle = await engine.start(saga_definition, {"order": {"id": n}}, saga_id=f"m-{n}")
        waiting = await suspended(engine, handle.saga_id)  # executed, not yet committed
        assert waiting.status == SagaStatus.SUSPENDED
        handles.append(handle)
    for handle in handles:
        context = await engine.query(handle.saga_id, "context")
        decision = "commit" if validate_results(context) else "reject"
        await engine.signal(handle.saga_id, "decision", decision)

    committed, rejected = handles
    assert (await within(committed.result()))["order_id"] == "order-2"
    with pytest.raises(SagaCompensatedError) as failed:
        await within(rejected.result())
    assert failed.value.cause_message == "rejected: reject"
    assert ledger.entries == [
        "stock.reserve(1)",
        "order.create(stock-1)",
        "stock.reserve(2)",
        "order.create(stock-3)",
        "order.cancel(order-4)",  # the rejected one, undone newest first, once each
        "stock.release(stock-3)",
    ]


# -- Pause and Resume Execution: a remote step and its reply ------------------------------------


def remote_order_saga(ledger: Ledger) -> SagaWorkflow[Any, Any]:
    """Two remote steps (payment, then shipping) answering on the one reply channel, as
    minos's responses come to the execution, whichever step they answer."""
    reserve_stock, _ = order_steps(ledger)

    def remote_step(target: str, undo: str | None) -> tuple[Any, Any]:
        async def publish_undo(context: dict[str, Any]) -> None:
            ledger.act("broker.publish", undo, context["order"]["id"])

        # the request goes out at least once: ctx.step_key is the message key that lets the
        # broker or the consumer drop a second copy after a crash
        @saga_step_strict(f"{target}.request", compensate=publish_undo if undo else None)
        async def request(ctx: SagaContext, context: dict[str, Any]) -> dict[str, Any]:
            ledger.act("broker.publish", target, context["order"]["id"])
            return context

        @saga_step_strict(f"{target}.reply", retry=fast_retry(1))
        async def on_reply(ctx: SagaContext, reply: dict[str, Any]) -> Any:
            if reply["status"] != "success":  # on_error
                raise TerminalError(f"{target} refused: {reply['content']}")
            return ledger.act(f"{target.lower()}.accepted", reply["content"])  # on_success

        return request, on_reply

    request_payment, on_payment = remote_step("CreatePayment", "RefundPayment")
    request_shipping, on_shipping = remote_step("CreateShipment", None)

    @saga_workflow("RemoteOrderSaga")
    async def remote_order_saga(saga: SagaContext, context: dict[str, Any]) -> dict[str, Any]:
        context = await reserve_stock(saga, context)
        await request_payment(saga, context)
        payment = await on_payment(saga, await saga.wait_for_signal("reply"))
        await request_shipping(saga, context)
        shipping = await on_shipping(saga, await saga.wait_for_signal("reply"))
        return {**context, "payment": payment, "shipping": shipping}

    return remote_order_saga


async def test_pause_and_resume_with_a_remote_reply_across_a_restart(
    url: str, ledger: Ledger
) -> None:
    saga_definition = remote_order_saga(ledger)
    async with make_engine(url) as first:  # manager.run(..., pause_on_disk=True)
        await first.start(saga_definition, {"order": {"id": 5}}, saga_id="r-5")
        paused = await suspended(first, "r-5")
        assert paused.wait_token is not None
    assert ledger.entries == ["stock.reserve(5)", "broker.publish(CreatePayment, 5)"]

    # the process is gone; the reply consumer of another one delivers the reply, and the
    # broker delivers it twice: the message id as the signal's key keeps the second copy out
    async with make_engine(url, worker=False) as consumer:
        for _ in range(2):
            await consumer.signal("r-5", "reply", {"status": "success", "content": "p-1"}, key="m1")

    async with make_engine(url) as second:
        second.register(saga_definition)
        await second.recover()
        await suspended(second, "r-5")  # waits for the shipping reply, not fooled by the copy
        assert ledger.entries[-2:] == [
            "createpayment.accepted(p-1)",
            "broker.publish(CreateShipment, 5)",
        ]
        await second.signal("r-5", "reply", {"status": "success", "content": "s-1"}, key="m2")
        result = await within(second.handle("r-5").result())
    assert (result["payment"], result["shipping"]) == ("createpayment-3", "createshipment-5")
    assert ledger.entries == [
        "stock.reserve(5)",
        "broker.publish(CreatePayment, 5)",
        "createpayment.accepted(p-1)",
        "broker.publish(CreateShipment, 5)",
        "createshipment.accepted(s-1)",
    ]


async def test_an_error_reply_rolls_back_the_remote_and_local_steps(
    engine: Engine, ledger: Ledger
) -> None:
    saga_definition = remote_order_saga(ledger)
    handle = await engine.start(saga_definition, {"order": {"id": 6}}, saga_id="r-6")
    await suspended(engine, "r-6")
    await engine.signal("r-6", "reply", {"status": "error", "content": "no funds"}, key="m3")
    with pytest.raises(SagaCompensatedError) as failed:
        await within(handle.result())
    assert failed.value.cause_message == "CreatePayment refused: no funds"
    assert ledger.entries == [
        "stock.reserve(6)",
        "broker.publish(CreatePayment, 6)",
        "broker.publish(RefundPayment, 6)",  # the remote step's on_failure, then the local's
        "stock.release(stock-1)",
    ]


# -- Status Monitoring, rolling back a finished saga, deleting --------------------------------


async def test_status_monitoring_rollback_and_delete(engine: Engine, ledger: Ledger) -> None:
    saga_definition = remote_order_saga(ledger)
    handle = await engine.start(saga_definition, {"order": {"id": 9}}, saga_id="s-9")

    # Paused: the step it is paused at, and the token a reply could also answer it with
    paused = await suspended(engine, "s-9")
    assert paused.wait_token is not None
    waiting = [s for s in paused.steps if s.status == "running"]
    assert [(s.kind, s.name) for s in waiting] == [("signal", "reply")]
    assert [s.name for s in paused.steps if s.kind == "step"] == [
        "reserve_stock",
        "CreatePayment.request",
    ]
    with pytest.raises(SagaStateError):  # a saga that has not ended cannot be deleted
        await engine.admin.delete("s-9")

    # the seed's manager.run(response=...) is a signal; notify answers one wait by its token
    assert await engine.notify("s-9", paused.wait_token, {"status": "success", "content": "p-9"})
    await eventually(
        lambda: published(ledger, "broker.publish(CreateShipment, 9)"), "the shipping request"
    )
    await engine.signal("s-9", "reply", {"status": "success", "content": "s-9"})
    await within(handle.result())

    # Finished: the final context
    finished = await engine.get("s-9")
    assert finished.status == SagaStatus.COMPLETED
    assert finished.output["order"] == {"id": 9}

    # "trigger rollback if needed": a finished saga is rolled back by an operator
    await engine.admin.compensate("s-9", reason="order returned")
    with pytest.raises(SagaCompensatedError):
        await within(engine.handle("s-9").result())
    errored = await engine.get("s-9")
    assert errored.status == SagaStatus.COMPENSATED
    assert errored.error is not None and errored.error["cause"]["type"] == "OperatorRollback"
    assert ledger.entries == [
        "stock.reserve(9)",
        "broker.publish(CreatePayment, 9)",
        "createpayment.accepted(p-9)",
        "broker.publish(CreateShipment, 9)",
        "createshipment.accepted(s-9)",
        "broker.publish(RefundPayment, 9)",  # every compensation once, newest first
        "stock.release(stock-1)",
    ]

    # storage.delete(uuid)
    deleted = await engine.admin.delete("s-9", reason="retention")
    assert deleted.status == SagaStatus.COMPENSATED
    with pytest.raises(SagaNotFoundError):
        await engine.get("s-9")


async def published(ledger: Ledger, entry: str) -> bool:
    return entry in ledger.entries


async def test_a_notified_wait_is_answered_by_its_notification_not_by_a_later_signal(
    url: str, ledger: Ledger
) -> None:
    """A reply delivered by ``notify`` (the wait's token) and then the next reply by a signal,
    both before the saga resumes, as a broker consumer does: ``notify`` returned True, so its
    event answers the wait it named ("Returns True ...: the event answers it"); the signal is
    for the next wait ("the waits for a name take the signals of that name in the order they
    were sent")."""
    saga_definition = remote_order_saga(ledger)
    async with make_engine(url) as first:
        await first.start(saga_definition, {"order": {"id": 3}}, saga_id="n-3")
        token = (await suspended(first, "n-3")).wait_token
    assert token is not None
    async with make_engine(url, worker=False) as consumer:  # nothing runs the saga meanwhile
        assert await consumer.notify("n-3", token, {"status": "success", "content": "p-3"})
        await consumer.signal("n-3", "reply", {"status": "success", "content": "s-3"})
    # a client engine (no background worker) runs the due saga here, until its run stops:
    # with both replies there it runs to its end (the bug left it waiting for a second reply)
    async with make_engine(url, worker=False) as second:
        second.register(saga_definition)
        assert await second.run_due() == ["n-3"]
        status = (await second.get("n-3")).status
    assert ledger.entries == [
        "stock.reserve(3)",
        "broker.publish(CreatePayment, 3)",
        "createpayment.accepted(p-3)",
        "broker.publish(CreateShipment, 3)",
        "createshipment.accepted(s-3)",
    ]
    assert status == SagaStatus.COMPLETED
