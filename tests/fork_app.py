"""The ``Transfer`` workflow of tests/test_fork.py, before and after its bug fix; the
``sagakit fork --app`` of its CLI test loads the fixed one (``WORKFLOWS``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sagakit import SagaContext, SagaWorkflow, saga_step, saga_workflow
from tests.conftest import fast_retry


@dataclass
class Ledger:
    """The outside world the steps change: balances, and which step bodies ran."""

    balances: dict[str, int] = field(default_factory=lambda: {"alice": 100, "bob": 0})
    runs: list[str] = field(default_factory=list)


def transfer(
    ledger: Ledger, *, fixed: bool, park: bool = True, approval: bool = False
) -> SagaWorkflow[Any, Any]:
    """The workflow ``Transfer``: before the fix its Receipt step always fails."""

    async def give_back(data: Any, failed: bool = False) -> None:
        ledger.runs.append("undo Debit")
        ledger.balances[data["source"]] += data["amount"]

    async def take_back(data: Any, failed: bool = False) -> None:
        ledger.runs.append("undo Credit")
        ledger.balances[data["target"]] -= data["amount"]

    @saga_step("Debit", compensate=give_back)
    async def debit(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        ledger.runs.append("Debit")
        ledger.balances[inp["source"]] -= inp["amount"]
        return dict(inp)

    @saga_step("Credit", compensate=take_back)
    async def credit(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        ledger.runs.append("Credit")
        ledger.balances[inp["target"]] += inp["amount"]
        return dict(inp)

    @saga_step("Receipt", retry=fast_retry(2), on_exhausted="park" if park else "compensate")
    async def receipt(ctx: SagaContext, inp: dict[str, Any]) -> str:
        ledger.runs.append("Receipt (fixed)" if fixed else "Receipt (bug)")
        if not fixed:
            raise RuntimeError("the receipt template is missing")
        return f"receipt for {inp['amount']}"

    @saga_workflow("Transfer")
    async def workflow(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        await debit(saga, inp)  # seq 0
        approved = await saga.wait_for_signal("approve") if approval else None  # seq 1
        await credit(saga, inp)
        if approval:
            saga.set_state("stage", "credited")
        done = await receipt(saga, inp)
        if approval:  # a second approval, after the receipt
            await saga.wait_for_signal("approve")
        return {"receipt": done, "approved": approved}

    return workflow


WORKFLOWS = [transfer(Ledger(), fixed=True)]
