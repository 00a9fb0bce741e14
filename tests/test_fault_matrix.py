"""The fault matrix: every store operation under every network fault, on a real PostgreSQL.

A :class:`~tests.faultproxy.FaultProxy` sits between the store (or an Engine) and the server.
Each test arms one fault at one message of one operation and checks the outcome against a
simple model: no lost write, no duplicate, no stuck saga, and a clear error where the caller
must be told. The faults, at the message that commits the operation's write (for a cut before
send: the operation's first statement):

* ``cut_before_send``: nothing reached the server; the store reconnects and writes.
* ``cut_after_send``: the server may have committed, the answer is lost; the retry must be a
  no-op that returns the first outcome.
* ``cut_after_answer``: the caller got the answer; the dead connection must not hurt the next
  operation.
* ``delay(0.3)``: a slow network, below the statement timeout.
* ``blackhole``: the commit is swallowed and the connection goes silent (the server keeps the
  transaction open, with its locks); the store must notice by its statement timeout. The
  partition heals once the store gave up on that connection.
* ``blackhole_after_send``: the server commits, then the connection goes silent: a lost
  answer that only a timeout reveals.
* ``delay(1.5)``: the commit is held past the statement timeout: the store gives up and
  retries on a new connection, and then the first attempt's commit reaches the server (late,
  as a retransmitted packet would), perhaps while the retry waits on its locks — unless the
  server has ended that session first for sitting idle inside its transaction longer than the
  store's statement timeout (``idle_in_transaction_session_timeout``), which rolls it back.

The table of outcomes is in docs/reliability.md ("Fault matrix (PostgreSQL)").
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
import pytest_asyncio

from sagakit import Engine, SagaContext, saga_step, saga_workflow
from sagakit.errors import StoreError
from sagakit.stores.base import (
    NEVER,
    AdminChange,
    DeliveryOutcome,
    JournalEntry,
    NewSaga,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
)
from sagakit.stores.postgres import PostgresStore

from .conftest import fresh_pg_database
from .faultproxy import Fault, FaultKind, FaultProxy, Predicate, commit_of, containing
from .pgserver import PgServer
from .waiting import eventually

# one event loop for the module, so that the oracle (a store on a direct connection) is
# opened once
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

T = TypeVar("T")

#: the store under test: statements time out after COMMAND_TIMEOUT (so a blackhole is noticed),
#: and a retry gives up after RETRY_DEADLINE, far longer than any fault here lasts
COMMAND_TIMEOUT = 1.0
RETRY_DEADLINE = 10.0
#: a lease short enough to watch one expire
LEASE = 1.0
#: only a guard against a hang: no test is expected to come near it
HANG_GUARD = 60.0

FAULTS = [
    Fault.cut_before_send(),
    Fault.cut_after_send(),
    Fault.cut_after_answer(),
    Fault.delay(0.3),
    Fault.blackhole(),
    Fault.blackhole_after_send(),
    # held past the statement timeout: the store gives up and retries, then the first
    # attempt's commit reaches the server, maybe while the retry waits on its locks
    Fault.delay(COMMAND_TIMEOUT + 0.5),
]


def _answer_may_be_lost(fault: Fault) -> bool:
    """May the caller's first attempt have committed without the caller hearing of it?"""
    if fault.kind is FaultKind.DELAY:
        return fault.seconds > COMMAND_TIMEOUT
    return fault.kind in (FaultKind.CUT_AFTER_SEND, FaultKind.BLACKHOLE_AFTER_SEND)


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_db(pg_server: PgServer) -> str:
    """One database for the module (the server is never restarted here): every test uses
    its own saga ids, owners and workflow names."""
    return fresh_pg_database(pg_server)


@pytest_asyncio.fixture(loop_scope="module")
async def proxy(pg_server: PgServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(pg_server.port) as started:
        yield started


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def oracle(fault_db: str) -> AsyncIterator[PostgresStore]:
    """A store on a direct connection: sets sagas up and reads what is really stored."""
    store = PostgresStore(fault_db)
    await store.open()
    yield store
    await store.close()


def _proxied_store(
    proxy: FaultProxy,
    url: str,
    *,
    retry_deadline: float = RETRY_DEADLINE,
    command_timeout: float = COMMAND_TIMEOUT,
) -> PostgresStore:
    return PostgresStore(
        proxy.url_for(url), retry_deadline=retry_deadline, command_timeout=command_timeout
    )


@pytest_asyncio.fixture(loop_scope="module")
async def store(
    proxy: FaultProxy, fault_db: str, oracle: PostgresStore
) -> AsyncIterator[PostgresStore]:
    """The store under test, through the proxy."""
    opened = _proxied_store(proxy, fault_db)
    await opened.open()
    yield opened
    await proxy.heal()
    await opened.close()


# -- the fault harness ---------------------------------------------------------------------------


def _target(fault: Fault, mark: str) -> Predicate:
    """A cut before send hits the operation's first statement; the other faults hit the
    message that commits it."""
    return containing(mark) if fault.kind is FaultKind.CUT_BEFORE_SEND else commit_of(mark)


async def under_fault(
    proxy: FaultProxy, fault: Fault, mark: str, operation: Callable[[], Awaitable[T]]
) -> T:
    """Run ``operation`` with ``fault`` armed at its statements (those carrying ``mark``).

    A blackhole lasts until the store gave up on the silent connection by itself (or the
    operation finished elsewhere), then heals, as a partition that outlived TCP would.
    """
    armed = proxy.arm(fault, _target(fault, mark))
    async with asyncio.timeout(HANG_GUARD):
        task: asyncio.Task[T] = asyncio.ensure_future(operation())
        if fault.is_blackhole:
            fired = asyncio.ensure_future(armed.fired.wait())
            await asyncio.wait({task, fired}, return_when=asyncio.FIRST_COMPLETED)
            fired.cancel()
            if armed.link is not None:
                gone = asyncio.ensure_future(armed.link.client_gone.wait())
                await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
                gone.cancel()
            await proxy.heal()
        result = await task
        if fault.kind is FaultKind.DELAY and fault.seconds > COMMAND_TIMEOUT:
            # the held commit is only late if that connection was given up first: by the store
            # (its statement timeout), or by the server, which ends a session left idle inside
            # a transaction (the store sets idle_in_transaction_session_timeout)
            assert armed.link is not None, f"{fault} never met a statement carrying {mark!r}"
            await armed.link.ended.wait()
    proxy.disarm()
    assert armed.fired.is_set(), f"{fault} never met a statement carrying {mark!r}"
    return result


async def _load(store: PostgresStore, saga_id: str) -> SagaRecord:
    record = await store.load_saga(saga_id)
    assert record is not None, f"saga {saga_id} is lost"
    return record


async def _store_still_works(store: PostgresStore) -> None:
    """After the fault, the store writes again (on a new connection where it needed one)."""
    saga_id = _uid("after")
    async with asyncio.timeout(HANG_GUARD):
        created = await store.create_saga(NewSaga(saga_id, "After", "{}", None, 30.0))
    assert created.created


def _entry(saga_id: str, seq: int, output: str) -> JournalEntry:
    return JournalEntry(saga_id, seq, "step", "Step", "completed", 1, output, None, None, 1.0, 2.0)


async def _running(oracle: PostgresStore, owner: str = "w1", lease: float = 30.0) -> str:
    saga_id = _uid("s")
    await oracle.create_saga(NewSaga(saga_id, "W", '{"n": 1}', owner, lease))
    return saga_id


async def _suspended(oracle: PostgresStore, token: str | None = None) -> str:
    saga_id = await _running(oracle)
    update = SagaUpdate("SUSPENDED", wake_at=NEVER, wait_token=token)
    await oracle.append(saga_id, 1, None, update)
    return saga_id


async def _events(oracle: PostgresStore, saga_id: str) -> list[tuple[str, str, str]]:
    return [(e.kind, e.name, e.payload) for e in await oracle.load_events(saga_id)]


# -- the proxy itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "committed"),
    [
        (Fault.cut_before_send(), False),
        (Fault.cut_after_send(), True),
        (Fault.cut_after_answer(), True),
    ],
    ids=str,
)
async def test_the_proxy_cuts_where_it_is_told(
    proxy: FaultProxy, fault_db: str, fault: Fault, committed: bool
) -> None:
    """The faults mean what they say, on a bare asyncpg connection: a cut before send
    commits nothing, a cut after send commits what the client never hears of."""
    mark = _uid("probe")
    conn = await asyncpg.connect(proxy.url_for(fault_db))
    direct = await asyncpg.connect(fault_db)
    try:
        await direct.execute("CREATE TABLE IF NOT EXISTS fault_probe (mark text PRIMARY KEY)")
        armed = proxy.arm(fault, _target(fault, mark))
        insert = conn.execute("INSERT INTO fault_probe VALUES ($1)", mark)
        if fault.kind is FaultKind.CUT_AFTER_ANSWER:
            await insert  # the answer arrived; the connection is closed just after
        else:
            with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
                await insert
        assert armed.fired.is_set() and armed.link is not None and armed.link.closed
        # once its backend has exited, the cut connection's transaction is over, one way or
        # the other
        pid = conn.get_server_pid()

        async def backend_gone() -> bool:
            query = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1"
            return bool(await direct.fetchval(query, pid))

        await eventually(backend_gone, "the cut connection's backend to exit", HANG_GUARD)
        found = await direct.fetchval("SELECT count(*) FROM fault_probe WHERE mark = $1", mark)
        assert found == int(committed)
    finally:
        conn.terminate()
        await direct.close()


# -- create --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS, ids=str)
async def test_create_to_run_here(
    proxy: FaultProxy, store: PostgresStore, oracle: PostgresStore, fault: Fault
) -> None:
    """A start that runs the saga here: the first caller is told created=True (else the
    engine would not run a saga it owns), a repeat is told it exists, one row."""
    saga_id = _uid("create")
    new = NewSaga(saga_id, "W", '{"n": 1}', "w1", 30.0)
    created = await under_fault(proxy, fault, saga_id, lambda: store.create_saga(new))
    assert created.created, "the first caller was told the saga already existed"
    assert (created.record.saga_id, created.record.owner) == (saga_id, "w1")
    assert created.record.status == SagaStatus.RUNNING
    stored = await _load(oracle, saga_id)
    assert (stored.owner, stored.fence, stored.input) == ("w1", 1, '{"n": 1}')
    repeated = await store.create_saga(new)
    assert not repeated.created and repeated.record.name == "W"  # the same saga: no conflict
    await _store_still_works(store)


@pytest.mark.parametrize("fault", FAULTS, ids=str)
async def test_create_for_a_worker(
    proxy: FaultProxy, store: PostgresStore, oracle: PostgresStore, fault: Fault
) -> None:
    """A start left PENDING for any worker: one row, created=True to the first caller."""
    saga_id = _uid("create")
    new = NewSaga(saga_id, "W", '{"n": 2}', None, 30.0)
    created = await under_fault(proxy, fault, saga_id, lambda: store.create_saga(new))
    assert created.created, "the first caller was told the saga already existed"
    stored = await _load(oracle, saga_id)
    assert (stored.status, stored.owner, stored.fence) == (SagaStatus.PENDING, None, 1)
    repeated = await store.create_saga(new)
    assert not repeated.created and repeated.record.name == "W"
    await _store_still_works(store)


@pytest.mark.parametrize("fault", FAULTS, ids=str)
async def test_create_of_an_object_key(
    proxy: FaultProxy, store: PostgresStore, oracle: PostgresStore, fault: Fault
) -> None:
    """A virtual object's call (its own statement, under the key's lock): one row, run here
    and created=True to the first caller."""
    saga_id = _uid("call")
    new = NewSaga(saga_id, "W", '{"n": 3}', "w1", 30.0, object_key=_uid("obj"))
    created = await under_fault(proxy, fault, saga_id, lambda: store.create_saga(new))
    assert created.created, "the first caller was told the saga already existed"
    assert (created.record.owner, created.record.status) == ("w1", SagaStatus.RUNNING)
    stored = await _load(oracle, saga_id)
    assert (stored.owner, stored.fence, stored.object_key) == ("w1", 1, new.object_key)
    repeated = await store.create_saga(new)
    assert not repeated.created and repeated.record.name == "W"
    await _store_still_works(store)


# -- append --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS, ids=str)
async def test_append(
    proxy: FaultProxy, store: PostgresStore, oracle: PostgresStore, fault: Fault
) -> None:
    """A journal entry with the status change it brings: there once, the status right, and
    the caller's future resolves (no LeaseLost from its own lost attempt)."""
    saga_id = await _running(oracle)
    entry = _entry(saga_id, 0, '{"paid": 40}')
    update = SagaUpdate("COMPLETED", output='{"done": true}')

    async def append() -> None:
        await store.append(saga_id, 1, entry, update)

    await under_fault(proxy, fault, saga_id, append)
    assert await oracle.load_journal(saga_id) == [entry]
    stored = await _load(oracle, saga_id)
    assert (stored.status, stored.output, stored.owner) == ("COMPLETED", '{"done": true}', None)
    await _store_still_works(store)


# -- claim and renew -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS, ids=str)
async def test_claim(
    proxy: FaultProxy, store: PostgresStore, oracle: PostgresStore, fault: Fault
) -> None:
    """The claimed sagas come back to the claimer with their journals; if the answer was
    lost, the sagas the claimer does not know it holds are not stuck: it does not renew them
    (the engine renews only sagas it runs) and they are claimable again within one lease."""
    name, owner = _uid("Claim"), _uid("claimer")
    saga_ids = set()
    for i in range(3):
        saga_id = _uid("c")
        await oracle.create_saga(NewSaga(saga_id, name, "{}", None, LEASE))
        await oracle.append(saga_id, 1, _entry(saga_id, 0, str(i)))
        saga_ids.add(saga_id)
    claimed = await under_fault(proxy, fault, owner, lambda: store.claim(owner, [name], LEASE, 10))
    got = {c.record.saga_id: c for c in claimed}
    assert set(got) <= saga_ids
    if not _answer_may_be_lost(fault):
        assert set(got) == saga_ids, "the claimer heard the answer but got fewer sagas"
    for saga_id, c in got.items():
        stored = await _load(oracle, saga_id)
        assert (c.record.owner, stored.owner) == (owner, owner)
        assert c.record.fence == stored.fence, "the claimer holds a stale fence"
        assert c.record.status == stored.status == SagaStatus.RUNNING
        assert c.journal == await oracle.load_journal(saga_id)
    # as the engine does: renew what it runs, for long; the rest must not stay held
    if got:
        assert await store.renew_leases(owner, 30.0, sorted(got)) == len(got)
    # the sagas it got are its own for 30 s now; those it did not hear of expire
    lost = saga_ids - set(got)
    if lost:
        await asyncio.sleep(LEASE * 1.5)
    taken = await oracle.claim(_uid("other"), [name], LEASE, 10)
    assert {c.record.saga_id for c in taken} == lost, "a claimed saga is stuck or shared"
    await _store_still_works(store)


@pytest.mark.parametrize("fault", FAULTS, ids=str)
async def test_renew(
    proxy: FaultProxy, store: PostgresStore, oracle: PostgresStore, fault: Fault
) -> None:
    """A renewal pushes back the named saga's lease (once or twice: it is idempotent) and
    only that one; the owner and fence stay."""
    owner = _uid("renewer")
    live = await _running(oracle, owner, LEASE)
    orphan = await _running(oracle, owner, LEASE)
    orphan_before = await _load(oracle, orphan)
    before = time.time()
    renewed = await under_fault(
        proxy, fault, owner, lambda: store.renew_leases(owner, 30.0, [live])
    )
    assert renewed == 1
    stored = await _load(oracle, live)
    assert stored.lease_expires_at >= before + 29
    assert (stored.owner, stored.fence) == (owner, 1)
    assert await _load(oracle, orphan) == orphan_before
    await _store_still_works(store)


# -- deliver -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS, ids=str)
async def test_deliver_signal(
    proxy: FaultProxy, store: PostgresStore, oracle: PostgresStore, fault: Fault
) -> None:
    """A signal with its delivery key: DELIVERED, stored once, the waiting saga due; the
    caller's own repeat with the key changes nothing."""
    saga_id = await _suspended(oracle)
    key = uuid.uuid4().hex
    delivery = await under_fault(
        proxy,
        fault,
        saga_id,
        lambda: store.deliver(saga_id, "signal", "paid", '{"amount": 10}', key=key),
    )
    assert delivery.outcome == DeliveryOutcome.DELIVERED
    assert await _events(oracle, saga_id) == [("signal", "paid", '{"amount": 10}')]
    assert (await _load(oracle, saga_id)).lease_expires_at < time.time()  # woken
    again = await store.deliver(saga_id, "signal", "paid", '{"amount": 10}', key=key)
    assert again.outcome == DeliveryOutcome.DELIVERED
    assert len(await _events(oracle, saga_id)) == 1
    await _store_still_works(store)


@pytest.mark.parametrize("fault", FAULTS, ids=str)
async def test_deliver_notify(
    proxy: FaultProxy, store: PostgresStore, oracle: PostgresStore, fault: Fault
) -> None:
    """A notify with the wait's token: DELIVERED once, the token consumed; another notify
    with that token is STALE and stores nothing."""
    token = _uid("tok")
    saga_id = await _suspended(oracle, token)
    key = uuid.uuid4().hex
    delivery = await under_fault(
        proxy,
        fault,
        saga_id,
        lambda: store.deliver(saga_id, "notify", token, '"yes"', token=token, key=key),
    )
    assert delivery.outcome == DeliveryOutcome.DELIVERED
    assert await _events(oracle, saga_id) == [("notify", token, '"yes"')]
    assert (await _load(oracle, saga_id)).wait_token is None
    again = await store.deliver(saga_id, "notify", token, '"yes"', token=token, key=key)
    assert again.outcome == DeliveryOutcome.DELIVERED
    other = await store.deliver(saga_id, "notify", token, '"no"', token=token, key=_uid("k"))
    assert other.outcome == DeliveryOutcome.STALE
    assert len(await _events(oracle, saga_id)) == 1
    await _store_still_works(store)


@pytest.mark.parametrize("fault", FAULTS, ids=str)
async def test_deliver_promise(
    proxy: FaultProxy, store: PostgresStore, oracle: PostgresStore, fault: Fault
) -> None:
    """A promise resolved with its key: DELIVERED (not DUPLICATE of itself), stored once; a
    second resolve is DUPLICATE and gets the first value."""
    saga_id = await _suspended(oracle)
    key = uuid.uuid4().hex
    delivery = await under_fault(
        proxy,
        fault,
        saga_id,
        lambda: store.deliver(saga_id, "promise", "approval", '"ok"', unique=True, key=key),
    )
    assert delivery.outcome == DeliveryOutcome.DELIVERED, (
        "a resolve retried after a lost answer was taken for a second resolve"
    )
    assert await _events(oracle, saga_id) == [("promise", "approval", '"ok"')]
    second = await store.deliver(saga_id, "promise", "approval", '"ko"', unique=True, key="k2")
    assert (second.outcome, second.existing) == (DeliveryOutcome.DUPLICATE, '"ok"')
    assert len(await _events(oracle, saga_id)) == 1
    await _store_still_works(store)


# -- administer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS, ids=str)
async def test_administer(
    proxy: FaultProxy, store: PostgresStore, oracle: PostgresStore, fault: Fault
) -> None:
    """An operator's cancel with its action id: applied once (one audit entry, the fence
    moved once), and the caller gets the record, not None (a false conflict)."""
    saga_id = await _running(oracle)
    await oracle.append(saga_id, 1, _entry(saga_id, 0, "1"), SagaUpdate("PARKED"))
    key = uuid.uuid4().hex
    audit_output = json.dumps({"action_id": key, "action": "cancel", "by": "ops"})
    audit = JournalEntry(
        saga_id, 0, "admin", "cancel", "completed", 1, audit_output, None, None, 1.0, 1.0
    )
    change = AdminChange(
        saga_id,
        "PARKED",
        1,
        "CANCELLED",
        0.0,
        audit,
        error='{"kind": "cancelled"}',
        key=key,
    )
    record = await under_fault(proxy, fault, saga_id, lambda: store.administer(change))
    assert record is not None, "the change was applied but the caller was told it was stale"
    assert (record.status, record.fence) == (SagaStatus.CANCELLED, 2)
    stored = await _load(oracle, saga_id)
    assert (stored.status, stored.fence) == (SagaStatus.CANCELLED, 2)
    journal = await oracle.load_journal(saga_id)
    assert [(e.seq, e.kind) for e in journal] == [(-1, "admin"), (0, "step")]
    again = await store.administer(change)
    assert again is not None and (again.status, again.fence) == (SagaStatus.CANCELLED, 2)
    assert len(await oracle.load_journal(saga_id)) == 2
    await _store_still_works(store)


# -- complete: an Engine runs a saga through the proxy -------------------------------------------


def _counting_workflow(name: str, tag: str, executions: Counter[str]) -> Any:
    """Three steps; step i's output carries ``step{i}-{tag}``, the result ``final-{tag}``, so
    that a fault can be aimed at one write."""

    @saga_step("Add")
    async def add(ctx: SagaContext, inp: dict[str, int]) -> dict[str, Any]:
        executions[ctx.step_key] += 1
        return {"n": inp["n"] + 1, "tag": f"step{inp['n']}-{tag}"}

    @saga_workflow(name)
    async def counting(saga: SagaContext, inp: dict[str, int]) -> dict[str, Any]:
        n = inp["n"]
        for _ in range(3):
            n = (await add(saga, {"n": n}))["n"]
        return {"n": n, "tag": f"final-{tag}"}

    return counting


@pytest.mark.parametrize("target", ["step", "final"])
@pytest.mark.parametrize("fault", FAULTS, ids=str)
async def test_complete(
    proxy: FaultProxy, fault_db: str, oracle: PostgresStore, fault: Fault, target: str
) -> None:
    """An Engine runs a saga to COMPLETED while the fault hits its first step's write (or
    its final write): each step runs once, the journal holds each once, the status is
    COMPLETED with the result, and ``engine.run`` returns that result."""
    name, tag = _uid("Complete"), uuid.uuid4().hex[:12]
    executions: Counter[str] = Counter()
    workflow = _counting_workflow(name, tag, executions)
    mark = f"step0-{tag}" if target == "step" else f"final-{tag}"
    saga_id = _uid("run")
    engine = Engine(
        store=_proxied_store(proxy, fault_db),
        lease=timedelta(seconds=5),
        poll_interval=timedelta(milliseconds=50),
    )
    engine.register(workflow)
    async with engine:
        result = await under_fault(
            proxy,
            fault,
            mark,
            lambda: engine.run(workflow, {"n": 0}, saga_id=saga_id, timeout=HANG_GUARD),
        )
    assert result == {"n": 3, "tag": f"final-{tag}"}
    assert sorted(executions.values()) == [1, 1, 1], f"steps ran again: {executions}"
    journal = await oracle.load_journal(saga_id)
    assert [(e.seq, e.name, e.status) for e in journal] == [
        (0, "Add", "completed"),
        (1, "Add", "completed"),
        (2, "Add", "completed"),
    ]
    stored = await _load(oracle, saga_id)
    assert stored.status == SagaStatus.COMPLETED
    assert json.loads(stored.output or "null") == result


# -- a transaction left open on the server ------------------------------------------------------


@pytest.mark.parametrize("operation", ["deliver", "administer"])
async def test_a_commit_lost_in_a_partition_does_not_hold_the_saga(
    proxy: FaultProxy, store: PostgresStore, oracle: PostgresStore, operation: str
) -> None:
    """A transaction's COMMIT swallowed by a partition that never heals for that connection
    (a NAT or load balancer that dropped the flow): the server keeps the transaction open,
    and its lock on the saga's row, until it finds out for itself. The store's retry, on a new
    connection, must not wait on that lock past its retry deadline: it succeeds, once."""
    saga_id = await _suspended(oracle)
    key = uuid.uuid4().hex
    if operation == "deliver":

        async def act() -> Any:
            return await store.deliver(saga_id, "promise", "p", '"ok"', unique=True, key=key)

    else:
        audit_output = json.dumps({"action_id": key, "action": "cancel"})
        audit = JournalEntry(
            saga_id, 0, "admin", "cancel", "completed", 1, audit_output, None, None, 1.0, 1.0
        )
        change = AdminChange(saga_id, "SUSPENDED", 1, "CANCELLED", 0.0, audit, key=key)

        async def act() -> Any:
            return await store.administer(change)

    armed = proxy.arm(Fault.blackhole(), commit_of(saga_id))
    try:
        async with asyncio.timeout(HANG_GUARD):
            outcome = await act()
    except StoreError as exc:
        raise AssertionError(
            f"the retry waited on the lock of the transaction left open on the server: {exc}"
        ) from exc
    assert armed.fired.is_set()
    assert armed.link is not None and not armed.link.closed  # the partition still holds
    if operation == "deliver":
        assert outcome.outcome == DeliveryOutcome.DELIVERED
        assert len(await oracle.load_events(saga_id)) == 1
    else:
        assert outcome is not None and outcome.status == SagaStatus.CANCELLED
        assert [e.kind for e in await oracle.load_journal(saga_id)] == ["admin"]


# -- the database unreachable --------------------------------------------------------------------


async def _make_unreachable(proxy: FaultProxy, how: str) -> None:
    if how == "blackhole":
        proxy.blackhole_all()
    else:
        proxy.cut_all()
        await proxy.refuse()


@pytest.mark.parametrize("how", ["blackhole", "refused"])
async def test_operations_fail_with_a_store_error_when_the_database_is_unreachable(
    proxy: FaultProxy, fault_db: str, oracle: PostgresStore, how: str
) -> None:
    """With the database unreachable (every connection silent, or refused), each operation
    gives up after the store's retry deadline with a StoreError that says what failed, and
    writes nothing; once the database answers, the caller's retry with the same key works,
    once."""
    deadline = 1.5
    store = _proxied_store(proxy, fault_db, retry_deadline=deadline, command_timeout=0.5)
    await store.open()
    try:
        running = await _running(oracle)
        suspended = await _suspended(oracle)
        owner, new_id, key = _uid("w"), _uid("new"), uuid.uuid4().hex
        new = NewSaga(new_id, "W", "{}", None, 30.0)
        await _make_unreachable(proxy, how)
        operations: dict[str, asyncio.Future[Any]] = {
            "create": asyncio.ensure_future(store.create_saga(new)),
            "append": store.append(running, 1, _entry(running, 0, "1")),
            "deliver": asyncio.ensure_future(
                store.deliver(suspended, "signal", "go", "1", key=key)
            ),
            "claim": asyncio.ensure_future(store.claim(owner, ["W"], LEASE, 10)),
            "renew": asyncio.ensure_future(store.renew_leases("w1", 30.0, [running])),
            "load": asyncio.ensure_future(store.load_saga(running)),
        }
        # a hang guard, ten deadlines: not a bound on how soon each one gives up
        await asyncio.wait(operations.values(), timeout=deadline * 10)
        hung = [what for what, future in operations.items() if not future.done()]
        for future in operations.values():
            future.cancel()
        assert not hung, f"still waiting after ten retry deadlines: {hung}"
        for what, future in operations.items():
            outcome = future.exception()
            assert isinstance(outcome, StoreError), f"{what} gave {outcome!r}, not a StoreError"
            assert "PostgreSQL" in str(outcome), f"{what}'s error does not say what failed"
        assert await oracle.load_saga(new_id) is None
        assert await oracle.load_journal(running) == []
        assert await oracle.load_events(suspended) == []

        await proxy.heal()
        async with asyncio.timeout(HANG_GUARD):
            assert (await store.create_saga(new)).created
            delivered = await store.deliver(suspended, "signal", "go", "1", key=key)
            assert delivered.outcome == DeliveryOutcome.DELIVERED
            await store.append(running, 1, _entry(running, 0, "1"))
        assert len(await oracle.load_events(suspended)) == 1
        assert len(await oracle.load_journal(running)) == 1
    finally:
        await proxy.heal()
        await store.close()


@pytest.mark.parametrize("how", ["blackhole", "refused"])
async def test_engine_close_returns_within_its_bound_while_the_database_is_unreachable(
    proxy: FaultProxy, fault_db: str, oracle: PostgresStore, how: str
) -> None:
    """``engine.close(timeout=...)`` returns while the database does not answer; the saga it
    was running is not lost: another engine takes it over once its lease expires."""
    started, go_on = asyncio.Event(), asyncio.Event()

    @saga_step("Hold")
    async def hold(ctx: SagaContext, inp: int) -> int:
        started.set()
        await go_on.wait()
        return inp + 1

    @saga_workflow(_uid("Held"))
    async def held(saga: SagaContext, inp: int) -> int:
        return int(await hold(saga, inp))

    saga_id = _uid("held")
    engine = Engine(
        store=_proxied_store(proxy, fault_db, retry_deadline=1.5, command_timeout=0.5),
        lease=timedelta(seconds=2),
        poll_interval=timedelta(milliseconds=50),
    )
    engine.register(held)
    await engine.__aenter__()
    try:
        await engine.start(held, 41, saga_id=saga_id)
        async with asyncio.timeout(HANG_GUARD):
            await started.wait()
        await _make_unreachable(proxy, how)
        close_timeout = 2.0
        async with asyncio.timeout(close_timeout * 10):  # a hang guard, not a bound
            await engine.close(timeout=close_timeout)
    finally:
        await proxy.heal()
        await engine.close()
    go_on.set()
    assert (await _load(oracle, saga_id)).status == SagaStatus.RUNNING
    successor = Engine(
        oracle.url, lease=timedelta(seconds=2), poll_interval=timedelta(milliseconds=50)
    )
    successor.register(held)
    async with successor:
        assert await successor.handle(saga_id).result(timeout=HANG_GUARD) == 42
