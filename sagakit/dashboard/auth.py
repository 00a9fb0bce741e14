"""Who may read the dashboard and who may act on it: the read token (a bearer header or the
login cookie), the operator token, the user's own ``authorize`` hook, the CSRF check of every
form, and the Host check against DNS rebinding.

Pure functions of the request's headers and cookies (no Starlette import), so that the rules
are tested on their own and the same in every transport.

* Reads are open only to this machine: without a read token (and without ``authorize``), a
  request that did not come over loopback, or came through a proxy, is refused.
* The login cookie is stateless: ``<issued>.<HMAC of issued under the read token>``, so that
  it works across processes and dies with the token that made it.
* CSRF: the double-submit pattern. A random value lives in an HttpOnly, SameSite=Strict cookie
  and in a hidden field of every form; a POST must carry both, equal. A request that
  authenticates with an ``Authorization`` header is exempt: a browser never adds one to a
  cross-site form.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "LOGIN_COOKIE",
    "LOGIN_TTL",
    "Authorize",
    "bearer",
    "csrf_matches",
    "host_name",
    "is_loopback",
    "login_valid",
    "login_value",
    "new_csrf",
    "token_matches",
]

#: the cookie the login form sets (its value proves the read token was typed)
LOGIN_COOKIE = "sagakit_login"
#: the cookie and the form field of the CSRF check
CSRF_COOKIE = "sagakit_csrf"
CSRF_FIELD = "csrf"
#: how long a login lasts, in seconds
LOGIN_TTL = 12 * 3600

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: headers a reverse proxy adds: a request that carries one came from elsewhere
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")

#: the user's own authentication: ``authorize(request, action)`` with ``action`` "read" for a
#: page, or the action's name ("retry", "cancel", "schedule.pause", ...); True lets it through
Authorize = Callable[[Any, str], bool | Awaitable[bool]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) can only be reached from this machine."""
    host = host.strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a ``Host`` header: ``[::1]:8700`` → ``::1``, ``a:80`` → ``a``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def over_loopback(
    server: tuple[str, int | None] | None,
    client: tuple[str, int] | None,
    headers: Mapping[str, str],
) -> bool:
    """Whether a request reached the server on a loopback address, from a loopback address,
    without a proxy in between (a proxy on this machine forwards the world)."""
    if server is None or not is_loopback(str(server[0])):
        return False
    if client is not None and not is_loopback(str(client[0])):
        return False
    return not any(name in headers for name in _PROXY_HEADERS)


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def token_matches(configured: str | None, supplied: str | None) -> bool:
    """Whether ``supplied`` is the configured token, compared in constant time. Without a
    configured token nothing matches."""
    if not configured or not supplied:
        return False
    return hmac.compare_digest(configured.encode(), supplied.encode())


def _sign(read_token: str, issued: int) -> str:
    return hmac.new(
        read_token.encode(), f"sagakit-login:{issued}".encode(), hashlib.sha256
    ).hexdigest()


def login_value(read_token: str, now: float | None = None) -> str:
    """The login cookie's value for a reader who gave ``read_token``."""
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_sign(read_token, issued)}"


def login_valid(read_token: str | None, value: str | None, now: float | None = None) -> bool:
    """Whether a login cookie was made with ``read_token`` less than :data:`LOGIN_TTL` ago."""
    if not read_token or not value:
        return False
    issued_text, _, signature = value.partition(".")
    try:
        issued = int(issued_text)
    except ValueError:
        return False
    age = (time.time() if now is None else now) - issued
    if not 0 <= age <= LOGIN_TTL:
        return False
    return hmac.compare_digest(signature.encode(), _sign(read_token, issued).encode())


def new_csrf() -> str:
    """A fresh CSRF value for the cookie and the forms."""
    return secrets.token_urlsafe(24)


def csrf_matches(cookie: str | None, field: str | None) -> bool:
    """Whether a POST carries the same CSRF value in its cookie and its form."""
    if not cookie or not field:
        return False
    return hmac.compare_digest(cookie.encode(), field.encode())
