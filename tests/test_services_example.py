"""The example of examples/services, run as its README says: ``python run.py`` starts a
throwaway RabbitMQ, the inventory and payments participant services and the checkout saga
worker (each a process with its own SQLite database), places orders, prints what happened and
stops everything. The second order's card is declined: its saga is compensated and inventory's
reservation released; every command was applied once by its participant."""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "services"
ORDERS = 4


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_services_example_runs_a_saga_across_two_services_over_rabbitmq(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "run.py", "--orders", str(ORDERS), "--data", str(tmp_path)],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr

    outcomes = dict(re.findall(r"^(order-\d+)  (COMPLETED|COMPENSATED)", out, re.MULTILINE))
    assert outcomes == {
        "order-1": "COMPLETED",
        "order-2": "COMPENSATED",
        "order-3": "COMPLETED",
        "order-4": "COMPLETED",
    }
    assert re.search(
        r"^order-2  COMPENSATED .*'payments' refused command 'charge'.*declined", out, re.M
    )
    # the rollback went to both participants, newest step first
    assert out.index("[payments] nothing to refund for order-2") < out.index(
        "[inventory] released 1 x lamp of order-2"
    )

    # every service stopped, and the broker with them
    for name in ("inventory", "payments", "checkout"):
        assert f"[{name}] {name} stopped" in out
    port = int(re.findall(r"RabbitMQ ready at amqp://guest:guest@127\.0\.0\.1:(\d+)/", out)[0])
    assert not _accepts(port)
    assert out.rstrip().endswith("all stopped")

    with closing(sqlite3.connect(tmp_path / "inventory.db")) as db:
        ledger = db.execute("SELECT message_id, command, order_id, sku, qty FROM ledger").fetchall()
        stock = dict(db.execute("SELECT sku, available FROM stock").fetchall())
        inbox = db.execute("SELECT count(*) FROM saga_inbox").fetchone()[0]
    # each command applied once (a message id appears once), the declined order's released
    assert len({row[0] for row in ledger}) == len(ledger)
    assert sorted((c, o) for _, c, o, _, _ in ledger) == [
        ("release", "order-2"),
        ("reserve", "order-1"),
        ("reserve", "order-2"),
        ("reserve", "order-3"),
        ("reserve", "order-4"),
    ]
    # order-1: 2 mugs, order-3: 2 kettles, order-4: 1 mug; order-2's lamp came back
    assert stock == {"mug": 47, "lamp": 10, "kettle": 3}
    assert inbox == ORDERS + 1  # four reserves and one release, each recorded once

    with closing(sqlite3.connect(tmp_path / "payments.db")) as db:
        charges = db.execute("SELECT command, order_id, amount_cents FROM ledger").fetchall()
    assert sorted(charges) == [
        ("charge", "order-1", 1000),
        ("charge", "order-3", 3000),
        ("charge", "order-4", 4000),
    ]
