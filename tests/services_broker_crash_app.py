"""The processes of tests/test_services_broker_crash.py: a saga worker on the orders database
and two participant services, each on a PostgreSQL database of its own, talking through a real
broker (RabbitMQ or NATS JetStream).

    python -m tests.services_broker_crash_app worker    ORDERS_URL BROKER
    python -m tests.services_broker_crash_app inventory ORDERS_URL BROKER INVENTORY_URL
    python -m tests.services_broker_crash_app payments  ORDERS_URL BROKER PAYMENTS_URL

``BROKER`` is ``rabbitmq:amqp://...`` or ``nats:nats://...``. The worker's engine runs the relay
of the orders database (``Engine(transport=...)``) and consumes the replies; each participant
runs the relay of its own database. The handlers are transactional: the ledger row
(``public.services_ledger`` in the participant's database, no unique key, so a command
processed twice would show twice) commits with the inbox row. Every mode runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import Any

from sagakit import CommandContext, Engine, Participant, SagaContext, TerminalError, saga_workflow
from sagakit.transports.base import Transport

LEDGER = "public.services_ledger"
#: every SAGA-th saga is declined by the payments service (then compensated)
DECLINE_EVERY = 5


@saga_workflow("BrokerCrashOrder")
async def broker_order(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    reservation = await saga.send_command(
        "reserve",
        {"item": inp["item"]},
        to="inventory",
        compensate_with=("release", {"item": inp["item"]}),
        timeout=timedelta(seconds=300),
    )
    payment = await saga.send_command("charge", {"amount": inp["amount"]}, to="payments")
    return {"reservation": reservation, "payment": payment}


def transport(broker: str) -> Transport:
    kind, _, url = broker.partition(":")
    if kind == "rabbitmq":
        from sagakit.transports.rabbitmq import RabbitTransport

        # long enough to outlast the broker's restart
        return RabbitTransport(url, publish_timeout=120)
    if kind == "nats":
        from sagakit.transports.nats import NatsTransport

        # a killed consumer's messages come back after ack_wait
        return NatsTransport(url, publish_timeout=120, ack_wait=2.0)
    raise SystemExit(f"unknown broker {broker!r}: use rabbitmq:URL or nats:URL")


async def record(ctx: CommandContext, command: str, key: Any) -> None:
    await ctx.connection.execute(
        f"INSERT INTO {LEDGER} (participant, command, message_id, key) VALUES ($1, $2, $3, $4)",
        ctx.participant,
        command,
        ctx.message_id,
        str(key),
    )


def inventory(url: str, broker: str) -> Participant:
    participant = Participant("inventory", url, transport=transport(broker))

    @participant.command("reserve", transactional=True)
    async def reserve(ctx: CommandContext, payload: dict[str, Any]) -> str:
        await record(ctx, "reserve", payload["item"])
        return f"r-{payload['item']}"

    @participant.command("release", transactional=True)
    async def release(ctx: CommandContext, payload: dict[str, Any]) -> None:
        await record(ctx, "release", payload["item"])

    return participant


def payments(url: str, broker: str) -> Participant:
    participant = Participant("payments", url, transport=transport(broker))

    @participant.command("charge", transactional=True)
    async def charge(ctx: CommandContext, payload: dict[str, Any]) -> str:
        await record(ctx, "charge", payload["amount"])
        if payload["amount"] % DECLINE_EVERY == 0:
            raise TerminalError("declined")
        return "paid"

    return participant


async def serve(participant: Participant) -> None:
    async with participant:
        print(f"{participant.name} ready", flush=True)
        await asyncio.Event().wait()


async def worker(url: str, broker: str) -> None:
    engine = Engine(
        url,
        lease=timedelta(seconds=2),
        poll_interval=timedelta(milliseconds=100),
        transport=transport(broker),
    )
    engine.register(broker_order)
    async with engine:
        print("worker ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    mode, orders, broker_spec = sys.argv[1:4]
    if mode == "worker":
        asyncio.run(worker(orders, broker_spec))
    elif mode == "inventory":
        asyncio.run(serve(inventory(sys.argv[4], broker_spec)))
    elif mode == "payments":
        asyncio.run(serve(payments(sys.argv[4], broker_spec)))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
