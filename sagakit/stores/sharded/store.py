"""ShardedStore: one Store over several databases of one kind, sagas placed by a hash.

The engine, its workers, the CLI and the dashboard talk to it through the Store protocol and
see one database. Each call goes where its data is:

* by saga id (load, append, deliver, begin, administer, delete, continue...): to the shard that
  holds the saga (:mod:`.routing`: its placement first, then the others; what was learnt is
  remembered, so a saga's own writes never look). A fenced append goes to exactly that shard:
  on any other it would be refused (LeaseLost) and write nothing.
* by name: a queue and a schedule to the shard of their name (:mod:`.placement`).
* to every shard at once (:mod:`.fanout`): claim (the limit split, the first shard rotating),
  lease renewals grouped by shard, heartbeats, lists merged in the stores' order, counts
  summed, pruning.

What does not hold across shards is in docs/sharding.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ...errors import LeaseLost, StoreError
from ...urls import redact_url
from ..base import (
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
    SagaUpdate,
    Served,
    StateWrite,
    Store,
    StoreTransaction,
)
from ..queueing import QueueLimits, QueueState
from ..scheduling import Schedule, ScheduleState
from .fanout import (
    fill,
    gather_available,
    gather_shards,
    merge_newest,
    named,
    unless_all_failed,
)
from .placement import scope_key, shard_for, shard_of_saga
from .routing import DEFAULT_CACHE_SIZE, Router
from .urls import check_shard_urls, shard_urls, sharded_url

__all__ = ["ShardedStore"]

_SAGA_SCOPE = "saga:"

#: an append waiting for its saga's shard to be looked up: its future and its arguments
_Waiting = tuple[
    "asyncio.Future[None]",
    int,
    JournalEntry | None,
    SagaUpdate | None,
    int | None,
    tuple[StateWrite, ...],
]


class ShardedStore:
    """A :class:`~sagakit.stores.base.Store` over a fixed list of PostgreSQL databases (or
    SQLite files), each saga on one of them.

    ``ShardedStore(["postgresql://h/a", "postgresql://h/b"])``, or the URL
    ``"shards:postgresql://h/a postgresql://h/b"`` wherever a store URL is taken
    (``Engine(url)``, ``sagakit --db``, ``SAGAKIT_DB``). The list is the shards' numbering,
    which decides where each saga lives: it is fixed once sagas are written (adding a shard
    needs a migration that moves sagas, which is not built). See docs/sharding.md.

    Args:
        urls: two or more store URLs of one kind, each a database of its own.
        migrate, read_only, schema: as :func:`~sagakit.stores.open_store`, for every shard.
        cache_size: how many saga ids this process remembers the shard of.
    """

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        migrate: bool | None = None,
        read_only: bool = False,
        schema: str | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ):
        from .. import open_store  # the stores' package imports this one

        if isinstance(urls, str):
            listed = shard_urls(urls)
        else:
            listed = list(urls)
            check_shard_urls(listed)
        self.url = sharded_url(listed)
        self.urls = listed
        count = len(listed)
        labels = [f"shard {i} of {count} ({redact_url(u)})" for i, u in enumerate(listed)]
        shards = [
            open_store(u, migrate=migrate, read_only=read_only, schema=schema) for u in listed
        ]
        self._router = Router(shards, labels, cache_size)
        self.queue_retry_at: float | None = None
        self._on_work: Callable[[], None] | None = None
        self._claim_start = 0
        self._prune_start = 0
        self._waiting: dict[str, list[_Waiting]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the shards ---------------------------------------------------------------------------

    @property
    def shards(self) -> list[Store]:
        """The shards' stores, in the list's order."""
        return list(self._router.shards)

    def _labels(self, indexes: Sequence[int]) -> list[str]:
        return [self._router.labels[i] for i in indexes]

    async def _each(self, call: Callable[[Store], Any]) -> list[Any]:
        """``call(shard)`` on every shard at once; the answers in shard order."""
        shards = self._router.shards
        return await gather_shards(self._router.labels, [call(s) for s in shards])

    async def _on(self, shard: int, call: Callable[[Store], Any]) -> Any:
        try:
            return await call(self._router.shards[shard])
        except StoreError as exc:
            raise named(self._router.labels[shard], exc) from exc

    @property
    def on_work(self) -> Callable[[], None] | None:
        return self._on_work

    @on_work.setter
    def on_work(self, callback: Callable[[], None] | None) -> None:
        self._on_work = callback
        for shard in self._router.shards:
            shard.on_work = callback

    @property
    def applied_migrations(self) -> list[str]:
        """The migrations the last open applied, each named with its shard (``sagakit
        migrate``)."""
        return [
            f"{label}: {name}"
            for label, shard in zip(self._router.labels, self._router.shards, strict=True)
            for name in getattr(shard, "applied_migrations", [])
        ]

    async def pending_migrations(self) -> list[tuple[str, str]]:
        """The migration scripts each shard lacks, named with their shard (``sagakit migrate
        --dry-run``)."""

        async def pending(shard: Store) -> list[tuple[str, str]]:
            found = getattr(shard, "pending_migrations", None)
            return [] if found is None else list(await found())

        pages = await self._each(pending)
        return [
            (f"{label}: {name}", script)
            for label, page in zip(self._router.labels, pages, strict=True)
            for name, script in page
        ]

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open every shard (each creates or upgrades its own schema, as ``migrate`` says)."""
        shards = self._router.shards
        results = await asyncio.gather(*(s.open() for s in shards), return_exceptions=True)
        failed = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        if not failed:
            return
        for i, result in enumerate(results):
            if not isinstance(result, BaseException):
                with contextlib.suppress(Exception):
                    await shards[i].close(timeout=5.0)
        index, error = failed[0]
        if isinstance(error, StoreError):
            raise named(self._router.labels[index], error) from error
        raise error

    async def close(self, timeout: float | None = None) -> None:
        """Close every shard at once (each within ``timeout``)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        await self._each(lambda s: s.close(timeout))

    # -- one saga, by id ----------------------------------------------------------------------

    async def create_saga(self, new: NewSaga) -> CreateResult:
        router = self._router
        shard = shard_of_saga(new, router.count)
        elsewhere = router.known(new.saga_id)
        if (new.object_key is None and shard != shard_for(new.saga_id, router.count)) or (
            elsewhere not in (None, shard)
        ):
            # placed by its queue, not its id: an id already used on another shard (another
            # queue, or a saga placed by its id) must come back as that saga, as a start with
            # an existing id does on one database. Not for an object's calls: their order of
            # arrival is their order of running, and a lookup first would let a later call
            # overtake an earlier one (their ids are the engine's own unless given a call_id).
            found = await router.find(new.saga_id)
            if found is not None and found[0] != shard:
                return CreateResult(False, found[1])
        result: CreateResult = await self._on(shard, lambda s: s.create_saga(new))
        router.learn(result.record.saga_id, shard)
        return result

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
        shard = self._router.known(saga_id)
        if shard is not None and saga_id not in self._waiting:
            return self._router.shards[shard].append(
                saga_id, fence, entry, update, guard=guard, state=state
            )
        # the shard must be looked up first; appends of one saga keep their order behind it
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiting = self._waiting.get(saga_id)
        if waiting is None:
            waiting = self._waiting[saga_id] = []
            task = loop.create_task(self._append_when_found(saga_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        waiting.append((future, fence, entry, update, guard, tuple(state)))
        return future

    async def _append_when_found(self, saga_id: str) -> None:
        error: BaseException | None = None
        shard: int | None = None
        try:
            shard = await self._router.locate(saga_id)
        except Exception as exc:
            error = exc
        # no await from here on: the appends are queued in their order before any new one
        waiting = self._waiting.pop(saga_id, [])
        for future, fence, entry, update, guard, state in waiting:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            elif shard is None:
                future.set_exception(LeaseLost(saga_id))
            else:
                inner = self._router.shards[shard].append(
                    saga_id, fence, entry, update, guard=guard, state=state
                )
                inner.add_done_callback(_pass_to(future))

    async def _queued(self, saga_id: str) -> None:
        """Wait until the appends of ``saga_id`` queued behind a lookup were handed over."""
        waiting = self._waiting.get(saga_id)
        if waiting:
            with contextlib.suppress(BaseException):
                await asyncio.gather(*(w[0] for w in waiting), return_exceptions=True)

    async def begin(self, saga_id: str, fence: int) -> StoreTransaction:
        await self._queued(saga_id)
        shard = await self._router.locate(saga_id)
        if shard is None:
            raise LeaseLost(saga_id)
        transaction: StoreTransaction = await self._on(shard, lambda s: s.begin(saga_id, fence))
        return transaction

    async def load_saga(self, saga_id: str) -> SagaRecord | None:
        found = await self._router.find(saga_id)
        return None if found is None else found[1]

    async def load_journal(self, saga_id: str) -> list[JournalEntry]:
        shard = await self._router.locate(saga_id)
        if shard is None:
            return []
        journal: list[JournalEntry] = await self._on(shard, lambda s: s.load_journal(saga_id))
        return journal

    async def load_run(self, saga_id: str, run: int) -> list[JournalEntry]:
        shard = await self._router.locate(saga_id)
        if shard is None:
            return []
        journal: list[JournalEntry] = await self._on(shard, lambda s: s.load_run(saga_id, run))
        return journal

    async def load_runs(
        self, saga_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[RunRecord]:
        shard = await self._router.locate(saga_id)
        if shard is None:
            return []
        runs: list[RunRecord] = await self._on(
            shard, lambda s: s.load_runs(saga_id, before=before, limit=limit)
        )
        return runs

    async def continue_as_new(self, cont: NextRun) -> None:
        await self._queued(cont.saga_id)
        shard = await self._router.locate(cont.saga_id)
        if shard is None:
            raise LeaseLost(cont.saga_id)
        await self._on(shard, lambda s: s.continue_as_new(cont))

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
        shard = await self._router.locate(saga_id)
        if shard is None:
            return Delivery(DeliveryOutcome.NOT_FOUND)
        delivery: Delivery = await self._on(
            shard,
            lambda s: s.deliver(saga_id, kind, name, payload, token=token, unique=unique, key=key),
        )
        return delivery

    async def load_events(self, saga_id: str, after: int = 0) -> list[SagaEvent]:
        shard = await self._router.locate(saga_id)
        if shard is None:
            return []
        events: list[SagaEvent] = await self._on(shard, lambda s: s.load_events(saga_id, after))
        return events

    async def load_state(self, scope: str) -> dict[str, str]:
        """A scope's state, from the shard of its object (an object's sagas and state live on
        the shard of its key) or of its saga (wherever that saga was placed)."""
        key = scope_key(scope)
        if scope.startswith(_SAGA_SCOPE):
            shard = await self._router.locate(key)
            if shard is None:
                return {}
        else:
            shard = shard_for(key, self._router.count)
        state: dict[str, str] = await self._on(shard, lambda s: s.load_state(scope))
        return state

    async def queue_position(self, saga_id: str) -> int | None:
        shard = await self._router.locate(saga_id)
        if shard is None:
            return None
        position: int | None = await self._on(shard, lambda s: s.queue_position(saga_id))
        return position

    async def administer(self, change: AdminChange) -> SagaRecord | None:
        """The change on the saga's shard; events it tells sagas of other shards (a
        cancelled child's outcome to its parent) are delivered there right after it, each
        once (a retry finds them delivered)."""
        router = self._router
        shard = await router.locate(change.saga_id)
        if shard is None:
            return None
        here: list[tuple[str, str, str, str]] = []
        there: list[tuple[int, tuple[str, str, str, str]]] = []
        for told in change.tell:
            target = await router.locate(told[0])
            if target is None or target == shard:
                here.append(told)
            else:
                there.append((target, told))
        local = replace(change, tell=tuple(here)) if there else change
        record: SagaRecord | None = await self._on(shard, lambda s: s.administer(local))
        if record is not None:
            for target, told in there:
                await self._tell(target, *told)
        return record

    async def _tell(self, shard: int, saga_id: str, kind: str, name: str, payload: str) -> None:
        await self._on(shard, lambda s: s.deliver(saga_id, kind, name, payload, unique=True))

    async def fork_saga(self, fork: SagaFork) -> SagaRecord | None:
        """The fork is made on its source's shard (it copies the source's events in one
        transaction) and found there by its id like any saga placed by another key."""
        shard = await self._router.locate(fork.source_id)
        if shard is None:
            return None
        record: SagaRecord | None = await self._on(shard, lambda s: s.fork_saga(fork))
        if record is not None:
            self._router.learn(record.saga_id, shard)
        return record

    async def delete_saga(self, saga_id: str) -> bool:
        shard = await self._router.locate(saga_id)
        if shard is None:
            return False
        deleted: bool = await self._on(shard, lambda s: s.delete_saga(saga_id))
        if deleted:
            self._router.forget(saga_id)
        return deleted

    # -- many sagas: every shard --------------------------------------------------------------

    async def claim(
        self, owner: str, names: Sequence[str | Served], lease_seconds: float, limit: int
    ) -> list[ClaimedSaga]:
        router = self._router
        start = self._claim_start
        self._claim_start = (start + 1) % router.count

        async def take(shard: int, share: int) -> list[ClaimedSaga]:
            claimed = await router.shards[shard].claim(owner, names, lease_seconds, share)
            for item in claimed:
                router.learn(item.record.saga_id, shard)
            return claimed

        claimed = await fill(limit, router.count, start, router.labels, take)
        retries = [s.queue_retry_at for s in router.shards if s.queue_retry_at is not None]
        self.queue_retry_at = min(retries) if retries else None
        return claimed

    async def renew_leases(self, owner: str, lease_seconds: float, saga_ids: Sequence[str]) -> int:
        groups = await self._router.locate_many(saga_ids)
        shards = sorted(groups)
        # the shards that answer renew theirs; a count short of the whole makes every run
        # check its fence before its next side effect (Engine._renew), which is safe
        counts, errors = await gather_available(
            self._labels(shards),
            [self._router.shards[i].renew_leases(owner, lease_seconds, groups[i]) for i in shards],
        )
        unless_all_failed(errors, len(shards), "a lease renewal")
        return sum(count for count in counts if count is not None)

    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        groups = await self._router.locate_many(saga_ids)
        shards = sorted(groups)
        await gather_shards(
            self._labels(shards),
            [self._router.shards[i].release(owner, groups[i]) for i in shards],
        )

    async def heartbeat(
        self, worker_id: str, served: Sequence[Served], lease_seconds: float
    ) -> None:
        await self._each(lambda s: s.heartbeat(worker_id, served, lease_seconds))

    async def forget_worker(self, worker_id: str) -> None:
        await self._each(lambda s: s.forget_worker(worker_id))

    async def list_stranded(self, limit: int = 50) -> list[SagaRecord]:
        pages = await self._each(lambda s: s.list_stranded(limit))
        return merge_newest(pages, limit)

    async def count_stranded(self) -> int:
        return sum(await self._each(lambda s: s.count_stranded()))

    async def list_sagas(self, where: SagaFilter, limit: int = 50) -> list[SagaRecord]:
        """Each shard's first ``limit`` sagas, merged newest first (the stores' order)."""
        pages = await self._each(lambda s: s.list_sagas(where, limit))
        for shard, page in enumerate(pages):
            for record in page:
                self._router.learn(record.saga_id, shard)
        return merge_newest(pages, limit)

    async def count_sagas(self, where: SagaFilter) -> int:
        return sum(await self._each(lambda s: s.count_sagas(where)))

    async def count_by_status(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for counts in await self._each(lambda s: s.count_by_status()):
            for status, count in counts.items():
                totals[status] = totals.get(status, 0) + count
        return totals

    async def prune(
        self, ended_before: float, statuses: Sequence[str] | None = None, limit: int = 500
    ) -> list[str]:
        router = self._router
        start = self._prune_start
        self._prune_start = (start + 1) % router.count

        async def take(shard: int, share: int) -> list[str]:
            pruned = await router.shards[shard].prune(ended_before, statuses, share)
            for saga_id in pruned:
                router.forget(saga_id)
            return pruned

        return await fill(limit, router.count, start, router.labels, take)

    async def count_prunable(
        self, ended_before: float, statuses: Sequence[str] | None = None
    ) -> int:
        return sum(await self._each(lambda s: s.count_prunable(ended_before, statuses)))

    # -- queues and schedules: on the shard of their name -------------------------------------

    def _home(self, name: str) -> int:
        return shard_for(name, self._router.count)

    async def declare_queue(self, name: str, limits: QueueLimits) -> None:
        await self._on(self._home(name), lambda s: s.declare_queue(name, limits))

    async def set_queue_override(
        self, name: str, changes: dict[str, Any] | None
    ) -> QueueState | None:
        state: QueueState | None = await self._on(
            self._home(name), lambda s: s.set_queue_override(name, changes)
        )
        return state

    async def list_queues(self) -> list[QueueState]:
        pages = await self._each(lambda s: s.list_queues())
        return sorted((q for page in pages for q in page), key=lambda q: q.name)

    async def declare_schedule(self, schedule: Schedule, now: float) -> None:
        await self._on(self._home(schedule.name), lambda s: s.declare_schedule(schedule, now))

    async def due_schedules(self, names: Sequence[str], now: float) -> list[ScheduleState]:
        groups: dict[int, list[str]] = {}
        for name in names:
            groups.setdefault(self._home(name), []).append(name)
        shards = sorted(groups)
        pages = await gather_shards(
            self._labels(shards),
            [self._router.shards[i].due_schedules(groups[i], now) for i in shards],
        )
        return sorted((s for page in pages for s in page), key=lambda s: s.name)

    async def fire_schedule(
        self,
        name: str,
        expect: float,
        fire_from: float,
        tick: float | None,
        saga: NewSaga | None,
    ) -> bool:
        """Atomic when the tick's saga is placed on the schedule's shard. Otherwise (a saga
        of a queue placed elsewhere) the saga is created first, on its own shard, then the
        schedule moved: a tick's saga id is the same for every worker, so a worker that loses
        the race created nothing more than the winner did."""
        home = self._home(name)
        if saga is not None:
            target = shard_of_saga(saga, self._router.count)
            if target != home:
                await self.create_saga(saga)
                saga = None
            else:
                self._router.learn(saga.saga_id, home)
        moved: bool = await self._on(
            home, lambda s: s.fire_schedule(name, expect, fire_from, tick, saga)
        )
        return moved

    async def list_schedules(self) -> list[ScheduleState]:
        pages = await self._each(lambda s: s.list_schedules())
        return sorted((s for page in pages for s in page), key=lambda s: s.name)

    async def set_schedule_paused(
        self, name: str, paused: bool, now: float
    ) -> ScheduleState | None:
        state: ScheduleState | None = await self._on(
            self._home(name), lambda s: s.set_schedule_paused(name, paused, now)
        )
        return state


def _pass_to(outer: asyncio.Future[None]) -> Callable[[asyncio.Future[None]], None]:
    """A callback that gives ``outer`` the outcome of the future it is called with."""

    def done(inner: asyncio.Future[None]) -> None:
        if outer.done():
            return
        if inner.cancelled():
            outer.cancel()
        elif (error := inner.exception()) is not None:
            outer.set_exception(error)
        else:
            outer.set_result(None)

    return done
