"""minos-microservice-saga's names on sagakit's engine.

Code written for minos's execution engine runs by changing its imports to this package (and
giving it one ``Engine``)::

    from sagakit import Engine
    from sagakit.compat.minos import (
        DatabaseSagaExecutionRepository, Saga, SagaContext, SagaManager, SagaRequest, SagaResponse,
    )

    storage = DatabaseSagaExecutionRepository(Engine("sqlite:///sagas.db"))
    manager = SagaManager(storage=storage, broker_pool=broker_pool)

A committed :class:`Saga` runs as one sagakit saga workflow (see :mod:`.compiled`); an
execution is that saga (its id is the execution's uuid), and its status, context and steps are
read from the saga's journal. A conditional step's chosen branch runs inside that saga, its
choice journaled. :class:`TransactionCommitter` commits or rejects an execution and tells its
participants through the broker_pool; the executors (:mod:`.executors`) are what call every
callback. :class:`SagaContext` here is minos's bag of values, not
:class:`sagakit.SagaContext`. The guide is ``docs/migrating/minos.md``.
"""

from .commit import TransactionCommitter
from .compiled import SagaRequestPublisher
from .definitions import (
    ConditionalSagaStep,
    ElseThenAlternative,
    IfThenAlternative,
    LocalSagaStep,
    RemoteSagaStep,
    Saga,
    SagaStep,
)
from .engines import default_engine, set_default_engine
from .exceptions import (
    AlreadyCommittedException,
    EmptySagaException,
    MultipleOnExecuteException,
    SagaException,
    SagaExecutionAlreadyExecutedException,
    SagaExecutionException,
    SagaExecutionNotFoundException,
    SagaFailedCommitCallbackException,
    SagaFailedExecutionException,
    SagaNotCommittedException,
    SagaPausedExecutionStepException,
    SagaRollbackExecutionException,
    UndefinedOnExecuteException,
)
from .executions import (
    ConditionalSagaStepExecution,
    LocalSagaStepExecution,
    RemoteSagaStepExecution,
    SagaExecution,
    SagaStepExecution,
)
from .executors import Executor, LocalExecutor, RequestExecutor, ResponseExecutor
from .manager import SagaManager
from .messages import (
    SagaContext,
    SagaRequest,
    SagaResponse,
    SagaResponseStatus,
    SagaStatus,
    SagaStepStatus,
)
from .repositories import DatabaseSagaExecutionRepository, SagaExecutionRepository

__all__ = [
    "AlreadyCommittedException",
    "ConditionalSagaStep",
    "ConditionalSagaStepExecution",
    "DatabaseSagaExecutionRepository",
    "ElseThenAlternative",
    "EmptySagaException",
    "Executor",
    "IfThenAlternative",
    "LocalExecutor",
    "LocalSagaStep",
    "LocalSagaStepExecution",
    "MultipleOnExecuteException",
    "RemoteSagaStep",
    "RemoteSagaStepExecution",
    "RequestExecutor",
    "ResponseExecutor",
    "Saga",
    "SagaContext",
    "SagaException",
    "SagaExecution",
    "SagaExecutionAlreadyExecutedException",
    "SagaExecutionException",
    "SagaExecutionNotFoundException",
    "SagaExecutionRepository",
    "SagaFailedCommitCallbackException",
    "SagaFailedExecutionException",
    "SagaManager",
    "SagaNotCommittedException",
    "SagaPausedExecutionStepException",
    "SagaRequest",
    "SagaRequestPublisher",
    "SagaResponse",
    "SagaResponseStatus",
    "SagaRollbackExecutionException",
    "SagaStatus",
    "SagaStep",
    "SagaStepExecution",
    "SagaStepStatus",
    "TransactionCommitter",
    "UndefinedOnExecuteException",
    "default_engine",
    "set_default_engine",
]
