"""The canceller the SIGKILL test of tests/test_cancel_children.py kills half-way.

Not a test module: the test runs it as a subprocess::

    python -m tests.cancel_crash_app DB_URL SAGA_ID KILL_AFTER

It cancels SAGA_ID (reason "killed half-way", by "quinn") as ``sagakit cancel`` would, through
an engine that runs nothing, and SIGKILLs itself as soon as the change of saga KILL_AFTER (the
cancelled saga itself, or one of the children its cancel rolls back) has committed: the rest of
the cancel never happens. It exits 0 only if it was not killed (a failure of the test).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from sagakit import Engine
from sagakit.stores import open_store
from sagakit.stores.base import AdminChange, SagaRecord, Store
from tests.wrapped_store import WrappedStore


class KillingStore(WrappedStore):
    """A real store that kills this process right after one saga's admin change committed."""

    def __init__(self, inner: Store, kill_after: str):
        super().__init__(inner)
        self.kill_after = kill_after

    async def administer(self, change: AdminChange) -> SagaRecord | None:
        made = await self.inner.administer(change)
        if made is not None and change.saga_id == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return made


async def main_async(url: str, saga_id: str, kill_after: str) -> int:
    store = KillingStore(open_store(url), kill_after)
    async with Engine(url, worker=False, store=store) as engine:  # type: ignore[arg-type]
        await engine.admin.cancel(saga_id, "killed half-way", by="quinn")
    return 0


def main(argv: list[str]) -> int:
    url, saga_id, kill_after = argv
    return asyncio.run(main_async(url, saga_id, kill_after))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
