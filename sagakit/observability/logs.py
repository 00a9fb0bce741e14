"""Logging of saga runs: one record per state change under the ``sagakit.saga`` logger.

Every record carries the same ``extra`` keys, so that a formatter can rely on them:

* ``saga_id``, ``workflow``
* ``change``: what happened, a stable name (``saga_started``, ``step_completed``, ...)
* ``step``: the step (for a compensation, the step it undoes; for a wait, the signal, promise
  or child saga waited for, or ``"sleep"``); ``None`` for a change of the whole saga (but for
  ``saga_parked``: the step it is parked at)
* ``seq``: the journal position of that step, compensation or wait; ``None`` otherwise
* ``status``: the saga's status for a change of the whole saga (``COMPLETED``...), the entry's
  status for a step, compensation or wait (``completed``, ``failed``, ``running``)
"""

from __future__ import annotations

import logging
from typing import Any

from ..engine.observe import Observer, RunInfo
from ..stores.base import NEVER, EntryKind, EntryStatus, JournalEntry, SagaStatus, SagaUpdate
from ._describe import cause_text, entry_error, parked_at

#: the logger of the state changes of sagas
SAGA_LOGGER = "sagakit.saga"

INFO = logging.INFO
WARNING = logging.WARNING
ERROR = logging.ERROR

_WAITS = frozenset({EntryKind.SLEEP, EntryKind.SIGNAL, EntryKind.PROMISE, EntryKind.CHILD_RESULT})
#: statuses logged when the run ends rather than when they are queued: a suspension may be
#: refused (events arrived meanwhile), and a final status counts once it committed
_AT_END = frozenset(
    {
        SagaStatus.SUSPENDED,
        SagaStatus.PARKED,
        SagaStatus.COMPLETED,
        SagaStatus.COMPENSATED,
        SagaStatus.FAILED,
        SagaStatus.CANCELLED,
    }
)


class LoggingObserver(Observer):
    """Logs each state change of every run (see the module docstring for the records).

    Levels: INFO for normal progress, WARNING for a step that failed for good and for a parked
    saga, ERROR for a compensation that failed and for a saga left FAILED. Nothing is built
    unless the logger is enabled for the record's level.

    Args:
        logger: where to log (default: the ``sagakit.saga`` logger).
    """

    def __init__(self, logger: logging.Logger | None = None):
        self._log = logger if logger is not None else logging.getLogger(SAGA_LOGGER)
        self._key = id(self)

    async def run_started(self, run: RunInfo) -> None:
        if self._log.isEnabledFor(INFO):
            verb = "resumed" if run.resumed else "started"
            self._saga(INFO, f"saga_{verb}", run, run.record.status, verb)

    def run_ended(self, run: RunInfo, status: str | None, error: BaseException | None) -> None:
        # the status change the run queued last: its wake-up time, its error
        update: SagaUpdate | None = run.scratch.pop(self._key, None)
        # a run that stopped without a status (lease lost, store failure, shutdown) is logged
        # by the engine, which knows what happens to the saga next
        if status is None or status not in _AT_END:
            return
        if status == SagaStatus.SUSPENDED:
            if self._log.isEnabledFor(INFO):
                wake_at = None if update is None else update.wake_at
                until = "an event" if wake_at in (None, NEVER) else f"{wake_at:.3f} or an event"
                self._saga(INFO, "saga_suspended", run, status, "suspended until %s", until)
        elif status == SagaStatus.PARKED:
            if self._log.isEnabledFor(WARNING):
                step, seq = parked_at(update)
                self._emit(
                    WARNING,
                    "saga_parked",
                    run,
                    step,
                    seq,
                    status,
                    "saga %s (%s) parked at step %s: %s; it waits for an operator "
                    "(engine.admin or `sagakit retry/skip/compensate/cancel`)",
                    run.saga_id,
                    run.workflow,
                    step,
                    cause_text(update),
                )
        elif status == SagaStatus.FAILED:
            if self._log.isEnabledFor(ERROR):
                cause = cause_text(update)
                self._saga(ERROR, "saga_failed", run, status, "failed: %s", cause)
        elif status == SagaStatus.COMPENSATED:
            if self._log.isEnabledFor(INFO):
                cause = cause_text(update)
                self._saga(INFO, "saga_compensated", run, status, "compensated; cause: %s", cause)
        elif self._log.isEnabledFor(INFO):  # COMPLETED, CANCELLED
            self._saga(INFO, f"saga_{status.lower()}", run, status, status.lower())

    def journaled(
        self, run: RunInfo, entry: JournalEntry | None, update: SagaUpdate | None
    ) -> None:
        if update is not None and update.status is not None:
            if update.status in _AT_END:
                run.scratch[self._key] = update
            elif update.status == SagaStatus.COMPENSATING and self._log.isEnabledFor(INFO):
                cause = cause_text(update)
                self._saga(
                    INFO, "saga_compensating", run, update.status, "compensating; cause: %s", cause
                )
        if entry is None:
            return
        kind = entry.kind
        if kind == EntryKind.STEP:
            self._step(run, entry)
        elif kind == EntryKind.COMPENSATION:
            self._compensation(run, entry)
        elif kind in _WAITS:
            self._wait(run, entry)

    def _step(self, run: RunInfo, entry: JournalEntry) -> None:
        status = entry.status
        if status == EntryStatus.COMPLETED:
            if self._log.isEnabledFor(INFO):
                msg = "step %s (seq %d) of saga %s completed%s"
                self._entry(INFO, "step_completed", run, entry, msg)
        elif status == EntryStatus.FAILED and self._log.isEnabledFor(WARNING):
            error, parks = entry_error(entry.error)
            if parks:
                msg = "step %s (seq %d) of saga %s ran out of retries%s: %s; the saga parks"
            else:
                msg = "step %s (seq %d) of saga %s failed for good%s: %s"
            self._entry(WARNING, "step_failed", run, entry, msg, error)
        # a RUNNING entry only marks that a recovering run starts an attempt: not a change

    def _compensation(self, run: RunInfo, entry: JournalEntry) -> None:
        status = entry.status
        if status == EntryStatus.COMPLETED:
            if self._log.isEnabledFor(INFO):
                msg = "compensation of step %s (seq %d) of saga %s done%s"
                self._entry(INFO, "compensation_done", run, entry, msg)
        elif status == EntryStatus.FAILED and self._log.isEnabledFor(ERROR):
            msg = "compensation of step %s (seq %d) of saga %s failed for good%s: %s"
            self._entry(ERROR, "compensation_failed", run, entry, msg, entry_error(entry.error)[0])

    def _wait(self, run: RunInfo, entry: JournalEntry) -> None:
        if not self._log.isEnabledFor(INFO):
            return
        what = _waited_for(entry)
        status = entry.status
        args: tuple[str, ...] = ()
        if status == EntryStatus.RUNNING:
            change, msg = "wait_started", "saga %s waits for %s (seq %d)"
        elif status == EntryStatus.COMPLETED:
            change, msg = "wait_answered", "saga %s: the wait for %s (seq %d) answered"
        else:  # a timeout or a rejected promise: the saga function decides what it means
            change, msg = "wait_failed", "saga %s: the wait for %s (seq %d) failed: %s"
            args = (entry_error(entry.error)[0],)
        seq = entry.seq
        self._emit(INFO, change, run, entry.name, seq, status, msg, run.saga_id, what, seq, *args)

    def _saga(
        self, level: int, change: str, run: RunInfo, status: str, what: str, *args: Any
    ) -> None:
        """A record about the whole saga: "saga ID (WORKFLOW) <what>"."""
        msg = "saga %s (%s) " + what
        self._emit(level, change, run, None, None, status, msg, run.saga_id, run.workflow, *args)

    def _entry(
        self, level: int, change: str, run: RunInfo, entry: JournalEntry, msg: str, *args: Any
    ) -> None:
        """A record about a step or compensation: ``msg`` gets its name, seq, saga id and
        attempts, then ``args``."""
        name, seq = entry.name, entry.seq
        attempts = "" if entry.attempts <= 1 else f" after {entry.attempts} attempts"
        self._emit(
            level,
            change,
            run,
            name,
            seq,
            entry.status,
            msg,
            name,
            seq,
            run.saga_id,
            attempts,
            *args,
        )

    def _emit(
        self,
        level: int,
        change: str,
        run: RunInfo,
        step: str | None,
        seq: int | None,
        status: str,
        msg: str,
        *args: Any,
    ) -> None:
        extra = {
            "saga_id": run.saga_id,
            "workflow": run.workflow,
            "change": change,
            "step": step,
            "seq": seq,
            # plain str: JSON formatters would otherwise see a StrEnum member
            "status": str(status),
        }
        self._log.log(level, msg, *args, extra=extra)


def _waited_for(entry: JournalEntry) -> str:
    kind = entry.kind
    if kind == EntryKind.SLEEP:
        return "a timer"
    if kind == EntryKind.CHILD_RESULT:
        return f"child saga {entry.name!r}"
    return f"{kind} {entry.name!r}"


__all__ = ["SAGA_LOGGER", "LoggingObserver"]
