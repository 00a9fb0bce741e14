"""A throwaway PostgreSQL server for tests and benchmarks, from Debian's ``postgresql`` package.

initdb and pg_ctl run in a temporary folder on a free loopback port; as root they run as the
``postgres`` user (PostgreSQL refuses to run as root). No docker.

    with PgServer() as pg:                    # fsync on: for benchmarks
        print(pg.url)
    with PgServer(durable=False) as pg: ...   # fsync=off, synchronous_commit=off: faster tests

``python -m tests.pgserver`` starts one and prints its URL until interrupted.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.served import Served


def _bin_dir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not found:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; "
            "run scripts/test.sh (it installs Debian's postgresql package)"
        )
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer(Served):
    """Start and stop a private PostgreSQL server."""

    def __init__(self, *, durable: bool = True, max_connections: int = 200):
        self.durable = durable
        self.max_connections = max_connections
        self.port = free_port()
        self.bin = _bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="sagakit-pg-"))
        self.data = self.dir / "data"
        self._as_root = os.geteuid() == 0
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def _options(self) -> str:
        options = [
            f"-k {self.dir}",
            "-h 127.0.0.1",
            f"-p {self.port}",
            f"-c max_connections={self.max_connections}",
            "-c shared_buffers=128MB",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        return " ".join(options)

    def _pg_ctl_start(self) -> None:
        result = self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-o",
            self._options(),
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if result.returncode != 0:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n{log}")
        self.started = True

    def start(self) -> PgServer:
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        self._pg_ctl_start()
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            self._run(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                mode,
                "-w",
                "stop",
                check=False,
            )
            self.started = False

    def start_again(self) -> None:
        """Start a stopped server again on the same data and port."""
        self._pg_ctl_start()

    def restart(self, stop_mode: str = "immediate") -> None:
        """Stop (by default as a crash would) and start again on the same data and port."""
        self.stop(stop_mode)
        self._pg_ctl_start()

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    with PgServer() as pg:
        print(pg.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    time.sleep(0)
