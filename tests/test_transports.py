"""The adapter's behaviour, run against the three transports: the requests adapter, the
httpx transport and the asyncio httpx transport (one parametrized fixture, one test each,
a real local server counting hits)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest
import requests

from requests_smartretry import EventKind, Stats, attempt_history, smart_session
from requests_smartretry.faultserver import FaultServer, unused_port
from requests_smartretry.redact import path_template

from .conftest import LineCollector, SleepRecorder
from .test_adapter import route, seq

httpx = pytest.importorskip("httpx")
from requests_smartretry.httpx import smart_async_client, smart_client  # noqa: E402


@dataclass
class Client:
    """One transport, seen the same way whichever it is."""

    kind: str
    send: Callable[..., Any]  # send(method, url, body=None, headers=None) -> response
    stats: Stats
    #: What the transport raises for a transport failure and for a timeout.
    network_error: tuple[type[BaseException], ...]
    timeout_error: type[BaseException]
    #: parallel(workers, calls, url): ``calls`` GETs of ``url`` in each of ``workers``
    #: threads (the sync clients) or tasks (the async one), sharing the client; returns
    #: what went wrong (an exception, or a response that is not a 200).
    parallel: Callable[[int, int, str], list[Any]]


def _requests_client(**options: Any) -> Client:
    session = smart_session(**options)

    def send(method: str, url: str, body: Any = None,
             headers: Optional[dict[str, str]] = None) -> Any:
        return session.request(method, url, data=body, headers=headers)

    adapter: Any = session.get_adapter("http://")
    return Client("requests", send, adapter.stats,
                  (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError),
                  requests.exceptions.Timeout, lambda w, c, u: _in_threads(send, w, c, u))


def _in_threads(send: Callable[..., Any], workers: int, calls: int, url: str) -> list[Any]:
    wrong: list[Any] = []

    def run() -> None:
        for _ in range(calls):
            try:
                response = send("GET", url)
            except BaseException as exc:  # reported below, with the thread's others
                wrong.append(exc)
            else:
                if response.status_code != 200:
                    wrong.append(response)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return wrong


def _httpx_client(**options: Any) -> Client:
    client = smart_client(**options)

    def send(method: str, url: str, body: Any = None,
             headers: Optional[dict[str, str]] = None) -> Any:
        return client.request(method, url, content=body, headers=headers)

    stats = client.smart_transport.stats
    assert stats is not None
    return Client("httpx", send, stats, (httpx.TransportError,), httpx.TimeoutException,
                  lambda w, c, u: _in_threads(send, w, c, u))


async def _async_body(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _async_client(**options: Any) -> Client:
    """The asyncio transport, each call run to completion on the client's own loop (the
    fixture's sends are synchronous; ``parallel`` runs tasks on that loop)."""
    loop = asyncio.new_event_loop()
    client = smart_async_client(**options)

    def send(method: str, url: str, body: Any = None,
             headers: Optional[dict[str, str]] = None) -> Any:
        if isinstance(body, Iterator):  # a generator body: the async client's kind of it
            body = _async_body(body)
        return loop.run_until_complete(client.request(method, url, content=body,
                                                      headers=headers))

    def parallel(workers: int, calls: int, url: str) -> list[Any]:
        wrong: list[Any] = []

        async def run() -> None:
            for _ in range(calls):
                try:
                    response = await client.get(url)
                except Exception as exc:
                    wrong.append(exc)
                else:
                    if response.status_code != 200:
                        wrong.append(response)

        async def all_of_them() -> None:
            await asyncio.gather(*(run() for _ in range(workers)))

        loop.run_until_complete(all_of_them())
        return wrong

    stats = client.smart_transport.stats
    assert stats is not None
    made = Client("httpx-async", send, stats, (httpx.TransportError,),
                  httpx.TimeoutException, parallel)
    _opened.append((loop, client))
    return made


_opened: list[tuple[asyncio.AbstractEventLoop, Any]] = []


MakeClient = Callable[..., Client]


_BUILDERS = {"requests": _requests_client, "httpx": _httpx_client,
             "httpx-async": _async_client}


@pytest.fixture(params=list(_BUILDERS))
def make_client(request: pytest.FixtureRequest, sleeps: SleepRecorder) -> Iterator[MakeClient]:
    """Builds a client of the parametrized transport whose backoff waits are recorded."""
    build = _BUILDERS[request.param]

    def make(**options: Any) -> Client:
        options.setdefault("sleep", sleeps)
        return build(**options)

    yield make
    while _opened:
        loop, client = _opened.pop()
        loop.run_until_complete(client.aclose())
        loop.close()


# -- the seed's scenarios --------------------------------------------------------------


def test_a_reset_is_retried_and_the_retry_succeeds(
    server: FaultServer, make_client: MakeClient, sleeps: SleepRecorder
) -> None:
    """A connection reset after the server read a GET is retried once, after 1 s."""
    url = seq(server, "reset,ok")
    assert make_client().send("GET", url).status_code == 200
    assert server.hits(route(url)) == 2
    assert sleeps.waits == [1.0]


def test_a_reset_in_the_middle_of_the_body_is_retried(
    server: FaultServer, make_client: MakeClient
) -> None:
    """A reset halfway through the body fails the attempt (the body is read inside it)."""
    url = seq(server, "midreset,ok", count=200_000)
    response = make_client().send("GET", url)
    assert response.status_code == 200 and response.text == "ok"
    assert server.hits(route(url)) == 2


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_is_honoured(
    server: FaultServer, make_client: MakeClient, sleeps: SleepRecorder, status: int
) -> None:
    """A 503 or 429 with ``Retry-After: 2`` waits the server's 2 s, then succeeds."""
    url = seq(server, f"{status},ok", retry_after=2)
    assert make_client(backoff_max=5.0).send("GET", url).status_code == 200
    assert server.hits(route(url)) == 2
    assert sleeps.waits == [2.0]


def test_retry_after_above_the_cap_returns_the_response_at_once(
    server: FaultServer, make_client: MakeClient, sleeps: SleepRecorder
) -> None:
    """A 429 asking for 60 s (cap 5 s) is returned at once, not slept through."""
    url = seq(server, "429,ok", retry_after=60)
    assert make_client().send("GET", url).status_code == 429
    assert server.hits(route(url)) == 1
    assert sleeps.waits == []


def test_a_404_is_returned_without_a_retry(
    server: FaultServer, make_client: MakeClient, sleeps: SleepRecorder
) -> None:
    """A 404 is a client error: one request, the response returned."""
    url = seq(server, "404,ok")
    assert make_client().send("GET", url).status_code == 404
    assert server.hits(route(url)) == 1


def test_exhausted_server_errors_return_the_last_response(
    server: FaultServer, make_client: MakeClient
) -> None:
    """Every attempt a 500: the last response comes back, as plain clients return it."""
    url = seq(server, "500")
    assert make_client(max_retries=2).send("GET", url).status_code == 500
    assert server.hits(route(url)) == 3


def test_a_refused_connection_is_retried_then_raised(
    make_client: MakeClient, sleeps: SleepRecorder
) -> None:
    """A refused port: two attempts (ECONNREFUSED), then the transport's connection error."""
    client = make_client()
    with pytest.raises(client.network_error) as caught:
        client.send("GET", f"http://127.0.0.1:{unused_port()}/x")
    failures = [e for e in attempt_history(caught.value) if e.kind is EventKind.FAILURE]
    assert [e.reason for e in failures] == ["ECONNREFUSED", "ECONNREFUSED"]
    assert sleeps.waits == [1.0]


# -- POST safety and the never-twice cells that apply to both transports ---------------------


def _generator() -> Iterator[bytes]:
    yield b"part one, "
    yield b"part two"


@pytest.mark.parametrize("phase", ["reset", "midreset"])
@pytest.mark.parametrize(
    ("method", "body", "key", "executions"),
    [
        ("GET", None, False, 2),
        ("POST", b"payload", False, 1),  # may have reached the server: never twice
        ("POST", b"payload", True, 2),  # Idempotency-Key: safe to repeat
        ("POST", "generator", True, 1),  # a half-used generator is never resent
    ],
)
def test_a_request_the_server_read_is_repeated_only_when_safe(
    server: FaultServer, make_client: MakeClient, method: str, body: Any, key: bool,
    executions: int, phase: str,
) -> None:
    """The server read the request, then reset (before answering, or in the middle of the
    body): repeated only for an idempotent request with a replayable body."""
    url = seq(server, f"{phase},ok", count=200_000)
    headers = {"Idempotency-Key": "order-1"} if key else None
    content = _generator() if body == "generator" else body
    client = make_client()
    try:
        response = client.send(method, url, content, headers)
    except client.network_error as exc:
        assert executions == 1
        give_up = [e for e in attempt_history(exc) if e.kind is EventKind.GIVE_UP]
        assert give_up[0].give_up_reason in ("unsafe", "not_replayable")
    else:
        assert response.status_code == 200
    assert server.hits(route(url)) == executions


@pytest.mark.parametrize(("status", "executions"), [(503, 2), (500, 1)])
def test_a_post_answered_with_a_server_error_is_repeated_only_if_nothing_was_done(
    server: FaultServer, make_client: MakeClient, status: int, executions: int
) -> None:
    """A 503 says the server did not act (a plain POST is retried); a 500 may follow a side
    effect (the POST gets it back after one request)."""
    url = seq(server, f"{status},ok")
    response = make_client().send("POST", url, b"payload")
    assert response.status_code == (200 if executions == 2 else status)
    assert server.hits(route(url)) == executions


def test_a_generator_body_is_resent_when_the_connection_was_refused(
    make_client: MakeClient, sleeps: SleepRecorder
) -> None:
    """Refused before anything was sent: the untouched generator may go on the retry."""
    client = make_client()
    with pytest.raises(client.network_error) as caught:
        client.send("POST", f"http://127.0.0.1:{unused_port()}/x", _generator())
    failures = [e for e in attempt_history(caught.value) if e.kind is EventKind.FAILURE]
    assert len(failures) == 2 and sleeps.waits == [1.0]


# -- the attempt deadline --------------------------------------------------------------------

# The cut lands within a few milliseconds of the deadline on an idle machine (measured:
# see the note of issue 20); under the suite's load (2 cores, parallel sessions) the bound
# allowed here is 250 ms, still far below what the drip would take (5 s).
_LOADED_OVERSHOOT = 0.25


@pytest.mark.parametrize("scenario", ["drip?interval=0.05&count=100", "hang?seconds=5"])
def test_a_dripping_or_hung_server_is_cut_at_the_deadline(
    server: FaultServer, make_client: MakeClient, scenario: str
) -> None:
    """A body dripping a byte every 50 ms (or no answer at all) cannot hold an attempt past
    its 0.3 s deadline: the transport's timeout error, soon after the deadline."""
    client = make_client(timeout=0.3, max_retries=0)
    started = time.monotonic()
    with pytest.raises(client.timeout_error) as caught:
        client.send("GET", server.url(f"/{scenario}"))
    took = time.monotonic() - started
    failure = next(e for e in attempt_history(caught.value) if e.kind is EventKind.FAILURE)
    assert failure.reason == "deadline"
    assert failure.elapsed is not None and 0.3 <= failure.elapsed < 0.3 + _LOADED_OVERSHOOT
    assert took < 0.3 + _LOADED_OVERSHOOT + 0.25  # the client's own work around it


# -- log lines and statistics -----------------------------------------------------------------


def test_both_transports_write_the_seeds_log_lines(
    server: FaultServer, make_client: MakeClient, log_lines: LineCollector
) -> None:
    """Fail once (a reset) then succeed: the six seed lines, the same on both transports."""
    make_client(operation_name="生成艺术照").send("GET", seq(server, "reset,ok"))
    assert log_lines.lines == [
        "[API重试] 生成艺术照 - 第 1 次尝试 (最多 2 次)",
        "[API重试] 生成艺术照 - 第 1 次尝试失败: 连接被重置 (ECONNRESET)",
        "[API重试] 生成艺术照 - 准备重试 (剩余 1 次机会)",
        "[API重试] 生成艺术照 - 等待 1000ms 后重试",
        "[API重试] 生成艺术照 - 第 2 次尝试 (最多 2 次)",
        "[API重试] 生成艺术照 - 第 2 次尝试成功",
    ]


def test_statistics_count_calls_attempts_and_retries(
    server: FaultServer, make_client: MakeClient
) -> None:
    """One call that retried once and one that did not: 2 calls, 3 attempts, 1 retry,
    under the default operation name ``METHOD host/path-template``."""
    client = make_client()
    url = seq(server, "503,ok")
    client.send("GET", url)
    client.send("GET", url)
    name = f"GET 127.0.0.1:{server.port}{path_template(route(url))}"
    counts = client.stats.snapshot()[name]
    assert (counts["calls"], counts["attempts"], counts["retries"]) == (2, 3, 1)
    assert counts["attempts_failed_by_verdict"] == {"server_error": 1}


def test_threads_sharing_one_client_are_never_cut_by_each_others_deadlines(
    server: FaultServer, make_client: MakeClient
) -> None:
    """8 threads (tasks, on the async transport) × 20 GETs through one client, its pooled
    connections passing from attempt to attempt: every call succeeds at its first attempt,
    and every one is counted."""
    client = make_client(timeout=2.0)
    assert client.parallel(8, 20, server.url("/ok")) == []
    total = client.stats.snapshot()["__total__"]
    assert (total["calls"], total["attempts"], total["calls_succeeded"]) == (160, 160, 160)
