"""minos-microservice-saga's execution-engine examples (../shared/seeds/003), ported to
``sagakit.compat.minos`` by changing their imports and adding one Engine line, on SQLite and
PostgreSQL; then the seed's names beyond its examples (conditional steps, TransactionCommitter,
the executors). Every callback appends to a ledger (a JSON-lines file), so the tests check what ran,
in which order, and that each compensation ran once.

The pause/resume example runs its first half in another process, killed with SIGKILL while the
execution is paused; the test process resumes it with a response on a new Engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from sagakit import Engine, SagaError
from sagakit.compat.minos import (
    ConditionalSagaStep,
    ConditionalSagaStepExecution,
    DatabaseSagaExecutionRepository,
    Executor,
    LocalExecutor,
    RemoteSagaStepExecution,
    RequestExecutor,
    ResponseExecutor,
    Saga,
    SagaContext,
    SagaExecution,
    SagaExecutionAlreadyExecutedException,
    SagaExecutionNotFoundException,
    SagaExecutionRepository,
    SagaFailedCommitCallbackException,
    SagaFailedExecutionException,
    SagaManager,
    SagaNotCommittedException,
    SagaPausedExecutionStepException,
    SagaRequest,
    SagaResponse,
    SagaResponseStatus,
    SagaStatus,
    SagaStepStatus,
    TransactionCommitter,
    set_default_engine,
)
from sagakit.compat.minos import engines as minos_engines
from tests.conftest import make_engine

REPO = Path(__file__).resolve().parent.parent
WAIT = 60.0

# -- the ledger ----------------------------------------------------------------------------------

_ledger: Path | None = None


def note(event: str, **data: Any) -> None:
    assert _ledger is not None, "the test sets the ledger first"
    with open(_ledger, "a") as f:
        f.write(json.dumps({"event": event, **data}) + "\n")


def events(path: Path | None = None) -> list[str]:
    path = path or _ledger
    assert path is not None
    if not path.exists():
        return []
    return [json.loads(line)["event"] for line in path.read_text().splitlines() if line]


# -- the saga callbacks (module level: a definition is rebuilt from their names) -----------------


def reserve_stock(context: SagaContext) -> SagaContext:
    note("reserve_stock")
    context.reservation = f"r-{context.order['id']}"
    return context


def release_stock(context: SagaContext) -> None:
    note("release_stock", reservation=context.reservation)


async def create_order(context: SagaContext) -> SagaContext:
    note("create_order")
    context["order_id"] = f"o-{context.order['id']}"
    return context


async def cancel_order(context: SagaContext) -> None:
    note("cancel_order", order_id=context.order_id)


def request_payment(context: SagaContext) -> SagaRequest:
    note("request_payment")
    return SagaRequest("CreatePayment", {"order_id": context.order_id, "amount": 40})


async def payment_done(context: SagaContext, response: SagaResponse) -> SagaContext:
    content = await response.content()
    note("payment_done", content=content)
    context.payment = content
    return context


def payment_refused(context: SagaContext, response: SagaResponse) -> SagaContext:
    note("payment_refused")
    raise ValueError("the payment was refused")


def refund_payment(context: SagaContext) -> SagaRequest:
    note("refund_payment")
    return SagaRequest("RefundPayment", {"order_id": context.order_id})


def request_shipping(context: SagaContext) -> SagaRequest:
    note("request_shipping")
    return SagaRequest("CreateShipment", {"order_id": context.order_id})


def shipping_done(context: SagaContext, response: SagaResponse) -> SagaContext:
    note("shipping_done")
    context.shipped = True
    return context


def notify_customer(context: SagaContext) -> None:
    note("notify_customer")
    raise RuntimeError("the mail server is down")


def create_order_saga() -> Saga:
    """Reserve, create the order, pay (remote)."""
    return (
        Saga()
        .local_step(reserve_stock)
        .on_failure(release_stock)
        .local_step(create_order)
        .on_failure(cancel_order)
        .remote_step(request_payment)
        .on_success(payment_done)
        .on_error(payment_refused)
        .on_failure(refund_payment)
        .commit()
    )


def local_saga(*, failing: bool = False) -> Saga:
    saga = Saga().local_step(reserve_stock).on_failure(release_stock)
    step = saga.local_step(create_order).on_failure(cancel_order)
    if failing:
        step = step.local_step(notify_customer)
    return saga.commit()


def two_remote_saga() -> Saga:
    return (
        Saga()
        .local_step(create_order)
        .on_failure(cancel_order)
        .remote_step(request_payment)
        .on_success(payment_done)
        .on_failure(refund_payment)
        .remote_step(request_shipping)
        .on_success(shipping_done)
        .commit()
    )


class Broker:
    """A broker_pool: records each request in the ledger; with ``reply``, answers a payment
    request by resuming the execution through ``reply`` (as a reply consumer would)."""

    def __init__(self, reply: Any = None):
        self.reply = reply
        self.keys: list[str] = []
        self.tasks: list[asyncio.Task[Any]] = []

    async def publish(
        self,
        request: SagaRequest,
        *,
        execution_uuid: uuid.UUID,
        user: uuid.UUID | None,
        key: str,
    ) -> None:
        note("publish", target=request.target, content=await request.content())
        self.keys.append(key)
        if self.reply is not None:
            response = SagaResponse({"paid": 40}, uuid=execution_uuid)
            self.tasks.append(asyncio.create_task(self.reply(response)))


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def ledger(tmp_path: Path) -> Iterator[Path]:
    global _ledger
    _ledger = tmp_path / "ledger.jsonl"
    yield _ledger
    _ledger = None
    minos_engines._default = None


@pytest.fixture
async def engine(process_db_url: str) -> AsyncIterator[Engine]:
    async with make_engine(process_db_url) as started:
        yield started


async def within(awaitable: Any) -> Any:
    async with asyncio.timeout(WAIT):
        return await awaitable


# -- Basic Saga Execution ------------------------------------------------------------------------


async def test_basic_saga_execution(engine: Engine) -> None:
    async def reply(response: SagaResponse) -> None:
        await SagaManager(storage=storage).run(response=response, pause_on_disk=True)

    broker_pool = Broker(reply)

    # -- the seed's example; `...` is the Engine line ----------------------------------------
    storage = DatabaseSagaExecutionRepository(engine)
    manager = SagaManager(storage=storage, broker_pool=broker_pool)

    async def execute_order_saga(order_data):
        saga_definition = create_order_saga()
        context = SagaContext(order=order_data)

        result = await manager.run(
            definition=saga_definition, context=context, autocommit=True, raise_on_error=True
        )

        return result

    # -----------------------------------------------------------------------------------------
    result = await within(execute_order_saga({"id": 7}))
    await within(asyncio.gather(*broker_pool.tasks))
    assert isinstance(result, SagaExecution)
    assert result.status == SagaStatus.Finished
    assert result.context.payment == {"paid": 40}
    assert result.context.order_id == "o-7"
    assert events() == [
        "reserve_stock",
        "create_order",
        "request_payment",
        "publish",
        "payment_done",
    ]
    assert [s.status for s in result.executed_steps] == [SagaStepStatus.Finished] * 3


async def test_basic_saga_execution_failure_rolls_back(engine: Engine) -> None:
    async def reply(response: SagaResponse) -> None:
        refused = SagaResponse("no funds", status=SagaResponseStatus.ERROR, uuid=response.uuid)
        await SagaManager(storage=storage).run(response=refused, pause_on_disk=True)

    broker_pool = Broker(reply)
    storage = DatabaseSagaExecutionRepository(engine)
    manager = SagaManager(storage=storage, broker_pool=broker_pool)
    with pytest.raises(SagaFailedExecutionException, match="refused"):
        await within(
            manager.run(definition=create_order_saga(), context=SagaContext(order={"id": 8}))
        )
    await within(asyncio.gather(*broker_pool.tasks, return_exceptions=True))
    # on_error raised: the remote step is undone too (its on_failure request is published),
    # then the local steps, newest first, once each
    assert events() == [
        "reserve_stock",
        "create_order",
        "request_payment",
        "publish",
        "payment_refused",
        "refund_payment",
        "publish",
        "cancel_order",
        "release_stock",
    ]
    errored = await manager.run(
        definition=local_saga(failing=True),
        context=SagaContext(order={"id": 9}),
        raise_on_error=False,
    )
    assert isinstance(errored, SagaExecution)
    assert errored.status == SagaStatus.Errored and errored.already_rollback


# -- Manual Execution Control --------------------------------------------------------------------


async def manual_execution_control(saga_definition: Saga, validate_results: Any) -> Any:
    """The seed's example, as a function of its free variables."""
    # Create execution manually for fine-grained control
    execution = SagaExecution.from_definition(
        definition=saga_definition,
        context=SagaContext(data="initial", order={"id": 1}),
        uuid=uuid4(),
    )

    # Execute with manual transaction control
    try:
        context = await execution.execute(autocommit=False)

        # Manual commit after validation
        if validate_results(context):
            await execution.commit()
        else:
            await execution.reject()

    except Exception:
        # Manual rollback on failure
        await execution.rollback()
        raise
    return execution


async def test_manual_execution_control(engine: Engine) -> None:
    set_default_engine(engine)  # the Engine line

    committed = await within(manual_execution_control(local_saga(), lambda context: True))
    assert committed.status == SagaStatus.Finished
    assert (await engine.get(str(committed.uuid))).status == "COMPLETED"
    assert events() == ["reserve_stock", "create_order"]

    rejected = await within(manual_execution_control(local_saga(), lambda context: False))
    assert rejected.status == SagaStatus.Errored and rejected.already_rollback
    assert events()[2:] == ["reserve_stock", "create_order", "cancel_order", "release_stock"]

    with pytest.raises(SagaFailedExecutionException, match="mail server"):
        await within(manual_execution_control(local_saga(failing=True), lambda context: True))
    assert events()[6:] == [
        "reserve_stock",
        "create_order",
        "notify_customer",
        "cancel_order",
        "release_stock",
    ]


async def test_manual_execution_waits_for_commit(engine: Engine) -> None:
    execution = SagaExecution.from_definition(
        local_saga(), SagaContext(order={"id": 2}), engine=engine
    )
    context = await within(execution.execute(autocommit=False))
    assert context.order_id == "o-2"
    # steps done, not committed: minos's Finished; sagakit keeps the saga waiting for the decision
    assert execution.status == SagaStatus.Finished
    assert (await engine.get(str(execution.uuid))).status == "SUSPENDED"
    with pytest.raises(SagaExecutionAlreadyExecutedException):
        await execution.execute()
    await within(execution.commit())
    await within(execution.commit())  # committing again changes nothing
    assert (await engine.get(str(execution.uuid))).status == "COMPLETED"


async def test_rollback_of_a_committed_execution(engine: Engine) -> None:
    execution = SagaExecution.from_definition(
        local_saga(), SagaContext(order={"id": 3}), engine=engine
    )
    await within(execution.execute())
    assert execution.status == SagaStatus.Finished
    await within(execution.rollback())
    await within(execution.rollback())  # once rolled back, again does nothing
    assert execution.status == SagaStatus.Errored and execution.already_rollback
    assert events() == ["reserve_stock", "create_order", "cancel_order", "release_stock"]
    assert (await engine.get(str(execution.uuid))).status == "COMPENSATED"


async def test_uncommitted_definition_is_refused() -> None:
    with pytest.raises(SagaNotCommittedException):
        SagaExecution.from_definition(Saga().local_step(reserve_stock).saga)
    assert issubclass(SagaNotCommittedException, SagaError)


# -- Pause and Resume Execution (across a SIGKILLed process) -------------------------------------


async def start_paused(url: str, ledger_path: str) -> None:
    """The first half of the seed's example, in its own process; prints the execution's uuid
    and waits to be killed."""
    global _ledger
    _ledger = Path(ledger_path)
    long_running_saga = two_remote_saga()
    initial_context = SagaContext(order={"id": 5})
    storage = DatabaseSagaExecutionRepository(Engine(url))  # the Engine line
    manager = SagaManager(storage=storage, broker_pool=Broker())

    # Execute with pause-on-disk for background processing
    execution_uuid = await manager.run(
        definition=long_running_saga,
        context=initial_context,
        pause_on_disk=True,  # Pause remote steps on disk
        return_execution=False,  # Return UUID instead of execution
    )
    print(json.dumps({"uuid": str(execution_uuid)}), flush=True)
    await asyncio.Event().wait()


async def test_pause_and_resume_across_a_restart(process_db_url: str, ledger: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    code = (
        "import asyncio, sys; from tests import test_compat_minos as m; "
        "asyncio.run(m.start_paused(sys.argv[1], sys.argv[2]))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        process_db_url,
        str(ledger),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await within(proc.stdout.readline())
        assert line, (await proc.communicate())[1].decode()[-3000:]
        execution_uuid = uuid.UUID(json.loads(line)["uuid"])
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert events() == ["create_order", "request_payment", "publish"]

    async with make_engine(process_db_url) as engine:  # a new process's engine
        storage = DatabaseSagaExecutionRepository(engine)
        manager = SagaManager(storage=storage, broker_pool=Broker())
        paused = await storage.load(execution_uuid)
        assert paused.status == SagaStatus.Paused
        assert paused.paused_step is not None
        assert paused.paused_step.status == SagaStepStatus.PausedByOnExecute

        # Later, resume with response (the execution it answers: uuid=, as minos needs too)
        response = SagaResponse(content={"result": "processed"}, uuid=execution_uuid)
        execution = await within(manager.run(response=response, pause_on_disk=True))
        assert isinstance(execution, SagaExecution)
        assert execution.status == SagaStatus.Paused  # now at the shipping step
        final_context = await within(
            manager.run(response=SagaResponse({"ok": 1}, uuid=execution_uuid), pause_on_disk=True)
        )
        assert isinstance(final_context, SagaExecution)
        assert final_context.status == SagaStatus.Finished
        assert final_context.context.shipped is True
        assert final_context.context.payment == {"result": "processed"}
    assert events() == [
        "create_order",
        "request_payment",
        "publish",
        "payment_done",
        "request_shipping",
        "publish",
        "shipping_done",
    ]


# -- Status Monitoring ---------------------------------------------------------------------------


async def status_monitoring(storage: SagaExecutionRepository, execution_uuid: Any) -> None:
    """The seed's example."""
    # Check execution status
    execution = await storage.load(execution_uuid)

    if execution.status == SagaStatus.Paused:
        print(f"Execution paused at step: {execution.paused_step.uuid}")
        print(f"Step status: {execution.paused_step.status}")

    elif execution.status == SagaStatus.Finished:
        print("Saga completed successfully")
        print(f"Final context: {execution.context}")

    elif execution.status == SagaStatus.Errored:
        print("Saga execution failed")
        # Trigger rollback if needed
        await execution.rollback()


async def test_status_monitoring(engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    storage = DatabaseSagaExecutionRepository(engine)  # the Engine line
    manager = SagaManager(storage=storage)
    paused = await within(
        manager.run(
            definition=create_order_saga(),
            context=SagaContext(order={"id": 4}),
            pause_on_disk=True,
        )
    )
    assert isinstance(paused, SagaExecution) and paused.paused_step is not None
    # no broker_pool: the request is recorded for the caller to send
    assert paused.paused_step.request == SagaRequest(
        "CreatePayment", {"order_id": "o-4", "amount": 40}
    )
    await status_monitoring(storage, paused.uuid)
    out = capsys.readouterr().out
    assert f"Execution paused at step: {paused.paused_step.uuid}" in out
    assert "Step status: SagaStepStatus.PausedByOnExecute" in out

    await within(manager.run(response=SagaResponse({"paid": 1}, uuid=paused.uuid)))
    await status_monitoring(storage, paused.uuid)
    out = capsys.readouterr().out
    assert "Saga completed successfully" in out and "order_id='o-4'" in out

    failed = await within(
        manager.run(
            definition=local_saga(failing=True),
            context=SagaContext(order={"id": 6}),
            raise_on_error=False,
        )
    )
    assert isinstance(failed, SagaExecution)
    await status_monitoring(storage, failed.uuid)
    assert "Saga execution failed" in capsys.readouterr().out
    # the failed execution was rolled back once; the monitor's rollback added nothing
    assert events().count("cancel_order") == 1 and events().count("release_stock") == 1

    await storage.delete(failed.uuid)
    with pytest.raises(SagaExecutionNotFoundException):
        await storage.load(failed.uuid)


# -- Custom Repository Implementation ------------------------------------------------------------


class MyStorage:
    def __init__(self) -> None:
        self.rows: dict[Any, str] = {}

    async def save(self, key: Any, raw: dict[str, Any]) -> None:
        self.rows[str(key)] = json.dumps(raw)  # a real backend keeps JSON

    async def get(self, key: Any) -> dict[str, Any] | None:
        row = self.rows.get(str(key))
        return None if row is None else json.loads(row)

    async def remove(self, key: Any) -> None:
        self.rows.pop(str(key), None)


class CustomSagaRepository(SagaExecutionRepository):
    """The seed's example."""

    def __init__(self, storage_backend):
        self.storage = storage_backend

    async def store(self, execution):
        # Custom storage logic
        await self.storage.save(execution.uuid, execution.raw)

    async def load(self, uuid):
        # Custom loading logic
        raw_data = await self.storage.get(uuid)
        if not raw_data:
            raise SagaExecutionNotFoundException(f"Execution {uuid} not found")
        return SagaExecution.from_raw(raw_data)

    async def delete(self, uuid):
        # Custom deletion logic
        await self.storage.remove(uuid)


async def test_custom_repository(engine: Engine) -> None:
    set_default_engine(engine)  # the Engine line
    my_storage = MyStorage()

    # Use custom repository
    custom_repo = CustomSagaRepository(my_storage)
    manager = SagaManager(storage=custom_repo)

    paused = await within(
        manager.run(
            definition=create_order_saga(),
            context=SagaContext(order={"id": 11}),
            pause_on_disk=True,
        )
    )
    assert isinstance(paused, SagaExecution)
    assert (await my_storage.get(paused.uuid))["status"] == "paused"
    done = await within(
        manager.run(response=SagaResponse({"paid": 2}, uuid=paused.uuid), pause_on_disk=True)
    )
    assert isinstance(done, SagaExecution) and done.status == SagaStatus.Finished
    stored = await my_storage.get(paused.uuid)
    assert stored is not None and stored["status"] == "finished"
    assert stored["context"]["payment"] == {"paid": 2}
    await custom_repo.delete(paused.uuid)
    with pytest.raises(SagaExecutionNotFoundException):
        await custom_repo.load(paused.uuid)
    assert events() == ["reserve_stock", "create_order", "request_payment", "payment_done"]


# -- raw, duplicates ------------------------------------------------------------------------------


async def test_from_raw_round_trip(engine: Engine) -> None:
    execution = SagaExecution.from_definition(
        create_order_saga(), SagaContext(order={"id": 12}), engine=engine, user=uuid4()
    )
    with pytest.raises(SagaPausedExecutionStepException):
        await within(execution.execute())
    raw = json.loads(json.dumps(execution.raw))
    again = SagaExecution.from_raw(raw, engine=engine)
    assert again.raw == execution.raw
    assert again.status == SagaStatus.Paused and again.user == execution.user
    assert again.paused_step is not None and again.paused_step.uuid == execution.paused_step.uuid
    assert [s.uuid for s in again.executed_steps] == [s.uuid for s in execution.executed_steps]
    # the rebuilt execution drives the same saga
    context = await within(again.execute(response=SagaResponse({"paid": 3}, uuid=again.uuid)))
    assert context.payment == {"paid": 3}
    await execution.refresh()
    assert execution.status == SagaStatus.Finished


async def test_duplicate_response_is_taken_once(engine: Engine) -> None:
    storage = DatabaseSagaExecutionRepository(engine)
    broker = Broker()
    manager = SagaManager(storage=storage, broker_pool=broker)
    execution = await within(
        manager.run(
            definition=two_remote_saga(), context=SagaContext(order={"id": 13}), pause_on_disk=True
        )
    )
    assert isinstance(execution, SagaExecution)
    first = SagaResponse({"paid": 1}, uuid=execution.uuid)
    # delivered twice at once, then again once the saga has moved on to the next step
    await within(
        asyncio.gather(
            manager.run(response=first, pause_on_disk=True),
            manager.run(response=first, pause_on_disk=True),
        )
    )
    again = await within(manager.run(response=first, pause_on_disk=True))
    assert isinstance(again, SagaExecution)
    assert again.status == SagaStatus.Paused
    assert events().count("payment_done") == 1
    assert events().count("request_shipping") == 1
    done = await within(
        manager.run(response=SagaResponse({"ok": 1}, uuid=execution.uuid), pause_on_disk=True)
    )
    assert isinstance(done, SagaExecution) and done.status == SagaStatus.Finished
    assert events() == [
        "create_order",
        "request_payment",
        "publish",
        "payment_done",
        "request_shipping",
        "publish",
        "shipping_done",
    ]
    # each request is published with a key that stays the same if its step runs again
    assert len(set(broker.keys)) == 2
    with pytest.raises(SagaExecutionAlreadyExecutedException):
        await manager.run(response=first, pause_on_disk=True)


# -- conditional steps ---------------------------------------------------------------------------


def rows() -> list[dict[str, Any]]:
    assert _ledger is not None
    return [json.loads(line) for line in _ledger.read_text().splitlines() if line]


def is_big(context: SagaContext) -> bool:
    note("is_big")
    return bool(context.amount > 100)


def review(context: SagaContext) -> SagaContext:
    note("review")
    context.path = "review"
    return context


def cancel_review(context: SagaContext) -> None:
    note("cancel_review", path=context.path)


async def charge_card(context: SagaContext) -> SagaContext:
    note("charge_card", amount=context.amount)
    context.path = "card"
    return context


def refund_card(context: SagaContext) -> None:
    note("refund_card", path=context.path)


def charge_wallet(context: SagaContext) -> SagaContext:
    note("charge_wallet")
    context.path = "wallet"
    return context


def refund_wallet(context: SagaContext) -> None:
    note("refund_wallet")


def conditional_saga(*, failing: bool = False) -> Saga:
    """Reserve; then a review (amount > 100), a card charge (async condition: amount > 10) or
    a wallet charge; then create the order (and, failing, a step that raises)."""
    big = Saga().local_step(review).on_failure(cancel_review).commit()
    medium = Saga().local_step(charge_card).on_failure(refund_card).commit()
    small = Saga().local_step(charge_wallet).on_failure(refund_wallet).commit()
    saga = (
        Saga()
        .local_step(reserve_stock)
        .on_failure(release_stock)
        .conditional_step()
        .if_then(is_big, big)
        .if_then(wants_medium_async, medium)
        .else_then(small)
        .local_step(create_order)
        .on_failure(cancel_order)
    )
    if failing:
        saga = saga.local_step(notify_customer)
    return saga.commit()


async def wants_medium_async(context: SagaContext) -> bool:  # minos's conditions may be async
    note("wants_medium")
    amount = context.amount
    context.amount = -1  # a condition's own changes do not go on
    return bool(amount > 10)


async def test_conditional_step_takes_each_branch(engine: Engine) -> None:
    storage = DatabaseSagaExecutionRepository(engine)
    manager = SagaManager(storage=storage)
    ran: dict[int, SagaExecution] = {}
    for order_id, amount in ((1, 500), (2, 50), (3, 5)):
        execution = await within(
            manager.run(
                definition=conditional_saga(),
                context=SagaContext(order={"id": order_id}, amount=amount),
            )
        )
        assert isinstance(execution, SagaExecution)
        assert execution.status == SagaStatus.Finished
        ran[amount] = execution
    assert events() == [
        "reserve_stock",
        "is_big",
        "review",
        "create_order",
        "reserve_stock",
        "is_big",
        "wants_medium",
        "charge_card",
        "create_order",
        "reserve_stock",
        "is_big",
        "wants_medium",
        "charge_wallet",
        "create_order",
    ]
    assert [r["amount"] for r in rows() if r["event"] == "charge_card"] == [50]
    assert [ran[a].context.path for a in (500, 50, 5)] == ["review", "card", "wallet"]
    assert ran[50].context.amount == 50 and ran[50].context.order_id == "o-2"

    # executed_steps: the conditional step, and inside it the branch it took
    steps = ran[50].executed_steps
    assert [type(s).__name__ for s in steps] == [
        "LocalSagaStepExecution",
        "ConditionalSagaStepExecution",
        "LocalSagaStepExecution",
    ]
    assert [s.status for s in steps] == [SagaStepStatus.Finished] * 3
    conditional = steps[1]
    assert isinstance(conditional, ConditionalSagaStepExecution)
    assert conditional.inner is not None
    assert isinstance(conditional.definition, ConditionalSagaStep)
    assert conditional.inner.definition is conditional.definition.branches["if1"]
    assert conditional.inner.status == SagaStatus.Finished
    assert [s.status for s in conditional.inner.executed_steps] == [SagaStepStatus.Finished]
    # the raw form keeps the branch, and rebuilds it
    raw = json.loads(json.dumps(ran[50].raw))
    assert SagaExecution.from_raw(raw, engine=engine).raw == ran[50].raw
    loaded = await storage.load(ran[5].uuid)
    inner = loaded.executed_steps[1]
    assert isinstance(inner, ConditionalSagaStepExecution) and inner.inner is not None
    assert inner.inner.context.path == "wallet"

    # no condition true and no else_then: the step does nothing
    only_big = (
        Saga()
        .conditional_step()
        .if_then(is_big, Saga().local_step(review).commit())
        .local_step(create_order)
        .commit()
    )
    skipped = await within(
        manager.run(definition=only_big, context=SagaContext(order={"id": 4}, amount=1))
    )
    assert isinstance(skipped, SagaExecution) and skipped.status == SagaStatus.Finished
    assert events()[-2:] == ["is_big", "create_order"]
    skipped_step = skipped.executed_steps[0]
    assert isinstance(skipped_step, ConditionalSagaStepExecution) and skipped_step.inner is None


async def test_failure_after_a_branch_rolls_back_the_branch_and_the_steps_before(
    engine: Engine,
) -> None:
    manager = SagaManager(storage=DatabaseSagaExecutionRepository(engine))
    with pytest.raises(SagaFailedExecutionException, match="mail server"):
        await within(
            manager.run(
                definition=conditional_saga(failing=True),
                context=SagaContext(order={"id": 5}, amount=50),
            )
        )
    # newest first, once each: the step after the branch, the branch's step, the one before
    assert events() == [
        "reserve_stock",
        "is_big",
        "wants_medium",
        "charge_card",
        "create_order",
        "notify_customer",
        "cancel_order",
        "refund_card",
        "release_stock",
    ]
    assert [r.get("path") for r in rows() if r["event"] == "refund_card"] == ["card"]
    failed = await within(
        manager.run(
            definition=conditional_saga(failing=True),
            context=SagaContext(order={"id": 6}, amount=500),
            raise_on_error=False,
        )
    )
    assert isinstance(failed, SagaExecution)
    assert failed.status == SagaStatus.Errored and failed.already_rollback
    assert events()[9:] == [
        "reserve_stock",
        "is_big",
        "review",
        "create_order",
        "notify_customer",
        "cancel_order",
        "cancel_review",
        "release_stock",
    ]
    with pytest.raises(SagaNotCommittedException):
        Saga().conditional_step().if_then(is_big, Saga().local_step(review).saga)
    with pytest.raises(SagaError, match="needs a branch"):
        Saga().conditional_step().commit()


# -- a conditional branch replayed after a SIGKILL ------------------------------------------------


def is_express(context: SagaContext) -> bool:
    """Reads a file the test changes after the kill: a replay must not ask again."""
    assert _ledger is not None
    choice = (_ledger.parent / "choice").read_text()
    note("is_express", choice=choice)
    return choice == "express"


def book_courier(context: SagaContext) -> SagaContext:
    note("book_courier")
    context.carrier = "courier"
    return context


def cancel_courier(context: SagaContext) -> None:
    note("cancel_courier")


async def pack_parcel(context: SagaContext) -> SagaContext:
    """Holds while the file ``hold`` exists (the process is killed in here)."""
    assert _ledger is not None
    note("pack_parcel")
    while True:  # a file, not an Event: the test and this step are in different processes
        if not (_ledger.parent / "hold").exists():
            break
        await asyncio.sleep(0.05)
    context.packed = True
    return context


def book_post(context: SagaContext) -> SagaContext:
    note("book_post")
    context.carrier = "post"
    return context


def shipping_saga() -> Saga:
    express = (
        Saga().local_step(book_courier).on_failure(cancel_courier).local_step(pack_parcel).commit()
    )
    post = Saga().local_step(book_post).commit()
    return (
        Saga()
        .local_step(reserve_stock)
        .on_failure(release_stock)
        .conditional_step()
        .if_then(is_express, express)
        .else_then(post)
        .commit()
    )


async def run_shipping(url: str, ledger_path: str, execution_uuid: str) -> None:
    """Runs a shipping execution in its own process, until it is killed in pack_parcel."""
    global _ledger
    _ledger = Path(ledger_path)
    async with make_engine(url) as engine:
        execution = SagaExecution.from_definition(
            shipping_saga(),
            SagaContext(order={"id": 21}),
            uuid=uuid.UUID(execution_uuid),
            engine=engine,
        )
        await execution.execute()


async def test_a_branch_is_replayed_after_a_sigkill_on_the_same_branch(
    process_db_url: str, ledger: Path
) -> None:
    (ledger.parent / "choice").write_text("express")
    (ledger.parent / "hold").write_text("")
    execution_uuid = uuid4()
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    code = (
        "import asyncio, sys; from tests import test_compat_minos as m; "
        "asyncio.run(m.run_shipping(sys.argv[1], sys.argv[2], sys.argv[3]))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        process_db_url,
        str(ledger),
        str(execution_uuid),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(WAIT):
            while "pack_parcel" not in events():
                assert proc.returncode is None, "the child process ended before pack_parcel"
                await asyncio.sleep(0.05)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert events() == ["reserve_stock", "is_express", "book_courier", "pack_parcel"]

    # what the condition reads has changed: a replay must still take the express branch
    (ledger.parent / "choice").write_text("post")
    (ledger.parent / "hold").unlink()
    async with make_engine(process_db_url) as engine:  # a new process's engine
        storage = DatabaseSagaExecutionRepository(engine)
        SagaManager(storage=storage).register(shipping_saga())  # recovers it once its lease ends
        output = await within(engine.handle(str(execution_uuid)).result())
        assert output["context"]["carrier"] == "courier" and output["context"]["packed"]
        execution = await storage.load(execution_uuid)
        assert execution.status == SagaStatus.Finished
        conditional = execution.executed_steps[1]
        assert isinstance(conditional, ConditionalSagaStepExecution)
        assert conditional.inner is not None
        assert [s.status for s in conditional.inner.executed_steps] == [
            SagaStepStatus.Finished,
            SagaStepStatus.Finished,
        ]
    # the condition was asked once; the killed step ran again (at least once), nothing else
    assert events() == [
        "reserve_stock",
        "is_express",
        "book_courier",
        "pack_parcel",
        "pack_parcel",
    ]


# -- TransactionCommitter, executors ---------------------------------------------------------------


def pays_by_card(context: SagaContext) -> bool:
    return bool(context.get("card"))


def card_saga() -> Saga:
    """Reserve and create the order, then, paying by card, a remote payment (in a branch)."""
    card = (
        Saga()
        .remote_step(request_payment)
        .on_success(payment_done)
        .on_failure(refund_payment)
        .commit()
    )
    return (
        Saga()
        .local_step(reserve_stock)
        .on_failure(release_stock)
        .local_step(create_order)
        .on_failure(cancel_order)
        .conditional_step()
        .if_then(pays_by_card, card)
        .commit()
    )


async def waiting_for_decision(manager: SagaManager, order_id: int) -> SagaExecution:
    """An execution of card_saga, paid, waiting for commit/reject."""
    paused = await within(
        manager.run(
            definition=card_saga(),
            context=SagaContext(order={"id": order_id}, card=True),
            autocommit=False,
            pause_on_disk=True,
        )
    )
    assert isinstance(paused, SagaExecution) and paused.status == SagaStatus.Paused
    # paused inside the branch: minos's paused step is the conditional one
    assert isinstance(paused.paused_step, ConditionalSagaStepExecution)
    assert paused.paused_step.status == SagaStepStatus.PausedByOnExecute
    reply = SagaResponse({"paid": order_id}, {"payments"}, uuid=paused.uuid)
    done = await within(manager.run(response=reply, autocommit=False, pause_on_disk=True))
    assert isinstance(done, SagaExecution) and done.status == SagaStatus.Finished
    return done


async def test_transaction_committer_commit_and_reject(engine: Engine) -> None:
    broker = Broker()
    storage = DatabaseSagaExecutionRepository(engine)
    manager = SagaManager(storage=storage, broker_pool=broker)

    execution = await waiting_for_decision(manager, 31)
    assert (await engine.get(str(execution.uuid))).status == "SUSPENDED"
    committer = TransactionCommitter(
        execution.uuid, execution.executed_steps, broker_publisher=broker, engine=engine
    )
    assert committer.transactions == [(execution.uuid, "payments")]
    await within(committer.commit())
    assert (await engine.get(str(execution.uuid))).status == "COMPLETED"
    await within(committer.commit())  # again: the decision stands, the messages keep their keys
    commits = [r for r in rows() if r["event"] == "publish" and "Commit" in r["target"]]
    assert [(r["target"], r["content"]) for r in commits] == [
        ("_CommitPaymentsTransaction", str(execution.uuid))
    ] * 2
    assert broker.keys[-1] == broker.keys[-2] == f"{execution.uuid}:commit:payments"
    with pytest.raises(SagaError, match="rollback"):
        await committer.reject()  # a committed execution is rolled back, not rejected

    before = len(events())
    rejected = await waiting_for_decision(manager, 32)
    committer = TransactionCommitter(
        rejected.uuid, rejected.executed_steps, broker_publisher=None, broker_pool=broker
    )
    set_default_engine(engine)  # a committer without engine= uses the default one
    await within(committer.reject())
    await rejected.refresh()
    assert rejected.status == SagaStatus.Errored and rejected.already_rollback
    assert events()[before:] == [
        "reserve_stock",
        "create_order",
        "request_payment",
        "publish",
        "payment_done",
        "refund_payment",
        "publish",
        "cancel_order",
        "release_stock",
        "publish",
    ]
    assert rows()[-1]["target"] == "_RejectPaymentsTransaction"
    with pytest.raises(SagaFailedCommitCallbackException):
        await committer.commit()

    # without a reply naming services, a remote step's target is the participant
    plain = TransactionCommitter(uuid4(), create_order_steps(), None)
    assert [service for _, service in plain.transactions] == ["CreatePayment"]


def create_order_steps() -> list[Any]:
    definition = create_order_saga()
    request = SagaRequest("CreatePayment", {})
    return [RemoteSagaStepExecution(definition.steps[2], uuid4(), SagaStepStatus.Finished, request)]


async def test_executors_call_the_callbacks_as_the_steps_do() -> None:
    execution_uuid = uuid4()
    broker = Broker()
    context = SagaContext(order={"id": 41})
    assert await Executor(execution_uuid).exec_function(lambda a, b: a + b, 1, 2) == 3
    context = await LocalExecutor(execution_uuid).exec(create_order, context)
    assert context.order_id == "o-41"
    kept = SagaContext(reservation=1)
    assert await LocalExecutor(execution_uuid).exec(release_stock, kept) is kept  # None: kept
    request = await RequestExecutor(execution_uuid, broker_publisher=broker).exec(
        request_payment, context, key="k-1"
    )
    assert request == SagaRequest("CreatePayment", {"order_id": "o-41", "amount": 40})
    assert broker.keys == ["k-1"]
    response = SagaResponse({"paid": 1}, uuid=execution_uuid)
    context = await ResponseExecutor(execution_uuid).exec(payment_done, context, response)
    assert context.payment == {"paid": 1}
    with pytest.raises(SagaError, match="SagaContext"):
        await LocalExecutor(execution_uuid).exec(lambda c: 42, context)
    assert events() == [
        "create_order",
        "release_stock",
        "request_payment",
        "publish",
        "payment_done",
    ]
