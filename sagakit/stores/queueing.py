"""Which queued sagas a claim may start: the queue's limits as stored, and the choice every
store makes with them inside its claim transaction (no SQL here: the stores read the counts
and candidates, this module decides).

A queued saga holds one of its queue's slots while it is RUNNING or COMPENSATING under a live
lease, from the claim that starts it until it ends, suspends (a wait) or parks: a saga that
waits days for a signal does not keep others of its queue from running, and one whose worker
died gives its slot back when its lease expires (so does one of a version no live worker
serves). One that becomes due again (its timer fell due, an event arrived, its worker died)
takes a slot again before it goes on, ahead of the sagas that have not started yet; so the
limit is exceeded at most by the sagas whose worker died in the middle of a step.

``concurrency`` counts the slots held by every worker, ``worker_concurrency`` those held by
the claiming worker; the rate limit counts starts (a saga leaving QUEUED) in the
sliding window of ``rate_per`` seconds before the claim, so no window of that length ever
holds more than ``rate_limit`` starts. In a partitioned queue, ``concurrency`` and the rate
hold per partition and ``worker_concurrency`` over the whole queue (it is the worker's share,
whatever the tenant); partitions take turns, the one that started a saga least recently first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: the keys an operator may override (``sagakit queue set``), with their types
OVERRIDABLE: dict[str, type] = {
    "concurrency": int,
    "worker_concurrency": int,
    "rate_limit": int,
    "rate_per": float,
    "paused": bool,
}


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """A queue's limits; ``None``: no limit of that kind."""

    concurrency: int | None = None
    worker_concurrency: int | None = None
    #: at most this many starts per ``rate_per`` seconds (both set, or neither)
    rate_limit: int | None = None
    rate_per: float | None = None
    #: whether its sagas may be given priorities
    priority: bool = False
    #: whether each partition key has limits of its own
    partitioned: bool = False
    #: no saga of the queue starts (those already started go on, and resume after waits)
    paused: bool = False

    def overridden(self, override: Mapping[str, Any] | None) -> QueueLimits:
        """These limits with an operator's override applied key by key (``None`` in the
        override lifts that limit)."""
        if not override:
            return self
        known = {k: v for k, v in override.items() if k in OVERRIDABLE}
        if "rate_limit" in known and known["rate_limit"] is None:
            known["rate_per"] = None
        return replace(self, **known)


@dataclass(frozen=True, slots=True)
class QueueState:
    """A queue as the store knows it: its limits and how many of its sagas wait and run."""

    name: str
    #: the limits declared in code (the last ``engine.register(queue)`` of any worker)
    declared: QueueLimits
    #: an operator's changes (``engine.admin.set_queue_limits``), key by key
    override: dict[str, Any]
    #: sagas waiting to start (QUEUED), those whose start is delayed among them
    queued: int = 0
    delayed: int = 0
    #: sagas holding a slot (RUNNING or COMPENSATING)
    running: int = 0
    #: starts in the last rate window (0 without a rate limit)
    recent_starts: int = 0
    #: the enqueue time of the oldest saga waiting to start
    oldest_queued_at: float | None = None

    @property
    def limits(self) -> QueueLimits:
        """The limits in force: the declared ones with the operator's override."""
        return self.declared.overridden(self.override)


def limits_from_row(
    concurrency: int | None,
    worker_concurrency: int | None,
    rate_limit: int | None,
    rate_per: float | None,
    priority: Any,
    partitioned: Any,
) -> QueueLimits:
    """QueueLimits from a ``saga_queues`` row's columns (SQLite stores booleans as 0/1)."""
    return QueueLimits(
        concurrency=concurrency,
        worker_concurrency=worker_concurrency,
        rate_limit=rate_limit,
        rate_per=rate_per,
        priority=bool(priority),
        partitioned=bool(partitioned),
    )


def override_from_text(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """An override as stored (JSON text, or a dict from PostgreSQL's jsonb)."""
    if text is None:
        return {}
    value = json.loads(text) if isinstance(text, str) else dict(text)
    return {k: v for k, v in value.items() if k in OVERRIDABLE}


def override_to_text(override: Mapping[str, Any]) -> str:
    return json.dumps(dict(sorted(override.items())))


def limits_columns(limits: QueueLimits) -> dict[str, Any]:
    """A QueueLimits as the ``saga_queues`` columns (paused is an operator's, not code's)."""
    columns = asdict(limits)
    columns.pop("paused")
    return columns


@dataclass(frozen=True, slots=True)
class Candidate:
    """A queued saga a claim might start: not started yet (``fresh``: QUEUED, it takes a rate
    token), or started and due again after a wait (it only needs a slot)."""

    saga_id: str
    partition_key: str
    fresh: bool


@dataclass(slots=True)
class QueueLoad:
    """What a claim reads of one queue before it chooses (every count by partition key;
    ``''`` in a queue that is not partitioned)."""

    limits: QueueLimits
    #: in the order each partition should start them: due-again ones first, then by priority,
    #: then in arrival order
    candidates: list[Candidate]
    running: dict[str, int] = field(default_factory=dict)
    #: slots held by the claiming worker, over the whole queue
    mine: int = 0
    #: per partition: the start times inside the rate window before ``now``
    recent_starts: dict[str, list[float]] = field(default_factory=dict)
    #: per partition: its latest start ever (fair turns), absent if none
    last_start: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class QueueChoice:
    saga_ids: list[str]
    #: when a rate-limited partition with sagas waiting gets its next token (None: no such)
    retry_at: float | None


def choose(load: QueueLoad, limit: int, now: float) -> QueueChoice:
    """The queued sagas a claim of at most ``limit`` sagas starts now, under the queue's limits
    (see the module docstring), partitions taking turns."""
    limits = load.limits
    by_partition: dict[str, list[Candidate]] = {}
    for candidate in load.candidates:
        if limits.paused and candidate.fresh:
            continue
        by_partition.setdefault(candidate.partition_key, []).append(candidate)
    worker_room = _room(limits.worker_concurrency, load.mine)
    slots = {p: _room(limits.concurrency, load.running.get(p, 0)) for p in by_partition}
    tokens = {
        p: _room(limits.rate_limit, len(load.recent_starts.get(p, ())))
        if limits.rate_per is not None
        else math.inf
        for p in by_partition
    }
    turns = sorted(by_partition, key=lambda p: (load.last_start.get(p, -math.inf), p))
    chosen: list[str] = []
    retry_at: float | None = None
    positions = dict.fromkeys(turns, 0)
    while turns and len(chosen) < limit and worker_room > 0:
        still: list[str] = []
        for partition in turns:
            if len(chosen) >= limit or worker_room <= 0:
                break
            queue = by_partition[partition]
            at = positions[partition]
            if at >= len(queue) or slots[partition] <= 0:
                continue
            candidate = queue[at]
            if candidate.fresh and tokens[partition] <= 0:
                retry_at = _earliest(retry_at, _token_at(load, partition, limits, now))
                continue
            chosen.append(candidate.saga_id)
            positions[partition] = at + 1
            slots[partition] -= 1
            worker_room -= 1
            if candidate.fresh:
                tokens[partition] -= 1
            still.append(partition)
        turns = still
    return QueueChoice(chosen, retry_at)


def _room(limit: int | None, used: int) -> float:
    return math.inf if limit is None else max(0, limit - used)


def _token_at(load: QueueLoad, partition: str, limits: QueueLimits, now: float) -> float | None:
    """When the oldest start in the partition's window leaves it (a token frees); with none
    in the window before this claim, its own starts (at ``now``) took the tokens."""
    if limits.rate_per is None:
        return None
    return min(load.recent_starts.get(partition) or [now]) + limits.rate_per


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def queued_order(rows: Iterable[Sequence[Any]]) -> list[Candidate]:
    """Candidates from ``(saga_id, partition_key, status, priority, created_at, due, ...)``
    rows:
    per partition, sagas due again first (by when they fell due), then QUEUED ones by
    priority and arrival."""
    keyed = sorted(
        rows,
        key=lambda r: (
            r[1],
            r[2] == "QUEUED",
            r[3] if r[2] == "QUEUED" else 0,
            r[4] if r[2] == "QUEUED" else r[5],
            r[0],
        ),
    )
    return [Candidate(r[0], r[1], r[2] == "QUEUED") for r in keyed]


def recent_by_partition(rows: Sequence[tuple[str, float]]) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for partition, started in rows:
        found.setdefault(partition, []).append(started)
    return found
