"""A started saga's handle: wait for its result or look at its status."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic

from typing_extensions import TypeVar as DefaultTypeVar

from ..errors import SagaNotFoundError
from ..stores.base import SagaStatus

if TYPE_CHECKING:
    from .engine import Engine

#: a bare ``SagaHandle`` (unparametrised, in user code too) is a ``SagaHandle[Any]`` (PEP 696)
ResultT = DefaultTypeVar("ResultT", covariant=True, default=Any)


class SagaHandle(Generic[ResultT]):
    """A started saga: wait for its result or look at its status.

    ``engine.start(workflow, ...)`` gives a ``SagaHandle[Out]`` for a workflow whose function
    returns ``Out``, so ``await handle.result()`` is typed as an ``Out``; a handle made from a
    workflow's name, or ``engine.handle(saga_id)``, is a ``SagaHandle[Any]``.
    """

    __slots__ = ("_engine", "saga_id")

    def __init__(self, engine: Engine, saga_id: str):
        self._engine = engine
        self.saga_id = saga_id

    async def result(self, timeout: float | timedelta | None = None) -> ResultT:
        """Wait until the saga ends; return its output or raise why it did not complete.

        Raises:
            SagaCompensatedError: the saga failed and was rolled back.
            CompensationFailedError: the rollback is incomplete (the saga is FAILED).
            TimeoutError: ``timeout`` passed first (the saga goes on).
        """
        output: ResultT = await self._engine._result(self.saga_id, timeout)
        return output

    async def status(self) -> SagaStatus:
        """The saga's status as the store has it now."""
        record = await self._engine._store_or_raise().load_saga(self.saga_id)
        if record is None:
            raise SagaNotFoundError(self.saga_id)
        return SagaStatus(record.status)

    def __repr__(self) -> str:
        return f"<SagaHandle {self.saga_id!r}>"


def _seconds(value: float | timedelta | None) -> float | None:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def seconds(value: float | timedelta | None) -> float | None:
    """A timeout given as seconds or as a timedelta, in seconds."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value
