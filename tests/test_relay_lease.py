"""The relay lease is configurable (issue 20): a relay whose holder stops renewing its lease
is taken over by another one once the lease ran out, and the outbox's order stands."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from sagakit import Engine
from sagakit.participant import Participant
from sagakit.relay import Relay
from sagakit.stores import open_store
from sagakit.stores.outbox import OutboxMessage, OutboxStore, outbox_store
from sagakit.transports import MemoryBroker, MemoryTransport

WAIT = 60.0


def message(n: int) -> OutboxMessage:
    return OutboxMessage(f"m-{n}", "inventory", "command", "reserve", f'{{"n": {n}}}')


async def until_published(store: OutboxStore) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            if not await store.outbox_backlog():
                return
            await asyncio.sleep(0.02)


async def test_a_relay_that_stops_renewing_is_taken_over_once_its_lease_ran_out(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/relay.db"
    broker = MemoryBroker()
    # two stores on one file: two processes' relays
    first, second = open_store(url), open_store(url)
    await first.open()
    await second.open()
    outbox_a, outbox_b = outbox_store(first), outbox_store(second)
    assert outbox_a is not None and outbox_b is not None
    transport_a, transport_b = MemoryTransport(broker), MemoryTransport(broker)
    await transport_a.open()
    await transport_b.open()
    a = Relay(outbox_a, transport_a, owner="a", poll_interval=0.05, lease=1.0)
    b = Relay(outbox_b, transport_b, owner="b", poll_interval=0.05, lease=1.0)
    try:
        a.start()
        await outbox_a.add_outbox([message(1)])
        await until_published(outbox_a)
        assert a.published == 1

        # A stops renewing (as a SIGKILLed relay would: its lease stays in the table)
        await a.stop()
        b.start()
        await outbox_b.add_outbox([message(2), message(3)])
        await until_published(outbox_b)

        assert b.published == 2  # B took over once A's one-second lease ran out
        assert a.published == 1
        ids = [m.id for m in broker.pending("inventory")]
        assert ids == ["m-1", "m-2", "m-3"]  # in the order they were written, each once
        with sqlite3.connect(f"{tmp_path}/relay.db") as db:
            assert db.execute("SELECT owner FROM saga_relay").fetchall() == [("b",)]
    finally:
        await a.stop()
        await b.stop()
        await transport_a.close()
        await transport_b.close()
        await first.close()
        await second.close()


async def test_a_live_holder_keeps_the_lease_from_another_relay(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/held.db")
    await store.open()
    try:
        outbox = outbox_store(store)
        assert outbox is not None
        assert await outbox.take_relay_lease("a", 3600.0)
        assert not await outbox.take_relay_lease("b", 1.0)  # A's lease has not run out
        assert await outbox.take_relay_lease("a", 3600.0)  # renewed by its holder
    finally:
        await store.close()


async def test_the_engine_and_the_participant_hand_their_relay_lease_to_their_relay(
    tmp_path: Path,
) -> None:
    broker = MemoryBroker()
    engine = Engine(
        f"sqlite:///{tmp_path}/e.db",
        transport=MemoryTransport(broker),
        relay_lease=timedelta(seconds=2),
    )
    async with engine:
        assert engine._remote is not None
        assert engine._remote.relay.lease == 2.0
    participant = Participant(
        "inventory",
        f"sqlite:///{tmp_path}/p.db",
        transport=MemoryTransport(broker),
        relay_lease=timedelta(milliseconds=1500),
    )
    async with participant:
        assert participant._relay is not None
        assert participant._relay.lease == 1.5


@pytest.mark.parametrize("lease", [timedelta(0), timedelta(seconds=-1)])
def test_a_relay_lease_that_is_not_positive_is_refused(lease: timedelta) -> None:
    with pytest.raises(ValueError, match="relay_lease must be positive"):
        Engine("memory://", relay_lease=lease)
    with pytest.raises(ValueError, match="relay_lease must be positive"):
        Participant("inventory", "memory://", transport=MemoryTransport(), relay_lease=lease)
    with pytest.raises(TypeError, match="relay_lease must be a timedelta"):
        Engine("memory://", relay_lease=10)  # type: ignore[arg-type]
