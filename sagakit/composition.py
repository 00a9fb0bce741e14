"""Composing sagas: inline nested logic that shares the caller's compensation stack
(:func:`run_nested_saga`, :func:`create_saga_module`, ``workflow.run_as_step``), and independent
child sagas (``saga.start_child``) that the parent waits for durably."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import serde
from .durations import as_seconds
from .steps import _type_hints
from .workflows import saga_function_parameters

if TYPE_CHECKING:
    from .context import RunDriver, SagaContext
    from .workflows import SagaWorkflow

InT = TypeVar("InT")
OutT = TypeVar("OutT")
T = TypeVar("T")


async def run_nested_saga(saga: SagaContext, handler: Callable[[SagaContext], Awaitable[T]]) -> T:
    """Run ``handler(saga)`` inline: its steps join the caller's journal and compensation stack,
    so that a later failure of the caller rolls them back too, in reverse order with the
    caller's own steps."""
    if not callable(handler):
        raise TypeError(f"run_nested_saga takes a function (saga) -> awaitable, got {handler!r}")
    return await handler(saga)


class SagaModule(Generic[InT, OutT]):
    """Reusable saga logic, ``async def fn(saga, inp)``, that runs inside whichever saga calls
    it (``await module(saga, inp)``) and shares that saga's compensation stack. Unlike a
    workflow it is not started on its own. When its input parameter is annotated with a
    pydantic model, a dict input is validated into it."""

    def __init__(self, handler: Callable[[SagaContext, InT], Awaitable[OutT]]):
        positional = saga_function_parameters(handler, "create_saga_module")
        self.function = handler
        self.name: str = handler.__qualname__
        hint = _type_hints(handler).get(positional[1])
        self.input = serde.Converter(
            hint if serde.is_model_type(hint) else None, f"input of saga module {self.name!r}"
        )

    async def __call__(self, saga: SagaContext, inp: InT | dict[str, Any]) -> OutT:
        return await self.function(saga, self.input.validate(inp))

    def __repr__(self) -> str:
        return f"<SagaModule {self.name!r}>"


def create_saga_module(
    handler: Callable[[SagaContext, InT], Awaitable[OutT]],
) -> SagaModule[InT, OutT]:
    """Make ``async def fn(saga, inp)`` a reusable saga module (see :class:`SagaModule`)."""
    return SagaModule(handler)


class ChildSaga(Generic[OutT]):
    """A child saga started with ``saga.start_child``: a separate durable saga, with its own
    journal and rollback, that the parent may wait for."""

    __slots__ = ("_driver", "_workflow", "saga_id")

    def __init__(self, driver: RunDriver, workflow: SagaWorkflow[Any, OutT], saga_id: str):
        self._driver = driver
        self._workflow = workflow
        self.saga_id = saga_id

    @property
    def workflow_name(self) -> str:
        return self._workflow.name

    def result(self, timeout: timedelta | float | None = None) -> Awaitable[OutT]:
        """Wait durably for the child's outcome: the parent is suspended meanwhile (nothing of
        it stays in memory) and survives restarts. Returns the child's output.

        Raises:
            SagaCompensatedError: the child failed and rolled itself back.
            CompensationFailedError: the child failed and its rollback is incomplete.
            SagaTimeoutError: ``timeout`` passed first (terminal: the parent rolls back unless
                it catches it; the child goes on).
        """
        seconds = None if timeout is None else as_seconds(timeout, "timeout")
        waited: Awaitable[OutT] = self._driver.child_result(self.saga_id, self._workflow, seconds)
        return waited

    def __repr__(self) -> str:
        return f"<ChildSaga {self.saga_id!r} of {self._workflow.name!r}>"


__all__ = ["ChildSaga", "SagaModule", "create_saga_module", "run_nested_saga"]
