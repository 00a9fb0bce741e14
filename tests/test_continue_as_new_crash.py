"""A crash in the middle of continuing as new, with real processes: SIGKILL the worker of a
saga that continues as new, once before its continue was committed and once after (in the next
run's step), on SQLite and PostgreSQL; then check that every iteration's step ran once (the
ledger), that the saga ended with the right output after three runs, and that each earlier
run's journal was kept once.

The saga is ``tests/continue_crash_app.py``'s ``Looping``: 0..8 added by one step each, three
per run, continuing as new after each three.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagakit import SagaStatus
from sagakit.stores import open_store
from tests.processes import AppProcesses

pytestmark = pytest.mark.slow


class App(AppProcesses):
    def __init__(self, tmp_path: Path, url: str):
        super().__init__(tmp_path, url, "tests.continue_crash_app")

    def app_args(self) -> list[str]:
        return [str(self.ledger), str(self.markers)]


@pytest.fixture
def app(tmp_path: Path, process_db_url: str) -> Iterator[App]:
    app = App(tmp_path, process_db_url)
    try:
        yield app
    finally:
        app.stop_all()


async def test_a_crash_in_the_middle_of_continuing(app: App) -> None:
    store = open_store(app.url)
    await store.open()
    try:
        # 1. killed in run 1, after its steps, before its continue was written
        app.switch("continue", "block")
        first = app.spawn("start", "loop-1")
        await app.blocked_in(first, "continue", "the saga function before its continue")

        async def third_step_journaled() -> bool:  # written behind: it commits a moment later
            return len(await store.load_journal("loop-1")) == 3

        await app.until(first, "run 1's third step to be journaled", third_step_journaled)
        app.kill(first)
        app.switch("continue", "block", on=False)
        record = await store.load_saga("loop-1")
        assert record is not None and (record.run, record.status) == (1, SagaStatus.RUNNING)
        assert [e.name for e in await store.load_journal("loop-1")] == ["Add"] * 3

        # 2. the saga is taken over: run 1 replays, continues; killed in run 2's second step
        app.switch("add4", "block")
        second = app.spawn("recover", "loop-1")
        await app.blocked_in(second, "add4", "the step of i=4")
        app.kill(second)
        app.switch("add4", "block", on=False)
        record = await store.load_saga("loop-1")
        assert record is not None and record.run == 2
        assert len(await store.load_run("loop-1", 1)) == 3

        # 3. taken over again: run 2 replays i=3, runs i=4 again, continues; run 3 ends it
        third = app.spawn("recover", "loop-1")
        summary = app.finish(third)
        assert summary == {"status": "COMPLETED", "output": 36, "error": None, "run": 3}
    finally:
        await store.close()
    events = app.events()
    done = Counter(e["i"] for e in events if e["ev"] == "step_done")
    started = Counter(e["i"] for e in events if e["ev"] == "step")
    assert done == Counter(range(9))  # every iteration's step ran to its end once
    # and started once, but for the one killed midway (at least once, as any step)
    assert started == Counter(range(9)) + Counter({4: 1})
    # the keys of i=4's two attempts are the same; those of the runs are all distinct
    keys = {e["i"]: e["key"] for e in events if e["ev"] == "step_done"}
    assert len(set(keys.values())) == 9
    assert {e["key"] for e in events if e.get("i") == 4} == {keys[4]}
    store = open_store(app.url)
    await store.open()
    try:  # each earlier run's journal was archived once
        for run in (1, 2):
            assert [e.name for e in await store.load_run("loop-1", run)] == ["Add"] * 3
    finally:
        await store.close()
