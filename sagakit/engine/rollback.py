"""Rolling a saga back: its registered compensations in reverse order, each a journaled
operation with its own retries, so that a crash in the middle of a rollback resumes it and never
repeats a compensation whose result was journaled. Nothing is undone before the failure that
caused the rollback is durable, and no compensation starts before the entry of the one before
it committed: a crash inside a compensation runs that one again (compensations are at least
once, like steps), never one that had finished. Group commit still batches these entries with
other sagas' writes. Mixed into :class:`~sagakit.engine.run.SagaRun`."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from .. import serde
from ..errors import ErrorInfo, NonDeterminismError, Suspended
from ..objects import operation_writes
from ..retry import DEFAULT_RETRY, RetryPolicy
from ..services import RunServices
from ..steps import UNSET, SagaStep
from ..stores.base import (
    EntryKind,
    EntryStatus,
    JournalEntry,
    SagaStatus,
    SagaUpdate,
    StateWrite,
)
from .backoff import FailedAttempt, Retrying, out_of_attempts
from .outcome import Outcome, _Compensation, terminal_form
from .parallel import Strand
from .remote import RemoteCompensation
from .transactions import TransactionsMixin

log = logging.getLogger("sagakit.engine")

#: entry statuses of an operation that has not ended: it goes on when the rollback replays it
_UNFINISHED = (EntryStatus.RUNNING, EntryStatus.RETRYING)


class RollbackMixin(TransactionsMixin):
    """The rollback of a run (see the module docstring); a transactional step's compensation
    runs in a transaction (see transactions.py)."""

    _compensations: dict[int, _Compensation]
    _mark_next_attempt: bool
    _services: RunServices
    _root: Strand

    if TYPE_CHECKING:  # provided by SagaRun and BackoffMixin

        async def _wait_to_retry(
            self,
            what: str,
            failed: FailedAttempt,
            policy: RetryPolicy,
            exc: Exception,
            *,
            deadline: float | None = None,
            update: SagaUpdate | None = None,
        ) -> None: ...

        async def _await_retry(
            self, seq: int, retrying: Retrying, deadline: float | None
        ) -> None: ...

        def _retry_pending(self) -> bool: ...

        async def _suspend(self) -> Outcome: ...

        def _object_writes(
            self, writes: list[tuple[str, str | None]]
        ) -> tuple[StateWrite, ...]: ...

        async def _fail_nondeterministic(self, exc: NonDeterminismError) -> Outcome: ...

        async def _remote_compensation(
            self,
            undo: RemoteCompensation,
            seq: int,
            update: SagaUpdate | None,
            recorded: JournalEntry | None,
        ) -> JournalEntry: ...

        def _observe_attempt(
            self, kind: str, name: str, seq: int, attempt: int
        ) -> contextlib.AbstractContextManager[None]: ...

        async def _execute_step(
            self, step: SagaStep[Any], seq: int, inp: Any, recorded: JournalEntry | None
        ) -> JournalEntry: ...

        async def _finish(
            self, status: SagaStatus, output: str | None, error: str | None
        ) -> Outcome: ...

    async def _rollback(self, cause: ErrorInfo) -> Outcome:
        """Run the registered compensations in reverse order, each journaled, then finish."""
        if self._retry_pending() and self._operator_rollback is None:
            # a step of a parallel branch waits for its next attempt: like a step still
            # executing, it ends before anything is undone (the saga sleeps until then)
            return await self._suspend()
        failures: list[ErrorInfo] = []
        status_written = self.record.status == SagaStatus.COMPENSATING
        cause_json = serde.dumps({"kind": "compensating", "cause": cause.to_json()})
        # the decision to roll back (the failure that caused it) is durable before anything is
        # undone; each compensation settles the entry of the one before it (see below)
        await self._settle()
        # where the rollback's entries begin: an operator who makes the saga go forward again
        # removes them (see sagakit/operator_plans.py)
        start = self._root.next
        try:
            for compensation in sorted(
                self._compensations.values(), key=lambda c: c.seq, reverse=True
            ):
                seq = self._take_seq()
                entry = self._recorded(seq, EntryKind.COMPENSATION, compensation.step.name)
                if entry is None or entry.status in _UNFINISHED:
                    self._check_draining()
                    update = None
                    if not status_written:
                        update = SagaUpdate(SagaStatus.COMPENSATING, error=cause_json)
                    if isinstance(compensation, RemoteCompensation):  # a command to send
                        entry = await self._remote_compensation(compensation, seq, update, entry)
                    else:
                        entry = await self._execute_compensation(compensation, seq, update, entry)
                    status_written = True
                if entry.status == EntryStatus.FAILED:
                    failures.append(ErrorInfo.from_json(serde.loads(entry.error) or {}))
            if self.workflow.after_rollback is not None:
                failure = await self._after_rollback(self.workflow.after_rollback, cause)
                if failure is not None:
                    failures.append(failure)
        except NonDeterminismError as exc:
            return await self._fail_nondeterministic(exc)
        except Suspended:
            # a compensation waits for its next attempt (a long backoff): the saga sleeps until
            # then, and the rollback goes on from the journal when it wakes
            return await self._suspend()
        if failures:
            error = {
                "kind": "compensation_failed",
                "cause": cause.to_json(),
                "compensation_failures": [f.to_json() for f in failures],
                "rollback_seq": start,
            }
            status = SagaStatus.FAILED
        else:
            error = {"kind": "compensated", "cause": cause.to_json(), "rollback_seq": start}
            status = SagaStatus.COMPENSATED
        return await self._finish(status, None, serde.dumps(error))

    async def _after_rollback(self, hook: SagaStep[Any], cause: ErrorInfo) -> ErrorInfo | None:
        """Run the workflow's after-rollback step once every compensation ran (the declarative
        front end's ``on_reject``): journaled and retried like any step, given the cause."""
        seq = self._take_seq()
        entry = self._recorded(seq, EntryKind.STEP, hook.name)
        if entry is None or entry.status in _UNFINISHED:
            self._check_draining()
            self._deadline_at = None  # like the compensations, it is not cut by the deadline
            entry = await self._execute_step(hook, seq, cause.to_json(), entry)
        if entry.status == EntryStatus.FAILED:
            return ErrorInfo.from_json(serde.loads(entry.error) or {})
        return None

    async def _execute_compensation(
        self,
        compensation: _Compensation,
        seq: int,
        update: SagaUpdate | None,
        recorded: JournalEntry | None,
    ) -> JournalEntry:
        """Run the compensation's attempts (after those ``recorded`` counts: an attempt a dead
        worker began, or failed ones waiting to retry) and journal how it ended."""
        step = compensation.step
        policy: RetryPolicy = step.compensation_retry or DEFAULT_RETRY
        # the previous compensation's end is durable before this one leaves the run: a crash
        # from here on never repeats it
        await self._settle_and_check_lease()
        prior = 0 if recorded is None else recorded.attempts
        retrying = Retrying.of(recorded)
        started = self.clock.now() if retrying is None else retrying.started
        attempt = prior
        error: ErrorInfo | None = None
        if prior >= policy.max_attempts:
            error = out_of_attempts(retrying, step.name, seq, prior)
        elif retrying is not None:
            # a rollback is not cut by the saga's deadline: the backoff runs its course
            await self._await_retry(seq, retrying, None)
        if error is None and self._mark_next_attempt:
            self._mark_next_attempt = False
            now = self.clock.now()
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
                    services = self._services.get() if step.compensation_takes_services else UNSET
                    await self._run_compensation_body(compensation, seq, attempt, services)
                break
            except Exception as exc:
                terminal = terminal_form(exc)
                if terminal is None and attempt < policy.max_attempts:
                    what = f"compensation of step {step.name}"
                    info = ErrorInfo(type(exc).__name__, str(exc), step.name, seq)
                    failed = FailedAttempt(
                        EntryKind.COMPENSATION, step.name, seq, attempt, started, info
                    )
                    # a long backoff journals the entry, with the status change not written yet
                    await self._wait_to_retry(what, failed, policy, exc, update=update)
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
            # the step it undid (kept where a step keeps its compensation data): an operator
            # who makes the saga go forward again runs that step again
            serde.dumps({"undoes": compensation.seq}),
            None if error is None else serde.dumps(error.to_json()),
            started,
            self.clock.now(),
        )
        state = self._object_writes(writes) if error is None else ()
        return await self._journal_end(entry, update, state=state)
