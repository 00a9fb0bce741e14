"""restate-saga's ``SagaContext`` (``saga.ctx``, ``saga.compensations``) over sagakit's, and the
adapters that give restate-saga's function shapes to sagakit's definitions."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn, SupportsIndex

from ...context import SagaContext as NativeSagaContext
from ...errors import SagaError
from ...steps import SagaStep
from ..restate import Context

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .options import WorkflowRetryPolicy


class StepDefaults:
    """A workflow's retry policy for the steps that give none (restate-saga's service-level
    ``retry_policy``): each such step is run as a copy with the policy, made once."""

    __slots__ = ("_copies", "_policy")

    def __init__(self, policy: WorkflowRetryPolicy):
        self._policy = policy
        self._copies: dict[int, tuple[SagaStep[Any], SagaStep[Any]]] = {}

    def apply(self, step: SagaStep[Any]) -> SagaStep[Any]:
        if step.options.retry is not None:
            return step
        known = self._copies.get(id(step))
        if known is not None and known[0] is step:
            return known[1]
        options = replace(
            step.options,
            retry=self._policy.to_retry_policy(),
            on_exhausted="park" if self._policy.parks else step.options.on_exhausted,
        )
        copy: SagaStep[Any] = SagaStep(
            step.name, step.run, step.compensate, options, strict=step.strict
        )
        self._copies[id(step)] = (step, copy)
        return copy


class CompensationStack(list[str]):
    """The names of the steps whose compensations are registered, oldest first (a copy).

    sagakit keeps the stack in the saga's journal, where a crash cannot lose it: it cannot be
    pushed to by hand. An undo is registered by a step with a ``compensate``."""

    def _refuse(self, *args: object) -> NoReturn:
        raise SagaError(
            "saga.compensations is read-only on sagakit: the compensation stack lives in the "
            "journal. Register an undo with a step: create_saga_step(name, run=..., "
            "compensate=undo) and call it in the saga"
        )

    def append(self, item: str) -> NoReturn:
        self._refuse(item)

    def extend(self, items: Iterable[str]) -> NoReturn:
        self._refuse(items)

    def insert(self, index: SupportsIndex, item: str) -> NoReturn:
        self._refuse(index, item)


class SagaContext(NativeSagaContext):
    """restate-saga's ``SagaContext``: sagakit's :class:`~sagakit.SagaContext` (every step,
    wait and child saga works on it as usual) with ``.ctx``, the restate-style context of the
    workflow, object or long workflow, and ``.compensations``, the registered compensations."""

    __slots__ = ("_defaults", "_restate_ctx")

    _restate_ctx: Context
    _defaults: StepDefaults | None

    @classmethod
    def of(
        cls,
        saga: NativeSagaContext,
        ctx: Callable[[SagaContext], Context] | None = None,
        defaults: StepDefaults | None = None,
    ) -> SagaContext:
        """The restate-saga view of ``saga`` (itself, if it is one and nothing changes)."""
        if isinstance(saga, SagaContext) and ctx is None and defaults is None:
            return saga
        view = cls.__new__(cls)
        for klass in type(saga).__mro__:
            for slot in getattr(klass, "__slots__", ()):
                if slot not in ("_restate_ctx", "_defaults") and hasattr(saga, slot):
                    object.__setattr__(view, slot, getattr(saga, slot))
        inherited = saga._defaults if isinstance(saga, SagaContext) else None
        view._defaults = defaults or inherited
        view._restate_ctx = ctx(view) if ctx is not None else Context(view)
        return view

    @property
    def ctx(self) -> Context:
        """The restate-style context (``restate.Context``, ``restate.ObjectContext`` in a
        virtual object, ``restate.WorkflowContext`` in a long workflow)."""
        return self._restate_ctx

    @property
    def compensations(self) -> CompensationStack:
        """The names of the steps whose compensations are registered now, oldest first."""
        registered = getattr(self._driver, "_compensations", {})
        found = [c[1] if isinstance(c, tuple) else c for c in registered.values()]
        return CompensationStack(c.step.name for c in sorted(found, key=lambda c: c.seq))

    def _call_step(self, step: SagaStep[Any], inp: Any) -> Awaitable[Any]:
        if self._defaults is not None:
            step = self._defaults.apply(step)
        return super()._call_step(step, inp)


def dressed(
    wrapper: Callable[..., Any], fn: Callable[..., Any], params: list[inspect.Parameter]
) -> Callable[..., Any]:
    """``wrapper`` made to look like ``fn`` with only ``params``: sagakit reads a definition's
    parameters and type hints (the input's pydantic model) from what it is given."""
    functools.update_wrapper(wrapper, fn)
    hints = dict(getattr(fn, "__annotations__", {}))
    kept = {p.name: hints[p.name] for p in params if p.name in hints}
    if "return" in hints:
        kept["return"] = hints["return"]
    wrapper.__annotations__ = kept
    signature = inspect.signature(fn)
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


def positional(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    """``fn``'s positional parameters."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in inspect.signature(fn).parameters.values() if p.kind in kinds]


def optional_input(name: str = "input_val") -> inspect.Parameter:
    """The input parameter of a handler written without one."""
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)


def require_async(fn: Callable[..., Any], what: str) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{what}: the function must be an `async def`, got {fn!r}")
