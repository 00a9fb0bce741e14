"""A virtual object for the cross-process exclusivity test, run as several real processes.

Not a test module: ``tests/test_virtual_objects.py`` runs it as a subprocess::

    python -m tests.object_app DB_URL LEDGER KEY CALLS TOTAL GO

It opens a worker engine on DB_URL, creates the file ``GO.<pid>.ready`` and waits until the
file GO exists (so that every process starts calling at the same moment). Then it calls the
exclusive handler ``bump`` of the object ``Turnstile`` for KEY CALLS times concurrently: half the
calls at once (every process's burst races for the free key), the other half each after a
random pause of up to ``STAGGER`` seconds (so the key is sometimes free when a call arrives and
its caller runs it, sometimes busy and the call waits for any worker to take it). It then stays
up (its worker may be running the calls of the other processes) until the object's counter
reaches TOTAL, the number of calls of every process together. It prints one JSON object
``{"pid", "results"}`` (``results``: what each of its calls returned, in call order) and exits
0; 3 when something took too long.

``bump`` appends ``enter <pid> <call>`` to LEDGER, reads the counter, sleeps 10 ms, writes the
counter plus one and appends ``exit <pid> <call>`` (``pid``: the process running the call, which
may be another process than the caller). Each line is one ``write`` on an ``O_APPEND`` file, so
lines of concurrent processes never interleave.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from datetime import timedelta
from typing import Any

from sagakit import Engine, ObjectContext, SagaContext, create_saga_virtual_object

OBJECT = "Turnstile"
#: long enough that no lease runs out under load (a takeover would re-run a call legitimately)
LEASE = timedelta(seconds=10)
POLL = timedelta(milliseconds=50)
DEADLINE = 90.0
#: calls start over this many seconds: the key is busy for some arrivals and free for others
STAGGER = 1.5

turnstile = create_saga_virtual_object(OBJECT)


def append_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@turnstile.handler()
async def bump(saga: SagaContext, obj: ObjectContext, inp: dict[str, Any]) -> int:
    append_line(inp["ledger"], f"enter {os.getpid()} {inp['call']}")
    count = await obj.get("count", 0)
    await asyncio.sleep(0.01)
    obj.set("count", count + 1)
    append_line(inp["ledger"], f"exit {os.getpid()} {inp['call']}")
    return int(count) + 1


async def main(url: str, ledger: str, key: str, calls: int, total: int, go: str) -> int:
    engine = Engine(url, lease=LEASE, poll_interval=POLL, worker=True)
    engine.register(turnstile)
    async with engine:
        pid = os.getpid()
        try:
            async with asyncio.timeout(DEADLINE):
                with open(f"{go}.{pid}.ready", "w"):
                    pass
                while True:
                    if os.path.exists(go):
                        break
                    await asyncio.sleep(0.01)

                async def call(i: int) -> int:
                    if i % 2:
                        await asyncio.sleep(random.uniform(0, STAGGER))
                    inp = {"ledger": ledger, "call": f"{pid}-{i}"}
                    return int(await engine.call_object(OBJECT, key, "bump", inp))

                results = await asyncio.gather(*(call(i) for i in range(calls)))
                # stay up while the other processes' calls may still run here
                while True:
                    state = await engine.object_state(OBJECT, key)
                    if state.get("count", 0) >= total:
                        break
                    await asyncio.sleep(0.05)
        except TimeoutError:
            print(json.dumps({"pid": pid, "error": "timeout", "at": time.time()}), flush=True)
            return 3
        print(json.dumps({"pid": pid, "results": results}), flush=True)
    return 0


if __name__ == "__main__":
    db, ledger_path, object_key, n_calls, n_total, go_path = sys.argv[1:7]
    sys.exit(asyncio.run(main(db, ledger_path, object_key, int(n_calls), int(n_total), go_path)))
