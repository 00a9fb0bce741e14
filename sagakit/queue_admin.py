"""The operator's hand on queues: look at them, change their limits at run time, and put them
back as the code declares them (``engine.admin.queues``, ``set_queue_limits``,
``reset_queue_limits``, ``queue_position``).

A change is an *override* kept in the queue's row beside the limits declared in code; every
worker's claim reads both in its own transaction, so each worker obeys the change at its next
claim, whichever process made it. An override outlives restarts and redeploys (a worker that
registers the queue again replaces only the declared limits) until it is reset.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Any, Literal

from .errors import QueueNotFoundError, SagaNotFoundError, SagaValidationError
from .queues import RateLimit
from .stores.base import Store
from .stores.queueing import QueueState

__all__ = ["KEEP", "Keep", "QueueAdmin", "format_rate", "format_window"]

log = logging.getLogger("sagakit.admin")


class Keep(enum.Enum):
    """The default of :meth:`~sagakit.SagaAdmin.set_queue_limits`' keywords: leave this limit
    as it is (``None`` lifts it)."""

    KEEP = "keep"

    def __repr__(self) -> str:
        return "KEEP"


KEEP = Keep.KEEP

#: a limit as ``set_queue_limits`` takes it: a number, ``None`` (no limit) or KEEP
Limit = int | Literal[Keep.KEEP] | None


async def _find(store: Store, name: str) -> QueueState:
    if not isinstance(name, str) or not name:
        raise SagaValidationError(f"a queue's name is a non-empty string, got {name!r}")
    known = await store.list_queues()
    for state in known:
        if state.name == name:
            return state
    raise QueueNotFoundError(name, [s.name for s in known])


def _whole(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SagaValidationError(
            f"{what} must be a whole number >= 1, or None to lift the limit; got {value!r} "
            "(nothing was changed)"
        )
    return value


def _changes(
    concurrency: object,
    worker_concurrency: object,
    rate: object,
    paused: object,
) -> dict[str, Any]:
    """The override keys these arguments change (KEEP: not that one), checked."""
    changes: dict[str, Any] = {}
    if concurrency is not KEEP:
        changes["concurrency"] = _whole(concurrency, "concurrency")
    if worker_concurrency is not KEEP:
        changes["worker_concurrency"] = _whole(worker_concurrency, "worker_concurrency")
    if rate is not KEEP:
        if rate is None:
            changes["rate_limit"] = changes["rate_per"] = None
        elif isinstance(rate, RateLimit):
            changes["rate_limit"] = rate.limit
            changes["rate_per"] = rate.per.total_seconds()
        else:
            raise SagaValidationError(
                f"rate must be a RateLimit or None (no rate limit), got {rate!r}: "
                "rate=RateLimit(50, per=timedelta(seconds=1)) (nothing was changed)"
            )
    if paused is not KEEP and not isinstance(paused, bool):
        raise SagaValidationError(
            f"paused must be True or False, got {paused!r} (nothing was changed)"
        )
    if paused is not KEEP:
        # False is what code declares: resuming overrides an operator's pause with no pause
        changes["paused"] = paused
    return changes


def _describe(changes: dict[str, Any], paused: object) -> str:
    said = []
    for key in ("concurrency", "worker_concurrency"):
        if key in changes:
            value = changes[key]
            said.append(f"{key}={'none' if value is None else value}")
    if "rate_limit" in changes:
        limit, per = changes["rate_limit"], changes["rate_per"]
        said.append("rate=none" if limit is None else f"rate={limit}/{per:g}s")
    if paused is True:
        said.append("paused")
    elif paused is False:
        said.append("resumed")
    return ", ".join(said) or "nothing"


def format_rate(limit: int | None, per: float | None) -> str:
    """``50/1s``, ``100/1m``, ``none``: a rate limit as ``--rate`` takes it."""
    if limit is None or per is None:
        return "none"
    return f"{limit}/{format_window(per)}"


def format_window(per: float) -> str:
    """A rate window of ``per`` seconds: ``1s``, ``1m``, ``500ms``, ``2.5s``."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if per >= size and (per / size).is_integer():
            return f"{int(per / size)}{unit}"
    if per < 1 and (per * 1000).is_integer():
        return f"{int(per * 1000)}ms"
    return f"{per:g}s"


class QueueAdmin:
    """The queue half of :class:`~sagakit.SagaAdmin` (``engine.admin``)."""

    if TYPE_CHECKING:  # provided by SagaAdmin

        def _store(self) -> Store: ...

    async def queues(self) -> list[QueueState]:
        """Every queue in the database, by name: its declared limits, the operator's
        override and the limits in force (``.limits``), how many of its sagas wait (QUEUED;
        ``delayed`` among them), hold a slot (``running``), and started in the last rate
        window, and when the oldest waiting one was enqueued."""
        return await self._store().list_queues()

    async def set_queue_limits(
        self,
        name: str,
        *,
        concurrency: Limit = KEEP,
        worker_concurrency: Limit = KEEP,
        rate: RateLimit | Literal[Keep.KEEP] | None = KEEP,
        paused: bool | Literal[Keep.KEEP] = KEEP,
        reason: str | None = None,
        by: str | None = None,
    ) -> QueueState:
        """Change queue ``name``'s limits at run time: every worker obeys at its next claim.

        Only the keywords given change; ``None`` lifts that limit (``rate`` takes a
        :class:`~sagakit.RateLimit`, or ``None``). ``paused=True`` starts no new saga of
        the queue (started ones go on) until ``paused=False``. The change is kept, across
        restarts and redeploys, until :meth:`reset_queue_limits`. Logged on the
        ``sagakit.admin`` logger with ``by`` and ``reason``.

        Returns the queue as it is now (``.limits``: the limits in force).

        Raises:
            QueueNotFoundError: no queue of that name is in the database.
            SagaValidationError: a value is not a limit (nothing is written).
        """
        store = self._store()
        changes = _changes(concurrency, worker_concurrency, rate, paused)
        for value, what in ((reason, "reason"), (by, "by")):
            if value is not None and not isinstance(value, str):
                raise SagaValidationError(f"{what} must be a string, got {value!r}")
        await _find(store, name)
        # merged in the store, in one transaction: another operator's change of another limit
        # at the same moment holds too
        updated = await store.set_queue_override(name, changes)
        if updated is None:  # the queue went between the look and the write
            raise QueueNotFoundError(name, [s.name for s in await store.list_queues()])
        log.info(
            "operator%s: queue %s limits set (%s)%s",
            f" {by}" if by else "",
            name,
            _describe(changes, paused),
            f": {reason}" if reason else "",
            extra={"queue": name, "action": "set_queue_limits", "by": by, "reason": reason},
        )
        return updated

    async def reset_queue_limits(
        self, name: str, *, reason: str | None = None, by: str | None = None
    ) -> QueueState:
        """Drop every change an operator made to queue ``name``'s limits (and a pause): the
        limits declared in code hold again, from every worker's next claim.

        Raises QueueNotFoundError.
        """
        store = self._store()
        await _find(store, name)
        updated = await store.set_queue_override(name, None)
        if updated is None:
            raise QueueNotFoundError(name, [s.name for s in await store.list_queues()])
        log.info(
            "operator%s: queue %s back to its declared limits%s",
            f" {by}" if by else "",
            name,
            f": {reason}" if reason else "",
            extra={"queue": name, "action": "reset_queue_limits", "by": by, "reason": reason},
        )
        return updated

    async def queue_position(self, saga_id: str) -> int | None:
        """Where a QUEUED saga stands in its queue (in its partition, in a partitioned
        queue): 1 for the one that starts next, 2 after it, ...; ``None`` when the saga is
        not QUEUED (it started, ended, or was cancelled).

        Raises SagaNotFoundError.
        """
        store = self._store()
        position = await store.queue_position(saga_id)
        if position is None and await store.load_saga(saga_id) is None:
            raise SagaNotFoundError(saga_id)
        return position
