"""Steering live sagas: look at them, and retry, skip, compensate, cancel or resume them.

``engine.admin`` (or ``SagaAdmin(engine)``) works from any process that opens the saga's
database, with or without the saga's code: each action is a change of the saga's row and
journal, made in one transaction, and the saga then goes on in whichever worker takes it.

Every action is checked against the saga's status first (:class:`~sagakit.SagaStateError`
names the status and what allows the action; nothing is written), and leaves an audit entry in
the saga's journal: what was done, why, when and by whom. Audit entries sit at negative journal
numbers, outside the saga function's own numbering, so that a replay never meets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .engine.snapshots import AuditEntry, SagaSnapshot

if TYPE_CHECKING:
    from .engine.engine import Engine

__all__ = ["AuditEntry", "SagaAdmin", "SagaPage"]


@dataclass(frozen=True, slots=True)
class SagaPage:
    """One page of :meth:`SagaAdmin.list_sagas`: the sagas, newest first, and the cursor of the
    next page (``None`` on the last page)."""

    sagas: list[SagaSnapshot]
    next_cursor: str | None

    def __iter__(self) -> Any:
        return iter(self.sagas)

    def __len__(self) -> int:
        return len(self.sagas)


class SagaAdmin:
    """The operator's view of an engine's database (see the module docstring)."""

    def __init__(self, engine: Engine):
        self._engine = engine

    async def get_saga(self, saga_id: str) -> SagaSnapshot:
        """The saga with its journal (``steps``) and its audit entries (``audit``).

        Raises SagaNotFoundError.
        """
        raise NotImplementedError

    async def list_sagas(
        self,
        status: str | None = None,
        name: str | None = None,
        created_after: datetime | float | None = None,
        created_before: datetime | float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SagaPage:
        """Sagas newest first, without their journals, filtered by status, workflow name and
        creation time (``created_after`` inclusive, ``created_before`` exclusive; a datetime
        or an epoch time). Pass ``page.next_cursor`` as ``cursor`` for the next page; paging
        is stable while new sagas arrive (they are newer than every page).

        Raises SagaValidationError for an unknown status, a bad limit or a cursor this method
        did not give out.
        """
        raise NotImplementedError

    async def count_by_status(self) -> dict[str, int]:
        """How many sagas are in each status: every status, in lifecycle order, zeros
        included."""
        raise NotImplementedError

    async def retry_step(
        self, saga_id: str, *, reason: str | None = None, by: str | None = None
    ) -> SagaSnapshot:
        """Run the failed step again, with a fresh retry budget.

        * PARKED: the step that ran out of retries runs again, and the saga goes on.
        * FAILED because compensations failed: those compensations run again, and the
          rollback goes on (the saga ends COMPENSATED if they succeed).
        * FAILED because the code no longer replays its journal (non-determinism): the saga is
          replayed again, with the code the workers run now.
        """
        raise NotImplementedError

    async def skip_step(
        self,
        saga_id: str,
        mock_output: Any = None,
        *,
        reason: str | None = None,
        by: str | None = None,
    ) -> SagaSnapshot:
        """Record ``mock_output`` as the output of the step a PARKED saga is stopped at, and go
        on as if the step had returned it (the step is not compensated on a later rollback:
        the saga did not do it). On a saga FAILED because compensations failed, record those
        compensations as done (an operator undid by hand what they should have) and finish the
        rollback; ``mock_output`` must then be left out.
        """
        raise NotImplementedError

    async def compensate(
        self, saga_id: str, *, reason: str | None = None, by: str | None = None
    ) -> SagaSnapshot:
        """Roll the saga back now: it stops going forward (a wait ends, a parked step stays
        failed) and the compensations of what it did run, newest first. Allowed while it is
        PENDING, SUSPENDED or PARKED."""
        raise NotImplementedError

    async def cancel(self, saga_id: str, reason: str, *, by: str | None = None) -> SagaSnapshot:
        """Stop the saga for good without rolling anything back: it becomes CANCELLED.
        Allowed while it has not ended. A worker running it stops at its next durable write
        (a step executing at that moment finishes, its result is not recorded); a parent
        waiting for it gets SagaCancelledError."""
        raise NotImplementedError

    async def resume(
        self, saga_id: str, *, reason: str | None = None, by: str | None = None
    ) -> SagaSnapshot:
        """Wake a SUSPENDED saga now: its timers (``saga.sleep``) end early; a wait for a
        signal, a promise or a child looks at its events again and goes on waiting if none
        answered it."""
        raise NotImplementedError
