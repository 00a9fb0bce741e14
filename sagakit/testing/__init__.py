"""Helpers for a user's own test suite (see docs/testing.md).

* :class:`SagaTestEnvironment`: an ordinary :class:`~sagakit.Engine` on a virtual clock that
  skips time (``await env.run_until_idle()``, ``env.advance(timedelta(days=7))``), with crash
  injection (``env.crash_at(step="ChargeCard", when="after")``).
* :func:`replay` / :func:`replay_async`: check that a workflow's code still accepts a saga's
  recorded history (``sagakit export SAGA_ID > history.json``).
* A pytest plugin (``sagakit.testing.pytest_plugin``, loaded by pytest when sagakit is
  installed) with the ``saga_env`` fixture.
"""

from ..clock import VirtualClock
from ..engine.crashes import ProcessCrash, StepPoint
from .environment import Advance, Crash, CrashPoint, SagaTestEnvironment
from .replay import HistorySource, ReplayError, ReplayResult, replay, replay_async

__all__ = [
    "Advance",
    "Crash",
    "CrashPoint",
    "HistorySource",
    "ProcessCrash",
    "ReplayError",
    "ReplayResult",
    "SagaTestEnvironment",
    "StepPoint",
    "VirtualClock",
    "replay",
    "replay_async",
]
