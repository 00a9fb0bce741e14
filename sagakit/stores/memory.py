"""An in-memory store for tests and examples. Nothing survives the process.

``memory://`` gives a fresh store per engine; ``memory://NAME`` gives the store called NAME,
shared by every engine of this process that names it (to test several workers without a file).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..errors import LeaseLost
from .base import (
    RUNNABLE_STATUSES,
    ClaimedSaga,
    CreateResult,
    JournalEntry,
    NewSaga,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
)

_ACTIVE = frozenset({*RUNNABLE_STATUSES, SagaStatus.SUSPENDED.value})


class _Tables:
    def __init__(self) -> None:
        self.sagas: dict[str, SagaRecord] = {}
        self.journal: dict[str, dict[int, JournalEntry]] = {}


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
        return None

    async def close(self) -> None:
        return None

    async def create_saga(self, new: NewSaga) -> CreateResult:
        existing = self._t.sagas.get(new.saga_id)
        if existing is not None:
            return CreateResult(False, existing)
        now = time.time()
        record = SagaRecord(
            saga_id=new.saga_id,
            name=new.name,
            status=(SagaStatus.RUNNING if new.owner else SagaStatus.PENDING).value,
            input=new.input,
            output=None,
            error=None,
            owner=new.owner,
            fence=1,
            lease_expires_at=now + new.lease_seconds if new.owner else 0.0,
            created_at=now,
            updated_at=now,
        )
        self._t.sagas[new.saga_id] = record
        self._t.journal[new.saga_id] = {}
        return CreateResult(True, record)

    def append(
        self,
        saga_id: str,
        fence: int,
        entry: JournalEntry | None,
        update: SagaUpdate | None = None,
    ) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        record = self._t.sagas.get(saga_id)
        if record is None or record.fence != fence:
            done.set_exception(LeaseLost(saga_id))
            return done
        if entry is not None:
            self._t.journal[saga_id][entry.seq] = entry
        changes: dict[str, object] = {"updated_at": time.time()}
        if update is not None:
            changes["status"] = update.status
            if update.output is not None:
                changes["output"] = update.output
            if update.error is not None:
                changes["error"] = update.error
            if SagaStatus(update.status).is_terminal:
                changes["owner"] = None
                changes["lease_expires_at"] = 0.0
        self._t.sagas[saga_id] = replace(record, **changes)  # type: ignore[arg-type]
        done.set_result(None)
        return done

    async def load_saga(self, saga_id: str) -> SagaRecord | None:
        return self._t.sagas.get(saga_id)

    async def load_journal(self, saga_id: str) -> list[JournalEntry]:
        entries = self._t.journal.get(saga_id, {})
        return [entries[k] for k in sorted(entries)]

    async def renew_leases(self, owner: str, lease_seconds: float) -> int:
        until = time.time() + lease_seconds
        count = 0
        for saga_id, record in list(self._t.sagas.items()):
            if record.owner == owner and record.status in _ACTIVE:
                self._t.sagas[saga_id] = replace(record, lease_expires_at=until)
                count += 1
        return count

    async def claim(
        self, owner: str, names: Sequence[str], lease_seconds: float, limit: int
    ) -> list[ClaimedSaga]:
        now = time.time()
        wanted = set(names)
        claimed: list[ClaimedSaga] = []
        candidates = sorted(self._t.sagas.values(), key=lambda r: r.lease_expires_at)
        for record in candidates:
            if len(claimed) >= limit:
                break
            if (
                record.status in RUNNABLE_STATUSES
                and record.name in wanted
                and record.lease_expires_at < now
            ):
                status = (
                    SagaStatus.RUNNING.value
                    if record.status == SagaStatus.PENDING.value
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
                claimed.append(ClaimedSaga(taken, journal, record.owner is not None))
        return claimed

    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        for saga_id in saga_ids:
            record = self._t.sagas.get(saga_id)
            if record is not None and record.owner == owner:
                self._t.sagas[saga_id] = replace(record, owner=None, lease_expires_at=0.0)

    async def list_sagas(
        self, status: str | None = None, name: str | None = None, limit: int = 50
    ) -> list[SagaRecord]:
        rows = [
            r
            for r in self._t.sagas.values()
            if (status is None or r.status == status) and (name is None or r.name == name)
        ]
        rows.sort(key=lambda r: (r.created_at, r.saga_id), reverse=True)
        return rows[:limit]
