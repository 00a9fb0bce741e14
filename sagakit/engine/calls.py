"""Durable calls from a saga, and its services. Mixed into :class:`~sagakit.engine.run.SagaRun`.

A call is journaled like any operation, so that a replay (here, or in another process after a
crash) gets the recorded result and never calls again:

* a workflow (``saga.call``) or an exclusive handler of a virtual object runs as a child saga:
  its start and its outcome are the child entries of engine/children.py;
* a shared handler of a virtual object, or a handler of a running long workflow, runs here, at
  once; its result (or its error) is one ``call`` entry;
* ``saga.send`` / ``saga.send_object`` start a saga that is not a child, under an id derived
  from this saga's, and journal that id in a ``send`` entry: a replay finds the entry, and a
  crash before it was written starts the same id again, which finds the saga already there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from .. import serde
from ..errors import (
    ErrorInfo,
    SagaError,
    SagaValidationError,
    StoreError,
    StoreUnavailable,
    TerminalError,
    UnknownHandlerError,
)
from ..long_workflows import SagaLongWorkflow
from ..objects import ObjectHandler, SagaVirtualObject, SharedObjectContext
from ..queues import QueuedStart
from ..services import RunServices
from ..stores.base import EntryKind, EntryStatus, JournalEntry
from ..workflows import SagaWorkflow
from .core import RunCore

#: the longest saga id the engine takes (see Engine)
_MAX_ID = 200


class Callees(Protocol):
    """What the engine gives a run for its durable calls (the Engine implements it)."""

    def check_callee(self, target: SagaWorkflow[Any, Any] | SagaVirtualObject, what: str) -> None:
        """Raise a SagaError unless ``target`` is registered with the engine."""

    async def start_call(
        self, wf: SagaWorkflow[Any, Any], inp: Any, saga_id: str, object_key: str | None
    ) -> None:
        """Start a saga that is not a child (``saga.send``), idempotently."""

    async def call(self, saga_id: str, handler: str, inp: Any = None) -> Any:
        """Call a long workflow's handler (``Engine.call``)."""

    async def read_object_state(self, object_key: str) -> dict[str, str]:
        """The committed state of a virtual object's key."""


def sent_saga_id(caller_id: str, seq: int) -> str:
    """The id of the saga sent at ``seq``: the same on every replay of the caller."""
    sent = f"{caller_id}/send-{seq}"
    if len(sent) <= _MAX_ID:
        return sent
    digest = hashlib.sha256(caller_id.encode()).hexdigest()[:24]
    return f"send-{digest}-{seq}"


class CallsMixin(RunCore):
    """Services and durable calls of a run (see the module docstring)."""

    _callees: Callees | None
    _services: RunServices

    if TYPE_CHECKING:  # provided by SagaRun and its mixins

        async def _start_child(
            self,
            seq: int,
            workflow: SagaWorkflow[Any, Any],
            inp: Any,
            saga_id: str | None,
            object_key: str | None = None,
            *,
            queued: QueuedStart | None = None,
        ) -> str: ...

        async def _child_result(
            self, seq: int, child_id: str, workflow: SagaWorkflow[Any, Any], timeout: float | None
        ) -> Any: ...

        def _entry(
            self,
            seq: int,
            kind: str,
            name: str,
            output: str | None,
            *,
            status: EntryStatus = EntryStatus.COMPLETED,
            started_at: float | None = None,
        ) -> JournalEntry: ...

    # -- the EngineDriver protocol (what SagaContext calls) -----------------------------------

    def services(self) -> Any:
        return self._services.get()

    def check_callee(self, target: SagaWorkflow[Any, Any] | SagaVirtualObject, what: str) -> None:
        self._engine(what).check_callee(target, what)

    async def call_object(self, obj: SagaVirtualObject, key: str, handler: str, inp: Any) -> Any:
        found = self._object_handler(obj, key, handler, "saga.call_object")
        if found.workflow is None:
            value = found.input.validate(inp)
            reader = self._engine("saga.call_object")

            async def shared() -> Any:
                return await found.fn(SharedObjectContext(reader, obj.name, key), value)

            return await self._call_value(self._take_seq(), f"{obj.name}/{key}.{handler}", shared)
        object_key = f"{obj.name}/{key}"
        if self.record.object_key == object_key:
            raise SagaError(
                f"saga.call_object({obj.name!r}, {key!r}, {handler!r}) was called from a handler "
                f"of the same key: it would wait for itself (calls of one key run one at a "
                "time); use saga.send_object to queue it, or call a step or module directly"
            )
        call = {"object": obj.name, "key": key, "input": found.input.validate(inp)}
        child_id = await self._start_child(self._take_seq(), found.workflow, call, None, object_key)
        return await self._child_result(self._take_seq(), child_id, found.workflow, None)

    async def call_handler(
        self, workflow: SagaLongWorkflow[Any, Any], saga_id: str, handler: str, inp: Any
    ) -> Any:
        if not isinstance(workflow, SagaLongWorkflow):
            raise SagaError(
                "saga.call_handler takes a long workflow (made with create_saga_long_workflow), "
                f"got {workflow!r}; call a plain workflow with saga.call"
            )
        if handler not in workflow.handlers:
            raise UnknownHandlerError(f"workflow {workflow.name!r}", handler, workflow.handlers)
        callees = self._engine("saga.call_handler")
        callees.check_callee(workflow, "saga.call_handler")

        async def call() -> Any:
            return await callees.call(saga_id, handler, inp)

        return await self._call_value(
            self._take_seq(), f"{workflow.name}/{saga_id}.{handler}", call
        )

    async def send(self, workflow: SagaWorkflow[Any, Any], inp: Any, saga_id: str | None) -> str:
        return await self._send(self._take_seq(), workflow, inp, saga_id, None)

    async def send_object(self, obj: SagaVirtualObject, key: str, handler: str, inp: Any) -> str:
        found = self._object_handler(obj, key, handler, "saga.send_object")
        if found.workflow is None:
            raise SagaError(
                f"handler {handler!r} of virtual object {obj.name!r} is shared: it only reads "
                "and returns a value, so sending it without waiting does nothing; call it with "
                "saga.call_object"
            )
        call = {"object": obj.name, "key": key, "input": found.input.validate(inp)}
        return await self._send(self._take_seq(), found.workflow, call, None, f"{obj.name}/{key}")

    # -- helpers -----------------------------------------------------------------------------

    def _engine(self, what: str) -> Callees:
        if self._callees is None:  # pragma: no cover - every engine run has them
            raise SagaError(f"{what} needs an engine behind this run")
        return self._callees

    def _object_handler(
        self, obj: SagaVirtualObject, key: str, handler: str, what: str
    ) -> ObjectHandler:
        if not isinstance(obj, SagaVirtualObject):
            raise SagaError(
                f"{what} takes a virtual object (made with create_saga_virtual_object), got {obj!r}"
            )
        if not isinstance(key, str) or not key:
            raise SagaValidationError(f"an object key must be a non-empty string, got {key!r}")
        found = obj.handlers.get(handler)
        if found is None:
            raise UnknownHandlerError(f"virtual object {obj.name!r}", handler, obj.handlers)
        self._engine(what).check_callee(obj, what)
        return found

    async def _call_value(self, seq: int, name: str, produce: Callable[[], Awaitable[Any]]) -> Any:
        """Journal what ``produce`` returns or raises; a replay gets it back without calling."""
        entry = self._recorded(seq, EntryKind.CALL, name)
        if entry is None:
            if self._operator_rollback is not None:
                raise self._operator_rollback
            self._check_draining()
            await self._settle()  # what the saga did before is durable before the call
            try:
                value = await produce()
                output = self._dumps(value, f"the result of call {name!r}")
            except StoreError as exc:
                raise StoreUnavailable(self.saga_id, exc) from exc
            except Exception as exc:
                # journaled, so that the saga function meets the same failure on every replay
                info = ErrorInfo.from_exception(exc)
                entry = self._entry(seq, EntryKind.CALL, name, None, status=EntryStatus.FAILED)
                entry = _with_error(entry, serde.dumps(info.to_json()))
            else:
                entry = self._entry(seq, EntryKind.CALL, name, output)
            self._write_behind(entry)
        if entry.status == EntryStatus.FAILED:
            info = ErrorInfo.from_json(serde.loads(entry.error) or {})
            raise TerminalError(f"call {name!r} failed: {info.message}", error_type=info.type)
        return serde.loads(entry.output)

    async def _send(
        self,
        seq: int,
        workflow: SagaWorkflow[Any, Any],
        inp: Any,
        saga_id: str | None,
        object_key: str | None,
    ) -> str:
        entry = self._recorded(seq, EntryKind.SEND, workflow.name)
        if entry is not None:
            sent: str = serde.loads(entry.output)
            return sent
        if self._operator_rollback is not None:
            raise self._operator_rollback
        self._check_draining()
        sent = saga_id if saga_id is not None else sent_saga_id(self.key_base, seq)
        await self._settle()  # what the saga did before is durable before the other saga exists
        await self._engine("saga.send").start_call(workflow, inp, sent, object_key)
        self._write_behind(self._entry(seq, EntryKind.SEND, workflow.name, serde.dumps(sent)))
        return sent


def _with_error(entry: JournalEntry, error: str) -> JournalEntry:
    return replace(entry, error=error)


__all__ = ["Callees", "CallsMixin", "sent_saga_id"]
