"""The dashboard's HTTP server: the standard library's ``ThreadingHTTPServer`` in front of an
:class:`~sagakit.Engine` that lives on an asyncio loop in a thread of its own.

Each request runs in a server thread and hands its admin calls to the engine's loop with
:func:`asyncio.run_coroutine_threadsafe`, so the engine (and its store connections) stay on
one loop as they must, while slow requests do not hold up each other.

Failures never reach the browser as a stack trace: a :class:`~sagakit.SagaError` is shown with
its message (those are written for operators), anything else is logged here with an id and
shown as a generic page carrying that id.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from ..admin import SagaPage
from ..engine import Engine, SagaSnapshot
from ..errors import (
    SagaConflictError,
    SagaError,
    SagaNotFoundError,
    SagaStateError,
    SagaValidationError,
    StoreError,
)
from ..stores import open_store
from ..stores.base import SagaStatus
from ..stores.sqlite.store import path_from_url
from .actions import ActionInputError, parse_action, perform, token_matches
from .pages import Flash, ListFilters, render_error, render_index, render_saga, saga_path
from .schedules import render_schedules_card, schedule_action

__all__ = ["Dashboard", "serve_dashboard"]

log = logging.getLogger("sagakit.dashboard")

T = TypeVar("T")

#: the longest a request waits for the database before it gives up
REQUEST_TIMEOUT = 30.0
#: the largest POST body read (an action's form is a few hundred bytes)
MAX_BODY = 64 * 1024
#: how long a flash message waits for the page it was made for
FLASH_TTL = 300.0
MAX_FLASHES = 1000
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

_SECURITY_HEADERS = {
    # no script at all, styles only inline, forms only to this server, never in a frame
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class HttpError(Exception):
    """A request refused with ``status``; ``message`` is shown to the operator."""

    def __init__(
        self,
        status: int,
        title: str,
        message: str,
        *,
        back: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.back = back
        self.headers = dict(headers or {})


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) can only be reached from this machine."""
    host = host.strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host part of a ``Host`` header: ``[::1]:8700`` → ``::1``, ``a:80`` → ``a``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _check_database(url: str) -> None:
    """Refuse a SQLite file that does not exist: opening it would create an empty database
    and the dashboard would show nothing, silently."""
    if not url.startswith("sqlite:"):
        return
    path = Path(path_from_url(url))
    if not path.is_file():
        raise StoreError(
            f"no saga database at {str(path)!r} ({url}): the file does not exist; "
            "point --db at the database your workers use"
        )


def _parse_time(value: str, what: str) -> datetime | None:
    """A filter's date and time (``datetime-local`` gives ``2025-01-31T12:00``), as UTC when it
    names no zone."""
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise HttpError(
            400,
            "Bad filter",
            f"{what} must be a date and time like 2025-01-31T12:00 (UTC), got {value!r}",
            back=("/", "back to all sagas"),
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dashboard: Dashboard

    def __init__(self, address: tuple[str, int], dashboard: Dashboard):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.dashboard = dashboard
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "sagakit-dashboard"
    sys_version = ""
    #: a client that stops sending does not hold a thread for ever
    timeout = REQUEST_TIMEOUT

    # -- HTTP methods ------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _not_allowed(self) -> None:
        self._dispatch(self.command)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    # -- dispatch ----------------------------------------------------------------------------

    @property
    def dashboard(self) -> Dashboard:
        return self.server.dashboard

    def _dispatch(self, method: str) -> None:
        try:
            response = self._route(method)
        except HttpError as exc:
            response = self._error(exc.status, exc.title, exc.message, back=exc.back)
            response.headers.update(exc.headers)
        except SagaNotFoundError as exc:
            response = self._error(404, "No such saga", str(exc), back=("/", "all sagas"))
        except (SagaStateError, SagaConflictError) as exc:
            response = self._error(409, "Not possible now", str(exc), back=self._back())
        except (SagaValidationError, ActionInputError) as exc:
            response = self._error(400, "Bad request", str(exc), back=self._back())
        except StoreError as exc:
            log.warning("the database failed: %s", exc)
            response = self._error(503, "Database unavailable", str(exc), back=self._back())
        except SagaError as exc:
            response = self._error(400, "Refused", str(exc), back=self._back())
        except TimeoutError:
            log.warning("%s %s: the database did not answer in time", method, self.path)
            response = self._error(
                504,
                "Timed out",
                f"The database did not answer within {REQUEST_TIMEOUT:.0f} s. Try again.",
                back=self._back(),
            )
        except Exception:
            incident = secrets.token_hex(4)
            log.exception("error %s while serving %s %s", incident, method, self.path)
            response = self._error(
                500,
                "Something went wrong",
                f"The dashboard failed to answer this request (error id {incident}; the "
                "details are in the dashboard's log). Nothing is shown here on purpose.",
                back=self._back(),
            )
        self._send(response, head=method == "HEAD")

    def _route(self, method: str) -> Response:
        self._check_host()
        url = urlsplit(self.path)
        parts = url.path.split("/")[1:]
        if method not in ("GET", "HEAD", "POST"):
            raise HttpError(
                405, "Method not allowed", f"{method} is not used here.", headers={"Allow": "GET"}
            )
        if method == "POST":
            if len(parts) == 3 and parts[0] == "schedules" and parts[1]:
                return schedule_action(self, unquote(parts[1]), unquote(parts[2]))
            if len(parts) == 3 and parts[0] == "sagas" and parts[1]:
                return self._action(unquote(parts[1]), unquote(parts[2]))
            if len(parts) == 2 and parts[0] == "sagas" and parts[1]:
                raise HttpError(
                    400,
                    "No action chosen",
                    "Press one of the action buttons.",
                    back=(saga_path(unquote(parts[1])), "back to the saga"),
                )
            raise HttpError(
                405, "Method not allowed", "Only actions are posted.", headers={"Allow": "GET"}
            )
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path == "/":
            return self._index(query)
        if url.path == "/healthz":
            return Response(200, b"ok\n", "text/plain; charset=utf-8")
        if len(parts) == 2 and parts[0] == "sagas" and parts[1]:
            return self._saga(unquote(parts[1]), query)
        if len(parts) == 3 and parts[0] == "sagas" and parts[1]:
            raise HttpError(
                405,
                "Method not allowed",
                "Actions are buttons on the saga's page (a POST with the token).",
                back=(saga_path(unquote(parts[1])), "to the saga"),
                headers={"Allow": "POST"},
            )
        raise HttpError(404, "Not found", "There is no page here.", back=("/", "all sagas"))

    def _check_host(self) -> None:
        """Refuse Host names other than the loopback ones on a loopback server: a web page
        that re-points its own name at 127.0.0.1 (DNS rebinding) must not read the sagas."""
        if not is_loopback(self.dashboard.host):
            return
        header = self.headers.get("Host")
        if header is None:
            return
        if not is_loopback(_host_name(header)):
            raise HttpError(
                400,
                "Wrong host",
                "This dashboard answers only to localhost addresses.",
            )

    def _back(self) -> tuple[str, str]:
        parts = urlsplit(self.path).path.split("/")[1:]
        if len(parts) >= 2 and parts[0] == "sagas" and parts[1]:
            return saga_path(unquote(parts[1])), "back to the saga"
        return "/", "all sagas"

    # -- pages -------------------------------------------------------------------------------

    def _index(self, query: Mapping[str, str]) -> Response:
        try:
            limit = int(query.get("limit") or 50)
        except ValueError:
            limit = 0
        if not 1 <= limit <= 500:
            raise HttpError(
                400, "Bad filter", "limit must be a number from 1 to 500", back=("/", "all sagas")
            )
        filters = ListFilters(
            status=query.get("status", "").strip(),
            name=query.get("name", "").strip(),
            created_after=query.get("created_after", "").strip(),
            created_before=query.get("created_before", "").strip(),
            limit=limit,
            cursor=query.get("cursor", "").strip(),
            stranded=query.get("stranded", "").strip() not in ("", "0"),
        )
        if filters.stranded and filters.query(stranded="", limit="", cursor=filters.cursor):
            raise HttpError(
                400,
                "Bad filter",
                "The stranded list shows every stranded saga (newest first, up to the page "
                "size); it takes no other filter and no cursor.",
                back=("/?stranded=1", "all stranded sagas"),
            )
        after = _parse_time(filters.created_after, "created from")
        before = _parse_time(filters.created_before, "created before")
        admin = self.dashboard.engine.admin

        async def load() -> tuple[dict[str, int], int, SagaPage]:
            counts = await admin.count_by_status()
            stranded = await admin.count_stranded()
            if filters.stranded:
                return counts, stranded, SagaPage(await admin.stranded(filters.limit), None)
            page = await admin.list_sagas(
                status=filters.status.upper() or None,
                name=filters.name or None,
                created_after=after,
                created_before=before,
                limit=filters.limit,
                cursor=filters.cursor or None,
            )
            return counts, stranded, page

        counts, stranded, page = self.dashboard.call(load())
        queues = self.dashboard.call(admin.queues())
        html = render_index(
            db=self.dashboard.db_url,
            read_only=self.dashboard.read_only,
            counts=counts,
            sagas=list(page.sagas),
            next_cursor=page.next_cursor,
            filters=filters,
            refresh=_refresh(query),
            stranded=stranded,
            queues=queues,
            schedules=render_schedules_card(
                self.dashboard.call(admin.schedules()), self.dashboard.read_only
            ),
        )
        return Response(200, html.encode())

    def _saga(self, saga_id: str, query: Mapping[str, str]) -> Response:
        snapshot = self.dashboard.call(self.dashboard.engine.admin.get_saga(saga_id))
        position = self._queue_position(snapshot)
        flash = self.dashboard.pop_flash(query.get("flash", ""))
        html = render_saga(
            snapshot,
            db=self.dashboard.db_url,
            read_only=self.dashboard.read_only,
            flash=flash,
            refresh=_refresh(query) if not snapshot.status.is_terminal else None,
            position=position,
        )
        return Response(200, html.encode())

    def _queue_position(self, snapshot: SagaSnapshot) -> int | None:
        if snapshot.status != SagaStatus.QUEUED:
            return None
        try:
            return self.dashboard.call(self.dashboard.engine.admin.queue_position(snapshot.saga_id))
        except SagaNotFoundError:  # deleted since it was read: the page shows what was read
            return None

    # -- actions -----------------------------------------------------------------------------

    def _action(self, saga_id: str, name: str) -> Response:
        back = (saga_path(saga_id), "back to the saga")
        form = self._read_form(back)
        if self.dashboard.read_only:
            log.warning("refused %s on %s from %s: read-only", name, saga_id, self.client_address)
            raise HttpError(
                403,
                "Refused: read-only",
                "This dashboard is read-only: it was started without a token, so it takes no "
                "action. Nothing was changed.",
                back=back,
            )
        supplied = self._bearer() or form.get("token")
        if not token_matches(self.dashboard.token, supplied):
            log.warning(
                "refused %s on %s from %s: %s token",
                name,
                saga_id,
                self.client_address[0],
                "wrong" if supplied else "no",
            )
            raise HttpError(
                403,
                "Refused: token required",
                "The token is missing or wrong, so the action was refused. Nothing was changed.",
                back=back,
            )
        request = parse_action(name, form)
        snapshot = self.dashboard.call(perform(self.dashboard.engine.admin, saga_id, request))
        log.info(
            "%s on saga %s by %s: now %s", request.action.name, saga_id, request.by, snapshot.status
        )
        key = self.dashboard.push_flash(
            Flash("ok", f"{request.action.done}: the saga is now {snapshot.status}.")
        )
        location = f"{saga_path(snapshot.saga_id)}?flash={key}"  # a fork: the new saga
        body = f'<!doctype html><p><a href="{location}">back to the saga</a></p>'
        return Response(303, body.encode(), headers={"Location": location})

    def _bearer(self) -> str | None:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return value.strip() or None if scheme.lower() == "bearer" else None

    def _read_form(self, back: tuple[str, str]) -> dict[str, str]:
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            if self.headers.get("Transfer-Encoding"):
                raise HttpError(411, "Length required", "Send the form with a Content-Length.")
            return {}
        try:
            length = int(length_text)
        except ValueError:
            raise HttpError(400, "Bad request", "Content-Length is not a number.") from None
        if not 0 <= length <= MAX_BODY:
            raise HttpError(413, "Too large", f"A form may hold at most {MAX_BODY} bytes.")
        body = self.rfile.read(length)
        kind = self.headers.get_content_type()
        if body and kind != "application/x-www-form-urlencoded":
            raise HttpError(
                415,
                "Unsupported form",
                "Send the form as application/x-www-form-urlencoded.",
                back=back,
            )
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "Bad request", "The form is not valid UTF-8.", back=back) from None
        return {k: v[-1] for k, v in fields.items()}

    # -- responses ---------------------------------------------------------------------------

    def _error(
        self, status: int, title: str, message: str, *, back: tuple[str, str] | None = None
    ) -> Response:
        html = render_error(
            status,
            title,
            message,
            db=self.dashboard.db_url,
            read_only=self.dashboard.read_only,
            back=back,
        )
        return Response(status, html.encode())

    def _send(self, response: Response, *, head: bool = False) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in {**_SECURITY_HEADERS, **response.headers}.items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away; nothing to tell it


def _refresh(query: Mapping[str, str]) -> int | None:
    try:
        seconds = int(query.get("refresh", ""))
    except ValueError:
        return None
    return seconds if 1 <= seconds <= 3600 else None


class Dashboard:
    """The dashboard as an object that starts and stops in-process (tests, embedding);
    :func:`serve_dashboard` is the blocking front of it.

    Args:
        url: the store URL of the sagas' database.
        host: the address to listen on; a loopback one by default, so that only this machine
            reaches the dashboard.
        port: the TCP port; 0 picks a free one (see :attr:`port`).
        token: the secret that admin actions must carry (a form field or an
            ``Authorization: Bearer`` header); without one the dashboard is read-only.
    """

    def __init__(
        self,
        url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 8700,
        token: str | None = None,
    ):
        self.db_url = url
        self.host = host
        self.requested_port = port
        self.token = token or None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._engine: Engine | None = None
        self._server: _Server | None = None
        self._server_thread: threading.Thread | None = None
        self._flashes: dict[str, tuple[float, Flash]] = {}
        self._flash_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the database and start listening; returns once requests are served. Raises
        SagaError when the database cannot be opened (StoreError) or the address cannot be
        listened on."""
        if self._server is not None:
            raise RuntimeError("the dashboard is already running")
        _check_database(self.db_url)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="sagakit-dashboard-engine", daemon=True
        )
        thread.start()
        self._loop, self._loop_thread = loop, thread
        try:
            # the page never migrates; without a token it writes nothing at all
            store = open_store(self.db_url, migrate=False, read_only=self.read_only)
            engine = Engine(store=store, worker=False)
            self.call(engine.__aenter__(), timeout=60.0)
            self._engine = engine
            try:
                self._server = _Server((self.host, self.requested_port), self)
            except OSError as exc:
                raise SagaError(
                    f"cannot listen on {self.host} port {self.requested_port}: "
                    f"{exc.strerror or exc}; choose another --host or --port"
                ) from exc
        except BaseException:
            self.stop()
            raise
        self._server_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="sagakit-dashboard-http",
            daemon=True,
        )
        self._server_thread.start()

    def stop(self) -> None:
        """Stop listening, close the database and end the engine's thread. Safe to call
        twice, and after a failed start."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._server_thread is not None:
            self._server_thread.join(timeout=10)
            self._server_thread = None
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                self.call(engine.close(), timeout=30.0)
            except Exception:
                log.exception("could not close the dashboard's engine")
        loop, thread = self._loop, self._loop_thread
        self._loop = self._loop_thread = None
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

    # -- what the handler uses ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (the one picked when 0 was asked)."""
        if self._server is None:
            raise RuntimeError("the dashboard is not running")
        return int(self._server.server_address[1])

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
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the dashboard is not running")
        return self._engine

    def call(self, coro: Coroutine[Any, Any, T], *, timeout: float = REQUEST_TIMEOUT) -> T:
        """Run ``coro`` on the engine's loop and wait for its result (at most ``timeout``
        seconds: TimeoutError)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("the dashboard is not running")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def push_flash(self, flash: Flash) -> str:
        """Keep a message for the next page; returns the key its URL carries."""
        key = secrets.token_urlsafe(9)
        now = time.monotonic()
        with self._flash_lock:
            for old in [k for k, (at, _) in self._flashes.items() if now - at > FLASH_TTL]:
                del self._flashes[old]
            while len(self._flashes) >= MAX_FLASHES:
                del self._flashes[next(iter(self._flashes))]
            self._flashes[key] = (now, flash)
        return key

    def pop_flash(self, key: str) -> Flash | None:
        """The message kept under ``key``, once."""
        if not key:
            return None
        with self._flash_lock:
            found = self._flashes.pop(key, None)
        return found[1] if found else None


def serve_dashboard(
    url: str, *, host: str = "127.0.0.1", port: int = 8700, token: str | None = None
) -> None:
    """Serve the dashboard for the sagas at ``url`` until Ctrl-C or SIGTERM.

    Prints the address it listens on. Without ``token`` the dashboard is read-only; with it,
    admin actions must carry the token. It listens on ``host`` (loopback by default: only this
    machine reaches it).

    Raises SagaError when the database cannot be opened or the address cannot be listened on.
    """
    dashboard = Dashboard(url, host=host, port=port, token=token)
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
        print(f"sagakit dashboard on {dashboard.url} ({mode}); Ctrl-C stops it", flush=True)
        if not is_loopback(host):
            print(
                f"warning: listening on {host}, reachable from other machines over plain "
                "HTTP; anyone who reaches it can read the sagas",
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
