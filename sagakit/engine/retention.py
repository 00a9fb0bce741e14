"""Retention: deleting ended sagas, with their journals, events and published state, once they
are older than a limit. ``Engine(retention=...)`` prunes in the background; ``sagakit prune``
and ``engine.admin.prune`` prune on demand.

Pruning goes in small batches (``Store.prune``: one short transaction each, that skips what
another transaction holds), so that it never holds up the writes of running sagas. A saga is
kept while its parent or one of its children has not ended; a FAILED saga (its rollback is
incomplete, an operator should look at it) only goes when asked for by status.

The same retention applies to the messages of remote steps (a store with an outbox): outbox
rows published longer ago than it and inbox records of commands processed longer ago than it
are deleted too, in batches of their own (unpublished rows stay, however old). An inbox record
is what answers a redelivered command with its stored reply, so a command redelivered or
re-sent after its record was deleted runs its handler again: keep the retention longer than
any redelivery or re-send can come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from ..errors import SagaValidationError
from ..stores.base import PRUNABLE_STATUSES, SagaStatus, Store
from ..stores.outbox import outbox_store

log = logging.getLogger("sagakit.retention")

#: how many sagas one batch deletes
DEFAULT_BATCH = 500
#: the longest the background pruner waits before it looks again when nothing was left
_IDLE_MAX = 60.0
#: the idle wait in poll intervals (at least): pruning is background work
_IDLE_POLLS = 5


def check_retention(retention: object) -> timedelta | None:
    """``retention`` as given to the Engine, refused unless ``None`` or a positive timedelta."""
    if retention is None:
        return None
    if not isinstance(retention, timedelta):
        raise TypeError(
            f"retention must be a timedelta (e.g. timedelta(days=30)) or None, got {retention!r}"
        )
    if retention <= timedelta(0):
        raise ValueError(f"retention must be positive, got {retention}")
    return retention


def check_statuses(statuses: Sequence[str] | None) -> list[str] | None:
    """The statuses to prune, refused (SagaValidationError) if one of them has not ended: a
    saga that has not ended is never deleted."""
    if statuses is None:
        return None
    chosen: list[str] = []
    for given in statuses:
        try:
            status = SagaStatus(str(given).upper())
        except ValueError:
            status = None
        if status is None or not status.is_terminal:
            ended = ", ".join(s.value for s in SagaStatus if s.is_terminal)
            raise SagaValidationError(
                f"cannot prune sagas in status {given!r}: only ended sagas are deleted ({ended})"
            )
        if status.value not in chosen:
            chosen.append(status.value)
    return chosen


async def prune_ended(
    store: Store,
    ended_before: float,
    *,
    statuses: Sequence[str] | None = None,
    batch: int = DEFAULT_BATCH,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete every prunable saga that ended before ``ended_before`` (epoch seconds), one batch
    at a time until none is left; return how many were deleted (with ``dry_run``: how many
    would be, deleting nothing). ``progress`` hears the running total after each batch."""
    if batch < 1:
        raise SagaValidationError(f"the batch size must be at least 1, got {batch}")
    wanted = check_statuses(statuses)
    if dry_run:
        return await store.count_prunable(ended_before, wanted)
    total = 0
    while True:
        deleted = await store.prune(ended_before, wanted, batch)
        if not deleted:
            break
        total += len(deleted)
        if progress is not None:
            progress(total)
    await prune_messages(store, ended_before, batch=batch)
    return total


async def prune_messages(
    store: Store, before: float, *, batch: int = DEFAULT_BATCH
) -> tuple[int, int]:
    """Delete the outbox rows published before ``before`` (epoch seconds) and the inbox
    records processed before it, one batch at a time until none is left; how many of each
    were deleted ((0, 0) for a store with no outbox)."""
    outbox = outbox_store(store)
    if outbox is None:
        return 0, 0
    rows = records = 0
    while True:
        published, processed = await outbox.prune_messages(before, batch)
        rows += published
        records += processed
        if published < batch and processed < batch:
            return rows, records


async def prune_forever(store: Store, retention: timedelta, poll_interval: timedelta) -> None:
    """The background pruner of an engine with ``retention``: one batch, then the next one poll
    interval later while batches come back full, and a longer look later (at most a minute)
    once nothing was left. Runs beside the worker loop, so claims never wait for it; its
    errors are logged and it tries again at its next look."""
    poll = poll_interval.total_seconds()
    idle = max(poll * _IDLE_POLLS, min(retention.total_seconds() / 10, _IDLE_MAX))
    while True:
        deleted: list[str] = []
        messages = (0, 0)
        outbox = outbox_store(store)
        try:
            before = time.time() - retention.total_seconds()
            deleted = await store.prune(before, PRUNABLE_STATUSES, DEFAULT_BATCH)
            if outbox is not None:
                messages = await outbox.prune_messages(before, DEFAULT_BATCH)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention: pruning ended sagas failed; trying again in %.1fs", idle)
        if deleted:
            log.info(
                "retention: deleted %d sagas that ended more than %s ago",
                len(deleted),
                retention,
                extra={"deleted": len(deleted)},
            )
        if any(messages):
            log.info(
                "retention: deleted %d published outbox rows and %d inbox records older than %s",
                *messages,
                retention,
            )
        full = len(deleted) >= DEFAULT_BATCH or max(messages) >= DEFAULT_BATCH
        await asyncio.sleep(poll if full else idle)


def start_pruning(
    store: Store, retention: timedelta | None, poll_interval: timedelta
) -> asyncio.Task[None] | None:
    """The background pruner's task, or None without retention."""
    if retention is None:
        return None
    return asyncio.create_task(
        prune_forever(store, retention, poll_interval), name="sagakit-retention"
    )


async def stop_pruning(task: asyncio.Task[None] | None) -> None:
    """Stop the background pruner (a batch in flight is rolled back or committed whole)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = [
    "DEFAULT_BATCH",
    "check_retention",
    "check_statuses",
    "prune_ended",
    "prune_forever",
    "prune_messages",
    "start_pruning",
    "stop_pruning",
]
