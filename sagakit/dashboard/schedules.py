"""The dashboard's view of cron schedules: the "Schedules" card of the front page (each
schedule's cron, next and last tick, and a pause or resume button). The POST that pauses or
resumes one (``/schedules/NAME/pause``, ``/schedules/NAME/resume``) is an action like a saga's:
see :mod:`.asgi`."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from ..cli.schedules import schedule_row
from ..stores.scheduling import ScheduleState
from .templating import render

__all__ = ["render_schedules_card"]

_HEADERS = ("Name", "Cron", "Time zone", "Workflow", "Next tick", "Last tick", "Paused")


def render_schedules_card(
    schedules: Sequence[ScheduleState],
    read_only: bool,
    *,
    base: str = "",
    csrf: str = "",
    ask_token: bool = True,
) -> str:
    """The front page's card: one row per schedule, with its pause or resume button (a form
    with the token field) unless the dashboard is read-only. Empty without schedules."""
    if not schedules:
        return ""
    rows = [
        {
            "cells": schedule_row(state),
            "quoted": quote(state.name, safe=""),
            "action": "resume" if state.paused else "pause",
        }
        for state in schedules
    ]
    return render(
        "schedules.html",
        headers=_HEADERS,
        rows=rows,
        read_only=read_only,
        base=base,
        csrf=csrf,
        ask_token=ask_token,
    )
