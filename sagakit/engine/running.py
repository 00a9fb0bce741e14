"""Running sagas in this process: launching runs, driving each to an outcome, and the background
worker that renews leases, recovers sagas whose owner died, and wakes timers. Mixed into
:class:`~sagakit.engine.engine.Engine`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..errors import Drained, EventsArrived, LeaseLost, StoreUnavailable, Suspended
from ..stores.base import ClaimedSaga, SagaStatus, Store
from ..stores.retrying import Backoff
from ..workflows import SagaWorkflow
from .observe import Observers
from .outcome import Outcome
from .run import SagaRun

log = logging.getLogger("sagakit.engine")

#: a timer is claimed this long after it is due, so that the store's clock agrees it is
_TIMER_SLACK = 0.002
#: the share of a lease a run counts on from its launch, before the first renewal (the claim or
#: start that took the lease happened a moment before the launch)
_LEASE_MARGIN = 0.8


class RunningMixin:
    """Runs, their tasks, and the background worker of the Engine."""

    worker_id: str
    lease: timedelta
    poll_interval: timedelta
    max_concurrency: int
    is_worker: bool
    _workflows: dict[str, SagaWorkflow[Any, Any]]
    _tasks: dict[str, asyncio.Task[Outcome | None]]
    _claimed: set[str]
    _wakeup: asyncio.Event | None
    _draining: bool
    _observers: Observers

    if TYPE_CHECKING:  # provided by Engine

        def _store_or_raise(self) -> Store: ...

        async def _start_child(
            self, wf: SagaWorkflow[Any, Any], inp: Any, child_id: str, parent_id: str
        ) -> None: ...

    async def recover(self, *, wait: bool = False) -> int:
        """Run now every saga whose lease expired (of the registered workflows).

        Returns how many were taken. With ``wait=True``, also waits until they have run.
        """
        store = self._store_or_raise()
        taken: list[str] = []
        while True:
            claimed = await store.claim(
                self.worker_id, list(self._workflows), self.lease.total_seconds(), 500
            )
            if not claimed:
                break
            for c in claimed:
                self._run_claimed(c)
                taken.append(c.record.saga_id)
        if wait:
            tasks = [t for sid in taken if (t := self._tasks.get(sid)) is not None]
            await asyncio.gather(*tasks, return_exceptions=True)
        return len(taken)

    # -- running ------------------------------------------------------------------------------

    def _launch(self, run: SagaRun) -> asyncio.Task[Outcome | None]:
        old = self._tasks.get(run.saga_id)
        if old is not None:
            old.cancel()  # it lost the saga: its fence is stale and it can write nothing more
        run.draining = self._draining
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

    async def _drive(self, run: SagaRun) -> Outcome | None:
        try:
            outcome = await self._execute(run)
            while outcome.again:  # events arrived as it suspended: they may answer its wait
                run = run.again()
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
        status = None if outcome.again else outcome.status.value
        run.observers.run_ended(run.info, status, None)
        return outcome

    def _run_claimed(self, claimed: ClaimedSaga) -> None:
        record = claimed.record
        wf = self._workflows.get(record.name)
        if wf is None:  # the store only hands out registered names; kept for safety
            return
        log.debug(
            "recovering saga %s (%s) from %d journal entries",
            record.saga_id,
            record.name,
            len(claimed.journal),
            extra={"saga_id": record.saga_id},
        )
        self._claimed.add(record.saga_id)
        self._launch(
            SagaRun(
                self._store_or_raise(),
                wf,
                record,
                claimed.journal,
                taken_over=claimed.taken_over,
                events=claimed.events,
                children=self._start_child,
                observers=self._observers,
            )
        )

    def _poke(self) -> None:
        """Look for work now (a saga became due here: an event, a timer, an object's turn)."""
        if self._wakeup is not None:
            self._wakeup.set()

    def _wake_at(self, when: float) -> None:
        """Look for work when a timer this engine set falls due (other engines poll for it)."""
        delay = max(0.0, when - time.time()) + _TIMER_SLACK
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

    async def _claim_some(self) -> None:
        if self._draining or not self.is_worker:
            return
        capacity = self.max_concurrency - len(self._claimed)
        if capacity <= 0 or not self._workflows:
            return
        claimed = await self._store_or_raise().claim(
            self.worker_id, list(self._workflows), self.lease.total_seconds(), capacity
        )
        for c in claimed:
            self._run_claimed(c)
