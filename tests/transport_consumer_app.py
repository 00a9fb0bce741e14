"""A consumer process for tests/test_transports.py: ``python -m tests.transport_consumer_app
KIND URL DESTINATION MARKER``. It subscribes to DESTINATION and, for each message, writes the
message's id and delivery to MARKER and then hangs, never acking: the test SIGKILLs it there."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sagakit.transports import Message, Transport


def make(kind: str, url: str) -> Transport:
    if kind == "rabbitmq":
        from sagakit.transports import RabbitTransport

        return RabbitTransport(url)
    from sagakit.transports import NatsTransport

    # A short ack_wait (fixed when the consumer is created): the killed delivery returns soon.
    return NatsTransport(url, ack_wait=2.0)


async def main(kind: str, url: str, destination: str, marker: Path) -> None:
    transport = make(kind, url)
    await transport.open()

    async def hang(message: Message) -> None:
        marker.write_text(f"{message.id} {message.attempt}\n")
        await asyncio.Event().wait()

    await transport.subscribe(destination, hang)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])))
