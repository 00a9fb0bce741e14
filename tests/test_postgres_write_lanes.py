"""The PostgreSQL store with several writer connections (``write_connections``): each saga's
writes still commit in order and every saga ends; a call still runs after the writes queued
before it."""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import Engine, SagaContext, saga_step, saga_workflow
from sagakit.errors import StoreError
from sagakit.stores.postgres.store import PostgresStore


@saga_step("LaneStep")
async def lane_step(ctx: SagaContext, inp: int) -> int:
    return inp + 1


@saga_workflow("Lanes")
async def lanes(saga: SagaContext, n: int) -> list[float]:
    # journaled values are written behind (several writes of one saga queued at once)
    seen = []
    for i in range(n):
        seen.append((await saga.now()).timestamp())
        await lane_step(saga, i)
    return seen


async def test_two_write_connections_keep_each_sagas_writes_in_order(pg_url: str) -> None:
    store = PostgresStore(pg_url, write_connections=2)
    async with Engine(store=store) as engine:
        engine.register(lanes)
        for round_ in range(3):
            handles = [await engine.start(lanes, 4, saga_id=f"s{round_}-{i}") for i in range(64)]
            for handle in handles:
                clocks = await handle.result()
                assert clocks == sorted(clocks)
        # a call (a renewal) queued behind the appends of many sagas runs once they are in
        assert await store.renew_leases(engine.worker_id, 30.0, ["s0-0"]) == 0
        used = [lane.commits for lane in store._lanes]
    assert len(used) == 2 and all(used), f"commits per lane: {used}"
    async with Engine(pg_url, worker=False) as reader:
        for round_ in range(3):
            for i in range(64):
                snapshot = await reader.get(f"s{round_}-{i}")
                assert str(snapshot.status) == "COMPLETED"
                journal = await reader._store_or_raise().load_journal(f"s{round_}-{i}")
                seqs = [e.seq for e in journal if e.seq >= 0]
                assert seqs == list(range(8)), seqs
                kinds: list[Any] = [e.kind for e in sorted(journal, key=lambda e: e.seq)]
                assert kinds == ["now", "step"] * 4


def test_write_connections_must_be_positive() -> None:
    with pytest.raises(StoreError, match="write_connections"):
        PostgresStore("postgresql://localhost/x", write_connections=0)
