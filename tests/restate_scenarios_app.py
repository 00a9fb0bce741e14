"""The saga definitions of the shared scenario suite (tests/test_restate_scenarios.py): plain
sagakit definitions, run unchanged by the embedded engine and by a Restate server.

Every step and compensation appends what it did to ``LEDGER`` (this process: the Restate app is
served in a thread of the test process), keyed by saga id so that tests do not see each other.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from sagakit import (
    BaseStep,
    ErrorInfo,
    InputContext,
    RetryPolicy,
    SagaBuilder,
    SagaCompensatedError,
    SagaContext,
    SagaWorkflowOptions,
    StepResponse,
    TerminalError,
    create_saga_long_workflow,
    create_saga_virtual_object,
    saga_step,
    saga_step_strict,
    saga_workflow,
)
from sagakit.objects import ObjectContext, SharedObjectContext

#: saga id -> what its steps and compensations did, in order
LEDGER: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
#: (saga id, step name) -> attempts so far
ATTEMPTS: dict[tuple[str, str], int] = defaultdict(int)

FAST = RetryPolicy(
    max_attempts=3,
    initial_interval=timedelta(milliseconds=10),
    max_interval=timedelta(milliseconds=50),
)
TWO_FAST = RetryPolicy(
    max_attempts=2,
    initial_interval=timedelta(milliseconds=10),
    max_interval=timedelta(milliseconds=50),
)


def note(saga_id: str, *event: Any) -> None:
    LEDGER[saga_id].append(event)


def _attempt(ctx: SagaContext) -> int:
    key = (ctx.saga_id, ctx.step_name or "")
    ATTEMPTS[key] += 1
    return ATTEMPTS[key]


# -- the 3-step checkout: the input says what goes wrong where ---------------------------------


async def undo_reserve(data: Any, failed: bool = False) -> None:
    note(data["saga"], "undo", "reserve", data.get("what"), failed)


async def undo_charge(data: Any) -> None:  # a compensation without `failed`
    note(data["saga"], "undo", "charge", data.get("what"))


async def undo_ship(data: Any, failed: bool) -> None:
    if data.get("undo_ship_fails") == "retries":
        raise ValueError("the courier does not answer")
    if data.get("undo_ship_fails"):
        raise TerminalError("the courier refuses the return")
    note(data["saga"], "undo", "ship", data.get("what"), failed)


async def _behave(ctx: SagaContext, inp: dict[str, Any], name: str) -> Any:
    """What step ``name`` does for this input: fail how the input says, else succeed."""
    note(ctx.saga_id, "do", name, ctx.step_key)
    attempt = _attempt(ctx)
    how = inp.get("fail", {}).get(name)
    if how == "terminal":
        raise TerminalError(f"{name} refused")
    if how == "permanent":
        return StepResponse.permanent_failure(
            f"{name} is out of stock", compensation_data={"saga": ctx.saga_id, "what": "partial"}
        )
    if how == "flaky" and attempt < 3:
        raise ValueError(f"{name} flaked on attempt {attempt}")
    if how == "always":
        raise ValueError(f"{name} is down")
    if how == "not_json":
        return object()
    return StepResponse(
        output={"step": name, "attempts": attempt},
        compensation_data={
            "saga": ctx.saga_id,
            "what": name,
            "undo_ship_fails": inp.get("undo_ship_fails", False),
        },
    )


@saga_step("reserve", compensate=undo_reserve, retry=FAST)
async def reserve(ctx: SagaContext, inp: dict[str, Any]) -> Any:
    return await _behave(ctx, inp, "reserve")


@saga_step_strict("charge", compensate=undo_charge, retry=FAST)
async def charge(ctx: SagaContext, inp: dict[str, Any]) -> Any:
    return await _behave(ctx, inp, "charge")


@saga_step("ship", compensate=undo_ship, retry=TWO_FAST, compensation_retry=FAST)
async def ship(ctx: SagaContext, inp: dict[str, Any]) -> Any:
    return await _behave(ctx, inp, "ship")


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    inp = {**inp, "saga": saga.saga_id}
    a = await reserve(saga, inp)
    b = await charge(saga, inp)
    c = await ship(saga, inp)
    return {"reserve": a, "charge": b, "ship": c}


# -- the hybrid step whose input is its compensation data --------------------------------------


async def undo_hold(data: Any, failed: bool = False) -> None:
    note(data["saga"], "undo", "hold", data.get("amount"), failed)


@saga_step("hold", compensate=undo_hold, retry=TWO_FAST)
async def hold(ctx: SagaContext, inp: dict[str, Any]) -> None:
    note(ctx.saga_id, "do", "hold", ctx.step_key)
    if inp.get("fail"):
        raise ValueError("the bank timed out")


@saga_step_strict("hold_strict", compensate=undo_hold, retry=TWO_FAST)
async def hold_strict(ctx: SagaContext, inp: dict[str, Any]) -> None:
    note(ctx.saga_id, "do", "hold_strict", ctx.step_key)
    if inp.get("fail"):
        raise ValueError("the bank timed out")


@saga_workflow("Holds")
async def holds(saga: SagaContext, inp: dict[str, Any]) -> str:
    data = {"saga": saga.saga_id, "amount": 10}
    await hold(saga, {**data, "fail": inp.get("hybrid_fails", False)})
    await hold_strict(saga, {**data, "amount": 20, "fail": inp.get("strict_fails", False)})
    return "held"


# -- waiting, composition, parallel branches ---------------------------------------------------


@saga_step("mark")
async def mark(ctx: SagaContext, inp: Any) -> Any:
    note(ctx.saga_id, "do", "mark", inp)
    return inp


@saga_workflow("Sleeper")
async def sleeper(saga: SagaContext, inp: dict[str, Any]) -> str:
    await mark(saga, "before")
    await saga.sleep(timedelta(seconds=inp["seconds"]))
    await mark(saga, "after")
    return "woke"


@saga_workflow("Waiter")
async def waiter(saga: SagaContext, inp: dict[str, Any]) -> list[Any]:
    first = await saga.wait_for_signal("go")
    second = await saga.wait_for_signal("go")
    await mark(saga, [first, second])
    return [first, second]


approval = create_saga_long_workflow("Approval")


@approval.main()
async def approval_main(saga: SagaContext, inp: dict[str, Any]) -> Any:
    await mark(saga, "asked")
    decision = await saga.promise("decision").value()
    await mark(saga, decision)
    return decision


@approval.handler()
async def decide(ctx: Any, inp: Any) -> str:
    await ctx.promise("decision").resolve(inp)
    return "decided"


async def undo_inner(data: Any, failed: bool = False) -> None:
    note(data["saga"], "undo", "inner", data.get("n"), failed)


@saga_step("inner", compensate=undo_inner)
async def inner(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    note(ctx.saga_id, "do", "inner", inp["n"])
    return {"saga": ctx.saga_id, "n": inp["n"]}


@saga_workflow("Inner")
async def inner_saga(saga: SagaContext, inp: dict[str, Any]) -> int:
    await inner(saga, {"n": 1})
    await inner(saga, {"n": 2})
    return 2


@saga_step("boom")
async def boom(ctx: SagaContext, inp: Any) -> None:
    note(ctx.saga_id, "do", "boom")
    raise TerminalError("boom")


@saga_workflow("Outer")
async def outer(saga: SagaContext, inp: dict[str, Any]) -> int:
    count: int = await inner_saga.run_as_step(saga, {})
    if inp.get("fail"):
        await boom(saga, None)
    return count


@saga_workflow("Fanout")
async def fanout(saga: SagaContext, inp: dict[str, Any]) -> list[Any]:
    results = await saga.gather(*(inner(saga, {"n": n}) for n in range(inp["n"])))
    if inp.get("fail"):
        await boom(saga, None)
    return [r["n"] for r in results]


@saga_workflow("Parent")
async def parent(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    child = await saga.start_child(outer, {"fail": inp.get("child_fails", False)})
    try:
        return {"child": child.saga_id, "result": await child.result()}
    except SagaCompensatedError as exc:
        return {"child": child.saga_id, "failed": exc.cause_message}


class Order(BaseModel):
    customer: str
    amount: int


async def undo_book(data: Any, failed: bool = False) -> None:
    note(data["saga"], "undo", "book", failed)


@saga_step("book", compensate=undo_book)
async def book(ctx: SagaContext, inp: Any) -> dict[str, Any]:
    note(ctx.saga_id, "do", "book")
    return {"saga": ctx.saga_id}


@saga_workflow("Typed")
async def typed(saga: SagaContext, inp: Order) -> dict[str, Any]:
    await mark(saga, inp.amount)
    return {"customer": inp.customer}


@saga_workflow("Values")
async def values(saga: SagaContext, inp: Any) -> list[Any]:
    made = [str(await saga.uuid()), await saga.random(), (await saga.now()).isoformat()]
    await mark(saga, made)
    return made


@saga_workflow("Impatient")
async def impatient(saga: SagaContext, inp: Any) -> Any:
    await book(saga, None)
    return await saga.wait_for_signal("never", timeout=timedelta(seconds=0.2))


@saga_step("dawdle")
async def dawdle(ctx: SagaContext, inp: float) -> str:
    note(ctx.saga_id, "do", "dawdle")
    await asyncio.sleep(inp)
    note(ctx.saga_id, "do", "dawdled")  # never, when the deadline cuts the step
    return "late"


@saga_workflow("Hurried", options=SagaWorkflowOptions(deadline=timedelta(seconds=2)))
async def hurried(saga: SagaContext, inp: str) -> Any:
    """Bounded by a deadline of 2 s (room for a loaded machine to finish "in time"); the
    input says what runs into it."""
    await book(saga, None)
    if inp == "step":
        return await dawdle(saga, 10)
    if inp == "signal":
        return await saga.wait_for_signal("never")
    if inp == "sleep":
        await saga.sleep(timedelta(seconds=30))
    if inp == "in time":
        await saga.sleep(timedelta(milliseconds=50))
        return await dawdle(saga, 0.05)
    return inp


@saga_workflow("NotJson")
async def not_json(saga: SagaContext, inp: Any) -> Any:
    await book(saga, None)
    return object()


@approval.handler()
async def refuse(ctx: Any, inp: Any) -> str:
    await ctx.promise("decision").reject(str(inp))
    return "refused"


@saga_step("nap")
async def nap(ctx: SagaContext, inp: dict[str, Any]) -> int:
    await asyncio.sleep(inp["seconds"])
    note(ctx.saga_id, "do", "nap", inp["n"])
    return int(inp["n"])


async def two_naps(saga: SagaContext, n: int, first: float, second: float) -> list[int]:
    a = await nap(saga, {"n": n, "seconds": first})
    b = await nap(saga, {"n": n * 10, "seconds": second})
    return [a, b]


@saga_step("slow_once", retry=FAST, timeout=timedelta(milliseconds=200))
async def slow_once(ctx: SagaContext, inp: Any) -> int:
    attempt = _attempt(ctx)
    note(ctx.saga_id, "do", "slow_once", attempt)
    if attempt == 1:
        await asyncio.sleep(5)  # cut by the step's timeout, then retried
    return attempt


@saga_workflow("TimedOut")
async def timed_out(saga: SagaContext, inp: Any) -> int:
    return int(await slow_once(saga, None))


@saga_workflow("Branches")
async def branches(saga: SagaContext, inp: Any) -> list[Any]:
    # branches of several operations each, finishing in another order than they started
    mixed = await saga.gather(two_naps(saga, 1, 0.2, 0.0), two_naps(saga, 2, 0.0, 0.3))
    limited = await saga.gather(
        *(nap(saga, {"n": n, "seconds": 0.05 * (4 - n)}) for n in range(4)), limit=2
    )
    return [mixed, limited]


# -- parking a step for an operator ----------------------------------------------------------

#: saga id -> whether step "stubborn" still fails (a test mends it before retrying)
BROKEN: dict[str, bool] = defaultdict(lambda: True)


async def undo_stubborn(data: Any, failed: bool) -> None:
    note(data["saga"], "undo", "stubborn", failed)


@saga_step("stubborn", compensate=undo_stubborn, retry=TWO_FAST, on_exhausted="park")
async def stubborn(ctx: SagaContext, inp: dict[str, Any]) -> Any:
    note(ctx.saga_id, "do", "stubborn")
    if BROKEN[ctx.saga_id]:
        raise ValueError("the warehouse does not answer")
    return {"fixed": True}


@saga_workflow("Parking")
async def parking(saga: SagaContext, inp: Any) -> Any:
    await book(saga, None)
    out = await stubborn(saga, {"saga": saga.saga_id})
    await mark(saga, "after")
    return out


# -- parallel branches of several operations -----------------------------------------------


async def undo_leg(data: Any, failed: bool = False) -> None:
    note(data["saga"], "undo", data["name"], failed)


@saga_step("leg", compensate=undo_leg, retry=FAST)
async def leg(ctx: SagaContext, inp: dict[str, Any]) -> Any:
    note(ctx.saga_id, "start", inp["name"])
    await asyncio.sleep(inp["seconds"])
    note(ctx.saga_id, "end", inp["name"])
    if inp["fail"]:
        raise TerminalError(f"{inp['name']} refused")
    return StepResponse(output=inp["name"], compensation_data=inp)


async def trip(saga: SagaContext, branch: str, inp: dict[str, Any]) -> list[str]:
    """A branch of ``inp["steps"]`` legs, each taking ``inp["seconds"]``."""
    done: list[str] = []
    for k in range(inp["steps"]):
        name = f"{branch}{k}"
        leg_input = {
            "saga": saga.saga_id,
            "name": name,
            "seconds": inp["seconds"],
            "fail": name == inp.get("fail"),
        }
        done.append(await leg(saga, leg_input))
    return done


@saga_workflow("Trips")
async def trips(saga: SagaContext, inp: dict[str, Any]) -> list[Any]:
    return await saga.gather(*(trip(saga, b, inp) for b in "abc"), limit=inp.get("limit"))


async def nested_trips(saga: SagaContext, inp: dict[str, Any]) -> list[Any]:
    return await saga.gather(trip(saga, "x", inp), trip(saga, "y", inp))


async def signalled_trip(saga: SagaContext, inp: dict[str, Any]) -> list[Any]:
    payload = await saga.wait_for_signal("go")
    await saga.sleep(timedelta(milliseconds=50))
    return [payload, *(await trip(saga, "s", {**inp, "steps": 1}))]


@saga_workflow("MixedBranches")
async def mixed_branches(saga: SagaContext, inp: dict[str, Any]) -> list[Any]:
    # a branch that waits for a signal and sleeps, one with a gather of its own, one of steps
    return await saga.gather(
        signalled_trip(saga, inp), nested_trips(saga, inp), trip(saga, "a", inp)
    )


async def booked_then_waiting(saga: SagaContext, name: str) -> Any:
    await book(saga, None)
    return await saga.promise(name).value()


@saga_workflow("CancellableBranches")
async def cancellable_branches(saga: SagaContext, inp: Any) -> Any:
    # two branches that wait for ever (one after a step), and one that parks
    return await saga.gather(
        saga.promise("never").value(),
        booked_then_waiting(saga, "never either"),
        stubborn(saga, {"saga": saga.saga_id}),
    )


# -- the declarative front end ---------------------------------------------------------------


class OrderIn(BaseModel):
    customer: str
    declined: bool = False


class Created(BaseModel):
    order_id: str
    declined: bool


class Paid(BaseModel):
    payment_id: str


class CreateOrder(BaseStep[OrderIn, Created]):
    async def execute(self, inp: OrderIn) -> Created:
        # the tests use the saga id as the customer: the ledger is keyed by it
        note(inp.customer, "do", "create", inp.customer)
        return Created(order_id=f"o-{inp.customer}", declined=inp.declined)

    async def compensate(self, inp: OrderIn, out: Created) -> None:
        note(inp.customer, "undo", "create", out.order_id)


class ChargeCard(BaseStep[Created, Paid]):
    async def execute(self, inp: Created) -> Paid:
        if inp.declined:
            raise TerminalError("card declined")
        return Paid(payment_id=f"p-{inp.order_id}")


def _declarative() -> Any:
    builder = SagaBuilder()
    created = builder.add_step(step=CreateOrder())
    builder.add_step(step=ChargeCard(), depends_on=created)

    async def rejected(error: ErrorInfo) -> None:
        LEDGER["rejected"].append((error.type, error.message, error.step))

    builder.on_reject(rejected, retry_policy=FAST)
    return builder.build().to_workflow("Declarative")


declarative = _declarative()


class Coupons(BaseModel):
    codes: list[str]


class ApplyCoupons(BaseStep[Coupons, Coupons]):
    async def execute(self, inp: Coupons) -> Coupons:
        return inp


def _coupons(ctx: InputContext) -> Coupons:
    return Coupons(codes=[e["payload"] for e in ctx.events if e["name"] == "coupon"])


def _with_events() -> Any:
    builder = SagaBuilder()
    builder.add_step(step=ApplyCoupons(), input_map=_coupons)
    return builder.build().to_workflow("WithEvents")


with_events = _with_events()


# -- a virtual object --------------------------------------------------------------------------

counter = create_saga_virtual_object("Counter")


@counter.handler()
async def add(saga: SagaContext, obj: ObjectContext, inp: int) -> int:
    total = await obj.get("total", 0)
    obj.set("total", total + inp)
    return int(total + inp)


@counter.handler(kind="shared")
async def total(obj: SharedObjectContext, inp: Any) -> int:
    return int(await obj.get("total", 0))


# -- Restate only: cancelled through the admin API, replayed at every await ----------------------


@saga_workflow("Cancellable")
async def cancellable(saga: SagaContext, inp: Any) -> str:
    await book(saga, None)
    await saga.promise("never").value()
    return "not cancelled"


#: saga id -> how many times its saga function was entered (a replay enters it again)
ENTERED: dict[str, int] = defaultdict(int)


@saga_workflow("Counted")
async def counted(saga: SagaContext, inp: Any) -> int:
    ENTERED[saga.saga_id] += 1
    await mark(saga, 1)
    await mark(saga, 2)
    await mark(saga, 3)
    return 3


inventory = create_saga_virtual_object("Inventory")


@inventory.handler()
async def stock(saga: SagaContext, state: ObjectContext, inp: int) -> None:
    state.set("stock", inp)


@inventory.handler()
async def order(saga: SagaContext, state: ObjectContext, inp: dict[str, Any]) -> str:
    async def unreserve(data: Any) -> None:
        state.clear("reserved")  # written with the compensation's journaled result

    @saga_step("Reserve", compensate=unreserve)
    async def reserve_item(ctx: SagaContext, item: str) -> str:
        state.set("reserved", item)  # written with the step's journaled result
        return item

    @saga_step("Pay")
    async def pay(ctx: SagaContext, item: str) -> None:
        if inp.get("fail"):
            raise TerminalError("card declined")

    state.set("last_order", inp["item"])  # a write of the saga function: not undone
    await reserve_item(saga, inp["item"])
    await pay(saga, inp["item"])
    return "ordered"


@inventory.handler()
async def restock(saga: SagaContext, state: ObjectContext, inp: int) -> int:
    @saga_step("Count")
    async def count(ctx: SagaContext, added: int) -> int:
        # a read inside a step: the state as the handler left it, then the step's own write
        before = int(await state.get("stock", 0))
        state.set("stock", before + added)
        return int(await state.get("stock"))

    state.set("restocked_by", saga.saga_id)
    first = await count(saga, inp)
    second = await count(saga, inp)
    assert second == first + inp
    return second


@inventory.handler(kind="shared")
async def view(state: SharedObjectContext, inp: Any) -> dict[str, Any]:
    return {k: await state.get(k) for k in ("stock", "reserved", "last_order")}


DEFINITIONS: list[Any] = [
    declarative,
    with_events,
    timed_out,
    branches,
    trips,
    mixed_branches,
    inventory,
    checkout,
    holds,
    sleeper,
    waiter,
    approval,
    outer,
    fanout,
    counter,
    cancellable,
    counted,
    inner_saga,
    parent,
    typed,
    values,
    impatient,
    hurried,
    parking,
    cancellable_branches,
    not_json,
]
