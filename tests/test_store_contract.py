"""The Store contract (sagakit/stores/base.py), checked directly on every store kind.

Each test opens the store through ``open_store(url)``; tests that need two workers open two
stores on the same database (the same SQLite file, or the same named memory store).
"""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from sagakit.errors import LeaseLost
from sagakit.stores import open_store
from sagakit.stores.base import (
    NEVER,
    AdminChange,
    JournalEntry,
    NewSaga,
    SagaFilter,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    Store,
)
from tests.conftest import STORE_KINDS
from tests.conftest import make_store_url as make_plain_url
from tests.sharding import SHARDED_KINDS, make_sharded_url

EXPIRED = 0.01  # a lease that is over by the time ``await expire()`` returns


async def expire() -> None:
    await asyncio.sleep(EXPIRED * 5)


def make_store_url(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, *, shared: bool = False
) -> str:
    """conftest's recipe, and 2-shard sharded stores (their kinds run this file only)."""
    if kind in SHARDED_KINDS:
        return make_sharded_url(kind, tmp_path, request)
    return make_plain_url(kind, tmp_path, request, shared=shared)


@pytest.fixture(params=[*STORE_KINDS, *SHARDED_KINDS])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def shared_store_url(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return make_store_url(store_kind, tmp_path, request, shared=True)


@pytest.fixture
async def store(shared_store_url: str) -> AsyncIterator[Store]:
    opened = open_store(shared_store_url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def other(shared_store_url: str, store: Store) -> AsyncIterator[Store]:
    """A second store on the same database (another worker)."""
    opened = open_store(shared_store_url)
    await opened.open()
    yield opened
    await opened.close()


def new(
    saga_id: str,
    name: str = "W",
    *,
    owner: str | None = None,
    lease: float = 30.0,
    inp: str = '{"n": 1}',
) -> NewSaga:
    return NewSaga(saga_id=saga_id, name=name, input=inp, owner=owner, lease_seconds=lease)


def entry(saga_id: str, seq: int, *, name: str = "Step", status: str = "completed") -> JournalEntry:
    return JournalEntry(
        saga_id=saga_id,
        seq=seq,
        kind="step",
        name=name,
        status=status,
        attempts=seq + 1,
        output=f'{{"seq": {seq}}}',
        compensation='{"undo": true}' if seq % 2 else None,
        error=None if status == "completed" else '{"type": "E", "message": "m"}',
        started_at=1700000000.25 + seq,
        finished_at=1700000000.75 + seq,
    )


async def load(store: Store, saga_id: str) -> SagaRecord:
    record = await store.load_saga(saga_id)
    assert record is not None
    return record


async def test_store_implements_the_protocol(store: Store, shared_store_url: str) -> None:
    assert isinstance(store, Store)
    assert store.url == shared_store_url


async def test_open_is_safe_when_several_open_a_new_database_at_once(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # several rounds, each on a database that does not exist yet: the first open (schema
    # creation; for SQLite also the switch to WAL, a rare race that needs many rounds to show)
    # is where openers race
    rounds = 15 if store_kind == "sqlite" else 4
    for round_ in range(rounds):
        url = make_store_url(store_kind, tmp_path / str(round_), request, shared=True)
        (tmp_path / str(round_)).mkdir()
        stores = [open_store(url) for _ in range(4)]
        results = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
        try:
            assert [r for r in results if r is not None] == []
            created = await stores[0].create_saga(new("s1"))
            assert created.created
            for s in stores:
                assert (await load(s, "s1")).name == "W"
        finally:
            for s in stores:
                await s.close()


async def test_create_is_idempotent(store: Store) -> None:
    before = time.time()
    first = await store.create_saga(new("s1", inp='{"first": true}'))
    assert first.created
    r = first.record
    assert (r.saga_id, r.name, r.status, r.input) == ("s1", "W", "PENDING", '{"first": true}')
    assert (r.output, r.error, r.owner, r.fence, r.lease_expires_at) == (None, None, None, 1, 0)
    assert before <= r.created_at <= r.updated_at <= time.time()

    again = await store.create_saga(new("s1", "Other", owner="w2", inp='{"second": true}'))
    assert not again.created
    assert again.record == r  # the row that is there, untouched
    assert await store.load_saga("s1") == r


async def test_concurrent_creates_of_one_id_create_one_saga(store: Store, other: Store) -> None:
    results = await asyncio.gather(
        *(s.create_saga(new("race", owner=f"w{i}")) for i in range(5) for s in (store, other))
    )
    assert sum(r.created for r in results) == 1
    owners = {r.record.owner for r in results}
    assert len(owners) == 1  # everyone sees the winner's row
    assert (await load(other, "race")).owner in owners


async def test_create_with_an_owner_is_running_under_a_lease(store: Store) -> None:
    before = time.time()
    r = (await store.create_saga(new("s1", owner="w1", lease=30))).record
    assert (r.status, r.owner, r.fence) == ("RUNNING", "w1", 1)
    assert before + 29 <= r.lease_expires_at <= time.time() + 31


async def test_unknown_saga(store: Store) -> None:
    assert await store.load_saga("nope") is None
    assert await store.load_journal("nope") == []
    with pytest.raises(LeaseLost):
        await store.append("nope", 1, entry("nope", 0))


async def test_journal_round_trips_in_seq_order(store: Store, other: Store) -> None:
    await store.create_saga(new("s1", owner="w1"))
    entries = [entry("s1", seq) for seq in range(4)]
    for e in (entries[2], entries[0], entries[3], entries[1]):
        await store.append("s1", 1, e)
    assert await store.load_journal("s1") == entries
    # append returns once committed: another connection sees it
    assert await other.load_journal("s1") == entries


async def test_append_is_fenced(store: Store, other: Store) -> None:
    await store.create_saga(new("s1", owner="w1"))
    await store.append("s1", 1, entry("s1", 0))
    before = await load(store, "s1")

    for fence in (0, 2):
        with pytest.raises(LeaseLost):
            await store.append("s1", fence, entry("s1", 1))
        with pytest.raises(LeaseLost):
            await store.append("s1", fence, entry("s1", 1), SagaUpdate("COMPLETED", output="1"))
        with pytest.raises(LeaseLost):
            await store.append("s1", fence, None, SagaUpdate("COMPENSATING", error='"e"'))
    assert await store.load_journal("s1") == [entry("s1", 0)]
    assert await load(store, "s1") == before

    # once another worker claimed the saga, the old fence writes nothing
    await store.release("w1", ["s1"])
    claimed = await other.claim("w2", ["W"], 30, 10)
    assert [c.record.fence for c in claimed] == [2]
    with pytest.raises(LeaseLost):
        await store.append("s1", 1, entry("s1", 1))
    await other.append("s1", 2, entry("s1", 1))
    assert [e.seq for e in await store.load_journal("s1")] == [0, 1]


async def test_entry_and_status_change_commit_together(store: Store) -> None:
    await store.create_saga(new("s1", owner="w1"))
    await store.append(
        "s1", 1, entry("s1", 0, status="failed"), SagaUpdate("COMPENSATING", error='{"c": 1}')
    )
    r = await load(store, "s1")
    assert (r.status, r.error, r.owner) == ("COMPENSATING", '{"c": 1}', "w1")
    assert await store.load_journal("s1") == [entry("s1", 0, status="failed")]

    await store.append("s1", 1, None, SagaUpdate("COMPENSATED", error='{"c": 2}'))
    r = await load(store, "s1")
    assert (r.status, r.error) == ("COMPENSATED", '{"c": 2}')


@pytest.mark.parametrize("terminal", ["COMPLETED", "COMPENSATED", "FAILED"])
async def test_terminal_status_clears_owner_and_lease(store: Store, terminal: str) -> None:
    created = (await store.create_saga(new("s1", owner="w1"))).record
    output = '{"done": true}' if terminal == "COMPLETED" else None
    error = None if terminal == "COMPLETED" else '{"kind": "x"}'
    await store.append("s1", 1, entry("s1", 0), SagaUpdate(terminal, output=output, error=error))
    r = await load(store, "s1")
    assert (r.status, r.owner, r.lease_expires_at) == (terminal, None, 0)
    assert (r.output, r.error) == (output, error)
    assert r.updated_at >= created.updated_at
    assert await store.renew_leases("w1", 30, ["s1"]) == 0
    assert await store.claim("w2", ["W"], 30, 10) == []


async def test_renew_leases_pushes_back_the_owners_live_sagas(store: Store) -> None:
    for saga_id, owner in (("a", "w1"), ("b", "w1"), ("c", "w2"), ("done", "w1")):
        await store.create_saga(new(saga_id, owner=owner, lease=5))
    await store.append("b", 1, None, SagaUpdate("COMPENSATING"))
    await store.append("done", 1, None, SagaUpdate("COMPLETED", output="1"))
    other_before = await load(store, "c")

    before = time.time()
    everything = ["a", "b", "c", "done", "unknown"]
    assert await store.renew_leases("w1", 100, everything) == 2
    for saga_id in ("a", "b"):
        r = await load(store, saga_id)
        assert before + 99 <= r.lease_expires_at <= time.time() + 101
        assert r.owner == "w1" and r.fence == 1
    assert await load(store, "c") == other_before
    assert (await load(store, "done")).lease_expires_at == 0
    assert await store.renew_leases("nobody", 100, everything) == 0
    assert await store.renew_leases("w1", 100, []) == 0


async def test_renew_leases_renews_only_the_sagas_named(store: Store) -> None:
    """A saga the worker holds without a live run (a claim whose answer was lost) is not
    renewed: it expires and another worker takes it."""
    await store.create_saga(new("live", owner="w1", lease=5))
    await store.create_saga(new("orphan", owner="w1", lease=EXPIRED))
    assert await store.renew_leases("w1", 100, ["live"]) == 1
    await expire()
    claimed = await store.claim("w2", ["W"], 30, 10)
    assert [c.record.saga_id for c in claimed] == ["orphan"]


async def test_claim_takes_only_expired_runnable_sagas_of_the_given_names(store: Store) -> None:
    await store.create_saga(new("pending"))
    await store.create_saga(new("expired", owner="dead", lease=EXPIRED))
    await store.append("expired", 1, entry("expired", 0))
    await store.append("expired", 1, entry("expired", 1))
    await store.create_saga(new("rolling-back", owner="dead", lease=EXPIRED))
    await store.append("rolling-back", 1, None, SagaUpdate("COMPENSATING", error='"why"'))
    await store.create_saga(new("alive", owner="busy", lease=30))
    await store.create_saga(new("other-name", "Other"))
    await store.create_saga(new("finished", owner="dead", lease=EXPIRED))
    await store.append("finished", 1, None, SagaUpdate("COMPLETED", output="1"))
    await store.create_saga(new("failed", owner="dead", lease=EXPIRED))
    await store.append("failed", 1, None, SagaUpdate("FAILED", error='"e"'))
    await expire()

    before = time.time()
    claimed = await store.claim("w2", ["W", "Unused"], 30, 100)
    by_id = {c.record.saga_id: c for c in claimed}
    assert set(by_id) == {"pending", "expired", "rolling-back"}
    assert by_id["pending"].record.fence == 1 + 1
    for c in claimed:
        assert c.record.owner == "w2"
        assert c.record.fence == 2
        assert before + 29 <= c.record.lease_expires_at <= time.time() + 31
        assert await load(store, c.record.saga_id) == c.record
    assert by_id["pending"].record.status == "RUNNING"
    assert by_id["expired"].record.status == "RUNNING"
    assert by_id["rolling-back"].record.status == "COMPENSATING"
    assert by_id["rolling-back"].record.error == '"why"'
    assert by_id["expired"].journal == [entry("expired", 0), entry("expired", 1)]
    assert by_id["pending"].journal == []
    # a saga whose owner's lease ran out was taken over; a PENDING one had no owner
    assert by_id["expired"].taken_over and by_id["rolling-back"].taken_over
    assert not by_id["pending"].taken_over

    assert await store.claim("w3", ["W"], 30, 100) == []  # all leased now
    assert (await load(store, "alive")).owner == "busy"
    assert [c.record.saga_id for c in await store.claim("w3", ["Other"], 30, 100)] == ["other-name"]
    assert await store.claim("w3", [], 30, 100) == []


async def test_claim_respects_its_limit(store: Store) -> None:
    for i in range(5):
        await store.create_saga(new(f"s{i}"))
    first = await store.claim("w1", ["W"], 30, 2)
    second = await store.claim("w2", ["W"], 30, 10)
    assert len(first) == 2 and len(second) == 3
    assert {c.record.saga_id for c in first} | {c.record.saga_id for c in second} == {
        f"s{i}" for i in range(5)
    }
    assert await store.claim("w1", ["W"], 30, 0) == []


async def test_racing_claimers_never_share_a_saga(store: Store, other: Store) -> None:
    await store.create_saga(new("one", owner="dead", lease=EXPIRED))
    await expire()
    first, second = await asyncio.gather(
        store.claim("w1", ["W"], 30, 10), other.claim("w2", ["W"], 30, 10)
    )
    winners = [c.record.owner for c in (*first, *second)]
    assert len(winners) == 1
    r = await load(other, "one")
    assert (r.owner, r.fence) == (winners[0], 2)

    for i in range(20):
        await store.create_saga(new(f"s{i}"))
    results = await asyncio.gather(
        *(s.claim(f"w{i}", ["W"], 30, 3) for i in range(4) for s in (store, other))
    )
    taken = [c.record.saga_id for batch in results for c in batch]
    assert len(taken) == len(set(taken)) == 20
    for batch in results:
        for c in batch:
            assert (await load(store, c.record.saga_id)).owner == c.record.owner


async def test_release_makes_a_saga_claimable_at_once(store: Store, other: Store) -> None:
    await store.create_saga(new("s1", owner="w1", lease=30))
    await store.create_saga(new("s2", owner="w1", lease=30))
    assert await other.claim("w2", ["W"], 30, 10) == []

    await store.release("w2", ["s1"])  # not its owner: nothing happens
    assert (await load(store, "s1")).owner == "w1"
    await store.release("w1", [])

    await store.release("w1", ["s1"])
    r = await load(store, "s1")
    assert (r.owner, r.lease_expires_at, r.status, r.fence) == (None, 0, "RUNNING", 1)
    claimed = await other.claim("w2", ["W"], 30, 10)
    assert [(c.record.saga_id, c.record.owner, c.record.fence) for c in claimed] == [
        ("s1", "w2", 2)
    ]
    assert not claimed[0].taken_over  # given back, not abandoned
    assert (await load(store, "s2")).owner == "w1"


async def test_list_sagas_filters_and_orders_newest_first(store: Store) -> None:
    await store.create_saga(new("s1", "A"))
    await store.create_saga(new("s2", "B", owner="w1"))
    await store.create_saga(new("s3", "A", owner="w1"))
    await store.create_saga(new("s4", "B", owner="w1"))
    await store.append("s3", 1, None, SagaUpdate("COMPLETED", output="3"))
    await store.append("s4", 1, None, SagaUpdate("COMPLETED", output="4"))

    async def ids(limit: int = 50, **kwargs: object) -> list[str]:
        where = SagaFilter(**kwargs)  # type: ignore[arg-type]
        return [r.saga_id for r in await store.list_sagas(where, limit)]

    assert await ids() == ["s4", "s3", "s2", "s1"]
    assert await ids(status="COMPLETED") == ["s4", "s3"]
    assert await ids(status="PENDING") == ["s1"]
    assert await ids(name="A") == ["s3", "s1"]
    assert await ids(status="COMPLETED", name="B") == ["s4"]
    assert await ids(status="FAILED") == []
    assert await ids(limit=2) == ["s4", "s3"]
    listed = await store.list_sagas(SagaFilter())
    assert listed[0] == await load(store, "s4")
    s2, s3 = await load(store, "s2"), await load(store, "s3")
    assert await ids(created_after=s2.created_at) == ["s4", "s3", "s2"]
    assert await ids(created_before=s3.created_at) == ["s2", "s1"]
    assert await ids(created_after=s2.created_at, created_before=s3.created_at) == ["s2"]


async def test_list_sagas_pages_after_a_saga_even_with_equal_creation_times(store: Store) -> None:
    for i in range(7):
        await store.create_saga(new(f"s{i}", "A" if i % 2 else "B"))
    everything = await store.list_sagas(SagaFilter(), 100)
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_sagas(SagaFilter(after=after), 3)
        seen += [r.saga_id for r in page]
        if len(page) < 3:
            break
        after = (page[-1].created_at, page[-1].saga_id)
    assert seen == [r.saga_id for r in everything]
    assert len(set(seen)) == 7
    # ties on created_at are broken by saga_id, so no saga is skipped or repeated
    last = everything[3]
    tied = await store.list_sagas(SagaFilter(after=(last.created_at, "s99")), 100)
    assert last.saga_id in [r.saga_id for r in tied]


async def test_count_by_status_counts_every_saga_once(store: Store) -> None:
    assert await store.count_by_status() == {}
    await store.create_saga(new("s1"))
    await store.create_saga(new("s2", owner="w1"))
    await store.create_saga(new("s3", owner="w1"))
    await store.append("s3", 1, None, SagaUpdate("COMPLETED", output="3"))
    assert await store.count_by_status() == {"PENDING": 1, "RUNNING": 1, "COMPLETED": 1}


async def test_parked_saga_is_released_and_never_claimed(store: Store) -> None:
    await store.create_saga(new("s1", owner="w1"))
    await store.append("s1", 1, entry("s1", 0, status="failed"), SagaUpdate("PARKED"))
    record = await load(store, "s1")
    assert (record.status, record.owner, record.lease_expires_at) == ("PARKED", None, NEVER)
    assert await store.renew_leases("w1", 30, ["s1"]) == 0
    assert await store.claim("w2", ["W"], 30, 10) == []
    # an event is kept for it, but does not wake it
    delivery = await store.deliver("s1", "signal", "go", "1")
    assert delivery.outcome == "delivered"
    assert await store.claim("w2", ["W"], 30, 10) == []


def audit(saga_id: str, action: str) -> JournalEntry:
    return JournalEntry(saga_id, 0, "admin", action, "completed", 1, '{"by": "ops"}', None, None,
                        1.0, 1.0)  # fmt: skip


async def test_administer_changes_the_saga_only_as_the_operator_saw_it(store: Store) -> None:
    await store.create_saga(new("s1", owner="w1"))
    await store.append("s1", 1, entry("s1", 0))
    await store.append("s1", 1, entry("s1", 1, status="failed"), SagaUpdate("PARKED"))
    stale = AdminChange("s1", "PARKED", 0, "RUNNING", 0.0, audit("s1", "retry"))
    assert await store.administer(stale) is None  # another fence: nothing written
    wrong = AdminChange("s1", "SUSPENDED", 1, "RUNNING", 0.0, audit("s1", "retry"))
    assert await store.administer(wrong) is None
    assert [e.seq for e in await store.load_journal("s1")] == [0, 1]

    replaced = replace(entry("s1", 0), output='{"mock": 1}')
    change = AdminChange(
        "s1", "PARKED", 1, "RUNNING", 0.0, audit("s1", "retry"), delete=(1,), replace=(replaced,)
    )
    record = await store.administer(change)
    assert record is not None
    assert (record.status, record.owner, record.fence) == ("RUNNING", None, 2)
    journal = await store.load_journal("s1")
    assert [(e.seq, e.kind, e.name) for e in journal] == [
        (-1, "admin", "retry"),
        (0, "step", "Step"),
    ]
    assert journal[1].output == '{"mock": 1}'
    # the old owner's fence is stale now: it can write nothing more
    with pytest.raises(LeaseLost):
        await store.append("s1", 1, entry("s1", 2))
    # the saga is due at once; audit entries count down
    claimed = await store.claim("w2", ["W"], 30, 10)
    assert [c.record.saga_id for c in claimed] == ["s1"]
    assert claimed[0].journal[0].seq == -1
    await store.append("s1", 3, None, SagaUpdate("PARKED"))
    again = AdminChange("s1", "PARKED", 3, "CANCELLED", 0.0, audit("s1", "cancel"),
                        error='{"kind": "cancelled"}')  # fmt: skip
    record = await store.administer(again)
    assert record is not None and record.status == "CANCELLED" and record.lease_expires_at == 0
    assert [e.seq for e in await store.load_journal("s1")] == [-2, -1, 0]


async def test_administer_tells_a_parent_in_the_same_transaction(store: Store) -> None:
    await store.create_saga(new("parent", owner="w1"))
    await store.append("parent", 1, None, SagaUpdate("SUSPENDED"))
    await store.create_saga(NewSaga("child", "W", "{}", "w1", 30.0, parent_id="parent"))
    tell = (("parent", "child", "child", '{"status": "CANCELLED"}'),)
    change = AdminChange(
        "child", "RUNNING", 1, "CANCELLED", 0.0, audit("child", "cancel"), tell=tell
    )
    assert await store.administer(change) is not None
    events = await store.load_events("parent")
    assert [(e.kind, e.name, e.payload) for e in events] == [
        ("child", "child", '{"status": "CANCELLED"}')
    ]
    assert (await load(store, "parent")).lease_expires_at < time.time()  # woken


async def test_status_values_are_the_saga_statuses(store: Store) -> None:
    created = await store.create_saga(new("s1"))
    assert SagaStatus(created.record.status) is SagaStatus.PENDING
    claimed = await store.claim("w1", ["W"], 30, 1)
    assert SagaStatus(claimed[0].record.status) is SagaStatus.RUNNING


async def test_a_delivery_key_stores_the_event_once(store: Store) -> None:
    await store.create_saga(new("s1", owner="w1"))
    first = await store.deliver("s1", "signal", "go", "1", key="k1")
    again = await store.deliver("s1", "signal", "go", "1", key="k1")
    assert (first.outcome, again.outcome) == ("delivered", "delivered")
    other = await store.deliver("s1", "signal", "go", "2", key="k2")
    assert other.outcome == "delivered"
    assert [(e.seq, e.payload) for e in await store.load_events("s1")] == [(1, "1"), (2, "2")]
    assert (await load(store, "s1")).event_count == 2
    # the same key on another saga is another delivery
    await store.create_saga(new("s2", owner="w1"))
    assert (await store.deliver("s2", "signal", "go", "1", key="k1")).outcome == "delivered"
    assert len(await store.load_events("s2")) == 1


async def test_a_keyed_delivery_repeated_after_the_saga_ended_keeps_its_first_outcome(
    store: Store,
) -> None:
    await store.create_saga(new("s1", owner="w1"))
    assert (await store.deliver("s1", "promise", "p", "1", unique=True, key="k")).outcome == (
        "delivered"
    )
    await store.append("s1", 1, None, SagaUpdate("COMPLETED", output="1"))
    again = await store.deliver("s1", "promise", "p", "1", unique=True, key="k")
    assert again.outcome == "delivered"
    assert len(await store.load_events("s1")) == 1


async def test_a_wait_token_answers_once(store: Store) -> None:
    await store.create_saga(new("s1", owner="w1"))
    await store.append("s1", 1, None, SagaUpdate("SUSPENDED", wake_at=NEVER, wait_token="t1"))
    first = await store.deliver("s1", "notify", "t1", "1", token="t1")
    second = await store.deliver("s1", "notify", "t1", "2", token="t1")
    assert (first.outcome, second.outcome) == ("delivered", "stale")
    assert (await load(store, "s1")).wait_token is None
    assert [e.payload for e in await store.load_events("s1")] == ["1"]


async def test_two_racing_notifies_with_one_token_deliver_once(store: Store) -> None:
    await store.create_saga(new("s1", owner="w1"))
    await store.append("s1", 1, None, SagaUpdate("SUSPENDED", wake_at=NEVER, wait_token="t1"))
    outcomes = await asyncio.gather(
        *(store.deliver("s1", "notify", "t1", str(i), token="t1") for i in range(5))
    )
    assert sorted(o.outcome for o in outcomes) == ["delivered"] + ["stale"] * 4
    assert len(await store.load_events("s1")) == 1


async def test_an_administer_retried_with_its_key_finds_it_applied(store: Store) -> None:
    await store.create_saga(new("s1", owner="w1"))
    await store.append("s1", 1, entry("s1", 0, status="failed"), SagaUpdate("PARKED"))
    output = '{"action_id": "a1", "action": "retry"}'
    made = JournalEntry("s1", 0, "admin", "retry", "completed", 1, output, None, None, 1.0, 1.0)
    change = AdminChange("s1", "PARKED", 1, "RUNNING", 0.0, made, key="a1")
    first = await store.administer(change)
    assert first is not None and first.fence == 2
    again = await store.administer(change)  # as a retry after a lost answer would
    assert again is not None and (again.status, again.fence) == ("RUNNING", 2)
    assert [e.seq for e in await store.load_journal("s1")] == [-1, 0]
    other = replace(change, key="a2")
    assert await store.administer(other) is None  # another action: stale, not applied


async def test_delete_saga_removes_an_ended_saga_once(store: Store) -> None:
    from sagakit.engine.waits import saga_scope  # the scope the engine publishes state in
    from sagakit.stores.base import StateWrite

    await store.create_saga(new("s1", owner="w1"))
    await store.create_saga(new("s2", owner="w1"))
    for saga_id in ("s1", "s2"):
        write = StateWrite(saga_scope(saga_id), "k", '"v"')
        await store.append(saga_id, 1, entry(saga_id, 0), state=(write,))
        await store.deliver(saga_id, "signal", "go", "1", key=f"{saga_id}-k")
    assert not await store.delete_saga("s1")  # RUNNING: not ended, nothing deleted
    assert (await load(store, "s1")).status == "RUNNING"
    await store.append("s1", 1, None, SagaUpdate("COMPLETED", output="1"))
    assert await store.delete_saga("s1")
    assert await store.load_saga("s1") is None
    assert await store.load_journal("s1") == []
    assert await store.load_events("s1") == []
    assert await store.load_state(saga_scope("s1")) == {}
    assert not await store.delete_saga("s1")  # as a retry after a lost answer: harmless
    assert not await store.delete_saga("nobody")
    # the other saga is untouched, and the id can be used again
    assert len(await store.load_journal("s2")) == 1
    assert await store.load_state(saga_scope("s2")) == {"k": '"v"'}
    assert (await store.create_saga(new("s1"))).created
    assert await store.load_events("s1") == []
    assert (await store.deliver("s1", "signal", "go", "1", key="s1-k")).outcome == "delivered"
    assert len(await store.load_events("s1")) == 1


async def test_prune_deletes_ended_sagas_before_the_cutoff_a_batch_at_a_time(
    store: Store, other: Store
) -> None:
    from sagakit.stores.base import saga_scope

    for saga_id, parent, status in [
        ("a", None, "COMPLETED"),
        ("b", None, "CANCELLED"),
        ("c", None, "FAILED"),
        ("live", None, None),
        ("kid", "live", "COMPENSATED"),  # its parent may still read its outcome
    ]:
        await store.create_saga(replace(new(saga_id, owner="w1"), parent_id=parent))
        await store.append(saga_id, 1, entry(saga_id, 0))
        if status is not None:
            await store.append(saga_id, 1, None, SagaUpdate(status, output="1"))
    await asyncio.sleep(EXPIRED)
    cutoff = time.time()
    await asyncio.sleep(EXPIRED)
    await store.create_saga(new("young", owner="w1"))
    await store.append("young", 1, None, SagaUpdate("COMPLETED", output="1"))

    assert await other.count_prunable(cutoff) == 2
    first = await store.prune(cutoff, None, 1)
    second = await other.prune(cutoff, None, 1)  # another worker goes on where it stopped
    assert sorted(first + second) == ["a", "b"]
    assert await store.prune(cutoff, None, 1) == []
    assert await store.load_journal("a") == [] and await store.load_saga("b") is None
    assert await store.load_state(saga_scope("a")) == {}
    assert await other.count_prunable(cutoff) == 0
    assert await store.prune(cutoff, ["FAILED", "RUNNING"], 10) == ["c"]
    for kept in ("live", "kid", "young"):
        assert await store.load_saga(kept) is not None
