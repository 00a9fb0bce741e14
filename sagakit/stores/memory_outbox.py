"""The memory store's outbox, inbox and relay lease (see :mod:`sagakit.stores.outbox`).

Kept beside the store's tables (one set per ``memory://NAME``), in a table of their own so
that the store's module stays about sagas. Every method completes at once: there is nothing to
commit, so an operation is atomic by running without an ``await``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..clock import Clock
from .base import JournalEntry, SagaUpdate, StateWrite
from .outbox import InboxRecord, OutboxMessage, OutboxRow

if TYPE_CHECKING:
    from .memory import _Tables


@dataclass
class _OutboxTables:
    rows: list[OutboxRow] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    inbox: dict[tuple[str, str], InboxRecord] = field(default_factory=dict)
    #: the relay lease: (owner, until)
    relay: tuple[str, float] | None = None
    next_position: int = 1


_by_tables: weakref.WeakKeyDictionary[object, _OutboxTables] = weakref.WeakKeyDictionary()


class MemoryOutbox:
    """Mixed into :class:`~sagakit.stores.memory.MemoryStore`."""

    on_outbox: Callable[[], None] | None = None

    if TYPE_CHECKING:  # provided by MemoryStore
        clock: Clock
        _t: _Tables

        def append(
            self,
            saga_id: str,
            fence: int,
            entry: JournalEntry | None,
            update: SagaUpdate | None = None,
            *,
            guard: int | None = None,
            state: Sequence[StateWrite] = (),
        ) -> asyncio.Future[None]: ...

    @property
    def _ob(self) -> _OutboxTables:
        tables = _by_tables.get(self._t)
        if tables is None:
            tables = _by_tables[self._t] = _OutboxTables()
        return tables

    def _insert(self, messages: Sequence[OutboxMessage]) -> bool:
        ob = self._ob
        added = False
        for message in messages:
            if message.key in ob.keys:
                continue
            ob.keys.add(message.key)
            ob.rows.append(OutboxRow(ob.next_position, message, self.clock.now(), None, 0))
            ob.next_position += 1
            added = True
        return added

    def _told(self) -> None:
        if self.on_outbox is not None:
            self.on_outbox()

    def append_outbox(
        self,
        saga_id: str,
        fence: int,
        entry: JournalEntry,
        messages: Sequence[OutboxMessage],
    ) -> asyncio.Future[None]:
        done = self.append(saga_id, fence, entry)
        if (not done.done() or done.exception() is None) and self._insert(messages):
            self._told()
        return done

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        if self._insert(messages):
            self._told()

    async def unpublished(self, limit: int = 100) -> list[OutboxRow]:
        return [r for r in self._ob.rows if r.published_at is None][:limit]

    async def mark_published(self, positions: Sequence[int]) -> None:
        wanted = set(positions)
        now = self.clock.now()
        ob = self._ob
        ob.rows = [
            replace(r, published_at=now, attempts=r.attempts + 1) if r.position in wanted else r
            for r in ob.rows
        ]

    async def mark_publish_failed(self, position: int, error: str) -> None:
        ob = self._ob
        ob.rows = [
            replace(r, attempts=r.attempts + 1, last_error=error) if r.position == position else r
            for r in ob.rows
        ]

    async def outbox_backlog(self) -> int:
        return sum(1 for r in self._ob.rows if r.published_at is None)

    async def saga_messages(self, saga_id: str) -> list[OutboxRow]:
        return [r for r in self._ob.rows if r.message.saga_id == saga_id]

    async def find_inbox(self, participant: str, message_id: str) -> InboxRecord | None:
        return self._ob.inbox.get((participant, message_id))

    async def record_inbox(
        self, record: InboxRecord, replies: Sequence[OutboxMessage]
    ) -> InboxRecord:
        key = (record.participant, record.message_id)
        found = self._ob.inbox.get(key)
        if found is not None:
            return found
        self._ob.inbox[key] = record
        if self._insert(replies):
            self._told()
        return record

    async def prune_messages(self, before: float, limit: int) -> tuple[int, int]:
        ob = self._ob
        old = [r for r in ob.rows if r.published_at is not None and r.published_at < before][:limit]
        gone = {r.position for r in old}
        ob.rows = [r for r in ob.rows if r.position not in gone]
        ob.keys.difference_update(r.message.key for r in old)
        stale = [k for k, r in ob.inbox.items() if r.processed_at < before][:limit]
        for key in stale:
            del ob.inbox[key]
        return len(old), len(stale)

    async def take_relay_lease(self, owner: str, seconds: float) -> bool:
        ob = self._ob
        now = self.clock.now()
        if ob.relay is not None and ob.relay[0] != owner and ob.relay[1] > now:
            return False
        ob.relay = (owner, now + seconds)
        return True
