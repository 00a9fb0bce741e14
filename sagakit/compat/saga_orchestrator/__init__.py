"""python-saga-orchestrator's API on sagakit: change ``from saga_orchestrator import ...`` to
``from sagakit.compat.saga_orchestrator import ...`` (needs ``pip install 'sagakit[sqlalchemy]'``).

The definitions compile to sagakit's declarative builder, the sagas run on sagakit's one
engine (its journal is the source of truth), and your ``SagaStateMixin`` model gets one row per
saga, kept up to date. What differs from the seed, and why:
docs/migrating/python-saga-orchestrator.md.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is part of the test environment
    raise ImportError(
        "sagakit.compat.saga_orchestrator keeps your SQLAlchemy model's rows: install it with "
        "pip install 'sagakit[sqlalchemy]'"
    ) from exc

from .builder import BaseStep, InputContext, SagaBuilder, SagaDefinition, StepInputMap, StepRef
from .errors import (
    ActiveSagaAlreadyExistsError,
    SagaDefinitionError,
    SagaError,
    SagaNotFoundError,
    SagaStateError,
    TypeValidationError,
)
from .mixin import SagaStateMixin
from .retry import ExponentialRetry, FixedRetry, NoRetry, RetryPolicy
from .runtime import SagaAdmin, SagaEngine, SagaOrchestrator
from .state import SagaAdminSnapshot, SagaSnapshot, SagaStatus

__all__ = [
    "ActiveSagaAlreadyExistsError",
    "BaseStep",
    "ExponentialRetry",
    "FixedRetry",
    "InputContext",
    "NoRetry",
    "RetryPolicy",
    "SagaAdmin",
    "SagaAdminSnapshot",
    "SagaBuilder",
    "SagaDefinition",
    "SagaDefinitionError",
    "SagaEngine",
    "SagaError",
    "SagaNotFoundError",
    "SagaOrchestrator",
    "SagaSnapshot",
    "SagaStateError",
    "SagaStateMixin",
    "SagaStatus",
    "StepInputMap",
    "StepRef",
    "TypeValidationError",
]
