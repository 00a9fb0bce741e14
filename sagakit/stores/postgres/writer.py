"""The PostgreSQL store's writer: the connections that commit what is queued, each batch one
group commit, retried on a new connection after a dropped one. Mixed into
:class:`~sagakit.stores.postgres.store.PostgresStore`.

A store has ``write_connections`` lanes (1 by default), each a connection and a task that takes
whatever is queued when it is free. One connection makes a process alternate between computing
and waiting: the sagas that a commit answered all compute their next write in the same turn of
the event loop, which then waits for the next commit with nothing to do (one engine at 16
concurrent sagas uses 0.6-0.7 of a core). With two lanes, a batch of at least 2 x ``MIN_GROUP``
sagas that finds the other lanes idle takes half of them and leaves the rest to another lane:
two groups of sagas form, and one computes while the other's commit is in flight.

Measured on the project's 2-core host, with PostgreSQL on the same host
(``benchmarks/workers.py``, BENCHMARKS.md): two lanes were never faster and cost about a fifth
more CPU per saga (twice the statements, half as full), because that host has no core to spare
for the overlap: the engine and PostgreSQL together kept it busy. Hence one lane by default;
more are for a process that waits on commits with CPU to spare (a database on its own host).

What stays as with one connection:

* a saga's appends commit in the order they were queued: a lane does not take the appends of a
  saga whose earlier appends are in flight on another lane (they wait for the next batch);
* a call (a claim, a renewal, a delivery, an operator's change...) runs after every write
  queued before it: lane 0 alone takes calls, and only once the other lanes are idle, taking
  the whole queue then (the other lanes take nothing new meanwhile);
* every batch is still one transaction per statement group, answered only after its commit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg

from ...errors import StoreError
from ..base import NewSaga
from ..retrying import Backoff
from . import queues
from .batch import (
    Batch,
    Call,
    Create,
    append_groups,
    write_appends,
    write_creates,
    write_object_create,
)

log = logging.getLogger("sagakit.store.postgres")

#: the most operations one statement takes, so that one commit never stalls for long
MAX_BATCH = 2000
#: how long opening a connection may take (seconds)
CONNECT_TIMEOUT = 10.0
#: the writer connections of a store unless told otherwise (see the module docstring)
DEFAULT_WRITE_CONNECTIONS = 1
#: a batch is split between two lanes only when each half has this many sagas: smaller
#: groups would cost more in commits and statements than the overlap saves
MIN_GROUP = 8

#: errors after which the connection is gone and the statement may or may not have committed
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.CrashShutdownError,
    # a connection the server terminated while it was idle can look open until the next
    # operation trips over its state: it is as gone as a closed one
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, _CONNECTION_ERRORS)


def fail(futures: Sequence[asyncio.Future[Any]], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


def waits(new: NewSaga) -> bool:
    """A saga created to wait: queued, or with a delayed start."""
    return new.queue is not None or new.not_before is not None


async def _waiting_creates(conn: asyncpg.Connection, retry: bool, ops: list[Create]) -> None:
    results = await queues.write_waiting_creates(conn, retry, [op.new for op in ops])
    for op, result in zip(ops, results, strict=True):
        if not op.future.done():
            op.future.set_result(result)


@dataclass(eq=False)
class Lane:
    """One writer connection and what it has in flight."""

    index: int
    conn: asyncpg.Connection | None = None
    #: the sagas whose appends this lane is committing
    sagas: set[str] = field(default_factory=set)
    running: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    #: the statements this lane committed (benchmarks and tests look at them)
    commits: int = 0


class PostgresWriter:
    """The writer lanes of the PostgreSQL store (see the module docstring)."""

    retry_deadline: float
    write_connections: int
    commits: int
    writes: int
    _queue: Batch
    _wakeup: asyncio.Event | None
    _closing: bool
    _writer: asyncpg.Connection | None
    _outage: Backoff | None
    #: the lanes of the running writer (empty while it is not running)
    _lanes: tuple[Lane, ...] = ()
    #: lane 0 waits for the other lanes to finish before it runs calls: they take nothing new
    _barrier: bool = False

    if TYPE_CHECKING:  # provided by PostgresStore

        async def _connect(self, timeout: float = 0.0) -> asyncpg.Connection: ...

        async def _write_call(self, conn: asyncpg.Connection, retry: bool, op: Call) -> None: ...

    async def _writer_loop(self) -> None:
        lanes = [Lane(i) for i in range(max(1, self.write_connections))]
        for lane in lanes:
            lane.idle.set()
        self._lanes = tuple(lanes)
        extra = [
            asyncio.create_task(self._lane_loop(lane, lanes), name=f"sagakit-pg-writer-{n}")
            for n, lane in enumerate(lanes[1:], start=1)
        ]
        try:
            await self._lane_loop(lanes[0], lanes)
            await asyncio.gather(*extra)
        finally:
            for task in extra:
                task.cancel()
            await asyncio.gather(*extra, return_exceptions=True)
            for lane in lanes[1:]:
                if lane.conn is not None:
                    lane.conn.terminate()  # idle: nothing is lost
                    lane.conn = None

    async def _lane_loop(self, lane: Lane, lanes: list[Lane]) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            batch = self._take(lane, lanes)
            if batch is None:
                if self._barrier and lane.index == 0:
                    for other in lanes[1:]:
                        await other.idle.wait()
                    continue
                if self._closing and not any(other.running for other in lanes):
                    wakeup.set()  # the other lanes see it too, and return
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            if self._queue.creates or self._queue.appends or self._queue.calls:
                wakeup.set()  # what it left is for the other lanes
            lane.running = True
            lane.idle.clear()
            lane.sagas = {op.saga_id for op in batch.appends}
            try:
                await self._run_batch(batch, lane)
            finally:
                lane.running = False
                lane.sagas = set()
                lane.idle.set()
            if self._queue.creates or self._queue.appends or self._queue.calls:
                wakeup.set()  # appends it held back may go on another lane now

    def _take(self, lane: Lane, lanes: list[Lane]) -> Batch | None:
        """What ``lane`` commits next, taken out of the queue; None: nothing for it now."""
        queue = self._queue
        if not (queue.creates or queue.appends or queue.calls):
            self._barrier = False
            return None
        others = [other for other in lanes if other is not lane]
        if queue.calls or self._barrier:
            if lane.index != 0:
                return None  # lane 0 runs the calls, after everything queued before them
            self._barrier = any(other.running for other in others)
            if self._barrier:
                return None
            self._queue = Batch()
            return queue
        busy: set[str] = set()
        for other in others:
            busy |= other.sagas
        sagas: dict[str, None] = {}
        for op in queue.appends:
            if op.saga_id not in busy:
                sagas[op.saga_id] = None
        if not sagas and not queue.creates:
            return None
        if others and len(sagas) >= 2 * MIN_GROUP and not any(o.running for o in others):
            # the other lanes are idle: half of the sagas for this one, the rest for them
            mine = set(list(sagas)[: (len(sagas) + 1) // 2])
        else:
            mine = set(sagas)
        taken = [op for op in queue.appends if op.saga_id in mine]
        self._queue = Batch(
            appends=[op for op in queue.appends if op.saga_id not in mine],
            calls=queue.calls,
        )
        return Batch(creates=queue.creates, appends=taken)

    async def _run_batch(self, batch: Batch, lane: Lane) -> None:
        plain = [op for op in batch.creates if op.new.object_key is None and not waits(op.new)]
        waiting = [op for op in batch.creates if op.new.object_key is None and waits(op.new)]
        for write, ops in ((write_creates, plain), (_waiting_creates, waiting)):
            for start in range(0, len(ops), MAX_BATCH):
                creates = ops[start : start + MAX_BATCH]
                await self._retrying(
                    functools.partial(write, ops=creates), [op.future for op in creates], lane
                )
        for op in batch.creates:
            if op.new.object_key is not None:
                await self._retrying(
                    functools.partial(write_object_create, op=op), [op.future], lane
                )
        for group in append_groups(batch.appends):
            for start in range(0, len(group), MAX_BATCH):
                appends = group[start : start + MAX_BATCH]
                await self._retrying(
                    functools.partial(write_appends, ops=appends),
                    [op.future for op in appends],
                    lane,
                )
        for call in batch.calls:
            await self._retrying(functools.partial(self._write_call, op=call), [call.future], lane)

    def _lane_conn(self, lane: Lane) -> asyncpg.Connection | None:
        # lane 0's connection is the store's writer (open() makes it, close() closes it)
        return self._writer if lane.index == 0 else lane.conn

    def _set_lane_conn(self, lane: Lane, conn: asyncpg.Connection | None) -> None:
        if lane.index == 0:
            self._writer = conn
        else:
            lane.conn = conn

    async def _retrying(
        self,
        fn: Callable[[asyncpg.Connection, bool], Awaitable[None]],
        futures: Sequence[asyncio.Future[Any]],
        lane: Lane,
    ) -> None:
        """Run a write on the lane's connection; on a dropped connection reconnect with
        backoff and run it again (writes are idempotent), up to the retry deadline; fail the
        waiters on any other error, after the deadline, or when the store is closed meanwhile.

        The deadline belongs to the outage, not to each write: it runs from the first attempt
        that failed until a write succeeds again, so that writes queued behind one that gave
        up give up at once instead of waiting a deadline each."""
        retry = False
        try:
            while True:
                backoff = self._outage or Backoff("PostgreSQL write", self.retry_deadline)
                try:
                    conn = self._lane_conn(lane)
                    if conn is None or conn.is_closed():
                        conn = await self._connect(backoff.left(CONNECT_TIMEOUT))
                        self._set_lane_conn(lane, conn)
                    await fn(conn, retry)
                    self._outage = None
                    lane.commits += 1
                    self.commits += 1
                    self.writes += len(futures)
                    return
                except Exception as exc:
                    if not is_connection_error(exc):
                        error = StoreError(f"PostgreSQL write failed: {type(exc).__name__}: {exc}")
                        error.__cause__ = exc
                        fail(futures, error)
                        return
                    if self._closing and all(f.done() for f in futures):
                        return
                    conn = self._lane_conn(lane)
                    if conn is not None:
                        conn.terminate()
                    self._set_lane_conn(lane, None)
                    self._outage = backoff
                    try:
                        delay = backoff.next_delay(exc)
                    except StoreError as gave_up:
                        fail(futures, gave_up)
                        return
                    log.warning(
                        "PostgreSQL connection lost (%s); reconnecting in %.2fs", exc, delay
                    )
                    retry = True
                    await asyncio.sleep(delay)
        except asyncio.CancelledError:
            fail(futures, StoreError("the PostgreSQL store closed before the write committed"))
            raise
