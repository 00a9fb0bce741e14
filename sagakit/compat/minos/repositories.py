"""minos's execution repositories: the abstract one (subclass it to keep executions' raw form
where you like) and the database one, which is a sagakit Engine's own store."""

from __future__ import annotations

import uuid as _uuid
from abc import ABC, abstractmethod
from typing import Any

from ...engine import Engine
from ...errors import SagaNotFoundError
from . import compiled as _compiled
from .definitions import Saga
from .engines import opened_here, started
from .exceptions import SagaExecutionNotFoundException
from .executions import SagaExecution


class SagaExecutionRepository(ABC):
    """Where a ``SagaManager`` keeps executions: ``store``, ``load``, ``delete`` (async).

    ``async with repository:`` (or ``setup()`` / ``destroy()``) opens and closes what it needs.
    """

    #: the Engine executions loaded from here run on (None: the default engine)
    engine: Engine | None = None

    @abstractmethod
    async def store(self, execution: SagaExecution) -> None:
        """Keep ``execution`` (called by the manager after each run)."""

    @abstractmethod
    async def load(self, uuid: _uuid.UUID | str) -> SagaExecution:
        """The execution ``uuid``; SagaExecutionNotFoundException if there is none."""

    @abstractmethod
    async def delete(self, uuid: _uuid.UUID | str | SagaExecution) -> None:
        """Forget the execution ``uuid``."""

    async def setup(self) -> None:
        """Open what the repository needs (nothing by default)."""
        return None

    async def destroy(self) -> None:
        """Close what :meth:`setup` opened (nothing by default)."""
        return None

    async def __aenter__(self) -> SagaExecutionRepository:
        await self.setup()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.destroy()


class DatabaseSagaExecutionRepository(SagaExecutionRepository):
    """Executions kept in a sagakit Engine's database: each execution is the engine's saga
    whose id is the execution's uuid, so the journal is the record and :meth:`store` has
    nothing to add.

    Args:
        engine: the Engine, or a store URL (``sqlite:///sagas.db``,
            ``postgresql://user@host/db``) to make one. Started on first use if it is not
            running (``async with engine:``); :meth:`destroy` closes an engine started that way.
    """

    def __init__(self, engine: Engine | str = "sqlite:///sagakit.db", **kwargs: Any) -> None:
        self.engine = engine if isinstance(engine, Engine) else Engine(engine)

    async def setup(self) -> None:
        assert self.engine is not None
        await started(self.engine)

    async def destroy(self) -> None:
        if self.engine is not None and self.engine in opened_here:
            opened_here.discard(self.engine)
            await self.engine.close()

    async def store(self, execution: SagaExecution) -> None:
        """Nothing to write (the engine journaled every step); binds ``execution`` to this
        repository's engine if it had none."""
        if execution.engine is None:
            execution.engine = self.engine

    async def load(self, uuid: _uuid.UUID | str) -> SagaExecution:
        engine = await started(self._engine())
        try:
            snapshot = await engine.get(str(uuid))
        except SagaNotFoundError:
            raise SagaExecutionNotFoundException(
                f"no saga execution {uuid} in {engine.url}"
            ) from None
        found = _compiled.known(snapshot.name)
        if found is not None:
            definition = found.definition
        elif snapshot.name.startswith("minos-saga-") and isinstance(snapshot.input, dict):
            definition = Saga.from_raw(snapshot.input["definition"])
        else:
            raise SagaExecutionNotFoundException(
                f"saga {uuid} in {engine.url} is a {snapshot.name!r} saga, not a minos execution"
            )
        _compiled.register(engine, definition)
        return SagaExecution.from_snapshot(snapshot, definition, engine=engine)

    async def delete(self, uuid: _uuid.UUID | str | SagaExecution) -> None:
        """Delete an ended execution (its saga, journal and events); an unknown one is ignored.

        Raises:
            SagaStateError: the execution has not ended (Paused, Running, or Finished waiting
                for commit/reject): finish or roll it back first.
        """
        saga_id = str(uuid.uuid if isinstance(uuid, SagaExecution) else uuid)
        engine = await started(self._engine())
        try:
            await engine.admin.delete(saga_id)
        except SagaNotFoundError:
            return

    def _engine(self) -> Engine:
        assert self.engine is not None
        return self.engine


__all__ = ["DatabaseSagaExecutionRepository", "SagaExecutionRepository"]
