"""One run of a saga in this process: call the saga function, replay what the journal holds, do
for real what it does not, and roll back when the saga fails for good.

A run starts from the saga's journal as read once (empty for a saga started here). Each durable
operation takes the next sequence number; if the journal has that entry the recorded result is
returned (or its recorded error raised) without doing the work, else the work is done and its
entry is queued for the store's next group commit. The saga function may go on computing at
once, but nothing leaves the run before what came before it is committed: not the next step's
body, a compensation, a wait, nor the outcome handed to the caller (see ``_write_behind``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from .. import serde
from ..context import SagaContext
from ..errors import (
    PAST_DEADLINE,
    ContinueAsNew,
    Drained,
    ErrorInfo,
    EventsArrived,
    LeaseLost,
    NonDeterminismError,
    OutputNotSerializableError,
    Parked,
    PayloadTooLargeError,
    SagaError,
    SagaValidationError,
    StepFailedError,
    StoreError,
    StoreUnavailable,
    Suspended,
)
from ..objects import operation_writes
from ..retry import DEFAULT_RETRY
from ..services import RunServices, ServiceScope, ServicesFactory
from ..steps import UNSET, SagaStep, StepResponse
from ..stores.base import (
    EntryKind,
    EntryStatus,
    JournalEntry,
    SagaEvent,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    StateWrite,
    Store,
)
from ..workflows import SagaWorkflow
from .backoff import BackoffMixin, FailedAttempt, Retrying, out_of_attempts
from .calls import Callees, CallsMixin
from .children import ChildrenMixin, ChildStarter
from .crashes import ProcessCrash, StepHook, StepPoint, When
from .ending import EndingMixin
from .observe import NO_OBSERVERS, Observers, RunInfo
from .operators import operator_rollback, skipped_seqs
from .outcome import Outcome, _Compensation, terminal_form
from .parallel import ParallelMixin, Strand
from .patches import PatchesMixin
from .remote import RemoteMixin
from .rollback import RollbackMixin
from .waits import PendingWait, object_scope

log = logging.getLogger("sagakit.engine")


#: JSON text stored as a step's compensation data when the step said "nothing to compensate"
NOTHING_TO_COMPENSATE = "null"
#: entry statuses of a step that has not ended: its next attempt runs when the step is replayed
_UNFINISHED = (EntryStatus.RUNNING, EntryStatus.RETRYING)


def _jsonable(value: Any) -> Any:
    """The JSON form of a value (what a replay would see); the value itself if it has none."""
    try:
        return serde.loads(serde.dumps(value))
    except OutputNotSerializableError:
        return value


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class SagaRun(
    RollbackMixin,
    BackoffMixin,
    RemoteMixin,
    ChildrenMixin,
    CallsMixin,
    PatchesMixin,
    EndingMixin,
    ParallelMixin,
):
    """Drives one saga function to a terminal state, to a wait (SUSPENDED), or until its lease
    is lost."""

    def __init__(
        self,
        store: Store,
        workflow: SagaWorkflow[Any, Any],
        record: SagaRecord,
        journal: list[JournalEntry],
        live_input: Any = UNSET,
        *,
        taken_over: bool = False,
        events: list[SagaEvent] | None = None,
        children: ChildStarter | None = None,
        observers: Observers = NO_OBSERVERS,
        callees: Callees | None = None,
        services: ServicesFactory | None = None,
    ):
        self.saga_id = record.saga_id
        self.fence = record.fence
        self.record = record
        #: what ids derived from a sequence number start with (step keys, child and command
        #: ids): the saga's id in its first run, then qualified by the run, so that the next
        #: run's step 1 is not taken for the first run's by an idempotent service
        self.key_base = record.saga_id if record.run == 1 else f"{record.saga_id}/run-{record.run}"
        self.workflow = workflow
        self._store = store
        self._journal = {e.seq: e for e in journal}
        self._live_input = live_input
        #: the saga function's own numbering (gathers deal numbers to their branches)
        self._root = Strand(self, 0, 1)
        self._compensations: dict[int, _Compensation] = {}
        self._nondeterminism: NonDeterminismError | None = None
        self._forward_done = False
        #: a run that took over a saga from a dead worker: the first operation it does for real
        #: may be the one that killed that worker, so its attempt is journaled before it starts
        self._mark_next_attempt = taken_over
        #: writes queued by this run and not yet seen committed (see _write_behind)
        self._unsettled: list[asyncio.Future[None]] = []
        #: one future per step executing live, done once its entry is journaled
        self._in_flight: set[asyncio.Future[None]] = set()
        #: set by the engine when it drains: no new live work starts, replay still runs
        self.draining = False
        #: until when (event loop time) this run's lease is known to be held: the engine moves
        #: it on with every renewal that renewed all its runs (see _settle_and_check_lease)
        self.lease_known_until = math.inf
        #: test-only (see engine/crashes.py): set by the engine from ``Engine.step_hook``
        self.step_hook: StepHook | None = None
        #: the simulated crash that stopped this run: it writes nothing more
        self._crashed: ProcessCrash | None = None
        self._events = events
        #: events read with the saga's row are all it had received (see _events_seen)
        self._events_floor = record.event_count if events is not None else 0
        self._children = children
        self._callees = callees
        self._services_factory = services
        #: built as the run begins (see execute), closed when it ends; never journaled
        self._services = RunServices(services, workflow.name)
        self._pending_waits: list[PendingWait] = []
        deadline = workflow.options.deadline
        self._deadline_at = (
            None if deadline is None else record.created_at + deadline.total_seconds()
        )
        self._object_key = record.object_key
        self._object_state: dict[str, str] | None = None
        #: object state written by the step attempt that just succeeded
        self._step_writes: tuple[StateWrite, ...] = ()
        #: what operators did to the saga (audit entries, at negative seqs), oldest first
        actions = [e for e in sorted(journal, key=lambda e: -e.seq) if e.seq < 0]
        self._operator_rollback = operator_rollback(actions)
        self._skipped = skipped_seqs(actions)
        self.observers = observers
        self.info = RunInfo(
            self.saga_id,
            workflow.name,
            record,
            record.fence,
            store,
            resumed=bool(journal) or taken_over,
            scratch={},
        )

    def again(self) -> SagaRun:
        """A fresh run of the same saga from what this one journaled (after events arrived)."""
        run = SagaRun(
            self._store,
            self.workflow,
            self.record,
            sorted(self._journal.values(), key=lambda e: e.seq),
            self._live_input,
            events=self._events,
            children=self._children,
            observers=self.observers,
            callees=self._callees,
            services=self._services_factory,
        )
        run._events_floor = self._events_floor
        self._hand_over(run)
        return run

    def _next_run(
        self, workflow: SagaWorkflow[Any, Any], record: SagaRecord, live_input: Any
    ) -> SagaRun:
        """The saga's next run, after this one continued as new (see ending.py): an empty
        journal, its events read again, this run's engine settings."""
        run = SagaRun(
            self._store,
            workflow,
            record,
            [],
            live_input,
            children=self._children,
            observers=self.observers,
            callees=self._callees,
            services=workflow.options.services or self._services_factory,
        )
        self._hand_over(run)
        return run

    def _hand_over(self, run: SagaRun) -> None:
        """Give a run that follows this one what the engine set on this one."""
        run.lease_known_until = self.lease_known_until
        run.clock = self.clock
        run.step_hook = self.step_hook
        run.max_payload_bytes = self.max_payload_bytes
        run.successor = self.successor
        run.draining = self.draining

    # -- the RunDriver protocol (what SagaContext calls) --------------------------------------

    def call_step(self, step: SagaStep[Any], inp: Any) -> Awaitable[Any]:
        if self._forward_done:
            raise SagaError(
                f"step {step.name!r} was called after saga {self.saga_id!r} finished; "
                "await every step inside the saga function"
            )
        seq = self._take_seq()
        compensation = None
        if step.compensate is not None and not step.strict:
            # hybrid: undone even when it fails midway, with the input it was called with;
            # registered once it has run (a call that never starts is never undone)
            compensation = _Compensation(seq, step, _jsonable(inp), failed=True)
        return self._step(step, seq, inp, compensation)

    def record_value(self, kind: str, produce: Callable[[], Any]) -> Awaitable[Any]:
        return self._value(self._take_seq(), kind, produce)

    # -- helpers -----------------------------------------------------------------------------

    def _check_draining(self) -> None:
        if self.draining:
            raise Drained(self.saga_id)

    def _recorded(self, seq: int, kind: str, name: str) -> JournalEntry | None:
        entry = self._journal.get(seq)
        if entry is None:
            return None
        if entry.kind != kind or entry.name != name:
            error = NonDeterminismError(
                self.saga_id, seq, f"{entry.kind} {entry.name!r}", f"{kind} {name!r}"
            )
            # kept on the run too: a saga function that catches it must not carry on
            self._nondeterminism = self._nondeterminism or error
            raise error
        return entry

    def _write_behind(
        self,
        entry: JournalEntry | None,
        update: SagaUpdate | None = None,
        *,
        state: tuple[StateWrite, ...] = (),
        guard: int | None = None,
    ) -> None:
        """Queue a write and go on: the saga function may compute on the result while it
        commits, but nothing leaves the run (a step, a compensation, a wait, the outcome)
        before :meth:`_settle` saw it committed. Appends commit in the order they are queued."""
        if self._crashed is not None:  # a dead process writes nothing (a parallel branch)
            raise ProcessCrash(self._crashed.point)
        try:
            future = self._store.append(
                self.saga_id, self.fence, entry, update, guard=guard, state=state
            )
        except StoreError as exc:
            raise StoreUnavailable(self.saga_id, exc) from exc
        # retrieved here so a run that ends before settling does not log "never retrieved"
        future.add_done_callback(_retrieve)
        if self.observers.timing:
            self.observers.time_commit(future)
        self._unsettled.append(future)
        if self.observers:
            self.observers.journaled(self.info, entry, update)
        if entry is not None:
            self._journal[entry.seq] = entry

    async def _settle(self, own: asyncio.Future[None] | None = None) -> None:
        """Wait until every write this run queued so far committed; raise the first failure.

        Parallel branches may settle at the same time: each waits for every write queued
        before it, those another branch is already waiting for included. A guarded write that
        was refused (events arrived) concerns only the wait that made it, which passes it as
        ``own``: for the others it is simply a write that did not happen."""
        failure: BaseException | None = None
        queued = list(self._unsettled)
        for future in queued:
            try:
                await future
            except EventsArrived as exc:
                if future is own:
                    failure = failure or exc
            except StoreError as exc:
                # the database failing is not the saga failing: stop this run, compensate
                # nothing, and let recovery go on from the journal once the database answers
                failure = failure or StoreUnavailable(self.saga_id, exc)
            except BaseException as exc:  # LeaseLost: another worker owns the saga now
                failure = failure or exc
        if queued:
            seen = set(queued)
            self._unsettled = [f for f in self._unsettled if f not in seen]
        if failure is not None:
            raise failure

    async def _write(
        self,
        entry: JournalEntry | None,
        update: SagaUpdate | None = None,
        *,
        guard: int | None = None,
    ) -> None:
        """Queue a write and wait until it (and every write queued before it) committed."""
        if guard is not None:
            await self._settle()  # a refused guarded write must not take others down with it
        self._write_behind(entry, update, guard=guard)
        own = self._unsettled[-1] if guard is not None else None
        try:
            await self._settle(own)
        except EventsArrived:
            if entry is not None and self._journal.get(entry.seq) is entry:
                del self._journal[entry.seq]  # it was not written
            raise

    async def _value(self, seq: int, kind: str, produce: Callable[[], Any]) -> Any:
        entry = self._recorded(seq, kind, kind)
        if entry is None:
            self._check_draining()
            now = self.clock.now()
            entry = JournalEntry(
                self.saga_id,
                seq,
                kind,
                kind,
                EntryStatus.COMPLETED,
                1,
                serde.dumps(produce()),
                None,
                None,
                now,
                now,
            )
            self._write_behind(entry)
        return serde.loads(entry.output)

    # -- steps -------------------------------------------------------------------------------

    async def _step(
        self, step: SagaStep[Any], seq: int, inp: Any, compensation: _Compensation | None
    ) -> Any:
        entry = self._recorded(seq, EntryKind.STEP, step.name)
        if entry is None or entry.status in _UNFINISHED:
            if self._operator_rollback is not None:
                if entry is not None and compensation is not None:
                    # an attempt began (or failed, and waits to retry) before the operator
                    # stopped the saga: it may have done part of its work, which a hybrid
                    # step's compensation undoes
                    self._register(step, seq, compensation, UNSET, inp, failed=True)
                raise self._operator_rollback
            self._check_draining()
            if self._forward_done:
                # called in time (its seq is taken) but started only after the saga ended
                raise SagaError(
                    f"step {step.name!r} started after saga {self.saga_id!r} finished; "
                    "await every step inside the saga function"
                )
            settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._in_flight.add(settled)
            try:
                entry = await self._execute_step(step, seq, inp, entry)
            finally:
                self._drop_transaction(seq)  # still open if the run stopped before its commit
                self._in_flight.discard(settled)
                settled.set_result(None)
        data: Any = UNSET
        if entry.compensation == NOTHING_TO_COMPENSATE:
            data = None
        elif entry.compensation is not None:
            data = serde.loads(entry.compensation)
        if entry.status == EntryStatus.COMPLETED:
            if step.compensate is not None:
                self._register(step, seq, compensation, data, inp, failed=False)
            if seq in self._skipped:
                return self._skipped_output(step, seq, entry)
            return step.output.validate(serde.loads(entry.output))
        error = serde.loads(entry.error) or {}
        info = ErrorInfo.from_json(error)
        if error.get("parked") and self._operator_rollback is None:
            raise Parked(self.saga_id, info)
        if compensation is not None:
            self._register(step, seq, compensation, data, inp, failed=True)
        raise StepFailedError(step.name, seq, info.type, info.message, entry.attempts)

    def _skipped_output(self, step: SagaStep[Any], seq: int, entry: JournalEntry) -> Any:
        """The output an operator recorded for a skipped step, checked against the step's
        output type now that the code is at hand: one that does not fit parks the saga
        again rather than failing it."""
        try:
            return step.output.validate(serde.loads(entry.output))
        except SagaValidationError as exc:
            if self._operator_rollback is not None:
                # an operator asked to roll back: the saga stops here instead of parking again
                raise self._operator_rollback from None
            message = (
                f"the output recorded by skip_step does not fit step {step.name!r}: {exc}; "
                "skip it again with an output that fits, or retry the step"
            )
            raise Parked(
                self.saga_id, ErrorInfo("SkipOutputInvalid", message, step.name, seq)
            ) from None

    def _register(
        self,
        step: SagaStep[Any],
        seq: int,
        compensation: _Compensation | None,
        data: Any,
        inp: Any,
        *,
        failed: bool,
    ) -> None:
        if data is None:
            self._compensations.pop(seq, None)
            return
        if data is not UNSET:
            value = data
        elif compensation is not None:
            # a hybrid step's input as it was called with (taken before the step could
            # change it), in its JSON form already
            value = compensation.data
        else:
            value = _jsonable(inp)
        if compensation is None:
            compensation = _Compensation(seq, step, value, failed)
        else:
            compensation.data = value
            compensation.failed = failed
        self._compensations[seq] = compensation

    async def _mark_attempt(self, kind: str, name: str, seq: int, attempt: int) -> None:
        """Journal that attempt number ``attempt`` of an operation starts (recovered runs only)."""
        now = self.clock.now()
        await self._write(
            JournalEntry(
                self.saga_id,
                seq,
                kind,
                name,
                EntryStatus.RUNNING,
                attempt,
                None,
                None,
                None,
                now,
                now,
            )
        )

    async def _execute_step(
        self, step: SagaStep[Any], seq: int, inp: Any, recorded: JournalEntry | None
    ) -> JournalEntry:
        """Run the step's attempts (after those ``recorded`` counts: an attempt a dead worker
        began, or failed ones waiting to retry) and journal how it ended."""
        policy = step.retry or DEFAULT_RETRY
        timeout = step.timeout
        # what the saga did before must be durable before this side effect, and the saga still
        # this run's
        await self._settle_and_check_lease()
        prior_attempts = 0 if recorded is None else recorded.attempts
        retrying = Retrying.of(recorded)
        started = self.clock.now() if retrying is None else retrying.started
        attempt = prior_attempts
        if prior_attempts >= policy.max_attempts:
            info = out_of_attempts(retrying, step.name, seq, prior_attempts)
            return await self._finish_step(
                step, seq, prior_attempts, started, EntryStatus.FAILED, None, None, info,
                exhausted=True,
            )  # fmt: skip
        if retrying is not None:
            await self._await_retry(seq, retrying, self._deadline_at)
        if self._mark_next_attempt:
            self._mark_next_attempt = False
            await self._mark_attempt(EntryKind.STEP, step.name, seq, attempt + 1)
        while True:
            attempt += 1
            ctx = SagaContext(self, step_seq=seq, step_name=step.name, attempt=attempt)
            left = None if self._deadline_at is None else self._deadline_at - self.clock.now()
            if left is not None and left <= 0:
                info = ErrorInfo("SagaTimeoutError", PAST_DEADLINE, step.name, seq)
                return await self._finish_step(
                    step, seq, attempt - 1, started, EntryStatus.FAILED, None, None, info
                )
            # the attempt is cut at its own timeout or at the saga's deadline, whichever is first
            cut_by_deadline = left is not None and (timeout is None or left < timeout)
            deadline = asyncio.timeout(left if cut_by_deadline else timeout)
            writes: list[tuple[str, str | None]] = []
            marker = operation_writes.set(writes)
            try:
                value = step.input.validate(inp)
                self._at_step_point(step, seq, attempt, "before")
                with self._observe_attempt("step", step.name, seq, attempt):
                    async with deadline:
                        result = await self._run_body(step, ctx, value, seq)
            except Exception as exc:
                terminal = step.terminal_error(exc) or terminal_form(exc)
                timed_out = deadline.expired()
                if timed_out and cut_by_deadline:
                    info = ErrorInfo("SagaTimeoutError", PAST_DEADLINE, step.name, seq)
                    return await self._finish_step(
                        step, seq, attempt, started, EntryStatus.FAILED, None, None, info
                    )
                if terminal is None and attempt < policy.max_attempts:
                    failed = FailedAttempt(
                        EntryKind.STEP,
                        step.name,
                        seq,
                        attempt,
                        started,
                        self._attempt_error(exc, step, seq, timed_out),
                    )
                    what = f"step {step.name}"
                    await self._wait_to_retry(what, failed, policy, exc, deadline=self._deadline_at)
                    continue
                info = self._failure_info(exc, terminal, step, seq, attempt, timed_out)
                return await self._finish_step(
                    step, seq, attempt, started, EntryStatus.FAILED, None, None, info,
                    exhausted=terminal is None,
                )  # fmt: skip
            finally:
                operation_writes.reset(marker)
            self._at_step_point(step, seq, attempt, "after")
            self._step_writes = self._object_writes(writes)
            return await self._record_result(step, seq, attempt, started, result)

    def _at_step_point(self, step: SagaStep[Any], seq: int, attempt: int, when: When) -> None:
        """Call the test-only step hook (see engine/crashes.py); a ProcessCrash it raises stops
        the run here, as a killed process would, and no later write of it is made."""
        if self.step_hook is None:
            return
        point = StepPoint(self.saga_id, self.workflow.name, step.name, seq, attempt, when)
        try:
            self.step_hook(point)
        except ProcessCrash as crash:
            self._crashed = crash
            raise

    def _observe_attempt(
        self, kind: str, name: str, seq: int, attempt: int
    ) -> contextlib.AbstractContextManager[None]:
        if not self.observers:
            return contextlib.nullcontext()
        return self.observers.attempt(self.info, kind, name, seq, attempt)

    async def _settle_and_check_lease(self) -> None:
        """Wait until this run's writes committed; then, if the lease may have run out since
        it was last renewed (the process was paused, the renewals failed), look at the saga's
        fence before a side effect: another worker may have taken the saga over and finished
        the very operation this run is about to start."""
        await self._settle()
        if asyncio.get_running_loop().time() >= self.lease_known_until:
            await self._check_still_owned()

    async def _check_still_owned(self) -> None:
        """Raise LeaseLost if the saga is not this run's any more (an operator cancelled or
        changed it, or another worker took it over): another attempt would be a side effect
        of a run that can record nothing."""
        try:
            record = await self._store.load_saga(self.saga_id)
        except StoreError as exc:
            raise StoreUnavailable(self.saga_id, exc) from exc
        if record is None or record.fence != self.fence:
            raise LeaseLost(self.saga_id)

    def _attempt_error(
        self, exc: BaseException, step: SagaStep[Any], seq: int, timed_out: bool
    ) -> ErrorInfo:
        """What one attempt failed with (it is retried: no "gave up" in it)."""
        if timed_out:
            message = f"attempt ran longer than {step.timeout}s"
            return ErrorInfo("StepTimeoutError", message, step.name, seq)
        return ErrorInfo(type(exc).__name__, str(exc), step.name, seq)

    def _failure_info(
        self,
        exc: BaseException,
        terminal: BaseException | None,
        step: SagaStep[Any],
        seq: int,
        attempts: int,
        timed_out: bool,
    ) -> ErrorInfo:
        if timed_out:
            error_type = "StepTimeoutError"
            message = f"attempt ran longer than {step.timeout}s (gave up after {attempts} attempts)"
        elif terminal is not None:
            base = ErrorInfo.from_exception(terminal)
            error_type, message = base.type, base.message
        else:
            error_type = type(exc).__name__
            message = f"{exc} (gave up after {attempts} attempts)"
        return ErrorInfo(error_type, message, step.name, seq)

    async def _record_result(
        self, step: SagaStep[Any], seq: int, attempts: int, started: float, result: Any
    ) -> JournalEntry:
        response = result if isinstance(result, StepResponse) else StepResponse(result)
        try:
            if not response.failed:
                output = self._dumps(response.output, f"the output of step {step.name!r}")
            compensation = self._compensation_json(response, result, step.name)
            if response.failed:
                message = response.error_message or "step failed permanently"
                info = ErrorInfo("PermanentFailure", message, step.name, seq)
                return await self._finish_step(
                    step, seq, attempts, started, EntryStatus.FAILED, None, compensation, info
                )
        except (OutputNotSerializableError, PayloadTooLargeError) as exc:
            # the side effect happened once: failing for good is the only way not to repeat it
            info = ErrorInfo(exc.error_type, exc.message, step.name, seq)
            return await self._finish_step(
                step, seq, attempts, started, EntryStatus.FAILED, None, None, info
            )
        return await self._finish_step(
            step, seq, attempts, started, EntryStatus.COMPLETED, output, compensation, None
        )

    def _compensation_json(self, response: StepResponse[Any], raw: Any, step: str) -> str | None:
        data = response.compensation_data
        if data is UNSET:
            return None
        if data is None:
            # a plain ``return None`` produced no data (the input is used); an explicit
            # StepResponse(..., compensation_data=None) means there is nothing to undo
            return None if raw is None else NOTHING_TO_COMPENSATE
        return self._dumps(data, f"the compensation data of step {step!r}")

    async def _finish_step(
        self,
        step: SagaStep[Any],
        seq: int,
        attempts: int,
        started: float,
        status: EntryStatus,
        output: str | None,
        compensation: str | None,
        error: ErrorInfo | None,
        *,
        exhausted: bool = False,
    ) -> JournalEntry:
        """Journal how a step ended. ``exhausted``: it failed because its retries ran out,
        which parks the saga if the step says so (marked on the entry, so that a replay after
        a crash parks it too)."""
        error_json: dict[str, Any] | None = None if error is None else error.to_json()
        if error_json is not None and exhausted and step.parks:
            error_json["parked"] = True
        entry = JournalEntry(
            self.saga_id,
            seq,
            EntryKind.STEP,
            step.name,
            status,
            attempts,
            output,
            compensation,
            None if error_json is None else serde.dumps(error_json),
            started,
            self.clock.now(),
        )
        # state written by a step that succeeded commits with its entry; a failed one's is dropped
        writes, self._step_writes = self._step_writes, ()
        # the saga function may go on at once: the next side effect settles this write first
        # (a transactional step's entry commits with its writes before _journal_end returns)
        return await self._journal_end(
            entry, state=writes if status == EntryStatus.COMPLETED else ()
        )

    # -- the whole saga ----------------------------------------------------------------------

    async def execute(self) -> Outcome:
        """Run the saga function (replaying its journal) to a terminal state.

        Raises :class:`~sagakit.errors.LeaseLost` if another worker took the saga meanwhile,
        and :class:`~sagakit.services.ServicesFailed` if its services could not be built.
        """
        try:
            return await self._execute()
        finally:
            # however the run ends (an outcome, a suspension, a lost lease, a cancel)
            if self._services.has_factory:
                await self._services.close()

    async def _execute(self) -> Outcome:
        await self._stop_if_ancestor_cancelled()  # see engine/cascade.py
        ctx = SagaContext(self)
        # only this task takes numbers of the saga function's own (see parallel.py)
        self._root.owner = asyncio.current_task()
        try:
            if self._live_input is not UNSET:
                inp = self._live_input
            else:
                inp = self.workflow.input.validate(serde.loads(self.record.input))
        except Exception as exc:  # the code changed since the saga started
            self._forward_done = True
            return await self._rollback(ErrorInfo.from_exception(self._operator_rollback or exc))
        # before the saga function, because `saga.services` is read without await; a factory
        # that raises stops the run, not the saga (ServicesFailed: a worker tries again)
        if self._services.has_factory:
            await self._services.build(ServiceScope(self.saga_id, self.workflow.name, inp))
        try:
            result = await self.workflow.function(ctx, inp)
        except Suspended:
            await self._wait_in_flight()
            if self._operator_rollback is not None:  # pragma: no cover - waits raise it first
                return await self._rollback(ErrorInfo.from_exception(self._operator_rollback))
            return await self._suspend()
        except Parked as parked:
            self._forward_done = True
            await self._wait_in_flight()
            return await self._park(parked.cause)
        except Exception as exc:
            self._forward_done = True
            await self._wait_in_flight()
            if self._nondeterminism is not None:
                return await self._fail_nondeterministic(self._nondeterminism)
            # an operator's rollback stands, whatever the saga function made of it
            cause = self._operator_rollback or exc
            return await self._rollback(ErrorInfo.from_exception(cause))
        except ContinueAsNew as request:
            ended = await self._ended("it continued as new")
            return ended if ended is not None else await self._continue(request)
        ended = await self._ended("it returned")
        if ended is not None:
            return ended
        try:
            output = self._dumps(result, f"the output of saga {self.workflow.name!r}")
        except (OutputNotSerializableError, PayloadTooLargeError) as exc:
            return await self._rollback(ErrorInfo.from_exception(exc))
        return await self._finish(SagaStatus.COMPLETED, output, None)

    async def _ended(self, how: str) -> Outcome | None:
        """The saga function ended without an error (``how``): how the saga ends instead if
        its replay went astray or an operator stopped it; None when it ends as it says."""
        self._forward_done = True
        await self._wait_in_flight()
        if self._nondeterminism is not None:
            return await self._fail_nondeterministic(self._nondeterminism)
        if self._operator_rollback is not None:
            # the saga function caught the operator's stop and ended: roll back all the same
            return await self._rollback(ErrorInfo.from_exception(self._operator_rollback))
        unplayed = [s for s in self._journal if s >= self._root.next]
        if unplayed:
            entry = self._journal[min(unplayed)]
            recorded = f"{entry.kind} {entry.name!r}"
            return await self._fail_nondeterministic(
                NonDeterminismError(self.saga_id, entry.seq, recorded, f"nothing ({how})")
            )
        return None

    def _object_writes(self, writes: list[tuple[str, str | None]]) -> tuple[StateWrite, ...]:
        if not writes or self._object_key is None:
            return ()
        scope = object_scope(self._object_key)
        if self._object_state is not None:
            for key, value in writes:
                if value is None:
                    self._object_state.pop(key, None)
                else:
                    self._object_state[key] = value
        return tuple(StateWrite(scope, key, value) for key, value in writes)
