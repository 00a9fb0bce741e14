"""The parts of a declarative definition: step references, the input context, and the nodes
(steps, conditions, hooks) a builder collects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..errors import SagaDefinitionError
from ..retry import RetryPolicy
from ..steps import OnExhausted
from .base_step import BaseStep, StepSpec

if TYPE_CHECKING:
    from .definition import SagaDefinition


class StepRef:
    """A handle on a step (or condition) of a :class:`~sagakit.SagaBuilder`, returned by
    ``add_step`` and ``add_condition``: pass it as another step's ``depends_on``.

    A reference belongs to the builder that returned it; a definition that depends on a
    reference of another builder is refused by ``build()``. ``StepRef("Name")`` made by hand
    refers to the step called ``Name`` of the builder it is used in, found by ``build()``
    (which refuses it when there is no such step, or when it closes a cycle).
    """

    __slots__ = ("_name", "_owner")

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise SagaDefinitionError(f"a StepRef needs a step name, got {name!r}")
        self._name = name
        # the serial number of the builder that made it (None: made by hand, resolved by name)
        self._owner: int | None = None

    @classmethod
    def _of(cls, name: str, owner: int) -> StepRef:
        ref = cls(name)
        ref._owner = owner
        return ref

    @property
    def name(self) -> str:
        """The name of the step (or condition) this refers to."""
        return self._name

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepRef):
            return NotImplemented
        return (self._name, self._owner) == (other._name, other._owner)

    def __hash__(self) -> int:
        return hash((self._name, self._owner))

    def __repr__(self) -> str:
        return f"StepRef({self._name!r})"


@dataclass(frozen=True, slots=True)
class InputContext:
    """What a root step's ``input_map`` (and a root condition's predicate) receives.

    Attributes:
        initial_data: the saga's input, as JSON (a dict when a dict or a model was given).
        events: the signals delivered to the saga so far (``engine.signal``), oldest first,
            each ``{"name": ..., "payload": ...}``. Journaled: a replay sees the same list.
    """

    initial_data: Any
    events: list[dict[str, Any]]


#: what an input_map or a predicate is: a plain function of the input context (for a root) or
#: of the dependency's output
Mapper = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class StepNode:
    """A step added with ``add_step``."""

    name: str
    step: BaseStep[Any, Any]
    spec: StepSpec
    input_map: Mapper | None
    depends_on: StepRef | None
    retry_policy: RetryPolicy | None
    timeout: timedelta | None
    #: "park" makes the saga wait for an operator when the step's retries run out
    on_exhausted: OnExhausted = "compensate"


@dataclass(frozen=True, slots=True)
class ConditionNode:
    """A branch added with ``add_condition``: runs ``then`` or ``otherwise`` inline."""

    name: str
    predicate: Mapper
    then: SagaDefinition
    otherwise: SagaDefinition | None
    depends_on: StepRef | None


Node = StepNode | ConditionNode


@dataclass(frozen=True, slots=True)
class Hook:
    """``on_commit`` / ``on_reject``: a function run once, as a journaled step."""

    fn: Callable[[Any], Any]
    retry_policy: RetryPolicy | None
