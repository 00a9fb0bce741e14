"""How a saga's end crosses Restate's ingress: the same error shapes as the embedded engine.

A saga that completed returns its output (JSON). A saga that failed fails its invocation with a
Restate ``TerminalError`` whose message is the readable error and whose metadata carries the
error as the embedded engine records it (``{"kind": "compensated", "cause": ...}`` or
``{"kind": "compensation_failed", "cause": ..., "compensation_failures": [...]}``), so that a
client rebuilds :class:`~sagakit.errors.SagaCompensatedError` or
:class:`~sagakit.errors.CompensationFailedError` from it.
"""

from __future__ import annotations

from typing import Any

from .. import serde
from ..errors import (
    CompensationFailedError,
    ErrorInfo,
    SagaCompensatedError,
    SagaError,
    SagaValidationError,
)

#: the metadata key of a failed saga's error (JSON)
METADATA_KEY = "sagakit-error"

#: HTTP status of a saga that failed and was rolled back (a business failure, fully undone)
COMPENSATED_STATUS = 422
#: HTTP status of a saga whose rollback is incomplete (someone has to look at it)
COMPENSATION_FAILED_STATUS = 500
#: HTTP status of a saga whose input did not validate (nothing ran)
INVALID_INPUT_STATUS = 400


def failure_error(cause: ErrorInfo, failures: list[ErrorInfo]) -> dict[str, Any]:
    """The error a failed saga records: its cause, and what its rollback could not undo."""
    if failures:
        return {
            "kind": "compensation_failed",
            "cause": cause.to_json(),
            "compensation_failures": [f.to_json() for f in failures],
        }
    return {"kind": "compensated", "cause": cause.to_json()}


def error_from_json(saga_id: str, error: dict[str, Any]) -> SagaError:
    """The exception a client raises for a saga that ended with ``error``."""
    kind = error.get("kind")
    cause = ErrorInfo.from_json(error.get("cause") or {})
    if kind == "compensation_failed":
        failures = [ErrorInfo.from_json(f) for f in error.get("compensation_failures", [])]
        return CompensationFailedError(saga_id, cause, failures)
    if kind == "compensated":
        return SagaCompensatedError(saga_id, cause)
    if kind == "invalid_input":
        return SagaValidationError(str(error.get("message", "invalid input")))
    return SagaError(f"saga {saga_id!r} failed: {error.get('message', error)}")


def encode(error: dict[str, Any]) -> dict[str, str]:
    """The Restate error metadata that carries ``error``."""
    return {METADATA_KEY: serde.dumps(error)}


def decode(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """The saga error carried in a Restate error's metadata, if any."""
    if not metadata or METADATA_KEY not in metadata:
        return None
    decoded = serde.loads(str(metadata[METADATA_KEY]))
    return decoded if isinstance(decoded, dict) else None
