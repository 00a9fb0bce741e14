"""What a start checks and what a finished saga gives back: saga ids, a saga id taken again, the
``(name, definition)`` of a declarative registration, and a finished saga's output or error."""

from __future__ import annotations

import uuid
from typing import Any

from .. import serde
from ..declarative import SagaDefinition
from ..errors import SagaConflictError, SagaValidationError
from ..stores.base import SagaStatus
from ..workflows import SagaWorkflow
from .snapshots import error_for

#: the longest saga id the engine takes
MAX_SAGA_ID = 200


def value_of(
    saga_id: str,
    status: SagaStatus,
    output: str | None,
    error: str | None,
    workflow: SagaWorkflow[Any, Any] | None,
) -> Any:
    """A finished saga's output (as the workflow's return model when it has one), or its error
    raised."""
    if status == SagaStatus.COMPLETED:
        value = serde.loads(output)
        return workflow.output.validate(value) if workflow is not None else value
    raise error_for(saga_id, status, error)


def named_definition(args: tuple[Any, ...]) -> tuple[str, SagaDefinition]:
    """The ``(name, definition)`` of ``engine.register(name, definition)``, checked."""
    if len(args) != 2 or not isinstance(args[1], SagaDefinition):
        given = ", ".join(repr(a) for a in args[1:]) or "nothing"
        raise TypeError(
            f"engine.register({args[0]!r}, ...) registers a declarative saga: it takes the name "
            f"and one SagaDefinition (SagaBuilder().build()), got {given}"
        )
    name: str = args[0]
    if not name.strip():
        raise ValueError("a saga workflow needs a non-empty name")
    return name, args[1]


def at_version(version: str | None) -> str:
    return " (unversioned)" if version is None else f" at version {version!r}"


def check_same_saga(
    saga_id: str,
    existing: str,
    existing_parent: str | None,
    wanted: str,
    wanted_parent: str | None,
) -> None:
    """Starting a saga id again is idempotent only for the same workflow (and the same
    parent: a child must not be confused with an unrelated saga that took its id)."""
    if existing != wanted:
        raise SagaConflictError(
            f"saga id {saga_id!r} is taken by a saga of workflow {existing!r}, not {wanted!r}; "
            "choose another saga_id"
        )
    if wanted_parent is not None and existing_parent != wanted_parent:
        owner = "no parent" if existing_parent is None else f"parent {existing_parent!r}"
        raise SagaConflictError(
            f"saga id {saga_id!r} is taken by a saga with {owner}, not a child of "
            f"{wanted_parent!r}; choose another saga_id for the child"
        )


def check_saga_id(saga_id: str | None) -> str:
    if saga_id is None:
        return str(uuid.uuid4())
    if not isinstance(saga_id, str) or not saga_id.strip():
        raise SagaValidationError(f"saga_id must be a non-empty string, got {saga_id!r}")
    if len(saga_id) > MAX_SAGA_ID:
        raise SagaValidationError(
            f"saga_id is {len(saga_id)} characters long; the most is {MAX_SAGA_ID}"
        )
    return saga_id
