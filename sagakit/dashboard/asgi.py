"""The dashboard as an ASGI application on Starlette: :class:`DashboardApp`, made by
:func:`sagakit.dashboard.app`.

It serves the pages of :mod:`.pages` and performs the actions of :mod:`.actions`, under any
path of a user's application (``app.mount("/sagas", dashboard)``: links and form actions start
with the request's ``root_path``). Who may read and act is decided per request by :mod:`.auth`.

Failures never reach the browser as a stack trace: a :class:`~sagakit.SagaError` is shown with
its message (those are written for operators), anything else is logged here with an id and
shown as a generic page carrying that id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..admin import SagaPage
from ..engine import Engine
from ..errors import (
    SagaConflictError,
    SagaError,
    SagaNotFoundError,
    SagaStateError,
    SagaValidationError,
    StoreError,
)
from ..health import HealthReport
from ..stores import open_store
from ..stores.base import SagaStatus
from . import auth
from ._extra import REQUEST_TIMEOUT
from .actions import ActionInputError, parse_action, perform
from .pages import (
    Flash,
    PageChrome,
    render_error,
    render_index,
    render_login,
    render_saga,
    saga_path,
)
from .queues import render_queues_card
from .schedules import render_schedules_card
from .web import (
    SECURITY_HEADERS,
    Access,
    Call,
    HttpError,
    LoginNeeded,
    check_database,
    parse_filters,
    parse_time,
    refresh_seconds,
    route_parts,
    route_path,
    safe_next,
)

__all__ = ["DashboardApp", "HttpError"]

log = logging.getLogger("sagakit.dashboard")

T = TypeVar("T")

#: how long a flash message waits for the page it was made for
FLASH_TTL = 300.0
MAX_FLASHES = 1000


class DashboardApp(Access, Starlette):
    """The dashboard's ASGI application; see :func:`sagakit.dashboard.app` for the
    arguments. Mount it (``app.mount("/sagas", dashboard)``) or serve it (``uvicorn``).

    Given an :class:`~sagakit.Engine`, it uses it and never opens or closes it. Given a store
    URL, it opens a read-only engine of its own (one that writes only what an operator's
    action writes) in its lifespan, or at the first request where no lifespan runs (a
    Starlette or FastAPI sub-application's lifespan does not): :meth:`open` and
    :meth:`close` do it by hand, and ``sagakit_lifespan(engine, dashboard=this_app)`` does it
    with the application.
    """

    def __init__(
        self,
        engine: Engine | str,
        *,
        token: str | None = None,
        read_token: str | None = None,
        authorize: auth.Authorize | None = None,
        allowed_hosts: Sequence[str] | None = None,
        health: Mapping[str, Any] | None = None,
        metrics: bool = True,
    ):
        if authorize is not None and not callable(authorize):
            raise TypeError(
                f"authorize= takes a function (request, action) -> bool, got {authorize!r}"
            )
        self.token = token or None
        self.read_token = read_token or None
        self.authorize = authorize
        self.allowed_hosts = None if allowed_hosts is None else [h.lower() for h in allowed_hosts]
        self.health_options = dict(health or {})
        if isinstance(engine, Engine):
            self.db_url = str(getattr(engine, "url", "") or "")
            self._engine: Engine | None = engine
            self._owns_engine = False
        elif isinstance(engine, str):
            self.db_url = engine
            self._engine = None
            self._owns_engine = True
        else:
            raise TypeError(f"sagakit.dashboard.app takes an Engine or a store URL, got {engine!r}")
        self._open_lock: asyncio.Lock | None = None
        self._flashes: dict[str, tuple[float, Flash]] = {}
        self._metrics_app: ASGIApp | None = None
        routes: list[BaseRoute] = [
            Route("/", self._wrap(self._index), methods=["GET"]),
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/login", self._wrap(self._login), methods=["GET", "POST"]),
            Route("/logout", self._wrap(self._logout), methods=["POST"]),
            Route("/sagas/{rest:path}", self._wrap(self._sagas), methods=["GET", "POST"]),
            Route("/schedules/{rest:path}", self._wrap(self._schedules), methods=["POST"]),
        ]
        if metrics:
            routes.append(Route("/metrics", _Asgi(self._metrics), methods=["GET"]))
        super().__init__(
            routes=routes,
            exception_handlers={HTTPException: self._http_exception},
            lifespan=self._lifespan,
        )

    # -- the engine ---------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine the pages read (raises RuntimeError before a URL's engine is open)."""
        if self._engine is None:
            raise RuntimeError("the dashboard's engine is not open yet")
        return self._engine

    async def open(self) -> Engine:
        """Open the engine of a URL (once; later calls return it). Raises StoreError when
        the database cannot be opened."""
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._engine is not None:
                return self._engine
            check_database(self.db_url)
            # the page never migrates; without a way to act it writes nothing at all
            store = open_store(self.db_url, migrate=False, read_only=self.read_only)
            engine = Engine(store=store, worker=False)
            await engine.__aenter__()
            self._engine = engine
            return engine

    async def close(self) -> None:
        """Close the engine this app opened (not one it was given)."""
        engine = self._engine
        if self._owns_engine and engine is not None:
            self._engine = None
            await engine.close()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self._owns_engine:
            await self.open()
        try:
            yield
        finally:
            await self.close()

    async def _ready(self) -> Engine:
        if not self._owns_engine:
            engine = self.engine
            if not engine.is_open:
                raise HttpError(
                    503,
                    "Engine not open",
                    "The engine this dashboard was given is not open: open it with the "
                    "application (sagakit_lifespan, or `async with engine:`).",
                )
            return engine
        return await self.open()

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wait_for(coro, REQUEST_TIMEOUT)

    # -- flash messages -----------------------------------------------------------------------

    def push_flash(self, flash: Flash) -> str:
        """Keep a message for the next page; returns the key its URL carries."""
        key = secrets.token_urlsafe(9)
        now = time.monotonic()
        for old in [k for k, (at, _) in self._flashes.items() if now - at > FLASH_TTL]:
            del self._flashes[old]
        while len(self._flashes) >= MAX_FLASHES:
            del self._flashes[next(iter(self._flashes))]
        self._flashes[key] = (now, flash)
        return key

    def pop_flash(self, key: str) -> Flash | None:
        """The message kept under ``key``, once."""
        found = self._flashes.pop(key, None) if key else None
        return found[1] if found else None

    # -- the request's frame ------------------------------------------------------------------

    def _wrap(
        self, handler: Callable[[Call], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            cookie = request.cookies.get(auth.CSRF_COOKIE)
            call = Call(
                request,
                base=str(request.scope.get("root_path", "")).rstrip("/"),
                csrf=cookie or auth.new_csrf(),
                new_csrf=not cookie,
            )
            try:
                self._check_host(request)
                response = await handler(call)
            except Exception as exc:
                response = self._failure(call, exc)
            return self._finish(call, response)

        return endpoint

    def _finish(self, call: Call, response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        secure = call.request.url.scheme == "https"
        path = call.base or "/"
        if call.new_csrf:
            call.cookies.append((auth.CSRF_COOKIE, call.csrf, None))
        for name, value, max_age in call.cookies:
            if value:
                response.set_cookie(
                    name,
                    value,
                    max_age=max_age,
                    path=path,
                    httponly=True,
                    secure=secure,
                    samesite="strict",
                )
            else:
                response.delete_cookie(
                    name, path=path, httponly=True, secure=secure, samesite="strict"
                )
        return response

    def _chrome(self, call: Call, *, private: bool = False) -> PageChrome:
        return PageChrome(
            "" if private else self.db_url,
            self.read_only,
            base=call.base,
            csrf=call.csrf,
            logged_in=call.logged_in,
            ask_token=self.authorize is None,
        )

    def _page(
        self, html: str, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> HTMLResponse:
        return HTMLResponse(html, status_code=status, headers=dict(headers or {}))

    def _error(
        self,
        call: Call,
        status: int,
        title: str,
        message: str,
        *,
        back: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        private: bool = False,
    ) -> Response:
        html = render_error(
            status, title, message, back=back, chrome=self._chrome(call, private=private)
        )
        return self._page(html, status, headers)

    def _back(self, call: Call) -> tuple[str, str]:
        parts = route_parts(call.request)
        if len(parts) >= 2 and parts[0] == "sagas" and parts[1]:
            return saga_path(parts[1]), "back to the saga"
        return "/", "all sagas"

    def _failure(self, call: Call, exc: Exception) -> Response:
        request = call.request
        if isinstance(exc, LoginNeeded):
            html = render_login(
                self._chrome(call, private=True),
                next_path=route_path(request),
                message="This dashboard needs its read token.",
            )
            return self._page(html, 401, {"WWW-Authenticate": 'Bearer realm="sagakit"'})
        if isinstance(exc, HttpError):
            private = exc.status in (401, 403) and exc.title.startswith("Refused: reads")
            return self._error(
                call,
                exc.status,
                exc.title,
                exc.message,
                back=exc.back,
                headers=exc.headers,
                private=private,
            )
        if isinstance(exc, SagaNotFoundError):
            return self._error(call, 404, "No such saga", str(exc), back=("/", "all sagas"))
        if isinstance(exc, SagaStateError | SagaConflictError):
            return self._error(call, 409, "Not possible now", str(exc), back=self._back(call))
        if isinstance(exc, SagaValidationError | ActionInputError):
            return self._error(call, 400, "Bad request", str(exc), back=self._back(call))
        if isinstance(exc, StoreError):
            log.warning("the database failed: %s", exc)
            return self._error(call, 503, "Database unavailable", str(exc), back=self._back(call))
        if isinstance(exc, SagaError):
            return self._error(call, 400, "Refused", str(exc), back=self._back(call))
        if isinstance(exc, TimeoutError):
            log.warning(
                "%s %s: the database did not answer in time", request.method, request.url.path
            )
            return self._error(
                call,
                504,
                "Timed out",
                f"The database did not answer within {REQUEST_TIMEOUT:.0f} s. Try again.",
                back=self._back(call),
            )
        incident = secrets.token_hex(4)
        log.error(
            "error %s while serving %s %s", incident, request.method, request.url.path, exc_info=exc
        )
        return self._error(
            call,
            500,
            "Something went wrong",
            f"The dashboard failed to answer this request (error id {incident}; the details "
            "are in the dashboard's log). Nothing is shown here on purpose.",
            back=self._back(call),
        )

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (no such route, a method a route does not take)."""
        assert isinstance(exc, HTTPException)

        async def explain(call: Call) -> Response:
            if exc.status_code == 405:
                parts = route_parts(request)
                if len(parts) == 3 and parts[0] == "sagas":
                    raise HttpError(
                        405,
                        "Method not allowed",
                        "Actions are buttons on the saga's page (a POST with the token).",
                        back=(saga_path(parts[1]), "to the saga"),
                        headers={"Allow": "POST"},
                    )
                raise HttpError(
                    405,
                    "Method not allowed",
                    f"{request.method} is not used here.",
                    headers=dict(exc.headers or {}),
                )
            if exc.status_code == 404:
                raise HttpError(404, "Not found", "There is no page here.", back=("/", "all sagas"))
            raise HttpError(exc.status_code, "Refused", str(exc.detail))

        return await self._wrap(explain)(request)

    # -- who may do what ----------------------------------------------------------------------

    # -- pages --------------------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n", headers=SECURITY_HEADERS)

    async def _index(self, call: Call) -> Response:
        await self._require_read(call)
        query = call.request.query_params
        filters = parse_filters(query)
        after = parse_time(filters.created_after, "created from")
        before = parse_time(filters.created_before, "created before")
        engine = await self._ready()
        admin = engine.admin

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
                id_prefix=filters.id_prefix or None,
                where=filters.where,
            )
            return counts, stranded, page

        counts, stranded, page = await self._call(load())
        outbox = await self._call(admin.outbox_backlog())
        queues = await self._call(admin.queues())
        schedules = await self._call(admin.schedules())
        chrome = self._chrome(call)
        html = render_index(
            counts=counts,
            sagas=list(page.sagas),
            next_cursor=page.next_cursor,
            filters=filters,
            refresh=refresh_seconds(query),
            stranded=stranded,
            outbox=outbox,
            queues=render_queues_card(queues, base=call.base),
            schedules=render_schedules_card(
                schedules,
                self.read_only,
                base=call.base,
                csrf=call.csrf,
                ask_token=self.authorize is None,
            ),
            health=await self._health(engine),
            flash=self.pop_flash(query.get("flash", "")),
            chrome=chrome,
        )
        return self._page(html)

    async def _health(self, engine: Engine) -> HealthReport | None:
        """The alert conditions of ``sagakit check`` (``engine.admin.health()``), or None
        when they could not be read (the page still shows; the log says why)."""
        try:
            return await self._call(engine.admin.health(**self.health_options))
        except (SagaError, TimeoutError) as exc:
            log.warning("the alert conditions could not be read: %s", exc)
            return None

    async def _sagas(self, call: Call) -> Response:
        parts = route_parts(call.request)
        if len(parts) < 2 or not parts[1] or len(parts) > 3:
            raise HttpError(404, "Not found", "There is no page here.", back=("/", "all sagas"))
        saga_id = parts[1]
        if call.request.method == "POST":
            if len(parts) == 2:
                raise HttpError(
                    400,
                    "No action chosen",
                    "Press one of the action buttons.",
                    back=(saga_path(saga_id), "back to the saga"),
                )
            return await self._action(call, saga_id, parts[2])
        if len(parts) == 3:
            raise HttpError(
                405,
                "Method not allowed",
                "Actions are buttons on the saga's page (a POST with the token).",
                back=(saga_path(saga_id), "to the saga"),
                headers={"Allow": "POST"},
            )
        return await self._saga(call, saga_id)

    async def _saga(self, call: Call, saga_id: str) -> Response:
        await self._require_read(call)
        engine = await self._ready()
        query = call.request.query_params
        run = query.get("run", "")
        if run.isdigit():  # an earlier run of a saga that continued as new
            snapshot = await self._call(engine.admin.get_run(saga_id, int(run)))
        else:
            snapshot = await self._call(engine.admin.get_saga(saga_id))
        position = None
        if snapshot.status == SagaStatus.QUEUED:
            with contextlib.suppress(SagaNotFoundError):  # gone since: show what was read
                position = await self._call(engine.admin.queue_position(saga_id))
        html = render_saga(
            snapshot,
            flash=self.pop_flash(query.get("flash", "")),
            refresh=refresh_seconds(query) if not snapshot.status.is_terminal else None,
            position=position,
            chrome=self._chrome(call),
        )
        return self._page(html)

    async def _action(self, call: Call, saga_id: str, name: str) -> Response:
        back = (saga_path(saga_id), "back to the saga")
        form = await self._read_form(call.request, back)
        await self._require_action(call, form, name, f"saga {saga_id}", back)
        request = parse_action(name, form)
        engine = await self._ready()
        snapshot = await self._call(perform(engine.admin, saga_id, request))
        log.info(
            "%s on saga %s by %s: now %s", request.action.name, saga_id, request.by, snapshot.status
        )
        key = self.push_flash(
            Flash("ok", f"{request.action.done}: the saga is now {snapshot.status}.")
        )
        return self._redirect(
            call, f"{saga_path(snapshot.saga_id)}?flash={key}"
        )  # a fork: the new saga

    async def _schedules(self, call: Call) -> Response:
        parts = route_parts(call.request)
        back = ("/", "all sagas")
        if len(parts) != 3 or not parts[1] or parts[2] not in ("pause", "resume"):
            raise HttpError(404, "Not found", "A schedule is paused or resumed.", back=back)
        name, action = parts[1], parts[2]
        form = await self._read_form(call.request, back)
        await self._require_action(call, form, f"schedule.{action}", f"schedule {name}", back)
        engine = await self._ready()
        change = engine.admin.pause_schedule if action == "pause" else engine.admin.resume_schedule
        await self._call(change(name, by=form.get("by", "").strip() or "dashboard"))
        log.info("schedule %s %sd from the dashboard", name, action)
        key = self.push_flash(Flash("ok", f"Schedule {name} {action}d."))
        return self._redirect(call, f"/?flash={key}")

    def _redirect(self, call: Call, path: str) -> Response:
        location = call.base + path
        return RedirectResponse(location, status_code=303)

    # -- login --------------------------------------------------------------------------------

    async def _login(self, call: Call) -> Response:
        request = call.request
        if self.authorize is not None or self.read_token is None:
            why = "your application's login decides" if self.authorize else "reads need no token"
            raise HttpError(404, "No login here", f"This dashboard has no login form: {why}.")
        if request.method == "GET":
            next_path = safe_next(request.query_params.get("next", "/"))
            return self._page(render_login(self._chrome(call, private=True), next_path=next_path))
        form = await self._read_form(request, ("/login", "log in"))
        next_path = safe_next(form.get("next", "/"))
        if not auth.csrf_matches(request.cookies.get(auth.CSRF_COOKIE), form.get(auth.CSRF_FIELD)):
            raise HttpError(
                403,
                "Refused: form check failed",
                "The login form did not carry this browser's CSRF value. Reload "
                "the page and try again.",
                back=("/login", "log in"),
            )
        supplied = form.get("read_token", "")
        if not (
            auth.token_matches(self.read_token, supplied)
            or auth.token_matches(self.token, supplied)
        ):
            log.warning(
                "refused a login from %s: wrong read token",
                request.client.host if request.client else "?",
            )
            html = render_login(
                self._chrome(call, private=True),
                next_path=next_path,
                message="That is not this dashboard's read token.",
            )
            return self._page(html, 403)
        call.cookies.append((auth.LOGIN_COOKIE, auth.login_value(self.read_token), auth.LOGIN_TTL))
        return self._redirect(call, next_path)

    async def _logout(self, call: Call) -> Response:
        form = await self._read_form(call.request, ("/", "all sagas"))
        if not auth.csrf_matches(
            call.request.cookies.get(auth.CSRF_COOKIE), form.get(auth.CSRF_FIELD)
        ):
            raise HttpError(403, "Refused: form check failed", "Reload the page and try again.")
        call.cookies.append((auth.LOGIN_COOKIE, "", None))
        return self._redirect(call, "/login" if self.read_token else "/")

    # -- metrics ------------------------------------------------------------------------------

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/metrics`` (Prometheus's text format), read like a page: the read token (a bearer
        header, as Prometheus sends it) or the login."""
        request = Request(scope, receive)
        call = Call(request, str(scope.get("root_path", "")).rstrip("/"), "", new_csrf=False)
        try:
            self._check_host(request)
            await self._require_read(call)
            engine = await self._ready()
            if self._metrics_app is None:
                self._metrics_app = _metrics_app(engine)
        except Exception as exc:
            await self._failure(call, exc)(scope, receive, send)
            return
        await self._metrics_app(scope, receive, send)


class _Asgi:
    """An ASGI callable that Starlette's Route serves as it is (a bound method would be
    taken for a request handler)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _metrics_app(engine: Engine) -> ASGIApp:
    """Engineer M's Prometheus endpoint (``sagakit.metrics``) on the dashboard's engine."""
    from ..metrics import metrics_app, metrics_available

    if not metrics_available():
        raise HttpError(
            404,
            "No metrics",
            "Prometheus metrics need prometheus_client: pip install 'sagakit[metrics]'.",
        )
    try:
        app: ASGIApp = metrics_app(engine)
    except SagaError as exc:  # the engine's metrics are off
        raise HttpError(404, "No metrics", str(exc)) from exc
    return app
