"""The declarative front end (issue 6): typed ``BaseStep`` classes put together with
``SagaBuilder``, registered by name and run by the engine with all its durability.

Tests that touch the engine run once per store kind (the ``engine`` / ``shared_store_url``
fixtures). Steps are defined inside each test so that their logs belong to that test alone;
their models are at module level, where ``execute``'s type hints are resolved.
"""

import asyncio
import dataclasses
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import (
    BaseStep,
    Engine,
    ErrorInfo,
    ExponentialRetry,
    InputContext,
    RetryPolicy,
    SagaBuilder,
    SagaCompensatedError,
    SagaConflictError,
    SagaDefinition,
    SagaDefinitionError,
    SagaError,
    SagaStatus,
    SagaValidationError,
    StepRef,
    TerminalError,
)
from tests.conftest import fast_retry, make_engine
from tests.waiting import Gate, eventually, within

WAIT = 15.0  # generous bound on every wait, so that a bug fails a test instead of hanging it
NO_RETRY = RetryPolicy(max_attempts=1)


class OrderInput(BaseModel):
    customer_id: str
    amount: int


class OrderCreated(BaseModel):
    order_id: str
    amount: int


class Payment(BaseModel):
    order_id: str
    amount: int


class PaymentDone(BaseModel):
    payment_id: str


class Reservation(BaseModel):
    reservation_id: str


class Shipment(BaseModel):
    carrier: str


class Note(BaseModel):
    text: str


class Sent(BaseModel):
    sent: bool


def order_saga(log: list[Any]) -> SagaDefinition:
    """CreateOrder, then ReserveStock and ChargeCard in a parallel block (both take its output).
    ReserveStock, added first, finishes last: it waits until ChargeCard ran."""
    charged = asyncio.Event()

    class CreateOrder(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            log.append(("create", inp))
            return OrderCreated(order_id=f"o-{inp.customer_id}", amount=inp.amount)

        async def compensate(self, inp: OrderInput, out: OrderCreated) -> None:
            log.append(("cancel", inp, out))

    class ReserveStock(BaseStep[OrderCreated, Reservation]):
        async def execute(self, inp: OrderCreated) -> Reservation:
            await within(charged.wait(), 5.0)
            log.append(("reserve", inp))
            return Reservation(reservation_id=f"r-{inp.order_id}")

    class ChargeCard(BaseStep[Payment, PaymentDone]):
        name = "Charge"

        async def execute(self, inp: Payment) -> PaymentDone:
            log.append(("charge", inp))
            charged.set()
            # a dict that validates into the output model is accepted too
            return {"payment_id": f"p-{inp.order_id}-{inp.amount}"}  # type: ignore[return-value]

    builder = SagaBuilder()
    order = builder.add_step(step=CreateOrder())
    with builder.parallel():
        builder.add_step(step=ReserveStock(), depends_on=order)
        builder.add_step(
            step=ChargeCard(),
            depends_on=order,
            input_map=lambda created: Payment(order_id=created.order_id, amount=created.amount),
        )
    return builder.build()


# -- the happy path ---------------------------------------------------------------------------


async def test_a_typed_saga_runs_by_name_and_returns_every_steps_output(engine: Engine) -> None:
    log: list[Any] = []
    engine.register("create_order_v1", order_saga(log))

    result = await within(engine.run("create_order_v1", {"customer_id": "c1", "amount": 40}))

    assert result == {
        "CreateOrder": {"order_id": "o-c1", "amount": 40},
        "ReserveStock": {"reservation_id": "r-o-c1"},
        "Charge": {"payment_id": "p-o-c1-40"},
    }
    # the keys follow the definition, not the order in which parallel steps finished
    assert list(result) == ["CreateOrder", "ReserveStock", "Charge"]
    # each step got its input validated into its own model
    assert log == [
        ("create", OrderInput(customer_id="c1", amount=40)),
        ("charge", Payment(order_id="o-c1", amount=40)),
        ("reserve", OrderCreated(order_id="o-c1", amount=40)),
    ]
    [saga] = await engine.list()
    snapshot = await engine.get(saga.saga_id)
    assert snapshot.status == SagaStatus.COMPLETED
    assert snapshot.name == "create_order_v1"
    steps = [(s.kind, s.name, s.status) for s in snapshot.steps]
    assert steps[0] == ("step", "CreateOrder", "completed")
    assert steps[1][0] == "gather"  # the parallel block ran as the branches of a gather
    assert sorted(steps[2:]) == [
        ("step", "Charge", "completed"),
        ("step", "ReserveStock", "completed"),
    ]
    # no step builds an InputContext: the signals were never read
    assert all(s.kind != "signals" for s in snapshot.steps)


async def test_invalid_input_is_refused_before_anything_is_written(engine: Engine) -> None:
    engine.register("create_order_v1", order_saga([]))
    with pytest.raises(SagaValidationError) as caught:
        await engine.start("create_order_v1", {"customer_id": "c1", "amount": "lots"})
    assert "amount" in str(caught.value)
    assert "CreateOrder" in str(caught.value)
    assert await engine.list() == []


async def test_a_step_whose_output_is_not_its_model_fails_for_good(engine: Engine) -> None:
    attempts: list[int] = []

    class Wrong(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            attempts.append(self.saga_context.attempt)
            return PaymentDone(payment_id="p")  # type: ignore[return-value]

    builder = SagaBuilder()
    builder.add_step(step=Wrong(), retry_policy=fast_retry(3))
    engine.register("wrong_v1", builder.build())

    with pytest.raises(SagaCompensatedError) as caught:
        await within(engine.run("wrong_v1", {"customer_id": "c", "amount": 1}))
    assert caught.value.cause_type == "SagaValidationError"
    assert "output of step 'Wrong'" in caught.value.cause_message
    assert attempts == [1]  # the work was done: retrying would repeat it


# -- rollback ---------------------------------------------------------------------------------


async def test_rollback_compensates_completed_steps_in_reverse_with_their_input_and_output(
    engine: Engine,
) -> None:
    log: list[Any] = []

    class CreateOrder(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            return OrderCreated(order_id="o-1", amount=inp.amount)

        async def compensate(self, inp: OrderInput, out: OrderCreated) -> None:
            log.append(("CreateOrder", inp, out))

    class Reserve(BaseStep[OrderCreated, Reservation]):
        async def execute(self, inp: OrderCreated) -> Reservation:
            return Reservation(reservation_id=f"r-{inp.order_id}")

        async def compensate(self, inp: OrderCreated, out: Reservation) -> None:
            log.append(("Reserve", inp, out))

    class Charge(BaseStep[Payment, PaymentDone]):
        async def execute(self, inp: Payment) -> PaymentDone:
            raise TerminalError("card declined")

        async def compensate(self, inp: Payment, out: PaymentDone) -> None:
            log.append(("Charge", inp, out))  # strict: never, the step did not succeed

    builder = SagaBuilder()
    order = builder.add_step(step=CreateOrder())
    reserved = builder.add_step(step=Reserve(), depends_on=order)
    builder.add_step(
        step=Charge(),
        depends_on=reserved,
        input_map=lambda r: {"order_id": r.reservation_id, "amount": 7},
    )
    engine.register("rollback_v1", builder.build())

    with pytest.raises(SagaCompensatedError) as caught:
        await within(engine.run("rollback_v1", {"customer_id": "c", "amount": 7}, saga_id="rb"))

    assert caught.value.step == "Charge"
    assert caught.value.cause_message == "card declined"
    assert log == [
        (
            "Reserve",
            OrderCreated(order_id="o-1", amount=7),
            Reservation(reservation_id="r-o-1"),
        ),
        (
            "CreateOrder",
            OrderInput(customer_id="c", amount=7),
            OrderCreated(order_id="o-1", amount=7),
        ),
    ]
    snapshot = await engine.get("rb")
    assert snapshot.status == SagaStatus.COMPENSATED
    assert [s.name for s in snapshot.steps if s.kind == "compensation"] == [
        "Reserve",
        "CreateOrder",
    ]


async def test_a_failed_parallel_branch_rolls_back_every_branch(engine: Engine) -> None:
    undone: list[str] = []
    left_done = asyncio.Event()

    class CreateOrder(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            return OrderCreated(order_id="o", amount=inp.amount)

        async def compensate(self, inp: OrderInput, out: OrderCreated) -> None:
            undone.append("CreateOrder")

    class Reserve(BaseStep[OrderCreated, Reservation]):
        async def execute(self, inp: OrderCreated) -> Reservation:
            left_done.set()
            return Reservation(reservation_id="r")

        async def compensate(self, inp: OrderCreated, out: Reservation) -> None:
            undone.append("Reserve")

    class Charge(BaseStep[OrderCreated, PaymentDone]):
        async def execute(self, inp: OrderCreated) -> PaymentDone:
            await within(left_done.wait())  # its sibling ran to its end first
            raise TerminalError("declined")

    builder = SagaBuilder()
    order = builder.add_step(step=CreateOrder())
    with builder.parallel():
        builder.add_step(step=Reserve(), depends_on=order)
        builder.add_step(step=Charge(), depends_on=order)
    engine.register("branches_v1", builder.build())

    with pytest.raises(SagaCompensatedError) as caught:
        await within(engine.run("branches_v1", {"customer_id": "c", "amount": 1}))
    assert caught.value.step == "Charge"
    assert undone == ["Reserve", "CreateOrder"]


# -- retries and timeouts ---------------------------------------------------------------------


def test_exponential_retry_is_a_retry_policy() -> None:
    policy = ExponentialRetry(
        max_attempts=5,
        initial_interval=timedelta(seconds=1),
        multiplier=3.0,
        max_interval=timedelta(seconds=5),
    )
    assert isinstance(policy, RetryPolicy)
    assert (policy.max_attempts, policy.multiplier, policy.backoff_factor) == (5, 3.0, 3.0)
    assert [policy.delay_after(n) for n in (1, 2, 3)] == [1.0, 3.0, 5.0]  # capped at 5 s
    assert ExponentialRetry(initial_interval=0.5).initial_interval == timedelta(seconds=0.5)
    assert dataclasses.replace(policy, max_attempts=2).max_attempts == 2
    assert ExponentialRetry() == ExponentialRetry(max_attempts=5)
    with pytest.raises(ValueError, match=r"multiplier must be at least 1\.0"):
        ExponentialRetry(multiplier=0.5)
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        ExponentialRetry(max_attempts=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 9  # type: ignore[misc]


async def test_a_failing_step_is_retried_with_exponential_retry(engine: Engine) -> None:
    seen: list[tuple[str, int]] = []

    class Flaky(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            ctx = self.saga_context
            seen.append((ctx.step_key, ctx.attempt))
            if ctx.attempt < 3:
                raise ConnectionError("flaky network")
            return OrderCreated(order_id="o", amount=inp.amount)

    class Hopeless(BaseStep[OrderCreated, PaymentDone]):
        async def execute(self, inp: OrderCreated) -> PaymentDone:
            raise ConnectionError("still down")

    tiny = ExponentialRetry(
        max_attempts=3,
        initial_interval=timedelta(milliseconds=1),
        multiplier=2.0,
        max_interval=timedelta(milliseconds=4),
    )
    builder = SagaBuilder()
    builder.add_step(step=Flaky(), retry_policy=tiny)
    engine.register("flaky_v1", builder.build())
    result = await within(engine.run("flaky_v1", {"customer_id": "c", "amount": 3}, saga_id="f"))
    assert result == {"Flaky": {"order_id": "o", "amount": 3}}
    assert [attempt for _, attempt in seen] == [1, 2, 3]
    assert len({key for key, _ in seen}) == 1  # one idempotency key for every attempt
    assert [s.attempts for s in (await engine.get("f")).steps] == [3]

    builder = SagaBuilder()
    order = builder.add_step(step=Flaky(), retry_policy=tiny)
    builder.add_step(
        step=Hopeless(), depends_on=order, retry_policy=dataclasses.replace(tiny, max_attempts=2)
    )
    engine.register("hopeless_v1", builder.build())
    seen.clear()
    with pytest.raises(SagaCompensatedError) as caught:
        await within(engine.run("hopeless_v1", {"customer_id": "c", "amount": 3}, saga_id="h"))
    assert caught.value.step == "Hopeless"
    assert "gave up after 2 attempts" in caught.value.cause_message
    assert [(s.name, s.attempts) for s in (await engine.get("h")).steps] == [
        ("Flaky", 3),
        ("Hopeless", 2),
    ]


async def test_an_attempt_that_runs_past_its_timeout_fails(engine: Engine) -> None:
    attempts: list[int] = []

    class Slow(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            attempts.append(self.saga_context.attempt)
            await asyncio.Event().wait()  # never answers
            raise AssertionError("unreachable")

    builder = SagaBuilder()
    builder.add_step(
        step=Slow(),
        timeout=timedelta(milliseconds=50),
        retry_policy=ExponentialRetry(max_attempts=2, initial_interval=timedelta(milliseconds=1)),
    )
    engine.register("slow_v1", builder.build())
    with pytest.raises(SagaCompensatedError) as caught:
        await within(engine.run("slow_v1", {"customer_id": "c", "amount": 1}))
    assert caught.value.cause_type == "StepTimeoutError"
    assert attempts == [1, 2]


# -- inputs -----------------------------------------------------------------------------------


async def test_a_root_input_map_gets_the_initial_data_and_the_events(engine: Engine) -> None:
    contexts: list[Any] = []

    class CreateOrder(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            return OrderCreated(order_id=inp.customer_id, amount=inp.amount)

    def make_input(ctx: InputContext) -> dict[str, Any]:
        contexts.append(ctx)
        return {"customer_id": ctx.initial_data["customer"].upper(), "amount": 2}

    builder = SagaBuilder()
    builder.add_step(step=CreateOrder(), input_map=make_input)
    engine.register("mapped_v1", builder.build())
    # the input is the saga's own shape, not the step's: the input_map translates it
    result = await within(engine.run("mapped_v1", {"customer": "ada"}, saga_id="m"))

    assert result == {"CreateOrder": {"order_id": "ADA", "amount": 2}}
    [ctx] = contexts
    assert isinstance(ctx, InputContext)
    assert ctx.initial_data == {"customer": "ada"}
    assert ctx.events == []
    kinds = [s.kind for s in (await engine.get("m")).steps]
    assert kinds == ["signals", "step"]  # the signals read is journaled, before the step


async def test_a_signal_delivered_before_the_saga_starts_is_in_the_events(
    shared_store_url: str,
) -> None:
    class ApplyCoupon(BaseStep[Note, Note]):
        async def execute(self, inp: Note) -> Note:
            return Note(text=f"applied {inp.text}")

    def coupon(ctx: InputContext) -> Note:
        codes = [e["payload"]["code"] for e in ctx.events if e["name"] == "coupon"]
        return Note(text=",".join(codes) or "none")

    builder = SagaBuilder()
    builder.add_step(step=ApplyCoupon(), input_map=coupon)
    definition = builder.build()

    client = make_engine(shared_store_url, worker=False)  # starts sagas, runs none
    async with client:
        client.register("coupon_v1", definition)
        await client.start("coupon_v1", {}, saga_id="cp", run_here=False)
        await client.signal("cp", "other", {"code": "IGNORED"})
        await client.signal("cp", "coupon", {"code": "TENOFF"})
        async with make_engine(shared_store_url) as worker:
            worker.register("coupon_v1", definition)
            result = await worker.handle("cp").result(timeout=WAIT)
    assert result == {"ApplyCoupon": {"text": "applied TENOFF"}}


async def test_a_branch_sees_the_signals_delivered_while_earlier_steps_ran(
    engine: Engine,
) -> None:
    gate = Gate()
    seen: list[list[dict[str, Any]]] = []

    class CreateOrder(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            await gate.hold()
            return OrderCreated(order_id="o", amount=inp.amount)

    class Greet(BaseStep[Note, Note]):
        async def execute(self, inp: Note) -> Note:
            return inp

    def greeting(ctx: InputContext) -> Note:
        seen.append(ctx.events)
        # a branch's root gets the dependency's output as its initial data
        return Note(text=f"{ctx.initial_data['order_id']}: {ctx.events[-1]['payload']}")

    branch = SagaBuilder()
    branch.add_step(step=Greet(), input_map=greeting)
    builder = SagaBuilder()
    order = builder.add_step(step=CreateOrder())
    builder.add_condition(lambda created: True, then=branch.build(), depends_on=order)
    engine.register("late_signal_v1", builder.build())

    handle = await engine.start("late_signal_v1", {"customer_id": "c", "amount": 1}, "late")
    await gate.reached()
    await engine.signal("late", "hello", "hi there")
    gate.opened.set()
    result = await handle.result(timeout=WAIT)

    assert result["Greet"] == {"text": "o: hi there"}
    assert seen == [[{"name": "hello", "payload": "hi there"}]]


async def test_dependent_steps_get_the_dependencys_output(engine: Engine) -> None:
    got: list[Any] = []
    mapped: list[Any] = []

    class CreateOrder(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            return OrderCreated(order_id="o-9", amount=inp.amount)

    class Charge(BaseStep[OrderCreated, PaymentDone]):
        async def execute(self, inp: OrderCreated) -> PaymentDone:
            got.append(inp)
            return PaymentDone(payment_id=f"p-{inp.amount}")

    class Receipt(BaseStep[Note, Sent]):
        async def execute(self, inp: Note) -> Sent:
            got.append(inp)
            return Sent(sent=True)

    def receipt(done: PaymentDone) -> Note:
        mapped.append(done)
        return Note(text=f"paid {done.payment_id}")

    builder = SagaBuilder()
    order = builder.add_step(step=CreateOrder())
    paid = builder.add_step(step=Charge(), depends_on=order)  # no input_map: the output as is
    builder.add_step(step=Receipt(), depends_on=paid, input_map=receipt)
    engine.register("chain_v1", builder.build())

    result = await within(engine.run("chain_v1", {"customer_id": "c", "amount": 12}))
    assert got == [OrderCreated(order_id="o-9", amount=12), Note(text="paid p-12")]
    assert mapped == [PaymentDone(payment_id="p-12")]  # the input_map gets the model
    assert list(result) == ["CreateOrder", "Charge", "Receipt"]


async def test_the_steps_of_a_parallel_block_run_in_parallel(engine: Engine) -> None:
    """Each branch waits for its sibling to start: run one after the other, they would never
    finish."""
    started = {name: asyncio.Event() for name in ("A", "B", "C", "D")}

    def pair_step(me: str, other: str) -> BaseStep[Any, Any]:
        class Paired(BaseStep[OrderInput, Note]):
            name = me

            async def execute(self, inp: OrderInput) -> Note:
                started[me].set()
                await within(started[other].wait(), 5.0)
                return Note(text=me)

        class PairedAfter(BaseStep[Note, Note]):
            name = me

            async def execute(self, inp: Note) -> Note:
                started[me].set()
                await within(started[other].wait(), 5.0)
                return Note(text=f"{me} after {inp.text}")

        return Paired() if me in "AB" else PairedAfter()

    builder = SagaBuilder()
    with builder.parallel():  # two branches that take the saga's input
        a = builder.add_step(step=pair_step("A", "B"), retry_policy=NO_RETRY)
        builder.add_step(step=pair_step("B", "A"), retry_policy=NO_RETRY)
    with builder.parallel():  # then two that take A's output
        builder.add_step(step=pair_step("C", "D"), depends_on=a, retry_policy=NO_RETRY)
        builder.add_step(step=pair_step("D", "C"), depends_on=a, retry_policy=NO_RETRY)
    engine.register("parallel_v1", builder.build())

    result = await within(engine.run("parallel_v1", {"customer_id": "c", "amount": 1}))
    assert result == {
        "A": {"text": "A"},
        "B": {"text": "B"},
        "C": {"text": "C after A"},
        "D": {"text": "D after A"},
    }


# -- conditions -------------------------------------------------------------------------------


async def test_a_condition_runs_then_or_otherwise(engine: Engine) -> None:
    ran: list[str] = []
    notes: list[Note] = []

    class CreateOrder(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            return OrderCreated(order_id="o", amount=inp.amount)

    def shipper(carrier: str) -> SagaDefinition:
        class Ship(BaseStep[OrderCreated, Shipment]):
            name = f"Ship{carrier}"

            async def execute(self, inp: OrderCreated) -> Shipment:
                ran.append(f"{carrier} {inp.amount}")
                return Shipment(carrier=carrier)

        sub = SagaBuilder()
        sub.add_step(step=Ship())
        return sub.build()

    class Notify(BaseStep[Note, Sent]):
        async def execute(self, inp: Note) -> Sent:
            notes.append(inp)
            return Sent(sent=True)

    builder = SagaBuilder()
    order = builder.add_step(step=CreateOrder())
    shipped = builder.add_condition(
        lambda created: created.amount >= 100,
        then=shipper("Express"),
        otherwise=shipper("Standard"),
        depends_on=order,
    )
    # a condition's output is its branch's output: a dict of the steps that ran
    builder.add_step(step=Notify(), depends_on=shipped, input_map=lambda out: {"text": str(out)})
    engine.register("ship_v1", builder.build())

    big = await within(engine.run("ship_v1", {"customer_id": "c", "amount": 150}))
    small = await within(engine.run("ship_v1", {"customer_id": "c", "amount": 5}))

    assert ran == ["Express 150", "Standard 5"]
    assert list(big) == ["CreateOrder", "ShipExpress", "Notify"]
    assert big["ShipExpress"] == {"carrier": "Express"}
    assert list(small) == ["CreateOrder", "ShipStandard", "Notify"]
    assert notes == [
        Note(text=str({"ShipExpress": {"carrier": "Express"}})),
        Note(text=str({"ShipStandard": {"carrier": "Standard"}})),
    ]


async def test_a_root_condition_without_otherwise(engine: Engine) -> None:
    predicates: list[Any] = []

    class Gift(BaseStep[OrderInput, Note]):
        async def execute(self, inp: OrderInput) -> Note:
            return Note(text=f"gift for {inp.customer_id}")

    class After(BaseStep[Note, Sent]):
        async def execute(self, inp: Note) -> Sent:
            return Sent(sent=inp.text != "{}")

    gifts = SagaBuilder()
    gifts.add_step(step=Gift())

    def is_vip(ctx: InputContext) -> bool:
        predicates.append(ctx)
        return bool(ctx.initial_data["amount"] > 100)

    builder = SagaBuilder()
    cond = builder.add_condition(is_vip, then=gifts.build())
    builder.add_step(step=After(), depends_on=cond, input_map=lambda out: {"text": str(out)})
    engine.register("vip_v1", builder.build())

    vip = await within(engine.run("vip_v1", {"customer_id": "v", "amount": 500}))
    plain = await within(engine.run("vip_v1", {"customer_id": "p", "amount": 5}))

    # the branch's root gets the saga's initial data, as a root step would
    assert vip == {"Gift": {"text": "gift for v"}, "After": {"sent": True}}
    assert plain == {"After": {"sent": False}}  # no branch ran: the condition's output is {}
    assert [type(p) for p in predicates] == [InputContext, InputContext]
    assert predicates[0].events == []


# -- hooks ------------------------------------------------------------------------------------


async def test_on_commit_runs_once_after_every_step(engine: Engine) -> None:
    commits: list[Any] = []
    log: list[Any] = []

    class Done(BaseStep[OrderInput, Note]):
        async def execute(self, inp: OrderInput) -> Note:
            log.append("step")
            return Note(text="done")

    builder = SagaBuilder()
    builder.add_step(step=Done())
    builder.on_commit(lambda output: commits.append((output, list(log))))  # a plain function
    engine.register("commit_v1", builder.build())

    result = await within(engine.run("commit_v1", {"customer_id": "c", "amount": 1}, saga_id="k"))
    assert result == {"Done": {"text": "done"}}
    assert commits == [({"Done": {"text": "done"}}, ["step"])]  # after the steps, once
    snapshot = await engine.get("k")
    assert [(s.name, s.status) for s in snapshot.steps] == [
        ("Done", "completed"),
        ("on_commit", "completed"),
    ]


async def test_on_reject_runs_once_after_the_rollback_and_is_retried(engine: Engine) -> None:
    events: list[Any] = []
    commits: list[Any] = []

    class CreateOrder(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            return OrderCreated(order_id="o", amount=inp.amount)

        async def compensate(self, inp: OrderInput, out: OrderCreated) -> None:
            events.append("cancel order")

    class Charge(BaseStep[OrderCreated, PaymentDone]):
        async def execute(self, inp: OrderCreated) -> PaymentDone:
            raise TerminalError("card declined")

    builder = SagaBuilder()
    order = builder.add_step(step=CreateOrder())
    builder.add_step(step=Charge(), depends_on=order)
    builder.on_commit(commits.append)

    async def rejected(error: ErrorInfo) -> None:
        events.append(error)
        if len(events) == 2:  # the first call fails: the hook is retried
            raise ConnectionError("mail server down")

    builder.on_reject(rejected, retry_policy=fast_retry(3))
    engine.register("reject_v1", builder.build())

    with pytest.raises(SagaCompensatedError):
        await within(engine.run("reject_v1", {"customer_id": "c", "amount": 1}, saga_id="rj"))

    assert commits == []
    assert events[0] == "cancel order"  # the compensations ran first
    assert len(events) == 3
    for error in events[1:]:
        assert isinstance(error, ErrorInfo)
        assert (error.type, error.message, error.step) == (
            "TerminalError",
            "card declined",
            "Charge",
        )
    snapshot = await engine.get("rj")
    assert snapshot.status == SagaStatus.COMPENSATED
    hooks = [s for s in snapshot.steps if s.name == "on_reject"]
    assert [(h.status, h.attempts) for h in hooks] == [("completed", 2)]


# -- refused definitions ----------------------------------------------------------------------


class Plain(BaseStep[OrderInput, OrderCreated]):
    async def execute(self, inp: OrderInput) -> OrderCreated:
        return OrderCreated(order_id="o", amount=inp.amount)


class Other(BaseStep[OrderCreated, Note]):
    async def execute(self, inp: OrderCreated) -> Note:
        return Note(text=inp.order_id)


async def test_build_refuses_a_reference_from_another_builder_or_to_a_later_node(
    engine: Engine,
) -> None:
    elsewhere = SagaBuilder()
    foreign = elsewhere.add_step(step=Plain())
    builder = SagaBuilder()
    builder.add_step(step=Other(), depends_on=foreign)
    with pytest.raises(SagaDefinitionError, match="another SagaBuilder") as caught:
        builder.build()
    assert "step 'Other' depends on StepRef('Plain')" in str(caught.value)

    unknown = SagaBuilder()
    unknown.add_step(step=Other(), depends_on=StepRef("Missing"))
    with pytest.raises(SagaDefinitionError, match="no step of this builder"):
        unknown.build()

    # a reference made by hand may name a node added later (or the node itself): refused,
    # as the nodes run in the order they are added
    later = SagaBuilder()
    later.add_step(step=Plain(), depends_on=StepRef("Other"))
    later.add_step(step=Other(), depends_on=StepRef("Plain"))
    with pytest.raises(SagaDefinitionError) as caught:
        later.build()
    assert "step 'Plain' depends on 'Other', added after it" in str(caught.value)
    assert "must name a node added earlier" in str(caught.value)

    itself = SagaBuilder()
    itself.add_step(step=Plain(), depends_on=StepRef("Plain"))
    with pytest.raises(SagaDefinitionError, match="step 'Plain' depends on itself"):
        itself.build()

    with pytest.raises(SagaDefinitionError, match="at least one step"):
        SagaBuilder().build()
    assert issubclass(SagaDefinitionError, SagaError)
    assert await engine.list() == []  # nothing was written
    assert engine.workflows == {}


async def test_a_step_that_parks_waits_for_an_operator_and_goes_on_after_a_retry(
    engine: Engine,
) -> None:
    down = {"payments": True}
    refunds: list[str] = []

    class Order(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            return OrderCreated(order_id="o-1", amount=inp.amount)

        async def compensate(self, inp: OrderInput, out: OrderCreated) -> None:
            refunds.append(out.order_id)

    class Pay(BaseStep[OrderCreated, PaymentDone]):
        async def execute(self, inp: OrderCreated) -> PaymentDone:
            if down["payments"]:
                raise ConnectionError("payment provider down")
            return PaymentDone(payment_id="p-1")

    builder = SagaBuilder()
    order = builder.add_step(step=Order())
    builder.add_step(step=Pay(), depends_on=order, retry_policy=fast_retry(2), on_exhausted="park")
    engine.register("parking_v1", builder.build())
    handle = await engine.start("parking_v1", {"customer_id": "c", "amount": 5}, saga_id="p")

    async def parked() -> bool:
        return (await engine.admin.get_saga("p")).status == "PARKED"

    await eventually(parked, "the saga to park")
    assert refunds == []  # parked, not rolled back
    down["payments"] = False
    await engine.admin.retry_step("p", reason="provider is back")
    assert await within(handle.result()) == {
        "Order": {"order_id": "o-1", "amount": 5},
        "Pay": {"payment_id": "p-1"},
    }
    with pytest.raises(SagaDefinitionError, match="on_exhausted"):
        SagaBuilder().add_step(step=Pay(), on_exhausted="later")  # type: ignore[arg-type]


def test_add_step_refuses_what_is_obviously_wrong() -> None:
    class NotAsync(BaseStep[OrderInput, OrderCreated]):
        def execute(self, inp: OrderInput) -> OrderCreated:  # type: ignore[override]
            return OrderCreated(order_id="o", amount=1)

    class NoHints(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp):  # type: ignore[no-untyped-def]
            return OrderCreated(order_id="o", amount=1)

    class NotModels(BaseStep[Any, Any]):
        async def execute(self, inp: dict) -> dict:  # type: ignore[type-arg]
            return {}

    class SyncUndo(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            return OrderCreated(order_id="o", amount=1)

        def compensate(self, inp: OrderInput, out: OrderCreated) -> None:  # type: ignore[override]
            pass

    builder = SagaBuilder()
    cases: list[tuple[Any, str]] = [
        (lambda: builder.add_step(step=Plain), "write step=Plain()"),  # type: ignore[arg-type]
        (lambda: builder.add_step(step=object()), "instance of a BaseStep subclass"),  # type: ignore[arg-type]
        (lambda: builder.add_step(step=NotAsync()), "must be an `async def execute"),
        (lambda: builder.add_step(step=NoHints()), "has no type hint"),
        (lambda: builder.add_step(step=NotModels()), "must be a pydantic model"),
        (lambda: builder.add_step(step=SyncUndo()), "compensate must be an `async def"),
        (
            lambda: builder.add_step(step=Plain(), timeout=timedelta(0)),
            "timeout must be a positive timedelta",
        ),
        (lambda: builder.add_step(step=Plain(), retry_policy=3), "retry_policy must be"),  # type: ignore[arg-type]
        (lambda: builder.add_step(step=Plain(), depends_on="Plain"), "must be a StepRef"),  # type: ignore[arg-type]
        (lambda: builder.add_step(step=Plain(), input_map=within), "must be a plain function"),
        (lambda: builder.add_condition(lambda c: True, then="x"), "built SagaDefinition"),  # type: ignore[arg-type]
    ]
    for add, message in cases:
        with pytest.raises(SagaDefinitionError, match=message):
            add()

    builder.add_step(step=Plain())
    with pytest.raises(SagaDefinitionError, match="'Plain' are already used"):
        builder.add_step(step=Plain())  # names key the output: give the second one another
    renamed = Plain()
    renamed.name = "PlainAgain"
    builder.add_step(step=renamed)

    with_hook = SagaBuilder()
    with_hook.add_step(step=Other())
    with_hook.on_commit(print)
    with pytest.raises(SagaDefinitionError, match="already set"):
        with_hook.on_commit(print)
    with pytest.raises(SagaDefinitionError, match="has on_commit/on_reject"):
        builder.add_condition(lambda c: True, then=with_hook.build())
    clash = SagaBuilder()
    clash.add_step(step=Plain())
    with pytest.raises(SagaDefinitionError, match="'Plain' are already used"):
        builder.add_condition(lambda c: True, then=clash.build())


def test_a_definition_is_immutable() -> None:
    builder = SagaBuilder()
    builder.add_step(step=Plain())
    definition = builder.build()
    builder.add_step(step=Other())  # the builder goes on; what it built does not change
    assert definition.step_names == ("Plain",)
    assert builder.build().step_names == ("Plain", "Other")
    with pytest.raises(AttributeError, match="immutable"):
        definition.foo = 1  # type: ignore[attr-defined]


# -- registration -----------------------------------------------------------------------------


async def test_register_by_name(engine: Engine) -> None:
    definition = order_saga([])
    engine.register("create_order_v1", definition)
    engine.register("create_order_v1", definition)  # the same again: nothing changes
    assert set(engine.workflows) == {"create_order_v1"}
    with pytest.raises(SagaConflictError):
        engine.register("create_order_v1", order_saga([]))
    with pytest.raises(TypeError, match="one SagaDefinition"):
        engine.register("x", "not a definition")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="registered under a name"):
        engine.register(definition)  # type: ignore[call-overload]

    handle = await engine.start("create_order_v1", {"customer_id": "z", "amount": 2}, "by-name")
    result = await handle.result(timeout=WAIT)
    assert result["Charge"] == {"payment_id": "p-o-z-2"}
    assert (await engine.get("by-name")).name == "create_order_v1"


# -- durability -------------------------------------------------------------------------------


async def test_an_interrupted_definition_saga_recovers_without_rerunning_steps(
    shared_store_url: str,
) -> None:
    runs = Counter[str]()
    gate = Gate()
    commits: list[Any] = []

    class CreateOrder(BaseStep[OrderInput, OrderCreated]):
        async def execute(self, inp: OrderInput) -> OrderCreated:
            runs["CreateOrder"] += 1
            return OrderCreated(order_id="o-r", amount=inp.amount)

    class Reserve(BaseStep[OrderCreated, Reservation]):
        async def execute(self, inp: OrderCreated) -> Reservation:
            runs["Reserve"] += 1
            return Reservation(reservation_id="r")

    class Charge(BaseStep[OrderCreated, PaymentDone]):
        async def execute(self, inp: OrderCreated) -> PaymentDone:
            runs["Charge"] += 1
            if runs["Charge"] == 1:
                await gate.hold()  # the first engine stops here
            return PaymentDone(payment_id=f"p-{runs['Charge']}")

    class Receipt(BaseStep[PaymentDone, Sent]):
        async def execute(self, inp: PaymentDone) -> Sent:
            runs["Receipt"] += 1
            return Sent(sent=True)

    builder = SagaBuilder()
    order = builder.add_step(step=CreateOrder())
    with builder.parallel():  # Reserve is journaled while Charge is held
        builder.add_step(step=Reserve(), depends_on=order)
        paid = builder.add_step(step=Charge(), depends_on=order)
    builder.add_step(step=Receipt(), depends_on=paid)
    builder.on_commit(commits.append)
    definition = builder.build()

    async with make_engine(shared_store_url) as first:
        first.register("durable_v1", definition)
        await first.start("durable_v1", {"customer_id": "c", "amount": 4}, saga_id="dur")
        await gate.reached()

        async def reserve_journaled() -> bool:
            steps = (await first.get("dur")).steps
            return any(s.name == "Reserve" and s.status == "completed" for s in steps)

        await eventually(reserve_journaled, "Reserve to be journaled")
    assert runs == {"CreateOrder": 1, "Reserve": 1, "Charge": 1}

    async with make_engine(shared_store_url) as second:
        second.register("durable_v1", definition)
        await within(second.recover(wait=True))
        result = await second.handle("dur").result(timeout=WAIT)
        snapshot = await second.get("dur")

    assert result == {
        "CreateOrder": {"order_id": "o-r", "amount": 4},
        "Reserve": {"reservation_id": "r"},
        "Charge": {"payment_id": "p-2"},
        "Receipt": {"sent": True},
    }
    # only the step that was cut short ran again; on_commit ran once, after the recovery
    assert runs == {"CreateOrder": 1, "Reserve": 1, "Charge": 2, "Receipt": 1}
    assert commits == [result]
    assert snapshot.status == SagaStatus.COMPLETED
    assert [s.name for s in snapshot.steps if s.kind == "step"].count("Charge") == 1
