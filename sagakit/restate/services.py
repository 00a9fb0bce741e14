"""sagakit definitions as Restate services.

* A :class:`~sagakit.workflows.SagaWorkflow` becomes a keyed Restate **Workflow** named like it:
  its ``run`` handler runs the saga function with the saga id as key (so starting the same saga
  twice is idempotent), and its shared ``signal`` handler delivers signals. A
  :class:`~sagakit.long_workflows.SagaLongWorkflow`'s handlers become shared handlers of the
  same Workflow.
* A :class:`~sagakit.objects.SagaVirtualObject` becomes a Restate **VirtualObject**: each
  exclusive handler call is a saga of its own over the object's Restate state, each shared
  handler reads that state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import restate
from restate.exceptions import TerminalError as RestateTerminalError
from restate.serde import JsonSerde

from .. import serde
from ..context import SagaContext
from ..errors import ErrorInfo, SagaError, SagaValidationError, StepFailedError
from ..long_workflows import HandlerContext, SagaLongWorkflow, WorkflowHandler
from ..objects import ObjectHandler, SagaVirtualObject, SharedObjectContext
from ..workflows import SagaWorkflow
from . import outcome
from .driver import (
    EVENT_PROMISE,
    MAX_SIGNALS,
    OPERATOR_ACTIONS,
    PARKED_STATE,
    SIGNAL_PROMISE,
    RestateDriver,
    is_cancellation,
)

#: what operators call on a saga workflow to see and act on its parked steps
OPERATE_HANDLER = "sagakit_operate"
#: handler names every saga workflow service has (a long workflow's handlers may not take them)
RESERVED_HANDLERS = ("run", "signal", OPERATE_HANDLER)


async def run_saga(
    ctx: restate.ObjectContext,
    saga_id: str,
    workflow: SagaWorkflow[Any, Any],
    inp: Any,
    workflow_ctx: restate.WorkflowContext | None = None,
) -> Any:
    """Run ``workflow``'s saga function over Restate; roll it back when it fails for good."""
    try:
        value = workflow.input.validate(inp)
    except SagaValidationError as exc:
        error = {"kind": "invalid_input", "message": str(exc)}
        raise RestateTerminalError(
            str(exc), status_code=outcome.INVALID_INPUT_STATUS, metadata=outcome.encode(error)
        ) from None
    driver = RestateDriver(ctx, saga_id, workflow_ctx)
    if workflow.options.deadline is not None:
        await driver.start_deadline(workflow.options.deadline)
    try:
        result = await workflow.function(SagaContext(driver), value)
        # checked here, not left to the SDK: a saga whose output is not JSON rolls back
        return serde.loads(serde.dumps(result, what=f"the output of saga {workflow.name!r}"))
    except Exception as exc:  # Restate's own control flow is a BaseException: it passes
        cause = _cause(exc)
    failures = await driver.rollback()
    if workflow.after_rollback is not None:
        try:
            await driver.call_step(workflow.after_rollback, cause.to_json())
        except StepFailedError as exc:
            failures.append(ErrorInfo.from_exception(exc))
    error = outcome.failure_error(cause, failures)
    status = outcome.COMPENSATION_FAILED_STATUS if failures else outcome.COMPENSATED_STATUS
    raise RestateTerminalError(
        str(outcome.error_from_json(saga_id, error)),
        status_code=status,
        metadata=outcome.encode(error),
    )


def _cause(exc: Exception) -> ErrorInfo:
    if isinstance(exc, RestateTerminalError):
        if is_cancellation(exc):
            return ErrorInfo("SagaCancelledError", "the saga was cancelled through Restate")
        return ErrorInfo("TerminalError", exc.message)
    return ErrorInfo.from_exception(exc)


class _SharedHandlerDriver:
    """What a long workflow's handler does, over a Restate shared workflow context."""

    def __init__(self, ctx: restate.WorkflowSharedContext):
        self._ctx = ctx

    async def resolve_promise(self, saga_id: str, name: str, value: Any, error: str | None) -> None:
        promise = self._ctx.promise(name, type_hint=dict)
        if error is None:
            await promise.resolve({"value": serde.loads(serde.dumps(value))})
        else:
            await promise.reject(error)

    async def signal(self, saga_id: str, name: str, payload: Any = None) -> None:
        await deliver_signal(self._ctx, name, payload)

    async def query(self, saga_id: str, key: str, default: Any = None) -> Any:
        value = await self._ctx.get(f"sagakit.state.{key}", type_hint=object)
        return default if value is None else value


async def deliver_signal(ctx: restate.WorkflowSharedContext, name: str, payload: Any) -> None:
    """Resolve the first of the saga's signal promises for ``name`` that is still open: the
    n-th wait for ``name`` takes the n-th signal, in the order they were delivered. The signal
    is also recorded in the saga's list of received signals (InputContext.events)."""
    payload = serde.loads(serde.dumps(payload))
    await _resolve_first_open(
        ctx, lambda n: SIGNAL_PROMISE.format(name=name, n=n), {"payload": payload}
    )
    await _resolve_first_open(
        ctx, lambda k: EVENT_PROMISE.format(k=k), {"name": name, "payload": payload}
    )


async def _resolve_first_open(
    ctx: restate.WorkflowSharedContext, promise_name: Callable[[int], str], value: Any
) -> None:
    for n in range(MAX_SIGNALS):
        promise = ctx.promise(promise_name(n), type_hint=dict)
        if await promise.peek() is not None:
            continue
        try:
            await promise.resolve(value)
            return
        except RestateTerminalError:
            continue  # another signal took this one meanwhile: try the next
    raise RestateTerminalError(f"too many signals (at most {MAX_SIGNALS}): {promise_name(0)}")


async def operate(ctx: restate.WorkflowSharedContext, req: Any) -> Any:
    """An operator's request on a saga's parked steps: ``{"action": "show"}`` lists them;
    ``{"action": "retry" | "skip" | "compensate", "step": name?, "output": any?}`` answers the
    parked step named (or the first one), which the saga then acts on."""
    actions = ("show", *OPERATOR_ACTIONS)
    if not isinstance(req, dict) or req.get("action") not in actions:
        raise RestateTerminalError(
            f'an operator request is {{"action": one of {list(actions)}, "step": str (optional), '
            f'"output": any (for skip)}}, got {req!r}',
            400,
        )
    parked = await ctx.get(PARKED_STATE, type_hint=dict) or {}
    entries = sorted(parked.values(), key=lambda entry: int(entry["seq"]))
    if req["action"] == "show":
        return [{k: entry[k] for k in ("step", "seq", "error")} for entry in entries]
    step = req.get("step")
    chosen = next((e for e in entries if step is None or e["step"] == step), None)
    if chosen is None:
        which = "no parked step" if step is None else f"no parked step {step!r}"
        raise RestateTerminalError(
            f"saga {ctx.key()!r} has {which}: a step parks when its retries run out "
            "(on_exhausted='park')",
            409,
        )
    ctx.resolve_awakeable(
        chosen["awakeable"], {"action": req["action"], "output": req.get("output")}
    )
    return {"step": chosen["step"], "seq": chosen["seq"], "action": req["action"]}


def saga_service(workflow: SagaWorkflow[Any, Any]) -> restate.Workflow:
    """The Restate Workflow that serves ``workflow``."""
    workflow.check_ready()
    service = restate.Workflow(workflow.name, description=workflow.options.description)
    json_io: dict[str, Any] = {"input_serde": JsonSerde(), "output_serde": JsonSerde()}

    async def run(ctx: restate.WorkflowContext, inp: Any) -> Any:
        return await run_saga(ctx, ctx.key(), workflow, inp, ctx)

    async def signal(ctx: restate.WorkflowSharedContext, req: Any) -> None:
        if not isinstance(req, dict) or not isinstance(req.get("name"), str):
            raise RestateTerminalError('a signal is {"name": str, "payload": any}', 400)
        await deliver_signal(ctx, req["name"], req.get("payload"))

    service.main(name="run", **json_io)(run)
    service.handler(name="signal", **json_io)(signal)
    service.handler(name=OPERATE_HANDLER, **json_io)(operate)
    if isinstance(workflow, SagaLongWorkflow):
        for name, handler in workflow.handlers.items():
            if name in RESERVED_HANDLERS:
                raise SagaError(
                    f"workflow {workflow.name!r}: a handler may not be called {name!r} on "
                    f"Restate (reserved: {', '.join(RESERVED_HANDLERS)})"
                )
            service.handler(name=name, **json_io)(_long_handler(handler))
    return service


def _long_handler(handler: WorkflowHandler) -> Any:
    async def call(ctx: restate.WorkflowSharedContext, inp: Any) -> Any:
        hctx = HandlerContext(_SharedHandlerDriver(ctx), ctx.key())
        result = await handler.fn(hctx, handler.input.validate(inp))
        return serde.loads(serde.dumps(result))

    return call


class _StateReader:
    def __init__(self, ctx: restate.ObjectSharedContext):
        self._ctx = ctx

    async def read_object_state(self, object_key: str) -> dict[str, str]:
        state: dict[str, str] = {}
        for key in await self._ctx.state_keys():
            value = await self._ctx.get(key, type_hint=object)
            if value is not None:
                state[key] = serde.dumps(value)
        return state


def object_service(obj: SagaVirtualObject) -> restate.VirtualObject:
    """The Restate VirtualObject that serves ``obj``."""
    service = restate.VirtualObject(obj.name)
    json_io: dict[str, Any] = {"input_serde": JsonSerde(), "output_serde": JsonSerde()}
    for name, handler in obj.handlers.items():
        if handler.kind == "exclusive":
            service.handler(name=name, kind="exclusive", **json_io)(_exclusive(obj, handler))
        else:
            service.handler(name=name, kind="shared", **json_io)(_shared(obj, handler))
    return service


def _exclusive(obj: SagaVirtualObject, handler: ObjectHandler) -> Any:
    workflow = handler.workflow
    assert workflow is not None

    async def call(ctx: restate.ObjectContext, inp: Any) -> Any:
        # each call is a saga of its own: its invocation id names it (and its step keys)
        call_input = {"object": obj.name, "key": ctx.key(), "input": inp}
        return await run_saga(ctx, ctx.request().id, workflow, call_input)

    return call


def _shared(obj: SagaVirtualObject, handler: ObjectHandler) -> Any:
    async def call(ctx: restate.ObjectSharedContext, inp: Any) -> Any:
        view = SharedObjectContext(_StateReader(ctx), obj.name, ctx.key())
        result = await handler.fn(view, handler.input.validate(inp))
        return serde.loads(serde.dumps(result))

    return call


def app(*definitions: SagaWorkflow[Any, Any] | SagaVirtualObject, **options: Any) -> Any:
    """The ASGI app that serves these saga workflows and virtual objects on Restate.

    Serve it with hypercorn (or mount it into FastAPI) and register its URL with the Restate
    server; ``options`` go to ``restate.app`` (``protocol=``, ``identity_keys=``...).
    """
    services: list[restate.Workflow | restate.VirtualObject] = []
    for definition in definitions:
        if isinstance(definition, SagaVirtualObject):
            services.append(object_service(definition))
        elif isinstance(definition, SagaWorkflow):
            services.append(saga_service(definition))
        else:
            raise SagaError(
                "sagakit.restate.app takes saga workflows (@saga_workflow, "
                f"create_saga_long_workflow) and virtual objects, got {definition!r}"
            )
    return restate.app(services=services, **options)
