"""Tests for requests_smartretry.exporters: Prometheus and OpenTelemetry hooks."""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any

import pytest

from requests_smartretry.events import AttemptEvent, EventKind, Verdict

prometheus_client = pytest.importorskip("prometheus_client")
pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from requests_smartretry.exporters.otel import RESEND_COUNT, OpenTelemetryHook  # noqa: E402
from requests_smartretry.exporters.prometheus import PrometheusHook  # noqa: E402


def call_events(op: str = "pay", call_id: int = 1) -> list[AttemptEvent]:
    """A call that fails with a 503, is retried and succeeds, then one that gives up, then
    one that the breaker refuses."""
    base: dict[str, Any] = {"operation": op, "service": "http://svc", "max_attempts": 2}
    return [
        AttemptEvent(EventKind.START, attempt=1, call_id=call_id, **base),
        AttemptEvent(EventKind.FAILURE, attempt=1, call_id=call_id,
                     verdict=Verdict.SERVER_ERROR, elapsed=0.2, **base),
        AttemptEvent(EventKind.RETRY, attempt=1, call_id=call_id,
                     verdict=Verdict.SERVER_ERROR, wait=1.0, **base),
        AttemptEvent(EventKind.START, attempt=2, call_id=call_id, **base),
        AttemptEvent(EventKind.SUCCESS, attempt=2, call_id=call_id, verdict=Verdict.SUCCESS,
                     elapsed=0.03, **base),
        AttemptEvent(EventKind.START, attempt=1, call_id=call_id + 1, **base),
        AttemptEvent(EventKind.FAILURE, attempt=1, call_id=call_id + 1,
                     verdict=Verdict.CLIENT_ERROR, elapsed=0.01, **base),
        AttemptEvent(EventKind.GIVE_UP, attempt=1, call_id=call_id + 1,
                     verdict=Verdict.CLIENT_ERROR, give_up_reason="not_retryable", **base),
        AttemptEvent(EventKind.REJECTED, attempt=1, call_id=call_id + 2, wait=5.0, **base),
    ]


# -- Prometheus -------------------------------------------------------------------------


def test_prometheus_scrape_has_the_expected_series() -> None:
    """A scrape of the registry shows calls, attempts by verdict, retries, give-ups,
    rejections and the attempt-duration histogram, labelled by operation."""
    registry = prometheus_client.CollectorRegistry()
    hook = PrometheusHook(registry)
    for event in call_events():
        hook(event)
    text = prometheus_client.generate_latest(registry).decode()
    expected = [
        'requests_smartretry_calls_total{operation="pay"} 3.0',
        'requests_smartretry_attempts_total{operation="pay",verdict="server_error"} 1.0',
        'requests_smartretry_attempts_total{operation="pay",verdict="success"} 1.0',
        'requests_smartretry_attempts_total{operation="pay",verdict="client_error"} 1.0',
        'requests_smartretry_retries_total{operation="pay",verdict="server_error"} 1.0',
        'requests_smartretry_give_ups_total{operation="pay",reason="not_retryable"} 1.0',
        'requests_smartretry_rejections_total{operation="pay"} 1.0',
        'requests_smartretry_attempt_duration_seconds_count{operation="pay",'
        'verdict="server_error"} 1.0',
        'requests_smartretry_attempt_duration_seconds_bucket{le="0.25",operation="pay",'
        'verdict="server_error"} 1.0',
        'requests_smartretry_attempt_duration_seconds_bucket{le="0.1",operation="pay",'
        'verdict="server_error"} 0.0',
    ]
    lines = set(text.splitlines())
    missing = [line for line in expected if line not in lines]
    assert not missing, text


def test_prometheus_hooks_on_one_registry_share_the_series() -> None:
    """Two hooks (two adapters) on one registry feed the same series instead of failing
    with a duplicate registration."""
    registry = prometheus_client.CollectorRegistry()
    first, second = PrometheusHook(registry), PrometheusHook(registry)
    first(call_events()[0])
    second(call_events()[0])
    value = registry.get_sample_value("requests_smartretry_calls_total", {"operation": "pay"})
    assert value == 2.0
    other = PrometheusHook(registry, namespace="other")
    other(call_events()[0])
    assert registry.get_sample_value("other_calls_total", {"operation": "pay"}) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"namespace": "bad-name"}, "namespace must be a Prometheus name.*'bad-name'"),
        ({"namespace": "9lives"}, "namespace must be a Prometheus name"),
        ({"buckets": (1.0, 0.5)}, "buckets must be strictly increasing"),
    ],
)
def test_prometheus_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """A bad namespace or bucket list fails at construction, naming it."""
    with pytest.raises(ValueError, match=message):
        PrometheusHook(prometheus_client.CollectorRegistry(), **kwargs)


def test_prometheus_hook_on_a_custom_registry_refuses_pickling_clearly() -> None:
    """A hook bound to a process-local registry says so instead of pickling half of it."""
    hook = PrometheusHook(prometheus_client.CollectorRegistry())
    with pytest.raises(TypeError, match="custom registry cannot be pickled"):
        pickle.dumps(hook)


def test_exporters_are_not_imported_until_used() -> None:
    """Importing the package (and its exporters package) loads neither prometheus_client
    nor opentelemetry, so they stay optional extras."""
    code = ("import sys, requests_smartretry, requests_smartretry.exporters;"
            "bad = [m for m in ('prometheus_client', 'opentelemetry') if m in sys.modules];"
            "assert not bad, bad;"
            "from requests_smartretry.exporters import PrometheusHook;"
            "assert 'prometheus_client' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- OpenTelemetry ----------------------------------------------------------------------


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Metric name -> its data points, from one collection."""
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def test_otel_metrics_reach_the_sdk_reader() -> None:
    """The OpenTelemetry hook's counters and histogram show up in the SDK's in-memory
    reader with operation and verdict attributes."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hook = OpenTelemetryHook(provider)
    for event in call_events():
        hook(event)
    points = otel_points(reader)

    def value(name: str, **attributes: str) -> Any:
        matches = [p for p in points[name] if dict(p.attributes) == attributes]
        assert len(matches) == 1, (name, attributes, points.get(name))
        return matches[0]

    assert value("requests_smartretry.calls", operation="pay").value == 3
    assert value("requests_smartretry.attempts", operation="pay",
                 verdict="server_error").value == 1
    assert value("requests_smartretry.attempts", operation="pay", verdict="success").value == 1
    assert value("requests_smartretry.retries", operation="pay",
                 verdict="server_error").value == 1
    assert value("requests_smartretry.give_ups", operation="pay",
                 reason="not_retryable").value == 1
    assert value("requests_smartretry.rejections", operation="pay").value == 1
    duration = value("requests_smartretry.attempt.duration", operation="pay",
                     verdict="server_error")
    assert duration.count == 1
    assert duration.sum == pytest.approx(0.2)
    provider.shutdown()


def test_otel_marks_retried_attempts_on_the_recording_span() -> None:
    """A retried attempt inside a recording span sets http.request.resend_count to the
    number of resends; the first attempt sets nothing."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hook = OpenTelemetryHook(provider)
    tracer = TracerProvider().get_tracer("test")
    events = call_events()
    with tracer.start_as_current_span("first call") as span:
        hook(events[0])
        assert RESEND_COUNT not in (span.attributes or {})  # type: ignore[attr-defined]
        for event in events[1:4]:
            hook(event)
        assert span.attributes[RESEND_COUNT] == 1  # type: ignore[attr-defined]
    provider.shutdown()


def test_otel_without_a_span_or_sdk_records_nothing_and_does_not_fail() -> None:
    """With no recording span (and the API's no-op providers) the hook is a quiet no-op."""
    hook = OpenTelemetryHook()
    for event in call_events():
        hook(event)
    copy = pickle.loads(pickle.dumps(hook))
    copy(call_events()[3])
    with pytest.raises(TypeError, match="span_attributes must be a bool"):
        OpenTelemetryHook(span_attributes="yes")  # type: ignore[arg-type]


# -- issue 30: gauges of the state that decides whether calls are sent ----------------------


def test_prometheus_scrape_has_breaker_state_and_budget_gauges() -> None:
    """A session with the hook: the scrape shows its breaker's state (1 for the current
    one) and its budget's tokens for the service it called, as they change."""
    from requests_smartretry import CircuitBreaker, RetryBudget, smart_session
    from requests_smartretry.faultserver import FaultServer

    registry = prometheus_client.CollectorRegistry()
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=60.0)
    budget = RetryBudget(ratio=0.1, max_tokens=5.0, min_per_second=0.0)
    session = smart_session(max_retries=1, backoff_base=0.0, breaker=breaker, budget=budget,
                            hooks=[PrometheusHook(registry)], log=False)
    with FaultServer() as server:
        service = f"http://127.0.0.1:{server.port}"

        def gauge(name: str, **labels: str) -> Any:
            return registry.get_sample_value(f"requests_smartretry_{name}",
                                             {"service": service, **labels})

        assert session.get(server.url("/status/200")).status_code == 200
        assert gauge("breaker_state", state="closed") == 1.0
        assert gauge("breaker_state", state="open") == 0.0
        assert gauge("budget_tokens") == pytest.approx(5.0)
        assert session.get(server.url("/status/503")).status_code == 503  # 2 failures
        assert gauge("breaker_state", state="open") == 1.0
        assert gauge("breaker_state", state="closed") == 0.0
        assert gauge("budget_tokens") == pytest.approx(4.0)  # one retry (deposits: full)
        breaker.force_open(service)
        text = prometheus_client.generate_latest(registry).decode()
        assert (f'requests_smartretry_breaker_state{{service="{service}",'
                f'state="forced_open"}} 1.0') in text
        assert f'requests_smartretry_budget_tokens{{service="{service}"}} 4.0' in text


def test_gauges_show_the_worst_of_several_breakers() -> None:
    """Two sessions' breakers on one service: the gauge shows the more open one."""
    from requests_smartretry import CircuitBreaker, smart_session

    registry = prometheus_client.CollectorRegistry()
    hook = PrometheusHook(registry)
    calm, tripped = CircuitBreaker(), CircuitBreaker()
    smart_session(breaker=calm, hooks=[hook])
    smart_session(breaker=tripped, hooks=[hook])
    tripped.force_open("http://svc")
    for event in call_events():
        hook(event)
    assert registry.get_sample_value("requests_smartretry_breaker_state",
                                     {"service": "http://svc", "state": "forced_open"}) == 1.0


def test_opentelemetry_gauges_read_the_breaker_and_budget() -> None:
    """The observable gauges report the state and the tokens per service."""
    from requests_smartretry import CircuitBreaker, RetryBudget

    reader = InMemoryMetricReader()
    hook = OpenTelemetryHook(MeterProvider(metric_readers=[reader]))
    breaker, budget = CircuitBreaker(), RetryBudget(max_tokens=7.0)
    hook.watch_state(breaker=breaker, budget=budget)
    breaker.force_open("http://svc")
    for event in call_events():
        hook(event)
    points: dict[str, dict[tuple[Any, ...], float]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if not metric.name.endswith((".state", ".tokens")):
                    continue
                for point in metric.data.data_points:
                    points.setdefault(metric.name, {})[
                        tuple(sorted(point.attributes.items()))] = point.value
    states = points["requests_smartretry.breaker.state"]
    assert states[(("service", "http://svc"), ("state", "forced_open"))] == 1
    assert states[(("service", "http://svc"), ("state", "closed"))] == 0
    assert points["requests_smartretry.budget.tokens"][(("service", "http://svc"),)] == 7.0


def test_prometheus_scrape_has_the_throttle_rate() -> None:
    """A session with a throttle: the scrape shows the rate in force for the service it
    called; an adaptive throttle's rate drops on a throttling answer and the gauge shows it."""
    from requests_smartretry import Throttle, smart_session
    from requests_smartretry.faultserver import FaultServer

    registry = prometheus_client.CollectorRegistry()
    fixed = smart_session(max_retries=0, throttle=Throttle(rate=5.0),
                          hooks=[PrometheusHook(registry)], log=False)
    with FaultServer() as server:
        service = f"http://127.0.0.1:{server.port}"
        assert fixed.get(server.url("/status/200")).status_code == 200
        assert registry.get_sample_value("requests_smartretry_throttle_rate",
                                         {"service": service}) == pytest.approx(5.0)

    registry = prometheus_client.CollectorRegistry()
    adaptive = smart_session(max_retries=0, throttle=Throttle(rate=8.0, adaptive=True),
                             hooks=[PrometheusHook(registry)], log=False)
    with FaultServer() as server:
        service = f"http://127.0.0.1:{server.port}"
        assert adaptive.get(server.url("/status/429")).status_code == 429
        rate = registry.get_sample_value("requests_smartretry_throttle_rate",
                                         {"service": service})
        assert rate is not None and rate < 8.0


def test_opentelemetry_gauge_reads_the_throttle_rate() -> None:
    """An adaptive throttle's rate in force reaches the OpenTelemetry gauge: the configured
    rate first, lower after a throttling answer."""
    from requests_smartretry import Throttle, smart_session
    from requests_smartretry.faultserver import FaultServer

    def rates(reader: InMemoryMetricReader) -> dict[tuple[Any, ...], float]:
        found: dict[tuple[Any, ...], float] = {}
        for resource in reader.get_metrics_data().resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "requests_smartretry.throttle.rate":
                        for point in metric.data.data_points:
                            found[tuple(sorted(point.attributes.items()))] = point.value
        return found

    reader = InMemoryMetricReader()
    session = smart_session(max_retries=0, throttle=Throttle(rate=8.0, adaptive=True),
                            hooks=[OpenTelemetryHook(MeterProvider(metric_readers=[reader]))],
                            log=False)
    with FaultServer() as server:
        key = (("service", f"http://127.0.0.1:{server.port}"),)
        assert session.get(server.url("/status/200")).status_code == 200
        assert rates(reader)[key] == pytest.approx(8.0)
        assert session.get(server.url("/status/429")).status_code == 429
        assert rates(reader)[key] < 8.0
