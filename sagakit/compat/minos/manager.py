"""minos's ``SagaManager``: start an execution, or resume one with a reply, and store it."""

from __future__ import annotations

import uuid as _uuid
from typing import Any

from ...engine import Engine
from . import compiled as _compiled
from .definitions import Saga
from .engines import default_engine, started
from .exceptions import (
    SagaException,
    SagaFailedExecutionException,
    SagaPausedExecutionStepException,
)
from .executions import SagaExecution, outcome_of
from .messages import SagaContext, SagaResponse, SagaStatus
from .repositories import SagaExecutionRepository


class SagaManager:
    """Runs executions on an Engine and keeps them in ``storage``.

    Args:
        storage: the repository (its Engine is the manager's, for a
            ``DatabaseSagaExecutionRepository``).
        broker_pool: sends remote steps' requests: anything with
            ``async def publish(request, *, execution_uuid, user, key)``
            (:class:`SagaRequestPublisher`). Without one, a request is only recorded
            (``execution.paused_step.request``) for you to send.
        engine: the Engine when ``storage`` has none (default: ``set_default_engine``'s).
    """

    def __init__(
        self,
        storage: SagaExecutionRepository,
        broker_pool: _compiled.SagaRequestPublisher | None = None,
        pool_factory: Any = None,
        *,
        engine: Engine | None = None,
        **kwargs: Any,
    ) -> None:
        self.storage = storage
        self.broker_pool = _compiled.check_publisher(broker_pool)
        self._engine = engine

    @property
    def engine(self) -> Engine:
        """The Engine executions run on."""
        return self._engine or self.storage.engine or default_engine()

    def register(self, *definitions: Saga) -> None:
        """Make this process's engine recover the executions of ``definitions`` (after a crash
        or restart, a worker replays only workflows it knows) and send their requests through
        this manager's broker_pool. ``run`` and ``load`` register what they touch."""
        for definition in definitions:
            _compiled.register(self.engine, definition).publisher = self.broker_pool

    async def run(
        self,
        definition: Saga | None = None,
        context: SagaContext | None = None,
        response: SagaResponse | None = None,
        user: _uuid.UUID | None = None,
        autocommit: bool = True,
        pause_on_disk: bool = False,
        raise_on_error: bool = True,
        return_execution: bool = True,
        **kwargs: Any,
    ) -> SagaExecution | _uuid.UUID:
        """Start ``definition`` with ``context``, or give a paused execution its ``response``
        (``response.uuid`` names the execution); return the execution (or its uuid).

        ``pause_on_disk=False`` waits here, while a remote step is paused, until its reply is
        delivered (by another ``run(response=...)``, in any process); ``pause_on_disk=True``
        returns the Paused execution at once. Either way nothing of a paused execution is kept
        in memory: it is SUSPENDED in the engine's database.

        Raises:
            SagaFailedExecutionException: a step failed (the execution was rolled back), with
                ``raise_on_error=True``; otherwise the Errored execution is returned.
        """
        engine = await started(self.engine)
        if response is not None:
            if response.uuid is None:
                raise SagaException(
                    "SagaManager.run(response=...) needs the execution the response answers: "
                    "SagaResponse(..., uuid=execution.uuid)"
                )
            execution = await self.storage.load(response.uuid)
        elif definition is not None:
            execution = SagaExecution.from_definition(definition, context, user=user)
        else:
            raise SagaException("SagaManager.run needs a definition (to start) or a response")
        if execution.engine is None:
            execution.engine = engine
        _compiled.register(engine, execution.definition)
        if self.broker_pool is not None:
            # a manager without one leaves the pool the execution was started with
            _compiled.bind(str(execution.uuid), self.broker_pool)
        try:
            try:
                await execution.execute(response=response, autocommit=autocommit)
            except SagaPausedExecutionStepException:
                while not pause_on_disk and execution.status == SagaStatus.Paused:
                    await execution.wait_unpaused()
                if execution.status == SagaStatus.Errored:
                    outcome_of(execution)
        except SagaFailedExecutionException:
            if raise_on_error:
                raise
        finally:
            await self.storage.store(execution)
        return execution if return_execution else execution.uuid


__all__ = ["SagaManager"]
