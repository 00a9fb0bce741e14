"""Talking to sagas that run: signals, notifications, promises, published state, workflow
handlers and virtual objects. Mixed into :class:`~sagakit.engine.engine.Engine`."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .. import serde
from ..errors import (
    OutputNotSerializableError,
    SagaNotFoundError,
    SagaValidationError,
    UnknownHandlerError,
)
from ..long_workflows import HandlerContext, SagaLongWorkflow
from ..objects import SagaVirtualObject, SharedObjectContext
from ..stores.base import DeliveryOutcome, EventKind, SagaStatus, Store
from .waits import deliver_promise, object_scope, refuse_undelivered, saga_scope

if TYPE_CHECKING:
    from ..workflows import SagaWorkflow
    from .handles import SagaHandle


class TalkMixin:
    """Signals, notifications, queries, handlers and object calls of the Engine."""

    _objects: dict[str, SagaVirtualObject]
    _workflows: dict[str, SagaWorkflow[Any, Any]]
    _versions: dict[tuple[str, str | None], SagaWorkflow[Any, Any]]
    max_payload_bytes: int | None

    if TYPE_CHECKING:  # provided by Engine

        def _store_or_raise(self) -> Store: ...

        def _poke(self) -> None: ...

        async def _start(
            self,
            wf: SagaWorkflow[Any, Any],
            inp: Any,
            saga_id: str | None,
            *,
            run_here: bool,
            object_key: str | None = None,
        ) -> SagaHandle: ...

    async def signal(
        self, saga_id: str, name: str, payload: Any = None, *, key: str | None = None
    ) -> None:
        """Send the signal ``name`` with ``payload`` (JSON) to a saga.

        Kept until the saga waits for it (``saga.wait_for_signal(name)``); each signal is taken
        by one wait, in the order they were sent. The signal is stored once even when the
        store retries the write after a lost acknowledgement; give it a ``key`` (for example
        the id of the message that made you send it) to make your own retries safe too: a
        signal sent again with a key already delivered to this saga is not stored again.

        Raises:
            SagaNotFoundError: no saga has this id.
            SagaFinishedError: the saga has ended; nothing would ever take the signal.
        """
        if not isinstance(name, str) or not name:
            raise SagaValidationError(f"a signal name must be a non-empty string, got {name!r}")
        body = _payload(payload, f"the payload of signal {name!r}", self.max_payload_bytes)
        delivery = await self._store_or_raise().deliver(
            saga_id, EventKind.SIGNAL, name, body, key=_delivery_key(key)
        )
        refuse_undelivered(delivery, saga_id, "a signal")
        if delivery.status == SagaStatus.SUSPENDED:
            self._poke()

    async def notify(self, saga_id: str, token: str, event: Any = None) -> bool:
        """Deliver ``event`` to the wait whose token is ``token`` (``snapshot.wait_token``).

        Returns True when that wait is the saga's current one (the event answers it: it is
        returned by ``wait_for_signal``, or is the promise's value, or ends a sleep), False
        when the token is stale (that wait is over, the saga ended, or the token was used
        already) and nothing was delivered. A token answers once: of two ``notify`` calls with
        the same token, even racing from two processes, exactly one returns True.

        Raises:
            SagaNotFoundError: no saga has this id.
        """
        body = _payload(event, "the event", self.max_payload_bytes)
        delivery = await self._store_or_raise().deliver(
            saga_id, EventKind.NOTIFY, str(token), body, token=str(token), key=_delivery_key(None)
        )
        if delivery.outcome == DeliveryOutcome.NOT_FOUND:
            raise SagaNotFoundError(saga_id)
        if delivery.outcome != DeliveryOutcome.DELIVERED:
            return False
        if delivery.status == SagaStatus.SUSPENDED:
            self._poke()
        return True

    async def query(self, saga_id: str, key: str, default: Any = None) -> Any:
        """The value the saga published under ``key`` with ``saga.set_state`` (``default`` if
        it published none). Reads the store: works from any process.

        Raises:
            SagaNotFoundError: no saga has this id.
        """
        store = self._store_or_raise()
        state = await store.load_state(saga_scope(saga_id))
        if key in state:
            return serde.loads(state[key])
        if await store.load_saga(saga_id) is None:
            raise SagaNotFoundError(saga_id)
        return default

    async def resolve_promise(
        self, saga_id: str, name: str, value: Any, error: str | None = None
    ) -> None:
        """Resolve (or, with ``error``, reject) the durable promise ``name`` of a saga.

        Raises:
            SagaNotFoundError / SagaFinishedError: no such saga, or it has ended.
            PromiseAlreadyCompletedError: the promise was completed with something else.
        """
        try:
            delivery = await deliver_promise(
                self._store_or_raise(), saga_id, name, value, error, self.max_payload_bytes
            )
        except OutputNotSerializableError as exc:
            raise SagaValidationError(exc.message) from exc
        if delivery.status == SagaStatus.SUSPENDED:
            self._poke()

    async def call(self, saga_id: str, handler: str, inp: Any = None) -> Any:
        """Call the handler ``handler`` of a running workflow made with
        ``create_saga_long_workflow``, in this process; return what it returns.

        Raises:
            SagaNotFoundError: no saga has this id.
            UnknownHandlerError: its workflow has no such handler (or is not registered here).
            SagaValidationError: ``inp`` does not match the handler's input type.
        """
        record = await self._store_or_raise().load_saga(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        # the handlers of the version that started the saga
        workflow = self._versions.get((record.name, record.version))
        handlers = workflow.handlers if isinstance(workflow, SagaLongWorkflow) else {}
        found = handlers.get(handler)
        if found is None:
            raise UnknownHandlerError(f"workflow {record.name!r}", handler, handlers)
        value = found.input.validate(inp)
        return await found.fn(HandlerContext(self, saga_id), value)

    async def call_object(
        self,
        object_name: str,
        key: str,
        handler: str,
        inp: Any = None,
        *,
        call_id: str | None = None,
        timeout: float | timedelta | None = None,
    ) -> Any:
        """Call a handler of the virtual object ``object_name`` for ``key``.

        An exclusive handler runs as a saga (``call_id`` is its saga id, for idempotent calls;
        one is made up otherwise) after every earlier call for the same key has finished; a
        shared handler runs now, here, reading the state as committed.

        Raises:
            UnknownHandlerError: no such object or handler registered here.
            SagaCompensatedError: the handler's saga failed and rolled back.
        """
        obj = self._objects.get(object_name)
        if obj is None:
            raise UnknownHandlerError("this engine", object_name, self._objects)
        found = obj.handlers.get(handler)
        if found is None:
            raise UnknownHandlerError(f"virtual object {object_name!r}", handler, obj.handlers)
        if not isinstance(key, str) or not key:
            raise SagaValidationError(f"an object key must be a non-empty string, got {key!r}")
        value = found.input.validate(inp)
        if found.workflow is None:
            return await found.fn(SharedObjectContext(self, object_name, key), value)
        call = {"object": object_name, "key": key, "input": value}
        saga_id = call_id or f"{object_name}/{key}/{uuid.uuid4()}"
        handle = await self._start(
            found.workflow,
            call,
            saga_id,
            run_here=True,
            object_key=f"{object_name}/{key}",
        )
        return await handle.result(timeout)

    async def read_object_state(self, object_key: str) -> dict[str, str]:
        """The committed state of one virtual object key (``Name/key``), as JSON texts."""
        return await self._store_or_raise().load_state(object_scope(object_key))

    async def object_state(self, object_name: str, key: str) -> dict[str, Any]:
        """The committed state of a virtual object's key, decoded (for inspection and tests)."""
        state = await self.read_object_state(f"{object_name}/{key}")
        return {k: serde.loads(v) for k, v in state.items()}


def _delivery_key(given: str | None) -> str:
    """The key of one delivery, chosen before its first attempt (see ``Store.deliver``)."""
    if given is None:
        return uuid.uuid4().hex
    if not isinstance(given, str) or not given or len(given) > 200:
        raise SagaValidationError(
            f"a delivery key must be a non-empty string of at most 200 characters, got {given!r}"
        )
    return given


def _payload(value: Any, what: str, limit: int | None) -> str:
    """``value`` as JSON text, or SagaValidationError or PayloadTooLargeError (nothing is
    written)."""
    try:
        return serde.dumps(value, what=what, limit=limit)
    except OutputNotSerializableError as exc:
        raise SagaValidationError(exc.message) from exc
