"""The parallel branches of ``saga.gather`` within one Restate invocation.

Two facts of Restate's Python SDK shape this module. The SDK drives an invocation's journal
from whichever coroutine awaits a durable future, so two asyncio tasks waiting at once compete
for the server's messages and one can wait forever for a message the other took. And the
journal is ordered: a replay must issue the same commands in the same order as the first run.

So one branch runs at a time. A branch gives up its turn when it waits for a durable future
(see :func:`settle`) or ends. Only the gather's own loop waits on the server, for every future
any branch waits on at once (so the branches' steps run at the same time), and gives the turn
to the first branch, in the order given, whose future has completed. That is how Restate's own
combinators (``restate.wait_completed``, ``select``) stay deterministic: what the SDK has seen
completed at a point of the invocation is what its journal holds before the next command, on
the first run and on a replay alike. So a replay hands the turns out in the same order, and the
branches issue the same commands in the same order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

import restate
from restate import RestateDurableFuture
from restate.exceptions import TerminalError as RestateTerminalError
from restate.server_context import ServerDurableFuture

Futures = tuple[RestateDurableFuture[Any], ...]

#: the turns and the branch index of the running task, when it is a branch of a gather
_CURRENT: ContextVar[tuple[BranchTurns, int] | None] = ContextVar(
    "sagakit_restate_branch", default=None
)


async def settle(*futures: RestateDurableFuture[Any]) -> None:
    """Wait, without polling the server, until one of ``futures`` has completed.

    Inside a branch this gives up the turn meanwhile; outside one it returns at once and the
    caller's own await polls the server. Awaiting a completed future afterwards reads its value
    without polling."""
    current = _CURRENT.get()
    if current is not None:
        turns, index = current
        await turns.block(index, futures)


@dataclass
class BranchEnd:
    """How a branch ended: its value, or the error it raised."""

    value: Any = None
    error: Exception | None = None


class BranchTurns:
    """Runs coroutines as branches that take turns (see the module's docstring); at most
    ``limit`` of them are started and not yet ended at a time."""

    def __init__(self, branches: Sequence[Coroutine[Any, Any, Any]], limit: int | None):
        self._branches = list(branches)
        self._limit = len(self._branches) if not limit else min(limit, len(self._branches))
        self._next_branch = 0
        #: branch -> the futures it waits for (one of them is enough)
        self._waits: dict[int, Futures] = {}
        self._grants: dict[int, asyncio.Future[None]] = {}
        self._handed_back: asyncio.Future[None] | None = None
        self._ended: dict[int, BranchEnd] = {}
        self._cancelled: RestateTerminalError | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> list[BranchEnd]:
        """Run every branch to its end; returns how each ended, in the order given."""
        try:
            await self._fill()
            nested = _CURRENT.get() is not None
            while self._waits:
                # a gather inside a branch goes on when the outer turns say so, even with a
                # future at hand: deciding here would depend on when its completion was read
                ready = None if nested else self._first_ready()
                if ready is None:
                    try:
                        await self._until_one_completed()
                    except RestateTerminalError as exc:
                        # the invocation was cancelled (Restate says so once): every branch
                        # learns it at its next wait, as a lone await would, and rolls back
                        self._cancelled = exc
                    ready = self._first_ready()
                    if ready is None:
                        continue
                await self._give_turn(ready)
                await self._fill()  # a branch that ended makes room for the next
        finally:
            for task in self._tasks:
                task.cancel()
            for unstarted in self._branches[self._next_branch :]:
                unstarted.close()
            # a suspension or a lost connection ends the attempt: Restate replays it later
            await asyncio.gather(*self._tasks, return_exceptions=True)
        return [self._ended[index] for index in range(len(self._branches))]

    def _first_ready(self) -> int | None:
        """The first branch, in the order given, that may go on (its wait has ended)."""
        for index in sorted(self._waits):
            if self._cancelled is not None or any(_completed(f) for f in self._waits[index]):
                return index
        return None

    async def _until_one_completed(self) -> None:
        pending = tuple(f for futures in self._waits.values() for f in futures)
        if _CURRENT.get() is not None:
            # a gather inside a branch: the outer turns wait for it, polling ours too
            await settle(*pending)
        elif not any(_completed(f) for f in pending):
            await restate.wait_completed(*pending)

    async def _fill(self) -> None:
        """Start branches, in order, while fewer than ``limit`` are started and not ended."""
        while (
            self._next_branch < len(self._branches)
            and self._next_branch - len(self._ended) < self._limit
        ):
            await self._start_next()

    async def _start_next(self) -> None:
        index = self._next_branch
        self._next_branch += 1
        self._handed_back = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._branch(index)))
        await self._handed_back

    async def _give_turn(self, index: int) -> None:
        """Let branch ``index`` run until it waits again or ends."""
        del self._waits[index]
        self._handed_back = asyncio.get_running_loop().create_future()
        grant = self._grants.pop(index)
        if self._cancelled is not None:
            grant.set_exception(self._cancelled)
        else:
            grant.set_result(None)
        await self._handed_back

    async def block(self, index: int, futures: Futures) -> None:
        """Branch ``index`` gives up the turn until one of ``futures`` has completed."""
        self._waits[index] = futures
        grant = asyncio.get_running_loop().create_future()
        self._grants[index] = grant
        self._hand_back(None)
        await grant

    def _hand_back(self, error: BaseException | None) -> None:
        handed_back = self._handed_back
        if handed_back is None or handed_back.done():
            return
        if error is None:
            handed_back.set_result(None)
        else:
            handed_back.set_exception(error)

    async def _branch(self, index: int) -> None:
        _CURRENT.set((self, index))
        try:
            value = await self._branches[index]
        except Exception as exc:
            self._ended[index] = BranchEnd(error=exc)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # Restate's control flow (a suspension) met inside the branch: the gather ends
            # the same way
            self._hand_back(exc)
            return
        else:
            self._ended[index] = BranchEnd(value=value)
        self._hand_back(None)


def _completed(future: RestateDurableFuture[Any]) -> bool:
    # every future of the SDK's server context is one (restate.wait_completed relies on it too)
    done: bool = cast(ServerDurableFuture[Any], future).is_completed()  # type: ignore[no-untyped-call]
    return done


__all__ = ["BranchEnd", "BranchTurns", "settle"]
