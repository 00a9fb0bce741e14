"""A throwaway Restate server for tests and benchmarks, from the npm package
``@restatedev/restate-server`` (scripts/test.sh installs it into ``.cache/restate/``; or point
``RESTATE_SERVER_BIN`` at the binary). No docker.

Every listener binds 127.0.0.1 on a free port, its data lives in a temporary folder, and
everything started here is stopped on exit::

    with RestateServer() as server, AppServer(sagakit.restate.app(checkout)) as app:
        server.register(app.url)
        ...  # call sagas through server.ingress_url

``AppServer`` serves an ASGI app with hypercorn in a thread of this process; a test that must
SIGKILL the service runs its app in a child process instead (see tests/restate_crash_app.py).
``python -m tests.restate_server`` starts a server and prints its URLs until interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.served import Served

REPO = Path(__file__).resolve().parent.parent
#: where scripts/test.sh installs the npm package
NPM_BIN = (
    REPO / ".cache/restate/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
)
#: the longest a server or an app may take to answer its health check
READY_TIMEOUT = 30.0


def server_binary() -> Path:
    """The restate-server binary: ``RESTATE_SERVER_BIN``, else the one scripts/test.sh installed."""
    configured = os.environ.get("RESTATE_SERVER_BIN")
    path = Path(configured) if configured else NPM_BIN
    if not path.is_file():
        raise RuntimeError(
            f"restate-server not found at {path}; run scripts/test.sh (it installs "
            "@restatedev/restate-server from npm into .cache/restate/) or set RESTATE_SERVER_BIN"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(
    method: str, url: str, body: Any = None, timeout: float = 10.0
) -> tuple[int, dict[str, Any] | None]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    request.add_header("accept", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = {"text": raw.decode(errors="replace")}
    return status, parsed


def _wait_healthy(url: str, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        with contextlib.suppress(OSError):
            status, _ = _http("GET", url, timeout=2.0)
            if status == 200:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {READY_TIMEOUT}s")
        time.sleep(0.05)


class RestateServer(Served):
    """Start and stop a private Restate server on loopback.

    ``always_replay=True`` makes the server suspend the invocation at every await (the handler
    is replayed from its journal for each step), to test determinism the hard way.
    """

    def __init__(self, *, always_replay: bool = False):
        self.binary = server_binary()
        self.ingress_port = free_port()
        self.admin_port = free_port()
        self.fabric_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sagakit-restate-"))
        self.always_replay = always_replay
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                # every listener on loopback, TCP only (no unix sockets under base-dir)
                "RESTATE_BIND_IP": "127.0.0.1",
                "RESTATE_ADVERTISED_HOST": "127.0.0.1",
                "RESTATE_LISTEN_MODE": "tcp",
                "RESTATE_BIND_PORT": str(self.fabric_port),
                "RESTATE_INGRESS__BIND_PORT": str(self.ingress_port),
                "RESTATE_ADMIN__BIND_PORT": str(self.admin_port),
                "RESTATE_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "1",
                # light on a 2-core CI machine
                "RESTATE_DEFAULT_NUM_PARTITIONS": "1",
                "RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE": "64 MB",
                "RESTATE_SHUTDOWN_TIMEOUT": "10s",
                "RESTATE_LOG_FILTER": "warn,restate=info",
                "RESTATE_LOG_DISABLE_ANSI_CODES": "true",
            }
        )
        if self.always_replay:
            env["RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT"] = "0s"
        return env

    def start(self) -> RestateServer:
        command = [
            str(self.binary),
            "--base-dir",
            str(self.dir / "data"),
            "--node-name",
            "sagakit-test",
            "--no-logo",
        ]
        with open(self.dir / "server.log", "wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=self.dir, env=self._env(), stdout=out, stderr=subprocess.STDOUT
            )
        _wait_healthy(f"{self.admin_url}/health", "restate-server", self.proc)
        _wait_healthy(f"{self.ingress_url}/restate/health", "restate-server ingress", self.proc)
        return self

    def register(self, uri: str, *, force: bool = True) -> dict[str, Any]:
        """Register the deployment served at ``uri`` (the admin API's ``POST /deployments``)."""
        status, body = _http(
            "POST", f"{self.admin_url}/deployments", {"uri": uri, "force": force}, timeout=30.0
        )
        if status >= 300:
            raise RuntimeError(f"registering {uri} failed ({status}): {body}")
        return body or {}

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Rows of the admin API's SQL introspection (``sys_invocation``, ``sys_journal``...)."""
        status, body = _http("POST", f"{self.admin_url}/query", {"query": sql})
        if status >= 300 or body is None:
            raise RuntimeError(f"query failed ({status}): {body}")
        rows: list[dict[str, Any]] = body.get("rows", [])
        return rows

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def hypercorn_config(port: int) -> Any:
    """Hypercorn settings for a Restate deployment on loopback."""
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    # the default (1,000) makes hypercorn close a busy HTTP/2 connection mid-stream, and the
    # server then retries every thousandth invocation after a reconnect
    config.keep_alive_max_requests = 1_000_000_000
    config.keep_alive_timeout = 75
    config.accesslog = None
    config.errorlog = None
    return config


class AppServer(Served):
    """Serve an ASGI app with hypercorn on a free loopback port, in a thread of this process."""

    def __init__(self, app: Any, port: int | None = None):
        self.app = app
        self.port = port or free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self, ready: threading.Event) -> None:
        from hypercorn.asyncio import serve

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready.set()
            await serve(self.app, hypercorn_config(self.port), shutdown_trigger=self._stop.wait)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._failure = exc
            ready.set()

    def start(self) -> AppServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(READY_TIMEOUT)
        if self._failure is not None:
            raise RuntimeError(f"the app server failed to start: {self._failure!r}")
        _wait_healthy(f"{self.url}/health", "the app server")
        return self

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    def cleanup(self) -> None:
        self.stop()


if __name__ == "__main__":
    with RestateServer() as restate:
        print(f"ingress {restate.ingress_url}  admin {restate.admin_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
