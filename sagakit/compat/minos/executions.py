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
the step's prefix (``minos[i].if0[j]…``) and shown as the step's ``inner`` execution. The step
executions, and how they are read from the journal, are in :mod:`.step_executions`.
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
from .definitions import Saga
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
from .messages import SagaContext, SagaResponse, SagaStatus
from .step_executions import (
    ConditionalSagaStepExecution,
    JournalWalk,
    LocalSagaStepExecution,
    RemoteSagaStepExecution,
    SagaStepExecution,
    step_from_raw,
)

_ERRORED = frozenset(
    {EngineStatus.COMPENSATED, EngineStatus.FAILED, EngineStatus.PARKED, EngineStatus.CANCELLED}
)
#: the longest pause between two looks at a saga that is still moving
_POLL_MAX = 0.1


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
        steps = [step_from_raw(definition, execution_uuid, s) for s in raw["executed_steps"]]
        paused = raw.get("paused_step")
        user = raw.get("user")
        execution = cls(
            definition,
            execution_uuid,
            SagaContext.from_raw(raw["context"]),
            SagaStatus(raw["status"]),
            steps,
            None if paused is None else step_from_raw(definition, execution_uuid, paused),
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
        walk = JournalWalk(snapshot)
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


__all__ = [
    "ConditionalSagaStepExecution",
    "LocalSagaStepExecution",
    "RemoteSagaStepExecution",
    "SagaExecution",
    "SagaStepExecution",
]
