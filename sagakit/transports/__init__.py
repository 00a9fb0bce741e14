"""Transports: how sagakit's remote steps and participants reach a message broker.

``Message``, ``Transport`` and ``Subscription`` are the protocol (sagakit/transports/base.py);
``MemoryTransport`` runs it in-process for tests. The broker-backed transports load their
client only when asked for: ``RabbitTransport`` (``pip install 'sagakit[rabbitmq]'``) and
``NatsTransport`` (``pip install 'sagakit[nats]'``), and ``PostgresOutboxTransport``
(``pip install 'sagakit[postgres]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    DEAD_FROM_HEADER,
    DELIVERIES_HEADER,
    ERROR_HEADER,
    ERROR_TYPE_HEADER,
    Handler,
    Message,
    MissingExtraError,
    PoisonMessageError,
    Subscription,
    Transport,
    TransportError,
    TransportUnavailableError,
    dead_letter_destination,
)
from .memory import MemoryBroker, MemoryTransport

if TYPE_CHECKING:
    from .nats import NatsTransport
    from .postgres import PostgresOutboxTransport
    from .rabbitmq import RabbitTransport

__all__ = [
    "DEAD_FROM_HEADER",
    "DELIVERIES_HEADER",
    "ERROR_HEADER",
    "ERROR_TYPE_HEADER",
    "Handler",
    "MemoryBroker",
    "MemoryTransport",
    "Message",
    "MissingExtraError",
    "NatsTransport",
    "PoisonMessageError",
    "PostgresOutboxTransport",
    "RabbitTransport",
    "Subscription",
    "Transport",
    "TransportError",
    "TransportUnavailableError",
    "dead_letter_destination",
]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import sagakit.transports` needs neither aio-pika nor nats-py.
    if name == "RabbitTransport":
        from .rabbitmq import RabbitTransport

        return RabbitTransport
    if name == "NatsTransport":
        from .nats import NatsTransport

        return NatsTransport
    if name == "PostgresOutboxTransport":
        from .postgres import PostgresOutboxTransport

        return PostgresOutboxTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
