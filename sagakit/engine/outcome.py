"""Small records shared by the run and its rollback: how a run ended, a registered
compensation, and which errors are terminal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SagaError, TerminalError, as_terminal
from ..steps import SagaStep
from ..stores.base import SagaStatus

if TYPE_CHECKING:
    from .run import SagaRun


@dataclass(slots=True)
class Outcome:
    """How a run ended: the saga's status (terminal, or SUSPENDED) with its JSON output or
    error. ``again``: events arrived as the saga was suspending; run it again now.
    ``next_run``: the saga continued as new; run that now."""

    status: SagaStatus
    output: str | None
    error: str | None
    again: bool = False
    #: for SUSPENDED: when a timer wakes the saga (None: only an event does)
    wake_at: float | None = None
    next_run: SagaRun | None = None


@dataclass(slots=True)
class _Compensation:
    seq: int
    step: SagaStep[Any]
    data: Any
    failed: bool


def terminal_form(exc: Exception) -> TerminalError | None:
    """The terminal form of a step's or compensation's error, or None to retry it."""
    terminal = as_terminal(exc)
    if terminal is None and isinstance(exc, SagaError):
        # our own errors (bad input, misuse) would fail the same way again
        terminal = TerminalError(str(exc), error_type=type(exc).__name__)
    return terminal
