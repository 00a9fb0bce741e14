"""A committed minos :class:`~.definitions.Saga` as one sagakit saga workflow.

* a local step is a strict sagakit step (``minos[i].on_execute``) whose compensation is its
  ``on_failure``;
* a remote step is a strict step that builds and publishes its request
  (``minos[i].on_execute``), a durable wait for the signal ``minos.response`` (the saga is
  SUSPENDED: minos's Paused), then ``on_success`` / ``on_error`` as a hybrid step
  (``minos[i].on_success`` / ``minos[i].on_error``) whose compensation publishes
  ``on_failure``'s request: registered before the reply is handled, so that a reply handler
  that fails undoes the remote work too, as in minos;
* a conditional step is a strict step without compensation (``minos[i].condition``) that
  evaluates the conditions and records which branch they chose (``if0``, ``if1``, …, ``else``
  or none); the chosen branch's steps then run inline, compiled the same way under the names
  ``minos[i].<branch>[j].…``, so they join this execution's rollback. A replay reads the
  recorded choice and never asks the conditions again: it takes the same branch even if what
  they read has changed;
* with ``autocommit=False`` the saga ends with a wait for the signal ``minos.decision``:
  ``"commit"`` completes it, anything else rolls it back.

Every callback is called through the executors of :mod:`.executors`.

The step input carries the context as JSON; each step's output is the next context, so the
journal holds every context the execution went through.
"""

from __future__ import annotations

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
from .definitions import ConditionalSagaStep, LocalSagaStep, RemoteSagaStep, Saga, SagaStep
from .exceptions import SagaException
from .executors import Executor, LocalExecutor, RequestExecutor, ResponseExecutor
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


def step_name(index: int, part: str, prefix: str = "minos") -> str:
    """The journal name of one part of the ``index``-th step (of the definition, or of the
    branch a ``prefix`` such as ``minos[2].if0`` names)."""
    return f"{prefix}[{index}].{part}"


class _Run:
    """What one run of the saga function carries from step to step besides the context."""

    def __init__(self, saga: EngineContext, base: dict[str, Any], autocommit: bool) -> None:
        self.saga = saga
        #: what every step's input carries: the execution's uuid and user
        self.base = base
        #: a reply may change it (``run(response=..., autocommit=...)``)
        self.autocommit = autocommit


class _Part(Protocol):
    async def run(self, run: _Run, context: dict[str, Any]) -> dict[str, Any]: ...


class _Local:
    def __init__(self, first: EngineStep[Any]) -> None:
        self.first = first

    async def run(self, run: _Run, context: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.first(run.saga, {**run.base, "context": context})
        return result


class _Remote:
    def __init__(
        self,
        path: str,
        first: EngineStep[Any],
        on_success: EngineStep[Any],
        on_error: EngineStep[Any],
    ) -> None:
        self.path = path
        self.first = first
        self.on_success = on_success
        self.on_error = on_error

    async def run(self, run: _Run, context: dict[str, Any]) -> dict[str, Any]:
        await self.first(run.saga, {**run.base, "context": context})
        reply = await run.saga.wait_for_signal(RESPONSE_SIGNAL)
        run.autocommit = bool(reply.get("autocommit", run.autocommit))
        response = reply["response"]
        if response["status"] == SagaResponseStatus.SYSTEM_ERROR:
            raise TerminalError(
                f"the reply to remote step {self.path} is a system error: {response['content']!r}",
                error_type="SagaResponseException",
            )
        ok = response["status"] == SagaResponseStatus.SUCCESS
        handler = self.on_success if ok else self.on_error
        result: dict[str, Any] = await handler(
            run.saga, {**run.base, "context": context, "response": response}
        )
        return result


class _Conditional:
    """The choice is a journaled step (no compensation); the chosen branch's steps run inline,
    under journal names of their own, so that they join this execution's rollback."""

    def __init__(self, choose: EngineStep[Any], branches: dict[str, _Block]) -> None:
        self.choose = choose
        self.branches = branches

    async def run(self, run: _Run, context: dict[str, Any]) -> dict[str, Any]:
        chosen = await self.choose(run.saga, {**run.base, "context": context})
        label = chosen["branch"]
        if label is None:
            return context
        return await self.branches[label].run(run, context)


class _Block:
    """The compiled steps of one Saga: the definition, or a conditional step's branch."""

    def __init__(self, owner: CompiledSaga, steps: list[SagaStep], prefix: str, path: str):
        self.owner = owner
        #: journal names are ``{prefix}[i].part``
        self.prefix = prefix
        #: a step's position for messages and publish keys: ``2``, ``2.if0.1``
        self.path = path
        self.parts: list[_Part] = [self._compile(i, step) for i, step in enumerate(steps)]

    async def run(self, run: _Run, context: dict[str, Any]) -> dict[str, Any]:
        for part in self.parts:
            context = await part.run(run, context)
        return context

    def _compile(self, index: int, step: SagaStep) -> _Part:
        name = f"{self.prefix}[{index}]"
        path = f"{self.path}{index}"
        if isinstance(step, LocalSagaStep):
            return _Local(self._local(name, step))
        if isinstance(step, ConditionalSagaStep):
            branches = {
                label: _Block(self.owner, branch.steps, f"{name}.{label}", f"{path}.{label}.")
                for label, branch in step.branches.items()
            }
            return _Conditional(self._condition(name, step), branches)
        assert isinstance(step, RemoteSagaStep)
        return _Remote(
            path,
            self._request(name, path, step),
            self._reply(name, path, step, "on_success", step.on_success_operation),
            self._reply(name, path, step, "on_error", step.on_error_operation),
        )

    def _local(self, name: str, step: LocalSagaStep) -> EngineStep[Any]:
        on_execute = step.on_execute_operation
        on_failure = step.on_failure_operation
        assert on_execute is not None

        async def run(ctx: EngineContext, inp: dict[str, Any]) -> StepResponse[Any]:
            executor = LocalExecutor(_uuid.UUID(inp["execution"]))
            context = (await executor.exec(on_execute, SagaContext.from_raw(inp["context"]))).raw
            return StepResponse(output=context, compensation_data={**inp, "context": context})

        undo = None
        if on_failure is not None:
            failure = on_failure

            async def undo_local(data: dict[str, Any]) -> None:
                # the data of a step journaled by an older release has no "execution"
                execution = data.get("execution")
                executor = Executor(_uuid.UUID(execution) if execution else _uuid.UUID(int=0))
                await executor.exec_function(failure, SagaContext.from_raw(data["context"]))

            undo = undo_local
        return saga_step_strict(
            f"{name}.on_execute",
            compensate=undo,
            retry=_NO_RETRY,
            compensation_retry=_COMPENSATION_RETRY,
        )(run)

    def _condition(self, name: str, step: ConditionalSagaStep) -> EngineStep[Any]:
        conditions = [(f"if{i}", alt.condition) for i, alt in enumerate(step.if_then_alternatives)]
        otherwise = "else" if step.else_then_alternative is not None else None

        async def choose(ctx: EngineContext, inp: dict[str, Any]) -> dict[str, Any]:
            executor = Executor(_uuid.UUID(inp["execution"]))
            for label, condition in conditions:
                # each condition gets its own copy: what it changes does not go on
                if await executor.exec_function(condition, SagaContext.from_raw(inp["context"])):
                    return {"branch": label}
            return {"branch": otherwise}

        return saga_step_strict(f"{name}.condition", retry=_NO_RETRY)(choose)

    def _request(self, name: str, path: str, step: RemoteSagaStep) -> EngineStep[Any]:
        on_execute = step.on_execute_operation
        assert on_execute is not None
        owner = self.owner

        async def send(ctx: EngineContext, inp: dict[str, Any]) -> dict[str, Any]:
            context = SagaContext.from_raw(inp["context"])
            request = await owner.requests(inp).exec(on_execute, context, key=ctx.step_key)
            if request is None:
                raise TerminalError(
                    f"the on_execute of remote step {path} returned None; a remote step's "
                    "on_execute returns a SagaRequest(target, content)",
                    error_type="SagaException",
                )
            return request.raw

        return saga_step_strict(f"{name}.on_execute", retry=_NO_RETRY)(send)

    def _reply(
        self,
        name: str,
        path: str,
        step: RemoteSagaStep,
        part: str,
        callback: Callable[..., Any] | None,
    ) -> EngineStep[Any]:
        on_failure = step.on_failure_operation
        owner = self.owner

        async def handle(ctx: EngineContext, inp: dict[str, Any]) -> StepResponse[Any]:
            executor = ResponseExecutor(_uuid.UUID(inp["execution"]))
            context = await executor.exec(
                callback,
                SagaContext.from_raw(inp["context"]),
                SagaResponse.from_raw(inp["response"]),
            )
            context_raw = context.raw
            return StepResponse(
                output=context_raw, compensation_data={**inp, "context": context_raw}
            )

        undo = None
        if on_failure is not None:
            failure = on_failure

            async def undo_remote(data: dict[str, Any]) -> None:
                await owner.requests(data).exec(
                    failure,
                    SagaContext.from_raw(data["context"]),
                    key=f"{data['execution']}:{path}:on_failure",
                )

            undo = undo_remote
        # hybrid: the undo is registered before the reply is handled (see the module docstring)
        return saga_step(
            f"{name}.{part}",
            compensate=undo,
            retry=_NO_RETRY,
            compensation_retry=_COMPENSATION_RETRY,
        )(handle)


class CompiledSaga:
    """One definition's workflow, and the publisher its remote steps send through."""

    def __init__(self, definition: Saga) -> None:
        self.definition = definition
        self.name = definition.workflow_name
        #: what sends the requests of executions that no manager of this process bound a
        #: broker_pool to (those recovered after a restart): ``SagaManager.register``
        self.publisher: SagaRequestPublisher | None = None
        self._steps = _Block(self, definition.steps, "minos", "")
        self.workflow: SagaWorkflow[Any, Any] = SagaWorkflow(self.name, self._run)

    def requests(self, inp: dict[str, Any]) -> RequestExecutor:
        """The executor of the remote-step requests of the execution a step input names: it
        publishes through the execution's broker_pool (None: the request is only recorded, as
        the step's output, for the caller to send)."""
        user = inp.get("user")
        return RequestExecutor(
            _uuid.UUID(inp["execution"]),
            user=None if user is None else _uuid.UUID(user),
            broker_publisher=_bound.get(inp["execution"], self.publisher),
        )

    async def _run(self, saga: EngineContext, inp: Any) -> Any:
        base = {"execution": saga.saga_id, "user": inp.get("user")}
        run = _Run(saga, base, bool(inp.get("autocommit", True)))
        context = await self._steps.run(run, inp["context"])
        if not run.autocommit:
            decision = await saga.wait_for_signal(DECISION_SIGNAL)
            if decision != COMMIT:
                raise TerminalError(
                    "the execution was rejected (SagaExecution.reject or rollback)",
                    error_type="SagaRejected",
                )
        return {"context": context}


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
