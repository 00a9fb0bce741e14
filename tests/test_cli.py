"""Acceptance tests of the ``sagakit`` command (run as a real process) and unit tests of the
timeline rendering it uses."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest

from sagakit import (
    CompensationFailedError,
    Engine,
    RetryPolicy,
    SagaCompensatedError,
    SagaContext,
    SagaSnapshot,
    SagaStatus,
    StepSnapshot,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)
from sagakit.admin import AuditEntry
from sagakit.cli import db_url
from sagakit.cli.common import parse_moment, safe_url
from sagakit.cli.read import next_page_command
from sagakit.timeline import (
    format_duration,
    render_saga_table,
    render_status_counts,
    render_status_line,
    render_timeline,
    snapshot_to_dict,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def sagakit(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real command in a fresh interpreter, as a user would (``env`` adds to the
    environment)."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sagakit.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr


# -- a database prepared in-process -------------------------------------------------------


async def _undo(data: Any) -> None:
    return None


async def _undo_breaks(data: Any) -> None:
    raise TerminalError("warehouse API is gone")


_flaky_calls: dict[str, int] = {}


@saga_step("Book", compensate=_undo)
async def book(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    return {"booking": f"b-{inp['n']}"}


@saga_step_strict(
    "Hold",
    compensate=_undo_breaks,
    retry=RetryPolicy(max_attempts=3, initial_interval=timedelta(0)),
)
async def hold(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    _flaky_calls[ctx.saga_id] = _flaky_calls.get(ctx.saga_id, 0) + 1
    if _flaky_calls[ctx.saga_id] == 1:
        raise ConnectionError("flaky network")
    return {"hold": "h"}


@saga_step("Pay")
async def pay(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    if inp["fail"]:
        raise TerminalError("card declined")
    return {"paid": True}


@saga_workflow("Trip")
async def trip(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    booking: dict[str, Any] = await book(saga, inp)
    if inp.get("hold"):
        await hold(saga, inp)
    await pay(saga, inp)
    return booking


async def _prepare(url: str) -> None:
    async with Engine(url) as engine:
        engine.register(trip)
        await engine.run(trip, {"n": 1, "fail": False}, saga_id="trip-ok")
        with pytest.raises(SagaCompensatedError):
            await engine.run(trip, {"n": 2, "fail": True}, saga_id="trip-undone")
        with pytest.raises(CompensationFailedError):
            await engine.run(trip, {"n": 3, "fail": True, "hold": True}, saga_id="trip-broken")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "sagas.db"
    asyncio.run(_prepare(f"sqlite:///{path}"))
    return path


# -- the demo -----------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_shows_three_sagas_and_leaves_nothing_behind(tmp_path: Path) -> None:
    result = sagakit("demo", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "order-1001  Checkout  COMPLETED" in out
    assert "order-1002  Checkout  COMPENSATED" in out
    assert "order-1003  Checkout  COMPLETED" in out
    # the rollback: compensations journaled newest first
    undo = out.index("compensation  ReserveStock")
    assert undo < out.index("compensation  CreateOrder")
    assert "2 attempts" in out  # the flaky inventory call was retried
    assert "card declined" in out
    # the crash: a killed child, a recovery, journaled steps not run again
    assert "killing it with" in out
    assert "recovered and COMPLETED" in out
    assert re.search(r"CreateOrder\s+ran 1 time ", out)
    assert re.search(r"ReserveStock\s+ran 1 time ", out)
    folder = re.search(r"Removed (\S+) ", out)
    assert folder is not None
    assert not Path(folder.group(1)).exists()
    assert list(tmp_path.iterdir()) == []  # nothing written to the working folder


@pytest.mark.slow
def test_demo_keep_leaves_a_database_list_and_show_can_read(tmp_path: Path) -> None:
    result = sagakit("demo", "--keep", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    found = re.search(r"The demo folder is kept: (\S+)", result.stdout)
    assert found is not None
    folder = Path(found.group(1))
    try:
        listed = sagakit("list", "--db", str(folder / "demo.db"), "--json")
        assert listed.returncode == 0, listed.stderr
        statuses = {s["saga_id"]: s["status"] for s in json.loads(listed.stdout)["sagas"]}
        assert statuses == {
            "order-1001": "COMPLETED",
            "order-1002": "COMPENSATED",
            "order-1003": "COMPLETED",
        }
        shown = sagakit("show", "order-1003", "--db", str(folder / "demo.db"))
        assert shown.returncode == 0, shown.stderr
        assert "ChargeCard" in shown.stdout
    finally:
        shutil.rmtree(folder)


def test_console_script_is_installed() -> None:
    script = shutil.which("sagakit", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the sagakit console script is not installed beside this interpreter")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "sagakit" in result.stdout


# -- list and show ------------------------------------------------------------------------


def test_list_prints_a_table_of_sagas(db: Path) -> None:
    result = sagakit("list", "--db", f"sqlite:///{db}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SAGA", "ID", "WORKFLOW", "STATUS", "CREATED", "UPDATED"]
    rows = {line.split()[0]: line.split()[2] for line in lines[1:-1]}
    assert rows == {"trip-ok": "COMPLETED", "trip-undone": "COMPENSATED", "trip-broken": "FAILED"}
    assert lines[-1] == "3 sagas"


def test_list_filters_by_status_name_and_limit(db: Path) -> None:
    result = sagakit("list", "--db", str(db), "--status", "compensated")  # a bare path works too
    assert result.returncode == 0, result.stderr
    assert "trip-undone" in result.stdout
    assert "trip-ok" not in result.stdout
    result = sagakit("list", "--db", str(db), "--name", "Nope")
    assert result.returncode == 0
    assert "no sagas with workflow Nope" in result.stdout
    result = sagakit("list", "--db", str(db), "--limit", "1", "--json")
    assert len(json.loads(result.stdout)["sagas"]) == 1
    result = sagakit("list", "--db", str(db), "--status", "BOGUS")
    assert result.returncode == 2  # a usage error, reported by click
    assert "Traceback" not in result.stderr


def test_list_json_parses(db: Path) -> None:
    result = sagakit("list", "--db", str(db), "--json")
    assert result.returncode == 0, result.stderr
    page = json.loads(result.stdout)
    assert page["next_cursor"] is None  # everything fits on one page
    sagas = page["sagas"]
    assert {s["saga_id"] for s in sagas} == {"trip-ok", "trip-undone", "trip-broken"}
    first = sagas[0]
    assert "steps" not in first  # a listing carries no journals
    assert "audit" not in first
    datetime.fromisoformat(first["created_at"])


def test_show_prints_the_timeline_of_a_compensated_saga(db: Path) -> None:
    result = sagakit("show", "trip-undone", "--db", str(db))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("trip-undone  Trip  COMPENSATED")
    assert "cause     TerminalError in step 'Pay' (seq 1): card declined" in out
    assert "rollback  complete (1 compensation, in reverse order)" in out
    assert re.search(r"1\s+step\s+Pay\s+✗ failed\s+1 attempt .* TerminalError: card declined", out)
    assert re.search(r"2\s+compensation\s+Book\s+✓ completed", out)


def test_show_prints_every_compensation_failure_of_a_failed_saga(db: Path) -> None:
    result = sagakit("show", "trip-broken", "--db", str(db))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "FAILED" in out.splitlines()[0]
    assert "cause     TerminalError in step 'Pay'" in out
    assert "rollback  incomplete" in out
    assert "TerminalError in step 'Hold' (seq 3): warehouse API is gone" in out
    assert re.search(r"1\s+step\s+Hold\s+✓ completed\s+2 attempts", out)


def test_show_json_parses(db: Path) -> None:
    result = sagakit("show", "trip-ok", "--db", str(db), "--json")
    assert result.returncode == 0, result.stderr
    saga = json.loads(result.stdout)
    assert saga["status"] == "COMPLETED"
    assert saga["output"] == {"booking": "b-1"}
    assert [(s["seq"], s["kind"], s["name"]) for s in saga["steps"]] == [
        (0, "step", "Book"),
        (1, "step", "Pay"),
    ]
    datetime.fromisoformat(saga["steps"][0]["started_at"])


def test_show_unknown_saga_fails_with_a_clear_message(db: Path) -> None:
    result = sagakit("show", "no-such-saga", "--db", str(db))
    assert_clean_error(result, "no saga with id 'no-such-saga'")


def test_missing_database_is_refused_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for args in (["list"], ["show", "x"]):
        result = sagakit(*args, "--db", str(missing))
        assert_clean_error(result, "does not exist")
    result = sagakit("list", cwd=tmp_path)  # the default, ./sagakit.db
    assert_clean_error(result, "sagakit.db")
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_saga_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    other.write_bytes(b"")
    assert_clean_error(sagakit("list", "--db", str(other)), "not a sagakit database")
    assert other.read_bytes() == b""  # untouched: no tables added
    assert_clean_error(sagakit("list", "--db", "sqlite://nope.db"), "not a SQLite URL")


def test_db_url_accepts_urls_and_bare_paths() -> None:
    assert db_url("sqlite:///x.db") == "sqlite:///x.db"
    assert db_url("./x.db") == "sqlite:///./x.db"
    assert db_url("/data/x.db") == "sqlite:////data/x.db"
    assert db_url("memory://") == "memory://"


# -- timeline rendering (pure) ------------------------------------------------------------

T0 = datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC)


def entry(
    seq: int,
    name: str,
    *,
    kind: str = "step",
    status: str = "completed",
    attempts: int = 1,
    start_ms: float = 0,
    ms: float = 10,
    error: dict[str, Any] | None = None,
    output: Any = None,
) -> StepSnapshot:
    started = T0 + timedelta(milliseconds=start_ms)
    return StepSnapshot(
        seq=seq,
        name=name,
        kind=kind,
        status=status,
        attempts=attempts,
        output=output,
        error=error,
        started_at=started,
        finished_at=started + timedelta(milliseconds=ms),
    )


def saga(status: SagaStatus, steps: list[StepSnapshot], **fields: Any) -> SagaSnapshot:
    base = SagaSnapshot(
        saga_id="s-1",
        name="Checkout",
        status=status,
        input={"amount": 40},
        output=None,
        error=None,
        created_at=T0,
        updated_at=T0 + timedelta(milliseconds=1500),
        steps=tuple(steps),
    )
    return replace(base, **fields)


def test_format_duration() -> None:
    assert format_duration(None) == "?"
    assert format_duration(timedelta(0)) == "0 ms"
    assert format_duration(timedelta(microseconds=400)) == "0.4 ms"
    assert format_duration(timedelta(milliseconds=205)) == "205 ms"
    assert format_duration(timedelta(seconds=2.314)) == "2.31 s"
    assert format_duration(timedelta(minutes=3, seconds=4)) == "3 min 04 s"
    assert format_duration(timedelta(hours=2, minutes=3)) == "2 h 03 min"
    assert format_duration(timedelta(seconds=-1)) == "0 ms"


def test_timeline_of_a_completed_saga() -> None:
    snapshot = saga(
        SagaStatus.COMPLETED,
        [
            entry(1, "ReserveStock", attempts=2, start_ms=5, ms=205),
            entry(0, "now", kind="now", output="2025-01-31T12:00:00+00:00"),
        ],
        output={"order_id": "o-1"},
    )
    text = render_timeline(snapshot)
    lines = text.splitlines()
    assert lines[0] == "s-1  Checkout  COMPLETED"
    assert "created   2025-01-31 12:00:00.000 UTC" in text
    assert "duration  1.50 s" in text
    assert 'output    {"order_id": "o-1"}' in text
    journal = lines[lines.index("") + 1 :]
    assert journal[0].split() == ["seq", "kind", "name", "status", "attempts", "duration", "at"]
    assert journal[1].split()[:4] == ["0", "now", "now", "✓"]  # in seq order
    assert journal[1].endswith('= "2025-01-31T12:00:00+00:00"')
    assert journal[2].split() == [
        "1",
        "step",
        "ReserveStock",
        "✓",
        "completed",
        "2",
        "attempts",
        "205",
        "ms",
        "+5.0",
        "ms",
    ]
    assert ANSI.search(text) is None


def test_timeline_of_a_failed_saga_shows_the_cause_and_every_compensation_failure() -> None:
    cause = {"type": "TerminalError", "message": "card declined", "step": "Charge", "seq": 2}
    failures = [
        {"type": "TimeoutError", "message": "gave up", "step": "Reserve", "seq": 3},
        {"type": "TerminalError", "message": "gone", "step": "Create", "seq": 4},
    ]
    error = {"kind": "compensation_failed", "cause": cause, "compensation_failures": failures}
    snapshot = saga(
        SagaStatus.FAILED,
        [
            entry(0, "Create"),
            entry(1, "Reserve"),
            entry(2, "Charge", status="failed", error=cause),
            entry(
                3, "Reserve", kind="compensation", status="failed", attempts=3, error=failures[0]
            ),
            entry(4, "Create", kind="compensation", status="failed", error=failures[1]),
        ],
        error=error,
    )
    text = render_timeline(snapshot)
    assert "cause     TerminalError in step 'Charge' (seq 2): card declined" in text
    assert "rollback  incomplete: 2 compensations failed" in text
    assert "✗ TimeoutError in step 'Reserve' (seq 3): gave up" in text
    assert "✗ TerminalError in step 'Create' (seq 4): gone" in text
    assert re.search(
        r"3\s+compensation\s+Reserve\s+✗ failed\s+3 attempts.*TimeoutError: gave up", text
    )


def test_timeline_of_a_non_deterministic_saga() -> None:
    error = {"kind": "non_determinism", "message": "at seq 1 the journal holds step 'A'"}
    text = render_timeline(saga(SagaStatus.FAILED, [entry(0, "A")], error=error))
    assert "error     NonDeterminismError: at seq 1 the journal holds step 'A'" in text


def test_timeline_of_a_saga_in_progress() -> None:
    snapshot = saga(
        SagaStatus.RUNNING,
        [],
        owner="host:42:abcd",
        lease_expires_at=T0 + timedelta(seconds=30),
    )
    text = render_timeline(snapshot)
    assert "updated   +1.50 s (saga still in progress)" in text
    assert "owner     host:42:abcd (lease until 2025-01-31 12:00:30 UTC)" in text
    assert "(no journal entries yet)" in text


def test_timeline_colour_and_ascii() -> None:
    snapshot = saga(SagaStatus.COMPENSATED, [entry(0, "A", status="failed", error={"type": "E"})])
    coloured = render_timeline(snapshot, color=True)
    assert ANSI.search(coloured)
    assert ANSI.sub("", coloured) == render_timeline(snapshot)  # colour never moves a column
    plain = render_timeline(replace(snapshot, input={"long": "x" * 200}), unicode=False)
    assert plain.isascii()
    assert "x failed" in plain
    assert re.search(r'input +\{"long": "x+\.\.\.$', plain, re.M)  # a long input is cut short


def test_saga_table() -> None:
    rows = [
        saga(SagaStatus.COMPLETED, []),
        saga(SagaStatus.COMPENSATED, [], saga_id="another-saga", name="Refund"),
    ]
    text = render_saga_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["SAGA", "ID", "WORKFLOW", "STATUS", "CREATED", "UPDATED"]
    assert lines[1].split()[:3] == ["s-1", "Checkout", "COMPLETED"]
    assert lines[2].split()[:3] == ["another-saga", "Refund", "COMPENSATED"]
    # columns line up
    assert lines[1].index("COMPLETED") == lines[2].index("COMPENSATED") == lines[0].index("STATUS")
    assert lines[-1] == "2 sagas"
    assert "2025-01-31 12:00:01 UTC" in lines[1]
    assert render_saga_table([]) == "no sagas"


def test_snapshot_to_dict_is_json() -> None:
    snapshot = saga(SagaStatus.COMPLETED, [entry(0, "A")], output={"x": 1})
    data = json.loads(json.dumps(snapshot_to_dict(snapshot)))
    assert data["status"] == "COMPLETED"
    assert data["created_at"] == "2025-01-31T12:00:00+00:00"
    assert data["steps"][0]["finished_at"] == "2025-01-31T12:00:00.010000+00:00"
    assert "steps" not in snapshot_to_dict(snapshot, with_steps=False)


def test_timeline_of_a_parked_saga_names_the_step_and_why() -> None:
    cause = {"type": "ConnectionError", "message": "ledger down", "step": "Credit", "seq": 1}
    snapshot = saga(
        SagaStatus.PARKED,
        [entry(0, "Debit"), entry(1, "Credit", status="failed", attempts=3, error=cause)],
        error={"kind": "parked", "step": "Credit", "seq": 1, "cause": cause},
    )
    text = render_timeline(snapshot, now=T0)
    assert "updated   +1.50 s (parked, waiting for an operator)" in text
    assert "parked    step 'Credit' (seq 1) ran out of retries after 3 attempts" in text
    assert "error     ConnectionError: ledger down" in text
    assert "sagakit retry|skip|compensate|cancel s-1" in text
    assert "the next entry appears" not in text  # nothing moves until an operator acts


def test_timeline_of_a_suspended_saga_gives_its_wake_time_and_token() -> None:
    wake = T0 + timedelta(minutes=5)
    sleeping = entry(
        1, "sleep", kind="sleep", status="running", output={"token": "1-ab", "until": 0}
    )
    snapshot = saga(
        SagaStatus.SUSPENDED,
        [entry(0, "Debit"), replace(sleeping, output={"token": "1-ab", "until": wake.timestamp()})],
        wake_at=wake,
        wait_token="1-ab",
    )
    text = render_timeline(snapshot, now=T0 + timedelta(minutes=2))
    assert "waiting   for a timer (saga.sleep)" in text
    assert "wakes     2025-01-31 12:05:00 UTC (in 3 min 00 s)" in text
    assert "token     1-ab" in text
    assert re.search(
        r"1\s+sleep\s+sleep\s+… waiting\s+\+0 ms\s+token 1-ab, wakes 2025-01-31 12:05", text
    )

    signal = entry(1, "approval", kind="signal", status="running", output={"token": "1-cd"})
    waiting = saga(SagaStatus.SUSPENDED, [signal], wait_token="1-cd")
    text = render_timeline(waiting, now=T0)
    assert "waiting   for signal 'approval'" in text
    assert "wakes     when an event arrives (no timer)" in text
    assert (
        render_timeline(replace(waiting, wake_at=T0), now=T0 + timedelta(seconds=1)).count(
            "(due now)"
        )
        == 1
    )


def test_timeline_of_a_cancelled_saga_and_its_audit_trail() -> None:
    signal = entry(1, "approval", kind="signal", status="running", output={"token": "1-cd"})
    audit = (
        AuditEntry("retry", T0 + timedelta(seconds=1), "fixed", "alice", "Credit", 1, {}),
        AuditEntry("cancel", T0 + timedelta(seconds=2), "duplicate", "bob", None, None, {}),
    )
    snapshot = saga(
        SagaStatus.CANCELLED,
        [entry(0, "Debit"), signal],
        error={"kind": "cancelled", "reason": "duplicate", "by": "bob"},
        audit=audit,
    )
    text = render_timeline(snapshot)
    assert "cancelled by bob: duplicate" in text
    # a wait the cancel cut short is not "waiting" any more
    assert re.search(r"1\s+signal\s+approval\s+— unfinished", text)
    assert "token" not in text
    lines = text.splitlines()
    actions = lines[lines.index("  operator actions") + 1 :]
    assert actions[0].split() == ["at", "action", "by", "step", "reason"]
    assert actions[1].split()[3:] == ["retry", "alice", "'Credit'", "(seq", "1)", "fixed"]
    assert actions[2].split()[3:] == ["cancel", "bob", "duplicate"]


def test_status_counts_table() -> None:
    counts = {"PENDING": 0, "PARKED": 12, "COMPLETED": 1040}
    lines = render_status_counts(counts).splitlines()
    assert lines[0].split() == ["STATUS", "SAGAS"]
    assert [line.split() for line in lines[1:]] == [
        ["PENDING", "0"],
        ["PARKED", "12"],
        ["COMPLETED", "1040"],
        ["total", "1052"],
    ]
    assert len({len(line) for line in lines}) == 1  # the counts line up on the right
    coloured = render_status_counts(counts, color=True)
    assert ANSI.sub("", coloured) == render_status_counts(counts)


def test_status_line_says_where_a_saga_is() -> None:
    cause = {"type": "ConnectionError", "message": "ledger down", "step": "Credit", "seq": 1}
    parked = saga(
        SagaStatus.PARKED,
        [entry(1, "Credit", status="failed", error=cause)],
        error={"kind": "parked", "cause": cause},
    )
    assert (
        render_status_line(parked) == "s-1  PARKED  at step 'Credit': ConnectionError: ledger down"
    )
    running = saga(SagaStatus.RUNNING, [entry(0, "Debit")])
    now = T0 + timedelta(seconds=2)
    assert render_status_line(running, now=now) == "s-1  RUNNING  last step 'Debit' ✓  +2.00 s"
    pending = saga(SagaStatus.PENDING, [])
    assert "(waiting for a worker to take it)" in render_status_line(pending, now=now)
    done = saga(SagaStatus.COMPLETED, [entry(0, "Debit")])
    assert render_status_line(done) == "s-1  COMPLETED  after 1.50 s"


def test_moments_safe_urls_and_the_next_page_command() -> None:
    before = datetime.now(UTC)
    an_hour_ago = parse_moment(None, None, "1h")
    assert an_hour_ago is not None
    assert abs((before - an_hour_ago) - timedelta(hours=1)) < timedelta(seconds=5)
    assert parse_moment(None, None, "2025-01-31") == datetime(2025, 1, 31, tzinfo=UTC)
    offset = parse_moment(None, None, "2025-01-31T14:00+02:00")
    assert offset == datetime(2025, 1, 31, 12, tzinfo=UTC)
    with pytest.raises(click.BadParameter, match="'yesterday' is neither an ISO date/time"):
        parse_moment(None, None, "yesterday")

    assert safe_url("postgresql://ops:s3cret@db:5432/sagas") == "postgresql://ops:***@db:5432/sagas"
    assert safe_url("sqlite:///x.db") == "sqlite:///x.db"

    command = next_page_command("PARKED", "Pay Out", T0, None, 20, "abc")
    assert shlex.split(command) == [
        "sagakit", "list", "--status", "PARKED", "--name", "Pay Out",
        "--created-after", "2025-01-31T12:00:00Z", "--limit", "20", "--cursor", "abc",
    ]  # fmt: skip
