"""The sagas ``scenario.py`` leaves in flight (no sagakit import: the generator reads this on
whatever sagakit the working tree holds, the scenario on an earlier release's)."""

from __future__ import annotations

from typing import Any

#: each case: the saga id, the workflow, its input, the effect inside which the process kills
#: itself (None: it leaves the saga as it is and exits), the status the saga is left in, and the
#: first schema version whose release has what the case needs
CASES: dict[str, tuple[str, str, dict[str, Any], str | None, str, int]] = {
    "completed": ("completed", "Order", {"id": "completed"}, None, "COMPLETED", 1),
    "pending": ("pending", "Order", {"id": "pending"}, None, "PENDING", 1),
    "died": ("died", "Order", {"id": "died"}, "charge", "RUNNING", 1),
    "rollback": (
        "rollback",
        "Order",
        {"id": "rollback", "fail": True},
        "refund",
        "COMPENSATING",
        1,
    ),
    # waits for a signal came with schema 2, on_exhausted="park" with schema 3
    "suspended": ("suspended", "Order", {"id": "suspended", "wait": True}, None, "SUSPENDED", 2),
    "parked": ("parked", "Parkable", {"id": "parked"}, None, "PARKED", 3),
}


def cases_for(version: int) -> list[str]:
    """The cases that the release of this schema version can leave."""
    return [name for name, case in CASES.items() if case[5] <= version]
