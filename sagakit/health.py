"""Alert conditions on a saga database: what ``sagakit check`` exits non-zero on, and what the
dashboard's front page shows.

Each condition counts the sagas in a state an operator should hear about, and holds while that
count is at most its limit:

* ``running_age``: sagas that should be moving and have not for longer than an age. A saga
  RUNNING or COMPENSATING counts when its last write (``updated_at``: a step's result, a
  status change, a claim) is older; a PENDING one when it has also been due that long (a
  delayed start counts from its start time). Waiting sagas never count: SUSPENDED (a sleep, a
  signal, a child), QUEUED (``queue_age``), PARKED (``parked``). A lease renewal is not a
  write, so a step that hangs while its worker lives is caught too.
* ``failed``: FAILED sagas (a compensation ran out of retries: the rollback is incomplete).
* ``parked``: PARKED sagas (a step ran out of retries with ``on_exhausted="park"``).
* ``stranded``: sagas not ended whose workflow version no live worker serves.
* ``queue_age``: sagas QUEUED (and due) for longer than an age: their queue is stuck or
  too small.

The ages are judged against the caller's clock (``engine.clock``) and the stores' times (the
database server's clock for PostgreSQL); keep thresholds well above any clock skew.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import SagaValidationError
from .stores.base import SagaFilter, SagaRecord, SagaStatus, Store

if TYPE_CHECKING:
    from .engine.engine import Engine

__all__ = ["HealthAdmin", "HealthCondition", "HealthReport", "check_health", "format_age"]

#: the most example ids a condition carries
MAX_EXAMPLES = 50
_MOVING = (SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value)


@dataclass(frozen=True, slots=True)
class HealthCondition:
    """One alert condition: how many sagas match it (``observed``), how many may
    (``limit``), and a few of their ids, newest first."""

    #: ``running_age``, ``failed``, ``parked``, ``stranded`` or ``queue_age``
    name: str
    #: what is counted, in words: "sagas running with no progress for over 10m"
    title: str
    #: the threshold as a command line writes it: ``10m`` for an age, ``0`` for a count
    threshold: str
    limit: int
    observed: int
    examples: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.observed <= self.limit

    def describe(self) -> str:
        """One line: ``FAIL running_age: 2 sagas running with no progress for over 10m (at
        most 0), e.g. 3f2a..., 9b1c...``."""
        line = f"{'ok' if self.ok else 'FAIL'} {self.name}: {self.observed} {self.title}"
        line += f" (at most {self.limit})"
        if self.examples and not self.ok:
            line += ", e.g. " + ", ".join(self.examples)
        return line

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "title": self.title,
            "threshold": self.threshold,
            "limit": self.limit,
            "observed": self.observed,
            "examples": list(self.examples),
        }


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The conditions checked (:func:`check_health`), in a fixed order."""

    conditions: tuple[HealthCondition, ...]
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        """Every condition holds."""
        return all(c.ok for c in self.conditions)

    @property
    def breached(self) -> tuple[HealthCondition, ...]:
        return tuple(c for c in self.conditions if not c.ok)

    def summary(self) -> str:
        """One line per breached condition, or one line saying that all hold."""
        if self.ok:
            return f"ok: all {len(self.conditions)} conditions hold"
        return "\n".join(c.describe() for c in self.breached)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked_at": self.checked_at.isoformat().replace("+00:00", "Z"),
            "conditions": [c.to_json() for c in self.conditions],
        }


def format_age(seconds: float) -> str:
    """``600`` as ``10m``, ``5400`` as ``1h30m``, ``45`` as ``45s``."""
    whole = round(seconds)
    if whole != seconds or whole == 0:
        return f"{seconds:g}s"
    text = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            text += f"{count}{unit}"
    return text


def _age(value: timedelta | float | None, what: str) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise SagaValidationError(
            f"{what} must be a positive timedelta or number of seconds, got {value!r}"
        )
    return float(seconds)


def _count(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SagaValidationError(f"{what} must be a whole number 0 or more, got {value!r}")
    return value


async def _matching(
    store: Store, filters: list[SagaFilter], examples: int
) -> tuple[int, tuple[str, ...]]:
    """How many sagas match any of ``filters`` (they do not overlap), and a few, newest first."""
    observed = 0
    for where in filters:
        observed += await store.count_sagas(where)
    if not observed or not examples:
        return observed, ()
    found: list[SagaRecord] = []
    for where in filters:
        found += await store.list_sagas(where, examples)
    found.sort(key=lambda r: (r.created_at, r.saga_id), reverse=True)
    return observed, tuple(r.saga_id for r in found[:examples])


async def check_health(
    store: Store,
    *,
    max_running_age: timedelta | float | None = timedelta(minutes=10),
    max_failed: int | None = 0,
    max_parked: int | None = None,
    max_stranded: int | None = 0,
    max_queue_age: timedelta | float | None = None,
    examples: int = 3,
    now: float | None = None,
) -> HealthReport:
    """Check the alert conditions (see the module docstring) on an open store; ``None`` turns
    a condition off. Ages are timedeltas or seconds; ``now`` (epoch seconds) defaults to the
    system clock. Reads only: a few indexed counts, and up to ``examples`` ids per breached
    condition.

    Raises SagaValidationError for a threshold that is not a positive age or a count >= 0.
    """
    running_age = _age(max_running_age, "max_running_age")
    queue_age = _age(max_queue_age, "max_queue_age")
    failed = _count(max_failed, "max_failed")
    parked = _count(max_parked, "max_parked")
    stranded = _count(max_stranded, "max_stranded")
    if isinstance(examples, bool) or not isinstance(examples, int):
        raise SagaValidationError(f"examples must be a whole number, got {examples!r}")
    if not 0 <= examples <= MAX_EXAMPLES:
        raise SagaValidationError(f"examples must be from 0 to {MAX_EXAMPLES}, got {examples}")
    moment = time.time() if now is None else now
    conditions: list[HealthCondition] = []

    if running_age is not None:
        cutoff = moment - running_age
        filters = [
            SagaFilter(statuses=_MOVING, updated_before=cutoff),
            SagaFilter(status=SagaStatus.PENDING.value, updated_before=cutoff, due_before=cutoff),
        ]
        observed, ids = await _matching(store, filters, examples)
        age = format_age(running_age)
        title = f"sagas running with no progress for over {age}"
        conditions.append(HealthCondition("running_age", title, age, 0, observed, ids))
    for name, status, limit, title in (
        ("failed", SagaStatus.FAILED, failed, "FAILED sagas (rollback incomplete)"),
        ("parked", SagaStatus.PARKED, parked, "PARKED sagas (waiting for an operator)"),
    ):
        if limit is not None:
            observed, ids = await _matching(store, [SagaFilter(status=status.value)], examples)
            conditions.append(HealthCondition(name, title, str(limit), limit, observed, ids))
    if stranded is not None:
        observed = await store.count_stranded()
        ids = ()
        if observed and examples:
            ids = tuple(r.saga_id for r in await store.list_stranded(examples))
        title = "stranded sagas (no live worker serves their version)"
        conditions.append(
            HealthCondition("stranded", title, str(stranded), stranded, observed, ids)
        )
    if queue_age is not None:
        cutoff = moment - queue_age
        where = SagaFilter(status=SagaStatus.QUEUED.value, created_before=cutoff, due_before=cutoff)
        observed, ids = await _matching(store, [where], examples)
        age = format_age(queue_age)
        title = f"sagas queued for over {age}"
        conditions.append(HealthCondition("queue_age", title, age, 0, observed, ids))
    return HealthReport(tuple(conditions), datetime.fromtimestamp(moment, UTC))


class HealthAdmin:
    """The alerts part of :class:`~sagakit.SagaAdmin` (``engine.admin.health()``)."""

    _engine: Engine

    if TYPE_CHECKING:

        def _store(self) -> Store: ...

    async def health(
        self,
        *,
        max_running_age: timedelta | float | None = timedelta(minutes=10),
        max_failed: int | None = 0,
        max_parked: int | None = None,
        max_stranded: int | None = 0,
        max_queue_age: timedelta | float | None = None,
        examples: int = 3,
    ) -> HealthReport:
        """The alert conditions of :mod:`sagakit.health` on this engine's database, judged on
        the engine's clock; ``None`` turns a condition off. What ``sagakit check`` checks.

        Raises SagaValidationError for a threshold that is not a positive age or a count >= 0.
        """
        return await check_health(
            self._store(),
            max_running_age=max_running_age,
            max_failed=max_failed,
            max_parked=max_parked,
            max_stranded=max_stranded,
            max_queue_age=max_queue_age,
            examples=examples,
            now=self._engine.clock.now(),
        )
