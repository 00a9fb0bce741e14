"""How a declarative definition runs: each ``BaseStep`` becomes an ordinary strict saga step,
and the graph becomes one saga function that the engine runs (and replays) like any other.

* A step runs as soon as the step it depends on has completed. The children of one step (and
  the roots) are independent of each other: when there are several, they run as parallel
  branches of ``saga.gather`` (numbered by their order in the definition, so a replay finds
  them); a single one is simply awaited.
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
from ..workflows import SagaWorkflow, SagaWorkflowOptions
from .base_step import running_context
from .nodes import ConditionNode, Hook, InputContext, Mapper, Node, StepNode

if TYPE_CHECKING:
    from ..context import SagaContext
    from .definition import SagaDefinition

#: journal names of the hook steps
ON_COMMIT = "on_commit"
ON_REJECT = "on_reject"


@dataclass(frozen=True, slots=True)
class Compiled:
    """The saga steps a definition runs: one per step node (None for a condition), and the
    hooks'."""

    steps: tuple[SagaStep[Any] | None, ...]
    commit: SagaStep[Any] | None
    reject: SagaStep[Any] | None


def compile_nodes(
    nodes: tuple[Node, ...], on_commit: Hook | None, on_reject: Hook | None
) -> Compiled:
    """Make the saga steps of a definition (once, when it is built)."""
    steps = tuple(_compile_step(n) if isinstance(n, StepNode) else None for n in nodes)
    commit = None if on_commit is None else _compile_hook(ON_COMMIT, on_commit, _copy)
    reject = None if on_reject is None else _compile_hook(ON_REJECT, on_reject, _error_info)
    return Compiled(steps, commit, reject)


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


@dataclass(frozen=True, slots=True)
class _Upstream:
    """What the nodes after a point get: ``plain`` (JSON) is the input of a step without an
    input_map, ``mapped`` is what an input_map or a predicate receives."""

    plain: Any
    mapped: Any


async def run_definition(saga: SagaContext, definition: SagaDefinition, initial: Any) -> Any:
    """Run every node of ``definition`` inline in the saga; return its output (step name ->
    output JSON, in definition order)."""
    nodes = definition.nodes
    mapped: Any = None
    # the journaled list of signals is read only when a root needs it, so that a saga whose
    # roots take the plain input pays nothing for it
    if any(_needs_context(nodes[i]) for i in definition.roots):
        mapped = InputContext(initial, await saga._received_signals())
    results: dict[int, Any] = {}
    await _run_group(saga, definition, definition.roots, _Upstream(initial, mapped), results)
    output: dict[str, Any] = {}
    for index, node in enumerate(nodes):
        if index in results:
            if isinstance(node, StepNode):
                output[node.name] = results[index]
            else:
                output.update(results[index])
    return output


def _needs_context(node: Node) -> bool:
    return isinstance(node, ConditionNode) or node.input_map is not None


async def _run_group(
    saga: SagaContext,
    definition: SagaDefinition,
    indices: tuple[int, ...],
    upstream: _Upstream,
    results: dict[int, Any],
) -> None:
    if len(indices) == 1:
        await _run_node(saga, definition, indices[0], upstream, results)
    elif indices:
        await saga.gather(*(_run_node(saga, definition, i, upstream, results) for i in indices))


async def _run_node(
    saga: SagaContext,
    definition: SagaDefinition,
    index: int,
    upstream: _Upstream,
    results: dict[int, Any],
) -> None:
    node = definition.nodes[index]
    if isinstance(node, StepNode):
        inp = upstream.plain
        if node.input_map is not None:
            mapped = _call(node.input_map, upstream.mapped, f"the input_map of step {node.name!r}")
            inp = _as_json(mapped, f"the input of step {node.name!r} (what its input_map returned)")
        step = definition.compiled.steps[index]
        assert step is not None
        out_json = await step(saga, inp)
        results[index] = out_json
        # the dependents' input_map gets the model; their plain input is the JSON
        after = _Upstream(out_json, node.spec.output_model.model_validate(out_json))
    else:
        taken = _call(node.predicate, upstream.mapped, f"the predicate of {node.name}")
        branch = node.then if taken else node.otherwise
        sub = {} if branch is None else await run_definition(saga, branch, upstream.plain)
        results[index] = sub
        after = _Upstream(sub, sub)
    await _run_group(saga, definition, definition.children[index], after, results)


def _call(fn: Mapper, arg: Any, what: str) -> Any:
    value = fn(arg)
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
    """The input of a definition's saga: kept as JSON (every root sees the same value, live
    and on replay), and checked at ``start`` against the input type of each root step that
    takes it as it is, so that bad input is refused before anything is written."""

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
        self, name: str, definition: SagaDefinition, options: SagaWorkflowOptions | None = None
    ) -> None:
        super().__init__(
            name, saga_function(definition), options, after_rollback=definition.compiled.reject
        )
        #: the definition this workflow runs
        self.definition = definition
        checks = tuple(
            serde.Converter(
                node.spec.input_model, f"input of saga {name!r} (the input of step {node.name!r})"
            )
            for node in (definition.nodes[i] for i in definition.roots)
            if isinstance(node, StepNode) and node.input_map is None
        )
        self.input = _InitialData(checks, f"the input of saga {name!r}")
