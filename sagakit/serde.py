"""JSON in and out of the journal. Payloads are JSON, never pickle: a saga database must not be
a way to run code. Pydantic models are dumped on the way in and validated on the way out.

Every payload a user gives (a saga's input, a step's output, a signal...) is encoded here with
the engine's ``max_payload_bytes``, and refused with :class:`~sagakit.errors.PayloadTooLargeError`
before anything is written when its JSON is larger (see docs/payloads.md for the figures behind
the default)."""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from .errors import OutputNotSerializableError, PayloadTooLargeError, SagaValidationError

#: the default of ``Engine(max_payload_bytes=...)``: 2 MiB of JSON, Temporal's limit too. A
#: payload is held several times over while it is written and replayed (see docs/payloads.md)
DEFAULT_MAX_PAYLOAD_BYTES = 2 * 1024 * 1024


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, set | frozenset):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any, *, what: str = "value", limit: int | None = None) -> str:
    """Encode ``value`` as compact JSON; raise OutputNotSerializableError saying what it was.

    With ``limit`` (bytes), raise PayloadTooLargeError naming ``what`` when the JSON is larger.
    """
    try:
        text = json.dumps(value, default=_default, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise OutputNotSerializableError(
            f"{what} is not JSON serialisable ({exc}); return JSON types (dict, list, str, "
            "int, float, bool, None) or a pydantic model",
            error_type="OutputNotSerializableError",
        ) from exc
    if limit is not None:
        check_size(text, what=what, limit=limit)
    return text


def check_size(text: str, *, what: str, limit: int | None) -> str:
    """``text`` itself, or PayloadTooLargeError when its UTF-8 form is over ``limit`` bytes."""
    if limit is None:
        return text
    size = len(text)
    # len() counts characters; UTF-8 takes 1 to 4 bytes each. ``dumps`` escapes to ASCII (its
    # texts are their own byte count, and isascii() is a flag lookup), so only text from
    # elsewhere that could be over the limit pays for an encode
    if not text.isascii() and 4 * size > limit:
        size = len(text.encode("utf-8"))
    if size > limit:
        raise PayloadTooLargeError(what, size, limit)
    return text


def check_limit(limit: int | None) -> int | None:
    """``Engine(max_payload_bytes=...)`` checked: a positive int, or None for no limit."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(
            f"max_payload_bytes must be a positive number of bytes or None (no limit), "
            f"got {limit!r}"
        )
    return limit


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def is_model_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def validation_message(what: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(input)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return f"invalid {what}: " + "; ".join(parts)


class Converter:
    """Validates values against a type annotation (pydantic models and anything TypeAdapter takes).

    Without an annotation (or ``Any``) values pass through untouched.
    """

    __slots__ = ("_adapter", "annotation", "what")

    def __init__(self, annotation: Any, what: str):
        self.annotation = annotation
        self.what = what
        self._adapter: TypeAdapter[Any] | None = None
        if annotation is not None and annotation is not Any:
            self._adapter = TypeAdapter(annotation)

    @property
    def active(self) -> bool:
        return self._adapter is not None

    def validate(self, value: Any) -> Any:
        """Convert ``value``; raise SagaValidationError naming the field that is wrong."""
        if self._adapter is None:
            return value
        if is_model_type(self.annotation) and isinstance(value, self.annotation):
            return value
        try:
            return self._adapter.validate_python(value)
        except ValidationError as exc:
            errors: list[dict[str, Any]] = [dict(e) for e in exc.errors()]
            raise SagaValidationError(validation_message(self.what, exc), errors) from exc
