"""What every part of a run shares: the saga it runs and the journal operations that
:class:`~sagakit.engine.run.SagaRun` provides. The run's mixins (rollback, waits, children,
parallel branches) inherit this, so that each part is typed against one description."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import TerminalError
from ..serde import DEFAULT_MAX_PAYLOAD_BYTES, dumps
from ..stores.base import JournalEntry, SagaEvent, SagaRecord, SagaUpdate, StateWrite, Store
from ..workflows import SagaWorkflow


class RunCore:
    """The saga a run drives and its journal operations (implemented by SagaRun)."""

    saga_id: str
    #: what ids derived from a sequence number start with (see SagaRun.key_base)
    key_base: str
    fence: int
    record: SagaRecord
    workflow: SagaWorkflow[Any, Any]
    #: set by the engine when it drains: no new live work starts, replay still runs
    draining: bool
    #: where the run reads the time (the engine sets its own: see sagakit.clock)
    clock: Clock = SYSTEM_CLOCK
    #: the largest payload this run journals, in bytes of JSON (the engine sets its own)
    max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES
    _store: Store
    _journal: dict[int, JournalEntry]
    _deadline_at: float | None
    #: set when an operator asked the saga to roll back: raised at its first live operation
    _operator_rollback: TerminalError | None

    def _dumps(self, value: Any, what: str) -> str:
        """A payload the user gave as JSON; PayloadTooLargeError (nothing written) when it is
        over this run's ``max_payload_bytes``."""
        return dumps(value, what=what, limit=self.max_payload_bytes)

    if TYPE_CHECKING:  # implemented by SagaRun and ParallelMixin

        def _take_seq(self) -> int: ...

        def _recorded(self, seq: int, kind: str, name: str) -> JournalEntry | None: ...

        def _check_draining(self) -> None: ...

        def _events_seen(self, events: list[SagaEvent] | None) -> int: ...

        def _write_behind(
            self,
            entry: JournalEntry | None,
            update: SagaUpdate | None = None,
            *,
            state: tuple[StateWrite, ...] = (),
            guard: int | None = None,
        ) -> None: ...

        async def _settle(self) -> None: ...

        async def _settle_and_check_lease(self) -> None: ...

        async def _write(
            self,
            entry: JournalEntry | None,
            update: SagaUpdate | None = None,
            *,
            guard: int | None = None,
        ) -> None: ...
