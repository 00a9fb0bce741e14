"""The checkout service: runs the Checkout saga, which crosses two other services over RabbitMQ.

    python checkout.py --amqp amqp://guest:guest@localhost:5672/ --db sqlite:///checkout.db

The saga asks the ``inventory`` service to reserve the item, then the ``payments`` service to
charge the card. Each is a remote step: the command goes into this service's outbox in the same
transaction as the step's journal entry, the engine's relay publishes it, and the saga sleeps
(SUSPENDED, nothing in memory) until the reply comes back. A refused charge rolls the saga back:
the compensation commands ``refund`` and ``release`` go out the same way, newest first.

This process is the saga worker: it runs until SIGTERM or Ctrl-C. Orders are started by any
process with an engine on the same database (``run.py`` does, with ``worker=False``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from datetime import timedelta
from typing import Any

from sagakit import Engine, RetryPolicy, SagaContext, saga_workflow
from sagakit.transports.rabbitmq import RabbitTransport

#: no reply within this: the command is sent again (same message id) up to 3 times in all
REPLY_TIMEOUT = timedelta(seconds=60)


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, order: dict[str, Any]) -> dict[str, Any]:
    reservation = await saga.send_command(
        "reserve",
        {"order_id": order["id"], "sku": order["sku"], "qty": order["qty"]},
        to="inventory",
        # sent if the saga rolls back once the command left: inventory may have reserved
        # even when no reply came, so "release" must accept an order it never reserved
        compensate_with=("release", {"order_id": order["id"]}),
        timeout=REPLY_TIMEOUT,
        retry=RetryPolicy(max_attempts=3),
    )
    # a refusal (payments raised TerminalError) raises RemoteCommandError here; not caught,
    # it rolls the saga back
    payment = await saga.send_command(
        "charge",
        {"order_id": order["id"], "amount_cents": order["amount_cents"], "card": order["card"]},
        to="payments",
        compensate_with=("refund", {"order_id": order["id"]}),
        timeout=REPLY_TIMEOUT,
        retry=RetryPolicy(max_attempts=3),
    )
    return {"reservation": reservation, "payment": payment}


async def serve(amqp: str, db: str) -> None:
    engine = Engine(
        db,
        # on SQLite, sagas started by another process are found at the next poll
        poll_interval=timedelta(milliseconds=200),
        # the engine opens it, relays its outbox through it and consumes the replies
        transport=RabbitTransport(amqp),
    )
    engine.register(checkout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with engine:
        print("checkout ready", flush=True)
        await stop.wait()
    print("checkout stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", required=True, help="the RabbitMQ URL")
    parser.add_argument("--db", default="sqlite:///checkout.db", help="the saga store's URL")
    args = parser.parse_args()
    asyncio.run(serve(args.amqp, args.db))


if __name__ == "__main__":
    main()
