"""Remote steps: a command to another service, sent through the outbox, and its reply awaited
as a journaled event. Mixed into :class:`~sagakit.engine.run.SagaRun`.

``saga.send_command(command, payload, to=...)`` at ``seq``:

1. writes the step's entry (RUNNING: the command's id, its attempt, until when it waits) and
   the command's outbox row in **one** transaction (``OutboxStore.append_outbox``), after
   everything the saga did before is durable; the relay publishes the row;
2. waits for the reply like any wait: the saga is SUSPENDED (nothing of it in memory) until
   the reply arrives as an event of kind ``reply`` named by the command's id (the engine's
   reply consumer delivers it, keyed by the reply's message id: a duplicate is stored once),
   or until its timeout;
3. journals the reply (COMPLETED with its value, or FAILED with the participant's error) and
   returns the value or raises :class:`~sagakit.remote.RemoteCommandError`. A timeout re-sends
   the same command (the same message id) while the retry policy allows, then fails the step
   with :class:`~sagakit.remote.RemoteTimeoutError`. A reply that comes after the step ended
   stays among the saga's events and is never taken.

A remote step with ``compensate_with=(command, payload)`` registers its compensation as soon as
its command was sent (the participant may have processed it, even if no reply came): the
rollback sends the compensation command the same way, through the outbox, and waits for its
reply (re-sending it on timeout while the retry policy allows; a refusal or running out of
attempts fails the compensation, and the saga ends FAILED for an operator).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from .. import serde
from ..errors import (
    ErrorInfo,
    SagaError,
    SagaValidationError,
    StoreError,
    StoreUnavailable,
    Suspended,
)
from ..remote import (
    ATTEMPT_HEADER,
    DEFAULT_REPLY_ADDRESS,
    SAGA_HEADER,
    SEQ_HEADER,
    RemoteCommandError,
    RemoteTimeoutError,
    command_id,
    reply_outcome,
)
from ..retry import RetryPolicy
from ..steps import SagaStep
from ..stores.base import EntryKind, EntryStatus, EventKind, JournalEntry, SagaEvent, SagaUpdate
from ..stores.outbox import OutboxMessage, outbox_store
from ..transports.base import check_destination
from .crashes import ProcessCrash
from .observe import Observers, RunInfo
from .outcome import _Compensation
from .waits import PendingWait, WaitsMixin

#: what ``compensate_with`` takes: the compensation command's name and its payload, or a
#: function of the step's reply (None when the step got none) that returns the payload
CompensateWith = tuple[str, Any]
#: the policy of a remote step given none: one attempt (no re-send on timeout)
NO_RETRY = RetryPolicy(max_attempts=1)
#: the policy of a compensation command given none: re-sent twice on timeout
COMPENSATION_RETRY = RetryPolicy(max_attempts=3)


async def _no_body(_ctx: Any, _inp: Any) -> None:  # pragma: no cover - never run
    raise SagaError("a remote step's compensation is a command, never run here")


@dataclass(slots=True)
class RemoteCompensation(_Compensation):
    """A remote step's compensation: a command to send, not a function to call."""

    destination: str = ""
    command: str = ""
    payload: Any = None
    timeout: float | None = None
    retry: RetryPolicy = field(default=COMPENSATION_RETRY)
    #: the step's reply (None: it got none, or an error)
    reply: Any = None

    def body(self) -> str:
        value = self.payload(self.reply) if callable(self.payload) else self.payload
        return serde.dumps(value, what=f"the payload of compensation command {self.command!r}")


@dataclass(slots=True)
class _Sent:
    """A command on its way: what the RUNNING entry records, and what a re-send needs."""

    kind: str
    name: str
    seq: int
    message: OutboxMessage
    attempt: int
    until: float | None
    timeout: float | None
    retry: RetryPolicy
    started_at: float
    #: the entry's compensation column (a compensation's ``{"undoes": seq}``)
    compensation: str | None = None


class RemoteMixin(WaitsMixin):
    """Remote steps of a run (see the module docstring); its waits too (a remote step waits
    for its reply as they do)."""

    _compensations: dict[int, _Compensation]
    _callees: Any

    _unsettled: list[asyncio.Future[None]]
    _crashed: ProcessCrash | None
    observers: Observers
    info: RunInfo

    def _journal_written(self, future: asyncio.Future[None], entry: JournalEntry) -> None:
        """Track an outbox write like ``_write_behind`` tracks an append."""
        future.add_done_callback(_retrieve)
        if self.observers.timing:
            self.observers.time_commit(future)
        self._unsettled.append(future)
        if self.observers:
            self.observers.journaled(self.info, entry, None)
        self._journal[entry.seq] = entry

    # -- the driver method (what SagaContext.send_command calls) -------------------------------

    def send_command(
        self,
        command: str,
        payload: Any,
        to: str,
        compensate_with: CompensateWith | None,
        timeout: float | None,
        retry: RetryPolicy | None,
    ) -> Awaitable[Any]:
        if not isinstance(command, str) or not command:
            raise SagaValidationError(f"a command name must be a non-empty string, got {command!r}")
        check_destination(to)
        if compensate_with is not None and (
            not isinstance(compensate_with, tuple)
            or len(compensate_with) != 2
            or not isinstance(compensate_with[0], str)
            or not compensate_with[0]
        ):
            raise SagaValidationError(
                "compensate_with takes (command name, payload or function of the reply), "
                f"got {compensate_with!r}"
            )
        body = self._dumps(payload, f"the payload of command {command!r}")
        seq = self._take_seq()
        return self._remote_step(seq, command, body, to, compensate_with, timeout, retry)

    # -- the forward step ---------------------------------------------------------------------

    async def _remote_step(
        self,
        seq: int,
        command: str,
        body: str,
        to: str,
        compensate_with: CompensateWith | None,
        timeout: float | None,
        retry: RetryPolicy | None,
    ) -> Any:
        name = f"{to}.{command}"
        entry = self._recorded(seq, EntryKind.REMOTE, name)
        undo = None
        if compensate_with is not None:
            undo = RemoteCompensation(
                seq,
                SagaStep(f"{to}.{compensate_with[0]}", _no_body, None, None, strict=True),
                None,
                True,
                destination=to,
                command=compensate_with[0],
                payload=compensate_with[1],
                timeout=timeout,
                retry=retry or COMPENSATION_RETRY,
            )
        if entry is not None:
            if undo is not None:  # it was sent: the participant may have processed it
                self._compensations[seq] = undo
            if entry.status == EntryStatus.COMPLETED:
                value = serde.loads(entry.output)["value"]
                if undo is not None:
                    undo.reply, undo.failed = value, False
                return value
            if entry.status == EntryStatus.FAILED:
                raise _recorded_failure(entry, to, command)
        if self._operator_rollback is not None:
            raise self._operator_rollback
        self._check_draining()
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight.add(settled)
        try:
            await self._settle()
            if entry is None:
                sent = self._new_command(EntryKind.REMOTE, name, seq, command, body, to, timeout)
                sent.retry = retry or NO_RETRY
                await self._send_command(sent)
                if undo is not None:
                    self._compensations[seq] = undo
            else:
                sent = self._running(entry, EntryKind.REMOTE, name, seq, timeout, retry or NO_RETRY)
            reply = await self._await_reply(sent)
            value = self._end_remote(sent, reply, to, command)
            if undo is not None:
                undo.reply, undo.failed = value, False
            return value
        finally:
            self._in_flight.discard(settled)
            settled.set_result(None)

    # -- the compensation (called by the rollback) ----------------------------------------------

    async def _remote_compensation(
        self,
        undo: RemoteCompensation,
        seq: int,
        update: SagaUpdate | None,
        recorded: JournalEntry | None,
    ) -> JournalEntry:
        """Send the compensation command (unless ``recorded`` says it was), wait for its reply,
        and return the compensation's final entry (queued)."""
        name = undo.step.name
        await self._settle_and_check_lease()
        if update is not None:
            await self._write(None, update)  # the saga is COMPENSATING before the command leaves
        undoes = serde.dumps({"undoes": undo.seq})
        if recorded is None or not recorded.output:
            sent = self._new_command(
                EntryKind.COMPENSATION,
                name,
                seq,
                undo.command,
                undo.body(),
                undo.destination,
                undo.timeout,
            )
            sent.retry, sent.compensation = undo.retry, undoes
            await self._send_command(sent)
        else:
            sent = self._running(
                recorded, EntryKind.COMPENSATION, name, seq, undo.timeout, undo.retry
            )
            sent.compensation = undoes
        reply = await self._await_reply(sent)
        error: ErrorInfo | None = None
        if reply is None:
            error = ErrorInfo("RemoteTimeoutError", _no_reply(sent), name, seq)
        else:
            try:
                reply_outcome(reply.payload, undo.destination, undo.command)
            except RemoteCommandError as exc:
                error = ErrorInfo(exc.error_type, exc.message, name, seq)
        entry = JournalEntry(
            self.saga_id,
            seq,
            EntryKind.COMPENSATION,
            name,
            EntryStatus.COMPLETED if error is None else EntryStatus.FAILED,
            sent.attempt,
            None if reply is None else serde.dumps({"event": reply.seq}),
            undoes,
            None if error is None else serde.dumps(error.to_json()),
            sent.started_at,
            self.clock.now(),
        )
        self._write_behind(entry)
        return entry

    # -- helpers ------------------------------------------------------------------------------

    def _new_command(
        self,
        kind: str,
        name: str,
        seq: int,
        command: str,
        body: str,
        to: str,
        timeout: float | None,
    ) -> _Sent:
        reply_to = getattr(self._callees, "reply_address", None) or DEFAULT_REPLY_ADDRESS
        message_id = command_id(self.key_base, seq)
        message = OutboxMessage(
            message_id,
            to,
            "command",
            command,
            body,
            reply_to=reply_to,
            correlation_id=f"{self.key_base}:{seq}",
            headers={SAGA_HEADER: self.saga_id, SEQ_HEADER: str(seq)},
            saga_id=self.saga_id,
        )
        now = self.clock.now()
        until = None if timeout is None else now + max(0.0, timeout)
        return _Sent(kind, name, seq, message, 1, until, timeout, NO_RETRY, now)

    def _running(
        self,
        entry: JournalEntry,
        kind: str,
        name: str,
        seq: int,
        timeout: float | None,
        retry: RetryPolicy,
    ) -> _Sent:
        """The command a RUNNING entry recorded as sent."""
        out = serde.loads(entry.output)
        message = OutboxMessage(
            out["message_id"],
            out["to"],
            "command",
            out["command"],
            out["payload"],
            reply_to=out["reply_to"],
            correlation_id=f"{self.key_base}:{seq}",
            headers={SAGA_HEADER: self.saga_id, SEQ_HEADER: str(seq)},
            saga_id=self.saga_id,
        )
        return _Sent(
            kind,
            name,
            seq,
            message,
            entry.attempts,
            out["until"],
            timeout,
            retry,
            entry.started_at,
            entry.compensation,
        )

    async def _send_command(self, sent: _Sent) -> None:
        """Journal the command as sent (attempt ``sent.attempt``) with its outbox row, in one
        transaction, and wait until it committed."""
        store = outbox_store(self._store)
        if store is None:
            raise SagaError(
                f"saga.send_command needs a store with an outbox; {type(self._store).__name__} "
                "has none: use the memory, SQLite or PostgreSQL store"
            )
        m = sent.message
        message = OutboxMessage(
            m.message_id,
            m.destination,
            m.kind,
            m.name,
            m.payload,
            m.reply_to,
            m.correlation_id,
            {**m.headers, ATTEMPT_HEADER: str(sent.attempt)},
            m.saga_id,
            send_key=f"{m.message_id}#{sent.attempt}",
        )
        output = {
            "message_id": m.message_id,
            "to": m.destination,
            "command": m.name,
            "payload": m.payload,
            "reply_to": m.reply_to,
            "until": sent.until,
        }
        entry = JournalEntry(
            self.saga_id,
            sent.seq,
            sent.kind,
            sent.name,
            EntryStatus.RUNNING,
            sent.attempt,
            serde.dumps(output),
            sent.compensation,
            None,
            sent.started_at,
            self.clock.now(),
        )
        if self._crashed is not None:  # a dead process writes nothing (a parallel branch)
            raise ProcessCrash(self._crashed.point)
        try:
            future = store.append_outbox(self.saga_id, self.fence, entry, [message])
        except StoreError as exc:
            raise StoreUnavailable(self.saga_id, exc) from exc
        self._journal_written(future, entry)
        await self._settle()

    async def _await_reply(self, sent: _Sent) -> SagaEvent | None:
        """The reply to ``sent`` (None: none came within its attempts), or Suspended until it
        comes or its timeout."""
        events = self._events if self._events is not None else await self._load_events()
        while True:
            seen = self._events_seen(events)
            reply = _reply(events, sent.message.message_id)
            if reply is not None:
                return reply
            if sent.until is None or self.clock.now() < sent.until:
                break
            if sent.attempt >= sent.retry.max_attempts:
                return None
            # the same command again (its id unchanged: a participant that processed it
            # answers from its inbox)
            sent.attempt += 1
            sent.until = self.clock.now() + max(0.0, sent.timeout or 0.0)
            await self._send_command(sent)
            events = await self._load_events()
        self._pending_waits.append(PendingWait(sent.seq, None, sent.until, seen))
        raise Suspended(self.saga_id)

    def _end_remote(self, sent: _Sent, reply: SagaEvent | None, to: str, command: str) -> Any:
        """Journal how the forward step ended; its value, or its error raised."""
        error: ErrorInfo | None = None
        value: Any = None
        output: str | None = None
        if reply is None:
            error = ErrorInfo("RemoteTimeoutError", _no_reply(sent), sent.name, sent.seq)
        else:
            try:
                value = reply_outcome(reply.payload, to, command)
                output = serde.dumps({"event": reply.seq, "value": value})
            except RemoteCommandError as exc:
                error = ErrorInfo(exc.error_type, exc.message, sent.name, sent.seq)
        entry = JournalEntry(
            self.saga_id,
            sent.seq,
            sent.kind,
            sent.name,
            EntryStatus.COMPLETED if error is None else EntryStatus.FAILED,
            sent.attempt,
            output,
            None,
            None if error is None else serde.dumps(error.to_json()),
            sent.started_at,
            self.clock.now(),
        )
        self._write_behind(entry)
        if error is not None:
            raise _recorded_failure(entry, to, command)
        return value


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _reply(events: list[SagaEvent], message_id: str) -> SagaEvent | None:
    for event in events:
        if event.kind == EventKind.REPLY and event.name == message_id:
            return event
    return None


def _no_reply(sent: _Sent) -> str:
    return (
        f"no reply to command {sent.message.name!r} from {sent.message.destination!r} within "
        f"its timeout ({sent.timeout}s), after {sent.attempt} attempt(s)"
    )


def _recorded_failure(entry: JournalEntry, to: str, command: str) -> SagaError:
    info = ErrorInfo.from_json(serde.loads(entry.error) or {})
    if info.type == "RemoteTimeoutError":
        return RemoteTimeoutError(info.message)
    return RemoteCommandError(info.message, participant=to, command=command, error_type=info.type)


__all__ = ["CompensateWith", "RemoteCompensation", "RemoteMixin"]
