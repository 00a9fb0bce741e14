"""``BaseStep``: a saga step written as a class with typed input and output.

The declarative front end reads a step's types from the hints of its ``execute`` method, so
that a definition is checked when it is put together (a step without hints, or with hints that
are not pydantic models, is refused by ``SagaBuilder.add_step``), not when a saga runs it.
"""

from __future__ import annotations

import contextvars
import inspect
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from ..errors import SagaDefinitionError, SagaError

if TYPE_CHECKING:
    from ..context import SagaContext

InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)

#: the context of the step attempt running in this task (set around ``execute`` by the
#: compiled step), so that ``self.saga_context`` works although one step object serves every
#: saga that runs it, concurrently
running_context: contextvars.ContextVar[SagaContext | None] = contextvars.ContextVar(
    "sagakit_declarative_step", default=None
)


class BaseStep(ABC, Generic[InT, OutT]):
    """A typed saga step. Subclass it and implement :meth:`execute` (and, when the step has
    something to undo, :meth:`compensate`)::

        class ReserveStock(BaseStep[OrderInput, Reservation]):
            async def execute(self, inp: OrderInput) -> Reservation:
                ...

            async def compensate(self, inp: OrderInput, out: Reservation) -> None:
                ...

    ``InT`` and ``OutT`` are pydantic models, read from the type hints of ``execute``. The
    step's input is validated into ``InT`` before ``execute`` runs; ``execute`` returns an
    ``OutT`` (or a dict that validates into one), journaled as JSON.

    The step's name in the journal is the class attribute (or instance attribute) ``name``
    when set, else the class name. Replay compares it: do not rename a step while sagas that
    ran it are in flight.

    ``compensate`` runs only for a step that succeeded (a *strict* step), when a later step
    fails for good; it gets the same input and the output ``execute`` returned.
    """

    #: the step's name in the journal (default: the class name)
    name: str | None = None
    #: True: a transactional step (see :func:`~sagakit.saga_transaction`): ``execute`` and
    #: ``compensate`` write through :attr:`connection`, and their writes commit in the same
    #: transaction as their journal entry (SQLite and PostgreSQL stores)
    transactional: bool = False

    @abstractmethod
    async def execute(self, inp: InT) -> OutT:
        """Do the step's work and return its output."""

    async def compensate(self, inp: InT, out: OutT) -> None:
        """Undo what :meth:`execute` did (by default there is nothing to undo)."""

    @property
    def saga_context(self) -> SagaContext:
        """The context of the attempt running now, inside :meth:`execute`: ``step_key`` (an
        idempotency key stable across retries and recoveries), ``attempt``, ``saga_id``."""
        ctx = running_context.get()
        if ctx is None:
            raise SagaError(
                f"{type(self).__name__}.saga_context is only available while execute() runs "
                "inside a saga"
            )
        return ctx

    @property
    def connection(self) -> Any:
        """A transactional step's database connection, inside its open transaction, while
        :meth:`execute` or :meth:`compensate` runs (``sqlite3.Connection`` or
        ``asyncpg.Connection``): never commit or roll back on it."""
        connection = getattr(self.saga_context, "connection", None)
        if connection is None:
            raise SagaError(
                f"{type(self).__name__}.connection is only available in a transactional step: "
                "set `transactional = True` on the class"
            )
        return connection


@dataclass(frozen=True, slots=True)
class StepSpec:
    """What the builder learned about a step object: its name, types and whether it has an
    undo."""

    name: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    compensates: bool


def inspect_step(step: object) -> StepSpec:
    """Check that ``step`` is a usable ``BaseStep`` instance; raise SagaDefinitionError saying
    what to change when it is not."""
    if isinstance(step, type) and issubclass(step, BaseStep):
        raise SagaDefinitionError(
            f"add_step(step=...) takes a step object, got the class {step.__name__}; "
            f"write step={step.__name__}()"
        )
    if not isinstance(step, BaseStep):
        raise SagaDefinitionError(
            f"add_step(step=...) takes an instance of a BaseStep subclass, got {step!r}"
        )
    cls = type(step)
    name = getattr(step, "name", None) or cls.__name__
    if not isinstance(name, str) or not name.strip():
        raise SagaDefinitionError(f"step {cls.__name__}: its name must be a non-empty string")
    execute = cls.execute
    if not _is_async(execute):
        raise SagaDefinitionError(
            f"step {name!r}: execute must be an `async def execute(self, inp)`; a plain function "
            "would run its side effect once per retry"
        )
    params = _positional(step.execute)
    if not params or _required(step.execute) > 1:
        raise SagaDefinitionError(
            f"step {name!r}: execute must take one argument besides self (the input), "
            f"it takes ({', '.join(params)})"
        )
    hints = _hints(execute, name, "execute")
    input_model = _model_hint(hints.get(params[0]), name, f"the input `{params[0]}` of execute")
    output_model = _model_hint(hints.get("return"), name, "the return type of execute")
    compensates = cls.compensate is not BaseStep.compensate
    if compensates:
        if not _is_async(cls.compensate):
            raise SagaDefinitionError(
                f"step {name!r}: compensate must be an `async def compensate(self, inp, out)`"
            )
        comp_params = _positional(step.compensate)
        if len(comp_params) < 2 or _required(step.compensate) > 2:
            raise SagaDefinitionError(
                f"step {name!r}: compensate must take (inp, out) besides self, it takes "
                f"({', '.join(comp_params)})"
            )
    return StepSpec(name, input_model, output_model, compensates)


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(inspect.unwrap(fn))


def _positional(bound: Any) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(bound).parameters.values() if p.kind in kinds]


def _required(bound: Any) -> int:
    """How many arguments a call must pass (keyword-only ones included)."""
    return sum(
        1
        for p in inspect.signature(bound).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    )


def _hints(fn: Any, name: str, method: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception as exc:
        raise SagaDefinitionError(
            f"step {name!r}: the type hints of {method} cannot be resolved "
            f"({type(exc).__name__}: {exc}); define its models where the step's module can see "
            "them (at module level)"
        ) from exc


def _model_hint(hint: Any, name: str, what: str) -> type[BaseModel]:
    if hint is None:
        raise SagaDefinitionError(
            f"step {name!r}: {what} has no type hint; annotate it with a pydantic model, "
            "e.g. `async def execute(self, inp: OrderInput) -> OrderCreated`"
        )
    if not (isinstance(hint, type) and issubclass(hint, BaseModel)):
        raise SagaDefinitionError(
            f"step {name!r}: {what} is {hint!r}; it must be a pydantic model (a BaseModel "
            "subclass), so that it is validated and journaled as JSON"
        )
    return hint
