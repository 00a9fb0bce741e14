"""Transactional steps against real process deaths (issue 20): a worker SIGKILLed after the
step's INSERTs and before their commit leaves none of them, and the recovered run applies them
exactly once; a worker killed after the commit never applies them again. On SQLite and
PostgreSQL; the processes are ``python -m tests.transaction_crash_app``."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from sagakit import Engine
from tests.processes import AppProcesses

pytestmark = pytest.mark.slow


class App(AppProcesses):
    """One database (the store's and the application's table ``items``) and one ledger."""

    def __init__(self, tmp_path: Path, url: str):
        super().__init__(tmp_path, url, "tests.transaction_crash_app")

    def app_args(self) -> list[str]:
        return [str(self.ledger), str(self.markers)]

    async def create(self) -> None:
        async with Engine(self.url):  # the store's schema
            pass
        if self.url.startswith("sqlite"):
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
                conn.execute("CREATE TABLE items (name TEXT NOT NULL)")  # no key: count repeats
            return
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute("CREATE TABLE items (name TEXT NOT NULL)")
        finally:
            await conn.close()

    async def items(self) -> Counter[str]:
        """How many times each item was inserted, as the database has it committed."""
        sql = "SELECT name FROM items"
        if self.url.startswith("sqlite"):
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
                return Counter(r[0] for r in conn.execute(sql).fetchall())
        conn = await asyncpg.connect(self.url)
        try:
            return Counter(r[0] for r in await conn.fetch(sql))
        finally:
            await conn.close()

    def bodies(self, saga_id: str) -> list[int]:
        """The pids of the processes that ran the transactional body, in order."""
        return [e["pid"] for e in self.events() if e["ev"] == "body" and e["saga"] == saga_id]


@pytest.fixture
async def app(tmp_path: Path, process_db_url: str) -> AsyncIterator[App]:
    made = App(tmp_path, process_db_url)
    await made.create()
    yield made
    made.stop_all()


ONCE = Counter({"tx-1-a": 1, "tx-1-b": 1, "tx-1-c": 1})


async def test_sigkill_before_the_commit_leaves_nothing_and_recovery_applies_once(
    app: App,
) -> None:
    app.switch("Reserve", "block")
    first = app.spawn("start", "--saga", "tx-1")
    await app.blocked_in(first, "Reserve", "the transactional body, its INSERTs made")
    assert await app.items() == Counter()  # made, not committed: nobody sees them
    app.kill(first)
    assert await app.items() == Counter()  # and the dead process's transaction is gone

    app.switch("Reserve", "block", on=False)
    second = app.spawn("recover", "--wait", "tx-1")
    summary = app.finish(second)
    assert summary["tx-1"]["status"] == "COMPLETED", app.describe(second)
    assert summary["tx-1"]["output"] == {"shipped": 3}
    # the body ran in both processes; its writes committed once, with its journal entry
    assert app.bodies("tx-1") == [first.pid, second.pid]
    assert await app.items() == ONCE


async def test_sigkill_after_the_commit_never_applies_the_writes_again(app: App) -> None:
    app.switch("Ship", "block")
    first = app.spawn("start", "--saga", "tx-1")
    await app.blocked_in(first, "Ship", "the step after the transactional one")
    assert await app.items() == ONCE  # committed with Reserve's journal entry
    app.kill(first)

    app.switch("Ship", "block", on=False)
    second = app.spawn("recover", "--wait", "tx-1")
    summary = app.finish(second)
    assert summary["tx-1"]["status"] == "COMPLETED", app.describe(second)
    # replayed from the journal: the body did not run again
    assert app.bodies("tx-1") == [first.pid]
    assert await app.items() == ONCE
