"""The turns of ``saga.gather`` branches on Restate (sagakit/restate/branches.py), checked with
random branch shapes against a model of what Restate's journal makes of them.

The model: each operation a branch awaits is a command in the journal; its completion becomes
known to the SDK only when the gather's loop polls the server (``restate.wait_completed``),
which also journals it. On a replay a completion is known once every command journaled before
it has been issued again (and, when the loop must wait, up to the next command). Restate keeps
its combinators deterministic this way; the property is that the turns, under it, make a replay
issue every command in the order of the first run, whatever the durations, the limit and the
nesting, and that every branch ends with its own results and at most ``limit`` run at once.
The real server is in test_restate_scenarios.py and test_restate_crash.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagakit.restate import branches
from sagakit.restate.branches import BranchTurns, settle

#: a branch: its operations, each a duration or a nested gather of branches
Branch = list[Any]


class Journal:
    """The first run: commands as they are issued, completions as the loop learns of them."""

    def __init__(self) -> None:
        self.clock = 0
        self.events: list[tuple[str, str]] = []
        self.done_at: dict[str, int] = {}
        self.known: set[str] = set()
        self.active = 0
        self.most_active = 0

    def issue(self, ident: str, duration: int) -> FakeFuture:
        self.events.append(("command", ident))
        self.done_at[ident] = self.clock + duration
        return FakeFuture(self, ident)

    def is_known(self, ident: str) -> bool:
        return ident in self.known

    async def wait_completed(self, *futures: FakeFuture) -> None:
        pending = [f.ident for f in futures if not self.is_known(f.ident)]
        assert pending, "the loop waited with a completion at hand"
        self.clock = max(self.clock, min(self.done_at[i] for i in pending))
        # the server's message carries every completion due by now
        for ident in sorted(self.done_at, key=lambda i: (self.done_at[i], i)):
            if ident not in self.known and self.done_at[ident] <= self.clock:
                self.known.add(ident)
                self.events.append(("done", ident))
        await asyncio.sleep(0)

    def commands(self) -> list[str]:
        return [ident for kind, ident in self.events if kind == "command"]


class Replay(Journal):
    """A replay of ``first``: commands must come in the same order. A completion is known once
    the commands journaled before it were issued again: at once (``eager``), or when the loop
    next polls, which reads the journal up to its next command."""

    def __init__(self, first: Journal, *, eager: bool):
        super().__init__()
        self.first = first.events
        self.eager = eager
        self.issued = 0

    def issue(self, ident: str, duration: int) -> FakeFuture:
        expected = [i for kind, i in self.first if kind == "command"]
        assert self.issued < len(expected) and expected[self.issued] == ident, (
            f"the replay issued {ident!r} where the journal has "
            f"{expected[self.issued] if self.issued < len(expected) else 'nothing'!r}"
        )
        self.issued += 1
        self.events.append(("command", ident))
        return FakeFuture(self, ident)

    def _journaled_by_now(self) -> set[str]:
        """The completions journaled before the next command to issue."""
        found: set[str] = set()
        commands = 0
        for kind, ident in self.first:
            if kind == "command":
                commands += 1
                if commands > self.issued:
                    break
            else:
                found.add(ident)
        return found

    def is_known(self, ident: str) -> bool:
        return ident in self.known or (self.eager and ident in self._journaled_by_now())

    async def wait_completed(self, *futures: FakeFuture) -> None:
        self.known |= self._journaled_by_now()
        assert any(self.is_known(f.ident) for f in futures), (
            f"the replay waited for {[f.ident for f in futures]}, which its journal never "
            "completes before the next command"
        )
        await asyncio.sleep(0)


class FakeFuture:
    """A durable future of the model: completed when its journal says so."""

    def __init__(self, journal: Journal, ident: str):
        self.journal = journal
        self.ident = ident

    def is_completed(self) -> bool:
        return self.journal.is_known(self.ident)

    def __await__(self) -> Generator[Any, None, str]:
        assert self.is_completed(), f"{self.ident} awaited before it completed"
        return self.ident
        yield  # a generator that never suspends


async def _branch(journal: Journal, path: str, ops: Branch, top: bool) -> list[Any]:
    if top:
        journal.active += 1
        journal.most_active = max(journal.most_active, journal.active)
    results: list[Any] = []
    for k, op in enumerate(ops):
        if isinstance(op, list):
            nested = [_branch(journal, f"{path}.{k}.{j}", b, False) for j, b in enumerate(op)]
            ends = await BranchTurns(nested, None).run()
            results.append([end.value for end in ends])
        else:
            future = journal.issue(f"{path}.{k}", op)
            await settle(future)  # type: ignore[arg-type]
            results.append(await future)
    if top:
        journal.active -= 1
    return results


def _expected(path: str, ops: Branch) -> list[Any]:
    return [
        [_expected(f"{path}.{k}.{j}", b) for j, b in enumerate(op)]
        if isinstance(op, list)
        else f"{path}.{k}"
        for k, op in enumerate(ops)
    ]


async def _gather(journal: Journal, shape: list[Branch], limit: int | None) -> list[Any]:
    saved = branches.restate
    branches.restate = SimpleNamespace(wait_completed=journal.wait_completed)  # type: ignore[assignment]
    try:
        coros = [_branch(journal, str(i), ops, True) for i, ops in enumerate(shape)]
        ends = await BranchTurns(coros, limit).run()
    finally:
        branches.restate = saved
    assert all(end.error is None for end in ends), [end.error for end in ends]
    return [end.value for end in ends]


durations = st.integers(min_value=0, max_value=4)
leaf_branch = st.lists(durations, min_size=0, max_size=3)
op = st.one_of(durations, durations, st.lists(leaf_branch, min_size=1, max_size=3))
shapes = st.lists(st.lists(op, min_size=0, max_size=4), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=shapes,
    limit=st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
    eager=st.booleans(),
)
def test_a_replay_issues_the_commands_of_the_first_run_in_the_same_order(
    shape: list[Branch], limit: int | None, eager: bool
) -> None:
    first = Journal()
    results = asyncio.run(_gather(first, shape, limit))
    assert results == [_expected(str(i), ops) for i, ops in enumerate(shape)]
    assert first.most_active <= (limit or len(shape))

    replay = Replay(first, eager=eager)
    assert asyncio.run(_gather(replay, shape, limit)) == results
    assert replay.commands() == first.commands()


def test_the_turn_goes_to_the_branch_whose_future_completed_first() -> None:
    shape: list[Branch] = [[3, 0], [0, 0]]
    first = Journal()
    asyncio.run(_gather(first, shape, None))
    # branch 1 completed its first step first, so it issued its second step first
    assert first.commands() == ["0.0", "1.0", "1.1", "0.1"]


@pytest.mark.parametrize("limit", [1, 2])
def test_a_limit_starts_the_next_branch_when_one_ends(limit: int) -> None:
    journal = Journal()
    shape: list[Branch] = [[2], [1], [0]]
    asyncio.run(_gather(journal, shape, limit))
    assert journal.most_active == limit
    if limit == 1:
        assert journal.commands() == ["0.0", "1.0", "2.0"]
