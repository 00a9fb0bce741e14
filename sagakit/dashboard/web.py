"""The dashboard's requests below the pages: the errors a handler raises, a request's frame
(:class:`Call`), the form reader, the filters of the list, and :class:`Access`, who may read
and act (the rules themselves are in :mod:`.auth`)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote

from starlette.datastructures import QueryParams
from starlette.requests import Request

from ..errors import StoreError
from ..stores.sqlite.store import path_from_url
from . import auth
from .pages import ListFilters

__all__ = [
    "MAX_BODY",
    "SECURITY_HEADERS",
    "Access",
    "Call",
    "HttpError",
    "LoginNeeded",
    "check_database",
    "parse_filters",
    "parse_time",
    "refresh_seconds",
    "route_parts",
    "route_path",
    "safe_next",
]

log = logging.getLogger("sagakit.dashboard")

#: the largest POST body read (an action's form is a few hundred bytes)
MAX_BODY = 64 * 1024

SECURITY_HEADERS = {
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

READ_REFUSED = (
    "This dashboard has no read token, so it shows the sagas only to this machine (over "
    "loopback, not through a proxy). Start it with --read-token (or pass read_token= to "
    "sagakit.dashboard.app), or put your own authentication in front with authorize=."
)


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


class LoginNeeded(Exception):
    """Reads need the read token and the request brought none (or a wrong one)."""


@dataclass(slots=True)
class Call:
    """One request as the handlers see it: where the dashboard is mounted, the CSRF value
    of the page (new when the browser had none), and whether a login cookie let it in."""

    request: Request
    base: str
    csrf: str
    new_csrf: bool
    logged_in: bool = False
    cookies: list[tuple[str, str, int | None]] = field(default_factory=list)


def check_database(url: str) -> None:
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


def parse_time(value: str, what: str) -> datetime | None:
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


def refresh_seconds(query: Mapping[str, str]) -> int | None:
    try:
        seconds = int(query.get("refresh", ""))
    except ValueError:
        return None
    return seconds if 1 <= seconds <= 3600 else None


def route_parts(request: Request) -> list[str]:
    """The path below the mount point, split at its *encoded* slashes and then decoded: a
    saga id may hold ``/`` (sent as ``%2F``)."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1").split("?", 1)[0] if raw else quote(request.scope["path"])
    mounted = [p for p in str(request.scope.get("root_path", "")).split("/") if p]
    parts = path.split("/")[1:]
    return [unquote(p) for p in parts[len(mounted) :]]


def parse_filters(query: QueryParams) -> ListFilters:
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
        id_prefix=query.get("id", "").strip(),
        where=tuple(w.strip() for w in query.getlist("where") if w.strip()),
    )
    if filters.stranded and (filters.narrowed or filters.cursor):
        raise HttpError(
            400,
            "Bad filter",
            "The stranded list shows every stranded saga (newest first, up to the page size); "
            "it takes no other filter and no cursor.",
            back=("/?stranded=1", "all stranded sagas"),
        )
    return filters


def route_path(request: Request) -> str:
    """The request's path and query below the mount point (where a login goes back to)."""
    parts = route_parts(request)
    path = "/" + "/".join(quote(p, safe="") for p in parts)
    return path + (f"?{request.url.query}" if request.url.query else "")


def safe_next(value: str) -> str:
    """A path under the dashboard to go to after the login; anything else goes to the front
    page (no open redirect)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


class Access:
    """Who may read and who may act, per request: the Host check, the read token (bearer
    header or login cookie) or the loopback rule, the CSRF check, the operator token, or the
    user's ``authorize`` hook instead of the tokens."""

    token: str | None
    read_token: str | None
    authorize: auth.Authorize | None
    allowed_hosts: list[str] | None

    @property
    def read_only(self) -> bool:
        """Whether no action can be taken (no operator token and no ``authorize`` hook)."""
        return self.token is None and self.authorize is None

    def _check_host(self, request: Request) -> None:
        """Refuse foreign Host names where a web page could reach the dashboard through the
        browser (DNS rebinding: a page re-points its own name at 127.0.0.1): when reads need
        no token, only loopback names are answered; ``allowed_hosts`` names them all."""
        header = request.headers.get("host")
        if header is None:
            return
        name = auth.host_name(header)
        if self.allowed_hosts is not None:
            if name not in self.allowed_hosts and "*" not in self.allowed_hosts:
                raise HttpError(
                    400, "Wrong host", "This dashboard does not answer to this host name."
                )
            return
        scope = request.scope
        local = auth.over_loopback(scope.get("server"), scope.get("client"), request.headers)
        # off loopback, open reads are refused anyway (with a sentence naming --read-token)
        if self._reads_open and local and not auth.is_loopback(name):
            raise HttpError(
                400, "Wrong host", "This dashboard answers only to localhost addresses."
            )

    @property
    def _reads_open(self) -> bool:
        return self.read_token is None and self.authorize is None

    async def _ask(self, request: Request, action: str) -> bool:
        assert self.authorize is not None
        verdict = self.authorize(request, action)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return verdict is True

    async def _require_read(self, call: Call) -> None:
        request = call.request
        if self.authorize is not None:
            if not await self._ask(request, "read"):
                raise HttpError(
                    403,
                    "Refused: reads not allowed",
                    "Your login does not allow reading this dashboard.",
                )
            return
        if self.read_token is None:
            scope = request.scope
            if not auth.over_loopback(scope.get("server"), scope.get("client"), request.headers):
                raise HttpError(403, "Refused: reads need a token", READ_REFUSED)
            return
        supplied = auth.bearer(request.headers)
        if auth.token_matches(self.read_token, supplied) or auth.token_matches(
            self.token, supplied
        ):
            return
        if auth.login_valid(self.read_token, request.cookies.get(auth.LOGIN_COOKIE)):
            call.logged_in = True
            return
        raise LoginNeeded()

    async def _require_action(
        self, call: Call, form: Mapping[str, str], action: str, what: str, back: tuple[str, str]
    ) -> None:
        """CSRF first (unless a bearer header authenticates), then the hook or the token."""
        request = call.request
        supplied = auth.bearer(request.headers)
        if supplied is None and not auth.csrf_matches(
            request.cookies.get(auth.CSRF_COOKIE), form.get(auth.CSRF_FIELD)
        ):
            log.warning("refused %s on %s: the CSRF check failed", action, what)
            raise HttpError(
                403,
                "Refused: form check failed",
                "The form did not carry this browser's CSRF value (the page is older than "
                "your cookies, or the form came from another site). Reload the page and try "
                "again. Nothing was changed.",
                back=back,
            )
        if self.authorize is not None:
            if not await self._ask(request, action):
                raise HttpError(
                    403,
                    "Refused: not allowed",
                    f"Your login does not allow {action}. Nothing was changed.",
                    back=back,
                )
            return
        if self.read_only:
            log.warning("refused %s on %s: read-only", action, what)
            raise HttpError(
                403,
                "Refused: read-only",
                "This dashboard is read-only: it was started without a token, so it takes no "
                "action. Nothing was changed.",
                back=back,
            )
        supplied = supplied or form.get("token")
        if not auth.token_matches(self.token, supplied):
            client = request.client.host if request.client else "?"
            log.warning(
                "refused %s on %s from %s: %s token",
                action,
                what,
                client,
                "wrong" if supplied else "no",
            )
            raise HttpError(
                403,
                "Refused: token required",
                "The token is missing or wrong, so the action was refused. Nothing was changed.",
                back=back,
            )

    async def _read_form(self, request: Request, back: tuple[str, str]) -> dict[str, str]:
        length_text = request.headers.get("content-length")
        if length_text is not None:
            try:
                length = int(length_text)
            except ValueError:
                raise HttpError(400, "Bad request", "Content-Length is not a number.") from None
            if not 0 <= length <= MAX_BODY:
                raise HttpError(413, "Too large", f"A form may hold at most {MAX_BODY} bytes.")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise HttpError(413, "Too large", f"A form may hold at most {MAX_BODY} bytes.")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and kind != "application/x-www-form-urlencoded":
            raise HttpError(
                415,
                "Unsupported form",
                "Send the form as application/x-www-form-urlencoded.",
                back=back,
            )
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "Bad request", "The form is not valid UTF-8.", back=back) from None
        return {k: v[-1] for k, v in fields.items()}
