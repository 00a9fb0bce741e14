"""Prometheus metrics (``pip install 'sagakit[metrics]'``): the exporter of
:class:`~sagakit.metrics.SagaMetrics`, the ``/metrics`` ASGI app and the HTTP server of
``sagakit worker --metrics-port``.

This module imports ``prometheus_client`` only inside functions, so that it loads without it.
"""

from __future__ import annotations

import bisect
import importlib.util
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine.engine import Engine
    from .core import SagaMetrics

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]

#: a step or compensation: from a millisecond to several minutes
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: a claim or a commit: a database round trip, up to the store's retries
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def installed() -> bool:
    """Whether ``prometheus_client`` can be imported."""
    try:
        return importlib.util.find_spec("prometheus_client") is not None
    except ValueError:  # sys.modules holds None for it (imports of it are blocked)
        return False


def _require() -> None:
    from .core import MetricsNotInstalled

    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise MetricsNotInstalled() from exc


class _Histogram:
    """One histogram series: counts per bucket (not cumulative; the last is +Inf) and sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int):
        self.counts = [0] * size
        self.sum = 0.0


class PrometheusExporter:
    """Counts and histograms kept in plain dicts and turned into Prometheus families when
    collected. All updates happen in the engine's event loop; a collection copies each dict
    (atomic under the GIL). This costs a fraction of ``prometheus_client``'s locked
    ``labels().observe()`` on the engine's hottest path (see benchmarks/metrics.py)."""

    def __init__(self, metrics: SagaMetrics, registry: Any = None):
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry() if registry is None else registry
        #: counter name -> label values -> count
        self.counters: dict[str, dict[tuple[str, ...], float]] = {
            name: {} for name, _, _ in _COUNTERS
        }
        #: histogram name -> label values -> series
        self.histograms: dict[str, dict[tuple[str, ...], _Histogram]] = {
            name: {} for name, _, _, _ in _HISTOGRAMS
        }
        self._started = self.counters["sagakit_sagas_started"]
        self._ended = self.counters["sagakit_sagas_ended"]
        self._runs = self.counters["sagakit_runs"]
        self._lease_lost = self.counters["sagakit_lease_lost"]
        self._retries = self.counters["sagakit_retries"]
        self._durations = {
            "step": self.histograms["sagakit_step_duration_seconds"],
            "compensation": self.histograms["sagakit_compensation_duration_seconds"],
        }
        self._store_times = {
            "claim": self.histograms["sagakit_store_claim_duration_seconds"],
            "commit": self.histograms["sagakit_store_commit_duration_seconds"],
        }
        self.registry.register(_Collector(self, metrics))

    def started(self, workflow: str) -> None:
        key = (workflow,)
        self._started[key] = self._started.get(key, 0) + 1

    def run_ended(self, workflow: str, status: str, ended: bool) -> None:
        key = (workflow, status)
        self._runs[key] = self._runs.get(key, 0) + 1
        if ended:
            self._ended[key] = self._ended.get(key, 0) + 1

    def lease_lost(self, workflow: str) -> None:
        key = (workflow,)
        self._lease_lost[key] = self._lease_lost.get(key, 0) + 1

    def attempt(
        self, kind: str, workflow: str, step: str, outcome: str, seconds: float, retry: bool
    ) -> None:
        _observe(self._durations[kind], (workflow, step, outcome), STEP_BUCKETS, seconds)
        if retry:
            key = (workflow, step, kind)
            self._retries[key] = self._retries.get(key, 0) + 1

    def timed(self, operation: str, seconds: float) -> None:
        series = self._store_times.get(operation)
        if series is not None:
            _observe(series, (), STORE_BUCKETS, seconds)


def _observe(
    series: dict[tuple[str, ...], _Histogram],
    key: tuple[str, ...],
    bounds: tuple[float, ...],
    value: float,
) -> None:
    histogram = series.get(key)
    if histogram is None:
        histogram = series[key] = _Histogram(len(bounds) + 1)
    histogram.counts[bisect.bisect_left(bounds, value)] += 1
    histogram.sum += value


#: name, help, labels
_COUNTERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "sagakit_sagas_started",
        "Sagas this process created (started, enqueued, child sagas), by workflow.",
        ("workflow",),
    ),
    (
        "sagakit_sagas_ended",
        "Sagas whose run here ended them: COMPLETED, COMPENSATED, FAILED or CANCELLED.",
        ("workflow", "status"),
    ),
    (
        "sagakit_runs",
        "Runs of sagas here, by the status they left the saga in (SUSPENDED, PARKED, an end, "
        "or STOPPED: lease lost, store failure, shutdown).",
        ("workflow", "status"),
    ),
    (
        "sagakit_lease_lost",
        "Runs stopped because their saga was no longer this worker's.",
        ("workflow",),
    ),
    (
        "sagakit_retries",
        "Attempts of steps and compensations after their first.",
        ("workflow", "step", "kind"),
    ),
)

#: name, help, labels, buckets
_HISTOGRAMS: tuple[tuple[str, str, tuple[str, ...], tuple[float, ...]], ...] = (
    (
        "sagakit_step_duration_seconds",
        "Seconds each attempt of a step took, by outcome (ok, error).",
        ("workflow", "step", "outcome"),
        STEP_BUCKETS,
    ),
    (
        "sagakit_compensation_duration_seconds",
        "Seconds each attempt of a compensation took, by outcome (ok, error).",
        ("workflow", "step", "outcome"),
        STEP_BUCKETS,
    ),
    (
        "sagakit_store_claim_duration_seconds",
        "Seconds each claim of runnable sagas took.",
        (),
        STORE_BUCKETS,
    ),
    (
        "sagakit_store_commit_duration_seconds",
        "Seconds from a run queuing a write to its commit.",
        (),
        STORE_BUCKETS,
    ),
)


class _Collector:
    """The exporter's counts and histograms, the gauges read from the store at collection
    time (see SagaMetrics.current_counts), and the labels capped so far."""

    def __init__(self, exporter: PrometheusExporter, metrics: SagaMetrics):
        self._exporter = exporter
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []  # read at each collection; nothing to check for duplicates up front

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            HistogramMetricFamily,
        )

        for name, text, labels in _COUNTERS:
            counter = CounterMetricFamily(name, text, labels=list(labels))
            for key, count in sorted(self._exporter.counters[name].copy().items()):
                counter.add_metric(list(key), count)
            yield counter
        for name, text, labels, bounds in _HISTOGRAMS:
            family = HistogramMetricFamily(name, text, labels=list(labels))
            for key, series in sorted(self._exporter.histograms[name].copy().items()):
                counts, total = list(series.counts), series.sum
                buckets: list[tuple[str, float]] = []
                running = 0
                for bound, count in zip((*map(_bound, bounds), "+Inf"), counts, strict=True):
                    running += count
                    buckets.append((bound, running))
                family.add_metric(list(key), buckets, total)
            yield family
        yield from _store_families(self._metrics)


def _bound(value: float) -> str:
    return repr(float(value))


def _store_families(metrics: SagaMetrics) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    overflow = CounterMetricFamily(
        "sagakit_metrics_label_overflow",
        "Label values counted as 'other' because their label had max_label_values others.",
        labels=["label"],
    )
    for capped in (metrics.workflow_label, metrics.step_label, metrics.queue_label):
        overflow.add_metric([capped.name], capped.overflowed)
    yield overflow
    counts = metrics.current_counts()
    if counts is None:
        return
    sagas = GaugeMetricFamily(
        "sagakit_sagas",
        "Sagas in the store by status (store-wide: every worker exports the same value).",
        labels=["status"],
    )
    for status, count in sorted(counts.by_status.items()):
        sagas.add_metric([status], count)
    yield sagas
    backlog = GaugeMetricFamily(
        "sagakit_queue_backlog",
        "QUEUED sagas waiting to start, by queue (store-wide).",
        labels=["queue"],
    )
    for queue, count in sorted(counts.backlog.items()):
        backlog.add_metric([queue], count)
    yield backlog


class _Union:
    """Several registries collected as one (the engine's and the process's default)."""

    def __init__(self, registries: list[Any]):
        self._registries = registries

    def collect(self) -> Iterator[Any]:
        for registry in self._registries:
            yield from registry.collect()


def _served_registry(engine: Engine | None) -> tuple[Any, SagaMetrics | None]:
    """The registry to serve for ``engine``: its metrics and the process's default registry
    (process and garbage-collector metrics, and whatever the application registered)."""
    _require()
    from prometheus_client import REGISTRY, CollectorRegistry

    from ..errors import SagaError

    registries: list[Any] = []
    metrics = None
    if engine is not None:
        metrics = engine.metrics
        if metrics is None or metrics.registry is None:
            raise SagaError(
                "this engine has no Prometheus metrics (it was created with metrics=False, "
                "or SagaMetrics(prometheus=False)): create it with Engine(metrics=True)"
            )
        registries.append(metrics.registry)
    if not registries or registries[0] is not REGISTRY:
        registries.append(REGISTRY)
    served = CollectorRegistry(auto_describe=False)
    served.register(_Union(registries))
    return served, metrics


def metrics_app(engine: Engine | None = None) -> ASGIApp:
    """An ASGI app answering every GET with Prometheus's text format: ``engine``'s metrics
    (its own registry) and the process's default registry. Mount it where Prometheus scrapes
    (``Mount("/metrics", app=metrics_app(engine))`` in Starlette or FastAPI). Await it in the
    engine's event loop: it reads the store's counts before answering (at most once per
    ``store_interval``). ``engine=None``: the process's default registry alone.

    Raises:
        MetricsNotInstalled: ``prometheus_client`` is missing (``sagakit[metrics]``).
        SagaError: the engine's metrics are off.
    """
    served, metrics = _served_registry(engine)
    from prometheus_client import make_asgi_app

    inner: ASGIApp = make_asgi_app(served)

    async def app(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope.get("type") != "http":  # lifespan and websockets: nothing to do here
            return
        if metrics is not None:
            await metrics.refresh()
        await inner(scope, receive, send)

    return app


def serve_metrics(engine: Engine, port: int, host: str = "127.0.0.1") -> tuple[Any, int]:
    """Serve ``engine``'s metrics (and the process's default registry) over HTTP at
    ``http://host:port/metrics`` from a thread of their own, while the engine's event loop
    runs; return the server (``shutdown()`` stops it) and the port (useful with ``port=0``)."""
    from prometheus_client import start_http_server

    served, _ = _served_registry(engine)
    server, _thread = start_http_server(port, addr=host, registry=served)
    return server, int(server.server_address[1])


__all__ = ["PrometheusExporter", "installed", "metrics_app", "serve_metrics"]
