"""The dashboard's pages: the saga list with counts, alerts and filters, one saga's page, the
login page and the error page, each a Jinja2 template of ``templates/`` (autoescaped) and the
context this module builds for it.

Pure functions of the data they get, so that tests can render a page without a server. The
pages need no JavaScript; the only moving part is an opt-in ``<meta http-equiv="refresh">``.
``base`` is where the dashboard is mounted (``""`` at the root, ``"/sagas"`` under
``app.mount("/sagas", ...)``): every link and form action starts with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup

from ..engine.snapshots import SagaSnapshot, StepSnapshot
from ..stores.base import SagaStatus
from ..timeline import VALUE_KINDS, describe_retry, format_duration, format_error, format_time
from ..urls import redact_url
from .actions import available_actions
from .auth import LOGIN_TTL
from .chart import render_timeline_svg
from .templating import render, saga_path

__all__ = [
    "Flash",
    "ListFilters",
    "PageChrome",
    "redact_url",
    "render_error",
    "render_index",
    "render_login",
    "render_saga",
    "saga_path",
]


@dataclass(frozen=True, slots=True)
class Flash:
    """A one-time message shown at the top of a page after an action."""

    kind: str  # "ok" or "error"
    text: str


@dataclass(frozen=True, slots=True)
class PageChrome:
    """What every page's frame shows: the database (its password hidden), the mode, where
    the dashboard is mounted, the CSRF value its forms carry, and whether a login cookie is
    in use (a "log out" button)."""

    db: str
    read_only: bool
    base: str = ""
    csrf: str = ""
    logged_in: bool = False
    #: the action form asks for the operator token (not when an ``authorize`` hook decides)
    ask_token: bool = True

    def context(self, title: str, **more: Any) -> dict[str, Any]:
        mode = "read-only" if self.read_only else "actions need the token"
        if not self.ask_token and not self.read_only:
            mode = "actions as your login allows"
        return {
            "title": title,
            "db": redact_url(self.db),
            "mode": mode,
            "base": self.base,
            "csrf": self.csrf,
            "logged_in": self.logged_in,
            "ask_token": self.ask_token,
            "read_only": self.read_only,
            "flash": None,
            "refresh": None,
            **more,
        }


@dataclass(frozen=True, slots=True)
class ListFilters:
    """The list page's filters, as the query string gave them (text, not yet checked)."""

    status: str = ""
    name: str = ""
    created_after: str = ""
    created_before: str = ""
    limit: int = 50
    cursor: str = ""
    #: list the stranded sagas (no live worker serves their version) instead
    stranded: bool = False
    #: the saga id starts with this
    id_prefix: str = ""
    #: ``input.customer_id=42``-style matches on the input or output (all must hold)
    where: tuple[str, ...] = field(default=())

    def query(self, **changes: str) -> str:
        """The query string of these filters (without the cursor unless given)."""
        values: dict[str, Any] = {
            "stranded": "1" if self.stranded else "",
            "status": self.status,
            "name": self.name,
            "id": self.id_prefix,
            "where": [w for w in self.where if w],
            "created_after": self.created_after,
            "created_before": self.created_before,
            "limit": "" if self.limit == 50 else str(self.limit),
        }
        values.update(changes)
        kept = {k: v for k, v in values.items() if v}
        return "?" + urlencode(kept, doseq=True) if kept else ""

    @property
    def narrowed(self) -> bool:
        """Whether a filter other than the page size and cursor is set."""
        return bool(
            self.status
            or self.name
            or self.id_prefix
            or any(self.where)
            or self.created_after
            or self.created_before
        )


def render_index(
    *,
    db: str = "",
    read_only: bool = True,
    counts: Mapping[str, int],
    sagas: Sequence[SagaSnapshot],
    next_cursor: str | None,
    filters: ListFilters,
    refresh: int | None = None,
    stranded: int | None = None,
    queues: str = "",
    schedules: str = "",
    health: Any = None,
    flash: Flash | None = None,
    chrome: PageChrome | None = None,
    outbox: int | None = None,
) -> str:
    """The front page: counts by status (and ``stranded``, the count of sagas no live worker
    serves, when given), the alert conditions (``health``, a :class:`sagakit.health.
    HealthReport`), the outbox backlog (``outbox``: messages to other services the relay has
    not published; None: the store keeps no outbox), the queue and schedule cards (rendered
    HTML), the filter form, one page of sagas and the pager. With ``filters.stranded``,
    ``sagas`` are the stranded ones and each row names the workflow version that no live
    worker serves."""
    chrome = chrome or PageChrome(db, read_only)
    title = "Stranded sagas" if filters.stranded else "Sagas"
    return render(
        "index.html",
        **chrome.context(
            title,
            refresh=refresh,
            flash=flash,
            counts=counts,
            total=sum(counts.values()),
            sagas=list(sagas),
            next_cursor=next_cursor,
            filters=filters,
            stranded=stranded,
            outbox=outbox,
            health=health,
            queues_card=Markup(queues),
            schedules_card=Markup(schedules),
            limits=sorted({25, 50, 100, 200, filters.limit}),
        ),
    )


def _error_summary(saga: SagaSnapshot) -> dict[str, Any] | None:
    error = saga.error
    if not error:
        return None
    if error.get("kind") == "non_determinism":
        text = "NonDeterminismError: " + str(
            error.get("message") or "the saga function no longer replays its journal"
        )
    elif error.get("cause"):
        text = format_error(error["cause"])
    elif saga.status == SagaStatus.CANCELLED:
        who = f" by {error['by']}" if error.get("by") else ""
        text = f"cancelled{who}: {error.get('reason', '')}"
    else:
        text = str(error.get("message") or format_error(error))
    failures = [format_error(f) for f in error.get("compensation_failures") or []]
    return {"text": text, "failures": failures}


def _journal_row(saga: SagaSnapshot, step: StepSnapshot) -> dict[str, Any]:
    failed = step.status == "failed"
    at = "?"
    if step.started_at is not None:
        at = "+" + format_duration(step.started_at - saga.created_at)
    value_kind = step.kind in VALUE_KINDS
    duration = "" if value_kind else format_duration(step.duration)
    if step.status == "running":
        duration = "running" if not saga.status.is_terminal else "cut short"
    error = format_error(step.error, with_step=False) if failed or step.error else ""
    row = {
        "seq": step.seq,
        "kind": step.kind,
        "name": step.name,
        "status": step.status,
        "failed": failed,
        "mark": "✗ " if failed else "",
        "attempts": "" if value_kind else str(step.attempts),
        "at": at,
        "duration": duration,
        "error": error,
        "output": step.output,
        "retry": "",
    }
    if step.status == "retrying" and not saga.status.is_terminal:
        # the error is the last attempt's; the next one is due at retry_at
        row.update(duration="waiting to retry", retry=describe_retry(step), mark="↻ ")
    row["remote"] = _remote_state(saga, step)
    if row["remote"].startswith("sent"):
        row["duration"] = "waiting for the reply"
    return row


def _remote_state(saga: SagaSnapshot, step: StepSnapshot) -> str:
    """Where a command to another service stands (a remote step, or a remote step's
    compensation): sent and waiting for the participant's reply, or replied; "" otherwise."""
    out = step.output
    if step.status == "running" and isinstance(out, dict) and "message_id" in out:
        if saga.status.is_terminal:
            return f"sent to {out.get('to')}; the saga ended before its reply"
        until = out.get("until")
        ends = ""
        if isinstance(until, int | float):
            ends = f"; times out {format_time(datetime.fromtimestamp(until, UTC))}"
        return (
            f"sent to {out.get('to')} (command {out.get('command')!r}, message "
            f"{out.get('message_id')}), waiting for its reply{ends}"
        )
    if step.kind == "remote" and step.status == "completed":
        return "replied"
    return ""


def render_saga(
    saga: SagaSnapshot,
    *,
    db: str = "",
    read_only: bool = True,
    flash: Flash | None = None,
    refresh: int | None = None,
    now: datetime | None = None,
    position: int | None = None,
    chrome: PageChrome | None = None,
) -> str:
    """One saga's page: header (with a queued saga's queue and ``position`` in it), error,
    timeline chart, actions, journal, payloads, audit."""
    chrome = chrome or PageChrome(db, read_only)
    actions = available_actions(saga.status)
    return render(
        "saga.html",
        **chrome.context(
            saga.saga_id,
            flash=flash,
            refresh=refresh,
            saga=saga,
            position=position,
            error=_error_summary(saga),
            chart=Markup(render_timeline_svg(saga, now=now)),
            actions=actions,
            mock=any(a.name == "skip" for a in actions)
            and saga.status in (SagaStatus.PARKED, SagaStatus.COMPENSATED),
            fork=any(a.name == "fork" for a in actions),
            journal=[_journal_row(saga, s) for s in sorted(saga.steps, key=lambda s: s.seq)],
        ),
    )


def render_error(
    status: int,
    title: str,
    message: str,
    *,
    db: str = "",
    read_only: bool = True,
    back: tuple[str, str] | None = None,
    chrome: PageChrome | None = None,
) -> str:
    """A plain error page: what went wrong in words, and a way back (``back`` is a path
    under the dashboard's root and its link text)."""
    chrome = chrome or PageChrome(db, read_only)
    links = [back] if back else []
    if not back or back[0] != "/":
        links.append(("/", "all sagas"))
    return render(
        "error.html", **chrome.context(title, status=status, message=message, links=links)
    )


def render_login(chrome: PageChrome, *, next_path: str, message: str = "") -> str:
    """The login form: the read token, kept in a cookie for :data:`~.auth.LOGIN_TTL`."""
    return render(
        "login.html",
        **chrome.context(
            "Log in", next=next_path, message=message, hours=LOGIN_TTL // 3600, logged_in=False
        ),
    )
