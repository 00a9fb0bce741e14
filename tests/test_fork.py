"""``engine.admin.fork``: a new saga that reuses another's journal below ``from_seq`` and runs
the rest on the code registered now (DBOS's fork), on every store kind.

The story of every test: a money transfer (Debit, Credit, then Receipt) whose Receipt step has
a bug; the saga parks (or rolls back) at it. The bug is fixed — a new engine registers a
different Receipt under the same workflow name — and the saga is forked from Receipt's entry:
the ledger shows that Debit and Credit did not run again, and the fork completes on the new
code. The operator's engine opens the same database (``shared_store_url``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    Engine,
    SagaConflictError,
    SagaContext,
    SagaNotFoundError,
    SagaSnapshot,
    SagaStatus,
    SagaValidationError,
    saga_workflow,
)
from sagakit.errors import UnknownWorkflowError
from sagakit.stores.base import NewSaga, SagaFork
from tests.conftest import engine_with, make_engine
from tests.fork_app import Ledger, transfer
from tests.test_cli import assert_clean_error, sagakit
from tests.waiting import eventually, within

SOURCE = "transfer-1"
FIXED = "transfer-1-fixed"
MONEY = {"source": "alice", "target": "bob", "amount": 40}


async def settled(engine: Engine, saga_id: str, status: SagaStatus) -> SagaSnapshot:
    found: list[SagaSnapshot] = []

    async def check() -> bool:
        snapshot = await engine.admin.get_saga(saga_id)
        found[:] = [snapshot]
        return snapshot.status == status and saga_id not in engine._tasks

    await eventually(check, f"saga {saga_id} to be {status}")
    return found[0]


async def broken_saga(url: str, ledger: Ledger, *, park: bool = True) -> SagaSnapshot:
    """Run the transfer on the buggy code until it parks (or rolls back) at Receipt."""
    async with engine_with(url, transfer(ledger, fixed=False, park=park)) as old:
        await old.start("Transfer", MONEY, SOURCE)
        status = SagaStatus.PARKED if park else SagaStatus.COMPENSATED
        return await settled(old, SOURCE, status)


async def test_a_parked_saga_forked_after_the_fix_completes_without_running_its_steps_again(
    shared_store_url: str,
) -> None:
    ledger = Ledger()
    before = await broken_saga(shared_store_url, ledger)
    receipt_seq = next(s.seq for s in before.steps if s.name == "Receipt")
    assert receipt_seq == 2  # Debit 0, Credit 1: the third step
    assert ledger.runs == ["Debit", "Credit", "Receipt (bug)", "Receipt (bug)"]

    async with engine_with(shared_store_url, transfer(ledger, fixed=True)) as new:
        fork = await new.admin.fork(
            SOURCE, from_seq=receipt_seq, saga_id=FIXED, reason="receipt fixed", by="ops"
        )
        assert fork.saga_id == FIXED and fork.name == "Transfer" and fork.input == MONEY
        result = await within(new.handle(FIXED).result())
        source = await new.admin.get_saga(SOURCE)
        done = await new.admin.get_saga(FIXED)

    assert result == {"receipt": "receipt for 40", "approved": None}
    # Debit and Credit ran once, in the original; the fork ran only the fixed Receipt
    assert ledger.runs == ["Debit", "Credit", "Receipt (bug)", "Receipt (bug)", "Receipt (fixed)"]
    assert ledger.balances == {"alice": 60, "bob": 40}
    assert done.status == SagaStatus.COMPLETED
    assert [s.name for s in done.steps] == ["Debit", "Credit", "Receipt"]
    # the original is left as it was: parked (cancel it if the fork replaces it)
    assert source.status == SagaStatus.PARKED
    [forked] = source.audit
    assert (forked.action, forked.by, forked.reason) == ("forked", "ops", "receipt fixed")
    assert forked.details == {"fork": FIXED, "from_seq": 2}
    [made] = done.audit
    assert (made.action, made.by, made.reason) == ("fork", "ops", "receipt fixed")
    assert made.details["source"] == SOURCE and made.details["from_seq"] == 2
    assert made.details["reused"] == [0, 1]


async def test_forking_again_with_the_same_id_returns_the_fork_made_first(
    shared_store_url: str,
) -> None:
    ledger = Ledger()
    await broken_saga(shared_store_url, ledger)
    async with engine_with(shared_store_url, transfer(ledger, fixed=True)) as new:
        first = await new.admin.fork(SOURCE, from_seq=2, saga_id=FIXED)
        await within(new.handle(FIXED).result())
        again = await new.admin.fork(SOURCE, from_seq=2, saga_id=FIXED)
        assert again.saga_id == first.saga_id == FIXED
        assert again.status == SagaStatus.COMPLETED  # the first fork, not a new one
        assert len((await new.admin.get_saga(SOURCE)).audit) == 1
        # the store, retried after a lost acknowledgement, writes nothing twice
        store = new._store_or_raise()
        journal = await store.load_journal(SOURCE)
        audit = next(e for e in journal if e.seq < 0)
        key = f"fork:{SOURCE}:2:{FIXED}"
        retry = SagaFork(
            new=NewSaga(FIXED, "Transfer", "{}", None, 1.0),
            source_id=SOURCE,
            entries=(),
            events_upto=0,
            state=(),
            audit=audit,
            source_audit=audit,
            key=key,
        )
        made = await store.fork_saga(retry)
        assert made is not None and made.status == SagaStatus.COMPLETED
        assert len([e for e in await store.load_journal(SOURCE) if e.seq < 0]) == 1
        # a different saga under that id is a conflict, and so is another fork's key
        assert await store.fork_saga(_replace_key(retry, "another")) is None
        with pytest.raises(SagaConflictError, match="taken by another saga"):
            await new.admin.fork(SOURCE, from_seq=1, saga_id=FIXED)
        with pytest.raises(SagaConflictError, match="id of its own"):
            await new.admin.fork(SOURCE, from_seq=1, saga_id=SOURCE)
        # without an id, each fork is a new saga
        other = await new.admin.fork(SOURCE, from_seq=2)
        assert other.saga_id not in (SOURCE, FIXED)
        await within(new.handle(other.saga_id).result())
    assert ledger.runs.count("Debit") == 1 and ledger.runs.count("Receipt (fixed)") == 2


def _replace_key(fork: SagaFork, key: str) -> SagaFork:
    return SagaFork(
        fork.new, fork.source_id, fork.entries, fork.events_upto, fork.state, fork.audit,
        fork.source_audit, key,
    )  # fmt: skip


async def test_what_a_fork_cannot_reuse_is_refused_and_nothing_is_written(
    shared_store_url: str,
) -> None:
    ledger = Ledger()
    await broken_saga(shared_store_url, ledger)
    async with engine_with(shared_store_url, transfer(ledger, fixed=True)) as new:
        for bad in (-1, 4, True, "2"):
            with pytest.raises(SagaValidationError, match=r"from_seq must be .* 0 .* to 3"):
                await new.admin.fork(SOURCE, from_seq=bad, saga_id=FIXED)  # type: ignore[arg-type]
        # Receipt (seq 2) failed: a fork from 3 would reuse its failure
        with pytest.raises(SagaValidationError, match=r"entry 2 .*'Receipt'.* not completed"):
            await new.admin.fork(SOURCE, from_seq=3, saga_id=FIXED)
        with pytest.raises(SagaNotFoundError):
            await new.admin.fork("nobody", from_seq=0, saga_id=FIXED)
        with pytest.raises(SagaValidationError, match="saga_id"):
            await new.admin.fork(SOURCE, from_seq=0, saga_id="")
        # a virtual object's handler runs in its key's queue
        store = new._store_or_raise()
        await store.create_saga(NewSaga("cart-1", "Transfer", "{}", None, 1.0, "Cart/1"))
        with pytest.raises(SagaValidationError, match="virtual object 'Cart/1'"):
            await new.admin.fork("cart-1", from_seq=0, saga_id=FIXED)
        assert await store.load_saga(FIXED) is None
        assert (await new.admin.get_saga(SOURCE)).audit == ()
    # an engine that runs sagas but not this workflow would make a fork nobody here runs
    async with make_engine(shared_store_url) as stranger:
        with pytest.raises(UnknownWorkflowError, match="'Transfer' is not registered"):
            await stranger.admin.fork(SOURCE, from_seq=2, saga_id=FIXED)


async def test_a_step_the_rollback_undid_is_not_reused_but_a_fork_from_the_start_runs_anew(
    shared_store_url: str,
) -> None:
    ledger = Ledger()
    await broken_saga(shared_store_url, ledger, park=False)
    assert ledger.balances == {"alice": 100, "bob": 0}  # rolled back
    async with engine_with(shared_store_url, transfer(ledger, fixed=True)) as new:
        with pytest.raises(SagaValidationError, match=r"entry 0 .*'Debit'.* undone"):
            await new.admin.fork(SOURCE, from_seq=2, saga_id=FIXED)
        await new.admin.fork(SOURCE, from_seq=0, saga_id=FIXED)
        await within(new.handle(FIXED).result())
    assert ledger.balances == {"alice": 60, "bob": 40}
    assert ledger.runs[-3:] == ["Debit", "Credit", "Receipt (fixed)"]


async def test_a_child_saga_before_from_seq_is_refused(shared_store_url: str) -> None:
    ledger = Ledger()

    @saga_workflow("Child")
    async def child(saga: SagaContext, inp: dict[str, Any]) -> str:
        return "child done"

    @saga_workflow("Parent")
    async def parent(saga: SagaContext, inp: dict[str, Any]) -> str:
        started = await saga.start_child(child, inp)
        result: str = await started.result()
        return result

    async with engine_with(shared_store_url, child, parent, transfer(ledger, fixed=True)) as e:
        await within(e.run(parent, {}, saga_id="parent-1"))
        with pytest.raises(SagaValidationError, match=r"entry 0 .* starts child saga .*share"):
            await e.admin.fork("parent-1", from_seq=1, saga_id="parent-2")
        await e.admin.fork("parent-1", from_seq=0, saga_id="parent-2")
        assert await within(e.handle("parent-2").result()) == "child done"


async def test_a_fork_takes_the_signals_its_reused_waits_took_and_waits_for_new_ones(
    shared_store_url: str,
) -> None:
    ledger = Ledger()
    async with engine_with(shared_store_url, transfer(ledger, fixed=False, approval=True)) as old:
        await old.start("Transfer", MONEY, SOURCE)
        await old.signal(SOURCE, "approve", "first")
        await settled(old, SOURCE, SagaStatus.PARKED)
    async with engine_with(shared_store_url, transfer(ledger, fixed=True, approval=True)) as new:
        await new.admin.fork(SOURCE, from_seq=4, saga_id=FIXED)  # Debit, wait, Credit, stage
        fork = await settled(new, FIXED, SagaStatus.SUSPENDED)  # the second approval
        assert await new.query(FIXED, "stage") == "credited"
        await new.signal(FIXED, "approve", "second")
        result = await within(new.handle(FIXED).result())
    assert result == {"receipt": "receipt for 40", "approved": "first"}
    assert [e.payload for e in fork.events] == ["first"]
    assert ledger.runs.count("Debit") == ledger.runs.count("Credit") == 1


def test_the_fork_command_prints_the_new_id_and_a_worker_completes_the_fork(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'fork.db'}"
    ledger = Ledger()
    asyncio.run(broken_saga(url, ledger))
    refused = sagakit("fork", SOURCE, "--from-seq", "3", "--db", url)
    assert_clean_error(refused, "entry 2", "'Receipt'", "not completed")
    made = sagakit(
        "fork", SOURCE, "--from-seq", "2", "--new-id", FIXED, "--reason", "receipt fixed",
        "--by", "ops", "--db", url, "--app", "tests.fork_app:WORKFLOWS",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"{FIXED}\n"
    # without --app the command knows no workflow: the workers that serve it take the fork
    fresh = sagakit("fork", SOURCE, "--from-seq", "2", "--db", url)
    assert fresh.returncode == 0, fresh.stderr
    other = fresh.stdout.strip()
    assert other not in ("", SOURCE, FIXED)

    async def finish() -> tuple[SagaSnapshot, SagaSnapshot]:
        async with engine_with(url, transfer(ledger, fixed=True)) as worker:
            await within(worker.handle(FIXED).result())
            await within(worker.handle(other).result())
            return await worker.admin.get_saga(FIXED), await worker.admin.get_saga(SOURCE)

    done, source = asyncio.run(finish())
    assert done.status == SagaStatus.COMPLETED
    assert [(a.action, a.by, a.reason) for a in done.audit] == [("fork", "ops", "receipt fixed")]
    assert [a.details["fork"] for a in source.audit] == [FIXED, other]
    assert ledger.runs.count("Debit") == 1 and ledger.runs.count("Receipt (fixed)") == 2
    # both forks reuse the one Debit and Credit: the money moved once
    assert ledger.balances == {"alice": 60, "bob": 40}
