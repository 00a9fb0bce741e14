"""An in-process transport for unit tests: the broker's semantics without a broker.

:class:`MemoryTransport` keeps one queue per destination in a :class:`MemoryBroker`, which
transports in the same process (and event loop) can share, so a saga and its participants
can talk in one test. The semantics are the real transports': a message published before
anyone subscribes waits for a subscriber; several subscriptions of one destination compete
(each message goes to one of them); a handler's return acks; a raise redelivers the message
(before later ones, with ``Message.attempt`` one higher); after ``max_deliveries`` failed
deliveries, or at once on :class:`~sagakit.transports.base.PoisonMessageError`, the message
goes to ``"<destination>.dead"`` with the error in its headers; a subscription closed while
its handler runs cancels the handler and the message is delivered again.

Nothing survives the process: use it for tests and single-process demos, not production.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque

from .base import (
    Handler,
    Message,
    PoisonMessageError,
    TransportError,
    check_destination,
    check_max_deliveries,
    dead_letter_destination,
    error_headers,
)

__all__ = ["MemoryBroker", "MemoryTransport"]

log = logging.getLogger("sagakit.transports")


class _Queue:
    """A FIFO of messages with competing consumers; put is synchronous so requeues cannot fail."""

    def __init__(self) -> None:
        self.items: deque[Message] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()

    def put(self, message: Message, *, front: bool = False) -> None:
        if front:
            self.items.appendleft(message)
        else:
            self.items.append(message)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.items:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def get(self) -> Message:
        while not self.items:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the wake-up on to another consumer
                raise
        return self.items.popleft()


class MemoryBroker:
    """The queues of one or more :class:`MemoryTransport` instances in this process."""

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}

    def _queue(self, destination: str) -> _Queue:
        queue = self._queues.get(destination)
        if queue is None:
            queue = self._queues[destination] = _Queue()
        return queue

    def pending(self, destination: str) -> list[Message]:
        """The messages waiting in ``destination`` (``"x.dead"`` for x's dead letters)."""
        return list(self._queue(destination).items)


class _MemorySubscription:
    def __init__(
        self,
        broker: MemoryBroker,
        destination: str,
        handler: Handler,
        max_deliveries: int,
    ) -> None:
        self._broker = broker
        self._destination = destination
        self._handler = handler
        self._max = max_deliveries
        self._task = asyncio.get_running_loop().create_task(
            self._consume(), name=f"sagakit-memory-consumer:{destination}"
        )

    async def _consume(self) -> None:
        queue = self._broker._queue(self._destination)
        while True:
            message = await queue.get()
            try:
                await self._handler(message)
            except asyncio.CancelledError:
                # Delivered but never acked: like a broker, count the delivery and redeliver.
                queue.put(dataclasses.replace(message, attempt=message.attempt + 1), front=True)
                raise
            except Exception as exc:
                self._failed(queue, message, exc)

    def _failed(self, queue: _Queue, message: Message, exc: Exception) -> None:
        if isinstance(exc, PoisonMessageError) or message.attempt >= self._max:
            dead = dead_letter_destination(self._destination)
            log.warning(
                "message %s to %s failed %d time(s), moved to %s: %r",
                message.id,
                self._destination,
                message.attempt,
                dead,
                exc,
            )
            headers = error_headers(message, exc, message.attempt)
            letter = dataclasses.replace(message, destination=dead, headers=headers, attempt=1)
            self._broker._queue(dead).put(letter)
        else:
            queue.put(dataclasses.replace(message, attempt=message.attempt + 1), front=True)

    async def close(self) -> None:
        """Stop consuming; a message whose handler is running is delivered again later."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class MemoryTransport:
    """An in-process :class:`~sagakit.transports.base.Transport` for tests.

    Args:
        broker: share one :class:`MemoryBroker` between transports so that they see the same
            queues; by default the transport has its own.
    """

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self._open = False
        self._subscriptions: list[_MemorySubscription] = []

    async def __aenter__(self) -> MemoryTransport:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Nothing to connect to; marks the transport usable."""
        self._open = True

    async def close(self) -> None:
        """Close every subscription; the broker's queues keep their messages."""
        self._open = False
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.close()

    def _check_open(self) -> None:
        if not self._open:
            raise TransportError("the MemoryTransport is not open: call `await transport.open()`")

    async def publish(self, message: Message) -> None:
        """Append the message to its destination's queue."""
        self._check_open()
        check_destination(message.destination)
        self.broker._queue(message.destination).put(dataclasses.replace(message, attempt=1))

    async def subscribe(
        self,
        destination: str,
        handler: Handler,
        *,
        max_deliveries: int = 5,
    ) -> _MemorySubscription:
        """Consume ``destination`` with ``handler`` (see the module's docstring)."""
        self._check_open()
        check_destination(destination)
        check_max_deliveries(max_deliveries)
        subscription = _MemorySubscription(self.broker, destination, handler, max_deliveries)
        self._subscriptions.append(subscription)
        return subscription
