"""SagaContext: the saga function's handle on its journal.

The saga function gets one; each step gets one of its own (``ctx.step_key`` and ``ctx.attempt``
are set there). Everything that must come out the same on replay goes through it: steps,
``now()``, ``uuid()``, ``random()``. Each of these takes its sequence number when *called*.
"""

from __future__ import annotations

import inspect
import random as _random
import uuid as _uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

from .composition import ChildSaga
from .durations import as_seconds
from .errors import SagaError
from .queues import Queue, QueuedStart
from .workflows import SagaWorkflow

if TYPE_CHECKING:
    from .long_workflows import SagaLongWorkflow
    from .objects import SagaVirtualObject
    from .retry import RetryPolicy
    from .steps import SagaStep

InT = TypeVar("InT")
OutT = TypeVar("OutT")


class RunDriver(Protocol):
    """What the engine provides behind a context (the engine implements it; the definition layer
    only knows this shape)."""

    saga_id: str

    def call_step(self, step: SagaStep[Any], inp: Any) -> Awaitable[Any]: ...

    def record_value(self, kind: str, produce: Callable[[], Any]) -> Awaitable[Any]: ...

    def sleep(self, seconds: float) -> Awaitable[Any]: ...

    def wait_for_signal(self, name: str, timeout: float | None) -> Awaitable[Any]: ...

    def promise_value(self, name: str) -> Awaitable[Any]: ...

    async def complete_promise(self, name: str, value: Any, error: str | None) -> None: ...

    def set_state(self, key: str, value: Any) -> None: ...

    def gather(self, awaitables: Sequence[Awaitable[Any]], limit: int | None) -> Awaitable[Any]: ...

    def start_child(
        self, workflow: SagaWorkflow[Any, Any], inp: Any, saga_id: str | None
    ) -> Awaitable[str]: ...

    def received_signals(self) -> Awaitable[Any]: ...

    def child_result(
        self, child_id: str, workflow: SagaWorkflow[Any, Any], timeout: float | None
    ) -> Awaitable[Any]: ...


class EngineDriver(RunDriver, Protocol):
    """What the engine's own runs provide besides :class:`RunDriver`: services and durable
    calls (a backend without them, such as Restate's, refuses them clearly)."""

    def services(self) -> Any: ...

    def check_callee(
        self, target: SagaWorkflow[Any, Any] | SagaVirtualObject, what: str
    ) -> None: ...

    def call_object(
        self, obj: SagaVirtualObject, key: str, handler: str, inp: Any
    ) -> Awaitable[Any]: ...

    def call_handler(
        self, workflow: SagaLongWorkflow[Any, Any], saga_id: str, handler: str, inp: Any
    ) -> Awaitable[Any]: ...

    def send(
        self, workflow: SagaWorkflow[Any, Any], inp: Any, saga_id: str | None
    ) -> Awaitable[str]: ...

    def send_object(
        self, obj: SagaVirtualObject, key: str, handler: str, inp: Any
    ) -> Awaitable[str]: ...

    def start_queued_child(
        self, workflow: SagaWorkflow[Any, Any], inp: Any, saga_id: str | None, queued: Any
    ) -> Awaitable[str]: ...


class PatchDriver(RunDriver, Protocol):
    """A backend that can patch code in place (``saga.patched``): sagakit's own engine."""

    def patch(self, change_id: str, deprecated: bool) -> bool: ...


class SagaContext:
    """The handle a saga function (and each step) gets on its saga."""

    __slots__ = ("_attempt", "_driver", "_step_name", "_step_seq")

    def __init__(
        self,
        driver: RunDriver,
        *,
        step_seq: int | None = None,
        step_name: str | None = None,
        attempt: int = 0,
    ):
        self._driver = driver
        self._step_seq = step_seq
        self._step_name = step_name
        self._attempt = attempt

    @property
    def saga_id(self) -> str:
        """The id of the saga this context belongs to."""
        return self._driver.saga_id

    @property
    def in_step(self) -> bool:
        """True inside a step's function, False in the saga function."""
        return self._step_seq is not None

    @property
    def step_key(self) -> str:
        """Inside a step: a key that stays the same across retries and recoveries of this step.

        Pass it as the idempotency key of external calls, so that a step re-run after a crash
        does not charge a card twice.
        """
        if self._step_seq is None:
            raise SagaError(
                "ctx.step_key is only available inside a step (the ctx a step function receives)"
            )
        # a saga that continued as new numbers each run's steps from 1 again: its runs after
        # the first qualify the key (see SagaRun.key_base)
        base = getattr(self._driver, "key_base", self._driver.saga_id)
        return f"{base}:{self._step_seq}"

    @property
    def step_name(self) -> str | None:
        return self._step_name

    @property
    def attempt(self) -> int:
        """Inside a step: 1 for the first attempt, 2 for the first retry, ... (0 outside)."""
        return self._attempt

    @property
    def services(self) -> Any:
        """This run's services (dependency injection): what the services factory built for
        it (``Engine(services=factory)`` or ``SagaWorkflowOptions(services=factory)``).

        The same object in the saga function and in every step of one run; built again, from
        the saga's id and input, in every run (a saga that resumes after a wait or a crash gets
        fresh ones, in whichever process runs it); never journaled. Typed ``Any`` because the
        factory is given at run time, to the engine, not to the workflow's type: annotate a
        local (``svc: AppServices = saga.services``) to have it checked.

        Raises:
            SagaError: no factory applies to this saga's workflow.
        """
        return self._engine_driver("services").services()

    def now(self) -> Awaitable[datetime]:
        """The current time (UTC), journaled: a replay gets the same value. Read on the
        engine's clock (``Engine(clock=...)``: a test's virtual clock, see sagakit.testing)."""
        if self.in_step:
            return _ready(self._clock_now())
        return _map(
            self._driver.record_value("now", lambda: self._clock_now().isoformat()),
            datetime.fromisoformat,
        )

    def _clock_now(self) -> datetime:
        # a driver without a clock (Restate's) reads the system's
        clock = getattr(self._driver, "clock", None)
        return datetime.now(UTC) if clock is None else datetime.fromtimestamp(clock.now(), UTC)

    def uuid(self) -> Awaitable[_uuid.UUID]:
        """A random UUID4, journaled: a replay gets the same value."""
        if self.in_step:
            return _ready(_uuid.uuid4())
        return _map(self._driver.record_value("uuid", lambda: str(_uuid.uuid4())), _uuid.UUID)

    def random(self) -> Awaitable[float]:
        """A random float in [0, 1), journaled: a replay gets the same value."""
        if self.in_step:
            return _ready(_random.random())
        return _map(self._driver.record_value("random", _random.random), float)

    # -- code changed under live sagas ------------------------------------------------------

    def patched(self, change_id: str) -> bool:
        """Whether this saga runs the code of change ``change_id``: change a workflow in place
        while sagas of it are in flight (Temporal's patching).

        ``if saga.patched("add-fraud-check"): await fraud_check(saga, x)`` is True for a saga
        that reaches this point for the first time (a new saga, or an old one that had not got
        this far), and journals that it did: its replays are True too. It is False for a saga
        whose journal already went past this point on the code before the change: that saga
        goes on down the old path, replaying the same entries, without a NonDeterminismError.
        Deterministic, without await; call it once per change and place, keep the answer.

        Raises:
            SagaError: called inside a step, or on a backend without patching (Restate).
        """
        self._saga_only("patched")
        return self._patch_driver("patched").patch(_change_id(change_id), False)

    def deprecate_patch(self, change_id: str) -> None:
        """The cleanup phase of :meth:`patched`: once no saga that could take the old path is
        in flight, drop the old branch and replace ``if saga.patched(id):`` by
        ``saga.deprecate_patch(id)`` followed by the new code. Journals written while the
        patch existed (with its marker here) still replay; new sagas journal nothing here.
        Remove the call once no saga with the marker is in flight either.

        Raises:
            NonDeterminismError: the journal holds the marker of another change here.
            SagaError: called inside a step, or on a backend without patching (Restate).
        """
        self._saga_only("deprecate_patch")
        self._patch_driver("deprecate_patch").patch(_change_id(change_id), True)

    # -- long-running sagas ------------------------------------------------------------------

    def continue_as_new(self, inp: Any) -> NoReturn:
        """End this run of the saga and go on as a fresh run of it with the input ``inp``,
        under the same saga id (Temporal's continue-as-new): how a saga that loops for ever
        (an account's life, a subscription's renewals) keeps its journal, and its replays,
        short. It does not return.

        In one transaction the run's journal is archived (``sagakit show ID --run N``), the
        signals and promise outcomes it took are retired (those it did not take stay for the
        next run), and the saga's input becomes ``inp``; the next run then starts at once, from
        an empty journal. Continuing commits the run: a later failure compensates only the
        steps of the run it happens in. The next run uses the definition registered last under
        the workflow's name in the engine running it (``inp`` is checked against its input
        type), so continuing is how a saga that never ends moves to new code. The saga stays
        RUNNING; only the last run's outcome is its result. See docs/long-running.md.

        Raises:
            SagaValidationError: ``inp`` does not fit the input type (nothing was written).
            SagaError: called inside a step, a compensation or a branch of ``saga.gather``, or
                on a backend without it (Restate).
        """
        self._saga_only("continue_as_new")
        driver = self._driver
        if not hasattr(driver, "continue_as_new"):
            raise SagaError(
                "saga.continue_as_new needs sagakit's own engine; the backend running this saga "
                f"({type(driver).__name__}) does not provide it"
            )
        driver.continue_as_new(inp)
        raise AssertionError("continue_as_new returned")  # pragma: no cover - it raises

    # -- parallel branches -------------------------------------------------------------------

    async def gather(self, *branches: Awaitable[Any], limit: int | None = None) -> list[Any]:
        """Run ``branches`` (step calls, or coroutines that run several operations) in parallel,
        at most ``limit`` at once; return their results in order.

        Await it directly in the saga function (or in a branch: gathers nest). When a branch
        fails for good, the others still run to their end, so that what ran never depends on
        timing; then the first failed branch's error (by position) is raised, and a rollback
        undoes every branch that registered a compensation before the steps that came before
        the gather. A branch waiting for a signal, timer or child keeps the group waiting.
        """
        try:
            self._saga_only("gather")
            _check_gather_arguments(branches, limit)
        except SagaError:
            # refused: the branches never start; closed, they do not warn "never awaited"
            for branch in branches:
                if inspect.iscoroutine(branch):
                    branch.close()
            raise
        results: list[Any] = await self._driver.gather(branches, limit)
        return results

    # -- child sagas -------------------------------------------------------------------------

    async def start_child(
        self,
        workflow: SagaWorkflow[Any, OutT],
        inp: Any,
        saga_id: str | None = None,
        *,
        queue: Queue | str | None = None,
        priority: int | None = None,
        partition_key: str | None = None,
    ) -> ChildSaga[OutT]:
        """Start ``workflow`` as a separate durable saga, a child of this one; return its
        handle (``await child.result()`` waits for it durably).

        The child has its own journal and rolls itself back if it fails; a later failure of
        this saga does not undo a child that completed (use ``workflow.run_as_step`` for that).
        Its id is ``saga_id``, or one derived from this saga's, so that a replay finds the same
        child instead of starting another. Journaled: a replay returns the same handle.

        With ``queue`` (a :class:`~sagakit.Queue` registered with the engine, or its name) the
        child is enqueued (as ``engine.enqueue`` does, with ``priority`` and
        ``partition_key``) and starts when its queue's limits allow: the way to limit one
        step shared by many sagas (see docs/flow-control.md). sagakit's own engine only.
        """
        self._saga_only("start_child")
        if not isinstance(workflow, SagaWorkflow):
            raise SagaError(
                f"saga.start_child takes a saga workflow (made with @saga_workflow), got "
                f"{workflow!r}"
            )
        if queue is None:
            if priority is not None or partition_key is not None:
                raise SagaError(
                    "saga.start_child(priority=..., partition_key=...) needs queue=...: they "
                    "say where the child waits in its queue"
                )
            child_id = await self._driver.start_child(workflow, inp, saga_id)
        else:
            driver = self._engine_driver("start_child(queue=...)")
            queued = QueuedStart(queue, priority, partition_key)
            child_id = await driver.start_queued_child(workflow, inp, saga_id, queued)
        return ChildSaga(self._driver, workflow, child_id)

    # -- durable calls -----------------------------------------------------------------------

    async def call(
        self,
        workflow: SagaWorkflow[InT, OutT],
        inp: InT | dict[str, Any],
        saga_id: str | None = None,
    ) -> OutT:
        """Run ``workflow`` as a child saga and return its output: a durable call.

        The call is journaled (the child's start, then its outcome): a replay, in this process
        or another after a crash, finds the same child and its recorded result instead of
        starting another. The child rolls itself back if it fails, and then this raises
        :class:`~sagakit.errors.SagaCompensatedError` (or CompensationFailedError), which rolls
        this saga back unless it catches it. The workflow must be registered with the engine.
        """
        self._saga_only("call")
        driver = self._engine_driver("call")
        driver.check_callee(_workflow_arg(workflow, "saga.call"), "saga.call")
        child = await self.start_child(workflow, inp, saga_id)
        return await child.result()

    async def call_object(
        self, obj: SagaVirtualObject, key: str, handler: str, inp: Any = None
    ) -> Any:
        """Call the handler ``handler`` of the virtual object ``obj`` for ``key``; return its
        result, journaled.

        An exclusive handler runs as a child saga, queued behind the earlier calls for the same
        key (from anywhere); a shared one reads the state as committed now. Either way a replay
        returns the recorded result without calling again.
        """
        self._saga_only("call_object")
        return await self._engine_driver("call_object").call_object(obj, key, handler, inp)

    async def call_handler(
        self,
        workflow: SagaLongWorkflow[Any, Any],
        saga_id: str,
        handler: str,
        inp: Any = None,
    ) -> Any:
        """Call the handler ``handler`` of the running long workflow saga ``saga_id`` (made
        with ``create_saga_long_workflow``); return its result, journaled: a replay returns it
        without calling again. A handler that raises is journaled too: this raises a
        :class:`~sagakit.errors.TerminalError` carrying its type and message, now and on
        every replay."""
        self._saga_only("call_handler")
        driver = self._engine_driver("call_handler")
        return await driver.call_handler(workflow, saga_id, handler, inp)

    async def send(
        self,
        workflow: SagaWorkflow[Any, Any],
        inp: Any,
        saga_id: str | None = None,
    ) -> str:
        """Start ``workflow`` as a saga of its own and go on without waiting; return its id.

        Journaled: a replay does not start it twice. Its id is ``saga_id`` or one derived from
        this saga's. It is not a child: cancelling or rolling back this saga leaves it alone.
        """
        self._saga_only("send")
        driver = self._engine_driver("send")
        driver.check_callee(_workflow_arg(workflow, "saga.send"), "saga.send")
        return await driver.send(workflow, inp, saga_id)

    async def send_object(
        self, obj: SagaVirtualObject, key: str, handler: str, inp: Any = None
    ) -> str:
        """Queue a call of the exclusive handler ``handler`` of ``obj`` for ``key`` and go on
        without waiting; return the id of the call's saga. Journaled: a replay does not queue
        it twice. A shared handler only reads: call it with :meth:`call_object`."""
        self._saga_only("send_object")
        return await self._engine_driver("send_object").send_object(obj, key, handler, inp)

    def send_command(
        self,
        command: str,
        payload: Any = None,
        *,
        to: str,
        compensate_with: tuple[str, Any] | None = None,
        timeout: timedelta | float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Awaitable[Any]:
        """A remote step: send ``command`` with ``payload`` (JSON) to the participant ``to``
        and return the value its handler replied (see docs/services.md, "Remote steps").

        The command is written to the outbox in the same transaction as the step's journal
        entry, and a relay publishes it; the saga is suspended until the reply arrives (as a
        journaled event: a replay gets the same value). ``compensate_with=(command, payload)``
        is sent to the same participant if the saga rolls back once this command was sent;
        the payload may be a function of the reply (None when none came). With ``timeout`` a
        step with no reply is re-sent (the same message id) while ``retry`` allows (default:
        once in all), then raises :class:`~sagakit.remote.RemoteTimeoutError`; an error reply
        raises :class:`~sagakit.remote.RemoteCommandError`. (``saga.send`` starts a saga.)
        """
        self._saga_only("send_command")
        driver: Any = self._engine_driver("send_command")
        seconds = None if timeout is None else as_seconds(timeout, "send_command timeout")
        result: Awaitable[Any] = driver.send_command(
            command, payload, to, compensate_with, seconds, retry
        )
        return result

    # -- waiting -----------------------------------------------------------------------------

    def sleep(self, duration: timedelta | float) -> Awaitable[None]:
        """A durable timer: the saga is suspended (nothing of it stays in memory) and goes on
        after ``duration``, even if every process was restarted in between."""
        self._saga_only("sleep")
        return self._driver.sleep(as_seconds(duration, "sleep duration"))

    def wait_for_signal(
        self, name: str, timeout: timedelta | float | None = None
    ) -> Awaitable[Any]:
        """Wait for the signal ``name`` (sent with ``engine.signal``) and return its payload.

        A signal sent before the saga waits is kept for it; each signal is taken by one wait.
        The saga is suspended while it waits. Past ``timeout`` this raises a terminal
        :class:`~sagakit.errors.SagaTimeoutError` (the saga rolls back unless it catches it).
        """
        self._saga_only("wait_for_signal")
        seconds = None if timeout is None else as_seconds(timeout, "timeout")
        return self._driver.wait_for_signal(_check_name(name, "signal"), seconds)

    def promise(self, name: str) -> DurablePromise:
        """The saga's durable promise ``name``: await ``.value()`` in the saga; complete it with
        ``.resolve(value)`` / ``.reject(message)`` here or from a workflow handler."""
        self._saga_only("promise")
        return DurablePromise(self._driver, _check_name(name, "promise"))

    def set_state(self, key: str, value: Any) -> None:
        """Publish ``value`` (JSON) under ``key``, durably: ``engine.query(saga_id, key)`` reads
        it from any process."""
        self._saga_only("set_state")
        self._driver.set_state(_check_name(key, "state key"), value)

    def _received_signals(self) -> Awaitable[list[dict[str, Any]]]:
        """Every signal received so far, ``{"name", "payload"}`` in arrival order, journaled
        (for the declarative front end's input context)."""
        self._saga_only("received_signals")
        signals: Awaitable[list[dict[str, Any]]] = self._driver.received_signals()
        return signals

    def _object_driver(self) -> Any:
        """The run behind this context, for a virtual object's state (objects.py)."""
        return self._driver

    def _patch_driver(self, what: str) -> PatchDriver:
        if not hasattr(self._driver, "patch"):
            raise SagaError(
                f"saga.{what} needs sagakit's own engine; the backend running this saga "
                f"({type(self._driver).__name__}) does not provide it. On Restate an "
                "invocation stays on the deployment that started it: register the changed "
                "code as a new deployment instead of patching it in place"
            )
        return self._driver  # type: ignore[return-value]

    def _engine_driver(self, what: str) -> EngineDriver:
        if not hasattr(self._driver, "check_callee"):
            raise SagaError(
                f"saga.{what} needs sagakit's own engine; the backend running this saga "
                f"({type(self._driver).__name__}) does not provide it"
            )
        return self._driver  # type: ignore[return-value]

    def _saga_only(self, what: str) -> None:
        if self.in_step:
            raise SagaError(
                f"ctx.{what} was called inside step {self._step_name!r}; call it from the saga "
                "function, with the saga's ctx"
            )

    def _call_step(self, step: SagaStep[Any], inp: Any) -> Awaitable[Any]:
        if self.in_step:
            raise SagaError(
                f"step {step.name!r} was called from inside step {self._step_name!r}; call steps "
                "from the saga function, with the saga's ctx"
            )
        return self._driver.call_step(step, inp)

    def __repr__(self) -> str:
        where = f" step={self._step_name!r} attempt={self._attempt}" if self.in_step else ""
        return f"<SagaContext saga_id={self.saga_id!r}{where}>"


class DurablePromise:
    """A value the saga waits for that something else provides once (as in Restate
    workflows): a handler, another branch of the saga, an outside system."""

    __slots__ = ("_driver", "name")

    def __init__(self, driver: RunDriver, name: str):
        self._driver = driver
        self.name = name

    def value(self) -> Awaitable[Any]:
        """Wait (suspended) until the promise is resolved and return its value; raise
        :class:`~sagakit.errors.PromiseRejectedError` if it was rejected."""
        return self._driver.promise_value(self.name)

    async def resolve(self, value: Any = None) -> None:
        """Complete the promise with ``value`` (JSON). A promise completes once: completing it
        again with something else raises PromiseAlreadyCompletedError."""
        await self._driver.complete_promise(self.name, value, None)

    async def reject(self, message: str) -> None:
        """Complete the promise with a failure: its waiters get PromiseRejectedError."""
        await self._driver.complete_promise(self.name, None, str(message))

    def __repr__(self) -> str:
        return f"<DurablePromise {self.name!r}>"


def _check_gather_arguments(awaitables: Sequence[Any], limit: int | None) -> None:
    """Refuse what ``saga.gather`` cannot run."""
    problem = None
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        problem = f"saga.gather(limit=...) must be a positive whole number or None, got {limit!r}"
    for awaitable in awaitables:
        if not inspect.isawaitable(awaitable):
            problem = problem or (
                f"saga.gather takes awaitables (step calls, coroutines), got {awaitable!r}; "
                "call the step: `saga.gather(step(saga, x))`, not `saga.gather(step)`"
            )
    if problem is not None:
        raise SagaError(problem)


def _workflow_arg(workflow: Any, what: str) -> SagaWorkflow[Any, Any]:
    if not isinstance(workflow, SagaWorkflow):
        raise SagaError(
            f"{what} takes a saga workflow (made with @saga_workflow), got {workflow!r}"
        )
    return workflow


def _change_id(change_id: str) -> str:
    if not isinstance(change_id, str) or not change_id:
        raise SagaError(
            f"a patch's change id must be a non-empty string, got {change_id!r}: name the "
            'change, e.g. saga.patched("add-fraud-check")'
        )
    return change_id


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise SagaError(f"a {what} name must be a non-empty string, got {name!r}")
    return name


async def _ready(value: Any) -> Any:
    return value


async def _map(awaitable: Awaitable[Any], convert: Callable[[Any], Any]) -> Any:
    return convert(await awaitable)
