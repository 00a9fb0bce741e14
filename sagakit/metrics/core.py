"""The metrics observer: what the engine tells it, turned into counts and durations with
bounded labels, handed to the exporters (Prometheus, OpenTelemetry); and the store's counts
per status and queue, read when someone collects.

The gauges come from the store, not from this process's runs: a SUSPENDED or PARKED saga is
in no process at all, and a fleet's RUNNING sagas are spread over its workers. Every worker
exports the same store-wide values (aggregate them with ``max``, not ``sum``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from ..engine.observe import Observer, RunInfo
from ..errors import LeaseLost, SagaError
from ..stores.base import SagaStatus, Store

log = logging.getLogger("sagakit.metrics")

#: what a label value becomes once its label has ``max_label_values`` others
OTHER = "other"

_ENDED = frozenset(
    {
        SagaStatus.COMPLETED.value,
        SagaStatus.COMPENSATED.value,
        SagaStatus.FAILED.value,
        SagaStatus.CANCELLED.value,
    }
)


class MetricsNotInstalled(SagaError):
    """Metrics were asked for, but neither ``prometheus_client`` (the ``sagakit[metrics]``
    extra) nor an OpenTelemetry SDK MeterProvider is there to export them."""

    def __init__(self, what: str = "Prometheus metrics"):
        super().__init__(
            f"{what}: the prometheus_client package is missing; pip install "
            "'sagakit[metrics]' (or, for OpenTelemetry metrics alone, set an SDK MeterProvider "
            "before creating the Engine)"
        )


class Exporter(Protocol):
    """Where the metrics go (one per backend): the labels it gets are bounded already."""

    def started(self, workflow: str) -> None: ...

    def run_ended(self, workflow: str, status: str, ended: bool) -> None: ...

    def lease_lost(self, workflow: str) -> None: ...

    def attempt(
        self, kind: str, workflow: str, step: str, outcome: str, seconds: float, retry: bool
    ) -> None: ...

    def timed(self, operation: str, seconds: float) -> None: ...


class CappedLabel:
    """The values one label may take: the first ``limit`` seen are kept, later new ones become
    ``"other"`` (so that generated step names cannot grow a series per saga)."""

    __slots__ = ("_lock", "limit", "name", "overflowed", "seen")

    def __init__(self, name: str, limit: int):
        self.name = name
        self.limit = limit
        self.seen: set[str] = set()
        #: how many values were turned into "other"
        self.overflowed = 0
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        with self._lock:
            if len(self.seen) < self.limit:
                self.seen.add(value)
                return value
            self.overflowed += 1
        return OTHER


@dataclass(slots=True)
class StoreCounts:
    """What the store held when it was last asked."""

    #: sagas by status (every status, 0 for those with none)
    by_status: dict[str, int] = field(default_factory=dict)
    #: QUEUED sagas by queue
    backlog: dict[str, int] = field(default_factory=dict)
    #: when it was read (``time.monotonic()``); 0: never
    read_at: float = 0.0


class _Attempt:
    """Times one attempt of a step or compensation (a context manager, cheaper than a
    generator-based one on the engine's hottest path)."""

    __slots__ = ("_began", "_kind", "_metrics", "_retry", "_step", "_workflow")

    def __init__(self, metrics: SagaMetrics, kind: str, workflow: str, step: str, retry: bool):
        self._metrics = metrics
        self._kind = kind
        self._workflow = workflow
        self._step = step
        self._retry = retry
        self._began = 0.0

    def __enter__(self) -> None:
        self._began = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        seconds = time.perf_counter() - self._began
        outcome = "ok" if exc_type is None else "error"
        try:
            for exporter in self._metrics.exporters:
                exporter.attempt(
                    self._kind, self._workflow, self._step, outcome, seconds, self._retry
                )
        except Exception:  # never into the saga's code (SagaMetrics.attempts_never_raise)
            log.exception("recording an attempt's metrics failed")


class SagaMetrics(Observer):
    """The metrics of one engine (``Engine(metrics=...)``; see :mod:`sagakit.metrics`).

    Args:
        registry: the ``prometheus_client`` CollectorRegistry to register in. ``None``: a
            registry of this engine's own (several engines in one process do not collide),
            served by :func:`sagakit.metrics.metrics_app` and ``sagakit worker
            --metrics-port``; pass ``prometheus_client.REGISTRY`` to add sagakit's metrics to
            what your application serves already.
        meter_provider: the OpenTelemetry MeterProvider to record with. ``None``: the global
            one, if an SDK MeterProvider is set as global when this is created.
        prometheus: ``False`` to export to OpenTelemetry only; ``None``: whenever
            ``prometheus_client`` is installed.
        max_label_values: the most values each label (workflow, step, queue) takes; later
            new values are counted as ``"other"``.
        store_interval: seconds the store's counts (the gauges) are reused before a
            collection reads them again.

    Raises:
        MetricsNotInstalled: there is nothing to export to.
    """

    #: its attempt context never raises: the engine calls it without a shielding wrapper
    attempts_never_raise = True

    def __init__(
        self,
        *,
        registry: Any = None,
        meter_provider: Any = None,
        prometheus: bool | None = None,
        max_label_values: int = 100,
        store_interval: float = 5.0,
    ):
        if max_label_values < 1:
            raise ValueError(f"max_label_values must be at least 1, got {max_label_values}")
        self.workflow_label = CappedLabel("workflow", max_label_values)
        self.step_label = CappedLabel("step", max_label_values)
        self.queue_label = CappedLabel("queue", max_label_values)
        self.store_interval = store_interval
        self.counts = StoreCounts()
        self._store: Store | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading: asyncio.Future[None] | None = None
        self.exporters: tuple[Exporter, ...] = ()
        #: the Prometheus registry these metrics are in (None: OpenTelemetry only)
        self.registry: Any = None
        exporters: list[Exporter] = []
        if prometheus is not False:
            from . import prometheus as prom

            if prom.installed():
                exporter = prom.PrometheusExporter(self, registry)
                self.registry = exporter.registry
                exporters.append(exporter)
            elif prometheus or registry is not None:
                raise MetricsNotInstalled()
        otel = _otel_exporter(self, meter_provider)
        if otel is not None:
            exporters.append(otel)
        if not exporters:
            raise MetricsNotInstalled("sagakit's metrics")
        self.exporters = tuple(exporters)

    # -- the engine's side ------------------------------------------------------------------

    def bind(self, store: Store) -> None:
        """The engine opened ``store`` in the running event loop: the gauges read it."""
        self._store = store
        self._loop = asyncio.get_running_loop()
        self.counts = StoreCounts()

    def unbind(self) -> None:
        """The engine closed its store: the gauges stop being read (and exported)."""
        self._store = None
        self._loop = None
        self.counts = StoreCounts()

    def saga_started(self, workflow: str) -> None:
        label = self.workflow_label(workflow)
        for exporter in self.exporters:
            exporter.started(label)

    def run_ended(self, run: RunInfo, status: str | None, error: BaseException | None) -> None:
        workflow = self.workflow_label(run.workflow)
        if isinstance(error, LeaseLost):
            for exporter in self.exporters:
                exporter.lease_lost(workflow)
        shown = status or "STOPPED"
        ended = shown in _ENDED
        for exporter in self.exporters:
            exporter.run_ended(workflow, shown, ended)

    def attempt(self, run: RunInfo, kind: str, name: str, seq: int, attempt: int) -> _Attempt:  # type: ignore[override]
        return _Attempt(
            self, kind, self.workflow_label(run.workflow), self.step_label(name), attempt > 1
        )

    def timed(self, operation: str, seconds: float) -> None:
        for exporter in self.exporters:
            exporter.timed(operation, seconds)

    # -- the store's counts -----------------------------------------------------------------

    @property
    def bound(self) -> bool:
        """Whether the engine is open (the store's counts can be read)."""
        return self._store is not None

    async def refresh(self, *, force: bool = False) -> None:
        """Read the store's counts (per status, QUEUED per queue) unless they were read less
        than ``store_interval`` seconds ago; in the engine's event loop. Concurrent calls
        share one read. A store that fails keeps the last counts (and logs a warning)."""
        if self._store is None:
            return
        if not force and time.monotonic() - self.counts.read_at < self.store_interval:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read(self._store))
        await asyncio.shield(self._reading)

    async def _read(self, store: Store) -> None:
        try:
            by_status = await store.count_by_status()
            queues = await store.list_queues()
        except Exception as exc:
            log.warning("could not read the store's counts for the metrics (%s)", exc)
            return
        counts = {status.value: 0 for status in SagaStatus}
        counts.update(by_status)
        backlog: dict[str, int] = {}
        for queue in queues:
            label = self.queue_label(queue.name)
            backlog[label] = backlog.get(label, 0) + queue.queued
        if store is self._store:
            self.counts = StoreCounts(counts, backlog, time.monotonic())

    def current_counts(self) -> StoreCounts | None:
        """The store's counts for a collection, read again if they are stale and this is not
        the engine's event loop thread (a scrape served by a thread of its own waits for the
        read; in the loop itself, :meth:`refresh` was awaited before). ``None``: not bound."""
        loop = self._loop
        if loop is None:
            return None
        try:
            in_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            in_loop = False
        stale = time.monotonic() - self.counts.read_at >= self.store_interval
        if stale and not in_loop and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self.refresh(), loop)
            try:
                future.result(timeout=10.0)
            except (concurrent.futures.TimeoutError, Exception) as exc:
                log.warning("could not read the store's counts for the metrics (%r)", exc)
        if self.counts.read_at == 0.0:
            return None
        return self.counts


def _otel_exporter(metrics: SagaMetrics, meter_provider: Any) -> Exporter | None:
    try:
        from . import otel
    except ImportError:  # opentelemetry-api is not installed
        return None
    if meter_provider is None and not otel.global_provider_configured():
        return None
    return otel.OtelExporter(metrics, meter_provider)


def metrics_option(option: bool | SagaMetrics | None) -> SagaMetrics | None:
    """What ``Engine(metrics=...)`` becomes: ``None`` (the default) turns metrics on whenever
    there is somewhere to export them (prometheus_client installed, or an OpenTelemetry SDK
    MeterProvider set as global); ``True`` requires that; ``False`` turns them off."""
    if option is False:
        return None
    if isinstance(option, SagaMetrics):
        return option
    if option is True:
        return SagaMetrics()
    if option is not None:
        raise TypeError(f"metrics must be True, False, None or a SagaMetrics, got {option!r}")
    try:
        return SagaMetrics()
    except MetricsNotInstalled:
        return None


__all__ = ["OTHER", "CappedLabel", "MetricsNotInstalled", "SagaMetrics", "metrics_option"]
