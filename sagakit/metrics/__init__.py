"""Metrics of saga runs for Prometheus (``pip install 'sagakit[metrics]'``) and OpenTelemetry
(an SDK MeterProvider): sagas started and ended by workflow, the store's sagas by status and
queue backlog, step and compensation durations, retries, lost leases, and how long the store
takes to claim and to commit. See docs/observability.md ("Metrics") for the names.

An Engine measures as soon as there is somewhere to export to (``Engine(metrics=None)``, the
default: ``prometheus_client`` installed, or an OpenTelemetry SDK MeterProvider set as global
before the Engine is created); ``Engine(metrics=False)`` turns it off, ``Engine(metrics=True)``
requires it, and ``Engine(metrics=SagaMetrics(...))`` chooses the registry, the meter provider
and the label caps. Each engine has a Prometheus registry of its own (``engine.metrics.registry``):
serve it with :func:`metrics_app` (ASGI) or ``sagakit worker --metrics-port``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core import OTHER, MetricsNotInstalled, SagaMetrics
from .prometheus import ASGIApp, installed, metrics_app

if TYPE_CHECKING:
    from ..engine.engine import Engine


def metrics_available() -> bool:
    """Whether Prometheus metrics can be served (``prometheus_client`` is installed)."""
    return installed()


def serve_metrics(engine: Engine, port: int, host: str = "127.0.0.1") -> int:
    """Serve ``engine``'s metrics at ``http://host:port/metrics`` from a thread of their own
    (the HTTP server of ``prometheus_client``) while the engine's event loop runs; return the
    port (chosen by the system with ``port=0``). The server lives as long as the process.

    Raises:
        MetricsNotInstalled: ``prometheus_client`` is missing (``sagakit[metrics]``).
    """
    from .prometheus import serve_metrics as serve

    _server, bound = serve(engine, port, host)
    return bound


__all__ = [
    "OTHER",
    "ASGIApp",
    "MetricsNotInstalled",
    "SagaMetrics",
    "metrics_app",
    "metrics_available",
    "serve_metrics",
]
