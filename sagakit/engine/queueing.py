"""Queues and delayed starts of the Engine: registering queues, ``enqueue``, and when a start
may happen. Mixed into :class:`~sagakit.engine.engine.Engine`; the limits themselves are
enforced by the store's claim (see :mod:`sagakit.stores.queueing`)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ..clock import Clock
from ..errors import SagaConflictError, SagaValidationError
from ..queues import MAX_PRIORITY, Queue
from ..stores.base import Store
from ..stores.queueing import QueueLimits

if TYPE_CHECKING:
    from ..workflows import SagaWorkflow
    from .handles import SagaHandle

InT = TypeVar("InT")
OutT = TypeVar("OutT")


def queue_limits(queue: Queue) -> QueueLimits:
    """What the store keeps of a queue declared in code."""
    rate = queue.rate
    return QueueLimits(
        concurrency=queue.concurrency,
        worker_concurrency=queue.worker_concurrency,
        rate_limit=rate.limit if rate is not None else None,
        rate_per=rate.per.total_seconds() if rate is not None else None,
        priority=queue.priority,
        partitioned=queue.partitioned,
    )


def start_time(delay: timedelta | None, start_at: datetime | None, now: float) -> float | None:
    """The epoch time before which a saga must not start (None: at once), from ``delay`` (a
    pause from ``now``) or ``start_at`` (a timezone-aware datetime), or SagaValidationError."""
    if delay is not None and start_at is not None:
        raise SagaValidationError(
            "give either delay= or start_at=, not both: delay counts from now, start_at is a "
            "moment (a timezone-aware datetime)"
        )
    if delay is not None:
        if not isinstance(delay, timedelta) or delay < timedelta(0):
            raise SagaValidationError(
                f"delay= must be a timedelta of zero or more, got {delay!r}: "
                "delay=timedelta(minutes=5)"
            )
        return now + delay.total_seconds()
    if start_at is not None:
        if not isinstance(start_at, datetime) or start_at.tzinfo is None:
            raise SagaValidationError(
                f"start_at= must be a timezone-aware datetime, got {start_at!r}: "
                "start_at=datetime(2027, 1, 1, 9, 0, tzinfo=timezone.utc)"
            )
        return start_at.timestamp()
    return None


class QueueingMixin:
    """Queues, enqueue and delayed starts of the Engine."""

    _queues: dict[str, Queue]
    _undeclared: set[str]
    clock: Clock

    if TYPE_CHECKING:  # provided by Engine

        def _store_or_raise(self) -> Store: ...

        def _resolve(self, workflow: SagaWorkflow[Any, Any] | str) -> SagaWorkflow[Any, Any]: ...

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
        ) -> SagaHandle: ...

    def _register_queue(self, queue: Queue) -> None:
        known = self._queues.get(queue.name)
        if known is not None and known != queue:
            raise SagaConflictError(
                f"another queue is already registered as {queue.name!r} ({known!r}); a queue's "
                "limits are declared once per engine (change them at run time with "
                "engine.admin.set_queue_limits or `sagakit queue set`)"
            )
        if known is None:
            self._queues[queue.name] = queue
            self._undeclared.add(queue.name)

    @property
    def queues(self) -> dict[str, Queue]:
        """The queues registered here, by name."""
        return dict(self._queues)

    async def _declare_queues(self) -> None:
        """Write the limits of queues registered since the last call to the store (where every
        worker's claim reads them)."""
        if not self._undeclared:
            return
        store = self._store_or_raise()
        for name in sorted(self._undeclared):
            await store.declare_queue(name, queue_limits(self._queues[name]))
            self._undeclared.discard(name)

    @overload
    async def enqueue(
        self,
        queue: Queue | str,
        workflow: SagaWorkflow[InT, OutT],
        inp: InT | dict[str, Any],
        saga_id: str | None = None,
        *,
        priority: int | None = None,
        partition_key: str | None = None,
        dedup_id: str | None = None,
        delay: timedelta | None = None,
        start_at: datetime | None = None,
    ) -> SagaHandle[OutT]: ...

    @overload
    async def enqueue(
        self,
        queue: Queue | str,
        workflow: str,
        inp: Any,
        saga_id: str | None = None,
        *,
        priority: int | None = None,
        partition_key: str | None = None,
        dedup_id: str | None = None,
        delay: timedelta | None = None,
        start_at: datetime | None = None,
    ) -> SagaHandle: ...

    async def enqueue(
        self,
        queue: Queue | str,
        workflow: SagaWorkflow[Any, Any] | str,
        inp: Any,
        saga_id: str | None = None,
        *,
        priority: int | None = None,
        partition_key: str | None = None,
        dedup_id: str | None = None,
        delay: timedelta | None = None,
        start_at: datetime | None = None,
    ) -> SagaHandle:
        """Persist a saga QUEUED in ``queue``; a worker starts it once the queue's limits allow
        (see :class:`~sagakit.Queue`). Returns a handle like :meth:`start`.

        Args:
            queue: a :class:`~sagakit.Queue` (registered here if it is not yet) or the name of
                one registered here.
            priority: for a queue declared with ``priority=True``: a smaller number starts
                first (1 before 10), in arrival order within a priority; sagas enqueued without
                one start before any with one (as in DBOS). 1 to 2**31 - 1.
            partition_key: for a ``partitioned=True`` queue (required there): the partition
                whose limits the saga counts against (a tenant, an account).
            dedup_id: refuse this enqueue while a saga of the queue enqueued with the same
                ``dedup_id`` is QUEUED or has not ended (QueueDeduplicatedError, naming it);
                once it has ended, the id may be used again.
            delay / start_at: not before this long from now / this moment (a timezone-aware
                datetime); it then waits for the queue's limits like any other.

        Idempotent on ``saga_id`` as :meth:`start` is: a saga with this id that exists already
        is returned, nothing is enqueued again.

        Raises:
            SagaValidationError: bad input or arguments (nothing is written).
            QueueDeduplicatedError: ``dedup_id`` is held (nothing is written).
        """
        return await self._enqueue(
            queue,
            self._resolve(workflow),
            inp,
            saga_id,
            priority=priority,
            partition_key=partition_key,
            dedup_id=dedup_id,
            delay=delay,
            start_at=start_at,
        )

    async def _enqueue(
        self,
        queue: Queue | str,
        wf: SagaWorkflow[Any, Any],
        inp: Any,
        saga_id: str | None,
        *,
        priority: int | None = None,
        partition_key: str | None = None,
        dedup_id: str | None = None,
        delay: timedelta | None = None,
        start_at: datetime | None = None,
        parent_id: str | None = None,
    ) -> SagaHandle:
        declared = self._queue_named(queue)
        if declared.priority:
            if priority is not None and (
                isinstance(priority, bool)
                or not isinstance(priority, int)
                or not 1 <= priority <= MAX_PRIORITY
            ):
                raise SagaValidationError(
                    f"priority must be a whole number from 1 to {MAX_PRIORITY}, got {priority!r} "
                    "(a smaller number starts first)"
                )
        elif priority is not None:
            raise SagaValidationError(
                f"queue {declared.name!r} takes no priorities: declare it with "
                f"Queue({declared.name!r}, ..., priority=True) to give sagas priorities"
            )
        if declared.partitioned:
            if not isinstance(partition_key, str) or not partition_key:
                raise SagaValidationError(
                    f"queue {declared.name!r} is partitioned: give each enqueue a "
                    "partition_key (a non-empty string, e.g. the tenant's id)"
                )
        elif partition_key is not None:
            raise SagaValidationError(
                f"queue {declared.name!r} is not partitioned: declare it with "
                f"Queue({declared.name!r}, ..., partitioned=True) to use partition_key"
            )
        if dedup_id is not None and (not isinstance(dedup_id, str) or not dedup_id):
            raise SagaValidationError(f"dedup_id must be a non-empty string, got {dedup_id!r}")
        not_before = start_time(delay, start_at, self.clock.now())
        await self._declare_queues()
        return await self._start(
            wf,
            inp,
            saga_id,
            run_here=False,
            parent_id=parent_id,
            queue=declared.name,
            priority=priority or 0,
            partition_key=partition_key,
            dedup_id=dedup_id,
            not_before=not_before,
        )

    def _queue_named(self, queue: Queue | str) -> Queue:
        if isinstance(queue, Queue):
            self._register_queue(queue)
            return self._queues[queue.name]
        found = self._queues.get(queue) if isinstance(queue, str) else None
        if found is None:
            known = ", ".join(sorted(self._queues)) or "none"
            raise SagaValidationError(
                f"unknown queue {queue!r} (registered here: {known}); register it first: "
                f"engine.register(Queue({queue!r}, ...))"
            )
        return found

    def _next_queue_look(self) -> float | None:
        """When the worker should claim again for a rate-limited queue (the store's hint of
        its last claim), as an epoch time; None when no queue waits on its rate."""
        retry_at = self._store_or_raise().queue_retry_at
        if retry_at is None or not math.isfinite(retry_at):
            return None
        return float(retry_at)
