"""NATS JetStream transport (``pip install 'sagakit[nats]'``): nats-py.

One JetStream **stream per subject prefix** (``prefix="sagakit"``: the stream ``SAGAKIT`` holds
the subjects ``sagakit.>``, on disk, with work-queue retention: a message is removed once
acked) carries every destination: destination ``inventory`` is the subject
``sagakit.inventory`` and its dead letters ``sagakit.inventory.dead``. Each subscription binds
the destination's **durable pull consumer** (explicit acks), created on first use, so a message
published before its participant subscribes waits for it, and several processes subscribing
the same destination share its messages. ``publish`` returns once JetStream acked the message
(it is then stored), and sets ``Nats-Msg-Id`` to the message's id, so a publish retried after a
lost ack is dropped by the stream's duplicate window instead of delivered twice.

Redelivery and dead letters: a handler's raise ``nak``\\ s the message (redelivered at once); a
consumer that dies mid-handling leaves it unacked, and JetStream redelivers it after
``ack_wait`` (a running handler keeps it with ``in_progress`` heartbeats, so a slow handler is
not redelivered under it). The count is JetStream's ``num_delivered``. The consumer itself
republishes a message to ``<destination>.dead`` on its last failed delivery (with the error in
the headers), then acks it; a delivery beyond ``max_deliveries`` (the consumer died on the last
one) is dead-lettered before the handler sees it. We chose republishing over the consumer's
``max_deliver`` and its ``MAX_DELIVERIES`` advisory because the advisory carries only the stream
sequence (not the error), needs a separate always-running listener to copy the message, and
would make ``max_deliveries`` part of the durable consumer's configuration, which every
subscriber would have to agree on; the consumer is created with ``max_deliver=-1``.

Why nats-py rather than FastStream: FastStream is an application framework (routers, its own
serialisation and dependency injection, its own app lifecycle) over nats-py and aio-pika;
sagakit needs only the four calls of its :class:`~sagakit.transports.base.Transport` protocol
with exact control of acks, naks, ``in_progress`` and delivery counts, which a framework layer
would hide. nats-py is the NATS project's own, typed asyncio client.

While the server is down, ``publish`` retries until ``publish_timeout`` and then raises
:class:`~sagakit.transports.base.TransportUnavailableError`; the client reconnects by itself
and subscriptions resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType
except ModuleNotFoundError as exc:  # pragma: no cover - exercised by tests/test_packaging.py
    raise MissingExtraError(
        "NatsTransport needs nats-py, which is not installed: pip install 'sagakit[nats]'",
        name=exc.name,
    ) from exc

__all__ = ["NatsTransport"]

log = logging.getLogger("sagakit.transports")
#: the longest a close waits for the server (a consumer's unsubscribe, the connection's close)
CLOSE_TIMEOUT = 5.0
T = TypeVar("T")

_TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    nats.js.errors.ServiceUnavailableError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def _consumer_name(destination: str) -> str:
    # Consumer names may not hold dots; the hash keeps "a.b" and "a_b" apart.
    digest = hashlib.sha1(destination.encode()).hexdigest()[:8]
    return f"{destination.replace('.', '_')}-{digest}"


class _NatsSubscription:
    def __init__(self, transport: NatsTransport, destination: str, handler: Handler, max_: int):
        self._transport = transport
        self._destination = destination
        self._dead = dead_letter_destination(destination)
        self._handler = handler
        self._max = max_
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"sagakit-nats-consumer:{destination}"
        )

    async def started(self) -> None:
        await asyncio.shield(self._ready)

    async def _run(self) -> None:
        t = self._transport
        subject = t.subject(self._destination)
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=t.ack_wait,
            max_deliver=-1,
            max_ack_pending=t.prefetch * 64,
        )
        sub: JetStreamContext.PullSubscription | None = None
        backoff = 0.1
        while True:
            try:
                if sub is None:
                    sub = await t.js.pull_subscribe(
                        subject,
                        durable=_consumer_name(self._destination),
                        stream=t.stream,
                        config=config,
                    )
                    if not self._ready.done():
                        self._ready.set_result(None)
                try:
                    msgs = await sub.fetch(t.prefetch, timeout=1.0)
                except TimeoutError:
                    continue
                backoff = 0.1
                for index, msg in enumerate(msgs):
                    try:
                        await self._handle(msg)
                    except asyncio.CancelledError:
                        for rest in msgs[index + 1 :]:
                            with contextlib.suppress(Exception):
                                await rest.nak()
                        raise
            except asyncio.CancelledError:
                if sub is not None:
                    # bounded: a server that does not answer must not hold up the close
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(sub.unsubscribe(), CLOSE_TIMEOUT)
                raise
            except Exception as exc:
                if not self._ready.done() and isinstance(exc, nats.js.errors.APIError):
                    self._ready.set_exception(
                        TransportError(
                            f"could not create the JetStream consumer of {subject}: {exc}"
                        )
                    )
                    return
                log.warning("consumer of %s: %r; retrying", self._destination, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _handle(self, msg: Msg) -> None:
        attempt = msg.metadata.num_delivered
        try:
            message = _wire.decode(self._destination, msg.data, msg.headers or {}, attempt)
        except _wire.WireError as exc:
            headers = dict(msg.headers or {})
            headers.update(
                {
                    "x-sagakit-error": str(exc),
                    "x-sagakit-error-type": type(exc).__name__,
                    "x-sagakit-deliveries": str(attempt),
                    "x-sagakit-dead-from": self._destination,
                }
            )
            headers.pop("Nats-Msg-Id", None)
            await self._transport._publish_raw(self._dead, msg.data, headers)
            await msg.ack_sync()
            return
        if attempt > self._max:
            lost = TransportError(
                f"delivered {attempt - 1} time(s) without an ack or a nack: its consumer "
                "stopped or crashed while handling it"
            )
            await self._dead_letter(msg, message, lost, attempt - 1)
            return
        heartbeat = asyncio.get_running_loop().create_task(self._keep_alive(msg))
        try:
            await self._handler(message)
        except asyncio.CancelledError:
            # Closed mid-handling: hand the message back now rather than after ack_wait.
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.nak())
            raise
        except Exception as exc:
            if isinstance(exc, PoisonMessageError) or attempt >= self._max:
                await self._dead_letter(msg, message, exc, attempt)
            else:
                log.info(
                    "message %s to %s failed (delivery %d): %r",
                    message.id,
                    self._destination,
                    attempt,
                    exc,
                )
                await msg.nak()
        else:
            await msg.ack_sync()
        finally:
            heartbeat.cancel()

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(max(self._transport.ack_wait / 3, 0.1))
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _dead_letter(
        self, msg: Msg, message: Message, exc: BaseException, deliveries: int
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
        # Its own dedup id: the original's is still in the stream's duplicate window.
        headers["Nats-Msg-Id"] = f"{message.id}.dead"
        # Stored before the ack: a crash in between leaves a duplicate, never a loss.
        await self._transport._publish_raw(self._dead, body, headers)
        await msg.ack_sync()

    async def close(self) -> None:
        """Stop consuming; a message whose handler is running is nak'ed for redelivery.
        Returns within :data:`CLOSE_TIMEOUT` even when the server does not answer."""
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT)
        if self._task.done() and not self._task.cancelled():
            self._task.exception()  # retrieved: it ended on its own, and was logged there
        self._transport._forget(self)


class NatsTransport:
    """A :class:`~sagakit.transports.base.Transport` over NATS JetStream (see the module).

    Args:
        url: the NATS URL, ``nats://host:4222`` (``nats://user:password@host:4222``).
        prefix: the subjects' prefix; the stream is named after it (``sagakit`` → ``SAGAKIT``).
        publish_timeout: how long ``publish`` (and ``open``) keep retrying while the server is
            unreachable before raising ``TransportUnavailableError``, in seconds.
        ack_wait: after how long JetStream redelivers a message whose consumer went silent (a
            crashed process), in seconds; fixed when the destination's consumer is created.
        request_timeout: the timeout of one JetStream request, in seconds.
        prefetch: how many messages a subscription fetches at once; its handler still runs
            one message at a time, in order.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sagakit",
        publish_timeout: float = 30.0,
        ack_wait: float = 30.0,
        request_timeout: float = 5.0,
        prefetch: int = 16,
    ) -> None:
        self.url = url
        self.prefix = check_destination(prefix)
        self.stream = prefix.replace(".", "_").replace("-", "_").upper()
        self.publish_timeout = publish_timeout
        self.ack_wait = ack_wait
        self.request_timeout = request_timeout
        self.prefetch = prefetch
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._stream_ready = False
        self._subscriptions: list[_NatsSubscription] = []

    async def __aenter__(self) -> NatsTransport:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def subject(self, destination: str) -> str:
        """The NATS subject that carries ``destination``."""
        return f"{self.prefix}.{destination}"

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise TransportError("the NatsTransport is not open: call `await transport.open()`")
        return self._js

    async def open(self) -> None:
        """Connect and create the stream if needed; retries until ``publish_timeout``."""
        if self._nc is None:
            self._nc = await self._retrying("connect", self._connect)
            self._js = self._nc.jetstream(timeout=self.request_timeout)
        await self._retrying("create the stream on", self._ensure_stream)

    async def _connect(self) -> Client:
        async def quiet(exc: Exception) -> None:
            log.debug("nats: %r", exc)

        return await nats.connect(
            servers=[self.url],
            connect_timeout=self.request_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            error_cb=quiet,
        )

    async def _ensure_stream(self) -> None:
        if self._stream_ready:
            return
        try:
            await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(
                name=self.stream,
                subjects=[f"{self.prefix}.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            )
        self._stream_ready = True

    async def close(self) -> None:
        """Close every subscription, then the connection."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        nc, self._nc, self._js = self._nc, None, None
        self._stream_ready = False
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)

    def _forget(self, subscription: _NatsSubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.publish_timeout
        backoff = 0.1
        while True:
            try:
                return await attempt()
            except nats.js.errors.APIError as exc:
                if isinstance(exc, nats.js.errors.ServiceUnavailableError):
                    error: BaseException = exc
                else:
                    raise TransportError(f"JetStream refused to {what}: {exc}") from exc
            except _TRANSIENT as exc:
                error = exc
            if time.monotonic() + backoff > deadline:
                raise TransportUnavailableError(
                    f"could not {what} NATS at {redact_url(self.url)} within "
                    f"{self.publish_timeout:g}s: {error!r}; check that nats-server runs with "
                    "JetStream (-js) and is reachable, then try again (consumers deduplicate "
                    "by message id)"
                ) from error
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _publish_raw(self, destination: str, body: bytes, headers: dict[str, Any]) -> None:
        async def attempt() -> None:
            await self._ensure_stream()
            await self.js.publish(
                self.subject(destination),
                body,
                timeout=self.request_timeout,
                stream=self.stream,
                headers=dict(headers),
            )

        await self._retrying("publish to", attempt)

    async def publish(self, message: Message) -> None:
        """Send ``message``; returns once JetStream stored it."""
        check_destination(message.destination)
        _ = self.js
        body, headers = _wire.encode(message)
        wire_headers: dict[str, Any] = dict(headers)
        wire_headers["Nats-Msg-Id"] = message.id
        await self._publish_raw(message.destination, body, wire_headers)

    async def subscribe(
        self,
        destination: str,
        handler: Handler,
        *,
        max_deliveries: int = 5,
    ) -> _NatsSubscription:
        """Consume ``destination`` through its durable pull consumer; see the module."""
        _ = self.js
        check_destination(destination)
        check_max_deliveries(max_deliveries)
        await self._retrying("create the stream on", self._ensure_stream)
        subscription = _NatsSubscription(self, destination, handler, max_deliveries)
        self._subscriptions.append(subscription)
        try:
            await asyncio.wait_for(subscription.started(), self.publish_timeout)
        except BaseException as exc:
            await subscription.close()
            if isinstance(exc, TimeoutError):
                raise TransportUnavailableError(
                    f"could not subscribe to {destination!r} on NATS at {redact_url(self.url)}"
                    f" within {self.publish_timeout:g}s; check the server"
                ) from exc
            raise
        return subscription
