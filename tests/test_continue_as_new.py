"""Continue-as-new (``saga.continue_as_new``): a saga ends its run and goes on as a fresh run of
itself, with a new input, under the same id; its earlier runs' journals are kept for operators.
Each test runs on every store kind (the crash test is in test_continue_as_new_crash.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from sagakit import (
    SagaCompensatedError,
    SagaContext,
    SagaError,
    SagaStatus,
    SagaValidationError,
    saga_step,
    saga_workflow,
)
from sagakit.cli import main as cli
from sagakit.errors import LeaseLost
from sagakit.stores import open_store
from sagakit.stores.base import JournalEntry, NextRun
from tests.conftest import engine_with
from tests.wrapped_store import WrappedStore

# -- a counter that continues every k steps ----------------------------------------------------


class Count(BaseModel):
    i: int = 0
    total: int = 0
    until: int = 10
    every: int = 3


def counter(ran: list[tuple[int, str]], name: str = "Counter") -> Any:
    @saga_step("Add")
    async def add(ctx: SagaContext, i: int) -> int:
        ran.append((i, ctx.step_key))
        return i

    @saga_workflow(name)
    async def count(saga: SagaContext, inp: Count) -> int:
        total, i = inp.total, inp.i
        for _ in range(inp.every):
            if i >= inp.until:
                return total
            total += await add(saga, i)
            i += 1
        saga.continue_as_new(inp.model_copy(update={"i": i, "total": total}))

    return count


async def test_a_saga_that_continues_every_k_steps_runs_each_step_once(store_url: str) -> None:
    ran: list[tuple[int, str]] = []
    wf = counter(ran)
    async with engine_with(store_url, wf) as engine:
        out = await engine.run(wf, Count(until=10, every=3), saga_id="c1")
        assert out == sum(range(10))
        assert [i for i, _ in ran] == list(range(10))  # each iteration's step once, in order
        # each run numbers its steps from the start again; their keys stay distinct
        assert len({key for _, key in ran}) == 10
        store = engine._store_or_raise()
        record = await store.load_saga("c1")
        assert record is not None
        assert (record.status, record.run) == (SagaStatus.COMPLETED, 4)
        assert Count.model_validate_json(record.input) == Count(i=9, total=36, until=10, every=3)
        # only the current run's journal is the saga's; the earlier ones are kept apart
        assert [e.name for e in await store.load_journal("c1")] == ["Add"]
        for run in (1, 2, 3):
            assert [e.name for e in await store.load_run("c1", run)] == ["Add"] * 3
        assert await store.load_run("c1", 4) == []
        runs = await engine.admin.runs("c1")
        assert [(r.run, r.current, r.entries) for r in runs] == [
            (1, False, 3),
            (2, False, 3),
            (3, False, 3),
            (4, True, 1),
        ]
        # each run keeps the input it started with (the current one's is the saga's)
        assert [Count.model_validate(r.input) for r in runs] == [
            Count(i=0, total=0),
            Count(i=3, total=3),
            Count(i=6, total=15),
            Count(i=9, total=36),
        ]
        assert {r.version for r in runs} == {None}
        earlier = await engine.admin.get_run("c1", 2)
        assert (earlier.run, earlier.runs, len(earlier.steps)) == (2, 4, 3)
        assert Count.model_validate(earlier.input) == Count(i=3, total=3)
        with pytest.raises(SagaError, match="has no run 5"):
            await engine.admin.get_run("c1", 5)


async def test_bad_input_is_refused_and_nothing_is_written(store_url: str) -> None:
    seen: list[str] = []

    @saga_step("Once")
    async def once(ctx: SagaContext, inp: int) -> int:
        return inp

    @saga_workflow("Strict")
    async def strict(saga: SagaContext, inp: Count) -> str:
        await once(saga, inp.i)
        try:
            saga.continue_as_new({"i": "not a number"})
        except SagaValidationError as exc:
            seen.append(str(exc))
            return "refused"
        return "continued"  # pragma: no cover - continue_as_new does not return

    async with engine_with(store_url, strict) as engine:
        assert await engine.run(strict, Count(), saga_id="s1") == "refused"
        assert seen
        store = engine._store_or_raise()
        record = await store.load_saga("s1")
        assert record is not None and record.run == 1
        assert Count.model_validate_json(record.input) == Count()
        assert len(await store.load_journal("s1")) == 1
        assert await store.load_run("s1", 1) == []


async def test_continue_as_new_is_refused_inside_a_step_and_a_gather_branch(
    store_url: str,
) -> None:
    @saga_step("Inside")
    async def inside(ctx: SagaContext, inp: int) -> str:
        try:
            ctx.continue_as_new(inp)
        except SagaError as exc:
            return str(exc)
        return "continued"  # pragma: no cover

    async def branch(saga: SagaContext) -> str:
        try:
            saga.continue_as_new({})
        except SagaError as exc:
            return str(exc)
        return "continued"  # pragma: no cover

    @saga_workflow("Misplaced")
    async def misplaced(saga: SagaContext, inp: dict[str, Any]) -> list[str]:
        in_step = await inside(saga, 1)
        in_branch = await saga.gather(branch(saga))
        return [in_step, *in_branch]

    async with engine_with(store_url, misplaced) as engine:
        in_step, in_branch = await engine.run(misplaced, {}, saga_id="m1")
        assert "inside step 'Inside'" in in_step
        assert "inside a branch of saga.gather" in in_branch


async def test_an_except_exception_does_not_swallow_it(store_url: str) -> None:
    @saga_workflow("Swallow")
    async def swallow(saga: SagaContext, inp: dict[str, int]) -> int:
        if inp["n"] >= 2:
            return inp["n"]
        try:
            saga.continue_as_new({"n": inp["n"] + 1})
        except Exception:  # what a careless saga does
            return -1
        return -2  # pragma: no cover

    async with engine_with(store_url, swallow) as engine:
        assert await engine.run(swallow, {"n": 0}, saga_id="w1") == 2


# -- events ------------------------------------------------------------------------------------


async def test_signals_taken_by_a_run_are_not_seen_again_and_the_others_wait(
    store_url: str,
) -> None:
    @saga_workflow("Ticks")
    async def ticks(saga: SagaContext, inp: dict[str, Any]) -> list[int]:
        got = list(inp["got"])
        for _ in range(2):
            got.append(await saga.wait_for_signal("tick"))
        if len(got) < 6:
            saga.continue_as_new({"got": got})
        return got

    async with engine_with(store_url, ticks) as engine:
        handle = await engine.start(ticks, {"got": []}, saga_id="t1")
        await engine.settle("t1")
        for n in range(6):  # sent at once: the later ones wait for the runs after the first
            await engine.signal("t1", "tick", n)
        assert await asyncio.wait_for(handle.result(), 30) == [0, 1, 2, 3, 4, 5]
        store = engine._store_or_raise()
        record = await store.load_saga("t1")
        assert record is not None and (record.run, record.event_count) == (3, 6)
        # those the first two runs took are gone; the last run's stay, as any saga's do
        assert [e.seq for e in await store.load_events("t1")] == [5, 6]


async def test_a_promise_answers_once_per_run(store_url: str) -> None:
    @saga_workflow("Approvals")
    async def approvals(saga: SagaContext, inp: dict[str, Any]) -> list[str]:
        got = [*inp["got"], await saga.promise("decision").value()]
        if len(got) < 2:
            saga.continue_as_new({"got": got})
        return got

    async with engine_with(store_url, approvals) as engine:
        handle = await engine.start(approvals, {"got": []}, saga_id="p1")
        await engine.settle("p1")
        await engine.resolve_promise("p1", "decision", "first")
        for _ in range(300):  # the second run waits for its own promise
            record = await engine._store_or_raise().load_saga("p1")
            assert record is not None
            if record.run == 2 and record.status == SagaStatus.SUSPENDED:
                break
            await asyncio.sleep(0.05)
        await engine.resolve_promise("p1", "decision", "second")
        assert await asyncio.wait_for(handle.result(), 30) == ["first", "second"]


# -- compensation, versions --------------------------------------------------------------------


async def test_a_failure_after_continuing_undoes_only_the_current_run(store_url: str) -> None:
    undone: list[str] = []

    async def undo(data: Any, failed: bool = False) -> None:
        undone.append(data["what"])

    @saga_step("Book", compensate=undo)
    async def book(ctx: SagaContext, inp: dict[str, str]) -> dict[str, str]:
        return inp

    @saga_step("Fail")
    async def fail(ctx: SagaContext, inp: int) -> None:
        raise SagaError("no more")

    @saga_workflow("Months")
    async def months(saga: SagaContext, inp: dict[str, int]) -> None:
        await book(saga, {"what": f"month {inp['month']}"})
        if inp["month"] < 3:
            saga.continue_as_new({"month": inp["month"] + 1})
        await fail(saga, 0)

    async with engine_with(store_url, months) as engine:
        with pytest.raises(SagaCompensatedError):
            await engine.run(months, {"month": 1}, saga_id="a1")
        assert undone == ["month 3"]  # months 1 and 2 were committed when their runs continued


async def test_the_next_run_takes_the_version_registered_last(store_url: str) -> None:
    ran: list[str] = []

    @saga_workflow("Forever", version="1")
    async def v1(saga: SagaContext, inp: dict[str, int]) -> str:
        ran.append(f"v1 {inp['n']}")
        saga.continue_as_new({"n": inp["n"] + 1})

    @saga_workflow("Forever", version="2")
    async def v2(saga: SagaContext, inp: dict[str, int]) -> str:
        ran.append(f"v2 {inp['n']}")
        return f"done at {inp['n']}"

    async with engine_with(store_url, v1, v2) as engine:
        assert await engine.run(v1, {"n": 1}, saga_id="f1") == "done at 2"
        assert ran == ["v1 1", "v2 2"]
        record = await engine._store_or_raise().load_saga("f1")
        assert record is not None and (record.version, record.run) == ("2", 2)
        # each run keeps the version and input it ran with
        runs = await engine.admin.runs("f1")
        assert [(r.run, r.version, r.input) for r in runs] == [
            (1, "1", {"n": 1}),
            (2, "2", {"n": 2}),
        ]
        first = await engine.admin.get_run("f1", 1)
        assert (first.version, first.input, first.status) == ("1", {"n": 1}, SagaStatus.COMPLETED)


# -- the store ---------------------------------------------------------------------------------


async def test_the_store_continues_once_and_fences_the_old_run(store_url: str) -> None:
    ran: list[tuple[int, str]] = []
    wf = counter(ran, "Fenced")
    async with engine_with(store_url, wf) as engine:
        await engine.run(wf, Count(until=2, every=5), saga_id="x1")
        store = engine._store_or_raise()
        before = await store.load_saga("x1")
        assert before is not None and before.run == 1
        journal = await store.load_journal("x1")
        step = NextRun("x1", before.fence, 1, '{"i": 7}', before.version)
        await store.continue_as_new(step)
        await store.continue_as_new(step)  # a retry after a lost answer: a no-op
        after = await store.load_saga("x1")
        assert after is not None
        assert (after.run, after.fence, after.input) == (2, before.fence + 1, '{"i": 7}')
        assert await store.load_run("x1", 1) == journal
        assert await store.load_run("x1", 2) == []
        # run 1's row: the input and version the saga row had before, written once
        (row,) = await store.load_runs("x1")
        assert (row.run, row.input, row.version) == (1, before.input, before.version)
        steps = [e for e in journal if e.seq >= 0]
        assert row.entries == len(steps) == 2
        assert row.started_at == min(e.started_at for e in steps)
        assert row.ended_at >= max(e.finished_at for e in steps)
        with pytest.raises(LeaseLost):  # the old run's fence is stale now
            await store.append("x1", before.fence, None)
        with pytest.raises(LeaseLost):  # and so is a continue of a run that is over
            await store.continue_as_new(NextRun("x1", before.fence, 2, "{}", None))


async def test_deleting_a_saga_deletes_its_earlier_runs(store_url: str) -> None:
    ran: list[tuple[int, str]] = []
    wf = counter(ran, "Deleted")
    async with engine_with(store_url, wf) as engine:
        await engine.run(wf, Count(until=4, every=2), saga_id="d1")
        await engine.run(wf, Count(until=4, every=2), saga_id="d2")
        store = engine._store_or_raise()
        assert len(await store.load_run("d1", 1)) == 2
        assert [r.run for r in await store.load_runs("d2")] == [2, 1]
        await engine.admin.delete("d1")
        assert await store.load_run("d1", 1) == []
        assert await store.load_runs("d1") == []
        assert await store.prune(ended_before=1e12) == ["d2"]
        assert await store.load_run("d2", 1) == []
        assert await store.load_runs("d2") == []


# -- operators ---------------------------------------------------------------------------------


class JournalCounter(WrappedStore):
    """Counts the journals read: the current run's (``load_journal``) and earlier ones'."""

    def __init__(self, url: str):
        super().__init__(open_store(url))
        self.journals: list[str] = []
        self.earlier: list[int] = []

    async def load_journal(self, saga_id: str) -> list[JournalEntry]:
        self.journals.append(saga_id)
        return await self.inner.load_journal(saga_id)

    async def load_run(self, saga_id: str, run: int) -> list[JournalEntry]:
        self.earlier.append(run)
        return await self.inner.load_run(saga_id, run)


async def test_listing_many_runs_reads_no_earlier_journal_and_pages(store_url: str) -> None:
    ran: list[tuple[int, str]] = []
    wf = counter(ran, "Many")
    store = JournalCounter(store_url)
    async with engine_with(store_url, wf, store=store) as engine:
        assert await engine.run(wf, Count(until=30, every=1), saga_id="n1") == sum(range(30))
        store.journals.clear()
        store.earlier.clear()
        last = await engine.admin.runs("n1", limit=20)
        # run 31 found i == 30 and returned at once: the current run, with no entries
        assert [r.run for r in last] == list(range(12, 32))
        assert [r.current for r in last] == [False] * 19 + [True]
        assert [r.entries for r in last] == [1] * 19 + [0]
        for r in last:
            assert Count.model_validate(r.input) == Count(
                i=r.run - 1, total=sum(range(r.run - 1)), until=30, every=1
            )
        # an earlier run ended when it continued: in order
        ends = [r.ended_at for r in last[:-1] if r.ended_at is not None]
        assert len(ends) == 19 and ends == sorted(ends)
        # the page before, then the one before that (shorter: it reaches run 1)
        earlier = await engine.admin.runs("n1", before=last[0].run, limit=10)
        assert [r.run for r in earlier] == list(range(2, 12))
        first = await engine.admin.runs("n1", before=earlier[0].run, limit=10)
        assert [r.run for r in first] == [1] and first[0].input == Count(
            until=30, every=1
        ).model_dump()
        assert await engine.admin.runs("n1", before=1) == []
        # one journal read: the current run's, for the page that has it; no earlier run's
        assert (store.journals, store.earlier) == (["n1"], [])
        rows = await store.load_runs("n1", before=5, limit=3)
        assert [r.run for r in rows] == [4, 3, 2]  # the store's order: newest first
        assert await store.load_runs("n1", limit=0) == []


async def test_show_prints_the_run_and_an_earlier_one(
    store_kind: str, store_url: str, tmp_path: Any
) -> None:
    if store_kind == "memory":
        store_url = f"sqlite:///{tmp_path}/show.db"  # the command line opens the database
    ran: list[tuple[int, str]] = []
    wf = counter(ran, "Shown")
    async with engine_with(store_url, wf) as engine:
        await engine.run(wf, Count(until=5, every=2), saga_id="v1")
    runner = CliRunner()

    async def show(*args: str) -> Any:  # the command runs its own event loop: off this one
        return await asyncio.to_thread(runner.invoke, cli, ["show", "v1", *args, "--db", store_url])

    current = await show()
    assert current.exit_code == 0, current.output
    assert "run       3 of 3 (earlier runs: --run 1-2)" in current.output
    assert '"i": 4' in current.output  # the saga's input: run 3's
    earlier = await show("--run", "1")
    assert earlier.exit_code == 0, earlier.output
    assert "1 of 3: an earlier run's journal" in earlier.output
    assert earlier.output.count("Add") == 2
    assert '"i": 0' in earlier.output and '"i": 4' not in earlier.output  # run 1's input
    second = await show("--run", "2", "--json")
    assert second.exit_code == 0, second.output
    assert json.loads(second.output)["input"] == {"i": 2, "total": 1, "until": 5, "every": 2}
    missing = await show("--run", "4")
    assert missing.exit_code == 1 and "has no run 4" in missing.output


# -- memory --------------------------------------------------------------------------------------


async def test_a_saga_looping_over_many_signals_holds_only_its_current_run() -> None:
    largest: list[tuple[int, int]] = []

    @saga_workflow("Account")
    async def account(saga: SagaContext, inp: dict[str, int]) -> int:
        balance = inp["balance"]
        for _ in range(50):
            balance += await saga.wait_for_signal("deposit")
            if balance >= 2000:
                return balance
        run = saga._driver  # what the engine holds of this run
        largest.append((len(run._journal), len(run._events or [])))  # type: ignore[attr-defined]
        saga.continue_as_new({"balance": balance})

    async with engine_with("memory://", account) as engine:
        handle = await engine.start(account, {"balance": 0}, saga_id="acc")
        for _ in range(2000):
            await engine.signal("acc", "deposit", 1)
        assert await asyncio.wait_for(handle.result(), 120) == 2000
        record = await engine._store_or_raise().load_saga("acc")
        assert record is not None and record.run == 40
        # one run's entries (its 50 waits), and the signals no earlier run took
        assert len(largest) == 39
        for run, (entries, events) in enumerate(largest):
            assert entries == 50 and events <= 2000 - 50 * run
        assert len(await engine._store_or_raise().load_events("acc")) == 2000 - 39 * 50


def test_the_dashboard_page_lists_the_runs(tmp_path: Any) -> None:
    from fastapi.testclient import TestClient

    from sagakit.dashboard import app

    url = f"sqlite:///{tmp_path}/dash.db"
    ran: list[tuple[int, str]] = []
    wf = counter(ran, "Dashed")

    async def make() -> None:
        async with engine_with(url, wf) as engine:
            await engine.run(wf, Count(until=5, every=2), saga_id="g1")

    asyncio.run(make())
    bearer = {"Authorization": "Bearer read-token"}
    with TestClient(app(url, read_token="read-token")) as client:
        current = client.get("/sagas/g1", headers=bearer)
        assert current.status_code == 200
        runs = current.text.split('id="runs">')[1].split("</dd>")[0]
        assert '<a href="/sagas/g1?run=1">1</a>' in runs and "<strong>3</strong>" in runs
        earlier = client.get("/sagas/g1?run=1", headers=bearer)
        assert earlier.status_code == 200
        runs = earlier.text.split('id="runs">')[1].split("</dd>")[0]
        assert "<strong>1</strong>" in runs and "an earlier run" in runs
        assert '<a href="/sagas/g1">3</a>' in runs  # the current run: the saga's own page


def test_the_dashboard_page_links_the_first_and_the_last_20_runs(tmp_path: Any) -> None:
    from fastapi.testclient import TestClient

    from sagakit.dashboard import app

    url = f"sqlite:///{tmp_path}/dash.db"
    ran: list[tuple[int, str]] = []
    wf = counter(ran, "DashedMany")

    async def make() -> None:
        async with engine_with(url, wf) as engine:
            await engine.run(wf, Count(until=24, every=1), saga_id="g2")  # runs 1 to 25

    asyncio.run(make())
    bearer = {"Authorization": "Bearer read-token"}

    def runs_of(page: str) -> str:
        return page.split('id="runs">')[1].split("</dd>")[0]

    with TestClient(app(url, read_token="read-token")) as client:
        runs = runs_of(client.get("/sagas/g2", headers=bearer).text)
        assert '<a href="/sagas/g2?run=1">1</a> …' in runs and "of 25" in runs
        assert '<a href="/sagas/g2?run=6">6</a>' in runs and "<strong>25</strong>" in runs
        assert '?run=5"' not in runs and '?run=2"' not in runs
        earlier = client.get("/sagas/g2?run=3", headers=bearer).text
        runs = runs_of(earlier)
        assert "<strong>3</strong> …" in runs and '<a href="/sagas/g2">25</a>' in runs
        assert "&#34;i&#34;: 2" in earlier or '"i": 2' in earlier  # run 3's input
