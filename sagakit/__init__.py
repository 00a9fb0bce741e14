"""sagakit: durable sagas for Python.

Steps with compensations, run by a saga function whose every durable operation is journaled, so
that a saga survives crashes, restarts and racing workers. Embedded on SQLite by default.
"""

import logging

from .admin import AuditEntry, SagaAdmin, SagaPage
from .clients import LongWorkflowClient, ObjectClient, WorkflowClient
from .composition import ChildSaga, SagaModule, create_saga_module, run_nested_saga
from .context import DurablePromise, SagaContext
from .declarative import BaseStep, InputContext, SagaBuilder, SagaDefinition, StepRef
from .engine import Engine, EventSnapshot, SagaHandle, SagaSnapshot, StepSnapshot
from .errors import (
    CompensationFailedError,
    EngineNotStartedError,
    ErrorInfo,
    NonDeterminismError,
    OutputNotSerializableError,
    PayloadTooLargeError,
    PromiseAlreadyCompletedError,
    PromiseRejectedError,
    QueueDeduplicatedError,
    QueueNotFoundError,
    SagaCancelledError,
    SagaCompensatedError,
    SagaConflictError,
    SagaDefinitionError,
    SagaError,
    SagaFinishedError,
    SagaNotFoundError,
    SagaStateError,
    SagaTimeoutError,
    SagaValidationError,
    ScheduleNotFoundError,
    StepFailedError,
    StoreError,
    TerminalError,
    TransactionsUnsupportedError,
    UnknownHandlerError,
    UnknownWorkflowError,
    clear_terminal_errors,
    register_terminal_errors,
    set_global_error_mapper,
    unregister_terminal_errors,
)
from .long_workflows import HandlerContext, SagaLongWorkflow, create_saga_long_workflow
from .objects import (
    ObjectContext,
    SagaVirtualObject,
    SharedObjectContext,
    create_saga_virtual_object,
)
from .participant import CommandContext, Participant
from .queues import Queue, RateLimit
from .remote import RemoteCommandError, RemoteTimeoutError
from .retry import ExponentialRetry, RetryPolicy
from .run_admin import RunSummary
from .services import ServiceScope, ServicesFactory
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
from .stores.queueing import QueueLimits, QueueState
from .stores.scheduling import Schedule, ScheduleState
from .stores.sharded import ShardedStore
from .transactions import (
    TransactionContext,
    TransactionStep,
    create_saga_transaction,
    saga_transaction,
)
from .workflows import SagaWorkflow, SagaWorkflowOptions, create_saga_workflow, saga_workflow

#: the one place the version is written: pyproject.toml (hatch) and `sagakit --version` read it
__version__ = "0.1.0"

# A library stays quiet until the application configures logging: without a handler of its own,
# Python's last-resort handler would print every WARNING of a saga that failed for good on
# stderr. The records still propagate to whatever handlers the application sets up.
logging.getLogger("sagakit").addHandler(logging.NullHandler())

__all__ = [
    "AuditEntry",
    "BaseStep",
    "ChildSaga",
    "CommandContext",
    "CompensationFailedError",
    "DurablePromise",
    "Engine",
    "EngineNotStartedError",
    "ErrorInfo",
    "EventSnapshot",
    "ExponentialRetry",
    "HandlerContext",
    "InputContext",
    "LongWorkflowClient",
    "NonDeterminismError",
    "ObjectClient",
    "ObjectContext",
    "OutputNotSerializableError",
    "Participant",
    "PayloadTooLargeError",
    "PromiseAlreadyCompletedError",
    "PromiseRejectedError",
    "Queue",
    "QueueDeduplicatedError",
    "QueueLimits",
    "QueueNotFoundError",
    "QueueState",
    "RateLimit",
    "RemoteCommandError",
    "RemoteTimeoutError",
    "RetryPolicy",
    "RunSummary",
    "SagaAdmin",
    "SagaBuilder",
    "SagaCancelledError",
    "SagaCompensatedError",
    "SagaConflictError",
    "SagaContext",
    "SagaDefinition",
    "SagaDefinitionError",
    "SagaError",
    "SagaFinishedError",
    "SagaHandle",
    "SagaLongWorkflow",
    "SagaModule",
    "SagaNotFoundError",
    "SagaPage",
    "SagaSnapshot",
    "SagaStateError",
    "SagaStatus",
    "SagaStep",
    "SagaStepOptions",
    "SagaTimeoutError",
    "SagaValidationError",
    "SagaVirtualObject",
    "SagaWorkflow",
    "SagaWorkflowOptions",
    "Schedule",
    "ScheduleNotFoundError",
    "ScheduleState",
    "ServiceScope",
    "ServicesFactory",
    "ShardedStore",
    "SharedObjectContext",
    "StepFailedError",
    "StepRef",
    "StepResponse",
    "StepSnapshot",
    "StoreError",
    "TerminalError",
    "TransactionContext",
    "TransactionStep",
    "TransactionsUnsupportedError",
    "UnknownHandlerError",
    "UnknownWorkflowError",
    "WorkflowClient",
    "__version__",
    "clear_terminal_errors",
    "create_saga_long_workflow",
    "create_saga_module",
    "create_saga_step",
    "create_saga_step_strict",
    "create_saga_transaction",
    "create_saga_virtual_object",
    "create_saga_workflow",
    "register_terminal_errors",
    "run_nested_saga",
    "saga_step",
    "saga_step_strict",
    "saga_transaction",
    "saga_workflow",
    "set_global_error_mapper",
    "unregister_terminal_errors",
]
