"""Saga workflows: the saga function, its name, and how its input and output are typed."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic

from typing_extensions import TypeVar

from . import serde
from .errors import SagaError
from .services import ServicesFactory
from .steps import SagaStep, _positional_names, _type_hints

if TYPE_CHECKING:
    from .context import SagaContext

# defaults (PEP 696): a bare ``SagaWorkflow`` in user code means ``SagaWorkflow[Any, Any]``
InT = TypeVar("InT", default=Any)
OutT = TypeVar("OutT", default=Any)
# covariant: a ``SagaWorkflow[In, str]`` is a ``SagaWorkflow[In, object]``, so that
# ``print(await engine.run(workflow, inp))`` (an ``object`` context) type-checks
OutT_co = TypeVar("OutT_co", covariant=True, default=Any)

Handler = Callable[["SagaContext", InT], Awaitable[OutT]]


@dataclass(frozen=True, kw_only=True)
class SagaWorkflowOptions:
    """Options of a workflow.

    Args:
        description: what the workflow does, for people (kept on the definition).
        deadline: how long a saga of this workflow may take from its start. Past it, the
            step or wait it is in fails with a terminal
            :class:`~sagakit.errors.SagaTimeoutError` and the saga rolls back (unless it
            catches the error); a suspended saga is woken for it.
        services: the factory of this workflow's services (``saga.services``,
            ``ctx.services``): ``factory(scope)`` gets a :class:`~sagakit.ServiceScope` and
            returns the services, an awaitable of them or an async context manager; it wins
            over the engine's ``Engine(services=...)``. See :mod:`sagakit.services`.
    """

    description: str | None = None
    deadline: timedelta | None = None
    services: ServicesFactory | None = None

    def __post_init__(self) -> None:
        if self.deadline is not None and self.deadline <= timedelta(0):
            raise ValueError(f"deadline must be positive, got {self.deadline}")
        if self.services is not None and not callable(self.services):
            raise TypeError(
                "services must be a factory, a callable taking a ServiceScope, got "
                f"{self.services!r}"
            )


def saga_function_parameters(fn: Callable[..., Any], what: str) -> list[str]:
    """The positional parameters of a saga function; a clear TypeError unless it is an
    ``async def fn(saga, inp)``."""
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{what}: the function must be an `async def fn(saga, inp)`, got {fn!r}")
    positional = _positional_names(fn)
    if len(positional) < 2:
        raise TypeError(
            f"{what}: the function must take (saga, inp), it takes ({', '.join(positional)})"
        )
    required = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if len(required) > 2:
        # caught here, not when every saga of the workflow fails at run time
        hint = (
            " (restate-saga's main(saga, ctx, input_val) is written main(saga, inp) here: the "
            "SagaContext `saga` is the workflow's context too: saga.saga_id, saga.set_state, "
            "saga.promise, saga.wait_for_signal; drop the middle parameter, or keep it and "
            "make the workflow with sagakit.compat.restate_saga.create_saga_restate_workflow)"
            if len(positional) == 3 and len(required) == 3
            else ""
        )
        raise TypeError(
            f"{what}: the function is called with (saga, inp), but it requires "
            f"({', '.join(required)}); give the other parameters defaults or remove them{hint}"
        )
    return positional


class SagaWorkflow(Generic[InT, OutT_co]):
    """A registered saga function. Start it with ``engine.start(workflow, inp)``.

    Typed by its function: ``async def fn(saga, inp: In) -> Out`` makes a
    ``SagaWorkflow[In, Out]``, so ``engine.run(workflow, inp)``, ``saga.call(workflow, inp)`` and
    ``workflow.run_as_step(saga, inp)`` are seen as returning an ``Out``.

    When the handler's input parameter is annotated (a pydantic model, or any type pydantic can
    validate), the input is validated before anything is written; when its return annotation is
    a pydantic model, ``engine.run`` returns that model.
    """

    def __init__(
        self,
        name: str,
        handler: Handler[InT, OutT_co],
        options: SagaWorkflowOptions | None = None,
        *,
        after_rollback: SagaStep[Any] | None = None,
        version: str | None = None,
    ):
        if not isinstance(name, str) or not name.strip():
            raise ValueError("a saga workflow needs a non-empty name")
        positional = saga_function_parameters(handler, f"workflow {name!r}")
        self.name = name
        #: the version of this definition (``None``: the engine's ``app_version``, if any);
        #: every saga records the version that started it and runs on that version's code
        self.version = check_version(version, f"workflow {name!r}")
        #: the saga function ``async def fn(saga, inp)``
        self.function = handler
        self.options = options or SagaWorkflowOptions()
        #: a step run once after a rollback finished, given the failure (``on_reject``)
        self.after_rollback = after_rollback
        hints = _type_hints(handler)
        self.input = serde.Converter(hints.get(positional[1]), f"input of saga {name!r}")
        out_hint = hints.get("return")
        self.output = serde.Converter(
            out_hint if serde.is_model_type(out_hint) else None, f"output of saga {name!r}"
        )

    def check_ready(self) -> None:
        """Raise SagaError if the workflow cannot run yet (a long workflow without its main)."""

    async def run_as_step(self, saga: SagaContext, inp: InT | dict[str, Any]) -> OutT_co:
        """Run this workflow's saga function inline, inside the calling saga: its steps join
        the caller's journal and compensation stack, so that a later failure of the caller
        rolls them back too. (Its own options, such as a deadline, do not apply: the caller's
        do.) For a separate saga with its own rollback, use ``saga.start_child``."""
        if saga.in_step:
            raise SagaError(
                f"workflow {self.name!r} was run as a step from inside step {saga.step_name!r}; "
                "call run_as_step from the saga function, with the saga's ctx"
            )
        self.check_ready()
        return await self.function(saga, self.input.validate(inp))

    def __repr__(self) -> str:
        if self.version is not None:
            return f"<SagaWorkflow {self.name!r} version={self.version!r}>"
        return f"<SagaWorkflow {self.name!r}>"


def check_version(version: str | None, what: str) -> str | None:
    """``version`` if it is ``None`` or a non-empty string; a clear error otherwise (the empty
    string is how a store keeps "unversioned", so it may not name a version)."""
    if version is None:
        return None
    if not isinstance(version, str) or not version.strip():
        raise ValueError(
            f"{what}: version must be a non-empty string (or None for unversioned), got {version!r}"
        )
    return version


def saga_workflow(
    name: str, *, options: SagaWorkflowOptions | None = None, version: str | None = None
) -> Callable[[Handler[InT, OutT]], SagaWorkflow[InT, OutT]]:
    """Decorate ``async def handler(saga, inp)`` as a saga workflow called ``name``.

    ``version`` names this definition's version: a saga records the version that started it,
    and only a worker that registered that version claims it, so that sagas started on old
    code finish on old code while new ones start on new code (register both side by side).
    """

    def wrap(handler: Handler[InT, OutT]) -> SagaWorkflow[InT, OutT]:
        return SagaWorkflow(name, handler, options, version=version)

    return wrap


def create_saga_workflow(
    name: str,
    handler: Handler[InT, OutT],
    options: SagaWorkflowOptions | None = None,
    *,
    version: str | None = None,
) -> SagaWorkflow[InT, OutT]:
    """The function form of :func:`saga_workflow`."""
    return SagaWorkflow(name, handler, options, version=version)
