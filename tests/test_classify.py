"""The classification table, row by row, with the exceptions urllib3 and requests really raise."""

from __future__ import annotations

import errno
import http.client
import socket
import ssl

import pytest
import requests
import urllib3.exceptions as u3

from requests_smartretry import AttemptDeadlineExceeded, Verdict
from requests_smartretry.classify import (
    classify_exception,
    classify_message,
    classify_status,
    walk_causes,
)
from requests_smartretry.faultserver import FaultServer, unused_port
from requests_smartretry.policy import DEFAULT_RETRY_STATUSES


def _wrapped(inner: BaseException) -> requests.exceptions.ConnectionError:
    """Wrap ``inner`` the way urllib3 and requests do for a connection failure."""
    reason = u3.NewConnectionError(None, f"Failed to establish a new connection: {inner}")
    reason.__cause__ = inner
    outer = u3.MaxRetryError(None, "/", reason)
    error = requests.exceptions.ConnectionError(outer)
    error.__context__ = outer
    return error


@pytest.mark.parametrize(
    ("inner", "verdict", "reason", "sent"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Verdict.NETWORK,
         "ECONNREFUSED", False),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Verdict.NETWORK,
         "ENOTFOUND", False),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), Verdict.NETWORK,
         "ENOTFOUND", False),
        (OSError(errno.ETIMEDOUT, "timed out"), Verdict.NETWORK, "ETIMEDOUT", False),
        (OSError(errno.EHOSTUNREACH, "no route"), Verdict.NETWORK, "EHOSTUNREACH", False),
    ],
)
def test_failures_before_sending_are_retryable_and_safe(
    inner: BaseException, verdict: Verdict, reason: str, sent: bool
) -> None:
    """Refused, DNS, connect timeout: retryable, and nothing reached the server."""
    result = classify_exception(_wrapped(inner))
    assert (result.verdict, result.reason, result.sent) == (verdict, reason, sent)
    assert result.retryable and result.safe_to_repeat


def test_reset_after_sending_is_retryable_but_may_have_reached_the_server() -> None:
    """A reset while reading the response is retryable, but not safe for POST."""
    reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    protocol = u3.ProtocolError("Connection aborted.", reset)
    result = classify_exception(requests.exceptions.ConnectionError(protocol))
    assert (result.verdict, result.reason, result.sent) == (Verdict.NETWORK, "ECONNRESET", True)
    assert not result.safe_to_repeat


def test_remote_disconnect_counts_as_a_reset() -> None:
    """A server closing without a response is a retryable network failure."""
    closed = http.client.RemoteDisconnected("Remote end closed connection without response")
    protocol = u3.ProtocolError("Connection aborted.", closed)
    result = classify_exception(requests.exceptions.ConnectionError(protocol))
    assert result.verdict is Verdict.NETWORK and result.sent


def test_connect_timeout_is_a_network_error_before_sending() -> None:
    """requests' ConnectTimeout is retryable and nothing was sent."""
    inner = u3.ConnectTimeoutError(None, "timed out")
    result = classify_exception(requests.exceptions.ConnectTimeout(u3.MaxRetryError(None, "/",
                                                                                     inner)))
    assert (result.verdict, result.reason, result.sent) == (Verdict.NETWORK, "ETIMEDOUT", False)


def test_read_timeout_and_deadline_are_timeouts() -> None:
    """A read timeout and the attempt deadline are retryable timeouts."""
    read = requests.exceptions.ReadTimeout(u3.ReadTimeoutError(None, "/", "Read timed out."))
    assert classify_exception(read).verdict is Verdict.TIMEOUT
    deadline = classify_exception(AttemptDeadlineExceeded("deadline"))
    assert (deadline.verdict, deadline.reason) == (Verdict.TIMEOUT, "deadline")


def test_tls_verification_failure_is_permanent() -> None:
    """A certificate that does not verify will not verify on retry either."""
    inner = ssl.SSLCertVerificationError(1, "certificate verify failed")
    result = classify_exception(requests.exceptions.SSLError(u3.SSLError(inner)))
    assert result.verdict is Verdict.PERMANENT and not result.retryable


@pytest.mark.parametrize(
    "error",
    [requests.exceptions.InvalidURL("bad"), requests.exceptions.MissingSchema("x"),
     requests.exceptions.TooManyRedirects("loop")],
)
def test_invalid_requests_are_permanent(error: Exception) -> None:
    """Errors in the request itself are never retried."""
    assert classify_exception(error).verdict is Verdict.PERMANENT


def test_unknown_exceptions_are_business_errors() -> None:
    """The caller's own errors are not retried."""
    result = classify_exception(ValueError("insufficient balance"))
    assert result.verdict is Verdict.BUSINESS and not result.retryable


def test_most_specific_fact_wins_over_wrappers() -> None:
    """An errno deep in the chain beats the generic ConnectionError around it."""
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    assert classify_exception(_wrapped(refused)).reason == "ECONNREFUSED"


def test_cause_chain_walk_survives_cycles_and_depth() -> None:
    """A cyclic or very deep chain is walked once, bounded, without recursion errors."""
    first, second = ValueError("a"), KeyError("b")
    first.__cause__, second.__context__ = second, first
    assert len(list(walk_causes(first))) == 2
    deep: BaseException = ConnectionResetError(errno.ECONNRESET, "reset")
    for _ in range(5000):
        outer = RuntimeError("wrap")
        outer.__cause__ = deep
        deep = outer
    assert classify_exception(deep).verdict is Verdict.BUSINESS  # the errno is beyond the bound


@pytest.mark.parametrize(
    ("status", "verdict", "acted"),
    [(200, Verdict.SUCCESS, True), (302, Verdict.SUCCESS, True),
     (500, Verdict.SERVER_ERROR, True), (502, Verdict.SERVER_ERROR, True),
     (503, Verdict.SERVER_ERROR, False), (504, Verdict.SERVER_ERROR, True),
     (429, Verdict.RATE_LIMIT, False), (400, Verdict.CLIENT_ERROR, True),
     (401, Verdict.CLIENT_ERROR, True), (404, Verdict.CLIENT_ERROR, True),
     (409, Verdict.CLIENT_ERROR, True)],
)
def test_status_column(status: int, verdict: Verdict, acted: bool) -> None:
    """5xx and 429 retry, other 4xx do not; 429 and 503 say the server did not act."""
    result = classify_status(status, DEFAULT_RETRY_STATUSES)
    assert result.verdict is verdict
    assert result.server_acted is acted


def test_status_outside_the_retry_list_is_not_retried() -> None:
    """A 5xx the policy does not list is permanent; a 429 not listed is a client error."""
    assert classify_status(501, frozenset({503})).verdict is Verdict.PERMANENT
    assert classify_status(429, frozenset({503})).verdict is Verdict.CLIENT_ERROR


@pytest.mark.parametrize("text", ["请求超时", "Request Timeout", "operation timed out"])
def test_timeout_messages_are_retryable_for_callables(text: str) -> None:
    """The seed's message rule: 超时 / timeout in the text means a retryable timeout."""
    result = classify_message(RuntimeError(text))
    assert result is not None and result.verdict is Verdict.TIMEOUT


def test_other_messages_are_not_timeouts() -> None:
    """A message without the words is left to the rest of the table."""
    assert classify_message(RuntimeError("余额不足")) is None


def test_real_refused_connection_from_requests() -> None:
    """The exception plain requests raises for a refused port classifies as ECONNREFUSED."""
    with pytest.raises(requests.ConnectionError) as caught:
        requests.get(f"http://127.0.0.1:{unused_port()}/", timeout=5)
    assert classify_exception(caught.value).reason == "ECONNREFUSED"


def test_real_reset_from_requests() -> None:
    """The exception plain requests raises for a reset classifies as ECONNRESET, sent."""
    with FaultServer() as server, pytest.raises(requests.ConnectionError) as caught:
        requests.get(server.url("/reset"), timeout=5)
    result = classify_exception(caught.value)
    assert (result.reason, result.sent) == ("ECONNRESET", True)


@pytest.mark.parametrize("code", [errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
                                  errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED])
def test_an_errno_means_nothing_sent_only_in_the_connect_phase(code: int) -> None:
    """The same errno is safe to retry before the first request byte was written and
    "may have reached the server" after it: the phase decides, not the errno."""
    from requests_smartretry.classify import CONNECT, SENDING

    after = requests.exceptions.ConnectionError(
        u3.ProtocolError("Connection aborted.", OSError(code, "x")))
    assert classify_exception(after).sent is True
    assert classify_exception(after, SENDING).sent is True
    assert classify_exception(after, CONNECT).sent is False
    assert classify_exception(after).verdict is classify_exception(after, CONNECT).verdict


def test_a_connect_phase_mark_anywhere_in_the_chain_means_nothing_sent() -> None:
    """An error the adapter's connection marked as raised while connecting (a reset
    during the TLS handshake) classifies as sent=False when wrapped as requests does."""
    from requests_smartretry.classify import CONNECT, attempt_phase, mark_connect_phase

    handshake = ConnectionResetError(errno.ECONNRESET, "reset during handshake")
    mark_connect_phase(handshake)
    error = requests.exceptions.ConnectionError(u3.ProtocolError("Connection aborted.",
                                                                 handshake))
    assert attempt_phase(error) == CONNECT
    assert classify_exception(error).sent is False


def test_an_unknown_phase_is_refused_by_name() -> None:
    """A phase that is not one of the two is a clear error naming it."""
    with pytest.raises(ValueError, match=r"phase must be.*'written'"):
        classify_exception(OSError(errno.ECONNRESET, "x"), "written")
