"""Retry backoff: the pause between two attempts of a step or a compensation.

A short pause (at most :data:`DURABLE_BACKOFF_AFTER` seconds) is slept in memory: the saga stays
RUNNING and its worker keeps the lease, which costs nothing for a second. A longer one would pin
a worker's slot and hide the saga from operators, so it is journaled instead: the operation's
entry becomes ``retrying``, with the attempts made so far, the last attempt's error and the time
of the next attempt (``retry_at`` in its error JSON), and the saga is SUSPENDED until then, its
lease released, like a durable timer. Whichever worker takes it when that time comes replays it
to the operation, which goes on with the next attempt; attempts count across suspensions and
restarts, so ``max_attempts`` holds. Meanwhile operators may cancel, compensate or resume it.
Mixed into :class:`~sagakit.engine.run.SagaRun`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from .. import serde
from ..errors import ErrorInfo, Suspended
from ..retry import RetryPolicy
from ..stores.base import EntryStatus, JournalEntry, SagaEvent, SagaUpdate
from .core import RunCore
from .waits import PendingWait

log = logging.getLogger("sagakit.engine")

#: seconds: a retry backoff longer than this suspends the saga durably until the next attempt;
#: a shorter one is slept in memory (read at each retry, so tests may lower it)
DURABLE_BACKOFF_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """An attempt of a step or a compensation that failed and will be tried again."""

    kind: str
    name: str
    seq: int
    #: the number of this attempt (1 for the first), so the attempts made so far
    attempt: int
    #: when the operation's first attempt began (kept across suspensions)
    started: float
    error: ErrorInfo


def out_of_attempts(retrying: Retrying | None, name: str, seq: int, attempts: int) -> ErrorInfo:
    """Why an operation whose journal already counts ``attempts`` (its policy's maximum or
    more) gets no further attempt: it waited to retry under a policy that allowed more, or the
    worker running its last attempt died."""
    if retrying is not None:  # the policy allows fewer attempts than it did
        return retrying.given_up()
    return ErrorInfo(
        "WorkerDiedError",
        f"the worker running attempt {attempts} died (crash, kill or out of memory); "
        f"gave up after {attempts} attempts",
        name,
        seq,
    )


@dataclass(frozen=True, slots=True)
class Retrying:
    """What a ``retrying`` journal entry records."""

    attempts: int
    #: the last attempt's error
    error: ErrorInfo
    #: epoch time of the next attempt
    retry_at: float
    started: float

    @classmethod
    def of(cls, entry: JournalEntry | None) -> Retrying | None:
        """The retry state of an entry, or None for an entry that is not waiting to retry."""
        if entry is None or entry.status != EntryStatus.RETRYING:
            return None
        data: dict[str, Any] = serde.loads(entry.error) or {}
        retry_at = data.get("retry_at")
        due = float(retry_at) if isinstance(retry_at, int | float) else 0.0
        return cls(entry.attempts, ErrorInfo.from_json(data), due, entry.started_at)

    def given_up(self) -> ErrorInfo:
        """The error of an operation whose retry budget is spent: the last attempt's."""
        message = f"{self.error.message} (gave up after {self.attempts} attempts)"
        return ErrorInfo(self.error.type, message, self.error.step, self.error.seq)


def retrying_entry(
    saga_id: str, failed: FailedAttempt, retry_at: float, max_attempts: int, now: float
) -> JournalEntry:
    """The journal entry of an operation waiting ``retry_at`` for its next attempt."""
    error = {**failed.error.to_json(), "retry_at": retry_at, "max_attempts": max_attempts}
    return JournalEntry(
        saga_id,
        failed.seq,
        failed.kind,
        failed.name,
        EntryStatus.RETRYING,
        failed.attempt,
        None,
        None,
        serde.dumps(error),
        failed.started,
        now,
    )


class BackoffMixin(RunCore):
    """Waiting between attempts (see the module docstring)."""

    _pending_waits: list[PendingWait]
    _events: list[SagaEvent] | None

    if TYPE_CHECKING:  # provided by SagaRun and WaitsMixin

        async def _check_still_owned(self) -> None: ...

        async def _load_events(self) -> list[SagaEvent]: ...

    async def _wait_to_retry(
        self,
        what: str,
        failed: FailedAttempt,
        policy: RetryPolicy,
        exc: Exception,
        *,
        deadline: float | None = None,
        update: SagaUpdate | None = None,
    ) -> None:
        """Pause before the next attempt: in memory for a short backoff; for a long one,
        journal the entry as ``retrying`` (with ``update``, a status change not written yet)
        and suspend the saga until the next attempt, or ``deadline`` if that comes first."""
        delay = policy.delay_after(failed.attempt)
        durable = delay > DURABLE_BACKOFF_AFTER
        log.info(
            "%s of saga %s failed (attempt %d of %d), retrying in %.2fs%s: %r",
            what,
            self.saga_id,
            failed.attempt,
            policy.max_attempts,
            delay,
            " (the saga is suspended until then)" if durable else "",
            exc,
            extra={
                "saga_id": self.saga_id,
                "workflow": self.workflow.name,
                "step": failed.name,
                "seq": failed.seq,
                "status": self.record.status,
            },
        )
        if not durable:
            await self.clock.sleep(delay)
            await self._check_still_owned()
            return
        retry_at = self.clock.now() + delay
        entry = retrying_entry(
            self.saga_id, failed, retry_at, policy.max_attempts, self.clock.now()
        )
        # durable before the run lets go: the next worker counts this attempt and waits too
        await self._write(entry, update)
        await self._suspend_until(failed.seq, retry_at, deadline)

    async def _await_retry(self, seq: int, retrying: Retrying, deadline: float | None) -> None:
        """Return once the next attempt of a ``retrying`` entry is due (or ``deadline`` has
        passed: the caller fails the operation then); until then, suspend the saga."""
        due = retrying.retry_at if deadline is None else min(retrying.retry_at, deadline)
        if self.clock.now() >= due:
            return
        await self._suspend_until(seq, retrying.retry_at, deadline)

    async def _suspend_until(self, seq: int, retry_at: float, deadline: float | None) -> NoReturn:
        events = self._events if self._events is not None else await self._load_events()
        # an event that arrives meanwhile wakes the saga, which then suspends again
        seen = self._events_seen(events)
        until = retry_at if deadline is None else min(retry_at, deadline)
        self._pending_waits.append(PendingWait(seq, None, until, seen, retry=True))
        raise Suspended(self.saga_id)

    def _retry_pending(self) -> bool:
        """Whether an operation of this run suspended to wait for its next attempt."""
        return any(w.retry for w in self._pending_waits)


__all__ = ["DURABLE_BACKOFF_AFTER", "BackoffMixin", "FailedAttempt", "Retrying", "retrying_entry"]
