"""Secrets never leave through a log line, an event, an exception message or the CLI."""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Iterator

import pytest
import requests

from requests_smartretry import AttemptEvent, smart_session
from requests_smartretry.faultserver import FaultServer, unused_port
from requests_smartretry.redact import (
    REDACTED,
    RedactingFilter,
    is_secret_header,
    path_template,
    redact_exception,
    redact_headers,
    redact_text,
    redact_url,
)
from tests.conftest import library_logs_to

# Each value is unique, so a hit anywhere names the channel that leaked it.
HEADER_SECRETS = {
    "Authorization": "Bearer AUTHSECRET1",
    "Proxy-Authorization": "Basic PROXYSECRET2",
    "Cookie": "sid=COOKIESECRET3",
    "X-Api-Key": "APIKEYSECRET4",
    "Wechatpay-Signature": "WXSIGSECRET5",
    "Wechatpay-Serial": "WXSERIALSECRET6",
}
QUERY = "access_token=TOKENSECRET7&api_key=KEYSECRET8&signature=SIGSECRET9&sign=SIGNSECRET10"
USERINFO = "alice:USERPASSSECRET11"
SECRETS = [
    "AUTHSECRET1", "PROXYSECRET2", "COOKIESECRET3", "APIKEYSECRET4", "WXSIGSECRET5",
    "WXSERIALSECRET6", "TOKENSECRET7", "KEYSECRET8", "SIGSECRET9", "SIGNSECRET10",
    "USERPASSSECRET11", "SETCOOKIESECRET12",
]


def _set_cookie(server: FaultServer, sock: object, request: object) -> None:
    """A 503 that also sets a cookie (a secret coming back from the server)."""
    server.send(sock, 503, b"busy", {"Set-Cookie": "session=SETCOOKIESECRET12; HttpOnly"})  # type: ignore[arg-type]


class _Capture(logging.Handler):
    """Formats every record with every attribute, ``extra`` fields included."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: repr(v) for k, v in vars(record).items() if k != "exc_info"}
        self.lines.append(f"{self.format(record)} {json.dumps(fields, ensure_ascii=False)}")


def _chain_text(exc: BaseException) -> str:
    """str and repr of ``exc`` and of everything chained to it, plus the traceback."""
    parts = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    node: BaseException | None = exc
    seen = 0
    while node is not None and seen < 20:
        parts.extend([str(node), repr(node), repr(node.args), repr(getattr(node, "url", ""))])
        node = node.__cause__ or node.__context__
        seen += 1
    return "\n".join(parts)


def _leaks(channel: list[str]) -> dict[str, str]:
    found = {}
    for secret in SECRETS:
        for line in channel:
            if secret in line:
                found[secret] = line[:300]
                break
    return found


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer(handlers={"/setcookie": _set_cookie}) as fault_server:
        yield fault_server


@pytest.fixture
def capture() -> Iterator[_Capture]:
    handler = _Capture()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    with library_logs_to(handler):
        yield handler


def _scenario_urls(server: FaultServer) -> list[str]:
    refused = f"http://127.0.0.1:{unused_port()}"
    with_userinfo = f"http://{USERINFO}@127.0.0.1:{server.port}"
    paths = ["/ok", "/status/503", "/status/429", "/status/404", "/reset", "/midreset",
             "/hang?seconds=1", "/setcookie"]
    urls = []
    for base in (server.url(""), with_userinfo, refused):
        for path in paths:
            urls.append(f"{base}{path}{'&' if '?' in path else '?'}{QUERY}")
    return urls


def test_no_secret_in_logs_events_exceptions_or_callbacks(
    server: FaultServer, capture: _Capture
) -> None:
    """Every channel the library writes to is grepped for every secret value: none leaks."""
    events: list[AttemptEvent] = []
    retried: list[BaseException] = []
    session = smart_session(timeout=0.3, backoff_base=0.0, backoff_max=0.01,
                            hooks=[events.append],
                            on_retry=lambda attempt, error: retried.append(error))
    session.headers.update(HEADER_SECRETS)
    raised: list[str] = []
    responses = 0
    with session:
        for url in _scenario_urls(server):
            try:
                response = session.get(url)
                responses += 1
                raised.append(str(getattr(response, "retry_history", "")))
            except requests.RequestException as exc:
                raised.append(_chain_text(exc))
    assert responses and len(raised) > responses, "both endings should have been exercised"
    assert retried and events
    event_text = [repr(e) for e in events]
    event_text += [_chain_text(e.error) for e in events if e.error is not None]
    callback_text = [_chain_text(error) for error in retried]
    assert any("FAILURE" in line or "failure" in line for line in event_text)
    assert capture.lines, "the library should have logged its attempt lines"
    assert _leaks(capture.lines) == {}
    assert _leaks(event_text) == {}
    assert _leaks(raised) == {}
    assert _leaks(callback_text) == {}


def test_redacting_filter_cleans_urllib3_debug_lines(server: FaultServer) -> None:
    """urllib3's DEBUG lines quote full URLs; with RedactingFilter on a handler they do not."""
    handler = _Capture()
    handler.addFilter(RedactingFilter())
    unfiltered = _Capture()
    root = logging.getLogger()
    saved = root.level
    # The filter cleans the record in place, so the unfiltered handler must come first.
    root.addHandler(unfiltered)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        session = smart_session(timeout=1.0, backoff_base=0.0, backoff_max=0.01)
        with session:
            session.get(server.url(f"/status/503?{QUERY}"), headers=HEADER_SECRETS)
    finally:
        root.removeHandler(handler)
        root.removeHandler(unfiltered)
        root.setLevel(saved)
    assert any("TOKENSECRET7" in line for line in unfiltered.lines), "urllib3 logs the URL"
    assert any("urllib3" in line for line in handler.lines)
    assert _leaks(handler.lines) == {}


def test_redacting_filter_cleans_exception_text_and_extra_fields() -> None:
    """A record's exception text and string ``extra`` fields are cleaned, and it is kept."""
    record = logging.LogRecord("app", logging.ERROR, __file__, 1, "calling %s", (
        f"https://h/x?{QUERY}",), None)
    try:
        raise ValueError("failed with Authorization: Bearer AUTHSECRET1")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    record.request_url = f"https://{USERINFO}@h/?{QUERY}"
    assert RedactingFilter().filter(record) is True
    text = logging.Formatter("%(message)s %(request_url)s").format(record)
    assert REDACTED in text
    assert _leaks([text]) == {}


def test_redact_exception_cleans_the_whole_chain_and_keeps_types() -> None:
    """Chained causes lose their secrets but keep their type and errno."""
    root = ConnectionResetError(104, "reset while sending token=TOKENSECRET7")
    middle = OSError(f"GET /x?{QUERY}")
    middle.__cause__ = root
    outer = requests.ConnectionError(middle)
    outer.__context__ = middle
    assert redact_exception(outer) is outer
    assert root.errno == 104 and isinstance(root, ConnectionResetError)
    assert outer.args[0] is middle
    assert _leaks([_chain_text(outer)]) == {}


def test_redact_exception_survives_a_cycle() -> None:
    """An exception chain that loops back on itself is cleaned without hanging."""
    first = ValueError("api_key=KEYSECRET8")
    second = ValueError("signature=SIGSECRET9")
    first.__cause__ = second
    second.__cause__ = first
    redact_exception(first)
    assert _leaks([str(first), str(second)]) == {}


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"GET /v3/pay?{QUERY}&page=2", "page=2"),
        ("{'Authorization': 'Bearer AUTHSECRET1', 'Host': 'api'}", "'Host': 'api'"),
        ("Cookie: sid=COOKIESECRET3\r\nAccept: */*", "Accept: */*"),
        ('{"access_token": "TOKENSECRET7", "count": 3}', '"count": 3'),
        ('WECHATPAY2-SHA256-RSA2048 mchid="1",signature="WXSIGSECRET5"', "WECHATPAY2"),
        (f"https://{USERINFO}@api.example/x", "api.example/x"),
        ("Set-Cookie: session=SETCOOKIESECRET12; HttpOnly", "Set-Cookie"),
        ("X-Api-Key: APIKEYSECRET4", "X-Api-Key"),
        ("GET /x HTTP/1.1\r\nX-Auth-Token: TOKENSECRET7\r\nIdempotency-Key: k-1",
         "Idempotency-Key: k-1"),
        ("headers:\n  X-Session-Id: COOKIESECRET3\n  Accept: */*", "  Accept: */*"),
    ],
)
def test_redact_text_removes_the_secret_and_keeps_the_rest(text: str, kept: str) -> None:
    """Free text loses the credential and keeps what a reader needs to debug."""
    clean = redact_text(text)
    assert _leaks([clean]) == {}
    assert kept in clean


def test_redact_url_and_headers() -> None:
    """URLs lose userinfo, credential query values and fragments; secret headers are masked."""
    url = redact_url(f"https://{USERINFO}@h/p?{QUERY}&page=2#access_token=TOKENSECRET7")
    assert _leaks([url]) == {}
    assert "page=2" in url and url.startswith("https://[REDACTED]@h/p?")
    headers = redact_headers({**HEADER_SECRETS, "Accept": "*/*"})
    assert headers["Accept"] == "*/*"
    assert _leaks([repr(headers)]) == {}
    assert all(is_secret_header(name) for name in [*HEADER_SECRETS, "Set-Cookie", "api-key",
                                                   "X-Auth-Token", "X-Access-Key"])
    assert not any(is_secret_header(name) for name in ["Idempotency-Key", "Accept",
                                                       "Content-Type", "Retry-After"])


def test_redaction_is_linear_on_hostile_text() -> None:
    """Redacting 64 KiB of adversarial text (a hostile status line) finishes promptly."""
    hostile = ["token" * 13000, "a" * 65000, '"a":' * 16000, 'Bearer a="" ' * 5000,
               "Cookie:" * 9000, "http://" + "a" * 65000, "\n" + "x-auth-token" * 5000,
               "a:\n" * 20000, "a=" * 30000,
               # path tokens: one long run, many short ones, a token without an end
               "/" + "a1" * 32000, "/1:" * 20000, "/1:" + "a" * 65000 + "!", "/a" * 30000]
    started = time.monotonic()
    for text in hostile:
        redact_text(text)
        redact_url(text)
    # Quadratic patterns took minutes here; linear ones take milliseconds.  Generous bound.
    assert time.monotonic() - started < 20.0


def test_cli_output_has_no_secret(server: FaultServer, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's stdout and stderr never show a header or query secret."""
    cli = pytest.importorskip("requests_smartretry.cli")
    refused = f"http://127.0.0.1:{unused_port()}"
    outputs = []
    for base, path in [(server.url(""), "/status/503"), (server.url(""), "/reset"),
                       (refused, "/x"), (f"http://{USERINFO}@127.0.0.1:{server.port}", "/ok")]:
        argv = ["get", f"{base}{path}?{QUERY}", "--retries", "1", "--timeout", "1",
                "--backoff", "0.01", "--backoff-max", "0.01", "--lang", "en"]
        for name, value in HEADER_SECRETS.items():
            argv += ["-H", f"{name}: {value}"]
        cli.main(argv)
        captured = capsys.readouterr()
        outputs += [captured.out, captured.err]
    assert any(output.strip() for output in outputs)
    assert _leaks(outputs) == {}


def test_semicolon_parameters_are_redacted_and_the_url_is_not_rewritten(
    server: FaultServer, capture: _Capture
) -> None:
    """A secret after ``;`` in the query (``?a=1;access_token=…``) is redacted in
    ``AttemptEvent.url``, the ``retry_url`` log field and the ``HTTPError`` handed to
    ``on_retry``, and the reported URL keeps its ``;`` (never ``%3B``)."""
    events: list[AttemptEvent] = []
    retried: list[BaseException] = []
    session = smart_session(max_retries=1, backoff_base=0.0, backoff_max=0.01,
                            hooks=[events.append],
                            on_retry=lambda attempt, error: retried.append(error))
    url = server.url("/status/503?a=1;access_token=SEMISECRET13")
    assert session.get(url).status_code == 503
    reported = {e.url for e in events}
    assert reported == {server.url("/status/503?a=1;access_token=[REDACTED]")}
    assert retried and "SEMISECRET13" not in _chain_text(retried[0])
    assert "a=1;access_token=[REDACTED]" in str(retried[0])
    assert any("retry_url" in line for line in capture.lines)
    assert not [line for line in capture.lines if "SEMISECRET13" in line]


@pytest.mark.parametrize(("url", "expected"), [
    ("https://h/x;jsessionid=SESSIONSECRET/y?q=1", "https://h/x;jsessionid=[REDACTED]/y?q=1"),
    ("https://h/p?a=1;access_token=T0K3N&b=%3B", "https://h/p?a=1;access_token=[REDACTED]&b=%3B"),
    ("https://h/p;v=1?sign=a%3Bb&ok=1%20#x", "https://h/p;v=1?sign=[REDACTED]&ok=1%20#x"),
    ("https://h?session_id=S1", "https://h?session_id=[REDACTED]"),
])
def test_redact_url_understands_path_and_semicolon_parameters(url: str, expected: str) -> None:
    """Path parameters and ``;``-separated query parameters are redacted by name, and
    every other character of the URL is kept as it was."""
    assert redact_url(url) == expected


def test_path_template_drops_path_parameters() -> None:
    """A default operation name never carries a path parameter (``;jsessionid=…``)."""
    assert path_template("/x;jsessionid=SESSIONSECRET/tasks/123") == "/x/tasks/{id}"


def test_a_preset_endpoint_error_does_not_echo_a_secret() -> None:
    """A preset's endpoint validation error names the field without the query's secret."""
    from requests_smartretry import video_session

    with pytest.raises(ValueError, match="endpoint") as info:
        video_session(api_key="k", endpoint="https://127.0.0.1:1/api?api_key=ECHOSECRET14")
    assert "ECHOSECRET14" not in str(info.value)


@pytest.mark.parametrize("query", [
    "a=1%3Baccess_token%3DENCSECRET15",  # requests' encoding of {"a": "1;access_token=…"}
    "a=1%3baccess_token=ENCSECRET15",
    "next=https%3A%2F%2Fh%2Fcb%3Faccess_token%3DENCSECRET15",  # a redirect URI's token
    "next=/cb?access_token=ENCSECRET15",  # a nested, unencoded query
    "PHPSESSID=ENCSECRET15",
])
def test_a_secret_inside_another_parameter_is_redacted(
    server: FaultServer, capture: _Capture, query: str
) -> None:
    """A credential hidden in another parameter's value (percent-encoded ``;``/``&``, a
    redirect URI, a second ``?``) or a PHP session id never reaches ``AttemptEvent.url``,
    the log or the ``HTTPError`` handed to ``on_retry``."""
    events: list[AttemptEvent] = []
    retried: list[BaseException] = []
    session = smart_session(max_retries=1, backoff_base=0.0, backoff_max=0.01,
                            hooks=[events.append],
                            on_retry=lambda attempt, error: retried.append(error))
    assert session.get(server.url(f"/status/503?{query}")).status_code == 503
    assert events and not [e.url for e in events if "ENCSECRET15" in e.url]
    assert retried and "ENCSECRET15" not in _chain_text(retried[0])
    assert capture.lines and not [line for line in capture.lines if "ENCSECRET15" in line]


def test_smart_client_cleans_httpx_own_info_line(
    server: FaultServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx logs every request's URL at INFO; ``smart_client()`` puts a RedactingFilter on
    that logger (``redact_logs=False`` leaves it alone, and the token shows)."""
    from requests_smartretry.httpx import smart_client

    pytest.importorskip("httpx")
    httpx_logger = logging.getLogger("httpx")
    monkeypatch.setattr(httpx_logger, "filters", [])
    url = server.url("/ok?access_token=SECRET-TOKEN-30")

    def httpx_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "httpx"]

    with caplog.at_level(logging.INFO):
        with smart_client(redact_logs=False) as client:
            client.get(url)
        assert any("SECRET-TOKEN-30" in line for line in httpx_lines())  # the leak
        caplog.clear()
        with smart_client() as client:
            client.get(url)
        lines = httpx_lines()
        assert lines and not any("SECRET-TOKEN-30" in line for line in lines), lines
        assert any("access_token=" in line for line in lines)
    smart_client().close()
    assert len(httpx_logger.filters) == 1  # installed once
    with pytest.raises(TypeError, match="redact_logs must be True or False"):
        smart_client(redact_logs="yes")


@pytest.mark.parametrize(("url", "expected"), [
    ("https://h/p;jsessionid=GAP1", "https://h/p;jsessionid=[REDACTED]"),
    ("//alice:GAP2@h/x", "//[REDACTED]@h/x"),
    ("https://h/cb?code=GAP3&state=ok", "https://h/cb?code=[REDACTED]&state=ok"),
    ("https://h/p;sid=GAP4?q=1", "https://h/p;sid=[REDACTED]?q=1"),
    ("https://h/a/access_token=GAP5/b", "https://h/a/access_token=[REDACTED]/b"),
    ("https://h/p?zipcode=1&status_code=2&sidebar=3", "https://h/p?zipcode=1&status_code=2&sidebar=3"),
])
def test_redact_url_covers_session_ids_oauth_codes_and_parameter_shaped_segments(
    url: str, expected: str
) -> None:
    """``;jsessionid=``, scheme-relative ``//user:pw@``, OAuth's ``?code=``, ``;sid=`` and a
    path segment ``/access_token=…`` are redacted, the rest of the URL kept as it was; a
    name that only contains "code" or "sid" (``zipcode``, ``sidebar``) is no secret."""
    assert redact_url(url) == expected
    assert "GAP" not in redact_text(f"request to {url} failed")


def test_a_vendor_error_code_in_text_is_not_a_secret() -> None:
    """``code`` is a credential only as a URL parameter: a vendor's ``"code"`` in a JSON
    body or a message stays readable."""
    text = '{"code": "SYSTEM_ERROR", "message": "busy"} code=SYSTEM_ERROR'
    assert redact_text(text) == text
    assert redact_text("GET /cb?state=1&code=GAP6 HTTP/1.1") == \
        f"GET /cb?state=1&code={REDACTED} HTTP/1.1"


@pytest.mark.parametrize("path", [
    "/status/503;jsessionid=GAPSECRET17", "/status/503?code=GAPSECRET17",
    "/status/503;sid=GAPSECRET17", "/access_token=GAPSECRET17/status/503",
])
def test_session_ids_oauth_codes_and_parameter_segments_never_leave(
    server: FaultServer, capture: _Capture, path: str
) -> None:
    """Against a live server and a refused port, the secret in ``path`` never reaches
    ``AttemptEvent.url``, the log, the exception raised or handed to ``on_retry``, or a
    statistics key (the default operation name)."""
    events: list[AttemptEvent] = []
    retried: list[BaseException] = []
    session = smart_session(max_retries=1, backoff_base=0.0, backoff_max=0.01,
                            hooks=[events.append],
                            on_retry=lambda attempt, error: retried.append(error))
    raised: list[str] = [repr(session.get(server.url(path)).retry_history)]
    with pytest.raises(requests.ConnectionError) as info:
        session.get(f"http://127.0.0.1:{unused_port()}{path}")
    raised.append(_chain_text(info.value))
    assert events and retried
    channels = {
        "events": [repr(e) for e in events],
        "log": capture.lines,
        "raised": raised,
        "on_retry": [_chain_text(error) for error in retried],
        "stats": list(session.get_adapter("http://").stats.snapshot()),  # type: ignore[attr-defined]
    }
    assert {name: [line[:200] for line in lines if "GAPSECRET17" in line]
            for name, lines in channels.items()} == {name: [] for name in channels}
