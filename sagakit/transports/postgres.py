"""A transport with no broker: the messages wait in a PostgreSQL table (for users who run
PostgreSQL and nothing else).

``PostgresOutboxTransport("postgresql://...")`` keeps each message not yet acknowledged as a
row of ``saga_transport_messages`` (made by the store's migration 0008, in sagakit's schema:
run ``sagakit migrate`` first). ``publish`` inserts the row and commits: the message is
durable once it returns. A consumer takes its destination's oldest available row with
``FOR UPDATE SKIP LOCKED`` and runs the handler while it holds the row's lock: consumers of one
destination compete, each message goes to one of them, and a consumer that dies (its
connection gone) releases the lock, so the message is delivered again. The handler's return
deletes the row (ack); a raise counts the delivery and makes the row available again after a
backoff; the last delivery (``max_deliveries``), or a
:class:`~sagakit.transports.base.PoisonMessageError` at once, moves the row to
``"<destination>.dead"`` with the error in its headers. ``LISTEN``/``NOTIFY`` wakes idle
consumers at the commit of a publish; they also look every ``poll_interval``.

Order: one destination's messages are taken in the order they were published; a message that
failed comes back after its backoff, when later ones may have been handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import asyncpg

from ..stores.postgres.schema import DEFAULT_SCHEMA, check_schema, split_schema
from ..stores.sqlfile import load_queries
from .base import (
    Handler,
    Message,
    PoisonMessageError,
    TransportError,
    TransportUnavailableError,
    check_destination,
    check_max_deliveries,
    dead_letter_destination,
    error_headers,
)

__all__ = ["PostgresOutboxTransport"]

log = logging.getLogger("sagakit.transports")
TQ = load_queries(__package__ or "sagakit.transports", "postgres.sql")
#: the NOTIFY channel of a schema's transport
CHANNEL = "sagakit_transport"


def _message(row: Mapping[str, Any]) -> Message:
    return Message(
        id=row["message_id"],
        destination=row["destination"],
        kind=row["kind"],
        name=row["name"],
        payload=row["payload"],
        reply_to=row["reply_to"],
        correlation_id=row["correlation_id"],
        headers=json.loads(row["headers"] or "{}"),
        attempt=int(row["deliveries"]) + 1,
    )


class _Subscription:
    def __init__(
        self, transport: PostgresOutboxTransport, destination: str, handler: Handler, most: int
    ):
        self._transport = transport
        self.destination = destination
        self._handler = handler
        self._max = most
        self.wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"sagakit-pg-consumer:{destination}"
        )

    async def _run(self) -> None:
        delay = 0.05
        while True:
            self.wake.clear()
            try:
                took = await self._deliver_one()
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "consumer of %s: %s; trying again in %.2fs", self.destination, exc, delay
                )
                took = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            if not took:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._transport.poll_interval):
                        await self.wake.wait()

    async def _deliver_one(self) -> bool:
        pool = self._transport._pool_or_raise()
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(TQ["take"], self.destination)
            if row is None:
                return False
            message = _message(row)
            try:
                await self._handler(message)
            except asyncio.CancelledError:
                raise  # the transaction rolls back: delivered again, not counted
            except Exception as exc:
                await self._failed(conn, row["position"], message, exc)
                return True
            await conn.execute(TQ["ack"], row["position"])
            return True

    async def _failed(
        self, conn: asyncpg.Connection, position: int, message: Message, exc: Exception
    ) -> None:
        if isinstance(exc, PoisonMessageError) or message.attempt >= self._max:
            dead = dead_letter_destination(self.destination)
            log.warning(
                "message %s to %s failed %d time(s), moved to %s: %r",
                message.id,
                self.destination,
                message.attempt,
                dead,
                exc,
            )
            headers = json.dumps(error_headers(message, exc, message.attempt))
            await conn.execute(TQ["dead_letter"], position, dead, headers)
        else:
            backoff = min(0.05 * 2 ** (message.attempt - 1), 5.0)
            await conn.execute(TQ["retry_later"], position, backoff)

    async def close(self) -> None:
        """Stop consuming; a message whose handler is running is delivered again later."""
        self._transport._subscriptions.discard(self)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class PostgresOutboxTransport:
    """A :class:`~sagakit.transports.base.Transport` on a PostgreSQL table (see the module).

    Args:
        url: the PostgreSQL database (``?schema=name`` names sagakit's schema, as for the store).
        schema: sagakit's schema (default ``sagakit``), where migration 0008 made the table.
        poll_interval: the longest an idle consumer waits before looking again (seconds).
        pool_size: the most connections (each busy consumer holds one while its handler runs).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        poll_interval: float = 1.0,
        pool_size: int = 10,
    ):
        dsn, from_url = split_schema(url)
        self._dsn = dsn
        self.schema = check_schema(schema or from_url or DEFAULT_SCHEMA)
        self.poll_interval = poll_interval
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._subscriptions: set[_Subscription] = set()

    @property
    def channel(self) -> str:
        return f"{CHANNEL}_{self.schema}"

    async def __aenter__(self) -> PostgresOutboxTransport:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect (a pool, and a connection that LISTENs); raises TransportUnavailableError
        if the database cannot be reached, TransportError if its table is missing."""
        if self._pool is not None:
            return
        settings = {"search_path": f'"{self.schema}"'}
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self.pool_size, server_settings=settings
            )
            self._listener = await asyncpg.connect(self._dsn, server_settings=settings)
        except (OSError, asyncpg.PostgresError) as exc:
            await self.close()
            raise TransportUnavailableError(
                f"cannot reach PostgreSQL for the transport: {exc}"
            ) from exc
        assert self._pool is not None
        if not await self._pool.fetchval(TQ["has_table"]):
            await self.close()
            raise TransportError(
                f"the schema {self.schema!r} has no saga_transport_messages table: upgrade it "
                "with `sagakit migrate --db <url>` (schema version 8 made it)"
            )
        await self._listener.add_listener(self.channel, self._notified)

    def _notified(self, _conn: object, _pid: int, _channel: str, destination: str) -> None:
        for subscription in list(self._subscriptions):
            if subscription.destination == destination:
                subscription.wake.set()

    def _pool_or_raise(self) -> asyncpg.Pool:
        if self._pool is None:
            raise TransportError(
                "the PostgresOutboxTransport is not open: call `await transport.open()`"
            )
        return self._pool

    async def close(self) -> None:
        """Stop every subscription and disconnect; unacknowledged messages stay in the table."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.close()
            self._pool = None

    async def publish(self, message: Message) -> None:
        """Insert the message (committed when this returns) and wake its consumers."""
        check_destination(message.destination)
        try:
            await self._pool_or_raise().execute(
                TQ["publish"],
                message.id,
                message.destination,
                message.kind,
                message.name,
                message.payload,
                message.reply_to,
                message.correlation_id,
                json.dumps(dict(message.headers)),
                self.channel,
            )
        except (OSError, asyncpg.exceptions.ConnectionDoesNotExistError) as exc:
            raise TransportUnavailableError(f"could not publish {message.id}: {exc}") from exc

    async def subscribe(
        self, destination: str, handler: Handler, *, max_deliveries: int = 5
    ) -> _Subscription:
        """Consume ``destination`` with ``handler`` (see the module docstring)."""
        self._pool_or_raise()
        check_destination(destination)
        check_max_deliveries(max_deliveries)
        subscription = _Subscription(self, destination, handler, max_deliveries)
        self._subscriptions.add(subscription)
        return subscription

    async def pending(self, destination: str) -> list[Message]:
        """The messages waiting in ``destination`` (``"x.dead"`` for x's dead letters)."""
        rows = await self._pool_or_raise().fetch(TQ["pending"], destination)
        return [_message(r) for r in rows]
