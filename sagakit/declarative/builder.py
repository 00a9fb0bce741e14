"""``SagaBuilder``: puts a declarative saga together, node by node, and checks it.

The order is the order of the calls: each node (a step, a condition or a wait) starts once the
node added before it finished, as in python-saga-orchestrator and minos. Parallel branches are
asked for explicitly, with ``with builder.parallel(): ...``. ``depends_on`` chooses whose output
a node's input is made from; it never reorders anything.

What is obviously wrong (a step that is not a typed ``BaseStep``, a name used twice, a bad
option, an ``input_map`` that takes neither one argument nor two, a ``depends_on`` on a sibling
of the same parallel block) is refused when it is added; what depends on the whole definition
(references that are not this builder's, or that name a node added later) is refused by
:meth:`SagaBuilder.build`. Both raise :class:`~sagakit.errors.SagaDefinitionError`, before any
saga runs.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from ..durations import as_seconds
from ..errors import SagaDefinitionError, SagaError
from ..retry import RetryPolicy
from ..steps import OnExhausted
from .base_step import BaseStep, inspect_step
from .definition import SagaDefinition
from .nodes import (
    ConditionNode,
    Hook,
    InputContext,
    Mapper,
    Node,
    StepNode,
    StepRef,
    WaitNode,
    mapper_arity,
)

F = TypeVar("F", bound=Callable[..., Any])
_In = TypeVar("_In", bound=BaseModel)
_Out = TypeVar("_Out", bound=BaseModel)
_Dep = TypeVar("_Dep")

#: serial numbers of builders, so that a StepRef knows which builder made it
_serials = itertools.count(1)


class SagaBuilder:
    """Builds a :class:`SagaDefinition` from typed steps, run in the order they are added::

        builder = SagaBuilder()
        order = builder.add_step(step=CreateOrder())
        with builder.parallel():  # these two run at the same time, after CreateOrder
            builder.add_step(step=ReserveStock(), depends_on=order)
            builder.add_step(
                step=ChargeCard(),
                depends_on=order,
                input_map=lambda created: {"order_id": created.order_id, "amount": created.total},
                retry_policy=ExponentialRetry(max_attempts=5),
            )
        approval = builder.add_wait("approved", timeout=timedelta(days=1))
        builder.add_step(step=Ship(), input_map=lambda ctx: ctx.outputs["CreateOrder"])
        definition = builder.build()

    Without ``depends_on`` a node gets the saga's input (its ``input_map``: an
    :class:`InputContext`); with it, the output of the node it names.
    """

    def __init__(self) -> None:
        self._serial = next(_serials)
        self._nodes: list[Node] = []
        #: the parallel block of each node (None: a node of its own in the sequence)
        self._blocks: list[int | None] = []
        #: the parallel block being filled (``with builder.parallel()``), if any
        self._open_block: int | None = None
        self._block_count = 0
        #: the name of every step that may end up in the saga's output (branches included)
        self._output_names: set[str] = set()
        self._conditions = 0
        self._on_commit: Hook | None = None
        self._on_reject: Hook | None = None

    # typed forms: the returned reference carries the step's output type, and an input_map is
    # checked against the step's input and what it is given (the InputContext, or the output
    # of depends_on); the last form takes what the untyped API always took
    @overload
    def add_step(
        self,
        step: BaseStep[_In, _Out],
        *,
        input_map: Callable[[InputContext], _In | dict[str, Any]] | None = None,
        depends_on: None = None,
        retry_policy: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        on_exhausted: OnExhausted = "compensate",
    ) -> StepRef[_Out]: ...

    @overload
    def add_step(
        self,
        step: BaseStep[_In, _Out],
        *,
        input_map: Callable[[_Dep], _In | dict[str, Any]] | None = None,
        depends_on: StepRef[_Dep],
        retry_policy: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        on_exhausted: OnExhausted = "compensate",
    ) -> StepRef[_Out]: ...

    @overload
    def add_step(
        self,
        step: BaseStep[_In, _Out],
        *,
        input_map: Callable[[_Dep, InputContext], _In | dict[str, Any]],
        depends_on: StepRef[_Dep],
        retry_policy: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        on_exhausted: OnExhausted = "compensate",
    ) -> StepRef[_Out]: ...

    def add_step(
        self,
        step: BaseStep[Any, Any],
        *,
        input_map: Mapper | None = None,
        depends_on: StepRef[Any] | None = None,
        retry_policy: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        on_exhausted: OnExhausted = "compensate",
    ) -> StepRef[Any]:
        """Add a step, to run after every node added before it (or, inside ``with
        builder.parallel()``, as a branch of that block); return a reference to it for a
        later node's ``depends_on``.

        Args:
            step: an instance of a :class:`BaseStep` subclass.
            input_map: makes the step's input. Without ``depends_on`` it gets an
                :class:`InputContext` (``.initial_data``, ``.events``, ``.outputs``); with
                ``depends_on`` it gets the dependency's output (its model; a condition's output
                is a dict, a wait's its payload), or, when it takes two parameters, ``(output,
                context)``. It returns the input: a model or a dict. Without it, the step gets
                the saga's input (no ``depends_on``) or the dependency's output. It runs in the
                saga function on every replay: keep it a plain, pure function of its arguments.
            depends_on: the node (added earlier) whose output this step's input is made from.
                It does not change when the step runs: that is the order of the calls.
            retry_policy: how the step (and its compensation) is retried; default
                ``RetryPolicy()``. ``ExponentialRetry(...)`` is one.
            timeout: the longest one attempt may run (a longer one fails, and is retried).
            on_exhausted: ``"park"`` makes the saga wait, PARKED, for an operator when the
                step's retries run out, instead of rolling back (``"compensate"``).

        Raises:
            SagaDefinitionError: the step or an option is not usable (says which and why).
        """
        spec = inspect_step(step)
        what = f"step {spec.name!r}"
        two_args = _check_mapper(input_map, f"{what}: input_map", depends_on)
        self._check_depends_on(depends_on, what)
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise SagaDefinitionError(
                f"{what}: retry_policy must be a RetryPolicy (or ExponentialRetry), "
                f"got {retry_policy!r}"
            )
        if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
            raise SagaDefinitionError(
                f"{what}: timeout must be a positive timedelta, got {timeout!r}"
            )
        if on_exhausted not in ("compensate", "park"):
            raise SagaDefinitionError(
                f'{what}: on_exhausted must be "compensate" or "park", got {on_exhausted!r}'
            )
        self._claim_names({spec.name}, what)
        node = StepNode(
            spec.name,
            step,
            spec,
            input_map,
            depends_on,
            retry_policy,
            timeout,
            on_exhausted,
            two_args,
        )
        return self._add(node)

    def add_condition(
        self,
        predicate: Mapper,
        *,
        then: SagaDefinition,
        otherwise: SagaDefinition | None = None,
        depends_on: StepRef[Any] | None = None,
    ) -> StepRef[dict[str, Any]]:
        """Add a branch: when it is reached (after the nodes added before it), ``predicate``
        chooses ``then`` or ``otherwise`` (two built definitions), and the chosen one runs
        inline, in this saga (its steps join this saga's journal and rollback, in their own
        order).

        ``predicate`` gets what an ``input_map`` would (an :class:`InputContext` without
        ``depends_on``, else the dependency's output, or ``(output, context)`` when it takes
        two parameters); it must be a plain, pure function. The chosen branch's nodes without
        ``depends_on`` get this saga's input (no ``depends_on`` here) or the dependency's
        output. The returned reference's output, for the nodes that depend on it, is the
        branch's output (a dict of its steps' outputs; ``{}`` when the predicate was false and
        there is no ``otherwise``). The branch's steps' outputs also appear in the saga's
        output.

        Raises:
            SagaDefinitionError: a branch is not a built definition, has its own hooks, or
                shares a step name with this builder.
        """
        self._conditions += 1
        name = f"condition {self._conditions}"
        if predicate is None:
            raise SagaDefinitionError(f"{name}: the predicate must be a function, got None")
        two_args = _check_mapper(predicate, f"{name}: the predicate", depends_on)
        self._check_depends_on(depends_on, name)
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
        return self._add(ConditionNode(name, predicate, then, otherwise, depends_on, two_args))

    def add_wait(self, name: str, *, timeout: timedelta | float | None = None) -> StepRef[Any]:
        """Add a durable wait: when it is reached, the saga is suspended (nothing of it stays
        in memory, and it survives restarts) until the signal ``name`` arrives
        (``engine.signal(saga_id, name, payload)``; one sent earlier is kept for it) or its
        wait token is notified (``engine.notify(saga_id, snapshot.wait_token, event)``).

        Its output is the payload (or the notified event): what a node that ``depends_on``
        it gets, its entry under ``name`` in the saga's output and in later
        ``InputContext.outputs``; the event is also appended to later ``InputContext.events``
        as ``{"name": name, "payload": ...}``. Past ``timeout`` (a timedelta or seconds) the
        wait fails with the terminal :class:`~sagakit.SagaTimeoutError`: the saga rolls back.

        Raises:
            SagaDefinitionError: the name is empty or already used, or the timeout is not a
                positive duration.
        """
        what = f"add_wait({name!r})"
        if not isinstance(name, str) or not name.strip():
            raise SagaDefinitionError(
                f"{what}: the wait needs a name, the signal it waits for (a non-empty string)"
            )
        seconds: float | None = None
        if timeout is not None:
            try:
                seconds = as_seconds(timeout, f"{what}: timeout")
            except SagaError as exc:
                raise SagaDefinitionError(str(exc)) from None
            if seconds <= 0:
                raise SagaDefinitionError(
                    f"{what}: timeout must be positive, got {timeout!r}; leave it out to wait "
                    "without a limit"
                )
        self._claim_names({name}, what)
        return self._add(WaitNode(name, seconds))

    @contextlib.contextmanager
    def parallel(self) -> Iterator[None]:
        """Run the nodes added inside the ``with`` block as parallel branches (of
        ``saga.gather``), after every node added before the block; what is added after the
        block starts once every branch finished::

            with builder.parallel():
                builder.add_step(step=ReserveStock(), depends_on=order)
                builder.add_step(step=ChargeCard(), depends_on=order)

        When a branch fails for good, its siblings still run to their end; then the rollback
        undoes every branch's steps, and then what ran before the block. Branches do not see
        each other's outputs (``InputContext.outputs``), and one may not ``depends_on``
        another.

        Raises:
            SagaDefinitionError: a block inside a block, or a block with no node.
        """
        if self._open_block is not None:
            raise SagaDefinitionError(
                "builder.parallel() inside another builder.parallel() block: blocks do not "
                "nest; put the nodes in one block (each node is one branch), or run a "
                "sequence as one branch with add_condition(lambda _: True, then=...)"
            )
        self._block_count += 1
        block = self._block_count
        self._open_block = block
        try:
            yield
        finally:
            self._open_block = None
        if block not in self._blocks:
            raise SagaDefinitionError(
                "a builder.parallel() block added no node; add the parallel steps inside the "
                "`with` block (or remove it)"
            )

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
        """Check the whole definition and return it as an immutable :class:`SagaDefinition`.

        Raises:
            SagaDefinitionError: no node was added, a ``parallel()`` block is still open, or a
                ``depends_on`` refers to a node of another builder, to no node of this one, or
                to one added later (or to itself).
        """
        if self._open_block is not None:
            raise SagaDefinitionError(
                "build() was called inside a `with builder.parallel():` block; build once the "
                "block is closed"
            )
        if not self._nodes:
            raise SagaDefinitionError("a saga definition needs at least one step; add_step first")
        index = {node.name: i for i, node in enumerate(self._nodes)}
        parents: list[int | None] = []
        for position, node in enumerate(self._nodes):
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
            parent = index[ref.name]
            if parent >= position:
                itself = " itself" if parent == position else f" {ref.name!r}, added after it"
                raise SagaDefinitionError(
                    f"{_label(node)} depends on{itself}; depends_on must name a node added "
                    "earlier (nodes run in the order they are added): add the node it depends "
                    "on first, or drop depends_on"
                )
            block = self._blocks[position]
            if block is not None and self._blocks[parent] == block:
                raise SagaDefinitionError(_SIBLING.format(what=_label(node), ref=ref))
            parents.append(parent)
        stages: list[tuple[int, ...]] = []
        for position, block in enumerate(self._blocks):
            if block is not None and position > 0 and self._blocks[position - 1] == block:
                stages[-1] = (*stages[-1], position)
            else:
                stages.append((position,))
        blocks = tuple(b is not None for b in (self._blocks[s[0]] for s in stages))
        return SagaDefinition(
            tuple(self._nodes),
            tuple(parents),
            tuple(stages),
            blocks,
            self._on_commit,
            self._on_reject,
        )

    def _add(self, node: Node) -> StepRef[Any]:
        self._nodes.append(node)
        self._blocks.append(self._open_block)
        return StepRef._of(node.name, self._serial)

    def _check_depends_on(self, ref: object, what: str) -> None:
        if ref is None:
            return
        if not isinstance(ref, StepRef):
            raise SagaDefinitionError(
                f"{what}: depends_on must be a StepRef (what add_step returned), got {ref!r}"
            )
        if self._open_block is None or ref._owner not in (None, self._serial):
            return
        for node, block in zip(self._nodes, self._blocks, strict=True):
            if node.name == ref.name and block == self._open_block:
                raise SagaDefinitionError(_SIBLING.format(what=what, ref=ref))

    def _claim_names(self, names: set[str], what: str) -> None:
        """Step names are the keys of the saga's output: two steps that may both run must not
        share one."""
        taken = sorted(names & (self._output_names | {n.name for n in self._nodes}))
        if taken:
            raise SagaDefinitionError(
                f"{what}: the name(s) {', '.join(repr(n) for n in taken)} are already used "
                "in this definition; names key the saga's output and must be unique: set "
                "another `name` on the step (class attribute, or on the instance), or wait "
                "under another name"
            )
        self._output_names |= names

    def __repr__(self) -> str:
        return f"<SagaBuilder with {len(self._nodes)} node(s)>"


_SIBLING = (
    "{what} depends on {ref!r}, a node of the same parallel block: branches run at the same "
    "time, so neither has the other's output; add it after the `with builder.parallel():` "
    "block, or move the node it depends on before the block"
)


def _label(node: Node) -> str:
    if isinstance(node, ConditionNode):
        return node.name
    if isinstance(node, WaitNode):
        return f"wait {node.name!r}"
    return f"step {node.name!r}"


def _check_mapper(fn: Mapper | None, what: str, depends_on: object) -> bool:
    """Check an input_map or predicate; return whether it takes ``(out, ctx)``."""
    if fn is None:
        return False
    if not callable(fn):
        raise SagaDefinitionError(f"{what} must be a function, got {fn!r}")
    if inspect.iscoroutinefunction(fn):
        # it runs in the saga function, again on every replay: it must compute, not do
        raise SagaDefinitionError(
            f"{what} must be a plain function (it runs in the saga function on every replay); "
            "do asynchronous work in a step"
        )
    arity = mapper_arity(fn)
    if arity is None:
        raise SagaDefinitionError(
            f"{what} must take one argument (the dependency's output, or the InputContext "
            "without depends_on) or two, (out, ctx): the dependency's output and the "
            "InputContext"
        )
    if arity == 2 and depends_on is None:
        raise SagaDefinitionError(
            f"{what} takes two arguments (out, ctx), but there is no depends_on to give `out`; "
            "without depends_on it takes one argument, the InputContext (ctx.initial_data, "
            "ctx.events, ctx.outputs)"
        )
    return arity == 2


def _check_hook(fn: object, retry_policy: object, what: str, existing: Hook | None) -> None:
    if not callable(fn):
        raise SagaDefinitionError(f"{what} takes a function, got {fn!r}")
    if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
        raise SagaDefinitionError(
            f"{what}: retry_policy must be a RetryPolicy, got {retry_policy!r}"
        )
    if existing is not None:
        raise SagaDefinitionError(f"{what} is already set ({existing.fn!r}); set it once")
