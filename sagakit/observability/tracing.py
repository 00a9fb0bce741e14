"""OpenTelemetry tracing of saga runs (``pip install 'sagakit[otel]'``).

Each run of a saga is a span ``saga <workflow>``; each attempt of a step is a child span
``step <name>``, each attempt of a compensation ``compensation <name>``. A saga's first run is a
child of the span current where the saga was started (an HTTP request, say); its W3C
``traceparent`` is stored in the saga's published state (scope ``sagakit.trace:<saga_id>``), and
every later run of the saga (a recovery, a wake-up after a wait, a run after an operator's
action), in whichever process, is a child of that first run span: all runs of a saga are one
trace.

This module imports ``opentelemetry``; :func:`sagakit.observability.default_observers` imports
it only when the package is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from contextvars import Token
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from .. import __version__
from ..engine.observe import Observer, RunInfo
from ..errors import Drained, LeaseLost, StoreUnavailable
from ..stores.base import EntryKind, EntryStatus, JournalEntry, SagaStatus, SagaUpdate, StateWrite
from ._describe import cause_text, entry_error

log = logging.getLogger("sagakit.observability")

#: the published-state scope of a saga's trace context is this plus the saga id
TRACE_SCOPE_PREFIX = "sagakit.trace:"

SAGA_ID = "sagakit.saga_id"
WORKFLOW = "sagakit.workflow"
STEP = "sagakit.step"
SEQ = "sagakit.seq"
ATTEMPT = "sagakit.attempt"
OUTCOME = "sagakit.outcome"
STATUS = "sagakit.status"
RESUMED = "sagakit.resumed"

_PROPAGATOR = TraceContextTextMapPropagator()
_CARRIED = ("traceparent", "tracestate")
_WAITS = frozenset({EntryKind.SLEEP, EntryKind.SIGNAL, EntryKind.PROMISE, EntryKind.CHILD_RESULT})
#: saga statuses that mean the run did not reach what the saga set out to do
_FAILING = frozenset({SagaStatus.FAILED, SagaStatus.COMPENSATED, SagaStatus.PARKED})


def global_provider_configured() -> bool:
    """Whether a real TracerProvider (an SDK's) is set as OpenTelemetry's global one."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def trace_scope(saga_id: str) -> str:
    """The published-state scope where a saga's trace context is kept."""
    return TRACE_SCOPE_PREFIX + saga_id


@dataclass(slots=True)
class _Attempt:
    """An attempt span whose outcome is known only from what the run does next: a failed
    attempt is retried or recorded as failed, and a step that returns may still be recorded
    as failed (``StepResponse.permanent_failure``, output that is not JSON)."""

    span: Span
    #: when the user's code returned or raised: the span ends then, whenever it is closed
    ended_ns: int
    failed: bool


@dataclass(slots=True)
class _RunTrace:
    tracer: Tracer
    span: Span
    token: Token[Context]
    #: False for a run span the sampler dropped: its attempts get no spans of their own either
    #: (the default sampler would drop them too), and its context still reaches the saga's code
    recording: bool
    pending: dict[tuple[str, int], _Attempt] = field(default_factory=dict)
    #: the error of the status change that ended the run, for the span's status
    final: SagaUpdate | None = None


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class TracingObserver(Observer):
    """Traces every run with OpenTelemetry (see the module docstring for the spans).

    Args:
        tracer_provider: the TracerProvider to trace with. ``None``: the global one, looked up
            at each run, so a provider configured after the Engine was built is used too;
            while no SDK provider is configured, runs are not traced at all (no spans, no
            stored trace context).
    """

    def __init__(self, tracer_provider: TracerProvider | None = None):
        self._provider = tracer_provider
        self._key = id(self)
        self._tracer: Tracer | None = None
        self._tracer_of: TracerProvider | None = None

    def _current_tracer(self) -> Tracer | None:
        provider = self._provider
        if provider is None:
            if not global_provider_configured():
                return None  # every span would be a no-op
            provider = trace.get_tracer_provider()
        if provider is not self._tracer_of:
            self._tracer = provider.get_tracer("sagakit", __version__)
            self._tracer_of = provider
        return self._tracer

    async def run_started(self, run: RunInfo) -> None:
        tracer = self._current_tracer()
        if tracer is None:
            return
        parent: Context | None = None  # None: the current context (where the saga started)
        stored = False
        # a saga's first fence is its creator's: any other run was claimed, and may follow a
        # run that was released mid-saga (a drain, a close) without being marked as resumed
        if run.resumed or run.record.fence > 1:
            parent = await self._stored_context(run)
            stored = parent is not None
            if parent is None:
                # its first traced run: a trace of its own, not a child of whatever span the
                # worker loop happens to have inherited
                parent = Context()
        span = tracer.start_span(
            f"saga {run.workflow}",
            context=parent,
            attributes={SAGA_ID: run.saga_id, WORKFLOW: run.workflow, RESUMED: run.resumed},
        )
        # the saga function, its steps and the sagas it starts run under the run span
        token = otel_context.attach(trace.set_span_in_context(span))
        run.scratch[self._key] = _RunTrace(tracer, span, token, span.is_recording())
        if not stored:
            self._store_context(run, span)

    async def _stored_context(self, run: RunInfo) -> Context | None:
        try:
            state = await run.store.load_state(trace_scope(run.saga_id))
        except Exception:
            log.warning("could not load the trace context of saga %s", run.saga_id, exc_info=True)
            return None
        carrier: dict[str, str] = {}
        for key in _CARRIED:
            text = state.get(key)
            if text is not None:
                with contextlib.suppress(ValueError):
                    value = json.loads(text)
                    if isinstance(value, str):
                        carrier[key] = value
        if "traceparent" not in carrier:
            return None
        context = _PROPAGATOR.extract(carrier, context=Context())
        if not trace.get_current_span(context).get_span_context().is_valid:
            return None
        return context

    def _store_context(self, run: RunInfo, span: Span) -> None:
        """Queue the run span's context for the store; it commits before the run's first
        journal entry (appends of a saga commit in order), so a recovery always finds it."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span, Context()))
        if "traceparent" not in carrier:
            return  # an invalid span context: nothing to continue
        scope = trace_scope(run.saga_id)
        writes = tuple(StateWrite(scope, k, json.dumps(v)) for k, v in carrier.items())
        try:
            future = run.store.append(run.saga_id, run.fence, None, state=writes)
        except Exception:
            log.warning("could not store the trace context of saga %s", run.saga_id, exc_info=True)
            return
        # its failure (a lost lease, a store fault) is the run's own writes' failure too
        future.add_done_callback(_retrieve)

    def run_ended(self, run: RunInfo, status: str | None, error: BaseException | None) -> None:
        state: _RunTrace | None = run.scratch.pop(self._key, None)
        if state is None:
            return
        try:
            if state.recording:
                _finish_run(state, status, error)
        finally:
            state.span.end()
            otel_context.detach(state.token)

    @contextlib.contextmanager
    def attempt(self, run: RunInfo, kind: str, name: str, seq: int, attempt: int) -> Iterator[None]:
        state: _RunTrace | None = run.scratch.get(self._key)
        if state is None or not state.recording:
            yield
            return
        previous = state.pending.pop((kind, seq), None)
        if previous is not None:
            _close(previous, "retried")
        span = state.tracer.start_span(
            f"{kind} {name}",
            attributes={
                SAGA_ID: run.saga_id,
                WORKFLOW: run.workflow,
                STEP: name,
                SEQ: seq,
                ATTEMPT: attempt,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        failure: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            failure = exc
            raise
        finally:
            ended = time.time_ns()
            otel_context.detach(token)
            try:
                _after_attempt(state, kind, seq, span, failure, ended)
            except Exception:  # a tracing fault must never reach the saga's code
                log.exception("tracing an attempt of saga %s failed", run.saga_id)

    def journaled(
        self, run: RunInfo, entry: JournalEntry | None, update: SagaUpdate | None
    ) -> None:
        state: _RunTrace | None = run.scratch.get(self._key)
        if state is None or not state.recording:
            return
        if update is not None and update.status is not None:
            if update.status == SagaStatus.COMPENSATING:
                state.span.add_event("compensating", {"sagakit.cause": cause_text(update)})
            else:
                state.final = update
        if entry is None:
            return
        kind = entry.kind
        if kind == EntryKind.STEP or kind == EntryKind.COMPENSATION:
            if entry.status == EntryStatus.RUNNING:
                return  # a recovering run marks the attempt it starts: not an outcome
            attempt = state.pending.pop((kind, entry.seq), None)
            if attempt is None:
                return  # failed without an attempt (out of time, its worker died)
            if entry.status == EntryStatus.COMPLETED:
                _close(attempt, "completed")
                return
            if not attempt.failed:  # it returned, yet failed for good
                attempt.span.set_status(Status(StatusCode.ERROR, entry_error(entry.error)[0]))
            _close(attempt, "failed")
        elif kind in _WAITS:
            what: dict[str, AttributeValue] = {
                SEQ: entry.seq,
                "sagakit.wait": f"{kind} {entry.name}",
            }
            if entry.status == EntryStatus.RUNNING:
                state.span.add_event("wait started", what)
            elif entry.status == EntryStatus.COMPLETED:
                state.span.add_event("wait answered", what)
            else:
                what["sagakit.error"] = entry_error(entry.error)[0]
                state.span.add_event("wait failed", what)


def _finish_run(state: _RunTrace, status: str | None, error: BaseException | None) -> None:
    span = state.span
    for attempt in state.pending.values():
        _close(attempt, "failed" if attempt.failed and status is not None else "interrupted")
    state.pending.clear()
    if status is not None:
        span.set_attribute(STATUS, status)
        span.set_attribute(OUTCOME, status.lower())
        if status in _FAILING:
            span.set_status(Status(StatusCode.ERROR, f"{status}: {cause_text(state.final)}"))
    else:
        span.set_attribute(OUTCOME, _stopped(error))
        if error is not None and not isinstance(error, Drained | asyncio.CancelledError):
            span.record_exception(error, escaped=True)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def _after_attempt(
    state: _RunTrace,
    kind: str,
    seq: int,
    span: Span,
    failure: BaseException | None,
    ended: int,
) -> None:
    if failure is None:
        state.pending[(kind, seq)] = _Attempt(span, ended, failed=False)
        return
    if not isinstance(failure, Exception):  # cancelled, lease lost, shutdown: no outcome
        span.set_attribute(OUTCOME, "interrupted")
        span.end(end_time=ended)
        return
    span.record_exception(failure, escaped=True)
    span.set_status(Status(StatusCode.ERROR, f"{type(failure).__name__}: {failure}"))
    state.pending[(kind, seq)] = _Attempt(span, ended, failed=True)


def _close(attempt: _Attempt, outcome: str) -> None:
    attempt.span.set_attribute(OUTCOME, outcome)
    attempt.span.end(end_time=attempt.ended_ns)


def _stopped(error: BaseException | None) -> str:
    """The outcome of a run that ended without a saga status."""
    if error is None:
        return "again"  # events arrived as it suspended: the next run goes on at once
    if isinstance(error, Drained | asyncio.CancelledError):
        return "interrupted"
    if isinstance(error, LeaseLost):
        return "lease_lost"
    if isinstance(error, StoreUnavailable):
        return "store_unavailable"
    return "error"


__all__ = ["TRACE_SCOPE_PREFIX", "TracingObserver", "global_provider_configured", "trace_scope"]
