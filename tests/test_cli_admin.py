"""Acceptance tests of the operator commands (``stats``, the new ``list`` filters and paging,
``show`` of parked and waiting sagas, ``retry``, ``skip``, ``compensate``, ``cancel``,
``resume``, ``dashboard --help``): the real ``sagakit`` command in a fresh process, on a real
SQLite file (and once on PostgreSQL), with a real ``sagakit worker`` where sagas must go on."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from .cli_admin_app import prepare
from .processes import REPO
from .test_cli import assert_clean_error, sagakit

#: the sagas every test starts from; the flag file of the parked ones is never created here
PARKED = ("t-parked-1", "t-parked-2", "t-parked-3")


def saga_inputs(flag: Path) -> dict[str, dict[str, Any]]:
    return {
        "t-done": {"n": 1},
        **{saga_id: {"n": 2 + i, "flag": str(flag)} for i, saga_id in enumerate(PARKED)},
        "t-napping": {"n": 5, "nap": 3600},
        "t-approval": {"n": 6, "approval": True},
        "t-undone": {"n": 7, "decline": True},
    }


@pytest.fixture
def flag(tmp_path: Path) -> Path:
    """The file whose existence lets the parked sagas' Credit step succeed."""
    return tmp_path / "ledger-is-back"


@pytest.fixture
def db(tmp_path: Path, flag: Path) -> str:
    """A SQLite file with one saga in each interesting state: COMPLETED, three PARKED, two
    SUSPENDED (a timer, a signal) and COMPENSATED; created 10 ms apart, in that order."""
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    asyncio.run(prepare(url, saga_inputs(flag), spacing=0.01))
    return url


def show_json(db: str, saga_id: str) -> dict[str, Any]:
    result = sagakit("show", saga_id, "--db", db, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def stats(db: str) -> dict[str, int]:
    result = sagakit("stats", "--db", db, "--json")
    assert result.returncode == 0, result.stderr
    counts: dict[str, int] = json.loads(result.stdout)
    return counts


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Any]:
    """Start ``sagakit worker`` on a database (call the fixture with its URL); stopped with
    SIGTERM at the end of the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(url: str) -> subprocess.Popen[bytes]:
        out = tmp_path / f"worker{len(procs)}.out"
        command = [sys.executable, "-m", "sagakit.cli", "worker", "--db", url]
        command += ["--app", "tests.cli_admin_app:WORKFLOWS", "--poll", "0.05", "--lease", "2"]
        with open(out, "wb") as sink:
            proc = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
        procs.append(proc)
        deadline = time.monotonic() + 30
        while b"ready" not in out.read_bytes():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)
        return proc

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- reading ------------------------------------------------------------------------------


def test_stats_counts_every_status(db: str) -> None:
    counts = stats(db)
    assert list(counts) == [
        "QUEUED",
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "PARKED",
        "COMPENSATING",
        "COMPLETED",
        "COMPENSATED",
        "FAILED",
        "CANCELLED",
    ]
    assert counts["PARKED"] == 3
    assert counts["SUSPENDED"] == 2
    assert counts["COMPLETED"] == counts["COMPENSATED"] == 1
    assert counts["FAILED"] == 0
    text = sagakit("stats", "--db", db)
    assert text.returncode == 0, text.stderr
    rows = [line.split() for line in text.stdout.splitlines()]
    assert rows[0] == ["STATUS", "SAGAS"]
    assert ["PARKED", "3"] in rows
    assert ["FAILED", "0"] in rows
    by_name = {row[0]: row for row in rows if row}
    assert by_name["total"][:2] == ["total", "7"]
    # the 5 sagas not ended (parked, suspended): the engine that ran them has closed
    assert by_name["stranded"][:2] == ["stranded", "5"]
    assert by_name["outbox"][:2] == ["outbox", "0"]  # the messages waiting for the relay


def test_list_pages_with_the_cursor_it_prints(db: str) -> None:
    seen: list[str] = []
    args = ["list", "--limit", "3"]
    for _ in range(5):
        result = sagakit(*args, "--db", db)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        hint = lines[-1] if lines[-1].startswith("more sagas match") else None
        table = lines[1 : -2 if hint else -1]
        seen += [line.split()[0] for line in table]
        if hint is None:
            break
        command = shlex.split(hint.split("next page: ", 1)[1])
        assert command[:2] == ["sagakit", "list"]
        args = command[1:]
    # newest first, each saga once, and the last page says no more
    assert seen == list(reversed(saga_inputs(Path("x"))))
    assert hint is None

    pages: list[str] = []
    cursor: str | None = None
    while True:
        more = ["--cursor", cursor] if cursor else []
        page = json.loads(sagakit("list", "--db", db, "--limit", "4", "--json", *more).stdout)
        pages += [s["saga_id"] for s in page["sagas"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == seen
    bad = sagakit("list", "--db", db, "--cursor", "not-a-cursor")
    assert_clean_error(bad, "cursor 'not-a-cursor' is not one list_sagas gave out")


def test_list_filters_by_creation_time(db: str) -> None:
    created = {s["saga_id"]: s["created_at"] for s in show_all(db)}
    middle = created["t-napping"]
    after = sagakit("list", "--db", db, "--created-after", middle, "--json")
    assert {s["saga_id"] for s in json.loads(after.stdout)["sagas"]} == {
        "t-napping",
        "t-approval",
        "t-undone",
    }
    before = sagakit("list", "--db", db, "--created-before", middle, "--status", "parked")
    assert before.returncode == 0, before.stderr
    assert {line.split()[0] for line in before.stdout.splitlines()[1:-1]} == set(PARKED)
    recent = json.loads(sagakit("list", "--db", db, "--created-after", "1h", "--json").stdout)
    assert len(recent["sagas"]) == 7
    old = sagakit("list", "--db", db, "--created-before", "2d")
    assert old.returncode == 0, old.stderr
    assert old.stdout.startswith("no sagas with created before ")
    wrong = sagakit("list", "--db", db, "--created-after", "last tuesday")
    assert wrong.returncode == 2
    assert "is neither an ISO date/time" in wrong.stderr


def show_all(db: str) -> list[dict[str, Any]]:
    result = sagakit("list", "--db", db, "--json")
    assert result.returncode == 0, result.stderr
    sagas: list[dict[str, Any]] = json.loads(result.stdout)["sagas"]
    return sagas


def test_show_a_parked_saga_says_which_step_and_why(db: str) -> None:
    result = sagakit("show", "t-parked-1", "--db", db)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("t-parked-1  Transfer  PARKED")
    assert "parked    step 'Credit' (seq 1) ran out of retries after 3 attempts" in out
    assert "error     ConnectionError: ledger service unavailable" in out
    assert "sagakit retry|skip|compensate|cancel t-parked-1" in out


def test_show_a_suspended_saga_gives_its_wake_time_and_token(db: str) -> None:
    napping = show_json(db, "t-napping")
    wake = datetime.fromisoformat(napping["wake_at"])
    result = sagakit("show", "t-napping", "--db", db)
    assert result.returncode == 0, result.stderr
    assert "waiting   for a timer (saga.sleep)" in result.stdout
    assert f"wakes     {wake:%Y-%m-%d %H:%M:%S} UTC (in 59 min " in result.stdout
    assert f"token     {napping['wait_token']} (engine.notify)" in result.stdout

    approval = show_json(db, "t-approval")
    assert approval["wait_token"]
    result = sagakit("show", "t-approval", "--db", db)
    assert "waiting   for signal 'approval'" in result.stdout
    assert "wakes     when an event arrives (no timer)" in result.stdout
    assert f"token     {approval['wait_token']}" in result.stdout


# -- acting on one saga -------------------------------------------------------------------


def test_retry_leaves_an_audit_entry_with_reason_and_operator(db: str) -> None:
    result = sagakit(
        "retry", "t-parked-1", "--db", db, "--reason", "ledger is back", "--by", "alice"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "retried t-parked-1 (step 'Credit', seq 1): now RUNNING\n"
    saga = show_json(db, "t-parked-1")
    assert saga["status"] == "RUNNING"  # due now: the next worker takes it
    [audit] = saga["audit"]
    assert (audit["action"], audit["by"], audit["reason"]) == ("retry", "alice", "ledger is back")
    assert (audit["step"], audit["seq"]) == ("Credit", 1)
    shown = sagakit("show", "t-parked-1", "--db", db).stdout
    assert "operator actions" in shown
    assert "retry   alice  'Credit' (seq 1)  ledger is back" in shown


def test_by_defaults_to_the_os_user(db: str) -> None:
    result = sagakit("resume", "t-napping", "--db", db, env={"LOGNAME": "carol-ops"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "resumed t-napping: now SUSPENDED\n"
    [audit] = show_json(db, "t-napping")["audit"]
    assert audit["by"] == "carol-ops"
    assert audit["details"] == {"timers_ended": 1}


def test_a_refused_action_is_one_line_and_exit_1(db: str) -> None:
    result = sagakit("retry", "t-done", "--db", db)
    assert_clean_error(
        result,
        "cannot retry saga 't-done': it is COMPLETED",
        "PARKED, FAILED, COMPENSATED or SUSPENDED",
    )
    assert result.stdout == ""
    assert_clean_error(sagakit("resume", "nope", "--db", db), "no saga with id 'nope'")
    assert_clean_error(sagakit("compensate", "t-undone", "--db", db), "it is COMPENSATED")
    assert show_json(db, "t-done")["audit"] == []


def test_delete_removes_an_ended_saga_and_refuses_a_live_one(db: str) -> None:
    result = sagakit("delete", "t-done", "--db", db, "--reason", "kept long enough")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "deleted t-done (it was COMPLETED)\n"
    assert_clean_error(sagakit("show", "t-done", "--db", db), "no saga with id 't-done'")
    assert_clean_error(
        sagakit("delete", "t-parked-1", "--db", db), "cannot delete saga 't-parked-1'", "cancel"
    )
    assert show_json(db, "t-parked-1")["status"] == "PARKED"
    waited = sagakit("delete", "t-undone", "--wait", "--db", db)
    assert waited.returncode == 2 and "nothing to --wait for" in waited.stderr
    assert show_json(db, "t-undone")["status"] == "COMPENSATED"


def test_skip_checks_the_json_output_before_writing_anything(db: str) -> None:
    bad = sagakit("skip", "t-parked-2", "--output", "{credited: 5}", "--db", db)
    assert bad.returncode == 2
    assert "Invalid value for '--output': not JSON" in bad.stderr
    untouched = show_json(db, "t-parked-2")
    assert (untouched["status"], untouched["audit"]) == ("PARKED", [])

    result = sagakit(
        "skip",
        "t-parked-2",
        "--output",
        '{"credited": 5}',
        "--reason",
        "booked by hand",
        "--by",
        "dora",
        "--db",
        db,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "skipped t-parked-2 (step 'Credit', seq 1): now RUNNING\n"
    saga = show_json(db, "t-parked-2")
    credit = next(s for s in saga["steps"] if s["seq"] == 1)
    assert (credit["status"], credit["output"]) == ("completed", {"credited": 5})
    assert saga["audit"][0]["details"]["output"] == {"credited": 5}
    # the entry looks completed: the timeline says who did the step's work instead of the step
    shown = sagakit("show", "t-parked-2", "--db", db).stdout
    assert re.search(r"1\s+step\s+Credit\s+✓ completed.*\(skipped by dora\)", shown)


def test_cancel_requires_a_reason_and_shows_who_cancelled(db: str) -> None:
    missing = sagakit("cancel", "t-approval", "--db", db)
    assert missing.returncode == 2
    assert "Missing option '--reason'" in missing.stderr
    assert show_json(db, "t-approval")["status"] == "SUSPENDED"
    result = sagakit(
        "cancel", "t-approval", "--reason", "duplicate order", "--by", "bob", "--db", db
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "cancelled t-approval: now CANCELLED\n"
    shown = sagakit("show", "t-approval", "--db", db).stdout
    assert "cancelled by bob: duplicate order" in shown
    assert "— unfinished" in shown  # the wait it was cut off in


# -- acting on many -----------------------------------------------------------------------


def test_a_selection_is_only_counted_without_yes(db: str) -> None:
    result = sagakit("retry", "--status", "parked", "--db", db)
    assert_clean_error(
        result, "--status PARKED selects 3 sagas (t-parked-3, t-parked-2, t-parked-1)", "add --yes"
    )
    assert stats(db)["PARKED"] == 3  # nothing was done
    # without --status, a selection takes the statuses the action applies to
    result = sagakit("compensate", "--name", "Transfer", "--db", db)
    assert_clean_error(
        result, "--name Transfer selects 5 sagas (t-approval, t-napping, t-parked-3, …)"
    )
    result = sagakit("resume", "--name", "Nope", "--db", db, "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no sagas to resume: --name Nope\n"


def test_a_confirmed_selection_acts_on_each_saga_with_progress(db: str) -> None:
    result = sagakit("retry", "--status", "PARKED", "--yes", "--reason", "bulk", "--db", db)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [
        f"retried {saga_id} (step 'Credit', seq 1): now RUNNING" for saga_id in PARKED
    ]
    assert "retry: 3 sagas" in result.stderr  # the progress bar's label, off a terminal
    counts = stats(db)
    assert (counts["PARKED"], counts["RUNNING"]) == (0, 3)
    assert all(show_json(db, s)["audit"][0]["reason"] == "bulk" for s in PARKED)


def test_a_bulk_run_goes_on_after_a_refusal_and_exits_1(db: str) -> None:
    result = sagakit(
        "cancel", "t-parked-1", "t-done", "t-approval", "--reason", "cleanup", "--db", db
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "cancelled t-parked-1: now CANCELLED",
        "cancelled t-approval: now CANCELLED",
    ]
    assert "Error: cannot cancel saga 't-done': it is COMPLETED" in result.stderr
    assert "Error: 1 of 3 sagas refused to cancel (see above); 2 done" in result.stderr
    assert "Traceback" not in result.stderr


def test_targets_are_ids_or_a_selection(db: str) -> None:
    both = sagakit("retry", "t-parked-1", "--status", "PARKED", "--db", db)
    assert both.returncode == 2
    assert "not both" in both.stderr
    neither = sagakit("retry", "--db", db)
    assert neither.returncode == 2
    assert "name the sagas to retry" in neither.stderr


def test_every_command_refuses_a_missing_database_and_creates_none(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    commands = [
        ["list"],
        ["show", "x"],
        ["stats"],
        ["retry", "x"],
        ["skip", "x"],
        ["compensate", "x"],
        ["cancel", "x", "--reason", "r"],
        ["resume", "x"],
        ["delete", "x"],
        ["retry", "--status", "PARKED", "--yes"],
        ["dashboard"],
    ]
    for args in commands:
        assert_clean_error(sagakit(*args, "--db", str(missing)), "does not exist")
    assert_clean_error(sagakit("stats", cwd=tmp_path), "sagakit.db")  # the default file
    assert list(tmp_path.iterdir()) == []


def test_dashboard_help() -> None:
    result = sagakit("dashboard", "--help")
    assert result.returncode == 0, result.stderr
    for needle in ("--token", "SAGAKIT_DASHBOARD_TOKEN", "127.0.0.1", "8700", "--db"):
        assert needle in result.stdout


# -- following sagas through a real worker ------------------------------------------------


@pytest.mark.slow
def test_wait_follows_sagas_until_they_settle(db: str, flag: Path, worker: Any) -> None:
    worker(db)
    flag.touch()  # the ledger service is back: a retried Credit succeeds
    result = sagakit("retry", "t-parked-1", "--wait", "--timeout", "30", "--db", db)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "retried t-parked-1 (step 'Credit', seq 1): now RUNNING"
    assert lines[-1].startswith("t-parked-1  COMPLETED  after ")
    assert show_json(db, "t-parked-1")["output"] == {"debited": 10, "credited": 10}

    # a timer ended early by resume: the saga goes on at once, not in an hour
    result = sagakit("resume", "t-napping", "--wait", "--timeout", "30", "--db", db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("t-napping  COMPLETED  after ")
    # roll back a saga waiting for a signal
    result = sagakit("compensate", "t-approval", "--wait", "--timeout", "30", "--db", db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("t-approval  COMPENSATED  after ")
    shown = sagakit("show", "t-approval", "--db", db).stdout
    assert "cause     OperatorRollback" in shown
    assert re.search(r"2\s+compensation\s+Debit\s+✓ completed", shown)

    flag.unlink()  # down again: the retried step parks once more, and --wait says so
    result = sagakit("retry", "t-parked-2", "--wait", "--timeout", "30", "--db", db)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith("t-parked-2  PARKED  at step 'Credit'")
    assert "Error: not through: t-parked-2 (PARKED)" in result.stderr


@pytest.mark.slow
def test_wait_gives_up_after_its_timeout_when_no_worker_runs(db: str) -> None:
    began = time.monotonic()
    result = sagakit("retry", "t-parked-3", "--wait", "--timeout", "1", "--db", db)
    assert 1 <= time.monotonic() - began < 20
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith("t-parked-3  RUNNING")
    assert "Error: not settled after 1.00 s: t-parked-3 (RUNNING)" in result.stderr


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.mark.slow
def test_operator_commands_on_postgresql(
    pg_url: str, flag: Path, tmp_path: Path, worker: Any
) -> None:
    asyncio.run(prepare(pg_url, saga_inputs(flag)))
    counts = stats(pg_url)
    assert (counts["PARKED"], counts["SUSPENDED"], counts["COMPLETED"]) == (3, 2, 1)
    listed = json.loads(sagakit("list", "--db", pg_url, "--status", "PARKED", "--json").stdout)
    assert {s["saga_id"] for s in listed["sagas"]} == set(PARKED)

    cancelled = sagakit("cancel", "--status", "SUSPENDED", "--yes", "--reason", "r", "--db", pg_url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert sorted(cancelled.stdout.splitlines()) == [
        "cancelled t-approval: now CANCELLED",
        "cancelled t-napping: now CANCELLED",
    ]

    worker(pg_url)
    flag.touch()
    result = sagakit(
        "retry", "t-parked-1", "--by", "pg-op", "--wait", "--timeout", "30", "--db", pg_url
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("t-parked-1  COMPLETED")
    shown = sagakit("show", "t-parked-1", "--db", pg_url)
    assert shown.returncode == 0, shown.stderr
    assert "retry   pg-op  'Credit' (seq 1)" in shown.stdout
    assert stats(pg_url)["CANCELLED"] == 2
