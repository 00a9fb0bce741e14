"""Logging and OpenTelemetry tracing of saga runs (observers of the engine)."""

from __future__ import annotations

from typing import Any

from ..engine.observe import Observer


def default_observers(tracer_provider: Any = None) -> list[Observer]:
    """The observers an Engine gets unless told otherwise."""
    return []


__all__ = ["default_observers"]
