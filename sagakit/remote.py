"""What remote steps and participants agree on: the errors a remote step raises, the shape of a
command's reply, its headers, and how message ids are made.

A saga's remote step (``saga.send_command``) sends a *command* message to a participant and
waits for its *reply*. The reply's payload is JSON: ``{"value": ...}`` when the participant's
handler returned, ``{"error": {"type": ..., "message": ...}}`` when it refused the command for
good (an invalid payload, a :class:`~sagakit.errors.TerminalError`, no handler of that name,
deliveries exhausted). Ids are derived, never random: the command of the remote step at
``seq`` of saga ``S`` is ``cmd:S:seq`` on every attempt and every replay (a participant's
inbox answers a repeat with its stored reply), its reply ``reply:cmd:S:seq``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import serde
from .errors import SagaTimeoutError, TerminalError

#: where an engine consumes the replies to its sagas' commands unless told otherwise
DEFAULT_REPLY_ADDRESS = "sagakit.replies"
#: header of a command: the saga that sent it (copied onto the reply)
SAGA_HEADER = "x-sagakit-saga-id"
#: header of a command: its journal sequence number in that saga
SEQ_HEADER = "x-sagakit-seq"
#: header of a command: which attempt of the remote step sent it (1, 2, ...)
ATTEMPT_HEADER = "x-sagakit-attempt"
#: header of a reply: ``"ok"`` or ``"error"``
STATUS_HEADER = "x-sagakit-status"


class RemoteCommandError(TerminalError):
    """A remote step failed for good: its participant replied with an error.

    Attributes: ``participant`` and ``command`` name the step; ``error_type`` is the type of
    the participant's error (``"ValidationError"`` for a payload it could not parse).
    """

    def __init__(
        self, message: str, *, participant: str = "", command: str = "", error_type: str = ""
    ):
        super().__init__(message, error_type=error_type or "RemoteCommandError")
        self.participant = participant
        self.command = command


class RemoteTimeoutError(SagaTimeoutError):
    """A remote step got no reply within its timeout, on every attempt its retry policy
    allows. Terminal: the saga rolls back (sending the step's compensation command, as the
    participant may have processed the command) unless the saga function catches this."""


def command_id(saga_id: str, seq: int) -> str:
    """The message id of the command a saga sends at ``seq`` (the same on every attempt)."""
    return f"cmd:{saga_id}:{seq}"


def reply_id(command: str) -> str:
    """The message id of the reply to the command with id ``command``."""
    return f"reply:{command}"


def ok_reply(value: Any) -> str:
    """The payload of a reply that carries the handler's return value."""
    return serde.dumps({"value": value}, what="a participant's reply")


def error_reply(error_type: str, message: str) -> str:
    """The payload of a reply that refuses the command for good."""
    return serde.dumps({"error": {"type": error_type, "message": message}})


def reply_status(payload: str) -> str:
    """``"ok"`` or ``"error"``, read from a reply's payload."""
    return "error" if "error" in _decoded(payload) else "ok"


def reply_outcome(payload: str, participant: str, command: str) -> Any:
    """The value a reply carries, or the RemoteCommandError it stands for."""
    decoded = _decoded(payload)
    error = decoded.get("error")
    if error is not None:
        info: Mapping[str, Any] = error if isinstance(error, Mapping) else {"message": error}
        error_type = str(info.get("type") or "RemoteCommandError")
        raise RemoteCommandError(
            f"participant {participant!r} refused command {command!r}: {error_type}: "
            f"{info.get('message', '')}",
            participant=participant,
            command=command,
            error_type=error_type,
        )
    return decoded.get("value")


def _decoded(payload: str) -> dict[str, Any]:
    try:
        decoded = serde.loads(payload)
    except ValueError:
        return {
            "error": {"type": "InvalidReply", "message": f"a reply that is not JSON: {payload!r}"}
        }
    if not isinstance(decoded, dict):
        return {"error": {"type": "InvalidReply", "message": f"an unexpected reply: {payload!r}"}}
    return decoded


__all__ = [
    "ATTEMPT_HEADER",
    "DEFAULT_REPLY_ADDRESS",
    "SAGA_HEADER",
    "SEQ_HEADER",
    "STATUS_HEADER",
    "RemoteCommandError",
    "RemoteTimeoutError",
    "command_id",
    "error_reply",
    "ok_reply",
    "reply_id",
    "reply_outcome",
    "reply_status",
]
