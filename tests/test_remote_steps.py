"""Remote steps (issue 20): a saga sends commands to participant services through the outbox,
waits for their replies as journaled events, and sends compensation commands when it rolls back.

Every test runs on the memory, SQLite and PostgreSQL stores (the saga's and each participant's
database of that kind) with the in-process MemoryTransport; tests/test_participants.py covers
the participants' side and the PostgreSQL-only transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    Engine,
    SagaContext,
    SagaSnapshot,
    SagaStatus,
    TerminalError,
    saga_workflow,
)
from sagakit.participant import CommandContext, Participant
from sagakit.remote import RemoteCommandError, RemoteTimeoutError, command_id
from sagakit.retry import RetryPolicy
from sagakit.stores.base import EntryKind, EntryStatus, EventKind
from sagakit.stores.outbox import outbox_store
from sagakit.transports import MemoryBroker, MemoryTransport, Transport
from tests.conftest import make_engine, make_store_url

WAIT = 30.0


class Reserve(BaseModel):
    item: str
    quantity: int = 1


class Services:
    """Two participant services, each with its own database, and what their handlers did."""

    def __init__(self) -> None:
        #: (participant, command, payload) per handler run, in order
        self.ledger: list[tuple[str, str, Any]] = []
        self.fail_charge = False

    def build(
        self, inventory_url: str, payments_url: str, make: Callable[[], Transport]
    ) -> list[Participant]:
        inventory = Participant("inventory", inventory_url, transport=make())
        payments = Participant("payments", payments_url, transport=make())

        @inventory.command("reserve")
        async def reserve(ctx: CommandContext, payload: Reserve) -> dict[str, Any]:
            self.ledger.append(("inventory", "reserve", payload.item))
            return {"reservation": f"r-{payload.item}"}

        @inventory.command("release")
        async def release(ctx: CommandContext, payload: dict[str, Any]) -> None:
            self.ledger.append(("inventory", "release", payload))

        @payments.command("charge")
        async def charge(ctx: CommandContext, payload: dict[str, Any]) -> dict[str, Any]:
            self.ledger.append(("payments", "charge", payload["amount"]))
            if self.fail_charge:
                raise TerminalError("card declined")
            return {"payment": "p-1"}

        return [inventory, payments]

    def count(self, participant: str, command: str) -> int:
        return sum(1 for p, c, _ in self.ledger if (p, c) == (participant, command))


def release_payload(reply: Any) -> dict[str, Any]:
    return {"reservation": reply["reservation"] if reply else None}


@saga_workflow("RemoteOrder")
async def remote_order(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    reserved = await saga.send_command(
        "reserve",
        {"item": inp["item"]},
        to="inventory",
        compensate_with=("release", release_payload),
        timeout=timedelta(seconds=inp.get("timeout", 60)),
    )
    paid = await saga.send_command("charge", {"amount": inp["amount"]}, to="payments")
    return {"reservation": reserved["reservation"], "payment": paid["payment"]}


@saga_workflow("BadPayload")
async def bad_payload(saga: SagaContext, inp: dict[str, Any]) -> Any:
    return await saga.send_command("reserve", {"quantity": "lots"}, to="inventory")


@saga_workflow("Retried")
async def retried(saga: SagaContext, inp: dict[str, Any]) -> Any:
    return await saga.send_command(
        "reserve",
        {"item": inp["item"]},
        to="inventory",
        timeout=timedelta(seconds=inp["timeout"]),
        retry=RetryPolicy(max_attempts=inp["attempts"]),
    )


@saga_workflow("ParallelRemote")
async def parallel_remote(saga: SagaContext, inp: dict[str, Any]) -> list[Any]:
    return await saga.gather(
        saga.send_command("reserve", {"item": "a"}, to="inventory"),
        saga.send_command("charge", {"amount": 7}, to="payments"),
        saga.send_command("reserve", {"item": "b"}, to="inventory"),
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def urls(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """The saga's database and each participant's, fresh."""
    made = []
    for name in ("orders", "inventory", "payments"):
        folder = tmp_path / name
        folder.mkdir()
        made.append(make_store_url(kind, folder, request, shared=True))
    return made[0], made[1], made[2]


@asynccontextmanager
async def running(
    kind: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    services: Services,
    *,
    participants: bool = True,
) -> AsyncIterator[tuple[Engine, list[Participant], MemoryBroker]]:
    broker = MemoryBroker()
    orders, inventory, payments = urls(kind, tmp_path, request)
    built = services.build(inventory, payments, lambda: MemoryTransport(broker))
    engine = make_engine(orders, transport=MemoryTransport(broker))
    engine.register(remote_order, bad_payload, retried, parallel_remote)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(engine)
        if participants:
            for participant in built:
                await stack.enter_async_context(participant)
        yield engine, built, broker


async def test_a_saga_with_two_remote_steps_completes(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    services = Services()
    async with running(kind, tmp_path, request, services) as (engine, _, _):
        result = await engine.run(remote_order, {"item": "book", "amount": 30}, saga_id="o-1")
        assert result == {"reservation": "r-book", "payment": "p-1"}
        journal = await engine._store_or_raise().load_journal("o-1")
        remote = [(e.kind, e.name, e.status) for e in journal if e.seq >= 0]
        assert remote == [
            (EntryKind.REMOTE, "inventory.reserve", EntryStatus.COMPLETED),
            (EntryKind.REMOTE, "payments.charge", EntryStatus.COMPLETED),
        ]
        sent = await outbox_store(engine._store_or_raise()).saga_messages("o-1")  # type: ignore[union-attr]
        assert [(r.message.destination, r.message.name) for r in sent] == [
            ("inventory", "reserve"),
            ("payments", "charge"),
        ]
        assert all(r.published_at is not None for r in sent)
    assert services.ledger == [("inventory", "reserve", "book"), ("payments", "charge", 30)]


async def test_remote_steps_in_parallel_branches(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    services = Services()
    async with running(kind, tmp_path, request, services) as (engine, _, _):
        result = await engine.run(parallel_remote, {}, saga_id="par-1")
    assert result == [{"reservation": "r-a"}, {"payment": "p-1"}, {"reservation": "r-b"}]
    assert sorted(services.ledger) == [
        ("inventory", "reserve", "a"),
        ("inventory", "reserve", "b"),
        ("payments", "charge", 7),
    ]


async def test_a_terminal_failure_of_the_second_participant_compensates_the_first_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    services = Services()
    services.fail_charge = True
    async with running(kind, tmp_path, request, services) as (engine, _, _):
        handle = await engine.start(remote_order, {"item": "pen", "amount": 5}, saga_id="o-2")
        snapshot = await ended(engine, handle.saga_id)
        assert snapshot.status == SagaStatus.COMPENSATED
        assert snapshot.error is not None and "card declined" in str(snapshot.error)
        journal = await engine._store_or_raise().load_journal("o-2")
        steps = [(e.kind, e.name, e.status) for e in journal if e.seq >= 0]
        assert steps == [
            (EntryKind.REMOTE, "inventory.reserve", EntryStatus.COMPLETED),
            (EntryKind.REMOTE, "payments.charge", EntryStatus.FAILED),
            (EntryKind.COMPENSATION, "inventory.release", EntryStatus.COMPLETED),
        ]
    assert services.ledger == [
        ("inventory", "reserve", "pen"),
        ("payments", "charge", 5),
        ("inventory", "release", {"reservation": "r-pen"}),
    ]


async def test_an_invalid_payload_fails_the_step_for_good_and_is_dead_lettered(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    services = Services()
    async with running(kind, tmp_path, request, services) as (engine, _, broker):
        handle = await engine.start(bad_payload, {}, saga_id="poison-1")
        snapshot = await ended(engine, handle.saga_id)
        assert snapshot.status == SagaStatus.COMPENSATED
        with pytest.raises(Exception) as raised:
            await handle.result(timeout=WAIT)
        assert "ValidationError" in str(raised.value)
        assert "quantity" in str(raised.value)
        dead = broker.pending("inventory.dead")
        assert [m.id for m in dead] == [command_id("poison-1", 0)]
        assert "invalid payload" in dead[0].headers["x-sagakit-error"]
    assert services.ledger == []  # the handler never ran


async def test_a_timed_out_step_is_compensated_and_its_late_reply_ignored(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    services = Services()
    async with running(kind, tmp_path, request, services, participants=False) as (
        engine,
        participants,
        _,
    ):
        inp = {"item": "lamp", "amount": 1, "timeout": 0.2}
        handle = await engine.start(remote_order, inp, saga_id="late-1")
        # the step times out (no participant runs): the saga sends the compensation command
        # and waits for its reply
        await wait_for_entry(engine, "late-1", EntryKind.COMPENSATION)
        journal = await engine._store_or_raise().load_journal("late-1")
        assert journal[0].status == EntryStatus.FAILED
        assert "RemoteTimeoutError" in str(journal[0].error)
        # now the inventory service comes up: it processes the command, then its compensation
        async with participants[0]:
            snapshot = await ended(engine, handle.saga_id)
        assert snapshot.status == SagaStatus.COMPENSATED
        journal = await engine._store_or_raise().load_journal("late-1")
        assert journal[0].status == EntryStatus.FAILED  # the late reply changed nothing
        events = await engine._store_or_raise().load_events("late-1")
        replies = [e.name for e in events if e.kind == EventKind.REPLY]
        # both replies are recorded; only the compensation's was taken
        assert sorted(replies) == sorted([command_id("late-1", 0), command_id("late-1", 1)])
    assert services.ledger == [
        ("inventory", "reserve", "lamp"),
        ("inventory", "release", {"reservation": None}),  # the step had no reply
    ]


async def test_a_retried_step_sends_the_same_command_and_the_participant_runs_it_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    services = Services()
    async with running(kind, tmp_path, request, services, participants=False) as (
        engine,
        participants,
        _,
    ):
        handle = await engine.start(
            retried, {"item": "cup", "timeout": 0.2, "attempts": 50}, saga_id="retry-1"
        )
        await wait_for_attempts(engine, "retry-1", 2)  # re-sent at least once
        async with participants[0]:
            assert await handle.result(timeout=WAIT) == {"reservation": "r-cup"}
        sent = await outbox_store(engine._store_or_raise()).saga_messages("retry-1")  # type: ignore[union-attr]
        assert len(sent) >= 2
        assert {r.message.message_id for r in sent} == {command_id("retry-1", 0)}
    assert services.ledger == [("inventory", "reserve", "cup")]  # once, whatever the re-sends


async def test_a_step_out_of_attempts_raises_remote_timeout(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    services = Services()
    async with running(kind, tmp_path, request, services, participants=False) as (engine, _, _):
        handle = await engine.start(
            retried, {"item": "cup", "timeout": 0.05, "attempts": 2}, saga_id="retry-2"
        )
        snapshot = await ended(engine, handle.saga_id)
        assert snapshot.status == SagaStatus.COMPENSATED
        journal = await engine._store_or_raise().load_journal("retry-2")
        assert (journal[0].status, journal[0].attempts) == (EntryStatus.FAILED, 2)
        assert "RemoteTimeoutError" in str(journal[0].error)


def test_the_errors_are_terminal_saga_errors() -> None:
    assert issubclass(RemoteCommandError, TerminalError)
    assert issubclass(RemoteTimeoutError, TerminalError)


async def ended(engine: Engine, saga_id: str) -> SagaSnapshot:
    """The saga's snapshot once it has ended (its result raises for a rolled-back saga)."""
    with contextlib.suppress(Exception):
        await engine.handle(saga_id).result(timeout=WAIT)
    snapshot = await engine.get(saga_id)
    assert snapshot.status.is_terminal, snapshot
    return snapshot


async def wait_for_entry(engine: Engine, saga_id: str, kind: str) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            journal = await engine._store_or_raise().load_journal(saga_id)
            if any(e.kind == kind for e in journal):
                return
            await asyncio.sleep(0.02)


async def wait_for_attempts(engine: Engine, saga_id: str, attempts: int) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            journal = await engine._store_or_raise().load_journal(saga_id)
            if journal and journal[0].attempts >= attempts:
                return
            await asyncio.sleep(0.02)


async def test_show_and_stats_tell_an_operator_what_a_remote_step_waits_for(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/ops.db"
    # no transport: the command waits in the outbox (another process's relay would send it)
    engine = make_engine(url)
    engine.register(remote_order)
    async with engine:
        await engine.start(remote_order, {"item": "desk", "amount": 3}, saga_id="ops-1")
        await wait_for_entry(engine, "ops-1", EntryKind.REMOTE)
        shown = sagakit("show", "ops-1", "--db", url)
        stats = sagakit("stats", "--db", url)
    assert shown.returncode == 0, shown.stderr
    assert "waiting   for a reply from 'inventory' to command 'reserve'" in shown.stdout
    assert "sent, waiting for a reply from 'inventory' to command 'reserve'" in shown.stdout
    assert stats.returncode == 0, stats.stderr
    assert "outbox    1  (messages waiting for the relay)" in stats.stdout


def sagakit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sagakit.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
