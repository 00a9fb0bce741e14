"""The dashboard's view of cron schedules: the "Schedules" card of the front page (each
schedule's cron, next and last tick, and a pause or resume button) and the POST that pauses or
resumes one (``/schedules/NAME/pause``, ``/schedules/NAME/resume``: with the operator token,
like a saga's actions)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..cli.schedules import schedule_row
from ..stores.scheduling import ScheduleState
from .actions import token_matches
from .pages import Flash

if TYPE_CHECKING:
    from .server import Response, _Handler

__all__ = ["render_schedules_card", "schedule_action"]

log = logging.getLogger("sagakit.dashboard")

_HEADERS = ("Name", "Cron", "Time zone", "Workflow", "Next tick", "Last tick", "Paused")


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def render_schedules_card(schedules: Sequence[ScheduleState], read_only: bool) -> str:
    """The front page's card: one row per schedule, with its pause or resume button (a form
    with the token field) unless the dashboard is read-only. Empty without schedules."""
    if not schedules:
        return ""
    head = "".join(f"<th>{h}</th>" for h in _HEADERS) + ("" if read_only else "<th></th>")
    rows = []
    for state in schedules:
        cells = "".join(f"<td>{_e(cell)}</td>" for cell in schedule_row(state))
        if not read_only:
            action = "resume" if state.paused else "pause"
            path = f"/schedules/{quote(state.name, safe='')}/{action}"
            cells += (
                f'<td><form method="post" action="{_e(path)}">'
                '<input type="password" name="token" placeholder="token" '
                'autocomplete="current-password">'
                f'<button type="submit">{action}</button></form></td>'
            )
        rows.append(f"<tr>{cells}</tr>")
    return (
        '<section class="schedules"><h2>Schedules</h2>'
        f'<table class="schedules"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def schedule_action(handler: _Handler, name: str, action: str) -> Response:
    """Pause or resume schedule ``name`` for a POST carrying the operator token; back to the
    front page with a message."""
    from .server import HttpError, Response  # the server imports this module

    back = ("/", "all sagas")
    form = handler._read_form(back)
    dashboard = handler.dashboard
    if action not in ("pause", "resume"):
        raise HttpError(404, "Not found", "A schedule is paused or resumed.", back=back)
    if dashboard.read_only:
        raise HttpError(
            403,
            "Refused: read-only",
            "This dashboard is read-only: it was started without a token, so it takes no "
            "action. Nothing was changed.",
            back=back,
        )
    supplied = handler._bearer() or form.get("token")
    if not token_matches(dashboard.token, supplied):
        log.warning(
            "refused %s of schedule %s: %s token", action, name, "wrong" if supplied else "no"
        )
        raise HttpError(
            403,
            "Refused: token required",
            "The token is missing or wrong, so the action was refused. Nothing was changed.",
            back=back,
        )
    admin = dashboard.engine.admin
    change = admin.pause_schedule if action == "pause" else admin.resume_schedule
    dashboard.call(change(name, by="dashboard"))
    log.info("schedule %s %sd from the dashboard", name, action)
    key = dashboard.push_flash(Flash("ok", f"Schedule {name} {action}d."))
    location = f"/?flash={key}"
    body = f'<!doctype html><p><a href="{location}">back</a></p>'
    return Response(303, body.encode(), headers={"Location": location})
