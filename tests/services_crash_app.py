"""The processes of tests/test_services_crash.py: a saga worker and two participant services
on one PostgreSQL database, talking through the PostgreSQL transport.

    python -m tests.services_crash_app worker URL
    python -m tests.services_crash_app participants URL

Each participant's handlers are transactional: the ledger row (``public.services_ledger``,
no unique key, so a command processed twice would show twice) commits with the inbox row.
Both modes run until they are killed.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import Any

from sagakit import CommandContext, Engine, Participant, SagaContext, TerminalError, saga_workflow
from sagakit.transports.postgres import PostgresOutboxTransport

LEDGER = "public.services_ledger"


@saga_workflow("CrossServiceOrder")
async def cross_order(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    reservation = await saga.send_command(
        "reserve",
        {"item": inp["item"]},
        to="inventory",
        compensate_with=("release", {"item": inp["item"]}),
        timeout=timedelta(seconds=120),
    )
    payment = await saga.send_command("charge", {"amount": inp["amount"]}, to="payments")
    return {"reservation": reservation, "payment": payment}


async def record(ctx: CommandContext, command: str, key: Any) -> None:
    await ctx.connection.execute(
        f"INSERT INTO {LEDGER} (participant, command, message_id, key) VALUES ($1, $2, $3, $4)",
        ctx.participant,
        command,
        ctx.message_id,
        str(key),
    )


async def participants(url: str) -> None:
    inventory = Participant(
        "inventory", url, transport=PostgresOutboxTransport(url, poll_interval=0.2)
    )
    payments = Participant(
        "payments", url, transport=PostgresOutboxTransport(url, poll_interval=0.2)
    )

    @inventory.command("reserve", transactional=True)
    async def reserve(ctx: CommandContext, payload: dict[str, Any]) -> str:
        await record(ctx, "reserve", payload["item"])
        return f"r-{payload['item']}"

    @inventory.command("release", transactional=True)
    async def release(ctx: CommandContext, payload: dict[str, Any]) -> None:
        await record(ctx, "release", payload["item"])

    @payments.command("charge", transactional=True)
    async def charge(ctx: CommandContext, payload: dict[str, Any]) -> str:
        await record(ctx, "charge", payload["amount"])
        if payload["amount"] % 5 == 0:
            raise TerminalError("declined")
        return "paid"

    async with inventory, payments:
        print("participants ready", flush=True)
        await asyncio.Event().wait()


async def worker(url: str) -> None:
    engine = Engine(
        url,
        lease=timedelta(seconds=2),
        poll_interval=timedelta(milliseconds=100),
        transport=PostgresOutboxTransport(url, poll_interval=0.2),
    )
    engine.register(cross_order)
    async with engine:
        print("worker ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    mode, url = sys.argv[1], sys.argv[2]
    asyncio.run(worker(url) if mode == "worker" else participants(url))
