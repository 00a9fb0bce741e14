"""sagakit.contrib.fastapi: the lifespan opens and closes the engine with the app (and serves the
dashboard beside it), the dependency hands endpoints the engine, and the exception handlers turn
sagakit's errors into HTTP statuses. Driven through FastAPI's TestClient, which runs the
lifespan."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.testclient import TestClient
from pydantic import BaseModel

from sagakit import Engine, SagaContext, SagaError, saga_step, saga_workflow
from sagakit.contrib.fastapi import (
    DashboardDep,
    EngineDep,
    get_engine,
    install_exception_handlers,
    sagakit_lifespan,
)
from sagakit.dashboard import Dashboard

from .conftest import TEST_LEASE, TEST_POLL


class Greeting(BaseModel):
    name: str
    times: int = 1


@saga_step("Greet")
async def greet(ctx: SagaContext, inp: Greeting) -> str:
    return " ".join([f"hello {inp.name}"] * inp.times)


@saga_workflow("Hello")
async def hello(saga: SagaContext, inp: Greeting) -> str:
    return await greet(saga, inp)


@saga_workflow("Waiter")
async def waiter(saga: SagaContext, inp: dict[str, Any]) -> Any:
    return await saga.wait_for_signal("go")


def make_engine(url: str) -> Engine:
    engine = Engine(url, lease=TEST_LEASE, poll_interval=TEST_POLL)
    engine.register(hello, waiter)
    return engine


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/sagas.db"


def hello_app(engine: Engine, **options: Any) -> FastAPI:
    app = FastAPI(lifespan=sagakit_lifespan(engine, **options))

    @app.post("/hello/{saga_id}")
    async def run_hello(saga_id: str, body: Greeting, engine: EngineDep) -> dict[str, Any]:
        result = await engine.run(hello, body, saga_id=saga_id)
        return {"result": result, "open": engine.is_open}

    @app.get("/sagas/{saga_id}")
    async def get_saga(
        saga_id: str, engine: Annotated[Engine, Depends(get_engine)]
    ) -> dict[str, Any]:
        snap = await engine.get(saga_id)
        return {"status": str(snap.status), "output": snap.output}

    return app


# -- the lifespan and the dependency ---------------------------------------------------------


def test_the_lifespan_opens_the_engine_for_the_app_and_closes_it_after(db_url: str) -> None:
    engine = make_engine(db_url)
    app = hello_app(engine)
    assert not engine.is_open
    with TestClient(app) as client:
        assert engine.is_open
        response = client.post("/hello/h1", json={"name": "ada", "times": 2})
        assert response.status_code == 200, response.text
        assert response.json() == {"result": "hello ada hello ada", "open": True}
        # both ways of asking for the engine give the one the lifespan opened
        assert client.get("/sagas/h1").json() == {
            "status": "COMPLETED",
            "output": "hello ada hello ada",
        }
    assert not engine.is_open

    # the same engine opens again with the next start of the app, on the same database
    with TestClient(app) as client:
        assert client.get("/sagas/h1").json()["status"] == "COMPLETED"
    assert not engine.is_open


def test_a_saga_in_flight_at_shutdown_is_released_and_goes_on_after_a_restart(
    db_url: str,
) -> None:
    engine = make_engine(db_url)
    app = FastAPI(lifespan=sagakit_lifespan(engine, grace=0.1, shutdown_timeout=10))

    @app.post("/wait/{saga_id}")
    async def start(saga_id: str, engine: EngineDep) -> dict[str, str]:
        handle = await engine.start(waiter, {}, saga_id=saga_id)
        return {"status": str(await handle.status())}

    @app.post("/go/{saga_id}")
    async def go(saga_id: str, engine: EngineDep) -> dict[str, Any]:
        await engine.signal(saga_id, "go", {"went": True})
        return {"result": await engine.handle(saga_id).result(timeout=60)}

    with TestClient(app) as client:
        assert client.post("/wait/w1").json()["status"] in ("RUNNING", "SUSPENDED")
    assert not engine.is_open

    # another engine (another deploy of the app) on the same database finishes it
    with TestClient(hello_app_like(make_engine(db_url), go)) as client:
        response = client.post("/go/w1")
        assert response.status_code == 200, response.text
        assert response.json() == {"result": {"went": True}}


def hello_app_like(engine: Engine, endpoint: Any) -> FastAPI:
    """An app with one endpoint, ``POST /go/{saga_id}``, on ``engine``."""
    app = FastAPI(lifespan=sagakit_lifespan(engine))
    app.post("/go/{saga_id}")(endpoint)
    return app


def test_the_dependency_works_in_websockets_too(db_url: str) -> None:
    app = FastAPI(lifespan=sagakit_lifespan(make_engine(db_url)))

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, engine: EngineDep) -> None:
        await websocket.accept()
        name = await websocket.receive_text()
        await websocket.send_json(await engine.run(hello, {"name": name}))
        await websocket.close()

    with TestClient(app) as client, client.websocket_connect("/ws") as socket:
        socket.send_text("bob")
        assert socket.receive_json() == "hello bob"


def test_without_the_lifespan_the_dependency_says_what_to_do(db_url: str) -> None:
    engine = make_engine(db_url)
    app = hello_app(engine)
    client = TestClient(app)  # not entered: the lifespan does not run
    with pytest.raises(SagaError, match=r"sagakit_lifespan\(engine\).*with TestClient"):
        client.get("/sagas/x")

    plain = FastAPI()

    @plain.get("/")
    async def index(engine: EngineDep) -> None:
        pass

    with TestClient(plain) as entered, pytest.raises(SagaError, match="no sagakit engine"):
        entered.get("/")


def test_the_lifespan_refuses_an_engine_opened_elsewhere(db_url: str) -> None:
    engine = make_engine(db_url)

    async def open_then_start_the_app() -> None:
        async with engine:
            run = sagakit_lifespan(engine)(FastAPI())
            with pytest.raises(SagaError, match="open already"):
                await run.__aenter__()
            assert engine.is_open  # left as it was

    asyncio.run(open_then_start_the_app())
    assert not engine.is_open


def test_the_lifespan_wraps_the_apps_own_lifespan(db_url: str) -> None:
    engine = make_engine(db_url)
    seen: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # it runs inside: the engine is open for its startup and its shutdown
        seen.append(f"startup, engine open: {engine.is_open}")
        yield {"greeting": "hi"}
        seen.append(f"shutdown, engine open: {engine.is_open}")

    app = FastAPI(lifespan=sagakit_lifespan(engine, lifespan=own))

    @app.get("/")
    async def index(request: Request, engine: EngineDep) -> dict[str, Any]:
        return {"greeting": request.state.greeting, "open": engine.is_open}

    with TestClient(app) as client:
        assert client.get("/").json() == {"greeting": "hi", "open": True}
    assert seen == ["startup, engine open: True", "shutdown, engine open: True"]
    assert not engine.is_open


def test_a_state_key_of_the_apps_lifespan_may_not_hide_the_engine(db_url: str) -> None:
    engine = make_engine(db_url)

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"sagakit_engine": "mine"}

    app = FastAPI(lifespan=sagakit_lifespan(engine, lifespan=own))
    with pytest.raises(SagaError, match=r"'sagakit_engine'.*rename that key"), TestClient(app):
        pass
    assert not engine.is_open  # closed again after the failed start


def test_bad_arguments_are_refused_when_the_lifespan_is_made(db_url: str) -> None:
    with pytest.raises(TypeError, match="takes an Engine"):
        sagakit_lifespan("sqlite:///x.db")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="the application's own lifespan"):
        sagakit_lifespan(make_engine(db_url), lifespan="nope")  # type: ignore[arg-type]


# -- the dashboard beside the app ------------------------------------------------------------


def test_the_lifespan_serves_the_dashboard_beside_the_app(db_url: str) -> None:
    engine = make_engine(db_url)
    board = Dashboard(db_url, port=0)
    app = hello_app(engine, dashboard=board)

    @app.get("/ops")
    async def ops(dashboard: DashboardDep) -> dict[str, str]:
        return {"dashboard": dashboard.url}

    with TestClient(app) as client:
        assert client.post("/hello/d1", json={"name": "eve"}).status_code == 200
        url = client.get("/ops").json()["dashboard"]
        assert url == f"http://127.0.0.1:{board.port}/"
        page = httpx.get(f"{url}sagas/d1", timeout=60)
        assert page.status_code == 200
        assert "d1" in page.text and "COMPLETED" in page.text
    # stopped with the app
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=10)


def test_without_a_dashboard_the_dashboard_dependency_says_how_to_get_one(db_url: str) -> None:
    app = hello_app(make_engine(db_url))

    @app.get("/ops")
    async def ops(dashboard: DashboardDep) -> str:
        return dashboard.url

    with (
        TestClient(app) as client,
        pytest.raises(SagaError, match=r"sagakit_lifespan\(engine, dashboard=True\)"),
    ):
        client.get("/ops")


# -- the exception handlers ------------------------------------------------------------------


def test_the_exception_handlers_answer_sagakits_errors_with_http_statuses(db_url: str) -> None:
    engine = make_engine(db_url)
    app = hello_app(engine)
    install_exception_handlers(app)

    @app.post("/start/{workflow}/{saga_id}")
    async def start(workflow: str, saga_id: str, request: Request, engine: EngineDep) -> str:
        handle = await engine.start(workflow, await request.json(), saga_id=saga_id)
        return handle.saga_id

    @app.post("/signal/{saga_id}")
    async def signal(saga_id: str, engine: EngineDep) -> None:
        await engine.signal(saga_id, "go")

    with TestClient(app) as client:
        missing = client.get("/sagas/nope")
        assert missing.status_code == 404
        assert missing.json() == {"detail": "no saga with id 'nope'"}

        invalid = client.post("/start/Hello/v1", json={"name": "x", "times": "many"})
        assert invalid.status_code == 422
        body = invalid.json()
        assert "times" in body["detail"]
        assert [(e["loc"], e["type"]) for e in body["errors"]] == [(["times"], "int_parsing")]
        # refused before anything was written
        assert client.get("/sagas/v1").status_code == 404

        assert client.post("/hello/h1", json={"name": "x"}).status_code == 200
        taken = client.post("/start/Waiter/h1", json={})
        assert taken.status_code == 409
        assert "taken by a saga of workflow 'Hello'" in taken.json()["detail"]

        ended = client.post("/signal/h1")
        assert ended.status_code == 409
        assert "has ended" in ended.json()["detail"]


def test_without_the_exception_handlers_sagakits_errors_stay_server_errors(db_url: str) -> None:
    app = hello_app(make_engine(db_url))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/sagas/nope").status_code == 500


def test_without_fastapi_the_import_says_which_extra_to_install() -> None:
    # as in an installation without the extra: `import fastapi` fails
    probe = (
        "import sys\n"
        "sys.modules['fastapi'] = None\n"
        "try:\n"
        "    import sagakit.contrib.fastapi\n"
        "except ImportError as exc:\n"
        "    print(exc.name, '|', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.startswith("fastapi | "), done.stdout + done.stderr
    assert "pip install 'sagakit[fastapi]'" in done.stdout
