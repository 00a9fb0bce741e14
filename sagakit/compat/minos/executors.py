"""minos's executors: the one place a minos callback is called.

The compiled saga's steps (:mod:`.compiled`) call every ``on_execute``, ``on_success``,
``on_error`` and ``on_failure`` through these, so calling one yourself (in a test, say) does what
the step does, minus the journal:

* :class:`Executor` ``.exec_function(func, *args)`` calls ``func``, sync or async;
* :class:`LocalExecutor` ``.exec(operation, context)`` runs a local step's callback and returns
  the next :class:`SagaContext`;
* :class:`RequestExecutor` ``.exec(operation, context, key=)`` makes a remote step's
  :class:`SagaRequest` and publishes it through its ``broker_publisher`` (a
  :class:`~.compiled.SagaRequestPublisher`) under ``key``;
* :class:`ResponseExecutor` ``.exec(operation, context, response)`` runs a reply handler and
  returns the next context.

minos's executors also set its transaction context variable around the call (for its
repositories to join the saga's transaction); sagakit journals the step instead, so there is
none here. A callback's exception propagates: inside a saga it fails the step and rolls the
execution back.
"""

from __future__ import annotations

import inspect
import uuid as _uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...errors import TerminalError
from .messages import SagaContext, SagaRequest, SagaResponse

if TYPE_CHECKING:
    from .compiled import SagaRequestPublisher


class Executor:
    """Calls minos callbacks on behalf of the execution ``execution_uuid``."""

    def __init__(self, execution_uuid: _uuid.UUID, *args: Any, **kwargs: Any) -> None:
        self.execution_uuid = execution_uuid

    async def exec(self, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``operation`` (a step callback) with ``args``; return what it returned."""
        return await self.exec_function(operation, *args, **kwargs)

    async def exec_function(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``func`` (sync or async) and return its result."""
        result = func(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


class LocalExecutor(Executor):
    """Runs a local step's ``on_execute`` / ``on_failure``."""

    async def exec(
        self, operation: Callable[..., Any], context: SagaContext, *args: Any, **kwargs: Any
    ) -> SagaContext:
        """The context ``operation(context)`` returns (None: ``context`` goes on)."""
        return _next_context(operation, context, await self.exec_function(operation, context))


class RequestExecutor(Executor):
    """Makes a remote step's request (``on_execute`` / ``on_failure``) and publishes it.

    Args:
        execution_uuid: the execution the request belongs to (sent with it).
        user: the user the execution runs for (sent with it).
        broker_publisher: where requests go; None: they are only returned.
    """

    def __init__(
        self,
        execution_uuid: _uuid.UUID,
        *args: Any,
        user: _uuid.UUID | None = None,
        broker_publisher: SagaRequestPublisher | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(execution_uuid)
        self.user = user
        self.broker_publisher = broker_publisher

    async def exec(
        self,
        operation: Callable[..., Any],
        context: SagaContext,
        *args: Any,
        key: str | None = None,
        **kwargs: Any,
    ) -> SagaRequest | None:
        """The request ``operation(context)`` makes, published under ``key`` (default: the
        execution's uuid and the request's target; give a key that stays the same when the
        step runs again, as the compiled steps do). None (nothing to send) is returned as is.

        Raises:
            TerminalError: ``operation`` returned something else than a SagaRequest or None.
        """
        request = await self.exec_function(operation, context)
        if request is None:
            return None
        if not isinstance(request, SagaRequest):
            raise TerminalError(
                f"{_qualname(operation)} returned {request!r}; a remote step's callback returns "
                "a SagaRequest(target, content)",
                error_type="SagaException",
            )
        if self.broker_publisher is not None:
            await self.broker_publisher.publish(
                request,
                execution_uuid=self.execution_uuid,
                user=self.user,
                key=key or f"{self.execution_uuid}:{request.target}",
            )
        return request


class ResponseExecutor(Executor):
    """Runs a remote step's reply handler (``on_success`` / ``on_error``)."""

    async def exec(
        self,
        operation: Callable[..., Any] | None,
        context: SagaContext,
        response: SagaResponse,
        *args: Any,
        **kwargs: Any,
    ) -> SagaContext:
        """The context ``operation(context, response)`` returns (None, or no operation:
        ``context`` goes on)."""
        if operation is None:
            return context
        return _next_context(
            operation, context, await self.exec_function(operation, context, response)
        )


def _next_context(operation: Callable[..., Any], context: SagaContext, result: Any) -> SagaContext:
    if result is None:
        return context
    if not isinstance(result, SagaContext):
        raise TerminalError(
            f"{_qualname(operation)} returned {result!r}; a step callback returns a SagaContext "
            "(or None to keep the one it got)",
            error_type="SagaException",
        )
    return result


def _qualname(operation: Callable[..., Any]) -> str:
    return repr(getattr(operation, "__qualname__", operation))


__all__ = ["Executor", "LocalExecutor", "RequestExecutor", "ResponseExecutor"]
