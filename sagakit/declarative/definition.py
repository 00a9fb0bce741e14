"""``SagaDefinition``: what ``SagaBuilder.build()`` returns, an immutable sequence of typed
steps, conditions, waits and parallel blocks that the engine runs as an ordinary saga workflow
(see compile.py)."""

from __future__ import annotations

from typing import Any, NoReturn

from ..workflows import SagaWorkflow, SagaWorkflowOptions
from .compile import Compiled, DefinitionWorkflow, compile_nodes
from .nodes import ConditionNode, Hook, Node, StepNode, WaitNode


class SagaDefinition:
    """A built declarative saga: its steps, conditions and waits in the order they run, its
    parallel blocks, whose output each node's input is made from, and its hooks.

    Immutable. Register it under a name to run it (``engine.register("create_order_v1",
    definition)``, then ``engine.run("create_order_v1", inp)``), or use it as a branch of
    another builder's ``add_condition``.
    """

    __slots__ = (
        "_compiled",
        "_nodes",
        "_on_commit",
        "_on_reject",
        "_parallel",
        "_parents",
        "_stages",
        "_step_names",
    )

    _nodes: tuple[Node, ...]
    _parents: tuple[int | None, ...]
    _stages: tuple[tuple[int, ...], ...]
    _parallel: tuple[bool, ...]
    _on_commit: Hook | None
    _on_reject: Hook | None
    _step_names: tuple[str, ...]
    _compiled: Compiled

    def __init__(
        self,
        nodes: tuple[Node, ...],
        parents: tuple[int | None, ...],
        stages: tuple[tuple[int, ...], ...],
        parallel: tuple[bool, ...],
        on_commit: Hook | None,
        on_reject: Hook | None,
    ) -> None:
        """Made by :meth:`SagaBuilder.build`, which checked it (no foreign reference, each
        ``depends_on`` on an earlier node outside its own block): ``parents[i]`` is the index
        of the node ``nodes[i]`` depends on; ``stages`` are the node indices in the order they
        run, a stage at a time (``parallel[k]``: stage ``k`` is a ``parallel()`` block)."""
        names: list[str] = []
        for node in nodes:
            if isinstance(node, StepNode | WaitNode):
                names.append(node.name)
            else:
                for branch in (node.then, node.otherwise):
                    if branch is not None:
                        names.extend(n for n in branch.step_names if n not in names)
        init = object.__setattr__  # immutable from the outside, set once here
        init(self, "_nodes", nodes)
        init(self, "_parents", parents)
        init(self, "_stages", stages)
        init(self, "_parallel", parallel)
        init(self, "_on_commit", on_commit)
        init(self, "_on_reject", on_reject)
        init(self, "_step_names", tuple(names))
        init(self, "_compiled", compile_nodes(nodes, on_commit, on_reject))

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError("a SagaDefinition is immutable; build another one with SagaBuilder")

    @property
    def step_names(self) -> tuple[str, ...]:
        """The name of every step (and wait) that may run, conditions' branches included, in
        the order they were added (the order of the keys of the saga's output)."""
        return self._step_names

    @property
    def has_hooks(self) -> bool:
        """Whether ``on_commit`` or ``on_reject`` is set."""
        return self._on_commit is not None or self._on_reject is not None

    def to_workflow(
        self,
        name: str,
        options: SagaWorkflowOptions | None = None,
        *,
        version: str | None = None,
    ) -> SagaWorkflow[Any, dict[str, Any]]:
        """This definition as a saga workflow called ``name`` (what ``engine.register(name,
        definition, version=...)`` registers). Each call makes a new workflow object."""
        return DefinitionWorkflow(name, self, options, version=version)

    # -- read by compile.py ------------------------------------------------------------------

    @property
    def nodes(self) -> tuple[Node, ...]:
        return self._nodes

    @property
    def parents(self) -> tuple[int | None, ...]:
        return self._parents

    @property
    def stages(self) -> tuple[tuple[int, ...], ...]:
        return self._stages

    @property
    def parallel(self) -> tuple[bool, ...]:
        return self._parallel

    @property
    def compiled(self) -> Compiled:
        return self._compiled

    def __repr__(self) -> str:
        parts = []
        for stage, parallel in zip(self._stages, self._parallel, strict=True):
            shown = [self._describe(i) for i in stage]
            parts.append(f"parallel({', '.join(shown)})" if parallel else shown[0])
        return f"<SagaDefinition {'; '.join(parts)}>"

    def _describe(self, index: int) -> str:
        node, parent = self._nodes[index], self._parents[index]
        kind = {ConditionNode: "condition", WaitNode: "wait"}.get(type(node), "step")
        source = "" if parent is None else f" from {self._nodes[parent].name!r}"
        return f"{kind} {node.name!r}{source}"
