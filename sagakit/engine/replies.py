"""What an engine given a transport runs beside its worker: the relay that publishes its
outbox, and the consumer of its reply address, which delivers each reply to the saga that sent
the command, as an event (see :mod:`sagakit.engine.remote`).

A reply is delivered with the reply's message id as the delivery key (a reply delivered again
is stored once) and as a unique event of its command (a second, different reply to the same
command is dropped: the first stands). A reply to a saga that has ended, or to a remote step
that timed out, is recorded (logged; kept among the saga's events when the saga still runs)
and never taken. A reply the store could not take (the database is down) is nacked, so the
transport delivers it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import SagaError
from ..relay import Relay
from ..remote import SAGA_HEADER
from ..stores.base import DeliveryOutcome, EventKind, SagaStatus, Store
from ..stores.outbox import outbox_store
from ..transports.base import Message, PoisonMessageError, Subscription, Transport

log = logging.getLogger("sagakit.engine")


class RemoteLink:
    """The relay and the reply consumer of one engine."""

    def __init__(
        self,
        store: Store,
        transport: Transport,
        reply_address: str,
        poke: Callable[[], None],
        *,
        owner: str,
        poll_interval: float,
        relay_lease: float = 10.0,
    ):
        outbox = outbox_store(store)
        if outbox is None:
            raise SagaError(
                f"Engine(transport=...) needs a store with an outbox; {type(store).__name__} "
                "has none: use the memory, SQLite or PostgreSQL store"
            )
        self.store = store
        self.transport = transport
        self.reply_address = reply_address
        self._poke = poke
        self.relay = Relay(
            outbox, transport, owner=owner, poll_interval=poll_interval, lease=relay_lease
        )
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        await self.transport.open()
        self._subscription = await self.transport.subscribe(self.reply_address, self.on_reply)
        self.relay.start()

    async def stop(self) -> None:
        await self.relay.stop()
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None
        await self.transport.close()

    async def on_reply(self, message: Message) -> None:
        """Deliver a reply to its saga (raises, for a redelivery, when the store fails)."""
        saga_id = message.headers.get(SAGA_HEADER)
        command = message.correlation_id
        if message.kind != "reply" or not saga_id or not command:
            raise PoisonMessageError(
                f"message {message.id} on the reply address {self.reply_address!r} is not a "
                f"reply to a saga's command (kind {message.kind!r}, "
                f"headers {dict(message.headers)})"
            )
        delivery = await self.store.deliver(
            saga_id, EventKind.REPLY, command, message.payload, unique=True, key=message.id
        )
        if delivery.outcome == DeliveryOutcome.DELIVERED:
            if delivery.status == SagaStatus.SUSPENDED:
                self._poke()
        elif delivery.outcome == DeliveryOutcome.DUPLICATE:
            log.debug("reply %s to %s: a reply was delivered already", message.id, command)
        else:
            log.info(
                "reply %s to command %s of saga %s ignored: %s (%s)",
                message.id,
                command,
                saga_id,
                delivery.outcome.value,
                delivery.status,
            )


__all__ = ["RemoteLink"]
