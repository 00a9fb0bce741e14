"""The parts of a declarative definition: step references, the input context, and the nodes
(steps, conditions, waits, hooks) a builder collects."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, Self

from typing_extensions import TypeVar

from ..errors import SagaDefinitionError
from ..retry import RetryPolicy
from ..steps import OnExhausted
from .base_step import BaseStep, StepSpec

if TYPE_CHECKING:
    from .definition import SagaDefinition

#: the output of the node a reference refers to (a bare ``StepRef`` is a ``StepRef[Any]``)
OutT_co = TypeVar("OutT_co", covariant=True, default=Any)


class StepRef(Generic[OutT_co]):
    """A handle on a step (or condition, or wait) of a :class:`~sagakit.SagaBuilder`, returned
    by ``add_step``, ``add_condition`` and ``add_wait``: pass it as a later node's
    ``depends_on``, to give that node this one's output.

    Typed by that output: ``add_step(step=CreateOrder())`` of a ``BaseStep[In, Created]``
    returns a ``StepRef[Created]``, and a later ``input_map`` with ``depends_on=`` it is checked
    as a function of a ``Created``.

    A reference belongs to the builder that returned it; a definition that depends on a
    reference of another builder is refused by ``build()``. ``StepRef("Name")`` made by hand
    refers to the node called ``Name`` of the builder it is used in, found by ``build()``
    (which refuses it when there is no such node, or when that node was added after the one
    that depends on it).
    """

    __slots__ = ("_name", "_owner")

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise SagaDefinitionError(f"a StepRef needs a step name, got {name!r}")
        self._name = name
        # the serial number of the builder that made it (None: made by hand, resolved by name)
        self._owner: int | None = None

    @classmethod
    def _of(cls, name: str, owner: int) -> StepRef[Any]:
        ref = cls(name)
        ref._owner = owner
        return ref

    @classmethod
    def copy_of(cls, ref: StepRef[Any], *args: Any, **kwargs: Any) -> Self:
        """A reference of this class to the node ``ref`` refers to, of the same builder, made
        as ``cls(ref.name, *args, **kwargs)``: for a front end whose ``add_step`` returns its
        own subclass of StepRef, carrying more about the step."""
        copy = cls(ref.name, *args, **kwargs)
        copy._owner = ref._owner
        return copy

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
    """What the ``input_map`` (or predicate) of a node without ``depends_on`` receives, and the
    second argument of a two-parameter ``input_map(out, ctx)``.

    Attributes:
        initial_data: the saga's input, as JSON (a dict when a dict or a model was given); in
            a condition's branch, the branch's initial data.
        events: the events the saga has seen, oldest first, each ``{"name": ..., "payload":
            ...}``: the signals it had received (``engine.signal``) when the first node that
            needs this context (or the first ``add_wait``) was reached, then the event of each
            ``add_wait`` that completed since (a signal, or a ``notify`` of its token, under
            the wait's name). Journaled: a replay sees the same list.
        outputs: the output of every step that completed before this node, by step name, as
            its output model (a wait's: its payload, as JSON). Steps of the same parallel
            block do not see each other's.
    """

    initial_data: Any
    events: list[dict[str, Any]]
    outputs: dict[str, Any] = field(default_factory=dict)


#: what an input_map or a predicate is: a plain function of the input context (without
#: depends_on) or of the dependency's output, or of ``(output, context)``
Mapper = Callable[..., Any]


def mapper_arity(fn: Callable[..., Any]) -> int | None:
    """How ``fn`` is called: with one argument (1), with ``(out, ctx)`` (2), or None when it
    can be called with neither. A function that takes either way is called with two when it
    names two positional parameters (``def f(out, ctx=None)``), else with one."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1  # a builtin without a readable signature: called as it always was
    takes = []
    for count in (1, 2):
        try:
            signature.bind(*range(count))
        except TypeError:
            continue
        takes.append(count)
    if takes == [1, 2]:
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        named = [p for p in signature.parameters.values() if p.kind in kinds]
        return 2 if len(named) >= 2 else 1
    return takes[0] if takes else None


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
    #: the input_map takes ``(out, ctx)``
    two_args: bool = False


@dataclass(frozen=True, slots=True)
class ConditionNode:
    """A branch added with ``add_condition``: runs ``then`` or ``otherwise`` inline."""

    name: str
    predicate: Mapper
    then: SagaDefinition
    otherwise: SagaDefinition | None
    depends_on: StepRef | None
    #: the predicate takes ``(out, ctx)``
    two_args: bool = False


@dataclass(frozen=True, slots=True)
class WaitNode:
    """A durable wait added with ``add_wait``: for the signal ``name`` or a notify of its
    token; its output is the event's payload."""

    name: str
    #: seconds; past it the wait fails with the terminal SagaTimeoutError
    timeout: float | None
    depends_on: None = None


Node = StepNode | ConditionNode | WaitNode


@dataclass(frozen=True, slots=True)
class Hook:
    """``on_commit`` / ``on_reject``: a function run once, as a journaled step."""

    fn: Callable[[Any], Any]
    retry_policy: RetryPolicy | None
