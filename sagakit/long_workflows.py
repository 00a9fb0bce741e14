"""Workflows with handlers (as Restate workflows, and restate-saga's long workflows): a main
saga function plus handlers that other code calls on a running saga, to resolve its promises,
signal it, or read the state it published.

A handler runs in the process that calls it (``engine.call``), not in the saga's worker. Each
durable thing it does (resolving a promise, sending a signal) is one atomic write, so a handler
that crashes halfway has done some of them and not others: make handlers small.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from . import serde
from .errors import SagaError
from .steps import _positional_names, _type_hints
from .workflows import Handler, SagaWorkflow, SagaWorkflowOptions, check_version

InT = TypeVar("InT")
OutT = TypeVar("OutT")

HandlerFn = Callable[["HandlerContext", Any], Awaitable[Any]]


class HandlerDriver(Protocol):
    """What the engine provides behind a HandlerContext."""

    async def resolve_promise(
        self, saga_id: str, name: str, value: Any, error: str | None
    ) -> None: ...

    async def signal(self, saga_id: str, name: str, payload: Any = None) -> None: ...

    async def query(self, saga_id: str, key: str, default: Any = None) -> Any: ...


class HandlerPromise:
    """A saga's durable promise as a handler sees it: it can complete it."""

    __slots__ = ("_ctx", "name")

    def __init__(self, ctx: HandlerContext, name: str):
        self._ctx = ctx
        self.name = name

    async def resolve(self, value: Any = None) -> None:
        """Complete the promise with ``value``; the saga's ``promise(name).value()`` returns it.
        A promise completes once (PromiseAlreadyCompletedError if completed otherwise)."""
        await self._ctx._driver.resolve_promise(self._ctx.saga_id, self.name, value, None)

    async def reject(self, message: str) -> None:
        """Fail the promise: the saga's ``value()`` raises PromiseRejectedError."""
        await self._ctx._driver.resolve_promise(self._ctx.saga_id, self.name, None, str(message))


class HandlerContext:
    """What a workflow handler gets: the saga it was called on."""

    __slots__ = ("_driver", "saga_id")

    def __init__(self, driver: HandlerDriver, saga_id: str):
        self._driver = driver
        self.saga_id = saga_id

    def promise(self, name: str) -> HandlerPromise:
        """The saga's durable promise ``name``, to resolve or reject."""
        return HandlerPromise(self, name)

    async def get_state(self, key: str, default: Any = None) -> Any:
        """The value the saga published with ``saga.set_state(key, ...)``."""
        return await self._driver.query(self.saga_id, key, default)

    async def signal(self, name: str, payload: Any = None) -> None:
        """Send the saga a signal (see ``engine.signal``)."""
        await self._driver.signal(self.saga_id, name, payload)

    def __repr__(self) -> str:
        return f"<HandlerContext saga_id={self.saga_id!r}>"


class WorkflowHandler:
    """One handler of a long workflow, with its input type."""

    def __init__(self, owner: str, name: str, fn: HandlerFn):
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"handler {name!r} of {owner!r} must be an `async def fn(ctx, inp)`")
        positional = _positional_names(fn)
        if len(positional) < 2:
            raise TypeError(f"handler {name!r} of {owner!r} must take (ctx, inp)")
        self.name = name
        self.fn = fn
        hint = _type_hints(fn).get(positional[1])
        self.input = serde.Converter(hint, f"input of handler {name!r} of {owner!r}")


class SagaLongWorkflow(SagaWorkflow[InT, OutT], Generic[InT, OutT]):
    """A saga workflow with handlers. Made by :func:`create_saga_long_workflow`; give it its
    saga function with ``@wf.main()`` and its handlers with ``@wf.handler()``. Register and
    start it like any workflow; call a handler with ``engine.call(saga_id, name, inp)``."""

    def __init__(
        self, name: str, options: SagaWorkflowOptions | None = None, *, version: str | None = None
    ):
        if not isinstance(name, str) or not name.strip():
            raise ValueError("a saga workflow needs a non-empty name")
        # the saga function comes later, with @main(); until then the workflow cannot run
        self.name = name
        self.version = check_version(version, f"workflow {name!r}")
        self.options = options or SagaWorkflowOptions()
        self.handlers: dict[str, WorkflowHandler] = {}
        self._has_main = False

    def main(self) -> Callable[[Handler[InT, OutT]], Handler[InT, OutT]]:
        """Decorate ``async def run(saga, inp)``: the saga function of this workflow."""

        def wrap(fn: Handler[InT, OutT]) -> Handler[InT, OutT]:
            if self._has_main:
                raise SagaError(f"workflow {self.name!r} already has a main function")
            SagaWorkflow.__init__(self, self.name, fn, self.options, version=self.version)
            self._has_main = True
            return fn

        return wrap

    def handler(self, name: str | None = None) -> Callable[[HandlerFn], HandlerFn]:
        """Decorate ``async def fn(ctx, inp)`` as the handler ``name`` (default: its name)."""

        def wrap(fn: HandlerFn) -> HandlerFn:
            key = name or fn.__name__
            if key in self.handlers:
                raise SagaError(f"workflow {self.name!r} already has a handler {key!r}")
            self.handlers[key] = WorkflowHandler(self.name, key, fn)
            return fn

        return wrap

    def check_ready(self) -> None:
        if not self._has_main:
            raise SagaError(
                f"workflow {self.name!r} has no main function; decorate its saga function "
                f"with @{self.name.lower()}.main()"
            )

    def __repr__(self) -> str:
        return f"<SagaLongWorkflow {self.name!r} handlers={sorted(self.handlers)}>"


def create_saga_long_workflow(
    name: str, options: SagaWorkflowOptions | None = None, *, version: str | None = None
) -> SagaLongWorkflow[Any, Any]:
    """A workflow with handlers: ``wf = create_saga_long_workflow("Approval")``, then
    ``@wf.main()`` and ``@wf.handler()``. ``version``: as for :func:`~sagakit.saga_workflow`
    (a handler call reaches the handlers of the version that started the saga)."""
    return SagaLongWorkflow(name, options, version=version)
