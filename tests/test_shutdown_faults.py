"""Shutting down while the database is unreachable: ``Engine.close(timeout=...)`` and SIGTERM to
``sagakit worker`` return within their bound, and nothing is lost — the saga that was running
is taken over once the database is back and its lease has expired.

On a server of this module's own, which the tests stop and start again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagakit import SagaStatus
from sagakit.errors import StoreError
from sagakit.stores.postgres import PostgresStore
from tests.conftest import fresh_pg_database, make_engine
from tests.pgserver import PgServer
from tests.shutdown_app import blocked
from tests.waiting import WAIT

pytestmark = pytest.mark.slow

#: a hang guard only: the bound under test is far smaller, and never asserted as a time
HANG = 120.0


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    with PgServer(durable=True) as pg:
        yield pg


def _ledger(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _until(check: object, what: str) -> None:
    deadline = time.monotonic() + HANG
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_close_returns_within_its_timeout_while_postgres_is_down(
    own_pg: PgServer, tmp_path: Path
) -> None:
    url = fresh_pg_database(own_pg)
    ledger, release = tmp_path / "ledger", tmp_path / "release"
    inp = {"ledger": str(ledger), "release": str(release)}
    engine = make_engine(url, store=PostgresStore(url, retry_deadline=5.0))
    engine.register(blocked)
    await engine.__aenter__()
    await engine.start(blocked, inp, saga_id="held")
    await _until(lambda: len(_ledger(ledger)) == 1, "the step to start")

    own_pg.stop("immediate")
    async with asyncio.timeout(HANG):
        await engine.close(timeout=2.0)
    assert engine._store is None  # closed

    own_pg.start_again()
    release.touch()
    async with make_engine(url) as again:
        again.register(blocked)
        assert await again.handle("held").result(timeout=WAIT * 3) == "held"
        snap = await again.get("held")
        assert snap.status == SagaStatus.COMPLETED
    # the step ran again only because its end was never recorded
    assert [e["ev"] for e in _ledger(ledger)] == ["Hold", "Hold"]


async def test_a_store_gives_up_after_its_retry_deadline_with_a_clear_error(
    own_pg: PgServer,
) -> None:
    url = fresh_pg_database(own_pg)
    store = PostgresStore(url, retry_deadline=1.0)
    await store.open()
    own_pg.stop("immediate")
    try:
        async with asyncio.timeout(HANG):
            with pytest.raises(StoreError, match="retry deadline"):
                await store.load_saga("nothing")
            with pytest.raises(StoreError, match="retry deadline"):
                await store.claim("w", ["Blocked"], 5.0, 10)
    finally:
        async with asyncio.timeout(HANG):
            await store.close(timeout=1.0)
        own_pg.start_again()


def _spawn_worker(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "sagakit.cli", "worker", "--db", url),
            *("--app", "tests.shutdown_app:workflows", "--lease", "2", "--poll", "0.05"),
            *("--grace", "0.5", "--shutdown-timeout", "2"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_sigterm_stops_a_worker_within_its_bound_while_postgres_is_down(
    own_pg: PgServer, tmp_path: Path
) -> None:
    url = fresh_pg_database(own_pg)
    ledger, release = tmp_path / "ledger", tmp_path / "release"
    inp = {"ledger": str(ledger), "release": str(release)}
    async with make_engine(url, worker=False) as client:
        client.register(blocked)
        await client.start(blocked, inp, saga_id="w-held", run_here=False)
    worker = _spawn_worker(url)
    try:
        await _until(lambda: len(_ledger(ledger)) == 1, "the worker to start the step")
        own_pg.stop("immediate")
        worker.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(worker.communicate, timeout=HANG)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    assert "stopped" in out

    own_pg.start_again()
    release.touch()
    async with make_engine(url) as again:
        again.register(blocked)
        assert await again.handle("w-held").result(timeout=WAIT * 3) == "held"
    assert [e["ev"] for e in _ledger(ledger)] == ["Hold", "Hold"]
