"""sagakit.restate without a server: what app() refuses, how a retry policy maps to Restate's
run options, and how a saga's error crosses the ingress."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from restate.exceptions import TerminalError as RestateTerminalError

import sagakit.restate
from sagakit import (
    CompensationFailedError,
    ErrorInfo,
    RetryPolicy,
    SagaCompensatedError,
    SagaContext,
    SagaError,
    SagaValidationError,
    create_saga_long_workflow,
    saga_workflow,
)
from sagakit.restate import outcome
from sagakit.restate.retries import run_options
from sagakit.restate.steps import RetryableAttempt, exhausted_info


def test_a_retry_policy_maps_to_run_options() -> None:
    policy = RetryPolicy(
        max_attempts=4,
        initial_interval=timedelta(milliseconds=200),
        backoff_factor=3.0,
        max_interval=timedelta(seconds=5),
    )
    options = run_options(policy)
    assert options.max_attempts == 4
    assert options.initial_retry_interval == timedelta(milliseconds=200)
    assert options.retry_interval_factor == 3.0
    assert options.max_retry_interval == timedelta(seconds=5)
    # the deprecated field that run_typed silently ignores is never used
    assert options.max_retry_duration is None
    assert run_options(None).max_attempts == RetryPolicy().max_attempts


def test_errors_cross_the_ingress_with_their_shape() -> None:
    cause = ErrorInfo("ValueError", "down", "ship", 2)
    failure = ErrorInfo("TerminalError", "refused", "charge", 1)
    compensated = outcome.failure_error(cause, [])
    error = outcome.error_from_json("s1", outcome.decode(outcome.encode(compensated)) or {})
    assert isinstance(error, SagaCompensatedError)
    assert error.cause == cause
    incomplete = outcome.failure_error(cause, [failure])
    error = outcome.error_from_json("s1", outcome.decode(outcome.encode(incomplete)) or {})
    assert isinstance(error, CompensationFailedError)
    assert (error.cause, error.failures) == (cause, [failure])
    invalid = outcome.error_from_json("s1", {"kind": "invalid_input", "message": "bad"})
    assert isinstance(invalid, SagaValidationError)
    assert outcome.decode(None) is None
    assert outcome.decode({"other": "x"}) is None


def test_an_exhausted_run_keeps_the_last_errors_type() -> None:
    attempt = RetryableAttempt(ValueError("down"))
    exc = RestateTerminalError(repr(attempt))
    assert exhausted_info(exc, "ship", 2, 3) == ErrorInfo(
        "ValueError", "down (gave up after 3 attempts)", "ship", 2
    )
    # a message Restate wrote itself is kept as it is
    plain = exhausted_info(RestateTerminalError("timeout"), "ship", 2, 3)
    assert (plain.type, plain.message) == ("RetriesExhausted", "timeout (gave up after 3 attempts)")
    cancelled = exhausted_info(RestateTerminalError("cancelled", 409), "ship", 2, 3)
    assert cancelled.type == "SagaCancelledError"


def test_app_refuses_what_it_cannot_serve() -> None:
    long = create_saga_long_workflow("Reserved")

    @long.main()
    async def main(saga: SagaContext, inp: Any) -> None:
        return None

    @long.handler("signal")
    async def signal(ctx: Any, inp: Any) -> None:
        return None

    with pytest.raises(SagaError, match="reserved"):
        sagakit.restate.app(long)
    with pytest.raises(SagaError, match="takes saga workflows"):
        sagakit.restate.app("Checkout")  # type: ignore[arg-type]


def test_app_is_an_asgi_app() -> None:
    @saga_workflow("Plain")
    async def plain(saga: SagaContext, inp: Any) -> None:
        return None

    app = sagakit.restate.app(plain)
    assert callable(app)


def test_a_step_of_an_object_handler_that_parks_is_refused() -> None:
    from typing import cast

    import restate

    from sagakit import saga_step
    from sagakit.restate import RestateDriver

    @saga_step("Parks", on_exhausted="park")
    async def parks(ctx: SagaContext, inp: Any) -> None:
        return None

    # an object call's driver has no workflow context: nobody could answer the parked step
    driver = RestateDriver(cast(restate.ObjectContext, object()), "s1")
    with pytest.raises(SagaError, match="virtual object"):
        driver.call_step(parks, None)
