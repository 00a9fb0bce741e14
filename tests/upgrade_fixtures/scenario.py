"""Sagas left in flight by an earlier release, for the upgrade tests.

One file, two uses, so that the workflows the old rows were written by are the very code that
finishes them after the upgrade:

* run as a script by ``make.py`` on the sagakit of an earlier release (``PYTHONPATH`` holds that
  release's source): ``python scenario.py CASE URL`` leaves one saga in the state CASE names,
  SIGKILLing its own process from inside a step or a compensation where the case says so;
* imported by ``tests/test_upgrade_from_every_schema.py`` on today's sagakit, which registers
  the same workflows and counts what runs again in :data:`ledger`.

So the definitions use only what every release since schema 1 had (``saga_step_strict``,
``saga_workflow``, ``TerminalError``, ``RetryPolicy``, ``Engine(worker=False)``); a feature a
release lacks is looked up where it is used (``wait_for_signal``, schema 2) or defined only
when the release takes it (``on_exhausted="park"``, schema 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from sagakit import Engine, RetryPolicy, SagaContext, TerminalError, saga_step_strict, saga_workflow

if __name__ == "__main__":  # run as a script: the cases beside it; sagakit stays PYTHONPATH's
    sys.path.append(str(Path(__file__).resolve().parents[2]))
from tests.upgrade_fixtures.cases import CASES

#: what ran in this process, as "what:saga_id" (today's test reads it; the scenario ignores it)
ledger: list[str] = []
#: set only by the scenario's main: where this process kills itself, and whether Pack fails
KILL_IN: set[str] = set()
PACK_FAILS = False


async def _effect(what: str, saga_id: str) -> None:
    ledger.append(f"{what}:{saga_id}")
    if what in KILL_IN:
        # a moment first: some releases commit a compensation's entry behind the next one
        # (write-behind), and the rollback is to die with its earlier part journaled
        await asyncio.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies here, mid-operation


async def release(data: dict[str, Any]) -> None:
    await _effect("release", data["id"])


async def refund(data: dict[str, Any]) -> None:
    await _effect("refund", data["id"])


async def unnotify(data: dict[str, Any]) -> None:
    await _effect("unnotify", data["id"])


@saga_step_strict("Reserve", compensate=release)
async def reserve(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    await _effect("reserve", inp["id"])
    return {"id": inp["id"], "reserved": True}


@saga_step_strict("Charge", compensate=refund)
async def charge(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    await _effect("charge", inp["id"])
    return {"id": inp["id"], "charged": 40}


@saga_step_strict("Notify", compensate=unnotify)
async def notify(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    await _effect("notify", inp["id"])
    return {"id": inp["id"], "notified": True}


@saga_step_strict("Ship")
async def ship(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    await _effect("ship", inp["id"])
    if inp.get("fail"):
        raise TerminalError("the carrier refused the parcel")
    return {"id": inp["id"], "shipped": True}


@saga_workflow("Order")
async def order(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    await reserve(saga, inp)
    charged = await charge(saga, inp)
    await notify(saga, inp)
    signalled = None
    if inp.get("wait"):
        signalled = await saga.wait_for_signal("go")  # schema 2 on
    await ship(saga, inp)
    return {"id": inp["id"], "charged": charged["charged"], "signal": signalled}


def _pack_step() -> Any:
    """The Pack step, parking the saga when its one attempt fails; None on a release without
    ``on_exhausted`` (before schema 3)."""

    async def pack_fn(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        await _effect("pack", inp["id"])
        if PACK_FAILS:
            raise RuntimeError("the packing station is down")
        return {"id": inp["id"], "packed": True}

    try:
        decorate = saga_step_strict("Pack", retry=RetryPolicy(max_attempts=1), on_exhausted="park")
    except TypeError:
        return None
    return decorate(pack_fn)


pack = _pack_step()


@saga_workflow("Parkable")
async def parkable(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    await reserve(saga, inp)
    packed = await pack(saga, inp)
    return {"id": inp["id"], "packed": packed["packed"]}


async def _leave(case: str, url: str) -> None:
    global PACK_FAILS
    saga_id, name, inp, kill_in, status, _ = CASES[case]
    if kill_in:
        KILL_IN.add(kill_in)
    PACK_FAILS = True
    # no background worker: it would claim the sagas an earlier case's process left behind
    engine = Engine(url, lease=timedelta(seconds=2), worker=False)
    engine.register(order)
    if pack is not None:
        engine.register(parkable)
    async with engine:
        handle = await engine.start(name, inp, saga_id, run_here=case != "pending")
        if status == "COMPLETED" or kill_in:
            with contextlib.suppress(Exception):  # a killed case does not come back from here
                await handle.result(timeout=60)
        for _ in range(1200):
            if (await engine.get(saga_id)).status.value == status:
                break
            await asyncio.sleep(0.05)
        else:
            raise SystemExit(f"{saga_id} never reached {status}")
    if kill_in:
        raise SystemExit(f"{saga_id} reached {status} without dying in {kill_in}")


if __name__ == "__main__":
    import sagakit

    print(f"sagakit from {sagakit.__file__}", flush=True)
    asyncio.run(_leave(sys.argv[1], sys.argv[2]))
