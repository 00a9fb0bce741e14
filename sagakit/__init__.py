"""sagakit: durable sagas for Python.

Steps with compensations, run by a saga function whose every durable operation is journaled, so
that a saga survives crashes, restarts and racing workers. Embedded on SQLite by default.
"""

from .context import SagaContext
from .engine import Engine, SagaHandle, SagaSnapshot, StepSnapshot
from .errors import (
    CompensationFailedError,
    EngineNotStartedError,
    ErrorInfo,
    NonDeterminismError,
    OutputNotSerializableError,
    SagaCompensatedError,
    SagaConflictError,
    SagaError,
    SagaNotFoundError,
    SagaValidationError,
    StepFailedError,
    StoreError,
    TerminalError,
    UnknownWorkflowError,
    clear_terminal_errors,
    register_terminal_errors,
    set_global_error_mapper,
    unregister_terminal_errors,
)
from .retry import RetryPolicy
from .steps import (
    SagaStep,
    SagaStepOptions,
    StepResponse,
    create_saga_step,
    create_saga_step_strict,
    saga_step,
    saga_step_strict,
)
from .stores.base import SagaStatus
from .workflows import SagaWorkflow, SagaWorkflowOptions, create_saga_workflow, saga_workflow

__version__ = "0.1.0"

__all__ = [
    "CompensationFailedError",
    "Engine",
    "EngineNotStartedError",
    "ErrorInfo",
    "NonDeterminismError",
    "OutputNotSerializableError",
    "RetryPolicy",
    "SagaCompensatedError",
    "SagaConflictError",
    "SagaContext",
    "SagaError",
    "SagaHandle",
    "SagaNotFoundError",
    "SagaSnapshot",
    "SagaStatus",
    "SagaStep",
    "SagaStepOptions",
    "SagaValidationError",
    "SagaWorkflow",
    "SagaWorkflowOptions",
    "StepFailedError",
    "StepResponse",
    "StepSnapshot",
    "StoreError",
    "TerminalError",
    "UnknownWorkflowError",
    "__version__",
    "clear_terminal_errors",
    "create_saga_step",
    "create_saga_step_strict",
    "create_saga_workflow",
    "register_terminal_errors",
    "saga_step",
    "saga_step_strict",
    "saga_workflow",
    "set_global_error_mapper",
    "unregister_terminal_errors",
]
