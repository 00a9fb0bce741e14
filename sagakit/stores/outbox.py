"""The outbox and the inbox: what a store keeps for sagas that talk to other services.

* The **outbox** holds messages to publish (a remote step's command, its compensation command,
  a participant's reply). A saga's command is written by :meth:`OutboxStore.append_outbox` in
  the same transaction as the journal entry that records it was sent, so that a crash can
  neither lose a command the journal says was sent nor send one the journal does not know.
  The relay (:mod:`sagakit.relay`) publishes unpublished rows in ``position`` order and marks
  them published: at least once (a relay that dies between the two publishes the row again).
* The **inbox** holds each message a participant processed, with the reply it gave
  (:meth:`OutboxStore.record_inbox`, in the same transaction as the reply's outbox row): a
  message delivered again gets the stored reply and its handler does not run again.
* **Retention** (:meth:`OutboxStore.prune_messages`): published outbox rows and inbox records
  older than the retention are deleted in small batches. An inbox record is what makes a
  redelivery return the stored reply: a message delivered again after its record was deleted
  runs its handler again, so the retention must outlast every redelivery and re-send.
* The **relay lease** (:meth:`OutboxStore.take_relay_lease`): one relay per database publishes
  at a time, so that the messages of each destination leave in the order they were written.

This is a protocol of its own beside :class:`~sagakit.stores.base.Store`, implemented by the
memory, SQLite and PostgreSQL stores: a store without it (a wrapper, a third-party store) runs
every saga that sends no command.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .base import JournalEntry

#: the relay lease's name in ``saga_relay`` (one relay per database)
RELAY_LEASE = "outbox"


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to publish, as an outbox row holds it (the fields of a transport's
    :class:`~sagakit.transports.base.Message`, the saga that sent it, and the key of the write).
    """

    message_id: str
    destination: str
    kind: str
    name: str
    #: JSON text
    payload: str
    reply_to: str | None = None
    correlation_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: the saga that sent it (None: a participant's reply)
    saga_id: str | None = None
    #: chosen before the first attempt of the write: a retry after a lost acknowledgement
    #: inserts nothing more (None: the message id)
    send_key: str | None = None

    @property
    def key(self) -> str:
        return self.send_key or self.message_id

    def headers_json(self) -> str:
        return json.dumps(dict(self.headers), sort_keys=True)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An outbox row: the message, where it stands in the outbox, and whether it left."""

    position: int
    message: OutboxMessage
    created_at: float
    published_at: float | None
    #: how many times the relay tried to publish it
    attempts: int
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class InboxRecord:
    """A message a participant processed, and the reply it gave (JSON text)."""

    participant: str
    message_id: str
    name: str
    #: ``"ok"`` or ``"error"``
    status: str
    reply: str
    processed_at: float


def row_from_columns(row: Sequence[Any]) -> OutboxRow:
    """An OutboxRow from the columns the stores select (see their outbox.sql)."""
    (
        position,
        message_id,
        destination,
        kind,
        name,
        payload,
        reply_to,
        correlation_id,
        headers,
        saga_id,
        created_at,
        published_at,
        attempts,
        last_error,
        send_key,
    ) = row
    message = OutboxMessage(
        message_id,
        destination,
        kind,
        name,
        payload,
        reply_to,
        correlation_id,
        json.loads(headers or "{}"),
        saga_id,
        send_key,
    )
    return OutboxRow(int(position), message, created_at, published_at, int(attempts), last_error)


def inbox_from_columns(row: Sequence[Any]) -> InboxRecord:
    return InboxRecord(*row)


@runtime_checkable
class OutboxStore(Protocol):
    """What remote steps, the relay and participants ask of a store (see the module)."""

    #: set by a relay of this process: called once outbox rows were committed here, so that it
    #: publishes them at once instead of at its next poll
    on_outbox: Callable[[], None] | None

    def append_outbox(
        self,
        saga_id: str,
        fence: int,
        entry: JournalEntry,
        messages: Sequence[OutboxMessage],
    ) -> asyncio.Future[None]:
        """Write ``entry`` and the outbox rows of ``messages`` in one transaction, fenced like
        ``Store.append`` (LeaseLost, nothing written, when the saga's fence moved). A message
        whose key is in the outbox already is not written again. Queued when called; the
        future is done once committed."""
        ...

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        """Write outbox rows on their own (a message not tied to a journal entry)."""
        ...

    async def unpublished(self, limit: int = 100) -> list[OutboxRow]:
        """The oldest unpublished rows, in position order."""
        ...

    async def mark_published(self, positions: Sequence[int]) -> None:
        """Record that these rows were published (now)."""
        ...

    async def mark_publish_failed(self, position: int, error: str) -> None:
        """Count a failed publish of the row and keep its error (it stays unpublished)."""
        ...

    async def outbox_backlog(self) -> int:
        """How many rows wait to be published."""
        ...

    async def saga_messages(self, saga_id: str) -> list[OutboxRow]:
        """The messages a saga sent, in order (``sagakit show``)."""
        ...

    async def find_inbox(self, participant: str, message_id: str) -> InboxRecord | None:
        """The participant's record of the message, if it processed it."""
        ...

    async def record_inbox(
        self, record: InboxRecord, replies: Sequence[OutboxMessage]
    ) -> InboxRecord:
        """Insert ``record`` and the outbox rows of ``replies`` in one transaction, unless the
        participant has a record of the message already: then write nothing and return that
        one (the first processing's reply stands)."""
        ...

    async def take_relay_lease(self, owner: str, seconds: float) -> bool:
        """Hold (or renew) the relay lease for ``seconds`` if it is free, expired or ours."""
        ...

    async def prune_messages(self, before: float, limit: int) -> tuple[int, int]:
        """Delete up to ``limit`` outbox rows published before ``before`` (epoch seconds) and
        up to ``limit`` inbox records processed before it, in one short transaction that
        waits for no row another one holds; how many of each were deleted. Unpublished rows
        are never deleted."""
        ...


def outbox_store(store: object) -> OutboxStore | None:
    """``store`` as an :class:`OutboxStore`, or None when it does not implement one."""
    return store if isinstance(store, OutboxStore) else None


__all__ = [
    "RELAY_LEASE",
    "InboxRecord",
    "OutboxMessage",
    "OutboxRow",
    "OutboxStore",
    "inbox_from_columns",
    "outbox_store",
    "row_from_columns",
]
