"""Throwaway RabbitMQ and NATS (JetStream) servers for tests, from Debian's packages.

Both run from a temporary folder on loopback ports, configured only by environment and flags
(see ../shared/notes/brokers.md): RabbitMQ with its own epmd, so no daemon outlives the tests.
RabbitMQ takes about 6 s to start, so the suite shares one per session (fixture ``rabbit_url``);
isolate tests by queue names. ``stop()`` then ``start_again()`` restarts a server on the same
data and port (the restart tests use servers of their own).

    with RabbitServer() as rabbit:
        print(rabbit.url)           # amqp://guest:guest@127.0.0.1:P/
    with NatsServer() as nats:
        print(nats.url)             # nats://127.0.0.1:P

``python -m tests.brokers`` starts both and prints their URLs until interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.pgserver import free_port
from tests.served import Served

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
NATS_BIN = Path("/usr/sbin/nats-server")
EPMD_BIN = Path("/usr/bin/epmd")


def _missing(binary: Path, package: str) -> RuntimeError:
    return RuntimeError(
        f"{binary} not found: run scripts/test.sh (it installs Debian's {package} package)"
    )


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _killpg(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)


class RabbitServer(Served):
    """A private RabbitMQ node (guest/guest) with its own epmd, in a temporary folder."""

    def __init__(self) -> None:
        if not RABBIT_BIN.exists():
            raise _missing(RABBIT_BIN, "rabbitmq-server")
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sagakit-rabbit-"))
        (self.dir / "rabbitmq.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[].\n")
        self.nodename = f"rmq{self.port}@localhost"
        self.env = dict(
            os.environ,
            HOME=str(self.dir),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "absent"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        self.epmd: subprocess.Popen[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _output(self) -> str:
        path = self.dir / "server.out"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start(self) -> RabbitServer:
        self.epmd = subprocess.Popen(
            [str(EPMD_BIN), "-address", "127.0.0.1", "-port", str(self.epmd_port)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not _accepts(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not start on 127.0.0.1:{self.epmd_port}")
            time.sleep(0.05)
        self.start_again()
        return self

    def start_again(self) -> None:
        """Start the node (again) on the same data, ports and epmd; wait until AMQP answers."""
        with open(self.dir / "server.out", "ab") as out:
            self.process = subprocess.Popen(
                [str(RABBIT_BIN)],
                env=self.env,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        import aio_pika

        async def probe() -> bool:
            try:
                connection = await aio_pika.connect(self.url, timeout=2)
            except Exception:
                return False
            await connection.close()
            return True

        deadline = time.monotonic() + 120
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                # Any exit is a failure: on a bad setting the script still exits 0.
                raise RuntimeError(f"rabbitmq-server exited:\n{self._output()}")
            # In a thread of its own: the caller may be inside a running event loop.
            if _accepts(self.port):
                with ThreadPoolExecutor(1) as pool:
                    if pool.submit(asyncio.run, probe()).result():
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"rabbitmq-server not ready in 120 s:\n{self._output()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the node cleanly (SIGTERM), leaving its data and epmd for ``start_again``."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _killpg(process)
            # The script may exit before beam.smp: kill whatever is left in its group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        _killpg(self.process)
        _killpg(self.epmd)
        self.epmd = None
        shutil.rmtree(self.dir, ignore_errors=True)


class NatsServer(Served):
    """A private nats-server with JetStream, storing in a temporary folder."""

    def __init__(self) -> None:
        if not NATS_BIN.exists():
            raise _missing(NATS_BIN, "nats-server")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sagakit-nats-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.start_again()
        return self

    def start_again(self) -> None:
        """Start the server (again) on the same store folder and port; wait until it listens."""
        self.process = subprocess.Popen(
            [
                str(NATS_BIN),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.dir / "js"),
                "-l",
                str(self.dir / "nats.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not _accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.dir / "nats.log"
                text = log.read_text(errors="replace")[-4000:] if log.exists() else ""
                raise RuntimeError(f"nats-server did not start on {self.url}:\n{text}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server cleanly (SIGINT, as Debian's unit does), keeping its store."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _killpg(process)

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        _killpg(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    with RabbitServer() as rabbit, NatsServer() as nats_server:
        print(rabbit.url, nats_server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
