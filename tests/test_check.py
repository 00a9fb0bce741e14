"""``sagakit check`` (issue 19), run as a real process against SQLite and PostgreSQL: exit 0 when
every condition holds, 1 naming each breached one with saga ids, 2 on a usage error, 3 when the
database cannot be read; and ``engine.admin.health()`` on the three stores."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    Engine,
    SagaContext,
    SagaStatus,
    SagaValidationError,
    TerminalError,
    saga_step,
    saga_workflow,
)
from sagakit.health import HealthReport, format_age
from sagakit.stores.base import NewSaga
from tests.conftest import fast_retry, make_engine
from tests.waiting import Gate, eventually

# -- the sagas: one of each kind an operator must hear about -------------------------------

GATE: dict[str, Gate] = {}


@saga_step("hang")
async def hang(ctx: SagaContext, inp: Any) -> None:
    await GATE["hang"].hold()


@saga_step("refuse", retry=fast_retry(1))
async def refuse(ctx: SagaContext, inp: Any) -> None:
    raise TerminalError("refused")


async def cannot_undo(data: Any, failed: bool) -> None:
    raise TerminalError("cannot undo")


@saga_step("charge", compensate=cannot_undo, compensation_retry=fast_retry(1))
async def charge(ctx: SagaContext, inp: Any) -> str:
    return "charged"


@saga_step("flaky", retry=fast_retry(1), on_exhausted="park")
async def flaky(ctx: SagaContext, inp: Any) -> None:
    raise RuntimeError("down")


@saga_workflow("Fine")
async def fine(saga: SagaContext, inp: Any) -> str:
    return "done"


@saga_workflow("Stuck")
async def stuck(saga: SagaContext, inp: Any) -> None:
    await hang(saga, inp)


@saga_workflow("Broken")
async def broken(saga: SagaContext, inp: Any) -> None:
    await charge(saga, inp)
    await refuse(saga, inp)


@saga_workflow("Parks")
async def parks(saga: SagaContext, inp: Any) -> None:
    await flaky(saga, inp)


def sagakit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sagakit.cli", "check", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=timeout,
    )


async def check(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command in a thread: the test's engine goes on running meanwhile."""
    return await asyncio.to_thread(sagakit, *args)


async def reaches(engine: Engine, saga_id: str, status: SagaStatus) -> None:
    async def there() -> bool:
        return (await engine.get(saga_id)).status == status

    await eventually(there, f"{saga_id} to be {status}")


async def test_check_exit_codes_and_summary(process_db_url: str) -> None:
    url = process_db_url
    GATE["hang"] = Gate()
    async with make_engine(url) as engine:
        engine.register(fine, stuck, broken, parks)
        await (await engine.start(fine, None, saga_id="fine-1")).result()

        # only ended sagas: every default condition holds
        result = await check("--db", url)
        assert result.returncode == 0, result
        assert "ok: all 3 conditions hold" in result.stdout

        await engine.start(stuck, None, saga_id="stuck-1")
        await engine.start(broken, None, saga_id="failed-1")
        await engine.start(parks, None, saga_id="parked-1")
        await GATE["hang"].reached()
        await reaches(engine, "failed-1", SagaStatus.FAILED)
        await reaches(engine, "parked-1", SagaStatus.PARKED)
        # a saga of a workflow no worker serves (as a client of another deployment makes it)
        orphaned = NewSaga("orphan-1", "Orphan", "null", owner=None, lease_seconds=30)
        await engine._store_or_raise().create_saga(orphaned)

        # the hung step's worker is alive and renews its lease: a renewal is not progress;
        # (the worker's heartbeat names the workflows registered after it opened on its next
        # tick: until then its sagas count as stranded too)
        async def aged() -> bool:
            report = await engine.admin.health(max_running_age=timedelta(seconds=1))
            observed = {c.name: c.observed for c in report.conditions}
            return observed == {"running_age": 2, "failed": 1, "stranded": 1}

        await eventually(aged, "the running sagas to be a second old")

        result = await check(
            "--db",
            url,
            "--max-running-age",
            "1s",
            "--max-failed",
            "0",
            "--max-parked",
            "0",
            "--max-stranded",
            "0",
            "--json",
        )
        assert result.returncode == 1, result
        report = json.loads(result.stdout)
        assert report["ok"] is False
        found = {c["name"]: c for c in report["conditions"]}
        assert list(found) == ["running_age", "failed", "parked", "stranded"]
        assert found["running_age"]["observed"] == 2
        assert set(found["running_age"]["examples"]) == {"stuck-1", "orphan-1"}
        assert found["running_age"]["threshold"] == "1s"
        assert (found["failed"]["observed"], found["failed"]["examples"]) == (1, ["failed-1"])
        assert (found["parked"]["observed"], found["parked"]["examples"]) == (1, ["parked-1"])
        assert (found["stranded"]["observed"], found["stranded"]["examples"]) == (1, ["orphan-1"])
        assert not any(c["ok"] for c in report["conditions"])

        # the text summary names each breached condition and its sagas
        result = await check("--db", url, "--max-running-age", "1s", "--max-failed", "0")
        assert result.returncode == 1, result
        assert result.stdout.startswith("2 of 2 conditions breached")
        lines = result.stdout.splitlines()
        assert any(
            line.strip().startswith("FAIL running_age: 2") and "stuck-1" in line for line in lines
        )
        assert any(
            line.strip().startswith("FAIL failed: 1") and "failed-1" in line for line in lines
        )

        # given conditions only are checked; thresholds above what is found hold
        result = await check("--db", url, "--max-failed", "1", "--max-parked", "1")
        assert result.returncode == 0, result
        result = await check("--db", url, "--max-running-age", "1h", "--max-queue-age", "1m")
        assert result.returncode == 0, result
        result = await check("--db", url, "--max-stranded", "0", "--examples", "0")
        assert result.returncode == 1 and "orphan-1" not in result.stdout

        # usage errors
        for args in (
            ["--max-failed", "-1"],
            ["--max-running-age", "soon"],
            ["--max-running-age", "0s"],
            ["--frobnicate"],
        ):
            result = await check("--db", url, *args)
            assert result.returncode == 2, (args, result)
            assert "Traceback" not in result.stderr

        GATE["hang"].opened.set()
        await reaches(engine, "stuck-1", SagaStatus.COMPLETED)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_cannot_read_the_database(tmp_path: Path) -> None:
    port = _closed_port()
    result = sagakit("--db", f"postgresql://ops:s3cret@127.0.0.1:{port}/sagas", "--timeout", "20s")
    assert result.returncode == 3, result
    assert "s3cret" not in result.stderr + result.stdout
    assert "cannot check postgresql://ops:***@127.0.0.1" in result.stderr

    result = sagakit("--db", str(tmp_path / "missing.db"))
    assert result.returncode == 3 and "does not exist" in result.stderr
    assert not (tmp_path / "missing.db").exists()

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    result = sagakit("--db", str(other), "--json")
    assert result.returncode == 3 and "not a sagakit database" in result.stderr
    assert json.loads(result.stdout)["ok"] is False


async def test_admin_health_on_each_store(store_url: str) -> None:
    async with make_engine(store_url) as engine:
        engine.register(fine, broken)
        report = await engine.admin.health()
        assert isinstance(report, HealthReport) and report.ok
        assert [c.name for c in report.conditions] == ["running_age", "failed", "stranded"]
        assert report.summary() == "ok: all 3 conditions hold"

        await engine.start(broken, None, saga_id="failed-1")
        await reaches(engine, "failed-1", SagaStatus.FAILED)
        report = await engine.admin.health(max_running_age=None, max_stranded=None)
        assert not report.ok
        (failed,) = report.breached
        assert (failed.name, failed.observed, failed.limit, failed.examples) == (
            "failed",
            1,
            0,
            ("failed-1",),
        )
        assert report.summary() == (
            "FAIL failed: 1 FAILED sagas (rollback incomplete) (at most 0), e.g. failed-1"
        )
        assert (await engine.admin.health(max_failed=1)).ok
        report = await engine.admin.health(
            max_running_age=None, max_failed=None, max_stranded=None, max_queue_age=60.0
        )
        assert [c.name for c in report.conditions] == ["queue_age"] and report.ok

        for bad in (
            {"max_failed": -1},
            {"max_failed": True},
            {"max_running_age": timedelta(0)},
            {"max_queue_age": "10m"},
            {"examples": 51},
        ):
            with pytest.raises(SagaValidationError):
                await engine.admin.health(**bad)


def test_format_age() -> None:
    assert [format_age(s) for s in (600, 5400, 45, 86400 + 1, 1.5)] == [
        "10m",
        "1h30m",
        "45s",
        "1d1s",
        "1.5s",
    ]
