"""A throwaway RabbitMQ node for the example, from Debian's ``rabbitmq-server`` package.

It runs from a temporary folder on free loopback ports, configured only by environment (no
system files touched, nothing left running), with its own ``epmd``, as root or not:

    with ThrowawayRabbit() as rabbit:
        print(rabbit.url)           # amqp://guest:guest@127.0.0.1:P/

It takes 5 to 10 seconds to start. With a RabbitMQ of your own, pass ``run.py --amqp URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD_BIN = Path("/usr/bin/epmd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ThrowawayRabbit:
    """A private RabbitMQ node (user guest/guest) in a temporary folder, removed on exit."""

    def __init__(self) -> None:
        if not RABBIT_BIN.exists():
            raise SystemExit(
                f"{RABBIT_BIN} not found: install Debian's or Ubuntu's rabbitmq-server package "
                "(apt-get install rabbitmq-server), or give run.py --amqp URL of a running broker"
            )
        self.port, dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sagakit-example-rabbit-"))
        (self.dir / "rabbitmq.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[].\n")
        self.env = dict(
            os.environ,
            HOME=str(self.dir),  # the Erlang cookie goes here
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "absent"),  # skip the system's env file
            RABBITMQ_NODENAME=f"example{self.port}@localhost",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        self.epmd: subprocess.Popen[bytes] | None = None
        self.server: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> ThrowawayRabbit:
        # our own epmd: otherwise the node spawns a system-wide one that outlives everything
        self.epmd = subprocess.Popen(
            [str(EPMD_BIN), "-address", "127.0.0.1", "-port", str(self.epmd_port)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait(lambda: accepts(self.epmd_port), self.epmd, "epmd", 30)
        with open(self.dir / "server.out", "wb") as out:
            self.server = subprocess.Popen(
                [str(RABBIT_BIN)],
                env=self.env,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        self._wait(self._answers, self.server, "rabbitmq-server", 180)
        return self

    def _answers(self) -> bool:
        """Whether AMQP answers (the port opens a little before the node is ready)."""
        import aio_pika

        async def probe() -> bool:
            try:
                connection = await aio_pika.connect(self.url, timeout=2)
            except Exception:
                return False
            await connection.close()
            return True

        return accepts(self.port) and asyncio.run(probe())

    def _wait(
        self, ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, limit: float
    ) -> None:
        deadline = time.monotonic() + limit
        while not ready():
            if process.poll() is not None:  # any exit is a failure, even rc 0
                out = self.dir / "server.out"
                text = out.read_text(errors="replace")[-3000:] if out.exists() else ""
                raise RuntimeError(f"{what} exited before it was ready:\n{text}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready within {limit:.0f} s (see {self.dir})")
            time.sleep(0.2)

    def stop(self) -> None:
        for process in (self.server, self.epmd):
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)  # the node stops cleanly in about a second
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
            # the script may exit before the Erlang VM: end whatever is left of its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ThrowawayRabbit:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
