"""Virtual objects (``create_saga_virtual_object``): keyed entities with durable state whose
exclusive handlers run one call at a time per key, in arrival order, across processes, and whose
shared handlers read the committed state beside them. Each test runs on every store kind; the
cross-process test runs real processes (tests/object_app.py) on SQLite and PostgreSQL.

Objects are defined inside each test, so that their counters and logs belong to that test alone.
A "crash" is an engine closed while a call is in a step (``close()`` cancels the run and
releases its lease) and a new engine opened on the same database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    Engine,
    ObjectContext,
    SagaCompensatedError,
    SagaConflictError,
    SagaContext,
    SagaError,
    SagaStatus,
    SagaValidationError,
    SharedObjectContext,
    TerminalError,
    UnknownHandlerError,
    create_saga_virtual_object,
    saga_step,
)
from tests.conftest import fast_retry, make_engine, make_store_url
from tests.waiting import STILL, Gate, eventually, within

ROOT = Path(__file__).resolve().parent.parent


# -- helpers ----------------------------------------------------------------------------------


def assert_one_at_a_time(ledger: list[tuple[str, str]]) -> None:
    """Every ``enter`` is followed by the ``exit`` of the same call before the next ``enter``."""
    inside: str | None = None
    for event, call in ledger:
        if event == "enter":
            assert inside is None, f"{call} entered while {inside} was inside: {ledger}"
            inside = call
        else:
            assert inside == call, f"{call} exited while {inside} was inside: {ledger}"
            inside = None
    assert inside is None, f"{inside} never exited: {ledger}"


def counter_object(name: str) -> tuple[Any, list[tuple[str, str]]]:
    """An object whose exclusive ``incr`` adds one to ``count`` (slowly, with an enter/exit
    ledger) and whose shared ``count`` reads it."""
    obj = create_saga_virtual_object(name)
    ledger: list[tuple[str, str]] = []

    @obj.handler()
    async def incr(saga: SagaContext, state: ObjectContext, inp: str) -> int:
        ledger.append(("enter", inp))
        count = await state.get("count", 0)
        await asyncio.sleep(0.005)  # give a racing call every chance to interleave
        state.set("count", count + 1)
        ledger.append(("exit", inp))
        return int(count) + 1

    @obj.handler(kind="shared")
    async def count(state: SharedObjectContext, inp: Any) -> int:
        return int(await state.get("count", 0))

    return obj, ledger


# -- exclusive calls --------------------------------------------------------------------------


async def test_concurrent_exclusive_calls_run_in_arrival_order(engine: Engine) -> None:
    counter, ledger = counter_object("Counter")
    engine.register(counter)
    n = 20
    # created in order: each task writes its call before the next one starts
    tasks = [
        asyncio.create_task(engine.call_object("Counter", "c1", "incr", f"call-{i}"))
        for i in range(n)
    ]
    results = await within(asyncio.gather(*tasks))
    assert results == list(range(1, n + 1))  # each call saw every earlier one, in call order
    assert await engine.object_state("Counter", "c1") == {"count": n}
    assert await engine.call_object("Counter", "c1", "count") == n
    assert_one_at_a_time(ledger)
    assert [call for event, call in ledger if event == "enter"] == [f"call-{i}" for i in range(n)]


async def test_exclusive_calls_of_one_key_never_overlap(engine: Engine) -> None:
    obj = create_saga_virtual_object("Ledgered")
    ledger: list[tuple[str, str]] = []

    @saga_step("Work")
    async def work(ctx: SagaContext, call: str) -> str:
        await asyncio.sleep(0.01)
        return call

    @obj.handler()
    async def slow(saga: SagaContext, state: ObjectContext, inp: str) -> str:
        ledger.append(("enter", inp))
        await work(saga, inp)
        await asyncio.sleep(0.01)
        await work(saga, inp)
        ledger.append(("exit", inp))
        return inp

    @obj.handler()
    async def quick(saga: SagaContext, state: ObjectContext, inp: str) -> str:
        ledger.append(("enter", inp))
        ledger.append(("exit", inp))
        return inp

    engine.register(obj)
    calls = [
        engine.call_object("Ledgered", "k", "slow" if i % 2 == 0 else "quick", f"c{i}")
        for i in range(10)
    ]
    assert await within(asyncio.gather(*calls)) == [f"c{i}" for i in range(10)]
    assert_one_at_a_time(ledger)
    assert [c for e, c in ledger if e == "enter"] == [f"c{i}" for i in range(10)]


async def test_calls_on_different_keys_run_concurrently(engine: Engine) -> None:
    obj = create_saga_virtual_object("Parallel")
    inside: list[str] = []
    all_inside = asyncio.Event()

    @obj.handler()
    async def hold(saga: SagaContext, state: ObjectContext, inp: Any) -> str:
        # each call stays until all three are inside at once: calls taken one key at a time
        # would never all get here, and `within` fails the test
        inside.append(state.key)
        if len(inside) == 3:
            all_inside.set()
        await all_inside.wait()
        state.set("held", True)
        return state.key

    engine.register(obj)
    results = await within(
        asyncio.gather(*(engine.call_object("Parallel", k, "hold") for k in ("a", "b", "c")))
    )
    assert results == ["a", "b", "c"]
    assert sorted(inside) == ["a", "b", "c"]
    for k in ("a", "b", "c"):
        assert await engine.object_state("Parallel", k) == {"held": True}


async def test_each_key_has_its_own_state(engine: Engine) -> None:
    counter, _ = counter_object("Keyed")
    engine.register(counter)
    for key, times in (("x", 3), ("y", 1)):
        for _ in range(times):
            await engine.call_object("Keyed", key, "incr", key)
    assert await engine.object_state("Keyed", "x") == {"count": 3}
    assert await engine.object_state("Keyed", "y") == {"count": 1}
    assert await engine.object_state("Keyed", "z") == {}
    assert await engine.call_object("Keyed", "z", "count") == 0


async def test_a_suspended_call_keeps_its_key(engine: Engine) -> None:
    obj = create_saga_virtual_object("Waiting")

    @obj.handler()
    async def wait_for_go(saga: SagaContext, state: ObjectContext, inp: Any) -> Any:
        got = await saga.wait_for_signal("go")
        state.set("last", got)
        return got

    @obj.handler()
    async def read(saga: SagaContext, state: ObjectContext, inp: Any) -> Any:
        return await state.get("last")

    engine.register(obj)
    waiter = asyncio.create_task(engine.call_object("Waiting", "w", "wait_for_go", call_id="w1"))

    async def is_suspended() -> bool:
        try:
            return (await engine.get("w1")).status == SagaStatus.SUSPENDED
        except SagaError:
            return False

    await eventually(is_suspended, "the first call to suspend")
    reader = asyncio.create_task(engine.call_object("Waiting", "w", "read"))
    await asyncio.sleep(STILL)
    assert not reader.done()  # the key is the suspended call's until it ends
    await engine.signal("w1", "go", "now")
    assert await within(waiter) == "now"
    assert await within(reader) == "now"


async def test_a_call_that_times_out_goes_on(engine: Engine) -> None:
    obj = create_saga_virtual_object("Patient")
    gate = Gate()

    @obj.handler()
    async def slow(saga: SagaContext, state: ObjectContext, inp: int) -> int:
        @saga_step("Hold")
        async def hold(ctx: SagaContext, x: int) -> int:
            await gate.hold()
            return x

        state.set("v", await hold(saga, inp))
        return inp

    engine.register(obj)
    with pytest.raises(TimeoutError):
        await engine.call_object("Patient", "p", "slow", 3, call_id="slow-1", timeout=0.2)
    await gate.reached()
    gate.opened.set()
    assert await within(engine.handle("slow-1").result()) == 3
    assert await engine.object_state("Patient", "p") == {"v": 3}


# -- shared handlers --------------------------------------------------------------------------


async def test_a_shared_handler_reads_committed_state_beside_an_exclusive_call(
    engine: Engine,
) -> None:
    obj = create_saga_virtual_object("Board")
    gate = Gate()

    @obj.handler()
    async def put(saga: SagaContext, state: ObjectContext, inp: int) -> int:
        state.set("value", inp)
        return inp

    @obj.handler()
    async def put_slowly(saga: SagaContext, state: ObjectContext, inp: int) -> int:
        @saga_step("PutAndHold")
        async def put_and_hold(ctx: SagaContext, value: int) -> int:
            state.set("value", value)  # committed with the step's entry, not before
            await gate.hold()
            return value

        return int(await put_and_hold(saga, inp))

    @obj.handler()
    async def read(saga: SagaContext, state: ObjectContext, inp: Any) -> Any:
        return await state.get("value")

    @obj.handler(kind="shared")
    async def peek(state: SharedObjectContext, inp: Any) -> Any:
        return await state.get("value", "nothing")

    engine.register(obj)
    assert await engine.call_object("Board", "b", "peek") == "nothing"
    await engine.call_object("Board", "b", "put", 1)
    slow = asyncio.create_task(engine.call_object("Board", "b", "put_slowly", 2))
    await gate.reached()
    # the exclusive call is inside its step: a shared read does not wait for it, and sees
    # the state as committed (the step's write is not)
    assert await within(engine.call_object("Board", "b", "peek"), 1.0) == 1
    assert await engine.object_state("Board", "b") == {"value": 1}
    # an exclusive read waits for its turn
    queued = asyncio.create_task(engine.call_object("Board", "b", "read"))
    await asyncio.sleep(STILL)
    assert not queued.done()
    gate.opened.set()
    assert await within(slow) == 2
    assert await within(queued) == 2
    assert await engine.call_object("Board", "b", "peek") == 2


async def test_a_shared_handler_cannot_set_state(engine: Engine) -> None:
    obj = create_saga_virtual_object("ReadOnly")
    tried: list[str] = []

    @obj.handler()
    async def put(saga: SagaContext, state: ObjectContext, inp: int) -> None:
        state.set("v", inp)

    @obj.handler(kind="shared")
    async def sneaky_set(state: SharedObjectContext, inp: Any) -> None:
        tried.append("set")
        state.set("v", 99)

    engine.register(obj)
    await engine.call_object("ReadOnly", "r", "put", 1)
    with pytest.raises(SagaError, match="shared"):
        await engine.call_object("ReadOnly", "r", "sneaky_set")
    assert tried == ["set"]
    assert await engine.object_state("ReadOnly", "r") == {"v": 1}
    # a shared handler runs no saga
    assert [s.name for s in await engine.list()] == ["ReadOnly/put"]


async def test_a_shared_handler_cannot_clear_state(engine: Engine) -> None:
    obj = create_saga_virtual_object("ReadOnlyClear")

    @obj.handler()
    async def put(saga: SagaContext, state: ObjectContext, inp: int) -> None:
        state.set("v", inp)

    @obj.handler(kind="shared")
    async def sneaky_clear(state: SharedObjectContext, inp: Any) -> None:
        state.clear("v")

    engine.register(obj)
    await engine.call_object("ReadOnlyClear", "r", "put", 1)
    # refused like set, with the same explanation (not a TypeError about its arguments)
    with pytest.raises(SagaError, match="shared"):
        await engine.call_object("ReadOnlyClear", "r", "sneaky_clear")
    assert await engine.object_state("ReadOnlyClear", "r") == {"v": 1}


# -- state writes in steps and compensations --------------------------------------------------


async def test_a_rolled_back_call_leaves_state_as_its_compensations_make_it(
    engine: Engine,
) -> None:
    obj = create_saga_virtual_object("Inventory")
    charging = Gate()

    @obj.handler()
    async def stock(saga: SagaContext, state: ObjectContext, inp: int) -> None:
        state.set("stock", inp)

    @obj.handler()
    async def order(saga: SagaContext, state: ObjectContext, inp: str) -> str:
        async def unreserve(data: Any) -> None:
            state.clear("reserved")  # committed with the compensation's entry

        @saga_step("Reserve", compensate=unreserve)
        async def reserve(ctx: SagaContext, item: str) -> str:
            state.set("reserved", item)  # committed with the step's entry
            return item

        @saga_step("Charge", retry=fast_retry(3))
        async def charge(ctx: SagaContext, item: str) -> None:
            await charging.hold()
            raise TerminalError("card declined")

        state.set("last_order", inp)  # a write of the saga function, not undone by itself
        await reserve(saga, inp)
        await charge(saga, inp)
        return "ordered"

    engine.register(obj)
    await engine.call_object("Inventory", "sku-1", "stock", 5)
    call = asyncio.create_task(engine.call_object("Inventory", "sku-1", "order", "o-1"))
    await charging.reached()
    # the reservation was committed with its step
    assert await engine.object_state("Inventory", "sku-1") == {
        "stock": 5,
        "last_order": "o-1",
        "reserved": "o-1",
    }
    charging.opened.set()
    with pytest.raises(SagaCompensatedError) as info:
        await within(call)
    assert info.value.cause_type == "TerminalError"
    assert info.value.step == "Charge"
    assert await engine.object_state("Inventory", "sku-1") == {"stock": 5, "last_order": "o-1"}
    # the key is free again
    await within(engine.call_object("Inventory", "sku-1", "stock", 4))
    assert (await engine.object_state("Inventory", "sku-1"))["stock"] == 4


async def test_writes_of_a_failed_compensation_attempt_are_dropped(engine: Engine) -> None:
    obj = create_saga_virtual_object("CompRetry")
    attempts: list[int] = []

    @obj.handler()
    async def book(saga: SagaContext, state: ObjectContext, inp: Any) -> None:
        async def cancel(data: Any) -> None:
            attempts.append(len(attempts) + 1)
            state.set("cancelled_by_attempt", len(attempts))
            state.set(f"attempt-{len(attempts)}", True)
            if len(attempts) < 3:
                raise ConnectionError("flaky")

        @saga_step("Book", compensate=cancel, compensation_retry=fast_retry(5))
        async def do_book(ctx: SagaContext, x: Any) -> str:
            return "booked"

        @saga_step("Fail")
        async def fail(ctx: SagaContext, x: Any) -> None:
            raise TerminalError("nope")

        await do_book(saga, None)
        await fail(saga, None)

    engine.register(obj)
    with pytest.raises(SagaCompensatedError):
        await within(engine.call_object("CompRetry", "k", "book"))
    assert attempts == [1, 2, 3]
    assert await engine.object_state("CompRetry", "k") == {
        "cancelled_by_attempt": 3,
        "attempt-3": True,
    }


async def test_a_write_of_a_retried_step_appears_once(engine: Engine) -> None:
    obj = create_saga_virtual_object("Journal")
    attempts: list[int] = []

    @obj.handler()
    async def log(saga: SagaContext, state: ObjectContext, inp: str) -> list[str]:
        @saga_step("Append", retry=fast_retry(3))
        async def append(ctx: SagaContext, entry: str) -> list[str]:
            attempts.append(ctx.attempt)
            lines = await state.get("lines", [])  # this attempt's own writes are not seen yet
            state.set("lines", [*lines, entry])
            state.set(f"attempt-{ctx.attempt}", entry)
            if ctx.attempt < 3:
                raise ConnectionError("flaky")
            return [*lines, entry]

        return list(await append(saga, inp))

    engine.register(obj)
    assert await within(engine.call_object("Journal", "j", "log", "a")) == ["a"]
    assert attempts == [1, 2, 3]
    attempts.clear()
    assert await within(engine.call_object("Journal", "j", "log", "b")) == ["a", "b"]
    assert attempts == [1, 2, 3]
    # the writes of the failed attempts were dropped: only the third attempt's are there
    assert await engine.object_state("Journal", "j") == {"lines": ["a", "b"], "attempt-3": "b"}


async def test_a_step_sees_its_own_writes(engine: Engine) -> None:
    obj = create_saga_virtual_object("StepSelf")

    @obj.handler()
    async def swap(saga: SagaContext, state: ObjectContext, inp: Any) -> Any:
        @saga_step("Swap")
        async def do_swap(ctx: SagaContext, x: Any) -> Any:
            state.set("a", 1)
            seen = [await state.get("a")]
            state.clear("a")
            seen.append(await state.get("a", "gone"))
            state.set("b", 2)
            return seen

        return await do_swap(saga, None)

    engine.register(obj)
    assert await within(engine.call_object("StepSelf", "s", "swap")) == [1, "gone"]
    assert await engine.object_state("StepSelf", "s") == {"b": 2}


async def test_an_exclusive_handler_reads_its_own_writes(engine: Engine) -> None:
    """A value written earlier in the same call is what ``get`` returns, whether the write was
    made by the saga function or by a step that finished before."""
    obj = create_saga_virtual_object("OwnWrites")

    @obj.handler()
    async def set_then_get(saga: SagaContext, state: ObjectContext, inp: int) -> Any:
        state.set("a", inp)
        return await state.get("a")

    @obj.handler()
    async def clear_then_get(saga: SagaContext, state: ObjectContext, inp: Any) -> Any:
        state.clear("a")
        return await state.get("a", "absent")

    @obj.handler()
    async def step_then_get(saga: SagaContext, state: ObjectContext, inp: int) -> Any:
        @saga_step("Put")
        async def put(ctx: SagaContext, value: int) -> None:
            state.set("b", value)

        await put(saga, inp)
        return await state.get("b")

    engine.register(obj)
    assert await within(engine.call_object("OwnWrites", "k1", "set_then_get", 7)) == 7
    assert await within(engine.call_object("OwnWrites", "k1", "clear_then_get")) == "absent"
    assert await within(engine.call_object("OwnWrites", "k2", "step_then_get", 8)) == 8
    assert await engine.object_state("OwnWrites", "k1") == {}
    assert await engine.object_state("OwnWrites", "k2") == {"b": 8}


async def test_a_step_that_reads_state_survives_a_replay(engine: Engine) -> None:
    """A saga is replayed from its journal when it wakes from a wait: the step that read and
    wrote object state is not run again, and the replay must agree with the journal."""
    obj = create_saga_virtual_object("Replayed")
    runs: list[int] = []

    @obj.handler()
    async def bump(saga: SagaContext, state: ObjectContext, inp: Any) -> int:
        @saga_step("Bump")
        async def do_bump(ctx: SagaContext, x: Any) -> int:
            runs.append(ctx.attempt)
            n = int(await state.get("n", 0))
            state.set("n", n + 1)
            return n + 1

        value = int(await do_bump(saga, None))
        await saga.sleep(0.05)  # suspends: the rest runs in a replay
        return value

    engine.register(obj)
    assert await within(engine.call_object("Replayed", "r", "bump")) == 1
    assert await within(engine.call_object("Replayed", "r", "bump")) == 2
    assert runs == [1, 1]
    assert await engine.object_state("Replayed", "r") == {"n": 2}


# -- call ids, errors -------------------------------------------------------------------------


async def test_a_call_id_makes_a_call_idempotent(engine: Engine) -> None:
    counter, ledger = counter_object("Idem")
    engine.register(counter)
    first, second = await within(
        asyncio.gather(
            engine.call_object("Idem", "i", "incr", "once", call_id="call-1"),
            engine.call_object("Idem", "i", "incr", "once", call_id="call-1"),
        )
    )
    assert first == second == 1
    # and again later, once it has finished: the recorded result, nothing run
    assert await engine.call_object("Idem", "i", "incr", "once", call_id="call-1") == 1
    assert await engine.object_state("Idem", "i") == {"count": 1}
    assert ledger == [("enter", "once"), ("exit", "once")]
    # a new id is a new call
    assert await engine.call_object("Idem", "i", "incr", "twice", call_id="call-2") == 2
    assert (await engine.get("call-1")).status == SagaStatus.COMPLETED
    # an id taken by a call of another handler is refused
    other = create_saga_virtual_object("Other")

    @other.handler()
    async def incr(saga: SagaContext, state: ObjectContext, inp: Any) -> None:
        return None

    engine.register(other)
    with pytest.raises(SagaConflictError):
        await engine.call_object("Other", "i", "incr", None, call_id="call-1")


class Item(BaseModel):
    sku: str
    qty: int


async def test_unknown_objects_handlers_and_bad_input_are_refused(engine: Engine) -> None:
    cart = create_saga_virtual_object("ShoppingCart")
    added: list[Item] = []

    @cart.handler()
    async def add(saga: SagaContext, state: ObjectContext, inp: Item) -> int:
        added.append(inp)
        items = await state.get("items", [])
        state.set("items", [*items, inp.model_dump()])
        return len(items) + 1

    @cart.handler(kind="shared")
    async def items(state: SharedObjectContext, inp: Any) -> Any:
        return await state.get("items", [])

    with pytest.raises(UnknownHandlerError):
        await engine.call_object("ShoppingCart", "u1", "add", {"sku": "a", "qty": 1})
    engine.register(cart)
    with pytest.raises(UnknownHandlerError):
        await engine.call_object("Wishlist", "u1", "add", {"sku": "a", "qty": 1})
    with pytest.raises(UnknownHandlerError) as info:
        await engine.call_object("ShoppingCart", "u1", "remove", {"sku": "a"})
    assert info.value.name == "remove"
    with pytest.raises(SagaValidationError):
        await engine.call_object("ShoppingCart", "u1", "add", {"sku": "a", "qty": "many"})
    with pytest.raises(SagaValidationError):
        await engine.call_object("ShoppingCart", "", "add", {"sku": "a", "qty": 1})
    assert added == []
    assert await engine.list() == []  # nothing was written for a refused call

    assert await engine.call_object("ShoppingCart", "u1", "add", {"sku": "a", "qty": 1}) == 1
    assert await engine.call_object("ShoppingCart", "u1", "add", Item(sku="b", qty=2)) == 2
    assert await engine.call_object("ShoppingCart", "u1", "items") == [
        {"sku": "a", "qty": 1},
        {"sku": "b", "qty": 2},
    ]
    assert all(isinstance(i, Item) for i in added)


def test_handler_shapes_are_checked() -> None:
    obj = create_saga_virtual_object("Shapes")
    with pytest.raises(TypeError):

        @obj.handler()
        async def two_args(saga: SagaContext, state: ObjectContext) -> None:
            return None

    with pytest.raises(TypeError):

        @obj.handler()
        def not_async(saga: SagaContext, state: ObjectContext, inp: Any) -> None:
            return None

    with pytest.raises(ValueError):

        @obj.handler(kind="sometimes")  # type: ignore[arg-type]
        async def odd(saga: SagaContext, state: ObjectContext, inp: Any) -> None:
            return None

    @obj.handler("h")
    async def h(saga: SagaContext, state: ObjectContext, inp: Any) -> None:
        return None

    with pytest.raises(SagaError):

        @obj.handler("h", kind="shared")
        async def h2(state: SharedObjectContext, inp: Any) -> None:
            return None

    with pytest.raises(ValueError):
        create_saga_virtual_object("has/slash")
    assert [w.name for w in obj.workflows] == ["Shapes/h"]


# -- crash and recovery -----------------------------------------------------------------------


async def test_a_call_interrupted_mid_step_is_recovered_and_the_next_waits(
    shared_store_url: str,
) -> None:
    obj = create_saga_virtual_object("Recovering")
    ledger: list[tuple[str, str]] = []
    step_runs: list[str] = []
    blocking = Gate()

    @obj.handler()
    async def work(saga: SagaContext, state: ObjectContext, inp: str) -> int:
        @saga_step("Long")
        async def long(ctx: SagaContext, call: str) -> str:
            ledger.append(("enter", call))
            step_runs.append(call)
            if call == "first" and len(step_runs) == 1:
                await blocking.hold()  # the first engine is closed in here
            ledger.append(("exit", call))
            return call

        count = int(await state.get("count", 0))  # journaled: a replay reads the same value
        state.set("count", count + 1)  # journaled: a replay does not write it again
        await long(saga, inp)
        return count + 1

    first = make_engine(shared_store_url)
    first.register(obj)
    async with first:
        a = asyncio.create_task(first.call_object("Recovering", "k", "work", "first", call_id="A"))
        await blocking.reached()
        b = asyncio.create_task(first.call_object("Recovering", "k", "work", "second", call_id="B"))
        await asyncio.sleep(STILL)
        assert not b.done()
        assert (await first.get("B")).status == SagaStatus.PENDING
        assert await first.object_state("Recovering", "k") == {"count": 1}
    # first is closed: both waiters were told it stopped; the calls go on elsewhere
    for waiter in (a, b):
        with pytest.raises(SagaError, match="stopped"):
            await within(waiter)
    assert ledger == [("enter", "first")]

    second = make_engine(shared_store_url)
    second.register(obj)
    async with second:
        assert await within(second.handle("A").result()) == 1
        assert await within(second.handle("B").result()) == 2
        assert await second.object_state("Recovering", "k") == {"count": 2}
    # the interrupted step ran again (it never finished); the second call ran after it
    assert step_runs == ["first", "first", "second"]
    assert ledger[1:] == [
        ("enter", "first"),
        ("exit", "first"),
        ("enter", "second"),
        ("exit", "second"),
    ]


async def test_a_compensation_that_reads_state_survives_a_recovery(
    shared_store_url: str,
) -> None:
    """The engine closes while the second compensation runs; the recovering engine replays the
    first one (which read and wrote object state) from the journal and goes on."""
    obj = create_saga_virtual_object("UndoRecovered")
    blocked = Gate()
    undo_runs: list[str] = []

    @obj.handler()
    async def book(saga: SagaContext, state: ObjectContext, inp: Any) -> None:
        async def release_seat(data: Any) -> None:
            undo_runs.append("seat")
            if undo_runs.count("seat") == 1:
                await blocked.hold()  # the first engine is closed in here

        async def release_meal(data: Any) -> None:
            undo_runs.append("meal")
            released = await state.get("released", [])
            state.set("released", [*released, "meal"])

        @saga_step("Seat", compensate=release_seat)
        async def seat(ctx: SagaContext, x: Any) -> str:
            return "seat"

        @saga_step("Meal", compensate=release_meal)
        async def meal(ctx: SagaContext, x: Any) -> str:
            return "meal"

        @saga_step("Pay")
        async def pay(ctx: SagaContext, x: Any) -> None:
            raise TerminalError("declined")

        await seat(saga, None)
        await meal(saga, None)
        await pay(saga, None)

    first = make_engine(shared_store_url)
    first.register(obj)
    async with first:
        call = asyncio.create_task(first.call_object("UndoRecovered", "u", "book", call_id="b1"))
        await blocked.reached()
        # a compensation's entry (and the state written with it) commits behind it

        async def meal_released() -> bool:
            state = await first.object_state("UndoRecovered", "u")
            return state == {"released": ["meal"]}

        await eventually(meal_released, "the meal compensation's state write to commit")
    with pytest.raises(SagaError, match="stopped"):
        await within(call)

    async with make_engine(shared_store_url) as second:
        second.register(obj)
        with pytest.raises(SagaCompensatedError) as info:
            await within(second.handle("b1").result())
        assert info.value.cause_message == "declined"
        assert await second.object_state("UndoRecovered", "u") == {"released": ["meal"]}
    assert undo_runs == ["meal", "seat", "seat"]


# -- several processes ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_exclusive_calls_never_overlap_across_processes(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = make_store_url(kind, tmp_path, request, shared=True)
    async with Engine(url):  # the schema is in place before the processes race to it
        pass
    processes, calls = 3, 20
    total = processes * calls
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.object_app",
            url,
            str(ledger),
            "shared-key",
            str(calls),
            str(total),
            str(go),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    outputs: list[dict[str, Any]] = []
    try:
        # every process has its engine open: let them all call at once
        async def all_ready() -> bool:
            return len(list(tmp_path.glob("go.*.ready"))) == processes

        await eventually(all_ready, "every process to open its engine", timeout=60)
        go.touch()
        for proc in procs:
            out, err = await within(proc.communicate(), 100)
            assert proc.returncode == 0, f"exit {proc.returncode}: {out!r} {err.decode()[-3000:]}"
            outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    lines = [line.split() for line in ledger.read_text().splitlines()]
    events = [(event, call) for event, _pid, call in lines]
    assert_one_at_a_time(events)
    # every call ran once, whichever process ran it
    entered = Counter(call for event, call in events if event == "enter")
    wanted = {f"{o['pid']}-{i}" for o in outputs for i in range(calls)}
    assert set(entered) == wanted
    assert all(n == 1 for n in entered.values()), entered
    # every call saw every earlier one: the results are 1..total, each once
    results = sorted(r for o in outputs for r in o["results"])
    assert results == list(range(1, total + 1))
    async with Engine(url, worker=False) as client:
        assert await client.object_state("Turnstile", "shared-key") == {"count": total}
        finished = await client.list(limit=total + 10)
        assert len(finished) == total
        assert {s.status for s in finished} == {SagaStatus.COMPLETED}
    # calls were run by more than one process (a caller runs its call when the key is free)
    runners = Counter(pid for event, pid, _call in lines if event == "enter")
    print(f"\n{total} calls from {processes} processes, run by: {dict(runners)}")
    assert len(runners) >= 2, runners
