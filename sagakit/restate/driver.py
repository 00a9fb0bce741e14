"""The Restate-backed run of a saga: what a :class:`~sagakit.context.SagaContext` talks to when
the saga is served by a Restate server instead of sagakit's own engine.

Restate's journal does the durability: each step is a journaled ``ctx.run`` (see steps.py),
each compensation another, a sleep a durable timer, a promise a durable promise. On every
invocation attempt Restate calls the saga function again from the top and hands back what its
journal holds, so this driver keeps nothing between attempts; its own sequence numbers (for
``ctx.step_key``) are taken in program order and come out the same on every replay.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from datetime import timedelta
from typing import Any

import restate
from restate import RestateDurableFuture
from restate.exceptions import TerminalError as RestateTerminalError
from restate.serde import BytesSerde

from .. import serde
from ..engine.children import default_child_id
from ..engine.outcome import _Compensation, terminal_form
from ..errors import (
    PAST_DEADLINE,
    ErrorInfo,
    PromiseAlreadyCompletedError,
    PromiseRejectedError,
    SagaError,
    SagaTimeoutError,
    SagaValidationError,
    StepFailedError,
    TerminalError,
)
from ..retry import DEFAULT_RETRY
from ..steps import SagaStep
from ..workflows import SagaWorkflow
from . import outcome
from .branches import BranchTurns, settle
from .retries import run_options
from .steps import (
    NOTHING_TO_COMPENSATE,
    StepRecord,
    attempt_compensation,
    attempt_step,
    exhausted_info,
)

#: how many signals of one name, and in all, a saga can receive (each is a durable promise)
MAX_SIGNALS = 10_000
#: the durable promise that carries the n-th signal of a name (see services.deliver_signal)
SIGNAL_PROMISE = "sagakit.signal.{name}.{n}"
#: the durable promise that records the k-th signal the saga received, of any name (in the
#: order they were delivered): what the declarative front end's InputContext.events reads
EVENT_PROMISE = "sagakit.event.{k}"
#: the saga's state that lists its parked steps, by number (see services.operate)
PARKED_STATE = "sagakit.parked"
#: what an operator may do with a parked step
OPERATOR_ACTIONS = ("retry", "skip", "compensate")


def is_cancellation(exc: RestateTerminalError) -> bool:
    """Restate's error for an invocation cancelled (admin API, CLI, UI): raised at the saga's
    next await, after which it may still do journaled work, its compensations."""
    return exc.status_code == 409 and "cancel" in exc.message.lower()


def terminal(exc: BaseException) -> TerminalError | None:
    """The terminal form of a step's error; None to let Restate retry it."""
    if isinstance(exc, RestateTerminalError):
        # a step written for Restate may raise Restate's own terminal error
        return TerminalError(exc.message, error_type="TerminalError")
    if isinstance(exc, Exception):
        return terminal_form(exc)
    return None


def _jsonable(value: Any) -> Any:
    """The JSON form of a value (what a replay sees), or the value if it has none."""
    try:
        return serde.loads(serde.dumps(value))
    except SagaError:
        return value


class RestateDriver:
    """A :class:`~sagakit.context.RunDriver` over a Restate workflow or object context."""

    def __init__(
        self,
        ctx: restate.ObjectContext,
        saga_id: str,
        workflow_ctx: restate.WorkflowContext | None = None,
    ):
        self.saga_id = saga_id
        self._ctx = ctx
        #: the same context when the saga is a Restate Workflow (it has durable promises)
        self._workflow = workflow_ctx
        self._next_seq = 0
        #: step number -> its compensation, and when the step was first journaled
        self._compensations: dict[int, tuple[int, _Compensation]] = {}
        self._journaled_steps = 0
        self._signal_waits: dict[str, int] = {}
        #: child saga id -> its Restate invocation id, for this run
        self._children: dict[str, str] = {}
        #: an object call's state as its steps see it (see object_peek)
        self._object_view: dict[str, str | None] | None = None
        #: the saga's deadline (SagaWorkflowOptions.deadline): when, and its durable timer
        self._deadline_at: float | None = None
        self._deadline: RestateDurableFuture[None] | None = None

    async def start_deadline(self, deadline: timedelta) -> None:
        """Bound the saga by ``deadline`` from its first run: a durable timer every wait races,
        and a time every step attempt is cut at. Compensations are not bounded."""
        self._deadline = self._ctx.sleep(deadline)
        started = await self._ctx.run_typed("sagakit.started", _now)
        self._deadline_at = started + deadline.total_seconds()

    async def _race(
        self,
        value: RestateDurableFuture[Any],
        timer: RestateDurableFuture[None] | None = None,
        timed_out: str = "",
    ) -> Any:
        """What ``value`` gives, unless ``timer`` (the wait's own timeout) or the saga's
        deadline comes first: then a terminal :class:`SagaTimeoutError`."""
        contenders: dict[str, RestateDurableFuture[Any]] = {"value": value}
        if timer is not None:
            contenders["timer"] = timer
        if self._deadline is not None:
            contenders["deadline"] = self._deadline
        await settle(*contenders.values())
        if len(contenders) == 1:
            return await value
        which, result = await restate.select(**contenders)
        if which == "timer":
            raise SagaTimeoutError(timed_out)
        if which == "deadline":
            raise SagaTimeoutError(PAST_DEADLINE)
        return result

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    # -- steps -------------------------------------------------------------------------------

    def call_step(self, step: SagaStep[Any], inp: Any) -> Awaitable[Any]:
        if step.parks and self._workflow is None:
            # refused rather than compensated silently: nobody could reach the parked step
            raise SagaError(
                f"step {step.name!r} parks when its retries run out (on_exhausted='park'), "
                "which a virtual object's handler cannot do on Restate: only a saga workflow's "
                "steps can park there; use on_exhausted='compensate'"
            )
        # the number is taken when the step is called, so gathered branches number in order
        return _StepCall(self, step, self._take_seq(), inp)

    def _start_step(self, call: _StepCall) -> RestateDurableFuture[bytes]:
        """Journal the step's run and return its future (the action runs while it is awaited)."""
        step = call.step
        options = run_options(step.retry or DEFAULT_RETRY)
        return self._ctx.run_typed(
            step.name,
            attempt_step,
            options,
            self,
            step,
            call.seq,
            call.inp,
            terminal,
            self._deadline_at,
        )

    async def _step(self, call: _StepCall) -> Any:
        step, seq, inp = call.step, call.seq, call.inp
        hybrid = step.compensate is not None and not step.strict
        policy = step.retry or DEFAULT_RETRY
        # the rollback undoes newest first: in the order the steps were journaled, which in
        # parallel branches is not the order their numbers were taken in
        order = self._journaled_steps
        self._journaled_steps += 1
        await self._load_object_view()
        while True:
            future = self._start_step(call)
            try:
                await settle(future)
                raw = await future
                break
            except RestateTerminalError as exc:
                # the retries ran out (or the invocation was cancelled): the attempts may have
                # done part of the work, which a hybrid step's compensation undoes
                info = exhausted_info(exc, step.name, seq, policy.max_attempts)
                if step.parks and not is_cancellation(exc):
                    try:
                        action, output = await self._park(step, seq, info)
                    except RestateTerminalError as stop:
                        if not is_cancellation(stop):
                            raise
                        action, output = "compensate", None  # cancelled while parked
                        info = exhausted_info(stop, step.name, seq, policy.max_attempts)
                    if action == "retry":
                        continue  # a new run, with a fresh budget
                    if action == "skip":
                        return output  # what the operator gave; nothing to compensate
                if hybrid:
                    self._register(step, seq, order, None, inp, failed=True)
                raise StepFailedError(
                    step.name, seq, info.type, info.message, policy.max_attempts
                ) from None
        record = StepRecord.decode(raw)
        self._apply_writes(record.writes)
        if record.completed:
            if step.compensate is not None:
                self._register(step, seq, order, record.compensation, inp, failed=False)
            return step.output.validate(record.output)
        if hybrid:
            self._register(step, seq, order, record.compensation, inp, failed=True)
        error = record.error or ErrorInfo("Error", "step failed", step.name, seq)
        raise StepFailedError(step.name, seq, error.type, error.message, 1)

    async def _park(self, step: SagaStep[Any], seq: int, error: ErrorInfo) -> tuple[str, Any]:
        """Wait, suspended, until an operator says what to do with the step whose retries ran
        out: ``("retry", None)``, ``("skip", output)`` or ``("compensate", None)``. The step is
        listed in the saga's parked state meanwhile, with the awakeable that answers it."""
        while True:
            awakeable, answer = self._ctx.awakeable(type_hint=dict)
            await self._update_parked(
                str(seq),
                {"step": step.name, "seq": seq, "error": error.to_json(), "awakeable": awakeable},
            )
            await settle(answer)
            decision = await answer
            await self._update_parked(str(seq), None)
            action = decision.get("action") if isinstance(decision, dict) else None
            if action == "skip":
                try:
                    return action, step.output.validate(decision.get("output"))
                except SagaValidationError as exc:
                    # parked again, as on the embedded engine: the step stays failed
                    error = ErrorInfo("SkipOutputInvalid", str(exc), step.name, seq)
                    continue
            if action in OPERATOR_ACTIONS:
                return action, None
            error = ErrorInfo(
                "OperatorError", f"unknown operator action {action!r}", step.name, seq
            )

    async def _update_parked(self, key: str, entry: dict[str, Any] | None) -> None:
        parked = await self._ctx.get(PARKED_STATE, type_hint=dict) or {}
        if entry is None:
            parked.pop(key, None)
        else:
            parked[key] = entry
        if parked:
            self._ctx.set(PARKED_STATE, parked)
        else:
            self._ctx.clear(PARKED_STATE)

    def _register(
        self,
        step: SagaStep[Any],
        seq: int,
        order: int,
        compensation: str | None,
        inp: Any,
        *,
        failed: bool,
    ) -> None:
        if compensation == NOTHING_TO_COMPENSATE:
            self._compensations.pop(seq, None)
            return
        data = _jsonable(inp) if compensation is None else json.loads(compensation)
        self._compensations[seq] = (order, _Compensation(seq, step, data, failed))

    def _apply_writes(self, writes: list[tuple[str, str | None]]) -> None:
        for key, value in writes:
            self.object_set(key, value)

    # -- rollback ----------------------------------------------------------------------------

    async def rollback(self) -> list[ErrorInfo]:
        """Run the registered compensations in reverse order, each a journaled run with its own
        retries; one that fails for good does not stop the others. Returns the failures."""
        failures: list[ErrorInfo] = []
        self._deadline_at = self._deadline = None  # like the embedded engine's: not bounded
        for _, compensation in sorted(self._compensations.values(), key=lambda c: -c[0]):
            step = compensation.step
            seq = self._take_seq()
            policy = step.compensation_retry or DEFAULT_RETRY
            try:
                raw = await self._ctx.run_typed(
                    f"compensate {step.name}",
                    attempt_compensation,
                    run_options(policy),
                    compensation,
                    terminal,
                )
            except RestateTerminalError as exc:
                failures.append(exhausted_info(exc, step.name, seq, policy.max_attempts))
                continue
            record = StepRecord.decode(raw)
            if record.completed:
                self._apply_writes(record.writes)
            elif record.error is not None:
                failures.append(record.error)
        return failures

    # -- journaled values --------------------------------------------------------------------

    def record_value(self, kind: str, produce: Callable[[], Any]) -> Awaitable[Any]:
        self._take_seq()
        return self._value(kind, produce)

    async def _value(self, kind: str, produce: Callable[[], Any]) -> Any:
        async def action() -> bytes:
            return serde.dumps(produce()).encode()

        future = self._ctx.run_typed(kind, action, restate.RunOptions(serde=BytesSerde()))
        await settle(future)
        return json.loads(await future)

    # -- waiting -----------------------------------------------------------------------------

    def sleep(self, seconds: float) -> Awaitable[Any]:
        self._take_seq()
        return self._sleep(seconds)

    async def _sleep(self, seconds: float) -> None:
        # a sleep that ends at the deadline ends normally (the deadline is the later contender)
        await self._race(self._ctx.sleep(timedelta(seconds=seconds)))

    def _workflow_ctx(self, what: str) -> restate.WorkflowContext:
        if self._workflow is None:
            raise SagaError(f"{what} needs a saga workflow; on Restate an object call has none")
        return self._workflow

    def promise_value(self, name: str) -> Awaitable[Any]:
        self._take_seq()
        return self._promise_value(name)

    async def _promise_value(self, name: str) -> Any:
        value = self._workflow_ctx("a durable promise").promise(name, type_hint=dict).value()
        try:
            envelope = await self._race(value)
        except RestateTerminalError as exc:
            if is_cancellation(exc):
                raise
            raise PromiseRejectedError(exc.message) from None
        return envelope.get("value") if isinstance(envelope, dict) else envelope

    async def complete_promise(self, name: str, value: Any, error: str | None) -> None:
        self._take_seq()
        promise = self._workflow_ctx("a durable promise").promise(name, type_hint=dict)
        try:
            if error is None:
                # wrapped, so that a promise resolved with None reads as resolved
                await promise.resolve({"value": _jsonable(value)})
            else:
                await promise.reject(error)
        except RestateTerminalError as exc:
            raise PromiseAlreadyCompletedError(self.saga_id, name) from exc

    def wait_for_signal(self, name: str, timeout: float | None) -> Awaitable[Any]:
        self._take_seq()
        n = self._signal_waits.get(name, 0)
        self._signal_waits[name] = n + 1
        return self._wait_for_signal(name, n, timeout)

    async def _wait_for_signal(self, name: str, n: int, timeout: float | None) -> Any:
        ctx = self._workflow_ctx("waiting for a signal")
        promise = ctx.promise(SIGNAL_PROMISE.format(name=name, n=n), type_hint=dict)
        timer = None if timeout is None else ctx.sleep(timedelta(seconds=timeout))
        message = f"no signal {name!r} within {timeout}s"
        envelope = await self._race(promise.value(), timer, message)
        return envelope.get("payload") if isinstance(envelope, dict) else envelope

    def received_signals(self) -> Awaitable[Any]:
        self._take_seq()
        return self._received_signals()

    async def _received_signals(self) -> list[dict[str, Any]]:
        ctx = self._workflow_ctx("the declarative input context's events")
        received: list[dict[str, Any]] = []
        for k in range(MAX_SIGNALS):
            # a journaled peek each, so a replay sees the same list
            event = await ctx.promise(EVENT_PROMISE.format(k=k), type_hint=dict).peek()
            if event is None:
                break
            received.append(event)
        return received

    # -- virtual-object state ----------------------------------------------------------------

    def object_set(self, key: str, value: str | None) -> None:
        if value is None:
            self._ctx.clear(key)
        else:
            self._ctx.set(key, json.loads(value))
        if self._object_view is not None:
            self._object_view[key] = value

    async def object_get(self, key: str) -> str | None:
        value = await self._ctx.get(key, type_hint=object)
        return None if value is None else serde.dumps(value)

    async def object_peek(self, key: str) -> str | None:
        # inside a step's run no Restate call may be made: the view loaded before the call's
        # first step, kept up to date by every write since, is the object's state
        if self._object_view is None:
            raise SagaError("object state is read inside a step of a virtual object's handler")
        return self._object_view.get(key)

    async def _load_object_view(self) -> None:
        """Read the object's whole state once, before the call's first step (for steps that
        read it: see object_peek). Journaled reads, the same on a replay."""
        if self._workflow is not None or self._object_view is not None:
            return
        view: dict[str, str | None] = {}
        for key in await self._ctx.state_keys():
            value = await self._ctx.get(key, type_hint=object)
            view[key] = None if value is None else serde.dumps(value)
        self._object_view = view

    def set_state(self, key: str, value: Any) -> None:
        self._take_seq()
        self._ctx.set(f"sagakit.state.{key}", _jsonable(value))

    # -- parallel branches -------------------------------------------------------------------

    async def gather(self, awaitables: Sequence[Awaitable[Any]], limit: int | None) -> Any:
        branches = [a if isinstance(a, Coroutine) else _as_coroutine(a) for a in awaitables]
        ended = await BranchTurns(branches, limit).run()
        # every branch ran to its end; the first failure by position is raised
        for end in ended:
            if end.error is not None:
                raise end.error
        return [end.value for end in ended]

    # -- child sagas -------------------------------------------------------------------------

    def start_child(
        self, workflow: SagaWorkflow[Any, Any], inp: Any, saga_id: str | None
    ) -> Awaitable[str]:
        seq = self._take_seq()
        child_id = saga_id if saga_id is not None else default_child_id(self.saga_id, seq)
        return self._start_child(workflow, inp, child_id)

    async def _start_child(self, workflow: SagaWorkflow[Any, Any], inp: Any, child_id: str) -> str:
        # a journaled one-way call to the child's Workflow: a replay does not start it again
        body = serde.dumps(inp, what=f"the input of child saga {child_id!r}").encode()
        handle = self._ctx.generic_send(workflow.name, "run", body, key=child_id)
        self._children[child_id] = await handle.invocation_id()
        return child_id

    def child_result(
        self, child_id: str, workflow: SagaWorkflow[Any, Any], timeout: float | None
    ) -> Awaitable[Any]:
        self._take_seq()
        return self._child_result(child_id, workflow, timeout)

    async def _child_result(
        self, child_id: str, workflow: SagaWorkflow[Any, Any], timeout: float | None
    ) -> Any:
        invocation = self._children.get(child_id)
        if invocation is None:
            raise SagaError(
                f"child saga {child_id!r} was not started by this saga run; on Restate wait for "
                "a child through the handle saga.start_child returned"
            )
        attached = self._ctx.attach_invocation(invocation, serde=BytesSerde())
        try:
            timer = None if timeout is None else self._ctx.sleep(timedelta(seconds=timeout))
            message = f"child saga {child_id!r} did not end within {timeout}s"
            raw = await self._race(attached, timer, message)
        except RestateTerminalError as exc:
            error = outcome.decode(exc.metadata)
            if error is None or is_cancellation(exc):
                raise
            raise outcome.error_from_json(child_id, error) from None
        return workflow.output.validate(json.loads(raw))


class _StepCall:
    """A step called in the saga function: its number is taken at the call, its run is journaled
    when it is awaited."""

    __slots__ = ("driver", "inp", "seq", "step")

    def __init__(self, driver: RestateDriver, step: SagaStep[Any], seq: int, inp: Any):
        self.driver = driver
        self.step = step
        self.seq = seq
        self.inp = inp

    def __await__(self) -> Generator[Any, None, Any]:
        return self.driver._step(self).__await__()


async def _now() -> float:
    return time.time()


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


__all__ = [
    "EVENT_PROMISE",
    "MAX_SIGNALS",
    "OPERATOR_ACTIONS",
    "PARKED_STATE",
    "SIGNAL_PROMISE",
    "RestateDriver",
    "is_cancellation",
    "terminal",
]
