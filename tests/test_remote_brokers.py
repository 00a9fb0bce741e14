"""Remote steps end to end over each real broker (issue 20): a saga's engine and two participant
services, each with a PostgreSQL database of its own, talk through RabbitMQ, NATS JetStream or
the PostgreSQL-only transport. One participant declines some sagas: those roll back by sending
the compensation command, which the other participant processes once.

The participants' handlers are transactional: each writes a ledger row in its own database in
the transaction of its inbox row, so a command processed twice would show as two rows.
tests/test_remote_steps.py covers remote steps' semantics on the in-process MemoryTransport.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from sagakit import SagaContext, SagaStatus, TerminalError, saga_workflow
from sagakit.participant import CommandContext, Participant
from sagakit.stores.base import EntryKind, EntryStatus
from sagakit.stores.outbox import outbox_store
from sagakit.transports import Transport
from tests.conftest import make_engine, make_store_url

WAIT = 60.0
LEDGER = "public.broker_ledger"
SAGAS = 6


@saga_workflow("BrokerOrder")
async def broker_order(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    reserved = await saga.send_command(
        "reserve",
        {"item": inp["item"]},
        to=inp["inventory"],
        compensate_with=("release", lambda reply: {"reservation": reply}),
        timeout=timedelta(seconds=WAIT),
    )
    paid = await saga.send_command("charge", {"amount": inp["amount"]}, to=inp["payments"])
    return {"reserved": reserved, "paid": paid}


def transport_maker(
    kind: str, request: pytest.FixtureRequest, orders_url: str
) -> Callable[[], Transport]:
    """A new transport per party, all on one broker (the saga's database for PostgreSQL)."""
    if kind == "rabbitmq":
        from sagakit.transports.rabbitmq import RabbitTransport

        url = str(request.getfixturevalue("rabbit_url"))
        return lambda: RabbitTransport(url)
    if kind == "nats":
        from sagakit.transports.nats import NatsTransport

        url = str(request.getfixturevalue("nats_url"))
        # a stream of this test's own on the session's server
        prefix = f"t{uuid.uuid4().hex[:10]}"
        return lambda: NatsTransport(url, prefix=prefix)
    from sagakit.transports.postgres import PostgresOutboxTransport

    return lambda: PostgresOutboxTransport(orders_url, poll_interval=0.2)


async def record(ctx: CommandContext, command: str, key: Any) -> None:
    await ctx.connection.execute(
        f"INSERT INTO {LEDGER} (command, message_id, key) VALUES ($1, $2, $3)",
        command,
        ctx.message_id,
        str(key),
    )


async def ledger(url: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(f"SELECT command, message_id, key FROM {LEDGER}")
    finally:
        await conn.close()
    return [(r["command"], r["message_id"], r["key"]) for r in rows]


@pytest.mark.parametrize("kind", ["rabbitmq", "nats", "postgres"])
async def test_a_declined_saga_compensates_through_the_broker_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    urls = {}
    for name in ("orders", "inventory", "payments"):
        (tmp_path / name).mkdir()
        urls[name] = make_store_url("postgres", tmp_path / name, request)
    for name in ("inventory", "payments"):
        conn = await asyncpg.connect(urls[name])
        await conn.execute(f"CREATE TABLE {LEDGER} (command text, message_id text, key text)")
        await conn.close()
    # names of this test's own: the brokers are shared by the session
    tag = uuid.uuid4().hex[:8]
    names = {"inventory": f"inventory-{tag}", "payments": f"payments-{tag}"}
    make = transport_maker(kind, request, urls["orders"])

    inventory = Participant(names["inventory"], urls["inventory"], transport=make())
    payments = Participant(names["payments"], urls["payments"], transport=make())

    @inventory.command("reserve", transactional=True)
    async def reserve(ctx: CommandContext, payload: dict[str, Any]) -> str:
        await record(ctx, "reserve", payload["item"])
        return f"r-{payload['item']}"

    @inventory.command("release", transactional=True)
    async def release(ctx: CommandContext, payload: dict[str, Any]) -> None:
        await record(ctx, "release", payload["reservation"])

    @payments.command("charge", transactional=True)
    async def charge(ctx: CommandContext, payload: dict[str, Any]) -> str:
        await record(ctx, "charge", payload["amount"])
        if payload["amount"] > 100:
            raise TerminalError("card declined")
        return "paid"

    engine = make_engine(urls["orders"], transport=make(), reply_address=f"replies-{tag}")
    engine.register(broker_order)
    declined = {i for i in range(1, SAGAS + 1) if i % 3 == 0}
    async with engine, inventory, payments:
        handles = [
            await engine.start(
                broker_order,
                {"item": f"i{i}", "amount": 500 if i in declined else i, **names},
                saga_id=f"{kind}-{i}",
            )
            for i in range(1, SAGAS + 1)
        ]
        for i, handle in enumerate(handles, start=1):
            if i in declined:
                with pytest.raises(Exception, match="card declined"):
                    await handle.result(timeout=WAIT)
            else:
                assert await handle.result(timeout=WAIT) == {"reserved": f"r-i{i}", "paid": "paid"}
        store = engine._store_or_raise()
        statuses = {i: (await engine.get(f"{kind}-{i}")).status for i in range(1, SAGAS + 1)}
        journal = await store.load_journal(f"{kind}-3")
        backlog = await outbox_store(store).outbox_backlog()  # type: ignore[union-attr]
    assert {i for i, s in statuses.items() if s == SagaStatus.COMPENSATED} == declined
    assert {i for i, s in statuses.items() if s == SagaStatus.COMPLETED} == (
        set(statuses) - declined
    )
    assert [(e.kind, e.name, e.status) for e in journal if e.seq >= 0] == [
        (EntryKind.REMOTE, f"{names['inventory']}.reserve", EntryStatus.COMPLETED),
        (EntryKind.REMOTE, f"{names['payments']}.charge", EntryStatus.FAILED),
        (EntryKind.COMPENSATION, f"{names['inventory']}.release", EntryStatus.COMPLETED),
    ]
    assert backlog == 0
    stock, money = await ledger(urls["inventory"]), await ledger(urls["payments"])
    # each command once, by its message id, and what each saga should have caused
    for rows in (stock, money):
        assert [m for m, n in Counter(r[1] for r in rows).items() if n != 1] == []
    assert Counter((c, k) for c, _, k in stock) == Counter(
        [("reserve", f"i{i}") for i in range(1, SAGAS + 1)]
        + [("release", f"r-i{i}") for i in declined]
    )
    assert sorted(int(k) for c, _, k in money if c == "charge") == sorted(
        500 if i in declined else i for i in range(1, SAGAS + 1)
    )
