"""minos's saga definitions: ``Saga().local_step(fn).on_failure(fn)``,
``.remote_step(fn).on_success(fn).on_error(fn).on_failure(fn)``,
``.conditional_step().if_then(condition, saga).else_then(saga)``, ``.commit()``.

A definition is plain data about callables; :mod:`.compiled` turns a committed one into a
sagakit workflow. Its ``raw`` names each callable by ``module.qualname`` (as minos does), so
that another process rebuilds the same definition from a stored execution.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .exceptions import (
    AlreadyCommittedException,
    EmptySagaException,
    MultipleOnExecuteException,
    SagaException,
    SagaNotCommittedException,
    UndefinedOnExecuteException,
)

Callback = Callable[..., Any]
StepT = TypeVar("StepT", bound="SagaStep")


class SagaStep:
    """A step of a :class:`Saga`. Adding a step or committing from a step goes on with its
    saga, so that definitions chain: ``Saga().local_step(a).remote_step(b).commit()``."""

    callbacks: tuple[str, ...] = ()

    def __init__(self, saga: Saga | None = None) -> None:
        self.saga = saga
        self.on_execute_operation: Callback | None = None
        self.on_failure_operation: Callback | None = None

    def on_execute(self, callback: Callback) -> SagaStep:
        if self.on_execute_operation is not None:
            raise MultipleOnExecuteException(
                f"this step already has on_execute {_name(self.on_execute_operation)}; add "
                "another step for the second callback"
            )
        self.on_execute_operation = _callable(callback, "on_execute")
        return self

    def on_failure(self, callback: Callback) -> SagaStep:
        self.on_failure_operation = _callable(callback, "on_failure")
        return self

    def local_step(self, step: Callback | LocalSagaStep | None = None) -> LocalSagaStep:
        return self._saga().local_step(step)

    def remote_step(self, step: Callback | RemoteSagaStep | None = None) -> RemoteSagaStep:
        return self._saga().remote_step(step)

    def conditional_step(self, step: ConditionalSagaStep | None = None) -> ConditionalSagaStep:
        return self._saga().conditional_step(step)

    def commit(self, callback: Callback | None = None) -> Saga:
        return self._saga().commit(callback)

    def validate(self) -> None:
        if self.on_execute_operation is None:
            raise UndefinedOnExecuteException(
                f"a {type(self).__name__} has no on_execute callback: give one, "
                ".local_step(fn) or .remote_step(fn)"
            )

    @property
    def raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"cls": type(self).__name__}
        for part in self.callbacks:
            callback = getattr(self, f"{part}_operation")
            raw[part] = None if callback is None else _name(callback)
        return raw

    def _saga(self) -> Saga:
        if self.saga is None:
            raise SagaException("this step belongs to no Saga: add it with saga.local_step(...)")
        return self.saga


class LocalSagaStep(SagaStep):
    """A step run in this process: ``on_execute(context) -> SagaContext | None``, undone by
    ``on_failure(context) -> SagaContext | None``."""

    callbacks = ("on_execute", "on_failure")


class RemoteSagaStep(SagaStep):
    """A step that asks another service: ``on_execute(context) -> SagaRequest``; the reply goes
    to ``on_success(context, response)`` or ``on_error(context, response)``, each returning the
    next context; ``on_failure(context) -> SagaRequest`` asks the service to undo it."""

    callbacks = ("on_execute", "on_success", "on_error", "on_failure")

    def __init__(self, saga: Saga | None = None) -> None:
        super().__init__(saga)
        self.on_success_operation: Callback | None = None
        self.on_error_operation: Callback | None = None

    def on_success(self, callback: Callback) -> RemoteSagaStep:
        self.on_success_operation = _callable(callback, "on_success")
        return self

    def on_error(self, callback: Callback) -> RemoteSagaStep:
        self.on_error_operation = _callable(callback, "on_error")
        return self


class IfThenAlternative:
    """A branch of a :class:`ConditionalSagaStep`: ``saga`` runs if ``condition(context)``
    (sync or async) is true."""

    def __init__(self, condition: Callback, saga: Saga) -> None:
        self.condition = _callable(condition, "if_then's condition")
        self.saga = _branch(saga, "if_then")

    def validate(self) -> None:
        _branch(self.saga, "if_then")

    @property
    def raw(self) -> dict[str, Any]:
        return {"condition": _name(self.condition), "saga": self.saga.raw}

    @classmethod
    def from_raw(cls, raw: dict[str, Any] | IfThenAlternative) -> IfThenAlternative:
        if isinstance(raw, IfThenAlternative):
            return raw
        return cls(import_callable(raw["condition"]), Saga.from_raw(raw["saga"]))


class ElseThenAlternative:
    """The branch of a :class:`ConditionalSagaStep` that runs when no condition is true."""

    def __init__(self, saga: Saga) -> None:
        self.saga = _branch(saga, "else_then")

    def validate(self) -> None:
        _branch(self.saga, "else_then")

    @property
    def raw(self) -> dict[str, Any]:
        return {"saga": self.saga.raw}

    @classmethod
    def from_raw(cls, raw: dict[str, Any] | ElseThenAlternative) -> ElseThenAlternative:
        if isinstance(raw, ElseThenAlternative):
            return raw
        return cls(Saga.from_raw(raw["saga"]))


class ConditionalSagaStep(SagaStep):
    """A step that runs one of several committed sagas inline: the first ``if_then`` whose
    condition is true, else the ``else_then`` saga (or nothing).

    The chosen branch's steps are steps of this execution: they get its context, their result
    is the next context, and they are rolled back with it. The choice is journaled, so a replay
    takes the same branch even if what the condition read has changed since.
    """

    def __init__(
        self,
        if_then: list[IfThenAlternative] | None = None,
        else_then: ElseThenAlternative | None = None,
        saga: Saga | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(saga)
        self.if_then_alternatives: list[IfThenAlternative] = list(if_then or ())
        self.else_then_alternative: ElseThenAlternative | None = else_then

    def if_then(self, condition: Callback, saga: Saga) -> ConditionalSagaStep:
        """Add a branch: ``saga`` runs if ``condition(context)`` is true (tried in order)."""
        self.if_then_alternatives.append(IfThenAlternative(condition, saga))
        return self

    def else_then(self, saga: Saga) -> ConditionalSagaStep:
        """Set the branch that runs when no ``if_then`` condition is true."""
        if self.else_then_alternative is not None:
            raise SagaException("this conditional step has an else_then already: give one only")
        self.else_then_alternative = ElseThenAlternative(saga)
        return self

    def on_execute(self, callback: Callback) -> SagaStep:
        raise SagaException(
            "a conditional step has no on_execute: its branches' steps have theirs "
            "(.if_then(condition, Saga().local_step(fn).commit()))"
        )

    def on_failure(self, callback: Callback) -> SagaStep:
        raise SagaException(
            "a conditional step has no on_failure: its branches' steps are rolled back by "
            "their own on_failure"
        )

    @property
    def branches(self) -> dict[str, Saga]:
        """The branches by their journal label: ``if0``, ``if1``, …, ``else``."""
        found = {f"if{i}": alt.saga for i, alt in enumerate(self.if_then_alternatives)}
        if self.else_then_alternative is not None:
            found["else"] = self.else_then_alternative.saga
        return found

    def validate(self) -> None:
        if not self.if_then_alternatives and self.else_then_alternative is None:
            raise SagaException(
                "a conditional step needs a branch: .if_then(condition, saga) or .else_then(saga)"
            )
        for alternative in self.if_then_alternatives:
            alternative.validate()
        if self.else_then_alternative is not None:
            self.else_then_alternative.validate()

    @property
    def raw(self) -> dict[str, Any]:
        otherwise = self.else_then_alternative
        return {
            "cls": type(self).__name__,
            "if_then": [alternative.raw for alternative in self.if_then_alternatives],
            "else_then": None if otherwise is None else otherwise.raw,
        }

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> ConditionalSagaStep:
        otherwise = raw.get("else_then")
        return cls(
            [IfThenAlternative.from_raw(alternative) for alternative in raw.get("if_then") or ()],
            None if otherwise is None else ElseThenAlternative.from_raw(otherwise),
        )


class Saga:
    """A saga definition: its steps in order. Execute it once committed."""

    def __init__(self, *, steps: list[SagaStep] | None = None, committed: bool = False) -> None:
        self.steps: list[SagaStep] = []
        self.committed = False
        for step in steps or ():
            self._add(step)
        if committed:
            self.commit()

    def local_step(self, step: Callback | LocalSagaStep | None = None) -> LocalSagaStep:
        """Add a local step (``step`` is its on_execute callback, or a LocalSagaStep)."""
        if isinstance(step, LocalSagaStep):
            return self._add(step)
        added = self._add(LocalSagaStep())
        if step is not None:
            added.on_execute(step)
        return added

    def remote_step(self, step: Callback | RemoteSagaStep | None = None) -> RemoteSagaStep:
        """Add a remote step (``step`` is its on_execute callback, or a RemoteSagaStep)."""
        if isinstance(step, RemoteSagaStep):
            return self._add(step)
        added = self._add(RemoteSagaStep())
        if step is not None:
            added.on_execute(step)
        return added

    def conditional_step(self, step: ConditionalSagaStep | None = None) -> ConditionalSagaStep:
        """Add a conditional step; give it branches with ``.if_then(condition, saga)`` and
        ``.else_then(saga)`` (each a committed Saga)."""
        return self._add(step if step is not None else ConditionalSagaStep())

    def commit(self, callback: Callback | None = None) -> Saga:
        """Close the definition (a ``callback`` is added as a last local step)."""
        if callback is not None:
            self.local_step(callback)
        if not self.steps:
            raise EmptySagaException("a Saga needs at least one step before commit()")
        for step in self.steps:
            step.validate()
        self.committed = True
        return self

    @property
    def raw(self) -> dict[str, Any]:
        return {"committed": self.committed, "steps": [step.raw for step in self.steps]}

    @classmethod
    def from_raw(cls, raw: dict[str, Any] | Saga) -> Saga:
        """Rebuild a definition, importing each callback by its ``module.qualname``."""
        if isinstance(raw, Saga):
            return raw
        saga = cls()
        for step_raw in raw["steps"]:
            if step_raw.get("cls") == "ConditionalSagaStep":
                saga._add(ConditionalSagaStep.from_raw(step_raw))
                continue
            kinds: dict[str, type[SagaStep]] = {
                "LocalSagaStep": LocalSagaStep,
                "RemoteSagaStep": RemoteSagaStep,
            }
            kind = kinds.get(step_raw.get("cls", ""))
            if kind is None:
                raise SagaException(f"unknown step kind {step_raw.get('cls')!r} in a saga's raw")
            step = saga._add(kind())
            for part in kind.callbacks:
                name = step_raw.get(part)
                if name is not None:
                    setattr(step, f"{part}_operation", import_callable(name))
        if raw.get("committed"):
            saga.commit()
        return saga

    @property
    def importable(self) -> bool:
        """True when every callback is a module-level function (rebuildable in any process)."""
        return all("<" not in name for name in _callback_names(self.raw["steps"]))

    @property
    def workflow_name(self) -> str:
        """The name of the sagakit workflow this definition runs as: the same in every process
        for the same callbacks (a definition with lambdas or nested functions gets a name of
        its own, valid in this process only)."""
        text = json.dumps(self.raw["steps"], sort_keys=True)
        name = f"minos-saga-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        return name if self.importable else f"{name}-{id(self):x}"

    def _add(self, step: StepT) -> StepT:
        if self.committed:
            raise AlreadyCommittedException(
                "this Saga is committed: define every step before commit()"
            )
        step.saga = self
        self.steps.append(step)
        return step

    def __repr__(self) -> str:
        return f"<Saga {len(self.steps)} steps{' committed' if self.committed else ''}>"


def _branch(saga: Any, what: str) -> Saga:
    if not isinstance(saga, Saga):
        raise SagaException(f"{what} takes a Saga (a committed one) as its branch, got {saga!r}")
    if not saga.committed:
        raise SagaNotCommittedException(
            f"the branch of {what} is not committed: call .commit() on its Saga first"
        )
    return saga


def _callback_names(raw: Any) -> Iterator[str]:
    """Every callback name in a definition's raw form (branches included)."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            if isinstance(value, str) and key != "cls":
                yield value
            elif isinstance(value, dict | list):
                yield from _callback_names(value)
    elif isinstance(raw, list):
        for value in raw:
            yield from _callback_names(value)


def _callable(callback: Any, what: str) -> Callback:
    if not callable(callback):
        raise SagaException(f"{what} takes a function, got {callback!r}")
    return callback  # type: ignore[no-any-return]


def _name(callback: Callback) -> str:
    module = getattr(callback, "__module__", None) or "?"
    qualname = getattr(callback, "__qualname__", None) or repr(callback)
    return f"{module}.{qualname}"


def import_callable(name: str) -> Callback:
    """The callable named ``module.qualname``, imported."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                found = getattr(found, attribute)
        except AttributeError:
            break
        if callable(found):
            return found  # type: ignore[no-any-return]
    raise SagaException(
        f"cannot import the saga callback {name!r}: a definition rebuilt in another process "
        "(a stored execution, a restart) needs its callbacks to be module-level functions"
    )


__all__ = [
    "ConditionalSagaStep",
    "ElseThenAlternative",
    "IfThenAlternative",
    "LocalSagaStep",
    "RemoteSagaStep",
    "Saga",
    "SagaStep",
    "import_callable",
]
