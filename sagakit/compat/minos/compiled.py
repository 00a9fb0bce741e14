"""A committed minos :class:`~.definitions.Saga` as one sagakit saga workflow.

* a local step is a strict sagakit step (``minos[i].on_execute``) whose compensation is its
  ``on_failure``;
* a remote step is a strict step that builds and publishes its request
  (``minos[i].on_execute``), a durable wait for the signal ``minos.response`` (the saga is
  SUSPENDED: minos's Paused), then ``on_success`` / ``on_error`` as a hybrid step
  (``minos[i].on_success`` / ``minos[i].on_error``) whose compensation publishes
  ``on_failure``'s request: registered before the reply is handled, so that a reply handler
  that fails undoes the remote work too, as in minos;
* with ``autocommit=False`` the saga ends with a wait for the signal ``minos.decision``:
  ``"commit"`` completes it, anything else rolls it back.

The step input carries the context as JSON; each step's output is the next context, so the
journal holds every context the execution went through.
"""

from __future__ import annotations

import inspect
import threading
import uuid as _uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ...errors import TerminalError
from ...retry import RetryPolicy
from ...steps import SagaStep as EngineStep
from ...steps import StepResponse, saga_step, saga_step_strict
from ...workflows import SagaWorkflow
from .definitions import LocalSagaStep, RemoteSagaStep, Saga, SagaStep
from .exceptions import SagaException
from .messages import SagaContext, SagaRequest, SagaResponse, SagaResponseStatus

if TYPE_CHECKING:
    from ...context import SagaContext as EngineContext
    from ...engine import Engine

RESPONSE_SIGNAL = "minos.response"
DECISION_SIGNAL = "minos.decision"
COMMIT = "commit"
REJECT = "reject"

#: minos runs a step once: an exception fails it (and rolls the execution back)
_NO_RETRY = RetryPolicy(max_attempts=1)
#: a compensation is retried (sagakit's default), so that one hiccup does not leave a
#: rollback half done
_COMPENSATION_RETRY = RetryPolicy()


@runtime_checkable
class SagaRequestPublisher(Protocol):
    """What ``SagaManager(broker_pool=...)`` must be: something that sends a remote step's
    request to its target service.

    ``key`` is stable across the retries and recoveries of the step that publishes: a
    publisher that drops a second message with the same key publishes each request once even
    when a crash made the step run again. The reply comes back through
    ``SagaManager.run(response=SagaResponse(..., uuid=execution_uuid))``.
    """

    async def publish(
        self,
        request: SagaRequest,
        *,
        execution_uuid: _uuid.UUID,
        user: _uuid.UUID | None,
        key: str,
    ) -> None: ...


def step_name(index: int, part: str) -> str:
    """The journal name of one part of the ``index``-th step."""
    return f"minos[{index}].{part}"


async def call(callback: Callable[..., Any], *args: Any) -> Any:
    """Call a minos callback, sync or async."""
    result = callback(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class CompiledSaga:
    """One definition's workflow, and the publisher its remote steps send through."""

    def __init__(self, definition: Saga) -> None:
        self.definition = definition
        self.name = definition.workflow_name
        #: what sends the requests of executions that no manager of this process bound a
        #: broker_pool to (those recovered after a restart): ``SagaManager.register``
        self.publisher: SagaRequestPublisher | None = None
        self._parts: list[tuple[EngineStep[Any], EngineStep[Any] | None, EngineStep[Any] | None]]
        self._parts = [self._compile(i, step) for i, step in enumerate(definition.steps)]
        self.workflow: SagaWorkflow[Any, Any] = SagaWorkflow(self.name, self._run)

    async def _run(self, saga: EngineContext, inp: Any) -> Any:
        context: dict[str, Any] = inp["context"]
        autocommit = bool(inp.get("autocommit", True))
        base = {"execution": saga.saga_id, "user": inp.get("user")}
        for index, step in enumerate(self.definition.steps):
            first, on_success, on_error = self._parts[index]
            if isinstance(step, LocalSagaStep):
                context = await first(saga, {**base, "context": context})
                continue
            await first(saga, {**base, "context": context})
            reply = await saga.wait_for_signal(RESPONSE_SIGNAL)
            autocommit = bool(reply.get("autocommit", autocommit))
            response = reply["response"]
            if response["status"] == SagaResponseStatus.SYSTEM_ERROR:
                raise TerminalError(
                    f"the reply to remote step {index} is a system error: {response['content']!r}",
                    error_type="SagaResponseException",
                )
            handler = on_success if response["status"] == SagaResponseStatus.SUCCESS else on_error
            assert handler is not None
            context = await handler(saga, {**base, "context": context, "response": response})
        if not autocommit:
            decision = await saga.wait_for_signal(DECISION_SIGNAL)
            if decision != COMMIT:
                raise TerminalError(
                    "the execution was rejected (SagaExecution.reject or rollback)",
                    error_type="SagaRejected",
                )
        return {"context": context}

    def _compile(
        self, index: int, step: SagaStep
    ) -> tuple[EngineStep[Any], EngineStep[Any] | None, EngineStep[Any] | None]:
        if isinstance(step, LocalSagaStep):
            return self._local(index, step), None, None
        assert isinstance(step, RemoteSagaStep)
        return (
            self._request(index, step),
            self._reply(index, step, "on_success", step.on_success_operation),
            self._reply(index, step, "on_error", step.on_error_operation),
        )

    def _local(self, index: int, step: LocalSagaStep) -> EngineStep[Any]:
        on_execute = step.on_execute_operation
        on_failure = step.on_failure_operation
        assert on_execute is not None

        async def run(ctx: EngineContext, inp: dict[str, Any]) -> StepResponse[Any]:
            context = await _next_context(on_execute, SagaContext.from_raw(inp["context"]))
            return StepResponse(output=context, compensation_data={"context": context})

        undo = None
        if on_failure is not None:
            failure = on_failure

            async def undo_local(data: dict[str, Any]) -> None:
                await call(failure, SagaContext.from_raw(data["context"]))

            undo = undo_local
        return saga_step_strict(
            step_name(index, "on_execute"),
            compensate=undo,
            retry=_NO_RETRY,
            compensation_retry=_COMPENSATION_RETRY,
        )(run)

    def _request(self, index: int, step: RemoteSagaStep) -> EngineStep[Any]:
        on_execute = step.on_execute_operation
        assert on_execute is not None

        async def send(ctx: EngineContext, inp: dict[str, Any]) -> dict[str, Any]:
            request = await call(on_execute, SagaContext.from_raw(inp["context"]))
            if not isinstance(request, SagaRequest):
                raise TerminalError(
                    f"the on_execute of remote step {index} returned {request!r}; a remote "
                    "step's on_execute returns a SagaRequest(target, content)",
                    error_type="SagaException",
                )
            await self._publish(request, inp, ctx.step_key)
            return request.raw

        return saga_step_strict(step_name(index, "on_execute"), retry=_NO_RETRY)(send)

    def _reply(
        self,
        index: int,
        step: RemoteSagaStep,
        part: str,
        callback: Callable[..., Any] | None,
    ) -> EngineStep[Any]:
        on_failure = step.on_failure_operation

        async def handle(ctx: EngineContext, inp: dict[str, Any]) -> StepResponse[Any]:
            context = SagaContext.from_raw(inp["context"])
            if callback is not None:
                context_raw = await _next_context(
                    callback, context, SagaResponse.from_raw(inp["response"])
                )
            else:
                context_raw = context.raw
            return StepResponse(
                output=context_raw, compensation_data={**inp, "context": context_raw}
            )

        undo = None
        if on_failure is not None:
            failure = on_failure

            async def undo_remote(data: dict[str, Any]) -> None:
                request = await call(failure, SagaContext.from_raw(data["context"]))
                if request is None:
                    return
                if not isinstance(request, SagaRequest):
                    raise TerminalError(
                        f"the on_failure of remote step {index} returned {request!r}; it "
                        "returns a SagaRequest (or None for nothing to undo)",
                        error_type="SagaException",
                    )
                await self._publish(request, data, f"{data['execution']}:{index}:on_failure")

            undo = undo_remote
        # hybrid: the undo is registered before the reply is handled (see the module docstring)
        return saga_step(
            step_name(index, part),
            compensate=undo,
            retry=_NO_RETRY,
            compensation_retry=_COMPENSATION_RETRY,
        )(handle)

    async def _publish(self, request: SagaRequest, inp: dict[str, Any], key: str) -> None:
        publisher = _bound.get(inp["execution"], self.publisher)
        if publisher is None:
            return  # recorded for the caller: the step's output is the request
        user = inp.get("user")
        await publisher.publish(
            request,
            execution_uuid=_uuid.UUID(inp["execution"]),
            user=None if user is None else _uuid.UUID(user),
            key=key,
        )


async def _next_context(callback: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Run a callback that returns the next context (or None: the one it got goes on)."""
    context = args[0]
    result = await call(callback, *args)
    if result is None:
        result = context
    if not isinstance(result, SagaContext):
        raise TerminalError(
            f"{getattr(callback, '__qualname__', callback)!r} returned {result!r}; a step "
            "callback returns a SagaContext (or None to keep the one it got)",
            error_type="SagaException",
        )
    return result.raw


_lock = threading.Lock()
#: every definition compiled in this process, by workflow name (one workflow object per name,
#: so that registering it on several engines, or again, is not a conflict)
_compiled: dict[str, CompiledSaga] = {}


def compiled(definition: Saga) -> CompiledSaga:
    """The compiled form of a committed definition (compiled once per process)."""
    name = definition.workflow_name
    with _lock:
        found = _compiled.get(name)
        if found is None:
            found = _compiled[name] = CompiledSaga(definition)
        return found


def known(name: str) -> CompiledSaga | None:
    """The definition compiled in this process under the workflow ``name``, if any."""
    return _compiled.get(name)


def register(engine: Engine, definition: Saga) -> CompiledSaga:
    """Compile ``definition`` and register it on ``engine``."""
    found = compiled(definition)
    engine.register(found.workflow)
    return found


def check_publisher(publisher: Any) -> SagaRequestPublisher | None:
    """``publisher``, if it has the shape of a :class:`SagaRequestPublisher` (or is None)."""
    if publisher is not None and not isinstance(publisher, SagaRequestPublisher):
        raise SagaException(
            f"broker_pool {publisher!r} has no `async def publish(request, *, execution_uuid, "
            "user, key)`: see sagakit.compat.minos.SagaRequestPublisher"
        )
    return publisher


#: the most executions whose broker_pool this process remembers (older ones fall back to
#: their definition's, ``SagaManager.register``)
_BOUND_MAX = 10_000
_bound: OrderedDict[str, SagaRequestPublisher | None] = OrderedDict()


def bind(execution: str, publisher: SagaRequestPublisher | None) -> None:
    """Send the requests of ``execution`` (a saga id) through ``publisher`` (None: record them
    only), in this process."""
    with _lock:
        _bound[execution] = check_publisher(publisher)
        _bound.move_to_end(execution)
        while len(_bound) > _BOUND_MAX:
            _bound.popitem(last=False)


__all__ = [
    "COMMIT",
    "DECISION_SIGNAL",
    "REJECT",
    "RESPONSE_SIGNAL",
    "CompiledSaga",
    "SagaRequestPublisher",
    "bind",
    "check_publisher",
    "compiled",
    "known",
    "register",
    "step_name",
]
