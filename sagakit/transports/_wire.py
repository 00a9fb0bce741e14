"""How a :class:`Message` travels as broker headers and body (shared by RabbitMQ and NATS).

The body is the payload's UTF-8 bytes; every other field is a string header under the
reserved ``x-sagakit-`` names below, so that a message survives any broker that carries string
headers, and an operator's tool shows it readably.
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import Message

ID = "x-sagakit-id"
KIND = "x-sagakit-kind"
NAME = "x-sagakit-name"
REPLY_TO = "x-sagakit-reply-to"
CORRELATION_ID = "x-sagakit-correlation-id"
_FIELDS = (ID, KIND, NAME, REPLY_TO, CORRELATION_ID)


class WireError(ValueError):
    """A received message lacks sagakit's headers or its body is not UTF-8."""


def encode(message: Message) -> tuple[bytes, dict[str, str]]:
    """The body and headers that carry ``message``."""
    headers = {k: v for k, v in message.headers.items() if k not in _FIELDS}
    headers[ID] = message.id
    headers[KIND] = message.kind
    headers[NAME] = message.name
    if message.reply_to is not None:
        headers[REPLY_TO] = message.reply_to
    if message.correlation_id is not None:
        headers[CORRELATION_ID] = message.correlation_id
    return message.payload.encode(), headers


def decode(
    destination: str,
    body: bytes,
    headers: Mapping[str, object],
    attempt: int,
    *,
    drop: tuple[str, ...] = (),
) -> Message:
    """The message carried by ``body`` and ``headers``, less the broker's ``drop`` headers."""
    missing = [h for h in (ID, KIND, NAME) if not isinstance(headers.get(h), str)]
    if missing:
        raise WireError(
            f"not a sagakit message: header(s) {', '.join(missing)} missing; publish with a "
            "sagakit transport"
        )
    try:
        payload = body.decode()
    except UnicodeDecodeError as exc:
        raise WireError(f"the body is not UTF-8 text: {exc}") from exc
    user = {
        k: str(v)
        for k, v in headers.items()
        if k not in _FIELDS and k not in drop and not k.startswith("Nats-")
    }
    reply_to = headers.get(REPLY_TO)
    correlation_id = headers.get(CORRELATION_ID)
    return Message(
        id=str(headers[ID]),
        destination=destination,
        kind=str(headers[KIND]),
        name=str(headers[NAME]),
        payload=payload,
        reply_to=str(reply_to) if reply_to is not None else None,
        correlation_id=str(correlation_id) if correlation_id is not None else None,
        headers=user,
        attempt=attempt,
    )
