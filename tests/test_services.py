"""Services (dependency injection): ``Engine(services=factory)`` and
``SagaWorkflowOptions(services=factory)`` give each run its services, built once per run from a
:class:`ServiceScope`, closed when the run ends, rebuilt when the saga resumes (in any process),
never journaled; ``saga.services`` in the saga function, ``ctx.services`` in a step, and a
compensation's keyword-only ``services`` parameter."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    Engine,
    SagaCompensatedError,
    SagaContext,
    SagaError,
    SagaStatus,
    SagaWorkflowOptions,
    ServiceScope,
    TerminalError,
    saga_step,
    saga_workflow,
)
from tests.conftest import make_engine, make_store_url
from tests.processes import AppProcesses


class Order(BaseModel):
    tenant: str
    item: str


@dataclass
class Services:
    tenant: str
    serial: int
    log: list[str] = field(default_factory=list)


class Factory:
    """Counts builds and closes; ``form`` picks what the factory returns."""

    def __init__(self, form: str = "plain"):
        self.form = form
        self.scopes: list[ServiceScope] = []
        self.closed: list[int] = []
        self.built: list[Services] = []

    def _make(self, scope: ServiceScope) -> Services:
        self.scopes.append(scope)
        tenant = scope.input.tenant if isinstance(scope.input, Order) else "-"
        made = Services(tenant, len(self.scopes))
        self.built.append(made)
        return made

    def __call__(self, scope: ServiceScope) -> Any:
        if self.form == "plain":
            return self._make(scope)
        if self.form == "awaitable":
            return self._awaitable(scope)
        return self._managed(scope)

    async def _awaitable(self, scope: ServiceScope) -> Services:
        return self._make(scope)

    @contextlib.asynccontextmanager
    async def _managed(self, scope: ServiceScope) -> AsyncIterator[Services]:
        made = self._make(scope)
        try:
            yield made
        finally:
            self.closed.append(made.serial)


@saga_step("Reserve")
async def reserve(ctx: SagaContext, item: str) -> dict[str, Any]:
    svc: Services = ctx.services
    svc.log.append(f"reserve {item}")
    return {"tenant": svc.tenant, "serial": svc.serial}


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, inp: Order) -> dict[str, Any]:
    seen = await reserve(saga, inp.item)
    svc: Services = saga.services
    return {"step": seen, "saga": svc.serial, "same": seen["serial"] == svc.serial}


@saga_workflow("Napper")
async def napper(saga: SagaContext, inp: Order) -> dict[str, Any]:
    first = await reserve(saga, inp.item)
    await saga.sleep(timedelta(milliseconds=50))
    second = await reserve(saga, inp.item)
    return {"first": first["serial"], "second": second["serial"]}


@pytest.mark.parametrize("form", ["plain", "awaitable", "context manager"])
async def test_each_factory_form_gives_the_run_its_services(form: str) -> None:
    factory = Factory(form)
    async with make_engine("memory://", services=factory) as engine:
        out = await engine.run(checkout, {"tenant": "acme", "item": "book"}, "s1")
    assert out == {"step": {"tenant": "acme", "serial": 1}, "saga": 1, "same": True}
    # one build for the run, from a scope holding the saga's validated input
    assert factory.scopes == [ServiceScope("s1", "Checkout", Order(tenant="acme", item="book"))]
    assert factory.built[0].log == ["reserve book"]
    assert factory.closed == ([1] if form == "context manager" else [])


async def test_services_are_built_per_run_and_closed_when_a_run_suspends(db_url: str) -> None:
    factory = Factory("context manager")
    async with make_engine(db_url, services=factory) as engine:
        out = await engine.run(napper, {"tenant": "acme", "item": "pen"}, "nap", timeout=30)
    # the sleep ended the first run (closed), the second run built fresh services
    assert out == {"first": 1, "second": 2}
    assert [s.saga_id for s in factory.scopes] == ["nap", "nap"]
    assert factory.closed == [1, 2]
    # never journaled: the journal holds the steps and the sleep, nothing of the services
    snap = await _snapshot(db_url, "nap")
    assert [s.kind for s in snap.steps] == ["step", "sleep", "step"]


async def _snapshot(url: str, saga_id: str) -> Any:
    async with make_engine(url) as reader:
        return await reader.get(saga_id)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_store_url(request.param, tmp_path, request)


async def test_the_workflows_factory_wins_over_the_engines() -> None:
    engine_factory, own_factory = Factory(), Factory()

    @saga_workflow("Own", options=SagaWorkflowOptions(services=own_factory))
    async def own(saga: SagaContext, inp: Order) -> int:
        svc: Services = saga.services
        return svc.serial

    async with make_engine("memory://", services=engine_factory) as engine:
        assert await engine.run(own, {"tenant": "t", "item": "x"}) == 1
        await engine.run(checkout, {"tenant": "t", "item": "x"})
    assert [s.workflow for s in own_factory.scopes] == ["Own"]
    assert [s.workflow for s in engine_factory.scopes] == ["Checkout"]


async def test_compensations_get_the_services_of_the_run_that_rolls_back() -> None:
    factory = Factory("context manager")
    undone: list[tuple[Any, int]] = []

    async def release(data: Any, *, services: Services) -> None:
        undone.append((data, services.serial))
        services.log.append("released")

    async def plain_undo(data: Any) -> None:
        undone.append((data, 0))

    @saga_step("Hold", compensate=release)
    async def hold(ctx: SagaContext, item: str) -> str:
        return f"hold-{item}"

    @saga_step("Note", compensate=plain_undo)
    async def note(ctx: SagaContext, item: str) -> str:
        return f"note-{item}"

    @saga_step("Fail")
    async def fail(ctx: SagaContext, item: str) -> None:
        raise TerminalError("no stock")

    @saga_workflow("Rollback")
    async def rollback(saga: SagaContext, inp: Order) -> None:
        await hold(saga, inp.item)
        await saga.sleep(0.01)  # the rollback happens in a later run, with its own services
        await note(saga, inp.item)
        await fail(saga, inp.item)

    async with make_engine("memory://", services=factory) as engine:
        with pytest.raises(SagaCompensatedError, match="no stock"):
            await engine.run(rollback, {"tenant": "acme", "item": "ink"}, "rb", timeout=30)
    assert undone == [("note-ink", 0), ("hold-ink", 2)]
    assert factory.built[1].log == ["released"]
    assert factory.closed == [1, 2]


def test_a_compensations_services_parameter_is_found_at_definition() -> None:
    async def keyword(data: Any, *, services: Any) -> None: ...

    async def positional(data: Any, services: Any) -> None: ...

    async def run(ctx: SagaContext, inp: Any) -> None: ...

    assert saga_step("K", compensate=keyword)(run).compensation_takes_services
    # a second positional parameter is `failed`, as before: only keyword-only asks for services
    assert not saga_step("P", compensate=positional)(run).compensation_takes_services


async def test_reading_services_without_a_factory_names_the_fix() -> None:
    async with make_engine("memory://") as engine:
        with pytest.raises(SagaCompensatedError) as caught:
            await engine.run(checkout, {"tenant": "t", "item": "x"})
    message = str(caught.value)
    assert "Engine(services=factory)" in message
    assert "SagaWorkflowOptions(services=factory)" in message

    @saga_workflow("Direct")
    async def direct(saga: SagaContext, inp: Order) -> Any:
        return saga.services

    async with make_engine("memory://") as engine:
        with pytest.raises(SagaCompensatedError, match=r"Engine\(services=factory\)"):
            await engine.run(direct, {"tenant": "t", "item": "x"})


def test_a_factory_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="services must be a factory"):
        Engine("memory://", services=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="services must be a factory"):
        SagaWorkflowOptions(services="db")  # type: ignore[arg-type]


async def test_a_factory_that_raises_stops_the_run_not_the_saga() -> None:
    calls: list[str] = []

    def flaky(scope: ServiceScope) -> Services:
        calls.append(scope.saga_id)
        if len(calls) == 1:
            raise ConnectionError("database not reachable yet")
        return Services("acme", len(calls))

    async with make_engine("memory://", services=flaky) as engine:
        # the first run stops before the saga function; a worker runs it again
        out = await engine.run(checkout, {"tenant": "acme", "item": "x"}, "flaky", timeout=30)
    assert out["same"] is True
    assert calls == ["flaky", "flaky"]


async def test_services_in_step_and_saga_function_are_one_object() -> None:
    factory = Factory()
    seen: list[int] = []

    @saga_step("Peek")
    async def peek(ctx: SagaContext, _: Any) -> int:
        seen.append(id(ctx.services))
        return 0

    @saga_workflow("Same")
    async def same(saga: SagaContext, inp: Order) -> None:
        seen.append(id(saga.services))
        await saga.gather(peek(saga, 1), peek(saga, 2))
        seen.append(id(saga.services))

    async with make_engine("memory://", services=factory) as engine:
        await engine.run(same, {"tenant": "t", "item": "x"})
    assert len(seen) == 4 and len(set(seen)) == 1


class Resume(AppProcesses):
    def app_args(self) -> list[str]:
        return [str(self.ledger), "tenant-saga"]


@pytest.fixture
def processes(tmp_path: Path, process_db_url: str) -> Iterator[Resume]:
    procs = Resume(tmp_path, process_db_url, "tests.services_app")
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.mark.slow
async def test_services_are_built_again_in_the_process_that_resumes(processes: Resume) -> None:
    first = processes.spawn("start")
    summary = processes.finish(first)
    assert summary["status"] == "SUSPENDED"

    second = processes.spawn("resume")
    async with make_engine(processes.url) as sender:
        await sender.signal("tenant-saga", "go")
    summary = processes.finish(second)
    assert summary["status"] == "COMPLETED", summary
    assert summary["output"]["reserved"] == "acme:book"
    assert summary["output"]["shipped"] == "shipped acme:book for acme"

    events = processes.events()
    by_pid = {first.pid: "first", second.pid: "second"}
    rows = [(by_pid[e["pid"]], e["ev"], e.get("step"), e["serial"]) for e in events]
    # the first process built its services for its run, used them, and closed them when the
    # saga suspended; the second built fresh ones (from the saga's input: same tenant)
    assert rows[:3] == [
        ("first", "built", None, 1),
        ("first", "used", "Reserve", 1),
        ("first", "closed", None, 1),
    ]
    second_rows = rows[3:]
    assert ("second", "used", "Ship", second_rows[0][3]) in second_rows
    assert [r for r in second_rows if r[1] == "built"] == [("second", "built", None, 1)]
    assert second_rows[-1] == ("second", "closed", None, 1)
    assert all(e.get("tenant", "acme") == "acme" for e in events)
    assert summary["output"]["saga_serial"] == 1
    assert [e["workflow"] for e in events if e["ev"] == "built"] == ["TenantOrder"] * 2
    assert await _status(processes.url) == SagaStatus.COMPLETED


async def _status(url: str) -> SagaStatus:
    async with make_engine(url) as reader:
        return (await reader.get("tenant-saga")).status


def test_restate_backend_refuses_services_clearly() -> None:
    class NoEngine:
        saga_id = "r1"

    ctx = SagaContext(NoEngine())  # type: ignore[arg-type]
    with pytest.raises(SagaError, match="needs sagakit's own engine"):
        _ = ctx.services
