"""The transport protocol's semantics, on the in-process transport and on real brokers.

Every test of the protocol runs on ``memory``, ``rabbitmq`` (the session's RabbitMQ node) and
``nats`` (the session's nats-server with JetStream); each uses destinations of its own. The
restart tests start servers of their own, so that stopping one disturbs no other test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sagakit.errors import SagaError, SagaValidationError
from sagakit.transports import (
    DEAD_FROM_HEADER,
    DELIVERIES_HEADER,
    ERROR_HEADER,
    ERROR_TYPE_HEADER,
    MemoryBroker,
    MemoryTransport,
    Message,
    PoisonMessageError,
    Subscription,
    Transport,
    TransportError,
    TransportUnavailableError,
)
from sagakit.transports.nats import NatsTransport
from sagakit.transports.rabbitmq import RabbitTransport

from .brokers import NatsServer, RabbitServer

REPO = Path(__file__).resolve().parent.parent
WAIT = 60.0

MakeTransport = Callable[[], Awaitable[Transport]]


def build(kind: str, url: str, publish_timeout: float = 30.0) -> Transport:
    if kind == "rabbitmq":
        return RabbitTransport(url, publish_timeout=publish_timeout)
    # A short ack_wait: a delivery whose consumer vanished comes back within seconds.
    return NatsTransport(url, ack_wait=2.0, publish_timeout=publish_timeout)


@pytest.fixture(params=["memory", "rabbitmq", "nats"])
async def make_transport(request: pytest.FixtureRequest) -> AsyncIterator[MakeTransport]:
    """Opens transports that all reach the same broker; closes them after the test."""
    kind: str = request.param
    broker = MemoryBroker()
    url = "" if kind == "memory" else request.getfixturevalue(f"{kind.replace('mq', '')}_url")
    opened: list[Transport] = []

    async def make() -> Transport:
        transport: Transport = MemoryTransport(broker) if kind == "memory" else build(kind, url)
        await transport.open()
        opened.append(transport)
        return transport

    yield make
    for transport in reversed(opened):
        await transport.close()


def destination() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Collector:
    """A handler that records what it receives, and fails while ``fail(message)`` says so."""

    def __init__(self, fail: Callable[[Message], BaseException | None] = lambda m: None):
        self.received: list[Message] = []
        self.fail = fail

    async def __call__(self, message: Message) -> None:
        self.received.append(message)
        error = self.fail(message)
        if error is not None:
            raise error

    def names(self) -> list[str]:
        return [m.name for m in self.received]


def command(dest: str, name: str, **fields: str) -> Message:
    return Message.new(dest, "command", name, '{"n": 1}', **fields)  # type: ignore[arg-type]


async def test_publish_then_consume_keeps_order_and_fields(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    dest = destination()
    first = Message.new(
        dest,
        "command",
        "reserve",
        '{"sku": "A-1", "qty": 2}',
        reply_to="replies.orders",
        correlation_id="saga-1:3",
        headers={"tenant": "acme"},
    )
    await transport.publish(first)
    for i in range(1, 20):
        await transport.publish(command(dest, f"m{i:02d}"))
    collector = Collector()
    subscription = await transport.subscribe(dest, collector)
    assert isinstance(subscription, Subscription)
    await eventually(lambda: len(collector.received) >= 20, "20 messages")
    await asyncio.sleep(0.2)
    assert collector.names() == ["reserve"] + [f"m{i:02d}" for i in range(1, 20)]
    got = collector.received[0]
    assert got == first  # every field, headers included, survives the trip
    assert got.attempt == 1
    await subscription.close()


async def test_acked_messages_are_not_delivered_again(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    dest = destination()
    for name in ("a", "b", "c"):
        await transport.publish(command(dest, name))
    first = Collector()
    subscription = await transport.subscribe(dest, first)
    await eventually(lambda: len(first.received) == 3, "three messages")
    await asyncio.sleep(0.3)  # let the acks reach the broker
    await subscription.close()

    again = Collector()
    other = await make_transport()
    await other.subscribe(dest, again)
    await other.publish(command(dest, "marker"))
    await eventually(lambda: "marker" in again.names(), "the marker")
    assert again.names() == ["marker"]
    assert first.names() == ["a", "b", "c"]


async def test_a_handler_that_raises_gets_the_message_again(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    dest = destination()
    collector = Collector(lambda m: RuntimeError("not yet") if m.attempt < 3 else None)
    dead = Collector()
    await transport.subscribe(dest, collector, max_deliveries=5)
    await transport.subscribe(f"{dest}.dead", dead)
    await transport.publish(command(dest, "flaky"))
    await eventually(lambda: len(collector.received) == 3, "three deliveries")
    await asyncio.sleep(0.5)
    assert [m.attempt for m in collector.received] == [1, 2, 3]
    assert len({m.id for m in collector.received}) == 1
    assert dead.received == []


async def test_after_max_deliveries_the_message_is_dead_lettered_with_its_error(
    make_transport: MakeTransport,
) -> None:
    transport = await make_transport()
    dest = destination()
    collector = Collector(lambda m: ValueError(f"no stock for {m.name}"))
    dead = Collector()
    await transport.subscribe(dest, collector, max_deliveries=3)
    await transport.subscribe(f"{dest}.dead", dead)
    sent = command(dest, "reserve", correlation_id="saga-9:1")
    await transport.publish(sent)
    await transport.publish(command(dest, "after"))
    await eventually(lambda: len(dead.received) == 2, "two dead letters")
    # Redeliveries may come after later messages (documented): compare per message.
    assert [m.attempt for m in collector.received if m.name == "reserve"] == [1, 2, 3]
    assert [m.attempt for m in collector.received if m.name == "after"] == [1, 2, 3]
    letter = next(m for m in dead.received if m.name == "reserve")
    assert letter.id == sent.id
    assert letter.destination == f"{dest}.dead"
    assert (letter.name, letter.payload, letter.correlation_id) == (
        "reserve",
        sent.payload,
        "saga-9:1",
    )
    assert letter.headers[ERROR_HEADER] == "no stock for reserve"
    assert letter.headers[ERROR_TYPE_HEADER] == "ValueError"
    assert letter.headers[DELIVERIES_HEADER] == "3"
    assert letter.headers[DEAD_FROM_HEADER] == dest
    assert sorted(m.name for m in dead.received) == ["after", "reserve"]


async def test_a_poison_message_is_dead_lettered_at_once(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    dest = destination()
    collector = Collector(
        lambda m: PoisonMessageError("payload is not a Reserve") if m.name == "bad" else None
    )
    dead = Collector()
    await transport.subscribe(dest, collector, max_deliveries=5)
    await transport.subscribe(f"{dest}.dead", dead)
    await transport.publish(command(dest, "bad"))
    await transport.publish(command(dest, "good"))
    await eventually(lambda: "good" in collector.names() and dead.received != [], "both")
    assert collector.names() == ["bad", "good"]
    assert dead.received[0].headers[ERROR_HEADER] == "payload is not a Reserve"
    assert dead.received[0].headers[ERROR_TYPE_HEADER] == "PoisonMessageError"
    assert dead.received[0].headers[DELIVERIES_HEADER] == "1"


async def test_a_consumer_closed_mid_handling_hands_the_message_to_another(
    make_transport: MakeTransport,
) -> None:
    first, second = await make_transport(), await make_transport()
    dest = destination()
    started = asyncio.Event()
    seen_first: list[Message] = []

    async def stuck(message: Message) -> None:
        seen_first.append(message)
        started.set()
        await asyncio.Event().wait()

    subscription = await first.subscribe(dest, stuck)
    sent = command(dest, "reserve")
    await first.publish(sent)
    await asyncio.wait_for(started.wait(), WAIT)
    await subscription.close()  # without an ack

    other = Collector()
    await second.subscribe(dest, other)
    await eventually(lambda: len(other.received) == 1, "the redelivery")
    assert other.received[0].id == sent.id
    assert other.received[0].attempt == 2
    assert [m.id for m in seen_first] == [sent.id]


def spawn_consumer(
    kind: str, url: str, dest: str, marker: Path, err: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(err, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.transport_consumer_app", kind, url, dest, str(marker)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


@pytest.mark.parametrize("kind", ["rabbitmq", "nats"])
async def test_a_consumer_killed_mid_handling_loses_nothing(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url: str = request.getfixturevalue(f"{kind.replace('mq', '')}_url")
    dest = destination()
    marker = tmp_path / "marker"
    child = spawn_consumer(kind, url, dest, marker, tmp_path / "child.err")
    transport = build(kind, url)
    await transport.open()
    try:
        sent = command(dest, "reserve")
        await transport.publish(sent)
        await eventually(
            lambda: (
                (marker.exists() and marker.read_text().endswith("\n")) or child.poll() is not None
            ),
            "the child to receive the message",
        )
        assert child.poll() is None, (tmp_path / "child.err").read_text()
        assert marker.read_text().split() == [sent.id, "1"]
        os.kill(child.pid, signal.SIGKILL)
        child.wait()

        collector = Collector()
        await transport.subscribe(dest, collector)
        await eventually(lambda: len(collector.received) == 1, "the redelivery")
        assert collector.received[0].id == sent.id
        assert collector.received[0].attempt == 2
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        await transport.close()


@pytest.mark.parametrize("kind", ["rabbitmq", "nats"])
async def test_a_broker_restart_loses_no_confirmed_message(kind: str) -> None:
    server: RabbitServer | NatsServer = RabbitServer() if kind == "rabbitmq" else NatsServer()
    with server:
        transport = build(kind, server.url, publish_timeout=1.0)
        await transport.open()
        try:
            dest = destination()
            live = Collector()
            await transport.subscribe(f"{dest}-live", live)
            sent = [command(dest, f"m{i:02d}") for i in range(30)]
            for message in sent:
                await transport.publish(message)

            await asyncio.to_thread(server.stop)
            # Down: publish keeps trying until its deadline, then says what is wrong.
            with pytest.raises(TransportUnavailableError, match="could not publish") as info:
                await transport.publish(command(dest, "while-down"))
            assert isinstance(info.value, SagaError)
            assert "guest:guest" not in str(info.value)  # the password is not shown
            await asyncio.to_thread(server.start_again)

            after = build(kind, server.url, publish_timeout=60.0)
            await after.open()
            try:
                collector = Collector()
                await after.subscribe(dest, collector)
                await eventually(lambda: len(collector.received) >= 30, "the 30 messages")
                received = [m.id for m in collector.received if m.name != "while-down"]
                assert received == [m.id for m in sent]
                # The subscription made before the restart consumes again.
                await after.publish(command(f"{dest}-live", "after-restart"))
                await eventually(lambda: "after-restart" in live.names(), "the live consumer")
            finally:
                await after.close()
        finally:
            await transport.close()


async def test_memory_transport_must_be_open() -> None:
    transport = MemoryTransport()
    with pytest.raises(TransportError, match="not open"):
        await transport.publish(command("inventory", "reserve"))


@pytest.mark.parametrize("bad", ["", "has space", "a..b", "a.*", "a.>"])
async def test_a_destination_every_broker_accepts_is_required(bad: str) -> None:
    async with MemoryTransport() as transport:
        with pytest.raises(SagaValidationError, match="invalid destination"):
            await transport.publish(Message.new(bad, "command", "x", "{}"))


@pytest.mark.parametrize(("module", "extra"), [("aio_pika", "rabbitmq"), ("nats", "nats")])
def test_a_missing_client_names_the_extra(module: str, extra: str) -> None:
    name = "RabbitTransport" if extra == "rabbitmq" else "NatsTransport"
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from sagakit.transports import MissingExtraError\n"
        "try:\n"
        f"    from sagakit.transports import {name}\n"
        "except ImportError as exc:\n"
        "    assert isinstance(exc, MissingExtraError), type(exc)\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"pip install 'sagakit[{extra}]'" in result.stdout
