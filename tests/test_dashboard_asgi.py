"""The dashboard as an ASGI application (issue 19): mounted under a path of a FastAPI app (links
and forms follow the mount point, the app's engine or one the app opens itself), standalone
with uvicorn off loopback, and who may read and act: the read token (bearer header, login form
and its cookie), reads refused off loopback without one, the operator token, the CSRF check
of every form, the Host check, the user's own ``authorize`` hook, and ``/metrics``.

Driven through Starlette's TestClient (which runs the application's lifespan) and, where the
network matters, a real uvicorn server on a free port."""

from __future__ import annotations

import asyncio
import http.client
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import Mount

from sagakit import Engine, SagaError, SagaStatus
from sagakit.contrib.fastapi import sagakit_lifespan
from sagakit.dashboard import Dashboard, DashboardNotInstalled, app
from sagakit.dashboard import _extra as extra

from .dashboard_app import WORKFLOWS, checkout
from .processes import REPO

TOKEN = "op-token-1"
READ = "read-token-2"
BEARER = {"Authorization": f"Bearer {READ}"}


async def _prepare(url: str) -> None:
    engine = Engine(url)
    engine.register(*WORKFLOWS)
    async with engine:
        await engine.run(checkout, {"order": "1"}, saga_id="ok-1")
        await engine.start(checkout, {"order": "2", "fraud_check": 3600}, saga_id="sleepy-2")
        await engine.settle("sleepy-2")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'sagas.db'}"
    asyncio.run(_prepare(url))
    return url


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def client_engine(url: str) -> Engine:
    engine = Engine(url, worker=False)
    engine.register(*WORKFLOWS)
    return engine


# -- mounted in a FastAPI app ----------------------------------------------------------------


def test_mounted_on_the_apps_engine_links_follow_the_mount_and_forms_need_csrf(
    db_url: str,
) -> None:
    engine = client_engine(db_url)
    api = FastAPI(lifespan=sagakit_lifespan(engine))
    api.mount("/ops/sagas", app(engine, token=TOKEN, read_token=READ))

    with TestClient(api, follow_redirects=False) as client:
        # no read token: the login form, under the mount point, without the database's URL
        refused = client.get("/ops/sagas/")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert 'action="/ops/sagas/login"' in refused.text
        assert "sqlite" not in refused.text and "ok-1" not in refused.text
        cookie = refused.headers["set-cookie"]  # the browser's CSRF value, from its first page
        assert cookie.startswith("sagakit_csrf=") and "HttpOnly" in cookie
        assert "SameSite=strict" in cookie and "Path=/ops/sagas" in cookie

        page = client.get("/ops/sagas/", headers=BEARER)
        assert page.status_code == 200
        assert 'href="/ops/sagas/sagas/ok-1"' in page.text
        assert 'action="/ops/sagas/"' in page.text  # the filter form
        assert 'href="/ops/sagas/?status=SUSPENDED"' in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        saga = client.get("/ops/sagas/sagas/sleepy-2", headers=BEARER)
        assert saga.status_code == 200
        assert 'formaction="/ops/sagas/sagas/sleepy-2/resume"' in saga.text
        csrf = csrf_of(saga.text)
        assert cookie.startswith(f"sagakit_csrf={csrf};")
        assert "set-cookie" not in saga.headers  # the same value on every page

        # an action without the form's CSRF value, or with another one: 403, nothing changed
        path = "/ops/sagas/sagas/sleepy-2/resume"
        for form in ({"token": TOKEN}, {"token": TOKEN, "csrf": "forged"}):
            reply = client.post(path, data=form)
            assert reply.status_code == 403
            assert "CSRF" in reply.text and "Nothing was changed" in reply.text
        assert client.get("/ops/sagas/", headers=BEARER).status_code == 200
        # the page's value, the operator token: done, back to the saga under the mount
        reply = client.post(path, data={"token": TOKEN, "csrf": csrf, "by": "ann"})
        assert reply.status_code == 303, reply.text
        assert reply.headers["location"].startswith("/ops/sagas/sagas/sleepy-2?flash=")
        shown = client.get(reply.headers["location"], headers=BEARER)
        assert "Saga woken" in shown.text
        # the operator token alone, as a bearer header (a script): no CSRF needed
        reply = client.post(
            "/ops/sagas/sagas/ok-1/compensate", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert reply.status_code == 303
        status = client.portal.call(engine.get, "ok-1").status
        assert status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)
        assert client.portal.call(engine.get, "sleepy-2").audit[-1].by == "ann"


def test_the_login_form_sets_a_strict_http_only_cookie_and_logout_clears_it(db_url: str) -> None:
    board = app(db_url, read_token=READ)
    api = FastAPI(lifespan=sagakit_lifespan(client_engine(db_url), dashboard=board))
    api.mount("/sagas", board)

    with TestClient(api, base_url="https://ops.example", follow_redirects=False) as client:
        login = client.get("/sagas/login?next=/sagas/ok-1")
        assert login.status_code == 200
        csrf = csrf_of(login.text)
        wrong = client.post(
            "/sagas/login", data={"csrf": csrf, "read_token": "guess", "next": "/sagas/ok-1"}
        )
        assert wrong.status_code == 403 and "not this dashboard&#39;s read token" in wrong.text
        no_csrf = client.post("/sagas/login", data={"read_token": READ})
        assert no_csrf.status_code == 403
        done = client.post(
            "/sagas/login", data={"csrf": csrf, "read_token": READ, "next": "/sagas/ok-1"}
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/sagas/sagas/ok-1"
        cookie = done.headers["set-cookie"]
        assert cookie.startswith("sagakit_login=")
        for attribute in ("HttpOnly", "SameSite=strict", "Secure", "Path=/sagas"):
            assert attribute in cookie
        page = client.get("/sagas/sagas/ok-1")
        assert page.status_code == 200 and "COMPLETED" in page.text
        assert 'id="logout"' in page.text
        # no open redirect: a login only goes back into the dashboard
        away = client.post(
            "/sagas/login", data={"csrf": csrf, "read_token": READ, "next": "//evil.example/"}
        )
        assert away.headers["location"] == "/sagas/"

        out = client.post("/sagas/logout", data={"csrf": csrf})
        assert out.status_code == 303
        assert client.get("/sagas/").status_code == 401
        assert board.engine.is_open  # opened by the app's lifespan
    with pytest.raises(RuntimeError, match="not open"):
        board.engine  # noqa: B018 - and closed with it


def test_a_mounted_dashboard_on_a_url_opens_its_engine_at_the_first_request(db_url: str) -> None:
    board = app(db_url, read_token=READ)
    outer = Starlette(routes=[Mount("/dash", app=board)])  # sub-app lifespans do not run
    with TestClient(outer) as client:
        page = client.get("/dash/sagas/ok-1", headers=BEARER)
        assert page.status_code == 200 and 'href="/dash/"' in page.text
        assert board.engine.is_open
        client.portal.call(board.close)


def test_an_engine_that_is_not_open_is_a_503(db_url: str) -> None:
    with TestClient(app(client_engine(db_url), read_token=READ)) as client:
        reply = client.get("/", headers=BEARER)
    assert reply.status_code == 503 and "not open" in reply.text


# -- reads off loopback ----------------------------------------------------------------------


def test_without_a_read_token_only_loopback_requests_may_read(db_url: str) -> None:
    board = app(db_url)
    with TestClient(board) as remote:  # a client and a server that are not loopback
        reply = remote.get("/")
        assert reply.status_code == 403
        assert "--read-token" in reply.text and "ok-1" not in reply.text
        assert remote.get("/metrics").status_code == 403
    local = {"base_url": "http://127.0.0.1:8700", "client": ("127.0.0.1", 40000)}
    with TestClient(board, **local) as client:  # type: ignore[arg-type]
        assert client.get("/").status_code == 200
        # forwarded by a proxy on this machine: it came from elsewhere
        assert client.get("/", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
        # DNS rebinding: a loopback connection that names a foreign host
        assert client.get("/", headers={"Host": "evil.example"}).status_code == 400
        client.portal.call(board.close)


def test_off_loopback_the_server_refuses_to_start_without_a_read_token(db_url: str) -> None:
    with pytest.raises(SagaError, match="--read-token"):
        Dashboard(db_url, host="0.0.0.0", port=0).start()
    done = subprocess.run(
        [sys.executable, "-m", "sagakit.cli", "dashboard", "--db", db_url, "--host", "0.0.0.0",
         "--port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "--read-token" in done.stderr and "Traceback" not in done.stderr


def test_standalone_off_loopback_reads_need_the_read_token(db_url: str) -> None:
    def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    with Dashboard(db_url, host="0.0.0.0", port=0, read_token=READ) as board:
        status, body = get(board.port, "/", {})
        assert status == 401 and "Read token" in body
        assert get(board.port, "/", {"Authorization": "Bearer wrong"})[0] == 401
        status, body = get(board.port, "/sagas/ok-1", BEARER)
        assert status == 200 and "COMPLETED" in body
        status, body = get(board.port, "/metrics", BEARER)
        assert status == 200 and "# HELP" in body
        assert get(board.port, "/metrics", {})[0] == 401


# -- the user's own authentication -----------------------------------------------------------


def test_an_authorize_hook_replaces_the_tokens(db_url: str) -> None:
    asked: list[tuple[str | None, str]] = []

    async def authorize(request: Request, action: str) -> bool:
        user = request.headers.get("x-user")
        asked.append((user, action))
        return user == "ops" or (user == "viewer" and action == "read")

    board = app(db_url, authorize=authorize)
    with TestClient(board, follow_redirects=False) as client:
        assert client.get("/").status_code == 403
        page = client.get("/sagas/sleepy-2", headers={"x-user": "viewer"})
        assert page.status_code == 200
        assert 'name="token"' not in page.text  # the hook decides, no token to type
        csrf = csrf_of(page.text)
        form = {"csrf": csrf, "reason": "now"}
        viewer = client.post("/sagas/sleepy-2/resume", data=form, headers={"x-user": "viewer"})
        assert viewer.status_code == 403 and "does not allow resume" in viewer.text
        ops = client.post("/sagas/sleepy-2/resume", data=form, headers={"x-user": "ops"})
        assert ops.status_code == 303
        # the CSRF check stays
        forged = client.post(
            "/sagas/sleepy-2/resume", data={"reason": "x"}, headers={"x-user": "ops"}
        )
        assert forged.status_code == 403
        client.portal.call(board.close)
    assert (None, "read") in asked and ("viewer", "resume") in asked and ("ops", "resume") in asked

    def only_reads(request: Any, action: str) -> bool:  # a plain function works too
        return action == "read"

    plain = app(db_url, authorize=only_reads)
    with TestClient(plain) as client:
        assert client.get("/").status_code == 200
        client.portal.call(plain.close)


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = extra.importlib.util.find_spec
    monkeypatch.setattr(
        extra.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "jinja2" else real(name, *a),
    )
    with pytest.raises(DashboardNotInstalled, match=r"Jinja2.*pip install 'sagakit\[dashboard\]'"):
        app("sqlite:///x.db")
    with pytest.raises(DashboardNotInstalled):
        Dashboard("sqlite:///x.db", port=0).start()
