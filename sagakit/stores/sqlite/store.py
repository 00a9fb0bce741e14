"""The SQLite store: one file, WAL, ``synchronous=FULL``, and one writer that group-commits.

Every write of this store goes through one connection owned by one thread. Writers queue their
operation and wait; the writer thread takes everything queued, runs it in one ``BEGIN IMMEDIATE``
transaction and commits once, then wakes every waiter. A saga's step counts as recorded only
after that commit, so durability is the same as one commit per entry, at a fraction of the cost.
Reads use a second connection in a second thread: WAL lets them run beside the writer.

``database is locked`` never reaches a user: the busy timeout is long and a write transaction
that still finds the file locked (another process writing) is retried with backoff.
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

from ...errors import LeaseLost, StoreError
from ..base import (
    ClaimedSaga,
    CreateResult,
    JournalEntry,
    NewSaga,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    entry_from_row,
    record_from_row,
)
from ..sqlfile import load_migrations, load_queries

log = logging.getLogger("sagakit.store.sqlite")

Q = load_queries(__package__ or "sagakit.stores.sqlite", "queries.sql")
MIGRATIONS = load_migrations("sagakit.stores.sqlite.migrations")
SCHEMA_VERSION = MIGRATIONS[-1][0]

T = TypeVar("T")
WriteOp = Callable[[sqlite3.Connection], Any]

#: the most operations one transaction takes, so that one commit never stalls for long
MAX_BATCH = 2000
_BUSY_TIMEOUT_MS = 30_000


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


class SqliteStore:
    """Implements :class:`~sagakit.stores.base.Store` on a SQLite file.

    Args:
        url: ``sqlite:///path/to/file.db``.
        synchronous: SQLite's ``synchronous`` setting. ``FULL`` (the default) makes every commit
            durable across a power cut; ``NORMAL`` is faster and may lose the last commits on a
            power cut (never on a process crash). Benchmarks report which one was in force.
    """

    def __init__(self, url: str, *, synchronous: str = "FULL"):
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise StoreError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self.url = url
        self.on_work: Callable[[], None] | None = None
        self.path = path_from_url(url)
        self.synchronous = synchronous.upper()
        self._writer_conn: sqlite3.Connection | None = None
        self._reader_conn: sqlite3.Connection | None = None
        self._write_exec: ThreadPoolExecutor | None = None
        self._read_exec: ThreadPoolExecutor | None = None
        self._pending: list[tuple[WriteOp, asyncio.Future[Any]]] = []
        self._wakeup: asyncio.Event | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False
        #: counters for benchmarks: transactions committed and operations in them
        self.commits = 0
        self.writes = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer_task is not None:
            return
        parent = Path(self.path).parent
        if not parent.exists():
            raise StoreError(
                f"cannot open {self.path!r}: the folder {str(parent)!r} does not exist"
            )
        loop = asyncio.get_running_loop()
        self._write_exec = ThreadPoolExecutor(1, thread_name_prefix="sagakit-sqlite-writer")
        self._read_exec = ThreadPoolExecutor(1, thread_name_prefix="sagakit-sqlite-reader")
        try:
            self._writer_conn = await loop.run_in_executor(self._write_exec, self._connect)
            await loop.run_in_executor(self._write_exec, self._migrate)
            self._reader_conn = await loop.run_in_executor(self._read_exec, self._connect)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        self._wakeup = asyncio.Event()
        self._closing = False
        self._writer_task = asyncio.create_task(self._writer_loop(), name="sagakit-sqlite-writer")

    async def close(self) -> None:
        self._closing = True
        if self._writer_task is not None and self._wakeup is not None:
            self._wakeup.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
        self._writer_task = None
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
        return conn

    def _migrate(self) -> None:
        conn = self._writer_conn
        assert conn is not None
        self._begin_immediate(conn)
        try:
            conn.execute(Q["schema_version_table"])
            current = conn.execute(Q["schema_version"]).fetchone()[0] or 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path!r} has sagakit schema version {current}, newer than this "
                    f"sagakit knows ({SCHEMA_VERSION}); upgrade sagakit"
                )
            for version, script in MIGRATIONS:
                if version > current:
                    for statement in _split_statements(script):
                        conn.execute(statement)
                    conn.execute(Q["set_schema_version"], {"version": version})
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- the writer --------------------------------------------------------------------------

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        self._retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))

    def _retry_busy(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` until SQLite stops answering "locked": some operations (switching to WAL
        while another process opens the file) fail at once instead of waiting the busy timeout.
        """
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                log.info("SQLite file %s is busy; retrying in %.2fs", self.path, delay)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _write(self, op: WriteOp) -> Any:
        if self._wakeup is None or self._closing:
            raise StoreError("the SQLite store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        self._wakeup.set()
        return await future

    async def _writer_loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                ops = [op for op, _ in batch]
                try:
                    results = await loop.run_in_executor(self._write_exec, self._commit, ops)
                except Exception as exc:
                    error = StoreError(f"SQLite write failed: {exc}")
                    error.__cause__ = exc
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), (ok, value) in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
            if self._closing:
                return

    def _commit(self, ops: list[WriteOp]) -> list[tuple[bool, Any]]:
        conn = self._writer_conn
        assert conn is not None
        self._begin_immediate(conn)
        results: list[tuple[bool, Any]] = []
        try:
            for op in ops:
                try:
                    results.append((True, op(conn)))
                except (LeaseLost, sqlite3.IntegrityError) as exc:
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
            cur = conn.execute(
                Q["insert_saga"],
                {
                    "saga_id": new.saga_id,
                    "name": new.name,
                    "status": SagaStatus.RUNNING if new.owner else SagaStatus.PENDING,
                    "input": new.input,
                    "owner": new.owner,
                    "lease_expires_at": now + new.lease_seconds if new.owner else 0.0,
                    "now": now,
                },
            )
            row = conn.execute(Q["get_saga"], {"saga_id": new.saga_id}).fetchone()
            return CreateResult(cur.rowcount == 1, record_from_row(row))

        result: CreateResult = await self._write(op)
        return result

    async def append(
        self,
        saga_id: str,
        fence: int,
        entry: JournalEntry | None,
        update: SagaUpdate | None = None,
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            if update is None:
                cur = conn.execute(
                    Q["touch_saga"], {"saga_id": saga_id, "fence": fence, "now": now}
                )
            else:
                cur = conn.execute(
                    Q["update_saga_status"],
                    {
                        "saga_id": saga_id,
                        "fence": fence,
                        "status": update.status,
                        "output": update.output,
                        "error": update.error,
                        "terminal": SagaStatus(update.status).is_terminal,
                        "now": now,
                    },
                )
            if cur.rowcount != 1:
                raise LeaseLost(saga_id)
            if entry is not None:
                conn.execute(
                    Q["upsert_entry"],
                    {
                        "saga_id": entry.saga_id,
                        "seq": entry.seq,
                        "kind": entry.kind,
                        "name": entry.name,
                        "status": entry.status,
                        "attempts": entry.attempts,
                        "output": entry.output,
                        "compensation": entry.compensation,
                        "error": entry.error,
                        "started_at": entry.started_at,
                        "finished_at": entry.finished_at,
                    },
                )

        await self._write(op)

    async def load_saga(self, saga_id: str) -> SagaRecord | None:
        def fn(conn: sqlite3.Connection) -> SagaRecord | None:
            row = conn.execute(Q["get_saga"], {"saga_id": saga_id}).fetchone()
            return None if row is None else record_from_row(row)

        return await self._read(fn)

    async def load_journal(self, saga_id: str) -> list[JournalEntry]:
        def fn(conn: sqlite3.Connection) -> list[JournalEntry]:
            return [entry_from_row(r) for r in conn.execute(Q["get_journal"], {"saga_id": saga_id})]

        return await self._read(fn)

    async def renew_leases(self, owner: str, lease_seconds: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            until = time.time() + lease_seconds
            return conn.execute(Q["renew_leases"], {"owner": owner, "until": until}).rowcount

        count: int = await self._write(op)
        return count

    async def claim(
        self, owner: str, names: Sequence[str], lease_seconds: float, limit: int
    ) -> list[ClaimedSaga]:
        if not names or limit <= 0:
            return []

        def op(conn: sqlite3.Connection) -> list[ClaimedSaga]:
            now = time.time()
            # one write transaction: nobody changes the candidates between look and take
            candidates = dict(
                conn.execute(
                    Q["claim_candidates"],
                    {"now": now, "names": json.dumps(list(names)), "limit": limit},
                ).fetchall()
            )
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
                claimed.append(ClaimedSaga(record, journal, bool(candidates[record.saga_id])))
            return claimed

        result: list[ClaimedSaga] = await self._write(op)
        return result

    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        if not saga_ids:
            return

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(Q["release"], {"owner": owner, "saga_ids": json.dumps(list(saga_ids))})

        await self._write(op)

    async def list_sagas(
        self, status: str | None = None, name: str | None = None, limit: int = 50
    ) -> list[SagaRecord]:
        def fn(conn: sqlite3.Connection) -> list[SagaRecord]:
            params = {"status": status, "name": name, "limit": limit}
            return [record_from_row(r) for r in conn.execute(Q["list_sagas"], params)]

        return await self._read(fn)


def _split_statements(script: str) -> list[str]:
    """Split a migration script on ``;`` line ends (our scripts hold no triggers or strings
    with semicolons, which keeps this simple and exact)."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";"))
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return [s for s in statements if s]
