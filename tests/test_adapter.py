"""SmartRetryAdapter against a real local server: the seed's scenarios and the safety rules."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import gc
import io
import itertools
import pickle
import socket
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import requests
import responses
import urllib3.connection
import urllib3.connectionpool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3.util.retry import Retry

from requests_smartretry import (
    AttemptDeadlineExceeded,
    CircuitBreaker,
    Classification,
    EventKind,
    RetryPolicy,
    SmartRetryAdapter,
    Verdict,
    attempt_history,
    deadline,
    retry_options,
    smart_session,
)
from requests_smartretry import adapter as adapter_module
from requests_smartretry import deadline as deadline_module
from requests_smartretry.faultserver import FaultServer, unused_port
from requests_smartretry.testing import fast_retries

from .conftest import LineCollector, SleepRecorder, watch

_keys = itertools.count()


def seq(server: FaultServer, steps: str, **query: Any) -> str:
    """A fresh /seq/ URL that plays ``steps`` in order."""
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return server.url(f"/seq/k{next(_keys)}?steps={steps}{extra}")


def route(url: str) -> str:
    """The path of ``url`` without its query, as the server records it."""
    return urlsplit(url).path


def session_with(sleeps: SleepRecorder | None = None, **options: Any) -> requests.Session:
    """A session whose adapter records its waits instead of sleeping."""
    kwargs: dict[str, Any] = dict(options)
    if sleeps is not None:
        kwargs["sleep"] = sleeps
    return smart_session(**kwargs)


# -- the seed's scenarios --------------------------------------------------------------


def test_success_is_not_retried(server: FaultServer, sleeps: SleepRecorder) -> None:
    """A successful first attempt is returned as is, after exactly one request."""
    response = session_with(sleeps).get(server.url("/ok"))
    assert response.status_code == 200 and response.text == "ok"
    assert server.hits("/ok") == 1 and sleeps.waits == []


def test_one_failure_is_retried_once(server: FaultServer, sleeps: SleepRecorder) -> None:
    """A 503 then a 200: the caller sees the 200; the server saw two requests; 1 s waited."""
    url = seq(server, "503,ok")
    response = session_with(sleeps).get(url)
    assert response.status_code == 200
    assert server.hits(route(url)) == 2
    assert sleeps.waits == [1.0]


@pytest.fixture
def lookups() -> Iterator[list[tuple[str, Any]]]:
    """Every pool lookup HTTPAdapter makes for the adapter: (URL, verify)."""
    lookup = adapter_module._look_up_pool
    if lookup is None:
        pytest.skip("requests < 2.32.2 looks pools up in get_connection")
    made: list[tuple[str, Any]] = []

    def counting(self: Any, request: Any, verify: Any, *args: Any) -> Any:
        made.append((request.url, verify))
        return lookup(self, request, verify, *args)

    with mock.patch.object(adapter_module, "_look_up_pool", counting):
        yield made


def test_a_retry_reuses_the_pool_of_the_failed_response(
        server: FaultServer, lookups: list[tuple[str, Any]]) -> None:
    """A retry after a 503 goes out on the pool that answered it, and when that pool was
    closed before the retry (pools evicted), on a fresh one: the retry still succeeds."""
    evicting: list[bool] = []

    def evict_at_retry(event: Any) -> None:
        if evicting and event.kind is EventKind.FAILURE:  # evicted and closed (as 1.26 does)
            event.error.response.raw._pool.close()
            adapter.poolmanager.clear()

    session = smart_session(max_retries=1, hooks=[evict_at_retry])
    adapter = session.get_adapter("http://")
    assert session.get(seq(server, "503,ok")).status_code == 200
    assert len(lookups) == 1  # the retry did not look its pool up again
    evicting.append(True)
    url = seq(server, "503,ok")
    assert session.get(url).status_code == 200
    assert server.hits(route(url)) == 2 and len(lookups) == 3


def test_a_pool_is_looked_up_once_per_url_and_tls_settings(
        server: FaultServer, lookups: list[tuple[str, Any]]) -> None:
    """Without proxies, a URL's pool is remembered per (URL, verify, cert): 20 GETs look it
    up once and share one kept-alive connection; other TLS settings (verify=False, a CA
    bundle path) get their own pool; after session.close() the pools are looked up again
    and the next GET works on a new connection."""
    session = smart_session(max_retries=1)
    session.trust_env = False  # verify=True by default, whatever REQUESTS_CA_BUNDLE says
    adapter = session.get_adapter("http://")
    url = server.url("/ok")
    for _ in range(20):
        assert session.get(url).status_code == 200
    assert server.hits("/ok") == 20 and len(lookups) == 1
    assert server.open_connections() == 1
    first = adapter.get_connection_with_tls_context(requests.Request("GET", url).prepare(),
                                                    True)
    for verify in (False, "/etc/ssl/certs/ca-certificates.crt", False):
        assert session.get(url, verify=verify).status_code == 200
    assert [v for _, v in lookups] == [True, False, "/etc/ssl/certs/ca-certificates.crt"]
    other = adapter.get_connection_with_tls_context(requests.Request("GET", url).prepare(),
                                                    False)
    assert other is not first and len(lookups) == 3
    session.close()
    assert first.pool is None  # closed with the adapter
    assert session.get(url).status_code == 200
    assert len(lookups) == 4 and server.hits("/ok") == 24


def test_requests_with_proxies_look_their_pool_up_every_time(
        lookups: list[tuple[str, Any]]) -> None:
    """With proxies (the session's or the environment's), the pool depends on them and on
    NO_PROXY: asked every time, as HTTPAdapter does."""
    adapter = SmartRetryAdapter()
    request = requests.Request("GET", "http://127.0.0.1:9/ok").prepare()
    proxies = {"http": f"http://127.0.0.1:{unused_port()}"}
    for _ in range(3):
        adapter.get_connection_with_tls_context(request, True, proxies)
    assert len(lookups) == 3
    adapter.close()


def test_a_full_pool_manager_is_asked_every_time(lookups: list[tuple[str, Any]]) -> None:
    """A pool manager holding as many pools as it may (pool_connections) evicts the least
    recently used one for the next host, and urllib3 2.8 no longer closes it: the adapter
    then asks the manager every time, so each request goes out on the pool the manager
    holds for its host, never on an evicted one."""
    with FaultServer() as one, FaultServer() as two:
        session = requests.Session()
        adapter = SmartRetryAdapter(max_retries=0, pool_connections=1)
        session.mount("http://", adapter)
        for _ in range(3):
            for running in (one, two):
                assert session.get(running.url("/ok")).status_code == 200
                used = adapter.get_connection_with_tls_context(
                    requests.Request("GET", running.url("/ok")).prepare(), True)
                assert list(adapter.poolmanager.pools._container.values()) == [used]
        assert one.hits("/ok") == 3 and two.hits("/ok") == 3
        assert len(lookups) == 12  # each GET and each check above: the manager was asked
        session.close()


def test_a_pool_key_override_is_asked_for_every_request(server: FaultServer) -> None:
    """A subclass that keys pools itself (build_connection_pool_key_attributes, requests'
    extension point) is asked for every request: its key may depend on anything in it."""
    if adapter_module._pool_key_attributes is None:
        pytest.skip("requests < 2.32.2 has no build_connection_pool_key_attributes")
    asked: list[str] = []

    class Keyed(SmartRetryAdapter):
        def build_connection_pool_key_attributes(self, request: Any, verify: Any,
                                                 cert: Any = None) -> Any:
            asked.append(request.url)
            return super().build_connection_pool_key_attributes(request, verify, cert)

    session = requests.Session()
    session.mount("http://", Keyed(max_retries=0))
    for _ in range(3):
        assert session.get(server.url("/ok")).status_code == 200
    assert len(asked) == 3
    session.close()


def test_an_unhashable_cert_fails_as_with_httpadapter() -> None:
    """A client cert given as a list cannot key a pool: the lookup raises what
    HTTPAdapter's raises (urllib3 cannot key it either), not an error of ours."""
    request = requests.Request("GET", "http://127.0.0.1:9/ok").prepare()
    with pytest.raises(Exception) as plain:
        requests.adapters.HTTPAdapter().get_connection_with_tls_context(
            request, True, None, ["cert.pem", "key.pem"])
    with pytest.raises(type(plain.value)):
        SmartRetryAdapter().get_connection_with_tls_context(
            request, True, None, ["cert.pem", "key.pem"])


def _open_at(servers: list[FaultServer], at_most: int, timeout: float = 5.0) -> int:
    """The connections open at ``servers`` once at most ``at_most`` are (a connection the
    client closed leaves a server's count when its thread reads the end), or after
    ``timeout`` seconds."""
    until = time.monotonic() + timeout
    while True:
        count = sum(each.open_connections() for each in servers)
        if count <= at_most or time.monotonic() > until:
            return count
        time.sleep(0.02)


def test_pools_the_manager_evicted_are_not_kept_alive_by_the_adapter() -> None:
    """pool_connections bounds the pools (and so the idle connections) kept: a pool the
    manager evicts (urllib3 2.8 does not close it) is not held by the adapter's memory of
    pools either, so it goes away with its connection as it does with HTTPAdapter."""
    servers = [FaultServer().start() for _ in range(4)]
    try:
        session = requests.Session()
        session.trust_env = False
        adapter = SmartRetryAdapter(max_retries=0, pool_connections=1)
        session.mount("http://", adapter)
        used: list[weakref.ReferenceType[Any]] = []
        for _ in range(3):
            for running in servers:
                response = session.get(running.url("/ok"))
                assert response.status_code == 200
                used.append(weakref.ref(response.raw._pool))
                del response
        gc.collect()
        alive = {id(pool) for pool in (ref() for ref in used) if pool is not None}
        assert alive == {id(pool) for pool in adapter.poolmanager.pools._container.values()}
        assert _open_at(servers, 1) == 1
        session.close()
        assert _open_at(servers, 0) == 0
    finally:
        for running in servers:
            running.stop()


def test_a_new_pool_manager_lets_the_old_pools_go(server: FaultServer) -> None:
    """adapter.init_poolmanager(...) called again (a user resizing the pools) replaces the
    manager: the old manager's pools are not kept alive by the adapter."""
    session = requests.Session()
    session.trust_env = False
    adapter = SmartRetryAdapter(max_retries=0)
    session.mount("http://", adapter)
    response = session.get(server.url("/ok"))
    old = weakref.ref(response.raw._pool)
    del response
    adapter.init_poolmanager(4, 4)
    gc.collect()
    assert old() is None
    response = session.get(server.url("/ok"))
    assert response.raw._pool in adapter.poolmanager.pools._container.values()
    session.close()


def test_a_pool_looked_up_while_close_runs_is_not_served_afterwards(
        server: FaultServer) -> None:
    """A request of another thread looking its pool up while close() runs, after close()
    took the pools to close and before the manager forgot them, gets a pool the manager
    then drops: the adapter does not remember it, so later requests go out on the
    manager's pools, and the next close() closes their connections (a response kept by
    the caller included)."""
    session = requests.Session()
    session.trust_env = False
    adapter = SmartRetryAdapter(max_retries=0)
    session.mount("http://", adapter)
    url = server.url("/ok")
    manager = adapter.poolmanager
    clear = manager.clear

    def racing_clear() -> None:  # the other thread's request, at that moment
        assert session.get(url).status_code == 200
        clear()

    with mock.patch.object(manager, "clear", racing_clear):
        session.close()
    kept = session.get(url)
    assert kept.status_code == 200
    assert kept.raw._pool in manager.pools._container.values()
    session.close()
    assert kept.raw._pool.pool is None
    assert _open_at([server], 0) == 0



def test_a_pool_manager_cleared_by_hand_is_asked_again(server: FaultServer) -> None:
    """adapter.poolmanager.clear() (a forked child's way not to share the parent's
    sockets) makes urllib3 2.8 forget its pools without closing them: the next request
    goes out on a pool the manager holds, on a new connection, never on the forgotten
    pool's kept-alive one."""
    session = requests.Session()
    session.trust_env = False
    adapter = SmartRetryAdapter(max_retries=0)
    session.mount("http://", adapter)
    first = session.get(server.url("/ok"))
    forgotten = first.raw._pool
    adapter.poolmanager.clear()
    second = session.get(server.url("/ok"))
    assert second.raw._pool is not forgotten
    assert second.raw._pool in adapter.poolmanager.pools._container.values()
    assert server.open_connections() == 2  # the forgotten pool's connection was not used
    forgotten.close()
    session.close()
    assert _open_at([server], 0) == 0



def test_the_pool_used_last_is_evicted_last() -> None:
    """Pools served from memory are not marked used in the pool manager; when it becomes
    full, the next host evicts the least recently used pool all the same (as with
    HTTPAdapter), not the one used most that the memory served."""
    servers = [FaultServer().start() for _ in range(4)]
    try:
        hot, cold, third, fourth = servers
        session = requests.Session()
        session.trust_env = False
        adapter = SmartRetryAdapter(max_retries=0, pool_connections=3)
        session.mount("http://", adapter)
        for running in (hot, cold, hot, hot, third, fourth):
            assert session.get(running.url("/ok")).status_code == 200
        kept = {pool.port for pool in adapter.poolmanager.pools._container.values()}
        assert kept == {hot.port, third.port, fourth.port}
        session.close()
    finally:
        for running in servers:
            running.stop()



def test_two_failures_return_the_last_response(server: FaultServer, sleeps: SleepRecorder) -> None:
    """Every attempt 503: the last response comes back, and raise_for_status raises as usual."""
    response = session_with(sleeps).get(server.url("/status/503"))
    assert response.status_code == 503
    assert server.hits("/status/503") == 2
    with pytest.raises(requests.HTTPError) as caught:
        response.raise_for_status()
    assert caught.value.response is response


def test_timeout_triggers_a_retry(server: FaultServer, sleeps: SleepRecorder) -> None:
    """A hung first attempt is cut at the deadline and the retry succeeds."""
    url = seq(server, "hang,ok", seconds=10)
    started = time.monotonic()
    response = session_with(sleeps, timeout=0.5).get(url)
    assert response.status_code == 200
    assert server.hits(route(url)) == 2
    assert time.monotonic() - started < 0.5 + 2.0


def test_on_retry_gets_attempt_number_and_exception(
    server: FaultServer, sleeps: SleepRecorder
) -> None:
    """on_retry(attempt, error) runs before the retry; a 5xx arrives as HTTPError with .response."""
    calls: list[tuple[int, BaseException]] = []
    session = session_with(sleeps, on_retry=lambda attempt, error: calls.append((attempt, error)))
    session.get(seq(server, "502,ok"))
    assert len(calls) == 1
    attempt, error = calls[0]
    assert attempt == 1
    assert isinstance(error, requests.HTTPError)
    assert error.response is not None and error.response.status_code == 502


def test_on_retry_gets_the_transport_exception(server: FaultServer, sleeps: SleepRecorder) -> None:
    """For a reset, on_retry receives the requests ConnectionError that caused the retry."""
    calls: list[BaseException] = []
    session_with(sleeps, on_retry=lambda _n, error: calls.append(error)).get(
        seq(server, "reset,ok"))
    assert len(calls) == 1 and isinstance(calls[0], requests.ConnectionError)


def test_a_failing_on_retry_callback_does_not_break_the_request(
    server: FaultServer, sleeps: SleepRecorder, log_lines: LineCollector
) -> None:
    """An exception in on_retry is logged and the retry still happens."""

    def broken(attempt: int, error: BaseException) -> None:
        raise RuntimeError("callback bug")

    response = session_with(sleeps, on_retry=broken).get(seq(server, "500,ok"))
    assert response.status_code == 200
    assert any("on_retry callback" in line for line in log_lines.lines)


def test_reset_is_retried(server: FaultServer, sleeps: SleepRecorder) -> None:
    """A connection reset by the server is retried and the retry succeeds."""
    url = seq(server, "reset,ok")
    assert session_with(sleeps).get(url).status_code == 200
    assert server.hits(route(url)) == 2


def test_mid_body_reset_is_retried(server: FaultServer, sleeps: SleepRecorder) -> None:
    """A reset halfway through the body fails the attempt, and the retry succeeds."""
    url = seq(server, "midreset,ok", count=200_000)
    response = session_with(sleeps).get(url)
    assert response.status_code == 200 and response.text == "ok"
    assert server.hits(route(url)) == 2


def test_refused_is_retried_then_raises_connection_error(sleeps: SleepRecorder) -> None:
    """A refused port: two attempts, then the requests ConnectionError legacy code catches."""
    url = f"http://127.0.0.1:{unused_port()}/x"
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        session_with(sleeps).get(url)
    history = attempt_history(caught.value)
    failures = [e for e in history if e.kind is EventKind.FAILURE]
    assert [e.reason for e in failures] == ["ECONNREFUSED", "ECONNREFUSED"]
    assert sleeps.waits == [1.0]


def test_dns_failure_is_retried(monkeypatch: pytest.MonkeyPatch, sleeps: SleepRecorder) -> None:
    """A DNS failure (simulated in getaddrinfo, no packet leaves) is retried, then raised."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def fake_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "api.unknown.invalid":
            lookups.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        session_with(sleeps).get("http://api.unknown.invalid/x")
    assert len(lookups) == 2
    reasons = {e.reason for e in attempt_history(caught.value) if e.kind is EventKind.FAILURE}
    assert reasons == {"ENOTFOUND"}


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_server_errors_and_rate_limits_are_retried(
    server: FaultServer, sleeps: SleepRecorder, status: int
) -> None:
    """5xx and 429 get one retry with the default policy."""
    url = seq(server, f"{status},ok")
    assert session_with(sleeps).get(url).status_code == 200
    assert server.hits(route(url)) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_other_client_errors_are_not_retried(
    server: FaultServer, sleeps: SleepRecorder, status: int
) -> None:
    """Other 4xx come back at once after a single request."""
    url = server.url(f"/status/{status}")
    assert session_with(sleeps).get(url).status_code == status
    assert server.hits(f"/status/{status}") == 1 and sleeps.waits == []


def test_exhausted_timeouts_raise_a_requests_timeout(server: FaultServer,
                                                     sleeps: SleepRecorder) -> None:
    """Legacy `except requests.exceptions.Timeout` catches an attempt deadline on every try.

    A drip (a byte every 0.1 s) never trips the 0.5 s socket timeout, so only the attempt
    deadline can end each attempt (a hang would race the socket timeout against it)."""
    with pytest.raises(requests.exceptions.Timeout) as caught:
        session_with(sleeps, timeout=0.5).get(server.url("/drip?interval=0.1&count=50"))
    assert isinstance(caught.value, AttemptDeadlineExceeded)
    assert server.wait_for_hits(2, "/drip") == 2  # the last, cut request can be read late
    assert len([e for e in attempt_history(caught.value) if e.kind is EventKind.START]) == 2


# -- deadlines ----------------------------------------------------------------------------


@pytest.mark.slow
def test_slow_drip_cannot_hold_an_attempt_past_its_deadline(server: FaultServer) -> None:
    """Headers then a byte every 100 ms: the attempt ends within timeout + 0.5 s."""
    url = server.url("/drip?interval=0.1&count=40")
    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        smart_session(max_retries=0, timeout=1.0).get(url)
    assert time.monotonic() - started < 1.0 + 0.5


@pytest.mark.stress
def test_plain_requests_is_not_cut_by_the_same_timeout(server: FaultServer) -> None:
    """The contrast: plain requests with timeout=1.0 waits through the whole 4 s drip."""
    started = time.monotonic()
    response = requests.get(server.url("/drip?interval=0.1&count=40"), timeout=1.0)
    assert len(response.content) == 40
    assert time.monotonic() - started > 3.0


def test_hung_server_is_cut_at_the_deadline(server: FaultServer) -> None:
    """A server that never answers holds an attempt no longer than its timeout (+ slack)."""
    started = time.monotonic()
    with pytest.raises(AttemptDeadlineExceeded):
        smart_session(max_retries=0, timeout=0.5).get(server.url("/hang?seconds=10"))
    assert time.monotonic() - started < 0.5 + 0.5


def test_a_socket_timeout_at_the_deadline_is_the_deadlines_cut(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the socket's read timeout (cut to the attempt) expires at the deadline before
    the watchdog thread runs (a loaded machine; here a watchdog that never fires), the
    attempt still ends as the deadline's cut: AttemptDeadlineExceeded."""
    monkeypatch.setattr(deadline_module.Watch, "_fire", lambda self, conn: None)
    with pytest.raises(AttemptDeadlineExceeded):
        smart_session(max_retries=0, timeout=0.3).get(server.url("/hang?seconds=10"))


def test_callers_timeout_wins_over_the_policy(server: FaultServer) -> None:
    """An explicit timeout= replaces the policy's 30 s for that request."""
    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        smart_session(max_retries=0).get(server.url("/hang?seconds=10"), timeout=0.4)
    assert time.monotonic() - started < 0.4 + 0.5


def test_connect_read_tuple_bounds_the_attempt_by_their_sum(server: FaultServer) -> None:
    """A (connect, read) tuple bounds the whole attempt by connect + read, even for a drip."""
    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        smart_session(max_retries=0).get(server.url("/drip?interval=0.05&count=100"),
                                         timeout=(0.2, 0.4))
    assert time.monotonic() - started < 0.6 + 0.5


def test_stream_true_deadline_covers_headers_only(server: FaultServer) -> None:
    """With stream=True the call returns at the headers; the body then reads at its own pace."""
    session = smart_session(max_retries=0, timeout=0.5)
    started = time.monotonic()
    response = session.get(server.url("/drip?interval=0.05&count=20"), stream=True)
    assert time.monotonic() - started < 0.5
    assert response.content == b"x" * 20  # ~1 s of drip: per-read timeouts, no total cut


@pytest.mark.parametrize("watchdog", ["on time", "late"])
@pytest.mark.parametrize(("connection", "message"), [
    pytest.param("kept alive", "deadline passed before a pooled connection was free",
                 id="kept-alive"),
    pytest.param("new", "deadline passed before the connection was made", id="new"),
])
def test_a_connection_handed_out_after_the_deadline_carries_nothing(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch, watchdog: str, connection: str,
    message: str,
) -> None:
    """A thread stalled past its deadline as a starved thread on a loaded machine is
    (inside the pool, with a live keep-alive connection; or between taking a fresh
    connection and connecting it, when the watchdog has no socket to cut) sends nothing,
    whether or not the watchdog thread has run yet: a ConnectTimeout classified as the
    deadline, the server never sees the POST, and the pool keeps working."""
    if watchdog == "late":  # the watchdog thread never gets to mark the watch as fired
        monkeypatch.setattr(deadline.Watch, "_fire", lambda watch, conn: None)
    session = smart_session(max_retries=0, timeout=10.0, budget=None)
    if connection == "kept alive":
        assert session.get(server.url("/ok")).status_code == 200
        stalled_class, name = urllib3.connectionpool.HTTPConnectionPool, "_get_conn"
    else:  # no pooled connection yet: the POST connects
        stalled_class, name = adapter_module.HTTPConnectionPool, "_make_request"
    real = getattr(stalled_class, name)

    def stalled(pool: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.4)
        return real(pool, *args, **kwargs)

    monkeypatch.setattr(stalled_class, name, stalled)
    with pytest.raises(requests.exceptions.ConnectTimeout, match=message) as caught:
        session.post(server.url("/echo?late=1"), data=b"pay", timeout=0.1)
    failures = [(e.verdict, e.reason) for e in caught.value.retry_history  # type: ignore
                if e.kind is EventKind.FAILURE]
    assert failures == [(Verdict.TIMEOUT, "deadline")]  # the attempt's timeout, not network
    monkeypatch.undo()
    time.sleep(0.1)
    assert server.received("/echo") == []
    assert session.get(server.url("/ok")).status_code == 200


def test_a_blocking_pool_waits_no_longer_than_the_deadline(server: FaultServer) -> None:
    """With pool_block=True and every connection in use, requests would wait for ever; the
    attempt's deadline ends the wait: a ConnectTimeout (nothing sent) per attempt, both
    classified as the deadline, and the pool's slots stay whole for later requests."""
    session = smart_session(max_retries=1, timeout=0.3, backoff_base=0.01, pool_maxsize=1,
                            pool_block=True, budget=None)
    held = session.get(server.url("/ok"), stream=True)  # holds the only connection
    outcome: list[BaseException] = []
    seconds: list[float] = []

    def post() -> None:
        started = time.monotonic()
        try:
            session.post(server.url("/echo?waited=1"), data=b"pay")
        except requests.RequestException as exc:
            outcome.append(exc)
        seconds.append(time.monotonic() - started)

    waiter = threading.Thread(target=post, daemon=True)
    waiter.start()
    waiter.join(timeout=10)
    assert not waiter.is_alive(), "the request waited for a connection past its deadline"
    assert len(outcome) == 1 and isinstance(outcome[0], requests.exceptions.ConnectTimeout)
    assert "every pooled connection was in use" in str(outcome[0])
    assert 0.6 <= seconds[0] < 0.6 + 3.0  # two attempts of 0.3 s each, generous on load
    failures = [(e.verdict, e.reason) for e in outcome[0].retry_history  # type: ignore
                if e.kind is EventKind.FAILURE]
    assert failures == [(Verdict.TIMEOUT, "deadline")] * 2
    assert server.received("/echo") == []
    assert held.content == b"ok"  # the connection goes back; no slot was lost or doubled
    for _ in range(3):
        assert session.get(server.url("/ok")).status_code == 200


def test_a_connect_after_a_pool_wait_ends_by_the_attempt_deadline() -> None:
    """The wait for a blocking pool's connection uses part of the attempt; the connect
    that follows (to a host that never answers: a loopback listener whose accept queue is
    full) gets only what is left, not the whole connect timeout again."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []

    def serve_one() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        time.sleep(1.5)
        conn.sendall(b"ok")
        conn.close()  # the pooled connection is dead: the next request must connect

    threading.Thread(target=serve_one, daemon=True).start()
    session = smart_session(max_retries=0, timeout=2.0, pool_maxsize=1, pool_block=True,
                            budget=None)
    try:
        held = session.get(f"http://127.0.0.1:{port}/a", stream=True)
        for _ in range(4):  # fill the accept queue: later connects get no answer
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        seconds: list[float] = []

        def wait_then_connect() -> None:
            started = time.monotonic()
            with contextlib.suppress(requests.RequestException):
                session.get(f"http://127.0.0.1:{port}/b")
            seconds.append(time.monotonic() - started)

        waiter = threading.Thread(target=wait_then_connect, daemon=True)
        waiter.start()
        assert held.content == b"ok"  # frees the slot after ~1.5 s of the waiter's 2 s
        held.close()
        waiter.join(timeout=15)
        # Before: 1.5 s of waiting plus a full 2 s connect timeout, 3.5 s.
        assert seconds and seconds[0] < 2.0 + 1.0, seconds
    finally:
        session.close()
        for filler in fillers:
            filler.close()
        listener.close()


def _runs(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` is inside a call of ``function`` right now."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


@pytest.mark.parametrize("closed_during", ["the attempt", "the backoff wait"])
def test_closing_the_session_stops_a_call_before_its_retry(
    server: FaultServer, closed_during: str,
) -> None:
    """session.close() while a call is under way: its retry is not sent (through a new pool
    or otherwise) and is not counted as an attempt (a breaker would take it for a
    success); the call ends on its last real failure, given up as "closed"."""
    breaker = CircuitBreaker(failure_threshold=5)
    sleeps: list[float] = []

    def backoff_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if closed_during == "the backoff wait":
            session.close()

    session = smart_session(max_retries=1, timeout=1.0, pool_maxsize=1, pool_block=True,
                            budget=None, breaker=breaker, sleep=backoff_sleep)
    held = session.get(server.url("/ok"), stream=True)  # the POST waits for this slot
    outcome: list[BaseException] = []

    def post() -> None:
        try:
            session.post(server.url("/echo?closed=1"), data=b"after-close")
        except requests.RequestException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=post, daemon=True)
    waiter.start()
    if closed_during == "the attempt":  # close() once the POST waits in the pool
        deadline_at = time.monotonic() + 5
        while not _runs(waiter, "_wait_for_conn") and time.monotonic() < deadline_at:
            time.sleep(0.005)
        session.close()
    waiter.join(timeout=10)
    held.close()
    assert len(outcome) == 1 and isinstance(outcome[0], requests.exceptions.ConnectTimeout)
    assert server.received("/echo") == []
    history = outcome[0].retry_history  # type: ignore[attr-defined]
    assert [e.kind for e in history if e.kind is EventKind.START] == [EventKind.START]
    assert history[-1].kind is EventKind.GIVE_UP and history[-1].give_up_reason == "closed"
    assert len(sleeps) == (1 if closed_during == "the backoff wait" else 0)
    # The breaker saw one failed attempt: the GET's success reset nothing afterwards.
    assert breaker.status(history[0].service).consecutive_failures == 1


def test_a_post_refused_a_pooled_connection_is_retried(server: FaultServer) -> None:
    """Nothing was sent, so even a POST without an idempotency key gets its retry once the
    connection comes free, and the server sees it exactly once."""
    session = smart_session(max_retries=1, timeout=10.0, backoff_base=0.01, pool_maxsize=1,
                            pool_block=True, budget=None)
    held = session.get(server.url("/ok"), stream=True)
    results: list[object] = []

    def post() -> None:
        try:
            results.append(session.post(server.url("/echo?late=1"), data=b"pay", timeout=2.0))
        except requests.RequestException as exc:
            results.append(exc)

    waiter = threading.Thread(target=post)
    waiter.start()
    # Free the connection between the first attempt's deadline (2 s) and the second's (4 s):
    # a second on either side, for a loaded machine.
    time.sleep(3.0)
    assert held.content == b"ok"
    waiter.join(timeout=10)
    assert len(results) == 1 and isinstance(results[0], requests.Response), results
    kinds = [(e.kind, e.verdict) for e in results[0].retry_history]  # type: ignore
    assert (EventKind.FAILURE, Verdict.TIMEOUT) in kinds and kinds[-1][0] is EventKind.SUCCESS
    assert len(server.received("/echo")) == 1


def test_a_finished_watch_in_a_copied_context_leaves_connections_alone(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Work started inside an attempt (a copied context) may outlive it; its requests then
    keep their keep-alive connection instead of being treated as cut."""
    connects: list[object] = []
    real_connect = urllib3.connection.HTTPConnection.connect

    def counting_connect(conn: Any) -> None:
        connects.append(conn)
        real_connect(conn)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "connect", counting_connect)
    session = smart_session(max_retries=0, budget=None)
    with watch(0.01):
        time.sleep(0.1)  # the watch fires
        context = contextvars.copy_context()

    def work() -> None:
        for _ in range(5):
            assert session.get(server.url("/ok"), timeout=(5, None)).status_code == 200

    context.run(work)
    assert len(connects) == 1  # one TCP connection for the five requests


@pytest.mark.parametrize("bad", [-1, 0, "5", (1, 2, 3), (0, 1), float("inf")])
def test_bad_per_request_timeout_is_refused(server: FaultServer, bad: Any) -> None:
    """A nonsensical timeout= is a ValueError naming the timeout, before any request."""
    with pytest.raises(ValueError, match="timeout"):
        smart_session().get(server.url("/ok"), timeout=bad)
    assert server.hits() == 0


@pytest.mark.parametrize(("good", "bad"), [(1, True), ((1, 5), (True, 5)),
                                           ((5, 1), (5, True))])
def test_a_bad_timeout_equal_to_a_good_one_is_still_refused(
    server: FaultServer, good: Any, bad: Any
) -> None:
    """Resolved timeouts are kept per value, yet a value that merely compares equal to
    one already used (True == 1) is checked afresh, and refused."""
    session = smart_session()
    for _ in range(2):
        assert session.get(server.url("/ok"), timeout=good).status_code == 200
    with pytest.raises(ValueError, match="timeout"):
        session.get(server.url("/ok"), timeout=bad)
    assert server.hits() == 2


def test_a_per_request_timeout_is_resolved_once_per_value(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get(url, timeout=5), the way most callers call requests, checks and converts the
    timeout once, not on every request; each attempt is still bounded by it."""
    from requests_smartretry import sending

    resolved: list[Any] = []
    real = sending._resolve_timeouts
    monkeypatch.setattr(sending, "_resolve_timeouts",
                        lambda timeout, policy: resolved.append(timeout) or real(timeout, policy))
    session = smart_session(max_retries=0)
    for _ in range(5):
        assert session.get(server.url("/ok"), timeout=5).status_code == 200
        assert session.get(server.url("/ok"), timeout=(2, 5.0)).status_code == 200
    assert resolved == [None, 5, (2, 5.0)]  # the policy's own, then each value once
    with pytest.raises(requests.exceptions.Timeout):
        session.get(server.url("/hang?seconds=5"), timeout=0.3)


# -- Retry-After ------------------------------------------------------------------------


def test_retry_after_seconds_is_honoured(server: FaultServer, sleeps: SleepRecorder) -> None:
    """A 429 with Retry-After: 3 waits 3 s (not the 1 s backoff) before the retry."""
    url = seq(server, "429,ok", retry_after=3)
    assert session_with(sleeps).get(url).status_code == 200
    assert sleeps.waits == [3.0]


def test_retry_after_http_date_is_honoured(server: FaultServer, sleeps: SleepRecorder) -> None:
    """A 503 with an HTTP-date Retry-After waits until that date (within a second)."""
    import email.utils
    from urllib.parse import quote

    when = email.utils.formatdate(time.time() + 4, usegmt=True)
    url = seq(server, "503,ok", retry_after=quote(when))
    assert session_with(sleeps).get(url).status_code == 200
    assert len(sleeps.waits) == 1 and 2.0 <= sleeps.waits[0] <= 4.5


def test_retry_after_above_the_cap_returns_at_once(
    server: FaultServer, sleeps: SleepRecorder, log_lines: LineCollector
) -> None:
    """Retry-After: 60 exceeds the 5 s cap: the 429 comes back at once and the log says why."""
    response = session_with(sleeps).get(server.url("/status/429?retry_after=60"))
    assert response.status_code == 429
    assert server.hits("/status/429") == 1 and sleeps.waits == []
    assert any("60000ms" in line for line in log_lines.lines)


def test_malformed_retry_after_falls_back_to_backoff(
    server: FaultServer, sleeps: SleepRecorder
) -> None:
    """An unparseable Retry-After is ignored: the normal 1 s backoff applies."""
    url = seq(server, "503,ok", retry_after="soon-ish")
    assert session_with(sleeps).get(url).status_code == 200
    assert sleeps.waits == [1.0]


# -- what is safe to repeat -------------------------------------------------------------


def test_post_is_not_resent_after_it_reached_the_server(
    server: FaultServer, sleeps: SleepRecorder
) -> None:
    """A POST reset after sending is raised, not resent: the server saw it once."""
    url = seq(server, "reset,ok")
    with pytest.raises(requests.ConnectionError) as caught:
        session_with(sleeps).post(url, json={"amount": 1})
    assert server.hits(route(url)) == 1
    give_up = [e for e in attempt_history(caught.value) if e.kind is EventKind.GIVE_UP]
    assert give_up[0].give_up_reason == "unsafe"


def test_post_with_idempotency_key_is_resent(server: FaultServer, sleeps: SleepRecorder) -> None:
    """With an Idempotency-Key the same POST is resent, body and key unchanged."""
    url = seq(server, "reset,echo")
    response = session_with(sleeps).post(url, data=b"order-1",
                                         headers={"Idempotency-Key": "abc"})
    assert response.status_code == 200 and response.content == b"order-1"
    received = server.received(route(url))
    assert [r.body for r in received] == [b"order-1", b"order-1"]
    assert {r.headers["idempotency-key"] for r in received} == {"abc"}


def test_post_marked_idempotent_by_policy_is_resent(
    server: FaultServer, sleeps: SleepRecorder
) -> None:
    """idempotent=True on the policy lets POST retries happen."""
    url = seq(server, "500,ok")
    assert session_with(sleeps, idempotent=True).post(url, data=b"x").status_code == 200
    assert server.hits(route(url)) == 2


@pytest.mark.parametrize(("status", "hits"), [(500, 1), (502, 1), (503, 2), (429, 2)])
def test_post_retries_only_when_the_server_did_not_act(
    server: FaultServer, sleeps: SleepRecorder, status: int, hits: int
) -> None:
    """For POST, 503 and 429 (server did not act) are retried; 500 and 502 are not."""
    url = seq(server, f"{status},ok")
    session_with(sleeps).post(url, data=b"x")
    assert server.hits(route(url)) == hits


def test_post_refused_is_retried(sleeps: SleepRecorder) -> None:
    """A refused POST never reached a server, so it is retried."""
    with pytest.raises(requests.ConnectionError) as caught:
        session_with(sleeps).post(f"http://127.0.0.1:{unused_port()}/pay", data=b"x")
    assert len([e for e in attempt_history(caught.value) if e.kind is EventKind.START]) == 2


def test_generator_body_is_never_resent(server: FaultServer, sleeps: SleepRecorder) -> None:
    """A generator body cannot be replayed: even with an Idempotency-Key there is one request."""

    def chunks() -> Iterator[bytes]:
        yield b"part1-"
        yield b"part2"

    url = seq(server, "503,ok")
    response = session_with(sleeps).post(url, data=chunks(), headers={"Idempotency-Key": "k"})
    assert response.status_code == 503
    assert server.hits(route(url)) == 1
    assert server.received(route(url))[0].body == b"part1-part2"
    give_up = [e for e in response.retry_history if e.kind is EventKind.GIVE_UP]
    assert give_up[0].give_up_reason == "not_replayable"


def test_file_body_is_rewound_for_the_retry(server: FaultServer, sleeps: SleepRecorder) -> None:
    """A seekable file body is sent again from its start."""
    url = seq(server, "503,echo")
    body = io.BytesIO(b"file-content")
    response = session_with(sleeps).put(url, data=body)
    assert response.content == b"file-content"
    assert [r.body for r in server.received(route(url))] == [b"file-content"] * 2


# -- log lines --------------------------------------------------------------------------


def test_log_lines_match_the_seed_character_for_character(
    server: FaultServer, sleeps: SleepRecorder, log_lines: LineCollector
) -> None:
    """Fail once (timeout) then succeed: the six seed lines, exactly."""
    session = session_with(sleeps, timeout=0.3, operation_name="生成艺术照")
    session.get(seq(server, "hang,ok", seconds=5))
    assert log_lines.lines == [
        "[API重试] 生成艺术照 - 第 1 次尝试 (最多 2 次)",
        "[API重试] 生成艺术照 - 第 1 次尝试失败: 网络连接超时",
        "[API重试] 生成艺术照 - 准备重试 (剩余 1 次机会)",
        "[API重试] 生成艺术照 - 等待 1000ms 后重试",
        "[API重试] 生成艺术照 - 第 2 次尝试 (最多 2 次)",
        "[API重试] 生成艺术照 - 第 2 次尝试成功",
    ]


def test_english_log_lines(server: FaultServer, sleeps: SleepRecorder,
                           log_lines: LineCollector) -> None:
    """lang='en' gives the same six steps in English."""
    session_with(sleeps, lang="en", operation_name="render").get(seq(server, "503,ok"))
    assert log_lines.lines == [
        "[API retry] render - attempt 1 (of at most 2)",
        "[API retry] render - attempt 1 failed: server error (HTTP 503)",
        "[API retry] render - retrying (1 left)",
        "[API retry] render - waiting 1000ms before retrying",
        "[API retry] render - attempt 2 (of at most 2)",
        "[API retry] render - attempt 2 succeeded",
    ]


def test_default_operation_name_is_method_host_path_without_query(
    server: FaultServer, log_lines: LineCollector
) -> None:
    """Without operation_name a call is named METHOD host/path, and its query never shows."""
    smart_session().get(server.url("/ok?access_token=SECRET123"))
    assert log_lines.lines[0].startswith(f"[API重试] GET 127.0.0.1:{server.port}/ok - ")
    assert not any("SECRET123" in line for line in log_lines.lines)
    assert all("SECRET123" not in str(r.__dict__) for r in log_lines.records)


# -- legacy code, pickling, configuration ----------------------------------------------------


def test_legacy_except_clauses_catch_exhausted_failures(sleeps: SleepRecorder) -> None:
    """Code written for plain requests keeps working: the exception types are requests' own."""
    try:
        session_with(sleeps).get(f"http://127.0.0.1:{unused_port()}/")
    except requests.exceptions.ConnectionError as exc:
        assert type(exc) is requests.exceptions.ConnectionError
    else:  # pragma: no cover - the port is closed
        pytest.fail("expected ConnectionError")


def test_adapter_pickles_with_its_policy(server: FaultServer) -> None:
    """A pickled (or copied) adapter and session keep the policy and still work."""
    adapter = SmartRetryAdapter(max_retries=3, timeout=7.0, operation_name="生成视频")
    clone = pickle.loads(pickle.dumps(adapter))
    assert clone.policy == adapter.policy
    session = smart_session(max_retries=2, timeout=4.0)
    for copied in (pickle.loads(pickle.dumps(session)), copy.deepcopy(session)):
        assert copied.get_adapter("http://").policy.max_retries == 2  # type: ignore[attr-defined]
        assert copied.get(server.url("/ok")).status_code == 200


def test_closed_adapter_stays_usable_as_requests_does(server: FaultServer) -> None:
    """After session.close() a later call works, as with requests' HTTPAdapter (close()
    stops the retries of calls in flight, not future calls)."""
    session = smart_session()
    session.get(server.url("/ok"))
    session.close()
    assert session.get(server.url("/ok")).status_code == 200
    assert server.hits() == 2


def test_adapter_keywords_and_policy_are_validated() -> None:
    """Unknown keywords, wrong policy types and bad values are refused by name."""
    with pytest.raises(TypeError, match="max_retry"):
        SmartRetryAdapter(max_retry=2)
    with pytest.raises(TypeError, match="policy"):
        SmartRetryAdapter(policy={"max_retries": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sleep"):
        SmartRetryAdapter(sleep=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        SmartRetryAdapter(timeout=-3)


def test_policy_keywords_override_a_given_policy() -> None:
    """policy= plus keywords: the keywords win, the rest comes from the policy."""
    adapter = SmartRetryAdapter(RetryPolicy(max_retries=3, lang="en"), timeout=5.0)
    assert (adapter.policy.max_retries, adapter.policy.lang, adapter.policy.timeout) == \
        (3, "en", 5.0)


def test_urllib3_retry_is_migrated() -> None:
    """HTTPAdapter(max_retries=Retry(...)) users can pass the same Retry object."""
    adapter = SmartRetryAdapter(max_retries=Retry(total=3, backoff_factor=0.5,
                                                  status_forcelist=[502, 503]))
    policy = adapter.policy
    assert policy.max_retries == 3
    assert policy.backoff_base == 0.5
    assert policy.retry_statuses == frozenset({502, 503})


def test_test_mode_skips_real_sleeping(server: FaultServer) -> None:
    """Inside testing() retries happen but the 1 s backoff is not slept."""
    started = time.monotonic()
    with fast_retries():
        assert smart_session().get(seq(server, "503,ok")).status_code == 200
    assert time.monotonic() - started < 0.9


def test_responses_mocks_still_see_the_retry(sleeps: SleepRecorder) -> None:
    """Wiring with the `responses` library: a mocked 503 then 200 is retried once."""
    with responses.RequestsMock() as mocked:
        mocked.add(responses.GET, "https://api.example.test/v1/x", status=503)
        mocked.add(responses.GET, "https://api.example.test/v1/x", json={"ok": True})
        response = session_with(sleeps).get("https://api.example.test/v1/x")
        assert response.json() == {"ok": True}
        assert len(mocked.calls) == 2


def test_a_subclass_classify_response_decides_every_response(sleeps: SleepRecorder) -> None:
    """A subclass's classify_response is asked about every response (a retry_options block
    included), though the base class's steps run without their method frame."""
    asked: list[int] = []

    class BusyMeansRetry(SmartRetryAdapter):
        def classify_response(self, response: requests.Response) -> Classification:
            asked.append(response.status_code)
            if response.text == "busy":
                return Classification(Verdict.SERVER_ERROR, "busy")
            return super().classify_response(response)

    session = requests.Session()
    session.mount("https://", BusyMeansRetry(max_retries=1, sleep=sleeps))
    with responses.RequestsMock() as mocked:
        mocked.add(responses.GET, "https://api.example.test/v1/x", body="busy")
        mocked.add(responses.GET, "https://api.example.test/v1/x", json={"ok": True})
        assert session.get("https://api.example.test/v1/x").json() == {"ok": True}
        with retry_options(max_retries=0):
            mocked.add(responses.GET, "https://api.example.test/v1/x", body="busy")
            assert session.get("https://api.example.test/v1/x").text == "busy"
    assert asked == [200, 200, 200]


# -- properties and concurrency ---------------------------------------------------------------

FAILURES = st.sampled_from(["reset", "500", "502", "503", "504", "429", "hang", "midreset"])


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(FAILURES, min_size=2, max_size=4))
def test_property_23_any_retryable_failures_mean_exactly_two_attempts(
    server: FaultServer, steps: list[str]
) -> None:
    """Any sequence of retryable failures: the server sees exactly 2 attempts, each bounded."""
    timeout = 0.4
    url = seq(server, ",".join(steps), seconds=5, count=100_000)
    sleeps = SleepRecorder()
    started = time.monotonic()
    try:
        session_with(sleeps, timeout=timeout).get(url)
    except requests.RequestException:
        pass
    elapsed = time.monotonic() - started
    assert server.hits(route(url)) == 2
    assert elapsed < 2 * (timeout + 0.75)


def test_threads_share_one_session_and_every_call_is_accounted_for(server: FaultServer) -> None:
    """16 threads × 50 requests with mixed faults: each call returns or raises exactly once."""
    # budget=None: a third of these calls always fail, which a retry budget would (rightly)
    # stop retrying; this test is about the retry rule itself.
    session = smart_session(timeout=2.0, backoff_base=0.0, backoff_max=0.0, budget=None)
    plan = ["ok", "503,ok", "reset,ok", "404", "500", "reset"]
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(index: int) -> None:
        for n in range(50):
            steps = plan[(index + n) % len(plan)]
            try:
                status = str(session.get(seq(server, steps)).status_code)
            except requests.ConnectionError:
                status = "error"
            with lock:
                outcomes[f"{steps}:{status}"] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(outcomes.values()) == 16 * 50
    assert set(outcomes) == {"ok:200", "503,ok:200", "reset,ok:200", "404:404", "500:500",
                             "reset:error"}
    # ok:1, 503,ok:2, reset,ok:2, 404:1, 500:2, reset:2 server-side attempts per call
    per_call = {"ok": 1, "503,ok": 2, "reset,ok": 2, "404": 1, "500": 2, "reset": 2}
    expected = sum(per_call[key.rsplit(":", 1)[0]] * count for key, count in outcomes.items())
    assert server.hits() == expected


# -- regressions found in review ---------------------------------------------------------


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A loopback listener whose accept queue is full: new connections time out (SYN dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    time.sleep(0.2)
    yield port
    for sock in (*fillers, listener):
        sock.close()


def test_connect_timeout_stays_a_safe_connect_timeout(
    unaccepting_port: int, sleeps: SleepRecorder
) -> None:
    """A connect that times out is ConnectTimeout (nothing sent): even a POST is retried."""
    session = session_with(sleeps, timeout=0.5, budget=None)
    with pytest.raises(requests.exceptions.ConnectTimeout) as caught:
        session.post(f"http://127.0.0.1:{unaccepting_port}/pay", data=b"{}")
    failures = [e for e in attempt_history(caught.value) if e.kind is EventKind.FAILURE]
    assert [e.reason for e in failures] == ["ETIMEDOUT", "ETIMEDOUT"]


def test_retry_after_zero_still_backs_off(server: FaultServer, sleeps: SleepRecorder) -> None:
    """Retry-After: 0 is a minimum, not a licence for an immediate retry burst."""
    url = seq(server, "429,ok", retry_after=0)
    assert session_with(sleeps).get(url).status_code == 200
    assert sleeps.waits == [1.0]


def test_a_raising_signer_ends_the_call_with_its_history(
    server: FaultServer, sleeps: SleepRecorder
) -> None:
    """A prepare_attempt hook that raises ends the call: its exception carries the history
    and the statistics close the call instead of leaving it in flight."""

    def sign(request: requests.PreparedRequest, attempt: int) -> requests.PreparedRequest:
        if attempt == 2:
            raise RuntimeError("token refresh failed")
        return request

    adapter = SmartRetryAdapter(prepare_attempt=sign, sleep=sleeps)
    session = requests.Session()
    session.mount("http://", adapter)
    with pytest.raises(RuntimeError, match="token refresh") as caught:
        session.get(seq(server, "503,ok"))
    kinds = [e.kind for e in attempt_history(caught.value)]
    assert kinds[-1] is EventKind.GIVE_UP
    assert attempt_history(caught.value)[-1].give_up_reason == "error"
    assert adapter.stats is not None
    row = next(iter(v for k, v in adapter.stats.snapshot().items() if k != "__total__"))
    assert (row["calls_in_flight"], row["calls_failed"]) == (0, 1)


def test_urllib3_retry_for_any_method_marks_the_operation_idempotent() -> None:
    """Retry(allowed_methods=None) means "any method" in urllib3, and so it does here."""
    adapter = SmartRetryAdapter(max_retries=Retry(total=2, allowed_methods=None))
    assert adapter.policy.idempotent is True


def test_a_classifier_returning_nonsense_falls_back_to_the_status_table(
    server: FaultServer, sleeps: SleepRecorder, log_lines: LineCollector
) -> None:
    """A vendor hook returning something other than a Classification is logged and ignored."""
    session = session_with(sleeps, classify_response=lambda response: "retry please")
    url = seq(server, "503,ok")
    assert session.get(url).status_code == 200
    assert server.hits(route(url)) == 2
    assert any("not a Classification" in line for line in log_lines.lines)


def test_urllib3_timeout_without_a_read_part_keeps_the_policy_deadline(
    server: FaultServer,
) -> None:
    """Timeout(connect=1.0) leaves read at urllib3's default, which means the policy's 0.5 s."""
    from urllib3.util.timeout import Timeout

    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        smart_session(max_retries=0, timeout=0.5).get(server.url("/hang?seconds=5"),
                                                      timeout=Timeout(connect=1.0))
    assert time.monotonic() - started < 1.5 + 0.5



def test_urllib3_timeout_with_a_total_bounds_the_attempt(server: FaultServer) -> None:
    """Timeout(total=0.4) is accepted (no TimeoutStateError) and bounds the whole attempt."""
    from urllib3.util.timeout import Timeout

    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        smart_session(max_retries=0).get(server.url("/hang?seconds=5"),
                                         timeout=Timeout(total=0.4))
    assert time.monotonic() - started < 0.4 + 0.5


# -- what send works out once per policy -------------------------------------------------


def test_call_names_follow_a_replaced_policy(server: FaultServer) -> None:
    """Names are kept per (method, URL) for speed, but a new policy's operation_name shows
    at once, and a subclass's own naming is never cached."""
    adapter = SmartRetryAdapter(log=False)
    session = requests.Session()
    session.mount("http://", adapter)
    first = session.get(server.url("/ok")).retry_history[0].operation  # type: ignore[attr-defined]
    adapter.policy = adapter.policy.replace(operation_name="生成艺术照")
    second = session.get(server.url("/ok")).retry_history[0].operation  # type: ignore[attr-defined]
    assert (first, second) == (f"GET 127.0.0.1:{server.port}/ok", "生成艺术照")

    names = itertools.count()

    class Counting(SmartRetryAdapter):
        def operation_for(self, request: requests.PreparedRequest) -> str:
            return f"call {next(names)}"

    counting = requests.Session()
    counting.mount("http://", Counting(log=False))
    seen = [counting.get(server.url("/ok")).retry_history[0].operation  # type: ignore[attr-defined]
            for _ in range(3)]
    assert seen == ["call 0", "call 1", "call 2"]


def test_cached_call_names_are_bounded(server: FaultServer) -> None:
    """A service that puts ids in its URLs cannot grow the name cache without bound."""
    adapter = SmartRetryAdapter(log=False, stats=False)
    session = requests.Session()
    session.mount("http://", adapter)
    for n in range(700):
        session.get(server.url(f"/ok?id={n}"))
    assert adapter._facts is not None
    assert 0 < len(adapter._facts.names) <= adapter._facts.NAMES


@pytest.mark.parametrize(("name", "value"), [
    ("pool_maxsize", "x"), ("pool_connections", -1), ("pool_maxsize", True), ("pool_block", "yes"),
])
def test_pool_arguments_are_checked_by_name_at_construction(name: str, value: object) -> None:
    """A bad pool argument fails at construction with its name and value, not at the
    first request."""
    with pytest.raises(ValueError, match=f"{name} must be .*got {value!r}"):
        SmartRetryAdapter(**{name: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=name):
        smart_session(**{name: value})  # type: ignore[arg-type]


def test_positional_pool_arguments_and_max_retries_as_httpadapter() -> None:
    """HTTPAdapter's positional (pool_connections, pool_maxsize, max_retries, pool_block)
    work, keywords keep working, and max_retries reads as a urllib3 Retry of the policy."""
    adapter = SmartRetryAdapter(20, 50)
    assert (adapter._pool_connections, adapter._pool_maxsize) == (20, 50)
    assert adapter.poolmanager.connection_pool_kw["maxsize"] == 50
    adapter = SmartRetryAdapter(5, 6, 3, True)
    assert adapter.policy.max_retries == 3 and adapter._pool_block is True
    assert SmartRetryAdapter(max_retries=3).max_retries.total == 3
    assert SmartRetryAdapter(max_retries=0).max_retries.total == 0
    retry = Retry(total=2, status_forcelist=[503])
    assert SmartRetryAdapter(max_retries=retry).max_retries is retry
    assert SmartRetryAdapter(RetryPolicy(max_retries=4)).max_retries.total == 4
    with pytest.raises(TypeError, match="max_retries"):
        SmartRetryAdapter(1, 2, 3, max_retries=4)
    with pytest.raises(TypeError, match="positional"):
        SmartRetryAdapter(1, 2, 3, False, 5)
    with pytest.raises(AttributeError, match="max_retries"):
        adapter.max_retries = Retry(5)  # type: ignore[misc]
    # Turning retries off after construction, as HTTPAdapter would honour it, is refused
    # too (the policy would go on retrying): not silently ignored.
    for off in (Retry(0), Retry(total=0, read=False), 0):
        with pytest.raises(AttributeError, match="max_retries"):
            adapter.max_retries = off  # type: ignore[misc,assignment]
    clone = pickle.loads(pickle.dumps(SmartRetryAdapter(max_retries=3)))
    assert clone.max_retries.total == 3 and clone.policy.max_retries == 3


def test_a_retried_call_redacts_its_url_once(
    server: FaultServer, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error text of a failed attempt (503 ... for <url>) reuses the call's redacted
    URL instead of redacting it again; an attempt a prepare_attempt hook sends elsewhere
    names that URL, redacted."""
    redacted: list[str] = []
    real = adapter_module.redact_url
    monkeypatch.setattr(adapter_module, "redact_url",
                        lambda url: redacted.append(url) or real(url))
    session = session_with(sleeps)
    url = server.url("/seq/same?steps=503,ok,503,ok&api_key=s3cret")
    for _ in range(2):
        response = session.get(url)
        assert response.status_code == 200
        failure = response.retry_history[1]  # type: ignore[attr-defined]
        assert "s3cret" not in str(failure.error) and "api_key=" in str(failure.error)
    assert redacted == [url]  # naming the first call; every error text reused it

    backup = server.url("/seq/backup?steps=503,503&token=hidden")

    class FailingOver(SmartRetryAdapter):
        def prepare_attempt(self, request: requests.PreparedRequest,
                            attempt: int) -> requests.PreparedRequest:
            copy = request.copy()
            copy.url = backup
            return copy

    other = requests.Session()
    other.mount("http://", FailingOver(max_retries=1, sleep=sleeps))
    response = other.get(server.url("/ok?token=primary"))
    assert response.status_code == 503
    error = str(response.retry_history[1].error)  # type: ignore[attr-defined]
    assert "/seq/backup" in error and "hidden" not in error


@pytest.mark.parametrize("target", ["SmartRetryAdapter", "a subclass made before"])
def test_classify_response_patched_on_a_class_after_it_was_made_decides(
        target: str, server: FaultServer, sleeps: SleepRecorder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``mock.patch.object(SmartRetryAdapter, "classify_response", …)`` (or on a subclass
    already made) is asked about every response, as ``self.classify_response`` always was."""
    class Made(SmartRetryAdapter):
        pass

    cls = SmartRetryAdapter if target == "SmartRetryAdapter" else Made
    asked: list[int] = []

    def busy(self: SmartRetryAdapter, response: requests.Response) -> Classification:
        asked.append(response.status_code)
        return Classification(Verdict.SERVER_ERROR, "busy")

    monkeypatch.setattr(cls, "classify_response", busy)
    session = requests.Session()
    session.mount("http://", Made(max_retries=1, sleep=sleeps))
    response = session.get(server.url("/ok"))
    assert asked == [200, 200] and response.status_code == 200
    assert server.hits("/ok") == 2
