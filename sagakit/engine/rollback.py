"""Rolling a saga back: its registered compensations in reverse order, each a journaled
operation with its own retries, so that a crash in the middle of a rollback resumes it and never
repeats a compensation whose result was journaled. The rollback waits once for the failure that
caused it to be durable; each compensation's entry then commits behind the next compensation
(a crash in between runs that compensation again: compensations are at least once, like steps).
Mixed into :class:`~sagakit.engine.run.SagaRun`."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from .. import serde
from ..errors import ErrorInfo, NonDeterminismError
from ..objects import operation_writes
from ..retry import DEFAULT_RETRY, RetryPolicy
from ..steps import SagaStep
from ..stores.base import (
    EntryKind,
    EntryStatus,
    JournalEntry,
    SagaStatus,
    SagaUpdate,
    StateWrite,
)
from .core import RunCore
from .outcome import Outcome, _Compensation, terminal_form

log = logging.getLogger("sagakit.engine")


class RollbackMixin(RunCore):
    """The rollback of a run (see the module docstring)."""

    _compensations: dict[int, _Compensation]
    _mark_next_attempt: bool

    if TYPE_CHECKING:  # provided by SagaRun

        async def _wait_to_retry(
            self,
            what: str,
            step: str,
            seq: int,
            attempt: int,
            policy: RetryPolicy,
            exc: Exception,
        ) -> None: ...

        def _object_writes(
            self, writes: list[tuple[str, str | None]]
        ) -> tuple[StateWrite, ...]: ...

        async def _fail_nondeterministic(self, exc: NonDeterminismError) -> Outcome: ...

        def _observe_attempt(
            self, kind: str, name: str, seq: int, attempt: int
        ) -> contextlib.AbstractContextManager[None]: ...

        async def _execute_step(
            self, step: SagaStep[Any], seq: int, inp: Any, prior_attempts: int
        ) -> JournalEntry: ...

        async def _finish(
            self, status: SagaStatus, output: str | None, error: str | None
        ) -> Outcome: ...

    async def _rollback(self, cause: ErrorInfo) -> Outcome:
        """Run the registered compensations in reverse order, each journaled, then finish."""
        failures: list[ErrorInfo] = []
        status_written = self.record.status == SagaStatus.COMPENSATING
        cause_json = serde.dumps({"kind": "compensating", "cause": cause.to_json()})
        # the decision to roll back (the failure that caused it) is durable before anything is
        # undone; the compensations' own entries then commit behind them, in order
        await self._settle()
        try:
            for compensation in sorted(
                self._compensations.values(), key=lambda c: c.seq, reverse=True
            ):
                seq = self._take_seq()
                entry = self._recorded(seq, EntryKind.COMPENSATION, compensation.step.name)
                if entry is None or entry.status == EntryStatus.RUNNING:
                    self._check_draining()
                    update = None
                    if not status_written:
                        update = SagaUpdate(SagaStatus.COMPENSATING, error=cause_json)
                    prior = 0 if entry is None else entry.attempts
                    entry = await self._execute_compensation(compensation, seq, update, prior)
                    status_written = True
                if entry.status == EntryStatus.FAILED:
                    failures.append(ErrorInfo.from_json(serde.loads(entry.error) or {}))
            if self.workflow.after_rollback is not None:
                failure = await self._after_rollback(self.workflow.after_rollback, cause)
                if failure is not None:
                    failures.append(failure)
        except NonDeterminismError as exc:
            return await self._fail_nondeterministic(exc)
        if failures:
            error = {
                "kind": "compensation_failed",
                "cause": cause.to_json(),
                "compensation_failures": [f.to_json() for f in failures],
            }
            status = SagaStatus.FAILED
        else:
            error = {"kind": "compensated", "cause": cause.to_json()}
            status = SagaStatus.COMPENSATED
        return await self._finish(status, None, serde.dumps(error))

    async def _after_rollback(self, hook: SagaStep[Any], cause: ErrorInfo) -> ErrorInfo | None:
        """Run the workflow's after-rollback step once every compensation ran (the declarative
        front end's ``on_reject``): journaled and retried like any step, given the cause."""
        seq = self._take_seq()
        entry = self._recorded(seq, EntryKind.STEP, hook.name)
        if entry is None or entry.status == EntryStatus.RUNNING:
            self._check_draining()
            self._deadline_at = None  # like the compensations, it is not cut by the deadline
            prior = 0 if entry is None else entry.attempts
            entry = await self._execute_step(hook, seq, cause.to_json(), prior)
        if entry.status == EntryStatus.FAILED:
            return ErrorInfo.from_json(serde.loads(entry.error) or {})
        return None

    async def _execute_compensation(
        self, compensation: _Compensation, seq: int, update: SagaUpdate | None, prior: int
    ) -> JournalEntry:
        step = compensation.step
        policy: RetryPolicy = step.compensation_retry or DEFAULT_RETRY
        started = time.time()
        attempt = prior
        error: ErrorInfo | None = None
        if prior >= policy.max_attempts:
            error = ErrorInfo(
                "WorkerDiedError",
                f"the worker running attempt {prior} died (crash, kill or out of memory); "
                f"gave up after {prior} attempts",
                step.name,
                seq,
            )
        elif self._mark_next_attempt:
            self._mark_next_attempt = False
            now = time.time()
            marker = JournalEntry(
                self.saga_id,
                seq,
                EntryKind.COMPENSATION,
                step.name,
                EntryStatus.RUNNING,
                attempt + 1,
                None,
                None,
                None,
                now,
                now,
            )
            await self._write(marker, update)
            update = None
        writes: list[tuple[str, str | None]] = []
        while error is None:
            attempt += 1
            writes = []
            token = operation_writes.set(writes)
            try:
                with self._observe_attempt("compensation", step.name, seq, attempt):
                    await step.call_compensation(compensation.data, compensation.failed)
                break
            except Exception as exc:
                terminal = terminal_form(exc)
                if terminal is None and attempt < policy.max_attempts:
                    what = f"compensation of step {step.name}"
                    await self._wait_to_retry(what, step.name, seq, attempt, policy, exc)
                    continue
                base = ErrorInfo.from_exception(terminal or exc)
                message = base.message if terminal else f"{exc} (gave up after {attempt} attempts)"
                error = ErrorInfo(base.type, message, step.name, seq)
                break
            finally:
                operation_writes.reset(token)
        entry = JournalEntry(
            self.saga_id,
            seq,
            EntryKind.COMPENSATION,
            step.name,
            EntryStatus.COMPLETED if error is None else EntryStatus.FAILED,
            attempt,
            None,
            None,
            None if error is None else serde.dumps(error.to_json()),
            started,
            time.time(),
        )
        state = self._object_writes(writes) if error is None else ()
        self._write_behind(entry, update, state=state)
        return entry
