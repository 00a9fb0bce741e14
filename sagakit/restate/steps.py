"""One step, or one compensation, as a journaled Restate ``ctx.run``.

The action run inside ``ctx.run`` does the work and encodes its result itself, into a small
JSON record: ``{"status": "completed", "output": ..., "compensation": ..., "writes": [...]}`` or
``{"status": "failed", "error": {...}, "compensation": ...}``. So:

* a terminal failure (a sagakit ``TerminalError``, a registered terminal type, a permanent
  failure) is *journaled as the run's result*, with the compensation data the step gave;
* an output that is not JSON is found inside the action and recorded as a failure, instead
  of failing after the side effect and being retried (re-running the side effect);
* any other error leaves the action, and Restate retries the run with the step's policy;
  when the attempts run out, awaiting the run raises Restate's ``TerminalError``.

Virtual-object state a step writes is buffered during the attempt and carried in the record;
the saga function applies it with ``ctx.set`` once the record is journaled (and again on
replay, from the journal), so a failed attempt writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from restate.exceptions import TerminalError as RestateTerminalError

from .. import serde
from ..context import RunDriver, SagaContext
from ..errors import PAST_DEADLINE, ErrorInfo, OutputNotSerializableError
from ..objects import operation_writes
from ..steps import UNSET, SagaStep, StepResponse

if TYPE_CHECKING:
    from ..engine.outcome import _Compensation

#: the compensation text of a step that said "nothing to compensate"
NOTHING_TO_COMPENSATE = "null"


@dataclass(slots=True)
class StepRecord:
    """A step's journaled result, decoded."""

    completed: bool
    output: Any
    #: JSON text of the compensation data; None when the step gave none (its input is used)
    compensation: str | None
    error: ErrorInfo | None
    writes: list[tuple[str, str | None]]

    @classmethod
    def decode(cls, raw: bytes) -> StepRecord:
        record = json.loads(raw)
        compensation = record.get("compensation", UNSET)
        return cls(
            completed=record["status"] == "completed",
            output=record.get("output"),
            compensation=None if compensation is UNSET else json.dumps(compensation),
            error=ErrorInfo.from_json(record["error"]) if "error" in record else None,
            writes=[(k, v) for k, v in record.get("writes", [])],
        )


def _encode(
    status: str,
    *,
    output: str | None = None,
    compensation: str | None = None,
    error: ErrorInfo | None = None,
    writes: list[tuple[str, str | None]] | None = None,
) -> bytes:
    # the parts are JSON text already (their encoding is what could fail): only splice them
    parts = [f'"status":"{status}"']
    if output is not None:
        parts.append(f'"output":{output}')
    if compensation is not None:
        parts.append(f'"compensation":{compensation}')
    if error is not None:
        parts.append(f'"error":{serde.dumps(error.to_json())}')
    if writes:
        parts.append(f'"writes":{serde.dumps(writes)}')
    return ("{" + ",".join(parts) + "}").encode()


def _compensation_json(response: StepResponse[Any], raw: Any) -> str | None:
    data = response.compensation_data
    if data is UNSET:
        return None
    if data is None:
        # a plain ``return None`` gave no data (the input is used); an explicit
        # StepResponse(..., compensation_data=None) means there is nothing to undo
        return None if raw is None else NOTHING_TO_COMPENSATE
    return serde.dumps(data, what="compensation data")


async def attempt_step(
    driver: RunDriver,
    step: SagaStep[Any],
    seq: int,
    inp: Any,
    terminal: Any,
    deadline_at: float | None,
) -> bytes:
    """One attempt of ``step``, inside ``ctx.run``: its journaled record, or an exception for
    Restate to retry. ``terminal(exc)`` is the terminal form of an error, or None. An attempt
    is cut at the step's timeout or at the saga's deadline (``deadline_at``), whichever is
    first; cut by the deadline, the step fails for good."""
    # the attempt number is Restate's to know (each retry is a new invocation attempt)
    ctx = SagaContext(driver, step_seq=seq, step_name=step.name, attempt=0)
    left = None if deadline_at is None else deadline_at - time.time()
    past_deadline = ErrorInfo("SagaTimeoutError", PAST_DEADLINE, step.name, seq)
    if left is not None and left <= 0:
        return _encode("failed", error=past_deadline)
    cut_by_deadline = left is not None and (step.timeout is None or left < step.timeout)
    limit = asyncio.timeout(left if cut_by_deadline else step.timeout)
    writes: list[tuple[str, str | None]] = []
    token = operation_writes.set(writes)
    try:
        value = step.input.validate(inp)
        async with limit:
            result = await step.run(ctx, value)
    except Exception as exc:
        if cut_by_deadline and limit.expired():
            return _encode("failed", error=past_deadline)
        final = step.terminal_error(exc) or terminal(exc)
        if final is None:
            # Restate retries the run with the step's policy
            raise RetryableAttempt(exc) from exc
        info = ErrorInfo.from_exception(final)
        return _encode("failed", error=ErrorInfo(info.type, info.message, step.name, seq))
    finally:
        operation_writes.reset(token)
    response = result if isinstance(result, StepResponse) else StepResponse(result)
    try:
        compensation = _compensation_json(response, result)
        if response.failed:
            message = response.error_message or "step failed permanently"
            info = ErrorInfo("PermanentFailure", message, step.name, seq)
            return _encode("failed", compensation=compensation, error=info)
        output = serde.dumps(response.output, what=f"the output of step {step.name!r}")
    except OutputNotSerializableError as exc:
        # the side effect happened once: failing for good is the only way not to repeat it
        info = ErrorInfo("OutputNotSerializableError", exc.message, step.name, seq)
        return _encode("failed", error=info)
    return _encode("completed", output=output, compensation=compensation, writes=writes)


async def attempt_compensation(compensation: _Compensation, terminal: Any) -> bytes:
    """One attempt of a compensation, inside ``ctx.run``. A terminal error is journaled as a
    failed record; any other error is left to Restate to retry with the compensation policy."""
    step = compensation.step
    writes: list[tuple[str, str | None]] = []
    token = operation_writes.set(writes)
    try:
        await step.call_compensation(compensation.data, compensation.failed)
    except Exception as exc:
        final = terminal(exc)
        if final is None:
            raise RetryableAttempt(exc) from exc
        info = ErrorInfo.from_exception(final)
        error = ErrorInfo(info.type, info.message, step.name, compensation.seq)
        return _encode("failed", error=error)
    finally:
        operation_writes.reset(token)
    return _encode("completed", writes=writes)


class RetryableAttempt(Exception):
    """A step's error as Restate records it: the original type and message (Restate keeps
    ``repr`` of the error, which this makes readable and parseable on exhaustion)."""

    def __init__(self, exc: BaseException):
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.info = ErrorInfo.from_exception(exc)

    def __repr__(self) -> str:
        return serde.dumps(self.info.to_json())


def exhausted_info(exc: RestateTerminalError, name: str, seq: int, attempts: int) -> ErrorInfo:
    """The error of a step or compensation whose retries ran out (Restate's terminal error
    carries what the last attempt raised)."""
    error_type, message = "RetriesExhausted", exc.message
    try:
        parsed = json.loads(exc.message)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "type" in parsed:
        error_type, message = str(parsed["type"]), str(parsed.get("message", ""))
    if exc.status_code == 409 and "cancel" in exc.message.lower():
        # cancelled while the run was in flight (see driver.is_cancellation)
        return ErrorInfo("SagaCancelledError", "the saga was cancelled through Restate", name, seq)
    return ErrorInfo(error_type, f"{message} (gave up after {attempts} attempts)", name, seq)
