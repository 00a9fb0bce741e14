"""One engine over several databases (issue 21): ShardedStore, its ``shards:`` URL and its
placement. The store contract runs on it in tests/test_store_contract.py; here: placement
values that must never change, the URL's refusals, and engines on 3 SQLite files and on 2
PostgreSQL databases (many sagas, CLI, signals and children across shards, a virtual object's
order, a queue's limit, a SIGKILL and recovery by another process).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    Engine,
    ObjectContext,
    Queue,
    SagaContext,
    SagaStatus,
    ShardedStore,
    StoreError,
    create_saga_virtual_object,
    saga_step,
    saga_workflow,
)
from sagakit.errors import LeaseLost
from sagakit.stores import open_store
from sagakit.stores.base import JournalEntry, NewSaga, SagaFilter, SagaUpdate, Store
from sagakit.stores.sharded import placement_key, shard_for, shard_urls
from sagakit.stores.sharded.fanout import split_limit
from sagakit.urls import redact_url
from tests.conftest import make_engine
from tests.processes import AppProcesses
from tests.sharding import postgres_shards, sqlite_shards

#: a bug fails a test, it never hangs it
LONG = 120.0

# -- placement: a pure function that must never change ----------------------------------------


def test_placement_values_never_change() -> None:
    # pinned: a change would send every process to the wrong database for the sagas written
    # under the old placement (blake2b, 8 bytes, big-endian, modulo the shard count)
    known = {
        "order-1": (1, 2, 13),
        "order-2": (1, 2, 11),
        "Counter/c1": (1, 1, 13),
        "orders": (1, 1, 13),
        "a": (1, 2, 15),
        "": (0, 0, 4),
        "ünïcode": (1, 0, 13),
    }
    for key, (of2, of3, of16) in known.items():
        assert (shard_for(key, 2), shard_for(key, 3), shard_for(key, 16)) == (of2, of3, of16)


def test_placement_key_is_the_object_then_the_queue_then_the_id() -> None:
    plain = NewSaga("s1", "W", "{}", None, 30.0)
    assert placement_key(plain) == "s1"
    assert placement_key(NewSaga("s1", "W", "{}", None, 30.0, queue="q")) == "q"
    both = NewSaga("s1", "W", "{}", None, 30.0, object_key="Obj/k", queue="q")
    assert placement_key(both) == "Obj/k"


def test_placement_spreads_ids_over_every_shard() -> None:
    counts = Counter(shard_for(f"saga-{i}", 3) for i in range(3000))
    assert set(counts) == {0, 1, 2}
    assert min(counts.values()) > 800  # about 1000 each


def test_placement_is_the_same_in_another_python_process() -> None:
    code = "from sagakit.stores.sharded import shard_for; print(shard_for('order-1', 1000))"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert runs == {str(shard_for("order-1", 1000))}


# -- the URL ----------------------------------------------------------------------------------


def test_the_url_form_opens_a_sharded_store(tmp_path: Path) -> None:
    urls = sqlite_shards(tmp_path, 3)
    store = open_store("shards:" + "  ".join(urls))
    assert isinstance(store, ShardedStore)
    assert store.urls == urls
    assert store.url == "shards:" + " ".join(urls)
    assert shard_urls(store.url) == urls
    assert isinstance(store, Store)


@pytest.mark.parametrize(
    ("urls", "needle"),
    [
        (["sqlite:///a.db"], "two or more"),
        (["sqlite:///a.db", "postgresql://u:hunter2@h/b"], "of one kind"),
        (["memory://a", "memory://b"], "PostgreSQL databases or SQLite files"),
        (["postgresql://u:hunter2@h/a", "postgresql://v:other@H:5432/a"], "twice"),
        (["sqlite:///x/../a.db", "sqlite:///a.db"], "twice"),
    ],
)
def test_bad_shard_lists_are_refused_clearly(urls: list[str], needle: str) -> None:
    with pytest.raises(StoreError, match=needle) as info:
        open_store("shards:" + " ".join(urls))
    assert "hunter2" not in str(info.value)
    assert "other" not in str(info.value).replace("another", "")
    with pytest.raises(StoreError, match=needle):
        ShardedStore(urls)


def test_passwords_are_hidden_in_a_sharded_url() -> None:
    url = "shards:postgresql://app:s3cret@h/a postgresql://app:t0p@h/b?password=x"
    assert redact_url(url) == (
        "shards:postgresql://app:***@h/a postgresql://app:***@h/b?password=***"
    )


async def test_a_failing_shard_is_named_in_the_error(tmp_path: Path) -> None:
    urls = sqlite_shards(tmp_path, 2)
    async with Engine(urls[0]):
        pass  # shard 0 has its schema, shard 1 none
    store = open_store("shards:" + " ".join(urls), read_only=True)
    with pytest.raises(StoreError, match=r"shard 1 of 2 \(sqlite:///.*shard1\.db\)"):
        await store.open()


async def test_claims_and_renewals_go_on_with_the_shards_that_answer(tmp_path: Path) -> None:
    urls = sqlite_shards(tmp_path, 2)
    store = open_store("shards:" + " ".join(urls))
    assert isinstance(store, ShardedStore)
    await store.open()
    try:
        ids = {i: next(f"c{n}" for n in range(100) if shard_for(f"c{n}", 2) == i) for i in (0, 1)}
        for saga_id in ids.values():
            await store.create_saga(NewSaga(saga_id, "W", "{}", owner=None, lease_seconds=30))
        await store.shards[1].close()  # shard 1's database is gone: its calls raise StoreError
        # shard 0's saga is leased to this worker: it must be handed over, not dropped
        claimed = await store.claim("w1", ["W"], 30, 10)
        assert [c.record.saga_id for c in claimed] == [ids[0]]
        assert await store.renew_leases("w1", 30, [ids[0]]) == 1
        await store.shards[0].close()
        with pytest.raises(StoreError, match="shard"):
            await store.claim("w1", ["W"], 30, 10)
    finally:
        await store.close()


# -- a store over shards, directly ------------------------------------------------------------


async def test_a_saga_placed_by_its_queue_is_found_and_written_by_a_process_that_never_saw_it(
    tmp_path: Path,
) -> None:
    url = "shards:" + " ".join(sqlite_shards(tmp_path, 3))
    # an id whose own shard is not its queue's: a lookup by id must look further
    saga_id = next(f"q{i}" for i in range(100) if shard_for(f"q{i}", 3) != shard_for("jobs", 3))
    writer, fresh = open_store(url), open_store(url)
    await writer.open()
    await fresh.open()
    try:
        made = await writer.create_saga(
            NewSaga(saga_id, "W", "{}", owner="w1", lease_seconds=30, queue="jobs")
        )
        assert made.created
        # the fresh store has no memory of it: its appends look it up, in order
        futures = [fresh.append(saga_id, 1, entry(saga_id, seq)) for seq in range(3)]
        await asyncio.gather(*futures)
        assert [e.seq for e in await writer.load_journal(saga_id)] == [0, 1, 2]
        assert isinstance(fresh, ShardedStore)
        home = shard_for("jobs", 3)
        for i, shard in enumerate(fresh.shards):
            assert (await shard.load_saga(saga_id) is not None) == (i == home)
        # a fenced write to a saga no shard holds writes nothing anywhere
        with pytest.raises(LeaseLost):
            await fresh.append("nowhere", 1, entry("nowhere", 0))
        for shard in fresh.shards:
            assert await shard.load_saga("nowhere") is None
    finally:
        await writer.close()
        await fresh.close()


def test_a_limit_is_split_evenly_from_a_rotating_first_shard() -> None:
    assert split_limit(7, 3, 0) == [3, 2, 2]
    assert split_limit(7, 3, 2) == [2, 2, 3]
    assert split_limit(1, 3, 1) == [0, 1, 0]
    assert split_limit(0, 3, 1) == [0, 0, 0]


async def test_an_id_already_used_on_another_shard_comes_back_as_that_saga(
    tmp_path: Path,
) -> None:
    url = "shards:" + " ".join(sqlite_shards(tmp_path, 3))
    saga_id = next(f"d{i}" for i in range(100) if shard_for(f"d{i}", 3) != shard_for("jobs", 3))
    first, second = open_store(url), open_store(url)
    await first.open()
    await second.open()
    try:
        made = await first.create_saga(
            NewSaga(saga_id, "W", '{"n":1}', owner=None, lease_seconds=30)
        )
        assert made.created
        # another process, which never saw it, enqueues the same id: placed by the queue on
        # another shard, it must find the saga by its id and create nothing
        again = await second.create_saga(
            NewSaga(saga_id, "W", '{"n":2}', owner=None, lease_seconds=30, queue="jobs")
        )
        assert not again.created and again.record.input == '{"n":1}'
        assert isinstance(second, ShardedStore)
        holders = [await shard.load_saga(saga_id) is not None for shard in second.shards]
        assert holders.count(True) == 1
    finally:
        await first.close()
        await second.close()


async def test_claims_and_prunes_take_from_every_shard_up_to_their_limit(tmp_path: Path) -> None:
    store = ShardedStore(sqlite_shards(tmp_path, 3))
    await store.open()
    try:
        # all the work on one shard: a claim of 1 whose share goes elsewhere still finds it
        lonely = [f"s{i}" for i in range(60) if shard_for(f"s{i}", 3) == 2][:2]
        for saga_id in lonely:
            await store.create_saga(NewSaga(saga_id, "W", "{}", None, 30.0))
        for _ in range(2):
            assert len(await store.claim("w1", ["W"], 30, 1)) == 1
        assert await store.claim("w1", ["W"], 30, 1) == []

        # work everywhere: each claim takes its limit, never more, and every saga once
        spread = [f"t{i}" for i in range(12)]
        assert {shard_for(s, 3) for s in spread} == {0, 1, 2}
        for saga_id in spread:
            await store.create_saga(NewSaga(saga_id, "W", "{}", None, 30.0))
        taken: list[str] = []
        for _ in range(6):
            claimed = await store.claim("w2", ["W"], 30, 2)
            assert len(claimed) == 2
            taken += [c.record.saga_id for c in claimed]
        assert sorted(taken) == sorted(spread)

        for saga_id in [*lonely, *spread]:
            record = await store.load_saga(saga_id)
            assert record is not None
            await store.append(saga_id, record.fence, None, SagaUpdate("COMPLETED", output="1"))
        assert await store.count_prunable(time.time() + 60) == 14
        pruned: list[str] = []
        while batch := await store.prune(time.time() + 60, limit=4):
            assert len(batch) <= 4
            pruned += batch
        assert sorted(pruned) == sorted([*lonely, *spread])
        assert await store.count_sagas(SagaFilter()) == 0
    finally:
        await store.close()


def entry(saga_id: str, seq: int) -> JournalEntry:
    return JournalEntry(saga_id, seq, "step", "S", "completed", 1, "1", None, None, 1.0, 2.0)


# -- engines over shards ----------------------------------------------------------------------


@pytest.fixture(params=["sqlite-3", "postgres-2"])
def shards(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """Empty databases: 3 SQLite files, or 2 databases of the session's PostgreSQL."""
    if request.param == "sqlite-3":
        return sqlite_shards(tmp_path, 3)
    return postgres_shards(request, 2)


@pytest.fixture
def url(shards: list[str]) -> str:
    return "shards:" + " ".join(shards)


async def per_shard(shards: list[str]) -> list[set[str]]:
    """The saga ids each shard holds, read from each database on its own."""
    found: list[set[str]] = []
    for shard_url in shards:
        store = open_store(shard_url)
        await store.open()
        try:
            records = await store.list_sagas(SagaFilter(), 10_000)
            found.append({r.saga_id for r in records})
        finally:
            await store.close()
    return found


@saga_step("Reserve")
async def reserve(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    return {"reserved": inp["n"]}


@saga_step("Charge")
async def charge(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    return {"charged": inp["n"] * 2}


@saga_workflow("Order")
async def order(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    a = await reserve(saga, inp)
    b = await charge(saga, inp)
    return {**a, **b}


async def test_many_sagas_over_the_shards_complete_and_every_reader_sees_them(
    shards: list[str], url: str
) -> None:
    ids = [f"order-{i}" for i in range(200)]
    async with make_engine(url) as engine:
        engine.register(order)
        handles = await asyncio.gather(
            *(engine.start(order, {"n": i}, s) for i, s in enumerate(ids))
        )
        outputs = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), LONG)
        assert outputs == [{"reserved": i, "charged": 2 * i} for i in range(200)]

        listed = await engine.list(limit=1000)
        assert sorted(s.saga_id for s in listed) == sorted(ids)
        assert all(s.status == SagaStatus.COMPLETED for s in listed)
        # merged newest first, as one store would list them
        keys = [(s.created_at, s.saga_id) for s in listed]
        assert keys == sorted(keys, reverse=True)
        # paging through the admin API crosses shards without losing or repeating a saga
        seen: list[str] = []
        cursor = None
        while True:
            page = await engine.admin.list_sagas(limit=37, cursor=cursor)
            seen += [s.saga_id for s in page.sagas]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
        counts = await engine.admin.count_by_status()
        assert {k: v for k, v in counts.items() if v} == {"COMPLETED": 200}
        snap = await engine.get("order-7")
        assert [s.name for s in snap.steps] == ["Reserve", "Charge"]

    held = await per_shard(shards)
    assert all(held), f"a shard holds no saga: {[len(h) for h in held]}"
    assert sorted(s for h in held for s in h) == sorted(ids)
    for i, h in enumerate(held):
        assert all(shard_for(s, len(shards)) == i for s in h)

    # the CLI takes the same URL (here from SAGAKIT_DB, as a deployment would set it)
    listing = await asyncio.to_thread(cli, {"SAGAKIT_DB": url}, "list", "--limit", "500", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    rows = rows["sagas"] if isinstance(rows, dict) else rows
    assert sorted(row["saga_id"] for row in rows) == sorted(ids)
    shown = await asyncio.to_thread(cli, {}, "show", "order-150", "--db", url)
    assert shown.returncode == 0, shown.stderr
    assert "order-150" in shown.stdout and "Charge" in shown.stdout


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``sagakit`` command in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "sagakit.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8", **env},
        timeout=LONG,
    )


async def wait_suspended(engine: Engine, saga_id: str) -> None:
    """Until ``saga_id`` exists and waits (SUSPENDED)."""
    store = engine._store_or_raise()
    for _ in range(int(LONG / 0.05)):
        record = await store.load_saga(saga_id)
        if record is not None and record.status == SagaStatus.SUSPENDED:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{saga_id} never waited")


async def test_signals_and_children_across_shards(shards: list[str], url: str) -> None:
    n = len(shards)
    # a parent whose child (id "<parent>/child-0") is on another shard
    parent_id = next(
        p
        for p in (f"par{i}" for i in range(100))
        if shard_for(p, n) != shard_for(p + "/child-0", n)
    )

    @saga_workflow("Kid")
    async def kid(saga: SagaContext, inp: int) -> int:
        got = await saga.wait_for_signal("go")
        return int(inp) + int(got)

    @saga_workflow("Parent")
    async def parent(saga: SagaContext, inp: int) -> dict[str, Any]:
        child = await saga.start_child(kid, inp)
        return {"child": child.saga_id, "out": await child.result()}

    async with make_engine(url) as engine:
        engine.register(kid, parent)
        handle = await engine.start(parent, 40, parent_id)
        child_id = f"{parent_id}/child-0"
        await wait_suspended(engine, child_id)
        await engine.signal(child_id, "go", 2)
        assert await asyncio.wait_for(handle.result(), LONG) == {"child": child_id, "out": 42}
        assert (await engine.get(child_id)).status == SagaStatus.COMPLETED

    held = await per_shard(shards)
    assert parent_id in held[shard_for(parent_id, n)]
    assert child_id in held[shard_for(child_id, n)]


async def test_cancelling_a_child_on_another_shard_tells_its_parent(
    shards: list[str], url: str
) -> None:
    n = len(shards)
    parent_id = next(
        p for p in (f"cp{i}" for i in range(100)) if shard_for(p, n) != shard_for(p + "/child-0", n)
    )

    @saga_workflow("Sleeper")
    async def sleeper(saga: SagaContext, inp: None) -> str:
        return str(await saga.wait_for_signal("never"))

    @saga_workflow("Watcher")
    async def watcher(saga: SagaContext, inp: None) -> str:
        child = await saga.start_child(sleeper, None)
        try:
            await child.result()
        except Exception as exc:  # the child's cancellation, told across shards
            return type(exc).__name__
        return "finished"

    async with make_engine(url) as engine:
        engine.register(sleeper, watcher)
        handle = await engine.start(watcher, None, parent_id)
        child_id = f"{parent_id}/child-0"
        await wait_suspended(engine, child_id)
        await engine.admin.cancel(child_id, "not needed")
        assert await asyncio.wait_for(handle.result(), LONG) == "SagaCancelledError"


async def test_a_virtual_objects_calls_keep_their_order_on_one_shard(
    shards: list[str], url: str
) -> None:
    counter = create_saga_virtual_object("Counter")
    ledger: list[str] = []

    @counter.handler()
    async def incr(saga: SagaContext, state: ObjectContext, inp: str) -> int:
        ledger.append(inp)
        count = int(await state.get("count", 0))
        await asyncio.sleep(0.002)
        state.set("count", count + 1)
        return count + 1

    async with make_engine(url) as engine:
        engine.register(counter)
        calls = [
            asyncio.create_task(engine.call_object("Counter", "c1", "incr", f"call-{i}"))
            for i in range(20)
        ]
        results = await asyncio.wait_for(asyncio.gather(*calls), LONG)
        assert results == list(range(1, 21))
        assert ledger == [f"call-{i}" for i in range(20)]
        assert await engine.object_state("Counter", "c1") == {"count": 20}
        records = await engine._store_or_raise().list_sagas(SagaFilter(), 100)
        keys = {r.object_key for r in records}
    assert len(keys) == 1
    (key,) = keys
    assert key is not None
    held = await per_shard(shards)
    home = shard_for(key, len(shards))
    assert {r.saga_id for r in records} <= held[home]


async def test_a_queues_concurrency_limit_holds_with_its_sagas_on_one_shard(
    shards: list[str], url: str
) -> None:
    inside: set[str] = set()
    peak = 0

    @saga_step("Work")
    async def work(ctx: SagaContext, inp: Any) -> None:
        nonlocal peak
        inside.add(ctx.saga_id)
        peak = max(peak, len(inside))
        await asyncio.sleep(0.02)
        inside.discard(ctx.saga_id)

    @saga_workflow("Job")
    async def job(saga: SagaContext, inp: Any) -> str:
        await work(saga, None)
        return "done"

    queue = Queue("orders", concurrency=2)
    ids = [f"job-{i}" for i in range(16)]
    async with make_engine(url) as a, make_engine(url) as b:
        for engine in (a, b):
            engine.register(job, queue)
        for i, saga_id in enumerate(ids):
            await (a if i % 2 else b).enqueue(queue, job, {}, saga_id)
        await _wait_all(a, ids)
        states = await a.admin.queues()
    assert peak == 2
    assert [q.name for q in states] == ["orders"]
    held = await per_shard(shards)
    assert set(ids) <= held[shard_for("orders", len(shards))]


async def _wait_all(engine: Engine, ids: list[str]) -> None:
    for _ in range(int(LONG / 0.05)):
        snaps = [await engine.get(s) for s in ids]
        if all(s.status == SagaStatus.COMPLETED for s in snaps):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not all completed: {[(s.saga_id, s.status) for s in snaps]}")


# -- a SIGKILL mid-step, recovered by another process over the same shards ------------------


class ShardedApp(AppProcesses):
    def __init__(self, tmp_path: Path, url: str):
        super().__init__(tmp_path, url, "tests.crash_app")

    def statuses(self, *saga_ids: str) -> dict[str, str]:
        async def read() -> dict[str, str]:
            async with Engine(self.url) as engine:
                return {s: (await engine.get(s)).status.value for s in saga_ids}

        return asyncio.run(read())


@pytest.fixture
def app(tmp_path: Path, url: str) -> Iterator[ShardedApp]:
    app = ShardedApp(tmp_path, url)
    try:
        yield app
    finally:
        app.stop_all()


@pytest.mark.slow
def test_sigkill_mid_step_and_recovery_by_another_process(
    app: ShardedApp, shards: list[str]
) -> None:
    n = len(shards)
    # sagas on every shard, all blocked in S3 when the first process dies
    sagas = [f"crash-{i}" for i in range(12)]
    assert {shard_for(s, n) for s in sagas} == set(range(n))
    args = [a for s in sagas for a in ("--saga", s, "{}")]
    first = app.spawn("start", *args, "--block", "step:S3")
    app.wait_until(
        first,
        "every saga to block in S3",
        lambda: {e.get("saga") for e in app.events() if e["ev"] == "blocked"} == set(sagas),
    )
    app.kill(first)
    assert set(app.statuses(*sagas).values()) == {"RUNNING"}

    second = app.spawn("recover", *[a for s in sagas for a in ("--wait", s)])
    summary = app.finish(second)
    assert {s: summary[s]["status"] for s in sagas} == {s: "COMPLETED" for s in sagas}
    events = app.events()
    for saga_id in sagas:
        started = Counter(e["step"] for e in events if e["ev"] == "step" and e["saga"] == saga_id)
        # journaled before the kill: once; S3 crashed before its result was journaled: twice
        assert started == {"S1": 1, "S2": 1, "S3": 2, "S4": 1}, saga_id


# -- continue-as-new, routed by saga id -------------------------------------------------------


async def test_a_saga_continues_as_new_on_its_shard(tmp_path: Path) -> None:
    ran: list[int] = []

    @saga_step("Add")
    async def add(ctx: SagaContext, i: int) -> int:
        ran.append(i)
        return i

    @saga_workflow("Looper")
    async def looper(saga: SagaContext, inp: dict[str, int]) -> int:
        total = inp["total"] + await add(saga, inp["i"])
        if inp["i"] + 1 >= 5:
            return total
        saga.continue_as_new({"i": inp["i"] + 1, "total": total})
        raise AssertionError("continue_as_new does not return")

    shards = sqlite_shards(tmp_path, 3)
    url = "shards:" + " ".join(shards)
    async with make_engine(url) as engine:
        engine.register(looper)
        assert await engine.run(looper, {"i": 0, "total": 0}, saga_id="loop-1") == 10
    assert ran == [0, 1, 2, 3, 4]
    # a process that never saw the saga finds it and its earlier runs
    store = open_store(url)
    await store.open()
    try:
        record = await store.load_saga("loop-1")
        assert record is not None and record.run == 5
        assert [e.name for e in await store.load_run("loop-1", 2)] == ["Add"]
        rows = await store.load_runs("loop-1", before=4, limit=2)
        assert [(r.run, json.loads(r.input)) for r in rows] == [
            (3, {"i": 2, "total": 1}),
            (2, {"i": 1, "total": 0}),
        ]
    finally:
        await store.close()
    held = await per_shard(shards)
    assert [("loop-1" in h) for h in held] == [i == shard_for("loop-1", 3) for i in range(3)]
