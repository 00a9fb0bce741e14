"""SIGKILL the process that serves a saga to Restate in the middle of a step, and again in the
middle of its rollback, start it again each time, and check that the saga finishes: finished
steps are not run again (Restate replays them from its journal), the killed step is run again
(at-least-once, with the same step key), and each compensation finishes once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaCompensatedError
from sagakit.restate import RestateSagaClient

from .restate_server import REPO, RestateServer, free_port

WAIT = 60.0


class ServiceProcess:
    """``python -m tests.restate_crash_app`` on one port; started again on the same port."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        self.port = free_port()
        self.ledger = tmp_path / "ledger.jsonl"
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        name = f"service{len(self.procs) + 1}"
        command = [
            sys.executable,
            "-m",
            "tests.restate_crash_app",
            str(self.port),
            str(self.ledger),
        ]
        with open(self.dir / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        self._wait_listening(proc)
        return proc

    def _wait_listening(self, proc: subprocess.Popen[bytes]) -> None:
        import urllib.request

        deadline = time.monotonic() + WAIT
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited with {proc.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start:\n{self.logs()}")
            time.sleep(0.05)

    def events(self) -> list[dict[str, Any]]:
        if not self.ledger.exists():
            return []
        lines = self.ledger.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.dir.glob("service*.log"))
        )

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # the SDK takes SIGTERM for itself
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    processes = ServiceProcess(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


async def _until(check: Any, what: str, service: ServiceProcess) -> None:
    import asyncio

    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; ledger {service.events()}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _deployed(
    service: ServiceProcess,
) -> AsyncIterator[tuple[subprocess.Popen[bytes], RestateSagaClient]]:
    """A Restate server with the service's first process registered, and a client of it."""
    with RestateServer() as server:
        first = service.spawn()
        server.register(service.url)
        async with RestateSagaClient(server.ingress_url) as client:
            yield first, client


@pytest.mark.slow
async def test_sigkill_in_the_middle_of_a_step_and_of_the_rollback(service: ServiceProcess) -> None:
    async with _deployed(service) as (first, client):
        await client.start("Crashy", None, "crash-1")
        await _until(
            lambda: [e.get("do") for e in service.events()] == ["first", "second"],
            "the second step to start",
            service,
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = service.spawn()  # the same URL: Restate retries the invocation there
        await _until(
            lambda: any(e.get("undoing") == "second" for e in service.events()),
            "the rollback to start",
            service,
        )
        second.send_signal(signal.SIGKILL)  # in the middle of a compensation
        second.wait(timeout=10)
        service.spawn()
        with pytest.raises(SagaCompensatedError) as caught:
            await client.result("Crashy", "crash-1")
    assert caught.value.cause.step == "third"
    events = service.events()
    done = [e["do"] for e in events if "do" in e]
    # the first step finished before the kill: replayed, not run again; the killed one ran
    # again with the same step key
    assert done == ["first", "second", "second", "third"], events
    keys = [(e["do"], e["key"]) for e in events if "do" in e]
    assert keys == [
        ("first", "crash-1:0"),
        ("second", "crash-1:1"),
        ("second", "crash-1:1"),
        ("third", "crash-1:2"),
    ]
    # the killed compensation was started again; each compensation finished once, in reverse
    assert [e["undoing"] for e in events if "undoing" in e] == ["second", "second", "first"]
    assert [e["undo"] for e in events if "undo" in e] == ["second", "first"], events


@pytest.mark.slow
async def test_sigkill_in_the_middle_of_parallel_branches(service: ServiceProcess) -> None:
    """The replay after the kill hands the branches their turns in the order of the first run
    (legs completed b0, c0, c1, a0, a1, not in the order of the branches): it issues the same
    journal entries, so no finished leg runs again."""
    async with _deployed(service) as (first, client):
        await client.start("CrashyBranches", None, "branches-1")
        await _until(
            lambda: (
                sorted(e["done"] for e in service.events() if "done" in e)
                == ["a0", "a1", "b0", "c0", "c1"]
                and any(e.get("do") == "b1" for e in service.events())
            ),
            "every leg but b1 to finish",
            service,
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        service.spawn()
        result = await client.result("CrashyBranches", "branches-1")
    assert result == [["a0", "a1"], ["b0", "b1"], ["c0", "c1"]]
    events = service.events()
    started = [e["do"] for e in events if "do" in e]
    # only the leg killed in flight ran again, with the same step key
    assert sorted(started) == ["a0", "a1", "b0", "b1", "b1", "c0", "c1"], events
    b1_keys = {e["key"] for e in events if e.get("do") == "b1"}
    assert len(b1_keys) == 1
