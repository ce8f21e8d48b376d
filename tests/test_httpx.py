"""requests_smartretry.httpx: the classification of httpx's errors, what only httpx has
(streams, plain clients, mounts), and the official Ark SDK against a local Ark fake."""

from __future__ import annotations

import errno
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

import pytest

from requests_smartretry import AttemptDeadlineExceeded as CoreDeadlineExceeded
from requests_smartretry import EventKind, RetryPolicy, Verdict, attempt_history
from requests_smartretry.deadline import retry_scope
from requests_smartretry.faultserver import FaultServer, unused_port

from .conftest import LineCollector, SleepRecorder
from .fakes.ark import FakeArk, ark_error

httpx = pytest.importorskip("httpx")
from requests_smartretry.httpx import (  # noqa: E402 - needs httpx first
    AttemptDeadlineExceeded,
    SmartRetryTransport,
    classify_httpx_exception,
    smart_client,
    video_client,
)

API_KEY = "ark-fake-key"


def _caused(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


# -- the classification table -------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "verdict", "reason", "sent"),
    [
        (_caused(httpx.ConnectError("refused"), ConnectionRefusedError(errno.ECONNREFUSED, "x")),
         Verdict.NETWORK, "ECONNREFUSED", False),
        (_caused(httpx.ConnectError("dns"), socket.gaierror(socket.EAI_NONAME, "x")),
         Verdict.NETWORK, "ENOTFOUND", False),
        # A reset during the TLS handshake: the errno says reset, the phase says nothing sent.
        (_caused(httpx.ConnectError("tls"), ConnectionResetError(errno.ECONNRESET, "x")),
         Verdict.NETWORK, "ECONNRESET", False),
        (_caused(httpx.ConnectError("tls"), ssl.SSLCertVerificationError("bad cert")),
         Verdict.PERMANENT, "TLS verification failed", False),
        (httpx.ConnectTimeout("slow"), Verdict.NETWORK, "ETIMEDOUT", False),
        (httpx.PoolTimeout("busy"), Verdict.TIMEOUT, "pool_timeout", False),
        (_caused(httpx.ReadError("reset"), ConnectionResetError(errno.ECONNRESET, "x")),
         Verdict.NETWORK, "ECONNRESET", True),
        # ETIMEDOUT on an established connection is after sending (issue 13's first point).
        (_caused(httpx.ReadError("rto"), TimeoutError(errno.ETIMEDOUT, "x")),
         Verdict.NETWORK, "ETIMEDOUT", True),
        (httpx.WriteError("broken pipe"), Verdict.NETWORK, "ECONNRESET", True),
        (httpx.RemoteProtocolError("server disconnected"), Verdict.NETWORK, "ECONNRESET", True),
        (httpx.ReadTimeout("slow"), Verdict.TIMEOUT, "read_timeout", True),
        (httpx.WriteTimeout("slow"), Verdict.TIMEOUT, "write_timeout", True),
        (httpx.LocalProtocolError("bad header"), Verdict.PERMANENT, "invalid request", False),
        (httpx.UnsupportedProtocol("ftp"), Verdict.PERMANENT, "invalid request", False),
        (ValueError("the caller's own"), Verdict.BUSINESS, "ValueError", True),
    ],
)
def test_httpx_errors_are_classified_by_phase(
    error: BaseException, verdict: Verdict, reason: str, sent: bool
) -> None:
    """Each httpx error gets its verdict, the errno's reason when there is one, and
    "nothing sent" exactly for the errors httpx raises before writing the request."""
    got = classify_httpx_exception(error)
    assert (got.verdict, got.reason, got.sent) == (verdict, reason, sent)


def test_the_core_package_never_imports_httpx() -> None:
    """Importing the package (adapter, presets, callable API) leaves httpx unimported."""
    code = "import sys, requests_smartretry; sys.exit('httpx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_deadline_error_is_both_httpx_and_ours() -> None:
    """A cut attempt raises what httpx callers and users of the package both catch."""
    assert issubclass(AttemptDeadlineExceeded, httpx.TimeoutException)
    assert issubclass(AttemptDeadlineExceeded, CoreDeadlineExceeded)


# -- what only httpx has ---------------------------------------------------------------------


def test_a_streamed_body_is_not_held_to_the_attempt_deadline(server: FaultServer) -> None:
    """``client.stream(...)``: the deadline (0.3 s) covers up to the headers; a body that
    takes 0.6 s to drip is read in full, each read bounded by the per-read timeout."""
    client = smart_client(timeout=0.3, max_retries=0)
    with client.stream("GET", server.url("/drip?interval=0.05&count=12")) as response:
        assert response.read() == b"x" * 12


def test_a_plain_httpx_client_gets_the_retries_too(
    server: FaultServer, sleeps: SleepRecorder
) -> None:
    """Mounted on a plain ``httpx.Client``, the transport retries a reset GET."""
    client = httpx.Client(transport=SmartRetryTransport(sleep=sleeps))
    assert client.get(server.url("/seq/plain?steps=reset,ok")).status_code == 200
    assert server.hits("/seq/plain") == 2


def test_a_connection_cut_at_the_deadline_is_not_reused(server: FaultServer) -> None:
    """After an attempt was cut, the next call on the same client gets a working
    connection (the shut socket never goes back to the pool alive)."""
    client = smart_client(timeout=0.3, max_retries=0)
    with pytest.raises(AttemptDeadlineExceeded):
        client.get(server.url("/drip?interval=0.05&count=100"))
    assert client.get(server.url("/ok")).text == "ok"


def test_a_read_timeout_at_the_deadline_is_the_deadline_when_the_watchdog_is_late(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung server, and a watchdog that never gets to cut (as on a loaded machine): httpx's
    read timeout, cut to the attempt, ends it at the deadline, and the failure reads
    "deadline" with the deadline's error, as when the watchdog cuts first."""
    import requests_smartretry.httpx as smart_httpx

    class LateWatch(smart_httpx.Watch):
        def _fire(self, conn: object) -> None:
            pass

    monkeypatch.setattr(smart_httpx, "Watch", LateWatch)
    client = smart_client(timeout=0.3, max_retries=0)
    with pytest.raises(AttemptDeadlineExceeded) as caught:
        client.get(server.url("/hang?seconds=5"))
    failures = [e for e in attempt_history(caught.value) if e.kind is EventKind.FAILURE]
    assert [e.reason for e in failures] == ["deadline"]


def test_no_time_left_in_an_enclosing_deadline_sends_nothing(server: FaultServer) -> None:
    """Inside a retrying call whose deadline has passed, the attempt is not started."""
    client = smart_client()
    with retry_scope(time.monotonic()), pytest.raises(AttemptDeadlineExceeded):
        client.get(server.url("/ok"))
    assert server.hits() == 0


def test_closing_the_client_during_the_backoff_sends_nothing_more(server: FaultServer) -> None:
    """``client.close()`` during the wait before a retry: the call ends with the 503."""
    holder: dict[str, Any] = {}
    client = smart_client(sleep=lambda seconds: holder["client"].close())
    holder["client"] = client
    assert client.get(server.url("/seq/close?steps=503,ok")).status_code == 503
    assert server.hits("/seq/close") == 1


def test_closing_the_client_as_the_retry_starts_sends_nothing_more(
    server: FaultServer, sleeps: SleepRecorder
) -> None:
    """``client.close()`` after the backoff, as the retry starts (a START hook): the retry
    is refused, not sent on a pool that httpcore would reopen, as the adapter refuses."""
    holder: dict[str, Any] = {}

    def close_at_the_retry(event: Any) -> None:
        if event.kind is EventKind.START and event.attempt == 2:
            holder["client"].close()

    client = smart_client(sleep=sleeps, hooks=[close_at_the_retry])
    holder["client"] = client
    with pytest.raises(RuntimeError, match="closed"):
        client.get(server.url("/seq/close-late?steps=503,ok"))
    assert server.hits("/seq/close-late") == 1


def test_each_attempt_is_prepared_afresh(server: FaultServer, sleeps: SleepRecorder) -> None:
    """A ``prepare_attempt`` hook (a signer) runs on a copy for every attempt."""
    def stamp(request: Any, attempt: int) -> Any:
        request.headers["X-Attempt"] = str(attempt)
        return request

    client = smart_client(policy=RetryPolicy(prepare_attempt=stamp), sleep=sleeps)
    assert client.get(server.url("/seq/sign?steps=503,ok")).status_code == 200
    assert [r.headers["x-attempt"] for r in server.received("/seq/sign")] == ["1", "2"]


def test_a_transport_without_sockets_is_still_retried(sleeps: SleepRecorder) -> None:
    """An inner ``MockTransport`` (no httpcore pool, so no socket to cut) is retried."""
    answers = iter([httpx.ConnectError("refused"), httpx.Response(200, text="ok")])

    def reply(request: Any) -> Any:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    transport = SmartRetryTransport(transport=httpx.MockTransport(reply), sleep=sleeps)
    assert transport.cuts_sockets is False
    client = httpx.Client(transport=transport)
    assert client.post("http://127.0.0.1:9/x", content=b"order").text == "ok"
    assert sleeps.waits == [1.0]


def test_secrets_in_the_url_stay_out_of_events() -> None:
    """A refused request with an ``access_token`` in its query: no event carries it."""
    client = smart_client(max_retries=0)
    url = f"http://127.0.0.1:{unused_port()}/x?access_token=s3cr3t-value"
    with pytest.raises(httpx.ConnectError) as caught:
        client.get(url)
    events = attempt_history(caught.value)
    assert events and all("s3cr3t" not in (e.url or "") for e in events)
    assert "s3cr3t" not in str(caught.value)


def test_bad_configuration_is_refused_by_name() -> None:
    """Unknown keywords, a transport that is not one and a blank API key are refused."""
    with pytest.raises(TypeError, match=r"unexpected keyword.*bogus"):
        SmartRetryTransport(bogus=1)
    with pytest.raises(TypeError, match=r"transport must be an httpx\.BaseTransport"):
        SmartRetryTransport(transport="http://x")
    with pytest.raises(ValueError, match="api_key"):
        video_client(api_key="  ")
    with pytest.raises(TypeError, match="not policy="):
        video_client(policy=RetryPolicy())


# -- the Ark preset, with and without the official SDK ---------------------------------------


def test_video_client_sends_the_key_to_its_endpoint_only(server: FaultServer) -> None:
    """Bearer auth on the Ark endpoint's origin; a request elsewhere carries no key."""
    with FakeArk(api_key=API_KEY) as fake:
        client = video_client(api_key=API_KEY, endpoint=fake.endpoint)
        created = client.post("/contents/generations/tasks", json={"model": "m", "content": []})
        assert created.status_code == 200 and created.json()["id"] in fake.tasks
        client.get(server.url("/ok"))
    assert "authorization" not in server.received("/ok")[0].headers


ark = pytest.importorskip("volcenginesdkarkruntime")
ark_errors = pytest.importorskip("volcenginesdkarkruntime._exceptions")

_CONTENT = [{"type": "text", "text": "一只猫在弹钢琴"}]


def _sdk(fake: FakeArk, **options: Any) -> Any:
    options.setdefault("backoff_base", 0.01)
    client = video_client(api_key=API_KEY, endpoint=fake.endpoint, **options)
    return ark.Ark(api_key=API_KEY, base_url=fake.endpoint, http_client=client, max_retries=0)


def test_the_ark_sdk_retries_a_rate_limit_through_the_transport(
    log_lines: LineCollector,
) -> None:
    """The official SDK with ``max_retries=0``: a 429 ``RateLimitExceeded`` then success is
    two requests, the seed's six log lines and one retry in the statistics."""
    with FakeArk(api_key=API_KEY) as fake:
        fake.script("create", (429, ark_error("RateLimitExceeded.EndpointRPMExceeded")))
        sdk = _sdk(fake)
        task = sdk.content_generation.tasks.create(model="doubao-seedance", content=_CONTENT)
        assert task.id in fake.tasks
        assert fake.hits() == 2
        # Our retry repeats the SDK's request: the server sees one client request id.
        assert len(set(fake.client_request_ids())) == 1
    assert [line for line in log_lines.lines if line.startswith("[API")] == [
        "[API重试] 生成视频 - 第 1 次尝试 (最多 2 次)",
        "[API重试] 生成视频 - 第 1 次尝试失败: 请求过于频繁 "
        "(HTTP 429 RateLimitExceeded.EndpointRPMExceeded)",
        "[API重试] 生成视频 - 准备重试 (剩余 1 次机会)",
        "[API重试] 生成视频 - 等待 10ms 后重试",
        "[API重试] 生成视频 - 第 2 次尝试 (最多 2 次)",
        "[API重试] 生成视频 - 第 2 次尝试成功",
    ]
    counts = sdk._client.smart_transport.stats.snapshot()["生成视频"]
    assert (counts["calls"], counts["attempts"], counts["retries"]) == (1, 2, 1)
    assert counts["attempts_failed_by_verdict"] == {"rate_limit": 1}


def test_the_ark_sdk_gets_an_invalid_parameter_after_one_request() -> None:
    """A 400 ``InvalidParameter`` is not retried: one request, the SDK's BadRequest error."""
    with FakeArk(api_key=API_KEY) as fake:
        fake.script("create", (400, ark_error("InvalidParameter", "model is not valid")))
        sdk = _sdk(fake)
        with pytest.raises(ark_errors.ArkBadRequestError, match="InvalidParameter"):
            sdk.content_generation.tasks.create(model="no-such-model", content=_CONTENT)
        assert fake.hits() == 1
        counts = sdk._client.smart_transport.stats.snapshot()["生成视频"]
        assert counts["calls_failed_by_reason"] == {"not_retryable": 1}


def test_the_ark_sdk_reports_a_cut_attempt_as_its_timeout() -> None:
    """A hung Ark server is cut at the attempt deadline, and the SDK raises its own
    timeout error (our deadline error is an ``httpx.TimeoutException``)."""
    with FakeArk(api_key=API_KEY) as fake:
        fake.script("query", ("hang", 5))
        sdk = _sdk(fake, timeout=0.3, max_retries=0)
        with pytest.raises(ark_errors.ArkAPITimeoutError):
            sdk.content_generation.tasks.get(task_id="cgt-0001")
        assert fake.hits() == 1


def test_every_ark_attempt_failure_is_an_event() -> None:
    """A query that resets once, then succeeds: the FAILURE event says ECONNRESET."""
    seen: list[Any] = []
    with FakeArk(api_key=API_KEY) as fake:
        created = _sdk(fake).content_generation.tasks.create(model="m", content=_CONTENT)
        fake.script("query", "reset")
        sdk = _sdk(fake, hooks=[seen.append])
        assert sdk.content_generation.tasks.get(task_id=created.id).status == "succeeded"
    failures = [e for e in seen if e.kind is EventKind.FAILURE]
    assert [e.reason for e in failures] == ["ECONNRESET"]


def test_a_wait_for_a_busy_pool_ends_at_the_deadline_and_sends_nothing(
    server: FaultServer, sleeps: SleepRecorder
) -> None:
    """The only pooled connection is held by a streamed response: a POST waiting for it
    gives up at its 0.3 s deadline, nothing sent, so it is retried safely, and raises
    ``PoolTimeout`` when the pool stays busy."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    client = smart_client(timeout=0.3, sleep=sleeps, limits=limits)
    with client.stream("GET", server.url("/drip?interval=0.05&count=40")):
        started = time.monotonic()
        with pytest.raises(httpx.PoolTimeout) as caught:
            client.post(server.url("/seq/pooled?steps=ok"), content=b"order")
        took = time.monotonic() - started
    failures = [e for e in attempt_history(caught.value) if e.kind is EventKind.FAILURE]
    assert [(e.reason, e.verdict) for e in failures] == [("pool_timeout", Verdict.TIMEOUT)] * 2
    assert sleeps.waits == [1.0]
    assert server.hits("/seq/pooled") == 0
    assert 0.6 <= took < 0.6 + 0.5  # two attempts of 0.3 s; generous under load


def test_stats_of_reads_a_smart_client_and_its_transport(server: FaultServer) -> None:
    """``stats_of`` gives the same typed ``Stats`` for a smart client and for its transport,
    and refuses what counts nothing."""
    from requests_smartretry import stats_of

    client = smart_client(operation_name="计数", log=False)
    client.get(server.url("/ok"))
    assert stats_of(client) is stats_of(client.smart_transport)
    assert stats_of(client).snapshot()["计数"]["calls"] == 1
    with pytest.raises(ValueError, match="counts nothing"):
        stats_of(smart_client(stats=False))
    with pytest.raises(TypeError, match="stats_of takes"):
        stats_of(object())  # type: ignore[arg-type]


def test_the_callable_api_keeps_the_transports_unsafe_verdict(server: FaultServer) -> None:
    """A POST that the transport would not repeat (the server read it, then reset the body
    mid-way, read inside the attempt or streamed later) is not repeated by
    execute_with_smart_retry around it either; a GET still is."""
    from requests_smartretry import execute_with_smart_retry, testing

    client = smart_client(max_retries=1)
    url = server.url("/midreset?count=1000")

    def read(method: str) -> bytes:
        return bytes(client.request(method, url, content=b"pay").content)

    def stream(method: str) -> bytes:
        with client.stream(method, url, content=b"pay") as response:
            return bytes(response.read())

    with testing.fast_retries():
        for call, method in ((read, "POST"), (stream, "POST"), (read, "GET"),
                             (stream, "GET")):
            before = server.hits("/midreset")
            with pytest.raises(httpx.ReadError):
                execute_with_smart_retry(lambda c=call, m=method: c(m), max_retries=1)
            assert server.hits("/midreset") - before == (1 if method == "POST" else 2)


def test_a_call_names_its_url_once_and_redacts_it_once(
    server: FaultServer, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call names cached by URL are found by the URL's parsed parts (an httpx.URL key
    would rebuild its text to hash it and parse the other URL again to compare), and a failed
    attempt's error text reuses the call's redacted URL."""
    import requests_smartretry.httpx as smart_httpx

    compared: list[object] = []
    real_eq = httpx.URL.__eq__
    monkeypatch.setattr(httpx.URL, "__eq__",
                        lambda url, other: compared.append(other) or real_eq(url, other))
    redacted: list[str] = []
    real_redact = smart_httpx.redact_url
    monkeypatch.setattr(smart_httpx, "redact_url",
                        lambda url: redacted.append(url) or real_redact(url))
    events: list[Any] = []
    client = httpx.Client(transport=SmartRetryTransport(sleep=sleeps, hooks=[events.append]))
    url = server.url("/seq/named?steps=503,ok,503,ok,ok&token=s3cret")
    for _ in range(2):
        assert client.get(url).status_code == 200
    errors = [str(e.error) for e in events if e.kind is EventKind.FAILURE]
    assert len(errors) == 2
    assert all("s3cret" not in error and "token=" in error for error in errors)
    assert client.get(url).status_code == 200
    assert redacted == [url]  # naming the first call only
    assert compared == []


def test_a_url_string_is_merged_once_per_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """A smart client parses a URL string once while its base_url stays the same (httpx
    parses it for every request); a new base_url merges afresh, an httpx.URL goes through
    httpx as it is, and no two requests share a URL object."""
    import httpx._urls

    parsed: list[str] = []
    real_urlparse = httpx._urls.urlparse
    monkeypatch.setattr(httpx._urls, "urlparse", lambda url="", **kwargs: (
        parsed.append(url) or real_urlparse(url, **kwargs)))
    sent: list[Any] = []
    client = smart_client(
        transport=httpx.MockTransport(lambda request: sent.append(request)
                                      or httpx.Response(200)),
        base_url="https://api.example.com/v1")
    for _ in range(3):
        client.get("/tasks?id=1")
    assert parsed.count("/tasks?id=1") == 1
    assert [str(r.url) for r in sent] == ["https://api.example.com/v1/tasks?id=1"] * 3
    assert len({id(r.url) for r in sent}) == 3
    client.base_url = "https://backup.example.com/v2"
    client.get("/tasks?id=1")
    assert str(sent[-1].url) == "https://backup.example.com/v2/tasks?id=1"
    client.get(httpx.URL("https://other.example.com/x"))
    assert str(sent[-1].url) == "https://other.example.com/x"
