"""RabbitMQ transport (``pip install 'sagakit[rabbitmq]'``): aio-pika over AMQP 0-9-1.

Each destination is a durable **quorum queue** of that name, reached through the default
exchange; its dead letters go to the quorum queue ``"<destination>.dead"``. Messages are
persistent; ``publish`` waits for the broker's **publisher confirm** (so a returned ``publish``
survives a broker restart) and declares the destination's queue first, so a message sent before
its participant subscribes waits for it. Consumers ack by hand: the handler's return acks, a
raise nacks with requeue.

Why quorum queues: they count deliveries on the server (``x-delivery-count``, one more each
time a message is nacked *or* returned because its consumer's connection dropped), durably and
whatever the consumer does. Counting in a header of our own would need a republish per failure
(ack, publish a copy: not atomic, and it moves the message behind later ones) and would never
count a consumer that crashes mid-handling, so a message that kills its consumer would loop
forever. With the server's count, a delivery beyond ``max_deliveries`` (the consumer died on
the last one) is dead-lettered before the handler sees it, with an error saying so. The
consumer itself moves a message to the dead-letter queue (publish with confirm, then ack), so
the dead letter carries the handler's error; RabbitMQ's own ``x-delivery-limit`` dead-lettering
could not.

Why aio-pika rather than FastStream: FastStream is an application framework (routers, its own
serialisation, dependency injection, its own app lifecycle) built over aio-pika and nats-py;
sagakit needs only the four calls of its :class:`~sagakit.transports.base.Transport` protocol
with exact control of acks, confirms and redelivery counts, and an extra framework layer would
hide those and tie users to its release cycle. aio-pika is the maintained, typed asyncio AMQP
client that FastStream itself uses.

While the broker is down, ``publish`` retries (reconnecting, with a short backoff) until its
``publish_timeout`` and then raises :class:`~sagakit.transports.base.TransportUnavailableError`;
subscriptions reconnect by themselves and resume consuming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..urls import redact_url
from . import _wire
from .base import (
    Handler,
    Message,
    MissingExtraError,
    PoisonMessageError,
    TransportError,
    TransportUnavailableError,
    check_destination,
    check_max_deliveries,
    dead_letter_destination,
    error_headers,
)

try:
    import aio_pika
    import aiormq.exceptions
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
except ModuleNotFoundError as exc:  # pragma: no cover - exercised by tests/test_packaging.py
    raise MissingExtraError(
        "RabbitTransport needs aio-pika, which is not installed: pip install 'sagakit[rabbitmq]'",
        name=exc.name,
    ) from exc

__all__ = ["RabbitTransport"]

log = logging.getLogger("sagakit.transports")
#: the longest a subscription's close waits for its consumer task to stop
CLOSE_TIMEOUT = 5.0
T = TypeVar("T")

_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}
_DELIVERY_COUNT = "x-delivery-count"
# Errors after which a fresh connection may succeed: the broker restarting, a dropped socket.
_TRANSIENT: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.DeliveryError,
    ConnectionError,
    OSError,
    TimeoutError,
)


async def _declare(channel: AbstractChannel, destination: str) -> None:
    try:
        await channel.declare_queue(destination, durable=True, arguments=_QUEUE_ARGUMENTS)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise TransportError(
            f"RabbitMQ queue {destination!r} exists with other arguments than sagakit's (a "
            f"durable quorum queue): {exc}; delete it or use another destination name"
        ) from exc


def _amqp_message(message: Message, headers: dict[str, str], body: bytes) -> aio_pika.Message:
    amqp_headers: dict[str, Any] = dict(headers)
    return aio_pika.Message(
        body,
        headers=amqp_headers,
        message_id=message.id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        type=message.name,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


class _RabbitSubscription:
    def __init__(self, transport: RabbitTransport, destination: str, handler: Handler, max_: int):
        self._transport = transport
        self._destination = destination
        self._dead = dead_letter_destination(destination)
        self._handler = handler
        self._max = max_
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"sagakit-rabbit-consumer:{destination}"
        )

    async def started(self) -> None:
        await asyncio.shield(self._ready)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except TransportError as exc:
                if not self._ready.done():
                    self._ready.set_exception(exc)
                    return
                log.error("consumer of %s stopped: %s", self._destination, exc)
                return
            except Exception as exc:
                log.warning(
                    "consumer of %s lost its connection (%r); reconnecting", self._destination, exc
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _consume(self) -> None:
        connection = await aio_pika.connect(
            self._transport.url, timeout=self._transport.connect_timeout
        )
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self._transport.prefetch)
            await _declare(channel, self._destination)
            await _declare(channel, self._dead)
            queue = await channel.get_queue(self._destination, ensure=False)
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            await queue.consume(inbox.put, no_ack=False)
            if not self._ready.done():
                self._ready.set_result(None)
            while True:
                try:
                    incoming = await asyncio.wait_for(inbox.get(), 1.0)
                except TimeoutError:
                    if connection.is_closed or channel.is_closed:
                        raise ConnectionError("the RabbitMQ connection closed") from None
                    continue
                await self._handle(channel, incoming)
        finally:
            # Unacked messages (a cancelled handler's) go back to the queue, counted.
            with contextlib.suppress(Exception):
                await asyncio.shield(connection.close())

    async def _handle(self, channel: AbstractChannel, incoming: AbstractIncomingMessage) -> None:
        attempt = int(str(incoming.headers.get(_DELIVERY_COUNT, 0) or 0)) + 1
        try:
            message = _wire.decode(
                self._destination,
                incoming.body,
                incoming.headers,
                attempt,
                drop=(_DELIVERY_COUNT,),
            )
        except _wire.WireError as exc:
            await self._dead_letter_raw(channel, incoming, exc, attempt)
            return
        if attempt > self._max:
            lost = TransportError(
                f"delivered {attempt - 1} time(s) without an ack or a nack: its consumer "
                "stopped or crashed while handling it"
            )
            await self._dead_letter(channel, incoming, message, lost, attempt - 1)
            return
        try:
            await self._handler(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, PoisonMessageError) or attempt >= self._max:
                await self._dead_letter(channel, incoming, message, exc, attempt)
            else:
                log.info(
                    "message %s to %s failed (delivery %d): %r",
                    message.id,
                    self._destination,
                    attempt,
                    exc,
                )
                await incoming.nack(requeue=True)
        else:
            await incoming.ack()

    async def _dead_letter(
        self,
        channel: AbstractChannel,
        incoming: AbstractIncomingMessage,
        message: Message,
        exc: BaseException,
        deliveries: int,
    ) -> None:
        log.warning(
            "message %s to %s failed %d time(s), moved to %s: %r",
            message.id,
            self._destination,
            deliveries,
            self._dead,
            exc,
        )
        body, headers = _wire.encode(message)
        headers.update(error_headers(message, exc, deliveries))
        letter = _amqp_message(message, headers, body)
        # Confirmed before the ack: a crash in between leaves a duplicate, never a loss.
        await channel.default_exchange.publish(letter, routing_key=self._dead, mandatory=True)
        await incoming.ack()

    async def _dead_letter_raw(
        self,
        channel: AbstractChannel,
        incoming: AbstractIncomingMessage,
        exc: BaseException,
        deliveries: int,
    ) -> None:
        log.warning("unreadable message on %s moved to %s: %s", self._destination, self._dead, exc)
        headers: dict[str, Any] = {
            str(k): str(v) for k, v in incoming.headers.items() if k != _DELIVERY_COUNT
        }
        headers.update(
            {
                "x-sagakit-error": str(exc),
                "x-sagakit-error-type": type(exc).__name__,
                "x-sagakit-deliveries": str(deliveries),
                "x-sagakit-dead-from": self._destination,
            }
        )
        letter = aio_pika.Message(
            incoming.body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        await channel.default_exchange.publish(letter, routing_key=self._dead, mandatory=True)
        await incoming.ack()

    async def close(self) -> None:
        """Stop consuming; a message whose handler is running goes back to the queue.
        Returns within :data:`CLOSE_TIMEOUT` even when the server does not answer."""
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT)
        if self._task.done() and not self._task.cancelled():
            self._task.exception()  # retrieved: it ended on its own, and was logged there
        self._transport._forget(self)


class RabbitTransport:
    """A :class:`~sagakit.transports.base.Transport` over RabbitMQ (see the module's docstring).

    Args:
        url: the AMQP URL, ``amqp://user:password@host:5672/vhost``.
        publish_timeout: how long ``publish`` (and ``open``) keep retrying while the broker is
            unreachable before raising ``TransportUnavailableError``, in seconds.
        connect_timeout: the timeout of one connection attempt, in seconds.
        prefetch: how many unacked messages RabbitMQ sends each subscription ahead; handlers
            still run one at a time, in order.
    """

    def __init__(
        self,
        url: str,
        *,
        publish_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        prefetch: int = 16,
    ) -> None:
        self.url = url
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.prefetch = prefetch
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._declared: set[str] = set()
        self._lock = asyncio.Lock()
        self._subscriptions: list[_RabbitSubscription] = []
        self._open = False

    async def __aenter__(self) -> RabbitTransport:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect; retries until ``publish_timeout``, then raises ``TransportUnavailableError``."""
        self._open = True
        await self._retrying("connect", self._ensure_channel)

    async def close(self) -> None:
        """Close every subscription, then the publishing connection."""
        self._open = False
        for subscription in list(self._subscriptions):
            await subscription.close()
        await self._drop()

    def _forget(self, subscription: _RabbitSubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)

    async def _drop(self, broken: AbstractChannel | None = None) -> None:
        """Close the publishing connection (only if it is still ``broken``'s, when given)."""
        if broken is not None and broken is not self._channel:
            return  # another publish already replaced it
        connection, self._connection, self._channel = self._connection, None, None
        self._declared.clear()
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _ensure_channel(self) -> AbstractChannel:
        # Under the lock: concurrent publishes share one connection; confirms are per message.
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            await self._drop()
            self._connection = await aio_pika.connect(self.url, timeout=self.connect_timeout)
            self._channel = await self._connection.channel(publisher_confirms=True)
            return self._channel

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.publish_timeout
        backoff = 0.1
        while True:
            channel = self._channel
            try:
                return await attempt()
            except TransportError:
                raise
            except _TRANSIENT as exc:
                await self._drop(channel if channel is not None else self._channel)
                if time.monotonic() + backoff > deadline:
                    raise TransportUnavailableError(
                        f"could not {what} to RabbitMQ at {redact_url(self.url)} within "
                        f"{self.publish_timeout:g}s: {exc!r}; check that the broker is running "
                        "and reachable, then try again (consumers deduplicate by message id)"
                    ) from exc
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    def _check_open(self) -> None:
        if not self._open:
            raise TransportError("the RabbitTransport is not open: call `await transport.open()`")

    async def publish(self, message: Message) -> None:
        """Send ``message``; returns once RabbitMQ confirmed it (it is then on disk)."""
        self._check_open()
        check_destination(message.destination)
        body, headers = _wire.encode(message)

        async def attempt() -> None:
            channel = await self._ensure_channel()
            if message.destination not in self._declared:
                await _declare(channel, message.destination)
                self._declared.add(message.destination)
            await channel.default_exchange.publish(
                _amqp_message(message, headers, body),
                routing_key=message.destination,
                mandatory=True,
                timeout=self.connect_timeout,
            )

        await self._retrying("publish", attempt)

    async def subscribe(
        self,
        destination: str,
        handler: Handler,
        *,
        max_deliveries: int = 5,
    ) -> _RabbitSubscription:
        """Consume ``destination`` on a connection of its own; see the module's docstring."""
        self._check_open()
        check_destination(destination)
        check_max_deliveries(max_deliveries)
        subscription = _RabbitSubscription(self, destination, handler, max_deliveries)
        self._subscriptions.append(subscription)
        try:
            await asyncio.wait_for(subscription.started(), self.publish_timeout)
        except BaseException as exc:
            await subscription.close()
            if isinstance(exc, TimeoutError):
                raise TransportUnavailableError(
                    f"could not subscribe to {destination!r} on RabbitMQ at "
                    f"{redact_url(self.url)} within {self.publish_timeout:g}s; check the broker"
                ) from exc
            raise
        return subscription
