"""The parallel branches of ``saga.gather`` within one Restate invocation.

Two facts of Restate's Python SDK shape this module. The SDK drives an invocation's journal
from whichever coroutine awaits a durable future, so two asyncio tasks waiting at once compete
for the server's messages and one can wait forever for a message the other took. And the
journal is ordered: a replay must issue the same commands in the same order as the first run.

So the branches take turns, round-robin in the order they were given. A branch runs only while
it holds the turn and gives it up when it waits for a durable future (see :func:`settle`) or
ends. Only the gather's own loop waits on the server, for every future any branch waits on at
once, so the branches' steps run in parallel; it hands the turn to the next branch once the
future that branch waits for has completed. Which commands a branch issues, and in which turn,
depends only on what its earlier operations returned, so a replay issues them in the same order.
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
    await _settle(futures, futures)


async def _settle(need: Futures, poll: Futures) -> None:
    current = _CURRENT.get()
    if current is None:
        return
    turns, index = current
    await turns.block(index, need, poll)


@dataclass
class BranchEnd:
    """How a branch ended: its value, or the error it raised."""

    value: Any = None
    error: Exception | None = None


@dataclass
class _Wait:
    need: Futures
    poll: Futures


class BranchTurns:
    """Runs coroutines as branches that take turns (see the module's docstring); at most
    ``limit`` of them are started and not yet ended at a time."""

    def __init__(self, branches: Sequence[Coroutine[Any, Any, Any]], limit: int | None):
        self._branches = list(branches)
        size = len(self._branches) if not limit else min(limit, len(self._branches))
        self._rotation = list(range(size))
        self._next_branch = size
        self._position = 0
        self._waits: dict[int, _Wait] = {}
        self._grants: dict[int, asyncio.Future[None]] = {}
        self._handed_back: asyncio.Future[None] | None = None
        self._ended: dict[int, BranchEnd] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> list[BranchEnd]:
        """Run every branch to its end; returns how each ended, in the order given."""
        try:
            while self._rotation:
                index = self._rotation[self._position]
                wait = self._waits.pop(index, None)
                error: RestateTerminalError | None = None
                if wait is not None:
                    try:
                        await self._until_completed(wait)
                    except RestateTerminalError as exc:
                        # the invocation was cancelled: the branch waiting now learns it, as a
                        # lone await would; the others go on to their end
                        error = exc
                await self._give_turn(index, error)
                if index in self._ended:
                    self._retire(index)
                else:
                    self._position = (self._position + 1) % len(self._rotation)
        finally:
            for task in self._tasks:
                task.cancel()
            for unstarted in self._branches[self._next_branch :]:
                unstarted.close()
            # a suspension or a lost connection ends the attempt: Restate replays it later
            await asyncio.gather(*self._tasks, return_exceptions=True)
        return [self._ended[index] for index in range(len(self._branches))]

    async def _until_completed(self, wait: _Wait) -> None:
        while not any(_completed(future) for future in wait.need):
            pending = [f for f in wait.poll if not _completed(f)]
            for other in self._waits.values():
                pending.extend(f for f in other.poll if not _completed(f))
            if _CURRENT.get() is not None:
                # a gather inside a branch: the outer turns wait for it, polling ours too
                await _settle(wait.need, tuple(pending))
            else:
                await restate.wait_completed(*pending)

    async def _give_turn(self, index: int, error: RestateTerminalError | None) -> None:
        """Let branch ``index`` run until it waits again or ends."""
        self._handed_back = asyncio.get_running_loop().create_future()
        grant = self._grants.pop(index, None)
        if grant is None:
            self._tasks.append(asyncio.create_task(self._branch(index)))
        elif error is not None:
            grant.set_exception(error)
        else:
            grant.set_result(None)
        await self._handed_back

    def _retire(self, index: int) -> None:
        if self._next_branch < len(self._branches):
            # the next branch not started yet takes the ended one's place (and turn)
            self._rotation[self._position] = self._next_branch
            self._next_branch += 1
            return
        del self._rotation[self._position]
        if self._rotation:
            self._position %= len(self._rotation)

    async def block(self, index: int, need: Futures, poll: Futures) -> None:
        """Branch ``index`` gives up the turn until one of ``need`` has completed."""
        self._waits[index] = _Wait(need, poll)
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
