"""The PostgreSQL store, on asyncpg: one writer that batches, a small read pool, and a listener.

Writes: every append and every start waits in a queue; one writer connection takes everything
queued and sends all the appends as *one* statement (arrays unnested: fence check, saga status,
journal entries) and all the starts as another. Each statement commits on its own, so a batch of
N sagas' journal entries costs one round trip and one durable commit. A saga's step counts as
recorded only once that statement returned. ``write_connections=2`` or more commits batches on
several connections side by side, a saga's writes still in order (see writer.py).

Faults: when a connection drops (server restart, ``pg_terminate_backend``, a statement that
does not answer within ``command_timeout``), the writer reconnects with backoff and sends the
batch again, up to ``retry_deadline`` (then the waiters get a StoreError; see
:mod:`sagakit.stores.retrying`). Every write is idempotent under retry, so a batch whose commit
acknowledgement was lost is not applied twice: journal entries are upserts and status updates
are fenced; a start that our own lost attempt already made is recognised by its owner; a
delivery carries a key (and a wait token is consumed by the delivery that used it); an
operator's change carries an action id kept in its audit entry. A claim takes its sagas and
reads their journals in one transaction; if its answer is lost, the engine does not know it
holds them and does not renew them, so they expire within one lease.

Schema: the tables live in a PostgreSQL schema of their own (``sagakit`` unless the URL's
``?schema=name`` or ``schema=`` names another); every connection's ``search_path`` is that schema,
so the statements stay unqualified. A database whose tables earlier releases made in ``public``
(and that has no ``sagakit`` schema) keeps using ``public`` until an operator moves them.

Wake-ups: ``LISTEN sagakit_work`` (``sagakit_work_<schema>`` outside ``public``) on a dedicated
connection; a start that leaves a saga PENDING and a release send ``NOTIFY``, so idle workers
take new work at once; the engine's slow poll stays as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from ...errors import StoreError
from ...urls import redact_url
from ..base import (
    AdminChange,
    ClaimedSaga,
    CreateResult,
    Delivery,
    DeliveryOutcome,
    JournalEntry,
    NewSaga,
    SagaEvent,
    SagaFilter,
    SagaFork,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    Served,
    StateWrite,
    StoreTransaction,
    claim_keys,
    entry_from_row,
    event_from_row,
    prunable_statuses,
    record_from_row,
    served_keys,
)
from ..queueing import QueueLimits, QueueState
from ..retrying import DEFAULT_RETRY_DEADLINE, Backoff, retry
from ..scheduling import Schedule, ScheduleState
from . import operations, queues, schedules, search
from .batch import Append, Batch, Call, Create
from .outbox import PostgresOutbox
from .runs import PostgresRuns
from .schema import (
    DEFAULT_SCHEMA,
    LEGACY_SCHEMA,
    check_schema,
    migrate_schema,
    schema_version,
    split_schema,
)
from .sql import MIGRATION_NAMES, MIGRATIONS, Q
from .writer import CONNECT_TIMEOUT as _CONNECT_TIMEOUT
from .writer import DEFAULT_WRITE_CONNECTIONS, PostgresWriter
from .writer import MAX_BATCH as MAX_BATCH
from .writer import fail as _fail
from .writer import is_connection_error as _is_connection_error

log = logging.getLogger("sagakit.store.postgres")

CHANNEL = "sagakit_work"
#: how long one statement may run before its connection is taken for dead (seconds)
DEFAULT_COMMAND_TIMEOUT = 10.0
#: the session settings of the store's own connections (see PostgresStore._connect)
_SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}

T = TypeVar("T")


class PostgresStore(PostgresRuns, PostgresOutbox, PostgresWriter):
    """Implements :class:`~sagakit.stores.base.Store` on PostgreSQL (asyncpg).

    Args:
        url: ``postgresql://user:password@host:port/database``.
        read_pool_size: connections for reads (journal loads, snapshots, result polling).
        retry_deadline: how long an operation is retried against a database that does not
            answer before it fails with StoreError (seconds).
        command_timeout: how long one statement may take before its connection is taken for
            dead and the statement retried on a new one (seconds): a connection that went
            silent (a network partition, a blackhole) is noticed instead of hanging.
        migrate: what open does with the schema (see :mod:`sagakit.stores.schema`): ``None``
            (the default) creates it in an empty database and refuses an older one (run
            ``sagakit migrate``); ``True`` creates or upgrades; ``False`` never writes it.
        read_only: open without writing anything (``sagakit list``, the dashboard without a
            token; a role with only SELECT works): the schema must be current, and every
            transaction of the store is read-only.
        schema: the PostgreSQL schema the tables live in (also ``?schema=name`` in the URL);
            ``None``: ``sagakit``, or ``public`` for a database whose tables an earlier release
            made there. A plain lower-case identifier; created if missing.
        write_connections: the connections that commit writes side by side, each batch one
            group commit; a saga's writes stay in order on one of them at a time. 1 (the
            default): one writer; more help a process that waits on commits with CPU to spare
            (see :mod:`sagakit.stores.postgres.writer`).

    ``on_work`` is called when another process announces work (NOTIFY); the engine sets it.
    """

    def __init__(
        self,
        url: str,
        *,
        read_pool_size: int = 4,
        retry_deadline: float = DEFAULT_RETRY_DEADLINE,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        migrate: bool | None = None,
        read_only: bool = False,
        schema: str | None = None,
        write_connections: int = DEFAULT_WRITE_CONNECTIONS,
    ):
        if retry_deadline <= 0 or command_timeout <= 0:
            raise StoreError(
                "retry_deadline and command_timeout must be positive seconds, got "
                f"{retry_deadline!r} and {command_timeout!r}"
            )
        self.url = url
        #: the URL asyncpg connects to: without ``?schema=``, which it would send the server
        #: as a setting
        self._dsn, asked = split_schema(url)
        if schema is not None and asked is not None and schema != asked:
            raise StoreError(
                f"the URL asks for schema {asked!r} and schema= for {schema!r}: name one"
            )
        asked = schema if schema is not None else asked
        #: whether the schema was asked for (else an earlier release's ``public`` is kept)
        self._schema_asked = asked is not None
        self.schema = check_schema(asked) if asked is not None else DEFAULT_SCHEMA
        self.read_pool_size = read_pool_size
        if write_connections < 1:
            raise StoreError(f"write_connections must be at least 1, got {write_connections!r}")
        self.write_connections = write_connections
        self.retry_deadline = retry_deadline
        self.command_timeout = command_timeout
        self.migrate = migrate
        self.read_only = read_only
        #: the migration scripts the last open applied (``sagakit migrate`` prints them)
        self.applied_migrations: list[str] = []
        self.on_work: Callable[[], None] | None = None
        self.queue_retry_at: float | None = None
        self._writer: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._queue: Batch = Batch()
        self._wakeup: asyncio.Event | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False
        #: the backoff of the writes while the database does not answer (None: it answers)
        self._outage: Backoff | None = None
        self._ids = search.IdOrder()
        self.commits = 0
        self.writes = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer_task is not None:
            return
        try:
            self._writer = await self._connect_first()
            await self._migrate(self._writer)
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self.read_pool_size,
                timeout=_CONNECT_TIMEOUT,
                command_timeout=self.command_timeout,
                server_settings=self._session_settings(),
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StoreError(f"cannot open PostgreSQL store {redact_url(self.url)}: {exc}") from exc
        except StoreError:  # the schema was refused
            await self.close()
            raise
        self._closing = False
        self._wakeup = asyncio.Event()
        self._writer_task = asyncio.create_task(self._writer_loop(), name="sagakit-pg-writer")
        self._listener_task = asyncio.create_task(self._listen_loop(), name="sagakit-pg-listen")

    async def close(self, timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        ends = None if timeout is None else loop.time() + timeout

        def left(most: float) -> float:
            return most if ends is None else max(0.0, min(most, ends - loop.time()))

        self._closing = True
        abandoned = False
        if self._writer_task is not None and self._wakeup is not None:
            self._wakeup.set()
            try:
                # what is queued still commits, for as long as the timeout (or the retry
                # deadline) allows
                await asyncio.wait_for(asyncio.shield(self._writer_task), left(1e9))
            except TimeoutError:
                abandoned = True
                self._writer_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer_task
            except asyncio.CancelledError:
                if self._writer_task.done():
                    pass
                else:
                    raise
            self._fail_queued(f"the PostgreSQL store closed after {timeout}s")
        if self._listener_task is not None:
            self._listener_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener_task
        self._writer_task = self._listener_task = None
        for conn in (self._writer, self._listener):
            if conn is None:
                continue
            if abandoned:
                conn.terminate()
                continue
            try:
                await asyncio.wait_for(conn.close(), left(5.0))
            except Exception:
                conn.terminate()
        self._writer = self._listener = None
        if self._pool is not None:
            try:
                if abandoned:
                    raise TimeoutError
                await asyncio.wait_for(self._pool.close(), left(5.0))
            except Exception:
                self._pool.terminate()
            self._pool = None

    def _fail_queued(self, why: str) -> None:
        """Fail the writes still queued (the writer stopped before it took them)."""
        batch, self._queue = self._queue, Batch()
        error = StoreError(f"{why}; the write was not made (its saga goes on from the journal)")
        futures: list[asyncio.Future[Any]] = [op.future for op in batch.creates]
        futures += [op.future for op in batch.appends]
        futures += [op.future for op in batch.calls]
        _fail(futures, error)

    async def _connect(self, timeout: float = 0.0) -> asyncpg.Connection:
        # Our writes are a handful of array statements run thousands of times: planning each
        # run anew (PostgreSQL's default for the first executions and whenever it guesses a
        # custom plan is cheaper) cost more than executing them, so plan them once.
        # A plan made once lives as long as the connection, and the first one is often made
        # on a young database whose tables the planner takes for ten pages: it then joins an
        # unnested batch to saga_instances by scanning the whole table (a hash join), a cost
        # that grows with every saga stored (1.4 ms a statement at 5,000 sagas) until an
        # autovacuum ANALYZE happens to invalidate the plan. Every statement of this
        # connection finds its rows by key, so table scans are priced out.
        # A transaction whose COMMIT a network partition swallowed stays open on the server,
        # holding its row locks, until the server notices the client is gone (TCP keepalive:
        # hours); the retry would wait on those locks. The server ends a session idle inside
        # a transaction for longer than a statement may take.
        settings = dict(
            _SERVER_SETTINGS,
            idle_in_transaction_session_timeout=str(int(self.command_timeout * 1000)),
            **self._session_settings(),
        )
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn,
            timeout=timeout or _CONNECT_TIMEOUT,
            command_timeout=self.command_timeout,
            server_settings=settings,
        )
        return conn

    def _session_settings(self) -> dict[str, str]:
        settings = {"search_path": f'"{self.schema}"'}
        if self.read_only:
            # the server itself then refuses any write of a reader's connections
            settings["default_transaction_read_only"] = "on"
        return settings

    @property
    def channel(self) -> str:
        """The NOTIFY channel of this schema's work (queries.sql names it alike): two sagakit
        schemas in one database do not wake each other's workers."""
        return CHANNEL if self.schema == LEGACY_SCHEMA else f"{CHANNEL}_{self.schema}"

    async def _connect_first(self) -> asyncpg.Connection:
        """The first connection of an open: it settles which schema the store uses."""
        conn = await self._connect()
        if self._schema_asked or self.schema == LEGACY_SCHEMA:
            return conn
        try:
            in_public = await conn.fetchval(Q["tables_in_public"], DEFAULT_SCHEMA)
        except BaseException:
            conn.terminate()
            raise
        if in_public:
            # an earlier release's deployment: moving its tables is the operator's decision
            log.info(
                "sagakit's tables are in schema public (made by an earlier release); using "
                "it. To move them to schema %s, run CREATE SCHEMA %s and ALTER TABLE "
                "public.<table> SET SCHEMA %s for each sagakit table (saga_*) with every "
                "worker stopped",
                DEFAULT_SCHEMA,
                DEFAULT_SCHEMA,
                DEFAULT_SCHEMA,
            )
            self.schema = LEGACY_SCHEMA
            await conn.close()
            conn = await self._connect()
        return conn

    async def pending_migrations(self) -> list[tuple[str, str]]:
        """The migration scripts (file name, text) the database lacks, read without writing
        (``sagakit migrate --dry-run``)."""
        try:
            conn = await self._connect_first()
            try:
                current = await schema_version(conn)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"cannot open PostgreSQL store {redact_url(self.url)}: {exc}") from exc
        return [(MIGRATION_NAMES[v], script) for v, script in MIGRATIONS if v > current]

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        url = redact_url(self.url)
        self.applied_migrations = await migrate_schema(
            conn,
            self.schema,
            migrate=self.migrate,
            read_only=self.read_only,
            where=f"the database {url}",
            command=f"sagakit migrate --db {url}",
        )

    # -- the writer --------------------------------------------------------------------------

    def _enqueue(self) -> Batch:
        if self._wakeup is None or self._closing:
            raise StoreError("the PostgreSQL store is not open")
        self._wakeup.set()
        return self._queue

    async def _write_call(self, conn: asyncpg.Connection, retry: bool, op: Call) -> None:
        result = await op.fn(conn)
        if not op.future.done():
            op.future.set_result(result)

    async def _call(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue().calls.append(Call(fn, future))
        return await future

    # -- reads -------------------------------------------------------------------------------

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        pool = self._pool
        if pool is None:
            raise StoreError("the PostgreSQL store is not open")

        async def attempt(_retrying: bool) -> T:
            async with pool.acquire(timeout=_CONNECT_TIMEOUT) as conn:
                return await fn(conn)

        try:
            return await retry(
                attempt,
                what="PostgreSQL read",
                transient=_is_connection_error,
                deadline=self.retry_deadline,
                log=log,
            )
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"PostgreSQL read failed: {type(exc).__name__}: {exc}") from exc

    # -- wake-ups ----------------------------------------------------------------------------

    def _notified(self, *_args: object) -> None:
        if self.on_work is not None:
            self.on_work()

    async def _listen_loop(self) -> None:
        # nobody waits for this loop: it retries for as long as the store is open (the
        # engine's poll finds work meanwhile), with the backoff every retry uses
        backoff = Backoff("LISTEN connection", None, first_delay=0.1)
        while not self._closing:
            cause: BaseException = ConnectionError("the LISTEN connection was lost")
            try:
                lost = asyncio.Event()
                self._listener = await self._connect()
                self._listener.add_termination_listener(functools.partial(_set_event, lost))
                await self._listener.add_listener(self.channel, self._notified)
                await self._listener.add_listener(self.outbox_channel, self._outbox_notified)
                backoff = Backoff("LISTEN connection", None, first_delay=0.1)
                self._notified()  # work may have been announced while we were not listening
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                cause = exc
            if self._listener is not None:
                self._listener.terminate()
                self._listener = None
            delay = backoff.next_delay(cause)
            log.debug("LISTEN connection failed (%s); retrying in %.1fs", cause, delay)
            await asyncio.sleep(delay)

    # -- the Store protocol ------------------------------------------------------------------

    async def create_saga(self, new: NewSaga) -> CreateResult:
        future: asyncio.Future[CreateResult] = asyncio.get_running_loop().create_future()
        self._enqueue().creates.append(Create(new, future))
        return await future

    def append(
        self,
        saga_id: str,
        fence: int,
        entry: JournalEntry | None,
        update: SagaUpdate | None = None,
        *,
        guard: int | None = None,
        state: Sequence[StateWrite] = (),
    ) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        op = Append(saga_id, fence, entry, update, future, guard, tuple(state))
        self._enqueue().appends.append(op)
        return future

    async def begin(self, saga_id: str, fence: int) -> StoreTransaction:
        from .transactions import begin  # it imports this module

        return await begin(self, saga_id, fence)

    async def deliver(
        self,
        saga_id: str,
        kind: str,
        name: str,
        payload: str,
        *,
        token: str | None = None,
        unique: bool = False,
        key: str | None = None,
    ) -> Delivery:
        args = (saga_id, kind, name, payload, token, unique, key)

        async def fn(conn: asyncpg.Connection) -> Delivery:
            if unique or key is not None:
                # the duplicate (or key) check must see an event committed by whoever held the
                # saga's row before us — our own earlier attempt, whose connection died with
                # the statement still running, included: lock the row first, so that the next
                # statement's snapshot is later
                async with conn.transaction():
                    await conn.execute(Q["lock_saga"], saga_id)
                    row = await conn.fetchrow(Q["deliver"], *args)
            else:
                row = await conn.fetchrow(Q["deliver"], *args)
            status = row["status"]
            if status is None:
                return Delivery(DeliveryOutcome.NOT_FOUND)
            if row["seq"] is not None or row["redelivered"]:
                return Delivery(DeliveryOutcome.DELIVERED, status)
            if row["duplicate"] is not None:
                return Delivery(DeliveryOutcome.DUPLICATE, status, row["duplicate"])
            if SagaStatus(status).is_terminal:
                return Delivery(DeliveryOutcome.FINISHED, status)
            return Delivery(DeliveryOutcome.STALE, status)

        return await self._call(fn)

    async def load_events(self, saga_id: str, after: int = 0) -> list[SagaEvent]:
        async def fn(conn: asyncpg.Connection) -> list[SagaEvent]:
            rows = await conn.fetch(Q["get_events"], saga_id, after)
            return [event_from_row(tuple(r)) for r in rows]

        return await self._read(fn)

    async def load_state(self, scope: str) -> dict[str, str]:
        async def fn(conn: asyncpg.Connection) -> dict[str, str]:
            return {r["key"]: r["value"] for r in await conn.fetch(Q["get_state"], scope)}

        return await self._read(fn)

    async def load_saga(self, saga_id: str) -> SagaRecord | None:
        async def fn(conn: asyncpg.Connection) -> SagaRecord | None:
            row = await conn.fetchrow(Q["get_saga"], saga_id)
            return None if row is None else record_from_row(tuple(row))

        return await self._read(fn)

    async def load_journal(self, saga_id: str) -> list[JournalEntry]:
        async def fn(conn: asyncpg.Connection) -> list[JournalEntry]:
            return [entry_from_row(tuple(r)) for r in await conn.fetch(Q["get_journal"], saga_id)]

        return await self._read(fn)

    async def renew_leases(self, owner: str, lease_seconds: float, saga_ids: Sequence[str]) -> int:
        if not saga_ids:
            return 0

        async def fn(conn: asyncpg.Connection) -> int:
            status = await conn.execute(Q["renew_leases"], owner, lease_seconds, list(saga_ids))
            return int(status.split()[-1])

        return await self._call(fn)

    async def claim(
        self, owner: str, names: Sequence[str | Served], lease_seconds: float, limit: int
    ) -> list[ClaimedSaga]:
        if not names or limit <= 0:
            return []
        keys = claim_keys(names)
        wanted = [name for name, _ in keys]
        versions = [version for _, version in keys]

        claimed, self.queue_retry_at = await self._call(
            lambda conn: operations.claim(conn, owner, wanted, lease_seconds, limit, versions)
        )
        return claimed

    async def heartbeat(
        self, worker_id: str, served: Sequence[Served], lease_seconds: float
    ) -> None:
        pairs = json.dumps(served_keys(served))
        await self._call(lambda conn: operations.heartbeat(conn, worker_id, pairs, lease_seconds))

    async def forget_worker(self, worker_id: str) -> None:
        await self._call(lambda conn: operations.forget_worker(conn, worker_id))

    async def list_stranded(self, limit: int = 50) -> list[SagaRecord]:
        return await self._read(lambda conn: operations.list_stranded(conn, limit))

    async def count_stranded(self) -> int:
        return await self._read(operations.count_stranded)

    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        if not saga_ids:
            return

        async def fn(conn: asyncpg.Connection) -> None:
            await conn.execute(Q["release"], owner, list(saga_ids))
            await conn.execute(Q["notify_work"])

        await self._call(fn)

    async def list_sagas(self, where: SagaFilter, limit: int = 50) -> list[SagaRecord]:
        after_created, after_id = where.after or (None, None)

        args: list[object] = [
            where.status,
            where.name,
            where.created_after,
            where.created_before,
            after_created,
            after_id,
            limit,
        ]
        if where.searches:
            return await self._read(lambda c: search.list_sagas(c, self._ids, where, limit))
        query = Q["list_sagas"]
        if where.parent_id is not None:
            query = Q["list_children"]
            args.append(where.parent_id)

        async def fn(conn: asyncpg.Connection) -> list[SagaRecord]:
            rows = await conn.fetch(query, *args)
            return [record_from_row(tuple(r)) for r in rows]

        return await self._read(fn)

    async def count_sagas(self, where: SagaFilter) -> int:
        return await self._read(lambda conn: search.count_sagas(conn, self._ids, where))

    async def count_by_status(self) -> dict[str, int]:
        async def fn(conn: asyncpg.Connection) -> dict[str, int]:
            return {r[0]: int(r[1]) for r in await conn.fetch(Q["count_by_status"])}

        return await self._read(fn)

    async def administer(self, change: AdminChange) -> SagaRecord | None:
        terminal = SagaStatus(change.status).is_terminal
        return await self._call(lambda conn: operations.administer(conn, change, terminal))

    async def fork_saga(self, fork: SagaFork) -> SagaRecord | None:
        return await self._call(lambda conn: operations.fork_saga(conn, fork))

    async def delete_saga(self, saga_id: str) -> bool:
        return await self._call(lambda conn: operations.delete_saga(conn, saga_id))

    async def prune(
        self, ended_before: float, statuses: Sequence[str] | None = None, limit: int = 500
    ) -> list[str]:
        if limit <= 0:
            return []
        wanted = prunable_statuses(statuses)
        # one statement, on a pool connection rather than the writer's: the appends queued
        # behind the writer never wait for a delete of many journals
        return await self._read(lambda conn: operations.prune(conn, wanted, ended_before, limit))

    async def count_prunable(
        self, ended_before: float, statuses: Sequence[str] | None = None
    ) -> int:
        wanted = prunable_statuses(statuses)
        return await self._read(lambda conn: operations.count_prunable(conn, wanted, ended_before))

    # -- queues (see queues.py) ---------------------------------------------------------------

    async def declare_queue(self, name: str, limits: QueueLimits) -> None:
        await self._call(lambda conn: queues.declare(conn, name, limits))

    async def set_queue_override(
        self, name: str, changes: dict[str, Any] | None
    ) -> QueueState | None:
        return await self._call(lambda conn: queues.set_override(conn, name, changes))

    async def list_queues(self) -> list[QueueState]:
        return await self._read(queues.states)

    async def queue_position(self, saga_id: str) -> int | None:
        return await self._read(lambda conn: queues.position(conn, saga_id))

    # -- schedules (see schedules.py; the Store protocol documents them) ----------------------

    async def declare_schedule(self, schedule: Schedule, now: float) -> None:
        await self._call(lambda conn: schedules.declare(conn, schedule, now))

    async def due_schedules(self, names: Sequence[str], now: float) -> list[ScheduleState]:
        return await self._read(lambda conn: schedules.due(conn, list(names), now))

    async def fire_schedule(
        self, name: str, expect: float, fire_from: float, tick: float | None, saga: NewSaga | None
    ) -> bool:
        op = functools.partial(schedules.fire, name=name, expect=expect, fire_from=fire_from)
        return await self._call(functools.partial(op, tick=tick, saga=saga))

    async def list_schedules(self) -> list[ScheduleState]:
        return await self._read(schedules.states)

    async def set_schedule_paused(
        self, name: str, paused: bool, now: float
    ) -> ScheduleState | None:
        return await self._call(lambda conn: schedules.set_paused(conn, name, paused, now))


def _set_event(event: asyncio.Event, *_args: object) -> None:
    event.set()
