"""Typed clients for code outside sagas (a web handler, a script, a test):
``engine.client(workflow)``, ``engine.client(long_workflow)``, ``engine.client(virtual_object)``.

A client is a thin, typed face on the engine: ``engine.client(checkout).run(inp)`` is
``engine.run(checkout, inp)`` with the input and the output typed by the workflow's
signature. From inside a saga, call other sagas with ``saga.call``, ``saga.call_object``,
``saga.call_handler`` and ``saga.send`` instead: those are journaled.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from .errors import SagaError, SagaValidationError, UnknownHandlerError
from .long_workflows import SagaLongWorkflow
from .objects import SagaVirtualObject
from .workflows import SagaWorkflow

if TYPE_CHECKING:
    from .engine.engine import Engine
    from .engine.handles import SagaHandle

InT = TypeVar("InT")
OutT = TypeVar("OutT")


class WorkflowClient(Generic[InT, OutT]):
    """Start sagas of one workflow and wait for them (``engine.client(workflow)``)."""

    __slots__ = ("_engine", "workflow")

    def __init__(self, engine: Engine, workflow: SagaWorkflow[InT, OutT]):
        self._engine = engine
        self.workflow = workflow

    async def run(
        self,
        inp: InT | dict[str, Any],
        saga_id: str | None = None,
        *,
        timeout: float | timedelta | None = None,
    ) -> OutT:
        """Start a saga and wait for its output (see :meth:`Engine.run`). Idempotent by
        ``saga_id``: a saga that exists already is waited for, not started again."""
        return await self._engine.run(self.workflow, inp, saga_id, timeout=timeout)

    async def start(
        self, inp: InT | dict[str, Any], saga_id: str | None = None
    ) -> SagaHandle[OutT]:
        """Start a saga without waiting; return its handle (see :meth:`Engine.start`)."""
        return await self._engine.start(self.workflow, inp, saga_id)

    def handle(self, saga_id: str) -> SagaHandle[OutT]:
        """A handle on an existing saga of this workflow, to wait for it from any process."""
        return self._engine.handle(saga_id, self.workflow)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.workflow.name!r}>"


class LongWorkflowClient(WorkflowClient[InT, OutT]):
    """A workflow client that also calls the handlers of its running sagas."""

    __slots__ = ()

    async def call(self, saga_id: str, handler: str, inp: Any = None) -> Any:
        """Call the handler ``handler`` of the running saga ``saga_id`` (see
        :meth:`Engine.call`)."""
        handlers = cast(SagaLongWorkflow[InT, OutT], self.workflow).handlers
        if handler not in handlers:
            raise UnknownHandlerError(f"workflow {self.workflow.name!r}", handler, handlers)
        return await self._engine.call(saga_id, handler, inp)


class ObjectClient:
    """Call the handlers of one virtual object (``engine.client(obj)``)."""

    __slots__ = ("_engine", "object")

    def __init__(self, engine: Engine, obj: SagaVirtualObject):
        self._engine = engine
        self.object = obj

    async def call(
        self,
        key: str,
        handler: str,
        inp: Any = None,
        *,
        call_id: str | None = None,
        timeout: float | timedelta | None = None,
    ) -> Any:
        """Call ``handler`` for ``key`` and return its result (see :meth:`Engine.call_object`:
        an exclusive handler runs as a saga queued behind the key's earlier calls, ``call_id``
        its saga id for idempotent calls; a shared one reads the committed state now)."""
        return await self._engine.call_object(
            self.object.name, key, handler, inp, call_id=call_id, timeout=timeout
        )

    async def send(
        self, key: str, handler: str, inp: Any = None, *, call_id: str | None = None
    ) -> str:
        """Queue a call of the exclusive handler ``handler`` for ``key`` without waiting;
        return its saga id (``engine.handle(id).result()`` waits for it). Idempotent by
        ``call_id``."""
        found = self.object.handlers.get(handler)
        if found is None:
            raise UnknownHandlerError(
                f"virtual object {self.object.name!r}", handler, self.object.handlers
            )
        if found.workflow is None:
            raise SagaError(
                f"handler {handler!r} of virtual object {self.object.name!r} is shared: it only "
                "reads and returns a value, so sending it without waiting does nothing; use "
                "client.call"
            )
        if not isinstance(key, str) or not key:
            raise SagaValidationError(f"an object key must be a non-empty string, got {key!r}")
        call = {"object": self.object.name, "key": key, "input": found.input.validate(inp)}
        saga_id = call_id or f"{self.object.name}/{key}/{uuid.uuid4()}"
        handle = await self._engine._start(
            found.workflow, call, saga_id, run_here=True, object_key=f"{self.object.name}/{key}"
        )
        return handle.saga_id

    def __repr__(self) -> str:
        return f"<ObjectClient of {self.object.name!r}>"


def client_for(engine: Engine, target: Any) -> Any:
    """The client of ``target`` (what :meth:`Engine.client` returns), registering it."""
    if isinstance(target, SagaVirtualObject):
        engine.register(target)
        return ObjectClient(engine, target)
    if isinstance(target, SagaLongWorkflow):
        engine.register(target)
        return LongWorkflowClient(engine, target)
    if isinstance(target, SagaWorkflow):
        engine.register(target)
        return WorkflowClient(engine, target)
    raise SagaError(
        f"engine.client takes a saga workflow, a long workflow or a virtual object, got {target!r}"
    )


__all__ = ["LongWorkflowClient", "ObjectClient", "WorkflowClient"]
