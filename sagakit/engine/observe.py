"""What a run tells observers (logging, tracing): when it starts and ends, each attempt of a
step or compensation, and each durable change it makes.

The engine calls every observer it was given; an observer overrides what it needs (the base
class does nothing). Observers must not raise: the engine logs and ignores what they raise, so
that a broken exporter never fails a saga. An engine with no observers calls nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..stores.base import JournalEntry, SagaRecord, SagaUpdate, Store

log = logging.getLogger("sagakit.engine")


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


class Observers:
    """The observers of one engine, called in order, each shielded from the others."""

    __slots__ = ("_all",)

    def __init__(self, observers: Sequence[Observer]):
        self._all = tuple(observers)

    def __bool__(self) -> bool:
        return bool(self._all)

    async def run_started(self, run: RunInfo) -> None:
        for observer in self._all:
            try:
                await observer.run_started(run)
            except Exception:
                log.exception("observer %r failed at the start of a run", observer)

    def run_ended(self, run: RunInfo, status: str | None, error: BaseException | None) -> None:
        for observer in self._all:
            try:
                observer.run_ended(run, status, error)
            except Exception:
                log.exception("observer %r failed at the end of a run", observer)

    @contextlib.contextmanager
    def attempt(self, run: RunInfo, kind: str, name: str, seq: int, attempt: int) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for observer in self._all:
                try:
                    stack.enter_context(observer.attempt(run, kind, name, seq, attempt))
                except Exception:
                    log.exception("observer %r failed at the start of an attempt", observer)
            yield

    def journaled(
        self, run: RunInfo, entry: JournalEntry | None, update: SagaUpdate | None
    ) -> None:
        for observer in self._all:
            try:
                observer.journaled(run, entry, update)
            except Exception:
                log.exception("observer %r failed on a journal write", observer)


NO_OBSERVERS = Observers(())

__all__ = ["NO_OBSERVERS", "Observer", "Observers", "RunInfo"]
