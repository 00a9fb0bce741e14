"""Operating queues (issue 17): the admin API (``engine.admin.queues``, ``set_queue_limits``,
``reset_queue_limits``, ``queue_position``) and the ``sagakit queues`` / ``queue set`` /
``queue reset`` commands, with ``list``/``show``/``stats``/``cancel``/``compensate`` on QUEUED
sagas: on SQLite and PostgreSQL, the commands as real processes."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    Engine,
    Queue,
    QueueNotFoundError,
    RateLimit,
    SagaContext,
    SagaNotFoundError,
    SagaStatus,
    SagaValidationError,
    saga_step,
    saga_workflow,
)
from sagakit.cli.queues import format_rate, parse_rate

from .conftest import make_engine, make_store_url
from .test_cli import assert_clean_error, sagakit

#: what the sagas of this module did, by saga id, in this process
RAN: list[str] = []
#: the sagas inside their "Work" step right now, and the most there were at once
INSIDE: set[str] = set()
PEAK: list[int] = [0]
#: a saga's step finishes once its event is set
RELEASE: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)


@saga_step("Work")
async def work(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    RAN.append(ctx.saga_id)
    INSIDE.add(ctx.saga_id)
    seen = len(INSIDE)
    PEAK[0] = max(PEAK[0], seen)
    try:
        if inp.get("gated"):
            await RELEASE[ctx.saga_id].wait()
    finally:
        INSIDE.discard(ctx.saga_id)
    # the ledger kept in the saga: how many ran at once when this one started
    return {"running_with_me": seen}


@saga_workflow("Mail")
async def mail(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await work(saga, inp)
    return result


MAIL = Queue("mail", concurrency=1)


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    RAN.clear()
    INSIDE.clear()
    PEAK[0] = 0
    RELEASE.clear()


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database that this process's engines and the ``sagakit`` processes share."""
    return make_store_url(request.param, tmp_path, request, shared=True)


def operator(url: str) -> Engine:
    """An engine that runs no saga: it enqueues and steers, as an operator's process would."""
    engine = make_engine(url, worker=False)
    engine.register(mail, MAIL)
    return engine


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 30) -> None:
    """Wait until ``check()`` holds (a generous deadline: a liveness bound, not a speed test)."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# -- the admin API -----------------------------------------------------------------------------


async def test_set_and_reset_limits_change_only_what_is_given(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with operator(url) as engine:
        await engine.enqueue(MAIL, mail, {}, "m-1")
        [state] = await engine.admin.queues()
        assert (state.name, state.queued, state.running, state.override) == ("mail", 1, 0, {})
        assert state.limits.concurrency == 1

        with caplog.at_level(logging.INFO, logger="sagakit.admin"):
            state = await engine.admin.set_queue_limits(
                "mail",
                concurrency=4,
                rate=RateLimit(50, per=timedelta(minutes=1)),
                by="ann",
                reason="the provider raised our quota",
            )
        assert (state.limits.concurrency, state.limits.rate_limit, state.limits.rate_per) == (
            4,
            50,
            60.0,
        )
        assert state.declared.concurrency == 1  # what the code says is kept beside the override
        logged = [r for r in caplog.records if r.name == "sagakit.admin"]
        assert logged and "ann" in logged[-1].getMessage()
        assert "the provider raised our quota" in logged[-1].getMessage()

        # only the keywords given change; None lifts a limit; a pause comes and goes
        state = await engine.admin.set_queue_limits("mail", worker_concurrency=2, paused=True)
        assert state.limits.concurrency == 4 and state.limits.rate_limit == 50
        assert state.limits.worker_concurrency == 2 and state.limits.paused
        state = await engine.admin.set_queue_limits("mail", concurrency=None, paused=False)
        assert state.limits.concurrency is None and not state.limits.paused
        assert state.limits.worker_concurrency == 2
        state = await engine.admin.set_queue_limits("mail", rate=None)
        assert state.limits.rate_limit is None and state.limits.rate_per is None

        # bad values are refused before anything is written
        before = (await engine.admin.queues())[0].override
        for bad in (
            {"concurrency": 0},
            {"concurrency": True},
            {"worker_concurrency": "3"},
            {"rate": 50},
            {"paused": "yes"},
        ):
            with pytest.raises(SagaValidationError):
                await engine.admin.set_queue_limits("mail", **bad)
        assert (await engine.admin.queues())[0].override == before

        with pytest.raises(QueueNotFoundError, match=r"no queue named 'nope'.*'mail'"):
            await engine.admin.set_queue_limits("nope", concurrency=1)
        with pytest.raises(QueueNotFoundError):
            await engine.admin.reset_queue_limits("nope")

        state = await engine.admin.reset_queue_limits("mail", by="ann")
        assert state.override == {} and state.limits == state.declared
        assert state.limits.concurrency == 1

        assert await engine.admin.queue_position("m-1") == 1
        with pytest.raises(SagaNotFoundError):
            await engine.admin.queue_position("no-such-saga")


async def test_a_limit_raised_at_run_time_is_obeyed_by_a_worker_of_another_engine(
    url: str,
) -> None:
    """concurrency 1 -> 3 through one engine's admin API; a worker of another engine on the
    same database runs three at once from then on, and never more."""
    ids = [f"m-{i}" for i in range(8)]
    worker = make_engine(url)
    worker.register(mail, MAIL)
    async with operator(url) as admin_engine, worker:
        for saga_id in ids:
            await admin_engine.enqueue(MAIL, mail, {"gated": True}, saga_id)

        # under concurrency 1, the sagas go one after the other
        for saga_id in ids[:2]:
            await eventually(functools.partial(_inside, saga_id), f"{saga_id} to start")
            assert {saga_id} == INSIDE
            RELEASE[saga_id].set()
            await _completed(worker, saga_id)
        assert PEAK[0] == 1
        await eventually(lambda: _inside(ids[2]), "the third saga to start")

        # the operator's engine raises the limit: the worker obeys at its next claim
        await admin_engine.admin.set_queue_limits("mail", concurrency=3, by="test")
        await eventually(lambda: _count_inside(3), "three sagas running at once")
        [state] = await admin_engine.admin.queues()
        assert state.running == 3 and state.queued == len(ids) - 5

        for saga_id in ids:
            RELEASE[saga_id].set()
        for saga_id in ids:
            await _completed(worker, saga_id)
        assert PEAK[0] == 3
        ledger = [(await worker.get(s)).output["running_with_me"] for s in ids]
        assert ledger[:2] == [1, 1] and max(ledger) == 3


async def _inside(saga_id: str) -> bool:
    return saga_id in INSIDE


async def _count_inside(count: int) -> bool:
    assert len(INSIDE) <= count, f"more than {count} ran at once: {sorted(INSIDE)}"
    return len(INSIDE) == count


async def _completed(engine: Engine, saga_id: str) -> None:
    async def done() -> bool:
        return (await engine.get(saga_id)).status == SagaStatus.COMPLETED

    await eventually(done, f"{saga_id} to complete")


async def test_a_paused_queue_starts_nothing_until_resumed(url: str) -> None:
    worker = make_engine(url)
    worker.register(mail, MAIL)
    async with operator(url) as admin_engine:
        await admin_engine.enqueue(MAIL, mail, {}, "held")
        await admin_engine.admin.set_queue_limits("mail", paused=True)
        async with worker:
            # the worker claims many times; a saga it started would be in RAN
            for _ in range(5):
                await worker._claim_some()
            assert RAN == [] and (await worker.get("held")).status == SagaStatus.QUEUED
            await admin_engine.admin.set_queue_limits("mail", paused=False)
            await _completed(worker, "held")


# -- the command line --------------------------------------------------------------------------


def _prepare(url: str, *sagas: tuple[str, dict[str, Any]]) -> None:
    async def enqueue() -> None:
        async with operator(url) as engine:
            engine.register(Queue("pay", priority=True, partitioned=True))
            for saga_id, options in sagas:
                queue = options.pop("queue", MAIL)
                await engine.enqueue(queue, mail, {}, saga_id, **options)

    asyncio.run(enqueue())


def _override(url: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with operator(url) as engine:
            return {q.name: q.override for q in await engine.admin.queues()}

    return asyncio.run(read())


def test_cli_queues_set_and_reset(url: str) -> None:
    _prepare(url, ("m-1", {}), ("m-2", {}), ("later", {"delay": timedelta(hours=1)}))
    shown = sagakit("queues", "--db", url)
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.startswith("mail"))
    assert line.split()[:5] == ["mail", "1", "none", "none", "active"]
    assert line.split()[5:8] == ["3", "1", "0"]  # queued (the delayed one among them), running

    changed = sagakit(
        "queue",
        "set",
        "mail",
        "--concurrency",
        "3",
        "--rate",
        "50/s",
        "--pause",
        "--by",
        "ann",
        "--reason",
        "quota",
        "--db",
        url,
    )
    assert changed.returncode == 0, changed.stderr
    assert "concurrency 3*" in changed.stdout and "rate 50/1s*" in changed.stdout
    assert "paused*" in changed.stdout
    assert _override(url)["mail"] == {
        "concurrency": 3,
        "rate_limit": 50,
        "rate_per": 1.0,
        "paused": True,
    }
    table = sagakit("queues", "--db", url)
    assert "3*" in table.stdout and "50/1s*" in table.stdout and "paused*" in table.stdout
    assert "changed by an operator" in table.stdout
    data = json.loads(sagakit("queues", "--db", url, "--json").stdout)
    [queue] = [q for q in data["queues"] if q["name"] == "mail"]
    assert queue["limits"]["concurrency"] == 3 and queue["declared"]["concurrency"] == 1
    assert queue["limits"]["rate"] == "50/1s" and queue["queued"] == 3

    lifted = sagakit(
        "queue", "set", "mail", "--rate", "none", "--resume", "--concurrency", "none", "--db", url
    )
    assert lifted.returncode == 0, lifted.stderr
    # resuming writes paused=False over the operator's pause (code never declares a pause)
    assert _override(url)["mail"] == {
        "concurrency": None,
        "rate_limit": None,
        "rate_per": None,
        "paused": False,
    }

    reset = sagakit("queue", "reset", "mail", "--db", url)
    assert reset.returncode == 0, reset.stderr
    assert "concurrency 1," in reset.stdout
    assert _override(url)["mail"] == {}


@pytest.mark.parametrize("rate", ["fast", "0/1s", "50/0s", "50/1parsec", "50", "-5/1s"])
def test_cli_bad_rate_is_refused_and_writes_nothing(url: str, rate: str) -> None:
    _prepare(url, ("m-1", {}))
    result = sagakit("queue", "set", "mail", "--rate", rate, "--concurrency", "5", "--db", url)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "--rate" in result.stderr and "50/1s" in result.stderr
    assert _override(url)["mail"] == {}


def test_cli_refuses_unknown_queues_bad_limits_and_empty_changes(url: str) -> None:
    _prepare(url, ("m-1", {}))
    assert_clean_error(
        sagakit("queue", "set", "nope", "--concurrency", "2", "--db", url),
        "no queue named 'nope'",
        "'mail'",
    )
    assert_clean_error(sagakit("queue", "reset", "nope", "--db", url), "no queue named 'nope'")
    bad = sagakit("queue", "set", "mail", "--concurrency", "0", "--db", url)
    assert bad.returncode == 2 and "whole number >= 1, or none" in bad.stderr
    empty = sagakit("queue", "set", "mail", "--db", url)
    assert empty.returncode == 2 and "say what to change" in empty.stderr
    assert _override(url)["mail"] == {}


def test_parse_and_format_rates() -> None:
    assert parse_rate("50/1s") == RateLimit(50, per=timedelta(seconds=1))
    assert parse_rate("50/s") == RateLimit(50, per=timedelta(seconds=1))
    assert parse_rate("100/1m") == RateLimit(100, per=timedelta(minutes=1))
    assert parse_rate("10/500ms") == RateLimit(10, per=timedelta(milliseconds=500))
    assert parse_rate("3 / 2h") == RateLimit(3, per=timedelta(hours=2))
    assert parse_rate("none") is None
    assert [format_rate(50, 1), format_rate(100, 60), format_rate(3, 7200)] == [
        "50/1s",
        "100/1m",
        "3/2h",
    ]
    assert format_rate(10, 0.5) == "10/500ms" and format_rate(None, None) == "none"


def test_cli_list_show_and_stats_show_queued_sagas(url: str) -> None:
    _prepare(
        url,
        ("m-1", {}),
        ("m-2", {}),
        ("p-1", {"queue": "pay", "partition_key": "t1", "priority": 5, "dedup_id": "inv-9"}),
    )
    listed = sagakit("list", "--status", "QUEUED", "--db", url)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:-1]}
    assert set(rows) == {"m-1", "m-2", "p-1"}
    assert rows["m-1"].endswith("mail #1") and rows["m-2"].endswith("mail #2")
    assert rows["p-1"].endswith("pay #1")
    as_json = json.loads(sagakit("list", "--status", "queued", "--db", url, "--json").stdout)
    positions = {s["saga_id"]: (s["queue"], s["queue_position"]) for s in as_json["sagas"]}
    assert positions["m-2"] == ("mail", 2)

    shown = sagakit("show", "p-1", "--db", url)
    assert shown.returncode == 0, shown.stderr
    queue_line = next(x for x in shown.stdout.splitlines() if x.strip().startswith("queue"))
    for part in ("pay, position 1", "next to start", "partition t1", "priority 5", "inv-9"):
        assert part in queue_line
    data = json.loads(sagakit("show", "m-2", "--db", url, "--json").stdout)
    assert (data["status"], data["queue"], data["queue_position"]) == ("QUEUED", "mail", 2)

    stats = sagakit("stats", "--db", url)
    assert stats.returncode == 0, stats.stderr
    assert "QUEUED            3" in stats.stdout
    assert "queue mail  queued 2  running 0" in stats.stdout
    assert "queue pay  queued 1  running 0" in stats.stdout


def test_a_queued_saga_cancelled_from_the_cli_never_runs(url: str) -> None:
    _prepare(url, ("doomed", {}), ("undone", {}), ("after", {}))
    cancelled = sagakit("cancel", "doomed", "--reason", "not needed", "--db", url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled doomed: now CANCELLED" in cancelled.stdout
    compensated = sagakit("compensate", "undone", "--db", url)
    assert compensated.returncode == 0, compensated.stderr
    # the queue goes on past them: the saga enqueued after both completes, they never ran
    listed = sagakit("list", "--status", "QUEUED", "--db", url)
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:-1]] == ["after"]
    assert listed.stdout.splitlines()[1].endswith("mail #1")

    async def run_the_queue() -> dict[str, SagaStatus]:
        worker = make_engine(url)
        worker.register(mail, MAIL)
        async with worker:
            await _completed(worker, "after")

            async def settled() -> bool:
                return (await worker.get("undone")).status.is_terminal

            await eventually(settled, "the compensated saga to settle")
            return {s: (await worker.get(s)).status for s in ("doomed", "undone", "after")}

    statuses = asyncio.run(run_the_queue())
    assert statuses == {
        "doomed": SagaStatus.CANCELLED,
        "undone": SagaStatus.COMPENSATED,
        "after": SagaStatus.COMPLETED,
    }
    assert RAN == ["after"]


def test_a_selection_of_queued_sagas_is_cancelled_only_with_yes(url: str) -> None:
    _prepare(url, ("q-1", {}), ("q-2", {}))
    refused = sagakit("cancel", "--status", "QUEUED", "--reason", "drain", "--db", url)
    assert_clean_error(refused, "selects 2 sagas", "--yes")
    done = sagakit("cancel", "--status", "QUEUED", "--reason", "drain", "--yes", "--db", url)
    assert done.returncode == 0, done.stderr
    assert sorted(line.split()[1].rstrip(":") for line in done.stdout.splitlines()) == [
        "q-1",
        "q-2",
    ]
