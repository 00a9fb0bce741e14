"""A participant's transactional handler on SQLite, SIGKILLed after its writes and before the
commit (issue 20): neither its writes nor its inbox row survive, and the redelivery applies the
command exactly once; a further redelivery returns the stored reply without running it."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import AppProcesses


@pytest.fixture
def app(tmp_path: Path) -> Iterator[AppProcesses]:
    processes = AppProcesses(
        tmp_path, f"sqlite:///{tmp_path}/p.db", "tests.participant_tx_crash_app"
    )
    try:
        yield processes
    finally:
        processes.stop_all()


def table(path: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


async def test_a_kill_before_the_commit_leaves_nothing_and_the_redelivery_applies_once(
    app: AppProcesses, tmp_path: Path
) -> None:
    db = tmp_path / "p.db"
    app.switch("reserve", "hang")
    first = app.spawn("serve")
    await app.blocked_in(first, "reserve", "the handler, after its write")
    app.kill(first)
    assert table(db, "SELECT * FROM ledger") == []
    assert table(db, "SELECT message_id FROM saga_inbox") == []
    assert table(db, "SELECT message_id FROM saga_outbox") == []

    app.switch("reserve", "hang", on=False)
    summary = app.finish(app.spawn("serve"))
    assert summary == {"handled": 1, "reply": {"value": "r-book"}}
    assert table(db, "SELECT message_id, item FROM ledger") == [("m-1", "book")]
    assert table(db, "SELECT message_id, status FROM saga_inbox") == [("m-1", "ok")]
    assert len(table(db, "SELECT message_id FROM saga_outbox WHERE kind = 'reply'")) == 1

    again = app.finish(app.spawn("serve"))  # a redelivery: the stored reply, no second run
    assert again == {"handled": 0, "reply": {"value": "r-book"}}
    assert table(db, "SELECT message_id, item FROM ledger") == [("m-1", "book")]
