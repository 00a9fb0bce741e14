"""python-saga-orchestrator's exceptions, as sagakit's own classes where sagakit has the same
error (so that ``except SagaNotFoundError`` catches what the engine raises), and two
subclasses for the seed's own names."""

from __future__ import annotations

from ...errors import SagaConflictError, SagaDefinitionError, SagaError, SagaNotFoundError
from ...errors import SagaStateError as SagaStateError


class TypeValidationError(SagaDefinitionError):
    """A step's or an ``input_map``'s type hints do not fit (raised while the saga is defined)."""


class ActiveSagaAlreadyExistsError(SagaConflictError):
    """``start`` was given an ``aggregation_id`` whose saga has not ended yet (also raised to
    every start but one of several racing starts for the same id)."""


__all__ = [
    "ActiveSagaAlreadyExistsError",
    "SagaDefinitionError",
    "SagaError",
    "SagaNotFoundError",
    "SagaStateError",
    "TypeValidationError",
]
