"""The inventory service: a participant that reserves and releases stock for sagas.

    python inventory.py --amqp amqp://guest:guest@localhost:5672/ --db inventory.db

Its own SQLite database holds its tables (``stock``, ``reservations``, and a ``ledger`` of
every effect it applied) and sagakit's inbox and outbox. The inbox makes each command run
once: a redelivered command (or a saga's re-send after a timeout) gets the stored reply and
its handler does not run again. On SQLite a handler's own writes cannot share the inbox's
transaction, so they are keyed by the command's message id (``ctx.message_id``, the same on
every delivery): a handler that ran but whose inbox row never committed (a crash in between)
finds its own reservation the second time and does not reserve twice.
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
CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, qty INTEGER NOT NULL,
    message_id TEXT NOT NULL UNIQUE, released INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS ledger (message_id TEXT NOT NULL, command TEXT NOT NULL,
    order_id TEXT NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL);
"""
#: what the shop starts with
STOCK = {"mug": 50, "lamp": 10, "kettle": 5}


class Reserve(BaseModel):
    order_id: str
    sku: str
    qty: int


class Release(BaseModel):
    order_id: str


def open_database(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.executescript(SCHEMA)
    db.executemany("INSERT OR IGNORE INTO stock VALUES (?, ?)", STOCK.items())
    return db


def inventory_service(amqp: str, path: str) -> Participant:
    db = open_database(path)
    # the same file holds sagakit's inbox and outbox (a store of its own: a relay publishes
    # the replies)
    inventory = Participant("inventory", f"sqlite:///{path}", transport=RabbitTransport(amqp))

    @inventory.command("reserve")
    async def reserve(ctx: CommandContext, item: Reserve) -> str:
        db.execute("BEGIN IMMEDIATE")
        try:
            done = db.execute(
                "SELECT order_id FROM reservations WHERE message_id = ?", (ctx.message_id,)
            ).fetchone()
            if done is None:
                row = db.execute("SELECT available FROM stock WHERE sku = ?", (item.sku,))
                available = (row.fetchone() or (0,))[0]
                if available < item.qty:
                    # for good: the saga's step fails with RemoteCommandError (no retry)
                    raise TerminalError(f"only {available} {item.sku} left, {item.qty} asked")
                db.execute(
                    "UPDATE stock SET available = available - ? WHERE sku = ?",
                    (item.qty, item.sku),
                )
                db.execute(
                    "INSERT INTO reservations (order_id, sku, qty, message_id) VALUES (?, ?, ?, ?)",
                    (item.order_id, item.sku, item.qty, ctx.message_id),
                )
                db.execute(
                    "INSERT INTO ledger VALUES (?, 'reserve', ?, ?, ?)",
                    (ctx.message_id, item.order_id, item.sku, item.qty),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        print(f"reserved {item.qty} x {item.sku} for {item.order_id}", flush=True)
        return f"res-{item.order_id}"

    @inventory.command("release")
    async def release(ctx: CommandContext, request: Release) -> dict[str, Any]:
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT sku, qty FROM reservations WHERE order_id = ? AND released = 0",
                (request.order_id,),
            ).fetchone()
            if row is not None:
                sku, qty = row
                db.execute("UPDATE stock SET available = available + ? WHERE sku = ?", (qty, sku))
                db.execute(
                    "UPDATE reservations SET released = 1 WHERE order_id = ?", (request.order_id,)
                )
                db.execute(
                    "INSERT INTO ledger VALUES (?, 'release', ?, ?, ?)",
                    (ctx.message_id, request.order_id, sku, qty),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if row is None:  # never reserved (the reserve was refused), or released before
            print(f"nothing to release for {request.order_id}", flush=True)
            return {"released": False}
        print(f"released {row[1]} x {row[0]} of {request.order_id}", flush=True)
        return {"released": True}

    return inventory


async def serve(amqp: str, path: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with inventory_service(amqp, path):
        print("inventory ready", flush=True)
        await stop.wait()
    print("inventory stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", required=True, help="the RabbitMQ URL")
    parser.add_argument("--db", default="inventory.db", help="its SQLite database file")
    args = parser.parse_args()
    asyncio.run(serve(args.amqp, args.db))


if __name__ == "__main__":
    main()
