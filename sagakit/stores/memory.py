"""An in-memory store for tests and examples. Nothing survives the process.

``memory://`` gives a fresh store per engine; ``memory://NAME`` gives the store called NAME,
shared by every engine of this process that names it (to test several workers without a file).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..errors import EventsArrived, LeaseLost
from .base import (
    LIVE_LEASES,
    NEVER,
    RUNNABLE_STATUSES,
    AdminChange,
    ClaimedSaga,
    CreateResult,
    Delivery,
    DeliveryOutcome,
    JournalEntry,
    NewSaga,
    SagaEvent,
    SagaFilter,
    SagaFork,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    Served,
    StateWrite,
    audit_key,
    claim_keys,
    prunable_statuses,
    saga_scope,
    served_keys,
)

_ACTIVE = frozenset({*RUNNABLE_STATUSES, SagaStatus.SUSPENDED.value})
_ENDED = frozenset(s.value for s in SagaStatus if s.is_terminal)
_CLAIMABLE = _ACTIVE


class _Tables:
    def __init__(self) -> None:
        self.sagas: dict[str, SagaRecord] = {}
        self.journal: dict[str, dict[int, JournalEntry]] = {}
        self.events: dict[str, list[SagaEvent]] = {}
        self.state: dict[str, dict[str, str]] = {}
        self.arrival: dict[str, int] = {}
        #: the delivery keys each saga's events were stored with
        self.delivery_keys: dict[str, set[str]] = {}
        #: each worker's heartbeat: the (name, stored version) pairs it serves, when it was last
        #: seen, and its lease
        self.workers: dict[str, tuple[list[tuple[str, str]], float, float]] = {}
        #: the on_work callbacks of every store open on these tables (the "other processes")
        self.listeners: list[MemoryStore] = []

    def is_head(self, saga_id: str, object_key: str | None) -> bool:
        """No unfinished saga of the same object key arrived before this one."""
        if object_key is None:
            return True
        mine = self.arrival[saga_id]
        return not any(
            r.object_key == object_key
            and self.arrival[r.saga_id] < mine
            and not SagaStatus(r.status).is_terminal
            for r in self.sagas.values()
        )


_named: dict[str, _Tables] = {}


class MemoryStore:
    """Implements :class:`~sagakit.stores.base.Store` with dictionaries."""

    def __init__(self, url: str = "memory://"):
        self.url = url
        self.on_work: Callable[[], None] | None = None
        name = url.removeprefix("memory://")
        if name:
            self._t = _named.setdefault(name, _Tables())
        else:
            self._t = _Tables()

    async def open(self) -> None:
        if self not in self._t.listeners:
            self._t.listeners.append(self)

    async def close(self, timeout: float | None = None) -> None:
        if self in self._t.listeners:
            self._t.listeners.remove(self)

    async def create_saga(self, new: NewSaga) -> CreateResult:
        existing = self._t.sagas.get(new.saga_id)
        if existing is not None:
            return CreateResult(False, existing)
        now = time.time()
        self._t.arrival[new.saga_id] = len(self._t.arrival) + 1
        owner = new.owner if self._t.is_head(new.saga_id, new.object_key) else None
        record = SagaRecord(
            saga_id=new.saga_id,
            name=new.name,
            status=(SagaStatus.RUNNING if owner else SagaStatus.PENDING).value,
            input=new.input,
            output=None,
            error=None,
            owner=owner,
            fence=1,
            lease_expires_at=now + new.lease_seconds if owner else 0.0,
            created_at=now,
            updated_at=now,
            object_key=new.object_key,
            parent_id=new.parent_id,
            version=new.version or None,
        )
        self._t.sagas[new.saga_id] = record
        self._t.journal[new.saga_id] = {}
        self._t.events[new.saga_id] = []
        return CreateResult(True, record)

    def append(
        self,
        saga_id: str,
        fence: int,
        entry: JournalEntry | None,
        update: SagaUpdate | None = None,
        *,
        guard: int | None = None,
        state: Sequence[StateWrite] = (),
    ) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        record = self._t.sagas.get(saga_id)
        if record is None or record.fence != fence:
            done.set_exception(LeaseLost(saga_id))
            return done
        if guard is not None and record.event_count != guard:
            done.set_exception(EventsArrived(saga_id))
            return done
        if entry is not None:
            self._t.journal[saga_id][entry.seq] = entry
        for write in state:
            scope = self._t.state.setdefault(write.scope, {})
            if write.value is None:
                scope.pop(write.key, None)
            else:
                scope[write.key] = write.value
        changes: dict[str, object] = {"updated_at": time.time()}
        if update is not None:
            changes.update(_changes(update))
        self._t.sagas[saga_id] = replace(record, **changes)  # type: ignore[arg-type]
        finished = update is not None and SagaStatus(update.status or record.status).is_terminal
        if record.object_key and finished:
            self._notify_all()  # the next saga of this object key may run now
        done.set_result(None)
        return done

    async def deliver(
        self,
        saga_id: str,
        kind: str,
        name: str,
        payload: str,
        *,
        token: str | None = None,
        unique: bool = False,
        key: str | None = None,
    ) -> Delivery:
        record = self._t.sagas.get(saga_id)
        if record is None:
            return Delivery(DeliveryOutcome.NOT_FOUND)
        events = self._t.events[saga_id]
        keys = self._t.delivery_keys.setdefault(saga_id, set())
        if key is not None and key in keys:
            return Delivery(DeliveryOutcome.DELIVERED, record.status)
        if unique:
            for event in events:
                if event.kind == kind and event.name == name:
                    return Delivery(DeliveryOutcome.DUPLICATE, record.status, event.payload)
        if SagaStatus(record.status).is_terminal:
            return Delivery(DeliveryOutcome.FINISHED, record.status)
        if token is not None and record.wait_token != token:
            return Delivery(DeliveryOutcome.STALE, record.status)
        now = time.time()
        count = record.event_count + 1
        events.append(SagaEvent(saga_id, count, kind, name, payload, now))
        if key is not None:
            keys.add(key)
        changes: dict[str, object] = {"event_count": count}
        if token is not None:
            changes["wait_token"] = None  # a token answers once
        if record.status == SagaStatus.SUSPENDED:
            changes["lease_expires_at"] = 0.0
        self._t.sagas[saga_id] = replace(record, **changes)  # type: ignore[arg-type]
        if record.status == SagaStatus.SUSPENDED:
            self._notify_all()
        return Delivery(DeliveryOutcome.DELIVERED, record.status)

    async def load_events(self, saga_id: str, after: int = 0) -> list[SagaEvent]:
        return [e for e in self._t.events.get(saga_id, []) if e.seq > after]

    async def load_state(self, scope: str) -> dict[str, str]:
        return dict(self._t.state.get(scope, {}))

    def _notify_all(self) -> None:
        for store in self._t.listeners:
            if store.on_work is not None:
                store.on_work()

    async def load_saga(self, saga_id: str) -> SagaRecord | None:
        return self._t.sagas.get(saga_id)

    async def load_journal(self, saga_id: str) -> list[JournalEntry]:
        entries = self._t.journal.get(saga_id, {})
        return [entries[k] for k in sorted(entries)]

    async def renew_leases(self, owner: str, lease_seconds: float, saga_ids: Sequence[str]) -> int:
        until = time.time() + lease_seconds
        count = 0
        for saga_id in set(saga_ids):
            record = self._t.sagas.get(saga_id)
            if record is not None and record.owner == owner and record.status in _ACTIVE:
                self._t.sagas[saga_id] = replace(record, lease_expires_at=until)
                count += 1
        return count

    async def claim(
        self, owner: str, names: Sequence[str | Served], lease_seconds: float, limit: int
    ) -> list[ClaimedSaga]:
        now = time.time()
        keys = claim_keys(names)
        any_version = {name for name, version in keys if version is None}
        wanted = {key for key in keys if key[1] is not None}
        claimed: list[ClaimedSaga] = []
        candidates = sorted(self._t.sagas.values(), key=lambda r: r.lease_expires_at)
        for record in candidates:
            if len(claimed) >= limit:
                break
            if (
                record.status in _CLAIMABLE
                and (record.name in any_version or (record.name, record.version or "") in wanted)
                and record.lease_expires_at < now
                and self._t.is_head(record.saga_id, record.object_key)
            ):
                status = (
                    SagaStatus.RUNNING.value
                    if record.status in (SagaStatus.PENDING.value, SagaStatus.SUSPENDED.value)
                    else record.status
                )
                taken = replace(
                    record,
                    owner=owner,
                    fence=record.fence + 1,
                    status=status,
                    lease_expires_at=now + lease_seconds,
                    updated_at=now,
                )
                self._t.sagas[record.saga_id] = taken
                journal = await self.load_journal(record.saga_id)
                events = list(self._t.events.get(record.saga_id, []))
                claimed.append(ClaimedSaga(taken, journal, record.owner is not None, events))
        return claimed

    async def heartbeat(
        self, worker_id: str, served: Sequence[Served], lease_seconds: float
    ) -> None:
        self._t.workers[worker_id] = (served_keys(served), time.time(), lease_seconds)

    async def forget_worker(self, worker_id: str) -> None:
        self._t.workers.pop(worker_id, None)

    def _stranded(self) -> list[SagaRecord]:
        now = time.time()
        served = {
            key
            for keys, seen, lease in self._t.workers.values()
            if seen + LIVE_LEASES * lease >= now
            for key in keys
        }
        rows = [
            r
            for r in self._t.sagas.values()
            if not SagaStatus(r.status).is_terminal and (r.name, r.version or "") not in served
        ]
        rows.sort(key=lambda r: (r.created_at, r.saga_id), reverse=True)
        return rows

    async def list_stranded(self, limit: int = 50) -> list[SagaRecord]:
        return self._stranded()[:limit]

    async def count_stranded(self) -> int:
        return len(self._stranded())

    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        for saga_id in saga_ids:
            record = self._t.sagas.get(saga_id)
            if record is not None and record.owner == owner:
                self._t.sagas[saga_id] = replace(record, owner=None, lease_expires_at=0.0)

    async def list_sagas(self, where: SagaFilter, limit: int = 50) -> list[SagaRecord]:
        rows = [r for r in self._t.sagas.values() if _matches(r, where)]
        rows.sort(key=lambda r: (r.created_at, r.saga_id), reverse=True)
        return rows[:limit]

    async def count_by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self._t.sagas.values():
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts

    async def administer(self, change: AdminChange) -> SagaRecord | None:
        record = self._t.sagas.get(change.saga_id)
        if change.key is not None and record is not None:
            journal_now = self._t.journal[change.saga_id]
            if any(audit_key(e) == change.key for s, e in journal_now.items() if s < 0):
                return record  # applied already
        if (
            record is None
            or record.status != change.expect_status
            or record.fence != change.expect_fence
        ):
            return None
        journal = self._t.journal[change.saga_id]
        for seq in change.delete:
            journal.pop(seq, None)
        for entry in change.replace:
            journal[entry.seq] = entry
        audit_seq = min(0, *journal) - 1 if journal else -1
        journal[audit_seq] = replace(change.audit, seq=audit_seq)
        updated = replace(
            record,
            status=change.status,
            output=change.output,
            error=change.error,
            owner=None,
            fence=record.fence + 1,
            lease_expires_at=0.0 if SagaStatus(change.status).is_terminal else change.due_at,
            wait_token=change.wait_token,
            updated_at=time.time(),
        )
        self._t.sagas[change.saga_id] = updated
        for saga_id, kind, name, payload in change.tell:
            await self.deliver(saga_id, kind, name, payload, unique=True)
        self._notify_all()
        return self._t.sagas[change.saga_id]

    async def fork_saga(self, fork: SagaFork) -> SagaRecord | None:
        new = fork.new
        existing = self._t.sagas.get(new.saga_id)
        if existing is not None:
            journal = self._t.journal.get(new.saga_id, {})
            made = any(audit_key(e) == fork.key for s, e in journal.items() if s < 0)
            return existing if made else None
        source = self._t.sagas.get(fork.source_id)
        if source is None:
            return None
        now = time.time()
        self._t.arrival[new.saga_id] = len(self._t.arrival) + 1
        events = [e for e in self._t.events.get(fork.source_id, []) if e.seq <= fork.events_upto]
        record = SagaRecord(
            saga_id=new.saga_id,
            name=new.name,
            status=SagaStatus.PENDING.value,
            input=new.input,
            output=None,
            error=None,
            owner=None,
            fence=1,
            lease_expires_at=0.0,
            created_at=now,
            updated_at=now,
            event_count=len(events),
            version=new.version,
        )
        self._t.sagas[new.saga_id] = record
        journal = {e.seq: e for e in fork.entries}
        journal[-1] = replace(fork.audit, seq=-1)
        self._t.journal[new.saga_id] = journal
        self._t.events[new.saga_id] = [replace(e, saga_id=new.saga_id) for e in events]
        for write in fork.state:
            if write.value is not None:
                self._t.state.setdefault(write.scope, {})[write.key] = write.value
        source_journal = self._t.journal[fork.source_id]
        audit_seq = min(0, *source_journal) - 1 if source_journal else -1
        source_journal[audit_seq] = replace(fork.source_audit, seq=audit_seq)
        self._notify_all()
        return record

    async def delete_saga(self, saga_id: str) -> bool:
        record = self._t.sagas.get(saga_id)
        if record is None or not SagaStatus(record.status).is_terminal:
            return False
        del self._t.sagas[saga_id]
        self._t.journal.pop(saga_id, None)
        self._t.events.pop(saga_id, None)
        self._t.delivery_keys.pop(saga_id, None)
        self._t.state.pop(saga_scope(saga_id), None)
        # its arrival number stays taken: numbers are handed out by count (see create_saga)
        return True

    async def prune(
        self, ended_before: float, statuses: Sequence[str] | None = None, limit: int = 500
    ) -> list[str]:
        chosen = self._prunable(ended_before, statuses)[: max(0, limit)]
        for saga_id in chosen:
            await self.delete_saga(saga_id)
        return chosen

    async def count_prunable(
        self, ended_before: float, statuses: Sequence[str] | None = None
    ) -> int:
        return len(self._prunable(ended_before, statuses))

    def _prunable(self, ended_before: float, statuses: Sequence[str] | None) -> list[str]:
        wanted = set(prunable_statuses(statuses))
        live = {r.saga_id for r in self._t.sagas.values() if r.status not in _ENDED}
        live_parents = {
            r.parent_id for r in self._t.sagas.values() if r.saga_id in live and r.parent_id
        }
        return [
            r.saga_id
            for r in self._t.sagas.values()
            if r.status in wanted
            and r.updated_at < ended_before
            and r.parent_id not in live
            and r.saga_id not in live_parents
        ]


def _matches(record: SagaRecord, where: SagaFilter) -> bool:
    if where.status is not None and record.status != where.status:
        return False
    if where.name is not None and record.name != where.name:
        return False
    if where.created_after is not None and record.created_at < where.created_after:
        return False
    if where.created_before is not None and record.created_at >= where.created_before:
        return False
    if where.parent_id is not None and record.parent_id != where.parent_id:
        return False
    return where.after is None or (record.created_at, record.saga_id) < where.after


def _changes(update: SagaUpdate) -> dict[str, object]:
    """The row changes a SagaUpdate makes (as the SQL stores make them)."""
    changes: dict[str, object] = {}
    if update.status is not None:
        changes["status"] = update.status
        if SagaStatus(update.status).is_terminal:
            changes["owner"] = None
            changes["lease_expires_at"] = 0.0
            changes["wait_token"] = None
        elif update.status == SagaStatus.SUSPENDED:
            changes["owner"] = None
            changes["lease_expires_at"] = NEVER if update.wake_at is None else update.wake_at
            changes["wait_token"] = update.wait_token
        elif update.status == SagaStatus.PARKED:
            changes["owner"] = None
            changes["lease_expires_at"] = NEVER
            changes["wait_token"] = None
    if update.output is not None:
        changes["output"] = update.output
    if update.error is not None:
        changes["error"] = update.error
    if update.clear_wait:
        changes["wait_token"] = None
    return changes
