"""The Engine: the facade users touch. It registers workflows, starts sagas, waits for results,
and, inside ``async with``, runs the background worker that keeps leases and recovers sagas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .. import serde
from ..clock import SYSTEM_CLOCK, Clock
from ..declarative import SagaDefinition
from ..errors import (
    EngineNotStartedError,
    OutputNotSerializableError,
    QueueDeduplicatedError,
    SagaConflictError,
    SagaError,
    SagaNotFoundError,
    SagaValidationError,
    UnknownWorkflowError,
)
from ..metrics.core import SagaMetrics, metrics_option
from ..objects import SagaVirtualObject
from ..observability import default_observers
from ..queues import Queue, QueuedStart
from ..relay import check_relay_lease
from ..remote import DEFAULT_REPLY_ADDRESS
from ..services import ServicesFactory
from ..stores import MemoryStore, open_store
from ..stores.base import NewSaga, SagaFilter, SagaStatus, Store
from ..stores.scheduling import Schedule
from ..transports.base import Transport, check_destination
from ..workflows import SagaWorkflow, check_version
from .crashes import StepHook
from .handles import SagaHandle, seconds
from .observe import Observer, Observers
from .outcome import Outcome
from .queueing import QueueingMixin, start_time
from .replies import RemoteLink
from .retention import check_retention, start_pruning, stop_pruning
from .run import SagaRun
from .running import RunningMixin
from .scheduling import SchedulingMixin
from .snapshots import SagaSnapshot
from .starts import at_version, check_saga_id, check_same_saga, named_definition, value_of
from .talk import TalkMixin

if TYPE_CHECKING:
    from ..admin import SagaAdmin
    from ..clients import LongWorkflowClient, ObjectClient, WorkflowClient
    from ..long_workflows import SagaLongWorkflow

log = logging.getLogger("sagakit.engine")

InT = TypeVar("InT")
OutT = TypeVar("OutT")
#: the longest pause between two looks at the store while waiting for another worker's saga
_RESULT_POLL_MAX = 0.25


class Engine(RunningMixin, TalkMixin, QueueingMixin, SchedulingMixin):
    """Runs sagas durably on a store.

    Args:
        url: ``sqlite:///sagakit.db`` (default, a file in the working folder),
            ``sqlite:////absolute/path.db``, ``postgresql://user@host/db``,
            ``shards:postgresql://host/db1 postgresql://host/db2`` (several databases, each saga
            on one of them: :class:`~sagakit.ShardedStore`), or ``memory://`` for tests.
        lease: how long a worker owns a saga without renewing; a saga whose owner stopped
            renewing for this long is taken over by another worker.
        poll_interval: how often the background worker looks for sagas to recover (a worker
            whose last claim filled its free slots looks again as soon as a quarter of
            ``max_concurrency`` is free, without waiting for the poll).
        max_concurrency: the most recovered sagas this engine runs at once.
        worker_id: this engine's name in the store (default: host, pid and a random suffix).
        worker: ``False`` for a client that only starts and watches sagas (a web server that
            leaves the running to ``sagakit worker`` processes): it claims nothing itself.
        store: a ready-made store instead of ``url``.
        observers: what hears about each run (see :mod:`sagakit.engine.observe`); default:
            log under the ``sagakit`` logger, and trace with OpenTelemetry when
            ``sagakit[otel]`` is installed.
        tracer_provider: the OpenTelemetry TracerProvider to trace with; by default the global
            one, if an SDK provider is set as global when the Engine is created (no tracing
            otherwise). Ignored when ``observers`` is given.
        services: the factory of the services of every saga this engine runs (dependency
            injection): ``factory(scope)`` gets a :class:`~sagakit.ServiceScope` and returns
            the services, an awaitable of them, or an async context manager (exited when the
            run ends). Built for each run, in the process that runs it; never journaled. A
            workflow's ``SagaWorkflowOptions(services=...)`` wins over it. See
            :mod:`sagakit.services`.
        app_version: the version of every workflow registered here that names none (a
            release number, a git commit): each saga records the version that started it and
            only a worker serving that version claims it. ``None`` (the default): unversioned.
        retention: delete ended sagas (COMPLETED, COMPENSATED, CANCELLED; FAILED ones wait for
            an operator) with their journals, events and published state once they ended
            longer ago than this, in small batches in the background (see
            :mod:`sagakit.engine.retention`); ``None`` (the default) keeps them forever.
        migrate: what opening does with the database's schema. ``None`` (the default): create
            it in an empty database, upgrade an older SQLite file, and refuse an older
            PostgreSQL schema with a StoreError naming ``sagakit migrate`` (upgrades of a shared
            database are deliberate); ``True``: create or upgrade; ``False``: never write the
            schema (an empty or older database is refused). Ignored with ``store``.
        schema: the PostgreSQL schema sagakit's tables live in (also ``?schema=name`` in the
            URL). ``None`` (the default): ``sagakit``, or ``public`` for a database whose
            tables an earlier release made there. PostgreSQL only; ignored with ``store``.
        clock: where this engine reads the time (see :mod:`sagakit.clock`); default: the
            system clock. A memory store reads the same one (the engine hands it its clock);
            the SQLite and PostgreSQL stores keep the real time. For tests:
            :class:`sagakit.testing.SagaTestEnvironment` gives its engine a
            :class:`~sagakit.clock.VirtualClock` that skips time.
        metrics: Prometheus and OpenTelemetry metrics (see :mod:`sagakit.metrics`). ``None``
            (the default): on when ``prometheus_client`` is installed (``sagakit[metrics]``)
            or an OpenTelemetry SDK MeterProvider is set as global; ``True``: on (an error
            names the extra when nothing can export them); ``False``: off; or a
            :class:`~sagakit.metrics.SagaMetrics` of your own. Kept in ``engine.metrics``.
        transport: the broker connection of remote steps (``saga.send_command``): the engine
            opens it, runs the relay that publishes its store's outbox, consumes the replies
            on ``reply_address``, and closes it (see docs/services.md). ``None``: commands
            wait in the outbox for a relay of another process.
        reply_address: where participants send the replies to this engine's commands
            (default ``"sagakit.replies"``); engines of one store share it.
        relay_lease: how long the relay lease this engine's relay holds lasts unrenewed
            (default 10 s): the longest the outbox waits after its relay dies (SIGKILL) before
            another process's relay takes over. Renewed every third of it.
        max_payload_bytes: the largest JSON payload journaled or delivered (a saga's input, a
            step's output or compensation data, a signal, an event, a promise's value,
            published state, a call's result, a command's payload), in bytes; default 2 MiB.
            A larger one raises :class:`~sagakit.PayloadTooLargeError` before anything is
            written (a step fails for good with it). ``None``: no limit; every payload is then
            held in memory several times over while it is written and on each replay (see
            docs/payloads.md). Store big data elsewhere and journal its key.
    """

    def __init__(
        self,
        url: str = "sqlite:///sagakit.db",
        *,
        lease: timedelta = timedelta(seconds=30),
        poll_interval: timedelta = timedelta(seconds=1),
        max_concurrency: int = 100,
        worker_id: str | None = None,
        worker: bool = True,
        store: Store | None = None,
        observers: Sequence[Observer] | None = None,
        tracer_provider: Any = None,
        services: ServicesFactory | None = None,
        app_version: str | None = None,
        retention: timedelta | None = None,
        migrate: bool | None = None,
        schema: str | None = None,
        clock: Clock | None = None,
        metrics: bool | SagaMetrics | None = None,
        transport: Transport | None = None,
        reply_address: str = DEFAULT_REPLY_ADDRESS,
        relay_lease: timedelta = timedelta(seconds=10),
        max_payload_bytes: int | None = serde.DEFAULT_MAX_PAYLOAD_BYTES,
    ):
        if lease <= timedelta(0):
            raise ValueError(f"lease must be positive, got {lease}")
        if poll_interval <= timedelta(0):
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if services is not None and not callable(services):
            raise TypeError(
                f"services must be a factory, a callable taking a ServiceScope, got {services!r}"
            )
        self._services = services
        self.url = store.url if store is not None else url
        self.lease = lease
        self.poll_interval = poll_interval
        self.max_concurrency = max_concurrency
        self.is_worker = worker
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._store_arg = store
        self._store: Store | None = None
        self.app_version = check_version(app_version, "Engine(app_version=...)")
        #: by name, the version registered last (what a start by name runs)
        self._workflows: dict[str, SagaWorkflow[Any, Any]] = {}
        #: every registered (name, version): what this engine's worker claims
        self._versions: dict[tuple[str, str | None], SagaWorkflow[Any, Any]] = {}
        self._objects: dict[str, SagaVirtualObject] = {}
        self._queues: dict[str, Queue] = {}
        self._undeclared: set[str] = set()
        self._schedules: dict[str, Schedule] = {}
        self._undeclared_schedules: set[str] = set()
        self._schedule_wake: asyncio.TimerHandle | None = None
        self.clock: Clock = clock or SYSTEM_CLOCK
        #: test-only: called before and after each step attempt's body (see
        #: sagakit.engine.crashes); sagakit.testing sets it to inject crashes
        self.step_hook: StepHook | None = None
        self.schedule_clock = self.clock.now
        self._object_versions: dict[tuple[str, str | None], SagaVirtualObject] = {}
        self._tasks: dict[str, asyncio.Task[Outcome | None]] = {}
        self._claimed: set[str] = set()
        self._background: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._draining = False
        self._closing = False
        if observers is None:
            observers = default_observers(tracer_provider)
        #: this engine's metrics (None: off); see sagakit.metrics
        self.metrics = metrics_option(metrics)
        if self.metrics is not None:
            observers = [*observers, self.metrics]
        self._observers = Observers(observers)
        self._admin: SagaAdmin | None = None
        self.retention = check_retention(retention)
        self._pruner: asyncio.Task[None] | None = None
        self.migrate = migrate
        self.schema = schema
        self.transport = transport
        self.reply_address = check_destination(reply_address)
        self.relay_lease = check_relay_lease(relay_lease)
        #: the largest payload in bytes of JSON (None: no limit); see docs/payloads.md
        self.max_payload_bytes = serde.check_limit(max_payload_bytes)
        self._remote: RemoteLink | None = None

    # -- registration ------------------------------------------------------------------------

    @overload
    def register(
        self, name: str, definition: SagaDefinition, /, *, version: str | None = None
    ) -> None: ...

    @overload
    def register(self, *workflows: SagaWorkflow[Any, Any] | SagaVirtualObject | Queue) -> None: ...

    def register(
        self,
        *workflows: SagaWorkflow[Any, Any] | SagaVirtualObject | Queue | str | SagaDefinition,
        version: str | None = None,
    ) -> None:
        """Make workflows (and virtual objects) startable by name and recoverable by this
        engine's worker, and queues (:class:`~sagakit.Queue`) known to ``enqueue`` (their
        limits are written to the store, where every worker's claim reads them).

        ``register("create_order_v1", definition, version="2")`` registers a declarative
        :class:`~sagakit.SagaDefinition` (built with ``SagaBuilder``) as the workflow
        ``create_order_v1`` (at that version). Registering the same definition under the same
        name and version again does nothing.

        Several versions of one workflow are registered side by side (each saga runs on the
        version that started it); a name starts the version registered last. A definition
        without a version has the engine's ``app_version``.
        """
        if workflows and isinstance(workflows[0], str):
            name, definition = named_definition(workflows)
            version = check_version(version, f"workflow {name!r}")
            known = self._versions.get((name, version or self.app_version))
            if getattr(known, "definition", None) is definition:
                return
            workflows = (definition.to_workflow(name, version=version),)
        elif version is not None:
            raise TypeError(
                "register(..., version=...) is for a declarative definition registered under "
                "a name; give a workflow its version where it is made: "
                "@saga_workflow(name, version=...)"
            )
        for workflow in workflows:
            if isinstance(workflow, Queue):
                self._register_queue(workflow)
                continue
            if isinstance(workflow, SagaVirtualObject):
                key = (workflow.name, workflow.version or self.app_version)
                known_object = self._object_versions.get(key)
                if known_object is not None and known_object is not workflow:
                    raise SagaConflictError(
                        f"another virtual object is already registered as {workflow.name!r}"
                        f"{at_version(key[1])}"
                    )
                self._object_versions[key] = workflow
                self._objects[workflow.name] = workflow
                self.register(*workflow.workflows)
                continue
            if isinstance(workflow, SagaDefinition):
                raise TypeError(
                    "a SagaDefinition is registered under a name: "
                    "engine.register('create_order_v1', definition)"
                )
            if not isinstance(workflow, SagaWorkflow):
                raise TypeError(
                    "register takes saga workflows (made with @saga_workflow) and virtual "
                    f"objects, got {workflow!r}"
                )
            workflow.check_ready()
            key = (workflow.name, self.version_of(workflow))
            known = self._versions.get(key)
            if known is not None and known is not workflow:
                raise SagaConflictError(
                    f"another workflow is already registered as {workflow.name!r}"
                    f"{at_version(key[1])}; give one of them another version"
                )
            if known is None:  # registering it again (a start does) keeps the order
                self._versions[key] = workflow
                self._workflows[workflow.name] = workflow

    def version_of(self, workflow: SagaWorkflow[Any, Any]) -> str | None:
        """The version the sagas of ``workflow`` record when this engine starts them: its own
        ``version``, else the engine's ``app_version`` (``None``: unversioned)."""
        return workflow.version or self.app_version

    @property
    def definitions(self) -> list[SagaWorkflow[Any, Any]]:
        """Every registered workflow, each version of it (``workflows`` has the one a start by
        name takes)."""
        return list(self._versions.values())

    @property
    def served(self) -> list[tuple[str, str | None]]:
        """Every ``(workflow name, version)`` this engine has registered: the sagas its worker
        claims (``None``: unversioned)."""
        return list(self._versions)

    @property
    def admin(self) -> SagaAdmin:
        """The operator's API on this engine's database: look at sagas and steer them."""
        if self._admin is None:
            from ..admin import SagaAdmin  # the admin module builds on this one

            self._admin = SagaAdmin(self)
        return self._admin

    @property
    def workflows(self) -> dict[str, SagaWorkflow[Any, Any]]:
        return dict(self._workflows)

    def _resolve(self, workflow: SagaWorkflow[Any, Any] | str) -> SagaWorkflow[Any, Any]:
        if isinstance(workflow, str):
            found = self._workflows.get(workflow)
            if found is None:
                raise UnknownWorkflowError(workflow, self._workflows)
            return found
        self.register(workflow)
        return workflow

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        store = self._store_arg or open_store(self.url, migrate=self.migrate, schema=self.schema)
        if isinstance(store, MemoryStore) and store.clock is SYSTEM_CLOCK:
            store.clock = self.clock  # leases and timers must be read on the engine's clock
        await store.open()
        self._store = store
        if self.metrics is not None:
            self.metrics.bind(store)
        self._wakeup = asyncio.Event()
        store.on_work = self._wakeup.set
        self._background = asyncio.create_task(self._worker_loop(), name="sagakit-worker")
        self._pruner = start_pruning(store, self.retention, self.poll_interval)
        if self.transport is not None:
            interval = self.poll_interval.total_seconds()
            self._remote = RemoteLink(
                store,
                self.transport,
                self.reply_address,
                self._poke,
                owner=self.worker_id,
                poll_interval=interval,
                relay_lease=self.relay_lease.total_seconds(),
            )
            await self._remote.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def drain(
        self, grace: float | timedelta = 30.0, *, timeout: float | timedelta | None = None
    ) -> None:
        """Shut down gracefully: take no new work, let each running saga finish the step it is
        in (for up to ``grace``), stop it before its next durable operation and release its
        lease so that another worker goes on with it at once; then close (within ``timeout``,
        see :meth:`close`)."""
        self._draining = True
        if self._background is not None:
            self._background.cancel()
        for task in self._tasks.values():
            task.sagakit_run.draining = True  # type: ignore[attr-defined]
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=seconds(grace))
        await self.close(timeout=timeout)

    async def close(self, timeout: float | timedelta | None = None) -> None:
        """Stop the worker; sagas still running here are stopped and their leases released, so
        that another worker (or the next start) takes them over at once.

        With ``timeout``, returns within it even when the database does not answer: what could
        not be released or committed by then is left as it is, and the sagas concerned are
        taken over by another worker once their lease expires (nothing is lost: they go on
        from their journals). Without it, close waits at most for the store's retry deadline
        (:data:`sagakit.stores.retrying.DEFAULT_RETRY_DEADLINE`, 30 s by default) per step.
        """
        if self._store is None:
            return
        store = self._store
        loop = asyncio.get_running_loop()
        bound = seconds(timeout)
        ends = None if bound is None else loop.time() + max(0.0, bound)

        def left() -> float | None:
            return None if ends is None else max(0.0, ends - loop.time())

        self._closing = True
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            self._background = None
        await stop_pruning(self._pruner)
        self._pruner = None
        if self._remote is not None:
            await self._remote.stop()
            self._remote = None
        if self._schedule_wake is not None:
            self._schedule_wake.cancel()
        unfinished = list(self._tasks)
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=left())
        try:
            async with asyncio.timeout(left()):
                await store.release(self.worker_id, unfinished)
        except Exception as exc:
            log.warning(
                "could not release the leases of %d sagas (%s); another worker takes them over "
                "when their leases expire",
                len(unfinished),
                exc,
            )
        if self.is_worker:
            try:
                async with asyncio.timeout(left()):
                    await store.forget_worker(self.worker_id)
            except Exception as exc:  # it stops counting as live within 3 leases anyway
                log.warning("could not delete this worker's heartbeat (%s)", exc)
        await store.close(timeout=left())
        if self.metrics is not None:
            self.metrics.unbind()
        self._store = None
        self._closing = False

    @property
    def is_open(self) -> bool:
        """Whether the engine is open (inside ``async with engine:``, or after ``__aenter__``
        and before ``close``): its store is open and its background worker runs."""
        return self._store is not None

    def _store_or_raise(self) -> Store:
        if self._store is None:
            raise EngineNotStartedError()
        return self._store

    # -- starting and waiting ----------------------------------------------------------------

    @overload
    async def start(
        self,
        workflow: SagaWorkflow[InT, OutT],
        inp: InT | dict[str, Any],
        saga_id: str | None = None,
        *,
        run_here: bool = True,
        delay: timedelta | None = None,
        start_at: datetime | None = None,
    ) -> SagaHandle[OutT]: ...

    @overload
    async def start(
        self,
        workflow: str,
        inp: Any,
        saga_id: str | None = None,
        *,
        run_here: bool = True,
        delay: timedelta | None = None,
        start_at: datetime | None = None,
    ) -> SagaHandle[Any]: ...

    async def start(
        self,
        workflow: SagaWorkflow[Any, Any] | str,
        inp: Any,
        saga_id: str | None = None,
        *,
        run_here: bool = True,
        delay: timedelta | None = None,
        start_at: datetime | None = None,
    ) -> SagaHandle[Any]:
        """Persist a saga and run it in this process (or only persist it, ``run_here=False``).

        With ``delay`` (a timedelta from now) or ``start_at`` (a timezone-aware datetime) the
        saga is persisted PENDING and a worker starts it then, not before (``run_here`` is
        ignored: the start is a worker's).

        Idempotent: if ``saga_id`` exists already, return a handle to that saga and run nothing
        again. The input is validated before anything is written.

        Raises:
            SagaValidationError: the input does not match the workflow's input type, or
                ``delay``/``start_at`` are not what they should be.
            SagaConflictError: ``saga_id`` belongs to a saga of another workflow.
        """
        not_before = start_time(delay, start_at, self.clock.now())
        return await self._start(
            self._resolve(workflow),
            inp,
            saga_id,
            run_here=run_here and not_before is None,
            not_before=not_before,
        )

    async def _start(
        self,
        wf: SagaWorkflow[Any, Any],
        inp: Any,
        saga_id: str | None,
        *,
        run_here: bool,
        object_key: str | None = None,
        parent_id: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        partition_key: str | None = None,
        dedup_id: str | None = None,
        not_before: float | None = None,
    ) -> SagaHandle[Any]:
        store = self._store_or_raise()
        saga_id = check_saga_id(saga_id)
        value = wf.input.validate(inp)
        try:
            input_json = serde.dumps(
                value, what=f"the input of saga {wf.name!r}", limit=self.max_payload_bytes
            )
        except OutputNotSerializableError as exc:
            raise SagaValidationError(exc.message) from exc
        running = self._tasks.get(saga_id)
        if running is not None:
            record = running.sagakit_run.record  # type: ignore[attr-defined]
            check_same_saga(saga_id, record.name, record.parent_id, wf.name, parent_id)
            return SagaHandle(self, saga_id)
        created = await store.create_saga(
            NewSaga(
                saga_id=saga_id,
                name=wf.name,
                input=input_json,
                owner=self.worker_id if run_here else None,
                lease_seconds=self.lease.total_seconds(),
                object_key=object_key,
                parent_id=parent_id,
                version=self.version_of(wf),
                queue=queue,
                priority=priority,
                partition_key=partition_key,
                dedup_id=dedup_id,
                not_before=not_before,
            )
        )
        if not created.created:
            record = created.record
            if record.saga_id != saga_id and queue is not None and dedup_id is not None:
                raise QueueDeduplicatedError(queue, dedup_id, record.saga_id, record.status)
            check_same_saga(saga_id, record.name, record.parent_id, wf.name, parent_id)
            return SagaHandle(self, saga_id)
        self._observers.saga_started(wf.name)
        if created.record.owner == self.worker_id:
            self._launch(
                SagaRun(
                    store,
                    wf,
                    created.record,
                    [],
                    live_input=value,
                    events=[],
                    children=self._start_child,
                    observers=self._observers,
                    callees=self,
                    services=wf.options.services or self._services,
                )
            )
        else:  # for a worker (maybe this one), or waiting for its object key's turn
            self._poke()
        return SagaHandle(self, saga_id)

    async def _start_child(
        self,
        wf: SagaWorkflow[Any, Any],
        inp: Any,
        child_id: str,
        parent_id: str,
        object_key: str | None = None,
        queued: QueuedStart | None = None,
    ) -> None:
        """Start a saga's child here (the parent's run calls this; see engine/children.py),
        or enqueue it (``saga.start_child(..., queue=...)``)."""
        if queued is not None:
            await self._enqueue(
                queued.queue,
                self._resolve(wf),
                inp,
                child_id,
                priority=queued.priority,
                partition_key=queued.partition_key,
                parent_id=parent_id,
            )
            return
        await self._start(
            self._resolve(wf),
            inp,
            child_id,
            run_here=True,
            parent_id=parent_id,
            object_key=object_key,
        )

    # -- what a run's durable calls use (engine/calls.py) ------------------------------------

    def check_callee(self, target: SagaWorkflow[Any, Any] | SagaVirtualObject, what: str) -> None:
        """Refuse a call of a workflow or virtual object this engine has not registered: a
        worker that recovers the call after a crash could not run it."""
        if isinstance(target, SagaVirtualObject):
            key = (target.name, target.version or self.app_version)
            if self._object_versions.get(key) is not target:
                raise SagaError(
                    f"{what}: virtual object {target.name!r} is not registered with this engine; "
                    f"call engine.register({target.name.lower()}) with it first (every worker "
                    "that may run the call must register it)"
                )
            return
        if self._versions.get((target.name, self.version_of(target))) is not target:
            known = ", ".join(sorted(self._workflows)) or "none"
            raise SagaError(
                f"{what}: workflow {target.name!r} is not registered with this engine "
                f"(registered: {known}); call engine.register(...) with it first (every worker "
                "that may run the call must register it)"
            )

    async def start_call(
        self, wf: SagaWorkflow[Any, Any], inp: Any, saga_id: str, object_key: str | None
    ) -> None:
        """Start a saga sent by another (``saga.send``): idempotent, not a child."""
        await self._start(wf, inp, saga_id, run_here=True, object_key=object_key)

    @overload
    def client(self, target: SagaLongWorkflow[InT, OutT]) -> LongWorkflowClient[InT, OutT]: ...

    @overload
    def client(self, target: SagaWorkflow[InT, OutT]) -> WorkflowClient[InT, OutT]: ...

    @overload
    def client(self, target: SagaVirtualObject) -> ObjectClient: ...

    def client(self, target: Any) -> Any:
        """A typed client of a workflow, a long workflow or a virtual object, for code outside
        sagas (see :mod:`sagakit.clients`)."""
        from ..clients import client_for  # the clients module builds on this one

        return client_for(self, target)

    @overload
    async def run(
        self,
        workflow: SagaWorkflow[InT, OutT],
        inp: InT | dict[str, Any],
        saga_id: str | None = None,
        *,
        timeout: float | timedelta | None = None,
    ) -> OutT: ...

    @overload
    async def run(
        self,
        workflow: str,
        inp: Any,
        saga_id: str | None = None,
        *,
        timeout: float | timedelta | None = None,
    ) -> Any: ...

    async def run(
        self,
        workflow: SagaWorkflow[Any, Any] | str,
        inp: Any,
        saga_id: str | None = None,
        *,
        timeout: float | timedelta | None = None,
    ) -> Any:
        """Start a saga and wait for its result (see :meth:`start` and
        :meth:`SagaHandle.result`). Typed: a workflow whose function returns ``Out`` gives an
        ``Out`` (a workflow's name: ``Any``)."""
        handle = await self.start(workflow, inp, saga_id)
        return await handle.result(timeout)

    @overload
    def handle(self, saga_id: str) -> SagaHandle[Any]: ...

    @overload
    def handle(self, saga_id: str, workflow: SagaWorkflow[Any, OutT]) -> SagaHandle[OutT]: ...

    def handle(
        self, saga_id: str, workflow: SagaWorkflow[Any, Any] | None = None
    ) -> SagaHandle[Any]:
        """A handle on an existing saga, to wait for it from any process.

        ``workflow`` (the saga's workflow) only types the handle: ``engine.handle(saga_id,
        checkout)`` is a ``SagaHandle[Out]`` whose ``result()`` is typed as the workflow's
        output. It is not checked against the saga: the output is converted by the workflow
        version that started the saga, as without it.
        """
        return SagaHandle(self, saga_id)

    async def get(self, saga_id: str) -> SagaSnapshot:
        """The saga, its journal and the events delivered to it, as the store has them now.

        Raises:
            SagaNotFoundError: no saga has this id.
        """
        store = self._store_or_raise()
        record = await store.load_saga(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        journal = await store.load_journal(saga_id)
        return SagaSnapshot.build(record, journal, await store.load_events(saga_id))

    async def list(
        self, status: SagaStatus | str | None = None, name: str | None = None, limit: int = 50
    ) -> list[SagaSnapshot]:
        """Sagas newest first, without their journals (``steps`` is empty)."""
        store = self._store_or_raise()
        try:
            wanted = None if status is None else SagaStatus(status).value
        except ValueError as exc:
            choices = ", ".join(s.value for s in SagaStatus)
            raise SagaValidationError(f"unknown status {status!r}; use one of {choices}") from exc
        records = await store.list_sagas(SagaFilter(status=wanted, name=name), limit)
        return [SagaSnapshot.build(r, None) for r in records]

    async def _result(self, saga_id: str, timeout: float | timedelta | None) -> Any:
        store = self._store_or_raise()
        async with asyncio.timeout(seconds(timeout)):
            delay = 0.005
            awaited: asyncio.Task[Outcome | None] | None = None
            while True:
                task = self._tasks.get(saga_id)
                # each run once: a run that ended SUSPENDED may not be forgotten yet
                if task is not None and task is not awaited:
                    awaited = task
                    # taken before awaiting: the task forgets itself as soon as it is done
                    run: SagaRun = task.sagakit_run  # type: ignore[attr-defined]
                    outcome: Outcome | None = None
                    try:
                        outcome = await asyncio.shield(task)
                    except asyncio.CancelledError:
                        this = asyncio.current_task()
                        if this is not None and this.cancelling():
                            raise  # the caller itself is being cancelled
                        # else the engine stopped the run: it is closing or draining
                    if outcome is not None and outcome.status.is_terminal:
                        return value_of(
                            saga_id, outcome.status, outcome.output, outcome.error, run.workflow
                        )
                    # else suspended (or stopped): it goes on later, here or in another worker
                if self._closing or self._draining or self._store is None:
                    raise SagaError(
                        f"this engine stopped while waiting for saga {saga_id!r}; the saga was "
                        "released and goes on in another worker (or the next start of this "
                        "program): wait for it there with engine.handle(saga_id).result()"
                    )
                record = await store.load_saga(saga_id)
                if record is None:
                    raise SagaNotFoundError(saga_id)
                status = SagaStatus(record.status)
                if status.is_terminal:
                    workflow = self._versions.get((record.name, record.version))
                    return value_of(saga_id, status, record.output, record.error, workflow)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RESULT_POLL_MAX)
