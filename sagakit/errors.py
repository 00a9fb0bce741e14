"""Errors raised by sagakit, and the registry that decides which step errors are terminal.

Every public error subclasses :class:`SagaError`::

    SagaError
    ├── TerminalError                 raise in a step: no retry, the saga compensates
    │   ├── StepFailedError           what the saga function sees when a step failed for good
    │   ├── OutputNotSerializableError
    │   └── PayloadTooLargeError      a payload over Engine(max_payload_bytes=...)
    ├── SagaValidationError           bad input, refused before anything is written
    ├── SagaCompensatedError          the saga failed and was rolled back
    ├── CompensationFailedError       the rollback is incomplete: the saga is FAILED
    ├── NonDeterminismError           replay found a different operation than the journal holds
    ├── SagaNotFoundError
    ├── QueueNotFoundError            no queue of that name was ever registered with the store
    ├── ScheduleNotFoundError         no schedule of that name was ever declared in the store
    ├── UnknownWorkflowError
    ├── SagaConflictError             a saga id is already used by another workflow
    │   └── QueueDeduplicatedError    an enqueue whose dedup_id a queued or running saga holds
    ├── SagaCancelledError            an operator cancelled the saga (no rollback)
    ├── SagaStateError                an admin action the saga's status does not allow
    ├── SagaDefinitionError           a declarative definition is refused (unknown StepRef, cycle)
    ├── EngineNotStartedError
    └── StoreError                    the database failed in a way the engine could not absorb

Internal control flow (a worker that lost its lease) uses :class:`BaseException` subclasses so
that a user's ``except Exception`` cannot swallow it by accident.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


class SagaError(Exception):
    """Base class of every error sagakit raises on purpose."""


class TerminalError(SagaError):
    """A failure that must not be retried.

    Raise it inside a step to fail the step for good: no retry, and the saga rolls back.
    Raised (or left to propagate) in a saga function, it fails the saga the same way.
    """

    def __init__(self, message: str = "terminal failure", *, error_type: str | None = None):
        super().__init__(message)
        self.message = message
        #: The name of the original error's type when this error stands for another one.
        self.error_type = error_type or type(self).__name__


class StepFailedError(TerminalError):
    """A step failed for good; this is what the saga function's ``await step(...)`` raises.

    The same error is raised live and on replay, so a saga function that catches it behaves the
    same after a crash. ``error_type`` and ``message`` describe the step's own error.
    """

    def __init__(self, step: str, seq: int, error_type: str, message: str, attempts: int):
        super().__init__(
            f"step {step!r} (seq {seq}) failed after {attempts} attempt(s): "
            f"{error_type}: {message}",
            error_type=error_type,
        )
        self.step = step
        self.seq = seq
        self.message = message
        self.attempts = attempts


class OutputNotSerializableError(TerminalError):
    """A step or saga returned something that is not JSON (nor a pydantic model)."""


def human_bytes(size: int) -> str:
    """``size`` bytes for a human: ``"512 B"``, ``"3.2 MiB"``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class PayloadTooLargeError(TerminalError):
    """A value to journal or deliver is larger, as JSON, than ``Engine(max_payload_bytes=...)``.

    Raised before anything is written. ``what`` names the value (``"the output of step
    'Report'"``), ``size`` and ``limit`` are in bytes of UTF-8 JSON. A step whose output is too
    large fails for good with it (no retry: the same output would be too large again) and the
    saga rolls back; a caller (start, signal, promise, event) gets it and nothing is stored.
    """

    def __init__(self, what: str, size: int, limit: int):
        super().__init__(
            f"{what} is {human_bytes(size)} ({size} bytes) as JSON, over the payload limit of "
            f"{human_bytes(limit)} ({limit} bytes); nothing was written. Store the payload "
            "elsewhere (object storage, a table of your own) and journal a reference to it (its "
            "key) instead, or raise Engine(max_payload_bytes=...) (None: no limit)"
        )
        self.what = what
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.size, self.limit))


class SagaValidationError(SagaError, ValueError):
    """The input given to a saga or step does not match its declared type.

    Nothing was written. ``errors`` holds pydantic's list of problems (field location and message).
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.errors = errors or []


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A recorded error: what type it was, what it said, and where it happened."""

    type: str
    message: str
    step: str | None = None
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "step": self.step, "seq": self.seq}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(
            type=str(data.get("type", "Error")),
            message=str(data.get("message", "")),
            step=data.get("step"),
            seq=data.get("seq"),
        )

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        if isinstance(exc, StepFailedError):
            return cls(exc.error_type, exc.message, exc.step, exc.seq)
        if isinstance(exc, TerminalError):
            return cls(exc.error_type, exc.message)
        return cls(type(exc).__name__, str(exc))

    def __str__(self) -> str:
        where = f" in step {self.step!r}" if self.step else ""
        return f"{self.type}{where}: {self.message}"


class SagaCompensatedError(SagaError):
    """The saga failed and every registered compensation ran: it is COMPENSATED."""

    def __init__(self, saga_id: str, cause: ErrorInfo):
        super().__init__(f"saga {saga_id!r} failed and was rolled back: {cause}")
        self.saga_id = saga_id
        self.cause = cause
        self.cause_type = cause.type
        self.cause_message = cause.message
        self.step = cause.step


class CompensationFailedError(SagaError):
    """The saga failed and at least one compensation failed for good: the saga is FAILED.

    It carries the original cause and every compensation failure. The saga waits for an
    operator; nothing more runs on its own.
    """

    def __init__(self, saga_id: str, cause: ErrorInfo, failures: list[ErrorInfo]):
        listed = "; ".join(str(f) for f in failures)
        super().__init__(
            f"saga {saga_id!r} failed ({cause}) and its rollback is incomplete: {listed}"
        )
        self.saga_id = saga_id
        self.cause = cause
        self.cause_type = cause.type
        self.cause_message = cause.message
        self.failures = failures


class NonDeterminismError(SagaError):
    """Replaying a saga met an operation that differs from the one its journal recorded.

    The saga function must do the same durable operations in the same order on every run:
    use ``ctx.now()``, ``ctx.uuid()`` and ``ctx.random()`` instead of the clock and random
    modules, and do not change a workflow's code while sagas of it are in flight.
    """

    def __init__(self, saga_id: str, seq: int, recorded: str, replayed: str):
        super().__init__(
            f"saga {saga_id!r} is not deterministic: at seq {seq} the journal holds {recorded} "
            f"but the saga function now does {replayed}. Keep the saga function deterministic "
            "(use ctx.now()/ctx.uuid()/ctx.random()) and do not change a workflow while sagas "
            "of it are in flight."
        )
        self.saga_id = saga_id
        self.seq = seq
        self.recorded = recorded
        self.replayed = replayed


class SagaNotFoundError(SagaError, LookupError):
    """No saga with that id exists in the store."""

    def __init__(self, saga_id: str):
        super().__init__(f"no saga with id {saga_id!r}")
        self.saga_id = saga_id


class QueueNotFoundError(SagaError, LookupError):
    """No queue of that name is in the store: no engine has registered it
    (``engine.register(Queue(name, ...))``) and enqueued to it or started a worker since."""

    def __init__(self, name: str, known: list[str]):
        names = ", ".join(repr(k) for k in known) or "none yet"
        super().__init__(
            f"no queue named {name!r} in this database (queues: {names}); a queue appears "
            "once an engine that registers it (engine.register(Queue(...))) has opened it"
        )
        self.name = name


class ScheduleNotFoundError(SagaError, LookupError):
    """No schedule of that name is in the store: no worker that declares it
    (``engine.schedule(name, ...)``) has run since."""

    def __init__(self, name: str, known: list[str]):
        names = ", ".join(repr(k) for k in known) or "none yet"
        super().__init__(
            f"no schedule named {name!r} in this database (schedules: {names}); a schedule "
            "appears once a worker that declares it (engine.schedule(...)) has run"
        )
        self.name = name


#: the message of the error a saga gets when it runs past its deadline
PAST_DEADLINE = "the saga ran past its deadline (SagaWorkflowOptions.deadline)"


class SagaTimeoutError(TerminalError):
    """A wait ran past its ``timeout``, or the saga past its deadline
    (``SagaWorkflowOptions(deadline=...)``). Terminal: the saga rolls back unless it catches
    this."""


class PromiseRejectedError(TerminalError):
    """The durable promise the saga waited on was rejected (``promise.reject(message)``)."""


class PromiseAlreadyCompletedError(SagaError):
    """A durable promise can be resolved or rejected once; it was already, another way."""

    def __init__(self, saga_id: str, name: str):
        super().__init__(
            f"promise {name!r} of saga {saga_id!r} is already resolved or rejected with "
            "another value; a promise completes once"
        )
        self.saga_id = saga_id
        self.name = name


class SagaFinishedError(SagaError):
    """The saga has ended, so it can no longer receive a signal or an event."""

    def __init__(self, saga_id: str, status: str, what: str = "a signal"):
        super().__init__(
            f"saga {saga_id!r} has ended ({status}) and can no longer receive {what}; "
            "start a new saga instead"
        )
        self.saga_id = saga_id
        self.status = status


class UnknownHandlerError(SagaError, LookupError):
    """No handler of that name on the workflow or virtual object."""

    def __init__(self, owner: str, name: str, known: Iterable[str] = ()):
        names = ", ".join(sorted(known)) or "none"
        super().__init__(f"{owner} has no handler {name!r} (it has: {names})")
        self.owner = owner
        self.name = name


class UnknownWorkflowError(SagaError, LookupError):
    """A workflow name was used that this engine has not registered."""

    def __init__(self, name: str, known: Iterable[str] = ()):
        known_list = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"workflow {name!r} is not registered with this engine (registered: {known_list}); "
            "call engine.register(...) with it first"
        )
        self.name = name


class SagaConflictError(SagaError):
    """A saga id is already taken by a saga of another workflow; or an admin action found the
    saga changed between looking and acting (nothing was done)."""


class QueueDeduplicatedError(SagaConflictError):
    """An enqueue was refused (nothing written): a saga of the queue enqueued with the same
    ``dedup_id`` has not ended yet. ``saga_id`` is that saga's (``engine.handle(saga_id)``
    waits for it); once it ends, the same ``dedup_id`` may be enqueued again."""

    def __init__(self, queue: str, dedup_id: str, saga_id: str, status: str):
        super().__init__(
            f"queue {queue!r} already has saga {saga_id!r} ({status}) with dedup_id "
            f"{dedup_id!r}; nothing was enqueued. Wait for it with engine.handle({saga_id!r}), "
            "or enqueue again once it has ended"
        )
        self.queue = queue
        self.dedup_id = dedup_id
        self.saga_id = saga_id
        self.status = status


class SagaCancelledError(SagaError):
    """An operator cancelled the saga (``admin.cancel``): it stopped without a rollback."""

    def __init__(self, saga_id: str, reason: str, by: str | None = None):
        who = f" by {by}" if by else ""
        super().__init__(f"saga {saga_id!r} was cancelled{who}: {reason}")
        self.saga_id = saga_id
        self.reason = reason
        self.by = by


class SagaStateError(SagaError):
    """An admin action that the saga's status does not allow (nothing was changed)."""

    def __init__(
        self, saga_id: str, status: str, action: str, allowed: Iterable[str], hint: str = ""
    ):
        names = list(allowed)
        allowed_list = (
            f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)
        )
        message = f"cannot {action} saga {saga_id!r}: it is {status}"
        if allowed_list:
            message += f"; {action} is allowed when it is {allowed_list}"
        super().__init__(f"{message}. {hint[:1].upper()}{hint[1:]}" if hint else message)
        self.saga_id = saga_id
        self.status = status
        self.action = action
        self.allowed = tuple(allowed)


class EngineNotStartedError(SagaError):
    """The engine was used outside ``async with engine:``."""

    def __init__(self) -> None:
        super().__init__(
            "the engine is not started: use it inside `async with engine:` "
            "(that opens the store and runs the background worker)"
        )


class StoreError(SagaError):
    """The store failed in a way the engine could not absorb (bad URL, corrupt schema, ...)."""


class TransactionsUnsupportedError(SagaError):
    """A transactional step (:func:`~sagakit.saga_transaction`) ran on a store that has no
    database to hold its transaction (the memory store)."""


class LeaseLost(BaseException):
    """Internal: this worker no longer owns the saga (another worker claimed it).

    A BaseException so that user code catching ``Exception`` cannot swallow it: the run must
    stop at once and write nothing more.
    """

    def __init__(self, saga_id: str):
        super().__init__(f"lease on saga {saga_id!r} was lost to another worker")
        self.saga_id = saga_id


class Parked(BaseException):
    """Internal: a step that parks on exhaustion ran out of retries (or an operator's mock
    output does not fit it); the run stops and the saga waits PARKED for an operator."""

    def __init__(self, saga_id: str, cause: ErrorInfo):
        super().__init__(f"saga {saga_id!r} parked: {cause}")
        self.saga_id = saga_id
        self.cause = cause


class EventsArrived(BaseException):
    """Internal: a guarded write found events the writer had not seen; nothing was written.
    The wait that wrote it decides again with the new events."""

    def __init__(self, saga_id: str):
        super().__init__(f"saga {saga_id!r} received events meanwhile")
        self.saga_id = saga_id


class Suspended(BaseException):
    """Internal: the saga waits (a timer, a signal, a promise). Raised through the saga
    function so that the run ends and leaves nothing in memory; a BaseException so that saga
    code catching ``Exception`` cannot swallow it."""

    def __init__(self, saga_id: str):
        super().__init__(f"saga {saga_id!r} is suspended")
        self.saga_id = saga_id


class Drained(BaseException):
    """Internal: the worker is shutting down; this saga stops before its next durable operation
    and its lease is released for another worker."""

    def __init__(self, saga_id: str):
        super().__init__(f"saga {saga_id!r} paused: the worker is draining")
        self.saga_id = saga_id


class ContinueAsNew(BaseException):
    """Internal: the saga function called ``saga.continue_as_new(inp)``; the run ends and the
    saga goes on as a fresh run of itself with ``input`` (validated, and ``text``, its JSON).
    A BaseException, like asyncio.CancelledError, so that saga code catching ``Exception``
    cannot swallow it."""

    def __init__(self, saga_id: str, input: object, text: str):
        super().__init__(f"saga {saga_id!r} continues as new")
        self.saga_id = saga_id
        self.input = input
        self.text = text


class StoreUnavailable(BaseException):
    """Internal: the store failed while a saga was running. The run stops without compensating
    (a database fault is not a business failure) and the saga is recovered from its journal."""

    def __init__(self, saga_id: str, cause: BaseException):
        super().__init__(f"saga {saga_id!r} stopped: the store failed: {cause}")
        self.saga_id = saga_id


# -- the terminal-error registry ------------------------------------------------------------

ErrorMapper = Callable[[BaseException], "TerminalError | None"]

_registry_lock = threading.Lock()
_terminal_types: tuple[type[BaseException], ...] = ()
_global_mapper: ErrorMapper | None = None


def register_terminal_errors(error_types: Iterable[type[BaseException]]) -> None:
    """Treat these exception types (and their subclasses) as terminal in every step."""
    global _terminal_types
    new = list(error_types)
    for t in new:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TypeError(f"register_terminal_errors takes exception classes, got {t!r}")
    with _registry_lock:
        _terminal_types = tuple(dict.fromkeys((*_terminal_types, *new)))


def unregister_terminal_errors(error_types: Iterable[type[BaseException]]) -> None:
    """Stop treating these exception types as terminal."""
    global _terminal_types
    removed = set(error_types)
    with _registry_lock:
        _terminal_types = tuple(t for t in _terminal_types if t not in removed)


def clear_terminal_errors() -> None:
    """Forget every registered terminal type and the global mapper."""
    global _terminal_types, _global_mapper
    with _registry_lock:
        _terminal_types = ()
        _global_mapper = None


def set_global_error_mapper(mapper: ErrorMapper | None) -> None:
    """Set a function that turns a step's exception into a :class:`TerminalError` (or ``None``).

    It is asked after the registered types; returning ``None`` leaves the error retryable.
    """
    global _global_mapper
    with _registry_lock:
        _global_mapper = mapper


def as_terminal(exc: BaseException) -> TerminalError | None:
    """The terminal form of ``exc``, or ``None`` when it should be retried."""
    if isinstance(exc, TerminalError):
        return exc
    if _terminal_types and isinstance(exc, _terminal_types):
        return TerminalError(str(exc), error_type=type(exc).__name__)
    mapper = _global_mapper
    if mapper is not None:
        return map_error(mapper, exc, "the global error mapper")
    return None


def map_error(mapper: ErrorMapper, exc: BaseException, what: str) -> TerminalError | None:
    """Ask ``mapper`` (``what`` names it in messages) for the terminal form of ``exc``.

    A mapper that raises, or returns something other than a TerminalError or None, is a bug
    that retrying cannot fix: the step fails for good, with an ``ErrorMapperError`` that says
    why."""
    try:
        mapped = mapper(exc)
    except Exception as mapper_exc:
        return TerminalError(
            f"{what} raised {type(mapper_exc).__name__}: {mapper_exc} while mapping "
            f"{type(exc).__name__}: {exc}",
            error_type="ErrorMapperError",
        )
    if mapped is not None and not isinstance(mapped, TerminalError):
        return TerminalError(
            f"{what} must return a TerminalError or None, got {mapped!r} for "
            f"{type(exc).__name__}: {exc}",
            error_type="ErrorMapperError",
        )
    return mapped


class SagaDefinitionError(SagaError):
    """A declarative saga definition is wrong (a step that is not a typed ``BaseStep``, a
    dependency on a step of another builder, a cycle, a name used twice, ...).

    Raised by ``SagaBuilder`` while the definition is put together or built: before any saga
    of it runs, and before anything is written."""
