"""Run the whole example: a RabbitMQ, two participant services, the checkout saga worker, and a
few orders; print what happened; stop everything.

    python run.py                      # a throwaway RabbitMQ from Debian's package
    python run.py --amqp amqp://guest:guest@localhost:5672/   # or a broker of your own
    python run.py --orders 6 --data ./data                    # keep the databases

Every service is a process of its own with its own SQLite database (and sagakit's inbox and
outbox in it); they talk only through RabbitMQ. Orders are started by this script through an
engine on the checkout service's database that runs no worker (``worker=False``); the
checkout process's worker picks them up. The second order's card is declined, so its saga
rolls back and inventory's reservation is released.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from broker import ThrowawayRabbit
from checkout import checkout

from sagakit import Engine, SagaCompensatedError

HERE = Path(__file__).resolve().parent
#: the longest the script waits for a service to start or an order to end
WAIT = 180.0
SKUS = ["mug", "lamp", "kettle"]


def orders(n: int) -> list[dict[str, Any]]:
    """``n`` orders; the second one's card is declined."""
    return [
        {
            "id": f"order-{i}",
            "sku": SKUS[(i - 1) % len(SKUS)],
            "qty": 1 + i % 2,
            "amount_cents": 1000 * i,
            "card": "tok_declined" if i == 2 else "tok_visa",
        }
        for i in range(1, n + 1)
    ]


class Service:
    """A service process; its output is printed line by line, prefixed with its name."""

    def __init__(self, name: str, *args: str):
        self.name = name
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-u", str(HERE / f"{name}.py"), *args],
            cwd=HERE,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._echo, daemon=True)
        self._reader.start()

    def _echo(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            print(f"  [{self.name}] {line.rstrip()}", flush=True)
            if line.strip() == f"{self.name} ready":
                self.ready.set()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT
        while not self.ready.wait(0.2):
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited ({self.process.returncode}) before ready")
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name} not ready within {WAIT:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # each service closes cleanly on it
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)


async def place_orders(db: str, batch: list[dict[str, Any]]) -> dict[str, str]:
    """Start the orders' sagas and wait for each to end; what became of each."""
    engine = Engine(db, worker=False)  # this process only starts and reads sagas
    engine.register(checkout)
    outcomes: dict[str, str] = {}
    async with engine:
        handles = [
            await engine.start(checkout, order, saga_id=order["id"], run_here=False)
            for order in batch
        ]
        for handle in handles:
            try:
                result = await handle.result(timeout=WAIT)
                outcomes[handle.saga_id] = f"COMPLETED    {result}"
            except SagaCompensatedError as exc:
                outcomes[handle.saga_id] = f"COMPENSATED  {exc.cause_message}"
    return outcomes


def report(data: Path) -> None:
    with contextlib.closing(sqlite3.connect(data / "inventory.db")) as db:
        stock = db.execute("SELECT sku, available FROM stock ORDER BY sku").fetchall()
        held = db.execute(
            "SELECT order_id, sku, qty FROM reservations WHERE released = 0 ORDER BY order_id"
        ).fetchall()
        released = db.execute(
            "SELECT order_id FROM reservations WHERE released = 1 ORDER BY order_id"
        ).fetchall()
    with contextlib.closing(sqlite3.connect(data / "payments.db")) as db:
        charged = db.execute(
            "SELECT order_id, amount_cents FROM charges WHERE refunded = 0 ORDER BY order_id"
        ).fetchall()
    print("inventory: stock    " + ", ".join(f"{sku} {n}" for sku, n in stock))
    print("inventory: reserved " + ", ".join(f"{o} ({q} x {s})" for o, s, q in held))
    print("inventory: released " + (", ".join(o for (o,) in released) or "none"))
    print("payments:  charged  " + ", ".join(f"{o} ({c / 100:.2f})" for o, c in charged))


@contextlib.contextmanager
def rabbitmq(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    print("starting a throwaway RabbitMQ (5 to 10 s) ...", flush=True)
    with ThrowawayRabbit() as rabbit:
        print(f"RabbitMQ ready at {rabbit.url}", flush=True)
        yield rabbit.url
    print("RabbitMQ stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", help="a running RabbitMQ (default: start a throwaway one)")
    parser.add_argument("--orders", type=int, default=4, help="how many orders (default 4)")
    parser.add_argument("--data", type=Path, help="keep the databases in this folder")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.data is None:
            data = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:
            data = args.data.resolve()
            data.mkdir(parents=True, exist_ok=True)
        amqp = stack.enter_context(rabbitmq(args.amqp))
        services = [
            Service("inventory", "--amqp", amqp, "--db", str(data / "inventory.db")),
            Service("payments", "--amqp", amqp, "--db", str(data / "payments.db")),
            Service("checkout", "--amqp", amqp, "--db", f"sqlite:///{data / 'checkout.db'}"),
        ]
        for service in services:
            stack.callback(service.stop)  # stopped newest first, before the broker
        for service in services:
            service.wait_ready()
        batch = orders(args.orders)
        print(f"placing {len(batch)} orders", flush=True)
        outcomes = asyncio.run(place_orders(f"sqlite:///{data / 'checkout.db'}", batch))
        for saga_id, outcome in outcomes.items():
            print(f"{saga_id}  {outcome}", flush=True)
        report(data)
        print(f"inspect one: sagakit show order-2 --db sqlite:///{data / 'checkout.db'}")
    print("all stopped", flush=True)


if __name__ == "__main__":
    main()
