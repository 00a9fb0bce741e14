"""The worker process behind ``sagakit worker``: load the workflows, run and recover sagas until
SIGTERM or SIGINT, then drain gracefully and exit."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .engine import Engine
from .errors import SagaError
from .urls import redact_url
from .workflows import SagaWorkflow

log = logging.getLogger("sagakit.worker")


@dataclass(frozen=True, slots=True)
class LoadedApp:
    """What ``--app module:attribute`` names: its workflows (every registered version of an
    Engine's) and the version of those that name none (an Engine's ``app_version``)."""

    workflows: list[SagaWorkflow[Any, Any]]
    app_version: str | None = None

    def engine(self, url: str, **options: Any) -> Engine:
        """An engine on ``url`` serving exactly what the app serves (its versions included)."""
        engine = Engine(url, app_version=self.app_version, **options)
        engine.register(*self.workflows)
        return engine


def load_workflows(spec: str) -> list[SagaWorkflow[Any, Any]]:
    """Import ``module:attribute`` and return the workflows it names (see :func:`load_app`)."""
    return load_app(spec).workflows


def load_app(spec: str) -> LoadedApp:
    """Import ``module:attribute`` and return what it names.

    The attribute may be an :class:`Engine` (every version of its registered workflows, and its
    ``app_version``), one workflow, or an iterable of workflows.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise SagaError(
            f"--app must look like module:attribute (for example myapp.sagas:engine), got {spec!r}"
        )
    if "" not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the working folder is importable
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SagaError(f"cannot import {module_name!r} for --app: {exc}") from exc
    try:
        target = getattr(module, attribute)
    except AttributeError as exc:
        raise SagaError(f"module {module_name!r} has no attribute {attribute!r}") from exc
    app_version: str | None = None
    if isinstance(target, Engine):
        found = target.definitions
        app_version = target.app_version
    elif isinstance(target, SagaWorkflow):
        found = [target]
    elif isinstance(target, Iterable) and not isinstance(target, str | bytes):
        found = list(target)
    else:
        found = []
    if not found or not all(isinstance(w, SagaWorkflow) for w in found):
        raise SagaError(
            f"{spec} must be an Engine, a saga workflow, or a list of saga workflows; "
            f"got {type(target).__name__}"
        )
    return LoadedApp(found, app_version)


async def run_worker(
    url: str,
    workflows: list[SagaWorkflow[Any, Any]] | LoadedApp,
    *,
    concurrency: int = 100,
    lease: timedelta = timedelta(seconds=30),
    poll_interval: timedelta = timedelta(seconds=1),
    grace: timedelta = timedelta(seconds=30),
    shutdown_timeout: timedelta = timedelta(seconds=10),
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> None:
    """Run sagas of ``workflows`` from the store at ``url`` until SIGTERM/SIGINT, then drain:
    running sagas finish their current step (for up to ``grace``) and are released, within
    ``shutdown_timeout`` more even when the database does not answer (what is not released
    by then is taken over by another worker when its lease expires).

    With ``metrics_port``, serves the engine's Prometheus metrics at
    ``http://metrics_host:metrics_port/metrics`` (0: any free port, printed)."""
    app = workflows if isinstance(workflows, LoadedApp) else LoadedApp(workflows)
    options: dict[str, Any] = {}
    if metrics_port is not None:
        from .metrics import metrics_available
        from .metrics.core import MetricsNotInstalled

        if not metrics_available():
            raise MetricsNotInstalled("--metrics-port")
        options["metrics"] = True
    engine = app.engine(
        url, lease=lease, poll_interval=poll_interval, max_concurrency=concurrency, **options
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with engine:
        names = ", ".join(sorted(engine.workflows))
        if metrics_port is not None:
            from .metrics import serve_metrics

            try:
                port = serve_metrics(engine, metrics_port, metrics_host)
            except OSError as exc:
                raise SagaError(
                    f"cannot serve metrics on {metrics_host} port {metrics_port} ({exc}): "
                    "choose another --metrics-port or --metrics-host"
                ) from exc
            shown = f"[{metrics_host}]" if ":" in metrics_host else metrics_host
            print(f"sagakit worker metrics on http://{shown}:{port}/metrics", flush=True)
        log.info("worker %s ready on %s (workflows: %s)", engine.worker_id, redact_url(url), names)
        print(f"sagakit worker {engine.worker_id} ready (workflows: {names})", flush=True)
        await stop.wait()
        log.info("worker %s draining", engine.worker_id)
        await engine.drain(grace, timeout=shutdown_timeout)
    print(f"sagakit worker {engine.worker_id} stopped", flush=True)
