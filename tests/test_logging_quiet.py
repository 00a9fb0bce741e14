"""A library stays quiet until the application configures logging (issue 18): a user's program
whose sagas fail for good prints nothing on stderr, while the ``sagakit`` command, which is an
application, keeps logging what it logged before. Each program runs in a fresh interpreter, so
that no handler of pytest's is in the way."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: a user's program: one saga rolls back (a WARNING record), one is left FAILED because its
#: compensation fails too (an ERROR record); the first argument says how logging is set up
PROGRAM = """
import asyncio
import logging
import sys
from datetime import timedelta

from sagakit import (
    CompensationFailedError, Engine, RetryPolicy, SagaCompensatedError, SagaContext,
    TerminalError, saga_step, saga_workflow,
)

ONCE = RetryPolicy(max_attempts=1, initial_interval=timedelta(0))

async def release(data):
    pass

async def release_fails(data):
    raise TerminalError("the stock service refuses the release")

@saga_step("Reserve", compensate=release, compensation_retry=ONCE)
async def reserve(ctx: SagaContext, inp: dict) -> dict:
    return {"reservation": 1}

@saga_step("ReserveBadly", compensate=release_fails, compensation_retry=ONCE)
async def reserve_badly(ctx: SagaContext, inp: dict) -> dict:
    return {"reservation": 2}

@saga_step("Charge", retry=ONCE)
async def charge(ctx: SagaContext, inp: dict) -> dict:
    raise TerminalError("card declined")

@saga_workflow("Checkout")
async def checkout(saga: SagaContext, inp: dict) -> dict:
    await reserve(saga, inp)
    return await charge(saga, inp)

@saga_workflow("CheckoutBadly")
async def checkout_badly(saga: SagaContext, inp: dict) -> dict:
    await reserve_badly(saga, inp)
    return await charge(saga, inp)

async def main(db: str) -> None:
    engine = Engine(db)
    engine.register(checkout)
    engine.register(checkout_badly)
    async with engine:
        try:
            await engine.run(checkout, {}, saga_id="rolled-back")
        except SagaCompensatedError:
            print("rolled-back: COMPENSATED")
        try:
            await engine.run(checkout_badly, {}, saga_id="failed")
        except CompensationFailedError:
            print("failed: FAILED")

mode, db = sys.argv[1], sys.argv[2]
if mode == "configured":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
elif mode == "without-null-handler":
    logging.getLogger("sagakit").handlers.clear()
asyncio.run(main(db))
"""


def run_program(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    program = tmp_path / "shop.py"
    program.write_text(PROGRAM, encoding="utf-8")
    db = f"sqlite:///{tmp_path / f'{mode}.db'}"
    return subprocess.run(
        [sys.executable, str(program), mode, db],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagakit.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=cwd,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"},
        timeout=120,
    )


def test_a_program_whose_sagas_fail_for_good_prints_nothing_on_stderr(tmp_path: Path) -> None:
    result = run_program(tmp_path, "untouched")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["rolled-back: COMPENSATED", "failed: FAILED"]
    assert result.stderr == ""


def test_the_records_reach_the_handlers_the_application_configures(tmp_path: Path) -> None:
    result = run_program(tmp_path, "configured")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["rolled-back: COMPENSATED", "failed: FAILED"]
    # WARNING and above, the root logger's default level, in the order they happened
    lines = result.stderr.splitlines()
    assert re.search(r"^WARNING sagakit\.saga: step Charge .* saga rolled-back failed", lines[0])
    assert any(line.startswith("ERROR sagakit.saga:") and "failed" in line for line in lines)
    assert not any(line.startswith("INFO") for line in lines)


def test_it_is_the_null_handler_that_keeps_python_s_last_resort_quiet(tmp_path: Path) -> None:
    result = run_program(tmp_path, "without-null-handler")
    assert result.returncode == 0, result.stderr
    # Python's last-resort handler: the bare message, WARNING and above
    assert "step Charge" in result.stderr
    assert "saga rolled-back" in result.stderr


def test_no_module_of_the_library_sets_up_logging_but_the_entry_points() -> None:
    entry_points = {Path("sagakit/cli/__init__.py"), Path("sagakit/dashboard/__main__.py")}
    setup = re.compile(r"basicConfig|addHandler|StreamHandler|FileHandler|dictConfig|fileConfig")
    found = set()
    for path in (ROOT / "sagakit").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if setup.search(text):
            found.add(path.relative_to(ROOT))
    # sagakit/__init__.py adds the NullHandler, and nothing else
    assert found - entry_points == {Path("sagakit/__init__.py")}
    init = (ROOT / "sagakit" / "__init__.py").read_text(encoding="utf-8")
    assert setup.findall(init) == ["addHandler"]
    assert 'logging.getLogger("sagakit").addHandler(logging.NullHandler())' in init


def test_the_cli_still_logs_info_when_verbose(tmp_path: Path) -> None:
    result = cli("-v", "migrate", "--db", f"sqlite:///{tmp_path / 'new.db'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sagakit: INFO sagakit.store.sqlite: applied migration 0001_initial.sql" in (
        result.stderr
    )


@pytest.mark.slow
def test_the_cli_still_logs_the_saga_that_fails_for_good(tmp_path: Path) -> None:
    result = cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"^sagakit: WARNING sagakit\.saga: step ChargeCard \(seq \d+\) of saga order-1002 "
        r"failed for good",
        result.stderr,
        re.MULTILINE,
    ), result.stderr
