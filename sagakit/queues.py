"""Queues: how many sagas of a kind may run at once, how fast they may start, and in which order.

A :class:`Queue` is declared in code and registered with ``engine.register(queue)``; sagas are
put in it with ``engine.enqueue(queue, workflow, inp)``. Its limits are enforced by the store,
in the transaction that claims sagas, so they hold across every worker process sharing the
database; an operator may change them at run time (``engine.admin.set_queue_limits``,
``sagakit queue set``) and every worker obeys at its next claim. See docs/flow-control.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["Queue", "RateLimit"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
#: the largest priority (DBOS's bound: a 32-bit signed integer)
MAX_PRIORITY = 2**31 - 1


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` sagas of the queue (of each partition, in a partitioned queue) start in
    any window of ``per``, counted across every worker (a sliding window)."""

    limit: int
    per: timedelta = timedelta(seconds=1)

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ValueError(
                f"RateLimit(limit=...) must be a whole number >= 1, got {self.limit!r}"
            )
        if not isinstance(self.per, timedelta) or self.per <= timedelta(0):
            raise ValueError(
                f"RateLimit(per=...) must be a positive timedelta, got {self.per!r}: "
                "RateLimit(50, per=timedelta(seconds=1))"
            )


class Queue:
    """A named queue of sagas with limits (each ``None``: no such limit).

    Args:
        name: the queue's name in the store (letters, digits, ``_ . : -``).
        concurrency: the most sagas of the queue running at once across every worker (per
            partition in a partitioned queue). A saga holds its slot while it is RUNNING or
            COMPENSATING, not while it waits (SUSPENDED) or is PARKED.
        worker_concurrency: the most sagas of the queue one worker process runs at once.
        rate: a :class:`RateLimit` on starts, across every worker (per partition).
        priority: whether enqueues may give a ``priority`` (a smaller number starts first).
        partitioned: whether every enqueue names a ``partition_key`` (a tenant, an account):
            each partition then has the ``concurrency`` and ``rate`` of its own, and partitions
            take turns.
    """

    __slots__ = ("concurrency", "name", "partitioned", "priority", "rate", "worker_concurrency")

    def __init__(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        worker_concurrency: int | None = None,
        rate: RateLimit | None = None,
        priority: bool = False,
        partitioned: bool = False,
    ):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"invalid queue name {name!r}: use 1 to 128 letters, digits and _ . : - "
                "(starting with a letter or digit), e.g. 'payments'"
            )
        self.name = name
        self.concurrency = _positive(concurrency, "concurrency")
        self.worker_concurrency = _positive(worker_concurrency, "worker_concurrency")
        if rate is not None and not isinstance(rate, RateLimit):
            raise TypeError(
                f"Queue(rate=...) takes a RateLimit, got {rate!r}: "
                "rate=RateLimit(50, per=timedelta(seconds=1))"
            )
        self.rate = rate
        self.priority = bool(priority)
        self.partitioned = bool(partitioned)

    def _key(self) -> tuple[object, ...]:
        return (
            self.name,
            self.concurrency,
            self.worker_concurrency,
            self.rate,
            self.priority,
            self.partitioned,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Queue) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = [f"{self.name!r}"]
        for attr in ("concurrency", "worker_concurrency", "rate"):
            value = getattr(self, attr)
            if value is not None:
                fields.append(f"{attr}={value!r}")
        fields += [f"{a}=True" for a in ("priority", "partitioned") if getattr(self, a)]
        return f"Queue({', '.join(fields)})"


def _positive(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Queue({what}=...) must be a whole number >= 1 or None, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class QueuedStart:
    """Where a child saga waits to start (``saga.start_child(..., queue=...)``)."""

    queue: Queue | str
    priority: int | None = None
    partition_key: str | None = None
