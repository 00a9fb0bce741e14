"""minos's saga exceptions, each a :class:`~sagakit.errors.SagaError`.

The hierarchy follows minos's (``SagaException`` at the top, execution errors under
``SagaExecutionException``), so that ``except`` clauses written for minos catch the same
failures here.
"""

from __future__ import annotations

from ...errors import SagaError


class SagaException(SagaError):
    """Base of minos's saga exceptions."""


class SagaNotCommittedException(SagaException):
    """A saga definition was executed before ``.commit()``."""


class EmptySagaException(SagaException):
    """``.commit()`` on a saga definition with no step."""


class AlreadyCommittedException(SagaException):
    """A step was added to a saga definition after ``.commit()``."""


class UndefinedOnExecuteException(SagaException):
    """A step has no ``on_execute`` callback."""


class MultipleOnExecuteException(SagaException):
    """``on_execute`` was given twice to one step."""


class SagaExecutionException(SagaException):
    """Base of the errors of a saga execution."""


class SagaExecutionNotFoundException(SagaExecutionException):
    """No stored execution has that uuid."""


class SagaExecutionAlreadyExecutedException(SagaExecutionException):
    """``execute()`` on an execution that has already finished or errored."""


class SagaFailedExecutionException(SagaExecutionException):
    """A step failed; the execution was rolled back and is Errored."""


class SagaPausedExecutionStepException(SagaExecutionException):
    """The execution paused at a remote step: it waits for that step's response."""


class SagaRollbackExecutionException(SagaExecutionException):
    """A rollback could not be done (or did not finish: a compensation failed for good)."""


class SagaFailedCommitCallbackException(SagaExecutionException):
    """``commit()`` could not commit the execution."""


__all__ = [
    "AlreadyCommittedException",
    "EmptySagaException",
    "MultipleOnExecuteException",
    "SagaException",
    "SagaExecutionAlreadyExecutedException",
    "SagaExecutionException",
    "SagaExecutionNotFoundException",
    "SagaFailedCommitCallbackException",
    "SagaFailedExecutionException",
    "SagaNotCommittedException",
    "SagaPausedExecutionStepException",
    "SagaRollbackExecutionException",
    "UndefinedOnExecuteException",
]
