"""OpenTelemetry metrics (``pip install 'sagakit[otel]'`` and an SDK MeterProvider): the same
measurements as the Prometheus exporter, named the OpenTelemetry way (``sagakit.step.duration``
in seconds), with the tracing spans' attribute names (``sagakit.workflow``, ``sagakit.step``).

This module imports ``opentelemetry``; :mod:`sagakit.metrics.core` imports it only when the
package is installed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, NoOpMeterProvider, Observation

from .. import __version__
from ..observability.tracing import STATUS, STEP, WORKFLOW

if TYPE_CHECKING:
    from .core import SagaMetrics

KIND = "sagakit.kind"
OUTCOME = "sagakit.outcome"
QUEUE = "sagakit.queue"


def global_provider_configured() -> bool:
    """Whether a real MeterProvider (an SDK's) is set as OpenTelemetry's global one."""
    provider = otel_metrics.get_meter_provider()
    if isinstance(provider, NoOpMeterProvider):
        return False
    return type(provider).__name__ != "_ProxyMeterProvider"


class OtelExporter:
    """Counters, histograms and observable gauges on a Meter ``sagakit``."""

    def __init__(self, metrics: SagaMetrics, meter_provider: MeterProvider | None = None):
        provider = meter_provider or otel_metrics.get_meter_provider()
        meter = provider.get_meter("sagakit", __version__)
        self._metrics = metrics
        self._started = meter.create_counter(
            "sagakit.sagas.started", unit="{saga}", description="Sagas this process created."
        )
        self._ended = meter.create_counter(
            "sagakit.sagas.ended",
            unit="{saga}",
            description="Sagas whose run here ended them, by status.",
        )
        self._runs = meter.create_counter(
            "sagakit.runs", unit="{run}", description="Runs here, by the status they left."
        )
        self._lease_lost = meter.create_counter(
            "sagakit.lease_lost", unit="{run}", description="Runs stopped by a lost lease."
        )
        self._retries = meter.create_counter(
            "sagakit.retries", unit="{attempt}", description="Attempts after the first."
        )
        self._durations = {
            kind: meter.create_histogram(
                f"sagakit.{kind}.duration", unit="s", description=f"Each attempt of a {kind}."
            )
            for kind in ("step", "compensation")
        }
        self._store_times = {
            operation: meter.create_histogram(
                f"sagakit.store.{operation}.duration", unit="s", description=what
            )
            for operation, what in (
                ("claim", "Each claim of runnable sagas."),
                ("commit", "From a run queuing a write to its commit."),
            )
        }
        meter.create_observable_gauge(
            "sagakit.sagas",
            callbacks=[self._observe_sagas],
            unit="{saga}",
            description="Sagas in the store by status (store-wide).",
        )
        meter.create_observable_gauge(
            "sagakit.queue.backlog",
            callbacks=[self._observe_backlog],
            unit="{saga}",
            description="QUEUED sagas by queue (store-wide).",
        )

    def started(self, workflow: str) -> None:
        self._started.add(1, {WORKFLOW: workflow})

    def run_ended(self, workflow: str, status: str, ended: bool) -> None:
        attributes = {WORKFLOW: workflow, STATUS: status}
        self._runs.add(1, attributes)
        if ended:
            self._ended.add(1, attributes)

    def lease_lost(self, workflow: str) -> None:
        self._lease_lost.add(1, {WORKFLOW: workflow})

    def attempt(
        self, kind: str, workflow: str, step: str, outcome: str, seconds: float, retry: bool
    ) -> None:
        self._durations[kind].record(seconds, {WORKFLOW: workflow, STEP: step, OUTCOME: outcome})
        if retry:
            self._retries.add(1, {WORKFLOW: workflow, STEP: step, KIND: kind})

    def timed(self, operation: str, seconds: float) -> None:
        histogram = self._store_times.get(operation)
        if histogram is not None:
            histogram.record(seconds)

    def _observe_sagas(self, options: CallbackOptions) -> Iterable[Observation]:
        counts = self._metrics.current_counts()
        if counts is None:
            return []
        return [Observation(n, {STATUS: status}) for status, n in counts.by_status.items()]

    def _observe_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        counts = self._metrics.current_counts()
        if counts is None:
            return []
        return [Observation(n, {QUEUE: queue}) for queue, n in counts.backlog.items()]


__all__ = ["OtelExporter", "global_provider_configured"]
