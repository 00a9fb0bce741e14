"""Real worker processes for the crash tests: start ``python -m tests.<app>`` against one
database and one ledger, wait for what the ledger says, SIGKILL, and read each process's
output when a test fails. Every wait is bounded: a bug fails the test, it never hangs CI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sagakit import Engine, SagaSnapshot

REPO = Path(__file__).resolve().parent.parent
#: the longest any one wait of these tests may take
WAIT = 60.0


class AppProcesses:
    """The processes one test starts from ``module`` (run as ``module MODE URL *app_args
    *args``), the database they share and the ledger each step execution appends a JSON line
    to."""

    def __init__(self, tmp_path: Path, url: str, module: str):
        self.dir = tmp_path
        self.url = url
        self.module = module
        self.ledger = tmp_path / "ledger.jsonl"
        #: a folder of switch and marker files the test and the app processes share
        self.markers = tmp_path / "markers"
        self.markers.mkdir(exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._names: dict[int, str] = {}

    def app_args(self) -> list[str]:
        """What every process of this app gets after the URL (the ledger by default)."""
        return [str(self.ledger)]

    def spawn(self, mode: str, *args: str) -> subprocess.Popen[bytes]:
        name = f"proc{len(self.procs) + 1}-{mode}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-m", self.module, mode, self.url, *self.app_args(), *args]
        with (
            open(self.dir / f"{name}.out", "wb") as out,
            open(self.dir / f"{name}.err", "wb") as err,
        ):
            proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)
        self._names[proc.pid] = name
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> tuple[str, str]:
        name = self._names[proc.pid]
        return (
            (self.dir / f"{name}.out").read_text(errors="replace"),
            (self.dir / f"{name}.err").read_text(errors="replace"),
        )

    def describe(self, proc: subprocess.Popen[bytes]) -> str:
        out, err = self.output(proc)
        return (
            f"{self._names[proc.pid]} (pid {proc.pid}, exit {proc.returncode})\n"
            f"--- stdout\n{out}\n--- stderr (tail)\n{err[-4000:]}\n--- ledger (tail)\n"
            + "\n".join(json.dumps(e) for e in self.events()[-30:])
        )

    def events(self) -> list[dict[str, Any]]:
        """The ledger's events; a torn last line (a write cut by SIGKILL) is left out."""
        if not self.ledger.exists():
            return []
        events = []
        for line in self.ledger.read_bytes().split(b"\n"):
            if line.strip():
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def wait_until(
        self, proc: subprocess.Popen[bytes], what: str, check: Callable[[], bool]
    ) -> None:
        """Poll ``check`` until it holds; fail if ``proc`` dies or time runs out."""
        deadline = time.monotonic() + WAIT
        while not check():
            if proc.poll() is not None:
                pytest.fail(f"the process exited before {what}:\n{self.describe(proc)}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {WAIT}s waiting for {what}:\n{self.describe(proc)}")
            time.sleep(0.02)

    async def until(
        self, proc: subprocess.Popen[bytes], what: str, check: Callable[[], Awaitable[bool]]
    ) -> None:
        """``wait_until`` for a check that reads the database (from async test code)."""
        deadline = time.monotonic() + WAIT
        while not await check():
            if proc.poll() is not None:
                pytest.fail(f"the process exited before {what}:\n{self.describe(proc)}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {WAIT}s waiting for {what}:\n{self.describe(proc)}")
            await asyncio.sleep(0.02)

    def switch(self, step: str, what: str, on: bool = True) -> None:
        """Turn the app's switch ``MARKERS/STEP.WHAT`` on or off (see :class:`AppSwitches`)."""
        path = self.markers / f"{step}.{what}"
        if on:
            path.write_text("on")
        else:
            path.unlink()

    async def blocked_in(self, proc: subprocess.Popen[bytes], step: str, what: str) -> None:
        """Wait until ``proc`` wrote ``MARKERS/STEP.blocked`` (``what`` says what blocked)."""
        marker = self.markers / f"{step}.blocked"

        async def check() -> bool:
            return marker.exists() and marker.read_text() == str(proc.pid)

        await self.until(proc, f"{what} to block in pid {proc.pid}", check)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.poll() is None, f"expected a live process to kill:\n{self.describe(proc)}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=WAIT) == -signal.SIGKILL

    def finish(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        """Wait for a process to end on its own; return its JSON summary (its last line)."""
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)
            pytest.fail(f"the process did not finish in {WAIT}s:\n{self.describe(proc)}")
        assert proc.returncode == 0, self.describe(proc)
        out, _ = self.output(proc)
        summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return summary

    def stop_all(self) -> None:
        """Kill what a test left running (a failed assertion must not leave workers behind)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=WAIT)


class AppSwitches:
    """The app side of a crash test's ledger and folder of switches, set by the app's main.

    A switch is a file ``MARKERS/STEP.WHAT`` that the test turns on and off between processes;
    a step that blocks writes ``MARKERS/STEP.blocked`` holding its pid, for the test to wait
    on (``AppProcesses.blocked_in``) before it kills the process there.
    """

    def __init__(self) -> None:
        self.ledger: str | None = None
        self.folder: str | None = None

    def configure(self, ledger: str, folder: str) -> None:
        self.ledger, self.folder = ledger, folder

    def record(self, **event: Any) -> None:
        assert self.ledger is not None, "the ledger path is not set"
        append_to_ledger(self.ledger, event)

    def on(self, step: str, what: str) -> bool:
        assert self.folder is not None, "the marker folder is not set"
        return os.path.exists(os.path.join(self.folder, f"{step}.{what}"))

    def write_marker(self, step: str) -> None:
        """``MARKERS/STEP.blocked`` holding this pid, complete as soon as it exists."""
        assert self.folder is not None, "the marker folder is not set"
        final = os.path.join(self.folder, f"{step}.blocked")
        temporary = f"{final}.{os.getpid()}.tmp"
        with open(temporary, "w") as out:
            out.write(str(os.getpid()))
            out.flush()
            os.fsync(out.fileno())
        os.rename(temporary, final)


def append_to_ledger(path: str, event: dict[str, Any]) -> None:
    """Append one event, with the writer's pid, to a ledger: one write, fsynced, so that a
    SIGKILL leaves at most a torn last line (which ``events`` skips)."""
    event["pid"] = os.getpid()
    line = (json.dumps(event, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


async def saga_summary(engine: Engine, saga_id: str) -> dict[str, Any]:
    """What an app process prints of a saga at its end: status, output and error."""
    snap = await engine.get(saga_id)
    return {"status": str(snap.status), "output": snap.output, "error": snap.error}


def journal_rows(snap: SagaSnapshot) -> list[tuple[str, str, str]]:
    """A saga's journal as (kind, name, status) rows, for comparing with what a test expects."""
    return [(s.kind, s.name, s.status) for s in snap.steps]


def step_pids(events: list[dict[str, Any]], ev: str, step: str) -> list[int]:
    """The pids of the processes that wrote ledger events ``ev`` of ``step``, in order."""
    return [e["pid"] for e in events if e["ev"] == ev and e.get("step") == step]
