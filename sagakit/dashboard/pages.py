"""The dashboard's pages as HTML strings: the saga list with counts and filters, one saga's
page, and the error page.

Pure functions of the data they get, so that tests can render a page without a server. Every
value that comes from the database (ids, names, inputs, outputs, errors, reasons) goes through
:func:`html.escape`: a saga's input may well contain HTML. The pages need no JavaScript; the
only moving part is an opt-in ``<meta http-equiv="refresh">``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from ..engine.snapshots import AuditEntry, SagaSnapshot, StepSnapshot
from ..stores.base import SagaStatus
from ..stores.queueing import QueueState
from ..timeline import VALUE_KINDS, describe_retry, format_duration, format_error, format_time
from .actions import Action, available_actions
from .chart import render_timeline_svg
from .queues import QUEUE_STYLE, render_queue_meta, render_queues_card

__all__ = [
    "Flash",
    "ListFilters",
    "redact_url",
    "render_error",
    "render_index",
    "render_saga",
    "saga_path",
]

#: the most characters of one JSON value a page shows (inputs can be large)
MAX_JSON = 20_000
STYLE = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d8dee4;--bg:#f6f8fa;--accent:#0969da}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--fg);background:#fff}
header.top{background:#24292f;color:#fff;padding:10px 24px;display:flex;gap:16px;
align-items:center}
header.top a{color:#fff;text-decoration:none;font-weight:600;font-size:16px}
header.top .db{color:#afb8c1;font-size:12px;font-family:ui-monospace,monospace}
header.top .mode{margin-left:auto;font-size:12px;padding:2px 8px;border-radius:10px;
background:#3d444d;color:#e6edf3}
main{max-width:1240px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:20px;margin:4px 0 6px;display:flex;gap:10px;align-items:center;flex-wrap:wrap}
h1 code{font-size:19px}
h2{font-size:15px;margin:26px 0 8px;padding-bottom:4px;border-bottom:1px solid var(--line)}
a{color:var(--accent)}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,"DejaVu Sans Mono",Menlo,monospace}
pre.json{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:10px 12px;
margin:0;overflow:auto;max-height:360px;font-size:12.5px}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;color:var(--muted);font-weight:600;border-bottom:1px solid var(--line);
padding:6px 8px;white-space:nowrap}
td{border-bottom:1px solid #eaeef2;padding:6px 8px;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.failed td{background:#fff6f6}
.badge{display:inline-block;padding:1px 9px;border-radius:11px;font-size:12px;font-weight:600;
letter-spacing:.02em}
.s-COMPLETED{background:#dafbe1;color:#116329}.s-COMPENSATED{background:#fff1c2;color:#7d4e00}
.s-FAILED{background:#ffe2e0;color:#a40e26}.s-CANCELLED{background:#eee8f8;color:#5a3e8a}
.s-PARKED{background:#ffe5cc;color:#9a3412}.s-SUSPENDED{background:#ddf4ff;color:#0550ae}
.s-RUNNING{background:#d8f3f6;color:#0e6470}.s-COMPENSATING{background:#fff1c2;color:#7d4e00}
.s-PENDING{background:#eaeef2;color:#424a53}
.counts{display:grid;grid-template-columns:repeat(auto-fill,minmax(108px,1fr));gap:8px;
margin:6px 0 16px}
.count{display:block;padding:7px 10px 8px;border:1px solid var(--line);border-left-width:4px;
border-radius:6px;text-decoration:none;color:var(--fg)}
.count:hover{border-color:var(--accent)}
.count .n{display:block;font-size:22px;font-weight:650;font-variant-numeric:tabular-nums}
.count .label{display:block;font-size:10.5px;font-weight:600;letter-spacing:.03em;
color:var(--muted)}
.count.zero .n{color:#8c959f}.count.active{outline:2px solid var(--accent)}
.c-ALL{border-left-color:#57606a}.c-PENDING{border-left-color:#8c959f}
.c-RUNNING{border-left-color:#1b9aaa}.c-SUSPENDED{border-left-color:#218bff}
.c-PARKED{border-left-color:#e16f24}.c-COMPENSATING{border-left-color:#d4a72c}
.c-COMPLETED{border-left-color:#2da44e}.c-COMPENSATED{border-left-color:#d4a72c}
.c-FAILED{border-left-color:#cf222e}.c-CANCELLED{border-left-color:#8250df}
.c-STRANDED{border-left-color:#bc4c00;border-style:dashed solid dashed solid}
.count.c-STRANDED:not(.zero) .n{color:#bc4c00}
form.filters{display:flex;flex-wrap:wrap;gap:10px;align-items:end;background:var(--bg);
border:1px solid var(--line);border-radius:8px;padding:10px 12px;margin-bottom:12px}
label{display:flex;flex-direction:column;font-size:12px;color:var(--muted);gap:3px}
input,select,textarea{font:inherit;font-size:13px;padding:5px 7px;border:1px solid #c9d1d9;
border-radius:6px;background:#fff;color:var(--fg)}
textarea{min-height:34px;font-family:ui-monospace,monospace}
button{font:inherit;font-size:13px;font-weight:600;padding:6px 14px;border-radius:6px;
border:1px solid #1f883d;background:#1f883d;color:#fff;cursor:pointer}
button.secondary{background:#f6f8fa;color:var(--fg);border-color:#c9d1d9}
button.danger{background:#fff;color:#cf222e;border-color:#cf222e}
.pager{display:flex;gap:16px;margin-top:12px}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;font-size:13px;
margin:8px 0 4px}
.meta dt{color:var(--muted)}.meta dd{margin:0}
.flash{padding:9px 12px;border-radius:6px;margin:10px 0;border:1px solid}
.flash.ok{background:#dafbe1;border-color:#4ac26b;color:#116329}
.flash.error{background:#ffebe9;border-color:#ff8182;color:#82071e}
.errorbox{background:#fff6f6;border:1px solid #ffcecb;border-radius:6px;padding:8px 12px;
color:#82071e;margin:10px 0}
.panel{border:1px solid var(--line);border-radius:8px;padding:12px 14px;background:#fbfcfd}
.panel .fields{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:10px}
.panel .fields label.wide{flex:1;min-width:260px}
.panel .buttons{display:flex;flex-wrap:wrap;gap:8px}
.panel .help{font-size:12px;color:var(--muted);margin:8px 0 0;padding-left:18px}
.readonly{font-size:13px;color:var(--muted)}
.muted{color:var(--muted)}.small{font-size:12px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.grid2 h3{font-size:13px;margin:0 0 6px;color:var(--muted)}
details summary{cursor:pointer;color:var(--accent)}
.chart{border:1px solid var(--line);border-radius:8px;padding:8px 6px 2px}
.timeline text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
font-size:12px}
.timeline .row-band{fill:#f6f8fa}
.timeline .row-label{fill:#1f2328;font-weight:600}
.timeline .row-kind{fill:#8c959f;font-size:10.5px}
.timeline .bar.step,.timeline .legend-step{fill:#2da44e}
.timeline .bar.compensation,.timeline .legend-compensation{fill:#d4a72c}
.timeline .bar.wait,.timeline .legend-wait{fill:url(#hatch);stroke:#6e9be8;stroke-width:1}
.timeline .hatch-bg{fill:#e6eefc}.timeline .hatch-line{stroke:#a9c1f0;stroke-width:3}
.timeline .bar.bar-failed,.timeline .legend-failed{fill:#cf222e;stroke:none}
.timeline .bar.bar-running{opacity:.55}
.timeline .bar.open{fill:#fff;stroke:#bc4c00;stroke-width:1.5;stroke-dasharray:5 3}
.timeline .bar.open-suspended,.timeline .bar.open-pending{stroke:#0969da}
.timeline .bar.open-running,.timeline .bar.open-compensating{stroke:#0e6470}
.timeline .failure-mark circle{fill:#cf222e;stroke:#fff;stroke-width:2}
.timeline .failure-mark path{stroke:#fff;stroke-width:2;stroke-linecap:round}
.timeline .attempt-notch{stroke:#fff;stroke-width:1.5;opacity:.9}
.timeline .bar-note{fill:#57606a;font-size:11px}
.timeline .note-failed{fill:#a40e26;font-weight:600}
.timeline .note-inside{fill:#fff;paint-order:stroke;stroke:#cf222e;stroke-width:4px;
stroke-linejoin:round}
.timeline .audit-line{stroke:#8250df;stroke-width:1.5;stroke-dasharray:3 3}
.timeline .audit-label{fill:#6639ba;font-size:11px;font-weight:700}
.timeline .axis,.timeline .tick{stroke:#8c959f}
.timeline .tick-label{fill:#57606a;font-size:11px}
.timeline .gap-band{fill:#eef1f4;opacity:.75}.timeline .gap-mask{fill:#fff}
.timeline .bar.replaced{opacity:.45}
.timeline .axis-break{stroke:#57606a;stroke-width:1.5}
.timeline .gap-label{fill:#57606a;font-size:11px;font-style:italic}
.timeline .legend{fill:#57606a;font-size:11px}
"""


@dataclass(frozen=True, slots=True)
class Flash:
    """A one-time message shown at the top of a page after an action."""

    kind: str  # "ok" or "error"
    text: str


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

    def query(self, **changes: str) -> str:
        """The query string of these filters (without the cursor unless given)."""
        values = {
            "stranded": "1" if self.stranded else "",
            "status": self.status,
            "name": self.name,
            "created_after": self.created_after,
            "created_before": self.created_before,
            "limit": "" if self.limit == 50 else str(self.limit),
        }
        values.update(changes)
        kept = {k: v for k, v in values.items() if v}
        return "?" + urlencode(kept) if kept else ""


def e(value: Any) -> str:
    """Text escaped for HTML, attributes included."""
    return escape(str(value), quote=True)


def saga_path(saga_id: str) -> str:
    """The saga page's path; ids may hold any character, ``/`` included."""
    return "/sagas/" + quote(saga_id, safe="")


def redact_url(url: str) -> str:
    """The store URL without its password, for the page header."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host += f":{parts.port}"
        netloc = f"{parts.username or ''}:***@{host}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "(unreadable URL)"


def _json_text(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)
    if len(text) > MAX_JSON:
        text = text[:MAX_JSON] + f"\n… ({len(text) - MAX_JSON:,} more characters not shown)"
    return text


def _json_block(value: Any, css: str = "json") -> str:
    return f'<pre class="{css}">{e(_json_text(value))}</pre>'


def _badge(status: str) -> str:
    return f'<span class="badge s-{e(status)}" data-status="{e(status)}">{e(status)}</span>'


def _time(value: datetime | None) -> str:
    if value is None:
        return '<span class="muted">—</span>'
    iso = value.astimezone(UTC).isoformat()
    return f'<time datetime="{e(iso)}">{e(format_time(value))}</time>'


def _layout(
    title: str,
    body: str,
    *,
    db: str,
    read_only: bool,
    flash: Flash | None = None,
    refresh: int | None = None,
) -> str:
    mode = "read-only" if read_only else "actions need the token"
    meta_refresh = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    flash_html = (
        f'<div class="flash {e(flash.kind)}" role="status">{e(flash.text)}</div>' if flash else ""
    )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{meta_refresh}<title>{e(title)} · sagakit</title>"
        f"<style>{STYLE}{QUEUE_STYLE}</style></head><body>"
        '<header class="top"><a href="/">sagakit dashboard</a>'
        f'<span class="db" title="database">{e(redact_url(db))}</span>'
        f'<span class="mode">{e(mode)}</span></header>'
        f"<main>{flash_html}{body}</main></body></html>"
    )


# -- the list page -----------------------------------------------------------------------------


def _counts(
    counts: Mapping[str, int], active: str, stranded: int | None, stranded_view: bool
) -> str:
    total = sum(counts.values())
    all_active = " active" if not active and not stranded_view else ""
    cells = [
        f'<a class="count c-ALL{all_active}" href="/" data-status="ALL">'
        f'<span class="n">{total:,}</span><span class="label">ALL</span></a>'
    ]
    for status, n in counts.items():
        css = f"count c-{e(status)}" + (" zero" if n == 0 else "")
        css += " active" if status == active else ""
        cells.append(
            f'<a class="{css}" href="/?{e(urlencode({"status": status}))}" '
            f'data-status="{e(status)}"><span class="n">{n:,}</span>'
            f'<span class="label">{e(status)}</span></a>'
        )
    if stranded is not None:
        # not a status (a stranded saga is SUSPENDED, PARKED, ...): marked apart, not in ALL
        css = "count c-STRANDED" + (" zero" if stranded == 0 else "")
        css += " active" if stranded_view else ""
        cells.append(
            f'<a class="{css}" href="/?stranded=1" id="stranded-count" '
            'title="sagas not ended whose workflow version no live worker serves">'
            f'<span class="n">{stranded:,}</span><span class="label">STRANDED</span></a>'
        )
    return f'<nav class="counts" aria-label="sagas by status">{"".join(cells)}</nav>'


def _filters(filters: ListFilters, statuses: Iterable[str]) -> str:
    options = ['<option value="">any status</option>']
    for status in statuses:
        selected = " selected" if status == filters.status.upper() else ""
        options.append(f'<option value="{e(status)}"{selected}>{e(status)}</option>')
    limits = "".join(
        f'<option value="{n}"{" selected" if n == filters.limit else ""}>{n}</option>'
        for n in sorted({25, 50, 100, 200, filters.limit})
    )
    return (
        '<form class="filters" method="get" action="/">'
        f'<label>Status<select name="status">{"".join(options)}</select></label>'
        '<label>Workflow<input name="name" placeholder="e.g. Checkout" '
        f'value="{e(filters.name)}"></label>'
        '<label>Created from (UTC)<input type="datetime-local" step="1" name="created_after" '
        f'value="{e(filters.created_after)}"></label>'
        '<label>Created before (UTC)<input type="datetime-local" step="1" '
        f'name="created_before" value="{e(filters.created_before)}"></label>'
        f'<label>Per page<select name="limit">{limits}</select></label>'
        '<button type="submit">Filter</button>'
        '<a href="/" class="small">clear</a></form>'
    )


def render_index(
    *,
    db: str,
    read_only: bool,
    counts: Mapping[str, int],
    sagas: Sequence[SagaSnapshot],
    next_cursor: str | None,
    filters: ListFilters,
    refresh: int | None = None,
    stranded: int | None = None,
    queues: Sequence[QueueState] = (),
    schedules: str = "",
) -> str:
    """The front page: counts by status (and ``stranded``, the count of sagas no live worker
    serves, when given), the filter form, one page of sagas and the pager. With
    ``filters.stranded``, ``sagas`` are the stranded ones and each row names the workflow
    version that no live worker serves."""
    rows = []
    for saga in sagas:
        took = format_duration(saga.updated_at - saga.created_at)
        if not saga.status.is_terminal:
            took = "—"
        why = f'<td class="why">{_unserved(saga)}</td>' if filters.stranded else ""
        rows.append(
            f'<tr data-saga="{e(saga.saga_id)}">'
            f'<td><a class="mono" href="{e(saga_path(saga.saga_id))}">{e(saga.saga_id)}</a></td>'
            f'<td>{e(saga.name)}</td><td class="version mono">{e(saga.version or "")}</td>'
            f"<td>{_badge(saga.status)}</td>"
            f"<td>{_time(saga.created_at)}</td><td>{_time(saga.updated_at)}</td>"
            f'<td class="num">{e(took)}</td>{why}</tr>'
        )
    if rows:
        table = (
            '<table class="sagas"><thead><tr><th>Saga</th><th>Workflow</th><th>Version</th>'
            "<th>Status</th><th>Created</th><th>Updated</th><th>Duration</th>"
            f"{'<th>Why stranded</th>' if filters.stranded else ''}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    elif filters.stranded:
        table = (
            '<p class="muted empty" id="none-stranded">No stranded sagas: a live worker serves '
            "the workflow version of every saga that has not ended.</p>"
        )
    else:
        table = '<p class="muted empty">No saga matches these filters.</p>'
    pager = []
    if filters.cursor:
        pager.append(f'<a href="/{e(filters.query())}">← first page</a>')
    if next_cursor:
        pager.append(
            f'<a rel="next" href="/{e(filters.query(cursor=next_cursor))}">next page →</a>'
        )
    if refresh:
        toggle = f'<a href="/{e(filters.query(cursor=filters.cursor))}">stop auto-refresh</a>'
    else:
        toggle = (
            f'<a href="/{e(filters.query(cursor=filters.cursor, refresh="5"))}">'
            "auto-refresh every 5 s</a>"
        )
    title = "Stranded sagas" if filters.stranded else "Sagas"
    intro = _stranded_intro(len(sagas), stranded, filters.limit) if filters.stranded else ""
    body = (
        f'<h1>{title} <span class="small muted" style="margin-left:auto">{toggle}</span></h1>'
        f"{_counts(counts, filters.status.upper(), stranded, filters.stranded)}"
        f"{render_queues_card(queues)}"
        f"{schedules}"
        f"{_filters(filters, counts.keys())}{intro}{table}"
        f'<div class="pager">{"".join(pager)}</div>'
    )
    return _layout(title, body, db=db, read_only=read_only, refresh=refresh)


def _unserved(saga: SagaSnapshot) -> str:
    version = (
        f"version <code>{e(saga.version)}</code>" if saga.version else "the unversioned definition"
    )
    return f"no live worker serves <code>{e(saga.name)}</code> {version}"


def _stranded_intro(shown: int, total: int | None, limit: int) -> str:
    more = ""
    if total is not None and total > shown:
        more = (
            f" Showing the newest {shown:,} of {total:,}; "
            f'<a href="/?{e(urlencode({"stranded": "1", "limit": "500"}))}">show up to 500</a>.'
            if limit < 500
            else f" Showing the newest {shown:,} of {total:,}."
        )
    return (
        '<p class="small muted" id="stranded-help">These sagas have not ended, and no live '
        "worker (one whose heartbeat is younger than 3 of its leases) serves their workflow "
        "at their version, so nothing runs them. Deploy (or keep running) a worker that "
        f"registers that version, and they go on.{more}</p>"
    )


# -- the saga page -----------------------------------------------------------------------------


def _meta(saga: SagaSnapshot) -> str:
    items: list[tuple[str, str]] = [
        ("workflow", e(saga.name)),
        (
            "version",
            f'<span class="mono" id="version">{e(saga.version)}</span>'
            if saga.version
            else '<span class="muted" id="version">unversioned</span>',
        ),
        ("created", _time(saga.created_at)),
        ("updated", _time(saga.updated_at)),
    ]
    took = format_duration(saga.updated_at - saga.created_at)
    if saga.status.is_terminal:
        items.append(("duration", e(took)))
    if saga.owner:
        lease = format_time(saga.lease_expires_at)
        items.append(
            ("owner", f'<span class="mono">{e(saga.owner)}</span> (lease until {e(lease)})')
        )
    if saga.wake_at:
        items.append(("wakes", _time(saga.wake_at)))
    if saga.wait_token:
        items.append(("wait token", f'<span class="mono">{e(saga.wait_token)}</span>'))
    if saga.parent_id:
        items.append(
            (
                "parent",
                f'<a class="mono" href="{e(saga_path(saga.parent_id))}">{e(saga.parent_id)}</a>',
            )
        )
    if saga.object_key:
        items.append(("object", f'<span class="mono">{e(saga.object_key)}</span>'))
    cells = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return f'<dl class="meta">{cells}</dl>'


def _error_summary(saga: SagaSnapshot) -> str:
    error = saga.error
    if not error:
        return ""
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
    failures = error.get("compensation_failures") or []
    extra = ""
    if failures:
        items = "".join(f"<li>{e(format_error(f))}</li>" for f in failures)
        extra = f"<div>compensations that failed for good:</div><ul>{items}</ul>"
    return f'<div class="errorbox"><strong>{e(text)}</strong>{extra}</div>'


def _actions(saga: SagaSnapshot, read_only: bool) -> str:
    actions = available_actions(saga.status)
    if not actions:
        return (
            f'<h2>Actions</h2><p class="readonly">No action applies to a {e(saga.status)} saga.</p>'
        )
    if read_only:
        names = ", ".join(a.label.lower() for a in actions)
        return (
            '<h2>Actions</h2><p class="readonly" id="read-only">This dashboard is read-only: '
            "it was started without a token. Start it with <code>--token</code> to "
            f"{e(names)} from here.</p>"
        )
    path = saga_path(saga.saga_id)
    skip = any(a.name == "skip" for a in actions)
    mock = (
        '<label class="wide">Mock output for skip (JSON, optional)'
        '<textarea name="mock_output" rows="1" placeholder=\'{"payment_id": "manual-1"}\'>'
        "</textarea></label>"
        if skip and saga.status in (SagaStatus.PARKED, SagaStatus.COMPENSATED)
        else ""
    )
    fork = (
        '<label>From seq (fork)<input name="from_seq" inputmode="numeric" size="4"></label>'
        '<label>New id (fork, optional)<input name="new_id" maxlength="200"></label>'
        if any(a.name == "fork" for a in actions)
        else ""
    )
    buttons = "".join(_button(path, a) for a in actions)
    helps = "".join(f"<li><strong>{e(a.label)}</strong>: {e(a.help)}</li>" for a in actions)
    return (
        "<h2>Actions</h2>"
        f'<form class="panel actions" method="post" action="{e(path)}">'
        # pressing Enter in a field submits with the first button: a disabled one does nothing,
        # so that no action (compensate, say) runs by accident
        '<button type="submit" disabled hidden aria-hidden="true"></button>'
        '<div class="fields">'
        '<label>Token<input type="password" name="token" autocomplete="current-password">'
        "</label>"
        '<label>Your name<input name="by" maxlength="100" placeholder="dashboard"></label>'
        '<label class="wide">Reason (required to cancel)<input name="reason" '
        'maxlength="500"></label>'
        f"{mock}{fork}</div>"
        f'<div class="buttons">{buttons}</div><ul class="help">{helps}</ul></form>'
    )


def _button(path: str, action: Action) -> str:
    css = "danger" if action.danger else ("secondary" if action.name != "retry" else "")
    return (
        f'<button type="submit" class="{css}" name="action" value="{e(action.name)}" '
        f'formaction="{e(path)}/{e(action.name)}" data-action="{e(action.name)}">'
        f"{e(action.label)}</button>"
    )


def _preview(value: Any) -> str:
    if value is None:
        return ""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= 60:
        return f'<code class="small">{e(text)}</code>'
    return (
        f'<details><summary><code class="small">{e(text[:57])}…</code></summary>'
        f"{_json_block(value)}</details>"
    )


def _journal(saga: SagaSnapshot) -> str:
    if not saga.steps:
        return '<p class="muted">No journal entries yet.</p>'
    rows = []
    for step in sorted(saga.steps, key=lambda s: s.seq):
        rows.append(_journal_row(saga, step))
    return (
        '<table class="journal"><thead><tr><th>#</th><th>Kind</th><th>Name</th>'
        "<th>Status</th><th>Attempts</th><th>Started</th><th>Duration</th>"
        "<th>Output / error</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _journal_row(saga: SagaSnapshot, step: StepSnapshot) -> str:
    failed = step.status == "failed"
    at = "?"
    if step.started_at is not None:
        at = "+" + format_duration(step.started_at - saga.created_at)
    value_kind = step.kind in VALUE_KINDS
    duration = "" if value_kind else format_duration(step.duration)
    if step.status == "running":
        duration = "running" if not saga.status.is_terminal else "cut short"
    attempts = "" if value_kind else str(step.attempts)
    if failed or step.error:
        detail = f'<span class="note-failed">{e(format_error(step.error, with_step=False))}</span>'
    else:
        detail = _preview(step.output)
    mark = "✗ " if failed else ""
    if step.status == "retrying" and not saga.status.is_terminal:
        # the error is the last attempt's; the next one is due at retry_at
        duration = "waiting to retry"
        detail = f'<div class="small">{e(describe_retry(step))}</div>{detail}'
        mark = "↻ "
    return (
        f'<tr class="{"failed" if failed else ""}" data-seq="{step.seq}">'
        f'<td class="num">{step.seq}</td><td>{e(step.kind)}</td>'
        f"<td><strong>{e(step.name)}</strong></td><td>{mark}{e(step.status)}</td>"
        f'<td class="num">{attempts}</td><td class="num">{e(at)}</td>'
        f'<td class="num">{e(duration)}</td><td>{detail}</td></tr>'
    )


def _audit(entries: Sequence[AuditEntry]) -> str:
    if not entries:
        return '<p class="muted" id="no-audit">No operator has acted on this saga.</p>'
    rows = []
    for entry in entries:
        step = ""
        if entry.step:
            step = e(entry.step) + (f" (#{entry.seq})" if entry.seq is not None else "")
        details = _preview(entry.details) if entry.details else ""
        rows.append(
            f'<tr data-action="{e(entry.action)}"><td>{_time(entry.at)}</td>'
            f"<td><strong>{e(entry.action)}</strong></td><td>{step}</td>"
            f"<td>{e(entry.by or '')}</td><td>{e(entry.reason or '')}</td><td>{details}</td></tr>"
        )
    return (
        '<table class="audit"><thead><tr><th>When</th><th>Action</th><th>Step</th><th>By</th>'
        f"<th>Reason</th><th>Details</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _payloads(saga: SagaSnapshot) -> str:
    right_title = "Output"
    right = _json_block(saga.output)
    if saga.error and saga.status != SagaStatus.COMPLETED:
        right_title = "Error"
        right = _json_block(saga.error)
    elif not saga.status.is_terminal:
        right = '<p class="muted">The saga has not ended yet.</p>'
    return (
        '<div class="grid2">'
        f'<div class="input"><h3>Input</h3>{_json_block(saga.input)}</div>'
        f'<div class="output"><h3>{right_title}</h3>{right}</div></div>'
    )


def render_saga(
    saga: SagaSnapshot,
    *,
    db: str,
    read_only: bool,
    flash: Flash | None = None,
    refresh: int | None = None,
    now: datetime | None = None,
    position: int | None = None,
) -> str:
    """One saga's page: header (with a queued saga's queue and ``position`` in it), error,
    timeline chart, actions, journal, payloads, audit."""
    path = saga_path(saga.saga_id)
    if saga.status.is_terminal:
        toggle = ""
    elif refresh:
        toggle = f'<a href="{e(path)}">stop auto-refresh</a>'
    else:
        toggle = f'<a href="{e(path)}?refresh=3">auto-refresh every 3 s</a>'
    body = (
        '<p class="small"><a href="/">← all sagas</a></p>'
        f'<h1><code class="saga-id">{e(saga.saga_id)}</code>'
        f'<span id="status">{_badge(saga.status)}</span>'
        f'<span class="small muted" style="margin-left:auto">{toggle}</span></h1>'
        f"{_meta(saga)}{render_queue_meta(saga, position)}{_error_summary(saga)}"
        "<h2>Timeline</h2>"
        f'<div class="chart">{render_timeline_svg(saga, now=now)}</div>'
        f"{_actions(saga, read_only)}"
        f"<h2>Journal</h2>{_journal(saga)}"
        f"<h2>Input and result</h2>{_payloads(saga)}"
        f"<h2>Audit</h2>{_audit(saga.audit)}"
    )
    return _layout(saga.saga_id, body, db=db, read_only=read_only, flash=flash, refresh=refresh)


def render_error(
    status: int,
    title: str,
    message: str,
    *,
    db: str,
    read_only: bool,
    back: tuple[str, str] | None = None,
) -> str:
    """A plain error page: what went wrong in words, and a way back."""
    links = [back] if back else []
    if not back or back[0] != "/":
        links.append(("/", "all sagas"))
    body = (
        f'<h1 class="error-title">{e(title)} <span class="small muted">HTTP {status}</span></h1>'
        f'<div class="errorbox" id="error-message">{e(message)}</div>'
        + "".join(f'<p><a href="{e(href)}">{e(text)}</a></p>' for href, text in links)
    )
    return _layout(title, body, db=db, read_only=read_only)
