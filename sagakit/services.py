"""Services (dependency injection): what a saga's steps and compensations work with, built for
each run by a factory the application gives (``Engine(services=factory)``, or per workflow
``SagaWorkflowOptions(services=factory)``, which wins).

Services are never journaled: a database session, an HTTP client, a repository bound to the
caller's tenant cannot be written to a journal, and need not be, because the factory builds
them again wherever the saga runs. The factory gets a :class:`ServiceScope` (the saga's id, its
workflow and its validated input) and returns the services, an awaitable of them, or an async
context manager that yields them (entered for the run, exited when the run ends). Per-request
data (the tenant, the caller's permissions) travels in the saga's input, so that any process
that resumes the saga builds the same services from it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import SagaError

log = logging.getLogger("sagakit.engine")


@dataclass(frozen=True, slots=True)
class ServiceScope:
    """What a services factory builds for: one run of one saga.

    Attributes:
        saga_id: the saga's id.
        workflow: the name of the saga's workflow (``"Cart/add"`` for a virtual object's
            exclusive handler).
        input: the saga's input, validated (the pydantic model when the workflow's input is
            annotated with one): the per-request data the services are scoped by.
    """

    saga_id: str
    workflow: str
    input: Any


#: ``factory(scope)`` -> services, an awaitable of them, or an async context manager of them
ServicesFactory = Callable[[ServiceScope], Any]


class ServicesFailed(Exception):
    """The services factory raised: the run stops without touching the saga, which a worker
    runs again later (as after a store outage). Internal to the engine."""

    def __init__(self, saga_id: str, workflow: str, cause: BaseException):
        super().__init__(
            f"the services factory failed for saga {saga_id!r} ({workflow}): "
            f"{type(cause).__name__}: {cause}"
        )


_UNBUILT: Any = object()


class RunServices:
    """One run's services: built once as the run begins, closed when it ends."""

    __slots__ = ("_exit", "_factory", "_value", "workflow")

    def __init__(self, factory: ServicesFactory | None, workflow: str):
        self._factory = factory
        self.workflow = workflow
        self._value: Any = _UNBUILT
        self._exit: contextlib.AsyncExitStack | None = None

    @property
    def has_factory(self) -> bool:
        """Whether a factory applies (without one, a run has nothing to build or close)."""
        return self._factory is not None

    async def build(self, scope: ServiceScope) -> None:
        """Call the factory (await its awaitable, enter its context manager); ServicesFailed if
        it raises. Nothing to do without a factory or when built already."""
        if self._factory is None or self._value is not _UNBUILT:
            return
        try:
            made = self._factory(scope)
            if _is_async_context_manager(made):
                stack = contextlib.AsyncExitStack()
                value = await stack.enter_async_context(made)
                self._exit = stack
            elif inspect.isawaitable(made):
                value = await made
            else:
                value = made
        except Exception as exc:
            raise ServicesFailed(scope.saga_id, scope.workflow, exc) from exc
        self._value = value

    def get(self) -> Any:
        """The services (``saga.services``, ``ctx.services``)."""
        if self._value is not _UNBUILT:
            return self._value
        if self._factory is None:
            raise SagaError(
                f"workflow {self.workflow!r} has no services: give the engine a factory, "
                "Engine(services=factory), or the workflow one, "
                "SagaWorkflowOptions(services=factory); the factory gets a ServiceScope and "
                "returns the services (see README, 'Services (dependency injection)')"
            )
        raise SagaError(  # pragma: no cover - the run builds them before user code runs
            f"the services of workflow {self.workflow!r} are not built yet in this run"
        )

    async def close(self) -> None:
        """Exit the factory's context manager, if it gave one (its errors are logged: the run's
        outcome is recorded already)."""
        stack, self._exit = self._exit, None
        self._value = _UNBUILT
        if stack is None:
            return
        try:
            await stack.aclose()
        except Exception:
            log.exception("closing the services of workflow %s failed", self.workflow)


def _is_async_context_manager(value: Any) -> bool:
    return hasattr(value, "__aenter__") and hasattr(value, "__aexit__")


__all__ = ["ServiceScope", "ServicesFactory"]
