"""SagaContext: the saga function's handle on its journal.

The saga function gets one; each step gets one of its own (``ctx.step_key`` and ``ctx.attempt``
are set there). Everything that must come out the same on replay goes through it: steps,
``now()``, ``uuid()``, ``random()``. Each of these takes its sequence number when *called*.
"""

from __future__ import annotations

import random as _random
import uuid as _uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from .errors import SagaError

if TYPE_CHECKING:
    from .steps import SagaStep


class RunDriver(Protocol):
    """What the engine provides behind a context (the engine implements it; the definition layer
    only knows this shape)."""

    saga_id: str

    def call_step(self, step: SagaStep[Any], inp: Any) -> Awaitable[Any]: ...

    def record_value(self, kind: str, produce: Callable[[], Any]) -> Awaitable[Any]: ...


class SagaContext:
    """The handle a saga function (and each step) gets on its saga."""

    __slots__ = ("_attempt", "_driver", "_step_name", "_step_seq")

    def __init__(
        self,
        driver: RunDriver,
        *,
        step_seq: int | None = None,
        step_name: str | None = None,
        attempt: int = 0,
    ):
        self._driver = driver
        self._step_seq = step_seq
        self._step_name = step_name
        self._attempt = attempt

    @property
    def saga_id(self) -> str:
        """The id of the saga this context belongs to."""
        return self._driver.saga_id

    @property
    def in_step(self) -> bool:
        """True inside a step's function, False in the saga function."""
        return self._step_seq is not None

    @property
    def step_key(self) -> str:
        """Inside a step: a key that stays the same across retries and recoveries of this step.

        Pass it as the idempotency key of external calls, so that a step re-run after a crash
        does not charge a card twice.
        """
        if self._step_seq is None:
            raise SagaError(
                "ctx.step_key is only available inside a step (the ctx a step function receives)"
            )
        return f"{self._driver.saga_id}:{self._step_seq}"

    @property
    def step_name(self) -> str | None:
        return self._step_name

    @property
    def attempt(self) -> int:
        """Inside a step: 1 for the first attempt, 2 for the first retry, ... (0 outside)."""
        return self._attempt

    def now(self) -> Awaitable[datetime]:
        """The current time (UTC), journaled: a replay gets the same value."""
        if self.in_step:
            return _ready(datetime.now(UTC))
        return _map(
            self._driver.record_value("now", lambda: datetime.now(UTC).isoformat()),
            datetime.fromisoformat,
        )

    def uuid(self) -> Awaitable[_uuid.UUID]:
        """A random UUID4, journaled: a replay gets the same value."""
        if self.in_step:
            return _ready(_uuid.uuid4())
        return _map(self._driver.record_value("uuid", lambda: str(_uuid.uuid4())), _uuid.UUID)

    def random(self) -> Awaitable[float]:
        """A random float in [0, 1), journaled: a replay gets the same value."""
        if self.in_step:
            return _ready(_random.random())
        return _map(self._driver.record_value("random", _random.random), float)

    def _call_step(self, step: SagaStep[Any], inp: Any) -> Awaitable[Any]:
        if self.in_step:
            raise SagaError(
                f"step {step.name!r} was called from inside step {self._step_name!r}; call steps "
                "from the saga function, with the saga's ctx"
            )
        return self._driver.call_step(step, inp)

    def __repr__(self) -> str:
        where = f" step={self._step_name!r} attempt={self._attempt}" if self.in_step else ""
        return f"<SagaContext saga_id={self.saga_id!r}{where}>"


async def _ready(value: Any) -> Any:
    return value


async def _map(awaitable: Awaitable[Any], convert: Callable[[Any], Any]) -> Any:
    return convert(await awaitable)
