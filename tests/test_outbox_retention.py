"""Retention of the outbox and the inbox (issue 20): published outbox rows and inbox records
older than the retention are deleted in small batches, unpublished rows never; a command
redelivered after its inbox record went runs again (the documented rule)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest

from sagakit.engine.retention import prune_ended, prune_messages
from sagakit.participant import CommandContext, Participant
from sagakit.remote import SAGA_HEADER
from sagakit.stores import open_store
from sagakit.stores.outbox import InboxRecord, OutboxMessage, OutboxStore, outbox_store
from sagakit.transports import MemoryBroker, MemoryTransport, Message
from tests.conftest import make_engine, make_store_url

WAIT = 60.0


def message(name: str) -> OutboxMessage:
    return OutboxMessage(name, "inventory", "command", "reserve", "{}", saga_id="s-1")


def record(message_id: str, processed_at: float) -> InboxRecord:
    return InboxRecord("inventory", message_id, "reserve", "ok", "{}", processed_at)


async def publish(outbox: OutboxStore, *names: str) -> float:
    """Mark these rows published; the latest time they were published at."""
    rows = [r for r in await outbox.unpublished(1000) if r.message.message_id in names]
    await outbox.mark_published([r.position for r in rows])
    stamps = [
        r.published_at
        for r in await outbox.saga_messages("s-1")
        if r.message.message_id in names and r.published_at is not None
    ]
    assert len(stamps) == len(names)
    return max(stamps)


async def after(moment: float) -> float:
    """Now, once the clock is past ``moment``."""
    while True:
        now = time.time()
        if now > moment:
            return now
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
async def test_old_published_rows_and_inbox_records_go_in_batches(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = open_store(make_store_url(kind, tmp_path, request))
    await store.open()
    try:
        outbox = outbox_store(store)
        assert outbox is not None
        await outbox.add_outbox([message(n) for n in ("old-1", "old-2", "old-3", "waiting")])
        published = await publish(outbox, "old-1", "old-2", "old-3")
        cutoff = await after(published)
        await asyncio.sleep(0.02)
        await outbox.add_outbox([message("new")])
        await publish(outbox, "new")
        for n, at in (("r-1", cutoff - 100), ("r-2", cutoff - 50), ("r-3", cutoff + 100)):
            await outbox.record_inbox(record(n, at), [])

        # one batch of two, then the rest
        assert await outbox.prune_messages(cutoff, 2) == (2, 2)
        assert await prune_messages(store, cutoff, batch=2) == (1, 0)
        assert await prune_messages(store, cutoff, batch=2) == (0, 0)

        left = [r.message.message_id for r in await outbox.saga_messages("s-1")]
        assert left == ["waiting", "new"]  # unpublished rows stay however old
        assert await outbox.outbox_backlog() == 1
        assert await outbox.find_inbox("inventory", "r-1") is None
        assert await outbox.find_inbox("inventory", "r-2") is None
        assert await outbox.find_inbox("inventory", "r-3") is not None
    finally:
        await store.close()


async def test_sagakit_prune_deletes_old_messages_too(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/prune.db")
    await store.open()
    try:
        outbox = outbox_store(store)
        assert outbox is not None
        await outbox.add_outbox([message("sent")])
        cutoff = await after(await publish(outbox, "sent"))
        await outbox.record_inbox(record("done", cutoff - 1), [])
        assert await prune_ended(store, cutoff, dry_run=True) == 0
        assert len(await outbox.saga_messages("s-1")) == 1  # a dry run deletes nothing
        assert await prune_ended(store, cutoff) == 0
        assert await outbox.saga_messages("s-1") == []
        assert await outbox.find_inbox("inventory", "done") is None
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_an_engine_with_retention_deletes_old_messages_in_the_background(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = make_store_url(kind, tmp_path, request)
    engine = make_engine(
        url, retention=timedelta(milliseconds=100), poll_interval=timedelta(milliseconds=50)
    )
    async with engine:
        outbox = outbox_store(engine._store)
        assert outbox is not None
        await outbox.add_outbox([message("sent"), message("waiting")])
        await publish(outbox, "sent")
        await outbox.record_inbox(record("done", time.time()), [])
        async with asyncio.timeout(WAIT):
            while True:
                rows = await outbox.saga_messages("s-1")
                if [r.message.message_id for r in rows] == ["waiting"] and (
                    await outbox.find_inbox("inventory", "done") is None
                ):
                    break
                await asyncio.sleep(0.05)
        assert await outbox.outbox_backlog() == 1
    if kind == "sqlite":
        with sqlite3.connect(f"{tmp_path}/t.db") as db:
            assert db.execute("SELECT count(*) FROM saga_inbox").fetchone() == (0,)


async def test_a_command_redelivered_after_its_inbox_record_went_runs_again(
    tmp_path: Path,
) -> None:
    broker, runs = MemoryBroker(), list[str]()
    store = open_store(f"sqlite:///{tmp_path}/p.db")
    await store.open()
    participant = Participant("inventory", store, transport=MemoryTransport(broker))

    @participant.command("reserve")
    async def reserve(ctx: CommandContext, payload: dict[str, str]) -> str:
        runs.append(ctx.message_id)
        return "reserved"

    command = Message(
        id="m-1",
        destination="inventory",
        kind="command",
        name="reserve",
        payload=json.dumps({"item": "book"}),
        reply_to="replies",
        headers={SAGA_HEADER: "saga-1"},
    )

    async def replies(n: int) -> None:
        async with asyncio.timeout(WAIT):
            while True:
                if len(broker.pending("replies")) >= n:
                    return
                await asyncio.sleep(0.02)

    try:
        async with MemoryTransport(broker) as sender, participant:
            await sender.publish(command)
            await replies(1)
            await sender.publish(command)  # within the retention: the stored reply
            await replies(2)
            assert runs == ["m-1"]
            await prune_messages(store, time.time() + 1)
            await sender.publish(command)  # after it: processed again
            await replies(3)
            assert runs == ["m-1", "m-1"]
    finally:
        await store.close()
