"""The web dashboard: counts by status, a filterable list of sagas, and a page per saga with
its timeline drawn as a chart, its journal, payloads and audit entries, and the admin actions
as buttons (they need the dashboard's token; without one it is read-only).

``sagakit dashboard --db URL`` runs it (see :func:`serve_dashboard`); :class:`Dashboard` starts
and stops it in-process. It is built on the standard library alone: server-rendered HTML,
inline CSS, the chart as inline SVG, no JavaScript.
"""

from __future__ import annotations

from .server import Dashboard, serve_dashboard

__all__ = ["Dashboard", "serve_dashboard"]
