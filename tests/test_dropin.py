"""Drop-in behaviour: what plain requests does with HTTPAdapter, the adapter does too
(redirects, hooks and cookies around a body that fails to read, timeout errors, close(),
elapsed), except where the documented policy says otherwise."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
import requests
import urllib3.exceptions

from requests_smartretry import AttemptDeadlineExceeded, SmartRetryAdapter, smart_session
from requests_smartretry.faultserver import FaultServer, RecordedRequest

BAD_GZIP = b"this is not gzip at all"


def _bad_gzip(server: FaultServer, conn: socket.socket, request: RecordedRequest) -> None:
    """A 200 that says gzip and is not, setting a cookie."""
    server.send(conn, 200, BAD_GZIP, {"Content-Encoding": "gzip", "Set-Cookie": "seen=1"})


def _redirect_bad_gzip(server: FaultServer, conn: socket.socket,
                       request: RecordedRequest) -> None:
    """A redirect whose own body is undecodable."""
    server.send(conn, 302, BAD_GZIP, {"Content-Encoding": "gzip", "Location": "/ok"})


def _redirect_short(server: FaultServer, conn: socket.socket, request: RecordedRequest) -> None:
    """A redirect whose body is shorter than its Content-Length, then the connection closes."""
    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 100\r\n"
                 b"Connection: close\r\n\r\nshort")
    conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture()
def server():
    with FaultServer(handlers={"/badgzip": _bad_gzip, "/redir-gzip": _redirect_bad_gzip,
                               "/redir-short": _redirect_short}) as running:
        yield running


def _sessions() -> list[tuple[str, requests.Session]]:
    return [("requests", requests.Session()), ("zero", smart_session(max_retries=0)),
            ("defaults", smart_session())]


@pytest.mark.parametrize("route", ["/redir-gzip", "/redir-short"])
def test_redirect_with_a_bad_body_is_followed(server: FaultServer, route: str) -> None:
    """A redirect whose own body cannot be decoded or is cut short is followed, as requests
    does (it discards a redirect's body)."""
    for name, session in _sessions():
        response = session.get(server.url(route), timeout=5)
        assert (name, response.status_code, response.text) == (name, 200, "ok")
        assert [r.status_code for r in response.history] == [302]


def test_hooks_and_cookies_before_an_undecodable_body_raises(server: FaultServer) -> None:
    """For a non-redirect with an undecodable body, response hooks run and cookies are
    stored before ContentDecodingError surfaces, once, exactly as with requests."""
    for name, session in _sessions():
        seen: list[int] = []

        def hook(response: requests.Response, *args: Any, seen: list[int] = seen,
                 **kwargs: Any) -> None:
            seen.append(response.status_code)

        with pytest.raises(requests.exceptions.ContentDecodingError):
            session.get(server.url("/badgzip"), timeout=5, hooks={"response": hook})
        assert (name, seen, session.cookies.get("seen")) == (name, [200], "1")
    assert server.hits("/badgzip") == 3  # one request per session: never retried


def test_attempt_deadline_error_reads_as_a_read_timeout(server: FaultServer) -> None:
    """The attempt deadline's error carries urllib3's ReadTimeoutError as args[0], with its
    usual "Read timed out" text, as requests' read timeouts do."""
    session = smart_session(max_retries=0)
    with pytest.raises(requests.exceptions.ReadTimeout) as caught:
        session.get(server.url("/drip?interval=0.05&count=100"), timeout=0.4)
    assert isinstance(caught.value, AttemptDeadlineExceeded)
    inner = caught.value.args[0]
    assert isinstance(inner, urllib3.exceptions.ReadTimeoutError)
    assert "Read timed out" in inner.args[0]
    assert f"port={server.port}" in str(inner)


def test_invalid_timeout_wording_is_urllib3s(server: FaultServer) -> None:
    """A bad timeout raises ValueError in urllib3's words (requests' own tests match them)."""
    for _, session in _sessions():
        with pytest.raises(ValueError, match="must be an int, float or None"):
            session.get(server.url("/ok"), timeout="foo")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"\(connect, read\)"):
            session.get(server.url("/ok"), timeout=(3, 4, 5))  # type: ignore[arg-type]
    assert server.hits() == 0


def test_elapsed_is_the_time_to_the_headers(server: FaultServer) -> None:
    """response.elapsed is the time to the headers (requests' definition), not to the end
    of the body read inside the attempt."""
    session = smart_session(max_retries=0)
    started = time.perf_counter()
    response = session.get(server.url("/drip?interval=0.02&count=25"), timeout=5)
    whole = time.perf_counter() - started
    assert whole >= 0.45 and len(response.content) == 25
    assert response.elapsed.total_seconds() < whole / 2
    copied: Any = requests.Response.__new__(type(response))
    copied.__setstate__(response.__getstate__())  # pickling keeps the value
    assert copied.elapsed == response.elapsed


def test_a_mixins_send_and_build_response_still_run(server: FaultServer) -> None:
    """A mixin after the adapter in a subclass's MRO that overrides send or build_response
    still runs (each attempt reaches it), and elapsed is still the time to the headers."""
    sent: list[str] = []

    class Marking(requests.adapters.HTTPAdapter):
        def send(self, request: requests.PreparedRequest, *args: Any,
                 **kwargs: Any) -> requests.Response:
            sent.append(request.url or "")
            return super().send(request, *args, **kwargs)

        def build_response(self, req: requests.PreparedRequest,
                           resp: Any) -> requests.Response:
            response = super().build_response(req, resp)
            response.marked = True  # type: ignore[attr-defined]
            return response

    class Adapter(SmartRetryAdapter, Marking):
        pass

    session = requests.Session()
    session.mount("http://", Adapter(max_retries=0))
    started = time.perf_counter()
    response = session.get(server.url("/drip?interval=0.02&count=25"), timeout=5)
    whole = time.perf_counter() - started
    assert response.marked and len(response.content) == 25  # type: ignore[attr-defined]
    assert response.elapsed.total_seconds() < whole / 2
    assert len(sent) == 1


def test_the_path_sent_is_requests_own_with_or_without_proxies_or_a_mixin() -> None:
    """request_url gives what HTTPAdapter's gives: remembered per URL without proxies (the
    URL alone decides it), asked every time with proxies, and a mixin's after the adapter
    in the MRO still decides."""
    plain = requests.adapters.HTTPAdapter()
    adapter = SmartRetryAdapter()
    for url in ("http://h/a/b?q=1#frag", "http://h", "https://u:p@h:8443/x?y=%20",
                "http://h//double/slash"):
        request = requests.Request("GET", url).prepare()
        for proxies in ({}, None, {"http": "http://proxy:3128"},
                        {"all": "socks5://proxy:1080"}):
            for _ in range(2):  # the second time, remembered
                assert adapter.request_url(request, proxies) == \
                    plain.request_url(request, proxies), (url, proxies)
    asked: list[str] = []

    class Asking(requests.adapters.HTTPAdapter):
        def request_url(self, request: requests.PreparedRequest, proxies: Any) -> str:
            asked.append(request.url or "")
            return "/elsewhere"

    class Adapter(SmartRetryAdapter, Asking):
        pass

    request = requests.Request("GET", "http://h/a").prepare()
    assert [Adapter().request_url(request, {}) for _ in range(2)] == ["/elsewhere"] * 2
    assert len(asked) == 2


def test_close_stops_calls_in_flight_not_future_ones(server: FaultServer) -> None:
    """session.close() during a call stops its retries; a call made afterwards works."""
    session: requests.Session

    def close_on_retry(seconds: float) -> None:
        session.close()

    session = smart_session(max_retries=2, sleep=close_on_retry, budget=None)
    with pytest.raises(requests.HTTPError):
        session.get(server.url("/status/503")).raise_for_status()
    assert server.hits("/status/503") == 1
    assert session.get(server.url("/ok")).status_code == 200


def test_close_clears_whatever_stands_in_the_proxy_managers() -> None:
    """As requests' own test_session_close_proxy_clear: close() calls clear() on each proxy
    manager, whatever object it is (a mock there), and does not look for pools in it."""
    from unittest import mock

    from requests_smartretry import SmartRetryAdapter

    adapter = SmartRetryAdapter()
    proxies = {"one": mock.Mock(), "two": mock.Mock()}
    with mock.patch.dict(adapter.proxy_manager, proxies):
        adapter.close()
    proxies["one"].clear.assert_called_once_with()
    proxies["two"].clear.assert_called_once_with()
