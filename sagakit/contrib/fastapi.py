"""sagakit in a FastAPI (or Starlette) application: the engine opens and closes with the app.

``pip install 'sagakit[fastapi]'``, then::

    engine = Engine("postgresql://...", worker=False)  # sagas run in `sagakit worker`
    engine.register(checkout)
    app = FastAPI(lifespan=sagakit_lifespan(engine))
    install_exception_handlers(app)  # optional: SagaNotFoundError -> 404, ...

    @app.post("/orders")
    async def create_order(order: Order, engine: EngineDep) -> dict[str, str]:
        handle = await engine.start(checkout, order, run_here=False)
        return {"id": handle.saga_id}

* :func:`sagakit_lifespan` opens the engine (its store, and its background worker unless it
  was made with ``worker=False``) when the application starts, and drains and closes it when
  the application stops; it wraps the application's own lifespan when given one, opens and
  closes a mounted dashboard's engine (``app.mount("/sagas", board)``, ``dashboard=board``),
  or serves the dashboard on a port of its own beside the app.
* :func:`get_engine` is the dependency that hands endpoints the open engine
  (:data:`EngineDep` is ``Annotated[Engine, Depends(get_engine)]``).
* :func:`install_exception_handlers` answers sagakit's errors with HTTP statuses.

See docs/fastapi.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

try:
    from fastapi import Depends, FastAPI
    from fastapi.responses import JSONResponse
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection, Request
except ImportError as exc:  # an optional part: say which extra brings it
    raise ImportError(
        f"sagakit.contrib.fastapi needs FastAPI ({exc}); install it with "
        "pip install 'sagakit[fastapi]'",
        name=exc.name,
    ) from exc

from ..dashboard import Dashboard
from ..engine import Engine
from ..errors import (
    SagaConflictError,
    SagaError,
    SagaFinishedError,
    SagaNotFoundError,
    SagaStateError,
    SagaValidationError,
)

if TYPE_CHECKING:
    from ..dashboard.asgi import DashboardApp

__all__ = [
    "DASHBOARD_STATE_KEY",
    "ENGINE_STATE_KEY",
    "DashboardDep",
    "EngineDep",
    "get_dashboard",
    "get_engine",
    "install_exception_handlers",
    "sagakit_lifespan",
]

#: the key of the engine in the lifespan state (``request.state.sagakit_engine``)
ENGINE_STATE_KEY = "sagakit_engine"
#: the key of the running dashboard in the lifespan state, when the lifespan serves one
DASHBOARD_STATE_KEY = "sagakit_dashboard"

#: what FastAPI and Starlette take as ``lifespan=``: the app in, a context manager out whose
#: value (a mapping, or None) becomes the state every request sees
AppLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]


def sagakit_lifespan(
    engine: Engine,
    *,
    lifespan: AppLifespan | None = None,
    dashboard: Dashboard | DashboardApp | bool = False,
    grace: float | timedelta = 10.0,
    shutdown_timeout: float | timedelta = 10.0,
) -> Callable[[Starlette], AbstractAsyncContextManager[dict[str, Any]]]:
    """The lifespan of an application that uses ``engine``:
    ``FastAPI(lifespan=sagakit_lifespan(engine))``.

    When the application starts, the engine opens (as ``async with engine:`` would: its store,
    and its background worker, which runs and recovers sagas unless the engine was made with
    ``worker=False``); when it stops, the engine drains (each saga running here finishes its
    current step, for up to ``grace``, and is released for another worker) and closes (within
    ``shutdown_timeout`` more, even when the database does not answer). Endpoints get the engine
    with :func:`get_engine`.

    Args:
        engine: the engine, with its workflows registered; not open yet (the lifespan opens it).
        lifespan: the application's own lifespan, wrapped: it runs inside, so its startup code
            finds the engine open and its shutdown code runs before the engine closes. The
            mapping it yields (if any) is merged into the request state.
        dashboard: the sagakit dashboard. A mounted one (``board = sagakit.dashboard.app(
            url)``, ``app.mount("/sagas", board)``): its engine opens and closes with the
            application (a mounted app's own lifespan does not run; one made on ``engine``
            needs nothing). Or one beside the application, on a port of its own: ``True``
            serves it read-only on 127.0.0.1 port 8700; a :class:`~sagakit.dashboard.Dashboard`
            (``Dashboard(engine.url, port=..., token=...)``) is started and stopped as it is,
            and :func:`get_dashboard` gives it to endpoints.
        grace: on shutdown, how long running sagas may take to finish their current step.
        shutdown_timeout: after ``grace``, the most time to spend releasing sagas and closing
            the database; what is not released by then expires with its lease.

    Raises:
        SagaError: at startup, when the engine is open already (the lifespan owns opening it),
            or the dashboard cannot listen on its port.
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"sagakit_lifespan takes an Engine, got {engine!r}")
    if lifespan is not None and not callable(lifespan):
        raise TypeError(
            "lifespan= takes the application's own lifespan (a function of the app returning an "
            f"async context manager), got {lifespan!r}"
        )

    @contextlib.asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if engine.is_open:
            raise SagaError(
                "the engine given to sagakit_lifespan is open already; the lifespan opens and "
                "closes it with the application: do not open it yourself (no `async with "
                "engine:` around the app)"
            )
        board = _dashboard_for(engine, dashboard)
        mounted = None if isinstance(dashboard, Dashboard | bool) else dashboard
        await engine.__aenter__()
        try:
            state: dict[str, Any] = {ENGINE_STATE_KEY: engine}
            if mounted is not None:
                await mounted.open()
            if board is not None:
                # it opens its own engine on a thread of its own: keep this loop free meanwhile
                await asyncio.to_thread(board.start)
                state[DASHBOARD_STATE_KEY] = board
            try:
                if lifespan is None:
                    yield state
                else:
                    async with lifespan(app) as own:
                        yield _merged(own, state)
            finally:
                if board is not None:
                    await asyncio.to_thread(board.stop)
                if mounted is not None:
                    await mounted.close()
        finally:
            await engine.drain(grace, timeout=shutdown_timeout)

    return run


def _dashboard_for(engine: Engine, dashboard: Dashboard | DashboardApp | bool) -> Dashboard | None:
    """The dashboard to serve on a port of its own, if any (a mounted one is checked here
    and opened by the lifespan)."""
    if isinstance(dashboard, Dashboard):
        return dashboard
    if dashboard is True:
        return Dashboard(engine.url)
    if dashboard is False:
        return None
    if type(dashboard).__name__ == "DashboardApp":
        from ..dashboard.asgi import DashboardApp  # made by the user: its extra is installed

        if isinstance(dashboard, DashboardApp):
            return None
    raise TypeError(
        "dashboard= takes True, False, a sagakit.dashboard.Dashboard or the app of "
        f"sagakit.dashboard.app(...), got {dashboard!r}"
    )


def _merged(own: Mapping[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
    """The request state: the application's lifespan's, and sagakit's keys."""
    if own is None:
        return ours
    if not isinstance(own, Mapping):
        raise TypeError(
            f"the application's lifespan yielded {own!r}; a lifespan yields a mapping (its "
            "state) or nothing"
        )
    taken = sorted(set(own) & set(ours))
    if taken:
        raise SagaError(
            f"the application's lifespan yields state under {', '.join(map(repr, taken))}, "
            "which sagakit_lifespan uses for the engine; rename that key"
        )
    return {**own, **ours}


def get_engine(connection: HTTPConnection) -> Engine:
    """The dependency that gives an endpoint (HTTP or WebSocket) the open engine:
    ``engine: Engine = Depends(get_engine)``, or ``engine: EngineDep``.

    Raises:
        SagaError: the application was not started with :func:`sagakit_lifespan` (or, in a
            test, the ``TestClient`` was not entered: ``with TestClient(app) as client:``).
    """
    engine = _from_state(connection, ENGINE_STATE_KEY)
    if not isinstance(engine, Engine):
        raise SagaError(
            "no sagakit engine in this application's state: make the app with "
            "FastAPI(lifespan=sagakit_lifespan(engine)); in a test, enter the client "
            "(`with TestClient(app) as client:`) so that the lifespan runs"
        )
    return engine


def get_dashboard(connection: HTTPConnection) -> Dashboard:
    """The dependency that gives an endpoint the dashboard the lifespan serves (for its
    ``url``, to link to it).

    Raises:
        SagaError: the lifespan serves no dashboard (``sagakit_lifespan(engine,
            dashboard=True)`` serves one).
    """
    board = _from_state(connection, DASHBOARD_STATE_KEY)
    if not isinstance(board, Dashboard):
        raise SagaError(
            "this application serves no sagakit dashboard: make it with "
            "FastAPI(lifespan=sagakit_lifespan(engine, dashboard=True))"
        )
    return board


def _from_state(connection: HTTPConnection, key: str) -> Any:
    # Starlette copies the lifespan's state into each request's scope
    state = connection.scope.get("state")
    return state.get(key) if isinstance(state, Mapping) else None


#: ``engine: EngineDep`` in an endpoint's parameters gives it the open engine
EngineDep = Annotated[Engine, Depends(get_engine)]
#: ``dashboard: DashboardDep`` gives it the dashboard the lifespan serves
DashboardDep = Annotated[Dashboard, Depends(get_dashboard)]

#: sagakit's errors that are the client's doing, and the HTTP status that says so
_STATUSES: tuple[tuple[type[SagaError], int], ...] = (
    (SagaNotFoundError, 404),
    (SagaValidationError, 422),
    (SagaConflictError, 409),
    (SagaStateError, 409),
    (SagaFinishedError, 409),
)


def install_exception_handlers(app: FastAPI) -> None:
    """Answer sagakit's errors that come from the request as HTTP errors, with the error's
    message as ``detail`` (FastAPI's shape), instead of a 500:

    * :class:`~sagakit.SagaNotFoundError` (no saga with that id) -> 404;
    * :class:`~sagakit.SagaValidationError` (an input the workflow refuses; nothing was
      written) -> 422, with pydantic's list of problems as ``errors``;
    * :class:`~sagakit.SagaConflictError` (the saga id is taken by another workflow, a
      deduplicated enqueue), :class:`~sagakit.SagaStateError` (an admin action its status
      does not allow) and :class:`~sagakit.SagaFinishedError` (a signal to a saga that has
      ended) -> 409.

    Any other error (a store that cannot be reached, a bug) stays a 500.
    """
    for error, status in _STATUSES:
        app.add_exception_handler(error, _handler(status))


def _handler(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(exc)}
        if isinstance(exc, SagaValidationError):
            body["errors"] = [_problem(e) for e in exc.errors]
        return JSONResponse(body, status_code=status)

    return handle


def _problem(error: Mapping[str, Any]) -> dict[str, Any]:
    """One of pydantic's problems, without what may not be JSON (its ``ctx`` holds the
    exception a validator raised, ``input`` the whole value)."""
    return {
        "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
        "msg": str(error.get("msg", "")),
        "type": str(error.get("type", "")),
    }
