"""restate-saga's steps, workflows, long-running workflows and virtual objects, each one of
sagakit's own definitions with restate-saga's function shapes adapted onto it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

from ...composition import SagaModule
from ...composition import run_nested_saga as native_run_nested_saga
from ...context import SagaContext as NativeSagaContext
from ...errors import TerminalError
from ...long_workflows import HandlerContext, SagaLongWorkflow
from ...objects import ObjectContext as NativeObjectContext
from ...objects import SagaVirtualObject as NativeVirtualObject
from ...objects import SharedObjectContext
from ...steps import SagaStep
from ...steps import SagaStepOptions as NativeStepOptions
from ...workflows import SagaWorkflow, saga_function_parameters
from ...workflows import SagaWorkflowOptions as NativeWorkflowOptions
from ..restate import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    WorkflowContext,
    WorkflowSharedContext,
)
from .context import SagaContext, StepDefaults, dressed, optional_input, positional, require_async
from .options import (
    SagaStepOptions,
    SagaWorkflowOptions,
    native_step_options,
    native_workflow_options,
)

StepOptions = SagaStepOptions | NativeStepOptions | None
WorkflowOptions = SagaWorkflowOptions | NativeWorkflowOptions | None
AsyncFn = Callable[..., Awaitable[Any]]
T = TypeVar("T")

# -- steps ------------------------------------------------------------------------------------


def create_saga_step(
    name: str,
    run: AsyncFn,
    compensate: Callable[..., Any] | None = None,
    options: StepOptions = None,
) -> SagaStep[Any]:
    """A hybrid step (its compensation registered before it runs): sagakit's
    :func:`~sagakit.create_saga_step` with restate-saga's options."""
    return SagaStep(name, run, compensate, native_step_options(options), strict=False)


def create_saga_step_strict(
    name: str,
    run: AsyncFn,
    compensate: Callable[..., Any] | None = None,
    options: StepOptions = None,
) -> SagaStep[Any]:
    """A strict step (its compensation registered once it succeeded)."""
    return SagaStep(name, run, compensate, native_step_options(options), strict=True)


def saga_step(
    name: str, compensate: Callable[..., Any] | None = None, options: StepOptions = None
) -> Callable[[AsyncFn], SagaStep[Any]]:
    """Decorate ``async def fn(ctx, input_val)`` as a hybrid step."""
    return lambda fn: create_saga_step(name, fn, compensate, options)


def saga_step_strict(
    name: str, compensate: Callable[..., Any] | None = None, options: StepOptions = None
) -> Callable[[AsyncFn], SagaStep[Any]]:
    """Decorate ``async def fn(ctx, input_val)`` as a strict step."""
    return lambda fn: create_saga_step_strict(name, fn, compensate, options)


# -- the saga function adapter -------------------------------------------------------------


class _Run:
    """How a definition's saga function is called: restate-saga's SagaContext around sagakit's,
    the workflow's default step retry, and its error mapper on what escapes."""

    def __init__(self, options: SagaWorkflowOptions):
        policy = options.retry_policy
        self.defaults = None if policy is None else StepDefaults(policy)
        self.mapper = options.as_terminal_error

    def saga(
        self, native: NativeSagaContext, ctx: Callable[[SagaContext], Context] | None = None
    ) -> SagaContext:
        return SagaContext.of(native, ctx, self.defaults)

    async def call(self, fn: AsyncFn, *args: Any) -> Any:
        try:
            return await fn(*args)
        except Exception as exc:
            if self.mapper is None or isinstance(exc, TerminalError):
                raise
            mapped = self.mapper(exc)
            if mapped is None:
                raise
            raise mapped from exc


def _saga_function(
    fn: AsyncFn, what: str, run: _Run, ctx: Callable[[SagaContext], Context] | None = None
) -> AsyncFn:
    """``fn(saga, input_val)`` as sagakit calls a saga function."""
    saga_function_parameters(fn, what)  # sagakit's own definition checks, naming ``fn``

    async def call(saga: NativeSagaContext, inp: Any) -> Any:
        return await run.call(fn, run.saga(saga, ctx), inp)

    params = positional(fn)
    return dressed(call, fn, params[:2])


# -- workflows --------------------------------------------------------------------------------


class SagaWorkflowService(SagaWorkflow[Any, Any]):
    """A restate-saga workflow: a sagakit :class:`~sagakit.SagaWorkflow` (register it, start
    it with ``engine.run(workflow, input_val)``) whose handler gets restate-saga's
    :class:`SagaContext`. ``run_as_step(parent_saga, input_val)`` embeds it in another saga."""

    def __init__(self, name: str, handler: AsyncFn, options: WorkflowOptions = None):
        native, self.restate_options = native_workflow_options(options)
        what = f"workflow {name!r}"
        super().__init__(name, _saga_function(handler, what, _Run(self.restate_options)), native)
        #: the handler as written
        self.handler = handler


def create_saga_workflow(
    name: str, handler: AsyncFn, options: WorkflowOptions = None
) -> SagaWorkflowService:
    """A saga workflow called ``name`` running ``async def handler(saga, input_val)``."""
    return SagaWorkflowService(name, handler, options)


def saga_workflow(
    name: str, options: WorkflowOptions = None
) -> Callable[[AsyncFn], SagaWorkflowService]:
    """Decorate ``async def handler(saga, input_val)`` as a saga workflow."""
    return lambda handler: SagaWorkflowService(name, handler, options)


# -- long-running workflows ---------------------------------------------------------------------


class SagaRestateWorkflow(SagaLongWorkflow[Any, Any]):
    """restate-saga's long-running workflow over sagakit's
    :class:`~sagakit.SagaLongWorkflow`: ``@wf.main()`` takes ``(saga, ctx, input_val)`` with
    ``ctx`` a ``restate.WorkflowContext``; ``@wf.handler()`` takes ``(ctx, input_val)`` or
    ``(ctx)`` with ``ctx`` a ``restate.WorkflowSharedContext``. Start it with
    ``engine.start(wf, input_val, saga_id=key)``; call a handler with
    ``engine.call(key, "approve", input_val)``."""

    def __init__(self, name: str, options: WorkflowOptions = None):
        native, self.restate_options = native_workflow_options(options)
        super().__init__(name, native)
        self._run = _Run(self.restate_options)

    def main(self) -> Callable[[AsyncFn], AsyncFn]:
        """Decorate ``async def run(saga, ctx, input_val)`` (or ``(saga, input_val)``)."""
        register = super().main()

        def wrap(fn: AsyncFn) -> AsyncFn:
            require_async(fn, f"main of workflow {self.name!r}")
            params = positional(fn)
            if len(params) < 3:
                register(_saga_function(fn, f"main of workflow {self.name!r}", self._run))
                return fn

            async def call(saga: NativeSagaContext, inp: Any) -> Any:
                view = self._run.saga(saga, WorkflowContext)
                return await self._run.call(fn, view, view.ctx, inp)

            register(dressed(call, fn, [params[0], params[2]]))
            return fn

        return wrap

    def handler(self, name: str | None = None) -> Callable[[AsyncFn], AsyncFn]:
        """Decorate ``async def fn(ctx, input_val)`` or ``async def fn(ctx)``: a handler called
        on a running saga of this workflow (``engine.call(saga_id, name, input_val)``)."""
        register = super().handler

        def wrap(fn: AsyncFn) -> AsyncFn:
            require_async(fn, f"handler of workflow {self.name!r}")
            params = positional(fn)
            takes_input = len(params) >= 2

            async def call(ctx: HandlerContext, inp: Any = None) -> Any:
                shared = WorkflowSharedContext(ctx)
                return await (fn(shared, inp) if takes_input else fn(shared))

            kept = params[:2] if takes_input else [*params[:1], optional_input()]
            register(name or fn.__name__)(dressed(call, fn, kept))
            return fn

        return wrap


def create_saga_restate_workflow(name: str, options: WorkflowOptions = None) -> SagaRestateWorkflow:
    """A long-running workflow: ``wf = create_saga_restate_workflow("Approval")``, then
    ``@wf.main()`` and ``@wf.handler()``."""
    return SagaRestateWorkflow(name, options)


# -- virtual objects ------------------------------------------------------------------------------


class SagaVirtualObject(NativeVirtualObject):
    """restate-saga's virtual object over sagakit's :class:`~sagakit.SagaVirtualObject`:
    ``@obj.handler()`` takes ``(saga, ctx, input_val)`` with ``ctx`` a
    ``restate.ObjectContext``; ``@obj.handler(kind="shared")`` takes ``(ctx)`` or
    ``(ctx, input_val)`` with ``ctx`` a ``restate.ObjectSharedContext``. Call a handler with
    ``engine.call_object("Name", key, "handler", input_val)``."""

    def __init__(self, name: str, options: WorkflowOptions = None):
        super().__init__(name)
        _, self.restate_options = native_workflow_options(options)
        self._run = _Run(self.restate_options)

    def handler(
        self, name: str | None = None, kind: Literal["exclusive", "shared"] = "exclusive"
    ) -> Callable[[AsyncFn], AsyncFn]:
        """Decorate an exclusive ``async def fn(saga, ctx, input_val)`` or, with
        ``kind="shared"``, a read-only ``async def fn(ctx)`` / ``fn(ctx, input_val)``."""
        register = super().handler

        def wrap(fn: AsyncFn) -> AsyncFn:
            key = name or fn.__name__
            require_async(fn, f"handler {key!r} of {self.name!r}")
            register(key, kind=kind)(self._adapt(fn, kind))
            return fn

        return wrap

    def _adapt(self, fn: AsyncFn, kind: str) -> AsyncFn:
        params = positional(fn)
        if kind == "shared":
            takes_input = len(params) >= 2

            async def shared(state: SharedObjectContext, inp: Any = None) -> Any:
                ctx = ObjectSharedContext(state)
                return await (fn(ctx, inp) if takes_input else fn(ctx))

            kept = params[:2] if takes_input else [*params[:1], optional_input()]
            return dressed(shared, fn, kept)
        takes_input = len(params) >= 3

        async def exclusive(saga: NativeSagaContext, state: NativeObjectContext, inp: Any) -> Any:
            view = self._run.saga(saga, lambda s: ObjectContext(state, s))
            args = (view, view.ctx, inp) if takes_input else (view, view.ctx)
            return await self._run.call(fn, *args)

        kept = params[:3] if takes_input else [*params[:2], optional_input()]
        return dressed(exclusive, fn, kept)


def create_saga_virtual_object(
    name: str,
    options: WorkflowOptions = None,
    *,
    handlers: Mapping[str, AsyncFn] | None = None,
    shared: Mapping[str, AsyncFn] | None = None,
) -> SagaVirtualObject:
    """A virtual object called ``name``; add handlers with ``@obj.handler()`` (or give them
    as dicts of name -> function, as the TypeScript restate-saga does)."""
    obj = SagaVirtualObject(name, options)
    obj.add_handlers(handlers, shared)
    return obj


# -- nested sagas -----------------------------------------------------------------------------


async def run_nested_saga(
    saga: NativeSagaContext, handler: Callable[[SagaContext], Awaitable[T]]
) -> T:
    """Run ``handler(saga)`` inline: its steps join the caller's journal and compensation
    stack (sagakit's :func:`~sagakit.run_nested_saga`, with restate-saga's SagaContext)."""
    return await native_run_nested_saga(saga, lambda native: handler(SagaContext.of(native)))


def create_saga_module(handler: Callable[[SagaContext, Any], Awaitable[T]]) -> SagaModule[Any, T]:
    """Reusable saga logic ``async def fn(saga, input_val)`` that runs inside whichever saga
    calls it, sharing its compensation stack (sagakit's :class:`~sagakit.SagaModule`)."""

    async def call(saga: NativeSagaContext, inp: Any) -> T:
        return await handler(SagaContext.of(saga), inp)

    return SagaModule(dressed(call, handler, positional(handler)[:2]))
