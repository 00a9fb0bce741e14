"""restate-saga's option types, and what each becomes on sagakit's engine.

Restate's retry settings map onto sagakit's :class:`~sagakit.RetryPolicy`; the settings of a
Restate deployment that an embedded engine has no use for (ingress, retention, inactivity
timeouts) are accepted, kept on the options, and listed in ``docs/migrating/restate-saga.md``
with what sagakit does instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Literal, cast

from ...errors import ErrorMapper
from ...retry import RetryPolicy
from ...steps import SagaStepOptions as NativeStepOptions
from ...workflows import SagaWorkflowOptions as NativeWorkflowOptions
from .registry import Mapper

Duration = timedelta | float

_DEFAULT = RetryPolicy()


def _duration(value: Duration | None, what: str) -> timedelta | None:
    """A timedelta, or seconds (restate-saga's TypeScript twin takes milliseconds; Python
    code gives timedelta)."""
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a timedelta or a number of seconds, got {value!r}")
    return timedelta(seconds=value)


def _attempts_within(budget: timedelta, policy: RetryPolicy) -> int:
    """How many attempts fit in ``budget`` of backoff waits (at least one)."""
    attempts, waited = 1, 0.0
    while attempts < 10_000:
        waited += policy.delay_after(attempts)
        if waited > budget.total_seconds():
            break
        attempts += 1
    return attempts


@dataclass(frozen=True)
class StepRetryPolicy:
    """How a step (and its compensation) is retried: Restate's ``ctx.run`` retry options.

    Becomes a :class:`~sagakit.RetryPolicy` (:meth:`to_retry_policy`). ``max_retry_attempts``
    counts every attempt, the first included, as Restate's does. Unset, it is sagakit's
    default of 3 attempts (Restate retries forever); ``max_retry_duration`` is turned into the
    number of attempts whose backoff waits fit in it.
    """

    max_retry_attempts: int | None = None
    max_retry_duration: Duration | None = None
    initial_retry_interval: Duration | None = None
    retry_interval_factor: float | None = None
    max_retry_interval: Duration | None = None

    def to_retry_policy(self) -> RetryPolicy:
        """The sagakit policy this stands for."""
        initial = _duration(self.initial_retry_interval, "initial_retry_interval")
        cap = _duration(self.max_retry_interval, "max_retry_interval")
        policy = RetryPolicy(
            max_attempts=_DEFAULT.max_attempts,
            initial_interval=_DEFAULT.initial_interval if initial is None else initial,
            backoff_factor=(
                _DEFAULT.backoff_factor
                if self.retry_interval_factor is None
                else self.retry_interval_factor
            ),
            max_interval=_DEFAULT.max_interval if cap is None else cap,
        )
        budget = _duration(self.max_retry_duration, "max_retry_duration")
        limits = [n for n in (self.max_retry_attempts,) if n is not None]
        if budget is not None:
            limits.append(_attempts_within(budget, policy))
        attempts = max(1, min(limits)) if limits else _DEFAULT.max_attempts
        return RetryPolicy(
            max_attempts=attempts,
            initial_interval=policy.initial_interval,
            backoff_factor=policy.backoff_factor,
            max_interval=policy.max_interval,
        )


@dataclass(frozen=True)
class WorkflowRetryPolicy:
    """Restate's service-level retry policy. On sagakit it is the retry policy of the
    workflow's steps that give none of their own (in Restate a ``ctx.run`` without options
    retries by the invocation's policy); ``on_max_attempts="pause"`` parks the saga for an
    operator when a step runs out of attempts (sagakit's ``on_exhausted="park"``), ``"kill"``
    (and unset) rolls it back."""

    max_attempts: int | None = None
    on_max_attempts: Literal["pause", "kill"] | None = None
    initial_interval: Duration | None = None
    exponentiation_factor: float | None = None
    max_interval: Duration | None = None

    def __post_init__(self) -> None:
        if self.on_max_attempts not in (None, "pause", "kill"):
            raise ValueError(
                f'on_max_attempts must be "pause" or "kill", got {self.on_max_attempts!r}'
            )

    def to_retry_policy(self) -> RetryPolicy:
        """The sagakit policy of the steps that set none."""
        return StepRetryPolicy(
            max_retry_attempts=self.max_attempts,
            initial_retry_interval=self.initial_interval,
            retry_interval_factor=self.exponentiation_factor,
            max_retry_interval=self.max_interval,
        ).to_retry_policy()

    @property
    def parks(self) -> bool:
        return self.on_max_attempts == "pause"


@dataclass(frozen=True)
class SagaStepOptions:
    """A step's options: ``retry`` and ``compensation_retry`` (:class:`StepRetryPolicy`, or a
    sagakit :class:`~sagakit.RetryPolicy`) and ``as_terminal_error``, the step's own error
    mapper, asked before the registered terminal errors and the global mapper."""

    retry: StepRetryPolicy | RetryPolicy | None = None
    compensation_retry: StepRetryPolicy | RetryPolicy | None = None
    as_terminal_error: Mapper | None = None

    def to_native(self) -> NativeStepOptions:
        """sagakit's :class:`~sagakit.SagaStepOptions` for these."""
        return NativeStepOptions(
            retry=_policy(self.retry),
            compensation_retry=_policy(self.compensation_retry),
            # sagakit only ever asks a mapper about an Exception
            as_terminal_error=cast(ErrorMapper | None, self.as_terminal_error),
        )


def _policy(policy: StepRetryPolicy | RetryPolicy | None) -> RetryPolicy | None:
    if policy is None or isinstance(policy, RetryPolicy):
        return policy
    if isinstance(policy, StepRetryPolicy):
        return policy.to_retry_policy()
    raise TypeError(f"a retry policy must be a StepRetryPolicy or a RetryPolicy, got {policy!r}")


def native_step_options(options: SagaStepOptions | NativeStepOptions | None) -> Any:
    """sagakit step options for either spelling (sagakit's own pass through)."""
    if options is None or isinstance(options, NativeStepOptions):
        return options
    if isinstance(options, SagaStepOptions):
        return options.to_native()
    raise TypeError(f"options must be a SagaStepOptions, got {options!r}")


@dataclass(frozen=True)
class SagaWorkflowOptions:
    """A workflow's (or virtual object's) options.

    On sagakit:

    * ``retry_policy`` (:class:`WorkflowRetryPolicy`): the retry policy of the steps that give
      none (see there).
    * ``as_terminal_error``: maps an error that escapes the saga function; the saga rolls back
      either way on sagakit (there is no invocation to retry), the mapped error is what is
      recorded and raised to the caller.
    * ``description``: kept on the workflow.
    * ``idempotency_retention``, ``journal_retention``, ``inactivity_timeout``,
      ``abort_timeout``, ``ingress_private``, ``enable_lazy_state``: settings of a Restate
      deployment. Accepted and kept here, not applied: sagakit keeps a saga's row and journal
      until ``engine.admin.delete`` (a retention sweep is issue 16), a saga id is its
      idempotency key for as long as the row exists, there is no ingress (sagas are started
      in process with ``engine.start``), and a saga waiting for anything holds no memory.
    * ``native``: sagakit's own :class:`~sagakit.SagaWorkflowOptions` to use as the base
      (``deadline``, ``services``...).
    """

    retry_policy: WorkflowRetryPolicy | None = None
    idempotency_retention: Duration | None = None
    journal_retention: Duration | None = None
    inactivity_timeout: Duration | None = None
    abort_timeout: Duration | None = None
    ingress_private: bool | None = None
    enable_lazy_state: bool | None = None
    as_terminal_error: Mapper | None = None
    description: str | None = None
    native: NativeWorkflowOptions | None = None

    def to_native(self) -> NativeWorkflowOptions:
        """sagakit's workflow options for these (``native``, with ``description``)."""
        base = self.native or NativeWorkflowOptions()
        if self.description is None:
            return base
        return replace(base, description=self.description)


def native_workflow_options(
    options: SagaWorkflowOptions | NativeWorkflowOptions | None,
) -> tuple[NativeWorkflowOptions | None, SagaWorkflowOptions]:
    """sagakit's options, and the restate-saga ones (empty when sagakit's were given)."""
    if options is None:
        return None, SagaWorkflowOptions()
    if isinstance(options, NativeWorkflowOptions):
        return options, SagaWorkflowOptions(native=options)
    if isinstance(options, SagaWorkflowOptions):
        return options.to_native(), options
    raise TypeError(f"options must be a SagaWorkflowOptions, got {options!r}")
