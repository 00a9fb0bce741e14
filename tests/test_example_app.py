"""The example application of examples/checkout, run as its README says: a throwaway PostgreSQL,
``sagakit migrate``, the FastAPI app under uvicorn, and a separate ``sagakit worker`` process,
driven over HTTP: an order ships, one is cancelled by its customer, one is declined."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import fresh_pg_database
from .pgserver import PgServer

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "checkout"
#: the longest any one wait may take (a loaded machine is slow, never this slow)
WAIT = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Example:
    """The example's processes, started from its folder as its README starts them."""

    def __init__(self, tmp_path: Path, db_url: str):
        self.dir = tmp_path
        self.env = dict(os.environ)
        self.env["SAGAKIT_DB"] = db_url
        # the test checks a shipped order: no need to wait the default minute for that
        self.env["CHECKOUT_CANCEL_WINDOW"] = "1"
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
        )
        self.env["PYTHONUNBUFFERED"] = "1"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=EXAMPLE,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=EXAMPLE,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)[-4000:]}" for name in self.procs)

    def wait_for(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not check():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited ({proc.returncode}) before {what}:\n{self.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {WAIT}s waiting for {what}:\n{self.logs()}")
            time.sleep(0.1)

    def stop(self, name: str) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)
            pytest.fail(f"{name} did not stop on SIGTERM:\n{self.logs()}")

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=WAIT)


@pytest.fixture
def example(tmp_path: Path, pg_server: PgServer) -> Iterator[Example]:
    running = Example(tmp_path, fresh_pg_database(pg_server))
    try:
        yield running
    finally:
        running.kill_all()


def answered(client: httpx.Client) -> bool:
    try:
        return client.get("/orders/none").status_code == 404
    except httpx.TransportError:
        return False


def order(client: httpx.Client, order_id: str) -> dict[str, Any]:
    response = client.get(f"/orders/{order_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ended(client: httpx.Client, order_id: str) -> bool:
    return order(client, order_id)["status"] in ("COMPLETED", "COMPENSATED", "FAILED")


def steps(view: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (s["kind"], s["name"], s["status"])
        for s in view["steps"]
        if s["kind"] in ("step", "compensation")
    ]


def new_order(client: httpx.Client, card: str, key: str | None = None) -> str:
    body = {
        "customer_id": "c1",
        "items": [{"sku": "mug", "quantity": 2}],
        "card": card,
        "amount_cents": 1800,
    }
    headers = {"Idempotency-Key": key} if key else {}
    response = client.post("/orders", json=body, headers=headers)
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    assert accepted["status"] == "PENDING"  # no worker has taken it yet
    order_id: str = accepted["id"]
    return order_id


def test_the_example_app_runs_orders_end_to_end(example: Example) -> None:
    migrated = example.run("-m", "sagakit.cli", "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    port = free_port()
    example.spawn("app", "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT) as client:
        example.wait_for("the app to answer", lambda: answered(client))

        # the orders are written before any worker runs: the cancel is sent to an order
        # still PENDING, and the saga finds it when it reaches its cancellation window
        shipped = new_order(client, "tok_visa", key="k-1")
        assert new_order(client, "tok_visa", key="k-1") == shipped  # a retried POST
        cancelled = new_order(client, "tok_visa")
        declined = new_order(client, "tok_declined")
        assert len({shipped, cancelled, declined}) == 3
        response = client.post(f"/orders/{cancelled}/cancel", json={"reason": "changed my mind"})
        assert response.status_code == 202, response.text

        # the app refuses what is not an order, and an order that is not valid
        assert client.get("/orders/nope").status_code == 404
        bad = client.post(
            "/orders", json={"customer_id": "c1", "items": [], "card": "t", "amount_cents": 0}
        )
        assert bad.status_code == 422, bad.text

        example.spawn(
            "worker", "-m", "sagakit.cli", "worker", "--app", "sagas:WORKFLOWS", "--poll", "0.1"
        )
        for order_id in (shipped, cancelled, declined):
            example.wait_for(f"order {order_id} to end", lambda o=order_id: ended(client, o))

        view = order(client, shipped)
        assert view["status"] == "COMPLETED", view
        assert view["stage"] == "shipped"
        assert view["error"] is None
        assert set(view["receipt"]) == {"reservation_id", "payment_id", "shipment_id"}
        assert steps(view) == [
            ("step", "ReserveStock", "completed"),
            ("step", "ChargeCard", "completed"),
            ("step", "Ship", "completed"),
        ]

        view = order(client, cancelled)
        assert view["status"] == "COMPENSATED", view
        assert view["receipt"] is None
        assert "cancelled by the customer: changed my mind" in view["error"]
        assert steps(view) == [
            ("step", "ReserveStock", "completed"),
            ("step", "ChargeCard", "completed"),
            ("compensation", "ChargeCard", "completed"),
            ("compensation", "ReserveStock", "completed"),
        ]

        view = order(client, declined)
        assert view["status"] == "COMPENSATED", view
        assert "the card was declined" in view["error"]
        assert steps(view) == [
            ("step", "ReserveStock", "completed"),
            ("step", "ChargeCard", "failed"),
            ("compensation", "ReserveStock", "completed"),
        ]

        # an order that has ended cannot be cancelled any more
        late = client.post(f"/orders/{shipped}/cancel")
        assert late.status_code == 409, late.text
        assert "has ended" in late.json()["detail"]

    assert example.stop("worker") == 0, example.logs()
    # uvicorn shuts down gracefully, then exits by the signal it got (it re-raises it)
    assert example.stop("app") in (0, -signal.SIGTERM), example.logs()
    assert "Application shutdown complete" in example.log("app"), example.logs()
    worker_log = example.log("worker")
    assert "ready" in worker_log and "stopped" in worker_log
    # the stand-ins printed what the sagas did: one refund, the cancelled order's
    assert worker_log.count("payments: refund") == 1, worker_log
    assert worker_log.count("warehouse: release") == 2, worker_log
    assert worker_log.count("warehouse: ship") == 1, worker_log
