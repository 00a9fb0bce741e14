"""Recorded errors as one line of text, for log records and span statuses."""

from __future__ import annotations

from typing import Any

from .. import serde
from ..errors import ErrorInfo
from ..stores.base import SagaUpdate


def _json(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        data = serde.loads(text)
    except Exception:  # a malformed record must not cost the line that describes it
        return None
    return data if isinstance(data, dict) else None


def entry_error(error_json: str | None) -> tuple[str, bool]:
    """The error a journal entry recorded, on one line, and whether it parks the saga."""
    data = _json(error_json)
    if data is None:
        return error_json or "no error recorded", False
    return str(ErrorInfo.from_json(data)), bool(data.get("parked"))


def parked_at(update: SagaUpdate | None) -> tuple[str | None, int | None]:
    """The step (name, seq) that a PARKED status change says the saga waits at."""
    data = _json(None if update is None else update.error)
    if data is None:
        return None, None
    step, seq = data.get("step"), data.get("seq")
    return (step if isinstance(step, str) else None), (seq if isinstance(seq, int) else None)


def cause_text(update: SagaUpdate | None) -> str:
    """Why the saga rolled back, parked or failed, from the error its status change carries."""
    error = None if update is None else update.error
    data = _json(error)
    if data is None:
        return error or "unknown"
    cause = data.get("cause")
    first = str(ErrorInfo.from_json(cause)) if isinstance(cause, dict) else None
    if data.get("kind") == "compensation_failed":
        failures = "; ".join(
            str(ErrorInfo.from_json(f))
            for f in data.get("compensation_failures", [])
            if isinstance(f, dict)
        )
        return f"{first or 'unknown'}; then compensations failed: {failures}"
    return first or str(data.get("message", data))
