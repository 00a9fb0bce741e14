"""The payments service: a participant that charges cards and refunds them for sagas.

    python payments.py --amqp amqp://guest:guest@localhost:5672/ --db payments.db

Like inventory.py, its own SQLite database holds its tables (``charges``, and a ``ledger`` of
every effect it applied) and sagakit's inbox and outbox. The card ``tok_declined`` is refused
for good (``TerminalError``): the saga's remote step fails, and the saga rolls back.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
from typing import Any

from pydantic import BaseModel

from sagakit import CommandContext, Participant, TerminalError
from sagakit.transports.rabbitmq import RabbitTransport

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    order_id TEXT PRIMARY KEY, amount_cents INTEGER NOT NULL, message_id TEXT NOT NULL UNIQUE,
    refunded INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS ledger (message_id TEXT NOT NULL, command TEXT NOT NULL,
    order_id TEXT NOT NULL, amount_cents INTEGER NOT NULL);
"""


class Charge(BaseModel):
    order_id: str
    amount_cents: int
    card: str


class Refund(BaseModel):
    order_id: str


def payments_service(amqp: str, path: str) -> Participant:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.executescript(SCHEMA)
    payments = Participant("payments", f"sqlite:///{path}", transport=RabbitTransport(amqp))

    @payments.command("charge")
    async def charge(ctx: CommandContext, request: Charge) -> str:
        if request.card == "tok_declined":
            print(f"declined the card of {request.order_id}", flush=True)
            raise TerminalError("card declined")
        db.execute("BEGIN IMMEDIATE")
        try:
            # keyed by the message id: a handler run again after a crash charges once
            inserted = db.execute(
                "INSERT OR IGNORE INTO charges (order_id, amount_cents, message_id) "
                "VALUES (?, ?, ?)",
                (request.order_id, request.amount_cents, ctx.message_id),
            ).rowcount
            if inserted:
                db.execute(
                    "INSERT INTO ledger VALUES (?, 'charge', ?, ?)",
                    (ctx.message_id, request.order_id, request.amount_cents),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        print(f"charged {request.amount_cents / 100:.2f} for {request.order_id}", flush=True)
        return f"pay-{request.order_id}"

    @payments.command("refund")
    async def refund(ctx: CommandContext, request: Refund) -> dict[str, Any]:
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT amount_cents FROM charges WHERE order_id = ? AND refunded = 0",
                (request.order_id,),
            ).fetchone()
            if row is not None:
                db.execute(
                    "UPDATE charges SET refunded = 1 WHERE order_id = ?", (request.order_id,)
                )
                db.execute(
                    "INSERT INTO ledger VALUES (?, 'refund', ?, ?)",
                    (ctx.message_id, request.order_id, row[0]),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        # a declined charge charged nothing: its compensation has nothing to undo
        print(f"{'refunded' if row else 'nothing to refund for'} {request.order_id}", flush=True)
        return {"refunded": row is not None}

    return payments


async def serve(amqp: str, path: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with payments_service(amqp, path):
        print("payments ready", flush=True)
        await stop.wait()
    print("payments stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", required=True, help="the RabbitMQ URL")
    parser.add_argument("--db", default="payments.db", help="its SQLite database file")
    args = parser.parse_args()
    asyncio.run(serve(args.amqp, args.db))


if __name__ == "__main__":
    main()
