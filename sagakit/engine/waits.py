"""What a saga does besides steps: wait (timers, signals, promises), publish state, and keep a
virtual object's state. Mixed into :class:`~sagakit.engine.run.SagaRun`.

A wait is a journaled operation like a step. It looks at the events the saga has received
(signals, promise outcomes, notifications for its token); when one answers it, the wait's entry
records the answer, guarded so that no event that arrived meanwhile is missed. When none does,
the wait journals that it started (its token and until when it waits) and the run ends by
raising :class:`~sagakit.errors.Suspended`: the saga is SUSPENDED, nothing of it is left in
memory, and the store hands it to a worker again when its time comes or an event arrives.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import serde
from ..errors import (
    PAST_DEADLINE,
    ErrorInfo,
    EventsArrived,
    PromiseAlreadyCompletedError,
    PromiseRejectedError,
    SagaError,
    SagaFinishedError,
    SagaNotFoundError,
    SagaTimeoutError,
    StoreError,
    StoreUnavailable,
    Suspended,
)
from ..stores.base import (
    Delivery,
    DeliveryOutcome,
    EntryKind,
    EntryStatus,
    EventKind,
    JournalEntry,
    SagaEvent,
    SagaStatus,
    SagaUpdate,
    StateWrite,
    Store,
)
from .core import RunCore


def saga_scope(saga_id: str) -> str:
    """The state scope of a saga's published state (``set_state`` / ``engine.query``)."""
    return f"saga:{saga_id}"


def object_scope(object_key: str) -> str:
    """The state scope of one virtual object (``Name/key``)."""
    return f"object:{object_key}"


@dataclass(slots=True)
class PendingWait:
    """A wait the run stopped in: the saga sleeps until ``until`` or an event."""

    seq: int
    #: what ``engine.notify`` answers the wait with (None: nothing does, a retry backoff)
    token: str | None
    until: float | None
    #: how many events the wait had seen when it found none that answers it
    seen: int
    #: a step or compensation waiting for its next attempt (sagakit.engine.backoff)
    retry: bool = False


#: what a wait takes from the events: the event that answers it and the value it returns
Answer = tuple[SagaEvent, Any]
Matcher = Callable[[list[SagaEvent], str], Answer | None]


class WaitsMixin(RunCore):
    """Waits, published state and object state of a run (see the module docstring)."""

    #: the events the saga received, as far as this run knows (None: not read yet)
    _events: list[SagaEvent] | None
    _pending_waits: list[PendingWait]
    _in_flight: set[asyncio.Future[None]]
    _object_key: str | None
    _object_state: dict[str, str] | None

    # -- the RunDriver protocol --------------------------------------------------------------

    def sleep(self, seconds: float) -> Awaitable[Any]:
        seq = self._take_seq()
        return self._wait(seq, EntryKind.SLEEP, "sleep", seconds, _nothing)

    def wait_for_signal(self, name: str, timeout: float | None) -> Awaitable[Any]:
        seq = self._take_seq()
        return self._wait(seq, EntryKind.SIGNAL, name, timeout, self._signal_matcher(name))

    def promise_value(self, name: str) -> Awaitable[Any]:
        seq = self._take_seq()
        return self._wait(seq, EntryKind.PROMISE, name, None, _promise_matcher(name))

    def received_signals(self) -> Awaitable[Any]:
        return self._received_signals(self._take_seq())

    async def complete_promise(self, name: str, value: Any, error: str | None) -> None:
        await self._settle()
        await deliver_promise(self._store, self.saga_id, name, value, error, self.max_payload_bytes)

    def set_state(self, key: str, value: Any) -> None:
        self._state_write(saga_scope(self.saga_id), key, self._dumps(value, f"the state {key!r}"))

    def object_set(self, key: str, value: str | None) -> None:
        if self._object_key is None:  # pragma: no cover - the object API checks this first
            raise SagaError("object state is only available in a virtual object handler")
        if self._object_state is not None:
            if value is None:
                self._object_state.pop(key, None)
            else:
                self._object_state[key] = value
        self._state_write(object_scope(self._object_key), key, value)

    async def object_get(self, key: str) -> str | None:
        seq = self._take_seq()
        entry = self._recorded(seq, EntryKind.STATE_GET, key)
        if entry is not None:
            value: str | None = serde.loads(entry.output)
            return value
        self._check_draining()
        current = await self.object_peek(key)
        self._write_behind(self._entry(seq, EntryKind.STATE_GET, key, serde.dumps(current)))
        return current

    async def object_peek(self, key: str) -> str | None:
        """The object's value under ``key`` now, with this run's own writes (not journaled)."""
        if self._object_state is None:
            assert self._object_key is not None
            await self._settle()  # this run's own writes are in the store before it is read
            self._object_state = await self._read_state(object_scope(self._object_key))
        return self._object_state.get(key)

    async def _received_signals(self, seq: int) -> list[dict[str, Any]]:
        """The signals received so far, journaled (a replay sees the same list)."""
        entry = self._recorded(seq, EntryKind.SIGNALS, "signals")
        if entry is None:
            self._check_draining()
            events = await self._load_events()
            seen = [
                {"name": e.name, "payload": serde.loads(e.payload)}
                for e in events
                if e.kind == EventKind.SIGNAL
            ]
            entry = self._entry(seq, EntryKind.SIGNALS, "signals", serde.dumps(seen))
            self._write_behind(entry)
        signals: list[dict[str, Any]] = serde.loads(entry.output)
        return signals

    # -- state -------------------------------------------------------------------------------

    def _state_write(self, scope: str, key: str, value: str | None) -> None:
        seq = self._take_seq()
        if self._recorded(seq, EntryKind.STATE, key) is not None:
            return  # replayed: written when it first ran
        self._check_draining()
        entry = self._entry(seq, EntryKind.STATE, key, value or "null")
        self._write_behind(entry, state=(StateWrite(scope, key, value),))

    async def _read_state(self, scope: str) -> dict[str, str]:
        try:
            return await self._store.load_state(scope)
        except StoreError as exc:
            raise StoreUnavailable(self.saga_id, exc) from exc

    # -- waits -------------------------------------------------------------------------------

    def _signal_matcher(self, name: str) -> Matcher:
        def match(events: list[SagaEvent], token: str) -> Answer | None:
            # the token names this wait alone, and notify consumed it and told its caller that
            # its event answers this wait: it comes before any signal of the name, which then
            # answers the next wait for the name
            notified = _notified(events, token)
            if notified is not None:
                return notified
            taken = self._consumed_signals()
            for event in events:
                if event.kind == EventKind.SIGNAL and event.name == name and event.seq not in taken:
                    return event, serde.loads(event.payload)
            return None

        return match

    def _consumed_signals(self) -> set[int]:
        return {
            int(serde.loads(e.output)["event"])
            for e in self._journal.values()
            if e.kind == EntryKind.SIGNAL and e.status == EntryStatus.COMPLETED and e.output
        }

    async def _wait(
        self,
        seq: int,
        kind: str,
        name: str,
        timeout: float | None,
        match: Matcher,
    ) -> Any:
        entry = self._recorded(seq, kind, name)
        if entry is not None and entry.status == EntryStatus.COMPLETED:
            return serde.loads(entry.output)["value"] if entry.output else None
        if entry is not None and entry.status == EntryStatus.FAILED:
            raise _recorded_failure(entry)
        if self._operator_rollback is not None:
            raise self._operator_rollback  # the saga stops waiting and rolls back
        self._check_draining()
        # in flight like a step: a rollback or suspension waits for it to settle
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight.add(settled)
        try:
            return await self._wait_live(seq, kind, name, timeout, match, entry)
        finally:
            self._in_flight.discard(settled)
            settled.set_result(None)

    async def _wait_live(
        self,
        seq: int,
        kind: str,
        name: str,
        timeout: float | None,
        match: Matcher,
        entry: JournalEntry | None,
    ) -> Any:
        await self._settle()
        if entry is None:
            token = f"{seq}-{secrets.token_hex(6)}"
            until = None if timeout is None else self.clock.now() + max(0.0, timeout)
        else:
            started = serde.loads(entry.output)
            token, until = started["token"], started["until"]
        limit = until
        if self._deadline_at is not None and (limit is None or self._deadline_at < limit):
            limit = self._deadline_at
        events = self._events if self._events is not None else await self._load_events()
        while True:
            seen = self._events_seen(events)  # events are numbered 1, 2, 3... per saga
            answer = match(events, token)
            if answer is None and (limit is None or self.clock.now() < limit):
                break
            try:
                return await self._finish_wait(seq, kind, name, entry, answer, until, seen)
            except EventsArrived:
                events = await self._load_events()  # decide again with the new events
        if entry is None:
            output = serde.dumps({"token": token, "until": until})
            self._write_behind(self._entry(seq, kind, name, output, status=EntryStatus.RUNNING))
        self._pending_waits.append(PendingWait(seq, token, limit, seen))
        raise Suspended(self.saga_id)

    async def _finish_wait(
        self,
        seq: int,
        kind: str,
        name: str,
        started: JournalEntry | None,
        answer: Answer | None,
        until: float | None,
        seen: int,
    ) -> Any:
        """Journal how the wait ended (guarded by the events seen); return its value."""
        begun = started.started_at if started is not None else self.clock.now()
        # the saga's wait token is withdrawn with the entry that ends the wait
        clear = SagaUpdate(clear_wait=True) if started is not None else None
        error: ErrorInfo | None = None
        output: str | None = None
        value: Any = None
        if answer is not None:
            event, value = answer
            if event.kind == EventKind.PROMISE:
                if "error" in value:
                    error = ErrorInfo("PromiseRejectedError", str(value["error"]), name, seq)
                value = value.get("value")
            output = serde.dumps({"event": event.seq, "value": value})
        elif until is not None and (self._deadline_at is None or until <= self._deadline_at):
            if kind != EntryKind.SLEEP:
                message = f"no {kind} {name!r} arrived within its timeout"
                error = ErrorInfo("SagaTimeoutError", message, name, seq)
        else:
            error = ErrorInfo("SagaTimeoutError", PAST_DEADLINE, name, seq)
        if error is not None:
            await self._write(self._failed(seq, kind, name, error, begun), clear, guard=seen)
            raise _recorded_failure(self._journal[seq])
        await self._write(self._entry(seq, kind, name, output, started_at=begun), clear, guard=seen)
        return value

    async def _load_events(self) -> list[SagaEvent]:
        """Top up the saga's events with those that arrived since the last one seen."""
        known = self._events or []
        after = known[-1].seq if known else 0
        try:
            fresh = await self._store.load_events(self.saga_id, after)
        except StoreError as exc:
            raise StoreUnavailable(self.saga_id, exc) from exc
        self._events = known + fresh
        return self._events

    # -- entries -----------------------------------------------------------------------------

    def _entry(
        self,
        seq: int,
        kind: str,
        name: str,
        output: str | None,
        *,
        status: EntryStatus = EntryStatus.COMPLETED,
        started_at: float | None = None,
    ) -> JournalEntry:
        now = self.clock.now()
        return JournalEntry(
            self.saga_id, seq, kind, name, status, 1, output, None, None, started_at or now, now
        )

    def _failed(
        self, seq: int, kind: str, name: str, error: ErrorInfo, started_at: float
    ) -> JournalEntry:
        return JournalEntry(
            self.saga_id,
            seq,
            kind,
            name,
            EntryStatus.FAILED,
            1,
            None,
            None,
            serde.dumps(error.to_json()),
            started_at,
            self.clock.now(),
        )


def _nothing(events: list[SagaEvent], token: str) -> Answer | None:
    """A sleep is answered only by a notification for its token (it then ends early)."""
    answer = _notified(events, token)
    return None if answer is None else (answer[0], None)


def _notified(events: list[SagaEvent], token: str) -> Answer | None:
    for event in events:
        if event.kind == EventKind.NOTIFY and event.name == token:
            return event, serde.loads(event.payload)
    return None


def _promise_matcher(name: str) -> Matcher:
    def match(events: list[SagaEvent], token: str) -> Answer | None:
        # a notification for the wait's token answers it with the event as the value, before
        # the promise's own completion: notify told its caller that its event answers this wait
        notified = _notified(events, token)
        if notified is not None:
            return notified
        for event in events:
            if event.kind == EventKind.PROMISE and event.name == name:
                return event, serde.loads(event.payload)
        return None

    return match


def _recorded_failure(entry: JournalEntry) -> SagaError:
    info = ErrorInfo.from_json(serde.loads(entry.error) or {})
    if info.type == "PromiseRejectedError":
        return PromiseRejectedError(info.message)
    return SagaTimeoutError(info.message)


async def deliver_promise(
    store: Store,
    saga_id: str,
    name: str,
    value: Any,
    error: str | None,
    limit: int | None = serde.DEFAULT_MAX_PAYLOAD_BYTES,
) -> Delivery:
    """Resolve (or, with ``error``, reject) a saga's promise; a second, different completion
    is refused (PromiseAlreadyCompletedError, even once the saga has ended: the loser of a race
    learns it lost, whenever the saga finished). Raises OutputNotSerializableError, or
    PayloadTooLargeError over ``limit`` bytes, before writing anything."""
    what = f"the value of promise {name!r}" if error is None else f"the rejection of {name!r}"
    outcome = {"value": value} if error is None else {"error": error}
    payload = serde.dumps(outcome, what=what, limit=limit)
    # the key makes a retry after a lost acknowledgement come back DELIVERED, not DUPLICATE
    # (which, once the saga has ended, would read as "finished")
    delivery = await store.deliver(
        saga_id, EventKind.PROMISE, name, payload, unique=True, key=uuid.uuid4().hex
    )
    if delivery.outcome == DeliveryOutcome.DUPLICATE:
        if delivery.existing != payload:
            raise PromiseAlreadyCompletedError(saga_id, name)
        if delivery.status is not None and SagaStatus(delivery.status).is_terminal:
            # the same outcome again, but nothing can take anything from the saga any more
            finished = Delivery(DeliveryOutcome.FINISHED, delivery.status)
            refuse_undelivered(finished, saga_id, "a promise outcome")
    refuse_undelivered(delivery, saga_id, "a promise outcome")
    return delivery


def refuse_undelivered(delivery: Delivery, saga_id: str, what: str) -> None:
    """Raise for an event that found no saga, or a saga that has ended."""
    if delivery.outcome == DeliveryOutcome.NOT_FOUND:
        raise SagaNotFoundError(saga_id)
    if delivery.outcome == DeliveryOutcome.FINISHED:
        raise SagaFinishedError(saga_id, str(delivery.status), what)


__all__ = [
    "PendingWait",
    "WaitsMixin",
    "deliver_promise",
    "object_scope",
    "refuse_undelivered",
    "saga_scope",
]
