"""Durations given as a timedelta or a number of seconds."""

from __future__ import annotations

from datetime import timedelta

from .errors import SagaError


def as_seconds(value: timedelta | float, what: str) -> float:
    """``value`` in seconds; a clear error for what is not a duration or is negative."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if not isinstance(seconds, int | float) or seconds != seconds:
        raise SagaError(f"{what} must be a timedelta or a number of seconds, got {value!r}")
    if seconds < 0:
        raise SagaError(f"{what} must not be negative, got {value!r}")
    return float(seconds)
