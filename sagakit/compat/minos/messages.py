"""minos's values: the execution context, requests and responses, and the status enums.

minos's :class:`SagaContext` is not :class:`sagakit.SagaContext`: here it is the bag of values
the steps read and return (``context.order``, ``context["order"]``); sagakit's is the saga
function's handle on its journal. Its values must be JSON (they are journaled).
"""

from __future__ import annotations

import uuid as _uuid
from collections.abc import Iterator
from enum import Enum, IntEnum
from typing import Any

from ... import serde
from ...errors import OutputNotSerializableError
from .exceptions import SagaException


class SagaStatus(Enum):
    """An execution's status, as minos names it (see ``docs/migrating/minos.md`` for how
    sagakit's statuses map onto these five)."""

    Created = "created"
    Running = "running"
    Paused = "paused"
    Finished = "finished"
    Errored = "errored"


class SagaStepStatus(Enum):
    """A step execution's status, as minos names it."""

    Created = "created"
    RunningOnExecute = "running-on-execute"
    FinishedOnExecute = "finished-on-execute"
    ErroredOnExecute = "errored-on-execute"
    PausedByOnExecute = "paused-by-on-execute"
    ErroredByOnExecute = "errored-by-on-execute"
    RunningOnFailure = "running-on-failure"
    PausedOnFailure = "paused-on-failure"
    ErroredOnFailure = "errored-on-failure"
    RunningOnSuccess = "running-on-success"
    ErroredOnSuccess = "errored-on-success"
    RunningOnError = "running-on-error"
    ErroredOnError = "errored-on-error"
    Finished = "finished"


class SagaResponseStatus(IntEnum):
    """How a remote step's reply went: ``SUCCESS`` runs ``on_success``, ``ERROR`` runs
    ``on_error``, ``SYSTEM_ERROR`` fails the step without either."""

    SUCCESS = 200
    ERROR = 400
    SYSTEM_ERROR = 500


class SagaContext:
    """minos's execution context: JSON values read and written as attributes or items.

    ``SagaContext(order={"id": 1})``, then ``context.order`` or ``context["order"]``; a step
    changes it and returns it (or returns nothing: the context it got goes on unchanged).
    """

    __slots__ = ("_fields",)

    _fields: dict[str, Any]

    def __init__(self, **fields: Any) -> None:
        object.__setattr__(self, "_fields", dict(fields))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(f"the SagaContext has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._fields[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self._fields[name]
        except KeyError:
            raise AttributeError(f"the SagaContext has no field {name!r}") from None

    def __getitem__(self, name: str) -> Any:
        return self._fields[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._fields[name] = value

    def __delitem__(self, name: str) -> None:
        del self._fields[name]

    def __contains__(self, name: object) -> bool:
        return name in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def keys(self) -> list[str]:
        return list(self._fields)

    def items(self) -> list[tuple[str, Any]]:
        return list(self._fields.items())

    def get(self, name: str, default: Any = None) -> Any:
        return self._fields.get(name, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SagaContext):
            return self._fields == other._fields
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._fields.items())
        return f"SagaContext({fields})"

    @property
    def raw(self) -> dict[str, Any]:
        """The fields as a JSON object (a copy); SagaException if a value is not JSON."""
        try:
            loaded: dict[str, Any] = serde.loads(serde.dumps(self._fields, what="SagaContext"))
        except OutputNotSerializableError as exc:
            raise SagaException(
                f"{exc.message}; a SagaContext holds JSON values (it is journaled): store ids "
                "and plain data in it, not objects"
            ) from exc
        return loaded

    @classmethod
    def from_raw(cls, raw: dict[str, Any] | SagaContext | None) -> SagaContext:
        if isinstance(raw, SagaContext):
            return raw
        return cls(**(raw or {}))


class SagaRequest:
    """What a remote step sends: ``SagaRequest("CreatePayment", {"amount": 40})``."""

    __slots__ = ("_content", "target")

    def __init__(self, target: str, content: Any = None) -> None:
        if not isinstance(target, str) or not target:
            raise SagaException(f"a SagaRequest needs a target (a topic name), got {target!r}")
        self.target = target
        self._content = content

    async def content(self, **kwargs: Any) -> Any:
        """The request's content (async, as in minos)."""
        return self._content

    @property
    def raw(self) -> dict[str, Any]:
        return {"target": self.target, "content": self._content}

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> SagaRequest:
        return cls(raw["target"], raw.get("content"))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SagaRequest):
            return self.raw == other.raw
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SagaRequest({self.target!r}, {self._content!r})"


class SagaResponse:
    """A remote step's reply. ``uuid`` is the execution it answers (required to resume one);
    ``identifier`` names this reply: the same reply delivered twice is taken once (give the
    broker message's id; a new one is made up when it is not given)."""

    __slots__ = ("_content", "identifier", "related_services", "service_name", "status", "uuid")

    def __init__(
        self,
        content: Any = None,
        related_services: set[str] | None = None,
        status: int | SagaResponseStatus | None = None,
        uuid: _uuid.UUID | str | None = None,
        service_name: str | None = None,
        *,
        identifier: _uuid.UUID | str | None = None,
    ) -> None:
        self._content = content
        self.related_services = set(related_services or ())
        self.status = SagaResponseStatus(status if status is not None else 200)
        self.uuid = _as_uuid(uuid) if uuid is not None else None
        self.service_name = service_name
        self.identifier = _as_uuid(identifier) if identifier is not None else _uuid.uuid4()

    async def content(self, **kwargs: Any) -> Any:
        """The reply's content (async, as in minos)."""
        return self._content

    @property
    def ok(self) -> bool:
        return self.status == SagaResponseStatus.SUCCESS

    @property
    def raw(self) -> dict[str, Any]:
        return {
            "content": self._content,
            "related_services": sorted(self.related_services),
            "status": int(self.status),
            "uuid": None if self.uuid is None else str(self.uuid),
            "service_name": self.service_name,
            "identifier": str(self.identifier),
        }

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> SagaResponse:
        return cls(
            raw.get("content"),
            set(raw.get("related_services") or ()),
            raw.get("status"),
            raw.get("uuid"),
            raw.get("service_name"),
            identifier=raw.get("identifier"),
        )

    def __repr__(self) -> str:
        return (
            f"SagaResponse({self._content!r}, status={self.status.name}, uuid={self.uuid}, "
            f"identifier={self.identifier})"
        )


def _as_uuid(value: _uuid.UUID | str) -> _uuid.UUID:
    return value if isinstance(value, _uuid.UUID) else _uuid.UUID(str(value))


__all__ = [
    "SagaContext",
    "SagaRequest",
    "SagaResponse",
    "SagaResponseStatus",
    "SagaStatus",
    "SagaStepStatus",
]
