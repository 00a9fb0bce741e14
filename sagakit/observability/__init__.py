"""Logging and OpenTelemetry tracing of saga runs (observers of the engine).

* :class:`~sagakit.observability.logs.LoggingObserver`: one record per state change under the
  ``sagakit.saga`` logger.
* :class:`~sagakit.observability.tracing.TracingObserver` (``sagakit[otel]``): a span per run,
  a child span per attempt of a step or compensation, one trace across recoveries.

See docs/observability.md.
"""

from __future__ import annotations

from typing import Any

from ..engine.observe import Observer
from .logs import SAGA_LOGGER, LoggingObserver


def default_observers(tracer_provider: Any = None) -> list[Observer]:
    """The observers an Engine gets unless it is given its own: the logging observer, and the
    tracing observer when ``opentelemetry-api`` is installed and there is something to trace
    with: ``tracer_provider``, or else a real (SDK) TracerProvider set as the global one by
    now. Tracing is left out otherwise, so that it costs nothing until it is configured:
    configure OpenTelemetry before creating the Engine, or pass the provider.
    """
    observers: list[Observer] = [LoggingObserver()]
    try:
        from .tracing import TracingObserver, global_provider_configured
    except ImportError:  # sagakit[otel] is not installed: logs only
        return observers
    if tracer_provider is not None or global_provider_configured():
        observers.append(TracingObserver(tracer_provider))
    return observers


__all__ = ["SAGA_LOGGER", "LoggingObserver", "default_observers"]
