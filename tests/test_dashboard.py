"""The web dashboard over HTTP, in-process: pages, filters and paging, escaping, the token,
the actions (Post/Redirect/Get), error pages without stack traces, and the timeline chart.

The sagas are run to their states (completed, compensated, parked, suspended) once per module
by an engine in this process; the dashboard is then started in-process on a free port and
asked with ``http.client``. No worker runs while the tests act, so a retried saga stays due
(RUNNING) instead of going on: what these tests check is what the action changed. The browser
test (tests/test_dashboard_browser.py) runs the whole loop with a real worker.
"""

from __future__ import annotations

import asyncio
import html
import http.client
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from sagakit import Engine, SagaContext, SagaStatus, create_saga_workflow, saga_workflow
from sagakit.dashboard import Dashboard
from sagakit.dashboard.actions import (
    ActionInputError,
    available_actions,
    parse_action,
    token_matches,
)
from sagakit.dashboard.chart import render_timeline_svg
from sagakit.engine.snapshots import AuditEntry, SagaSnapshot, StepSnapshot
from sagakit.errors import StoreError

from .dashboard_app import WORKFLOWS, checkout
from .processes import REPO

TOKEN = "s3cret-token"
CSRF = "csrf-value-of-this-browser"
WEIRD_ID = 'odd/id <b>"&?#'
XSS = '<script>alert("pwned")</script>'

#: the sagas of the module's database: id → (input, the status it is run to)
SAGAS: dict[str, tuple[dict[str, Any], SagaStatus]] = {
    "ok-1": ({"order": "1", "customer": "ann"}, SagaStatus.COMPLETED),
    "declined-2": ({"order": "2", "decline": True}, SagaStatus.COMPENSATED),
    "xss-3": ({"order": "3", "customer": XSS}, SagaStatus.COMPLETED),
    WEIRD_ID: ({"order": "4"}, SagaStatus.COMPLETED),
    "sleepy-5": ({"order": "5", "fraud_check": 3600}, SagaStatus.SUSPENDED),
    # one parked saga per test that acts on one
    **{
        f"park-{name}": ({"order": name, "flag": "/nonexistent/flag"}, SagaStatus.PARKED)
        for name in (
            "view",
            "readonly",
            "refused",
            "retry",
            "bearer",
            "cancel",
            "skip",
            "compensate",
        )
    },
}


async def _run_sagas(url: str) -> None:
    engine = Engine(url, poll_interval=timedelta(milliseconds=20))
    engine.register(*WORKFLOWS)
    async with engine:
        for saga_id, (inp, _) in SAGAS.items():
            await engine.start(checkout, inp, saga_id=saga_id)
        deadline = time.monotonic() + 30
        while True:
            states = {s: (await engine.get(s)).status for s in SAGAS}
            if all(states[s] == want for s, (_, want) in SAGAS.items()):
                return
            assert time.monotonic() < deadline, f"sagas did not reach their states: {states}"
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'sagas.db'}"
    asyncio.run(_run_sagas(url))
    return url


@pytest.fixture(scope="module")
def dashboard(db_url: str) -> Iterator[Dashboard]:
    with Dashboard(db_url, port=0, token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def read_only(db_url: str) -> Iterator[Dashboard]:
    with Dashboard(db_url, port=0) as running:
        yield running


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: str):
        self.status = status
        self.headers = headers
        self.body = body

    def text(self) -> str:
        """The body without tags, entities decoded: what a reader sees."""
        return html.unescape(re.sub(r"<[^>]+>", " ", self.body))


def call(
    dash: Dashboard,
    method: str,
    path: str,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    *,
    csrf: bool = True,
) -> Reply:
    """One request, redirects not followed. A form carries the CSRF value of a browser that
    has the dashboard's cookie (the double-submit pattern), unless ``csrf=False``."""
    conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=30)
    try:
        sent = dict(headers or {})
        if form is not None and csrf:
            form = {"csrf": CSRF, **form}
            sent.setdefault("Cookie", f"sagakit_csrf={CSRF}")
        body = urlencode(form).encode() if form is not None else None
        if body is not None:
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return Reply(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read().decode("utf-8"),
        )
    finally:
        conn.close()


def saga_url(saga_id: str) -> str:
    return "/sagas/" + quote(saga_id, safe="")


def snapshot(dash: Dashboard, saga_id: str) -> SagaSnapshot:
    return dash.call(dash.engine.admin.get_saga(saga_id))


def assert_no_trace(reply: Reply) -> None:
    assert "Traceback" not in reply.body
    assert 'File "' not in reply.body


# -- the list page -------------------------------------------------------------------------------


def test_index_shows_counts_and_every_saga(dashboard: Dashboard) -> None:
    reply = call(dashboard, "GET", "/")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in reply.headers["content-security-policy"]
    assert reply.headers["x-frame-options"] == "DENY"
    counts = dict(
        re.findall(r'class="count[^"]*" href="[^"]*" data-status="(\w+)"><span class="n">(\d+)',
                   reply.body)
    )  # fmt: skip
    assert counts["ALL"] == str(len(SAGAS))
    assert counts["PARKED"] == str(sum(1 for _, s in SAGAS.values() if s == SagaStatus.PARKED))
    assert counts["COMPLETED"] == "3"
    assert counts["COMPENSATED"] == "1"
    assert counts["SUSPENDED"] == "1"
    assert counts["FAILED"] == "0"
    listed = re.findall(r'<tr data-saga="([^"]*)"', reply.body)
    assert sorted(html.unescape(s) for s in listed) == sorted(SAGAS)
    assert "actions need the token" in reply.body


def test_index_filters_by_status_name_and_creation_time(dashboard: Dashboard) -> None:
    def ids(query: dict[str, str]) -> list[str]:
        reply = call(dashboard, "GET", "/?" + urlencode(query))
        assert reply.status == 200, reply.text()
        return sorted(html.unescape(s) for s in re.findall(r'<tr data-saga="([^"]*)"', reply.body))

    assert ids({"status": "COMPLETED"}) == sorted(["ok-1", "xss-3", WEIRD_ID])
    assert ids({"status": "compensated"}) == ["declined-2"]  # any case
    assert ids({"name": "Checkout", "status": "SUSPENDED"}) == ["sleepy-5"]
    assert ids({"name": "NoSuchWorkflow"}) == []
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert ids({"created_after": future}) == []
    assert ids({"created_before": past}) == []
    assert ids({"created_after": past, "created_before": future}) == sorted(SAGAS)
    reply = call(dashboard, "GET", "/?name=NoSuchWorkflow")
    assert "No saga matches" in reply.text()


def test_index_pages_with_the_cursor(dashboard: Dashboard) -> None:
    seen: list[str] = []
    path = "/?limit=5"
    pages = 0
    while path:
        reply = call(dashboard, "GET", path)
        assert reply.status == 200
        rows = re.findall(r'<tr data-saga="([^"]*)"', reply.body)
        assert 1 <= len(rows) <= 5
        seen.extend(html.unescape(r) for r in rows)
        pages += 1
        found = re.search(r'<a rel="next" href="([^"]+)"', reply.body)
        path = html.unescape(found.group(1)) if found else ""
        if path:
            assert "limit=5" in path and "cursor=" in path
        if pages > 1:
            assert "first page" in reply.body
    assert pages == -(-len(SAGAS) // 5)
    assert sorted(seen) == sorted(SAGAS)  # every saga once, none twice


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=NOPE", "unknown status"),
        ("created_after=yesterday", "must be a date and time"),
        ("limit=0", "limit must be"),
        ("limit=abc", "limit must be"),
        ("cursor=bogus", "cursor"),
        ("stranded=1&status=PARKED", "takes no other filter"),
    ],
)
def test_a_bad_filter_is_a_plain_400(dashboard: Dashboard, query: str, message: str) -> None:
    reply = call(dashboard, "GET", "/?" + query)
    assert reply.status == 400
    assert message in reply.text()
    assert_no_trace(reply)


# -- the saga page -------------------------------------------------------------------------------


def test_saga_page_of_a_parked_saga(dashboard: Dashboard) -> None:
    reply = call(dashboard, "GET", saga_url("park-view"))
    assert reply.status == 200
    body = reply.body
    assert 'data-status="PARKED"' in body
    # the timeline: a bar per step, the failed one marked, its attempts shown
    svg = body[body.index('<svg class="timeline"') : body.index("</svg>")]
    assert len(re.findall(r'<rect class="bar step', svg)) == 3
    assert re.search(r'data-seq="2" data-name="ChargeCard" data-attempts="3"', svg)
    assert '<rect class="bar step bar-failed"' in svg
    assert '<g class="failure-mark" data-seq="2">' in svg
    assert "3 attempts" in svg
    assert "waiting for an operator" in svg  # the open bar of the parked saga
    # the journal, the payloads, the actions that make sense when parked
    assert "payment provider unavailable (HTTP 503)" in reply.text()
    assert re.findall(r'data-action="(\w+)">', body) == [
        "retry",
        "skip",
        "compensate",
        "cancel",
        "fork",
    ]
    assert 'name="mock_output"' in body
    assert 'name="token"' in body
    assert "No operator has acted on this saga" in body


def test_saga_page_of_a_compensated_saga(dashboard: Dashboard) -> None:
    body = call(dashboard, "GET", saga_url("declined-2")).body
    svg = body[body.index('<svg class="timeline"') : body.index("</svg>")]
    assert len(re.findall(r'<rect class="bar compensation', svg)) == 2
    assert '<g class="failure-mark"' in svg
    assert "card declined by the issuer" in body
    # it can be taken up again from its failed step (see test_admin_rerun.py)
    assert re.findall(r'data-action="(\w+)">', body) == ["retry", "skip", "fork"]
    assert 'name="mock_output"' in body


def test_saga_page_of_a_suspended_saga_offers_resume(dashboard: Dashboard) -> None:
    body = call(dashboard, "GET", saga_url("sleepy-5")).body
    assert re.findall(r'data-action="(\w+)">', body) == ["resume", "compensate", "cancel", "fork"]
    svg = body[body.index('<svg class="timeline"') : body.index("</svg>")]
    assert '<rect class="bar wait bar-running"' in svg
    assert "so far, until" in svg
    assert "auto-refresh" in body


def test_everything_from_the_database_is_escaped(dashboard: Dashboard) -> None:
    reply = call(dashboard, "GET", saga_url("xss-3"))
    assert reply.status == 200
    assert "<script>" not in reply.body
    assert "&lt;script&gt;alert(" in reply.body  # shown, as text
    assert json.dumps(XSS) in reply.text()  # in the pretty JSON of the input
    listing = call(dashboard, "GET", "/").body
    assert "<b>" not in listing and "&lt;b&gt;" in listing
    weird = call(dashboard, "GET", saga_url(WEIRD_ID))
    assert weird.status == 200
    assert "<b>" not in weird.body
    assert WEIRD_ID in weird.text()


def test_unknown_pages_and_sagas_are_plain_errors(dashboard: Dashboard) -> None:
    missing = call(dashboard, "GET", saga_url("no-such-saga"))
    assert missing.status == 404
    assert "no-such-saga" in missing.text()
    assert call(dashboard, "GET", "/nothing/here").status == 404
    get_action = call(dashboard, "GET", saga_url("park-view") + "/retry")
    assert get_action.status == 405
    assert call(dashboard, "DELETE", saga_url("park-view")).status == 405
    assert call(dashboard, "POST", "/", form={}).status == 405
    for reply in (missing, get_action):
        assert_no_trace(reply)
    assert call(dashboard, "GET", "/healthz").body == "ok\n"
    head = call(dashboard, "HEAD", "/")
    assert head.status == 200 and head.body == ""


def test_a_foreign_host_name_is_refused(dashboard: Dashboard) -> None:
    reply = call(dashboard, "GET", "/", headers={"Host": "evil.example:8700"})
    assert reply.status == 400
    assert "localhost" in reply.text()
    assert (
        call(dashboard, "GET", "/", headers={"Host": f"localhost:{dashboard.port}"}).status == 200
    )


def test_an_unexpected_failure_shows_no_details(
    dashboard: Dashboard, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(saga_id: str) -> SagaSnapshot:
        raise RuntimeError("secret detail of the database")

    monkeypatch.setattr(dashboard.engine.admin, "get_saga", broken)
    with caplog.at_level(logging.ERROR, logger="sagakit.dashboard"):
        reply = call(dashboard, "GET", saga_url("ok-1"))
    assert reply.status == 500
    assert "secret detail" not in reply.body
    assert_no_trace(reply)
    incident = re.search(r"error id (\w+)", reply.text())
    assert incident is not None
    logged = [r for r in caplog.records if incident.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "secret detail" in str(logged[0].exc_info[1])


# -- actions -------------------------------------------------------------------------------------


def test_read_only_without_a_token(read_only: Dashboard) -> None:
    page = call(read_only, "GET", saga_url("park-readonly"))
    assert "read-only" in page.text()
    assert 'id="read-only"' in page.body
    assert "<button" not in page.body
    reply = call(read_only, "POST", saga_url("park-readonly") + "/retry", form={"token": TOKEN})
    assert reply.status == 403
    assert "read-only" in reply.text() and "Nothing was changed" in reply.text()
    after = snapshot(read_only, "park-readonly")
    assert after.status == SagaStatus.PARKED and after.audit == ()


@pytest.mark.parametrize(
    ("form", "headers"),
    [
        ({}, {}),
        ({"token": ""}, {}),
        ({"token": "wrong"}, {}),
        ({"token": TOKEN[:-1]}, {}),
        ({}, {"Authorization": "Bearer wrong"}),
        ({}, {"Authorization": f"Basic {TOKEN}"}),
    ],
)
def test_a_missing_or_wrong_token_is_refused_and_changes_nothing(
    dashboard: Dashboard, form: dict[str, str], headers: dict[str, str]
) -> None:
    before = snapshot(dashboard, "park-refused")
    reply = call(dashboard, "POST", saga_url("park-refused") + "/retry", form, headers)
    assert reply.status == 403
    assert "token is missing or wrong" in reply.text()
    assert_no_trace(reply)
    after = snapshot(dashboard, "park-refused")
    assert after.status == SagaStatus.PARKED
    assert after.audit == () and after.steps == before.steps


def test_retry_with_the_token_redirects_to_the_saga_with_a_flash(dashboard: Dashboard) -> None:
    reply = call(
        dashboard,
        "POST",
        saga_url("park-retry") + "/retry",
        {"token": TOKEN, "by": "alice", "reason": "provider is back"},
    )
    assert reply.status == 303
    location = reply.headers["location"]
    assert location.startswith(saga_url("park-retry") + "?flash=")
    page = call(dashboard, "GET", location)
    assert "Retry requested: the saga is now" in page.text()
    assert 'data-action="retry"' in page.body  # the audit table (and the chart's marker)
    assert "provider is back" in page.text() and "alice" in page.text()
    assert "Retry requested" not in call(dashboard, "GET", location).text()  # shown once
    after = snapshot(dashboard, "park-retry")
    assert after.status != SagaStatus.PARKED
    assert [(a.action, a.by, a.reason) for a in after.audit] == [
        ("retry", "alice", "provider is back")
    ]


def test_the_token_may_come_as_a_bearer_header(dashboard: Dashboard) -> None:
    reply = call(
        dashboard,
        "POST",
        saga_url("park-bearer") + "/compensate",
        {},
        {"Authorization": f"Bearer {TOKEN}"},
    )
    assert reply.status == 303
    after = snapshot(dashboard, "park-bearer")
    assert after.status == SagaStatus.COMPENSATING
    assert [(a.action, a.by) for a in after.audit] == [("compensate", "dashboard")]


def test_cancel_needs_a_reason(dashboard: Dashboard) -> None:
    path = saga_url("park-cancel") + "/cancel"
    reply = call(dashboard, "POST", path, {"token": TOKEN, "reason": "  "})
    assert reply.status == 400
    assert "needs a reason" in reply.text()
    assert snapshot(dashboard, "park-cancel").status == SagaStatus.PARKED
    reply = call(dashboard, "POST", path, {"token": TOKEN, "reason": "customer gave up"})
    assert reply.status == 303
    after = snapshot(dashboard, "park-cancel")
    assert after.status == SagaStatus.CANCELLED
    page = call(dashboard, "GET", saga_url("park-cancel")).text()
    assert "customer gave up" in page


def test_skip_records_the_mock_output(dashboard: Dashboard) -> None:
    path = saga_url("park-skip") + "/skip"
    bad = call(dashboard, "POST", path, {"token": TOKEN, "mock_output": "{not json"})
    assert bad.status == 400
    assert "must be JSON" in bad.text()
    assert snapshot(dashboard, "park-skip").status == SagaStatus.PARKED
    reply = call(
        dashboard, "POST", path, {"token": TOKEN, "mock_output": '{"payment_id": "manual-7"}'}
    )
    assert reply.status == 303
    after = snapshot(dashboard, "park-skip")
    charge = next(s for s in after.steps if s.name == "ChargeCard")
    assert charge.status == "completed" and charge.output == {"payment_id": "manual-7"}
    assert after.audit[0].action == "skip"


def test_an_action_the_status_does_not_allow_is_a_409(dashboard: Dashboard) -> None:
    reply = call(dashboard, "POST", saga_url("ok-1") + "/retry", {"token": TOKEN})
    assert reply.status == 409
    assert "cannot retry saga 'ok-1': it is COMPLETED" in reply.text()
    assert_no_trace(reply)
    assert call(dashboard, "POST", saga_url("ok-1") + "/explode", {"token": TOKEN}).status == 400
    missing = call(dashboard, "POST", saga_url("no-such") + "/retry", {"token": TOKEN})
    assert missing.status == 404


def test_resume_wakes_a_suspended_saga(dashboard: Dashboard, db_url: str) -> None:
    reply = call(dashboard, "POST", saga_url("sleepy-5") + "/resume", {"token": TOKEN})
    assert reply.status == 303
    page = call(dashboard, "GET", reply.headers["location"])
    assert "Saga woken" in page.text()
    assert snapshot(dashboard, "sleepy-5").audit[-1].action == "resume"


def test_a_form_that_is_not_a_form_is_refused(dashboard: Dashboard) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=30)
    try:
        conn.request(
            "POST",
            saga_url("park-compensate") + "/compensate",
            body=b'{"token": "x"}',
            headers={"Content-Type": "application/json"},
        )
        assert conn.getresponse().status == 415
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=30)
        conn.request(
            "POST",
            saga_url("park-compensate") + "/compensate",
            body=b"x" * (65 * 1024),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    assert snapshot(dashboard, "park-compensate").status == SagaStatus.PARKED


# -- versions and stranded sagas -----------------------------------------------------------------


@saga_workflow("Refund", version="1")
async def refund_v1(saga: SagaContext, inp: dict[str, Any]) -> str:
    return str(await saga.wait_for_signal("go"))


@saga_workflow("Refund", version="2")
async def refund_v2(saga: SagaContext, inp: dict[str, Any]) -> str:
    return str(await saga.wait_for_signal("go"))


async def _note(saga: SagaContext, inp: dict[str, Any]) -> str:
    return "noted"


note = create_saga_workflow("Note", _note)  # unversioned


def _stranded_count(reply: Reply) -> int:
    found = re.search(r'id="stranded-count"[^>]*><span class="n">(\d+)', reply.body)
    assert found, "no stranded count on the page"
    return int(found.group(1))


async def test_stranded_sagas_are_counted_and_listed_until_a_worker_serves_them(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'versions.db'}"

    def engine(*workflows: Any) -> Engine:
        started = Engine(url, poll_interval=timedelta(milliseconds=20))
        started.register(*workflows)
        return started

    async with engine(refund_v1) as v1:  # the old deployment; it closes, its heartbeat goes
        await v1.start(refund_v1, {}, saga_id="old-1")
        await v1.settle("old-1")
    async with engine(refund_v2, note) as v2:  # the new deployment, live from here on
        await v2.start(refund_v2, {}, saga_id="new-2")
        await v2.settle("new-2")
        await v2.run(note, {}, "plain-3")
        with Dashboard(url, port=0) as dash:

            async def get(path: str) -> Reply:
                reply = await asyncio.to_thread(call, dash, "GET", path)
                assert reply.status == 200, reply.text()
                return reply

            async def stranded_becomes(n: int, what: str) -> Reply:
                for _ in range(600):  # the workers' heartbeats are background ticks
                    reply = await get("/")
                    if _stranded_count(reply) == n:
                        return reply
                    await asyncio.sleep(0.05)
                raise AssertionError(f"never happened: {what}")

            index = await stranded_becomes(1, "the v2 worker's heartbeat")
            assert 'href="/?stranded=1" id="stranded-count"' in index.body
            assert re.search(r'data-status="ALL"><span class="n">3<', index.body)  # not counted
            versions = dict(
                re.findall(r'<tr data-saga="([^"]*)">.*?<td class="version mono">([^<]*)</td>',
                           index.body)
            )  # fmt: skip
            assert versions == {"old-1": "1", "new-2": "2", "plain-3": ""}

            listing = await get("/?stranded=1")
            assert "Stranded sagas" in listing.text()
            assert re.findall(r'<tr data-saga="([^"]*)"', listing.body) == ["old-1"]
            assert "no live worker serves Refund version 1" in " ".join(listing.text().split())
            tile = re.search(r'class="([^"]*)" href="/\?stranded=1"', listing.body)
            assert tile and "active" in tile.group(1).split()
            assert _stranded_count(listing) == 1

            page = await get(saga_url("old-1"))
            assert '<span class="mono" id="version">1</span>' in page.body
            plain = await get(saga_url("plain-3"))
            assert '<span class="muted" id="version">unversioned</span>' in plain.body

            # a worker that serves version 1 comes back: the saga, still waiting, is served
            async with engine(refund_v1):
                await stranded_becomes(0, "the v1 worker's heartbeat")
                listing = await get("/?stranded=1")
                assert re.findall(r'<tr data-saga="', listing.body) == []
                assert "No stranded sagas" in listing.text()
                assert (await v2.get("old-1")).status == SagaStatus.SUSPENDED


# -- pieces --------------------------------------------------------------------------------------


def test_actions_offered_by_status() -> None:
    offered = {s: [a.name for a in available_actions(s) if a.name != "fork"] for s in SagaStatus}
    assert all(a.name == "fork" for s in SagaStatus for a in available_actions(s)[-1:])
    assert offered[SagaStatus.PARKED] == ["retry", "skip", "compensate", "cancel"]
    assert offered[SagaStatus.FAILED] == ["retry", "skip"]
    assert offered[SagaStatus.SUSPENDED] == ["resume", "compensate", "cancel"]
    assert offered[SagaStatus.RUNNING] == ["cancel"]
    assert offered[SagaStatus.COMPENSATED] == ["retry", "skip"]
    assert offered[SagaStatus.COMPLETED] == ["compensate"]
    assert offered[SagaStatus.CANCELLED] == []
    assert not token_matches(None, "x") and not token_matches("x", None)
    assert not token_matches("x", "") and token_matches("abc", "abc")
    request = parse_action("skip", {"mock_output": "[1, 2]", "reason": " r ", "by": ""})
    assert request.mock_output == [1, 2] and request.reason == "r" and request.by == "dashboard"
    request = parse_action("fork", {"from_seq": " 2 ", "new_id": "order-7b"})
    assert (request.from_seq, request.new_id) == (2, "order-7b")
    with pytest.raises(ActionInputError, match="from seq"):
        parse_action("fork", {"from_seq": "two"})


def _step(seq: int, name: str, start: float, end: float, **kw: Any) -> StepSnapshot:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    fields: dict[str, Any] = {
        "seq": seq,
        "name": name,
        "kind": "step",
        "status": "completed",
        "attempts": 1,
        "output": None,
        "error": None,
        "started_at": base + timedelta(seconds=start),
        "finished_at": base + timedelta(seconds=end),
    }
    fields.update(kw)
    return StepSnapshot(**fields)


def test_chart_compresses_idle_time_and_marks_failures_retries_and_operators() -> None:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    retry_at = base + timedelta(seconds=3600)
    saga = SagaSnapshot(
        saga_id="s<1>",
        name="Checkout",
        status=SagaStatus.COMPENSATED,
        input=None,
        output=None,
        error=None,
        created_at=base,
        updated_at=base + timedelta(seconds=3600.4),
        steps=(
            _step(0, "Create<Order>", 0.001, 0.002),
            _step(1, "Reserve", 0.003, 0.103, attempts=2),
            _step(2, "sleep", 0.104, 0.404, kind="sleep"),
            _step(
                3,
                "Charge",
                retry_at.timestamp() - base.timestamp() + 0.001,
                3600.2,
                status="failed",
                attempts=3,
                error={"type": "RuntimeError", "message": "no"},
            ),
            _step(4, "Reserve", 3600.3, 3600.31, kind="compensation"),
        ),
        audit=(
            AuditEntry(
                action="retry",
                at=retry_at,
                reason="back",
                by="ops",
                step="Charge",
                seq=3,
                details={
                    "previous": {
                        "status": "failed",
                        "attempts": 3,
                        "error": {"type": "RuntimeError"},
                        "started_at": base.timestamp() + 0.405,
                        "finished_at": base.timestamp() + 0.6,
                    }
                },
            ),
        ),
    )
    svg = render_timeline_svg(saga)
    assert 'data-name="Create&lt;Order&gt;"' in svg and "Create<Order>" not in svg
    assert "s&lt;1&gt;" in svg
    # the hour the saga sat parked is one compressed gap; the sleep stays to scale
    gaps = [float(s) for s in re.findall(r'<g class="gap" data-seconds="([\d.]+)"', svg)]
    assert len(gaps) == 1 and 3590 < gaps[0] < 3600
    assert "59 min" in svg
    # retries: attempt notches (1 for 2 attempts, 2 for 3 attempts) and the attempt counts
    assert svg.count('class="attempt-notch"') >= 3
    assert "2 attempts" in svg and "3 attempts" in svg
    # failures: the current failed run and the one the retry replaced, both marked
    assert svg.count('<g class="failure-mark"') == 2
    assert '<rect class="bar step bar-failed replaced"' in svg
    assert '<g class="audit-mark" data-action="retry">' in svg
    assert "retry Charge" in svg
    assert '<rect class="bar compensation"' in svg
    assert '<rect class="bar wait"' in svg
    # same input, same picture
    assert render_timeline_svg(saga) == svg
    # a saga that only now started draws without dividing by zero
    empty = replace(saga, steps=(), audit=(), status=SagaStatus.PENDING, updated_at=base)
    assert "<svg" in render_timeline_svg(empty, now=base)


def test_a_missing_sqlite_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    with pytest.raises(StoreError, match="does not exist"):
        Dashboard(f"sqlite:///{missing}", port=0).start()
    assert not missing.exists()
    done = subprocess.run(
        [sys.executable, "-m", "sagakit.dashboard", "--db", str(missing), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr


# -- alerts and search (issue 19) ----------------------------------------------------------------


def test_the_front_page_shows_the_alert_conditions_of_sagakit_check(dashboard: Dashboard) -> None:
    body = call(dashboard, "GET", "/").body
    card = body[body.index('<section class="health"') :]
    card = card[: card.index("</section>")]
    states = {
        name: state for state, name in re.findall(r'<tr class="(\w+)" data-condition="(\w+)"', card)
    }
    assert states["failed"] == "held"  # no saga of this module ended FAILED
    assert "running_age" in states
    report = dashboard.call(dashboard.engine.admin.health())
    shown = re.search(r'id="health-state">([^<]+)<', card)
    assert shown is not None
    assert shown.group(1) == ("all hold" if report.ok else f"{len(report.breached)} breached")


def test_the_list_searches_by_id_prefix_and_a_value_of_the_input(dashboard: Dashboard) -> None:
    def ids(query: list[tuple[str, str]]) -> list[str]:
        reply = call(dashboard, "GET", "/?" + urlencode(query))
        assert reply.status == 200, reply.text()
        return sorted(html.unescape(s) for s in re.findall(r'<tr data-saga="([^"]*)"', reply.body))

    assert ids([("id", "park-")]) == sorted(s for s in SAGAS if s.startswith("park-"))
    assert ids([("where", "input.customer=ann")]) == ["ok-1"]
    assert ids([("id", "ok"), ("where", "input.order=1")]) == ["ok-1"]
    assert ids([("where", "input.order=1"), ("where", "input.customer=bob")]) == []
    bad = call(dashboard, "GET", "/?where=nonsense")
    assert bad.status == 400
    assert_no_trace(bad)
