"""The ``requests-smartretry`` command line, against a real local FaultServer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import requests_smartretry
from requests_smartretry.cli import (
    EXIT_BREAKER_OPEN,
    EXIT_HTTP_ERROR,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_TASK_FAILED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    exit_code_for,
    main,
)
from requests_smartretry.errors import AttemptDeadlineExceeded, CircuitOpenError
from requests_smartretry.faultserver import FaultServer, unused_port

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--backoff", "0.01", "--lang", "en"]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


def test_success_prints_body_to_stdout_and_attempts_to_stderr(
    server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 200 exits 0 with the body alone on stdout and the attempt lines on stderr."""
    code = main(["get", server.url("/ok"), *FAST])
    out, err = capsys.readouterr()
    assert code == EXIT_OK
    assert out == "ok"
    assert "attempt 1 succeeded" in err
    assert "HTTP 200" in err


def test_retries_a_503_then_reports_http_error(
    server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A persistent 503 is retried --retries times, then exits with the HTTP-error code."""
    code = main(["get", server.url("/status/503"), "--retries", "2", *FAST])
    out, err = capsys.readouterr()
    assert code == EXIT_HTTP_ERROR
    assert server.hits("/status/503") == 3
    assert out == ""  # as curl --fail: the error body goes to stderr, not into the output
    assert "status 503" in err
    assert "attempt 3 failed: server error (HTTP 503)" in err


def test_retry_then_success_exits_zero(
    server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reset followed by a success is retried and exits 0."""
    code = main(["get", server.url("/seq/a?steps=reset,ok"), *FAST])
    out, err = capsys.readouterr()
    assert code == EXIT_OK
    assert out == "ok"
    assert "connection reset (ECONNRESET)" in err
    assert "attempt 2 succeeded" in err


def test_not_found_is_not_retried(server: FaultServer, capsys: pytest.CaptureFixture[str]) -> None:
    """A 404 is returned at once (one request) and exits with the HTTP-error code."""
    code = main(["get", server.url("/status/404"), "--retries", "3", *FAST])
    capsys.readouterr()
    assert code == EXIT_HTTP_ERROR
    assert server.hits("/status/404") == 1


def test_refused_connection_exits_with_network_code(capsys: pytest.CaptureFixture[str]) -> None:
    """Connection refused on every attempt exits with the network-failure code."""
    code = main(["get", f"http://127.0.0.1:{unused_port()}/x", *FAST])
    out, err = capsys.readouterr()
    assert code == EXIT_NETWORK
    assert out == ""
    assert "connection refused (ECONNREFUSED)" in err
    assert "error: ConnectionError" in err


def test_slow_drip_exits_with_timeout_code(
    server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A body dripping past --timeout is cut at the deadline and exits with the timeout code."""
    code = main(["get", server.url("/drip?interval=0.1&count=100"), "--retries", "0",
                 "--timeout", "0.5", *FAST])
    out, err = capsys.readouterr()
    assert code == EXIT_TIMEOUT
    assert out == ""
    assert "AttemptDeadlineExceeded" in err


def test_operation_name_and_chinese_log_lines(
    server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """--operation names the call in the log lines, which are Chinese by default."""
    code = main(["get", server.url("/ok"), "--operation", "生成艺术照"])
    _, err = capsys.readouterr()
    assert code == EXIT_OK
    assert "[API重试] 生成艺术照 - 第 1 次尝试成功" in err


def test_quiet_prints_no_attempt_lines(
    server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """--quiet leaves stderr empty on success."""
    code = main(["get", server.url("/ok"), "--quiet", *FAST])
    out, err = capsys.readouterr()
    assert (code, out, err) == (EXIT_OK, "ok", "")


def test_secrets_never_printed(server: FaultServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Tokens in the URL and an Authorization header never appear in what the command prints."""
    secret = "s3cr3t-TOKEN-value"
    code = main(["get", server.url(f"/status/404?access_token={secret}"),
                 "-H", f"Authorization: Bearer {secret}", *FAST])
    out, err = capsys.readouterr()
    assert code == EXIT_HTTP_ERROR
    assert secret not in out + err
    assert "[REDACTED]" in err
    assert server.received("/status/404")[0].headers["authorization"] == f"Bearer {secret}"


def test_secret_in_unreachable_url_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """A failing call's error text has the URL's credentials redacted."""
    secret = "pa55word-xyz"
    code = main(["get", f"http://user:{secret}@127.0.0.1:{unused_port()}/x?api_key={secret}",
                 "--retries", "0", *FAST])
    out, err = capsys.readouterr()
    assert code == EXIT_NETWORK
    assert secret not in out + err


@pytest.mark.parametrize(
    "argv",
    [
        ["get"],
        ["get", "ftp://example.invalid/"],
        ["get", "http://127.0.0.1:1/", "--retries", "-1"],
        ["get", "http://127.0.0.1:1/", "--timeout", "0"],
        ["get", "http://127.0.0.1:1/", "--timeout", "soon"],
        ["get", "http://127.0.0.1:1/", "-H", "no-colon"],
        ["get", "http://127.0.0.1:1/", "--breaker-threshold", "0"],
        ["fetch", "http://127.0.0.1:1/"],
        [],
    ],
)
def test_bad_usage_exits_with_usage_code(argv: list[str], capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    """Invalid arguments exit with the usage code and an error naming the problem."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == EXIT_USAGE
    assert "error:" in capsys.readouterr().err


def test_help_documents_options_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """``get --help`` lists every option and the meaning of each exit code."""
    with pytest.raises(SystemExit) as exited:
        main(["get", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--retries", "--timeout", "--operation", "--lang", "--header", "--quiet"):
        assert option in text
    for code in (EXIT_OK, EXIT_HTTP_ERROR, EXIT_USAGE, EXIT_NETWORK, EXIT_TIMEOUT,
                 EXIT_BREAKER_OPEN):
        assert f"\n  {code}  " in text


def test_exit_code_for_each_failure_kind() -> None:
    """Breaker refusals, deadlines and transport errors map to distinct exit codes."""
    import requests

    assert exit_code_for(CircuitOpenError("http://x", 1.0)) == EXIT_BREAKER_OPEN
    assert exit_code_for(AttemptDeadlineExceeded("late")) == EXIT_TIMEOUT
    assert exit_code_for(requests.ConnectTimeout("slow connect")) == EXIT_TIMEOUT
    assert exit_code_for(requests.ConnectionError("reset")) == EXIT_NETWORK
    assert len({EXIT_OK, EXIT_HTTP_ERROR, EXIT_USAGE, EXIT_NETWORK, EXIT_TIMEOUT,
                EXIT_BREAKER_OPEN}) == 6


def test_breaker_refusing_the_retry_exits_with_breaker_code(
    server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --breaker-threshold 1 a reset that its retry does not heal opens the breaker,
    which refuses the next retry (a call's first failure counts once its retry fails)."""
    if not hasattr(requests_smartretry, "CircuitBreaker"):
        pytest.skip("CircuitBreaker not in this build yet")
    code = main(["get", server.url("/reset"), "--retries", "3", "--breaker-threshold", "1",
                 *FAST])
    capsys.readouterr()
    assert code == EXIT_BREAKER_OPEN
    assert server.hits("/reset") == 2


@pytest.mark.parametrize("route", ["/status/503", "/reset"])
def test_breaker_opening_during_the_call_exits_5_and_says_so(
    server: FaultServer, capsys: pytest.CaptureFixture[str], route: str
) -> None:
    """A breaker that opens on the call's second failure refuses the next retry: exit 5
    with a line naming the breaker, whether the last attempt was a response (503) or an
    error."""
    code = main(["get", server.url(route), "--retries", "3", "--breaker-threshold", "1",
                 "-q", *FAST])
    err = capsys.readouterr().err
    assert code == EXIT_BREAKER_OPEN
    assert server.hits(route) == 2
    assert "circuit breaker open" in err and "opened during this call" in err


def test_breaker_already_open_exits_5_and_sends_nothing(
    server: FaultServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A breaker that was open before the call refuses it outright: exit 5, a line saying
    it was already open, and nothing reaches the server."""
    from requests_smartretry import AttemptEvent, CircuitBreaker, EventKind, Verdict

    opened = CircuitBreaker(failure_threshold=1, recovery_timeout=60.0)
    opened(AttemptEvent(kind=EventKind.FAILURE, operation="op",
                        service=f"http://127.0.0.1:{server.port}", attempt=1,
                        max_attempts=1, call_id=1, verdict=Verdict.SERVER_ERROR))
    monkeypatch.setattr("requests_smartretry.cli.CircuitBreaker", lambda **_: opened)
    code = main(["get", server.url("/ok"), "--breaker-threshold", "1", "-q", *FAST])
    err = capsys.readouterr().err
    assert code == EXIT_BREAKER_OPEN
    assert server.hits() == 0
    assert "circuit breaker open" in err and "already open" in err


def _run_module(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "requests_smartretry", *args],
                          capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)


def test_module_entry_point_in_a_subprocess(server: FaultServer) -> None:
    """``python -m requests_smartretry get`` works as a process: body, stderr lines, exit code."""
    done = _run_module("get", server.url("/seq/b?steps=503,ok"), *FAST)
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout == "ok"
    assert "attempt 1 failed: server error (HTTP 503)" in done.stderr
    failed = _run_module("get", server.url("/status/404"), *FAST)
    assert failed.returncode == EXIT_HTTP_ERROR


@pytest.mark.parametrize("url", ["http://a..b/", "http://", "http://localhost:99999/"])
def test_an_unusable_url_is_bad_usage(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A URL that cannot be sent exits 2 with one line, never a traceback or a network code."""
    assert main(["get", url, "-q"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err



# -- wait: poll a task until a JSON field says done ---------------------------------------------

WAIT_FAST = ["--interval", "0.02", "--backoff", "0.01", "--lang", "en"]


def _task(server: FaultServer, steps: str) -> str:
    import requests

    return str(requests.post(server.url(f"/tasks?steps={steps}")).json()["id"])


def test_wait_prints_the_done_task_and_exits_zero(
    server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wait`` polls through a 503 until ``status=succeeded``: the task on stdout, the
    progress lines on stderr, exit 0."""
    task = _task(server, "queued,503,running,succeeded")
    code = main(["wait", server.url(f"/tasks/{task}"), *WAIT_FAST])
    out, err = capsys.readouterr()
    assert code == EXIT_OK
    assert '"status": "succeeded"' in out
    assert "wait - waiting for the task (poll 1, status queued" in err
    assert "wait - task done after 3 poll(s)" in err
    assert server.hits(f"/tasks/{task}") == 4


def test_wait_exit_codes(server: FaultServer, capsys: pytest.CaptureFixture[str]) -> None:
    """A failed task exits 6 (the task on stdout), a deadline 4, an unknown task (404) 1,
    a field missing from --until's syntax is bad usage."""
    assert main(["wait", server.url(f"/tasks/{_task(server, 'running,failed')}"),
                 *WAIT_FAST]) == EXIT_TASK_FAILED
    assert '"status": "failed"' in capsys.readouterr().out
    assert main(["wait", server.url(f"/tasks/{_task(server, 'running')}"), "--deadline",
                 "0.2", *WAIT_FAST]) == EXIT_TIMEOUT
    assert "PollDeadlineExceeded" in capsys.readouterr().err
    assert main(["wait", server.url("/tasks/unknown"), *WAIT_FAST]) == EXIT_HTTP_ERROR
    assert server.hits("/tasks/unknown") == 1
    with pytest.raises(SystemExit) as usage:
        main(["wait", server.url("/tasks/x"), "--until", "status"])
    assert usage.value.code == EXIT_USAGE


def test_wait_reads_nested_fields(server: FaultServer, capsys: pytest.CaptureFixture[str]) -> None:
    """``--until data.status=done`` reads a nested field (Volcengine visual's shape)."""

    def visual(srv: FaultServer, conn: Any, request: Any) -> None:
        srv.send(conn, 200, b'{"code": 10000, "data": {"status": "done"}}',
                 {"Content-Type": "application/json"})

    server.handlers["/visual"] = visual
    assert main(["wait", server.url("/visual"), "--until", "data.status=done",
                 *WAIT_FAST]) == EXIT_OK
    assert capsys.readouterr().out.startswith('{"code": 10000')
