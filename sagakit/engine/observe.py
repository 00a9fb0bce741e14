"""What a run tells observers (logging, tracing, metrics): when it starts and ends, each attempt
of a step or compensation, and each durable change it makes; and what the engine tells them
about itself: each saga it creates, and how long the store took to claim and to commit.

The engine calls every observer it was given; an observer overrides what it needs (the base
class does nothing). Observers must not raise: the engine logs and ignores what they raise, so
that a broken exporter never fails a saga. An engine with no observers calls nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..stores.base import JournalEntry, SagaRecord, SagaUpdate, Store

log = logging.getLogger("sagakit.engine")

#: one write in this many is timed from its queuing to its commit (Observer.timed "commit")
COMMIT_SAMPLING = 16


@dataclass(slots=True)
class RunInfo:
    """The run an observer hears about."""

    saga_id: str
    workflow: str
    record: SagaRecord
    #: the run's fence (a write with it is the run's own)
    fence: int
    store: Store
    #: the saga has run before (its journal was not empty, or it was taken over): a recovery,
    #: a wake-up after a wait, or a run after an operator's action
    resumed: bool
    #: what observers keep for this run (a span, a context token), by observer
    scratch: dict[int, Any]


class Observer:
    """Hooks the engine calls (see the module docstring). All of them do nothing here."""

    async def run_started(self, run: RunInfo) -> None:
        """A run begins (in the run's own task, before the saga function is called)."""

    def run_ended(self, run: RunInfo, status: str | None, error: BaseException | None) -> None:
        """A run ends, in the same task: ``status`` is the saga's status then (terminal,
        SUSPENDED or PARKED), or ``None`` when the run stopped without one (lease lost, store
        failure, shutdown: ``error`` says which)."""

    @contextlib.contextmanager
    def attempt(self, run: RunInfo, kind: str, name: str, seq: int, attempt: int) -> Iterator[None]:
        """Wraps one attempt of a step (``kind`` "step") or a compensation ("compensation"):
        the user's code runs inside, and its exception, if any, passes through."""
        yield

    def journaled(
        self, run: RunInfo, entry: JournalEntry | None, update: SagaUpdate | None
    ) -> None:
        """The run queued a durable change: a journal entry, a status change, or both."""

    def saga_started(self, workflow: str) -> None:
        """This engine created a saga of ``workflow`` (a start, an enqueue, a child saga)."""

    def timed(self, operation: str, seconds: float) -> None:
        """The store took ``seconds`` for ``operation``: "claim" (one claim of runnable
        sagas), or "commit" (from a run queuing a write to its commit)."""


class Observers:
    """The observers of one engine, called in order, each shielded from the others.

    Each hook is called only on the observers that override it: around each attempt, an engine
    whose observers do not trace (the logging observer) pays for nothing at all."""

    __slots__ = (
        "_all",
        "_attempting",
        "_creating",
        "_direct",
        "_ended",
        "_journaling",
        "_started",
        "_timing",
        "_writes",
    )

    def __init__(self, observers: Sequence[Observer]):
        self._all = tuple(observers)
        self._started = _overriding(self._all, "run_started")
        self._ended = _overriding(self._all, "run_ended")
        self._attempting = _overriding(self._all, "attempt")
        self._journaling = _overriding(self._all, "journaled")
        self._creating = _overriding(self._all, "saga_started")
        self._timing = _overriding(self._all, "timed")
        self._writes = 0
        #: the one attempt observer, when it vouches that its attempts never raise: called
        #: without the shielding wrapper (a generator per attempt costs more than a metric)
        self._direct: Observer | None = None
        only = self._attempting[0] if len(self._attempting) == 1 else None
        if only is not None and getattr(only, "attempts_never_raise", False):
            self._direct = only

    def __bool__(self) -> bool:
        return bool(self._all)

    async def run_started(self, run: RunInfo) -> None:
        for observer in self._started:
            try:
                await observer.run_started(run)
            except Exception:
                log.exception("observer %r failed at the start of a run", observer)

    def run_ended(self, run: RunInfo, status: str | None, error: BaseException | None) -> None:
        for observer in self._ended:
            try:
                observer.run_ended(run, status, error)
            except Exception:
                log.exception("observer %r failed at the end of a run", observer)

    def attempt(
        self, run: RunInfo, kind: str, name: str, seq: int, attempt: int
    ) -> contextlib.AbstractContextManager[None]:
        if not self._attempting:
            return _NO_ATTEMPT
        if self._direct is not None:
            return self._direct.attempt(run, kind, name, seq, attempt)
        return self._attempt(run, kind, name, seq, attempt)

    @contextlib.contextmanager
    def _attempt(
        self, run: RunInfo, kind: str, name: str, seq: int, attempt: int
    ) -> Iterator[None]:
        entered: list[tuple[Observer, contextlib.AbstractContextManager[None]]] = []
        for observer in self._attempting:
            try:
                opened: contextlib.AbstractContextManager[None] = observer.attempt(
                    run, kind, name, seq, attempt
                )
                opened.__enter__()
                entered.append((observer, opened))
            except Exception:
                log.exception("observer %r failed at the start of an attempt", observer)
        try:
            yield
        except BaseException as exc:
            for observer, scope in reversed(entered):
                try:
                    scope.__exit__(type(exc), exc, exc.__traceback__)
                except BaseException as raised:
                    if raised is not exc:  # the attempt's own error passes through unchanged
                        log.exception("observer %r failed at the end of an attempt", observer)
            raise
        for observer, scope in reversed(entered):
            try:
                scope.__exit__(None, None, None)
            except Exception:
                log.exception("observer %r failed at the end of an attempt", observer)

    def journaled(
        self, run: RunInfo, entry: JournalEntry | None, update: SagaUpdate | None
    ) -> None:
        for observer in self._journaling:
            try:
                observer.journaled(run, entry, update)
            except Exception:
                log.exception("observer %r failed on a journal write", observer)

    def saga_started(self, workflow: str) -> None:
        for observer in self._creating:
            try:
                observer.saga_started(workflow)
            except Exception:
                log.exception("observer %r failed on a saga's creation", observer)

    @property
    def timing(self) -> bool:
        """Whether an observer hears how long the store takes (else nothing is timed)."""
        return bool(self._timing)

    def timed(self, operation: str, seconds: float) -> None:
        for observer in self._timing:
            try:
                observer.timed(operation, seconds)
            except Exception:
                log.exception("observer %r failed on a store timing", observer)

    def time_commit(self, future: asyncio.Future[None]) -> None:
        """Tell the timing observers how long ``future`` (a queued write) takes to commit: one
        write in :data:`COMMIT_SAMPLING` (a callback on every write would cost more than the
        rest of the metrics together; a sample shows the latency as well)."""
        self._writes += 1
        if self._writes % COMMIT_SAMPLING:
            return
        queued = time.perf_counter()

        def committed(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.timed("commit", time.perf_counter() - queued)

        future.add_done_callback(committed)


_NO_ATTEMPT: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def _overriding(observers: tuple[Observer, ...], hook: str) -> tuple[Observer, ...]:
    """The observers whose class overrides ``hook`` (the base class's does nothing)."""
    base = getattr(Observer, hook)
    return tuple(o for o in observers if getattr(type(o), hook) is not base)


NO_OBSERVERS = Observers(())

__all__ = ["NO_OBSERVERS", "Observer", "Observers", "RunInfo"]
