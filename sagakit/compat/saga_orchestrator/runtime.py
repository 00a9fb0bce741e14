"""``SagaOrchestrator``, ``SagaEngine`` and ``SagaAdmin``: the seed's runtime API, each call
translated to sagakit's one :class:`~sagakit.Engine` (docs/migrating/python-saga-orchestrator.md).

* **Where sagas live.** Without ``engine=``, the sagakit store is the database the
  ``session_maker`` is bound to (``postgresql+asyncpg://…`` -> that PostgreSQL database,
  ``sqlite+aiosqlite:///file.db`` -> that SQLite file), opened on first use. Its engine is not
  a background worker: as in the seed, a saga moves on when a call of this API runs it
  (``start``, ``notify``, ``run_due``, the admin actions). Give ``engine=Engine(...)`` to choose
  the store, or to let sagakit's worker run due sagas by itself.
* **One active saga per aggregation id.** A saga's id is derived from the model's table, the
  ``aggregation_id`` and a generation number (a UUID): the first start of an aggregation id
  makes generation 0; a start while the newest generation has not ended raises
  ``ActiveSagaAlreadyExistsError``; once it has ended, the next start makes the next
  generation. Racing starts compute the same id and sagakit's store creates that saga once:
  one of them gets its id, the others ``ActiveSagaAlreadyExistsError``.
* **Your model's rows.** Each call writes the row of every saga it ran, once that saga's run
  has stopped here (completed, waiting, failed, rolled back), from sagakit's state.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ...declarative import SagaDefinition
from ...engine.engine import Engine
from ...errors import SagaConflictError
from ...errors import SagaNotFoundError as NativeNotFoundError
from ...stores.base import SagaStatus as NativeStatus
from .builder import ENVELOPE, is_seed_definition
from .errors import ActiveSagaAlreadyExistsError, SagaDefinitionError, SagaNotFoundError
from .mixin import SagaStateMixin
from .state import SagaAdminSnapshot, SagaSnapshot, project, row_values

ModelT = TypeVar("ModelT", bound=SagaStateMixin)

#: the namespace of the saga ids derived from aggregation ids
_NAMESPACE = uuid.UUID("5f0c9a5e-7d1b-4a4e-9b8e-2f6a1c3d4e50")
#: the most due sagas one call claims besides the one it acts on
_CLAIM = 100
#: the reason written in the audit (and last_error) of a saga ``abort`` cancelled
ABORT_REASON = "Aborted by admin"


def store_url_for(session_maker: async_sessionmaker[AsyncSession]) -> str:
    """sagakit's URL for the database a session maker is bound to."""
    bind = session_maker.kw.get("bind")
    url = getattr(bind, "url", None)
    if url is None:
        raise SagaDefinitionError(
            "the session_maker is bound to no engine, so there is no database to keep the "
            "sagas in: bind it (async_sessionmaker(engine)) or pass engine=sagakit.Engine(url)"
        )
    backend = url.get_backend_name()
    if backend == "postgresql":
        rendered: str = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return rendered
    if backend == "sqlite":
        database = url.database
        if not database or database == ":memory:" or url.query.get("mode") == "memory":
            # an in-memory SQLite lives in one connection: sagakit cannot share it
            return "memory://"
        return f"sqlite:///{database}"
    raise SagaDefinitionError(
        f"sagakit keeps sagas in PostgreSQL or SQLite; the session_maker is bound to "
        f"{backend!r}: pass engine=sagakit.Engine('postgresql://…' or 'sqlite:///file.db')"
    )


class SagaEngine(Generic[ModelT]):
    """The seed's engine: registers definitions, starts, wakes, recovers and steers sagas,
    and keeps your model's rows up to date. ``native`` is the sagakit Engine underneath."""

    def __init__(
        self,
        *,
        model_class: type[ModelT],
        session_maker: async_sessionmaker[AsyncSession],
        execution_lease: timedelta = timedelta(minutes=5),
        engine: Engine | None = None,
    ) -> None:
        self._model_class = model_class
        self._session_maker = session_maker
        self._execution_lease = execution_lease
        self._names: set[str] = set()
        self._owns_engine = engine is None
        self._native = engine if engine is not None else _engine_for(session_maker, execution_lease)
        self._opening: asyncio.Lock | None = None
        #: the scope of the saga ids derived from aggregation ids: the model's table
        self._scope = str(getattr(model_class, "__tablename__", model_class.__name__))

    @property
    def native(self) -> Engine:
        """The sagakit Engine that runs the sagas."""
        return self._native

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> Engine:
        """Open the sagakit engine if it is not open yet (each call below does it)."""
        if self._native.is_open:
            return self._native
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if not self._native.is_open:
                await self._native.__aenter__()
        return self._native

    async def close(self) -> None:
        """Close the sagakit engine (sagas running here are released for another process)."""
        await self._native.close()

    # -- definitions and starting ------------------------------------------------------------

    def register(self, name: str, saga_definition: SagaDefinition) -> None:
        """Register a definition built with this module's ``SagaBuilder`` under ``name``.

        Raises:
            SagaDefinitionError: ``name`` is taken, or the definition was built with sagakit's
                own builder (its steps would not get the seed's InputContext).
        """
        if name in self._names:
            raise SagaDefinitionError(f"Saga '{name}' is already registered")
        if not isinstance(saga_definition, SagaDefinition) or not is_seed_definition(
            saga_definition
        ):
            raise SagaDefinitionError(
                f"Saga '{name}': register takes a definition built with "
                "sagakit.compat.saga_orchestrator.SagaBuilder; register a definition of "
                "sagakit's own SagaBuilder with sagakit.Engine.register"
            )
        self._native.register(name, saga_definition)
        self._names.add(name)

    async def start(
        self,
        *,
        saga_name: str,
        initial_data: BaseModel | dict[str, Any] | Any,
        aggregation_id: str,
        trace_id: str | None = None,
    ) -> UUID:
        """Create a saga and run it here until it stops (completes, waits, or fails); return its
        id.

        Raises:
            SagaDefinitionError: ``saga_name`` is not registered.
            ActiveSagaAlreadyExistsError: a saga of this ``aggregation_id`` has not ended.
        """
        if saga_name not in self._names:
            raise SagaDefinitionError(f"Saga '{saga_name}' is not registered")
        engine = await self.open()
        generation, latest = await self._newest(engine, aggregation_id)
        if latest is not None and not latest.is_terminal:
            raise _active(aggregation_id, str(self._saga_id(aggregation_id, generation)))
        saga_id = str(self._saga_id(aggregation_id, generation + 1))
        trace = trace_id or str(uuid.uuid4())
        envelope = {
            ENVELOPE: {"saga_name": saga_name, "aggregation_id": aggregation_id, "trace_id": trace},
            "initial_data": _plain(initial_data),
        }
        try:
            await engine.start(saga_name, envelope, saga_id)
        except SagaConflictError as exc:  # a racing start of another saga name took the id
            raise _active(aggregation_id, saga_id) from exc
        made = await engine.get(saga_id)
        meta = made.input.get(ENVELOPE, {}) if isinstance(made.input, dict) else {}
        if made.name != saga_name or meta.get("trace_id") != trace:
            raise _active(aggregation_id, saga_id)  # another start made it first
        await self.sync(saga_id)  # the row exists while the saga runs
        await self._await_runs([saga_id])
        await self.sync(saga_id)
        return UUID(saga_id)

    # -- moving sagas on ---------------------------------------------------------------------

    async def notify(self, *, saga_id: UUID | str, token: UUID | str, event: Any = None) -> bool:
        """Deliver ``event`` to the saga's current wait (``token`` is its
        ``step_execution_token``) and run the saga until it stops again. False when the token
        is not the current wait's (stale, used, or the saga is not waiting).

        Raises:
            SagaNotFoundError: no saga has this id.
        """
        engine = await self.open()
        sid = str(saga_id)
        accepted = await engine.notify(sid, str(token), _plain(event))
        if accepted:
            await self._advance(sid)
        return accepted

    async def run_due(self, *, limit: int = 100) -> int:
        """Run, once, up to ``limit`` sagas that are due (a lease expired: their worker died; a
        retry backoff, a timer or a wait's timeout ran out; an event arrived), until each
        stops again; return how many. Call it from a background job, as in the seed."""
        await self.open()
        ran = await self._claim(limit)
        for saga_id in ran:
            await self.sync(saga_id)
        return len(ran)

    async def resume(self, saga_id: UUID | str) -> None:
        """Run this saga (and the other due sagas) if it is due."""
        await self.open()
        await self._advance(str(saga_id))

    # -- reading -----------------------------------------------------------------------------

    async def get_snapshot(self, saga_id: UUID | str) -> SagaSnapshot:
        """The saga as sagakit has it now, in the seed's terms.

        Raises:
            SagaNotFoundError: no saga has this id.
        """
        return await self.get_admin_snapshot(saga_id)

    async def get_admin_snapshot(self, saga_id: UUID | str) -> SagaAdminSnapshot:
        """The saga with its context and step history (``SagaAdmin.get_saga``)."""
        engine = await self.open()
        sid = str(saga_id)
        try:
            saga = await engine.get(sid)
        except NativeNotFoundError:
            raise SagaNotFoundError(sid) from None
        return project(saga)

    async def sync(self, saga_id: UUID | str) -> SagaAdminSnapshot:
        """Write the saga's row of your model from sagakit's state, and return that state.

        The row is locked (``SELECT … FOR UPDATE`` on PostgreSQL) before sagakit's state is
        read, so that of two writers the later one writes the newer state. Every call of this
        API that runs a saga calls it once the saga's run stopped here; call it yourself for a
        saga that another process (a sagakit worker, the CLI) moved on."""
        sid = str(saga_id)
        for tries_left in (1, 0):
            try:
                async with self._session_maker() as session, session.begin():
                    row = await session.get(self._model_class, UUID(sid), with_for_update=True)
                    snapshot = await self.get_admin_snapshot(sid)
                    values = row_values(snapshot)
                    if row is None:
                        session.add(self._model_class(**values))
                    else:
                        for key, value in values.items():
                            setattr(row, key, value)
                return snapshot
            except IntegrityError:
                if not tries_left:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the seed's admin actions (SagaAdmin) ------------------------------------------------

    async def retry_step(self, saga_id: UUID | str) -> None:
        """Run the failed step again now, with a fresh retry budget: a step waiting out a retry
        backoff (SUSPENDED), one out of retries, or a saga that failed or was rolled back
        (sagakit's ``admin.retry_step``); then run the saga until it stops."""
        engine = await self.open()
        sid = str(saga_id)
        await engine.admin.retry_step(sid)
        await self._advance(sid)

    async def skip_step(
        self, saga_id: UUID | str, mock_output: BaseModel | dict[str, Any] | None = None
    ) -> None:
        """Record ``mock_output`` (``{}`` when None, as in the seed) as the output of the step
        the saga is stopped at, and run the saga on from there."""
        engine = await self.open()
        sid = str(saga_id)
        output = _plain(mock_output) if mock_output is not None else {}
        status = (await self.get_admin_snapshot(sid)).native_status
        if status == NativeStatus.FAILED:
            # failed compensations: skipping records them as done (no output), unless an
            # output was given: then the rollback is abandoned and the saga goes on with it
            given = mock_output is not None
            await engine.admin.skip_step(sid, output if given else None, forward=given)
        else:
            await engine.admin.skip_step(sid, mock_output=output)
        await self._advance(sid)

    async def compensate_step(self, saga_id: UUID | str) -> None:
        """Start the rollback (sagakit's ``admin.compensate``), or go on with one: a
        COMPENSATING saga's rollback runs on, a FAILED one's failed compensations run again."""
        engine = await self.open()
        sid = str(saga_id)
        snapshot = await self.get_admin_snapshot(sid)
        if snapshot.native_status == NativeStatus.FAILED:
            await engine.admin.retry_step(sid)
        elif snapshot.native_status != NativeStatus.COMPENSATING:
            await engine.admin.compensate(sid)
        await self._advance(sid)

    async def abort(self, saga_id: UUID | str) -> None:
        """Stop the saga for good without rolling it back (sagakit's ``admin.cancel``; shown
        as FAILED, ``last_error`` "Aborted by admin").

        Raises:
            SagaStateError: the saga has ended (a COMPLETED saga stays COMPLETED).
        """
        engine = await self.open()
        sid = str(saga_id)
        await engine.admin.cancel(sid, ABORT_REASON)
        await self._await_runs([sid])
        await self.sync(sid)

    # -- helpers -----------------------------------------------------------------------------

    def _saga_id(self, aggregation_id: str, generation: int) -> UUID:
        return uuid.uuid5(_NAMESPACE, f"{self._scope}\x1f{aggregation_id}\x1f{generation}")

    async def _newest(self, engine: Engine, aggregation_id: str) -> tuple[int, NativeStatus | None]:
        """The newest generation of this aggregation id's sagas (-1: none) and its status:
        generations are made one after another, so probe 0, 1, 3, 7, … then bisect."""

        async def load(generation: int) -> NativeStatus | None:
            try:
                return await engine.handle(str(self._saga_id(aggregation_id, generation))).status()
            except NativeNotFoundError:
                return None

        if await load(0) is None:
            return -1, None
        low, high = 0, 1
        while await load(high) is not None:
            low, high = high, high * 2 + 1
        while high - low > 1:
            middle = (low + high) // 2
            if await load(middle) is not None:
                low = middle
            else:
                high = middle
        return low, await load(low)

    async def _claim(self, limit: int) -> list[str]:
        """Run, here, up to ``limit`` due sagas of the registered definitions, until each
        stops; return their ids."""
        if not self._names or limit <= 0:
            return []
        return await self._native.run_due(limit, workflows=sorted(self._names))

    async def _advance(self, saga_id: str) -> None:
        """After an action made ``saga_id`` due: run it (and whatever else is due) until each
        run stops, and write their rows."""
        ran = [saga_id, *(s for s in await self._claim(_CLAIM) if s != saga_id)]
        await self._await_runs(ran)
        for sid in ran:
            await self.sync(sid)

    async def _await_runs(self, saga_ids: Iterable[str]) -> None:
        """Wait until the runs of these sagas in this process have stopped."""
        for saga_id in saga_ids:
            await self._native.settle(saga_id)


class SagaOrchestrator(Generic[ModelT]):
    """The seed's public runtime API (``SagaOrchestrator[Model](model_class=...,
    session_maker=...)``), over one :class:`SagaEngine`.

    Args:
        model_class: your SQLAlchemy model with :class:`SagaStateMixin`: one row per saga.
        session_maker: the ``async_sessionmaker`` of your database; sagakit keeps its own
            tables in the same database unless ``engine`` is given.
        execution_lease: how long a saga's run owns it without renewing (sagakit's lease).
        engine: a sagakit ``Engine`` to run the sagas on instead (its store, its worker).
    """

    def __init__(
        self,
        *,
        model_class: type[ModelT],
        session_maker: async_sessionmaker[AsyncSession],
        execution_lease: timedelta = timedelta(minutes=5),
        engine: Engine | None = None,
    ) -> None:
        self._engine: SagaEngine[ModelT] = SagaEngine(
            model_class=model_class,
            session_maker=session_maker,
            execution_lease=execution_lease,
            engine=engine,
        )

    @property
    def engine(self) -> SagaEngine[ModelT]:
        """The :class:`SagaEngine` (give it to ``SagaAdmin(engine=...)``)."""
        return self._engine

    def register(self, name: str, saga_definition: SagaDefinition) -> None:
        """See :meth:`SagaEngine.register`."""
        self._engine.register(name, saga_definition)

    async def start(
        self,
        *,
        saga_name: str,
        initial_data: BaseModel | dict[str, Any] | Any,
        aggregation_id: str,
        trace_id: str | None = None,
    ) -> UUID:
        """See :meth:`SagaEngine.start`."""
        return await self._engine.start(
            saga_name=saga_name,
            initial_data=initial_data,
            aggregation_id=aggregation_id,
            trace_id=trace_id,
        )

    async def notify(self, *, saga_id: UUID | str, token: UUID | str, event: Any = None) -> bool:
        """See :meth:`SagaEngine.notify`."""
        return await self._engine.notify(saga_id=saga_id, token=token, event=event)

    async def run_due(self, *, limit: int = 100) -> int:
        """See :meth:`SagaEngine.run_due`."""
        return await self._engine.run_due(limit=limit)

    async def get_snapshot(self, saga_id: UUID | str) -> SagaSnapshot:
        """See :meth:`SagaEngine.get_snapshot`."""
        return await self._engine.get_snapshot(saga_id)

    async def resume(self, saga_id: UUID | str) -> None:
        """See :meth:`SagaEngine.resume`."""
        await self._engine.resume(saga_id)

    async def close(self) -> None:
        """Close the sagakit engine underneath (not part of the seed: call it at shutdown)."""
        await self._engine.close()

    async def __aenter__(self) -> SagaOrchestrator[ModelT]:
        await self._engine.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class SagaAdmin(Generic[ModelT]):
    """The seed's operator API (``SagaAdmin[Model](engine=orchestrator.engine)``)."""

    def __init__(self, engine: SagaEngine[ModelT]) -> None:
        self._engine = engine

    async def get_saga(self, saga_id: UUID | str) -> SagaAdminSnapshot:
        """The saga with its context and step history."""
        return await self._engine.get_admin_snapshot(saga_id)

    async def retry_step(self, saga_id: UUID | str) -> None:
        """See :meth:`SagaEngine.retry_step`."""
        await self._engine.retry_step(saga_id)

    async def skip_step(
        self, saga_id: UUID | str, mock_output: BaseModel | dict[str, Any] | None = None
    ) -> None:
        """See :meth:`SagaEngine.skip_step`."""
        await self._engine.skip_step(saga_id, mock_output)

    async def compensate_step(self, saga_id: UUID | str) -> None:
        """See :meth:`SagaEngine.compensate_step`."""
        await self._engine.compensate_step(saga_id)

    async def abort(self, saga_id: UUID | str) -> None:
        """See :meth:`SagaEngine.abort`."""
        await self._engine.abort(saga_id)


def _engine_for(session_maker: async_sessionmaker[AsyncSession], lease: timedelta) -> Engine:
    # not a background worker: sagas move on through this API's calls, as in the seed
    return Engine(store_url_for(session_maker), lease=lease, worker=False)


def _active(aggregation_id: str, saga_id: str) -> ActiveSagaAlreadyExistsError:
    return ActiveSagaAlreadyExistsError(
        f"Active saga already exists for aggregation_id '{aggregation_id}' (saga_id={saga_id}); "
        "start another once it has ended"
    )


def _plain(value: Any) -> Any:
    """JSON-able data for a value with pydantic models in it (the seed's _serialize_value)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


__all__ = ["ABORT_REASON", "SagaAdmin", "SagaEngine", "SagaOrchestrator", "store_url_for"]
