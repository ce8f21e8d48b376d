"""Never twice, on httpx: issue 13's fault-injection matrix run against the httpx transport,
alone and inside the callable API, against real local servers counting what they executed.

The rules are test_never_twice's :func:`~tests.test_never_twice.promised` (written once);
the errno is injected at the socket httpcore connects with.  Bodies: bytes and a
generator (httpx iterates a file object as it does a generator, so it is never replayed
and has no cell of its own); entry points: the transport, and ``execute_with_smart_retry``
around a smart-client request (the callable API around plain httpx knows nothing of
phases and is not crossed here), and the same two on asyncio (the async transport, an
async ``execute_with_smart_retry`` around an async smart-client request), the errno
injected at httpcore's async network backend (:class:`~tests.fakes.sockfaults.FaultAsyncBackend`).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any, Callable, Optional

import pytest

import requests_smartretry.testing as srt
from requests_smartretry import execute_with_retry, execute_with_smart_retry
from requests_smartretry.faultserver import FaultServer, unused_port
from tests.fakes import sockfaults
from tests.test_never_twice import (  # the servers are the same module-scoped fixtures
    CERT,
    ERRNOS,
    METHODS,
    PAYLOAD,
    PHASES,
    TLS_PHASES,
    _body,
    broken_promise,
    http_server,  # noqa: F401 - a fixture
    promised,
    tls_server,  # noqa: F401 - a fixture
)

httpx = pytest.importorskip("httpx")
from requests_smartretry.httpx import smart_async_client, smart_client  # noqa: E402

BODIES = ("bytes", "generator")
# "wrapped": execute_with_retry (which retries any exception) around a smart-client call;
# "nested": that call inside another execute_with_retry (as in tests/test_never_twice.py).
ENTRIES = ("transport", "callable_smart", "wrapped", "nested", "async_transport",
           "async_callable_smart")


@pytest.fixture(autouse=True)
def _httpx_faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """httpx's sockets fail as the armed plan says; retries wait nothing."""
    with srt.fast_retries():
        sockfaults.install_for_httpx(monkeypatch)
        yield


def _run_cell(server: FaultServer, phase: str, errno_name: Optional[str], method: str,
              body_kind: str, entry: str) -> Optional[str]:
    """Run one cell; a description of the broken promise, or None."""
    route = f"/exec/{phase}-{errno_name}-{method}-{body_kind}-{entry}"
    plan = None
    if phase == "tls_stall":
        server.stalled_handshakes = 1
    else:
        plan = sockfaults.Plan(phase, ERRNOS.get(errno_name or "", errno.ECONNREFUSED),
                               refused_port=unused_port())
    verb = "GET" if method == "GET" else "POST"
    headers = {"Idempotency-Key": "k-1"} if method == "POST+key" else {}
    if entry.startswith("async_"):
        sockfaults.arm(plan)
        try:
            response, error = asyncio.run(_async_cell(server, route, verb, headers, body_kind,
                                                      entry, phase))
        finally:
            sockfaults.arm(None)
            stalls_left, server.stalled_handshakes = server.stalled_handshakes, 0
        executions, succeeds = promised(phase, method, body_kind, "adapter")
        return broken_promise(server.received(route), route, executions, succeeds, response,
                              error, injected=(plan is None or plan.taken) and not stalls_left)
    # connect 0.1 s: how long a stalled handshake waits.  Other cells complete their
    # handshake, which on a loaded 2-core machine can take longer than 0.1 s: there a
    # generous bound, so that a slow handshake is not mistaken for the fault under test.
    client = smart_client(max_retries=1, timeout=10.0,
                          connect_timeout=0.1 if phase == "tls_stall" else 5.0,
                          verify=ssl.create_default_context(cafile=str(CERT)))
    body = _body(body_kind)  # one body: a callable that repeats fn finds it half used
    send: Callable[[], Any] = lambda: client.request(  # noqa: E731
        verb, server.url(route), content=body, headers=headers)
    sockfaults.arm(plan)
    try:
        if entry == "transport":
            response = send()
        elif entry == "wrapped":
            response = execute_with_retry(send, max_retries=1, timeout=10.0)
        elif entry == "nested":
            response = execute_with_retry(
                lambda: execute_with_retry(send, max_retries=1, timeout=10.0),
                max_retries=1, timeout=10.0)
        else:
            response = execute_with_smart_retry(send, max_retries=1, timeout=10.0)
        error: Optional[BaseException] = None
    except httpx.HTTPError as exc:
        response, error = None, exc
    finally:
        sockfaults.arm(None)
        stalls_left, server.stalled_handshakes = server.stalled_handshakes, 0
        client.close()
    executions, succeeds = promised(phase, method, body_kind, "adapter")
    return broken_promise(server.received(route), route, executions, succeeds, response,
                          error, injected=(plan is None or plan.taken) and not stalls_left)


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _async_cell(server: FaultServer, route: str, verb: str, headers: dict[str, str],
                      body_kind: str, entry: str,
                      phase: str) -> tuple[Any, Optional[BaseException]]:
    """One cell on asyncio: (the response, or the error).  The connect timeout is short
    only where a stalled handshake must time out: asyncio's connect resolves the address
    on a worker thread, which a loaded machine may not schedule within 0.1 s."""
    context = ssl.create_default_context(cafile=str(CERT))
    inner = httpx.AsyncHTTPTransport(verify=context)
    sockfaults.install_async(inner)  # before the smart transport wraps its backend
    body = _body(body_kind)
    content = _async_chunks(body) if body_kind == "generator" else body
    connect_timeout = 0.1 if phase == "tls_stall" else 5.0
    async with smart_async_client(max_retries=1, timeout=10.0, connect_timeout=connect_timeout,
                                  transport=inner) as client:

        async def send() -> Any:
            return await client.request(verb, server.url(route), content=content,
                                        headers=headers)

        try:
            if entry == "async_transport":
                return await send(), None
            return await execute_with_smart_retry(send, max_retries=1, timeout=10.0), None
        except httpx.HTTPError as exc:
            return None, exc


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(("phase", "errno_name"), PHASES)
def test_every_httpx_cell_executes_what_the_rules_promise(
    request: pytest.FixtureRequest, phase: str, errno_name: Optional[str], entry: str,
) -> None:
    """Across methods and bodies, an httpx request is executed exactly as often as the
    rules promise, also when the callable API around it would repeat ``fn``: what the
    transport refused to resend (unsafe, a half-sent generator) stays unsent."""
    server = request.getfixturevalue("tls_server" if phase in TLS_PHASES else "http_server")
    violations = [v for method, body in itertools.product(METHODS, BODIES)
                  if (v := _run_cell(server, phase, errno_name, method, body, entry))]
    assert violations == [], f"{len(violations)} violations:\n" + "\n".join(violations)


def test_the_basic_callable_api_does_not_resend_a_post_the_transport_gave_up(
    http_server: FaultServer,  # noqa: F811 - the imported fixture
) -> None:
    """execute_with_retry (which retries any exception) around a smart-client POST that the
    server read and then reset sends it once; a 500 turned into an error by
    ``raise_for_status()`` in fn keeps the transport's unsafe verdict too."""
    client = smart_client(max_retries=1)
    with pytest.raises(httpx.ReadError):
        execute_with_retry(lambda: client.post(http_server.url("/reset"), content=PAYLOAD),
                           max_retries=2)
    assert http_server.hits("/reset") == 1
    with pytest.raises(httpx.HTTPStatusError):
        execute_with_smart_retry(
            lambda: client.post(http_server.url("/status/500"), content=PAYLOAD)
            .raise_for_status(), max_retries=2)
    assert http_server.hits("/status/500") == 1
