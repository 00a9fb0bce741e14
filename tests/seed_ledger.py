"""The fake services of the native seed ports (tests/test_seed_native_*.py): one ledger that
records every side effect in order, and can be told to fail the next calls of an operation, so
that a test asserts what ran, in which order, that each compensation ran once, and what did not
run."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

#: the verbs of the ledger's entries that undo something
UNDO_VERBS = ("cancel", "refund", "void", "release", "unship", "unreserve")


class Declined(Exception):
    """A fake service's failure: retryable unless a test registers or maps it as terminal."""


@dataclass
class Ledger:
    """Fake services; ``entries`` holds each call as ``"service.verb(args)"`` in call order."""

    entries: list[str] = field(default_factory=list)
    planned: dict[str, list[BaseException]] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def act(self, what: str, *args: Any) -> str:
        """Record the call ``what(*args)``; raise the failure planned for it, if any; return a
        new id named after the service (``"order-1"``). An undo takes no id, so that the ids a
        test expects do not depend on how many compensations ran before."""
        self.entries.append(f"{what}({', '.join(map(str, args))})")
        planned = self.planned.get(what)
        if planned:
            raise planned.pop(0)
        service, verb = what.split(".", 1)
        return f"{service}-undone" if verb in UNDO_VERBS else f"{service}-{next(self.ids)}"

    def fail_next(self, what: str, error: BaseException | None = None, times: int = 1) -> None:
        """Make the next ``times`` calls of ``what`` raise ``error`` (default: ``Declined``)."""
        self.planned[what] = [error or Declined(f"{what} failed") for _ in range(times)]

    def undone(self) -> list[str]:
        """The compensating calls, in the order they ran."""
        return [e for e in self.entries if e.split("(")[0].split(".")[-1] in UNDO_VERBS]

    def count(self, entry: str) -> int:
        return self.entries.count(entry)
