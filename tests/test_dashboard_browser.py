"""The dashboard end to end, in real headless Chromium (Debian's ``chromium`` package, which
scripts/test.sh installs; Playwright drives it, never downloads a browser).

Real processes all the way: a ``sagakit worker`` runs the workflows of tests/dashboard_app.py on
a SQLite file, ``sagakit dashboard`` serves it (the ASGI app on uvicorn, with a read token), and
the browser does what an operator does: log in with the read token, open the list, read the
counts, open the parked saga, look at its timeline chart, press retry without the token
(refused, nothing changes), then, once the cause is fixed, with the token, and watch the saga
complete.

A second saga is steered through retry and compensate into a rollback that fails, and its page
is the README's screenshot: written to the test's folder every run, and to the path in
``SAGAKIT_SCREENSHOT`` when set (``SAGAKIT_SCREENSHOT=docs/dashboard.png pytest
tests/test_dashboard_browser.py`` refreshes docs/dashboard.png).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from sagakit import Engine, SagaSnapshot

from .dashboard_app import start
from .processes import REPO

CHROMIUM = "/usr/bin/chromium"
#: without the background-networking flags Chromium keeps calling home, which a closed
#: network answers with a flood of timeouts
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "e2e-token-7f3a"
READ_TOKEN = "e2e-read-91c2"
WAIT = 60.0
#: the longest a page waits for a saga to change after an action
SETTLE = 30.0


class Processes:
    """The processes one test starts; each one's output goes to a file in the test's folder,
    shown when a wait fails. Every one is stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, cwd: Path = REPO) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("SAGAKIT_DASHBOARD_TOKEN", None)
        with open(self.folder / f"{name}.out", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.procs[name] = proc
        return proc

    def output(self, name: str) -> str:
        return (self.folder / f"{name}.out").read_text(errors="replace")

    def wait_for_output(self, name: str, pattern: str) -> re.Match[str]:
        """The first match of ``pattern`` in the process's output, once it appears."""
        deadline = time.monotonic() + WAIT
        while True:
            found = re.search(pattern, self.output(name))
            if found:
                return found
            if self.procs[name].poll() is not None:
                pytest.fail(f"{name} exited before printing {pattern!r}:\n{self.output(name)}")
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not print {pattern!r} in {WAIT}s:\n{self.output(name)}")
            time.sleep(0.05)

    def describe(self) -> str:
        return "\n".join(f"--- {name}\n{self.output(name)[-3000:]}" for name in self.procs)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=WAIT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _snapshots(url: str, saga_ids: list[str]) -> dict[str, SagaSnapshot]:
    async with Engine(url, worker=False) as engine:
        return {s: await engine.admin.get_saga(s) for s in saga_ids}


def snapshots(url: str, *saga_ids: str) -> dict[str, SagaSnapshot]:
    """The sagas as the database has them, read by an engine of this process. In a thread of
    its own: Playwright's sync API keeps an event loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _snapshots(url, list(saga_ids))).result(timeout=WAIT)


def wait_for_statuses(url: str, wanted: dict[str, str], procs: Processes) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        found = {s: str(snap.status) for s, snap in snapshots(url, *wanted).items()}
        if found == wanted:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"sagas did not reach {wanted} (they are {found}):\n{procs.describe()}")
        time.sleep(0.1)


def reload_until(page: Page, what: str, check: Callable[[], bool], procs: Processes) -> None:
    """Reload the page until ``check`` holds (what an operator does with F5)."""
    deadline = time.monotonic() + SETTLE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"the page did not show {what} within {SETTLE}s:\n{procs.describe()}")
        time.sleep(0.2)
        page.reload()


def page_status(page: Page) -> str:
    return page.locator("#status .badge").inner_text().strip()


def press(page: Page, action: str) -> int:
    """Press an action button; the status of the POST's response (before any redirect)."""
    with page.expect_response(lambda r: r.request.method == "POST") as response:
        page.locator(f'button[data-action="{action}"]').click()
    page.wait_for_load_state()
    return response.value.status


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[BrowserContext]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.mark.slow
def test_an_operator_steers_sagas_in_a_real_browser(tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium package"
    )
    began = time.monotonic()
    url = f"sqlite:///{tmp_path / 'sagas.db'}"
    provider_back = tmp_path / "provider-is-back"
    never = tmp_path / "never-created"
    procs = Processes(tmp_path)
    try:
        procs.start(
            "worker", "-m", "sagakit.cli", "worker", "--db", url,
            "--app", "tests.dashboard_app:WORKFLOWS", "--poll", "0.2",
        )  # fmt: skip
        procs.wait_for_output("worker", r"ready")
        sagas: dict[str, dict[str, Any]] = {
            "order-1001": {"order": "1001", "customer": "c-17", "amount": 40},
            "order-1002": {"order": "1002", "customer": "c-23", "decline": True},
            "order-1003": {
                "order": "1003",
                "customer": "<img src=x onerror=alert(1)>",
                "flag": str(provider_back),
            },
            "order-1042": {
                "order": "1042",
                "customer": "c-88",
                "amount": 129,
                "items": 3,
                "flaky_stock": True,
                "fraud_check": 0.4,
                "stuck_release": True,
                "flag": str(never),
            },
        }
        asyncio.run(start(url, sagas))
        wait_for_statuses(
            url,
            {
                "order-1001": "COMPLETED",
                "order-1002": "COMPENSATED",
                "order-1003": "PARKED",
                "order-1042": "PARKED",
            },
            procs,
        )
        # from the database's folder, with a bare file name, as an operator would type it
        procs.start(
            "dashboard", "-m", "sagakit.cli", "dashboard", "--db", "sagas.db",
            "--port", str(free_port()), "--token", TOKEN, "--read-token", READ_TOKEN,
            cwd=tmp_path,
        )  # fmt: skip
        base = procs.wait_for_output("dashboard", r"http://127\.0\.0\.1:\d+/").group(0)

        with chromium(tmp_path / "chromium-profile") as browser:
            page = browser.new_page()
            _list_and_parked_saga(page, base, url, provider_back, procs)
            _screenshot_saga(page, base, tmp_path, procs)
    finally:
        procs.stop_all()
    took = time.monotonic() - began
    print(f"browser test took {took:.1f}s")


def _list_and_parked_saga(
    page: Page, base: str, url: str, provider_back: Path, procs: Processes
) -> None:
    # reads need the read token: the login form, a wrong token, then the right one
    page.goto(base)
    expect(page.locator("h1")).to_have_text("Log in")
    page.fill('input[name="read_token"]', "guess")
    page.locator("#login").click()
    expect(page.locator("#error-message")).to_contain_text("not this dashboard's read token")
    page.fill('input[name="read_token"]', READ_TOKEN)
    page.locator("#login").click()

    # the list: counts by status and the sagas
    expect(page.locator('.count[data-status="ALL"] .n')).to_have_text("4")
    expect(page.locator('.count[data-status="PARKED"] .n')).to_have_text("2")
    expect(page.locator('.count[data-status="COMPLETED"] .n')).to_have_text("1")
    expect(page.locator('.count[data-status="COMPENSATED"] .n')).to_have_text("1")
    expect(page.locator("table.sagas tbody tr")).to_have_count(4)
    page.locator('.count[data-status="PARKED"]').click()
    expect(page.locator("table.sagas tbody tr")).to_have_count(2)

    # the parked saga's page and its timeline chart
    page.locator('tr[data-saga="order-1003"] a').click()
    expect(page.locator("h1 .saga-id")).to_have_text("order-1003")
    assert page_status(page) == "PARKED"
    chart = page.locator("svg.timeline")
    expect(chart).to_be_visible()
    expect(chart.locator("rect.bar")).to_have_count(4)  # 3 steps and the parked wait
    failed = chart.locator('g.bar-group[data-name="ChargeCard"]')
    expect(failed).to_have_attribute("data-attempts", "3")
    expect(failed.locator("rect.bar-failed")).to_have_count(1)
    mark = chart.locator("g.failure-mark")
    expect(mark).to_have_count(1)
    box = failed.locator("rect.bar").bounding_box()
    assert box is not None and box["width"] > 3 and box["height"] > 5  # drawn, not just there
    expect(chart).to_contain_text("3 attempts")
    # the input is shown as text, its HTML not run
    expect(page.locator(".input pre")).to_contain_text("<img src=x onerror=alert(1)>")

    # retry without the token: refused, and the saga is as it was
    assert press(page, "retry") == 403
    expect(page.locator("#error-message")).to_contain_text("token is missing or wrong")
    expect(page.locator("body")).not_to_contain_text("Traceback")
    snap = snapshots(url, "order-1003")["order-1003"]
    assert str(snap.status) == "PARKED" and snap.audit == ()
    page.go_back()
    page.reload()
    assert page_status(page) == "PARKED"
    expect(page.locator("#no-audit")).to_be_visible()

    # the payment provider is back; retry with the token, and the saga completes
    provider_back.touch()
    page.fill('input[name="token"]', TOKEN)
    page.fill('input[name="by"]', "e2e operator")
    page.fill('input[name="reason"]', "payment provider is back")
    assert press(page, "retry") == 303
    expect(page.locator(".flash.ok")).to_contain_text("Retry requested")
    reload_until(page, "COMPLETED", lambda: page_status(page) == "COMPLETED", procs)
    expect(page.locator('table.audit tr[data-action="retry"]')).to_contain_text("e2e operator")
    expect(page.locator('svg.timeline g.audit-mark[data-action="retry"]')).to_have_count(1)
    # the failed run the retry replaced stays on the timeline, faded, with its failure mark
    expect(page.locator("svg.timeline g.failure-mark")).to_have_count(1)
    expect(page.locator("svg.timeline rect.bar.replaced")).to_have_count(1)
    expect(page.locator('svg.timeline g.bar-group[data-name="ShipOrder"]')).to_have_count(1)
    expect(page.locator(".output pre")).to_contain_text("pay-1003")
    assert str(snapshots(url, "order-1003")["order-1003"].status) == "COMPLETED"

    page.goto(base)
    expect(page.locator('.count[data-status="COMPLETED"] .n')).to_have_text("2")
    expect(page.locator('.count[data-status="PARKED"] .n')).to_have_text("1")


def _screenshot_saga(page: Page, base: str, folder: Path, procs: Processes) -> None:
    """Retry order-1042 (it fails again and parks again), then roll it back; its release
    compensation fails for good, so it ends FAILED with retry and skip offered. Its page is
    the screenshot."""
    page.goto(base + "sagas/order-1042")
    page.fill('input[name="token"]', TOKEN)
    page.fill('input[name="by"]', "maria (on call)")
    page.fill('input[name="reason"]', "provider says it recovered")
    assert press(page, "retry") == 303
    reload_until(
        page,
        "the saga parked again",
        lambda: page_status(page) == "PARKED" and page.locator("g.failure-mark").count() == 2,
        procs,
    )
    page.fill('input[name="token"]', TOKEN)
    page.fill('input[name="by"]', "maria (on call)")
    page.fill('input[name="reason"]', "provider still down: refund the customer")
    assert press(page, "compensate") == 303
    reload_until(page, "FAILED", lambda: page_status(page) == "FAILED", procs)
    chart = page.locator("svg.timeline")
    expect(chart.locator("rect.bar.compensation")).to_have_count(2)
    expect(chart.locator("g.audit-mark")).to_have_count(2)
    # the charge before the retry, the charge after it, the release
    expect(chart.locator("g.failure-mark")).to_have_count(3)
    expect(page.locator("button[data-action]")).to_have_count(3)  # retry, skip, fork

    # the README's picture: the page down to the end of the journal
    bottom = page.locator("table.journal").bounding_box()
    assert bottom is not None
    shot = folder / "dashboard.png"
    page.screenshot(
        path=str(shot),
        clip={"x": 0, "y": 0, "width": 1280, "height": bottom["y"] + bottom["height"] + 24},
        full_page=True,
    )
    assert shot.stat().st_size > 10_000
    target = os.environ.get("SAGAKIT_SCREENSHOT")
    if target:
        shutil.copyfile(shot, REPO / target if not Path(target).is_absolute() else target)
