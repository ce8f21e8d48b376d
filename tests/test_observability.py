"""What an operator who keeps logging on sees: quiet successes, one record per decision,
bounded operation names, and no secret from a URL path anywhere."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator

import pytest
import requests

from requests_smartretry import EventKind, smart_session
from requests_smartretry.cli import EXIT_HTTP_ERROR, EXIT_NETWORK, EXIT_OK, EXIT_USAGE, main
from requests_smartretry.faultserver import FaultServer, RecordedRequest, unused_port
from requests_smartretry.log import RECORD_NAMES
from requests_smartretry.redact import path_template, redact_text, redact_url
from requests_smartretry.testing import fast_retries

from .conftest import SEED_503_LINES, LineCollector, SleepRecorder

# A Telegram-style bot token in the path and a basic-auth password: unique strings, so any
# hit names the channel that leaked it.
PATH_TOKEN = "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
PASSWORD = "PathPassSecret77"


def at_info(collector: LineCollector) -> list[logging.LogRecord]:
    return [r for r in collector.records if r.levelno >= logging.INFO]


# -- quiet success, one record per decision --------------------------------------------------


def test_a_first_attempt_success_writes_nothing_at_info(
    server: FaultServer, log_lines: LineCollector
) -> None:
    """A call whose first attempt succeeds logs 0 records at INFO, its two lines at DEBUG."""
    session = smart_session(operation_name="生成艺术照")
    assert session.get(server.url("/ok")).status_code == 200
    assert at_info(log_lines) == []
    assert [(r.levelno, r.getMessage()) for r in log_lines.records] == [
        (logging.DEBUG, "[API重试] 生成艺术照 - 第 1 次尝试 (最多 2 次)"),
        (logging.DEBUG, "[API重试] 生成艺术照 - 第 1 次尝试成功"),
    ]


def test_nothing_is_formatted_for_a_success_when_debug_is_off(
    server: FaultServer, log_lines: LineCollector
) -> None:
    """With the logger at INFO, a first-attempt success produces no record at all."""
    logging.getLogger("requests_smartretry").setLevel(logging.INFO)
    smart_session().get(server.url("/ok"))
    assert log_lines.records == []


def test_a_503_then_200_writes_the_seeds_six_lines_in_order(
    server: FaultServer, log_lines: LineCollector, sleeps: SleepRecorder
) -> None:
    """A retried call writes the seed's whole sequence at INFO and up, the held-back first
    line included, each record with its own retry_event."""
    session = smart_session(operation_name="生成艺术照", sleep=sleeps)
    response = session.get(server.url("/seq/art?steps=503,ok"))
    assert response.status_code == 200
    records = at_info(log_lines)
    assert [r.getMessage() for r in records] == SEED_503_LINES
    kinds = [r.retry_event for r in records]  # type: ignore[attr-defined]
    assert kinds == ["attempt", "failure", "retry", "wait", "attempt", "success"]
    assert set(kinds) <= set(RECORD_NAMES)
    assert [r.levelno for r in records] == [logging.INFO, logging.WARNING, *[logging.INFO] * 4]
    assert records[0].retry_verdict is None  # type: ignore[attr-defined]
    assert records[1].retry_status_code == 503  # type: ignore[attr-defined]
    assert records[3].retry_wait_s == 1.0  # type: ignore[attr-defined]
    assert len({r.retry_call_id for r in records}) == 1  # type: ignore[attr-defined]


def test_counting_retry_records_counts_retries(
    server: FaultServer, log_lines: LineCollector, sleeps: SleepRecorder
) -> None:
    """Two retries give exactly two records with retry_event="retry" and two "wait"."""
    session = smart_session(max_retries=2, backoff_base=0.5, sleep=sleeps)
    session.get(server.url("/seq/two?steps=503,503,ok"))
    kinds = [r.retry_event for r in at_info(log_lines)]  # type: ignore[attr-defined]
    assert kinds.count("retry") == 2 and kinds.count("wait") == 2
    assert kinds.count("attempt") == 3 and kinds.count("failure") == 2
    assert [r.retry_wait_s for r in log_lines.records  # type: ignore[attr-defined]
            if r.retry_event == "wait"] == [0.5, 1.0]  # type: ignore[attr-defined]


def test_the_wait_line_shows_no_wait_in_test_mode(
    server: FaultServer, log_lines: LineCollector
) -> None:
    """Under fast_retries() the log and the RETRY event say 0 ms: what really happened."""
    session = smart_session(operation_name="生成艺术照")
    with fast_retries():
        response = session.get(server.url("/seq/fast?steps=503,ok"))
    assert "[API重试] 生成艺术照 - 等待 0ms 后重试" in log_lines.lines
    retry = [e for e in response.retry_history  # type: ignore[attr-defined]
             if e.kind is EventKind.RETRY]
    assert [e.wait for e in retry] == [0.0]


def test_a_404_is_info_not_warning(server: FaultServer, log_lines: LineCollector) -> None:
    """A non-retryable 4xx is the caller's business: its lines are INFO, none WARNING."""
    session = smart_session(lang="en")
    assert session.get(server.url("/status/404")).status_code == 404
    records = at_info(log_lines)
    assert [r.retry_event for r in records] == [  # type: ignore[attr-defined]
        "attempt", "failure", "give_up"]
    assert {r.levelno for r in records} == {logging.INFO}


def test_a_timeout_stays_a_warning(log_lines: LineCollector, sleeps: SleepRecorder) -> None:
    """A refused connection (the service is unwell) still logs its failures at WARNING."""
    session = smart_session(lang="en", sleep=sleeps)
    with pytest.raises(requests.ConnectionError):
        session.get(f"http://127.0.0.1:{unused_port()}/x")
    levels = {r.retry_event: r.levelno for r in log_lines.records}  # type: ignore[attr-defined]
    assert levels["failure"] == logging.WARNING and levels["give_up"] == logging.ERROR


# -- bounded operation names -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/api/v3/contents/generations/tasks/cgt-20260101123456-x7k2",
         "/api/v3/contents/generations/tasks/{id}"),
        (f"/bot123456:{PATH_TOKEN}/getMe", "/{id}/getMe"),
        ("/v1/orders/123/items", "/v1/orders/{id}/items"),
        ("/u/550e8400-e29b-41d4-a716-446655440000", "/u/{id}"),
        ("/blobs/9f86d081884c7d659a2feaa0c55ad015", "/blobs/{id}"),
        ("/files/dGhpcyBpcyBhIHNlY3JldDEyMw", "/files/{id}"),
        ("/v3/pay/transactions/jsapi", "/v3/pay/transactions/jsapi"),
        ("/oauth2/token", "/oauth2/token"),
        ("/tasks/task_b72dc2d0", "/tasks/{id}"),  # a prefixed hex id, with or without
        ("/tasks/task_8c646d92", "/tasks/{id}"),  # a run of three digits
        ("/images/img-4f91d5", "/images/{id}"),
        ("/v1/sub-account", "/v1/sub-account"),
        ("", "/"),
    ],
)
def test_path_templates_replace_ids_and_keep_endpoint_words(path: str, template: str) -> None:
    """Identifier- and secret-like segments read {id}; the words naming an endpoint stay."""
    assert path_template(path) == template


@pytest.mark.slow
@pytest.mark.stress
def test_ten_thousand_task_ids_make_one_operation() -> None:
    """10,000 status polls of 10,000 task ids are counted under 1 operation (bounded stats
    keys and metrics labels), named by the path template."""
    handled = []

    def task(srv: FaultServer, conn: socket.socket, request: RecordedRequest) -> None:
        handled.append(1)
        srv.send(conn, 200, b"{}")

    with FaultServer(handlers={"/api/v3/tasks/": task}) as server:
        session = smart_session(budget=None)
        for n in range(10_000):
            session.get(server.url(f"/api/v3/tasks/cgt-2026{n:08d}"))
        stats = session.get_adapter("http://").stats
        assert stats is not None
        snapshot = stats.snapshot()
    operations = sorted(k for k in snapshot if k != "__total__")
    assert operations == [f"GET 127.0.0.1:{server.port}/api/v3/tasks/{{id}}"]
    assert snapshot[operations[0]]["calls"] == 10_000 == len(handled)


# -- no secret from a URL reaches any output ---------------------------------------------------


def secret_url(port: int, path: str = "/getMe") -> str:
    return f"http://alice:{PASSWORD}@127.0.0.1:{port}/bot123456:{PATH_TOKEN}{path}"


def bot_api(srv: FaultServer, conn: socket.socket, request: RecordedRequest) -> None:
    """A bot API: ``/bot<token>/status/503`` answers 503, anything else 200."""
    if request.route.endswith("/status/503"):
        srv.send(conn, 503, b"busy")
    else:
        srv.send(conn, 200, b"{}")


@pytest.fixture
def bot_server() -> Iterator[FaultServer]:
    """A FaultServer whose /bot… routes answer as bot_api does."""
    with FaultServer(handlers={"/bot": bot_api}) as running:
        yield running


def assert_clean(text: str) -> None:
    assert PATH_TOKEN not in text and PASSWORD not in text, text


def test_path_token_and_password_reach_no_output(log_lines: LineCollector) -> None:
    """A bot token in the path and a basic-auth password are absent from log lines and
    their extra fields, events, stats keys, and str/repr of the raised exception (urllib3's
    "Max retries exceeded with url" included)."""
    seen = []
    session = smart_session(hooks=[seen.append], sleep=lambda s: None)
    with pytest.raises(requests.ConnectionError) as caught:
        session.get(secret_url(unused_port()))
    message = str(caught.value)
    assert "Max retries exceeded with url" in message
    assert_clean(message)
    assert_clean(repr(caught.value))
    assert_clean(repr(caught.value.args))
    for record in log_lines.records:
        assert_clean(record.getMessage())
        assert_clean(json.dumps({k: str(v) for k, v in vars(record).items()}))
    assert len(seen) >= 4
    for event in seen:
        assert_clean(repr(event))
        assert_clean(str(event.error))
    stats = session.get_adapter("http://").stats
    assert stats is not None
    assert_clean(json.dumps(stats.snapshot()))


def test_path_token_is_absent_from_an_http_errors_message(
    bot_server: FaultServer, sleeps: SleepRecorder
) -> None:
    """The HTTPError a 503 is reported as, and its events, name the URL without the token."""
    seen = []
    session = smart_session(hooks=[seen.append], sleep=sleeps)
    response = session.get(secret_url(bot_server.port, "/status/503"))
    assert response.status_code == 503
    errors = [e.error for e in seen if e.error is not None]
    assert errors and all(PATH_TOKEN not in str(e) for e in errors)
    assert all(e.url is not None and "[REDACTED]" in e.url for e in seen)
    assert all(PATH_TOKEN not in (e.url or "") + e.operation for e in seen)


def test_the_cli_prints_no_path_token_or_password(
    bot_server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """CLI stdout and stderr, for a success, an HTTP error and a network failure, never
    show the path token or the password."""
    for url, code in ((secret_url(bot_server.port, "/ok"), EXIT_OK),
                      (secret_url(bot_server.port, "/status/503"), EXIT_HTTP_ERROR),
                      (secret_url(unused_port()), EXIT_NETWORK)):
        assert main(["get", url, "--backoff", "0", "--lang", "en"]) == code
        out, err = capsys.readouterr()
        assert "attempt 1" in err
        assert_clean(out)
        assert_clean(err)


def test_redact_text_cleans_a_token_path_inside_a_message() -> None:
    """Free text quoting a path keeps the path's shape with the token replaced."""
    text = f"Max retries exceeded with url: /bot1:{PATH_TOKEN}/getMe (Caused by X)"
    assert redact_text(text) == ("Max retries exceeded with url: /[REDACTED]/getMe "
                                 "(Caused by X)")
    assert redact_url(f"https://h/bot1:{PATH_TOKEN}/getMe?chat=5") == \
        "https://h/[REDACTED]/getMe?chat=5"
    assert redact_url("https://h/v1/orders/123") == "https://h/v1/orders/123"


def test_a_token_segment_with_a_file_extension_is_redacted_too() -> None:
    """A token segment followed by an extension (``/123:AAH….json``) is a secret all the
    same: redacted in a URL (the ``retry_url`` field, the history, the CLI's summary) and
    in free text."""
    url = f"http://127.0.0.1:1/files/123456:{PATH_TOKEN}.json?x=1"
    assert redact_url(url) == "http://127.0.0.1:1/files/[REDACTED]?x=1"
    text = f"Max retries exceeded with url: /files/123456:{PATH_TOKEN}.json (Caused by X)"
    assert redact_text(text) == ("Max retries exceeded with url: /files/[REDACTED] "
                                 "(Caused by X)")


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_error_body_goes_to_stderr_unless_asked(
    server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """As curl --fail: a 404 writes nothing to stdout and its body to stderr;
    --fail-with-body writes it to stdout as well."""
    assert main(["get", server.url("/status/404"), "-q"]) == EXIT_HTTP_ERROR
    out, err = capsys.readouterr()
    assert out == "" and "status 404" in err
    assert main(["get", server.url("/status/404"), "-q", "--fail-with-body"]) == \
        EXIT_HTTP_ERROR
    out, _ = capsys.readouterr()
    assert out == "status 404"


def test_cli_backoff_zero_retries_without_waiting(
    server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """--backoff 0 is accepted and the retry waits 0 ms."""
    code = main(["get", server.url("/seq/cli0?steps=503,ok"), "--backoff", "0", "--lang", "en"])
    _, err = capsys.readouterr()
    assert code == EXIT_OK
    assert "waiting 0ms before retrying" in err


def test_cli_url_errors_print_gets_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """A URL without http(s):// prints the get subcommand's usage, not the top level's."""
    with pytest.raises(SystemExit) as exited:
        main(["get", "ftp://example.invalid/x"])
    assert exited.value.code == EXIT_USAGE
    _, err = capsys.readouterr()
    assert err.startswith("usage: requests-smartretry get ")
    assert "URL must start with http://" in err
