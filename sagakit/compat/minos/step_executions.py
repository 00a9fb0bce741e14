"""minos's step executions (``SagaStepExecution`` and its local, remote and conditional kinds)
and how they are built: from a saga's journal (:class:`JournalWalk`, which follows a definition
and the branches its conditional steps took) or from their ``raw`` form (:func:`step_from_raw`).

A step's uuid is derived from its execution's and its position; a conditional step's branch runs
inside the same saga, its steps found in the journal under the step's prefix
(``minos[i].if0[j]…``) and shown as the step's ``inner`` execution (a :class:`SagaExecution`).
"""

from __future__ import annotations

import uuid as _uuid
from typing import TYPE_CHECKING, Any

from ...engine import SagaSnapshot, StepSnapshot
from ...stores.base import EntryKind, EntryStatus
from . import compiled as _compiled
from .definitions import ConditionalSagaStep, LocalSagaStep, RemoteSagaStep, Saga, SagaStep
from .exceptions import SagaExecutionException
from .messages import SagaContext, SagaRequest, SagaStatus, SagaStepStatus

if TYPE_CHECKING:
    from .executions import SagaExecution


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


class JournalWalk:
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
        # imported here: executions.py imports this module (a branch view is a SagaExecution)
        from .executions import SagaExecution

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


def step_from_raw(
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
    # imported here: executions.py imports this module (a branch view is a SagaExecution)
    from .executions import SagaExecution

    inner_uuid = _uuid.UUID(str(raw["uuid"]))
    paused = raw.get("paused_step")
    inner = SagaExecution(
        branch,
        inner_uuid,
        SagaContext.from_raw(raw["context"]),
        SagaStatus(raw["status"]),
        [step_from_raw(branch, inner_uuid, s) for s in raw["executed_steps"]],
        None if paused is None else step_from_raw(branch, inner_uuid, paused),
        bool(raw.get("already_rollback")),
    )
    inner.error = raw.get("error")
    return inner


__all__ = [
    "ConditionalSagaStepExecution",
    "JournalWalk",
    "LocalSagaStepExecution",
    "RemoteSagaStepExecution",
    "SagaStepExecution",
    "step_from_raw",
]
