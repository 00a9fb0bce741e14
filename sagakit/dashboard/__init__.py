"""The web dashboard: counts by status and the alert conditions, a filterable list of sagas,
and a page per saga with its timeline drawn as a chart, its journal, payloads and audit
entries, and the admin actions as buttons.

* :func:`app` is the dashboard as an ASGI application (Starlette, Jinja2 templates), to mount
  under a path of your own application or to serve with any ASGI server.
* ``sagakit dashboard --db URL`` serves it with uvicorn (see :func:`serve_dashboard`);
  :class:`Dashboard` starts and stops it in-process, on a port of its own.

Server-rendered HTML, inline CSS, the chart as inline SVG, no JavaScript. Needs
``pip install 'sagakit[dashboard]'`` (:class:`DashboardNotInstalled` says so otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._extra import DashboardNotInstalled, require_dashboard
from .server import Dashboard, serve_dashboard

if TYPE_CHECKING:
    from ..engine import Engine
    from .asgi import DashboardApp
    from .auth import Authorize

__all__ = ["Dashboard", "DashboardNotInstalled", "app", "serve_dashboard"]


def app(
    engine_or_db_url: Engine | str,
    *,
    token: str | None = None,
    read_token: str | None = None,
    authorize: Authorize | None = None,
    allowed_hosts: Sequence[str] | None = None,
    health: Mapping[str, Any] | None = None,
    metrics: bool = True,
) -> DashboardApp:
    """The dashboard as a Starlette application: ``api.mount("/sagas", app(engine))``.

    Args:
        engine_or_db_url: an :class:`~sagakit.Engine` (used as it is: you open and close
            it), or a store URL (the app opens a read-only engine of its own: in its
            lifespan, or at the first request where sub-application lifespans do not run, as
            in a mounted app; ``sagakit_lifespan(engine, dashboard=this_app)`` closes it).
        token: the operator token every action needs (a form field or an
            ``Authorization: Bearer`` header); without it (and without ``authorize``) the
            dashboard is read-only.
        read_token: the token reading needs (a bearer header, or the login form at
            ``/login``, which sets an HttpOnly, SameSite=Strict cookie). Without it (and
            without ``authorize``) pages are shown only to requests over loopback that no
            proxy forwarded.
        authorize: your own authentication instead of the tokens:
            ``authorize(request, action) -> bool`` (or an awaitable of one), asked with
            ``"read"`` for every page and with the action's name (``"retry"``, ``"cancel"``,
            ``"schedule.pause"``...) for every action. The forms' CSRF check stays.
        allowed_hosts: the ``Host`` names answered (``["*"]``: any); by default, while
            reads need no token, only localhost names (against DNS rebinding).
        health: the keywords of ``engine.admin.health()`` for the front page's alerts
            (``{"max_running_age": 600, "max_failed": 0}``).
        metrics: serve ``/metrics`` (Prometheus, read like a page) when
            ``sagakit[metrics]`` is installed.

    Raises:
        DashboardNotInstalled: Starlette, Jinja2 or uvicorn is missing.
    """
    require_dashboard()
    from .asgi import DashboardApp

    return DashboardApp(
        engine_or_db_url,
        token=token,
        read_token=read_token,
        authorize=authorize,
        allowed_hosts=allowed_hosts,
        health=health,
        metrics=metrics,
    )
