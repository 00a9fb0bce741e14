"""The replay check before a deploy: ``sagakit export``, ``sagakit.testing.replay`` and
``sagakit replay``, on histories recorded by real sagas on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import SagaContext, SagaStatus, create_saga_workflow
from sagakit.history import HISTORY_FORMAT, history_to_json, load_history, read_history
from sagakit.stores import open_store
from sagakit.testing import ReplayError, replay, replay_async

from . import replay_app
from .conftest import engine_with, make_store_url
from .waiting import WAIT, suspended

ROOT = Path(__file__).resolve().parent.parent
KINDS = ["sqlite", "postgres"]


@pytest.fixture(params=KINDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_store_url(request.param, tmp_path, request, shared=True)


@pytest.fixture(autouse=True)
def _empty_ledger() -> None:
    replay_app.LEDGER.clear()


def sagakit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sagakit.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        env=env,
        timeout=120,
    )


async def record(url: str, *, approve: bool = False, decline: bool = False) -> str:
    """Run a Checkout saga to its wait (or, with ``approve``, to its end) and a Refund saga
    to its wait; return the Checkout saga's id."""
    saga_id = "declined" if decline else ("approved" if approve else "waiting")
    engine = engine_with(url, *replay_app.current)
    async with engine:
        handle = await engine.start(
            replay_app.checkout, {"order": saga_id, "decline": decline}, saga_id=saga_id
        )
        if decline:
            with pytest.raises(Exception, match="card declined"):
                await handle.result(timeout=WAIT)
        else:
            await suspended(engine, saga_id)
            if approve:
                await engine.signal(saga_id, "approve", {"by": "ops"})
                await handle.result(timeout=WAIT)
        await engine.start(replay_app.refund, {"order": "r1"}, saga_id=f"refund-{saga_id}")
        await suspended(engine, f"refund-{saga_id}")
    return saga_id


async def exported(url: str, saga_id: str) -> dict[str, Any]:
    store = open_store(url)
    await store.open()
    try:
        return history_to_json(await read_history(store, saga_id))
    finally:
        await store.close()


# -- sagakit.testing.replay ------------------------------------------------------------------


async def test_an_exported_history_replays_clean_against_the_same_code(db_url: str) -> None:
    saga_id = await record(db_url)
    replay_app.LEDGER.clear()
    result = sagakit("export", saga_id, "--db", db_url)
    assert result.returncode == 0, result.stderr
    history = json.loads(result.stdout)
    assert history["format"] == HISTORY_FORMAT
    assert history["saga"]["id"] == saga_id and history["saga"]["name"] == "Checkout"
    assert history["saga"]["status"] == SagaStatus.SUSPENDED
    assert history["saga"]["input"] == {"order": saga_id, "decline": False}
    assert [(e["seq"], e["kind"], e["name"]) for e in history["journal"]] == [
        (0, "step", "Reserve"),
        (1, "step", "Charge"),
        (2, "signal", "approve"),
    ]
    assert history["journal"][0]["output"] == {"reservation": f"r-{saga_id}"}

    outcome = await replay_async(history, replay_app.checkout)
    assert outcome.replayed == 3
    # the wait began but no signal came: that is where a worker would go on
    assert outcome.new_work is not None and outcome.status is None
    assert (outcome.new_work.seq, outcome.new_work.kind, outcome.new_work.name) == (
        2,
        "signal",
        "approve",
    )
    assert replay_app.LEDGER == []  # no step body ran


async def test_a_changed_step_order_is_reported_at_the_first_differing_entry(db_url: str) -> None:
    saga_id = await record(db_url)
    history = await exported(db_url, saga_id)
    replay_app.LEDGER.clear()
    with pytest.raises(ReplayError) as caught:
        await replay_async(history, replay_app.checkout_reordered)
    error = caught.value
    assert (error.saga_id, error.seq) == (saga_id, 0)
    assert error.recorded == "step 'Reserve'" and error.replayed == "step 'Charge'"
    assert "at seq 0" in str(error)
    assert replay_app.LEDGER == []


async def test_a_step_appended_after_the_recorded_ones_is_compatible(db_url: str) -> None:
    saga_id = await record(db_url, approve=True)
    history = await exported(db_url, saga_id)
    assert history["saga"]["status"] == SagaStatus.COMPLETED
    assert history["events"][0]["payload"] == {"by": "ops"}
    replay_app.LEDGER.clear()
    same = await replay_async(history, replay_app.checkout)
    assert (same.status, same.new_work, same.replayed) == ("COMPLETED", None, 4)
    more = await replay_async(history, replay_app.checkout_appended)
    assert more.status is None and more.new_work is not None
    assert (more.new_work.seq, more.new_work.name, more.new_work.unfinished) == (4, "Notify", None)
    assert replay_app.LEDGER == []


async def test_a_rolled_back_history_replays_its_compensations_as_recorded(db_url: str) -> None:
    saga_id = await record(db_url, decline=True)
    history = await exported(db_url, saga_id)
    assert history["saga"]["status"] == SagaStatus.COMPENSATED
    kinds = [(e["kind"], e["name"], e["status"]) for e in history["journal"]]
    assert kinds == [
        ("step", "Reserve", "completed"),
        ("step", "Charge", "failed"),
        ("compensation", "Charge", "completed"),  # a hybrid step is undone when it fails
        ("compensation", "Reserve", "completed"),
    ]
    replay_app.LEDGER.clear()
    result = await replay_async(history, replay_app.checkout)
    assert (result.status, result.new_work, result.replayed) == ("COMPENSATED", None, 4)
    assert replay_app.LEDGER == []  # neither a step nor the compensation ran again
    with pytest.raises(ReplayError) as caught:
        await replay_async(history, replay_app.checkout_reordered)
    assert caught.value.seq == 0


def test_replay_reads_a_history_file_from_a_plain_test(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    saga_id = asyncio.run(record(url, approve=True))
    path = tmp_path / "history.json"
    path.write_text(json.dumps(asyncio.run(exported(url, saga_id))))
    replay_app.LEDGER.clear()
    assert replay(path, replay_app.checkout).status == "COMPLETED"
    assert replay(str(path), replay_app.checkout).status == "COMPLETED"
    assert replay(path.read_text(), replay_app.checkout).status == "COMPLETED"
    with pytest.raises(ReplayError, match="at seq 0"):
        replay(path, replay_app.checkout_reordered)
    assert replay_app.LEDGER == []


def test_a_history_keeps_null_apart_from_no_value() -> None:
    history = {
        "format": HISTORY_FORMAT,
        "saga": {"id": "s", "name": "Checkout", "status": "RUNNING", "input": {"order": "s"}},
        "journal": [
            {"seq": 0, "kind": "step", "name": "Reserve", "status": "completed",
             "output": {"reservation": "r-s"}, "compensation": None},
            {"seq": 1, "kind": "step", "name": "Charge", "status": "completed",
             "output": {"payment": "p-s"}},
        ],
        "events": [],
    }  # fmt: skip
    loaded = load_history(history)
    assert loaded.journal[0].compensation == "null"  # "nothing to compensate"
    assert loaded.journal[1].compensation is None  # "compensate with the input"
    assert history_to_json(loaded)["journal"][0]["compensation"] is None
    assert "compensation" not in history_to_json(loaded)["journal"][1]
    with pytest.raises(Exception, match="not a sagakit history"):
        load_history({"format": "other/1"})


class Order(BaseModel):
    order: str
    amount: int  # a field the recorded sagas' input does not have


async def _typed_checkout(saga: SagaContext, inp: Order) -> None:
    return None


async def test_an_input_the_code_no_longer_accepts_diverges() -> None:
    typed = create_saga_workflow("Checkout", _typed_checkout)
    history = {
        "format": HISTORY_FORMAT,
        "saga": {"id": "s", "name": "Checkout", "status": "RUNNING", "input": {"order": "s"}},
        "journal": [],
        "events": [],
    }
    with pytest.raises(ReplayError, match="amount") as caught:
        await replay_async(history, typed)
    assert caught.value.seq is None


# -- the sagakit command ---------------------------------------------------------------------


def test_the_replay_command_reports_the_diverging_saga_and_exits_1(db_url: str) -> None:
    asyncio.run(record(db_url))
    before = asyncio.run(exported(db_url, "waiting"))

    diverging = sagakit("replay", "--app", "tests.replay_app:next_release", "--db", db_url)
    assert diverging.returncode == 1, diverging.stderr
    lines = diverging.stdout.splitlines()
    assert lines[0] == (
        "DIVERGES  waiting (Checkout, SUSPENDED): seq 0: the journal has step 'Reserve', "
        "the code does step 'Charge'"
    )
    assert lines[-1].endswith(": 1 replay, 1 diverge")
    assert "replayed 2 saga(s) of Checkout, Refund" in lines[-1]
    assert len(lines) == 2

    clean = sagakit("replay", "--app", "tests.replay_app:current", "--db", db_url, "--ok")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert sorted(clean.stdout.splitlines()[:2]) == [
        "ok        refund-waiting (Refund, SUSPENDED)",
        "ok        waiting (Checkout, SUSPENDED)",
    ]
    assert clean.stdout.splitlines()[-1].endswith(": 2 replay, 0 diverge")

    only_refund = sagakit(
        "replay", "--app", "tests.replay_app:next_release", "--db", db_url, "--workflow", "Refund"
    )
    assert only_refund.returncode == 0, only_refund.stdout
    assert "replayed 1 saga(s) of Refund" in only_refund.stdout

    # read-only: the recorded history is as it was
    assert asyncio.run(exported(db_url, "waiting")) == before


def test_the_replay_command_selects_ended_sagas_only_when_asked(db_url: str) -> None:
    asyncio.run(record(db_url, approve=True))
    default = sagakit("replay", "--app", "tests.replay_app:next_release", "--db", db_url)
    assert default.returncode == 0, default.stdout  # the completed saga is not looked at
    assert "replayed 1 saga(s)" in default.stdout
    everything = sagakit(
        "replay", "--app", "tests.replay_app:next_release", "--db", db_url, "--all"
    )
    assert everything.returncode == 1
    assert "DIVERGES  approved (Checkout, COMPLETED): seq 0" in everything.stdout
    by_status = sagakit(
        "replay", "--app", "tests.replay_app:appended", "--db", db_url,
        "--status", "completed", "--since", "1h", "--limit", "5",
    )  # fmt: skip
    assert by_status.returncode == 0, by_status.stdout
    assert "replayed 1 saga(s)" in by_status.stdout
    future = sagakit(
        "replay", "--app", "tests.replay_app:next_release", "--db", db_url,
        "--all", "--since", "2999-01-01",
    )  # fmt: skip
    assert future.returncode == 0 and "replayed 0 saga(s)" in future.stdout


def test_export_of_an_unknown_saga_and_a_bad_app_fail_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    asyncio.run(record(url))
    missing = sagakit("export", "nope", "--db", url)
    assert missing.returncode == 1 and "no saga with id 'nope'" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = sagakit("replay", "--app", "tests.replay_app:nothing", "--db", url)
    assert bad.returncode == 1 and "has no attribute 'nothing'" in bad.stderr
    unknown = sagakit("replay", "--app", "tests.replay_app:current", "--db", url, "--workflow", "X")
    assert unknown.returncode == 1 and "not a workflow of" in unknown.stderr
