"""minos's ``TransactionCommitter``: ends an execution's transaction and tells its participants.

In minos the committer ran a two-phase commit over the broker: ``_Reserve<Service>Transaction``
to every participating service, then ``_Commit…`` (all reserved) or ``_Reject…``. Here:

* the execution's own decision is sagakit's: an execution waiting for commit/reject
  (``autocommit=False``) gets it, as :meth:`SagaExecution.commit` / ``reject`` give it (a
  rejection rolls its steps back);
* then each participant gets a ``_Commit<Service>Transaction`` (or ``_Reject…``) request whose
  content is the execution's uuid, through the same :class:`~.compiled.SagaRequestPublisher` the
  remote steps use, under a key that is the same every time (a commit retried after a crash
  publishes again with the same keys, for the broker or participant to drop the copy).

There is no reserve phase: the publisher protocol sends and does not wait for answers, so a
participant that cannot commit is not heard from here.
"""

from __future__ import annotations

import uuid as _uuid
from typing import Any

from ...engine import Engine
from ...stores.base import SagaStatus as EngineStatus
from . import compiled as _compiled
from .engines import default_engine, started
from .exceptions import SagaExecutionException, SagaFailedCommitCallbackException
from .executions import (
    ConditionalSagaStepExecution,
    RemoteSagaStepExecution,
    SagaStepExecution,
    decide,
)
from .messages import SagaRequest

_ERRORED = frozenset(
    {EngineStatus.COMPENSATED, EngineStatus.FAILED, EngineStatus.PARKED, EngineStatus.CANCELLED}
)


class TransactionCommitter:
    """Commits or rejects the transaction of the execution ``execution_uuid``.

    Args:
        execution_uuid: the execution (its saga's id).
        executed_steps: its executed steps (``execution.executed_steps``): their remote steps
            name the participants.
        broker_publisher: where the participants' messages go (a SagaRequestPublisher); None:
            ``broker_pool`` if given, else no message is sent.
        broker_pool: accepted as minos's; used as the publisher when ``broker_publisher`` is
            None (a SagaManager's broker_pool is one).
        engine: the Engine the execution runs on (default: ``set_default_engine``'s).
        user: sent with the messages.
    """

    def __init__(
        self,
        execution_uuid: _uuid.UUID,
        executed_steps: list[SagaStepExecution],
        broker_publisher: _compiled.SagaRequestPublisher | None = None,
        broker_pool: _compiled.SagaRequestPublisher | None = None,
        *,
        engine: Engine | None = None,
        user: _uuid.UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.execution_uuid = execution_uuid
        self.executed_steps = list(executed_steps)
        self.broker_publisher = _compiled.check_publisher(broker_publisher)
        self.broker_pool = _compiled.check_publisher(broker_pool)
        self.engine = engine
        self.user = user

    @property
    def transactions(self) -> list[tuple[_uuid.UUID, str]]:
        """The ``(execution uuid, service)`` pairs of the participants, sorted: for each remote
        step (those of the branches its conditional steps took included), the services its
        reply named (``SagaResponse.related_services`` / ``service_name``), or, when it named
        none, its request's target. A branch runs inside the execution, so its transactions
        are the execution's (minos gave a branch a uuid of its own)."""
        services: set[str] = set()
        for step in _remote_steps(self.executed_steps):
            if step.related_services:
                services |= step.related_services
            elif step.request is not None:
                services.add(step.request.target)
        return [(self.execution_uuid, service) for service in sorted(services)]

    async def commit(self, **kwargs: Any) -> None:
        """Commit the execution (if it waits for commit/reject) and send each participant its
        ``_Commit<Service>Transaction``.

        Raises:
            SagaFailedCommitCallbackException: the execution did not finish its steps (Paused,
                Running) or was rolled back: there is nothing to commit.
        """
        snapshot = await decide(await self._engine(), self.execution_uuid, _compiled.COMMIT)
        if snapshot.status != EngineStatus.COMPLETED:
            raise SagaFailedCommitCallbackException(
                f"cannot commit execution {self.execution_uuid}: its saga is {snapshot.status}; "
                "a transaction is committed once the execution finished its steps"
            )
        await self._tell("Commit")

    async def reject(self) -> None:
        """Reject the execution (if it waits for commit/reject: its steps are rolled back) and
        send each participant its ``_Reject<Service>Transaction``.

        Raises:
            SagaExecutionException: the execution was committed (roll it back with
                ``SagaExecution.rollback()`` first) or is still running or paused.
        """
        snapshot = await decide(await self._engine(), self.execution_uuid, _compiled.REJECT)
        if snapshot.status not in _ERRORED:
            raise SagaExecutionException(
                f"cannot reject execution {self.execution_uuid}: its saga is {snapshot.status}; "
                "reject an execution waiting for commit/reject, or one rolled back "
                "(SagaExecution.rollback())"
            )
        await self._tell("Reject")

    async def _tell(self, action: str) -> None:
        publisher = self.broker_publisher or self.broker_pool
        if publisher is None:
            return
        for transaction, service in self.transactions:
            await publisher.publish(
                SagaRequest(_topic(action, service), str(transaction)),
                execution_uuid=self.execution_uuid,
                user=self.user,
                key=f"{self.execution_uuid}:{action.lower()}:{service}",
            )

    async def _engine(self) -> Engine:
        return await started(self.engine or default_engine())


def _topic(action: str, service: str) -> str:
    """minos's participant topic: ``_Commit<Service>Transaction``."""
    return f"_{action}{service[:1].upper()}{service[1:]}Transaction"


def _remote_steps(steps: list[SagaStepExecution]) -> list[RemoteSagaStepExecution]:
    found: list[RemoteSagaStepExecution] = []
    for step in steps:
        if isinstance(step, RemoteSagaStepExecution):
            found.append(step)
        elif isinstance(step, ConditionalSagaStepExecution) and step.inner is not None:
            found.extend(_remote_steps(step.inner.executed_steps))
    return found


__all__ = ["TransactionCommitter"]
