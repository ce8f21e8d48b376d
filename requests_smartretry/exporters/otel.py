"""OpenTelemetry exporter: metrics through ``opentelemetry-api`` (counters, a histogram, and
observable gauges of the breaker's state, the budget's tokens and the throttle's rate), and the
``http.request.resend_count`` attribute on the current span for retried attempts.

Needs the ``otel`` extra (``pip install requests-smartretry[otel]``) and, to export
anything, an SDK (``opentelemetry-sdk``) configured by the application.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

try:
    from opentelemetry import metrics, trace
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "requests_smartretry.exporters.otel needs opentelemetry-api: "
        "pip install 'requests-smartretry[otel]'"
    ) from exc

from ..events import AttemptEvent, EventKind
from ._gauges import BREAKER_STATES, GAUGES, Gauge, Watched, WatchesState

__all__ = ["RESEND_COUNT", "OpenTelemetryHook"]

#: The semantic-conventions attribute for "this is the n-th resend of the request".
RESEND_COUNT = "http.request.resend_count"

_SCOPE = "requests_smartretry"


class OpenTelemetryHook(WatchesState):
    """A hook that records OpenTelemetry metrics and marks retried attempts on the span.

    Example::

        from requests_smartretry.exporters.otel import OpenTelemetryHook

        session = smart_session(hooks=[OpenTelemetryHook()])   # the global MeterProvider

    Instruments (meter ``requests_smartretry``): counters ``requests_smartretry.calls``
    {operation}, ``.attempts`` {operation, verdict}, ``.retries`` {operation, verdict},
    ``.give_ups`` {operation, reason}, ``.rejections`` {operation}, and the histogram
    ``requests_smartretry.attempt.duration`` (seconds) {operation, verdict}; observable
    gauges, per service the hook's calls went to: ``requests_smartretry.breaker.state``
    {service, state} (1 for the current state, 0 for the others) and
    ``requests_smartretry.budget.tokens`` {service}, from the breaker and budget of every
    session the hook is installed on (or given to :meth:`watch_state`).  When attempt
    n > 1 starts inside a recording span (an instrumented ``requests`` call, or the
    caller's own), the span gets ``http.request.resend_count = n - 1``.
    """

    def __init__(
        self,
        meter_provider: Optional[metrics.MeterProvider] = None,
        *,
        span_attributes: bool = True,
    ) -> None:
        if not isinstance(span_attributes, bool):
            raise TypeError(f"span_attributes must be a bool, got {span_attributes!r}")
        self.meter_provider = meter_provider
        self.span_attributes = span_attributes
        meter = metrics.get_meter(_SCOPE, _version(), meter_provider=meter_provider)
        self._calls = meter.create_counter(
            f"{_SCOPE}.calls", unit="{call}", description="Calls (one per request).")
        self._attempts = meter.create_counter(
            f"{_SCOPE}.attempts", unit="{attempt}",
            description="Finished attempts, by verdict (success included).")
        self._retries = meter.create_counter(
            f"{_SCOPE}.retries", unit="{retry}",
            description="Retries, by the verdict of the attempt that failed.")
        self._give_ups = meter.create_counter(
            f"{_SCOPE}.give_ups", unit="{call}",
            description="Calls that ended in failure, by reason.")
        self._rejections = meter.create_counter(
            f"{_SCOPE}.rejections", unit="{attempt}",
            description="Attempts the circuit breaker refused.")
        self._duration = meter.create_histogram(
            f"{_SCOPE}.attempt.duration", unit="s", description="Seconds per attempt.")
        self._watched = Watched()
        for gauge in GAUGES:
            meter.create_observable_gauge(
                f"{_SCOPE}.{gauge.name.replace('_', '.', 1)}", callbacks=[self._observer(gauge)],
                unit=gauge.unit, description=gauge.description)

    def __repr__(self) -> str:
        return f"OpenTelemetryHook(span_attributes={self.span_attributes!r})"

    def _observer(self, gauge: Gauge) -> Any:
        def observe(options: Any) -> Iterable[metrics.Observation]:
            for service, value in self._watched.readings(gauge):
                if gauge.name == "breaker_state":
                    for state in BREAKER_STATES:
                        yield metrics.Observation(1 if state == value else 0,
                                                  {"service": service, "state": state})
                else:
                    yield metrics.Observation(value, {"service": service})
        return observe

    def _gauge_sources(self) -> Watched:
        return self._watched

    def __call__(self, event: AttemptEvent) -> None:
        """Record one event."""
        kind = event.kind
        operation = {"operation": event.operation}
        if kind is EventKind.START:
            if event.attempt == 1:
                self._calls.add(1, operation)
                self._watched.saw(event.service)
            elif self.span_attributes:
                span = trace.get_current_span()
                if span.is_recording():
                    span.set_attribute(RESEND_COUNT, event.attempt - 1)
        elif kind is EventKind.SUCCESS or kind is EventKind.FAILURE:
            labels = {**operation, "verdict": _verdict(event)}
            self._attempts.add(1, labels)
            if event.elapsed is not None:
                self._duration.record(event.elapsed, labels)
        elif kind is EventKind.RETRY:
            self._retries.add(1, {**operation, "verdict": _verdict(event)})
        elif kind is EventKind.GIVE_UP:
            self._give_ups.add(1, {**operation, "reason": event.give_up_reason or "unknown"})
        elif kind is EventKind.REJECTED:
            self._rejections.add(1, operation)
            if event.attempt == 1:  # refused before its first attempt: still a call
                self._calls.add(1, operation)
                self._watched.saw(event.service)

    def __getstate__(self) -> dict[str, Any]:
        # Instruments belong to a provider of this process; re-bind to the global one.
        if self.meter_provider is not None:
            raise TypeError(
                "an OpenTelemetryHook on an explicit meter_provider cannot be pickled "
                "(the provider belongs to this process)"
            )
        return {"span_attributes": self.span_attributes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(span_attributes=state["span_attributes"])  # type: ignore[misc]


def _verdict(event: AttemptEvent) -> str:
    return event.verdict.value if event.verdict is not None else "unknown"


def _version() -> str:
    from .. import __version__

    return __version__
