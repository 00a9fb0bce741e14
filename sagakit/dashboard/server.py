"""The dashboard served by uvicorn: :class:`Dashboard` starts the ASGI application of
:mod:`.asgi` on a port, in a thread of its own with its own asyncio loop (tests, embedding,
``sagakit_lifespan(engine, dashboard=Dashboard(...))``), and :func:`serve_dashboard` is the
blocking front that ``sagakit dashboard`` runs until Ctrl-C or SIGTERM.

The engine lives on the server's loop, as it must; :meth:`Dashboard.call` hands it coroutines
from other threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import SagaError
from ._extra import REQUEST_TIMEOUT, require_dashboard
from .auth import is_loopback

if TYPE_CHECKING:
    import uvicorn

    from ..engine import Engine
    from .asgi import DashboardApp

__all__ = ["Dashboard", "serve_dashboard"]

log = logging.getLogger("sagakit.dashboard")

T = TypeVar("T")


def _refuse_open_reads(host: str, read_token: str | None) -> None:
    if read_token is None and not is_loopback(host):
        raise SagaError(
            f"refusing to listen on {host} without a read token: anyone who reaches it would "
            "read every saga's input and output; pass --read-token (or set "
            "SAGAKIT_DASHBOARD_READ_TOKEN), or listen on 127.0.0.1"
        )


class Dashboard:
    """The dashboard as an object that starts and stops in-process (tests, embedding);
    :func:`serve_dashboard` is the blocking front of it.

    Args:
        url: the store URL of the sagas' database.
        host: the address to listen on; a loopback one by default, so that only this machine
            reaches the dashboard. Any other needs ``read_token``.
        port: the TCP port; 0 picks a free one (see :attr:`port`).
        token: the secret that admin actions must carry (a form field or an
            ``Authorization: Bearer`` header); without one the dashboard is read-only.
        read_token: the secret that reading needs (a bearer header, or the login form that
            sets a cookie); required off loopback.
    """

    def __init__(
        self,
        url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 8700,
        token: str | None = None,
        read_token: str | None = None,
    ):
        self.db_url = url
        self.host = host
        self.requested_port = port
        self.token = token or None
        self.read_token = read_token or None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._app: DashboardApp | None = None
        self._server: uvicorn.Server | None = None
        self._serving: Future[None] | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the database and start listening; returns once requests are served. Raises
        SagaError when the database cannot be opened (StoreError), the address cannot be
        listened on, or it is not a loopback one and no read token was given."""
        if self._server is not None:
            raise RuntimeError("the dashboard is already running")
        _refuse_open_reads(self.host, self.read_token)
        require_dashboard()
        import uvicorn

        from .asgi import DashboardApp

        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="sagakit-dashboard", daemon=True
        )
        thread.start()
        self._loop, self._loop_thread = loop, thread
        try:
            app = DashboardApp(self.db_url, token=self.token, read_token=self.read_token)
            self._app = app
            self.call(app.open(), timeout=60.0)
            sock = self._listen()
            self._port = int(sock.getsockname()[1])
            config = uvicorn.Config(
                app,
                lifespan="off",  # the engine is open already, and closed by stop()
                log_config=None,
                access_log=True,
                server_header=False,
                timeout_graceful_shutdown=5,
            )
            self._server = uvicorn.Server(config)
            self._serving = asyncio.run_coroutine_threadsafe(
                self._server.serve(sockets=[sock]), loop
            )
            self._wait_started()
        except BaseException:
            self.stop()
            raise

    def _listen(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.requested_port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise SagaError(
                f"cannot listen on {self.host} port {self.requested_port}: "
                f"{exc.strerror or exc}; choose another --host or --port"
            ) from exc
        sock.setblocking(False)
        return sock

    def _wait_started(self) -> None:
        assert self._server is not None and self._serving is not None
        deadline = time.monotonic() + 60
        while not self._server.started:
            if self._serving.done():
                self._serving.result()  # its error
                raise SagaError("the dashboard's web server stopped while starting")
            if time.monotonic() > deadline:
                raise SagaError("the dashboard's web server did not start within 60 s")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop listening, close the database and end the server's thread. Safe to call
        twice, and after a failed start."""
        server, self._server = self._server, None
        serving, self._serving = self._serving, None
        if server is not None:
            server.should_exit = True
        if serving is not None:
            try:
                serving.result(timeout=15)
            except Exception:
                log.exception("the dashboard's web server did not stop cleanly")
        app, self._app = self._app, None
        if app is not None and self._loop is not None:
            try:
                self.call(app.close(), timeout=30.0)
            except Exception:
                log.exception("could not close the dashboard's engine")
        loop, thread = self._loop, self._loop_thread
        self._loop = self._loop_thread = None
        self._port = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if not thread.is_alive():
                loop.close()

    def __enter__(self) -> Dashboard:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    # -- what callers use --------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (the one picked when 0 was asked)."""
        if self._port is None:
            raise RuntimeError("the dashboard is not running")
        return self._port

    @property
    def url(self) -> str:
        """The address to open in a browser."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1" if host != "::" else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    @property
    def read_only(self) -> bool:
        return self.token is None

    @property
    def app(self) -> DashboardApp:
        """The ASGI application served."""
        if self._app is None:
            raise RuntimeError("the dashboard is not running")
        return self._app

    @property
    def engine(self) -> Engine:
        return self.app.engine

    def call(self, coro: Coroutine[Any, Any, T], *, timeout: float = REQUEST_TIMEOUT) -> T:
        """Run ``coro`` on the server's loop (where the engine lives) and wait for its result
        (at most ``timeout`` seconds: TimeoutError)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("the dashboard is not running")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise


def serve_dashboard(
    url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8700,
    token: str | None = None,
    read_token: str | None = None,
) -> None:
    """Serve the dashboard for the sagas at ``url`` until Ctrl-C or SIGTERM.

    Prints the address it listens on. Without ``token`` the dashboard is read-only; with it,
    admin actions must carry the token. It listens on ``host`` (loopback by default: only this
    machine reaches it); any other address needs ``read_token``.

    Raises SagaError when the database cannot be opened, the address cannot be listened on,
    or reads would be open to the network.
    """
    dashboard = Dashboard(url, host=host, port=port, token=token, read_token=read_token)
    dashboard.start()
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        mode = "read-only: no token given" if dashboard.read_only else "actions need the token"
        reads = "; reads need the read token" if read_token else ""
        print(f"sagakit dashboard on {dashboard.url} ({mode}{reads}); Ctrl-C stops it", flush=True)
        if not is_loopback(host):
            print(
                f"warning: listening on {host} over plain HTTP: put a reverse proxy with TLS "
                "in front, or the tokens cross the network in clear",
                file=sys.stderr,
                flush=True,
            )
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        dashboard.stop()
