"""A stand-in for the ``restate`` SDK names that restate-saga code uses, backed by sagakit.

restate-saga code imports ``restate`` for its context types and ``TerminalError``. With
``import sagakit.compat.restate as restate`` the same code runs on sagakit's embedded engine:

* ``restate.TerminalError(message, status_code=500)``: a :class:`sagakit.TerminalError` (raise it
  in a step or a saga function: no retry, the saga rolls back; return it from an error mapper).
* ``restate.Context``: what ``saga.ctx`` is in a workflow (``await ctx.run(name, fn)`` is a
  journaled step without compensation, ``ctx.sleep(delta)`` a durable timer, ``ctx.time()``).
* ``restate.WorkflowContext``: a long workflow's main gets one: ``ctx.promise(name).value()``
  waits durably for the promise, ``ctx.key()`` is the saga id, ``ctx.set(k, v)`` publishes
  state for the handlers.
* ``restate.WorkflowSharedContext``: a long workflow's handler gets one:
  ``await ctx.promise(name).resolve(value)``, ``await ctx.get(k)``, ``ctx.key()``.
* ``restate.ObjectContext`` / ``restate.ObjectSharedContext``: a virtual object's exclusive and
  shared handlers get one: ``await ctx.get(k)``, ``ctx.set(k, v)``, ``ctx.clear(k)``,
  ``ctx.key()``.

A step gets sagakit's own step context (``ctx.step_key``, ``ctx.attempt``), annotated
``restate.Context`` or not: in Restate a step runs inside ``ctx.run``, where the context must
not be used either. Only these names are here; the rest of the SDK (service calls, awakeables)
has sagakit spellings listed in ``docs/migrating/restate-saga.md``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from ..context import DurablePromise as _SagaPromise
from ..context import SagaContext
from ..errors import SagaError
from ..errors import TerminalError as _SagaTerminalError
from ..long_workflows import HandlerContext, HandlerPromise
from ..objects import ObjectContext as _ObjectState
from ..objects import SharedObjectContext as _SharedObjectState
from ..retry import RetryPolicy
from ..steps import SagaStep, SagaStepOptions

__all__ = [
    "Context",
    "DurablePromise",
    "ObjectContext",
    "ObjectSharedContext",
    "TerminalError",
    "WorkflowContext",
    "WorkflowSharedContext",
]


class TerminalError(_SagaTerminalError):
    """Restate's ``TerminalError(message, status_code=500)``: a failure not to retry.

    It is a :class:`sagakit.TerminalError`, so sagakit's engine treats it as one: raised in a
    step, the step fails for good and the saga rolls back; returned by an error mapper, it makes
    the mapped error terminal. ``status_code`` is kept on the error (sagakit has no HTTP
    ingress to send it to)."""

    def __init__(
        self, message: str, status_code: int = 500, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.metadata = metadata


class Context:
    """``restate.Context`` as a restate-saga workflow sees it (``saga.ctx``), over a sagakit
    :class:`~sagakit.SagaContext`."""

    __slots__ = ("_saga",)

    def __init__(self, saga: SagaContext | None):
        self._saga = saga

    @property
    def saga(self) -> SagaContext:
        """The sagakit context behind this one (every sagakit operation is on it)."""
        return self._require_saga("saga")

    def run(
        self,
        name: str,
        action: Callable[..., Any],
        serde: Any = None,
        max_attempts: int | None = None,
        max_retry_duration: timedelta | None = None,
        type_hint: Any = None,
        args: tuple[Any, ...] | None = None,
    ) -> Awaitable[Any]:
        """Run ``action(*args)`` once, durably: in the saga function it is a journaled step
        called ``name`` without compensation (retried up to ``max_attempts`` times, 3 by
        default); inside a step it simply runs (the step is journaled already). ``serde``,
        ``type_hint`` and ``max_retry_duration`` are accepted and not used: results are JSON."""
        return self._run(name, action, max_attempts, tuple(args or ()), {})

    def run_typed(
        self, name: str, action: Callable[..., Any], options: Any = None, /, *args: Any, **kw: Any
    ) -> Awaitable[Any]:
        """``run`` with ``restate.RunOptions`` (only its ``max_attempts`` is used)."""
        return self._run(name, action, getattr(options, "max_attempts", None), args, kw)

    async def _run(
        self,
        name: str,
        action: Callable[..., Any],
        max_attempts: int | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        saga = self._require_saga("run")
        if saga.in_step:
            return await _call(action, args, kwargs)

        async def once(ctx: SagaContext, inp: Any) -> Any:
            return await _call(action, args, kwargs)

        retry = None if max_attempts is None else RetryPolicy(max_attempts=max(1, max_attempts))
        step: SagaStep[Any] = SagaStep(name, once, None, SagaStepOptions(retry=retry), strict=True)
        return await step(saga, None)

    def sleep(self, delta: timedelta, name: str | None = None) -> Awaitable[None]:
        """A durable timer (``saga.sleep``): the saga is suspended meanwhile."""
        return self._require_saga("sleep").sleep(delta)

    async def time(self) -> float:
        """The current time in seconds since the epoch, journaled (``saga.now()``)."""
        return (await self._require_saga("time").now()).timestamp()

    def _require_saga(self, what: str) -> SagaContext:
        if self._saga is None:
            raise SagaError(
                f"ctx.{what}() is not available in a shared handler on sagakit: a shared "
                "handler only reads state; do durable work in an exclusive handler or a step"
            )
        return self._saga

    def __repr__(self) -> str:
        return f"<restate.{type(self).__name__} over {self._saga!r}>"


class ObjectSharedContext(Context):
    """``restate.ObjectSharedContext``: a virtual object's shared (read-only) handler's view of
    its key's state, as committed now."""

    __slots__ = ("_state",)

    def __init__(self, state: _SharedObjectState | _ObjectState, saga: SagaContext | None = None):
        super().__init__(saga)
        self._state = state

    def key(self) -> str:
        """The object key this call is for."""
        return self._state.key

    async def get(
        self, name: str, serde: Any = None, type_hint: Any = None, entry_name: str | None = None
    ) -> Any:
        """The value under ``name``, or None."""
        return await self._state.get(name)


class ObjectContext(ObjectSharedContext):
    """``restate.ObjectContext``: an exclusive handler's handle on its key's durable state
    (sagakit's :class:`~sagakit.ObjectContext` underneath: a write in the saga function is
    journaled, one in a step is written with the step's result)."""

    __slots__ = ()

    def __init__(self, state: _ObjectState, saga: SagaContext):
        super().__init__(state, saga)

    def set(self, name: str, value: Any, serde: Any = None) -> None:
        """Set ``name`` to ``value`` (JSON)."""
        self._writable().set(name, value)

    def clear(self, name: str) -> None:
        """Remove ``name``."""
        self._writable().clear(name)

    def _writable(self) -> _ObjectState:
        assert isinstance(self._state, _ObjectState)
        return self._state


class DurablePromise:
    """``restate.DurablePromise``: a long workflow's durable promise."""

    __slots__ = ("_promise",)

    def __init__(self, promise: _SagaPromise | HandlerPromise):
        self._promise = promise

    @property
    def name(self) -> str:
        return self._promise.name

    def value(self) -> Awaitable[Any]:
        """Wait (suspended, durably) for the promise's value; raises
        :class:`~sagakit.PromiseRejectedError` if it was rejected. Only the workflow's main
        waits; a handler resolves."""
        if not isinstance(self._promise, _SagaPromise):
            raise SagaError(
                f"promise {self.name!r}: a workflow handler can resolve or reject a promise; "
                "only the workflow's main waits for its value on sagakit"
            )
        return self._promise.value()

    async def resolve(self, value: Any = None) -> None:
        """Complete the promise with ``value`` (JSON); a promise completes once."""
        await self._promise.resolve(value)

    async def reject(self, message: str, code: int = 500) -> None:
        """Fail the promise: the waiting main gets a PromiseRejectedError (terminal)."""
        await self._promise.reject(message)


class WorkflowSharedContext(Context):
    """``restate.WorkflowSharedContext``: what a long workflow's handler gets, over sagakit's
    :class:`~sagakit.HandlerContext` for the saga it was called on."""

    __slots__ = ("_handler",)

    def __init__(self, handler: HandlerContext):
        super().__init__(None)
        self._handler = handler

    def key(self) -> str:
        """The workflow's key: the saga id."""
        return self._handler.saga_id

    def promise(self, name: str, serde: Any = None, type_hint: Any = None) -> DurablePromise:
        """The saga's durable promise ``name``, to resolve or reject."""
        return DurablePromise(self._handler.promise(name))

    async def get(self, name: str, serde: Any = None, type_hint: Any = None) -> Any:
        """The value the main published under ``name`` (``ctx.set``), or None."""
        return await self._handler.get_state(name)


class WorkflowContext(Context):
    """``restate.WorkflowContext``: what a long workflow's main gets beside its saga."""

    __slots__ = ()

    def __init__(self, saga: SagaContext):
        super().__init__(saga)

    def key(self) -> str:
        """The workflow's key: the saga id."""
        return self.saga.saga_id

    def promise(self, name: str, serde: Any = None, type_hint: Any = None) -> DurablePromise:
        """The saga's durable promise ``name``: ``await ctx.promise(name).value()``."""
        return DurablePromise(self.saga.promise(name))

    def set(self, name: str, value: Any, serde: Any = None) -> None:
        """Publish ``value`` under ``name`` for the handlers (``saga.set_state``)."""
        self.saga.set_state(name, value)

    def clear(self, name: str) -> None:
        """Publish None under ``name``."""
        self.saga.set_state(name, None)


async def _call(action: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    result = action(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result
