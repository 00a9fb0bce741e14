"""The process of tests/test_participant_tx_crash.py: a participant on a SQLite store whose
transactional handler writes a ledger row (``ledger``, no unique key, so a command processed
twice would show twice) on ``ctx.connection``.

    python -m tests.participant_tx_crash_app serve URL LEDGER

It delivers command ``m-1`` to itself (an in-process broker: the same message id on every run,
as a broker's redelivery after the crash), prints a JSON summary once the reply is out, and
exits. With the switch ``reserve.hang`` on, the handler blocks after its write, before the
commit, and writes ``reserve.blocked`` for the test to SIGKILL it there.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from typing import Any

from sagakit import CommandContext, Participant
from sagakit.stores.sqlite.store import path_from_url
from sagakit.transports import MemoryBroker, MemoryTransport, Message
from tests.processes import AppSwitches

switches = AppSwitches()
REPLIES = "app.replies"


async def serve(url: str) -> None:
    with sqlite3.connect(path_from_url(url)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ledger (message_id TEXT, item TEXT)")
    broker = MemoryBroker()
    participant = Participant("inventory", url, transport=MemoryTransport(broker))

    @participant.command("reserve", transactional=True)
    async def reserve(ctx: CommandContext, payload: dict[str, Any]) -> str:
        ctx.connection.execute("INSERT INTO ledger VALUES (?, ?)", (ctx.message_id, "book"))
        if switches.on("reserve", "hang"):
            switches.write_marker("reserve")
            await asyncio.Event().wait()  # killed here, the transaction open
        return f"r-{payload['item']}"

    async with MemoryTransport(broker) as sender, participant:
        await sender.publish(
            Message(
                id="m-1",
                destination="inventory",
                kind="command",
                name="reserve",
                payload=json.dumps({"item": "book"}),
                reply_to=REPLIES,
                correlation_id="m-1",
            )
        )
        async with asyncio.timeout(60):
            while True:
                if broker.pending(REPLIES):
                    break
                await asyncio.sleep(0.02)
        reply = json.loads(broker.pending(REPLIES)[0].payload)
        print(json.dumps({"handled": participant.handled, "reply": reply}))


if __name__ == "__main__":
    mode, url, ledger = sys.argv[1], sys.argv[2], sys.argv[3]
    switches.configure(ledger, os.path.join(os.path.dirname(ledger), "markers"))
    asyncio.run(serve(url))
