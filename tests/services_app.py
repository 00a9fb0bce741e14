"""A saga with services (dependency injection) that suspends in one process and resumes in
another, run as real processes by tests/test_services.py.

    python -m tests.services_app start  DB_URL LEDGER SAGA_ID
    python -m tests.services_app resume DB_URL LEDGER SAGA_ID

``start`` starts the saga and exits once it is SUSPENDED in ``wait_for_signal("go")``;
``resume`` opens a worker with the same workflow and waits until the saga ended (the test
sends the signal). The services factory is an async context manager: every build, close and
use appends a JSON line (with the writer's pid) to LEDGER. Each prints one JSON summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from sagakit import Engine, SagaContext, SagaStatus, ServiceScope, saga_step, saga_workflow
from tests.processes import append_to_ledger, saga_summary

LEASE = timedelta(seconds=1)
POLL = timedelta(milliseconds=100)

_ledger: str | None = None
_serial = itertools.count(1)


def record(**event: Any) -> None:
    assert _ledger is not None, "the ledger path is not set"
    append_to_ledger(_ledger, event)


class TenantOrder(BaseModel):
    tenant: str
    item: str


@dataclass
class Repo:
    """What a request-scoped repository would be: bound to the tenant of the saga's input."""

    tenant: str
    serial: int


@contextlib.asynccontextmanager
async def services(scope: ServiceScope) -> AsyncIterator[Repo]:
    repo = Repo(tenant=scope.input.tenant, serial=next(_serial))
    record(ev="built", saga=scope.saga_id, workflow=scope.workflow, serial=repo.serial)
    try:
        yield repo
    finally:
        record(ev="closed", serial=repo.serial)


@saga_step("Reserve")
async def reserve(ctx: SagaContext, item: str) -> str:
    repo: Repo = ctx.services
    record(ev="used", step="Reserve", tenant=repo.tenant, serial=repo.serial)
    return f"{repo.tenant}:{item}"


@saga_step("Ship")
async def ship(ctx: SagaContext, item: str) -> str:
    repo: Repo = ctx.services
    record(ev="used", step="Ship", tenant=repo.tenant, serial=repo.serial)
    return f"shipped {item} for {repo.tenant}"


@saga_workflow("TenantOrder")
async def tenant_order(saga: SagaContext, inp: TenantOrder) -> dict[str, Any]:
    reserved = await reserve(saga, inp.item)
    await saga.wait_for_signal("go")
    shipped = await ship(saga, reserved)
    repo: Repo = saga.services
    return {"reserved": reserved, "shipped": shipped, "saga_serial": repo.serial}


async def main_async(args: argparse.Namespace) -> int:
    engine = Engine(args.db, lease=LEASE, poll_interval=POLL, services=services)
    engine.register(tenant_order)
    async with engine:
        if args.mode == "start":
            await engine.start(tenant_order, {"tenant": "acme", "item": "book"}, args.saga)
            for _ in range(600):
                if (await engine.get(args.saga)).status == SagaStatus.SUSPENDED:
                    break
                await asyncio.sleep(0.05)
        else:
            with contextlib.suppress(Exception):
                await engine.handle(args.saga).result(timeout=60)
        print(json.dumps(await saga_summary(engine, args.saga)))
    return 0


def main(argv: list[str] | None = None) -> int:
    global _ledger
    parser = argparse.ArgumentParser(prog="python -m tests.services_app")
    parser.add_argument("mode", choices=["start", "resume"])
    parser.add_argument("db")
    parser.add_argument("ledger")
    parser.add_argument("saga")
    args = parser.parse_args(argv)
    _ledger = args.ledger
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
