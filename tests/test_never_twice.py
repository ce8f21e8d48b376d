"""Never twice: a request that may have reached the server is repeated only when that is
safe, proved by injecting errnos at the client socket in every phase of the exchange
against real local servers that count what they executed.

The matrix: phases × errnos × methods × bodies × entry points.  What each cell may do
comes from :func:`promised`, the library's rules written once, not from a table of
expected counts.  Cells that collapse: ``refused`` is the kernel's own ECONNREFUSED (the
errno axis does not apply to it), and ``tls_stall`` is a handshake the server never
answers (a timeout, not an errno).  Every other phase is crossed with every errno.
"""

from __future__ import annotations

import errno
import io
import itertools
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests

import requests_smartretry.testing as srt
from requests_smartretry import execute_with_retry, execute_with_smart_retry, smart_session
from requests_smartretry.faultserver import FaultServer, RecordedRequest, unused_port
from tests.fakes import sockfaults

PAYLOAD = b'{"order": "A-1", "amount": 100, "note": "' + b"x" * 40 + b'"}'
ANSWER = b"r" * 100  # the response body: long enough to be cut in the middle
CERT = Path(__file__).parent / "fakes" / "localhost-cert.pem"
KEY = Path(__file__).parent / "fakes" / "localhost-key.pem"
TIMEOUT = (0.1, 3.0)  # connect (a stalled handshake waits this long), read
# The other cells complete their handshake, which on a loaded 2-core machine can take
# longer than 0.1 s: a generous connect bound, so that it is not mistaken for the fault.
HANDSHAKE_TIMEOUT = (5.0, 3.0)

# ECONNREFUSED too: after an ICMP "port unreachable" on an established connection the
# kernel reports it when the retransmissions time out (the connect was long done).
ERRNOS = {name: getattr(errno, name) for name in (
    "ECONNRESET", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "EPIPE", "ECONNABORTED",
    "ECONNREFUSED")}
# (phase, errno name or None where the phase has no errno axis)
PHASES = [("refused", None), ("tls_stall", None)] + [
    (phase, name) for phase in ("connect", "tls", "headers", "body", "after_read", "read_body")
    for name in ERRNOS]
METHODS = ("GET", "POST", "POST+key")
BODIES = ("bytes", "file", "generator")
# "wrapped": execute_with_retry (which retries any exception) around a smart-session
# call; "nested": that call inside another execute_with_retry.  Both follow the smart
# session's rules, as callable_smart does.
ENTRIES = ("adapter", "callable_smart", "callable_plain", "wrapped", "nested")
TLS_PHASES = ("tls", "tls_stall")


def promised(phase: str, method: str, body: str, entry: str) -> tuple[int, bool]:
    """(executions the server may see, whether the call succeeds), by the rules.

    Nothing of the request was written in ``refused``, ``connect`` and the TLS phases, so
    a retry is always safe; but the callable API around plain ``requests`` can only know
    that from urllib3's own connect errors (not from a TLS handshake).  After the first
    byte is written, a retry needs an idempotent request (GET, an ``Idempotency-Key``)
    whose body can be replayed (a generator never can), and the callable API with
    ``idempotent=False`` never repeats it.  The first attempt was executed when the
    server had read the whole request.
    """
    executed_first = phase in ("after_read", "read_body")
    before_sending = phase in ("refused", "connect") or (
        phase in TLS_PHASES and entry != "callable_plain")
    if before_sending:
        retried = True
    elif entry == "callable_plain":
        retried = False
    else:
        retried = method in ("GET", "POST+key") and body != "generator"
    return int(executed_first) + int(retried), retried


@pytest.fixture(scope="module")
def http_server() -> Iterator[FaultServer]:
    """One plain HTTP server for the whole matrix; each cell has its own route."""
    with _counting(FaultServer()) as server:
        yield server


@pytest.fixture(scope="module")
def tls_server() -> Iterator[FaultServer]:
    """One HTTPS server (a self-signed certificate for 127.0.0.1) for the TLS phases."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, KEY)
    with _counting(FaultServer(tls=context)) as server:
        yield server


def _counting(server: FaultServer) -> FaultServer:
    def execute(srv: FaultServer, conn: Any, request: RecordedRequest) -> None:
        srv.send(conn, 200, ANSWER)

    server.handlers["/exec/"] = execute
    return server


@pytest.fixture(autouse=True)
def _faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    sockfaults.install(monkeypatch)
    with srt.fast_retries():  # backoff 0: the matrix runs in seconds
        yield


def _body(kind: str) -> Any:
    if kind == "bytes":
        return PAYLOAD
    if kind == "file":
        return io.BytesIO(PAYLOAD)
    return (PAYLOAD[i:i + 16] for i in range(0, len(PAYLOAD), 16))


def _call(entry: str, method: str, url: str, body: Any,
          timeout: tuple[float, float] = TIMEOUT) -> requests.Response:
    verb = "GET" if method == "GET" else "POST"
    headers = {"Idempotency-Key": "k-1"} if method == "POST+key" else {}
    verify = str(CERT)
    if entry == "callable_plain":
        plain = requests.Session()
        return execute_with_smart_retry(
            lambda: plain.request(verb, url, data=body, headers=headers, timeout=timeout,
                                  verify=verify),
            idempotent=False, max_retries=1, timeout=10.0)
    session = smart_session(max_retries=1, timeout=10.0)
    send: Callable[[], requests.Response] = lambda: session.request(  # noqa: E731
        verb, url, data=body, headers=headers, timeout=timeout, verify=verify)
    if entry == "adapter":
        return send()
    if entry == "wrapped":
        return execute_with_retry(send, max_retries=1, timeout=10.0)
    if entry == "nested":
        return execute_with_retry(
            lambda: execute_with_retry(send, max_retries=1, timeout=10.0),
            max_retries=1, timeout=10.0)
    return execute_with_smart_retry(send, max_retries=1, timeout=10.0)


def _run_cell(server: FaultServer, phase: str, errno_name: Optional[str], method: str,
              body_kind: str, entry: str) -> Optional[str]:
    """Run one cell; a description of the broken promise, or None."""
    route = f"/exec/{phase}-{errno_name}-{method}-{body_kind}-{entry}"
    code = ERRNOS.get(errno_name or "", errno.ECONNREFUSED)
    plan = None
    if phase == "tls_stall":
        server.stalled_handshakes = 1
    else:
        plan = sockfaults.Plan(phase, code, refused_port=unused_port())
    sockfaults.arm(plan)
    try:
        response: Optional[requests.Response] = _call(
            entry, method, server.url(route), _body(body_kind),
            TIMEOUT if phase == "tls_stall" else HANDSHAKE_TIMEOUT)
        error: Optional[BaseException] = None
    except (requests.RequestException, OSError) as exc:
        response, error = None, exc
    finally:
        sockfaults.arm(None)
        stalls_left, server.stalled_handshakes = server.stalled_handshakes, 0
    executions, succeeds = promised(phase, method, body_kind, entry)
    return broken_promise(server.received(route), route, executions, succeeds, response,
                          error, injected=(plan is None or plan.taken) and not stalls_left)


def broken_promise(executed: list[RecordedRequest], route: str, executions: int,
                   succeeds: bool, response: Any, error: Optional[BaseException], *,
                   injected: bool) -> Optional[str]:
    """What one cell did that the rules did not promise (``None``: nothing); shared by
    the httpx matrix (tests/test_httpx_never_twice.py)."""
    problems = []
    if len(executed) != executions:
        problems.append(f"executed {len(executed)}x, promised {executions}x")
    if any(r.body != PAYLOAD for r in executed):
        problems.append(f"executed a wrong body {[len(r.body) for r in executed]}")
    if succeeds and (response is None or response.content != ANSWER):
        problems.append(f"should succeed, got {error!r}")
    if not succeeds and response is not None:
        problems.append(f"should fail, got HTTP {response.status_code}")
    if not injected:
        problems.append("the fault was never injected")
    if not problems:
        return None
    return f"{route}: " + "; ".join(problems)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(("phase", "errno_name"), PHASES)
def test_every_cell_executes_what_the_rules_promise(
    request: pytest.FixtureRequest, phase: str, errno_name: Optional[str], entry: str,
) -> None:
    """Across methods and bodies, the server executes the request exactly as often as the
    rules promise (unsafe: at most once; a partly sent generator: never again; safe:
    retried), and the caller gets the answer only when a retry was allowed."""
    server = request.getfixturevalue("tls_server" if phase in TLS_PHASES else "http_server")
    violations = [v for method, body in itertools.product(METHODS, BODIES)
                  if (v := _run_cell(server, phase, errno_name, method, body, entry))]
    assert violations == [], f"{len(violations)} violations:\n" + "\n".join(violations)


# -- the edges the matrix does not cross ------------------------------------------------------


def _short_body(srv: FaultServer, conn: Any, request: RecordedRequest) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
                 b'{"a"')
    conn.shutdown(2)


def _corrupt_gzip(srv: FaultServer, conn: Any, request: RecordedRequest) -> None:
    srv.send(conn, 503, b"this is not gzip", {"Content-Encoding": "gzip"})


_BROKEN = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)


@pytest.fixture()
def edge_server() -> Iterator[FaultServer]:
    """A server with a truncated-body route and a corrupt-gzip 503 route."""
    with FaultServer({"/short": _short_body, "/corrupt": _corrupt_gzip}) as server:
        yield server


def test_a_body_shorter_than_its_content_length_is_an_incomplete_read(
    edge_server: FaultServer,
) -> None:
    """On urllib3 1.26 as on 2.x, 4 bytes of a promised 100 are a network error after
    sending: a GET is retried, a POST is not, and no truncated body is handed back."""
    session = smart_session(max_retries=1, timeout=5.0)
    with pytest.raises(_BROKEN):
        session.get(edge_server.url("/short"))
    assert edge_server.hits("/short") == 2
    with pytest.raises(_BROKEN):
        session.post(edge_server.url("/short"), data=PAYLOAD)
    assert edge_server.hits("/short") == 3


def test_a_stalled_tls_handshake_is_a_connect_timeout_and_safe_for_a_post(
    tls_server: FaultServer,
) -> None:
    """A handshake the server never answers sent nothing: it raises ConnectTimeout (not a
    read timeout), and a POST is retried after it."""
    tls_server.stalled_handshakes = 1
    with pytest.raises(requests.exceptions.ConnectTimeout):
        smart_session(max_retries=0).post(tls_server.url("/exec/stall-once"), data=PAYLOAD,
                                          timeout=(0.1, 5.0), verify=str(CERT))
    tls_server.stalled_handshakes = 1
    response = smart_session(max_retries=1).post(tls_server.url("/exec/stall-retry"),
                                                 data=PAYLOAD, timeout=(0.1, 5.0),
                                                 verify=str(CERT))
    assert response.content == ANSWER
    assert tls_server.hits("/exec/stall-once") == 0 and tls_server.hits("/exec/stall-retry") == 1


def test_a_timeout_too_small_to_honour_is_refused_naming_the_minimum(
    edge_server: FaultServer,
) -> None:
    """A timeout below 10 ms would end every attempt before it connects; it is refused at
    once, with the minimum in the message, instead of "retried" without ever sending."""
    from requests_smartretry import RetryPolicy, execute_with_retry

    with pytest.raises(ValueError, match=r"timeout must be at least 0\.01s.*0\.001"):
        RetryPolicy(timeout=0.001)
    with pytest.raises(ValueError, match=r"timeout must be at least 0\.01s"):
        smart_session().get(edge_server.url("/ok"), timeout=0.001)
    with pytest.raises(ValueError, match=r"timeout connect must be at least 0\.01s"):
        smart_session().get(edge_server.url("/ok"), timeout=(0.001, 1.0))
    with pytest.raises(ValueError, match=r"timeout must be at least 0\.01s"):
        execute_with_retry(lambda: None, timeout=0.001)
    assert edge_server.hits() == 0


def test_a_503_with_an_undecodable_body_keeps_its_status_verdict(
    edge_server: FaultServer,
) -> None:
    """A 503 whose gzip body is corrupt is still a 503 (the server did not act): a POST is
    retried and the last 503 comes back, not a decoding error."""
    response = smart_session(max_retries=1).post(edge_server.url("/corrupt"), data=PAYLOAD)
    assert response.status_code == 503
    assert edge_server.hits("/corrupt") == 2


def test_the_basic_callable_api_does_not_resend_what_the_inner_session_gave_up(
    http_server: FaultServer,
) -> None:
    """execute_with_retry (which retries any exception) around a smart-session POST that
    the server read and then reset does not send it again."""

    session = smart_session(max_retries=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        execute_with_retry(lambda: session.post(http_server.url("/reset"), data=PAYLOAD),
                           max_retries=2)
    assert http_server.hits("/reset") == 1


def test_raise_for_status_in_fn_keeps_the_inner_unsafe_verdict(edge_server: FaultServer) -> None:
    """A 500 to a POST that the inner session would not repeat stays unrepeated when fn
    turns it into an HTTPError with raise_for_status()."""
    session = smart_session(max_retries=1)
    with pytest.raises(requests.HTTPError):
        execute_with_smart_retry(
            lambda: session.post(edge_server.url("/status/500"), data=PAYLOAD)
            .raise_for_status(), max_retries=2)
    assert edge_server.hits("/status/500") == 1


class _Busy(Exception):
    """A vendor's 'try again' error, known to come before anything was done."""


def test_idempotent_false_retries_only_what_is_known_to_precede_sending(
    edge_server: FaultServer,
) -> None:
    """With idempotent=False a 500 from plain requests is not retried (without it, it is),
    while a refused connection and the caller's retry_on types still are."""
    url = edge_server.url("/status/500")

    def post() -> None:
        requests.post(url, data=PAYLOAD, timeout=5.0).raise_for_status()

    with pytest.raises(requests.HTTPError):
        execute_with_smart_retry(post, idempotent=False, max_retries=1)
    assert edge_server.hits("/status/500") == 1
    with pytest.raises(requests.HTTPError):
        execute_with_smart_retry(post, max_retries=1)
    assert edge_server.hits("/status/500") == 3

    refused = f"http://127.0.0.1:{unused_port()}/"
    tries: list[int] = []
    with pytest.raises(requests.exceptions.ConnectionError):
        execute_with_smart_retry(lambda: requests.post(refused, data=PAYLOAD, timeout=5.0),
                                 idempotent=False, max_retries=1,
                                 on_retry=lambda attempt, error: tries.append(attempt))
    assert tries == [1]

    calls: list[int] = []

    def busy_then_done() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise _Busy("busy")
        return "done"

    assert execute_with_smart_retry(busy_then_done, idempotent=False, retry_on=_Busy,
                                    max_retries=1) == "done"


def test_a_fallback_after_a_refused_first_try_is_not_resent_with_idempotent_false(
    edge_server: FaultServer,
) -> None:
    """A POST that fn sends to a backup while handling a refused first try, and that the
    backup read and then reset, is not repeated: the refusal it was raised during says
    nothing about it."""
    primary = f"http://127.0.0.1:{unused_port()}/"

    def pay() -> requests.Response:
        try:
            return requests.post(primary, data=PAYLOAD, timeout=5.0)
        except requests.ConnectionError:
            return requests.post(edge_server.url("/reset"), data=PAYLOAD, timeout=5.0)

    with pytest.raises(requests.exceptions.ConnectionError):
        execute_with_smart_retry(pay, idempotent=False, max_retries=1)
    assert edge_server.hits("/reset") == 1


def test_a_streamed_body_that_fails_later_keeps_the_sessions_verdict(
    edge_server: FaultServer,
) -> None:
    """With stream=True the body is read after the session returned; when that read is cut,
    the callable API around it does not repeat the POST (as with stream=False), but still
    repeats a GET."""
    session = smart_session(max_retries=1)

    def read(method: str) -> bytes:
        return session.request(method, edge_server.url("/midreset?count=1000"),
                               data=PAYLOAD, stream=True).content

    with pytest.raises(_BROKEN):
        execute_with_smart_retry(lambda: read("POST"), max_retries=1)
    assert edge_server.hits("/midreset") == 1
    with pytest.raises(_BROKEN):
        execute_with_smart_retry(lambda: read("GET"), max_retries=1)
    assert edge_server.hits("/midreset") == 3


def _corrupt_gzip_200(srv: FaultServer, conn: Any, request: RecordedRequest) -> None:
    srv.send(conn, 200, b"this is not gzip", {"Content-Encoding": "gzip"})


def test_an_error_after_the_answer_is_not_resent_by_the_basic_callable_api(
    edge_server: FaultServer,
) -> None:
    """execute_with_retry (which retries any exception) around a smart-session POST whose
    200 answer cannot be decoded does not send it again (the server acted); a GET it
    still repeats."""

    edge_server.handlers["/gz200"] = _corrupt_gzip_200
    session = smart_session(max_retries=1)
    for method, executions in (("POST", 1), ("GET", 2)):
        before = edge_server.hits("/gz200")
        with pytest.raises(requests.exceptions.ContentDecodingError):
            execute_with_retry(
                lambda m=method: session.request(m, edge_server.url("/gz200"), data=PAYLOAD),
                max_retries=1)
        assert edge_server.hits("/gz200") - before == executions
