"""OpenTelemetry tracing: a span per saga run, child spans per attempt of a step or
compensation, and one trace across the runs of a saga (a wait, a recovery), checked with the
SDK's in-memory exporter on a TracerProvider given to the Engine (never the global one)."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import StatusCode

from sagakit import (
    SagaCompensatedError,
    SagaContext,
    SagaStatus,
    StepResponse,
    TerminalError,
    saga_step,
    saga_workflow,
)
from sagakit.engine.observe import RunInfo
from sagakit.observability import LoggingObserver, default_observers
from sagakit.observability.tracing import TracingObserver, trace_scope
from sagakit.stores import open_store
from sagakit.stores.base import NewSaga
from tests.conftest import engine_with, fast_retry, make_store_url
from tests.waiting import WAIT, Gate, eventually, suspended, within


class Traced:
    """A TracerProvider that keeps every finished span in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = self.exporter.get_finished_spans()
        return [s for s in found if name is None or s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.spans(name)
        return span


@pytest.fixture
def traced() -> Iterator[Traced]:
    t = Traced()
    yield t
    t.provider.shutdown()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_store_url(request.param, tmp_path, request, shared=True)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def plus_one(name: str, **options: Any) -> Any:
    async def undo(data: Any) -> None:
        return None

    @saga_step(name, compensate=undo, **options)
    async def step(ctx: SagaContext, inp: int) -> int:
        return inp + 1

    return step


A, B, C = plus_one("A"), plus_one("B"), plus_one("C")


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, inp: int) -> int:
    for step in (A, B, C):
        inp = await step(saga, inp)
    return inp


async def test_a_run_is_a_span_with_a_child_span_per_step(url: str, traced: Traced) -> None:
    async with engine_with(url, checkout, tracer_provider=traced.provider) as engine:
        assert await within(engine.run(checkout, 1, saga_id="t1")) == 4
        stored = await engine._store_or_raise().load_state(trace_scope("t1"))
    run = traced.one("saga Checkout")
    assert run.parent is None
    assert attrs(run) == {
        "sagakit.saga_id": "t1",
        "sagakit.workflow": "Checkout",
        "sagakit.resumed": False,
        "sagakit.status": "COMPLETED",
        "sagakit.outcome": "completed",
    }
    assert run.status.status_code == StatusCode.UNSET
    steps = [traced.one(f"step {name}") for name in "ABC"]
    for seq, (name, step) in enumerate(zip("ABC", steps, strict=True)):
        assert parent_id(step) == span_id(run) and trace_id(step) == trace_id(run)
        assert attrs(step) == {
            "sagakit.saga_id": "t1",
            "sagakit.workflow": "Checkout",
            "sagakit.step": name,
            "sagakit.seq": seq,
            "sagakit.attempt": 1,
            "sagakit.outcome": "completed",
        }
        assert step.status.status_code == StatusCode.UNSET
    # the run's context is kept for the next runs of the saga, as W3C trace context
    traceparent = json.loads(stored["traceparent"])
    assert traceparent.startswith(f"00-{trace_id(run):032x}-{span_id(run):016x}-")


async def test_each_attempt_of_a_retried_step_is_a_span(url: str, traced: Traced) -> None:
    @saga_step("Flaky", retry=fast_retry(3))
    async def flaky(ctx: SagaContext, inp: int) -> int:
        if ctx.attempt < 3:
            raise ConnectionError(f"down at attempt {ctx.attempt}")
        return inp

    @saga_workflow("Retrying")
    async def retrying(saga: SagaContext, inp: int) -> int:
        return int(await flaky(saga, inp))

    async with engine_with(url, retrying, tracer_provider=traced.provider) as engine:
        assert await within(engine.run(retrying, 7, saga_id="r1")) == 7
    run = traced.one("saga Retrying")
    attempts = sorted(traced.spans("step Flaky"), key=lambda s: attrs(s)["sagakit.attempt"])
    assert [attrs(s)["sagakit.attempt"] for s in attempts] == [1, 2, 3]
    assert [attrs(s)["sagakit.outcome"] for s in attempts] == ["retried", "retried", "completed"]
    assert all(attrs(s)["sagakit.seq"] == 0 and parent_id(s) == span_id(run) for s in attempts)
    for number, failed in enumerate(attempts[:2], start=1):
        assert failed.status.status_code == StatusCode.ERROR
        assert failed.status.description == f"ConnectionError: down at attempt {number}"
        (event,) = failed.events
        assert event.name == "exception"
        assert dict(event.attributes or {})["exception.type"] == "ConnectionError"
    assert attempts[2].status.status_code == StatusCode.UNSET
    assert run.status.status_code == StatusCode.UNSET


async def test_a_rollback_has_a_span_per_compensation(url: str, traced: Traced) -> None:
    @saga_step("Charge", retry=fast_retry(2))
    async def charge(ctx: SagaContext, inp: int) -> int:
        raise TerminalError("card declined")

    @saga_step("Ship")
    async def ship(ctx: SagaContext, inp: int) -> StepResponse[Any]:
        return StepResponse.permanent_failure("no truck")

    @saga_workflow("Refund")
    async def refund(saga: SagaContext, inp: int) -> int:
        inp = await A(saga, inp)
        inp = await B(saga, inp)
        return int(await charge(saga, inp))

    @saga_workflow("Shipping")
    async def shipping(saga: SagaContext, inp: int) -> int:
        inp = await A(saga, inp)
        return int(await ship(saga, inp))

    provider = traced.provider
    async with engine_with(url, refund, shipping, tracer_provider=provider) as engine:
        with pytest.raises(SagaCompensatedError):
            await within(engine.run(refund, 1, saga_id="c1"))
        with pytest.raises(SagaCompensatedError):
            await within(engine.run(shipping, 1, saga_id="c2"))
    run = traced.one("saga Refund")
    assert attrs(run)["sagakit.status"] == "COMPENSATED"
    assert run.status.status_code == StatusCode.ERROR
    assert run.status.description == "COMPENSATED: TerminalError in step 'Charge': card declined"
    assert [e.name for e in run.events] == ["compensating"]
    failed = traced.one("step Charge")
    assert attrs(failed)["sagakit.outcome"] == "failed"  # terminal: no other attempt
    assert failed.status.status_code == StatusCode.ERROR
    undone = {
        attrs(s)["sagakit.step"]: s
        for s in traced.spans()
        if s.name.startswith("compensation") and attrs(s)["sagakit.saga_id"] == "c1"
    }
    assert sorted(s.name for s in undone.values()) == ["compensation A", "compensation B"]
    assert attrs(undone["B"])["sagakit.seq"] == 3 and attrs(undone["A"])["sagakit.seq"] == 4
    for span in undone.values():
        assert parent_id(span) == span_id(run)
        assert attrs(span)["sagakit.outcome"] == "completed"
        assert attrs(span)["sagakit.attempt"] == 1
    assert undone["B"].start_time < undone["A"].start_time  # type: ignore[operator]
    # a step that returned a permanent failure: no exception, yet a failed span
    shipped = traced.one("step Ship")
    assert attrs(shipped)["sagakit.outcome"] == "failed"
    assert shipped.status.status_code == StatusCode.ERROR
    assert "no truck" in (shipped.status.description or "")


async def test_a_saga_started_in_a_span_is_its_child(url: str, traced: Traced) -> None:
    tracer = traced.provider.get_tracer("the-web-app")
    async with engine_with(url, checkout, tracer_provider=traced.provider) as engine:
        with tracer.start_as_current_span("POST /checkout") as request:
            await within(engine.run(checkout, 1, saga_id="p1"))
    run = traced.one("saga Checkout")
    assert parent_id(run) == request.get_span_context().span_id
    assert trace_id(run) == request.get_span_context().trace_id


async def test_the_step_code_runs_in_its_span_sampled_or_not(url: str) -> None:
    seen: list[Any] = []

    @saga_step("Peek")
    async def peek(ctx: SagaContext, inp: int) -> int:
        seen.append(otel_trace.get_current_span().get_span_context())
        return inp

    @saga_workflow("Peeking")
    async def peeking(saga: SagaContext, inp: int) -> int:
        return int(await peek(saga, inp))

    sampled, dropped = Traced(), Traced()
    dropped.provider = TracerProvider(sampler=ALWAYS_OFF)
    dropped.provider.add_span_processor(SimpleSpanProcessor(dropped.exporter))
    async with engine_with(url, peeking, tracer_provider=sampled.provider) as engine:
        await within(engine.run(peeking, 1, saga_id="in1"))
    async with engine_with(url, peeking, tracer_provider=dropped.provider) as engine:
        await within(engine.run(peeking, 1, saga_id="out1"))
        stored = await engine._store_or_raise().load_state(trace_scope("out1"))
    # sampled: the HTTP client a step calls would make its spans children of the step span
    assert seen[0].span_id == span_id(sampled.one("step Peek"))
    # dropped: no span at all, but the (unsampled) trace context still reaches the step's
    # code, and the next runs of the saga will continue that decision
    assert dropped.spans() == []
    assert seen[1].is_valid and not seen[1].trace_flags.sampled
    assert json.loads(stored["traceparent"]).startswith(f"00-{seen[1].trace_id:032x}-")
    sampled.provider.shutdown()
    dropped.provider.shutdown()


async def test_a_parallel_branch_step_is_a_child_of_the_run(url: str, traced: Traced) -> None:
    @saga_workflow("Fan")
    async def fan(saga: SagaContext, inp: int) -> list[int]:
        return await saga.gather(A(saga, inp), B(saga, inp), C(saga, inp))

    async with engine_with(url, fan, tracer_provider=traced.provider) as engine:
        assert await within(engine.run(fan, 1, saga_id="g1")) == [2, 2, 2]
    run = traced.one("saga Fan")
    for name in "ABC":
        assert parent_id(traced.one(f"step {name}")) == span_id(run)


async def test_a_suspended_saga_resumed_by_another_engine_stays_in_its_trace(
    url: str, traced: Traced
) -> None:
    @saga_workflow("Approval")
    async def approval(saga: SagaContext, inp: int) -> int:
        inp = await A(saga, inp)
        await saga.wait_for_signal("approve")
        return int(await B(saga, inp))

    async with engine_with(url, approval, tracer_provider=traced.provider) as first:
        await first.start(approval, 1, saga_id="s1")
        await suspended(first, "s1")
    # another process: its own provider and exporter
    later = Traced()
    async with engine_with(url, approval, tracer_provider=later.provider) as second:
        await second.signal("s1", "approve")
        assert await second.handle("s1").result(timeout=WAIT) == 3
    one, two = traced.one("saga Approval"), later.one("saga Approval")
    assert attrs(one)["sagakit.status"] == "SUSPENDED"
    assert [e.name for e in one.events] == ["wait started"]
    assert attrs(two)["sagakit.resumed"] is True
    assert attrs(two)["sagakit.status"] == "COMPLETED"
    assert trace_id(two) == trace_id(one)
    assert parent_id(two) == span_id(one)
    assert two.parent is not None and two.parent.is_remote
    assert [e.name for e in two.events] == ["wait answered"]
    assert parent_id(traced.one("step A")) == span_id(one)
    assert parent_id(later.one("step B")) == span_id(two)
    later.provider.shutdown()


async def test_a_saga_stopped_mid_step_is_recovered_in_the_same_trace(
    url: str, traced: Traced
) -> None:
    gate = Gate()

    @saga_step("Slow")
    async def slow(ctx: SagaContext, inp: int) -> int:
        if not gate.opened.is_set():
            await gate.hold()
        return inp

    @saga_workflow("Stopped")
    async def stopped(saga: SagaContext, inp: int) -> int:
        return int(await slow(saga, inp))  # the first operation: the journal is still empty

    async with engine_with(url, stopped, tracer_provider=traced.provider) as first:
        await first.start(stopped, 5, saga_id="k1")
        await gate.reached()
    gate.opened.set()
    async with engine_with(url, stopped, tracer_provider=traced.provider) as second:
        assert await second.handle("k1").result(timeout=WAIT) == 5
    one, two = sorted(traced.spans("saga Stopped"), key=lambda s: s.start_time or 0)
    assert attrs(one)["sagakit.outcome"] == "interrupted" and "sagakit.status" not in attrs(one)
    # released before it journaled anything, so not marked resumed: still the same trace
    assert attrs(two)["sagakit.resumed"] is False
    assert attrs(two)["sagakit.status"] == "COMPLETED"
    assert trace_id(two) == trace_id(one) and parent_id(two) == span_id(one)
    cut, done = sorted(traced.spans("step Slow"), key=lambda s: s.start_time or 0)
    assert attrs(cut)["sagakit.outcome"] == "interrupted" and parent_id(cut) == span_id(one)
    assert attrs(done)["sagakit.outcome"] == "completed" and parent_id(done) == span_id(two)


async def test_a_parked_saga_is_an_error_and_its_retry_continues_the_trace(
    url: str, traced: Traced
) -> None:
    down = {"yes"}

    @saga_step("Ledger", retry=fast_retry(2), on_exhausted="park")
    async def ledger(ctx: SagaContext, inp: int) -> int:
        if down:
            raise ConnectionError("ledger down")
        return inp

    @saga_workflow("Parks")
    async def parks(saga: SagaContext, inp: int) -> int:
        return int(await ledger(saga, inp))

    async with engine_with(url, parks, tracer_provider=traced.provider) as engine:
        handle = await engine.start(parks, 3, saga_id="pk1")

        async def parked() -> bool:
            snap = await engine.get("pk1")
            return snap.status == SagaStatus.PARKED and "pk1" not in engine._tasks

        await eventually(parked, "the saga to park")
        down.clear()
        await engine.admin.retry_step("pk1")
        assert await handle.result(timeout=WAIT) == 3
    one, two = sorted(traced.spans("saga Parks"), key=lambda s: s.start_time or 0)
    assert attrs(one)["sagakit.status"] == "PARKED"
    assert one.status.status_code == StatusCode.ERROR
    assert "ledger down" in (one.status.description or "")
    outcomes = [attrs(s)["sagakit.outcome"] for s in traced.spans("step Ledger")]
    assert sorted(outcomes) == ["completed", "failed", "retried"]
    assert trace_id(two) == trace_id(one) and parent_id(two) == span_id(one)


async def test_without_a_provider_nothing_is_traced_or_stored(url: str) -> None:
    # the global provider is the API's proxy: no SDK is configured in the test process
    (observer,) = default_observers()
    assert isinstance(observer, LoggingObserver)
    async with engine_with(url, checkout) as engine:
        assert await within(engine.run(checkout, 1, saga_id="n1")) == 4
        assert await engine._store_or_raise().load_state(trace_scope("n1")) == {}


async def test_a_global_provider_configured_before_the_engine_is_used(
    url: str, traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as if the application had called trace.set_tracer_provider(...) at its start
    monkeypatch.setattr(otel_trace, "get_tracer_provider", lambda: traced.provider)
    assert [type(o) for o in default_observers()] == [LoggingObserver, TracingObserver]
    async with engine_with(url, checkout) as engine:
        await within(engine.run(checkout, 1, saga_id="g1"))
    assert attrs(traced.one("saga Checkout"))["sagakit.saga_id"] == "g1"
    assert len(traced.spans()) == 4


async def test_default_observers_without_opentelemetry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # None in sys.modules makes an import fail as if the package were not installed
    for name in list(sys.modules):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "sagakit.observability.tracing")
    observers = default_observers()
    assert len(observers) == 1 and isinstance(observers[0], LoggingObserver)
    engine = engine_with(f"sqlite:///{tmp_path}/plain.db", checkout, observers=observers)
    async with engine:
        assert await within(engine.run(checkout, 1)) == 4


async def test_a_tracing_observer_may_be_given_explicitly(url: str, traced: Traced) -> None:
    observers = [TracingObserver(traced.provider)]
    async with engine_with(url, checkout, observers=observers) as engine:
        await within(engine.run(checkout, 1, saga_id="e1"))
    assert len(traced.spans()) == 4


async def test_a_refused_trace_context_write_is_not_left_unretrieved(traced: Traced) -> None:
    store = open_store("memory://")
    await store.open()
    unretrieved: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unretrieved.append(ctx))
    try:
        created = await store.create_saga(NewSaga("x1", "Checkout", "1", "me", 30.0))
        record = created.record
        # a run whose fence is stale: another worker took the saga
        stale = RunInfo("x1", "Checkout", record, record.fence + 1, store, False, {})
        observer = TracingObserver(traced.provider)
        await observer.run_started(stale)
        observer.run_ended(stale, None, None)
        await asyncio.sleep(0)
        del stale, observer
        gc.collect()
        await asyncio.sleep(0)
        assert unretrieved == []
        assert await store.load_state(trace_scope("x1")) == {}
    finally:
        asyncio.get_running_loop().set_exception_handler(None)
        await store.close()
