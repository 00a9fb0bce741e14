"""Cron schedules (issue 17): each tick fires exactly one saga, whatever the number of
workers; catch-up policies after downtime; pause and resume; validation; the CLI; and the
required test: three worker processes, one killed in the middle, each tick exactly once.

Time is driven by the engine's ``schedule_clock`` (no test sleeps through a cron period)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel

from sagakit import (
    Engine,
    Queue,
    SagaConflictError,
    SagaContext,
    SagaStatus,
    SagaValidationError,
    ScheduleNotFoundError,
    saga_workflow,
)
from sagakit.engine.scheduling import CATCH_UP_ALL_LIMIT
from tests.conftest import make_engine, make_store_url
from tests.processes import AppProcesses

PARIS = ZoneInfo("Europe/Paris")


class ReportInput(BaseModel):
    day: str


@saga_workflow("Report")
async def report(saga: SagaContext, inp: ReportInput) -> str:
    return inp.day


class Clock:
    """The schedules' "now", moved by hand."""

    def __init__(self, start: datetime):
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, moment: datetime) -> None:
        self.now = moment.timestamp()


def paris(hour: int, minute: int, second: float = 0) -> datetime:
    whole = int(second)
    micro = round((second - whole) * 1e6)
    return datetime(2026, 12, 6, hour, minute, whole, micro, tzinfo=PARIS)


def client(url: str, clock: Clock) -> Engine:
    """An engine that fires only when told (``fire_schedules``), on the test's clock."""
    engine = make_engine(url, worker=False)
    engine.schedule_clock = clock
    return engine


def tick_id(hour: int, minute: int, name: str = "nightly") -> str:
    return f"{name}@{paris(hour, minute).isoformat()}"


async def test_a_tick_fires_once_across_engines_and_its_saga_runs(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = make_store_url(store_kind, tmp_path, request, shared=True)
    clock = Clock(paris(10, 3))
    first, second = client(url, clock), client(url, clock)
    for engine in (first, second):
        engine.schedule(
            "nightly", "*/5 * * * *", report, {"day": "sunday"}, timezone="Europe/Paris"
        )
    async with first, second:
        assert await first.fire_schedules() == []  # declared at 10:03: nothing due yet
        assert await second.fire_schedules() == []
        clock.set(paris(10, 4, 59))
        assert await first.fire_schedules() == []
        clock.set(paris(10, 5, 0.2))
        fired = await first.fire_schedules() + await second.fire_schedules()
        assert fired == [tick_id(10, 5)]
        assert await first.fire_schedules() == []
        saga = await first.get(tick_id(10, 5))
        assert saga.status == SagaStatus.PENDING
        assert await second.run_due() == [tick_id(10, 5)]
        assert await second.handle(tick_id(10, 5)).result(timeout=10) == "sunday"
        [state] = await first.admin.schedules()
        assert state.last_tick == paris(10, 5).timestamp()
        assert state.next_tick == paris(10, 10).timestamp()
        assert (state.workflow, state.timezone, state.catch_up) == (
            "Report",
            "Europe/Paris",
            "latest",
        )


async def test_workers_racing_for_one_tick_fire_it_once(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = make_store_url(store_kind, tmp_path, request, shared=True)
    clock = Clock(paris(10, 3))
    engines = [client(url, clock) for _ in range(4)]
    for engine in engines:
        engine.schedule("nightly", "*/5 * * * *", report, {"day": "d"}, timezone="Europe/Paris")
    for engine in engines:
        await engine.__aenter__()
    try:
        await engines[0].fire_schedules()
        clock.set(paris(11, 0, 0.5))
        rounds = await asyncio.gather(*(e.fire_schedules() for e in engines))
        assert [saga_id for fired in rounds for saga_id in fired] == [tick_id(11, 0)]
        sagas = await engines[0].list(limit=100)
        assert [s.saga_id for s in sagas] == [tick_id(11, 0)]
    finally:
        for engine in engines:
            await engine.close()


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        ("latest", [(10, 30)]),
        ("skip", []),
        ("all", [(10, 10), (10, 15), (10, 20), (10, 25), (10, 30)]),
    ],
)
async def test_catch_up_policies_after_downtime(
    store_url: str, catch_up: str, expected: list[tuple[int, int]]
) -> None:
    clock = Clock(paris(10, 3))
    engine = client(store_url, clock)
    engine.schedule(
        "nightly", "*/5 * * * *", report, {"day": "d"}, timezone="Europe/Paris", catch_up=catch_up
    )
    async with engine:
        await engine.fire_schedules()
        clock.set(paris(10, 5, 1))
        assert await engine.fire_schedules() == [tick_id(10, 5)]
        clock.set(paris(10, 31))  # no worker ran from 10:05:01 to 10:31
        assert await engine.fire_schedules() == [tick_id(h, m) for h, m in expected]
        assert await engine.fire_schedules() == []
        clock.set(paris(10, 35, 2))  # on time again: every policy fires it
        assert await engine.fire_schedules() == [tick_id(10, 35)]


async def test_skip_fires_a_tick_that_is_late_but_within_the_grace(store_url: str) -> None:
    clock = Clock(paris(10, 3))
    engine = client(store_url, clock)
    engine.schedule(
        "nightly", "*/5 * * * *", report, {"day": "d"}, catch_up="skip", timezone="Europe/Paris"
    )
    async with engine:
        await engine.fire_schedules()
        clock.set(paris(10, 5, 8))
        assert await engine.fire_schedules() == [tick_id(10, 5)]


async def test_catch_up_all_is_bounded_to_the_latest_ticks(store_url: str) -> None:
    clock = Clock(paris(10, 0))
    engine = client(store_url, clock)
    engine.schedule(
        "often", "* * * * * *", report, {"day": "d"}, catch_up="all", timezone="Europe/Paris"
    )
    async with engine:
        await engine.fire_schedules()
        clock.set(paris(10, 10))  # 600 ticks missed
        fired = await engine.fire_schedules()
        assert len(fired) == CATCH_UP_ALL_LIMIT
        start = paris(10, 10) - timedelta(seconds=CATCH_UP_ALL_LIMIT - 1)
        assert fired == [
            f"often@{(start + timedelta(seconds=i)).isoformat()}" for i in range(len(fired))
        ]
        clock.set(paris(10, 10, 1))
        assert await engine.fire_schedules() == [f"often@{paris(10, 10, 1).isoformat()}"]


async def test_a_paused_schedule_fires_nothing_and_resumes_from_the_next_tick(
    store_url: str,
) -> None:
    clock = Clock(paris(10, 3))
    engine = client(store_url, clock)
    engine.schedule(
        "nightly", "*/5 * * * *", report, {"day": "d"}, catch_up="all", timezone="Europe/Paris"
    )
    async with engine:
        await engine.fire_schedules()
        paused = await engine.admin.pause_schedule("nightly", reason="maintenance", by="ops")
        assert paused.paused and paused.next_tick is None
        clock.set(paris(10, 21))
        assert await engine.fire_schedules() == []
        resumed = await engine.admin.resume_schedule("nightly")
        # 10:05, 10:10, 10:15 and 10:20 fell while paused: passed over, even with "all"
        assert not resumed.paused and resumed.next_tick == paris(10, 25).timestamp()
        assert await engine.fire_schedules() == []
        again = await engine.admin.resume_schedule("nightly")  # not paused: changes nothing
        assert again.next_tick == paris(10, 25).timestamp()
        clock.set(paris(10, 25, 1))
        assert await engine.fire_schedules() == [tick_id(10, 25)]
        with pytest.raises(ScheduleNotFoundError, match="nightly"):
            await engine.admin.pause_schedule("nighty")


async def test_a_new_cron_counts_its_ticks_from_its_declaration(
    shared_store_url: str,
) -> None:
    clock = Clock(paris(10, 3))
    old = client(shared_store_url, clock)
    old.schedule("nightly", "*/5 * * * *", report, {"day": "d"}, timezone="Europe/Paris")
    async with old:
        await old.fire_schedules()
    clock.set(paris(10, 30))  # the new release comes up: old ticks are not fired under it
    new = client(shared_store_url, clock)
    new.schedule("nightly", "*/20 * * * *", report, {"day": "d"}, timezone="Europe/Paris")
    async with new:
        assert await new.fire_schedules() == []
        [state] = await new.admin.schedules()
        assert state.cron == "*/20 * * * *" and state.next_tick == paris(10, 40).timestamp()
        clock.set(paris(10, 40))
        assert await new.fire_schedules() == [tick_id(10, 40)]


async def test_each_tick_of_a_daylight_saving_change_fires_under_its_own_id(
    store_url: str,
) -> None:
    clock = Clock(datetime(2026, 10, 25, 1, 50, tzinfo=PARIS))
    engine = client(store_url, clock)
    engine.schedule(
        "half", "*/30 * * * *", report, {"day": "d"}, catch_up="all", timezone="Europe/Paris"
    )
    async with engine:
        await engine.fire_schedules()
        clock.now += 3 * 3600  # 01:50+02:00 to 03:50+01:00: 02:xx happens twice
        fired = await engine.fire_schedules()
    assert fired == [
        "half@2026-10-25T02:00:00+02:00",
        "half@2026-10-25T02:30:00+02:00",
        "half@2026-10-25T02:00:00+01:00",
        "half@2026-10-25T02:30:00+01:00",
        "half@2026-10-25T03:00:00+01:00",
        "half@2026-10-25T03:30:00+01:00",
    ]


async def test_a_schedule_with_a_queue_enqueues_its_ticks(store_url: str) -> None:
    clock = Clock(paris(10, 3))
    engine = client(store_url, clock)
    engine.schedule(
        "nightly",
        "*/5 * * * *",
        report,
        {"day": "d"},
        timezone="Europe/Paris",
        queue=Queue("reports", concurrency=1),
    )
    async with engine:
        await engine.fire_schedules()
        clock.set(paris(10, 5))
        assert await engine.fire_schedules() == [tick_id(10, 5)]
        saga = await engine.get(tick_id(10, 5))
        assert saga.status == SagaStatus.QUEUED
        [state] = await engine.admin.schedules()
        assert state.queue == "reports"
        assert await engine.run_due() == [tick_id(10, 5)]
        assert await engine.handle(tick_id(10, 5)).result(timeout=10) == "d"


async def test_the_decorator_form_declares_the_schedule(store_url: str) -> None:
    clock = Clock(paris(10, 3))
    engine = client(store_url, clock)

    @engine.scheduled("weekly", "0 9 * * mon", {"day": "monday"}, timezone="Europe/Paris")
    @saga_workflow("Weekly")
    async def weekly(saga: SagaContext, inp: ReportInput) -> str:
        return inp.day

    assert weekly.name == "Weekly"
    assert engine.schedules["weekly"].workflow == "Weekly"
    async with engine:
        await engine.fire_schedules()
        [state] = await engine.admin.schedules()
        assert state.next_tick == datetime(2026, 12, 7, 9, 0, tzinfo=PARIS).timestamp()


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        (("nightly", "*/5 * * *"), {}, "write 5 fields"),
        (("nightly", "61 * * * *"), {}, "write 5 fields"),
        (("nightly", "* * * * * * *"), {}, "write 5 fields"),
        (("nightly", "*/5 * * * *"), {"timezone": "Mars/Olympus"}, "IANA name"),
        (("nightly", "*/5 * * * *"), {"catch_up": "some"}, "catch_up='latest'"),
        (("bad name!", "*/5 * * * *"), {}, "invalid schedule name"),
        (("nightly", "*/5 * * * *"), {"queue": "nowhere"}, "unknown queue"),
        (
            ("nightly", "*/5 * * * *"),
            {"queue": Queue("tenants", partitioned=True)},
            "partition key",
        ),
    ],
)
async def test_a_bad_schedule_is_refused_and_nothing_is_written(
    store_url: str, args: tuple[str, str], kwargs: dict[str, Any], needle: str
) -> None:
    engine = make_engine(store_url, worker=False)
    async with engine:
        with pytest.raises(SagaValidationError) as caught:
            engine.schedule(*args, report, {"day": "d"}, **kwargs)
        assert needle in str(caught.value)
        assert engine.schedules == {}
        assert await engine.fire_schedules() == []
        assert await engine.admin.schedules() == []


async def test_a_bad_input_is_refused_and_a_second_declaration_must_match(
    store_url: str,
) -> None:
    engine = make_engine(store_url, worker=False)
    with pytest.raises(SagaValidationError):
        engine.schedule("nightly", "*/5 * * * *", report, {"night": 1})
    engine.schedule("nightly", "*/5 * * * *", report, {"day": "d"})
    engine.schedule("nightly", "*/5 * * * *", report, {"day": "d"})  # the same: fine
    with pytest.raises(SagaConflictError, match="another schedule"):
        engine.schedule("nightly", "0 * * * *", report, {"day": "d"})


async def test_the_background_worker_fires_and_runs_the_ticks(shared_store_url: str) -> None:
    engine = make_engine(shared_store_url)
    engine.schedule("often", "* * * * * *", report, {"day": "d"})
    async with engine:
        async with asyncio.timeout(30):
            while True:
                done = [s for s in await engine.list(SagaStatus.COMPLETED) if s.name == "Report"]
                if len(done) >= 2:
                    break
                await asyncio.sleep(0.05)
    assert all(s.saga_id.startswith("often@") for s in done)


# -- the CLI --------------------------------------------------------------------------------


def sagakit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sagakit.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=60,
    )


async def test_the_cli_lists_pauses_and_resumes_schedules(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    clock = Clock(paris(10, 3))
    engine = client(url, clock)
    engine.schedule("nightly", "*/5 * * * *", report, {"day": "d"}, timezone="Europe/Paris")
    async with engine:
        await engine.fire_schedules()
        clock.set(paris(10, 5))
        await engine.fire_schedules()
    listed = sagakit("schedules", "--db", url)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "CRON",
        "TIMEZONE",
        "WORKFLOW",
        "NEXT",
        "TICK",
        "LAST",
        "TICK",
        "PAUSED",
    ]
    assert row.split() == [
        "nightly",
        "*/5",
        "*",
        "*",
        "*",
        "*",
        "Europe/Paris",
        "Report",
        "2026-12-06T10:10:00+01:00",
        "2026-12-06T10:05:00+01:00",
        "no",
    ]
    paused = sagakit("schedule", "pause", "nightly", "--db", url, "--reason", "maintenance")
    assert paused.returncode == 0, paused.stderr
    assert "schedule nightly paused" in paused.stdout
    as_json = json.loads(sagakit("schedules", "--db", url, "--json").stdout)
    assert as_json[0]["paused"] is True and as_json[0]["next_tick"] is None
    resumed = sagakit("schedule", "resume", "nightly", "--db", url)
    assert resumed.returncode == 0, resumed.stderr
    assert "schedule nightly resumed: next tick" in resumed.stdout
    unknown = sagakit("schedule", "pause", "nighty", "--db", url)
    assert unknown.returncode == 1
    assert "no schedule named 'nighty'" in unknown.stderr and "Traceback" not in unknown.stderr


# -- the required test: three workers, one killed, each tick once ----------------------------


@pytest.fixture
def apps(tmp_path: Path, process_db_url: str) -> Iterator[AppProcesses]:
    procs = AppProcesses(tmp_path, process_db_url, "tests.schedule_app")
    yield procs
    procs.stop_all()


def _tick(saga_id: str) -> datetime:
    return datetime.fromisoformat(saga_id.split("@", 1)[1])


async def test_three_workers_and_a_kill_fire_each_tick_exactly_once(apps: AppProcesses) -> None:
    workers = [apps.spawn("worker") for _ in range(3)]
    for proc in workers:
        apps.wait_until(
            proc,
            "the worker to come up",
            lambda p=proc: any(e["ev"] == "up" and e["pid"] == p.pid for e in apps.events()),
        )

    def executed() -> set[str]:
        return {e["saga"] for e in apps.events() if e["ev"] == "step"}

    apps.wait_until(workers[0], "3 ticks to run", lambda: len(executed()) >= 3)
    victim = workers[0]
    apps.kill(victim)
    survivors = workers[1:]
    seen = len(executed())
    apps.wait_until(
        survivors[0], "4 more ticks after the kill", lambda: len(executed()) >= seen + 4
    )

    observer = make_engine(apps.url, worker=False)
    async with observer:
        await observer.admin.pause_schedule("every-second", reason="end of the test")

        async def all_ended() -> bool:
            sagas = await observer.list(limit=1000)
            return all(s.status == SagaStatus.COMPLETED for s in sagas)

        await apps.until(survivors[0], "every tick's saga to complete", all_ended)
        sagas = await observer.list(limit=1000)
    for proc in survivors:
        proc.send_signal(signal.SIGTERM)
    for proc in survivors:
        assert proc.wait(timeout=60) == 0, apps.describe(proc)

    ids = [s.saga_id for s in sagas]
    assert all(i.startswith("every-second@") for i in ids)
    ticks = sorted(_tick(i) for i in ids)
    # one saga per tick, and no tick skipped between the first and the last
    assert len(set(ticks)) == len(ticks)
    assert ticks == [ticks[0] + timedelta(seconds=n) for n in range(len(ticks))], ids
    assert len(ticks) >= 7
    # each tick's step ran once; again only when its first run was in the killed worker
    runs = Counter(e["saga"] for e in apps.events() if e["ev"] == "step")
    assert set(runs) == set(ids)
    for saga_id, count in runs.items():
        if count > 1:
            pids = [e["pid"] for e in apps.events() if e["ev"] == "step" and e["saga"] == saga_id]
            assert pids[0] == victim.pid and count == 2, (saga_id, pids)
    pids = {e["pid"] for e in apps.events() if e["ev"] == "step"}
    assert pids - {victim.pid}, "the surviving workers ran ticks"


# -- the dashboard --------------------------------------------------------------------------


async def test_the_dashboard_lists_schedules_and_pauses_one_with_the_token(
    tmp_path: Path,
) -> None:
    import urllib.error
    import urllib.parse
    import urllib.request

    from sagakit.dashboard import Dashboard

    url = f"sqlite:///{tmp_path}/d.db"
    engine = make_engine(url, worker=False)
    engine.schedule("nightly", "0 3 * * *", report, {"day": "d"}, timezone="Europe/Paris")
    async with engine:
        await engine.fire_schedules()

    def post(base: str, token: str) -> int:
        # the form carries the CSRF value of a browser that has the dashboard's cookie
        data = urllib.parse.urlencode({"token": token, "csrf": "c"}).encode()
        request = urllib.request.Request(
            f"{base.rstrip('/')}/schedules/nightly/pause",
            data=data,
            headers={"Cookie": "sagakit_csrf=c"},
        )
        try:
            return int(urllib.request.urlopen(request, timeout=30).status)
        except urllib.error.HTTPError as refused:
            return refused.code

    def visit() -> tuple[str, int, int, str]:
        with Dashboard(url, token="s3cret", port=0) as dashboard:
            before = urllib.request.urlopen(dashboard.url, timeout=30).read().decode()
            wrong = post(dashboard.url, "guess")
            right = post(dashboard.url, "s3cret")
            after = urllib.request.urlopen(dashboard.url, timeout=30).read().decode()
        return before, wrong, right, after

    before, wrong, right, after = await asyncio.to_thread(visit)
    assert "<h2>Schedules</h2>" in before and "0 3 * * *" in before and ">pause<" in before
    assert wrong == 403
    assert right == 200  # redirected to the front page
    assert ">resume<" in after
    async with make_engine(url, worker=False) as look:
        [state] = await look.admin.schedules()
    assert state.paused
