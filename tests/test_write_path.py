"""The write path (issue 4): what the group commit and the write-behind of journal entries
promise, checked on every store kind, and the SQLite writer's behaviour on a locked file.

A step's entry is queued when the step returns and the saga function goes on at once; the entry
must be committed before anything leaves the run: the next step's body, a compensation, or the
result handed to the caller.
"""

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaCompensatedError, SagaContext, TerminalError, saga_step, saga_workflow
from sagakit.errors import LeaseLost
from sagakit.stores import open_store
from sagakit.stores.base import JournalEntry, NewSaga, SagaStatus, SagaUpdate, Store
from tests.conftest import make_engine


async def _committed_steps(observer: Store, saga_id: str) -> list[str]:
    return [f"{e.kind}:{e.name}:{e.status}" for e in await observer.load_journal(saga_id)]


async def test_each_side_effect_sees_what_came_before_committed(shared_store_url: str) -> None:
    observer = open_store(shared_store_url)  # another connection: it sees only what committed
    await observer.open()
    seen: dict[str, list[str]] = {}

    async def undo_first(data: Any) -> None:
        seen["undo"] = await _committed_steps(observer, "w1")

    @saga_step("First", compensate=undo_first)
    async def first(ctx: SagaContext, inp: int) -> int:
        return inp

    @saga_step("Second")
    async def second(ctx: SagaContext, inp: int) -> int:
        seen["second"] = await _committed_steps(observer, "w1")
        return inp

    @saga_step("Third")
    async def third(ctx: SagaContext, inp: int) -> int:
        seen["third"] = await _committed_steps(observer, "w1")
        raise TerminalError("no")

    @saga_workflow("WritePath")
    async def flow(saga: SagaContext, inp: int) -> int:
        await first(saga, inp)
        await saga.now()  # a journaled value between two steps
        await second(saga, inp)
        return await third(saga, inp)

    try:
        async with make_engine(shared_store_url) as engine:
            engine.register(flow)
            with pytest.raises(SagaCompensatedError):
                await engine.run(flow, 1, saga_id="w1", timeout=20)
            # the caller hears of the outcome only once it is committed
            record = await observer.load_saga("w1")
            assert record is not None and record.status == SagaStatus.COMPENSATED
    finally:
        await observer.close()

    assert seen["second"] == ["step:First:completed", "now:now:completed"]
    assert seen["third"][:3] == [
        "step:First:completed",
        "now:now:completed",
        "step:Second:completed",
    ]
    assert seen["undo"][:4] == [*seen["third"][:3], "step:Third:failed"]


async def test_appends_queued_together_commit_in_call_order(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    try:
        await store.create_saga(NewSaga("s1", "W", "1", "w1", 30))
        entries = [
            JournalEntry("s1", seq, "step", "S", "completed", 1, str(seq), None, None, 1.0, 2.0)
            for seq in range(3)
        ]
        # queued without awaiting in between: the call, not the await, fixes the order
        futures = [store.append("s1", 1, e) for e in entries]
        futures.append(store.append("s1", 1, None, SagaUpdate("COMPLETED", output='"done"')))
        await asyncio.gather(*futures)
        assert await store.load_journal("s1") == entries
        record = await store.load_saga("s1")
        assert record is not None and (record.status, record.output) == ("COMPLETED", '"done"')
        # a fenced-out append fails through its future, and the others still commit
        stale = store.append("s1", 7, entries[0])
        with pytest.raises(LeaseLost):
            await stale
    finally:
        await store.close()


async def test_sqlite_writer_never_blocks_the_loop_on_a_locked_file(tmp_path: Path) -> None:
    hold = 1.0  # seconds the other connection keeps the file locked
    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}"

    @saga_step("Only")
    async def only(ctx: SagaContext, inp: int) -> int:
        return inp * 2

    @saga_workflow("Locked")
    async def flow(saga: SagaContext, inp: int) -> int:
        return await only(saga, inp)

    async with make_engine(url) as engine:
        engine.register(flow)
        await engine.run(flow, 1, saga_id="warm")  # tables exist, the file is in WAL mode

        # another process (here another connection) holds the write lock for a second
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        run = asyncio.create_task(engine.run(flow, 21, saga_id="while-locked", timeout=20))
        await asyncio.sleep(hold)
        assert not run.done()  # it cannot commit while the lock is held...
        other.execute("COMMIT")
        other.close()
        assert await run == 42  # ...and commits once it is free, with nothing lost
        stop.set()
        await ticking

    # the loop kept turning while the writer waited: a writer that waited for the lock on the
    # loop would stall it until it gave up (the lock is released from the loop). The bound is
    # generous: a loaded machine may delay a 5 ms tick, not by half a second
    assert max(gaps) < hold / 2, f"the event loop stalled for {max(gaps):.3f}s"
