"""How a declarative definition runs: each ``BaseStep`` becomes an ordinary strict saga step,
and the definition becomes one saga function that the engine runs (and replays) like any other.

* The nodes run in the order they were added, each once the one before it finished (so a
  failing step stops the saga before anything after it acts). A ``parallel()`` block runs its
  nodes as branches of ``saga.gather`` (numbered by their order in the block, so a replay finds
  them). ``depends_on`` only chooses whose output a node's input is made from.
* A wait (``add_wait``) is ``saga.wait_for_signal``: answered by the signal of its name or a
  notify of its token, journaled, and suspending the saga meanwhile.
* What the nodes see besides their dependency (``InputContext``: the events, the earlier
  outputs) changes only in the saga function, at points fixed by the definition: the journaled
  list of signals is read before the first stage that needs it, a wait adds its event when it
  completes, and a parallel block's branches each see the state from before the block, merged
  in block order after it. So a replay builds the same contexts whatever the timing.
* ``BaseStep.compensate(inp, out)`` needs the output, so each step is *strict*: its undo is
  registered only once it succeeded, with ``{"inp": ..., "out": ...}`` as compensation data.
* The saga's output maps the name of every step that ran to its output (JSON), in the order
  the steps were added, whatever order they finished in.
* ``on_commit`` is a last step of the saga; ``on_reject`` is the workflow's after-rollback
  step. Both are journaled: run once, retried when they fail.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .. import serde
from ..errors import ErrorInfo, OutputNotSerializableError, SagaDefinitionError, SagaValidationError
from ..steps import SagaStep, SagaStepOptions, StepResponse, create_saga_step_strict
from ..transactions import create_saga_transaction
from ..workflows import SagaWorkflow, SagaWorkflowOptions
from .base_step import running_context
from .nodes import ConditionNode, Hook, InputContext, Mapper, Node, StepNode, WaitNode

if TYPE_CHECKING:
    from ..context import SagaContext
    from .definition import SagaDefinition

#: journal names of the hook steps
ON_COMMIT = "on_commit"
ON_REJECT = "on_reject"


@dataclass(frozen=True, slots=True)
class Compiled:
    """The saga steps a definition runs: one per step node (None for a condition or a wait),
    and the hooks'; and where the list of signals is needed."""

    steps: tuple[SagaStep[Any] | None, ...]
    commit: SagaStep[Any] | None
    reject: SagaStep[Any] | None
    #: per node: it (or a node of its branches) builds an InputContext, or is a wait, so the
    #: signals must have been read before it starts
    demands: tuple[bool, ...]
    #: some node here (branches included) builds an InputContext
    reads_events: bool


def compile_nodes(
    nodes: tuple[Node, ...], on_commit: Hook | None, on_reject: Hook | None
) -> Compiled:
    """Make the saga steps of a definition (once, when it is built)."""
    steps = tuple(_compile_step(n) if isinstance(n, StepNode) else None for n in nodes)
    commit = None if on_commit is None else _compile_hook(ON_COMMIT, on_commit, _copy)
    reject = None if on_reject is None else _compile_hook(ON_REJECT, on_reject, _error_info)
    demands = tuple(_reads(n) or isinstance(n, WaitNode) or _branch_demands(n) for n in nodes)
    reads = any(_reads(n) or _branch_reads(n) for n in nodes)
    return Compiled(steps, commit, reject, demands, reads)


def _reads(node: Node) -> bool:
    """Whether the node itself builds an InputContext."""
    if isinstance(node, WaitNode):
        return False
    mapper = node.input_map if isinstance(node, StepNode) else node.predicate
    return mapper is not None and (node.depends_on is None or node.two_args)


def _branches(node: Node) -> list[SagaDefinition]:
    if not isinstance(node, ConditionNode):
        return []
    return [b for b in (node.then, node.otherwise) if b is not None]


def _branch_demands(node: Node) -> bool:
    return any(any(b.compiled.demands) for b in _branches(node))


def _branch_reads(node: Node) -> bool:
    return any(b.compiled.reads_events for b in _branches(node))


# -- steps -----------------------------------------------------------------------------------


def _compile_step(node: StepNode) -> SagaStep[Any]:
    step, spec = node.step, node.spec
    name = spec.name
    in_type = serde.Converter(spec.input_model, f"input of step {name!r}")
    out_type = serde.Converter(spec.output_model, f"output of step {name!r}")

    async def run(ctx: SagaContext, inp: Any) -> Any:
        # a SagaValidationError is a SagaError: terminal, as retrying cannot fix the data
        value = in_type.validate(inp)
        token = running_context.set(ctx)
        try:
            pending = step.execute(value)
            if not inspect.isawaitable(pending):
                raise SagaDefinitionError(
                    f"step {name!r}: execute returned {pending!r} instead of an awaitable"
                )
            result = await pending
        finally:
            running_context.reset(token)
        # the work is done: a wrong output fails the step for good (a retry would repeat it)
        out = out_type.validate(result)
        out_json = _dump(out, f"the output of step {name!r}")
        if not spec.compensates:
            return out_json
        undo_data = {"inp": _dump(value, f"the input of step {name!r}"), "out": out_json}
        return StepResponse(out_json, compensation_data=undo_data)

    async def undo(data: Any) -> None:
        await step.compensate(in_type.validate(data["inp"]), out_type.validate(data["out"]))

    options = SagaStepOptions(
        retry=node.retry_policy, timeout=node.timeout, on_exhausted=node.on_exhausted
    )
    if getattr(step, "transactional", False):
        # its compensation gets the transaction's context, for BaseStep.connection
        async def undo_in_transaction(ctx: SagaContext, data: Any) -> None:
            token = running_context.set(ctx)
            try:
                await undo(data)
            finally:
                running_context.reset(token)

        undo_tx = undo_in_transaction if spec.compensates else None
        return create_saga_transaction(name, run, undo_tx, options)
    return create_saga_step_strict(name, run, undo if spec.compensates else None, options)


def _dump(model: BaseModel, what: str) -> Any:
    try:
        return model.model_dump(mode="json")
    except Exception as exc:  # a model with arbitrary (non-JSON) field types
        raise OutputNotSerializableError(
            f"{what} cannot be written as JSON ({type(exc).__name__}: {exc}); use JSON-able "
            "field types in the step's models",
            error_type="OutputNotSerializableError",
        ) from exc


def _compile_hook(name: str, hook: Hook, convert: Callable[[Any], Any]) -> SagaStep[Any]:
    fn = hook.fn

    async def run(ctx: SagaContext, inp: Any) -> None:
        result = fn(convert(inp))
        if inspect.isawaitable(result):
            await result

    return create_saga_step_strict(name, run, None, SagaStepOptions(retry=hook.retry_policy))


def _copy(value: Any) -> Any:
    # the hook gets its own copy: what it does to it must not change the saga's output
    return serde.loads(serde.dumps(value))


def _error_info(value: Any) -> ErrorInfo:
    return ErrorInfo.from_json(value if isinstance(value, dict) else {})


# -- the saga function -----------------------------------------------------------------------


@dataclass(slots=True)
class _Seen:
    """What the nodes after a point can see besides their dependency: the outputs of the steps
    that completed (name -> (JSON, the model to validate it into, or None for a wait's
    payload)) and the events (None: the signals are not read yet)."""

    outputs: dict[str, tuple[Any, type[BaseModel] | None]]
    events: list[dict[str, Any]] | None

    def fork(self) -> _Seen:
        events = None if self.events is None else list(self.events)
        return _Seen(dict(self.outputs), events)

    def join(self, branches: list[_Seen]) -> None:
        """Take in what each branch of a parallel block added, in block order."""
        known = 0 if self.events is None else len(self.events)
        for branch in branches:
            for name, value in branch.outputs.items():
                self.outputs.setdefault(name, value)
            if branch.events is not None:
                self.events = (self.events or []) + branch.events[known:]


@dataclass(frozen=True, slots=True)
class _Result:
    """A node's output: ``plain`` (JSON) is the input of a dependent step without an
    input_map, ``mapped`` what a dependent's input_map or predicate receives."""

    plain: Any
    mapped: Any


class _Runner:
    """One run of a definition's nodes inside a saga (a condition's branch gets its own,
    sharing what is seen)."""

    def __init__(
        self, saga: SagaContext, definition: SagaDefinition, initial: Any, reads: bool
    ) -> None:
        self.saga = saga
        self.definition = definition
        self.initial = initial
        #: whether anything in the whole saga builds an InputContext (the top definition's)
        self.reads = reads
        self.results: dict[int, _Result] = {}

    async def run(self, seen: _Seen) -> dict[str, Any]:
        """Run every stage in order; return the output (step name -> output JSON, in
        definition order)."""
        definition = self.definition
        demands = definition.compiled.demands
        for stage, parallel in zip(definition.stages, definition.parallel, strict=True):
            if self.reads and seen.events is None and any(demands[i] for i in stage):
                seen.events = await self.saga._received_signals()
            if not parallel or len(stage) == 1:
                for index in stage:
                    await self._run_node(index, seen)
                continue
            forks = [seen.fork() for _ in stage]
            await self.saga.gather(
                *(self._run_node(i, fork) for i, fork in zip(stage, forks, strict=True))
            )
            seen.join(forks)
        output: dict[str, Any] = {}
        for index, node in enumerate(definition.nodes):
            if index in self.results:
                if isinstance(node, ConditionNode):
                    output.update(self.results[index].plain)
                else:
                    output[node.name] = self.results[index].plain
        return output

    async def _run_node(self, index: int, seen: _Seen) -> None:
        node = self.definition.nodes[index]
        if isinstance(node, WaitNode):
            await self._run_wait(index, node, seen)
            return
        parent = self.definition.parents[index]
        upstream = None if parent is None else self.results[parent]
        plain = self.initial if upstream is None else upstream.plain
        if isinstance(node, StepNode):
            inp = plain
            if node.input_map is not None:
                what = f"the input_map of step {node.name!r}"
                mapped = _call(node.input_map, self._arguments(node, upstream, seen), what)
                inp = _as_json(
                    mapped, f"the input of step {node.name!r} (what its input_map returned)"
                )
            step = self.definition.compiled.steps[index]
            assert step is not None
            out_json = await step(self.saga, inp)
            model = node.spec.output_model
            seen.outputs[node.name] = (out_json, model)
            # the dependents' input_map gets the model; their plain input is the JSON
            self.results[index] = _Result(out_json, model.model_validate(out_json))
            return
        taken = _call(
            node.predicate, self._arguments(node, upstream, seen), f"the predicate of {node.name}"
        )
        branch = node.then if taken else node.otherwise
        sub: dict[str, Any] = {}
        if branch is not None:
            sub = await _Runner(self.saga, branch, plain, self.reads).run(seen)
        self.results[index] = _Result(sub, sub)

    async def _run_wait(self, index: int, node: WaitNode, seen: _Seen) -> None:
        payload = await self.saga.wait_for_signal(node.name, node.timeout)
        seen.outputs[node.name] = (payload, None)
        # names are unique in a saga and only waits take signals, so a signal of this name
        # already in the list (read before the wait began) is the one this wait took
        if seen.events is not None and not any(e["name"] == node.name for e in seen.events):
            seen.events.append({"name": node.name, "payload": _copy(payload)})
        self.results[index] = _Result(payload, payload)

    def _arguments(
        self, node: StepNode | ConditionNode, upstream: _Result | None, seen: _Seen
    ) -> tuple[Any, ...]:
        if upstream is None:
            return (self._context(seen),)
        if node.two_args:
            return (upstream.mapped, self._context(seen))
        return (upstream.mapped,)

    def _context(self, seen: _Seen) -> InputContext:
        # fresh copies: what a mapper does to them must not change what later nodes see
        outputs = {
            name: _copy(value) if model is None else model.model_validate(value)
            for name, (value, model) in seen.outputs.items()
        }
        events = [] if seen.events is None else _copy(seen.events)
        return InputContext(self.initial, events, outputs)


async def run_definition(saga: SagaContext, definition: SagaDefinition, initial: Any) -> Any:
    """Run every node of ``definition`` inline in the saga; return its output (step name ->
    output JSON, in definition order)."""
    reads = definition.compiled.reads_events
    seen = _Seen({}, None if reads else [])
    return await _Runner(saga, definition, initial, reads).run(seen)


def _call(fn: Mapper, args: tuple[Any, ...], what: str) -> Any:
    value = fn(*args)
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        # it runs in the saga function on every replay: it must be a plain, pure function
        raise SagaDefinitionError(f"{what} returned an awaitable; it must be a plain function")
    return value


def _as_json(value: Any, what: str) -> Any:
    """The JSON form of a step's input, so that a step sees the same input live and after a
    recovery (when it is recomputed from journaled JSON)."""
    return serde.loads(serde.dumps(value, what=what))


def saga_function(
    definition: SagaDefinition,
) -> Callable[[SagaContext, Any], Awaitable[dict[str, Any]]]:
    """The saga function of a definition: its steps, then ``on_commit``."""

    async def run_saga(saga: SagaContext, inp: Any) -> dict[str, Any]:
        output: dict[str, Any] = await run_definition(saga, definition, inp)
        commit = definition.compiled.commit
        if commit is not None:
            await commit(saga, output)
        return output

    return run_saga


# -- the workflow ----------------------------------------------------------------------------


class _InitialData(serde.Converter):
    """The input of a definition's saga: kept as JSON (every node sees the same value, live
    and on replay), and checked at ``start`` against the input type of each step without
    ``depends_on`` that takes it as it is, so that bad input is refused before anything is
    written."""

    __slots__ = ("_checks",)

    def __init__(self, checks: tuple[serde.Converter, ...], what: str) -> None:
        super().__init__(None, what)
        self._checks = checks

    def validate(self, value: Any) -> Any:
        try:
            data = serde.loads(serde.dumps(value, what=self.what))
        except OutputNotSerializableError as exc:
            raise SagaValidationError(exc.message) from exc
        for check in self._checks:
            check.validate(data)
        return data


class DefinitionWorkflow(SagaWorkflow[Any, dict[str, Any]]):
    """A saga workflow that runs a :class:`SagaDefinition` (see ``to_workflow``)."""

    def __init__(
        self,
        name: str,
        definition: SagaDefinition,
        options: SagaWorkflowOptions | None = None,
        *,
        version: str | None = None,
    ) -> None:
        super().__init__(
            name,
            saga_function(definition),
            options,
            after_rollback=definition.compiled.reject,
            version=version,
        )
        #: the definition this workflow runs
        self.definition = definition
        checks = tuple(
            serde.Converter(
                node.spec.input_model, f"input of saga {name!r} (the input of step {node.name!r})"
            )
            for node in definition.nodes
            if isinstance(node, StepNode) and node.depends_on is None and node.input_map is None
        )
        self.input = _InitialData(checks, f"the input of saga {name!r}")
