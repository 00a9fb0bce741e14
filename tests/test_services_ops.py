"""Operating sagas across services (issue 20): the dashboard shows a remote step as sent and
waiting for its participant's reply (journal row and timeline chart), then as replied; the
front page shows the outbox backlog, the messages the relay has not published yet.

A saga on a SQLite file sends its command from an engine without a transport, so the command
stays in the outbox (no relay publishes it) and the saga waits; an engine with a transport then
relays it to a participant, whose reply completes the saga."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from sagakit import CommandContext, Engine, Participant, SagaContext, SagaStatus, saga_workflow
from sagakit.dashboard import app
from sagakit.transports import MemoryBroker, MemoryTransport

#: a client and server on loopback: the dashboard reads without a token
LOCAL: dict[str, Any] = {"base_url": "http://127.0.0.1:8700", "client": ("127.0.0.1", 40000)}


@saga_workflow("OpsOrder")
async def ops_order(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    reservation = await saga.send_command(
        "reserve",
        {"sku": inp["sku"]},
        to="inventory",
        compensate_with=("release", {"sku": inp["sku"]}),
        timeout=timedelta(hours=1),
    )
    return {"reservation": reservation}


def pages(url: str, saga_id: str) -> tuple[str, str]:
    """The front page and the saga's page, as the dashboard serves them."""
    board = app(url)
    with TestClient(board, **LOCAL) as client:
        front = client.get("/")
        saga = client.get(f"/sagas/{saga_id}")
        client.portal.call(board.close)
    assert front.status_code == 200, front.text
    assert saga.status_code == 200, saga.text
    return front.text, saga.text


def journal_row(html: str, seq: int) -> str:
    found = re.search(rf'<tr class="[^"]*" data-seq="{seq}">(.*?)</tr>', html, re.S)
    assert found, f"no journal row #{seq}"
    return found.group(1)


def chart_bar(html: str, seq: int) -> str:
    found = re.search(rf'<g class="bar-group" data-seq="{seq}"[^>]*>(.*?)</g>', html, re.S)
    assert found, f"no chart bar #{seq}"
    return found.group(1)


async def send_without_relay(url: str) -> int | None:
    engine = Engine(url)  # no transport: its commands wait in the outbox for a relay
    engine.register(ops_order)
    async with engine:
        await engine.start(ops_order, {"sku": "A-1"}, saga_id="o-1")
        await engine.settle("o-1")
        assert await engine.handle("o-1").status() == SagaStatus.SUSPENDED
        return await engine.admin.outbox_backlog()


async def relay_to_inventory(url: str) -> dict[str, Any]:
    broker = MemoryBroker()
    inventory = Participant("inventory", "memory://inventory", transport=MemoryTransport(broker))

    @inventory.command("reserve")
    async def reserve(ctx: CommandContext, payload: dict[str, str]) -> str:
        return f"r-{payload['sku']}"

    engine = Engine(
        url, poll_interval=timedelta(milliseconds=100), transport=MemoryTransport(broker)
    )
    engine.register(ops_order)
    async with engine, inventory:
        result: dict[str, Any] = await engine.handle("o-1").result(timeout=60)
        # the reply's outbox row is the participant's; the engine's command row was published
        for _ in range(1200):  # the relay marks a row once the broker confirmed it
            if not await engine.admin.outbox_backlog():
                break
            await asyncio.sleep(0.05)
    return result


def test_the_dashboard_shows_a_remote_step_waiting_for_its_participant_then_replied(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    assert asyncio.run(send_without_relay(url)) == 1

    front, saga = pages(url, "o-1")
    # the front page: one command waits for the relay
    backlog = re.search(r'<p class="small outbox" id="outbox-backlog"[^>]*>(.*?)</p>', front)
    assert backlog, "no outbox backlog on the front page"
    assert re.sub("<[^>]+>", "", backlog.group(1)) == "Outbox: 1 message waiting for the relay"
    # the saga's page: the journal row says where the command went and that it waits
    row = journal_row(saga, 0)
    assert "inventory.reserve" in row and "running" in row
    assert "sent to inventory (command &#39;reserve&#39;, message cmd:o-1:0)" in row
    assert "waiting for its reply; times out" in row
    assert "waiting for the reply" in row  # the duration column
    # the chart: a running remote bar, its note naming the participant
    bar = chart_bar(saga, 0)
    assert 'class="bar wait remote bar-running"' in bar
    assert "sent, waiting for a reply from inventory" in bar
    assert "command to a service" in saga  # the legend

    assert asyncio.run(relay_to_inventory(url)) == {"reservation": "r-A-1"}

    front, saga = pages(url, "o-1")
    assert 'id="outbox-backlog"' in front
    assert "Outbox: <strong>0</strong> messages waiting for the relay" in front
    row = journal_row(saga, 0)
    assert "completed" in row and "replied" in row and "r-A-1" in row
    assert "waiting" not in row
    bar = chart_bar(saga, 0)
    assert 'class="bar wait remote"' in bar
    assert "replied" in bar and "waiting" not in bar


def test_a_store_with_no_outbox_shows_no_backlog(tmp_path: Path) -> None:
    # the Restate backend and stores of other makers keep no outbox: no line, not a zero
    from sagakit.dashboard.pages import ListFilters, render_index

    html = render_index(counts={"COMPLETED": 1}, sagas=[], next_cursor=None, filters=ListFilters())
    assert "outbox-backlog" not in html
    html = render_index(
        counts={"COMPLETED": 1}, sagas=[], next_cursor=None, filters=ListFilters(), outbox=1234
    )
    assert "Outbox: <strong>1,234</strong> messages waiting for the relay" in html
