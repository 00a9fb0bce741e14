"""A test-only seam: a hook around each step attempt's body that may make the run die there.

``Engine.step_hook`` (``None`` by default, and in production) is called with a
:class:`StepPoint` just before a step attempt's body runs (``when="before"``) and just after it
returned, before its result is journaled (``when="after"``). A hook that raises
:class:`ProcessCrash` makes the run stop as if its process were killed at that point: the run
writes nothing more to the journal and keeps its lease, which expires, so a worker takes the
saga over and replays it from its journal, as it would after a SIGKILL. Raised ``"after"``, the
step's side effect happened but its result was never recorded: the replay runs its body again,
which is what a test of a step's idempotency needs. :mod:`sagakit.testing` sets the hook
(``env.crash_at(...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

#: where a step hook is called: before an attempt's body, or after it returned
When = Literal["before", "after"]


@dataclass(frozen=True, slots=True)
class StepPoint:
    """One point of one step attempt, as a step hook sees it."""

    saga_id: str
    workflow: str
    step: str
    seq: int
    #: the attempt's number (1 for the first, counted across crashes and suspensions)
    attempt: int
    when: When


class ProcessCrash(BaseException):
    """The process running a saga died here (simulated by a test's step hook).

    A BaseException, so that neither the saga function's nor the engine's ``except Exception``
    can handle it: the run stops at once, writes nothing more and keeps its lease.
    """

    def __init__(self, point: StepPoint):
        super().__init__(
            f"simulated crash {point.when} step {point.step!r} (seq {point.seq}, attempt "
            f"{point.attempt}) of saga {point.saga_id!r}"
        )
        self.point = point


#: what ``Engine.step_hook`` holds
StepHook = Callable[[StepPoint], None]

__all__ = ["ProcessCrash", "StepHook", "StepPoint", "When"]
