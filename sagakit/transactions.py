"""Transactional steps: a step's writes to the saga's own database commit with its journal entry.

An ordinary step is executed at least once: a crash after its side effect and before its entry
is journaled runs it again. A *transactional* step writes only to the database the saga's
store lives in, through ``ctx.connection`` (the store's own connection, inside an open
transaction), and the engine appends the step's journal entry in that same transaction::

    @saga_transaction("ReserveStock", compensate=release_stock)
    async def reserve_stock(ctx: TransactionContext, inp: dict) -> dict:
        ctx.connection.execute(
            "INSERT INTO reservations (order_id, sku) VALUES (?, ?)", (inp["order_id"], inp["sku"])
        )
        return {"order_id": inp["order_id"]}

Either both commit or neither does, so a crash never applies the writes twice nor loses the
record of them: the step is executed **exactly once** as far as that database is concerned.

* A failure (an exception from the body, or its attempt timing out) rolls its writes back; the
  step is retried by its :class:`~sagakit.RetryPolicy`, each attempt in a transaction of its own,
  and a :class:`~sagakit.TerminalError` fails it at once, as for any step.
* Transactional steps are *strict*: their compensation runs only for a step that succeeded
  (a failed attempt left nothing to undo). The compensation is transactional too: it takes
  ``(ctx, data)`` (and may take ``failed``), writes through ``ctx.connection``, and commits
  with the compensation's journal entry.
* The commit is fenced like every journal write: a worker that lost the saga (another worker
  claimed it, an operator changed it) commits nothing.
* On PostgreSQL, ``ctx.session`` is SQLAlchemy's ``AsyncSession`` on the same transaction
  (``sagakit[sqlalchemy]``; see :mod:`sagakit.transactions_sqlalchemy`); SQLite refuses it.
* SQLite (``sqlite3.Connection``) and PostgreSQL (``asyncpg.Connection``); the memory store
  refuses them (:class:`~sagakit.errors.TransactionsUnsupportedError`). Do not commit or roll
  back on ``ctx.connection`` yourself, and keep the body to its database work: on SQLite the
  store's single writer waits while it runs (see ``sagakit/stores/sqlite/transactions.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, overload

from typing_extensions import TypeVar

from . import serde
from .context import SagaContext
from .errors import TransactionsUnsupportedError
from .retry import RetryPolicy
from .steps import (
    InT,
    OnExhausted,
    OutT_co,
    SagaStep,
    SagaStepOptions,
    StepResponse,
    _positional_names,
    _type_hints,
)
from .transactions_sqlalchemy import StepSession

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from .context import RunDriver

_In = TypeVar("_In")
_Out = TypeVar("_Out")

#: a transactional compensation: ``(ctx, data)`` or ``(ctx, data, failed)``, async or not
TransactionCompensateFn = Callable[..., Any]
#: a transactional step function that returns ``StepResponse[Out]``
ResponseTransactionFn = Callable[["TransactionContext", _In], Awaitable["StepResponse[_Out]"]]
#: a transactional step function that returns its output as a plain value
PlainTransactionFn = Callable[["TransactionContext", _In], Awaitable[_Out]]


class TransactionContext(SagaContext):
    """The context a transactional step (or its compensation) receives: a
    :class:`~sagakit.SagaContext` with the open transaction's connection."""

    __slots__ = ("_connection", "_session")

    def __init__(
        self,
        driver: RunDriver,
        connection: Any,
        *,
        step_seq: int | None = None,
        step_name: str | None = None,
        attempt: int = 0,
    ):
        super().__init__(driver, step_seq=step_seq, step_name=step_name, attempt=attempt)
        self._connection = connection
        self._session: StepSession | None = None

    @property
    def connection(self) -> Any:
        """The store's own database connection, inside the transaction that will commit with
        this step's journal entry: a ``sqlite3.Connection`` on SQLite (synchronous calls), an
        ``asyncpg.Connection`` on PostgreSQL. Write through it; never commit or roll back."""
        return self._connection

    @property
    def session(self) -> AsyncSession:
        """SQLAlchemy's ``AsyncSession`` on this transaction's connection (PostgreSQL, with
        ``sagakit[sqlalchemy]``): its writes commit with the step's journal entry, and sagakit
        commits it when the body returns. Its own ``commit()`` only releases a savepoint inside
        the step's transaction (see :mod:`sagakit.transactions_sqlalchemy`). On SQLite it raises
        :class:`~sagakit.errors.TransactionsUnsupportedError`: use :attr:`connection`."""
        if self._session is None:
            self._session = StepSession(self._connection, self.step_name)
        return self._session.session

    async def _finish_session(self, ok: bool) -> None:
        """End the session if the body used one (the engine calls it before the commit)."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.finish(ok)


class TransactionStep(SagaStep[InT, OutT_co]):
    """A step whose writes commit in the same transaction as its journal entry (see
    :func:`saga_transaction`). Strict: compensated only once it succeeded."""

    #: the engine runs this step's body (and its compensation) inside a store transaction
    transactional = True

    def __init__(
        self,
        name: str,
        run: Callable[[TransactionContext, InT], Awaitable[Any]],
        compensate: TransactionCompensateFn | None,
        options: SagaStepOptions | None,
    ):
        # the base reads an ordinary compensation's (data, failed) signature: this one differs
        run_any: Any = run
        super().__init__(name, run_any, None, options, strict=True)

        async def run_in_transaction(ctx: SagaContext, inp: Any) -> Any:
            if not isinstance(ctx, TransactionContext):
                # another backend (Restate) called the step with no transaction to give it
                raise TransactionsUnsupportedError(
                    f"transactional step {name!r} needs a transaction of the saga store's "
                    "database: it runs only on sagakit's engine with a SQLite or PostgreSQL store"
                )
            return await run(ctx, inp)

        # read above for the step's types; the engine calls it with a TransactionContext
        self.run = run_in_transaction
        if compensate is None:
            return
        if not callable(compensate):
            raise TypeError(f"step {name!r}: compensate must be callable, got {compensate!r}")
        positional = _positional_names(compensate)
        if len(positional) < 2:
            raise TypeError(
                f"transactional step {name!r}: its compensation must take (ctx, data) "
                f"(ctx.connection is its transaction), it takes ({', '.join(positional)})"
            )
        self.compensate = compensate
        self._takes_failed = "failed" in inspect.signature(compensate).parameters
        data_hint = _type_hints(compensate).get(positional[1])
        if serde.is_model_type(data_hint):
            self._compensation_input = serde.Converter(
                data_hint, f"compensation data of step {name!r}"
            )

    async def call_compensation(self, data: Any, failed: bool, services: Any = None) -> None:
        raise TransactionsUnsupportedError(
            f"the compensation of transactional step {self.name!r} needs a transaction: "
            "it runs only on the engine with a SQLite or PostgreSQL store"
        )

    async def call_transactional_compensation(
        self, ctx: TransactionContext, data: Any, failed: bool
    ) -> None:
        """Run the compensation once with ``ctx.connection`` (the engine retries, journals and
        commits it)."""
        assert self.compensate is not None
        value = self._compensation_input.validate(data)
        if self._takes_failed:
            result = self.compensate(ctx, value, failed=failed)
        else:
            result = self.compensate(ctx, value)
        if inspect.isawaitable(result):
            await result

    def __repr__(self) -> str:
        return f"<TransactionStep {self.name!r}>"


class TransactionDecorator(Protocol):
    """What ``saga_transaction(...)`` returns: it turns ``async def fn(ctx, inp: In) -> Out``
    (or ``-> StepResponse[Out]``) into a ``TransactionStep[In, Out]``."""

    @overload
    def __call__(self, fn: ResponseTransactionFn[_In, _Out], /) -> TransactionStep[_In, _Out]: ...

    @overload
    def __call__(self, fn: PlainTransactionFn[_In, _Out], /) -> TransactionStep[_In, _Out]: ...


def saga_transaction(
    name: str,
    compensate: TransactionCompensateFn | None = None,
    *,
    retry: RetryPolicy | None = None,
    compensation_retry: RetryPolicy | None = None,
    timeout: timedelta | None = None,
    on_exhausted: OnExhausted = "compensate",
) -> TransactionDecorator:
    """Decorate ``async def fn(ctx: TransactionContext, inp)`` as a transactional step: its
    writes through ``ctx.connection`` commit in the same transaction as its journal entry, so
    they happen exactly once. ``compensate``: a transactional compensation
    ``fn(ctx, data)``, run only if the step succeeded. The other options are those of
    :func:`~sagakit.saga_step` (see :class:`~sagakit.SagaStepOptions`)."""
    options = SagaStepOptions(
        retry=retry,
        compensation_retry=compensation_retry,
        timeout=timeout,
        on_exhausted=on_exhausted,
    )

    def wrap(fn: Callable[[TransactionContext, Any], Awaitable[Any]]) -> TransactionStep[Any, Any]:
        return TransactionStep(name, fn, compensate, options)

    return wrap


@overload
def create_saga_transaction(
    name: str,
    run: ResponseTransactionFn[_In, _Out],
    compensate: TransactionCompensateFn | None = None,
    options: SagaStepOptions | None = None,
) -> TransactionStep[_In, _Out]: ...


@overload
def create_saga_transaction(
    name: str,
    run: PlainTransactionFn[_In, _Out],
    compensate: TransactionCompensateFn | None = None,
    options: SagaStepOptions | None = None,
) -> TransactionStep[_In, _Out]: ...


def create_saga_transaction(
    name: str,
    run: Callable[[TransactionContext, Any], Awaitable[Any]],
    compensate: TransactionCompensateFn | None = None,
    options: SagaStepOptions | None = None,
) -> TransactionStep[Any, Any]:
    """The function form of :func:`saga_transaction`."""
    return TransactionStep(name, run, compensate, options)
