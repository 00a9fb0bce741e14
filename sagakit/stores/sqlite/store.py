"""The SQLite store: one file, WAL, ``synchronous=FULL``, and one writer that group-commits.

Every write of this store goes through one connection. Writers queue their operation; once per
turn of the event loop everything queued runs in one ``BEGIN IMMEDIATE`` transaction and commits
once, then every waiter is woken. A saga's step counts as recorded only after that commit, so
durability is the same as one commit per entry, at a fraction of the cost.

The commit runs on the event loop's own thread. Handing it to a writer thread was measured
slower and costlier (``benchmarks/throughput.py``: about 1.6 times fewer sagas/s and 1.6 times
more CPU per saga), because every hand-off is two thread wake-ups and a GIL exchange, while
the commit itself (its fsync included) takes about 0.3 ms here. The write lock is taken without
waiting: another process holding it means a retry a little later, never a blocked loop. (WAL
checkpoints stay SQLite's automatic ones, every 1000 pages, on the writer: moving them to the
reader's thread was measured slower.)
Reads use a second connection in a second thread: WAL lets them run beside the writer.

``database is locked`` never reaches a user: a transaction that finds the file locked (another
process writing) is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ...errors import EventsArrived, LeaseLost, StoreError
from ..base import (
    LIVE_LEASES,
    AdminChange,
    ClaimedSaga,
    CreateResult,
    Delivery,
    JournalEntry,
    NewSaga,
    SagaEvent,
    SagaFilter,
    SagaFork,
    SagaRecord,
    SagaUpdate,
    Served,
    StateWrite,
    StoreTransaction,
    claim_keys,
    entry_from_row,
    event_from_row,
    prunable_statuses,
    record_from_row,
    saga_scope,
    served_keys,
)
from ..queueing import QueueLimits, QueueState
from ..retrying import DEFAULT_RETRY_DEADLINE, Backoff
from ..scheduling import Schedule, ScheduleState
from ..schema import split_statements
from . import queues, schedules, search, transactions
from .outbox import SqliteOutbox
from .runs import SqliteRuns
from .schema import MIGRATION_NAMES as MIGRATION_NAMES
from .schema import MIGRATIONS as MIGRATIONS
from .schema import migrate_schema, pending_scripts
from .sql import Q as Q
from .writes import administer_in, append_in, deliver_in, fork_in

log = logging.getLogger("sagakit.store.sqlite")

# tests import these from here, where they lived before schema.py and sql.py
_split_statements = split_statements

T = TypeVar("T")
WriteOp = Callable[[sqlite3.Connection], Any]

#: the most operations one transaction takes, so that one commit never stalls for long
MAX_BATCH = 2000
_BUSY_TIMEOUT_MS = 30_000
#: how long the writer waits before trying again a file another process is writing
_FIRST_BUSY_DELAY = 0.001
_MAX_BUSY_DELAY = 0.1


#: the page cache of each connection, in KiB as SQLite's negative cache_size takes it (64 MiB)
_CACHE_KIB = -65536


def path_from_url(url: str) -> str:
    """``sqlite:///relative.db`` → ``relative.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    if not url.startswith("sqlite:///"):
        raise StoreError(
            f"not a SQLite URL: {url!r}; write sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = url.removeprefix("sqlite:///")
    if not path:
        raise StoreError(f"the SQLite URL {url!r} names no file; write sqlite:///sagakit.db")
    return path


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SqliteStore(SqliteRuns, SqliteOutbox):
    """Implements :class:`~sagakit.stores.base.Store` on a SQLite file.

    Args:
        url: ``sqlite:///path/to/file.db``.
        synchronous: SQLite's ``synchronous`` setting. ``FULL`` (the default) makes every commit
            durable across a power cut; ``NORMAL`` is faster and may lose the last commits on a
            power cut (never on a process crash). Benchmarks report which one was in force.
        retry_deadline: how long a write waits for a file that another process keeps locked
            before it fails with StoreError (seconds; see :mod:`sagakit.stores.retrying`).
        migrate: what open does with the schema (see :mod:`sagakit.stores.schema`): ``None``
            (the default) creates it in an empty file and upgrades an older one; ``True`` the
            same; ``False`` never writes it (an empty or older file is refused).
        read_only: open without writing anything (``sagakit list``, the dashboard without a
            token): the schema must be current, and the connections refuse writes.
    """

    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "FULL",
        retry_deadline: float = DEFAULT_RETRY_DEADLINE,
        migrate: bool | None = None,
        read_only: bool = False,
    ):
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise StoreError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self.url = url
        self.on_work: Callable[[], None] | None = None
        self.queue_retry_at: float | None = None
        self.path = path_from_url(url)
        self.synchronous = synchronous.upper()
        self.migrate = migrate
        self.read_only = read_only
        #: the migration scripts the last open applied (``sagakit migrate`` prints them)
        self.applied_migrations: list[str] = []
        self._writer_conn: sqlite3.Connection | None = None
        self._reader_conn: sqlite3.Connection | None = None
        self._write_exec: ThreadPoolExecutor | None = None
        self._read_exec: ThreadPoolExecutor | None = None
        self._pending: list[tuple[WriteOp, asyncio.Future[Any]]] = []
        self._flush_handle: asyncio.Handle | None = None
        #: done when the transactional step holding the writer connection ends (transactions.py)
        self._held: asyncio.Future[None] | None = None
        #: set by close() when writes are still queued; done once they are committed
        self._drained: asyncio.Future[None] | None = None
        self.retry_deadline = retry_deadline
        #: the backoff of the writes waiting for a file another process is writing
        self._busy: Backoff | None = None
        self._open = False
        self._closing = False
        #: counters for benchmarks: transactions committed and operations in them
        self.commits = 0
        self.writes = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        parent = Path(self.path).parent
        if not parent.exists():
            raise StoreError(
                f"cannot open {self.path!r}: the folder {str(parent)!r} does not exist"
            )
        if self.read_only or self.migrate is False:
            self._check_exists()
        loop = asyncio.get_running_loop()
        self._write_exec = ThreadPoolExecutor(1, thread_name_prefix="sagakit-sqlite-writer")
        self._read_exec = ThreadPoolExecutor(1, thread_name_prefix="sagakit-sqlite-reader")
        try:
            # opening and migrating may wait for another process: off the loop
            self._writer_conn = await loop.run_in_executor(self._write_exec, self._connect)
            await loop.run_in_executor(self._write_exec, self._migrate)
            self._reader_conn = await loop.run_in_executor(self._read_exec, self._connect)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        except StoreError:  # the schema was refused
            await self.close()
            raise
        # from now on the writer runs on the loop: it must never wait for a lock
        self._writer_conn.execute("PRAGMA busy_timeout = 0")
        self._closing = False
        self._open = True

    async def close(self, timeout: float | None = None) -> None:
        self._closing = True
        if self._pending:  # what was queued before close still commits
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
            except TimeoutError:
                self._abandon_pending(timeout)
        self._open = False
        loop = asyncio.get_running_loop()
        for conn, executor in (
            (self._writer_conn, self._write_exec),
            (self._reader_conn, self._read_exec),
        ):
            if conn is not None and executor is not None:
                await loop.run_in_executor(executor, conn.close)
            if executor is not None:
                executor.shutdown(wait=True)
        self._writer_conn = self._reader_conn = None
        self._write_exec = self._read_exec = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_MS / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        mode = self._retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if str(mode).lower() != "wal":
            raise StoreError(f"SQLite refused WAL mode for {self.path!r} (got {mode!r})")
        # synchronous is one of three fixed words, checked in __init__: no injection possible
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        # the inner pages of the saga table's indexes stay in memory as the file grows to
        # millions of finished sagas (the default 2 MiB no longer holds them: BENCHMARKS.md);
        # pages are only taken as they are read, so a small file costs no more
        conn.execute(f"PRAGMA cache_size = {_CACHE_KIB}")
        if self.read_only:  # SQLite itself then refuses any write through this connection
            conn.execute("PRAGMA query_only = ON")
        return conn

    def _check_exists(self) -> None:
        if not Path(self.path).is_file():
            # connecting would create the file: a mistyped URL must not leave one behind
            raise StoreError(
                f"no SQLite database at {self.path!r} (the file does not exist): check the URL, "
                f"or create it with `sagakit migrate --db {self.url}`"
            )

    async def pending_migrations(self) -> list[tuple[str, str]]:
        """The migration scripts (file name, text) this file lacks, read without writing
        (``sagakit migrate --dry-run``); every script for a file that does not exist yet."""
        return await asyncio.to_thread(pending_scripts, self.path)

    def _migrate(self) -> None:
        conn = self._writer_conn
        assert conn is not None
        applied = migrate_schema(
            conn,
            migrate=self.migrate,
            read_only=self.read_only,
            where=repr(self.path),
            command=f"sagakit migrate --db {self.url}",
            begin=self._begin_immediate,
        )
        if applied is None:  # the schema was current
            return
        self.applied_migrations = applied
        for name in applied:
            log.info("applied migration %s to %s", name, self.path)

    # -- the writer --------------------------------------------------------------------------

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        self._retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))

    def _retry_busy(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` until SQLite stops answering "locked" (up to the retry deadline): some
        operations (switching to WAL while another process opens the file) fail at once
        instead of waiting the busy timeout. Runs off the event loop."""
        backoff = Backoff(f"opening SQLite file {self.path}", self.retry_deadline, max_delay=1.0)
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                delay = backoff.next_delay(exc)
                log.info("SQLite file %s is busy; retrying in %.2fs", self.path, delay)
                time.sleep(delay)

    def _abandon_pending(self, timeout: float | None) -> None:
        """Fail every queued write: close ran out of time (the file stayed locked)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        error = StoreError(
            f"the SQLite store closed after {timeout}s with writes not committed (the file "
            f"{self.path} stayed locked by another process); their sagas go on from the journal"
        )
        pending, self._pending = self._pending, []
        for _, future in pending:
            if not future.done():
                future.set_exception(error)

    def _queue_write(self, op: WriteOp) -> asyncio.Future[Any]:
        """Queue ``op`` for the next group commit; the future is done once it committed."""
        if not self._open or self._closing:
            raise StoreError("the SQLite store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((op, future))
        if self._flush_handle is None:
            # at the end of this turn of the loop: every write queued meanwhile joins the batch
            self._flush_handle = loop.call_soon(self._flush)
        return future

    async def _write(self, op: WriteOp) -> Any:
        return await self._queue_write(op)

    def _flush(self) -> None:
        """Commit everything queued, one transaction per :data:`MAX_BATCH` operations."""
        self._flush_handle = None
        if self._held is not None:  # a transactional step holds the writer: it flushes after
            return
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            outcome: list[tuple[bool, Any]] | Exception
            try:
                outcome = self._commit([op for op, _ in batch])
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    outcome = exc
                else:
                    # another process is writing: come back later rather than block the loop
                    if self._busy is None:
                        self._busy = Backoff(
                            "SQLite write",
                            self.retry_deadline,
                            first_delay=_FIRST_BUSY_DELAY,
                            max_delay=_MAX_BUSY_DELAY,
                        )
                    try:
                        delay = self._busy.next_delay(exc)
                    except StoreError as gave_up:
                        outcome = gave_up
                    else:
                        log.debug("SQLite file %s is busy; retrying in %.3fs", self.path, delay)
                        self._flush_handle = loop.call_later(delay, self._flush)
                        return
            except Exception as exc:
                outcome = exc
            del self._pending[: len(batch)]
            self._busy = None
            _settle(batch, outcome)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _commit(self, ops: list[WriteOp]) -> list[tuple[bool, Any]]:
        conn = self._writer_conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")  # raises "locked" at once if another process writes
        results: list[tuple[bool, Any]] = []
        try:
            for op in ops:
                try:
                    results.append((True, op(conn)))
                except (LeaseLost, EventsArrived, sqlite3.IntegrityError) as exc:
                    # statement-level: the rest of the transaction stands
                    results.append((False, exc))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self.commits += 1
        self.writes += len(ops)
        return results

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader_conn is None or self._read_exec is None:
            raise StoreError("the SQLite store is not open")
        conn = self._reader_conn

        def run() -> T:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        return await asyncio.get_running_loop().run_in_executor(self._read_exec, run)

    # -- the Store protocol ------------------------------------------------------------------

    async def create_saga(self, new: NewSaga) -> CreateResult:
        def op(conn: sqlite3.Connection) -> CreateResult:
            now = time.time()
            holder = queues.dedup_holder(conn, new)
            if holder is not None and holder != new.saga_id:
                row = conn.execute(Q["get_saga"], {"saga_id": holder}).fetchone()
                return CreateResult(False, record_from_row(row))
            cur = conn.execute(
                Q["insert_saga"],
                {
                    "saga_id": new.saga_id,
                    "name": new.name,
                    "input": new.input,
                    "owner": None,
                    "now": now,
                    "object_key": new.object_key,
                    "parent_id": new.parent_id,
                    "version": new.version,
                    **queues.insert_params(new, now),
                },
            )
            created = cur.rowcount == 1
            starts_now = new.queue is None and new.not_before is None
            if (
                created
                and starts_now
                and new.owner is not None
                and not self._object_busy(conn, new)
            ):
                conn.execute(
                    Q["own_saga"],
                    {"saga_id": new.saga_id, "owner": new.owner, "until": now + new.lease_seconds},
                )
            row = conn.execute(Q["get_saga"], {"saga_id": new.saga_id}).fetchone()
            return CreateResult(created, record_from_row(row))

        result: CreateResult = await self._write(op)
        return result

    @staticmethod
    def _object_busy(conn: sqlite3.Connection, new: NewSaga) -> bool:
        """Whether an earlier saga of the new saga's object key is still unfinished."""
        if new.object_key is None:
            return False
        arrival = conn.execute(Q["arrival"], {"saga_id": new.saga_id}).fetchone()[0]
        params = {"object_key": new.object_key, "arrival": arrival}
        return bool(conn.execute(Q["object_busy"], params).fetchone()[0])

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
        def op(conn: sqlite3.Connection) -> None:
            append_in(conn, saga_id, fence, entry, update, guard, state)

        future: asyncio.Future[None] = self._queue_write(op)
        return future

    async def begin(self, saga_id: str, fence: int) -> StoreTransaction:
        return await transactions.begin(self, saga_id, fence)

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
        def op(conn: sqlite3.Connection) -> Delivery:
            return deliver_in(
                conn, saga_id, kind, name, payload, token=token, unique=unique, key=key
            )

        result: Delivery = await self._write(op)
        return result

    async def load_events(self, saga_id: str, after: int = 0) -> list[SagaEvent]:
        def fn(conn: sqlite3.Connection) -> list[SagaEvent]:
            params = {"saga_id": saga_id, "after": after}
            return [event_from_row(r) for r in conn.execute(Q["get_events"], params)]

        return await self._read(fn)

    async def load_state(self, scope: str) -> dict[str, str]:
        def fn(conn: sqlite3.Connection) -> dict[str, str]:
            return dict(conn.execute(Q["get_state"], {"scope": scope}).fetchall())

        return await self._read(fn)

    async def load_saga(self, saga_id: str) -> SagaRecord | None:
        def fn(conn: sqlite3.Connection) -> SagaRecord | None:
            row = conn.execute(Q["get_saga"], {"saga_id": saga_id}).fetchone()
            return None if row is None else record_from_row(row)

        return await self._read(fn)

    async def load_journal(self, saga_id: str) -> list[JournalEntry]:
        def fn(conn: sqlite3.Connection) -> list[JournalEntry]:
            return [entry_from_row(r) for r in conn.execute(Q["get_journal"], {"saga_id": saga_id})]

        return await self._read(fn)

    async def renew_leases(self, owner: str, lease_seconds: float, saga_ids: Sequence[str]) -> int:
        if not saga_ids:
            return 0

        def op(conn: sqlite3.Connection) -> int:
            params = {
                "owner": owner,
                "until": time.time() + lease_seconds,
                "saga_ids": json.dumps(list(saga_ids)),
            }
            return conn.execute(Q["renew_leases"], params).rowcount

        count: int = await self._write(op)
        return count

    async def claim(
        self, owner: str, names: Sequence[str | Served], lease_seconds: float, limit: int
    ) -> list[ClaimedSaga]:
        if not names or limit <= 0:
            return []
        wanted = json.dumps(claim_keys(names))

        def op(conn: sqlite3.Connection) -> list[ClaimedSaga]:
            now = time.time()
            # one write transaction: nobody changes the candidates between look and take
            candidates = dict(
                conn.execute(
                    Q["claim_candidates"],
                    {"now": now, "names": wanted, "limit": limit},
                ).fetchall()
            )
            self.queue_retry_at = None
            if len(candidates) < limit:
                queued, self.queue_retry_at = queues.claim_queued(
                    conn, owner, wanted, now, limit - len(candidates)
                )
                candidates.update(queued)
            if not candidates:
                return []
            rows = conn.execute(
                Q["claim"],
                {
                    "owner": owner,
                    "until": now + lease_seconds,
                    "now": now,
                    "saga_ids": json.dumps(list(candidates)),
                },
            ).fetchall()
            claimed = []
            for row in rows:
                record = record_from_row(row)
                journal = [
                    entry_from_row(r)
                    for r in conn.execute(Q["get_journal"], {"saga_id": record.saga_id})
                ]
                events = [
                    event_from_row(r)
                    for r in conn.execute(Q["get_events"], {"saga_id": record.saga_id, "after": 0})
                ]
                taken_over = bool(candidates[record.saga_id])
                claimed.append(ClaimedSaga(record, journal, taken_over, events))
            return claimed

        result: list[ClaimedSaga] = await self._write(op)
        return result

    async def heartbeat(
        self, worker_id: str, served: Sequence[Served], lease_seconds: float
    ) -> None:
        params = {
            "worker_id": worker_id,
            "served": json.dumps(served_keys(served)),
            "lease_seconds": lease_seconds,
        }

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(Q["heartbeat"], {**params, "now": time.time()})

        await self._write(op)

    async def forget_worker(self, worker_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(Q["forget_worker"], {"worker_id": worker_id})

        await self._write(op)

    async def list_stranded(self, limit: int = 50) -> list[SagaRecord]:
        def fn(conn: sqlite3.Connection) -> list[SagaRecord]:
            params = {"now": time.time(), "live_leases": LIVE_LEASES, "limit": limit}
            return [record_from_row(r) for r in conn.execute(Q["list_stranded"], params)]

        return await self._read(fn)

    async def count_stranded(self) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            params = {"now": time.time(), "live_leases": LIVE_LEASES}
            return int(conn.execute(Q["count_stranded"], params).fetchone()[0])

        return await self._read(fn)

    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        if not saga_ids:
            return

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(Q["release"], {"owner": owner, "saga_ids": json.dumps(list(saga_ids))})

        await self._write(op)

    async def list_sagas(self, where: SagaFilter, limit: int = 50) -> list[SagaRecord]:
        after_created, after_id = where.after or (None, None)
        params = {
            "status": where.status,
            "name": where.name,
            "created_after": where.created_after,
            "created_before": where.created_before,
            "parent_id": where.parent_id,
            "after_created": after_created,
            "after_id": after_id,
            "limit": limit,
        }

        query = Q["list_sagas" if where.parent_id is None else "list_children"]
        if where.searches:
            query, params = search.list_query(where, limit)

        def fn(conn: sqlite3.Connection) -> list[SagaRecord]:
            return [record_from_row(r) for r in conn.execute(query, params)]

        return await self._read(fn)

    async def count_sagas(self, where: SagaFilter) -> int:
        query, params = search.count_query(where)
        return await self._read(lambda conn: int(conn.execute(query, params).fetchone()[0]))

    async def count_by_status(self) -> dict[str, int]:
        def fn(conn: sqlite3.Connection) -> dict[str, int]:
            return dict(conn.execute(Q["count_by_status"]).fetchall())

        return await self._read(fn)

    async def administer(self, change: AdminChange) -> SagaRecord | None:
        result: SagaRecord | None = await self._write(lambda conn: administer_in(conn, change))
        return result

    async def fork_saga(self, fork: SagaFork) -> SagaRecord | None:
        result: SagaRecord | None = await self._write(lambda conn: fork_in(conn, fork))
        return result

    async def delete_saga(self, saga_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            params = {"saga_id": saga_id}
            if conn.execute(Q["delete_saga"], params).rowcount != 1:
                return False  # unknown, deleted already, or not ended
            conn.execute(Q["delete_saga_journal"], params)
            conn.execute(Q["delete_saga_events"], params)
            conn.execute(Q["delete_saga_state"], {"scope": saga_scope(saga_id)})
            return True

        deleted: bool = await self._write(op)
        return deleted

    async def prune(
        self, ended_before: float, statuses: Sequence[str] | None = None, limit: int = 500
    ) -> list[str]:
        if limit <= 0:
            return []
        wanted = json.dumps(prunable_statuses(statuses))
        params: dict[str, Any] = {"statuses": wanted, "ended_before": ended_before}

        # the search reads beside the writer (it may scan many ended sagas); the writer, which
        # runs on the event loop, then only deletes those still prunable, each by its key
        def search(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(Q["prunable"], {**params, "limit": limit}).fetchall()
            return [row[0] for row in rows]

        candidates = await self._read(search)
        if not candidates:
            return []

        def op(conn: sqlite3.Connection) -> list[str]:
            found = conn.execute(
                Q["prune_sagas"], {**params, "saga_ids": json.dumps(candidates)}
            ).fetchall()
            ids = [row[0] for row in found]
            if ids:
                listed = {"saga_ids": json.dumps(ids)}
                conn.execute(Q["prune_journals"], listed)
                conn.execute(Q["prune_events"], listed)
                scopes = json.dumps([saga_scope(saga_id) for saga_id in ids])
                conn.execute(Q["prune_state"], {"scopes": scopes})
            return ids

        deleted: list[str] = await self._write(op)
        return deleted

    async def count_prunable(
        self, ended_before: float, statuses: Sequence[str] | None = None
    ) -> int:
        params = {"statuses": json.dumps(prunable_statuses(statuses)), "ended_before": ended_before}

        def fn(conn: sqlite3.Connection) -> int:
            count: int = conn.execute(Q["count_prunable"], params).fetchone()[0]
            return count

        return await self._read(fn)

    # -- queues (see queues.py) ---------------------------------------------------------------

    async def declare_queue(self, name: str, limits: QueueLimits) -> None:
        await self._write(lambda conn: queues.declare(conn, name, limits, time.time()))

    async def set_queue_override(
        self, name: str, changes: dict[str, Any] | None
    ) -> QueueState | None:
        def op(conn: sqlite3.Connection) -> QueueState | None:
            now = time.time()
            if not queues.set_override(conn, name, changes, now):
                return None
            return queues.states(conn, now, name)[0]

        state: QueueState | None = await self._write(op)
        return state

    async def list_queues(self) -> list[QueueState]:
        return await self._read(lambda conn: queues.states(conn, time.time()))

    async def queue_position(self, saga_id: str) -> int | None:
        return await self._read(lambda conn: queues.position(conn, saga_id))

    # -- schedules (see schedules.py; the Store protocol documents them) ----------------------

    async def declare_schedule(self, schedule: Schedule, now: float) -> None:
        await self._write(lambda conn: schedules.declare(conn, schedule, now))

    async def due_schedules(self, names: Sequence[str], now: float) -> list[ScheduleState]:
        return await self._read(lambda conn: schedules.due(conn, list(names), now))

    async def fire_schedule(
        self, name: str, expect: float, fire_from: float, tick: float | None, saga: NewSaga | None
    ) -> bool:
        return bool(await self._write(schedules.fire_op(name, expect, fire_from, tick, saga)))

    async def list_schedules(self) -> list[ScheduleState]:
        return await self._read(schedules.states)

    async def set_schedule_paused(
        self, name: str, paused: bool, now: float
    ) -> ScheduleState | None:
        state: ScheduleState | None = await self._write(schedules.pause_op(name, paused, now))
        return state


def _settle(
    batch: list[tuple[WriteOp, asyncio.Future[Any]]], outcome: list[tuple[bool, Any]] | Exception
) -> None:
    """In the event loop: resolve the waiters of one committed (or failed) transaction."""
    if isinstance(outcome, Exception):
        if isinstance(outcome, StoreError):
            error = outcome
        else:
            error = StoreError(f"SQLite write failed: {outcome}")
            error.__cause__ = outcome
        for _, future in batch:
            if not future.done():
                future.set_exception(error)
        return
    for (_, future), (ok, value) in zip(batch, outcome, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
