"""Queues, delayed starts and deduplication (issue 17), on every store kind.

Each test counts what happens inside a step with a :class:`Ledger` (enter and exit events,
the worker and partition of each): the peak of sagas inside a step at once is the measured
concurrency. Steps are held by per-saga gates (``asyncio.Event``) that the test opens one at a
time, so a test waits for states, not for time. Checks that a saga does *not* start are made
with ``engine.run_due()`` (one claim round, whose answer is deterministic) rather than by
waiting and hoping. Rate limits are checked on the start times the store recorded
(``dequeued_at``), with a sliding window.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from sagakit import (
    Engine,
    Queue,
    QueueDeduplicatedError,
    RateLimit,
    SagaContext,
    SagaNotFoundError,
    SagaStatus,
    SagaValidationError,
    saga_step,
    saga_workflow,
)
from sagakit.queues import MAX_PRIORITY
from sagakit.stores import MemoryStore, open_store
from sagakit.stores.base import Store
from sagakit.workflows import SagaWorkflow

from .conftest import make_engine
from .waiting import within

#: the longest any one wait may take (a bug fails a test, it never hangs it)
WAIT = 20.0

Job = SagaWorkflow[dict[str, Any], dict[str, Any]]


class Ledger:
    """What happened inside the steps of a test's sagas: enter/exit events in order, who was
    inside at once (overall, per worker, per partition), and a gate per saga that holds its
    step until the test opens it (``gated=False``: steps pass at once)."""

    def __init__(self, *, gated: bool = False) -> None:
        self.gated = gated
        self.events: list[tuple[str, str]] = []
        self.inside: dict[str, tuple[str, str]] = {}
        self.entered_at: dict[str, float] = {}
        self.peak = 0
        self.peak_worker: Counter[str] = Counter()
        self.peak_partition: Counter[str] = Counter()
        self._gates: dict[str, asyncio.Event] = {}

    def gate(self, saga_id: str) -> asyncio.Event:
        return self._gates.setdefault(saga_id, asyncio.Event())

    def open(self, saga_id: str) -> None:
        self.gate(saga_id).set()

    def open_all(self) -> None:
        self.gated = False
        for gate in self._gates.values():
            gate.set()

    async def visit(self, saga_id: str, worker: str, partition: str) -> None:
        self.events.append(("enter", saga_id))
        self.entered_at.setdefault(saga_id, time.time())
        self.inside[saga_id] = (worker, partition)
        self.peak = max(self.peak, len(self.inside))
        for key, counter, index in (
            (worker, self.peak_worker, 0),
            (partition, self.peak_partition, 1),
        ):
            now = sum(1 for v in self.inside.values() if v[index] == key)
            counter[key] = max(counter[key], now)
        try:
            if self.gated:
                await self.gate(saga_id).wait()
        finally:
            del self.inside[saga_id]
            self.events.append(("exit", saga_id))

    def entered(self) -> list[str]:
        return [saga_id for kind, saga_id in self.events if kind == "enter"]


def job(ledger: Ledger, name: str = "Job", version: str | None = None) -> Job:
    """A one-step workflow whose step visits the ledger (input: ``{"part": partition}``)."""

    @saga_step(f"{name}Work")
    async def work(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        await ledger.visit(ctx.saga_id, str(ctx.services), str(inp.get("part", "")))
        return dict(inp)

    @saga_workflow(name, version=version)
    async def run(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = await work(saga, inp)
        return out

    return run


def worker(url: str, name: str, *definitions: Any, **options: Any) -> Engine:
    """An engine (not yet open) whose steps see ``name`` as their services."""
    engine = make_engine(url, services=lambda scope: name, **options)
    engine.register(*definitions)
    return engine


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT}s waiting for {what}")
        await asyncio.sleep(0.005)


async def release_in_turn(ledger: Ledger, total: int, at_once: int) -> None:
    """Each time ``at_once`` sagas (or all that are left) are inside their step, open the gate
    of the one that entered first; until ``total`` have passed."""
    for done in range(total):
        want = min(at_once, total - done)
        await until(lambda: len(ledger.inside) >= want, f"{want} sagas inside at once")  # noqa: B023
        await let_out(ledger, next(iter(ledger.inside)))


async def let_out(ledger: Ledger, saga_id: str) -> None:
    """Open the saga's gate and wait until it has left its step."""
    ledger.open(saga_id)
    await until(lambda: saga_id not in ledger.inside, f"{saga_id} to leave its step")


async def results(engine: Engine, saga_ids: list[str]) -> list[Any]:
    return [await engine.handle(s).result(timeout=WAIT) for s in saga_ids]


async def statuses(engine: Engine, saga_ids: list[str]) -> list[SagaStatus]:
    return [(await engine.get(s)).status for s in saga_ids]


async def due(engine: Engine) -> list[str]:
    """One claim round of ``engine`` (bounded: a saga it should not have taken may be held by
    a gate)."""
    ids: list[str] = await within(engine.run_due(), WAIT)
    return ids


def store_of(engine: Engine) -> Store:
    return engine._store_or_raise()


async def dequeue_times(engine: Engine) -> dict[str, float]:
    """When each saga left its queue, as the store recorded it (what the rate limit counts)."""
    store = store_of(engine)
    if isinstance(store, MemoryStore):
        return dict(store._t.dequeued_at)
    sql = "SELECT saga_id, dequeued_at FROM saga_instances WHERE dequeued_at IS NOT NULL"
    if engine.url.startswith("sqlite:///"):
        with sqlite3.connect(engine.url.removeprefix("sqlite:///")) as conn:
            return {str(r[0]): float(r[1]) for r in conn.execute(sql)}
    conn = await asyncpg.connect(engine.url, server_settings={"search_path": "sagakit, public"})
    try:
        return {str(r[0]): float(r[1]) for r in await conn.fetch(sql)}
    finally:
        await conn.close()


# -- concurrency --------------------------------------------------------------------------------


async def test_concurrency_holds_across_two_engines_on_one_database(shared_store_url: str) -> None:
    ledger = Ledger(gated=True)
    wf = job(ledger)
    queue = Queue("orders", concurrency=2)
    ids = [f"o{i}" for i in range(7)]
    async with (
        worker(shared_store_url, "A", wf, queue) as a,
        worker(shared_store_url, "B", wf, queue) as b,
    ):
        for i, saga_id in enumerate(ids):
            await (a if i % 2 else b).enqueue(queue, wf, {}, saga_id)
        await release_in_turn(ledger, len(ids), at_once=2)
        assert await results(a, ids) == [{}] * len(ids)
    assert ledger.peak == 2
    assert sorted(ledger.entered()) == sorted(ids)


async def test_worker_concurrency_holds_per_engine(shared_store_url: str) -> None:
    ledger = Ledger(gated=True)
    wf = job(ledger)
    queue = Queue("mail", worker_concurrency=1)
    ids = [f"m{i}" for i in range(6)]
    async with (
        worker(shared_store_url, "A", wf, queue) as a,
        worker(shared_store_url, "B", wf, queue),
    ):
        for saga_id in ids:
            await a.enqueue(queue, wf, {}, saga_id)
        # each engine runs one at a time, and the two together run two
        await release_in_turn(ledger, len(ids), at_once=2)
        assert await results(a, ids) == [{}] * len(ids)
    assert ledger.peak == 2
    assert ledger.peak_worker == Counter({"A": 1, "B": 1})


async def test_queue_and_worker_concurrency_hold_together(shared_store_url: str) -> None:
    ledger = Ledger(gated=True)
    wf = job(ledger)
    queue = Queue("both", concurrency=3, worker_concurrency=2)
    ids = [f"b{i}" for i in range(8)]
    async with (
        worker(shared_store_url, "A", wf, queue) as a,
        worker(shared_store_url, "B", wf, queue),
    ):
        for saga_id in ids:
            await a.enqueue(queue, wf, {}, saga_id)
        await release_in_turn(ledger, len(ids), at_once=3)
        assert await results(a, ids) == [{}] * len(ids)
    assert ledger.peak == 3
    assert max(ledger.peak_worker.values()) == 2
    assert all(peak <= 2 for peak in ledger.peak_worker.values())


async def test_a_partitioned_queue_keeps_its_worker_limit(shared_store_url: str) -> None:
    """Per-partition and per-worker limits hold together (DBOS let a partitioned queue exceed
    its worker limit): two tenants with room for two each, one worker that may run one."""
    ledger = Ledger(gated=True)
    wf = job(ledger)
    queue = Queue("tenants", concurrency=2, worker_concurrency=1, partitioned=True)
    ids = [f"{p}{i}" for p in "ab" for i in range(2)]
    async with worker(shared_store_url, "A", wf, queue) as a:
        for saga_id in ids:
            await a.enqueue(queue, wf, {"part": saga_id[0]}, saga_id, partition_key=saga_id[0])
        await release_in_turn(ledger, len(ids), at_once=1)
        await results(a, ids)
    assert ledger.peak == 1


async def test_the_rate_limit_holds_over_every_window(shared_store_url: str) -> None:
    ledger = Ledger()
    wf = job(ledger)
    per = 0.5
    queue = Queue("api", rate=RateLimit(2, per=timedelta(seconds=per)))
    ids = [f"r{i}" for i in range(7)]
    async with (
        worker(shared_store_url, "A", wf, queue) as a,
        worker(shared_store_url, "B", wf, queue),
    ):
        for saga_id in ids:
            await a.enqueue(queue, wf, {}, saga_id)
        assert await results(a, ids) == [{}] * len(ids)
        started = await dequeue_times(a)
    assert sorted(started) == sorted(ids)
    times = sorted(started.values())
    # any window of `per` holds at most 2 starts: the start 2 places later is `per` or more on
    for first, third in zip(times, times[2:], strict=False):
        assert third - first >= per - 1e-6, times
    # and each step ran after its saga was let out of the queue
    for saga_id in ids:
        assert ledger.entered_at[saga_id] >= started[saga_id] - 1e-3


# -- order: priorities and partitions ----------------------------------------------------------


async def test_priorities_run_smallest_first_unprioritised_first_fifo_within(
    shared_store_url: str,
) -> None:
    ledger = Ledger()
    wf = job(ledger)
    queue = Queue("prio", concurrency=1, priority=True)
    # ids run against the alphabet, so that arrival, not the id, must decide within a priority
    enqueued = [("z", 10), ("y", None), ("x", 1), ("w", 10), ("v", None), ("u", 1), ("t", 5)]
    async with worker(shared_store_url, "client", wf, queue, worker=False) as client:
        for saga_id, priority in enqueued:
            await client.enqueue(queue, wf, {}, saga_id, priority=priority)
        async with worker(shared_store_url, "A", wf, queue) as a:
            await results(a, [s for s, _ in enqueued])
    assert ledger.entered() == ["y", "v", "x", "u", "t", "z", "w"]
    assert ledger.peak == 1


async def test_each_partition_has_its_own_concurrency(shared_store_url: str) -> None:
    ledger = Ledger(gated=True)
    wf = job(ledger)
    queue = Queue("per-tenant", concurrency=1, partitioned=True)
    ids = ["a1", "a2", "a3", "b1", "b2"]
    async with worker(shared_store_url, "A", wf, queue) as a:
        for saga_id in ids:
            await a.enqueue(queue, wf, {"part": saga_id[0]}, saga_id, partition_key=saga_id[0])
        await until(lambda: len(ledger.inside) == 2, "one saga of each tenant inside")
        assert {ledger.inside[s][1] for s in ledger.inside} == {"a", "b"}
        for _ in range(len(ids)):
            await until(lambda: bool(ledger.inside), "a saga inside")
            await let_out(ledger, next(iter(ledger.inside)))
        await results(a, ids)
    assert ledger.peak_partition == Counter({"a": 1, "b": 1})
    assert ledger.peak == 2
    # each tenant's own sagas in arrival order
    entered = ledger.entered()
    for tenant in "ab":
        assert [s for s in entered if s[0] == tenant] == [s for s in ids if s[0] == tenant]


async def test_partitions_take_turns(shared_store_url: str) -> None:
    """A tenant with many sagas queued does not starve one that comes later: the partition
    that started a saga least recently goes next."""
    ledger = Ledger()
    wf = job(ledger)
    queue = Queue("fair", worker_concurrency=1, partitioned=True)
    ids = ["a1", "a2", "a3", "a4", "a5", "b1", "b2"]
    async with worker(shared_store_url, "client", wf, queue, worker=False) as client:
        for saga_id in ids:
            await client.enqueue(queue, wf, {"part": saga_id[0]}, saga_id, partition_key=saga_id[0])
        async with worker(shared_store_url, "A", wf, queue) as a:
            await results(a, ids)
    assert ledger.entered() == ["a1", "b1", "a2", "b2", "a3", "a4", "a5"]


async def test_bad_enqueues_are_refused_and_write_nothing(store_url: str) -> None:
    wf = job(Ledger())
    plain = Queue("plain")
    ranked = Queue("ranked", priority=True)
    tenants = Queue("tenants", partitioned=True)
    refused: list[tuple[Queue | str, dict[str, Any], str]] = [
        (tenants, {}, "partition_key"),
        (tenants, {"partition_key": ""}, "partition_key"),
        (plain, {"partition_key": "t1"}, "not partitioned"),
        (plain, {"priority": 1}, "priority=True"),
        (ranked, {"priority": 0}, "priority must be"),
        (ranked, {"priority": -3}, "priority must be"),
        (ranked, {"priority": MAX_PRIORITY + 1}, "priority must be"),
        (ranked, {"priority": True}, "priority must be"),
        (plain, {"dedup_id": ""}, "dedup_id"),
        (plain, {"delay": timedelta(seconds=-1)}, "delay"),
        ("unknown", {}, "unknown queue"),
    ]
    async with worker(store_url, "A", wf, plain, ranked, tenants) as engine:
        for n, (queue, kwargs, says) in enumerate(refused):
            with pytest.raises(SagaValidationError, match=says):
                await engine.enqueue(queue, wf, {}, f"bad{n}", **kwargs)
        assert await engine.list() == []
        # the bounds themselves are accepted
        await engine.enqueue(ranked, wf, {}, "lo", priority=1)
        await engine.enqueue(ranked, wf, {}, "hi", priority=MAX_PRIORITY)
        await results(engine, ["lo", "hi"])


# -- deduplication -------------------------------------------------------------------------------


async def test_a_held_dedup_id_is_refused_until_its_saga_ends(shared_store_url: str) -> None:
    ledger = Ledger(gated=True)
    wf = job(ledger)
    queue = Queue("dedup")
    other = Queue("other")
    async with worker(shared_store_url, "client", wf, queue, other, worker=False) as client:
        await client.enqueue(queue, wf, {}, "first", dedup_id="order-7")
        with pytest.raises(QueueDeduplicatedError) as refused:
            await client.enqueue(queue, wf, {}, "second", dedup_id="order-7")
        error = refused.value
        assert (error.saga_id, error.queue, error.dedup_id) == ("first", "dedup", "order-7")
        assert error.status == SagaStatus.QUEUED
        assert "first" in str(error)
        with pytest.raises(SagaNotFoundError):
            await client.get("second")
        # the id is per queue: another queue takes it
        await client.enqueue(other, wf, {}, "elsewhere", dedup_id="order-7")
        async with worker(shared_store_url, "A", wf, queue, other) as a:
            await until(lambda: "first" in ledger.inside, "the first saga to run")
            with pytest.raises(QueueDeduplicatedError) as running:
                await a.enqueue(queue, wf, {}, "second", dedup_id="order-7")
            assert running.value.saga_id == "first"
            assert running.value.status == SagaStatus.RUNNING
            ledger.open_all()
            await results(a, ["first", "elsewhere"])
            # it ended: the id is free again
            await a.enqueue(queue, wf, {}, "second", dedup_id="order-7")
            assert await results(a, ["second"]) == [{}]
    assert sorted(ledger.entered()) == ["elsewhere", "first", "second"]


async def test_enqueue_is_idempotent_on_the_saga_id(store_url: str) -> None:
    ledger = Ledger()
    wf = job(ledger)
    queue = Queue("idem")
    async with worker(store_url, "client", wf, queue, worker=False) as client:
        first = await client.enqueue(queue, wf, {}, "same", dedup_id="d1")
        again = await client.enqueue(queue, wf, {}, "same", dedup_id="d1")
        plain = await client.enqueue(queue, wf, {}, "plain")
        plain_again = await client.enqueue(queue, wf, {}, "plain")
        assert (first.saga_id, again.saga_id) == ("same", "same")
        assert (plain.saga_id, plain_again.saga_id) == ("plain", "plain")
        assert sorted(s.saga_id for s in await client.list()) == ["plain", "same"]
        assert await due(client) in (["same", "plain"], ["plain", "same"])
    assert sorted(ledger.entered()) == ["plain", "same"]


# -- delayed starts ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["enqueue", "start"])
@pytest.mark.parametrize("when", ["delay", "start_at"])
async def test_a_delayed_saga_starts_then_and_not_before(
    store_url: str, how: str, when: str
) -> None:
    ledger = Ledger()
    wf = job(ledger)
    queue = Queue("later")
    delay = timedelta(seconds=0.6)
    async with worker(store_url, "A", wf, queue) as engine:
        store = store_of(engine)
        before = time.time()
        timing: dict[str, Any] = dict(
            {"delay": delay} if when == "delay" else {"start_at": datetime.now(UTC) + delay}
        )
        if how == "enqueue":
            await engine.enqueue(queue, wf, {}, "late", **timing)
            waiting = SagaStatus.QUEUED
        else:
            await engine.start(wf, {}, "late", **timing)
            waiting = SagaStatus.PENDING
        after = time.time()
        record = await store.load_saga("late")
        assert record is not None
        # the stored start time is the one asked for, by the store's clock
        not_before = record.lease_expires_at
        assert before + 0.6 - 1e-3 <= not_before <= after + 0.6 + 1e-3
        # ... and the saga's creation time (the store's clock) plus the delay, less the moment
        # between computing it and the insert
        assert not_before <= record.created_at + 0.6 + 1e-3
        assert record.created_at + 0.6 - not_before <= after - before + 1e-3
        if record.status != SagaStatus.COMPLETED:
            assert record.status in (waiting, SagaStatus.RUNNING)
            assert record.owner is None or record.status == SagaStatus.RUNNING
        assert await results(engine, ["late"]) == [{}]
    assert ledger.entered_at["late"] >= not_before


async def test_a_saga_delayed_far_is_not_taken(store_url: str) -> None:
    ledger = Ledger()
    wf = job(ledger)
    queue = Queue("much-later")
    async with worker(store_url, "A", wf, queue) as engine:
        await engine.enqueue(queue, wf, {}, "queued", delay=timedelta(hours=1))
        await engine.start(wf, {}, "started", start_at=datetime.now(UTC) + timedelta(hours=1))
        assert await due(engine) == []
        assert await statuses(engine, ["queued", "started"]) == [
            SagaStatus.QUEUED,
            SagaStatus.PENDING,
        ]
        [state] = await store_of(engine).list_queues()
        assert (state.queued, state.delayed, state.running) == (1, 1, 0)
    assert ledger.entered() == []


async def test_bad_delays_are_refused_and_write_nothing(store_url: str) -> None:
    wf = job(Ledger())
    queue = Queue("later")
    naive = datetime.now() + timedelta(minutes=1)  # naive: the point of the test
    aware = datetime.now(UTC) + timedelta(minutes=1)
    async with worker(store_url, "A", wf, queue) as engine:
        timings: list[dict[str, Any]] = [
            {"delay": timedelta(minutes=1), "start_at": aware},
            {"start_at": naive},
            {"delay": timedelta(seconds=-5)},
        ]
        for n, timing in enumerate(timings):
            with pytest.raises(SagaValidationError):
                await engine.enqueue(queue, wf, {}, f"q{n}", **timing)
            with pytest.raises(SagaValidationError):
                await engine.start(wf, {}, f"s{n}", **timing)
        assert await engine.list() == []


# -- slots: waits, dead workers, versions --------------------------------------------------------


async def test_a_saga_waiting_for_a_signal_gives_its_slot_back(shared_store_url: str) -> None:
    ledger = Ledger()
    wf = job(ledger)

    @saga_step("WaiterWork")
    async def waiter_work(ctx: SagaContext, inp: str) -> str:
        await ledger.visit(f"{ctx.saga_id}:{inp}", "A", "")
        return inp

    @saga_workflow("Waiter")
    async def waiter(saga: SagaContext, inp: dict[str, Any]) -> str:
        await waiter_work(saga, "before")
        got = await saga.wait_for_signal("go")
        await waiter_work(saga, "after")
        return str(got)

    queue = Queue("one-at-a-time", concurrency=1)
    async with worker(shared_store_url, "A", wf, waiter, queue) as engine:
        await engine.enqueue(queue, waiter, {}, "w")
        await engine.enqueue(queue, wf, {}, "j1")
        await engine.enqueue(queue, wf, {}, "j2")
        # w waits: the others run to the end meanwhile
        assert await results(engine, ["j1", "j2"]) == [{}, {}]
        assert (await engine.get("w")).status == SagaStatus.SUSPENDED
        await engine.signal("w", "go", "now")
        assert await results(engine, ["w"]) == ["now"]
    assert ledger.entered() == ["w:before", "j1", "j2", "w:after"]
    assert ledger.peak == 1


async def test_a_saga_whose_timer_fell_due_waits_for_a_slot(shared_store_url: str) -> None:
    ledger = Ledger(gated=True)
    wf = job(ledger)

    @saga_step("SleeperWork")
    async def sleeper_work(ctx: SagaContext, inp: str) -> str:
        ledger.open(f"{ctx.saga_id}:{inp}")  # a sleeper's step passes at once
        await ledger.visit(f"{ctx.saga_id}:{inp}", "A", "")
        return inp

    @saga_workflow("Sleeper")
    async def sleeper(saga: SagaContext, inp: dict[str, Any]) -> str:
        await sleeper_work(saga, "before")
        await saga.sleep(timedelta(milliseconds=200))
        return str(await sleeper_work(saga, "after"))

    queue = Queue("single", concurrency=1)
    async with worker(shared_store_url, "A", wf, sleeper, queue) as engine:
        await engine.enqueue(queue, sleeper, {}, "s")
        await engine.enqueue(queue, wf, {}, "j")
        await until(lambda: "j" in ledger.inside, "the job to hold the slot")
        wake_at = (await engine.get("s")).wake_at
        assert wake_at is not None
        await until(lambda: time.time() > wake_at.timestamp() + 0.05, "the sleeper's timer")
        # due again, but the job holds the only slot: no claim takes it
        assert await due(engine) == []
        assert (await engine.get("s")).status == SagaStatus.SUSPENDED
        ledger.open("j")
        assert await results(engine, ["s", "j"]) == ["after", {}]
    assert ledger.entered() == ["s:before", "j", "s:after"]
    assert ledger.peak == 1


async def test_a_dead_workers_saga_is_taken_over_through_the_queue(shared_store_url: str) -> None:
    """A worker claims a queued saga and dies: the saga holds its slot while the lease lives,
    then gives it back, and is taken over (ahead of the sagas that never started)."""
    ledger = Ledger()
    wf = job(ledger)
    queue = Queue("solo", concurrency=1)
    async with worker(shared_store_url, "live", wf, queue, worker=False) as live:
        await live.enqueue(queue, wf, {}, "a")
        await live.enqueue(queue, wf, {}, "b")
        dead = open_store(shared_store_url)
        await dead.open()
        try:
            claimed = await dead.claim("dead-worker", ["Job"], 3.0, 10)
        finally:
            await dead.close()
        assert [c.record.saga_id for c in claimed] == ["a"]  # the queue lets one start
        record = await store_of(live).load_saga("a")
        assert record is not None and record.owner == "dead-worker"
        # while its lease lives, it holds the only slot
        assert await due(live) == []
        assert time.time() < record.lease_expires_at, "the check above came too late to count"
        await until(lambda: time.time() > record.lease_expires_at + 0.01, "the lease to expire")
        assert await due(live) == ["a"]
        assert await due(live) == ["b"]
        assert await statuses(live, ["a", "b"]) == [SagaStatus.COMPLETED] * 2
    assert ledger.entered() == ["a", "b"]


async def test_sagas_of_a_version_no_worker_serves_wait_and_hold_no_slot(
    shared_store_url: str,
) -> None:
    ledger = Ledger()
    v1 = job(ledger, "Versioned", version="1")
    v2 = job(ledger, "Versioned", version="2")
    queue = Queue("versions", concurrency=1)
    old = ["old1", "old2"]
    new = ["new1", "new2", "new3"]
    async with worker(shared_store_url, "client", v1, v2, queue, worker=False) as client:
        for n in range(3):
            if n < 2:
                await client.enqueue(queue, v1, {}, old[n])
            await client.enqueue(queue, v2, {}, new[n])
        async with worker(shared_store_url, "v2", v2, queue) as served:
            await results(served, new)
            assert await due(served) == []
        assert await statuses(client, old) == [SagaStatus.QUEUED] * 2
        assert ledger.entered() == new
        async with worker(shared_store_url, "v1", v1, queue) as served_old:
            await results(served_old, old)
    assert ledger.entered() == new + old


# -- operators: cancel, restart, pause, limits at run time, positions ----------------------------


async def test_a_cancelled_queued_saga_never_runs(shared_store_url: str) -> None:
    ledger = Ledger()
    wf = job(ledger)
    queue = Queue("cancellable", concurrency=1)
    async with worker(shared_store_url, "client", wf, queue, worker=False) as client:
        for saga_id in ("a", "b", "c"):
            await client.enqueue(queue, wf, {}, saga_id)
        snapshot = await client.admin.cancel("b", "customer changed their mind")
        assert snapshot.status == SagaStatus.CANCELLED
        assert await store_of(client).queue_position("c") == 2
        async with worker(shared_store_url, "A", wf, queue) as a:
            await results(a, ["a", "c"])
            assert (await a.get("b")).status == SagaStatus.CANCELLED
    assert ledger.entered() == ["a", "c"]


async def test_queued_sagas_survive_a_restart(process_db_url: str) -> None:
    ledger = Ledger()
    wf = job(ledger)
    queue = Queue("durable", concurrency=2, priority=True)
    ids = ["d1", "d2", "d3"]
    async with worker(process_db_url, "first", wf, queue, worker=False) as first:
        for n, saga_id in enumerate(ids):
            await first.enqueue(queue, wf, {}, saga_id, priority=3 - n)
    async with worker(process_db_url, "second", wf, queue) as second:
        assert await results(second, ids) == [{}] * 3
    assert sorted(ledger.entered()) == ids


async def test_a_paused_queue_starts_nothing_until_it_is_resumed(shared_store_url: str) -> None:
    ledger = Ledger(gated=True)
    wf = job(ledger)
    queue = Queue("pausable", concurrency=5)
    async with worker(shared_store_url, "A", wf, queue) as engine:
        store = store_of(engine)
        await engine.enqueue(queue, wf, {}, "early")
        await until(lambda: "early" in ledger.inside, "the first saga to start")
        state = await store.set_queue_override("pausable", {"paused": True})
        assert state is not None and state.limits.paused
        for saga_id in ("p1", "p2", "p3"):
            await engine.enqueue(queue, wf, {}, saga_id)
        assert await due(engine) == []
        # one started before the pause goes on to its end
        ledger.open("early")
        assert await results(engine, ["early"]) == [{}]
        assert await due(engine) == []
        assert await statuses(engine, ["p1", "p2", "p3"]) == [SagaStatus.QUEUED] * 3
        assert ledger.entered() == ["early"]
        lifted = await store.set_queue_override("pausable", None)
        assert lifted is not None and not lifted.limits.paused and lifted.override == {}
        ledger.open_all()
        assert await results(engine, ["p1", "p2", "p3"]) == [{}] * 3
    assert ledger.entered() == ["early", "p1", "p2", "p3"]


async def test_a_concurrency_changed_at_run_time_is_obeyed(shared_store_url: str) -> None:
    ledger = Ledger(gated=True)
    wf = job(ledger)
    queue = Queue("tunable", concurrency=1)
    ids = [f"t{i}" for i in range(6)]
    async with (
        worker(shared_store_url, "A", wf, queue) as a,
        worker(shared_store_url, "B", wf, queue) as b,
    ):
        for saga_id in ids:
            await a.enqueue(queue, wf, {}, saga_id)
        await until(lambda: len(ledger.inside) == 1, "one saga inside")
        assert await due(a) == [] and await due(b) == []
        state = await store_of(a).set_queue_override("tunable", {"concurrency": 3})
        assert state is not None and state.limits.concurrency == 3
        assert state.declared.concurrency == 1
        await until(lambda: len(ledger.inside) == 3, "three sagas inside")
        assert await due(a) == [] and await due(b) == []
        assert ledger.peak == 3
        # back down to one: nothing new starts until the three inside are down to none
        await store_of(b).set_queue_override("tunable", {"concurrency": 1})
        first_three = list(ledger.inside)
        for saga_id in first_three[:2]:
            await let_out(ledger, saga_id)
            assert await due(a) == [] and await due(b) == []
        assert len(ledger.inside) == 1
        await release_in_turn(ledger, len(ids) - 2, at_once=1)
        await results(a, ids)
    assert ledger.peak == 3


async def test_queue_positions_follow_priority_then_arrival(store_url: str) -> None:
    wf = job(Ledger())
    ranked = Queue("positions", priority=True)
    tenants = Queue("tenant-positions", partitioned=True)
    async with worker(store_url, "client", wf, ranked, tenants, worker=False) as client:
        store = store_of(client)
        await client.enqueue(ranked, wf, {}, "p5", priority=5)
        await client.enqueue(ranked, wf, {}, "p1", priority=1)
        await client.enqueue(ranked, wf, {}, "none")
        await client.enqueue(ranked, wf, {}, "p1-later", priority=1)
        await client.enqueue(tenants, wf, {}, "ta1", partition_key="a")
        await client.enqueue(tenants, wf, {}, "tb1", partition_key="b")
        await client.enqueue(tenants, wf, {}, "ta2", partition_key="a")
        await client.start(wf, {}, "direct", run_here=False)
        positions = {s: await store.queue_position(s) for s in ("none", "p1", "p1-later", "p5")}
        assert positions == {"none": 1, "p1": 2, "p1-later": 3, "p5": 4}
        # positions count within the saga's partition
        assert [await store.queue_position(s) for s in ("ta1", "ta2", "tb1")] == [1, 2, 1]
        assert await store.queue_position("direct") is None
        assert await store.queue_position("no-such-saga") is None
        assert await due(client) != []
        assert [await store.queue_position(s) for s in ("none", "p1", "p5")] == [None] * 3
