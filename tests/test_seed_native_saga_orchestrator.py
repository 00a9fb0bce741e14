"""python-saga-orchestrator's README examples, ported to sagakit's native API (``from sagakit
import ...``), as a user moving off python-saga-orchestrator without the compat module writes
them: the same ``BaseStep`` classes and ``SagaBuilder``; ``Engine`` for ``SagaOrchestrator``
(``engine.register(name, definition)``, ``engine.start(name, initial_data, saga_id=aggregation
id)``); a worker engine for ``run_due``; ``builder.add_wait`` + ``engine.notify`` for
``notify``; ``engine.get`` / ``engine.admin`` for ``SagaAdmin``; ``admin.cancel`` for ``abort``.

The compat port is tests/test_compat_saga_orchestrator.py. Here the steps record their effects
in a ledger (tests/seed_ledger.py) and every test asserts on it: the order of the effects, each
compensation exactly once, and what did not run. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    BaseStep,
    Engine,
    ExponentialRetry,
    InputContext,
    RetryPolicy,
    SagaBuilder,
    SagaCancelledError,
    SagaCompensatedError,
    SagaDefinition,
    SagaSnapshot,
    SagaStateError,
    SagaStatus,
    TerminalError,
)
from sagakit.engine import backoff
from tests.conftest import fast_retry, make_engine, make_store_url
from tests.seed_ledger import Ledger
from tests.waiting import eventually, suspended, within

# -- the README's quick start, natively -------------------------------------------------------


class ReserveInput(BaseModel):
    order_id: str


class ReserveOutput(BaseModel):
    reservation_id: str


class ChargeInput(BaseModel):
    reservation_id: str


class ChargeOutput(BaseModel):
    payment_id: str


class ShipInput(BaseModel):
    order_id: str
    payment_id: str


class ShipOutput(BaseModel):
    tracking: str


class ReserveInventoryStep(BaseStep[ReserveInput, ReserveOutput]):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def execute(self, inp: ReserveInput) -> ReserveOutput:
        self.ledger.act("inventory.reserve", inp.order_id)
        return ReserveOutput(reservation_id=f"res-{inp.order_id}")

    async def compensate(self, inp: ReserveInput, out: ReserveOutput) -> None:
        self.ledger.act("inventory.release", out.reservation_id)


class ChargePaymentStep(BaseStep[ChargeInput, ChargeOutput]):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def execute(self, inp: ChargeInput) -> ChargeOutput:
        self.ledger.act("payment.charge", inp.reservation_id)
        return ChargeOutput(payment_id=f"pay-{inp.reservation_id}")

    async def compensate(self, inp: ChargeInput, out: ChargeOutput) -> None:
        self.ledger.act("payment.refund", out.payment_id)


class ShipStep(BaseStep[ShipInput, ShipOutput]):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def execute(self, inp: ShipInput) -> ShipOutput:
        self.ledger.act("shipping.ship", inp.order_id, inp.payment_id)
        return ShipOutput(tracking=f"trk-{inp.order_id}")


def build_order_saga(
    ledger: Ledger, charge_retry: RetryPolicy | None = None, **charge_options: Any
) -> SagaDefinition:
    builder = SagaBuilder()
    reserve_ref = builder.add_step(
        step=ReserveInventoryStep(ledger),
        input_map=lambda ctx: ReserveInput(order_id=ctx.initial_data["order_id"]),
    )
    builder.add_step(
        step=ChargePaymentStep(ledger),
        depends_on=reserve_ref,
        input_map=lambda out: ChargeInput(reservation_id=out.reservation_id),
        # the seed's ExponentialRetry(max_attempts=3, base_delay=5 s): 3 retries, so 4 attempts
        retry_policy=charge_retry
        or ExponentialRetry(max_attempts=4, initial_interval=timedelta(seconds=5)),
        **charge_options,
    )
    # added without depends_on: runs after the charge, and reads both earlier outputs
    builder.add_step(
        step=ShipStep(ledger),
        input_map=lambda ctx: ShipInput(
            order_id=ctx.initial_data["order_id"],
            payment_id=ctx.outputs["ChargePaymentStep"].payment_id,
        ),
        retry_policy=fast_retry(1),
    )
    return builder.build()


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


async def wait_for_status(engine: Engine, saga_id: str, status: SagaStatus) -> None:
    async def reached() -> bool:
        return (await engine.get(saga_id)).status == status

    await eventually(reached, f"saga {saga_id!r} to be {status}")


def history(snapshot: SagaSnapshot) -> list[tuple[str, str, str, int]]:
    """The seed's step_history: the journal's steps and compensations (the journal also holds
    the signals an InputContext read)."""
    return [
        (s.kind, s.name, s.status, s.attempts)
        for s in snapshot.steps
        if s.kind in ("step", "compensation")
    ]


async def test_quick_start(engine: Engine, ledger: Ledger) -> None:
    engine.register("create_order_v1", build_order_saga(ledger))

    # orchestrator.start(saga_name=, initial_data=, aggregation_id=)
    handle = await engine.start("create_order_v1", {"order_id": "order-123"}, saga_id="order-123")
    assert await within(handle.result()) == {
        "ReserveInventoryStep": {"reservation_id": "res-order-123"},
        "ChargePaymentStep": {"payment_id": "pay-res-order-123"},
        "ShipStep": {"tracking": "trk-order-123"},
    }
    assert ledger.entries == [
        "inventory.reserve(order-123)",
        "payment.charge(res-order-123)",
        "shipping.ship(order-123, pay-res-order-123)",
    ]
    # the aggregation id is the saga id: starting it again runs nothing again
    again = await engine.start("create_order_v1", {"order_id": "order-123"}, saga_id="order-123")
    assert await within(again.result()) == await handle.result()
    assert len(ledger.entries) == 3

    # admin.get_saga(saga_id).status / .step_history
    snapshot = await engine.admin.get_saga("order-123")
    assert snapshot.status == SagaStatus.COMPLETED
    assert snapshot.input == {"order_id": "order-123"}
    assert history(snapshot) == [
        ("step", "ReserveInventoryStep", "completed", 1),
        ("step", "ChargePaymentStep", "completed", 1),
        ("step", "ShipStep", "completed", 1),
    ]


async def test_concurrent_starts_of_one_aggregation_id_run_one_saga(
    url: str, ledger: Ledger
) -> None:
    # the seed checks for an active saga, then inserts: racing starts made two sagas. The saga
    # id is the aggregation id here, and the store creates it once, from any engine
    definition = build_order_saga(ledger)
    async with make_engine(url) as one, make_engine(url) as two:
        for engine in (one, two):
            engine.register("create_order_v1", definition)
        handles = await asyncio.gather(
            *(
                engine.start("create_order_v1", {"order_id": "agg-1"}, saga_id="agg-1")
                for engine in (one, two) * 4
            )
        )
        outputs = [await within(handle.result()) for handle in handles]
    assert all(output == outputs[0] for output in outputs)
    assert ledger.entries == [
        "inventory.reserve(agg-1)",
        "payment.charge(res-agg-1)",
        "shipping.ship(agg-1, pay-res-agg-1)",
    ]


async def test_a_failing_middle_step_stops_the_rest_and_rolls_back_once(
    engine: Engine, ledger: Ledger
) -> None:
    engine.register("create_order_v1", build_order_saga(ledger, fast_retry(3)))
    ledger.fail_next("payment.charge", times=3)
    with pytest.raises(SagaCompensatedError) as failed:
        await within(engine.run("create_order_v1", {"order_id": "o-1"}, saga_id="o-1"))
    assert (failed.value.step, failed.value.cause_type) == ("ChargePaymentStep", "Declined")
    assert ledger.entries == [
        "inventory.reserve(o-1)",
        "payment.charge(res-o-1)",
        "payment.charge(res-o-1)",
        "payment.charge(res-o-1)",
        "inventory.release(res-o-1)",  # once; shipping never ran, the charge is not refunded
    ]
    snapshot = await engine.get("o-1")
    assert snapshot.status == SagaStatus.COMPENSATED
    assert history(snapshot) == [
        ("step", "ReserveInventoryStep", "completed", 1),
        ("step", "ChargePaymentStep", "failed", 3),
        ("compensation", "ReserveInventoryStep", "completed", 1),
    ]
    failed_step = next(s for s in snapshot.steps if s.status == "failed")
    assert failed_step.error is not None and failed_step.error["type"] == "Declined"


# -- Recovery model: run_due is a worker engine -------------------------------------------------


async def test_a_worker_runs_what_a_client_started(url: str, ledger: Ledger) -> None:
    definition = build_order_saga(ledger)
    async with make_engine(url, worker=False) as client:
        client.register("create_order_v1", definition)
        await client.start("create_order_v1", {"order_id": "o-2"}, saga_id="o-2", run_here=False)
        assert (await client.get("o-2")).status == SagaStatus.PENDING
        assert ledger.entries == []  # written, not run: nobody has claimed it

        async with make_engine(url) as worker:  # run_due(limit=100), as a background worker
            worker.register("create_order_v1", definition)
            output = await within(worker.handle("o-2").result())
    assert output["ShipStep"] == {"tracking": "trk-o-2"}
    assert ledger.entries == [
        "inventory.reserve(o-2)",
        "payment.charge(res-o-2)",
        "shipping.ship(o-2, pay-res-o-2)",
    ]


async def test_a_worker_resumes_a_saga_suspended_for_a_retry(
    url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a backoff longer than DURABLE_BACKOFF_AFTER (1 s) suspends the saga, as every retry
    # does in the seed; lowered here so that a 100 ms backoff does and the test stays fast
    monkeypatch.setattr(backoff, "DURABLE_BACKOFF_AFTER", 0.01)
    retry = ExponentialRetry(max_attempts=2, initial_interval=timedelta(milliseconds=100))
    definition = build_order_saga(ledger, retry)
    ledger.fail_next("payment.charge")
    async with make_engine(url, worker=False) as client:
        client.register("create_order_v1", definition)
        await client.start("create_order_v1", {"order_id": "o-3"}, saga_id="o-3")
        waiting = await suspended(client, "o-3")
        assert [(s.name, s.attempts) for s in waiting.retrying] == [("ChargePaymentStep", 1)]
        assert waiting.wake_at is not None

        async with make_engine(url) as worker:  # picks it up once its retry falls due
            worker.register("create_order_v1", definition)
            await within(worker.handle("o-3").result())
    assert ledger.entries == [
        "inventory.reserve(o-3)",
        "payment.charge(res-o-3)",
        "payment.charge(res-o-3)",
        "shipping.ship(o-3, pay-res-o-3)",
    ]


# -- Notifications and external events ----------------------------------------------------------


class ApprovalInput(BaseModel):
    reservation_id: str
    approved: bool
    by: str


class ApprovalOutput(BaseModel):
    approved: bool


class RecordApprovalStep(BaseStep[ApprovalInput, ApprovalOutput]):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def execute(self, inp: ApprovalInput) -> ApprovalOutput:
        self.ledger.act("approval.record", inp.reservation_id, inp.by)
        if not inp.approved:
            raise TerminalError(f"rejected by {inp.by}")
        return ApprovalOutput(approved=True)


def approval_input(ctx: InputContext) -> ApprovalInput:
    # the seed's InputContext.events / outputs, read by a root step's input_map
    event = ctx.events[-1]
    assert event["name"] == "approval"
    return ApprovalInput(
        reservation_id=ctx.outputs["ReserveInventoryStep"].reservation_id,
        approved=event["payload"]["approved"],
        by=event["payload"]["by"],
    )


def waiting_saga(ledger: Ledger) -> SagaDefinition:
    builder = SagaBuilder()
    builder.add_step(
        step=ReserveInventoryStep(ledger),
        input_map=lambda ctx: ReserveInput(order_id=ctx.initial_data["order_id"]),
    )
    builder.add_wait("approval")  # suspended here until notify (or the signal "approval")
    builder.add_step(step=RecordApprovalStep(ledger), input_map=approval_input)
    return builder.build()


async def test_notify_feeds_a_later_input_map_across_a_restart(url: str, ledger: Ledger) -> None:
    definition = waiting_saga(ledger)
    async with make_engine(url) as first:
        first.register("approval_v1", definition)
        await first.start("approval_v1", {"order_id": "o-4"}, saga_id="o-4")
        await first.start("approval_v1", {"order_id": "o-5"}, saga_id="o-5")
        await suspended(first, "o-4")
        await suspended(first, "o-5")
    # the process that started them is gone; the sagas wait in the database

    async with make_engine(url) as second:
        second.register("approval_v1", definition)
        token = (await second.get("o-4")).wait_token
        assert token is not None
        assert await second.notify("o-4", token, {"approved": True, "by": "alice"}) is True
        assert await second.notify("o-4", token, {"approved": False, "by": "eve"}) is False
        output = await within(second.handle("o-4").result())
        assert output["approval"] == {"approved": True, "by": "alice"}
        assert output["RecordApprovalStep"] == {"approved": True}

        token = (await second.get("o-5")).wait_token
        assert token is not None
        assert await second.notify("o-5", token, {"approved": False, "by": "bob"}) is True
        with pytest.raises(SagaCompensatedError) as failed:
            await within(second.handle("o-5").result())
    assert failed.value.cause_message == "rejected by bob"
    assert ledger.entries == [
        "inventory.reserve(o-4)",
        "inventory.reserve(o-5)",
        "approval.record(res-o-4, alice)",
        "approval.record(res-o-5, bob)",
        "inventory.release(res-o-5)",
    ]


# -- Administrative operations ------------------------------------------------------------------


async def test_retry_step_of_a_parked_and_of_a_rolled_back_saga(
    engine: Engine, ledger: Ledger
) -> None:
    # the seed's "retry the current failed step": a step that parks when out of retries
    engine.register("parking_v1", build_order_saga(ledger, fast_retry(2), on_exhausted="park"))
    ledger.fail_next("payment.charge", times=2)
    handle = await engine.start("parking_v1", {"order_id": "p-1"}, saga_id="p-1")
    await wait_for_status(engine, "p-1", SagaStatus.PARKED)
    assert ledger.count("payment.charge(res-p-1)") == 2
    await engine.admin.retry_step("p-1", reason="the gateway is back")
    await within(handle.result())
    assert ledger.entries == [
        "inventory.reserve(p-1)",
        "payment.charge(res-p-1)",
        "payment.charge(res-p-1)",
        "payment.charge(res-p-1)",  # the retry, with a fresh budget
        "shipping.ship(p-1, pay-res-p-1)",
    ]

    # a saga that rolled back runs again from its failed step (DBOS's resume)
    ledger.entries.clear()
    engine.register("create_order_v1", build_order_saga(ledger, fast_retry(1)))
    ledger.fail_next("payment.charge")
    with pytest.raises(SagaCompensatedError):
        await within(engine.run("create_order_v1", {"order_id": "p-2"}, saga_id="p-2"))
    await engine.admin.retry_step("p-2")
    output = await within(engine.handle("p-2").result())
    assert output["ShipStep"] == {"tracking": "trk-p-2"}
    assert ledger.entries == [
        "inventory.reserve(p-2)",
        "payment.charge(res-p-2)",
        "inventory.release(res-p-2)",
        "inventory.reserve(p-2)",  # the rollback undid it: it runs again
        "payment.charge(res-p-2)",
        "shipping.ship(p-2, pay-res-p-2)",
    ]
    assert [a.action for a in (await engine.get("p-2")).audit] == ["retry"]


async def test_skip_step_with_a_mock_output(engine: Engine, ledger: Ledger) -> None:
    engine.register("skip_v1", build_order_saga(ledger, fast_retry(1), on_exhausted="park"))
    ledger.fail_next("payment.charge")
    handle = await engine.start("skip_v1", {"order_id": "k-1"}, saga_id="k-1")
    await wait_for_status(engine, "k-1", SagaStatus.PARKED)
    await engine.admin.skip_step("k-1", mock_output={"payment_id": "manual-payment"})
    output = await within(handle.result())
    assert output["ChargePaymentStep"] == {"payment_id": "manual-payment"}
    assert ledger.entries == [
        "inventory.reserve(k-1)",
        "payment.charge(res-k-1)",
        "shipping.ship(k-1, manual-payment)",  # the next step got the mock output
    ]
    skip = (await engine.get("k-1")).audit[-1]
    assert (skip.action, skip.step) == ("skip", "ChargePaymentStep")


async def test_compensate_a_waiting_and_a_completed_saga(engine: Engine, ledger: Ledger) -> None:
    engine.register("approval_v1", waiting_saga(ledger))
    handle = await engine.start("approval_v1", {"order_id": "c-1"}, saga_id="c-1")
    await suspended(engine, "c-1")
    await engine.admin.compensate("c-1", reason="customer cancelled")
    with pytest.raises(SagaCompensatedError) as failed:
        await within(handle.result())
    assert failed.value.cause_type == "OperatorRollback"

    engine.register("create_order_v1", build_order_saga(ledger))
    await within(engine.run("create_order_v1", {"order_id": "c-2"}, saga_id="c-2"))
    await engine.admin.compensate("c-2")
    await wait_for_status(engine, "c-2", SagaStatus.COMPENSATED)
    assert ledger.entries == [
        "inventory.reserve(c-1)",
        "inventory.release(res-c-1)",  # the approval step never ran
        "inventory.reserve(c-2)",
        "payment.charge(res-c-2)",
        "shipping.ship(c-2, pay-res-c-2)",
        "payment.refund(pay-res-c-2)",  # every step undone once, newest first
        "inventory.release(res-c-2)",
    ]


async def test_cancel_is_the_seeds_abort(engine: Engine, ledger: Ledger) -> None:
    engine.register("approval_v1", waiting_saga(ledger))
    handle = await engine.start("approval_v1", {"order_id": "a-1"}, saga_id="a-1")
    await suspended(engine, "a-1")
    snapshot = await engine.admin.cancel("a-1", "Aborted by admin")
    assert snapshot.status == SagaStatus.CANCELLED
    with pytest.raises(SagaCancelledError) as cancelled:
        await within(handle.result())
    assert cancelled.value.reason == "Aborted by admin"
    # stopped for good without a rollback: the reservation is kept, nothing else ran
    assert ledger.entries == ["inventory.reserve(a-1)"]

    # unlike the seed's abort, a completed saga stays completed
    engine.register("create_order_v1", build_order_saga(ledger))
    await within(engine.run("create_order_v1", {"order_id": "a-2"}, saga_id="a-2"))
    with pytest.raises(SagaStateError):
        await engine.admin.cancel("a-2", "Aborted by admin")
    assert (await engine.get("a-2")).status == SagaStatus.COMPLETED
