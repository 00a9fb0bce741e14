"""minos's ``SagaExecution``: a view of one sagakit saga (id = the execution's uuid) and the
calls that drive it (execute, commit, reject, rollback).

The saga's row and journal are the truth; an execution object is a snapshot of them, refreshed
by every call. Its status is derived from sagakit's (see ``docs/migrating/minos.md``):

======================================  ===============
sagakit                                 minos
======================================  ===============
(no saga yet)                           Created
PENDING, RUNNING, COMPENSATING          Running
SUSPENDED waiting for a reply           Paused
SUSPENDED waiting for commit/reject     Finished
COMPLETED                               Finished
COMPENSATED, FAILED, PARKED, CANCELLED  Errored
======================================  ===============

A conditional step's branch runs inside the same saga: its steps are found in the journal under
the step's prefix (``minos[i].if0[j]…``) and shown as the step's ``inner`` execution.
"""

from __future__ import annotations

import asyncio
import uuid as _uuid
from collections.abc import Callable
from typing import Any

from ...engine import Engine, SagaSnapshot, StepSnapshot
from ...errors import SagaNotFoundError
from ...stores.base import EntryKind, EntryStatus
from ...stores.base import SagaStatus as EngineStatus
from . import compiled as _compiled
from .definitions import ConditionalSagaStep, LocalSagaStep, RemoteSagaStep, Saga, SagaStep
from .engines import default_engine, started
from .exceptions import (
    SagaExecutionAlreadyExecutedException,
    SagaExecutionException,
    SagaExecutionNotFoundException,
    SagaFailedCommitCallbackException,
    SagaFailedExecutionException,
    SagaNotCommittedException,
    SagaPausedExecutionStepException,
    SagaRollbackExecutionException,
)
from .messages import SagaContext, SagaRequest, SagaResponse, SagaStatus, SagaStepStatus

_ERRORED = frozenset(
    {EngineStatus.COMPENSATED, EngineStatus.FAILED, EngineStatus.PARKED, EngineStatus.CANCELLED}
)
#: the longest pause between two looks at a saga that is still moving
_POLL_MAX = 0.1


class SagaStepExecution:
    """One step of an execution: its definition, a uuid (derived from the execution's and the
    step's position) and its minos status."""

    def __init__(
        self,
        definition: SagaStep,
        uuid: _uuid.UUID,
        status: SagaStepStatus = SagaStepStatus.Created,
        **kwargs: Any,
    ) -> None:
        self.definition = definition
        self.uuid = uuid
        self.status = status

    @property
    def raw(self) -> dict[str, Any]:
        return {
            "cls": type(self).__name__,
            "uuid": str(self.uuid),
            "definition": self.definition.raw,
            "status": self.status.value,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.uuid} {self.status.name}>"


class LocalSagaStepExecution(SagaStepExecution):
    """The execution of a local step."""


class RemoteSagaStepExecution(SagaStepExecution):
    """The execution of a remote step. ``request`` is the request its on_execute made (sent
    through the manager's broker_pool if it had one; read it here to send it yourself);
    ``related_services`` are the services its reply named (``SagaResponse.related_services``
    and ``service_name``)."""

    def __init__(
        self,
        definition: SagaStep,
        uuid: _uuid.UUID,
        status: SagaStepStatus = SagaStepStatus.Created,
        request: SagaRequest | None = None,
        related_services: set[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(definition, uuid, status)
        self.request = request
        self.related_services: set[str] = set(related_services or ())

    @property
    def raw(self) -> dict[str, Any]:
        return {
            **super().raw,
            "request": None if self.request is None else self.request.raw,
            "related_services": sorted(self.related_services),
        }


class ConditionalSagaStepExecution(SagaStepExecution):
    """The execution of a conditional step. ``inner`` is a view of the branch its conditions
    chose (None before they were evaluated, or when no branch applied): a
    :class:`SagaExecution` of the branch's Saga whose ``executed_steps`` are the branch's steps.

    The branch ran inside this execution's saga (it has no saga of its own): drive the outer
    execution, not ``inner``. Its uuid is this step's.
    """

    def __init__(
        self,
        definition: SagaStep,
        uuid: _uuid.UUID,
        status: SagaStepStatus = SagaStepStatus.Created,
        inner: SagaExecution | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(definition, uuid, status)
        self.inner = inner

    @property
    def raw(self) -> dict[str, Any]:
        return {**super().raw, "inner": None if self.inner is None else self.inner.raw}


class SagaExecution:
    """A run of a committed :class:`Saga`, durable in a sagakit Engine.

    Create one with :meth:`from_definition` (or a ``SagaManager``), drive it with
    :meth:`execute`, :meth:`commit`, :meth:`reject`, :meth:`rollback`. ``engine=`` chooses the
    Engine (default: the one set with ``set_default_engine``).
    """

    def __init__(
        self,
        definition: Saga,
        uuid: _uuid.UUID,
        context: SagaContext,
        status: SagaStatus = SagaStatus.Created,
        steps: list[SagaStepExecution] | None = None,
        paused_step: SagaStepExecution | None = None,
        already_rollback: bool = False,
        user: _uuid.UUID | None = None,
        *args: Any,
        engine: Engine | None = None,
        **kwargs: Any,
    ) -> None:
        self.definition = definition
        self.uuid = uuid
        self.context = context
        self.status = status
        self.executed_steps: list[SagaStepExecution] = list(steps or ())
        self.paused_step = paused_step
        self.already_rollback = already_rollback
        self.user = user
        self.engine = engine
        #: the saga's error (sagakit's JSON form) once it failed
        self.error: dict[str, Any] | None = None

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def from_definition(
        cls,
        definition: Saga,
        context: SagaContext | None = None,
        uuid: _uuid.UUID | None = None,
        *args: Any,
        user: _uuid.UUID | None = None,
        engine: Engine | None = None,
        **kwargs: Any,
    ) -> SagaExecution:
        """A new execution of ``definition`` (nothing is written until :meth:`execute`)."""
        if not definition.committed:
            raise SagaNotCommittedException(
                "the saga definition is not committed: call .commit() on it before executing"
            )
        return cls(
            definition,
            uuid or _uuid.uuid4(),
            context or SagaContext(),
            user=user,
            engine=engine,
        )

    @classmethod
    def from_raw(
        cls, raw: dict[str, Any] | SagaExecution, *, engine: Engine | None = None, **kwargs: Any
    ) -> SagaExecution:
        """The execution ``raw`` describes (as :attr:`raw` made it). The engine's saga stays the
        truth: the next call refreshes the object from it."""
        if isinstance(raw, SagaExecution):
            return raw
        definition = Saga.from_raw(raw["definition"])
        execution_uuid = _uuid.UUID(str(raw["uuid"]))
        steps = [_step_from_raw(definition, execution_uuid, s) for s in raw["executed_steps"]]
        paused = raw.get("paused_step")
        user = raw.get("user")
        execution = cls(
            definition,
            execution_uuid,
            SagaContext.from_raw(raw["context"]),
            SagaStatus(raw["status"]),
            steps,
            None if paused is None else _step_from_raw(definition, execution_uuid, paused),
            bool(raw.get("already_rollback")),
            None if user is None else _uuid.UUID(str(user)),
            engine=engine,
        )
        execution.error = raw.get("error")
        return execution

    @classmethod
    def from_snapshot(
        cls, snapshot: SagaSnapshot, definition: Saga, *, engine: Engine | None = None
    ) -> SagaExecution:
        """The execution that a sagakit saga of a minos workflow is."""
        user = (snapshot.input or {}).get("user")
        execution = cls(
            definition,
            _uuid.UUID(snapshot.saga_id),
            SagaContext(),
            user=None if user is None else _uuid.UUID(user),
            engine=engine,
        )
        execution._apply(snapshot)
        return execution

    @property
    def raw(self) -> dict[str, Any]:
        return {
            "uuid": str(self.uuid),
            "definition": self.definition.raw,
            "context": self.context.raw,
            "status": self.status.value,
            "executed_steps": [step.raw for step in self.executed_steps],
            "paused_step": None if self.paused_step is None else self.paused_step.raw,
            "already_rollback": self.already_rollback,
            "user": None if self.user is None else str(self.user),
            "error": self.error,
        }

    # -- driving -----------------------------------------------------------------------------

    async def execute(
        self,
        response: SagaResponse | None = None,
        autocommit: bool = True,
        *args: Any,
        broker_pool: _compiled.SagaRequestPublisher | None = None,
        **kwargs: Any,
    ) -> SagaContext:
        """Run the steps until the execution finishes, pauses or fails; return its context.

        The first call starts it; a later one gives the paused remote step its ``response``.
        With ``autocommit=False`` a finished execution waits for :meth:`commit` or
        :meth:`reject`.

        Raises:
            SagaPausedExecutionStepException: it waits for a remote step's reply.
            SagaFailedExecutionException: a step failed; it was rolled back (Errored).
            SagaExecutionAlreadyExecutedException: it had finished or errored already.
        """
        engine = await self._engine()
        workflow = _compiled.register(engine, self.definition).workflow
        if broker_pool is not None:
            _compiled.bind(str(self.uuid), broker_pool)
        snapshot = await _load(engine, self.uuid)
        if snapshot is None:
            if self.status != SagaStatus.Created:
                raise SagaExecutionNotFoundException(
                    f"execution {self.uuid} is {self.status.name} but its saga is not in the "
                    f"engine's database ({engine.url}); was it deleted?"
                )
            inp = {
                "context": self.context.raw,
                "user": None if self.user is None else str(self.user),
                "autocommit": autocommit,
                "definition": self.definition.raw,
            }
            await engine.start(workflow, inp, saga_id=str(self.uuid))
            snapshot = await self._settle(engine, _moved_on)
        else:
            self._apply(snapshot)
            if self.status in (SagaStatus.Finished, SagaStatus.Errored):
                raise SagaExecutionAlreadyExecutedException(
                    f"execution {self.uuid} is {self.status.name}: it runs once; start a new "
                    "one with SagaExecution.from_definition"
                )
            if response is not None:
                snapshot = await self._answer(engine, snapshot, response, autocommit)
            else:
                snapshot = await self._settle(engine, _moved_on)
        self._apply(snapshot)
        return outcome_of(self)

    async def commit(self, **kwargs: Any) -> None:
        """Commit an execution that ran with ``autocommit=False``: it finishes (COMPLETED).
        Nothing is sent to the participants: :class:`~.commit.TransactionCommitter` does that."""
        engine = await self._engine()
        snapshot = await self._require(engine)
        if snapshot.status == EngineStatus.COMPLETED:
            return
        if not awaits_decision(snapshot):
            raise SagaFailedCommitCallbackException(
                f"cannot commit execution {self.uuid}: it is {self.status.name} (sagakit: "
                f"{snapshot.status}); commit() applies to an execution that finished its steps "
                "with autocommit=False"
            )
        self._apply(await decide(engine, self.uuid, _compiled.COMMIT))

    async def reject(self, **kwargs: Any) -> None:
        """Reject an execution that ran with ``autocommit=False``: its steps are rolled back
        (each on_failure, newest first) and it is Errored."""
        engine = await self._engine()
        snapshot = await self._require(engine)
        if snapshot.status in _ERRORED:
            return
        if not awaits_decision(snapshot):
            raise SagaExecutionException(
                f"cannot reject execution {self.uuid}: it is {self.status.name} (sagakit: "
                f"{snapshot.status}); reject() applies to an execution that finished its steps "
                "with autocommit=False (use rollback() to undo a committed one)"
            )
        self._apply(await decide(engine, self.uuid, _compiled.REJECT))

    async def rollback(self, autoreject: bool = True, **kwargs: Any) -> None:
        """Undo the executed steps: each ``on_failure``, newest first, once each.

        Works on a Finished execution (committed or waiting for commit) and a Paused one; on
        an execution that was rolled back already (Errored) it does nothing.

        Raises:
            SagaRollbackExecutionException: it is running (wait for it to pause or finish),
                or a compensation failed for good (the saga is FAILED: see ``engine.admin``).
        """
        engine = await self._engine()
        snapshot = await _load(engine, self.uuid)
        if snapshot is None:
            if self.status == SagaStatus.Created:
                self.already_rollback = True  # it never ran: nothing to undo
                return
            raise SagaExecutionNotFoundException(f"execution {self.uuid} is not in {engine.url}")
        self._apply(snapshot)
        if snapshot.status in _ERRORED or snapshot.status == EngineStatus.COMPENSATING:
            snapshot = await self._settle(engine, _ended)
        elif awaits_decision(snapshot):
            snapshot = await decide(engine, self.uuid, _compiled.REJECT)
        elif snapshot.status in (EngineStatus.COMPLETED, EngineStatus.SUSPENDED):
            await engine.admin.compensate(str(self.uuid), reason="SagaExecution.rollback()")
            snapshot = await self._settle(engine, _ended)
        else:
            raise SagaRollbackExecutionException(
                f"cannot roll back execution {self.uuid} while it runs (sagakit: "
                f"{snapshot.status}); wait until it pauses or finishes"
            )
        self._apply(snapshot)
        if snapshot.status == EngineStatus.FAILED:
            raise SagaRollbackExecutionException(
                f"the rollback of execution {self.uuid} is incomplete: a compensation failed for "
                f"good ({_message(snapshot)}); retry it with engine.admin.retry_step"
            )

    async def refresh(self) -> SagaExecution:
        """Read the execution's state from its engine again."""
        engine = await self._engine()
        snapshot = await _load(engine, self.uuid)
        if snapshot is not None:
            self._apply(snapshot)
        return self

    async def wait_unpaused(self) -> SagaExecution:
        """Wait until a reply (delivered by anyone, in any process) moves a Paused execution
        on, and it pauses again, finishes or fails."""
        engine = await self._engine()
        start = await self._require(engine)
        waiting = _current_wait(start)
        self._apply(
            await self._settle(
                engine, lambda s: _ended(s) or (_moved_on(s) and _current_wait(s) != waiting)
            )
        )
        return self

    # -- internals ---------------------------------------------------------------------------

    async def _engine(self) -> Engine:
        if self.engine is None:
            self.engine = default_engine()
        return await started(self.engine)

    async def _require(self, engine: Engine) -> SagaSnapshot:
        snapshot = await _load(engine, self.uuid)
        if snapshot is None:
            raise SagaExecutionNotFoundException(
                f"execution {self.uuid} has not been executed in {engine.url}: execute() it first"
            )
        self._apply(snapshot)
        return snapshot

    async def _answer(
        self, engine: Engine, snapshot: SagaSnapshot, response: SagaResponse, autocommit: bool
    ) -> SagaSnapshot:
        """Deliver a remote step's reply (once: a reply taken before is ignored) and wait until
        the execution has used it."""
        identifier = str(response.identifier)
        if identifier in _taken_replies(snapshot):
            return snapshot
        payload = {"response": response.raw, "autocommit": autocommit}
        await engine.signal(
            str(self.uuid), _compiled.RESPONSE_SIGNAL, payload, key=f"minos-response:{identifier}"
        )
        return await self._settle(
            engine, lambda s: _ended(s) or (_moved_on(s) and identifier in _taken_replies(s))
        )

    async def _settle(self, engine: Engine, done: Callable[[SagaSnapshot], bool]) -> SagaSnapshot:
        return await settle(engine, self.uuid, done)

    def _apply(self, snapshot: SagaSnapshot) -> None:
        """Take status, context and steps from the saga's row and journal."""
        walk = _Walk(snapshot)
        context: dict[str, Any] = dict((snapshot.input or {}).get("context") or {})
        executed, paused, context, _ = walk.block(self.definition, "minos", self.uuid, context)
        if snapshot.status == EngineStatus.COMPLETED:
            context = (snapshot.output or {}).get("context", context)
        self.context = SagaContext.from_raw(context)
        self.executed_steps = executed
        self.status = _status(snapshot)
        self.paused_step = paused if self.status == SagaStatus.Paused else None
        self.already_rollback = snapshot.status in (
            EngineStatus.COMPENSATING,
            EngineStatus.COMPENSATED,
            EngineStatus.FAILED,
        ) or bool(walk.undos)
        self.error = snapshot.error

    def __repr__(self) -> str:
        return f"<SagaExecution {self.uuid} {self.status.name}>"


class _Walk:
    """Follows a definition (and the branches its conditional steps took) through a saga's
    journal, building the step executions."""

    def __init__(self, snapshot: SagaSnapshot) -> None:
        self.steps = {s.name: s for s in snapshot.steps if s.kind == EntryKind.STEP}
        self.undos = {s.name: s for s in snapshot.steps if s.kind == EntryKind.COMPENSATION}
        #: the replies, in the order the remote steps took them (the walk's order)
        self.replies = [
            s
            for s in snapshot.steps
            if s.kind == EntryKind.SIGNAL and s.name == _compiled.RESPONSE_SIGNAL
        ]
        self.remote = 0

    def block(
        self, definition: Saga, prefix: str, parent: _uuid.UUID, context: dict[str, Any]
    ) -> tuple[list[SagaStepExecution], SagaStepExecution | None, dict[str, Any], bool]:
        """The executed steps of ``definition``, its paused step, the context after them, and
        whether every step finished."""
        executed: list[SagaStepExecution] = []
        paused: SagaStepExecution | None = None
        for index, step in enumerate(definition.steps):
            step_uuid = _uuid.uuid5(parent, str(index))
            execution: SagaStepExecution
            if isinstance(step, ConditionalSagaStep):
                found = self.conditional(step, prefix, index, step_uuid, context)
                if found is None:
                    return executed, paused, context, False
                execution, context = found
                if execution.status == SagaStepStatus.PausedByOnExecute:
                    paused = execution
            else:
                first = self.steps.get(_compiled.step_name(index, "on_execute", prefix))
                if first is None:
                    return executed, paused, context, False
                if isinstance(step, LocalSagaStep):
                    status = _local_status(first)
                    if status == SagaStepStatus.Finished:
                        context = first.output
                    execution = LocalSagaStepExecution(step, step_uuid, status)
                    undo = self.undos.get(first.name)
                else:
                    reply = self.replies[self.remote] if self.remote < len(self.replies) else None
                    self.remote += 1
                    status, handler = _remote_status(prefix, index, first, reply, self.steps)
                    if handler is not None and handler.status == EntryStatus.COMPLETED:
                        context = handler.output
                    done = first.status == EntryStatus.COMPLETED
                    execution = RemoteSagaStepExecution(
                        step,
                        step_uuid,
                        status,
                        SagaRequest.from_raw(first.output) if done else None,
                        _services(reply),
                    )
                    undo = None if handler is None else self.undos.get(handler.name)
                    if status == SagaStepStatus.PausedByOnExecute:
                        paused = execution
                if undo is not None and undo.status != EntryStatus.COMPLETED:
                    execution.status = (
                        SagaStepStatus.ErroredOnFailure
                        if undo.status == EntryStatus.FAILED
                        else SagaStepStatus.RunningOnFailure
                    )
            if execution.status in _FORWARD_DONE:
                executed.append(execution)
            if execution.status != SagaStepStatus.Finished:
                return executed, paused, context, False
        return executed, paused, context, True

    def conditional(
        self,
        step: ConditionalSagaStep,
        prefix: str,
        index: int,
        step_uuid: _uuid.UUID,
        context: dict[str, Any],
    ) -> tuple[ConditionalSagaStepExecution, dict[str, Any]] | None:
        choice = self.steps.get(_compiled.step_name(index, "condition", prefix))
        if choice is None:
            return None
        if choice.status != EntryStatus.COMPLETED:
            status = _local_status(choice)
            return ConditionalSagaStepExecution(step, step_uuid, status), context
        label = choice.output["branch"]
        if label is None:
            return ConditionalSagaStepExecution(step, step_uuid, SagaStepStatus.Finished), context
        branch = step.branches[label]
        # the compiled branch's journal names: minos[i].<label>[j].…
        inner_prefix = _compiled.step_name(index, label, prefix)
        steps, paused, after, finished = self.block(branch, inner_prefix, step_uuid, context)
        inner = SagaExecution(branch, step_uuid, SagaContext.from_raw(after), steps=steps)
        inner.paused_step = paused
        status = SagaStepStatus.Finished if finished else _branch_status(steps, paused)
        inner.status = _INNER_STATUS.get(status, SagaStatus.Running)
        return ConditionalSagaStepExecution(step, step_uuid, status, inner), after


def _branch_status(
    steps: list[SagaStepExecution], paused: SagaStepExecution | None
) -> SagaStepStatus:
    """A conditional step's status from its unfinished branch's."""
    if paused is not None:
        return SagaStepStatus.PausedByOnExecute
    statuses = {step.status for step in steps}
    for status in (SagaStepStatus.ErroredOnFailure, SagaStepStatus.RunningOnFailure):
        if status in statuses:
            return status
    return SagaStepStatus.RunningOnExecute


_INNER_STATUS = {
    SagaStepStatus.Finished: SagaStatus.Finished,
    SagaStepStatus.PausedByOnExecute: SagaStatus.Paused,
    SagaStepStatus.ErroredOnFailure: SagaStatus.Errored,
    SagaStepStatus.ErroredOnExecute: SagaStatus.Errored,
}


def _services(reply: StepSnapshot | None) -> set[str]:
    """The services a remote step's reply named."""
    if reply is None or reply.status != EntryStatus.COMPLETED:
        return set()
    response = reply.output["value"]["response"]
    services = set(response.get("related_services") or ())
    if response.get("service_name"):
        services.add(response["service_name"])
    return services


def outcome_of(execution: SagaExecution) -> SagaContext:
    """The context of an execution that finished; raise for one that paused or failed (what
    ``execute`` returns or raises once its saga stopped)."""
    if execution.status == SagaStatus.Paused:
        step = execution.paused_step
        raise SagaPausedExecutionStepException(
            f"execution {execution.uuid} paused at remote step {step.uuid if step else '?'}: "
            "deliver its reply with execute(response=...) or "
            "SagaManager.run(response=SagaResponse(..., uuid=execution.uuid))"
        )
    if execution.status == SagaStatus.Errored:
        raise SagaFailedExecutionException(
            f"execution {execution.uuid} failed and was rolled back: {_message_of(execution.error)}"
        )
    return execution.context


_FORWARD_DONE = frozenset(
    {SagaStepStatus.Finished, SagaStepStatus.RunningOnFailure, SagaStepStatus.ErroredOnFailure}
)


def _local_status(entry: StepSnapshot) -> SagaStepStatus:
    if entry.status == EntryStatus.COMPLETED:
        return SagaStepStatus.Finished
    if entry.status == EntryStatus.FAILED:
        return SagaStepStatus.ErroredOnExecute
    return SagaStepStatus.RunningOnExecute


def _remote_status(
    prefix: str,
    index: int,
    first: StepSnapshot,
    reply: StepSnapshot | None,
    steps: dict[str, StepSnapshot],
) -> tuple[SagaStepStatus, StepSnapshot | None]:
    """A remote step's status, and the entry of its reply handler (if it ran)."""
    if first.status == EntryStatus.FAILED:
        return SagaStepStatus.ErroredOnExecute, None
    if first.status != EntryStatus.COMPLETED:
        return SagaStepStatus.RunningOnExecute, None
    if reply is None or reply.status != EntryStatus.COMPLETED:
        return SagaStepStatus.PausedByOnExecute, None
    response = reply.output["value"]["response"]
    if response["status"] == 500:
        return SagaStepStatus.ErroredByOnExecute, None
    ok = response["status"] == 200
    handler = steps.get(_compiled.step_name(index, "on_success" if ok else "on_error", prefix))
    if handler is None or handler.status not in (EntryStatus.COMPLETED, EntryStatus.FAILED):
        return (SagaStepStatus.RunningOnSuccess if ok else SagaStepStatus.RunningOnError), handler
    if handler.status == EntryStatus.FAILED:
        return (SagaStepStatus.ErroredOnSuccess if ok else SagaStepStatus.ErroredOnError), handler
    return SagaStepStatus.Finished, handler


def _current_wait(snapshot: SagaSnapshot) -> StepSnapshot | None:
    """The signal wait the saga is suspended in, if any."""
    if snapshot.status != EngineStatus.SUSPENDED:
        return None
    for step in reversed(snapshot.steps):
        if step.kind == EntryKind.SIGNAL and step.status == EntryStatus.RUNNING:
            return step
    return None


def awaits_decision(snapshot: SagaSnapshot) -> bool:
    """The execution finished its steps with ``autocommit=False`` and waits for
    commit/reject."""
    wait = _current_wait(snapshot)
    return wait is not None and wait.name == _compiled.DECISION_SIGNAL


def _ended(snapshot: SagaSnapshot) -> bool:
    return snapshot.status.is_terminal or snapshot.status == EngineStatus.PARKED


def _moved_on(snapshot: SagaSnapshot) -> bool:
    """The saga has gone as far as it can without a reply or a decision (or ended)."""
    return _ended(snapshot) or _current_wait(snapshot) is not None


def _taken_replies(snapshot: SagaSnapshot) -> set[str]:
    """The identifiers of the replies the saga's remote steps have taken."""
    return {
        str(s.output["value"]["response"].get("identifier"))
        for s in snapshot.steps
        if s.kind == EntryKind.SIGNAL
        and s.name == _compiled.RESPONSE_SIGNAL
        and s.status == EntryStatus.COMPLETED
    }


def _status(snapshot: SagaSnapshot) -> SagaStatus:
    status = snapshot.status
    if status == EngineStatus.COMPLETED:
        return SagaStatus.Finished
    if status in _ERRORED:
        return SagaStatus.Errored
    if status == EngineStatus.SUSPENDED:
        wait = _current_wait(snapshot)
        if wait is not None:
            return (
                SagaStatus.Finished if wait.name == _compiled.DECISION_SIGNAL else SagaStatus.Paused
            )
    return SagaStatus.Running


def _message_of(error: dict[str, Any] | None) -> str:
    cause = (error or {}).get("cause") or error or {}
    return f"{cause.get('type', 'Error')}: {cause.get('message', 'unknown')}"


def _message(snapshot: SagaSnapshot) -> str:
    return _message_of(snapshot.error)


async def settle(
    engine: Engine, execution_uuid: _uuid.UUID, done: Callable[[SagaSnapshot], bool]
) -> SagaSnapshot:
    """The execution's saga once ``done(snapshot)`` holds (looked at with a growing pause)."""
    delay = 0.005
    while True:
        snapshot = await _load(engine, execution_uuid)
        if snapshot is None:
            raise SagaExecutionNotFoundException(
                f"execution {execution_uuid} disappeared from {engine.url} (deleted?)"
            )
        if done(snapshot):
            return snapshot
        await asyncio.sleep(delay)
        delay = min(delay * 2, _POLL_MAX)


async def decide(engine: Engine, execution_uuid: _uuid.UUID, decision: str) -> SagaSnapshot:
    """Give an execution that waits for commit/reject its ``decision`` (taken once: the signal
    has a fixed key) and wait until the saga ended; return it. An execution that does not wait
    for a decision is returned as it is."""
    snapshot = await _load(engine, execution_uuid)
    if snapshot is None:
        raise SagaExecutionNotFoundException(
            f"execution {execution_uuid} is not in {engine.url}: execute() it first"
        )
    if not awaits_decision(snapshot):
        return snapshot
    await engine.signal(
        str(execution_uuid), _compiled.DECISION_SIGNAL, decision, key="minos-decision"
    )
    return await settle(engine, execution_uuid, _ended)


async def _load(engine: Engine, execution_uuid: _uuid.UUID) -> SagaSnapshot | None:
    try:
        return await engine.get(str(execution_uuid))
    except SagaNotFoundError:
        return None


def _step_from_raw(
    definition: Saga, execution_uuid: _uuid.UUID, raw: dict[str, Any]
) -> SagaStepExecution:
    step_uuid = _uuid.UUID(raw["uuid"])
    index = next(
        (
            i
            for i in range(len(definition.steps))
            if _uuid.uuid5(execution_uuid, str(i)) == step_uuid
        ),
        None,
    )
    if index is None:
        raise SagaExecutionException(f"step {step_uuid} is not a step of this execution")
    step = definition.steps[index]
    status = SagaStepStatus(raw["status"])
    if isinstance(step, RemoteSagaStep):
        request = raw.get("request")
        return RemoteSagaStepExecution(
            step,
            step_uuid,
            status,
            None if request is None else SagaRequest.from_raw(request),
            set(raw.get("related_services") or ()),
        )
    if isinstance(step, ConditionalSagaStep):
        inner = raw.get("inner")
        return ConditionalSagaStepExecution(
            step, step_uuid, status, None if inner is None else _inner_from_raw(step, inner)
        )
    return LocalSagaStepExecution(step, step_uuid, status)


def _inner_from_raw(step: ConditionalSagaStep, raw: dict[str, Any]) -> SagaExecution:
    """A conditional step's branch view, on the step's own branch definition."""
    branch_raw = raw["definition"]
    branch = next((b for b in step.branches.values() if b.raw == branch_raw), None)
    if branch is None:
        raise SagaExecutionException("a conditional step's branch is not one of its definition's")
    inner_uuid = _uuid.UUID(str(raw["uuid"]))
    paused = raw.get("paused_step")
    inner = SagaExecution(
        branch,
        inner_uuid,
        SagaContext.from_raw(raw["context"]),
        SagaStatus(raw["status"]),
        [_step_from_raw(branch, inner_uuid, s) for s in raw["executed_steps"]],
        None if paused is None else _step_from_raw(branch, inner_uuid, paused),
        bool(raw.get("already_rollback")),
    )
    inner.error = raw.get("error")
    return inner


__all__ = [
    "ConditionalSagaStepExecution",
    "LocalSagaStepExecution",
    "RemoteSagaStepExecution",
    "SagaExecution",
    "SagaStepExecution",
]
