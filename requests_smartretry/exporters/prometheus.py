"""Prometheus exporter: counters and a latency histogram fed by the attempt-event stream,
and gauges of the breaker's state, the budget's tokens and the throttle's rate read at each
scrape.

Needs the ``prometheus`` extra (``pip install requests-smartretry[prometheus]``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any, Optional

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "requests_smartretry.exporters.prometheus needs prometheus-client: "
        "pip install 'requests-smartretry[prometheus]'"
    ) from exc

from .. import forksafe
from ..events import AttemptEvent, EventKind
from ._gauges import BREAKER_STATES, GAUGES, Watched, WatchesState

__all__ = ["DEFAULT_BUCKETS", "PrometheusHook"]

#: Attempt-duration buckets in seconds: fast API calls up to the default 30 s deadline.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Metrics:
    """The metric families of one namespace in one registry."""

    def __init__(self, registry: CollectorRegistry, namespace: str,
                 buckets: tuple[float, ...]) -> None:
        self.calls = Counter(
            f"{namespace}_calls", "Calls made through requests-smartretry (one per request).",
            ["operation"], registry=registry)
        self.attempts = Counter(
            f"{namespace}_attempts", "Finished attempts, by verdict (success included).",
            ["operation", "verdict"], registry=registry)
        self.retries = Counter(
            f"{namespace}_retries", "Retries, by the verdict of the attempt that failed.",
            ["operation", "verdict"], registry=registry)
        self.give_ups = Counter(
            f"{namespace}_give_ups", "Calls that ended in failure, by reason.",
            ["operation", "reason"], registry=registry)
        self.rejections = Counter(
            f"{namespace}_rejections", "Attempts the circuit breaker refused.",
            ["operation"], registry=registry)
        self.attempt_seconds = Histogram(
            f"{namespace}_attempt_duration_seconds", "Seconds per attempt, by verdict.",
            ["operation", "verdict"], registry=registry, buckets=buckets)
        self.buckets = buckets
        self.watched = Watched()
        registry.register(_GaugeCollector(namespace, self.watched))


class _GaugeCollector:
    """The gauges, read from the watched breakers and budgets when scraped."""

    def __init__(self, namespace: str, watched: Watched) -> None:
        self.namespace = namespace
        self.watched = watched

    def describe(self) -> Iterator[GaugeMetricFamily]:
        for gauge in GAUGES:  # the names only: registering reads no store
            yield GaugeMetricFamily(f"{self.namespace}_{gauge.name}", gauge.description,
                                    labels=_labels(gauge.name))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for gauge in GAUGES:
            family = GaugeMetricFamily(f"{self.namespace}_{gauge.name}", gauge.description,
                                       labels=_labels(gauge.name))
            for service, value in self.watched.readings(gauge):
                if gauge.name == "breaker_state":
                    for state in BREAKER_STATES:
                        family.add_metric([service, state], 1.0 if state == value else 0.0)
                else:
                    family.add_metric([service], float(value))
            yield family


def _labels(name: str) -> list[str]:
    return ["service", "state"] if name == "breaker_state" else ["service"]


# One set of metric families per (registry, namespace): registering a name twice in a
# registry is an error, and every adapter of a process should feed the same series.
_families: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Metrics]] = (
    weakref.WeakKeyDictionary())
_families_lock = forksafe.lock()


def _metrics_for(registry: CollectorRegistry, namespace: str,
                 buckets: tuple[float, ...]) -> _Metrics:
    with _families_lock:
        per_namespace = _families.setdefault(registry, {})
        metrics = per_namespace.get(namespace)
        if metrics is None:
            metrics = per_namespace[namespace] = _Metrics(registry, namespace, buckets)
        elif metrics.buckets != buckets:
            raise ValueError(
                f"the {namespace!r} metrics of this registry already use buckets "
                f"{metrics.buckets!r}; got {buckets!r}"
            )
        return metrics


class PrometheusHook(WatchesState):
    """A hook that counts calls, attempts, retries, give-ups and rejections for Prometheus.

    Example::

        from prometheus_client import start_http_server
        from requests_smartretry.exporters.prometheus import PrometheusHook

        session = smart_session(hooks=[PrometheusHook()])
        start_http_server(9100)

    Series (``namespace`` defaults to ``requests_smartretry``): ``*_calls_total``
    {operation}, ``*_attempts_total`` {operation, verdict}, ``*_retries_total``
    {operation, verdict}, ``*_give_ups_total`` {operation, reason},
    ``*_rejections_total`` {operation} and the histogram
    ``*_attempt_duration_seconds`` {operation, verdict}; gauges read at each scrape, per
    service the hook's calls went to: ``*_breaker_state`` {service, state} (1 for the
    current state of ``closed``, ``open``, ``half_open``, ``forced_open``,
    ``forced_closed``, 0 for the others) and ``*_budget_tokens`` {service}, from the
    breaker and budget of every session the hook is installed on (or given to
    :meth:`watch_state`).  Hooks on the same registry and namespace share the series.
    Operation names become label values: name operations (``operation_name=`` or a preset)
    rather than letting ``METHOD host/path`` with ids in the path create a series per id.
    """

    def __init__(
        self,
        registry: Optional[CollectorRegistry] = None,
        *,
        namespace: str = "requests_smartretry",
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> None:
        if not isinstance(namespace, str) or not namespace.replace("_", "a").isalnum() \
                or namespace[:1].isdigit():
            raise ValueError(
                f"namespace must be a Prometheus name ([a-zA-Z_][a-zA-Z0-9_]*), "
                f"got {namespace!r}"
            )
        buckets = tuple(float(b) for b in buckets)
        if not buckets or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"buckets must be strictly increasing numbers, got {buckets!r}")
        self.registry = prometheus_client.REGISTRY if registry is None else registry
        self.namespace = namespace
        self.buckets = buckets
        self._metrics = _metrics_for(self.registry, namespace, buckets)

    def __repr__(self) -> str:
        return f"PrometheusHook(namespace={self.namespace!r})"

    def _gauge_sources(self) -> Watched:
        return self._metrics.watched

    def __call__(self, event: AttemptEvent) -> None:
        """Count one event."""
        kind = event.kind
        metrics = self._metrics
        operation = event.operation
        if kind is EventKind.START:
            if event.attempt == 1:
                metrics.calls.labels(operation).inc()
                metrics.watched.saw(event.service)
        elif kind is EventKind.SUCCESS or kind is EventKind.FAILURE:
            verdict = event.verdict.value if event.verdict is not None else "unknown"
            metrics.attempts.labels(operation, verdict).inc()
            if event.elapsed is not None:
                metrics.attempt_seconds.labels(operation, verdict).observe(event.elapsed)
        elif kind is EventKind.RETRY:
            verdict = event.verdict.value if event.verdict is not None else "unknown"
            metrics.retries.labels(operation, verdict).inc()
        elif kind is EventKind.GIVE_UP:
            metrics.give_ups.labels(operation, event.give_up_reason or "unknown").inc()
        elif kind is EventKind.REJECTED:
            metrics.rejections.labels(operation).inc()
            if event.attempt == 1:  # refused before its first attempt: still a call
                metrics.calls.labels(operation).inc()
                metrics.watched.saw(event.service)

    def __getstate__(self) -> dict[str, Any]:
        # Metric objects hold locks; a pickled hook re-binds to the (default) registry.
        if self.registry is not prometheus_client.REGISTRY:
            raise TypeError(
                "a PrometheusHook on a custom registry cannot be pickled "
                "(the registry belongs to this process)"
            )
        return {"namespace": self.namespace, "buckets": self.buckets}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(namespace=state["namespace"], buckets=state["buckets"])  # type: ignore[misc]
