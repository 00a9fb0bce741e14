"""``--wait``: follow sagas after an action until each settles, with a live status line.

A saga settles when it ends, or when it suspends or parks after the action (a resumed saga is
still SUSPENDED until a worker takes it): from there on nothing happens to it until an event, a
timer or an operator moves it again. The status line is redrawn in place on a terminal
(stderr); elsewhere, a line is printed each time a saga's status changes, so that a log of the
run stays short and says what happened.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections import Counter
from datetime import timedelta

import click

from ..admin import SagaAdmin
from ..engine import SagaSnapshot
from ..errors import SagaNotFoundError
from ..stores.base import SagaStatus
from ..timeline import format_duration, render_status_line

#: where a saga stays, once a worker has moved it there, until something moves it again
RESTING = frozenset({SagaStatus.SUSPENDED, SagaStatus.PARKED})
#: settled, but not as the operator hoped: the saga needs another look
SETTLED_BADLY = frozenset({SagaStatus.FAILED, SagaStatus.PARKED})

_POLL_SECONDS = 0.25


class _StatusLine:
    """The live line on stderr: redrawn in place on a terminal, printed on change elsewhere."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self._last_printed: dict[str, str] = {}

    def show(self, text: str) -> None:
        if self.live:
            width = shutil.get_terminal_size().columns - 1
            click.echo("\r\x1b[K" + text[:width], nl=False, err=True)

    def changed(self, saga_id: str, status: str, text: str) -> None:
        """Print ``text`` once per new status of ``saga_id`` when the line is not live."""
        if not self.live and self._last_printed.get(saga_id) != status:
            self._last_printed[saga_id] = status
            click.echo(text, err=True)

    def clear(self) -> None:
        if self.live:
            click.echo("\r\x1b[K", nl=False, err=True)


def _summary(snapshots: dict[str, SagaSnapshot], pending: set[str], elapsed: float) -> str:
    counts = Counter(str(s.status) for i, s in snapshots.items() if i not in pending)
    settled = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return (
        f"following {len(snapshots)} sagas: {len(snapshots) - len(pending)} settled"
        + (f" ({settled})" if settled else "")
        + f", {len(pending)} going on  {format_duration_seconds(elapsed)}"
    )


def format_duration_seconds(seconds: float) -> str:
    """``seconds`` as :func:`~sagakit.timeline.format_duration` writes durations."""
    return format_duration(timedelta(seconds=seconds))


def settled(snapshot: SagaSnapshot, acted: SagaSnapshot) -> bool:
    """Whether ``snapshot`` shows the saga settled since the action left it as ``acted``."""
    if snapshot.status.is_terminal:
        return True
    return snapshot.status in RESTING and snapshot.updated_at > acted.updated_at


async def follow(admin: SagaAdmin, acted: list[SagaSnapshot], *, timeout: float | None) -> bool:
    """Follow the sagas, as each action left them (``acted``), until each settles (or
    ``timeout`` seconds pass), then print where each one is on stdout. True if every saga
    settled, and none FAILED or PARKED."""
    line = _StatusLine()
    began = time.monotonic()
    saga_ids = [s.saga_id for s in acted]
    after_action = {s.saga_id: s for s in acted}
    latest: dict[str, SagaSnapshot] = {}
    pending = set(saga_ids)
    while pending:
        for saga_id in sorted(pending):
            try:
                snapshot = await admin.get_saga(saga_id)
            except SagaNotFoundError:
                pending.discard(saga_id)  # gone (deleted by hand): nothing left to follow
                continue
            latest[saga_id] = snapshot
            line.changed(saga_id, str(snapshot.status), render_status_line(snapshot))
            if settled(snapshot, after_action[saga_id]):
                pending.discard(saga_id)
        elapsed = time.monotonic() - began
        if len(saga_ids) == 1 and saga_ids[0] in latest:
            line.show(render_status_line(latest[saga_ids[0]]))
        else:
            line.show(_summary(latest, pending, elapsed))
        if not pending or (timeout is not None and elapsed >= timeout):
            break
        await asyncio.sleep(_POLL_SECONDS)
    line.clear()
    for saga_id in saga_ids:
        if saga_id in latest:
            click.echo(render_status_line(latest[saga_id]))
    if pending:
        still = ", ".join(f"{i} ({latest[i].status})" for i in sorted(pending) if i in latest)
        click.echo(
            f"Error: not settled after {format_duration_seconds(timeout or 0)}: {still}; "
            "they go on (follow them with `sagakit show`)",
            err=True,
        )
        return False
    badly = [s for s in latest.values() if s.status in SETTLED_BADLY]
    if badly:
        names = ", ".join(f"{s.saga_id} ({s.status})" for s in badly)
        look = badly[0].saga_id if len(badly) == 1 else "SAGA_ID"
        click.echo(f"Error: not through: {names}; see `sagakit show {look}`", err=True)
    return not badly
