"""Retention: ``Store.prune``/``count_prunable`` on every store kind, ``Engine(retention=...)``
pruning in the background, and ``sagakit prune`` as a user runs it (a fresh process, on SQLite
and PostgreSQL)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from sagakit import Engine, SagaContext, SagaValidationError, saga_workflow
from sagakit.cli.common import iso_utc
from sagakit.engine.retention import prune_ended
from sagakit.stores import open_store
from sagakit.stores.base import (
    JournalEntry,
    NewSaga,
    SagaUpdate,
    StateWrite,
    Store,
    saga_scope,
)
from tests.conftest import TEST_LEASE, TEST_POLL
from tests.test_cli import sagakit
from tests.waiting import eventually

#: long enough between two groups of sagas that the store's clock orders them apart
GAP = 0.05


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    await opened.open()
    yield opened
    await opened.close()


async def saga(
    store: Store, saga_id: str, status: str = "COMPLETED", *, parent_id: str | None = None
) -> None:
    """A saga with a journal entry, an event and published state, left in ``status``."""
    await store.create_saga(
        NewSaga(saga_id, "W", '{"n": 1}', owner="w1", lease_seconds=60, parent_id=parent_id)
    )
    now = time.time()
    step = JournalEntry(saga_id, 0, "step", "S", "completed", 1, "1", None, None, now, now)
    write = StateWrite(saga_scope(saga_id), "k", '"v"')
    await store.append(saga_id, 1, step, state=(write,))
    await store.deliver(saga_id, "signal", "go", "1")
    if status != "RUNNING":
        await store.append(saga_id, 1, None, SagaUpdate(status, output="1"))


async def cutoff() -> float:
    """A moment after everything written so far and before anything written next."""
    await asyncio.sleep(GAP)
    moment = time.time()
    await asyncio.sleep(GAP)
    return moment


async def present(store: Store, *saga_ids: str) -> set[str]:
    return {s for s in saga_ids if await store.load_saga(s) is not None}


async def test_prune_deletes_only_ended_sagas_older_than_the_cutoff(store: Store) -> None:
    for saga_id, status in [
        ("done", "COMPLETED"),
        ("undone", "COMPENSATED"),
        ("cancelled", "CANCELLED"),
        ("failed", "FAILED"),
        ("running", "RUNNING"),
    ]:
        await saga(store, saga_id, status)
    before = await cutoff()
    await saga(store, "young", "COMPLETED")
    everyone = ("done", "undone", "cancelled", "failed", "running", "young")

    assert await store.count_prunable(before) == 3
    assert sorted(await store.prune(before)) == ["cancelled", "done", "undone"]
    assert await present(store, *everyone) == {"failed", "running", "young"}
    for saga_id in ("done", "undone", "cancelled"):  # with everything that was theirs
        assert await store.load_journal(saga_id) == []
        assert await store.load_events(saga_id) == []
        assert await store.load_state(saga_scope(saga_id)) == {}
    assert len(await store.load_journal("young")) == 1
    assert await store.load_state(saga_scope("young")) == {"k": '"v"'}
    assert await store.prune(before) == []
    assert await store.count_prunable(before) == 0

    # FAILED only when asked for; a status that has not ended is never deleted
    assert await store.prune(before, ["RUNNING", "SUSPENDED"]) == []
    assert await store.prune(before, ["FAILED"]) == ["failed"]
    assert await present(store, *everyone) == {"running", "young"}
    # the id can be used again
    assert (await store.create_saga(NewSaga("done", "W", "{}", None, 1))).created


async def test_prune_keeps_sagas_tied_to_a_saga_that_has_not_ended(store: Store) -> None:
    await saga(store, "live-parent", "RUNNING")
    await saga(store, "child-of-live", "COMPLETED", parent_id="live-parent")
    await saga(store, "parent-of-live", "CANCELLED")
    await saga(store, "live-child", "RUNNING", parent_id="parent-of-live")
    await saga(store, "ended-parent", "COMPLETED")
    await saga(store, "child-of-ended", "COMPENSATED", parent_id="ended-parent")
    before = await cutoff()

    assert await store.count_prunable(before) == 2
    assert sorted(await store.prune(before)) == ["child-of-ended", "ended-parent"]
    kept = {"live-parent", "child-of-live", "parent-of-live", "live-child"}
    assert await present(store, *kept) == kept

    # once the parent and the child have ended, both pairs go
    await store.append("live-parent", 1, None, SagaUpdate("COMPLETED", output="1"))
    await store.append("live-child", 1, None, SagaUpdate("COMPLETED", output="1"))
    later = await cutoff()
    assert await store.count_prunable(later) == 4
    assert sorted(await store.prune(later)) == sorted(kept)


async def test_prune_deletes_at_most_its_limit_per_call(store: Store) -> None:
    ids = [f"s{i}" for i in range(7)]
    for saga_id in ids:
        await saga(store, saga_id)
    before = await cutoff()
    batches = [await store.prune(before, None, 3) for _ in range(4)]
    assert [len(b) for b in batches] == [3, 3, 1, 0]
    assert sorted(s for b in batches for s in b) == ids
    assert await present(store, *ids) == set()


async def test_prune_ended_batches_until_none_is_left_and_dry_run_writes_nothing(
    store: Store,
) -> None:
    ids = [f"s{i}" for i in range(5)]
    for saga_id in ids:
        await saga(store, saga_id)
    await saga(store, "failed", "FAILED")
    before = await cutoff()

    assert await prune_ended(store, before, batch=2, dry_run=True) == 5
    assert await prune_ended(store, before, statuses=["failed"], dry_run=True) == 1
    assert await present(store, *ids, "failed") == {*ids, "failed"}
    for saga_id in ids:
        assert len(await store.load_journal(saga_id)) == 1

    totals: list[int] = []
    assert await prune_ended(store, before, batch=2, progress=totals.append) == 5
    assert totals == [2, 4, 5]
    assert await present(store, *ids, "failed") == {"failed"}
    with pytest.raises(SagaValidationError, match="RUNNING"):
        await prune_ended(store, before, statuses=["RUNNING"])


@saga_workflow("Quick")
async def quick(saga: SagaContext, inp: dict[str, int]) -> int:
    return inp["n"]


async def test_engine_with_retention_prunes_ended_sagas_in_the_background(
    store_url: str,
) -> None:
    engine = Engine(
        store_url,
        lease=TEST_LEASE,
        poll_interval=TEST_POLL,
        retention=timedelta(milliseconds=100),
    )
    engine.register(quick)
    async with engine:
        store = engine._store_or_raise()
        # sagas of a workflow this engine does not run: a live one and a FAILED one
        await saga(store, "running", "RUNNING")
        await saga(store, "failed", "FAILED")
        for n in range(3):
            assert await engine.run(quick, {"n": n}, saga_id=f"q{n}") == n

        async def pruned() -> bool:
            return not await present(store, "q0", "q1", "q2")

        await eventually(pruned, "the completed sagas to be pruned")
        # the batch that took the completed sagas had the others before it too
        assert await present(store, "running", "failed") == {"running", "failed"}
        assert len(await store.load_journal("running")) == 1


def test_engine_refuses_a_retention_that_is_not_a_positive_timedelta() -> None:
    with pytest.raises(ValueError, match="retention must be positive"):
        Engine("memory://", retention=timedelta(0))
    with pytest.raises(TypeError, match="timedelta"):
        Engine("memory://", retention=30)  # type: ignore[arg-type]
    assert Engine("memory://").retention is None


# -- sagakit prune, in a fresh process -----------------------------------------------------


async def prepare(url: str) -> str:
    """Old sagas (3 COMPLETED, 1 FAILED, 1 RUNNING), then a young COMPLETED one; returns the
    moment between them, as ``--older-than`` takes it."""
    store = open_store(url)
    await store.open()
    try:
        for i in range(3):
            await saga(store, f"old{i}")
        await saga(store, "old-failed", "FAILED")
        await saga(store, "old-running", "RUNNING")
        moment = await cutoff()
        await saga(store, "young")
    finally:
        await store.close()
    return iso_utc(datetime.fromtimestamp(moment, UTC))


async def remaining(url: str) -> dict[str, int]:
    store = open_store(url)
    await store.open()
    try:
        counts = await store.count_by_status()
        journals = 0
        for saga_id in ("old0", "old1", "old2", "old-failed", "old-running", "young"):
            journals += len(await store.load_journal(saga_id))
    finally:
        await store.close()
    return {**counts, "journal entries": journals}


def test_prune_command(process_db_url: str) -> None:
    url = process_db_url
    moment = asyncio.run(prepare(url))
    full = {"COMPLETED": 4, "FAILED": 1, "RUNNING": 1, "journal entries": 6}
    assert asyncio.run(remaining(url)) == full

    dry = sagakit("prune", "--db", url, "--older-than", moment, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert re.match(r"would delete 3 sagas \(COMPLETED, COMPENSATED, CANCELLED\)", dry.stdout)
    assert asyncio.run(remaining(url)) == full

    done = sagakit("prune", "--db", url, "--older-than", moment, "--batch", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 3 sagas"), done.stdout
    assert asyncio.run(remaining(url)) == {
        "COMPLETED": 1,
        "FAILED": 1,
        "RUNNING": 1,
        "journal entries": 3,
    }

    failed = sagakit("prune", "--db", url, "--older-than", moment, "--status", "failed")
    assert failed.returncode == 0, failed.stderr
    assert failed.stdout.startswith("deleted 1 saga (FAILED)"), failed.stdout

    # an age: the young saga is seconds old, not a day
    aged = sagakit("prune", "--db", url, "--older-than", "1d")
    assert aged.returncode == 0, aged.stderr
    assert aged.stdout.startswith("deleted 0 sagas"), aged.stdout
    assert asyncio.run(remaining(url)) == {"COMPLETED": 1, "RUNNING": 1, "journal entries": 2}


def test_prune_command_refuses_what_it_cannot_do(process_db_url: str) -> None:
    url = process_db_url
    asyncio.run(prepare(url))
    for args, needle in [
        (["--older-than", "soon"], "neither an ISO date/time"),
        (["--older-than", "1d", "--status", "RUNNING"], "RUNNING"),
        (["--older-than", "1d", "--batch", "0"], "--batch"),
        ([], "--older-than"),
    ]:
        result = sagakit("prune", "--db", url, *args)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        assert needle in result.stderr, result.stderr
    assert asyncio.run(remaining(url))["journal entries"] == 6
