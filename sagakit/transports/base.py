"""The transport protocol: how sagakit hands a message to a broker and gets messages back.

A transport moves :class:`Message` values between services, **at least once**: ``publish``
returns only once the broker has the message (publisher confirms, a JetStream ack, a committed
row), and a subscription's handler acks by returning and asks for a redelivery by raising.
A message the handler still fails after ``max_deliveries`` deliveries goes to the dead-letter
destination ``"<destination>.dead"`` with the error in its headers (:data:`ERROR_HEADER`,
:data:`ERROR_TYPE_HEADER`, :data:`DELIVERIES_HEADER`, :data:`DEAD_FROM_HEADER`); that
destination is an ordinary one, so an operator can subscribe to it to inspect or replay.
Because delivery is at least once, consumers deduplicate by :attr:`Message.id` (the inbox).

Order: messages published to one destination by one publisher, one after the other (each
``publish`` awaited), are delivered to a single subscriber in that order, until a redelivery:
a message that is nacked comes back after later ones may have been handled.

Beyond the shared design (issue 20), this module adds:

- ``Message.attempt`` (not compared): which delivery of the message the handler sees, 1 for the
  first; set by the transport on receive, ignored on publish.
- ``Message.new(...)``: builds a message with a fresh unique id.
- :class:`PoisonMessageError`: raised by a handler, it sends the message to the dead-letter
  destination at once (a command that cannot be parsed will not parse on the next try).
- :class:`TransportError` (a :class:`~sagakit.errors.SagaError`) and
  :class:`TransportUnavailableError`, raised by ``publish``/``open`` when the broker cannot be
  reached before the transport's deadline; :class:`MissingExtraError` (also an ``ImportError``)
  when a broker transport's client is not installed.
- :func:`dead_letter_destination`, :func:`check_destination`, and the header names.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from ..errors import SagaError, SagaValidationError

__all__ = [
    "DEAD_FROM_HEADER",
    "DELIVERIES_HEADER",
    "ERROR_HEADER",
    "ERROR_TYPE_HEADER",
    "Handler",
    "Message",
    "MessageKind",
    "MissingExtraError",
    "PoisonMessageError",
    "Subscription",
    "Transport",
    "TransportError",
    "TransportUnavailableError",
    "check_destination",
    "check_max_deliveries",
    "dead_letter_destination",
    "error_headers",
]

MessageKind = Literal["command", "reply"]

#: Header of a dead letter: the last error's message (``str(exc)``, cut to 2000 characters).
ERROR_HEADER = "x-sagakit-error"
#: Header of a dead letter: the last error's type name (``"ValueError"``).
ERROR_TYPE_HEADER = "x-sagakit-error-type"
#: Header of a dead letter: how many deliveries were tried, as a decimal string.
DELIVERIES_HEADER = "x-sagakit-deliveries"
#: Header of a dead letter: the destination the message was first sent to.
DEAD_FROM_HEADER = "x-sagakit-dead-from"

_DESTINATION = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


class TransportError(SagaError):
    """The broker refused or lost an operation (a publish not confirmed, a closed channel)."""


class TransportUnavailableError(TransportError):
    """The broker could not be reached before the transport's deadline.

    ``publish`` raises it once its deadline (the transport's ``publish_timeout``) has passed
    while the broker was down; the message may or may not have reached the broker, so publish
    it again later (consumers deduplicate by id). Check the broker and the transport's URL.
    """


class MissingExtraError(TransportError, ImportError):
    """A broker transport's client library is not installed; the message names the extra."""


class PoisonMessageError(SagaError):
    """Raise it in a handler to dead-letter the message at once, without further deliveries.

    For a message that can never succeed (a payload that is not valid JSON, an unknown command
    name): retrying it would only delay the dead letter. The message goes to
    ``"<destination>.dead"`` with this error's message in its headers.
    """


@dataclass(frozen=True, slots=True)
class Message:
    """One message between services.

    Attributes:
        id: unique per message; consumers deduplicate by it (the inbox).
        destination: a participant's name (``"inventory"``) or a reply address.
        kind: ``"command"`` or ``"reply"``.
        name: the command's name (``"reserve"``); for a reply, the name of the command it answers.
        payload: JSON text.
        reply_to: where the participant sends its reply, if anywhere.
        correlation_id: ties a reply to its command (for example ``"<saga_id>:<seq>"``).
        headers: string headers that travel with the message.
        attempt: which delivery of the message this is (1 for the first); set by the
            transport on receive, ignored on publish, not compared.
    """

    id: str
    destination: str
    kind: str
    name: str
    payload: str
    reply_to: str | None = None
    correlation_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    attempt: int = field(default=1, compare=False)

    @classmethod
    def new(
        cls,
        destination: str,
        kind: MessageKind,
        name: str,
        payload: str,
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        """A message with a fresh unique id (a UUID4 in hex)."""
        return cls(
            id=uuid.uuid4().hex,
            destination=destination,
            kind=kind,
            name=name,
            payload=payload,
            reply_to=reply_to,
            correlation_id=correlation_id,
            headers=dict(headers or {}),
        )


#: A subscription's handler: returning acks the message, raising asks for a redelivery.
Handler = Callable[[Message], Awaitable[None]]


@runtime_checkable
class Subscription(Protocol):
    """A running consumer of one destination, from :meth:`Transport.subscribe`."""

    async def close(self) -> None:
        """Stop consuming; a message being handled and not yet acked is delivered again later."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A broker connection that publishes and consumes :class:`Message` values."""

    async def open(self) -> None:
        """Connect to the broker; raises :class:`TransportUnavailableError` if it cannot."""
        ...

    async def close(self) -> None:
        """Close every subscription and the connection."""
        ...

    async def publish(self, message: Message) -> None:
        """Hand the message to the broker; returns once the broker has it (at least once)."""
        ...

    async def subscribe(
        self,
        destination: str,
        handler: Handler,
        *,
        max_deliveries: int = 5,
    ) -> Subscription:
        """Consume ``destination``: the handler's return acks, a raise nacks for redelivery.

        After ``max_deliveries`` deliveries that raised (or at once on
        :class:`PoisonMessageError`) the message goes to ``"<destination>.dead"``.
        """
        ...


def dead_letter_destination(destination: str) -> str:
    """Where messages of ``destination`` go after their last failed delivery."""
    return f"{destination}.dead"


def check_destination(destination: str) -> str:
    """Return ``destination`` if every transport accepts it, else raise ``SagaValidationError``.

    Dot-separated words of letters, digits, ``_`` and ``-``: a RabbitMQ queue name and a NATS
    subject token alike.
    """
    if not _DESTINATION.fullmatch(destination):
        raise SagaValidationError(
            f"invalid destination {destination!r}: use dot-separated words of letters, digits,"
            " '_' and '-' (for example 'inventory' or 'replies.orders')"
        )
    return destination


def check_max_deliveries(max_deliveries: int) -> int:
    """Return ``max_deliveries`` if it is at least 1, else raise ``SagaValidationError``."""
    if max_deliveries < 1:
        raise SagaValidationError(f"max_deliveries must be at least 1, not {max_deliveries}")
    return max_deliveries


def error_headers(
    message: Message, exc: BaseException, deliveries: int, *, limit: int = 2000
) -> dict[str, str]:
    """The headers of ``message``'s dead letter: its own headers plus the error's."""
    headers = dict(message.headers)
    headers[ERROR_HEADER] = (str(exc) or type(exc).__name__)[:limit]
    headers[ERROR_TYPE_HEADER] = type(exc).__name__
    headers[DELIVERIES_HEADER] = str(deliveries)
    headers[DEAD_FROM_HEADER] = message.destination
    return headers
