"""The servers' own retry signals (Retry-After-Ms, x-should-retry, 408) and idempotency keys
minted once per call."""

from __future__ import annotations

import uuid
from typing import Callable

import pytest
import requests

from requests_smartretry import Verdict, execute_with_smart_retry, smart_session
from requests_smartretry.backoff import parse_retry_after_ms
from requests_smartretry.classify import classify_http_response, retry_after_of
from requests_smartretry.faultserver import FaultServer
from requests_smartretry.policy import DEFAULT_RETRY_STATUSES
from requests_smartretry.sending import idempotency_key


class Waits:
    """An injected sleep that records the backoff instead of sleeping."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


class Answer:
    """A response as the classification reads it: a status and headers."""

    def __init__(self, status: int, **headers: str) -> None:
        self.status_code = status
        self.headers = requests.structures.CaseInsensitiveDict(
            {k.replace("_", "-"): v for k, v in headers.items()})


# -- Retry-After-Ms ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    ("400", 0.4), (" 1500 ", 1.5), ("0", 0.0), ("250.5", 0.2505),
    ("", None), ("-5", None), ("soon", None), ("1e3", None), (None, None),
])
def test_retry_after_ms_parses_milliseconds(value: object, seconds: object) -> None:
    """Retry-After-Ms is a number of milliseconds; anything else is ignored, never fatal."""
    assert parse_retry_after_ms(value) == seconds


def test_retry_after_ms_is_preferred_unless_signals_are_off() -> None:
    """With both headers the milliseconds win; honor_server_signals=False reads only
    Retry-After."""
    headers = Answer(429, Retry_After="3", Retry_After_Ms="400").headers
    assert retry_after_of(headers) == 0.4
    assert retry_after_of(headers, honor_server_signals=False) == 3.0
    assert retry_after_of(Answer(429, Retry_After_Ms="nope", Retry_After="2").headers) == 2.0


def test_retry_after_ms_400_waits_0_4_s(server: FaultServer) -> None:
    """A 503 with Retry-After-Ms: 400 is retried after 0.4 s (the injected sleep's)."""
    waits = Waits()
    session = smart_session(backoff_base=0.1, sleep=waits)
    session.get(server.url("/status/503?retry_after_ms=400&retry_after=3"))
    assert waits.seconds == [0.4]
    assert server.hits() == 2


# -- x-should-retry and 408 -------------------------------------------------------------------


@pytest.mark.parametrize(("status", "said", "verdict"), [
    (503, "false", Verdict.PERMANENT),
    (429, "FALSE", Verdict.PERMANENT),
    (409, "true", Verdict.SERVER_ERROR),
    (400, " true ", Verdict.SERVER_ERROR),
    (429, "true", Verdict.RATE_LIMIT),
    (503, "true", Verdict.SERVER_ERROR),
    (404, "false", Verdict.CLIENT_ERROR),
    (409, "maybe", Verdict.CLIENT_ERROR),
    (200, "true", Verdict.SUCCESS),
])
def test_x_should_retry_rows(status: int, said: str, verdict: Verdict) -> None:
    """x-should-retry: false makes a failure final, true makes any failure retryable, a
    success stays one, and an unknown value changes nothing."""
    answer = Answer(status, x_should_retry=said)
    assert classify_http_response(answer, None, DEFAULT_RETRY_STATUSES).verdict is verdict


class _OwnHeaders(requests.structures.CaseInsensitiveDict):  # type: ignore[type-arg]
    """A headers class of a caller's own (read through its ``get``, as any mapping)."""


@pytest.mark.parametrize("headers_class", [requests.structures.CaseInsensitiveDict,
                                           _OwnHeaders])
def test_signals_are_read_whatever_the_case_of_their_names(headers_class: type) -> None:
    """Retry-After, Retry-After-Ms and x-should-retry are found in any letter case, in
    requests' headers (read through their lowercased store) and in another mapping."""
    answer = Answer(503)
    answer.headers = headers_class({"RETRY-AFTER": "7", "X-Should-Retry": "False"})
    assert classify_http_response(answer, None, DEFAULT_RETRY_STATUSES).verdict \
        is Verdict.PERMANENT
    answer.headers = headers_class({"retry-after": "7", "Retry-After-MS": "1500"})
    got = classify_http_response(answer, None, DEFAULT_RETRY_STATUSES)
    assert (got.verdict, got.retry_after) == (Verdict.SERVER_ERROR, 1.5)
    assert retry_after_of(headers_class({"Retry-After": "7"})) == 7.0
    assert retry_after_of(headers_class({})) is None
    # A plain dict (an SDK's response) is asked as it spells the names, as before.
    assert retry_after_of({"Retry-After": "7"}) == 7.0
    assert retry_after_of({"Retry-After-Ms": "1500", "Retry-After": "7"}) == 1.5


def test_signals_switched_off_leave_the_status_table() -> None:
    """honor_server_signals=False: x-should-retry is not read."""
    answer = Answer(503, x_should_retry="false")
    got = classify_http_response(answer, None, DEFAULT_RETRY_STATUSES, False)
    assert got.verdict is Verdict.SERVER_ERROR


def test_should_retry_false_on_a_503_is_one_request(server: FaultServer) -> None:
    """x-should-retry: false on a 503 is one request; with the signals off, two."""
    session = smart_session(sleep=Waits())
    assert session.get(server.url("/status/503?should_retry=false")).status_code == 503
    assert server.hits() == 1
    smart_session(honor_server_signals=False, sleep=Waits()).get(
        server.url("/status/503?should_retry=false"))
    assert server.hits() == 3


def test_should_retry_true_on_a_409_get_is_two_requests(server: FaultServer) -> None:
    """x-should-retry: true on a 409 GET is retried (two requests); on a POST, which the
    server may have acted on, it is not (one)."""
    session = smart_session(sleep=Waits())
    assert session.get(server.url("/status/409?should_retry=true")).status_code == 409
    assert server.hits() == 2
    session.post(server.url("/status/409?should_retry=true"), data=b"x")
    assert server.hits() == 3


def test_408_is_retried_when_safe(server: FaultServer) -> None:
    """408 Request Timeout: a GET is retried, a POST (not idempotent) is not."""
    session = smart_session(sleep=Waits())
    session.get(server.url("/status/408"))
    assert server.hits() == 2
    session.post(server.url("/status/408"), data=b"x")
    assert server.hits() == 3


# -- idempotency keys -------------------------------------------------------------------------


def _keys(server: FaultServer) -> list[str]:
    return [r.headers.get("idempotency-key", "") for r in server.received()]


def test_a_minted_key_is_the_same_on_every_attempt_and_new_per_call(
        server: FaultServer) -> None:
    """With idempotency_header, a POST that failed after sending (500) is retried with the
    same fresh UUID4 on both attempts; the next call gets a new key."""
    session = smart_session(idempotency_header="Idempotency-Key", sleep=Waits())
    session.post(server.url("/status/500"), json={"prompt": "a cat"})
    session.post(server.url("/status/500"), json={"prompt": "a cat"})
    first, second, third, fourth = _keys(server)
    assert first == second and third == fourth and first != third
    assert uuid.UUID(first).version == 4


def test_without_a_key_the_post_is_not_retried(server: FaultServer) -> None:
    """The same 500 POST without idempotency_header is one request (unsafe to repeat)."""
    smart_session(sleep=Waits()).post(server.url("/status/500"), json={})
    assert server.hits() == 1
    assert _keys(server) == [""]


def test_the_callers_own_key_is_kept_and_an_empty_one_replaced(server: FaultServer) -> None:
    """A caller's key is sent as it is on every attempt; an empty key is no key, so the
    call gets a minted one (and the caller's prepared request is left untouched)."""
    session = smart_session(idempotency_header="Idempotency-Key", sleep=Waits())
    session.post(server.url("/status/500"), headers={"Idempotency-Key": "order-42"})
    assert _keys(server) == ["order-42", "order-42"]
    server.reset_counts()
    prepared = requests.Request("POST", server.url("/status/500"),
                                headers={"Idempotency-Key": ""}).prepare()
    session.send(prepared)
    minted = _keys(server)
    assert minted[0] == minted[1] and minted[0].strip()
    assert prepared.headers["Idempotency-Key"] == ""


def test_an_empty_key_is_no_key() -> None:
    """Blank and empty header values are not keys."""
    assert idempotency_key({"Idempotency-Key": ""}) is None
    assert idempotency_key({"Idempotency-Key": "  "}) is None
    assert idempotency_key({}) is None
    assert idempotency_key({"Idempotency-Key": "k1"}) == "k1"
    assert idempotency_key({"X-Request-Key": "k"}, "X-Request-Key") == "k"


def test_httpx_mints_one_key_per_call(server: FaultServer) -> None:
    """The httpx transport sends the same minted key on both attempts of a 500 POST, a new
    one on the next call, and leaves the caller's request as it was."""
    httpx = pytest.importorskip("httpx")
    from requests_smartretry.httpx import smart_client

    with smart_client(idempotency_header="Idempotency-Key", sleep=Waits()) as client:
        request = client.build_request("POST", server.url("/status/500"), content=b"{}")
        client.send(request)
        client.send(request)
        assert "idempotency-key" not in request.headers
    first, second, third, fourth = _keys(server)
    assert first == second and third == fourth and first != third
    assert isinstance(httpx.Request, type)


# -- the callable API's column reads the same signals ------------------------------------------


def _get_raising(server: FaultServer, path: str) -> Callable[[], requests.Response]:
    def fn() -> requests.Response:
        response = requests.get(server.url(path), timeout=5)
        response.raise_for_status()
        return response
    return fn


@pytest.mark.parametrize(("path", "honor", "hits"), [
    ("/status/503?should_retry=false", True, 1),
    ("/status/503?should_retry=false", False, 2),
    ("/status/409?should_retry=true", True, 2),
    ("/status/409?should_retry=true", False, 1),
])
def test_callable_api_honours_x_should_retry(server: FaultServer, path: str, honor: bool,
                                             hits: int) -> None:
    """An HTTPError raised by fn carries the server's x-should-retry to the callable API,
    unless honor_server_signals=False."""
    with pytest.raises(requests.HTTPError):
        execute_with_smart_retry(_get_raising(server, path), max_retries=1, backoff_base=0.0,
                                 timeout=5.0, sleep=Waits(), honor_server_signals=honor)
    assert server.hits() == hits


def test_callable_api_retry_after_ms_follows_the_switch(server: FaultServer) -> None:
    """The callable API waits Retry-After-Ms, and only Retry-After when signals are off."""
    path = "/status/503?retry_after_ms=400&retry_after=3"
    for honor, waited in ((True, 0.4), (False, 3.0)):
        waits = Waits()
        with pytest.raises(requests.HTTPError):
            execute_with_smart_retry(_get_raising(server, path), max_retries=1,
                                     backoff_base=0.0, timeout=5.0, sleep=waits,
                                     honor_server_signals=honor)
        assert waits.seconds == [waited]
