"""An in-memory store for tests and examples. Nothing survives the process.

``memory://`` gives a fresh store per engine; ``memory://NAME`` gives the store called NAME,
shared by every engine of this process that names it (to test several workers without a file).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import EventsArrived, LeaseLost, TransactionsUnsupportedError
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
    NextRun,
    RunRecord,
    SagaEvent,
    SagaFilter,
    SagaFork,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    Served,
    StateWrite,
    StoreTransaction,
    audit_key,
    claim_keys,
    prunable_statuses,
    saga_scope,
    served_keys,
)
from .memory_outbox import MemoryOutbox
from .queueing import (
    QueueLimits,
    QueueLoad,
    QueueState,
    choose,
    queued_order,
    recent_by_partition,
)
from .scheduling import Schedule, ScheduleState

_ACTIVE = frozenset({*RUNNABLE_STATUSES, SagaStatus.SUSPENDED.value})
_ENDED = frozenset(s.value for s in SagaStatus if s.is_terminal)
_CLAIMABLE = _ACTIVE
#: a queued saga holds one of its queue's slots in these statuses
_HOLDS_SLOT = frozenset({SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value})
_STARTS_RUNNING = frozenset(
    {SagaStatus.QUEUED.value, SagaStatus.PENDING.value, SagaStatus.SUSPENDED.value}
)
#: a queued saga in these statuses takes a slot before it runs (once it is due: a RUNNING one
#: whose worker died gave its slot back when its lease expired)
_NEEDS_SLOT = _STARTS_RUNNING | _HOLDS_SLOT


class _Tables:
    def __init__(self) -> None:
        self.sagas: dict[str, SagaRecord] = {}
        self.journal: dict[str, dict[int, JournalEntry]] = {}
        #: the journals of each saga's earlier runs, by run number
        self.runs: dict[str, dict[int, list[JournalEntry]]] = {}
        #: each saga's earlier runs' rows (Store.load_runs), oldest first
        self.run_records: dict[str, list[RunRecord]] = {}
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
        #: each queue's declared limits and an operator's override
        self.queues: dict[str, tuple[QueueLimits, dict[str, Any]]] = {}
        #: when each queued saga first left its queue (what a rate limit counts)
        self.dequeued_at: dict[str, float] = {}
        #: cron schedules by name (see stores/scheduling.py)
        self.schedules: dict[str, ScheduleState] = {}

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


class MemoryStore(MemoryOutbox):
    """Implements :class:`~sagakit.stores.base.Store` with dictionaries."""

    def __init__(self, url: str = "memory://", *, clock: Clock | None = None):
        self.url = url
        #: what "now" is for leases, timers and timestamps (an Engine opening this store gives
        #: it its own clock when this one is the system's: see sagakit.clock)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.on_work: Callable[[], None] | None = None
        self.queue_retry_at: float | None = None
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
        if new.dedup_id is not None:
            for other in self._t.sagas.values():
                if (
                    other.queue == new.queue
                    and other.dedup_id == new.dedup_id
                    and other.status not in _ENDED
                ):
                    return CreateResult(False, other)
        now = self.clock.now()
        self._t.arrival[new.saga_id] = len(self._t.arrival) + 1
        owner = new.owner if self._t.is_head(new.saga_id, new.object_key) else None
        if new.queue is not None or new.not_before is not None:
            owner = None
        if new.queue is not None:
            status = SagaStatus.QUEUED
        else:
            status = SagaStatus.RUNNING if owner else SagaStatus.PENDING
        record = SagaRecord(
            saga_id=new.saga_id,
            name=new.name,
            status=status.value,
            input=new.input,
            output=None,
            error=None,
            owner=owner,
            fence=1,
            lease_expires_at=now + new.lease_seconds if owner else (new.not_before or 0.0),
            created_at=now,
            updated_at=now,
            object_key=new.object_key,
            parent_id=new.parent_id,
            version=new.version or None,
            queue=new.queue,
            priority=new.priority,
            partition_key=new.partition_key or None,
            dedup_id=new.dedup_id,
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
        changes: dict[str, object] = {"updated_at": self.clock.now()}
        if update is not None:
            changes.update(_changes(update))
        self._t.sagas[saga_id] = replace(record, **changes)  # type: ignore[arg-type]
        finished = update is not None and SagaStatus(update.status or record.status).is_terminal
        if record.object_key and finished:
            self._notify_all()  # the next saga of this object key may run now
        done.set_result(None)
        return done

    async def begin(self, saga_id: str, fence: int) -> StoreTransaction:
        # a fake connection would let a test pass that no real database would run
        raise TransactionsUnsupportedError(
            f"saga {saga_id!r} runs a transactional step, which needs a database: the memory "
            "store has none; use a SQLite file (Engine('sqlite:///app.db'); in tests a "
            "temporary file, or SagaTestEnvironment(store='sqlite')) or PostgreSQL"
        )

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
        now = self.clock.now()
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

    async def load_run(self, saga_id: str, run: int) -> list[JournalEntry]:
        return list(self._t.runs.get(saga_id, {}).get(run, []))

    async def load_runs(
        self, saga_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[RunRecord]:
        found = self._t.run_records.get(saga_id, [])
        return [r for r in reversed(found) if before is None or r.run < before][: max(0, limit)]

    async def continue_as_new(self, cont: NextRun) -> None:
        record = self._t.sagas.get(cont.saga_id)
        if record is not None and (record.fence, record.run) == (cont.fence + 1, cont.run + 1):
            return  # continued already: a retry
        if record is None or (record.fence, record.run) != (cont.fence, cont.run):
            raise LeaseLost(cont.saga_id)
        journal = self._t.journal[cont.saga_id]
        kept = [e for e in journal.values() if e.seq >= 0]
        started = min((e.started_at for e in kept), default=None)
        ended = self.clock.now()
        row = RunRecord(cont.run, record.input, record.version, len(kept), started, ended)
        self._t.run_records.setdefault(cont.saga_id, []).append(row)
        self._t.runs.setdefault(cont.saga_id, {})[cont.run] = [journal[k] for k in sorted(journal)]
        self._t.journal[cont.saga_id] = {}
        consumed = set(cont.consumed)
        events = self._t.events[cont.saga_id]
        self._t.events[cont.saga_id] = [e for e in events if e.seq not in consumed]
        self._t.sagas[cont.saga_id] = replace(
            record,
            input=cont.input,
            version=cont.version,
            fence=cont.fence + 1,
            run=cont.run + 1,
            updated_at=self.clock.now(),
        )

    async def renew_leases(self, owner: str, lease_seconds: float, saga_ids: Sequence[str]) -> int:
        until = self.clock.now() + lease_seconds
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
        now = self.clock.now()
        keys = claim_keys(names)
        any_version = {name for name, version in keys if version is None}
        wanted = {key for key in keys if key[1] is not None}

        def served(record: SagaRecord) -> bool:
            return record.name in any_version or (record.name, record.version or "") in wanted

        claimed: list[ClaimedSaga] = []
        candidates = sorted(self._t.sagas.values(), key=lambda r: r.lease_expires_at)
        for record in candidates:
            if len(claimed) >= limit:
                break
            if (
                record.status in _CLAIMABLE
                and record.queue is None
                and served(record)
                and record.lease_expires_at < now
                and self._t.is_head(record.saga_id, record.object_key)
            ):
                claimed.append(self._take(record, owner, lease_seconds, now))
        self.queue_retry_at = None
        if len(claimed) < limit:
            claimed += self._claim_queued(owner, served, lease_seconds, limit - len(claimed), now)
        return claimed

    def _take(
        self, record: SagaRecord, owner: str, lease_seconds: float, now: float
    ) -> ClaimedSaga:
        status = SagaStatus.RUNNING.value if record.status in _STARTS_RUNNING else record.status
        if record.status == SagaStatus.QUEUED:
            self._t.dequeued_at[record.saga_id] = now
        taken = replace(
            record,
            owner=owner,
            fence=record.fence + 1,
            status=status,
            lease_expires_at=now + lease_seconds,
            updated_at=now,
        )
        self._t.sagas[record.saga_id] = taken
        journal = sorted(self._t.journal[record.saga_id].values(), key=lambda e: e.seq)
        events = list(self._t.events.get(record.saga_id, []))
        return ClaimedSaga(taken, journal, record.owner is not None, events)

    def _claim_queued(
        self,
        owner: str,
        served: Callable[[SagaRecord], bool],
        lease_seconds: float,
        limit: int,
        now: float,
    ) -> list[ClaimedSaga]:
        """Start queued sagas (and resume queued ones due again) as their queues allow."""
        waiting: dict[str, list[SagaRecord]] = {}
        for record in self._t.sagas.values():
            if (
                record.queue is not None
                and record.status in _NEEDS_SLOT
                and record.lease_expires_at < now
                and served(record)
            ):
                waiting.setdefault(record.queue, []).append(record)
        claimed: list[ClaimedSaga] = []
        for queue, records in sorted(waiting.items()):
            if len(claimed) >= limit:
                break
            load = self._load(queue, records, owner, now)
            choice = choose(load, limit - len(claimed), now)
            if choice.retry_at is not None:
                self.queue_retry_at = min(self.queue_retry_at or choice.retry_at, choice.retry_at)
            for saga_id in choice.saga_ids:
                claimed.append(self._take(self._t.sagas[saga_id], owner, lease_seconds, now))
        return claimed

    def _load(self, queue: str, records: list[SagaRecord], owner: str, now: float) -> QueueLoad:
        limits = self._state(queue).limits
        rows = [
            (
                r.saga_id,
                r.partition_key or "",
                r.status,
                r.priority,
                r.created_at + self._t.arrival[r.saga_id] * 1e-9,
                r.lease_expires_at,
            )
            for r in records
        ]
        load = QueueLoad(limits, queued_order(rows))
        members = [r for r in self._t.sagas.values() if r.queue == queue]
        for r in members:
            if r.status in _HOLDS_SLOT and r.lease_expires_at >= now:
                key = r.partition_key or ""
                load.running[key] = load.running.get(key, 0) + 1
                load.mine += r.owner == owner
            started = self._t.dequeued_at.get(r.saga_id)
            if started is not None:
                key = r.partition_key or ""
                load.last_start[key] = max(load.last_start.get(key, started), started)
        if limits.rate_per is not None:
            window = now - limits.rate_per
            load.recent_starts = recent_by_partition(
                [
                    (r.partition_key or "", self._t.dequeued_at[r.saga_id])
                    for r in members
                    if self._t.dequeued_at.get(r.saga_id, -1.0) > window
                ]
            )
        return load

    async def declare_queue(self, name: str, limits: QueueLimits) -> None:
        _, override = self._t.queues.get(name, (limits, {}))
        self._t.queues[name] = (limits, override)

    async def set_queue_override(
        self, name: str, changes: dict[str, Any] | None
    ) -> QueueState | None:
        if name not in self._t.queues:
            return None
        declared, override = self._t.queues[name]
        self._t.queues[name] = (declared, {} if changes is None else {**override, **changes})
        self._notify_all()
        return self._state(name)

    async def list_queues(self) -> list[QueueState]:
        return [self._state(name) for name in sorted(self._t.queues)]

    def _state(self, name: str) -> QueueState:
        declared, override = self._t.queues.get(name, (QueueLimits(), {}))
        state = QueueState(name, declared, dict(override))
        members = [r for r in self._t.sagas.values() if r.queue == name]
        now = self.clock.now()
        queued = [r for r in members if r.status == SagaStatus.QUEUED]
        limits = state.limits
        window = now - limits.rate_per if limits.rate_per is not None else None
        return replace(
            state,
            queued=len(queued),
            delayed=sum(r.lease_expires_at > now for r in queued),
            running=sum(r.status in _HOLDS_SLOT and r.lease_expires_at >= now for r in members),
            recent_starts=0
            if window is None
            else sum(self._t.dequeued_at.get(r.saga_id, -1.0) > window for r in members),
            oldest_queued_at=min((r.created_at for r in queued), default=None),
        )

    async def queue_position(self, saga_id: str) -> int | None:
        record = self._t.sagas.get(saga_id)
        if record is None or record.status != SagaStatus.QUEUED:
            return None
        ahead = [
            r
            for r in self._t.sagas.values()
            if r.queue == record.queue
            and r.partition_key == record.partition_key
            and r.status == SagaStatus.QUEUED
            and (r.priority, r.created_at, self._t.arrival[r.saga_id])
            < (record.priority, record.created_at, self._t.arrival[saga_id])
        ]
        return len(ahead) + 1

    # -- schedules (see scheduling.py) -------------------------------------------------------

    async def declare_schedule(self, schedule: Schedule, now: float) -> None:
        known = self._t.schedules.get(schedule.name)
        if known is None:
            known = ScheduleState(
                **asdict(schedule),
                paused=False,
                last_tick=None,
                fire_from=now,
                created_at=now,
                updated_at=now,
            )
        elif (known.cron, known.timezone) != (schedule.cron, schedule.timezone):
            known = replace(known, fire_from=now)  # ticks of a new cron count from now
        self._t.schedules[schedule.name] = replace(known, **asdict(schedule), updated_at=now)

    async def due_schedules(self, names: Sequence[str], now: float) -> list[ScheduleState]:
        found = [self._t.schedules.get(name) for name in sorted(names)]
        return [s for s in found if s is not None and not s.paused and s.fire_from <= now]

    async def fire_schedule(
        self,
        name: str,
        expect: float,
        fire_from: float,
        tick: float | None,
        saga: NewSaga | None,
    ) -> bool:
        known = self._t.schedules.get(name)
        if known is None or known.paused or known.fire_from != expect:
            return False
        last = known.last_tick if tick is None else tick
        self._t.schedules[name] = replace(known, fire_from=fire_from, last_tick=last)
        if saga is not None:
            await self.create_saga(saga)
            self._notify_all()
        return True

    async def list_schedules(self) -> list[ScheduleState]:
        return [self._t.schedules[name] for name in sorted(self._t.schedules)]

    async def set_schedule_paused(
        self, name: str, paused: bool, now: float
    ) -> ScheduleState | None:
        known = self._t.schedules.get(name)
        if known is None:
            return None
        if known.paused and not paused:  # ticks that fell while paused are passed over
            known = replace(known, fire_from=max(known.fire_from, now))
        self._t.schedules[name] = replace(known, paused=paused, updated_at=now)
        return self._t.schedules[name]

    async def heartbeat(
        self, worker_id: str, served: Sequence[Served], lease_seconds: float
    ) -> None:
        self._t.workers[worker_id] = (served_keys(served), self.clock.now(), lease_seconds)

    async def forget_worker(self, worker_id: str) -> None:
        self._t.workers.pop(worker_id, None)

    def _stranded(self) -> list[SagaRecord]:
        now = self.clock.now()
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

    async def count_sagas(self, where: SagaFilter) -> int:
        where = replace(where, after=None)
        return sum(1 for r in self._t.sagas.values() if _matches(r, where))

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
            updated_at=self.clock.now(),
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
        now = self.clock.now()
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
        self._t.runs.pop(saga_id, None)
        self._t.run_records.pop(saga_id, None)
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
    if where.searches and not _searched(record, where):
        return False
    return where.after is None or (record.created_at, record.saga_id) < where.after


def _searched(record: SagaRecord, where: SagaFilter) -> bool:
    """The operator's search conditions of ``where`` (as the SQL stores' search modules)."""
    if where.id_prefix is not None and not record.saga_id.startswith(where.id_prefix):
        return False
    if where.statuses is not None and record.status not in where.statuses:
        return False
    if where.updated_before is not None and record.updated_at >= where.updated_before:
        return False
    if where.due_before is not None and record.lease_expires_at >= where.due_before:
        return False
    return all(
        match.matches(record.input if match.source == "input" else record.output)
        for match in where.where
    )


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
