"""Transactional steps in a run: each attempt of a :class:`~sagakit.transactions.TransactionStep`
(and of its compensation) runs in a store transaction (:meth:`Store.begin`), and the entry that
journals how it ended commits in that transaction. Mixed into
:class:`~sagakit.engine.run.SagaRun`, which calls three hooks:

* :meth:`_run_body` instead of ``step.run(ctx, inp)``: for a transactional step, settle what the
  run queued before (the write-behind rule), begin, run the body with ``ctx.connection``; an
  exception rolls back and goes on to the step's usual retry or failure.
* :meth:`_journal_end` instead of ``_write_behind`` for a step's or compensation's end: the entry of
  a transactional attempt that succeeded commits with its writes (awaited: the next operation
  starts only after both are durable); one that failed rolls them back and is journaled as usual.
* :meth:`_drop_transaction` when a step's execution ends, however: a transaction still open
  (the run stopped between the body and the commit) is rolled back.

A commit refused by the database itself (a deferred constraint), or a transaction the step's
own code ended, fails the step for good: retrying the same writes would fail the same way.
A commit the store could not make (the database down) stops the run, like any failed write: the
saga is recovered from its journal, and the attempt, which left nothing, runs again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .. import serde
from ..context import SagaContext
from ..errors import ErrorInfo, LeaseLost, StoreError, StoreUnavailable
from ..steps import SagaStep
from ..stores.base import EntryStatus, JournalEntry, SagaUpdate, StateWrite, StoreTransaction
from ..transactions import TransactionContext, TransactionStep
from .core import RunCore
from .crashes import ProcessCrash
from .observe import Observers, RunInfo
from .outcome import _Compensation


class TransactionsMixin(RunCore):
    """Transactional steps and compensations of a run (see the module docstring)."""

    observers: Observers
    info: RunInfo
    _crashed: ProcessCrash | None
    #: the transactions of attempts whose body returned, by seq, until their entry commits
    _open_transactions: dict[int, StoreTransaction] | None = None

    async def _begin(self, seq: int) -> StoreTransaction:
        # the entries this run queued before commit first: on SQLite the transaction holds the
        # writer, and nothing of this operation may be durable before what came before it
        await self._settle()
        try:
            return await self._store.begin(self.saga_id, self.fence)
        except StoreError as exc:
            raise StoreUnavailable(self.saga_id, exc) from exc

    async def _run_body(self, step: SagaStep[Any], ctx: SagaContext, inp: Any, seq: int) -> Any:
        """One attempt of a step's body; a transactional one inside its own transaction."""
        if not isinstance(step, TransactionStep):
            return await step.run(ctx, inp)
        tx = await self._begin(seq)
        tctx = TransactionContext(
            ctx._driver, tx.connection, step_seq=seq, step_name=step.name, attempt=ctx.attempt
        )
        try:
            try:
                result = await step.run(tctx, inp)
            except BaseException:
                await tctx._finish_session(ok=False)
                raise
            await tctx._finish_session(ok=True)  # a refused flush fails the attempt
        except BaseException:
            await tx.rollback()
            raise
        self._hold(seq, tx)
        return result

    async def _run_compensation_body(
        self, compensation: _Compensation, seq: int, attempt: int, services: Any
    ) -> None:
        """One attempt of a compensation; a transactional step's inside its own transaction."""
        step = compensation.step
        if not isinstance(step, TransactionStep):
            await step.call_compensation(compensation.data, compensation.failed, services)
            return
        tx = await self._begin(seq)
        ctx = TransactionContext(
            self,  # type: ignore[arg-type]  # SagaRun is the RunDriver
            tx.connection,
            step_seq=seq,
            step_name=step.name,
            attempt=attempt,
        )
        try:
            try:
                await step.call_transactional_compensation(
                    ctx, compensation.data, compensation.failed
                )
            except BaseException:
                await ctx._finish_session(ok=False)
                raise
            await ctx._finish_session(ok=True)
        except BaseException:
            await tx.rollback()
            raise
        self._hold(seq, tx)

    def _hold(self, seq: int, tx: StoreTransaction) -> None:
        if self._open_transactions is None:
            self._open_transactions = {}
        self._open_transactions[seq] = tx

    def _drop_transaction(self, seq: int) -> None:
        """Roll back the transaction of ``seq`` if it is still open (the run stopped before
        its entry was journaled: a crash, a cancellation)."""
        if self._open_transactions:
            tx = self._open_transactions.pop(seq, None)
            if tx is not None:
                tx.abandon()

    async def _journal_end(
        self,
        entry: JournalEntry,
        update: SagaUpdate | None = None,
        *,
        state: tuple[StateWrite, ...] = (),
    ) -> JournalEntry:
        """Journal how a step or compensation ended (see the module docstring); the entry
        recorded, which is a failure if the database refused the transaction's commit."""
        tx = None if not self._open_transactions else self._open_transactions.pop(entry.seq, None)
        if tx is None:
            self._write_behind(entry, update, state=state)
            return entry
        if self._crashed is not None:  # a dead process commits nothing (a parallel branch)
            tx.abandon()
            raise ProcessCrash(self._crashed.point)
        if entry.status != EntryStatus.COMPLETED:
            await tx.rollback()  # failed for good (a permanent failure): its writes go too
            self._write_behind(entry, update)
            return entry
        try:
            await tx.commit(entry, update, state)
        except LeaseLost:
            raise
        except StoreError as exc:
            raise StoreUnavailable(self.saga_id, exc) from exc
        except Exception as exc:
            message = f"the transaction could not commit: {exc}"
            info = ErrorInfo(type(exc).__name__, message, entry.name, entry.seq)
            failed = replace(
                entry,
                status=EntryStatus.FAILED,
                output=None,
                compensation=None,
                error=serde.dumps(info.to_json()),
            )
            self._write_behind(failed, update)
            return failed
        self._journal[entry.seq] = entry
        if self.observers:
            self.observers.journaled(self.info, entry, update)
        return entry
