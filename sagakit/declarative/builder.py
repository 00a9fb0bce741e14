"""``SagaBuilder``: puts a declarative saga together, step by step, and checks it.

What is obviously wrong (a step that is not a typed ``BaseStep``, a name used twice, a bad
option) is refused when it is added; what depends on the whole graph (references that are not
this builder's, cycles) is refused by :meth:`SagaBuilder.build`. Both raise
:class:`~sagakit.errors.SagaDefinitionError`, before any saga runs.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from ..errors import SagaDefinitionError
from ..retry import RetryPolicy
from ..steps import OnExhausted
from .base_step import BaseStep, inspect_step
from .definition import SagaDefinition
from .nodes import ConditionNode, Hook, Mapper, Node, StepNode, StepRef

F = TypeVar("F", bound=Callable[..., Any])

#: serial numbers of builders, so that a StepRef knows which builder made it
_serials = itertools.count(1)


class SagaBuilder:
    """Builds a :class:`SagaDefinition` from typed steps::

        builder = SagaBuilder()
        order = builder.add_step(step=CreateOrder())
        stock = builder.add_step(step=ReserveStock(), depends_on=order)
        payment = builder.add_step(
            step=ChargeCard(),
            depends_on=order,
            input_map=lambda created: {"order_id": created.order_id, "amount": created.total},
            retry_policy=ExponentialRetry(max_attempts=5),
        )
        definition = builder.build()

    ``stock`` and ``payment`` both depend only on ``order``: they run in parallel once it
    completed.
    """

    def __init__(self) -> None:
        self._serial = next(_serials)
        self._nodes: list[Node] = []
        #: the name of every step that may end up in the saga's output (branches included)
        self._output_names: set[str] = set()
        self._conditions = 0
        self._on_commit: Hook | None = None
        self._on_reject: Hook | None = None

    def add_step(
        self,
        step: BaseStep[Any, Any],
        *,
        input_map: Callable[[Any], Any] | None = None,
        depends_on: StepRef | None = None,
        retry_policy: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        on_exhausted: OnExhausted = "compensate",
    ) -> StepRef:
        """Add a step; return a reference to it for ``depends_on``.

        Args:
            step: an instance of a :class:`BaseStep` subclass.
            input_map: makes the step's input. A root step's (no ``depends_on``) gets an
                :class:`InputContext` (``.initial_data``, ``.events``); a dependent step's gets
                the dependency's output (its model; a condition's output is a dict). It returns
                the input: a model or a dict. Without it, a root step gets the saga's input and
                a dependent step the dependency's output. It runs in the saga function on
                every replay: keep it a plain, pure function of its argument.
            depends_on: the step (or condition) that must complete before this one starts.
            retry_policy: how the step (and its compensation) is retried; default
                ``RetryPolicy()``. ``ExponentialRetry(...)`` is one.
            timeout: the longest one attempt may run (a longer one fails, and is retried).
            on_exhausted: ``"park"`` makes the saga wait, PARKED, for an operator when the
                step's retries run out, instead of rolling back (``"compensate"``).

        Raises:
            SagaDefinitionError: the step or an option is not usable (says which and why).
        """
        spec = inspect_step(step)
        _check_mapper(input_map, f"step {spec.name!r}: input_map")
        _check_ref(depends_on, f"step {spec.name!r}")
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise SagaDefinitionError(
                f"step {spec.name!r}: retry_policy must be a RetryPolicy (or ExponentialRetry), "
                f"got {retry_policy!r}"
            )
        if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
            raise SagaDefinitionError(
                f"step {spec.name!r}: timeout must be a positive timedelta, got {timeout!r}"
            )
        if on_exhausted not in ("compensate", "park"):
            raise SagaDefinitionError(
                f'step {spec.name!r}: on_exhausted must be "compensate" or "park", '
                f"got {on_exhausted!r}"
            )
        self._claim_names({spec.name}, f"step {spec.name!r}")
        node = StepNode(
            spec.name, step, spec, input_map, depends_on, retry_policy, timeout, on_exhausted
        )
        return self._add(node)

    def add_condition(
        self,
        predicate: Callable[[Any], bool],
        *,
        then: SagaDefinition,
        otherwise: SagaDefinition | None = None,
        depends_on: StepRef | None = None,
    ) -> StepRef:
        """Add a branch: when it is reached, ``predicate`` chooses ``then`` or ``otherwise``
        (two built definitions), and the chosen one runs inline, in this saga (its steps join
        this saga's journal and rollback).

        ``predicate`` gets what an ``input_map`` would (an :class:`InputContext` at the root,
        else the dependency's output); it must be a plain, pure function. The chosen branch's
        root steps get this saga's input (root condition) or the dependency's output. The
        returned reference's output, for the steps that depend on it, is the branch's output
        (a dict of its steps' outputs; ``{}`` when the predicate was false and there is no
        ``otherwise``). The branch's steps' outputs also appear in the saga's output.

        Raises:
            SagaDefinitionError: a branch is not a built definition, has its own hooks, or
                shares a step name with this builder.
        """
        self._conditions += 1
        name = f"condition {self._conditions}"
        _check_mapper(predicate, f"{name}: the predicate", required=True)
        _check_ref(depends_on, name)
        names: set[str] = set()
        for label, branch in (("then", then), ("otherwise", otherwise)):
            if branch is None and label == "otherwise":
                continue
            if not isinstance(branch, SagaDefinition):
                raise SagaDefinitionError(
                    f"{name}: {label}= must be a built SagaDefinition (SagaBuilder().build()), "
                    f"got {branch!r}"
                )
            if branch.has_hooks:
                # a branch runs inline, inside this saga: its commit and rejection are this
                # saga's, so hooks there would never mean what they say
                raise SagaDefinitionError(
                    f"{name}: the {label} branch has on_commit/on_reject; a branch runs inside "
                    "this saga, so set them on this builder instead"
                )
            names.update(branch.step_names)  # then and otherwise never both run
        self._claim_names(names, name)
        return self._add(ConditionNode(name, predicate, then, otherwise, depends_on))

    def on_commit(self, fn: F, *, retry_policy: RetryPolicy | None = None) -> F:
        """Run ``fn(output)`` once after every step succeeded, as the saga's last step (so
        journaled: run once, retried when it fails). ``output`` is the saga's output (step
        name -> output JSON). ``fn`` may be ``async def`` or plain. If it fails for good, the
        saga rolls back like after any failed step. Returns ``fn`` (usable as a decorator)."""
        _check_hook(fn, retry_policy, "on_commit", self._on_commit)
        self._on_commit = Hook(fn, retry_policy)
        return fn

    def on_reject(self, fn: F, *, retry_policy: RetryPolicy | None = None) -> F:
        """Run ``fn(error)`` once after a rollback finished (every compensation ran), journaled
        and retried like a step. ``error`` is the :class:`~sagakit.ErrorInfo` of the failure
        that caused the rollback (``.type``, ``.message``, ``.step``). ``fn`` may be
        ``async def`` or plain. Returns ``fn`` (usable as a decorator)."""
        _check_hook(fn, retry_policy, "on_reject", self._on_reject)
        self._on_reject = Hook(fn, retry_policy)
        return fn

    def build(self) -> SagaDefinition:
        """Check the whole graph and return it as an immutable :class:`SagaDefinition`.

        Raises:
            SagaDefinitionError: no step was added, a ``depends_on`` refers to a step of
                another builder or to no step of this one, or dependencies form a cycle.
        """
        if not self._nodes:
            raise SagaDefinitionError("a saga definition needs at least one step; add_step first")
        index = {node.name: i for i, node in enumerate(self._nodes)}
        parents: list[int | None] = []
        for node in self._nodes:
            ref = node.depends_on
            if ref is None:
                parents.append(None)
                continue
            if ref._owner is not None and ref._owner != self._serial:
                raise SagaDefinitionError(
                    f"{_label(node)} depends on {ref!r}, a step of another SagaBuilder; "
                    "depends_on takes a StepRef returned by this builder"
                )
            if ref.name not in index:
                raise SagaDefinitionError(
                    f"{_label(node)} depends on {ref!r}, which is no step of this builder "
                    f"(its steps: {', '.join(repr(n) for n in index)})"
                )
            parents.append(index[ref.name])
        _check_acyclic(self._nodes, parents)
        return SagaDefinition(tuple(self._nodes), tuple(parents), self._on_commit, self._on_reject)

    def _add(self, node: Node) -> StepRef:
        self._nodes.append(node)
        return StepRef._of(node.name, self._serial)

    def _claim_names(self, names: set[str], what: str) -> None:
        """Step names are the keys of the saga's output: two steps that may both run must not
        share one."""
        taken = sorted(names & (self._output_names | {n.name for n in self._nodes}))
        if taken:
            raise SagaDefinitionError(
                f"{what}: the step name(s) {', '.join(repr(n) for n in taken)} are already used "
                "in this definition; names key the saga's output and must be unique: set "
                "another `name` on the step (class attribute, or on the instance)"
            )
        self._output_names |= names

    def __repr__(self) -> str:
        return f"<SagaBuilder with {len(self._nodes)} step(s)>"


def _label(node: Node) -> str:
    return node.name if isinstance(node, ConditionNode) else f"step {node.name!r}"


def _check_mapper(fn: Mapper | None, what: str, *, required: bool = False) -> None:
    if fn is None and not required:
        return
    if not callable(fn):
        raise SagaDefinitionError(f"{what} must be a function, got {fn!r}")
    if inspect.iscoroutinefunction(fn):
        # it runs in the saga function, again on every replay: it must compute, not do
        raise SagaDefinitionError(
            f"{what} must be a plain function (it runs in the saga function on every replay); "
            "do asynchronous work in a step"
        )


def _check_ref(ref: object, what: str) -> None:
    if ref is not None and not isinstance(ref, StepRef):
        raise SagaDefinitionError(
            f"{what}: depends_on must be a StepRef (what add_step returned), got {ref!r}"
        )


def _check_hook(fn: object, retry_policy: object, what: str, existing: Hook | None) -> None:
    if not callable(fn):
        raise SagaDefinitionError(f"{what} takes a function, got {fn!r}")
    if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
        raise SagaDefinitionError(
            f"{what}: retry_policy must be a RetryPolicy, got {retry_policy!r}"
        )
    if existing is not None:
        raise SagaDefinitionError(f"{what} is already set ({existing.fn!r}); set it once")


def _check_acyclic(nodes: list[Node], parents: list[int | None]) -> None:
    """Each node has at most one parent, so a cycle is a walk up the parents that comes back
    to where it started."""
    for start in range(len(nodes)):
        seen: list[int] = []
        current: int | None = start
        while current is not None:
            if current in seen:
                loop = [*seen[seen.index(current) :], current]
                path = " -> ".join(repr(nodes[i].name) for i in loop)
                raise SagaDefinitionError(
                    f"the dependencies form a cycle: {path} (each depends on the next), so none "
                    "of these steps could ever start; depend only on steps added before"
                )
            seen.append(current)
            current = parents[current]
