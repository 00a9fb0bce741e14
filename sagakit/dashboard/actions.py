"""The admin actions the dashboard offers: which make sense in which status, how a submitted
form becomes a call of :class:`~sagakit.admin.SagaAdmin` (the token check is in :mod:`.auth`).

The statuses here only decide which buttons a page shows; the admin API checks the status
again when the action runs (another operator may have acted in between) and its
:class:`~sagakit.errors.SagaStateError` is what the operator then sees.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..admin import SagaAdmin
from ..engine.snapshots import SagaSnapshot
from ..stores.base import SagaStatus
from .auth import token_matches

__all__ = [
    "ACTIONS",
    "Action",
    "ActionInputError",
    "ActionRequest",
    "available_actions",
    "parse_action",
    "perform",
    "token_matches",
]

#: the longest reason and operator name kept (they go into the saga's audit entries)
MAX_REASON = 500
MAX_BY = 100
#: the operator name recorded when the form gives none
DEFAULT_BY = "dashboard"

S = SagaStatus


@dataclass(frozen=True, slots=True)
class Action:
    """One button: its path segment, its label, when it is offered and what it does."""

    name: str
    label: str
    allowed: frozenset[SagaStatus]
    help: str
    #: the flash message after it succeeded
    done: str
    #: it ends or rolls back the saga: drawn as a dangerous button
    danger: bool = False


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action(
            "retry",
            "Retry step",
            frozenset({S.PARKED, S.FAILED, S.COMPENSATED}),
            "run the failed step (or the failed compensations) again, with fresh retries; a "
            "compensated saga goes forward again, and what its rollback undid runs again",
            "Retry requested",
        ),
        Action(
            "skip",
            "Skip step",
            frozenset({S.PARKED, S.FAILED, S.COMPENSATED}),
            "record the mock output as the step's result (or the failed compensations as done) "
            "and go on; a compensated saga goes forward again from after its failed step",
            "Step skipped",
        ),
        Action(
            "resume",
            "Resume now",
            frozenset({S.SUSPENDED}),
            "end the saga's timers and retry backoffs now; a wait for an event looks at its "
            "events again",
            "Saga woken",
        ),
        Action(
            "compensate",
            "Compensate",
            frozenset({S.QUEUED, S.PENDING, S.SUSPENDED, S.PARKED, S.COMPLETED}),
            "roll the saga back now: what it did is undone, newest first (a completed saga "
            "gives up its output)",
            "Rollback started",
            danger=True,
        ),
        Action(
            "cancel",
            "Cancel",
            frozenset({S.QUEUED, S.PENDING, S.RUNNING, S.SUSPENDED, S.PARKED, S.COMPENSATING}),
            "stop the saga for good without rolling it back; its unfinished child sagas are "
            "rolled back (a reason is required)",
            "Saga cancelled",
            danger=True,
        ),
        Action(
            "fork",
            "Fork",
            frozenset(S),
            "start a new saga with the same input that reuses this one's journal entries "
            "below 'from seq' and runs the rest on the workers' current code (after a bug "
            "fix); this saga stays as it is",
            "Forked: this is the new saga",
        ),
    )
}


def available_actions(status: SagaStatus | str) -> list[Action]:
    """The actions that make sense for a saga in ``status``, in the order the page shows
    them."""
    return [a for a in ACTIONS.values() if SagaStatus(status) in a.allowed]


class ActionInputError(ValueError):
    """The submitted form cannot become an action (its message is for the operator)."""


@dataclass(frozen=True, slots=True)
class ActionRequest:
    """A submitted action, checked: what :func:`perform` runs."""

    action: Action
    reason: str | None
    by: str
    #: ``mock_output`` given for skip, already parsed from JSON
    mock_output: Any = None
    has_mock_output: bool = False
    #: for fork: the first journal number not reused, and the new saga's id (None: a fresh one)
    from_seq: int = 0
    new_id: str | None = None


def parse_action(name: str, form: Mapping[str, str]) -> ActionRequest:
    """The request for the action ``name`` from its form fields (``reason``, ``by``,
    ``mock_output`` as JSON for skip). Raises ActionInputError."""
    action = ACTIONS.get(name)
    if action is None:
        raise ActionInputError(f"there is no action {name!r}")
    reason = form.get("reason", "").strip() or None
    if reason is not None and len(reason) > MAX_REASON:
        raise ActionInputError(f"the reason is too long (at most {MAX_REASON} characters)")
    by = form.get("by", "").strip() or DEFAULT_BY
    if len(by) > MAX_BY:
        raise ActionInputError(f"the operator name is too long (at most {MAX_BY} characters)")
    if action.name == "cancel" and reason is None:
        raise ActionInputError("cancelling a saga needs a reason: fill in the reason field")
    if action.name == "fork":
        return _fork_request(action, reason, by, form)
    raw = form.get("mock_output", "").strip() if action.name == "skip" else ""
    if not raw:
        return ActionRequest(action, reason, by)
    try:
        mock_output = json.loads(raw)
    except ValueError as exc:
        raise ActionInputError(
            f'the mock output must be JSON (for example {{"id": 1}} or "text"): {exc}'
        ) from exc
    return ActionRequest(action, reason, by, mock_output, has_mock_output=True)


def _fork_request(
    action: Action, reason: str | None, by: str, form: Mapping[str, str]
) -> ActionRequest:
    raw = form.get("from_seq", "").strip()
    try:
        from_seq = int(raw)
    except ValueError:
        raise ActionInputError(
            f"a fork needs 'from seq', the first journal number to run again (a whole number "
            f"from the timeline), got {raw!r}"
        ) from None
    new_id = form.get("new_id", "").strip() or None
    return ActionRequest(action, reason, by, from_seq=from_seq, new_id=new_id)


async def perform(admin: SagaAdmin, saga_id: str, request: ActionRequest) -> SagaSnapshot:
    """Run the action through the admin API; its SagaErrors reach the caller."""
    name, reason, by = request.action.name, request.reason, request.by
    if name == "retry":
        return await admin.retry_step(saga_id, reason=reason, by=by)
    if name == "skip":
        if request.has_mock_output:
            return await admin.skip_step(saga_id, request.mock_output, reason=reason, by=by)
        return await admin.skip_step(saga_id, reason=reason, by=by)
    if name == "compensate":
        return await admin.compensate(saga_id, reason=reason, by=by)
    if name == "cancel":
        assert reason is not None  # parse_action requires it
        return await admin.cancel(saga_id, reason, by=by)
    if name == "resume":
        return await admin.resume(saga_id, reason=reason, by=by)
    if name == "fork":  # the new saga: the page shown next is the fork's
        return await admin.fork(
            saga_id, from_seq=request.from_seq, saga_id=request.new_id, reason=reason, by=by
        )
    raise ActionInputError(f"there is no action {name!r}")  # pragma: no cover
