"""python-saga-orchestrator's README quick start and examples, ported to
``sagakit.compat.saga_orchestrator`` by changing the import lines only, on SQLite and
PostgreSQL (an SQLAlchemy async engine on the test database: sagakit keeps its sagas in the
same database). The examples print what their steps do: the printed lines are the ledger of
side effects (what ran, what was compensated, in which order, how often).

Also: the builder's order with a failing middle step, concurrent starts of one aggregation id,
and each admin action (see docs/migrating/python-saga-orchestrator.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from sagakit.compat.saga_orchestrator import (
    ActiveSagaAlreadyExistsError,
    BaseStep,
    ExponentialRetry,
    InputContext,
    SagaAdmin,
    SagaBuilder,
    SagaOrchestrator,
    SagaStateError,
    SagaStateMixin,
    SagaStatus,
)
from sagakit.compat.saga_orchestrator.runtime import store_url_for
from sagakit.engine import backoff

from .conftest import fresh_pg_database

# -- the README's quick start (verbatim but for the import) ----------------------------------


class Base(DeclarativeBase):
    pass


class OrderSagaState(Base, SagaStateMixin):
    __tablename__ = "order_saga_state"


class ReserveInput(BaseModel):
    order_id: str


class ReserveOutput(BaseModel):
    reservation_id: str


class ChargeInput(BaseModel):
    reservation_id: str


class ChargeOutput(BaseModel):
    payment_id: str


class ReserveInventoryStep(BaseStep[ReserveInput, ReserveOutput]):
    async def execute(self, inp: ReserveInput) -> ReserveOutput:
        return ReserveOutput(reservation_id=f"res-{inp.order_id}")

    async def compensate(self, inp: ReserveInput, out: ReserveOutput) -> None:
        return None


class ChargePaymentStep(BaseStep[ChargeInput, ChargeOutput]):
    async def execute(self, inp: ChargeInput) -> ChargeOutput:
        return ChargeOutput(payment_id=f"pay-{inp.reservation_id}")


def build_order_saga():
    builder = SagaBuilder()

    reserve_ref = builder.add_step(
        step=ReserveInventoryStep(),
        input_map=lambda ctx: ReserveInput(order_id=ctx.initial_data["order_id"]),
    )

    builder.add_step(
        step=ChargePaymentStep(),
        depends_on=reserve_ref,
        input_map=lambda out: ChargeInput(reservation_id=out.reservation_id),
        retry_policy=ExponentialRetry(
            max_attempts=3,
            base_delay=timedelta(seconds=5),
        ),
    )

    return builder.build()


def setup_saga(
    session_maker: async_sessionmaker,
) -> tuple[SagaOrchestrator[OrderSagaState], SagaAdmin[OrderSagaState]]:
    orchestrator = SagaOrchestrator[OrderSagaState](
        model_class=OrderSagaState,
        session_maker=session_maker,
    )
    orchestrator.register("create_order_v1", build_order_saga())

    admin = SagaAdmin[OrderSagaState](engine=orchestrator.engine)
    return orchestrator, admin


# -- examples/common.py (verbatim but for the imports; create_runtime takes the test's URL) ---


class DemoSagaState(Base, SagaStateMixin):
    __tablename__ = "demo_saga_state"


class StartInput(BaseModel):
    model_name: str


class StartOutput(BaseModel):
    model_name: str
    reservation_id: str


class DeployInput(BaseModel):
    model_name: str
    reservation_id: str


class DeployOutput(BaseModel):
    endpoint: str


class FinalizeInput(BaseModel):
    endpoint: str


class FinalizeOutput(BaseModel):
    status: str


class ReserveResourcesStep(BaseStep[StartInput, StartOutput]):
    async def execute(self, inp: StartInput) -> StartOutput:
        print(f"[reserve] reserving resources for {inp.model_name}")
        return StartOutput(
            model_name=inp.model_name,
            reservation_id=f"reservation-{inp.model_name}",
        )

    async def compensate(self, inp: StartInput, out: StartOutput) -> None:
        print(f"[reserve] compensating reservation {out.reservation_id}")


class DeployModelStep(BaseStep[DeployInput, DeployOutput]):
    def __init__(self) -> None:
        self.calls = 0

    async def execute(self, inp: DeployInput) -> DeployOutput:
        self.calls += 1
        print(f"[deploy] attempt={self.calls} model={inp.model_name}")
        if self.calls == 1:
            raise RuntimeError("temporary deploy failure")
        return DeployOutput(endpoint=f"https://models.local/{inp.model_name}")


class FinalizeStep(BaseStep[FinalizeInput, FinalizeOutput]):
    async def execute(self, inp: FinalizeInput) -> FinalizeOutput:
        print(f"[finalize] model is available at {inp.endpoint}")
        return FinalizeOutput(status="COMPLETED")


class FailingPublishStep(BaseStep[DeployInput, DeployOutput]):
    async def execute(self, inp: DeployInput) -> DeployOutput:
        print(f"[publish] forcing failure for {inp.model_name}")
        raise RuntimeError("publish failed")


class ManualApprovalStep(BaseStep[StartInput, DeployOutput]):
    async def execute(self, inp: StartInput) -> DeployOutput:
        print(f"[approval] waiting for manual approval for {inp.model_name}")
        raise RuntimeError("approval is pending")


# -- examples/llm_deploy.py's model and steps ---------------------------------------------------


class ModelDeploySagaState(Base, SagaStateMixin):
    __tablename__ = "model_deploy_saga"


class CheckModelInput(BaseModel):
    model_name: str


class CheckModelOutput(BaseModel):
    exists: bool


class LlmDeployInput(BaseModel):
    model_name: str


class CheckModelStep(BaseStep[CheckModelInput, CheckModelOutput]):
    async def execute(self, inp: CheckModelInput) -> CheckModelOutput:
        return CheckModelOutput(exists=inp.model_name in {"llama-2"})


class DeployStep(BaseStep[LlmDeployInput, DeployOutput]):
    async def execute(self, inp: LlmDeployInput) -> DeployOutput:
        await asyncio.sleep(0.01)
        return DeployOutput(endpoint=f"https://models.local/{inp.model_name}")


# -- the databases ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The application's SQLAlchemy URL (an empty database)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/app.db"
    url = fresh_pg_database(request.getfixturevalue("pg_server"))
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


class Runtime:
    """What examples/common.py's create_runtime made, with the orchestrators to close."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.db = create_async_engine(url)
        self.session_maker = async_sessionmaker(self.db, expire_on_commit=False)
        self.orchestrators: list[SagaOrchestrator[Any]] = []

    def create(
        self, *, execution_lease: timedelta = timedelta(seconds=5)
    ) -> tuple[SagaOrchestrator[DemoSagaState], SagaAdmin[DemoSagaState]]:
        orchestrator = SagaOrchestrator[DemoSagaState](
            model_class=DemoSagaState,
            session_maker=self.session_maker,
            execution_lease=execution_lease,
        )
        admin = SagaAdmin[DemoSagaState](engine=orchestrator.engine)
        self.orchestrators.append(orchestrator)
        return orchestrator, admin

    async def row(self, model: type[Any], saga_id: UUID) -> Any:
        async with self.session_maker() as session:
            return (await session.execute(select(model).where(model.id == saga_id))).scalar_one()


@pytest.fixture
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    rt = Runtime(database_url)
    async with rt.db.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield rt
    finally:
        for orchestrator in rt.orchestrators:
            await orchestrator.close()
        await rt.db.dispose()


def ledger(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]


# -- the README ---------------------------------------------------------------------------------


async def test_readme_quick_start(runtime: Runtime) -> None:
    session_maker = runtime.session_maker
    orchestrator, admin = setup_saga(session_maker)
    runtime.orchestrators.append(orchestrator)

    saga_id = await orchestrator.start(
        saga_name="create_order_v1",
        initial_data={"order_id": "order-123"},
        aggregation_id="order-123",
    )

    snapshot = await admin.get_saga(saga_id)
    assert snapshot.status == SagaStatus.COMPLETED
    assert snapshot.aggregation_id == "order-123"
    assert [(h["step_id"], h["phase"], h["status"]) for h in snapshot.step_history] == [
        ("ReserveInventoryStep", "execute", "SUCCESS"),
        ("ChargePaymentStep", "execute", "SUCCESS"),
    ]
    assert snapshot.context["step_outputs"]["ChargePaymentStep"] == {
        "payment_id": "pay-res-order-123"
    }
    assert snapshot.current_step_index == 2
    # the application's row mirrors sagakit's state
    row = await runtime.row(OrderSagaState, saga_id)
    assert row.status == SagaStatus.COMPLETED
    assert row.aggregation_id == "order-123"
    assert len(row.step_history) == 2
    assert row.context["initial_data"] == {"order_id": "order-123"}
    assert (await orchestrator.get_snapshot(saga_id)).status == SagaStatus.COMPLETED
    # the README's recovery entry point: nothing is due
    assert await orchestrator.run_due(limit=100) == 0


def test_store_follows_the_session_maker(tmp_path: Path) -> None:
    for url, expected in [
        (f"sqlite+aiosqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/a.db"),
        ("sqlite+aiosqlite:///rel.db", "sqlite:///rel.db"),
        ("sqlite+aiosqlite://", "memory://"),
        ("postgresql+asyncpg://u:p%40ss@db:5433/app", "postgresql://u:p%40ss@db:5433/app"),
    ]:
        maker = async_sessionmaker(create_async_engine(url))
        assert store_url_for(maker) == expected


# -- the seed's examples ------------------------------------------------------------------------


async def test_example_llm_deploy(runtime: Runtime) -> None:
    session_maker = runtime.session_maker
    builder = SagaBuilder()
    check_ref = builder.add_step(
        step=CheckModelStep(),
        input_map=lambda ctx: CheckModelInput(model_name=ctx.initial_data["model"]),
    )
    builder.add_step(
        step=DeployStep(),
        depends_on=check_ref,
        input_map=lambda _: LlmDeployInput(model_name="llama-2"),
        retry_policy=ExponentialRetry(max_attempts=3, base_delay=timedelta(seconds=1)),
    )

    orchestrator = SagaOrchestrator[ModelDeploySagaState](
        model_class=ModelDeploySagaState,
        session_maker=session_maker,
    )
    runtime.orchestrators.append(orchestrator)
    orchestrator.register("ai_deploy_v1", builder.build())

    saga_id = await orchestrator.start(
        saga_name="ai_deploy_v1",
        initial_data={"model": "llama-2"},
        aggregation_id="deploy-1",
    )
    snapshot = await orchestrator.get_snapshot(saga_id)
    assert snapshot.status == SagaStatus.COMPLETED
    assert snapshot.context["step_outputs"] == {
        "CheckModelStep": {"exists": True},
        "DeployStep": {"endpoint": "https://models.local/llama-2"},
    }
    row = await runtime.row(ModelDeploySagaState, saga_id)
    assert row.status == SagaStatus.COMPLETED


async def test_example_retry_recovery(
    runtime: Runtime, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the seed suspends the saga for every retry, however short; sagakit sleeps a backoff of
    # up to DURABLE_BACKOFF_AFTER in memory: lowered here, run_due does the retry, as in the seed
    monkeypatch.setattr(backoff, "DURABLE_BACKOFF_AFTER", 0.0)
    orchestrator, admin = runtime.create()
    deploy_step = DeployModelStep()
    builder = SagaBuilder()
    reserve_ref = builder.add_step(
        step=ReserveResourcesStep(),
        input_map=lambda ctx: StartInput(model_name=ctx.initial_data["model_name"]),
    )
    deploy_ref = builder.add_step(
        step=deploy_step,
        depends_on=reserve_ref,
        input_map=lambda out: DeployInput(
            model_name=out.model_name,
            reservation_id=out.reservation_id,
        ),
        retry_policy=ExponentialRetry(
            max_attempts=2,
            base_delay=timedelta(milliseconds=50),  # the seed's example: 0 (see above)
        ),
    )
    builder.add_step(
        step=FinalizeStep(),
        depends_on=deploy_ref,
        input_map=lambda out: FinalizeInput(endpoint=out.endpoint),
    )

    orchestrator.register("retry_demo", builder.build())
    saga_id = await orchestrator.start(
        saga_name="retry_demo",
        initial_data={"model_name": "llama-2"},
        aggregation_id="retry-demo",
    )
    first = await admin.get_saga(saga_id)
    assert first.status == SagaStatus.SUSPENDED
    assert first.retry_counter == 1
    assert first.deadline_at is not None
    assert first.last_error == "RuntimeError('temporary deploy failure')"
    assert (await runtime.row(DemoSagaState, saga_id)).status == SagaStatus.SUSPENDED

    ran = 0
    for _ in range(200):  # the retry falls due 50 ms after the failure
        ran += await orchestrator.run_due(limit=10)
        if ran:
            break
        await asyncio.sleep(0.02)
    assert ran == 1
    after = await admin.get_saga(saga_id)
    assert after.status == SagaStatus.COMPLETED
    assert deploy_step.calls == 2
    assert ledger(capsys) == [
        "[reserve] reserving resources for llama-2",
        "[deploy] attempt=1 model=llama-2",
        "[deploy] attempt=2 model=llama-2",
        "[finalize] model is available at https://models.local/llama-2",
    ]
    assert (await runtime.row(DemoSagaState, saga_id)).status == SagaStatus.COMPLETED


async def test_example_compensation_flow(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    orchestrator, admin = runtime.create()
    builder = SagaBuilder()
    reserve_ref = builder.add_step(
        step=ReserveResourcesStep(),
        input_map=lambda ctx: StartInput(model_name=ctx.initial_data["model_name"]),
    )
    builder.add_step(
        step=FailingPublishStep(),
        depends_on=reserve_ref,
        input_map=lambda out: DeployInput(
            model_name=out.model_name,
            reservation_id=out.reservation_id,
        ),
        retry_policy=ExponentialRetry(
            max_attempts=0,
            base_delay=timedelta(seconds=1),
        ),
    )

    orchestrator.register("compensation_demo", builder.build())
    saga_id = await orchestrator.start(
        saga_name="compensation_demo",
        initial_data={"model_name": "mistral-7b"},
        aggregation_id="compensation-demo",
    )
    snapshot = await admin.get_saga(saga_id)
    # the seed 0.1 called a rolled-back saga FAILED; it (later) and sagakit say COMPENSATED
    assert snapshot.status == SagaStatus.COMPENSATED
    assert snapshot.current_step_index == 0
    assert (snapshot.last_error or "").startswith("RuntimeError('publish failed")
    assert [(h["step_id"], h["phase"], h["status"]) for h in snapshot.step_history] == [
        ("ReserveResourcesStep", "execute", "SUCCESS"),
        ("FailingPublishStep", "execute", "ERROR"),
        ("ReserveResourcesStep", "compensate", "SUCCESS"),
    ]
    assert ledger(capsys) == [
        "[reserve] reserving resources for mistral-7b",
        "[publish] forcing failure for mistral-7b",
        "[reserve] compensating reservation reservation-mistral-7b",
    ]
    assert (await runtime.row(DemoSagaState, saga_id)).status == SagaStatus.COMPENSATED


async def test_example_admin_skip(runtime: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    orchestrator, admin = runtime.create()
    builder = SagaBuilder()
    approval_ref = builder.add_step(
        step=ManualApprovalStep(),
        input_map=lambda ctx: StartInput(model_name=ctx.initial_data["model_name"]),
        retry_policy=ExponentialRetry(
            max_attempts=1,
            base_delay=timedelta(hours=1),
        ),
    )
    builder.add_step(
        step=FinalizeStep(),
        depends_on=approval_ref,
        input_map=lambda out: FinalizeInput(endpoint=out.endpoint),
    )

    orchestrator.register("admin_skip_demo", builder.build())
    saga_id = await orchestrator.start(
        saga_name="admin_skip_demo",
        initial_data={"model_name": "qwen-2.5"},
        aggregation_id="admin-skip-demo",
    )
    before = await admin.get_saga(saga_id)
    assert before.status == SagaStatus.SUSPENDED
    assert before.retry_counter == 1

    await admin.skip_step(
        saga_id,
        mock_output=DeployOutput(endpoint="https://models.local/qwen-2.5"),
    )
    after = await admin.get_saga(saga_id)
    assert after.status == SagaStatus.COMPLETED
    skipped = [h for h in after.step_history if h["skipped"]]
    assert [h["step_id"] for h in skipped] == ["ManualApprovalStep"]
    assert ledger(capsys) == [
        "[approval] waiting for manual approval for qwen-2.5",
        "[finalize] model is available at https://models.local/qwen-2.5",
    ]
    row = await runtime.row(DemoSagaState, saga_id)
    assert row.status == SagaStatus.COMPLETED
    assert row.step_history[0]["skipped"] is True


# -- notify, and each admin action --------------------------------------------------------------


class ApprovalInput(BaseModel):
    model_name: str
    approved: bool


class ApprovalOutput(BaseModel):
    approved: bool


class RecordApprovalStep(BaseStep[ApprovalInput, ApprovalOutput]):
    async def execute(self, inp: ApprovalInput) -> ApprovalOutput:
        print(f"[approval] {inp.model_name} approved={inp.approved}")
        return ApprovalOutput(approved=inp.approved)


def approval_input(ctx: InputContext) -> ApprovalInput:
    # the seed's way: a root step's input_map reads the event through InputContext
    assert ctx.events is not None
    return ApprovalInput(
        model_name=ctx.initial_data["model_name"], approved=ctx.latest_event["approved"]
    )


def waiting_saga() -> Any:
    builder = SagaBuilder()
    builder.add_step(
        step=ReserveResourcesStep(),
        input_map=lambda ctx: StartInput(model_name=ctx.initial_data["model_name"]),
    )
    builder.add_wait("approval")  # sagakit: the saga waits here for notify (seed: a retry)
    builder.add_step(step=RecordApprovalStep(), input_map=approval_input)
    return builder.build()


async def test_notify_feeds_a_root_input_map(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    orchestrator, admin = runtime.create()
    orchestrator.register("approval_v1", waiting_saga())
    saga_id = await orchestrator.start(
        saga_name="approval_v1", initial_data={"model_name": "phi-3"}, aggregation_id="phi-3"
    )
    waiting = await orchestrator.get_snapshot(saga_id)
    assert waiting.status == SagaStatus.SUSPENDED
    current_token = waiting.step_execution_token
    assert current_token is not None
    row = await runtime.row(DemoSagaState, saga_id)
    assert row.step_execution_token == current_token

    assert await orchestrator.notify(saga_id=saga_id, token="stale", event={}) is False
    accepted = await orchestrator.notify(
        saga_id=saga_id,
        token=current_token,
        event={"approved": True},
    )
    assert accepted is True
    done = await admin.get_saga(saga_id)
    assert done.status == SagaStatus.COMPLETED
    assert done.context["events"] == [{"approved": True}]
    assert done.context["step_outputs"]["RecordApprovalStep"] == {"approved": True}
    # a token answers once
    assert await orchestrator.notify(saga_id=saga_id, token=current_token, event={}) is False
    assert ledger(capsys) == [
        "[reserve] reserving resources for phi-3",
        "[approval] phi-3 approved=True",
    ]


class FlakyStep(BaseStep[StartInput, DeployOutput]):
    def __init__(self) -> None:
        self.broken = True

    async def execute(self, inp: StartInput) -> DeployOutput:
        print(f"[flaky] broken={self.broken}")
        if self.broken:
            raise RuntimeError("still broken")
        return DeployOutput(endpoint=f"https://models.local/{inp.model_name}")


def flaky_saga(flaky: FlakyStep, retry: ExponentialRetry | None) -> Any:
    builder = SagaBuilder()
    builder.add_step(
        step=ReserveResourcesStep(),
        input_map=lambda ctx: StartInput(model_name=ctx.initial_data["model_name"]),
    )
    builder.add_step(
        step=flaky,
        input_map=lambda ctx: StartInput(model_name=ctx.initial_data["model_name"]),
        retry_policy=retry,
    )
    return builder.build()


async def test_retry_step_of_a_suspended_saga(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    orchestrator, admin = runtime.create()
    flaky = FlakyStep()
    retry = ExponentialRetry(max_attempts=1, base_delay=timedelta(hours=1))
    orchestrator.register("flaky_v1", flaky_saga(flaky, retry))
    saga_id = await orchestrator.start(
        saga_name="flaky_v1", initial_data={"model_name": "m"}, aggregation_id="flaky"
    )
    assert (await admin.get_saga(saga_id)).status == SagaStatus.SUSPENDED
    flaky.broken = False
    await admin.retry_step(saga_id)
    assert (await admin.get_saga(saga_id)).status == SagaStatus.COMPLETED
    assert ledger(capsys) == [
        "[reserve] reserving resources for m",
        "[flaky] broken=True",
        "[flaky] broken=False",
    ]


async def test_retry_step_of_a_rolled_back_saga(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    orchestrator, admin = runtime.create()
    flaky = FlakyStep()
    orchestrator.register("flaky_v1", flaky_saga(flaky, None))
    saga_id = await orchestrator.start(
        saga_name="flaky_v1", initial_data={"model_name": "m"}, aggregation_id="flaky"
    )
    assert (await admin.get_saga(saga_id)).status == SagaStatus.COMPENSATED
    flaky.broken = False
    await admin.retry_step(saga_id)  # the rollback undid the reservation: it runs again
    assert (await admin.get_saga(saga_id)).status == SagaStatus.COMPLETED
    assert ledger(capsys) == [
        "[reserve] reserving resources for m",
        "[flaky] broken=True",
        "[reserve] compensating reservation reservation-m",
        "[reserve] reserving resources for m",
        "[flaky] broken=False",
    ]


async def test_compensate_step_of_a_waiting_saga(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    orchestrator, admin = runtime.create()
    orchestrator.register("approval_v1", waiting_saga())
    saga_id = await orchestrator.start(
        saga_name="approval_v1", initial_data={"model_name": "m"}, aggregation_id="m"
    )
    await admin.compensate_step(saga_id)
    snapshot = await admin.get_saga(saga_id)
    assert snapshot.status == SagaStatus.COMPENSATED
    assert ledger(capsys) == [
        "[reserve] reserving resources for m",
        "[reserve] compensating reservation reservation-m",
    ]
    assert (await runtime.row(DemoSagaState, saga_id)).status == SagaStatus.COMPENSATED


async def test_abort(runtime: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    orchestrator, admin = runtime.create()
    orchestrator.register("approval_v1", waiting_saga())
    waiting = await orchestrator.start(
        saga_name="approval_v1", initial_data={"model_name": "m"}, aggregation_id="a"
    )
    await admin.abort(waiting)
    aborted = await admin.get_saga(waiting)
    assert aborted.status == SagaStatus.FAILED  # sagakit: CANCELLED, without a rollback
    assert aborted.native_status == "CANCELLED"
    assert aborted.last_error == "Aborted by admin"
    assert (await runtime.row(DemoSagaState, waiting)).status == SagaStatus.FAILED

    orchestrator.register("create_order_v1", build_order_saga())
    done = await orchestrator.start(
        saga_name="create_order_v1", initial_data={"order_id": "o"}, aggregation_id="o"
    )
    # the seed turned a COMPLETED saga FAILED; sagakit refuses and keeps it COMPLETED
    with pytest.raises(SagaStateError):
        await admin.abort(done)
    assert (await admin.get_saga(done)).status == SagaStatus.COMPLETED
    assert ledger(capsys) == ["[reserve] reserving resources for m"]  # nothing was undone


# -- the order of steps, and aggregation ids ----------------------------------------------------


class PlainInput(BaseModel):
    label: str


class PlainOutput(BaseModel):
    label: str


class LedgerStep(BaseStep[PlainInput, PlainOutput]):
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def execute(self, inp: PlainInput) -> PlainOutput:
        print(f"[execute] {inp.label}")
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError(f"{inp.label} failed")
        return PlainOutput(label=inp.label)

    async def compensate(self, inp: PlainInput, out: PlainOutput) -> None:
        print(f"[compensate] {inp.label}")


async def test_steps_run_in_order_and_a_failing_middle_step_stops_the_rest(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    orchestrator, admin = runtime.create()
    builder = SagaBuilder()
    for label, fail in [("a", False), ("b", False), ("c", True), ("d", False)]:
        builder.add_step(
            step=LedgerStep(fail),
            input_map=lambda ctx, label=label: PlainInput(label=label),
            step_id=label,
        )
    orchestrator.register("ordered_v1", builder.build())
    saga_id = await orchestrator.start(
        saga_name="ordered_v1", initial_data={}, aggregation_id="ordered"
    )
    assert (await admin.get_saga(saga_id)).status == SagaStatus.COMPENSATED
    assert ledger(capsys) == [
        "[execute] a",
        "[execute] b",
        "[execute] c",
        "[compensate] b",
        "[compensate] a",
    ]


async def test_concurrent_starts_of_one_aggregation_id_make_one_saga(runtime: Runtime) -> None:
    # two orchestrators, each with its own sagakit engine on the same database: two processes
    first, _ = runtime.create()
    second, _ = runtime.create()
    for orchestrator in (first, second):
        orchestrator.register("approval_v1", waiting_saga())
    starts = [
        orchestrator.start(
            saga_name="approval_v1", initial_data={"model_name": "m"}, aggregation_id="order-9"
        )
        for orchestrator in (first, second) * 4
    ]
    results = await asyncio.gather(*starts, return_exceptions=True)
    ids = [r for r in results if isinstance(r, UUID)]
    assert len(ids) == 1, results
    assert all(
        isinstance(r, ActiveSagaAlreadyExistsError) for r in results if not isinstance(r, UUID)
    )
    assert len(await first.engine.native.list()) == 1
    # a later start while it waits: refused, as in the seed
    with pytest.raises(ActiveSagaAlreadyExistsError):
        await second.start(
            saga_name="approval_v1", initial_data={"model_name": "m"}, aggregation_id="order-9"
        )
    # once it has ended, the aggregation id starts a new saga
    await SagaAdmin(engine=first.engine).abort(ids[0])
    again = await second.start(
        saga_name="approval_v1", initial_data={"model_name": "m"}, aggregation_id="order-9"
    )
    assert again != ids[0]
    assert len(await first.engine.native.list()) == 2
    async with runtime.session_maker() as session:
        rows = (await session.execute(select(DemoSagaState))).scalars().all()
    assert sorted(r.status for r in rows) == [SagaStatus.FAILED, SagaStatus.SUSPENDED]
