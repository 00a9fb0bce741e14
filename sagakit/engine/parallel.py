"""How each durable operation of a run gets its sequence number, and parallel branches
(``saga.gather``). Mixed into :class:`~sagakit.engine.run.SagaRun`.

A replay must give every operation the number it had in the first run, whatever the timing.
The saga function is one *strand*: its operations take 0, 1, 2, ... in program order. A gather
of ``n`` branches takes one number for itself and deals the numbers after it round-robin: the
k-th operation of branch ``i`` takes ``base + (k * n + i) * stride``, where ``stride`` is the
parent strand's. So a branch's numbers depend on the branch and on how many operations it did
before, never on how the branches interleaved, and gathers nest. When every branch is done the
parent goes on after the furthest round any branch reached; each branch does the same operations
on replay, so that point is the same too.

A branch that fails does not stop its siblings: each runs to its end (or to a wait), so that
what runs, and where the parent goes on, never depends on timing. A rollback then undoes in
reverse number order: the latest round first, branches from the last to the first within a
round (so each branch in reverse), then what came before the gather.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import serde
from ..errors import SagaError, Suspended
from ..objects import operation_writes
from ..stores.base import EntryKind, EntryStatus, JournalEntry
from .core import RunCore


@dataclass(slots=True)
class Strand:
    """One line of execution of a run (the saga function, or one branch of a gather): its
    operations take the numbers ``next``, ``next + stride``, ``next + 2 * stride``, ..."""

    run: object
    next: int
    stride: int
    #: the task allowed to take numbers here (None until the run starts)
    owner: asyncio.Task[Any] | None = None

    def take(self) -> int:
        seq = self.next
        self.next += self.stride
        return seq


#: the strand of the task that runs now, when it is a gather's branch
_current: contextvars.ContextVar[Strand | None] = contextvars.ContextVar(
    "sagakit_strand", default=None
)

_FOREIGN_TASK = (
    "saga {saga_id!r}: a durable operation was started from a task the saga did not start "
    "(asyncio.gather, create_task or wait_for over a coroutine that runs several operations); "
    "its place in the journal would depend on timing, so a replay could not find it. Run "
    "parallel branches with `await saga.gather(branch_a(saga), branch_b(saga))`; plain "
    "asyncio.gather is safe only over the step calls themselves, `step(saga, x)`"
)

_IN_OPERATION = (
    "saga {saga_id!r}: a durable operation (a wait such as child.result() or promise.value(), a "
    "step, a gather) was started inside a step or a compensation; start it from the saga "
    "function, and give the step what it needs as its input"
)

#: what a branch ended with: ("ok", value) or ("raised", exception)
_Ending = tuple[str, Any]


class ParallelMixin(RunCore):
    """Sequence numbers and gathers of a run (see the module docstring)."""

    _root: Strand

    def _strand(self) -> Strand:
        strand = _current.get()
        # a task inherits its creator's context: only a strand of this very run counts
        return strand if strand is not None and strand.run is self else self._root

    def _take_seq(self) -> int:
        return self._numbering().take()

    def _numbering(self) -> Strand:
        """The strand whose next number the calling operation may take (its ``next`` may also
        be only looked at: ``saga.patched`` that declines takes none)."""
        if operation_writes.get() is not None:
            # a step's body is not replayed but run again: a wait inside it would suspend the
            # saga midway and run the body's side effects twice
            raise SagaError(_IN_OPERATION.format(saga_id=self.saga_id))
        strand = self._strand()
        if strand.owner is not None and asyncio.current_task() is not strand.owner:
            raise SagaError(_FOREIGN_TASK.format(saga_id=self.saga_id))
        return strand

    async def gather(self, awaitables: Sequence[Awaitable[Any]], limit: int | None) -> list[Any]:
        """Run the awaitables as parallel branches (at most ``limit`` at once); return their
        results in order, or raise the failure of the first branch (by position) that failed,
        once every branch has ended."""
        try:
            return await self._gather(awaitables, limit)
        finally:
            _close_unstarted(awaitables)

    async def _gather(self, awaitables: Sequence[Awaitable[Any]], limit: int | None) -> list[Any]:
        parent = self._strand()
        seq = self._take_seq()
        count = len(awaitables)
        self._record_gather(seq, count)
        base, stride = parent.next, parent.stride
        strands = [Strand(self, base + i * stride, count * stride) for i in range(count)]
        slots = asyncio.Semaphore(limit) if limit is not None else None
        tasks: list[asyncio.Task[_Ending]] = []
        for index, (strand, awaitable) in enumerate(zip(strands, awaitables, strict=True)):
            context = contextvars.copy_context()
            context.run(_current.set, strand)
            name = f"saga:{self.saga_id}:{seq}.{index}"
            task = asyncio.create_task(_branch(awaitable, slots), name=name, context=context)
            strand.owner = task
            tasks.append(task)
        try:
            if tasks:
                await asyncio.wait(tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            raise
        finally:
            # a branch's numbers in use run up to its ``next`` (a nested gather's included)
            used = [(s.next - (base + i * stride)) // s.stride for i, s in enumerate(strands)]
            parent.next = base + max(used, default=0) * count * stride
        return _results([task.result() for task in tasks])

    def _record_gather(self, seq: int, count: int) -> None:
        name = f"{count} branches"
        if self._recorded(seq, EntryKind.GATHER, name) is not None:
            return
        self._check_draining()
        now = self.clock.now()
        output = serde.dumps({"branches": count})
        entry = JournalEntry(
            self.saga_id, seq, EntryKind.GATHER, name, EntryStatus.COMPLETED, 1, output, None,
            None, now, now,
        )  # fmt: skip
        self._write_behind(entry)


def _close_unstarted(awaitables: Sequence[Awaitable[Any]]) -> None:
    """Close the branch coroutines that never began: the run stopped (engine closed, lease
    lost, a replay mismatch) before their turn came, e.g. while they queued behind ``limit``.
    Closed, they are dropped quietly; left alone, each would warn "coroutine ... was never
    awaited" whenever the garbage collector finds it, far from the gather that dropped it."""
    for awaitable in awaitables:
        if (
            inspect.iscoroutine(awaitable)
            and inspect.getcoroutinestate(awaitable) == inspect.CORO_CREATED
        ):
            awaitable.close()


async def _branch(awaitable: Awaitable[Any], slots: asyncio.Semaphore | None) -> _Ending:
    try:
        if slots is None:
            return "ok", await awaitable
        async with slots:
            return "ok", await awaitable
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return "raised", exc


def _results(endings: list[_Ending]) -> list[Any]:
    """The branches' values, or what to raise: the run stopping (lease lost, draining, store
    down) first, then a wait (the saga suspends: a branch still waiting keeps the group
    waiting), then the failure of the first branch that failed."""
    raised = [value for kind, value in endings if kind == "raised"]
    for exc in raised:
        if not isinstance(exc, Exception | Suspended):
            raise exc
    for exc in raised:
        if isinstance(exc, Suspended):
            raise exc
    if raised:
        first = raised[0]
        if len(raised) > 1:
            first.add_note(f"{len(raised) - 1} more branch(es) of the same saga.gather failed")
        raise first
    return [value for _, value in endings]


__all__ = ["ParallelMixin", "Strand"]
