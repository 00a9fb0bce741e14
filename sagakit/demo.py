"""``sagakit demo``: a checkout saga run three ways on a SQLite file in a temporary folder.

1. it completes;
2. the inventory service times out once (the step is retried), then the card is declined
   (a terminal error): the saga rolls back, compensations in reverse order;
3. a child process runs it and is killed with SIGKILL in the middle of a step; this process
   takes the saga over once the dead process's lease expires and finishes it, without running
   the journaled steps again (a ledger file counts every execution, across both processes).

The child is this module run as ``python -m sagakit.demo --child DB_URL LEDGER SAGA_ID``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, Field

from . import (
    Engine,
    RetryPolicy,
    SagaCompensatedError,
    SagaContext,
    SagaError,
    StepResponse,
    TerminalError,
    saga_step,
    saga_step_strict,
    saga_workflow,
)
from .timeline import render_saga_table, render_timeline

#: short, so that the crashed saga is taken over within a couple of seconds
DEMO_LEASE = timedelta(seconds=2)
_STARTED = "@@sagakit-demo step-started"
_CHILD_TIMEOUT = 30.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class DemoError(Exception):
    """The demo could not show what it meant to (a bug, or a broken environment)."""


# -- the example: models, fake services, steps, workflow -------------------------------------


class LineItem(BaseModel):
    sku: str
    quantity: int = Field(gt=0)
    unit_price_cents: int = Field(ge=0)


class CheckoutInput(BaseModel):
    customer_id: str
    items: list[LineItem] = Field(min_length=1)
    card_token: str
    currency: str = "EUR"

    @property
    def amount_cents(self) -> int:
        return sum(i.quantity * i.unit_price_cents for i in self.items)


class NewOrder(BaseModel):
    customer_id: str
    items: list[LineItem]
    placed_at: datetime


class CheckoutResult(BaseModel):
    order_id: str
    reservation_id: str
    payment_id: str
    amount_cents: int


@dataclass
class _Services:
    """Stand-ins for the order, inventory and payment services, with a ledger of every step
    execution (a JSON-lines file, so that the parent sees what the killed child did)."""

    ledger: Path
    hang: bool = False  # the child hangs in ChargeCard, waiting to be killed
    inventory_hiccups: int = 0  # the inventory service times out this many more times

    def record(self, ctx: SagaContext) -> None:
        line = {"saga": ctx.saga_id, "step": ctx.step_name, "pid": os.getpid()}
        with self.ledger.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def executions(self, saga_id: str) -> list[dict[str, Any]]:
        lines = self.ledger.read_text(encoding="utf-8").splitlines()
        return [e for e in map(json.loads, lines) if e["saga"] == saga_id]


_services: _Services | None = None


def _svc() -> _Services:
    if _services is None:
        raise DemoError("the demo services are not set up")
    return _services


def _say(text: str) -> None:
    click.echo(f"    · {text}")
    sys.stdout.flush()  # the parent relays the child's lines as they come


def _short_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(3).hex()}"


async def cancel_order(data: dict[str, Any], failed: bool) -> None:
    """Compensation of CreateOrder (hybrid: also runs if creating the order failed midway)."""
    if "order_id" not in data:
        _say("cancel order: no order was created, nothing to cancel")
        return
    _say(f"↩ cancel order: order {data['order_id']} cancelled")


@saga_step("CreateOrder", compensate=cancel_order)
async def create_order(ctx: SagaContext, order: NewOrder) -> StepResponse[dict[str, Any]]:
    _svc().record(ctx)
    order_id = _short_id("ord")
    _say(f"CreateOrder: order {order_id} created for {order.customer_id}")
    return StepResponse({"order_id": order_id})


async def release_stock(data: dict[str, Any]) -> None:
    """Compensation of ReserveStock."""
    _say(f"↩ release stock: reservation {data['reservation_id']} released")


@saga_step_strict(
    "ReserveStock",
    compensate=release_stock,
    retry=RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=150)),
)
async def reserve_stock(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    svc = _svc()
    svc.record(ctx)
    if svc.inventory_hiccups > 0:
        svc.inventory_hiccups -= 1
        _say(f"ReserveStock: inventory service timed out (attempt {ctx.attempt}), will retry")
        raise ConnectionError("inventory service timed out")
    units = sum(item["quantity"] for item in inp["items"])
    reservation_id = _short_id("res")
    _say(f"ReserveStock: {units} units reserved ({reservation_id}, attempt {ctx.attempt})")
    return {"reservation_id": reservation_id}


async def refund(data: dict[str, Any]) -> None:
    """Compensation of ChargeCard."""
    _say(f"↩ refund: payment {data['payment_id']} refunded")


@saga_step_strict("ChargeCard", compensate=refund)
async def charge_card(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    _svc().record(ctx)
    amount = f"{inp['amount_cents'] / 100:.2f} {inp['currency']}"
    if _svc().hang:
        _say(f"ChargeCard: calling the payment gateway for {amount}… (it hangs)")
        click.echo(_STARTED)
        sys.stdout.flush()
        await asyncio.sleep(3600)  # killed long before this ends
    if inp["card_token"] == "tok_declined":
        _say(f"ChargeCard: card declined for {amount} (terminal: no retry)")
        raise TerminalError("card declined: insufficient funds")
    payment_id = _short_id("pay")
    # ctx.step_key is what a real payment API would get as its idempotency key
    _say(f"ChargeCard: {amount} charged ({payment_id}, idempotency key {ctx.step_key})")
    return {"payment_id": payment_id}


@saga_workflow("Checkout")
async def checkout(saga: SagaContext, inp: CheckoutInput) -> CheckoutResult:
    """Create the order, reserve the stock, charge the card; undo in reverse on failure."""
    placed_at = await saga.now()  # journaled: a replay sees the same time
    order = await create_order(
        saga, NewOrder(customer_id=inp.customer_id, items=inp.items, placed_at=placed_at)
    )
    items = [i.model_dump() for i in inp.items]
    stock = await reserve_stock(saga, {"order_id": order["order_id"], "items": items})
    payment = await charge_card(
        saga,
        {
            "order_id": order["order_id"],
            "amount_cents": inp.amount_cents,
            "currency": inp.currency,
            "card_token": inp.card_token,
        },
    )
    return CheckoutResult(
        order_id=order["order_id"],
        reservation_id=stock["reservation_id"],
        payment_id=payment["payment_id"],
        amount_cents=inp.amount_cents,
    )


def _basket(customer: str, card: str) -> CheckoutInput:
    return CheckoutInput(
        customer_id=customer,
        card_token=card,
        items=[
            LineItem(sku="MUG-BLUE", quantity=2, unit_price_cents=1490),
            LineItem(sku="TEA-EARLGREY", quantity=1, unit_price_cents=3000),
        ],
    )


# -- the parent: narration and the three runs ---------------------------------------------


class _Demo:
    def __init__(self, folder: Path, *, color: bool, unicode: bool):
        self.folder = folder
        self.db = folder / "demo.db"
        self.url = f"sqlite:///{self.db}"
        self.color = color
        self.unicode = unicode

    def style(self, text: str, **styles: Any) -> str:
        return click.style(text, **styles) if self.color else text

    def echo(self, text: str = "") -> None:
        click.echo(text, color=self.color)

    def title(self, number: int, text: str) -> None:
        rule = "─" if self.unicode else "-"
        self.echo()
        self.echo(self.style(f"{rule * 2} {number}/3  {text} ".ljust(78, rule), bold=True))

    def timeline(self, snapshot: Any) -> None:
        self.echo()
        body = render_timeline(snapshot, color=self.color, unicode=self.unicode)
        self.echo("\n".join("  " + line if line else line for line in body.splitlines()))

    async def run(self) -> None:
        global _services
        _services = _Services(self.folder / "ledger.jsonl")
        self.echo(
            f"{self.style('sagakit demo', bold=True)}: durable sagas on a SQLite file\n"
            f"  database  {self.db}\n"
            "  workflow  Checkout = CreateOrder → ReserveStock → ChargeCard\n"
            "            rollback:  cancel order ← release stock ← refund"
        )
        engine = Engine(self.url, lease=DEMO_LEASE, poll_interval=timedelta(milliseconds=100))
        engine.register(checkout)
        async with engine:
            await self.completes(engine)
            await self.rolls_back(engine)
            await self.crash(engine)
            self.echo()
            self.echo(self.style("All sagas in the database", bold=True) + f" ({self.url}):")
            table = render_saga_table(await engine.list(), color=self.color, unicode=self.unicode)
            self.echo("\n".join("  " + line for line in table.splitlines()))

    async def completes(self, engine: Engine) -> None:
        self.title(1, "A checkout that completes")
        paid = await engine.run(checkout, _basket("cus_ada", "tok_visa"), saga_id="order-1001")
        assert isinstance(paid, CheckoutResult)  # the workflow's return annotation
        self.echo(
            f"  engine.run returned order {paid.order_id}, reservation {paid.reservation_id}, "
            f"payment {paid.payment_id}"
        )
        await self.expect(engine, "order-1001", "COMPLETED")

    async def rolls_back(self, engine: Engine) -> None:
        self.title(2, "A declined card: the saga rolls back")
        self.echo(
            "  The inventory service times out once (ReserveStock is retried), then the\n"
            "  card is declined, a TerminalError: compensations run in reverse order."
        )
        _svc().inventory_hiccups = 1
        try:
            await engine.run(checkout, _basket("cus_bob", "tok_declined"), saga_id="order-1002")
        except SagaCompensatedError as exc:
            self.echo(f"  engine.run raised SagaCompensatedError: {exc}")
        else:
            raise DemoError("saga order-1002 was expected to roll back, but it completed")
        await self.expect(engine, "order-1002", "COMPENSATED")

    async def crash(self, engine: Engine) -> None:
        saga_id = "order-1003"
        self.title(3, "A crash: the process running the saga is killed")
        child = await self.start_child(saga_id)
        kill = "SIGKILL" if os.name == "posix" else "TerminateProcess"
        self.echo(f"  ✂ ChargeCard is running in pid {child.pid}: killing it with {kill}")
        child.kill()
        await child.wait()
        killed_at = time.monotonic()
        before = await engine.get(saga_id)
        self.echo(
            f"  after the crash the saga is {before.status}, leased by the dead process;\n"
            f"  its journal holds: {', '.join(s.name for s in before.steps) or 'nothing'}\n"
            f"  this engine takes it over when the lease ({DEMO_LEASE.seconds} s) expires…"
        )
        await engine.handle(saga_id).result(timeout=_CHILD_TIMEOUT)
        waited = time.monotonic() - killed_at
        self.echo(f"  recovered and COMPLETED {waited:.1f} s after the kill")
        self.report_executions(saga_id, child.pid)
        await self.expect(engine, saga_id, "COMPLETED")

    async def start_child(self, saga_id: str) -> asyncio.subprocess.Process:
        # the child imports this very sagakit, whatever the working folder and install
        path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path, "PYTHONIOENCODING": "utf-8"}
        args = ["--child", self.url, str(_svc().ledger), saga_id]
        errors = self.folder / "child-stderr.txt"
        with errors.open("wb") as stderr:
            child = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "sagakit.demo", *args),
                cwd=self.folder,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        self.echo(f"  a child process (pid {child.pid}) starts saga {saga_id}:")
        assert child.stdout is not None
        try:
            async with asyncio.timeout(_CHILD_TIMEOUT):
                while line := (await child.stdout.readline()).decode(errors="replace").strip():
                    if line == _STARTED:
                        return child
                    self.echo(f"    [pid {child.pid}] {line}")
                await child.wait()
            detail = errors.read_text(encoding="utf-8", errors="replace").strip()
            raise DemoError(f"the child process ended before its step started:\n{detail}")
        except BaseException:
            if child.returncode is None:
                child.kill()
                await child.wait()
            raise

    def report_executions(self, saga_id: str, child_pid: int) -> None:
        runs = _svc().executions(saga_id)
        counts = Counter(e["step"] for e in runs)
        self.echo("  step executions, from the ledger both processes wrote:")
        where = {child_pid: "(killed)", os.getpid(): "(this process)"}
        for step in ("CreateOrder", "ReserveStock", "ChargeCard"):
            pids = ", ".join(
                f"pid {e['pid']} {where.get(e['pid'], '')}" for e in runs if e["step"] == step
            )
            times = "1 time " if counts[step] == 1 else f"{counts[step]} times"
            self.echo(f"    {step:<13} ran {times}  {pids}")
        if counts["CreateOrder"] != 1 or counts["ReserveStock"] != 1:
            raise DemoError(f"a journaled step of {saga_id} ran again: {dict(counts)}")
        self.echo(
            "  CreateOrder and ReserveStock were journaled before the kill: the replay\n"
            "  returned their recorded results and did not run them again. ChargeCard was\n"
            "  in flight, so it ran again (at-least-once), with the same ctx.step_key."
        )

    async def expect(self, engine: Engine, saga_id: str, status: str) -> None:
        snapshot = await engine.get(saga_id)
        self.timeline(snapshot)
        if snapshot.status != status:
            raise DemoError(f"saga {saga_id} ended {snapshot.status}, expected {status}")


# -- the commands the demo suggests ------------------------------------------------------------


def sagakit_command(
    executable: str | None = None, path: str | None = None, cwd: Path | None = None
) -> tuple[str, str | None]:
    """How to type ``sagakit`` in the user's shell so that it runs this very sagakit, and a hint
    to print beside it (or None).

    Right after ``python -m venv .venv && .venv/bin/pip install sagakit`` the venv is not
    activated: its ``bin`` folder is not on PATH, and a bare ``sagakit`` is "command not
    found" (or another install's). So the command is plain ``sagakit`` only when PATH finds the
    console script beside this interpreter; else it is that script's path (relative to the
    working folder when inside it, as in ``.venv/bin/sagakit``), with a hint to activate the
    venv; and ``python -m sagakit.cli`` when there is no console script at all (a source tree).

    Args:
        executable: the interpreter (default: ``sys.executable``; not resolved: a venv's python
            is a symlink to the base interpreter).
        path: the PATH to search (default: ``$PATH``).
        cwd: the folder the user types in (default: the working folder).
    """
    bin_dir = Path(executable if executable is not None else sys.executable).absolute().parent
    here = cwd if cwd is not None else Path.cwd()
    script = bin_dir / ("sagakit.exe" if os.name == "nt" else "sagakit")
    if not script.is_file():
        python = _typed_path(Path(executable or sys.executable).absolute(), here)
        return f"{python} -m sagakit.cli", None
    found = shutil.which("sagakit", path=path if path is not None else os.environ.get("PATH"))
    if found is not None and _same_file(Path(found), script):
        return "sagakit", None
    command = _typed_path(script, here)
    activate = bin_dir / "activate"
    if os.name != "nt" and activate.is_file():
        hint = f"(or `source {_typed_path(activate, here)}` first, then type plain `sagakit`)"
        return command, hint
    return command, None


def _typed_path(file: Path, cwd: Path) -> str:
    """``file`` as typed in a shell in ``cwd``: relative when inside it, quoted if need be."""
    try:
        shown = str(file.relative_to(cwd.absolute()))
    except ValueError:
        shown = str(file)
    if os.sep not in shown:
        shown = os.path.join(os.curdir, shown)  # a bare name would be looked up on PATH
    return shlex.quote(shown)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def run_demo(*, keep: bool = False, color: bool = False, unicode: bool = True) -> int:
    """Run the demo in a fresh temporary folder; return the exit code (0 when all went well).

    The folder is removed at the end unless ``keep``; its path is printed either way.
    """
    folder = Path(tempfile.mkdtemp(prefix="sagakit-demo-"))
    command, hint = sagakit_command()
    started = time.monotonic()
    demo = _Demo(folder, color=color, unicode=unicode)
    code = 0
    try:
        asyncio.run(demo.run())
    except (DemoError, SagaError) as exc:
        click.echo(f"sagakit demo failed: {exc}", err=True)
        code = 1
    except TimeoutError:
        click.echo(f"sagakit demo failed: nothing happened for {_CHILD_TIMEOUT:.0f} s", err=True)
        code = 1
    finally:
        demo.echo()
        elapsed = time.monotonic() - started
        if keep:
            db = shlex.quote(demo.url)
            demo.echo(
                f"Done in {elapsed:.1f} s. The demo folder is kept: {folder}\n"
                f"  {command} list --db {db}\n"
                f"  {command} show order-1003 --db {db}"
            )
        else:
            shutil.rmtree(folder, ignore_errors=True)
            demo.echo(
                f"Done in {elapsed:.1f} s. Removed {folder} "
                f"(keep it with --keep: {command} demo --keep)"
            )
        if hint is not None:
            demo.echo(f"  {hint}")
    return code


# -- the child process ------------------------------------------------------------------------


async def _child(db: str, ledger: Path, saga_id: str) -> None:
    global _services
    _services = _Services(ledger, hang=True)
    engine = Engine(db, lease=DEMO_LEASE)
    engine.register(checkout)
    async with engine:
        handle = await engine.start(checkout, _basket("cus_grace", "tok_visa"), saga_id=saga_id)
        await handle.result()


def main(argv: list[str]) -> None:
    """``python -m sagakit.demo --child DB_URL LEDGER SAGA_ID``: the process the demo kills.
    (The demo itself is ``sagakit demo``.)"""
    if len(argv) != 4 or argv[0] != "--child":
        sys.exit("usage: sagakit demo (python -m sagakit.demo is the demo's child process)")
    asyncio.run(_child(argv[1], Path(argv[2]), argv[3]))


if __name__ == "__main__":
    main(sys.argv[1:])
