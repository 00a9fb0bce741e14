"""``SagaDefinition``: what ``SagaBuilder.build()`` returns, an immutable graph of typed steps
that the engine runs as an ordinary saga workflow (see compile.py)."""

from __future__ import annotations

from typing import Any, NoReturn

from ..workflows import SagaWorkflow, SagaWorkflowOptions
from .compile import Compiled, DefinitionWorkflow, compile_nodes
from .nodes import ConditionNode, Hook, Node, StepNode


class SagaDefinition:
    """A built declarative saga: its steps, what each depends on, its conditions and hooks.

    Immutable. Register it under a name to run it (``engine.register("create_order_v1",
    definition)``, then ``engine.run("create_order_v1", inp)``), or use it as a branch of
    another builder's ``add_condition``.
    """

    __slots__ = (
        "_children",
        "_compiled",
        "_nodes",
        "_on_commit",
        "_on_reject",
        "_parents",
        "_roots",
        "_step_names",
    )

    _nodes: tuple[Node, ...]
    _parents: tuple[int | None, ...]
    _children: tuple[tuple[int, ...], ...]
    _roots: tuple[int, ...]
    _on_commit: Hook | None
    _on_reject: Hook | None
    _step_names: tuple[str, ...]
    _compiled: Compiled

    def __init__(
        self,
        nodes: tuple[Node, ...],
        parents: tuple[int | None, ...],
        on_commit: Hook | None,
        on_reject: Hook | None,
    ) -> None:
        """Made by :meth:`SagaBuilder.build`, which checked the graph (no foreign reference,
        no cycle): ``parents[i]`` is the index of the node ``nodes[i]`` depends on."""
        children: list[list[int]] = [[] for _ in nodes]
        roots: list[int] = []
        for index, parent in enumerate(parents):
            (roots if parent is None else children[parent]).append(index)
        names: list[str] = []
        for node in nodes:
            if isinstance(node, StepNode):
                names.append(node.name)
            else:
                for branch in (node.then, node.otherwise):
                    if branch is not None:
                        names.extend(n for n in branch.step_names if n not in names)
        init = object.__setattr__  # immutable from the outside, set once here
        init(self, "_nodes", nodes)
        init(self, "_parents", parents)
        init(self, "_children", tuple(tuple(c) for c in children))
        init(self, "_roots", tuple(roots))
        init(self, "_on_commit", on_commit)
        init(self, "_on_reject", on_reject)
        init(self, "_step_names", tuple(names))
        init(self, "_compiled", compile_nodes(nodes, on_commit, on_reject))

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError("a SagaDefinition is immutable; build another one with SagaBuilder")

    @property
    def step_names(self) -> tuple[str, ...]:
        """The name of every step that may run, conditions' branches included, in the order
        they were added (the order of the keys of the saga's output)."""
        return self._step_names

    @property
    def has_hooks(self) -> bool:
        """Whether ``on_commit`` or ``on_reject`` is set."""
        return self._on_commit is not None or self._on_reject is not None

    def to_workflow(
        self, name: str, options: SagaWorkflowOptions | None = None
    ) -> SagaWorkflow[Any, dict[str, Any]]:
        """This definition as a saga workflow called ``name`` (what ``engine.register(name,
        definition)`` registers). Each call makes a new workflow object."""
        return DefinitionWorkflow(name, self, options)

    # -- read by compile.py ------------------------------------------------------------------

    @property
    def nodes(self) -> tuple[Node, ...]:
        return self._nodes

    @property
    def children(self) -> tuple[tuple[int, ...], ...]:
        return self._children

    @property
    def roots(self) -> tuple[int, ...]:
        return self._roots

    @property
    def compiled(self) -> Compiled:
        return self._compiled

    def __repr__(self) -> str:
        parts = []
        for node, parent in zip(self._nodes, self._parents, strict=True):
            after = "" if parent is None else f" after {self._nodes[parent].name!r}"
            kind = "condition" if isinstance(node, ConditionNode) else "step"
            parts.append(f"{kind} {node.name!r}{after}")
        return f"<SagaDefinition {'; '.join(parts)}>"
