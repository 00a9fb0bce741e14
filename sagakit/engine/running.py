"""Running sagas in this process: launching runs, driving each to an outcome, and the background
worker that renews leases, recovers sagas whose owner died, and wakes timers. Mixed into
:class:`~sagakit.engine.engine.Engine`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from ..clock import Clock
from ..errors import (
    Drained,
    EventsArrived,
    LeaseLost,
    StoreUnavailable,
    Suspended,
    UnknownWorkflowError,
)
from ..queues import QueuedStart
from ..services import ServicesFactory, ServicesFailed
from ..stores.base import ClaimedSaga, SagaStatus, Served, Store
from ..stores.retrying import Backoff
from ..workflows import SagaWorkflow
from .calls import Callees
from .crashes import ProcessCrash, StepHook
from .observe import Observers
from .outcome import Outcome
from .run import SagaRun

log = logging.getLogger("sagakit.engine")

#: a timer is claimed this long after it is due, so that the store's clock agrees it is
_TIMER_SLACK = 0.002
#: how many sagas ``recover`` claims in one transaction
_RECOVER_BATCH = 500
#: the share of a lease a run counts on from its launch, before the first renewal (the claim or
#: start that took the lease happened a moment before the launch)
_LEASE_MARGIN = 0.8
#: after a claim that filled every free slot, claim again once this share of the slots is free
_REFILL_SHARE = 0.25


class RunningMixin:
    """Runs, their tasks, and the background worker of the Engine."""

    worker_id: str
    lease: timedelta
    poll_interval: timedelta
    max_concurrency: int
    is_worker: bool
    _workflows: dict[str, SagaWorkflow[Any, Any]]
    _versions: dict[tuple[str, str | None], SagaWorkflow[Any, Any]]
    _tasks: dict[str, asyncio.Task[Outcome | None]]
    _claimed: set[str]
    _wakeup: asyncio.Event | None
    _draining: bool
    _observers: Observers
    _services: ServicesFactory | None
    clock: Clock
    step_hook: StepHook | None
    #: the last claim took as many sagas as it asked for: more may be due. The worker then
    #: claims again as soon as a share of its slots is free, instead of at its next poll (a
    #: backlog of started sagas waited up to a poll interval per batch: one `sagakit worker`
    #: drained 127 sagas/s at --poll 1 in benchmarks/workers.py)
    _more_due: bool = False
    max_payload_bytes: int | None

    if TYPE_CHECKING:  # provided by Engine

        def _store_or_raise(self) -> Store: ...

        def version_of(self, workflow: SagaWorkflow[Any, Any]) -> str | None: ...

        async def _declare_queues(self) -> None: ...

        async def _fire_schedules_round(self) -> None: ...

        def _next_queue_look(self) -> float | None: ...

        async def _start_child(
            self,
            wf: SagaWorkflow[Any, Any],
            inp: Any,
            child_id: str,
            parent_id: str,
            object_key: str | None = None,
            queued: QueuedStart | None = None,
        ) -> None: ...

    async def run_due(
        self, limit: int = 100, *, workflows: Iterable[str] | None = None
    ) -> list[str]:
        """Claim, once, up to ``limit`` due sagas and run them here; return their ids once
        each of these runs has stopped (the saga completed, was rolled back, failed, parked,
        or suspended in a wait; or the run was stopped: this engine closed, an operator took
        the saga).

        Due sagas are the ones a worker may take now (see :meth:`~sagakit.stores.base.Store.claim`):
        PENDING ones nobody runs (started with ``run_here=False``, or whose starter died),
        RUNNING or COMPENSATING ones whose lease expired (their worker died), and SUSPENDED
        ones whose timer fell due (a sleep, a wait's timeout, a retry backoff, a deadline) or
        that received an event; of a virtual object's key, only the oldest call. This is a
        worker's round, for a program that runs sagas from its own loop or a scheduled job
        (``Engine(worker=False)``, whose background worker claims nothing).

        Args:
            limit: the most sagas this call takes (0: none).
            workflows: the names of the workflows whose sagas to take (default: every
                registered one); each must be registered here.

        Raises:
            UnknownWorkflowError: a name in ``workflows`` is not registered in this engine.
            EngineNotStartedError: the engine is not open.
        """
        names = self._registered(workflows)
        tasks = await self._take_due(limit, names)
        await _stopped(tasks)
        return [saga_id for saga_id, _ in tasks]

    async def recover(self, *, wait: bool = False) -> int:
        """Run now every due saga of the registered workflows, until none is left: PENDING
        ones nobody runs, RUNNING or COMPENSATING ones whose lease expired, SUSPENDED ones
        whose timer fell due or that received an event (see :meth:`run_due`).

        Returns how many were taken. With ``wait=True``, also waits until each of these runs
        has stopped.
        """
        names = self._registered(None)
        taken: list[tuple[str, asyncio.Task[Outcome | None]]] = []
        while batch := await self._take_due(_RECOVER_BATCH, names):
            taken += batch
        if wait:
            await _stopped(taken)
        return len(taken)

    async def settle(self, saga_id: str) -> None:
        """Wait until this process's run of the saga, if any, has stopped (it completed, was
        rolled back, failed, parked or suspended; or it was stopped). Returns at once when no
        run of it is under way here: the saga may still be running in another worker.

        For a program that moves sagas on by its own calls: after :meth:`start` or
        :meth:`notify` (which wakes the background worker), before it reads the saga's new
        state with :meth:`get`.
        """
        while (task := self._tasks.get(saga_id)) is not None:
            await asyncio.wait({task})
            if self._tasks.get(saga_id) is task:  # pragma: no cover - forgotten when done
                break

    def _registered(self, workflows: Iterable[str] | None) -> list[Served]:
        """The (name, version) pairs to claim sagas of: every registered version of each of
        ``workflows`` (each registered), or of all."""
        if workflows is None:
            return list(self._versions)
        names = [workflows] if isinstance(workflows, str) else list(workflows)
        for name in names:
            if name not in self._workflows:
                raise UnknownWorkflowError(name, self._workflows)
        return [key for key in self._versions if key[0] in names]

    async def _take_due(
        self, limit: int, names: list[Served]
    ) -> list[tuple[str, asyncio.Task[Outcome | None]]]:
        """Claim up to ``limit`` due sagas of ``names`` and launch their runs here."""
        store = self._store_or_raise()
        if limit <= 0 or not names or self._draining:
            return []
        await self._declare_queues()
        began = time.perf_counter()
        claimed = await store.claim(self.worker_id, names, self.lease.total_seconds(), limit)
        self._observers.timed("claim", time.perf_counter() - began)
        launched = [(c.record.saga_id, self._run_claimed(c)) for c in claimed]
        return [(saga_id, task) for saga_id, task in launched if task is not None]

    # -- running ------------------------------------------------------------------------------

    def _launch(self, run: SagaRun) -> asyncio.Task[Outcome | None]:
        old = self._tasks.get(run.saga_id)
        if old is not None:
            old.cancel()  # it lost the saga: its fence is stale and it can write nothing more
        run.draining = self._draining
        run.clock = self.clock
        run.step_hook = self.step_hook
        run.max_payload_bytes = self.max_payload_bytes
        run.successor = self._successor
        # the lease was taken a moment ago (by the claim or the start that handed us the run):
        # count it from now, less a margin for that moment
        lease = self.lease.total_seconds()
        run.lease_known_until = asyncio.get_running_loop().time() + _LEASE_MARGIN * lease
        task = asyncio.create_task(self._drive(run), name=f"saga:{run.saga_id}")
        task.sagakit_run = run  # type: ignore[attr-defined]
        self._tasks[run.saga_id] = task
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[Outcome | None]) -> None:
        run: SagaRun = task.sagakit_run  # type: ignore[attr-defined]
        if self._tasks.get(run.saga_id) is task:
            del self._tasks[run.saga_id]
            self._claimed.discard(run.saga_id)
        if self._more_due:
            free = self.max_concurrency - len(self._tasks)
            if free >= max(1, int(self.max_concurrency * _REFILL_SHARE)):
                self._more_due = False
                self._poke()

    async def _drive(self, run: SagaRun) -> Outcome | None:
        try:
            outcome = await self._execute(run)
            # events arrived as it suspended (they may answer its wait), or it continued as new
            while outcome.again or outcome.next_run is not None:
                run = outcome.next_run or run.again()
                run.draining = self._draining
                task = asyncio.current_task()
                if task is not None:
                    task.sagakit_run = run  # type: ignore[attr-defined]
                outcome = await self._execute(run)
        except Drained:
            with contextlib.suppress(Exception):
                await self._store_or_raise().release(self.worker_id, [run.saga_id])
            log.info(
                "saga %s paused for shutdown; released for another worker",
                run.saga_id,
                extra={"saga_id": run.saga_id, "workflow": run.workflow.name},
            )
            return None
        except StoreUnavailable as exc:
            log.error(
                "saga %s stopped because the store failed (%s); it resumes from its journal "
                "once the store answers (its lease expires or this worker releases it)",
                run.saga_id,
                exc.__cause__,
                extra={"saga_id": run.saga_id, "workflow": run.workflow.name},
            )
            with contextlib.suppress(Exception):
                await self._store_or_raise().release(self.worker_id, [run.saga_id])
            return None
        except ServicesFailed as exc:
            log.error(
                "saga %s stopped before its saga function ran: %s; it is released and a worker "
                "runs it again (nothing of the saga changed)",
                run.saga_id,
                exc,
                exc_info=exc.__cause__,
                extra={"saga_id": run.saga_id, "workflow": run.workflow.name},
            )
            with contextlib.suppress(Exception):
                await self._store_or_raise().release(self.worker_id, [run.saga_id])
            return None
        except ProcessCrash as crash:
            # a test's simulated kill (engine/crashes.py): like a dead process, the run
            # releases nothing; the saga is taken over once its lease expires
            log.info(
                "saga %s: %s; it is taken over when its lease expires",
                run.saga_id,
                crash,
                extra={"saga_id": run.saga_id, "workflow": run.workflow.name},
            )
            return None
        except LeaseLost:
            log.warning(
                "saga %s is no longer this worker's (another worker took it over, or an "
                "operator or a cancelled parent changed it); this worker stops running it",
                run.saga_id,
                extra={"saga_id": run.saga_id, "workflow": run.workflow.name},
            )
            return None
        except asyncio.CancelledError:
            raise
        except (Exception, EventsArrived, Suspended):  # the last two: an engine bug, not the saga's
            log.exception(
                "saga %s stopped on an unexpected error; releasing it for recovery",
                run.saga_id,
                extra={"saga_id": run.saga_id, "workflow": run.workflow.name},
            )
            with contextlib.suppress(Exception):
                await self._store_or_raise().release(self.worker_id, [run.saga_id])
            return None
        # the saga's new status is logged by the logging observer (sagakit.observability)
        if run.record.queue is not None:
            self._poke()  # it gave its queue's slot back: the next saga of the queue may start
        if outcome.status == SagaStatus.PARKED:
            return outcome
        if outcome.status == SagaStatus.SUSPENDED:
            if outcome.wake_at is not None:
                self._wake_at(outcome.wake_at)
            return outcome
        if run.record.object_key is not None or run.record.parent_id is not None:
            self._poke()  # the next call of this object key, or the parent, may run now
        return outcome

    async def _execute(self, run: SagaRun) -> Outcome:
        """One run, with its observers told when it starts and how it ends."""
        if not run.observers:
            return await run.execute()
        await run.observers.run_started(run.info)
        try:
            outcome = await run.execute()
        except BaseException as exc:
            run.observers.run_ended(run.info, None, exc)
            raise
        status = None if outcome.again or outcome.next_run else outcome.status.value
        run.observers.run_ended(run.info, status, None)
        return outcome

    def _run_claimed(self, claimed: ClaimedSaga) -> asyncio.Task[Outcome | None] | None:
        record = claimed.record
        wf = self._versions.get((record.name, record.version))
        if wf is None:  # the store only hands out registered versions; kept for safety
            return None
        log.debug(
            "recovering saga %s (%s) from %d journal entries",
            record.saga_id,
            record.name,
            len(claimed.journal),
            extra={"saga_id": record.saga_id},
        )
        self._claimed.add(record.saga_id)
        return self._launch(
            SagaRun(
                self._store_or_raise(),
                wf,
                record,
                claimed.journal,
                taken_over=claimed.taken_over,
                events=claimed.events,
                children=self._start_child,
                observers=self._observers,
                callees=cast("Callees", self),
                services=wf.options.services or self._services,
            )
        )

    def _successor(self, name: str) -> tuple[SagaWorkflow[Any, Any], str | None] | None:
        """The definition a saga of workflow ``name`` continues on (``saga.continue_as_new``),
        with the version its next run records: the one registered last under the name, as
        ``engine.start("Name")`` takes it."""
        workflow = self._workflows.get(name)
        return None if workflow is None else (workflow, self.version_of(workflow))

    def _poke(self) -> None:
        """Look for work now (a saga became due here: an event, a timer, an object's turn)."""
        if self._wakeup is not None:
            self._wakeup.set()

    def _wake_at(self, when: float) -> None:
        """Look for work when a timer this engine set falls due (other engines poll for it)."""
        delay = max(0.0, when - self.clock.now()) + _TIMER_SLACK
        asyncio.get_running_loop().call_later(delay, self._poke)

    # -- the background worker ---------------------------------------------------------------

    async def _worker_loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        lease = self.lease.total_seconds()
        renew_every = lease / 3
        poll = self.poll_interval.total_seconds()
        next_renew = loop.time() + renew_every
        next_poll = loop.time()
        await self._heartbeat(lease)
        failures = 0
        # the store gave up on one operation (after its own retry deadline); the loop itself
        # goes on as long as the engine is open, backing off between rounds
        backoff = Backoff("the background worker", None, first_delay=0.2, max_delay=5.0)
        while True:
            now = loop.time()
            try:
                if now >= next_renew:
                    next_renew = now + renew_every
                    if self._tasks:
                        await self._renew(lease)
                    await self._heartbeat(lease)
                if now >= next_poll:
                    next_poll = now + poll
                    await self._claim_some()
                if failures:
                    failures = 0
                    backoff = Backoff("the background worker", None, first_delay=0.2, max_delay=5.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.exception("the background worker failed (%d in a row); retrying", failures)
                await asyncio.sleep(backoff.next_delay(exc))
                continue
            timeout = max(0.0, min(next_renew, next_poll) - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
                    next_poll = loop.time()
            self._wakeup.clear()

    async def _renew(self, lease: float) -> None:
        """Renew the leases of the sagas with a live run here (one this worker holds without
        knowing it, a claim whose answer a dropped connection lost, expires). When all were
        renewed, each run knows its lease holds until ``lease`` after the renewal was sent;
        otherwise some were taken from us, and every run checks its fence before its next
        side effect."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        live = list(self._tasks)
        renewed = await self._store_or_raise().renew_leases(self.worker_id, lease, live)
        if renewed < len(live):
            return
        for saga_id in live:
            task = self._tasks.get(saga_id)
            if task is not None:
                task.sagakit_run.lease_known_until = sent + lease  # type: ignore[attr-defined]

    async def _heartbeat(self, lease: float) -> None:
        """Tell the store which (name, version) pairs this worker serves, so that sagas no
        live worker serves are reported as stranded (not a reason to stop the worker: a
        failed heartbeat only makes its sagas look stranded for a while)."""
        if not self.is_worker:
            return
        try:
            await self._store_or_raise().heartbeat(self.worker_id, list(self._versions), lease)
        except Exception as exc:
            log.warning("could not record this worker's heartbeat (%s); retrying later", exc)

    async def _claim_some(self) -> None:
        if self._draining or not self.is_worker:
            return
        await self._fire_schedules_round()  # their sagas are claimed below, or by other workers
        # every run here counts, the ones this process started as well as claimed ones
        capacity = self.max_concurrency - len(self._tasks)
        if capacity <= 0 or not self._versions:
            return
        await self._declare_queues()
        began = time.perf_counter()
        claimed = await self._store_or_raise().claim(
            self.worker_id, list(self._versions), self.lease.total_seconds(), capacity
        )
        self._observers.timed("claim", time.perf_counter() - began)
        self._more_due = len(claimed) >= capacity
        for c in claimed:
            self._run_claimed(c)
        retry_at = self._next_queue_look()
        if retry_at is not None:
            self._wake_at(retry_at)


async def _stopped(tasks: list[tuple[str, asyncio.Task[Outcome | None]]]) -> None:
    """Wait until these runs have stopped, however they stopped (a run's own errors were
    logged by it; one cancelled because the engine closed or an operator took the saga)."""
    if tasks:
        await asyncio.wait([task for _, task in tasks])
