"""The payload limit (``Engine(max_payload_bytes=...)``, issue 21): every payload a user gives is
refused with PayloadTooLargeError before anything is written, on every store kind.

Each test checks the message (what, the size, the limit, what to do) and that the store holds
nothing of the refused payload: no saga row, no journal entry, no event, no published state. A
step whose output is too large fails for good on its first attempt and the saga compensates.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sagakit import (
    Engine,
    ObjectContext,
    PayloadTooLargeError,
    Queue,
    SagaCompensatedError,
    SagaContext,
    SagaNotFoundError,
    SagaStatus,
    SharedObjectContext,
    StepResponse,
    TerminalError,
    create_saga_virtual_object,
    saga_step,
    saga_workflow,
    serde,
)
from sagakit.errors import human_bytes
from tests.conftest import fast_retry, make_engine
from tests.waiting import suspended

#: the limit most tests run with: small, so that payloads over it are cheap on every store
LIMIT = 1000
#: a JSON payload over LIMIT (a string of 2000 characters)
BIG = "x" * 2000


def assert_refused(exc: BaseException, what: str, size: int, limit: int = LIMIT) -> None:
    """The error says what was too large, by how much, the limit, and what to do."""
    assert isinstance(exc, PayloadTooLargeError), repr(exc)
    assert (exc.what, exc.size, exc.limit) == (what, size, limit)
    message = str(exc)
    assert message.startswith(f"{what} is "), message
    assert f"({size} bytes)" in message
    assert f"limit of {human_bytes(limit)} ({limit} bytes)" in message
    assert "journal a reference" in message
    assert "max_payload_bytes" in message


def json_size(value: Any) -> int:
    return len(serde.dumps(value))


async def no_saga(engine: Engine, saga_id: str) -> None:
    with pytest.raises(SagaNotFoundError):
        await engine.get(saga_id)


# -- the check itself -------------------------------------------------------------------------


def test_sizes_are_utf8_bytes_and_the_limit_is_checked() -> None:
    # dumps escapes to ASCII: "é" is 6 bytes of JSON (\u00e9), and counted so
    assert json_size("é") == 8
    text = "é" * 100  # 200 bytes of UTF-8 in 100 characters
    assert serde.check_size(text, what="t", limit=200) == text
    with pytest.raises(PayloadTooLargeError) as caught:
        serde.check_size(text, what="t", limit=199)
    assert (caught.value.size, caught.value.limit) == (200, 199)
    assert human_bytes(512) == "512 B"
    assert human_bytes(3_355_443) == "3.2 MiB"
    assert human_bytes(serde.DEFAULT_MAX_PAYLOAD_BYTES) == "2.0 MiB"
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="max_payload_bytes"):
            Engine("memory://", max_payload_bytes=bad)  # type: ignore[arg-type]
    assert Engine("memory://").max_payload_bytes == 2 * 1024 * 1024
    assert Engine("memory://", max_payload_bytes=None).max_payload_bytes is None


# -- saga inputs --------------------------------------------------------------------------------


async def test_a_saga_input_over_the_limit_writes_no_saga(store_url: str) -> None:
    @saga_workflow("EchoInput")
    async def echo(saga: SagaContext, inp: Any) -> Any:
        return inp

    queue = Queue("payload-queue")
    engine = make_engine(store_url, max_payload_bytes=LIMIT)
    engine.register(echo, queue)
    what = "the input of saga 'EchoInput'"
    async with engine:
        with pytest.raises(PayloadTooLargeError) as caught:
            await engine.start(echo, BIG, saga_id="started")
        assert_refused(caught.value, what, json_size(BIG))
        with pytest.raises(PayloadTooLargeError):
            await engine.run(echo, BIG, saga_id="run")
        with pytest.raises(PayloadTooLargeError):
            await engine.start(echo, BIG, saga_id="not-here", run_here=False)
        with pytest.raises(PayloadTooLargeError):
            await engine.enqueue(queue, echo, BIG, saga_id="queued")
        with pytest.raises(PayloadTooLargeError) as scheduled:
            engine.schedule("big-nightly", "0 3 * * *", echo, BIG)
        assert_refused(scheduled.value, "the input of schedule 'big-nightly'", json_size(BIG))
        for saga_id in ("started", "run", "not-here", "queued"):
            await no_saga(engine, saga_id)
        assert await engine.list() == []
        # one byte under the limit is fine
        fits = "y" * (LIMIT - 2)
        assert json_size(fits) == LIMIT
        assert await engine.run(echo, fits, saga_id="fits") == fits


async def test_a_child_or_sent_saga_with_a_large_input_is_not_started(store_url: str) -> None:
    @saga_workflow("PayloadChild")
    async def child(saga: SagaContext, inp: Any) -> str:
        return "child ran"

    @saga_workflow("PayloadParent")
    async def parent(saga: SagaContext, how: str) -> str:
        try:
            if how == "child":
                await saga.start_child(child, BIG, saga_id="the-child")
            else:
                await saga.send(child, BIG, saga_id="the-sent")
        except PayloadTooLargeError as exc:
            return str(exc)
        return "started"

    engine = make_engine(store_url, max_payload_bytes=LIMIT)
    engine.register(parent, child)
    async with engine:
        for how, child_id in (("child", "the-child"), ("send", "the-sent")):
            message = await engine.run(parent, how, saga_id=f"parent-{how}")
            assert message.startswith("the input of saga 'PayloadChild' is "), message
            await no_saga(engine, child_id)
            # the parent journaled no child and no send: nothing points at a saga that is not
            snap = await engine.get(f"parent-{how}")
            assert snap.status == SagaStatus.COMPLETED
            assert not snap.steps


# -- steps ------------------------------------------------------------------------------------


async def test_a_step_output_over_the_limit_fails_for_good_and_compensates(store_url: str) -> None:
    log: list[str] = []

    async def undo_reserve(data: Any, failed: bool = False) -> None:
        log.append(f"undo {data}")

    @saga_step("Reserve", compensate=undo_reserve, retry=fast_retry(3))
    async def reserve(saga: SagaContext, inp: Any) -> dict[str, str]:
        log.append("reserve")
        return {"reservation": "r1"}

    @saga_step("Report", retry=fast_retry(3))
    async def report(saga: SagaContext, size: int) -> str:
        log.append("report")
        return "z" * size

    @saga_workflow("BigReport")
    async def big_report(saga: SagaContext, size: int) -> int:
        await reserve(saga, None)
        return len(await report(saga, size))

    engine = make_engine(store_url, max_payload_bytes=LIMIT)
    engine.register(big_report)
    async with engine:
        with pytest.raises(SagaCompensatedError) as caught:
            await engine.run(big_report, LIMIT, saga_id="too-big")
        assert caught.value.cause_type == "PayloadTooLargeError"
        assert caught.value.step == "Report"
        assert caught.value.cause_message.startswith("the output of step 'Report' is ")
        assert f"({LIMIT + 2} bytes)" in caught.value.cause_message
        # not retried: one attempt, then the rollback of what ran before
        assert log == ["reserve", "report", "undo {'reservation': 'r1'}"]
        snap = await engine.get("too-big")
        assert snap.status == SagaStatus.COMPENSATED
        failed = next(s for s in snap.steps if s.name == "Report")
        assert (failed.status, failed.attempts, failed.output) == ("failed", 1, None)
        # the entry recording the failure is small: the error says the size, not the payload
        assert failed.error is not None and failed.error["type"] == "PayloadTooLargeError"
        assert len(json.dumps(failed.error)) < 1000
        # just under the limit (JSON of exactly LIMIT bytes) completes
        log.clear()
        assert await engine.run(big_report, LIMIT - 2, saga_id="fits") == LIMIT - 2
        assert log == ["reserve", "report"]


async def test_compensation_data_over_the_limit_fails_the_step(store_url: str) -> None:
    undone: list[Any] = []

    async def undo(data: Any, failed: bool = False) -> None:
        undone.append(data)

    @saga_step("Snapshot", compensate=undo, retry=fast_retry(3))
    async def snapshot(saga: SagaContext, inp: Any) -> StepResponse[str]:
        return StepResponse(output="ok", compensation_data={"before": BIG})

    @saga_workflow("BigUndo")
    async def big_undo(saga: SagaContext, inp: Any) -> str:
        return await snapshot(saga, inp)

    engine = make_engine(store_url, max_payload_bytes=LIMIT)
    engine.register(big_undo)
    async with engine:
        with pytest.raises(SagaCompensatedError) as caught:
            await engine.run(big_undo, None, saga_id="big-undo")
        assert caught.value.cause_type == "PayloadTooLargeError"
        assert caught.value.cause_message.startswith("the compensation data of step 'Snapshot' is ")
        snap = await engine.get("big-undo")
        assert snap.status == SagaStatus.COMPENSATED
        assert [(s.name, s.status, s.attempts) for s in snap.steps if s.kind == "step"] == [
            ("Snapshot", "failed", 1)
        ]


async def test_no_limit_lets_a_large_payload_through(store_url: str) -> None:
    big = "b" * (3 * 1024 * 1024)  # over the default 2 MiB

    @saga_step("Large")
    async def large(saga: SagaContext, inp: Any) -> str:
        return big

    @saga_workflow("LargeOutput")
    async def large_output(saga: SagaContext, inp: Any) -> int:
        return len(await large(saga, inp))

    unlimited = make_engine(store_url, max_payload_bytes=None)
    unlimited.register(large_output)
    async with unlimited:
        assert await unlimited.run(large_output, None, saga_id="unlimited") == len(big)
        snap = await unlimited.get("unlimited")
        assert snap.steps[0].output == big
        with pytest.raises(SagaNotFoundError):
            await unlimited.get("by-default")
    by_default = make_engine(store_url)  # the same database when it is shared; else fresh
    by_default.register(large_output)
    async with by_default:
        with pytest.raises(SagaCompensatedError) as caught:
            await by_default.run(large_output, None, saga_id="by-default")
        assert caught.value.cause_type == "PayloadTooLargeError"
        assert "over the payload limit of 2.0 MiB (2097152 bytes)" in caught.value.cause_message


# -- what callers send to a running saga -----------------------------------------------------


async def test_signals_promises_and_events_over_the_limit_are_not_delivered(
    store_url: str,
) -> None:
    @saga_workflow("Waiter")
    async def waiter(saga: SagaContext, inp: Any) -> Any:
        got = await saga.wait_for_signal("go")
        value = await saga.promise("p").value()
        return {"signal": got, "promise": value}

    engine = make_engine(store_url, max_payload_bytes=LIMIT)
    engine.register(waiter)
    async with engine:
        handle = await engine.start(waiter, None, saga_id="waiter")
        snap = await suspended(engine, "waiter")
        with pytest.raises(PayloadTooLargeError) as caught:
            await engine.signal("waiter", "go", BIG)
        assert_refused(caught.value, "the payload of signal 'go'", json_size(BIG))
        assert snap.wait_token is not None
        with pytest.raises(PayloadTooLargeError) as caught:
            await engine.notify("waiter", snap.wait_token, BIG)
        assert_refused(caught.value, "the event", json_size(BIG))
        with pytest.raises(PayloadTooLargeError) as caught:
            await engine.resolve_promise("waiter", "p", BIG)
        assert_refused(caught.value, "the value of promise 'p'", json_size({"value": BIG}))
        store = engine._store_or_raise()
        assert await store.load_events("waiter") == []
        assert (await engine.get("waiter")).status == SagaStatus.SUSPENDED
        # small ones go through, and the saga ends with them
        await engine.signal("waiter", "go", "small")
        await suspended(engine, "waiter")
        await engine.resolve_promise("waiter", "p", 42)
        assert await handle.result(10) == {"signal": "small", "promise": 42}


async def test_published_state_and_commands_over_the_limit_are_refused(store_url: str) -> None:
    @saga_workflow("Publisher")
    async def publisher(saga: SagaContext, inp: Any) -> list[str]:
        errors = []
        try:
            saga.set_state("report", BIG)
        except PayloadTooLargeError as exc:
            errors.append(str(exc))
        try:
            await saga.send_command("archive", {"blob": BIG}, to="archiver")
        except PayloadTooLargeError as exc:
            errors.append(str(exc))
        saga.set_state("small", 1)
        return errors

    engine = make_engine(store_url, max_payload_bytes=LIMIT)
    engine.register(publisher)
    async with engine:
        errors = await engine.run(publisher, None, saga_id="publisher")
        assert [e.split(" is ")[0] for e in errors] == [
            "the state 'report'",
            "the payload of command 'archive'",
        ]
        assert await engine.query("publisher", "report", default="absent") == "absent"
        assert await engine.query("publisher", "small") == 1
        snap = await engine.get("publisher")
        # one state entry, the small one: no "report", no command entry (nor its outbox row)
        assert [(s.kind, s.name) for s in snap.steps] == [("state", "small")]


async def test_virtual_object_state_and_call_results_over_the_limit(store_url: str) -> None:
    obj = create_saga_virtual_object("PayloadBox")

    @obj.handler()
    async def put(saga: SagaContext, state: ObjectContext, inp: int) -> str:
        try:
            state.set("blob", "o" * inp)
        except PayloadTooLargeError as exc:
            return str(exc)
        return "stored"

    @obj.handler(kind="shared")
    async def peek(state: SharedObjectContext, inp: int) -> str:
        return "p" * inp

    @saga_workflow("PeekBig")
    async def peek_big(saga: SagaContext, size: int) -> Any:
        try:
            return len(await saga.call_object(obj, "k", "peek", size))
        except TerminalError as exc:
            return exc.error_type, str(exc)

    engine = make_engine(store_url, max_payload_bytes=LIMIT)
    engine.register(obj, peek_big)
    async with engine:
        message = await engine.call_object("PayloadBox", "k", "put", LIMIT)
        assert message.startswith("the state 'blob' of PayloadBox/k is "), message
        assert await engine.object_state("PayloadBox", "k") == {}
        assert await engine.call_object("PayloadBox", "k", "put", 10) == "stored"
        assert await engine.object_state("PayloadBox", "k") == {"blob": "o" * 10}
        # a call's result is journaled: one too large fails the call, recorded small
        error_type, message = await engine.run(peek_big, LIMIT, saga_id="peek")
        assert error_type == "PayloadTooLargeError"
        assert message.startswith(
            "call 'PayloadBox/k.peek' failed: the result of call 'PayloadBox/k.peek' is "
        ), message
        snap = await engine.get("peek")
        [call] = [s for s in snap.steps if s.kind == "call"]
        assert call.output is None and call.status == "failed"
        assert await engine.run(peek_big, 10, saga_id="peek-small") == 10
