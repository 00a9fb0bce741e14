"""The shop's web API. It starts checkout sagas and reports on them; it runs none itself: the
engine is a client (``worker=False``) and ``sagakit worker`` processes run the sagas, so a
deploy or a crash of the web tier never stops an order halfway.

    SAGAKIT_DB=postgresql://localhost/shop uvicorn app:app

Endpoints:
    POST /orders               start a checkout (an ``Idempotency-Key`` header makes a retried
                               POST return the same order instead of starting another)
    GET  /orders/{id}          the order's status, stage, receipt or error, and its steps
    POST /orders/{id}/cancel   ask to cancel it (honoured within the cancellation window)
"""

from __future__ import annotations

import os
import uuid
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field
from sagas import CANCEL, STAGE, Item, Order, checkout

from sagakit import Engine, SagaStatus
from sagakit.contrib.fastapi import EngineDep, install_exception_handlers, sagakit_lifespan

#: the saga database: the same one the workers use (``sagakit worker`` reads SAGAKIT_DB too)
DB_URL = os.environ.get("SAGAKIT_DB", "postgresql://postgres@127.0.0.1:5432/shop")
#: how long after payment an order can still be cancelled
CANCEL_WINDOW = float(os.environ.get("CHECKOUT_CANCEL_WINDOW", "60"))

engine = Engine(DB_URL, worker=False)
engine.register(checkout)

app = FastAPI(title="sagakit checkout example", lifespan=sagakit_lifespan(engine))
install_exception_handlers(app)  # no such order -> 404, an ended one cannot be cancelled -> 409


class OrderRequest(BaseModel):
    customer_id: str = Field(min_length=1)
    items: list[Item] = Field(min_length=1)
    card: str = Field(min_length=1)
    amount_cents: int = Field(gt=0)


class OrderAccepted(BaseModel):
    id: str
    status: SagaStatus


class StepView(BaseModel):
    name: str
    kind: str
    status: str


class OrderView(BaseModel):
    id: str
    status: SagaStatus
    stage: str | None
    receipt: dict[str, Any] | None
    error: str | None
    steps: list[StepView]


class CancelRequest(BaseModel):
    reason: str = "no reason given"


@app.post("/orders", status_code=202)
async def create_order(
    body: OrderRequest,
    engine: EngineDep,
    idempotency_key: Annotated[str | None, Header(max_length=100)] = None,
) -> OrderAccepted:
    order = Order(**body.model_dump(), cancel_window_seconds=CANCEL_WINDOW)
    order_id = f"order-{idempotency_key or uuid.uuid4()}"
    # written for a worker: the request returns as soon as the saga is durable
    handle = await engine.start(checkout, order, saga_id=order_id, run_here=False)
    return OrderAccepted(id=handle.saga_id, status=await handle.status())


@app.get("/orders/{order_id}")
async def get_order(order_id: str, engine: EngineDep) -> OrderView:
    saga = await engine.get(order_id)  # SagaNotFoundError -> 404
    if saga.name != checkout.name:
        raise HTTPException(404, f"no order {order_id!r}")
    error = None
    if saga.error:
        error = str(saga.error.get("message") or saga.error)
    return OrderView(
        id=saga.saga_id,
        status=saga.status,
        stage=await engine.query(order_id, STAGE),
        receipt=saga.output if saga.status == SagaStatus.COMPLETED else None,
        error=error,
        steps=[StepView(name=s.name, kind=s.kind, status=s.status) for s in saga.steps],
    )


@app.post("/orders/{order_id}/cancel", status_code=202)
async def cancel_order(
    order_id: str, engine: EngineDep, body: CancelRequest | None = None
) -> OrderAccepted:
    saga = await engine.get(order_id)
    if saga.name != checkout.name:
        raise HTTPException(404, f"no order {order_id!r}")
    # kept until the saga waits for it; an order that has ended -> SagaFinishedError -> 409
    reason = (body or CancelRequest()).reason
    await engine.signal(order_id, CANCEL, {"reason": reason})
    return OrderAccepted(id=order_id, status=await engine.handle(order_id).status())
