"""Participants (issue 20): each command is processed once against the inbox, whatever the
deliveries; poison messages are answered with an error and dead-lettered; a transactional
handler's writes commit with its inbox row; and the PostgreSQL-only transport carries a whole
saga across two participants."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

from sagakit import SagaContext, SagaError, SagaStatus, TerminalError, saga_workflow
from sagakit.participant import CommandContext, Participant
from sagakit.remote import SAGA_HEADER, reply_id
from sagakit.stores.outbox import outbox_store
from sagakit.transports import MemoryBroker, MemoryTransport, Message
from sagakit.transports.postgres import PostgresOutboxTransport
from tests.conftest import make_engine, make_store_url

WAIT = 30.0
REPLIES = "test.replies"


class Reserve(BaseModel):
    item: str


def command(message_id: str, name: str, payload: Any) -> Message:
    return Message(
        id=message_id,
        destination="inventory",
        kind="command",
        name=name,
        payload=json.dumps(payload),
        reply_to=REPLIES,
        correlation_id=message_id,
        headers={SAGA_HEADER: "saga-1"},
    )


async def until(predicate: Any) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.02)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url_of_kind(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_store_url(str(request.param), tmp_path, request, shared=True)


@contextlib.asynccontextmanager
async def inventory(
    url: str, broker: MemoryBroker, runs: list[str], *, max_deliveries: int = 5
) -> AsyncIterator[Participant]:
    participant = Participant(
        "inventory", url, transport=MemoryTransport(broker), max_deliveries=max_deliveries
    )

    @participant.command("reserve")
    async def reserve(ctx: CommandContext, payload: Reserve) -> dict[str, str]:
        runs.append(payload.item)
        if payload.item == "flaky":
            raise ConnectionError("the warehouse did not answer")
        if payload.item == "gone":
            raise TerminalError("no such item")
        return {"reservation": f"r-{payload.item}", "message": ctx.message_id}

    async with participant:
        yield participant


async def test_a_message_delivered_twice_runs_its_handler_once(store_url_of_kind: str) -> None:
    broker, runs = MemoryBroker(), list[str]()
    async with MemoryTransport(broker) as sender, inventory(store_url_of_kind, broker, runs) as p:
        message = command("m-1", "reserve", {"item": "book"})
        await sender.publish(message)
        await until(lambda: _count(broker, 1))
        await sender.publish(message)  # a redelivery, or a saga's re-send
        await until(lambda: _count(broker, 2))
        replies = broker.pending(REPLIES)
        assert [r.id for r in replies] == [reply_id("m-1")] * 2
        assert replies[0].payload == replies[1].payload
        assert json.loads(replies[0].payload) == {
            "value": {"reservation": "r-book", "message": "m-1"}
        }
        assert replies[0].headers[SAGA_HEADER] == "saga-1"
        record = await outbox_store(p._store).find_inbox("inventory", "m-1")  # type: ignore[union-attr]
        assert record is not None and record.status == "ok"
    assert runs == ["book"]


async def test_an_unknown_command_and_a_bad_payload_are_answered_and_dead_lettered(
    store_url_of_kind: str,
) -> None:
    broker, runs = MemoryBroker(), list[str]()
    async with MemoryTransport(broker) as sender, inventory(store_url_of_kind, broker, runs):
        await sender.publish(command("m-1", "teleport", {"item": "book"}))
        await sender.publish(command("m-2", "reserve", {"sku": 12}))
        await until(lambda: _count(broker, 2))
        errors = {r.id: json.loads(r.payload)["error"] for r in broker.pending(REPLIES)}
        assert errors[reply_id("m-1")]["type"] == "UnknownCommand"
        assert "has no command 'teleport'" in errors[reply_id("m-1")]["message"]
        assert errors[reply_id("m-2")]["type"] == "ValidationError"
        assert "item" in errors[reply_id("m-2")]["message"]
        dead = broker.pending("inventory.dead")
        assert [m.id for m in dead] == ["m-1", "m-2"]
        assert dead[0].headers["x-sagakit-error-type"] == "PoisonMessageError"
    assert runs == []


async def test_a_failing_handler_is_redelivered_then_answered_with_its_error(
    store_url_of_kind: str,
) -> None:
    broker, runs = MemoryBroker(), list[str]()
    async with (
        MemoryTransport(broker) as sender,
        inventory(store_url_of_kind, broker, runs, max_deliveries=3),
    ):
        await sender.publish(command("m-1", "reserve", {"item": "flaky"}))
        await sender.publish(command("m-2", "reserve", {"item": "gone"}))
        await until(lambda: _count(broker, 2))
        errors = {r.id: json.loads(r.payload)["error"] for r in broker.pending(REPLIES)}
        assert errors[reply_id("m-1")]["type"] == "ConnectionError"
        assert "gave up after 3 deliveries" in errors[reply_id("m-1")]["message"]
        assert errors[reply_id("m-2")] == {"type": "TerminalError", "message": "no such item"}
        assert [m.id for m in broker.pending("inventory.dead")] == ["m-1"]
    assert runs == ["flaky", "flaky", "flaky", "gone"]


async def _count(broker: MemoryBroker, n: int) -> bool:
    return len(broker.pending(REPLIES)) >= n


async def _dead(broker: MemoryBroker, n: int) -> bool:
    return len(broker.pending("inventory.dead")) >= n


# -- a transactional handler (PostgreSQL) ------------------------------------------------------


async def test_a_transactional_handler_commits_its_writes_with_its_inbox_row(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = make_store_url("postgres", tmp_path, request)
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE ledger (message_id text PRIMARY KEY, item text)")
    broker, runs = MemoryBroker(), list[str]()
    participant = Participant("inventory", url, transport=MemoryTransport(broker))

    @participant.command("reserve", transactional=True)
    async def reserve(ctx: CommandContext, payload: Reserve) -> str:
        runs.append(payload.item)
        await ctx.connection.execute(
            "INSERT INTO public.ledger VALUES ($1, $2)", ctx.message_id, payload.item
        )
        if len(runs) == 1:
            raise ConnectionError("dies after its write: the write must roll back")
        return "reserved"

    try:
        async with MemoryTransport(broker) as sender, participant:
            message = command("m-1", "reserve", {"item": "book"})
            await sender.publish(message)
            await until(lambda: _count(broker, 1))
            await sender.publish(message)
            await until(lambda: _count(broker, 2))
        rows = await conn.fetch("SELECT message_id, item FROM public.ledger")
        assert [tuple(r) for r in rows] == [("m-1", "book")]
        assert runs == ["book", "book"]  # the first run rolled back, the redelivery ran
        assert {json.loads(r.payload)["value"] for r in broker.pending(REPLIES)} == {"reserved"}
    finally:
        await conn.close()


async def test_a_transactional_handler_is_refused_on_the_memory_store() -> None:
    participant = Participant("inventory", "memory://", transport=MemoryTransport())

    @participant.command("reserve", transactional=True)
    async def reserve(ctx: CommandContext, payload: Reserve) -> None:
        pass

    with pytest.raises(SagaError, match="need the SQLite or PostgreSQL store"):
        await participant.start()
    await participant.close()


# -- a transactional handler (SQLite) ----------------------------------------------------------


def sqlite_ledger(path: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT message_id, item FROM ledger ORDER BY rowid").fetchall()
    return [(str(a), str(b)) for a, b in rows]


async def test_a_transactional_handler_on_sqlite_rolls_back_a_failure_and_runs_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE ledger (message_id TEXT, item TEXT)")  # no key: twice shows
        conn.commit()
    broker, runs = MemoryBroker(), list[str]()
    participant = Participant("inventory", f"sqlite:///{path}", transport=MemoryTransport(broker))

    @participant.command("reserve", transactional=True)
    async def reserve(ctx: CommandContext, payload: Reserve) -> str:
        runs.append(payload.item)
        ctx.connection.execute("INSERT INTO ledger VALUES (?, ?)", (ctx.message_id, payload.item))
        if len(runs) == 1:
            raise ConnectionError("dies after its write: the write must roll back")
        return "reserved"

    async with MemoryTransport(broker) as sender, participant:
        message = command("m-1", "reserve", {"item": "book"})
        await sender.publish(message)
        await until(lambda: _count(broker, 1))
        await sender.publish(message)  # a redelivery: the stored reply, the handler not run
        await until(lambda: _count(broker, 2))
        replies = broker.pending(REPLIES)
        assert [r.id for r in replies] == [reply_id("m-1")] * 2
        assert [json.loads(r.payload)["value"] for r in replies] == ["reserved", "reserved"]
        record = await outbox_store(participant._store).find_inbox("inventory", "m-1")  # type: ignore[union-attr]
        assert record is not None and record.status == "ok"
    assert runs == ["book", "book"]  # the first run rolled back, the second committed
    assert sqlite_ledger(path) == [("m-1", "book")]


async def test_a_transactional_handler_that_commits_on_its_own_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.db"
    broker, runs = MemoryBroker(), list[str]()
    participant = Participant(
        "inventory", f"sqlite:///{path}", transport=MemoryTransport(broker), max_deliveries=2
    )

    @participant.command("reserve", transactional=True)
    async def reserve(ctx: CommandContext, payload: Reserve) -> str:
        runs.append(payload.item)
        ctx.connection.execute("COMMIT")  # its writes would stand without the inbox row
        return "reserved"

    async with MemoryTransport(broker) as sender, participant:
        await sender.publish(command("m-1", "reserve", {"item": "book"}))
        await until(lambda: _dead(broker, 1))
        await until(lambda: _count(broker, 1))
        dead = broker.pending("inventory.dead")
        assert dead[0].headers["x-sagakit-error-type"] == "SagaError"
        error = json.loads(broker.pending(REPLIES)[0].payload)["error"]
        assert error["type"] == "SagaError"
        assert "gave up after 2 deliveries" in error["message"]
        assert "ended by the handler's own code" in error["message"]
        record = await outbox_store(participant._store).find_inbox("inventory", "m-1")  # type: ignore[union-attr]
        assert record is not None and record.status == "error"
    assert runs == ["book", "book"]


# -- the PostgreSQL-only transport --------------------------------------------------------------


@saga_workflow("PgTransportOrder")
async def pg_order(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    reserved = await saga.send_command(
        "reserve",
        {"item": inp["item"]},
        to="inventory",
        compensate_with=("release", lambda reply: reply),
        timeout=timedelta(seconds=60),
    )
    paid = await saga.send_command("charge", {"amount": inp["amount"]}, to="payments")
    return {"reserved": reserved, "paid": paid}


async def test_a_saga_across_two_participants_over_the_postgres_transport(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = make_store_url("postgres", tmp_path, request)
    ledger: list[tuple[str, Any]] = []
    inventory = Participant("inventory", url, transport=PostgresOutboxTransport(url))
    payments = Participant("payments", url, transport=PostgresOutboxTransport(url))

    @inventory.command("reserve")
    async def reserve(ctx: CommandContext, payload: dict[str, Any]) -> str:
        ledger.append(("reserve", payload["item"]))
        return f"r-{payload['item']}"

    @inventory.command("release")
    async def release(ctx: CommandContext, payload: str) -> None:
        ledger.append(("release", payload))

    @payments.command("charge")
    async def charge(ctx: CommandContext, payload: dict[str, Any]) -> str:
        ledger.append(("charge", payload["amount"]))
        if payload["amount"] > 100:
            raise TerminalError("over the limit")
        return "p-1"

    engine = make_engine(url, transport=PostgresOutboxTransport(url))
    engine.register(pg_order)
    async with engine, inventory, payments:
        assert await engine.run(pg_order, {"item": "book", "amount": 5}, saga_id="pg-1") == {
            "reserved": "r-book",
            "paid": "p-1",
        }
        handle = await engine.start(pg_order, {"item": "car", "amount": 500}, saga_id="pg-2")
        with pytest.raises(Exception, match="over the limit"):
            await handle.result(timeout=WAIT)
        assert (await engine.get("pg-2")).status == SagaStatus.COMPENSATED
        backlog = await outbox_store(engine._store_or_raise()).outbox_backlog()  # type: ignore[union-attr]
        assert backlog == 0
    assert ledger == [
        ("reserve", "book"),
        ("charge", 5),
        ("reserve", "car"),
        ("charge", 500),
        ("release", "r-car"),
    ]


async def test_the_postgres_transport_redelivers_and_dead_letters(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = make_store_url("postgres", tmp_path, request)
    async with make_engine(url):  # makes the schema
        pass
    seen: list[tuple[str, int]] = []
    async with PostgresOutboxTransport(url, poll_interval=0.05) as transport:

        async def handler(message: Message) -> None:
            seen.append((message.id, message.attempt))
            if message.id != "ok":
                raise ValueError(f"cannot take {message.id}")

        subscription = await transport.subscribe("work", handler, max_deliveries=2)
        for message_id in ("bad", "ok"):
            await transport.publish(
                Message(id=message_id, destination="work", kind="command", name="x", payload="1")
            )

        async def settled() -> bool:
            return len(await transport.pending("work.dead")) == 1

        await until(settled)
        await subscription.close()
        dead = await transport.pending("work.dead")
        assert dead[0].id == "bad" and dead[0].headers["x-sagakit-deliveries"] == "2"
        assert await transport.pending("work") == []
    assert ("ok", 1) in seen
    assert [s for s in seen if s[0] == "bad"] == [("bad", 1), ("bad", 2)]


@saga_workflow("SameProcess")
async def same_process(saga: SagaContext, inp: dict[str, Any]) -> Any:
    return await saga.send_command("reserve", {"item": inp["item"]}, to="inventory")


async def test_a_participant_on_the_engine_s_store_uses_the_engine_s_relay(tmp_path: Path) -> None:
    broker, runs = MemoryBroker(), list[str]()
    engine = make_engine(f"sqlite:///{tmp_path}/one.db", transport=MemoryTransport(broker))
    engine.register(same_process)
    async with engine:
        participant = Participant("inventory", engine, transport=MemoryTransport(broker))

        @participant.command("reserve")
        async def reserve(ctx: CommandContext, payload: Reserve) -> str:
            runs.append(payload.item)
            return f"r-{payload.item}"

        async with participant:
            assert participant._relay is None  # the engine's relay publishes the replies
            assert await engine.run(same_process, {"item": "mug"}, saga_id="one-1") == "r-mug"
    assert runs == ["mug"]
