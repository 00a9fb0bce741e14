"""python-saga-orchestrator's definition API (``BaseStep``, ``SagaBuilder``, ``StepRef``,
``InputContext``) on sagakit's declarative builder.

``SagaBuilder`` here *is* a :class:`sagakit.SagaBuilder` (``add_wait``, ``parallel``,
``add_condition``, ``on_commit`` and ``on_reject`` work as documented there); only ``add_step``
speaks the seed's dialect:

* ``input_map`` is required and keyword-only; without ``depends_on`` it gets the seed's
  :class:`InputContext` (``initial_data``, ``context``, ``step_outputs``, ``latest_event``,
  ``events``: the payloads of the events the saga received), with it the dependency's output.
* ``retry_policy`` is a seed policy (default ``NoRetry()``, as in the seed), translated to a
  sagakit policy that makes the same attempts (see retry.py).
* ``step_id`` names the step in the journal (default: the step's class name; the seed's
  ``step_<n>`` when that class is already in the saga).

Each step is put in the definition through a small adapter class that carries the journal name
and forwards ``execute``/``compensate`` to your step object, so one object may serve several
steps, and its attributes are the ones you set.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeAlias, TypeVar

from pydantic import BaseModel

from ...declarative import SagaBuilder as NativeSagaBuilder
from ...declarative import SagaDefinition
from ...declarative.base_step import BaseStep as NativeBaseStep
from ...declarative.base_step import StepSpec, inspect_step
from ...declarative.nodes import InputContext as NativeInputContext
from ...declarative.nodes import StepNode
from ...declarative.nodes import StepRef as NativeStepRef
from ...retry import RetryPolicy as NativeRetryPolicy
from .errors import SagaDefinitionError, TypeValidationError
from .retry import RetryPolicy, to_native

InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)

#: the key under which the saga's input carries the seed's metadata (see runtime.py)
ENVELOPE = "saga_orchestrator"


class BaseStep(NativeBaseStep[InT, OutT]):
    """A typed step, as in the seed: ``execute(inp) -> out`` and an optional
    ``compensate(inp, out)``. ``input_model`` and ``output_model`` are read from the type
    hints of ``execute`` when the class is defined.

    Unlike the seed, a step without ``compensate`` has nothing to undo (the seed's default
    raised ``NotImplementedError`` during a rollback, which ended the saga FAILED).
    """

    input_model: type[BaseModel]
    output_model: type[BaseModel]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        execute = cls.__dict__.get("execute")
        if execute is None:
            return
        try:
            hints = typing.get_type_hints(execute)
        except NameError:
            return  # models defined later: the builder checks the step when it is added
        params = [p for p in inspect.signature(execute).parameters if p != "self"]
        inp = hints.get(params[0]) if params else None
        out = hints.get("return")
        for hint, what in ((inp, "input"), (out, "output")):
            if not (inspect.isclass(hint) and issubclass(hint, BaseModel)):
                raise TypeValidationError(
                    f"Step '{cls.__name__}' must type annotate execute(inp) and its return type "
                    f"with pydantic models; its {what} is {hint!r}"
                )
        cls.input_model = typing.cast(type[BaseModel], inp)
        cls.output_model = typing.cast(type[BaseModel], out)


class StepRef(NativeStepRef):
    """What ``add_step`` returns: pass it as a later step's ``depends_on``. ``step_id`` is the
    step's journal name (sagakit's ``name``), ``output_model`` its output type."""

    __slots__ = ("_output_model",)

    def __init__(self, step_id: str, output_model: type[BaseModel] | None = None) -> None:
        super().__init__(step_id)
        self._output_model = output_model

    @property
    def step_id(self) -> str:
        return self.name

    @property
    def output_model(self) -> type[BaseModel] | None:
        return self._output_model


@dataclass
class InputContext:
    """What the ``input_map`` of a step without ``depends_on`` gets (the seed's shape).

    Attributes:
        initial_data: the ``initial_data`` given to ``start``.
        context: ``{"saga_name", "initial_data", "step_outputs", "events", "latest_event"}``.
        step_outputs: the output (JSON) of every step that completed before, by step id.
        latest_event: the payload of the newest event the saga received, or None.
        events: the payloads of the events received so far, oldest first (None: none yet).
    """

    initial_data: Any
    context: dict[str, Any]
    step_outputs: dict[str, Any]
    latest_event: Any | None = None
    events: list[Any] | None = None


RootInputMap: TypeAlias = Callable[[InputContext], Any]
StepInputMap: TypeAlias = Callable[[Any], Any]


class SagaBuilder(NativeSagaBuilder):
    """Builds a saga definition, the seed's way (see the module docstring). Steps run one
    after another in the order they are added."""

    def __init__(self, *, compensate_on_failure: bool = True) -> None:
        super().__init__()
        self._compensate_on_failure = compensate_on_failure
        self._count = 0

    def add_step(  # type: ignore[override]  # the seed's signature: keyword-only, input_map required
        self,
        *,
        step: NativeBaseStep[Any, Any],
        input_map: StepInputMap,
        timeout: timedelta | None = None,
        retry_policy: RetryPolicy | NativeRetryPolicy | None = None,
        depends_on: NativeStepRef | None = None,
        step_id: str | None = None,
    ) -> StepRef:
        """Add a step that runs after the steps added before it; return its reference.

        Raises:
            SagaDefinitionError: ``input_map`` is not a function, the step is not a typed
                ``BaseStep``, or ``step_id`` is used twice.
            TypeValidationError: ``input_map``'s type hints do not fit the step.
        """
        index = self._count
        if not callable(input_map):
            raise SagaDefinitionError("input_map must be callable")
        spec = inspect_step(step)
        name = step_id or spec.name
        if step_id is None and name in self._output_names:
            name = f"step_{index}"  # the seed's default id: one step class used twice
        _check_input_map(input_map, spec.input_model, depends_on)
        adapter = _adapter(step, spec, name, self._compensate_on_failure)
        mapper = input_map if depends_on is not None else _seed_root(input_map)
        native = super().add_step(
            adapter,
            input_map=mapper,
            depends_on=depends_on,
            retry_policy=to_native(retry_policy, f"step {name!r}"),
            timeout=timeout,
        )
        self._count += 1
        return StepRef.copy_of(native, spec.output_model)


def is_seed_definition(definition: SagaDefinition) -> bool:
    """Whether every step of ``definition`` was added by this module's ``SagaBuilder`` (its
    root input_maps expect the saga input this layer writes)."""
    return all(
        isinstance(node.step, _SeedStep) for node in definition.nodes if isinstance(node, StepNode)
    )


class _SeedStep(NativeBaseStep[Any, Any]):
    """The base of the adapters :func:`_adapter` makes."""

    target: NativeBaseStep[Any, Any]

    async def execute(self, inp: Any) -> Any:  # replaced in each adapter
        raise NotImplementedError


def _adapter(
    step: NativeBaseStep[Any, Any], spec: StepSpec, name: str, compensates: bool
) -> _SeedStep:
    """An adapter class for one step: its journal ``name``, the step's types in the hints
    sagakit reads, and ``compensate`` only when the step has one (and the saga compensates)."""

    async def execute(self: _SeedStep, inp: Any) -> Any:
        return await self.target.execute(inp)

    execute.__annotations__ = {"inp": spec.input_model, "return": spec.output_model}
    body: dict[str, Any] = {"name": name, "execute": execute, "__module__": __name__}
    if spec.compensates and compensates:

        async def compensate(self: _SeedStep, inp: Any, out: Any) -> None:
            await self.target.compensate(inp, out)

        compensate.__annotations__ = {"inp": spec.input_model, "out": spec.output_model}
        body["compensate"] = compensate
    cls = type(f"{type(step).__name__}Step", (_SeedStep,), body)
    adapter: _SeedStep = cls()
    adapter.target = step
    return adapter


def _seed_root(input_map: StepInputMap) -> Callable[[NativeInputContext], Any]:
    """The input_map sagakit calls for a step without ``depends_on``: it gives the seed's
    :class:`InputContext` to the user's function."""

    def seed_input_map(ctx: NativeInputContext) -> Any:
        return input_map(seed_context(ctx))

    return seed_input_map


def seed_context(ctx: NativeInputContext) -> InputContext:
    """The seed's InputContext for sagakit's."""
    envelope = ctx.initial_data
    meta = envelope.get(ENVELOPE) if isinstance(envelope, dict) else None
    initial = envelope.get("initial_data") if isinstance(meta, dict) else envelope
    outputs = {
        name: out.model_dump(mode="json") if isinstance(out, BaseModel) else out
        for name, out in ctx.outputs.items()
    }
    events = [e.get("payload") if isinstance(e, dict) else e for e in ctx.events]
    latest = events[-1] if events else None
    context = {
        "saga_name": meta.get("saga_name") if isinstance(meta, dict) else None,
        "initial_data": initial,
        "step_outputs": outputs,
        "events": events,
        "latest_event": latest,
    }
    return InputContext(initial, context, outputs, latest, events or None)


def _check_input_map(
    input_map: Callable[..., Any], input_model: type[BaseModel], depends_on: NativeStepRef | None
) -> None:
    """The seed's check of an input_map's hints: its argument is the dependency's output model
    (or InputContext), and it returns the step's input model or a dict."""
    try:
        hints = typing.get_type_hints(input_map)
        params = list(inspect.signature(input_map).parameters.values())
    except (NameError, TypeError, ValueError):
        return
    if params:
        given = hints.get(params[0].name)
        if depends_on is not None:
            expected = depends_on.output_model if isinstance(depends_on, StepRef) else None
            if given is not None and expected is not None and given is not expected:
                raise TypeValidationError(
                    f"input_map first arg is '{given}', expected '{expected.__name__}'"
                )
        elif given is not None and given is not InputContext:
            raise TypeValidationError(
                f"input_map first arg is '{given}', expected '{InputContext.__name__}' "
                "(from sagakit.compat.saga_orchestrator)"
            )
    returns = hints.get("return")
    if returns is None or returns is input_model or returns is dict or returns == dict[str, Any]:
        return
    raise TypeValidationError(
        f"input_map return type '{returns}' is incompatible with '{input_model.__name__}'"
    )


__all__ = [
    "BaseStep",
    "InputContext",
    "RootInputMap",
    "SagaBuilder",
    "SagaDefinition",
    "StepInputMap",
    "StepRef",
    "is_seed_definition",
    "seed_context",
]
