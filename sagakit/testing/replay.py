"""The replayer: check that workflow code still accepts recorded histories.

:func:`replay` checks that the code of a workflow still accepts a saga's recorded history
(exported with ``sagakit export SAGA_ID > history.json``): it replays the journal with the
workflow's saga function exactly as a worker would after a deploy, and fails with the first
entry where the code and the journal differ. No step body, compensation, wait or child runs:
every operation returns its recorded result, and where the code reaches work the journal does
not hold (a step appended after the recorded ones, say), the replay stops, compatible.

.. code-block:: python

    from sagakit.testing import replay
    from myapp.sagas import checkout

    def test_checkout_still_replays_a_recorded_saga():
        replay("tests/histories/order-1.json", checkout)   # raises ReplayError if it diverges
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import serde
from ..engine.replay import Frontier, replay_only
from ..errors import SagaError, SagaValidationError
from ..history import History, load_history
from ..services import ServicesFactory
from ..stores.base import SagaStatus
from ..workflows import SagaWorkflow

HistorySource = History | Mapping[str, Any] | str | Path

#: recorded statuses a replay that ends must end in too (CANCELLED is an operator's stop,
#: written outside the saga function)
_COMPARED = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})


class ReplayError(SagaError):
    """The code of a workflow does not accept a saga's recorded history: a worker replaying the
    saga with it would fail it (``NonDeterminismError``) or end it otherwise than recorded.

    ``seq`` is the first differing journal entry (None when the difference is not one entry:
    the input no longer fits, or the saga ends in another status), ``recorded`` what the
    journal holds there and ``replayed`` what the code did instead.
    """

    def __init__(self, saga_id: str, workflow: str, seq: int | None, recorded: str, replayed: str):
        where = f"at seq {seq}" if seq is not None else "overall"
        super().__init__(
            f"saga {saga_id!r} ({workflow}) diverges {where}: the journal has {recorded}, "
            f"the code does {replayed}. Keep the recorded order for sagas in flight (guard the "
            "change with saga.patched(...), or register the new code as a new version)"
        )
        self.saga_id = saga_id
        self.workflow = workflow
        self.seq = seq
        self.recorded = recorded
        self.replayed = replayed


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """A history the code accepts."""

    saga_id: str
    workflow: str
    #: the saga's status when the history was recorded
    recorded_status: str
    #: the status the recorded journal leads to with this code (COMPLETED, COMPENSATED, ...),
    #: or None when the replay stopped at new work first
    status: str | None
    #: where the code would go on with work the journal does not hold (None: it ended)
    new_work: Frontier | None
    #: how many journal entries the replay met (audit entries not counted)
    replayed: int

    def describe(self) -> str:
        """One line: how far the replay went."""
        end = (
            f"stops before new work: {self.new_work.describe()}"
            if self.new_work is not None
            else f"ends {self.status}"
        )
        return f"saga {self.saga_id!r} ({self.workflow}): {self.replayed} entries replay, {end}"


def replay(
    history: HistorySource,
    workflow: SagaWorkflow[Any, Any],
    *,
    services: ServicesFactory | None = None,
) -> ReplayResult:
    """Replay a recorded history with ``workflow`` and return how far it went; raise
    :class:`ReplayError` at the first entry where the code and the journal differ.

    ``history`` is what ``sagakit export`` prints: a dict, a path to the file, or the JSON
    text. ``services`` is a services factory for a saga function that reads
    ``saga.services`` (steps never run, so they never use them). From ``async`` code (an
    event loop running), await :func:`replay_async` instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(replay_async(history, workflow, services=services))
    raise SagaError(
        "sagakit.testing.replay was called with an event loop running; in async code use "
        "`await sagakit.testing.replay_async(history, workflow)`"
    )


async def replay_async(
    history: HistorySource,
    workflow: SagaWorkflow[Any, Any],
    *,
    services: ServicesFactory | None = None,
) -> ReplayResult:
    """:func:`replay` for async code."""
    if not isinstance(workflow, SagaWorkflow):
        raise SagaError(
            f"replay takes a saga workflow (made with @saga_workflow), got {workflow!r}"
        )
    loaded = load_history(history)
    record = loaded.record
    if record.name != workflow.name:
        raise SagaError(
            f"saga {record.saga_id!r} is of workflow {record.name!r}, not {workflow.name!r}: "
            "replay it with the workflow that ran it"
        )
    try:
        workflow.input.validate(serde.loads(record.input))
    except SagaValidationError as exc:
        # a worker would roll the saga back for it: a deploy must know before
        raise ReplayError(
            record.saga_id, record.name, None, "its input", f"not accept it ({exc})"
        ) from exc
    ended = await replay_only(workflow, record, loaded.journal, loaded.events, services=services)
    mismatch = ended.nondeterminism
    if mismatch is not None:
        raise ReplayError(
            record.saga_id, record.name, mismatch.seq, mismatch.recorded, mismatch.replayed
        ) from mismatch
    status = None if ended.outcome is None else str(ended.outcome.status)
    recorded_status = SagaStatus(record.status)
    if status is not None and recorded_status in _COMPARED and status != recorded_status:
        cause = _cause(ended.outcome.error if ended.outcome is not None else None)
        raise ReplayError(
            record.saga_id,
            record.name,
            None,
            f"the saga ending {recorded_status.value}",
            f"end it {status}{cause}",
        )
    return ReplayResult(
        record.saga_id, record.name, record.status, status, ended.frontier, ended.matched
    )


def _cause(error: str | None) -> str:
    try:
        data = serde.loads(error)
        message = data["cause"]["message"]
    except (ValueError, TypeError, KeyError):
        return ""
    return f" ({message})"


__all__ = ["ReplayError", "ReplayResult", "replay", "replay_async"]
