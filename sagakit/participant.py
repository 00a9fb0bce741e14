"""Participants: services that take commands from sagas, process each exactly once, and reply.

::

    inventory = Participant("inventory", store, transport=MemoryTransport(broker))

    @inventory.command("reserve")
    async def reserve(ctx: CommandContext, item: Reserve) -> dict:
        return {"reservation": ...}

    async with inventory:          # opens the transport, consumes "inventory", runs a relay
        ...

A participant consumes the destination named after it. For each command:

* **The inbox** (``saga_inbox`` in the participant's store) says whether this message id was
  processed: if so, the stored reply is published again and the handler does not run (a
  redelivery, a saga's re-send after a timeout).
* Otherwise the handler runs with the payload validated against the type its second parameter
  is annotated with (a pydantic model, ``dict``, ...). Its return value is the reply. The inbox
  row and the reply's outbox row are written in one transaction; the relay publishes the reply
  (exactly-once effect on the participant's database, at-least-once delivery of the reply).
* A handler declared ``transactional=True`` (SQLite and PostgreSQL stores) gets
  ``ctx.connection``, the store's connection inside the transaction that also writes the inbox
  row and the reply: its writes commit exactly once with them, and a raise rolls them back.
  On PostgreSQL it is an asyncpg connection (``await ctx.connection.execute(...)``); on SQLite
  the store's ``sqlite3`` writer connection (``ctx.connection.execute(...)``, synchronous: do
  the database work and return, as other writes of the store wait meanwhile). Do not commit or
  roll back on it yourself: sagakit refuses the message, and it is redelivered. A plain
  handler's own effects may run again if the process dies between the handler's end and the
  inbox's commit: key them by ``ctx.message_id``.
* Poison: a payload that is not JSON or does not validate, or a command this participant has no
  handler for, is answered with an error reply (the saga's remote step fails terminally with
  :class:`~sagakit.remote.RemoteCommandError`), recorded in the inbox, and dead-lettered at
  once (``"<participant>.dead"``, with the error in its headers). A handler raising
  :class:`~sagakit.errors.TerminalError` replies with that error. Any other exception asks the
  transport for a redelivery; on the last delivery (``max_deliveries``) the participant
  replies with the error and the transport dead-letters the message.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import socket
import time
import typing
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from . import serde
from .errors import SagaError, SagaValidationError, TerminalError
from .relay import DEFAULT_LEASE, Relay, check_relay_lease
from .remote import SAGA_HEADER, STATUS_HEADER, error_reply, ok_reply, reply_id, reply_status
from .stores import open_store
from .stores.base import Store
from .stores.outbox import InboxRecord, OutboxMessage, OutboxStore, outbox_store
from .transports.base import (
    Message,
    PoisonMessageError,
    Subscription,
    Transport,
    check_destination,
)

if TYPE_CHECKING:
    from .engine.engine import Engine

log = logging.getLogger("sagakit.participant")

#: a command handler: ``async def handler(ctx, payload) -> reply``
CommandHandler = Callable[["CommandContext", Any], Awaitable[Any]]


class CommandContext:
    """What a command handler gets besides the payload."""

    __slots__ = ("connection", "message", "participant")

    def __init__(self, participant: str, message: Message, connection: Any = None):
        #: the participant's name
        self.participant = participant
        #: the command as delivered (``message.attempt``: which delivery this is)
        self.message = message
        #: a transactional handler's database connection, inside the transaction that also
        #: records the message in the inbox (None for a plain handler)
        self.connection = connection

    @property
    def message_id(self) -> str:
        """The command's id: the same on every delivery and re-send; an idempotency key."""
        return self.message.id

    @property
    def saga_id(self) -> str | None:
        """The saga that sent the command, if a saga did."""
        return self.message.headers.get(SAGA_HEADER)


@dataclass(frozen=True, slots=True)
class _Handler:
    name: str
    fn: CommandHandler
    payload: serde.Converter
    transactional: bool


class Participant:
    """A service that processes sagas' commands exactly once (see the module docstring).

    Args:
        name: the participant's name: the destination sagas send its commands to.
        engine_or_store: where its inbox and outbox live: an open Engine (its store), a store,
            or a store URL (opened and closed with the participant).
        transport: the broker connection it consumes and replies through (opened and closed
            with the participant: give it a transport of its own).
        max_deliveries: deliveries of a command whose handler keeps failing before it is
            answered with an error and dead-lettered.
        relay: run a relay over the store (default: unless ``engine_or_store`` is an engine
            with a transport, whose relay publishes the same outbox).
        relay_lease: how long the lease of that relay lasts unrenewed (default 10 s): the
            longest replies wait after the relay dies before another relay takes over.
    """

    def __init__(
        self,
        name: str,
        engine_or_store: Engine | Store | str,
        *,
        transport: Transport,
        max_deliveries: int = 5,
        relay: bool | None = None,
        relay_lease: timedelta = DEFAULT_LEASE,
    ):
        self.name = check_destination(name)
        self.relay_lease = check_relay_lease(relay_lease)
        self.transport = transport
        self.max_deliveries = max_deliveries
        self._source = engine_or_store
        self._relay_wanted = relay
        self._handlers: dict[str, _Handler] = {}
        self._store: Store | None = None
        self._owns_store = False
        self._relay: Relay | None = None
        self._subscription: Subscription | None = None
        #: how many times a handler ran (for tests and benchmarks)
        self.handled = 0

    def command(
        self, name: str, *, transactional: bool = False
    ) -> Callable[[CommandHandler], CommandHandler]:
        """Register ``async def handler(ctx: CommandContext, payload) -> reply`` for command
        ``name``; the payload is validated against the second parameter's annotation."""
        if not isinstance(name, str) or not name:
            raise SagaValidationError(f"a command name must be a non-empty string, got {name!r}")

        def register(fn: CommandHandler) -> CommandHandler:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(
                    f"command {name!r}: the handler must be an `async def fn(ctx, payload)`"
                )
            params = list(inspect.signature(fn).parameters)
            if len(params) < 2:
                raise TypeError(f"command {name!r}: the handler takes (ctx, payload)")
            try:
                hints = typing.get_type_hints(fn)
            except Exception:
                hints = {}
            converter = serde.Converter(hints.get(params[1]), f"the payload of command {name!r}")
            self._handlers[name] = _Handler(name, fn, converter, transactional)
            return fn

        return register

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Participant:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store (a URL), the transport, start consuming and (if wanted) relaying."""
        store, engine_transport = self._resolve_store()
        if isinstance(self._source, str):
            await store.open()
            self._owns_store = True
        self._store = store
        outbox = self._outbox()
        if any(h.transactional for h in self._handlers.values()) and not hasattr(
            store, "inbox_transaction"
        ):
            raise SagaError(
                f"participant {self.name!r} has transactional handlers, which need the SQLite "
                f"or PostgreSQL store; {type(store).__name__} cannot run a handler's writes in "
                "the inbox's transaction: use one of those stores, or declare the handlers "
                "without transactional=True"
            )
        await self.transport.open()
        wants_relay = self._relay_wanted if self._relay_wanted is not None else not engine_transport
        if wants_relay:
            owner = f"{self.name}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
            self._relay = Relay(
                outbox, self.transport, owner=owner, lease=self.relay_lease.total_seconds()
            )
            self._relay.start()
        self._subscription = await self.transport.subscribe(
            self.name, self._on_message, max_deliveries=self.max_deliveries
        )

    async def close(self) -> None:
        """Stop consuming and relaying; close the transport (and a store opened here)."""
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None
        if self._relay is not None:
            await self._relay.stop()
            self._relay = None
        with contextlib.suppress(Exception):
            await self.transport.close()
        if self._owns_store and self._store is not None:
            await self._store.close()
        self._store = None
        self._owns_store = False

    def _resolve_store(self) -> tuple[Store, bool]:
        source = self._source
        if isinstance(source, str):
            return open_store(source), False
        if isinstance(source, Store):
            return source, False
        engine_store = getattr(source, "_store", None)
        if engine_store is None:
            raise SagaError(
                f"participant {self.name!r}: open the engine (`async with engine:`) before "
                "the participant, or give the participant a store"
            )
        return engine_store, getattr(source, "transport", None) is not None

    def _outbox(self) -> OutboxStore:
        found = outbox_store(self._store)
        if found is None:
            raise SagaError(
                f"participant {self.name!r} needs a store with an inbox and an outbox; "
                f"{type(self._store).__name__} has none: use the memory, SQLite or PostgreSQL store"
            )
        return found

    # -- processing --------------------------------------------------------------------------

    async def _on_message(self, message: Message) -> None:
        outbox = self._outbox()
        if message.kind != "command":
            raise PoisonMessageError(
                f"participant {self.name!r} takes commands, got a {message.kind!r}"
            )
        found = await outbox.find_inbox(self.name, message.id)
        if found is not None:
            await self._reply_again(message, found)
            return
        handler = self._handlers.get(message.name)
        refusal: tuple[str, str] | None = None
        payload: Any = None
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            refusal = (
                "UnknownCommand",
                f"participant {self.name!r} has no command {message.name!r} (it has: {known})",
            )
        else:
            try:
                payload = handler.payload.validate(serde.loads(message.payload))
            except ValueError as exc:  # not JSON, or SagaValidationError
                refusal = (
                    "ValidationError",
                    f"invalid payload for command {message.name!r}: {exc}",
                )
        if refusal is not None or handler is None:
            error_type, text = refusal or ("UnknownCommand", "")
            await self._record(message, "error", error_reply(error_type, text))
            # recorded and answered: the saga's step fails; the message itself goes to the
            # dead letters at once, for an operator to see
            raise PoisonMessageError(text)
        if handler.transactional:
            await self._run_in_transaction(handler, message, payload)
            return
        try:
            self.handled += 1
            value = await handler.fn(CommandContext(self.name, message), payload)
            status, reply = "ok", ok_reply(value)
        except TerminalError as exc:
            status, reply = "error", error_reply(exc.error_type, exc.message)
        except Exception as exc:
            if message.attempt < self.max_deliveries:
                raise  # redelivered
            text = f"gave up after {message.attempt} deliveries: {type(exc).__name__}: {exc}"
            await self._record(message, "error", error_reply(type(exc).__name__, text))
            raise
        await self._record(message, status, reply)

    async def _run_in_transaction(self, handler: _Handler, message: Message, payload: Any) -> None:
        store: Any = self._store

        async def handle(conn: Any) -> tuple[str, str]:
            self.handled += 1
            try:
                value = await handler.fn(CommandContext(self.name, message, conn), payload)
            except TerminalError as exc:
                return "error", error_reply(exc.error_type, exc.message)
            return "ok", ok_reply(value)

        def replies(status: str, reply: str) -> Sequence[OutboxMessage]:
            return self._replies(message, status, reply)

        try:
            record, ran = await store.inbox_transaction(
                self.name, message.id, message.name, handle, replies
            )
        except Exception as exc:  # rolled back, the handler's writes with it
            if message.attempt < self.max_deliveries:
                raise  # redelivered
            text = f"gave up after {message.attempt} deliveries: {type(exc).__name__}: {exc}"
            await self._record(message, "error", error_reply(type(exc).__name__, text))
            raise
        if not ran:
            await self._reply_again(message, record)

    async def _record(self, message: Message, status: str, reply: str) -> None:
        record = InboxRecord(self.name, message.id, message.name, status, reply, time.time())
        stored = await self._outbox().record_inbox(record, self._replies(message, status, reply))
        if stored is not record:  # another delivery of it was processed meanwhile
            await self._reply_again(message, stored)

    def _replies(self, message: Message, status: str, reply: str) -> list[OutboxMessage]:
        if message.reply_to is None:
            return []
        headers = {STATUS_HEADER: status}
        saga_id = message.headers.get(SAGA_HEADER)
        if saga_id is not None:
            headers[SAGA_HEADER] = saga_id
        return [
            OutboxMessage(
                reply_id(message.id),
                message.reply_to,
                "reply",
                message.name,
                reply,
                correlation_id=message.id,
                headers=headers,
            )
        ]

    async def _reply_again(self, message: Message, record: InboxRecord) -> None:
        """A message processed before: publish its stored reply again, straight away."""
        for m in self._replies(message, reply_status(record.reply), record.reply):
            await self.transport.publish(
                Message(
                    id=m.message_id,
                    destination=m.destination,
                    kind=m.kind,
                    name=m.name,
                    payload=m.payload,
                    correlation_id=m.correlation_id,
                    headers=dict(m.headers),
                )
            )


__all__ = ["CommandContext", "CommandHandler", "Participant"]
