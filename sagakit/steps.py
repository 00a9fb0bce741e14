"""Saga steps: a unit of work with an optional compensation (its undo).

Two flavours, as in the seed libraries:

* **hybrid** (:func:`saga_step`): the compensation is registered *before* the step runs, so it
  runs even when the step fails midway (with ``failed=True``); when the step produced no
  compensation data, the compensation gets the step's input.
* **strict** (:func:`saga_step_strict`): the compensation is registered only once the step
  succeeded, and gets the step's compensation data.

A step returns :class:`StepResponse` or a plain value. Calling a step inside a saga,
``await step(ctx, inp)``, returns its output; its sequence number in the journal is taken when it
is *called*, so ``asyncio.gather`` over step calls numbers branches in program order.

Typed: a step made from ``async def fn(ctx, inp: In) -> Out`` (or ``-> StepResponse[Out]``) is a
``SagaStep[In, Out]``, so a type checker sees ``await step(ctx, inp)`` as an ``Out``.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, overload

from typing_extensions import TypeVar

from . import serde
from .errors import ErrorMapper, SagaError, TerminalError, map_error
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .context import SagaContext

# defaults (PEP 696): a bare ``SagaStep`` or ``StepResponse`` in user code means ``[Any, ...]``
InT = TypeVar("InT", default=Any)
OutT = TypeVar("OutT", default=Any)
# covariant: a ``SagaStep[In, str]`` is a ``SagaStep[In, object]``
OutT_co = TypeVar("OutT_co", covariant=True, default=Any)
# the types of one decorated function
_In = TypeVar("_In")
_Out = TypeVar("_Out")


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


class StepResponse(Generic[OutT]):
    """What a step returns: its output, and the data its compensation will need.

    Args:
        output: returned to the saga function by ``await step(...)``.
        compensation_data: given to the compensation. Defaults to ``output``; ``None`` means
            there is nothing to compensate.
    """

    __slots__ = ("compensation_data", "error_message", "failed", "output")

    def __init__(self, output: OutT, compensation_data: Any = UNSET):
        self.output = output
        self.compensation_data = output if compensation_data is UNSET else compensation_data
        self.failed = False
        self.error_message: str | None = None

    @classmethod
    def permanent_failure(cls, message: str, compensation_data: Any = UNSET) -> StepResponse[Any]:
        """Fail the step for good (no retry) and roll the saga back.

        On a hybrid step the compensation gets ``compensation_data`` (or the step's input when it
        is not given) with ``failed=True``. On a strict step the step's own compensation is not
        registered (strict compensates only success); the earlier steps are rolled back.
        """
        response: StepResponse[Any] = cls(output=None)  # type: ignore[arg-type]
        response.compensation_data = compensation_data
        response.failed = True
        response.error_message = message
        return response

    def __repr__(self) -> str:
        if self.failed:
            return f"StepResponse.permanent_failure({self.error_message!r})"
        return f"StepResponse(output={self.output!r})"


OnExhausted = Literal["compensate", "park"]


@dataclass(frozen=True, kw_only=True)
class SagaStepOptions:
    """Options of a step.

    Args:
        retry: how the step is retried on a non-terminal error (default ``RetryPolicy()``).
        compensation_retry: how its compensation is retried (default: ``retry``).
        timeout: the longest one attempt may run; an attempt that runs past it fails and is
            retried like any other failed attempt.
        on_exhausted: what happens when the retries run out: ``"compensate"`` (the saga fails
            and rolls back) or ``"park"`` (the saga waits, PARKED, with nothing of it in
            memory, until an operator retries, skips, compensates or cancels it through
            ``engine.admin`` or the ``sagakit`` command). A terminal error still compensates.
        as_terminal_error: this step's own ``fn(exc) -> TerminalError | None``, asked before
            the registered terminal types and the global mapper (restate-saga's per-step
            ``asTerminalError``); ``None`` from it falls through to those.
    """

    retry: RetryPolicy | None = None
    compensation_retry: RetryPolicy | None = None
    timeout: timedelta | None = None
    on_exhausted: OnExhausted = "compensate"
    as_terminal_error: ErrorMapper | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout <= timedelta(0):
            raise ValueError(f"a step timeout must be positive, got {self.timeout}")
        if self.on_exhausted not in ("compensate", "park"):
            raise ValueError(
                f'on_exhausted must be "compensate" or "park", got {self.on_exhausted!r}'
            )
        if self.as_terminal_error is not None and not callable(self.as_terminal_error):
            raise TypeError(
                "as_terminal_error must be a function (exc) -> TerminalError | None, "
                f"got {self.as_terminal_error!r}"
            )


StepFn = Callable[["SagaContext", Any], Awaitable[Any]]
CompensateFn = Callable[..., Any]
#: a step function that returns ``StepResponse[Out]``: its callers get the ``Out``
ResponseStepFn = Callable[["SagaContext", _In], Awaitable["StepResponse[_Out]"]]
#: a step function that returns its output as a plain value
PlainStepFn = Callable[["SagaContext", _In], Awaitable[_Out]]


class StepDecorator(Protocol):
    """What ``saga_step(...)`` and ``saga_step_strict(...)`` return: it turns
    ``async def fn(ctx, inp: In) -> Out`` (or ``-> StepResponse[Out]``) into a
    ``SagaStep[In, Out]``."""

    @overload
    def __call__(self, fn: ResponseStepFn[_In, _Out], /) -> SagaStep[_In, _Out]: ...

    @overload
    def __call__(self, fn: PlainStepFn[_In, _Out], /) -> SagaStep[_In, _Out]: ...


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        # unresolvable forward references: fall back to annotations that are real objects
        raw = getattr(fn, "__annotations__", {})
        return {k: v for k, v in raw.items() if not isinstance(v, str)}


def _positional_names(fn: Callable[..., Any]) -> list[str]:
    params = inspect.signature(fn).parameters.values()
    return [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def _is_async_callable(fn: Any) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object whose __call__ is async
    )


def _output_annotation(hint: Any) -> Any:
    """``-> Order`` and ``-> StepResponse[Order]`` both mean the output is an Order."""
    if typing.get_origin(hint) is StepResponse:
        args = typing.get_args(hint)
        return args[0] if args else None
    if hint is StepResponse:
        return None
    return hint if serde.is_model_type(hint) else None


class SagaStep(Generic[InT, OutT_co]):
    """A step definition. Call it inside a saga function: ``await step(ctx, inp)``.

    ``InT`` is the type of the step function's input, ``OutT`` what ``await step(ctx, inp)``
    gives back (the ``Out`` of a function that returns ``StepResponse[Out]``).
    """

    def __init__(
        self,
        name: str,
        run: Callable[[SagaContext, InT], Awaitable[Any]],
        compensate: CompensateFn | None,
        options: SagaStepOptions | None,
        *,
        strict: bool,
    ):
        if not isinstance(name, str) or not name.strip():
            raise ValueError("a step needs a non-empty name")
        if not _is_async_callable(run):
            # a plain function would run, then fail at `await`, and be retried: its side effect
            # would happen once per attempt
            raise TypeError(
                f"step {name!r}: the step function must be an `async def fn(ctx, inp)`, got {run!r}"
            )
        if compensate is not None and not callable(compensate):
            raise TypeError(f"step {name!r}: compensate must be callable, got {compensate!r}")
        positional = _positional_names(run)
        if len(positional) < 2:
            raise TypeError(
                f"step {name!r}: the function must take (ctx, inp), "
                f"it takes ({', '.join(positional)})"
            )
        self.name = name
        self.run: StepFn = run
        self.compensate = compensate
        self.options = options or SagaStepOptions()
        self.strict = strict
        hints = _type_hints(run)
        input_hint = hints.get(positional[1])
        # only pydantic models are converted on the way in: other hints are left to the user
        self.input = serde.Converter(
            input_hint if serde.is_model_type(input_hint) else None, f"input of step {name!r}"
        )
        self.output = serde.Converter(
            _output_annotation(hints.get("return")), f"output of step {name!r}"
        )
        self._compensation_takes_failed = False
        #: the compensation has a keyword-only ``services`` parameter: it gets the run's services
        self.compensation_takes_services = False
        self._compensation_input = serde.Converter(None, "")
        if compensate is not None:
            comp_params = _positional_names(compensate)
            sig_params = inspect.signature(compensate).parameters
            self._compensation_takes_failed = "failed" in sig_params or len(comp_params) >= 2
            wanted = sig_params.get("services")
            self.compensation_takes_services = (
                wanted is not None and wanted.kind == inspect.Parameter.KEYWORD_ONLY
            )
            if comp_params:
                data_hint = _type_hints(compensate).get(comp_params[0])
                if serde.is_model_type(data_hint):
                    self._compensation_input = serde.Converter(
                        data_hint, f"compensation data of step {name!r}"
                    )

    @property
    def retry(self) -> RetryPolicy | None:
        return self.options.retry

    @property
    def compensation_retry(self) -> RetryPolicy | None:
        return self.options.compensation_retry or self.options.retry

    @property
    def parks(self) -> bool:
        """The saga parks (instead of compensating) when this step runs out of retries."""
        return self.options.on_exhausted == "park"

    @property
    def timeout(self) -> float | None:
        t = self.options.timeout
        return None if t is None else t.total_seconds()

    def __call__(self, ctx: SagaContext, inp: InT) -> Awaitable[OutT_co]:
        output: Awaitable[OutT_co] = ctx._call_step(self, inp)
        return output

    def terminal_error(self, exc: Exception) -> TerminalError | None:
        """This step's own terminal form of ``exc`` (``SagaStepOptions.as_terminal_error``), or
        None to fall through to the registered terminal types and the global mapper."""
        mapper = self.options.as_terminal_error
        if mapper is None:
            return None
        return map_error(mapper, exc, f"the as_terminal_error of step {self.name!r}")

    async def call_compensation(self, data: Any, failed: bool, services: Any = UNSET) -> None:
        """Run the compensation once (the engine retries and journals it). ``services``: the
        run's services, for a compensation with a keyword-only ``services`` parameter."""
        assert self.compensate is not None
        value = self._compensation_input.validate(data)
        extra: dict[str, Any] = {}
        if self.compensation_takes_services:
            if services is UNSET:
                raise SagaError(
                    f"the compensation of step {self.name!r} takes `services`, but this backend "
                    "gives compensations no services (the Restate backend does not build them)"
                )
            extra["services"] = services
        if self._compensation_takes_failed:
            params = inspect.signature(self.compensate).parameters
            if "failed" in params:
                result = self.compensate(value, failed=failed, **extra)
            else:
                result = self.compensate(value, failed, **extra)
        else:
            result = self.compensate(value, **extra)
        if inspect.isawaitable(result):
            await result

    def __repr__(self) -> str:
        kind = "strict" if self.strict else "hybrid"
        return f"<SagaStep {self.name!r} ({kind})>"


def _decorator(
    name: str,
    compensate: CompensateFn | None,
    retry: RetryPolicy | None,
    compensation_retry: RetryPolicy | None,
    timeout: timedelta | None,
    on_exhausted: OnExhausted,
    strict: bool,
) -> StepDecorator:
    options = SagaStepOptions(
        retry=retry,
        compensation_retry=compensation_retry,
        timeout=timeout,
        on_exhausted=on_exhausted,
    )

    def wrap(fn: StepFn) -> SagaStep[Any, Any]:
        return SagaStep(name, fn, compensate, options, strict=strict)

    return wrap


def saga_step(
    name: str,
    compensate: CompensateFn | None = None,
    *,
    retry: RetryPolicy | None = None,
    compensation_retry: RetryPolicy | None = None,
    timeout: timedelta | None = None,
    on_exhausted: OnExhausted = "compensate",
) -> StepDecorator:
    """Decorate ``async def fn(ctx, inp)`` as a hybrid step (compensated even if it fails
    midway). ``on_exhausted="park"`` parks the saga for an operator when the retries run out
    (see :class:`SagaStepOptions`)."""
    return _decorator(
        name, compensate, retry, compensation_retry, timeout, on_exhausted, strict=False
    )


def saga_step_strict(
    name: str,
    compensate: CompensateFn | None = None,
    *,
    retry: RetryPolicy | None = None,
    compensation_retry: RetryPolicy | None = None,
    timeout: timedelta | None = None,
    on_exhausted: OnExhausted = "compensate",
) -> StepDecorator:
    """Decorate ``async def fn(ctx, inp)`` as a strict step (compensated only once it succeeded)."""
    return _decorator(
        name, compensate, retry, compensation_retry, timeout, on_exhausted, strict=True
    )


@overload
def create_saga_step(
    name: str,
    run: ResponseStepFn[_In, _Out],
    compensate: CompensateFn | None = None,
    options: SagaStepOptions | None = None,
) -> SagaStep[_In, _Out]: ...


@overload
def create_saga_step(
    name: str,
    run: PlainStepFn[_In, _Out],
    compensate: CompensateFn | None = None,
    options: SagaStepOptions | None = None,
) -> SagaStep[_In, _Out]: ...


def create_saga_step(
    name: str,
    run: StepFn,
    compensate: CompensateFn | None = None,
    options: SagaStepOptions | None = None,
) -> SagaStep[Any, Any]:
    """The function form of :func:`saga_step`."""
    return SagaStep(name, run, compensate, options, strict=False)


@overload
def create_saga_step_strict(
    name: str,
    run: ResponseStepFn[_In, _Out],
    compensate: CompensateFn | None = None,
    options: SagaStepOptions | None = None,
) -> SagaStep[_In, _Out]: ...


@overload
def create_saga_step_strict(
    name: str,
    run: PlainStepFn[_In, _Out],
    compensate: CompensateFn | None = None,
    options: SagaStepOptions | None = None,
) -> SagaStep[_In, _Out]: ...


def create_saga_step_strict(
    name: str,
    run: StepFn,
    compensate: CompensateFn | None = None,
    options: SagaStepOptions | None = None,
) -> SagaStep[Any, Any]:
    """The function form of :func:`saga_step_strict`."""
    return SagaStep(name, run, compensate, options, strict=True)
