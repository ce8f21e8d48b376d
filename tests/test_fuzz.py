"""Fuzzing with hypothesis: hostile headers, statuses, exception chains and policies never
crash the retry layer, never wait above the cap and never retry what must not be retried."""

from __future__ import annotations

import datetime
import email.utils
import errno
import logging
import math
import socket
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest
import requests
import urllib3.exceptions as u3
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from requests_smartretry import (
    AttemptDeadlineExceeded,
    Classification,
    EventKind,
    RetryPolicy,
    SmartRetryAdapter,
    Verdict,
    smart_session,
)
from requests_smartretry.backoff import (
    FAR_FUTURE,
    JITTER_MODES,
    backoff_delay,
    parse_retry_after,
)
from requests_smartretry.classify import classify_exception, classify_status, walk_causes
from requests_smartretry.engine import CallInfo, Outcome, run_call
from requests_smartretry.faultserver import FaultServer, RecordedRequest
from requests_smartretry.policy import MIN_TIMEOUT
from requests_smartretry.redact import redact_exception, redact_text, redact_url

from .conftest import watch

FAST = settings(max_examples=300, deadline=None)
NOW = 1_800_000_000.0  # a fixed "now" (2027-01-15) for date arithmetic

# -- Retry-After -------------------------------------------------------------------------


def _http_date(year: int, second: int) -> str:
    when = datetime.datetime(year, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        seconds=second)
    return email.utils.format_datetime(when, usegmt=True)


retry_after_values = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="latin-1")),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.builds(_http_date, st.integers(1, 9998), st.integers(0, 365 * 86400)),
    st.sampled_from(["", " ", "0", "00000000000000000001", "99999999", "1e9", "inf", "NaN",
                     "-0", "١٢٣", "５", "Wed, 21 Oct 2015 07:28:00 GMT",
                     "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT",
                     "Sun, 06 Nov 1994 08:49:37 +1400", "Thu, 01 Jan 1970 00:00:00 -1200",
                     "30\r\nSet-Cookie: x", "3 0", "٣٠ ثانية", "明天"]),
)


@FAST
@given(value=retry_after_values, now=st.floats(min_value=0, max_value=4e9))
def test_retry_after_parses_to_none_or_a_finite_non_negative_delay(value: str,
                                                                   now: float) -> None:
    """Any Retry-After text gives None or a finite delay >= 0, never an exception."""
    delay = parse_retry_after(value, now=now)
    assert delay is None or (math.isfinite(delay) and delay >= 0)


@FAST
@given(seconds=st.integers(min_value=0, max_value=10**15),
       zeros=st.integers(min_value=0, max_value=30))
def test_retry_after_seconds_are_read_exactly(seconds: int, zeros: int) -> None:
    """delta-seconds are read as written, leading zeros and all."""
    assert parse_retry_after("0" * zeros + str(seconds), now=NOW) == float(seconds)


@FAST
@given(digits=st.integers(min_value=16, max_value=5000))
def test_retry_after_beyond_any_cap_is_far_future_not_malformed(digits: int) -> None:
    """A Retry-After too long to matter is read as the far future, so the call gives up
    instead of ignoring the header and retrying."""
    assert parse_retry_after("9" * digits, now=NOW) == FAR_FUTURE


@FAST
@given(offset=st.integers(min_value=-(10**9), max_value=10**9))
def test_retry_after_dates_are_relative_to_now(offset: int) -> None:
    """An HTTP-date means its distance from now; a date in the past means 0."""
    when = datetime.datetime.fromtimestamp(NOW + offset, tz=datetime.timezone.utc)
    delay = parse_retry_after(email.utils.format_datetime(when, usegmt=True), now=NOW)
    assert delay == pytest.approx(max(0.0, float(offset)), abs=1.0)


# -- statuses ----------------------------------------------------------------------------

statuses = st.integers(min_value=100, max_value=599)
status_sets = st.frozensets(statuses, max_size=40) | st.just(
    RetryPolicy().retry_statuses)


@FAST
@given(status=statuses, retry_statuses=status_sets)
def test_status_table_is_total_and_never_retries_what_it_was_not_asked_to(
    status: int, retry_statuses: frozenset[int]
) -> None:
    """Every status 100-599 gets a verdict; only configured statuses are retryable."""
    verdict = classify_status(status, retry_statuses)
    assert isinstance(verdict, Classification)
    if verdict.retryable:
        assert status in retry_statuses
    if verdict.verdict is Verdict.SUCCESS:
        assert status < 400 and status not in retry_statuses
    if 400 <= status < 500 and status != 429:
        # A 408 asked to be retried reads as a timeout (the server gave up waiting for it).
        expected = [Verdict.CLIENT_ERROR, Verdict.SERVER_ERROR]
        if status == 408 and status in retry_statuses:
            expected = [Verdict.TIMEOUT]
        assert verdict.verdict in expected
        assert verdict.retryable == (status in retry_statuses)


# -- exception chains --------------------------------------------------------------------


class _HostileError(Exception):
    """An exception of the caller's own whose attributes blow up when read."""

    @property
    def reason(self) -> Any:
        raise RuntimeError("reason is not available")

    def __str__(self) -> str:
        raise RuntimeError("no text either")


def _leaf(kind: int, text: str) -> BaseException:
    makers: list[Any] = [
        lambda: ConnectionRefusedError(errno.ECONNREFUSED, text),
        lambda: ConnectionResetError(errno.ECONNRESET, text),
        lambda: OSError(errno.ETIMEDOUT, text),
        lambda: OSError(errno.EHOSTUNREACH, text),
        lambda: socket.gaierror(socket.EAI_NONAME, text),
        lambda: socket.timeout(text),
        lambda: u3.ReadTimeoutError(None, "/x", text),  # type: ignore[arg-type]
        lambda: u3.ProtocolError(text),
        lambda: u3.NewConnectionError(None, text),  # type: ignore[arg-type]
        lambda: requests.exceptions.InvalidURL(text),
        lambda: requests.exceptions.ConnectionError(text),
        lambda: requests.exceptions.ChunkedEncodingError(text),
        lambda: AttemptDeadlineExceeded(text),
        lambda: ValueError(text),
        lambda: KeyboardInterrupt(text),
        lambda: _HostileError(text),
        lambda: Exception(),
    ]
    return makers[kind % len(makers)]()  # type: ignore[no-any-return]


@st.composite
def exception_graphs(draw: Any) -> BaseException:
    """Exceptions linked by cause, context, reason and args, with depth and cycles."""
    count = draw(st.integers(min_value=1, max_value=120))
    nodes = [_leaf(draw(st.integers(0, 50)), draw(st.text(max_size=30))) for _ in range(count)]
    links = draw(st.lists(st.tuples(st.integers(0, count - 1), st.integers(0, count - 1),
                                    st.sampled_from(["cause", "context", "args", "reason"])),
                          max_size=3 * count))
    for position in range(count - 1):  # a long chain, so depth is explored too
        nodes[position].__cause__ = nodes[position + 1]
    for source, target, how in links:
        node, other = nodes[source], nodes[target]
        if how == "cause":
            node.__cause__ = other
        elif how == "context":
            node.__context__ = other
        elif how == "args":
            node.args = (*node.args, other)
        elif not isinstance(node, _HostileError):
            try:
                node.reason = other  # type: ignore[attr-defined]
            except AttributeError:
                pass
    return nodes[draw(st.integers(0, count - 1))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exc=exception_graphs())
def test_any_exception_graph_is_classified_and_redacted(exc: BaseException) -> None:
    """Chains of any depth, with cycles and hostile attributes, classify and redact."""
    verdict = classify_exception(exc)
    assert isinstance(verdict, Classification)
    assert isinstance(verdict.verdict, Verdict)
    assert len(list(walk_causes(exc))) <= 64
    assert redact_exception(exc) is exc


@FAST
@given(text=st.text(max_size=2000))
def test_redaction_of_any_text_never_fails(text: str) -> None:
    """Redacting arbitrary text or URLs returns text, never an exception."""
    assert isinstance(redact_text(text), str)
    assert isinstance(redact_url(text), str)


# -- policies at the edges ------------------------------------------------------------------

edge_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, 1e-9, 1.0, 1e308, -1.0]),
    st.integers(min_value=-5, max_value=10**20),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)


@FAST
@given(max_retries=st.one_of(st.integers(-3, 10**12), edge_floats), timeout=edge_floats,
       backoff_base=edge_floats, backoff_multiplier=edge_floats, backoff_max=edge_floats,
       jitter=st.one_of(st.none(), st.sampled_from([*JITTER_MODES, "", "FULL", 1])))
def test_policy_accepts_or_names_the_bad_value(**kwargs: Any) -> None:
    """Any parameters give a valid policy or a TypeError/ValueError naming the parameter."""
    try:
        policy = RetryPolicy(**kwargs)
    except (TypeError, ValueError) as exc:
        assert any(name in str(exc) for name in kwargs), str(exc)
        return
    assert policy.max_attempts >= 1
    assert 0 <= policy.backoff_base <= policy.backoff_max < math.inf


valid_policies = st.builds(
    RetryPolicy,
    max_retries=st.integers(0, 6),
    timeout=st.floats(min_value=MIN_TIMEOUT, max_value=1e6),  # below it: refused
    backoff_base=st.floats(min_value=0, max_value=10),
    backoff_multiplier=st.floats(min_value=1, max_value=1e300),
    backoff_max=st.floats(min_value=10, max_value=1e12),
    jitter=st.one_of(st.none(), st.sampled_from(JITTER_MODES)),
    respect_retry_after=st.booleans(),
    log=st.just(False),
)


@FAST
@given(policy=valid_policies, retry_number=st.integers(1, 10**6),
       previous=st.one_of(st.none(), st.floats(min_value=0, max_value=1e308)))
def test_backoff_never_exceeds_the_cap(policy: RetryPolicy, retry_number: int,
                                       previous: Optional[float]) -> None:
    """Whatever the policy, the retry number and the previous wait: 0 <= wait <= cap."""
    delay = backoff_delay(policy, retry_number, previous=previous)
    assert 0.0 <= delay <= policy.backoff_max
    assert math.isfinite(delay)
    if policy.backoff_base == 0 and policy.jitter != "decorrelated":
        assert delay == 0.0


# -- the engine, with synthetic outcomes ---------------------------------------------------

outcomes = st.builds(
    lambda verdict, retry_after, sent, acted, veto: Outcome(
        Classification(verdict, verdict.value, sent=sent, server_acted=acted,
                       retry_after=retry_after),
        value="value" if verdict is Verdict.SUCCESS else None,
        error=None if verdict is Verdict.SUCCESS else RuntimeError(verdict.value),
        veto=veto),
    st.sampled_from(list(Verdict)),
    st.one_of(st.none(), st.floats(min_value=0, max_value=1e12),
              st.floats(allow_nan=True, allow_infinity=True)),
    st.booleans(), st.booleans(),
    st.one_of(st.none(), st.sampled_from(["unsafe", "not_replayable"])),
)


@FAST
@given(policy=valid_policies, script=st.lists(outcomes, min_size=1, max_size=10))
def test_engine_never_retries_a_final_verdict_and_never_waits_above_the_cap(
    policy: RetryPolicy, script: list[Outcome[str]]
) -> None:
    """The loop stops on non-retryable verdicts, vetoes and long Retry-After, and every
    wait it asks for is within the cap."""
    slept: list[float] = []
    seen: list[int] = []
    retried: list[int] = []

    def attempt(number: int) -> Outcome[str]:
        seen.append(number)
        return script[min(number, len(script)) - 1]

    def broken_on_retry(attempt_number: int, error: BaseException) -> None:
        retried.append(attempt_number)
        raise RuntimeError("a broken callback must not break the call")

    def broken_hook(event: Any) -> None:
        raise RuntimeError("a broken hook must not break the call")

    library_log = logging.getLogger("requests_smartretry")
    library_log.disabled = True  # the broken hook's tracebacks are expected noise here
    try:
        finished = run_call(policy.replace(on_retry=broken_on_retry), CallInfo("op", "svc"),
                            attempt, hooks=(broken_hook,), sleep=slept.append,
                            clock=lambda: 0.0)
    finally:
        library_log.disabled = False
    waits = [e.wait for e in finished.history if e.kind is EventKind.RETRY]
    assert seen == list(range(1, len(seen) + 1))
    assert len(seen) <= policy.max_attempts
    assert len(waits) == len(seen) - 1 == len(retried)
    assert all(w is not None and 0.0 <= w <= policy.backoff_max for w in waits)
    assert slept == [w for w in waits if w], "zero waits are skipped, the rest slept"
    for number in seen[:-1]:  # every attempt that was followed by another
        made = script[min(number, len(script)) - 1]
        assert made.classification.retryable, "retried a non-retryable verdict"
        assert made.veto is None, "retried a vetoed attempt"
        asked = made.classification.retry_after
        if policy.respect_retry_after and asked is not None and not math.isnan(asked):
            assert asked <= policy.backoff_max
            # the server's delay is a minimum (never a burst of zero-wait retries)
            assert waits[number - 1] >= asked
    last = script[min(seen[-1], len(script)) - 1]
    assert finished.outcome is last
    kinds = [e.kind for e in finished.history]
    assert kinds.count(EventKind.START) == len(seen)
    assert kinds[-1] in (EventKind.SUCCESS, EventKind.GIVE_UP)


# -- statuses and Retry-After end to end, against a real server -------------------------------


def _scripted(server: FaultServer, sock: Any, request: RecordedRequest) -> None:
    """Answer with the status and raw Retry-After bytes the test put in the request."""
    status = int(request.headers["x-fuzz-status"])
    headers = {"Connection": "close"}
    if "x-fuzz-retry-after" in request.headers:
        headers["Retry-After"] = bytes.fromhex(
            request.headers["x-fuzz-retry-after"]).decode("latin-1")
    body = b"" if status in (204, 304) else b"fuzz"
    server.send(sock, status, body, headers)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer(handlers={"/fuzz": _scripted}) as fault_server:
        yield fault_server


header_text = st.one_of(
    retry_after_values.map(lambda v: v.encode("utf-8", "replace")),
    st.binary(max_size=40),
).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"").strip())


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(status=st.integers(200, 599), retry_after=st.one_of(st.none(), header_text),
       method=st.sampled_from(["GET", "POST"]))
def test_any_status_and_retry_after_from_a_server(
    server: FaultServer, status: int, retry_after: Optional[bytes], method: str
) -> None:
    """Any status with any Retry-After bytes returns a response after at most two
    attempts, with every wait within the cap and no retry of a non-retryable status."""
    assume(retry_after is None or retry_after)
    cap = 0.05
    waits: list[float] = []
    adapter = SmartRetryAdapter(max_retries=1, timeout=5.0, backoff_base=0.01,
                                backoff_max=cap, log=False, sleep=waits.append)
    session = requests.Session()
    session.mount("http://", adapter)
    headers = {"X-Fuzz-Status": str(status)}
    if retry_after is not None:
        headers["X-Fuzz-Retry-After"] = retry_after.hex()
    with session:
        response = session.request(method, server.url("/fuzz"), headers=headers)
    assert response.status_code == status
    history = response.retry_history  # type: ignore[attr-defined]
    starts = [e for e in history if e.kind is EventKind.START]
    assert 1 <= len(starts) <= 2
    assert all(0.0 <= w <= cap for w in waits)
    verdict = classify_status(status, adapter.policy.retry_statuses)
    if not verdict.retryable:
        assert len(starts) == 1
    if len(starts) == 2:
        assert verdict.retryable
        assert method == "GET" or verdict.safe_to_repeat


# -- redaction: a secret in any supported shape never survives ---------------------------------

secret_values = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789-_.~",
                        min_size=8, max_size=40).filter(
    # a secret inside the marker itself ("REDACTED") survives every redaction by definition
    lambda v: v.strip("-_.~") and v not in "[REDACTED]")
secret_params = st.sampled_from(["access_token", "api_key", "apikey", "signature", "sign",
                                 "client_secret", "password", "X-Amz-Signature", "token",
                                 "refresh_token", "sessionKey", "auth", "AccessKeyId"])
secret_header_names = st.sampled_from(["Authorization", "Proxy-Authorization", "Cookie",
                                       "Set-Cookie", "X-Api-Key", "Wechatpay-Signature",
                                       "Wechatpay-Nonce", "X-Auth-Token", "x-access-key"])
surroundings = st.sampled_from(["", " ", "\n", "error: ", "(", "url: ", "GET ", "\r\n"])


@FAST
@given(secret=secret_values, param=secret_params, header=secret_header_names,
       before=surroundings, after=surroundings, shape=st.integers(0, 7))
def test_no_secret_survives_redaction_in_any_shape(secret: str, param: str, header: str,
                                                   before: str, after: str,
                                                   shape: int) -> None:
    """Query pairs, header lines, dict reprs, JSON, auth schemes and userinfo all lose it."""
    shapes = [
        f"https://api.example/v1?page=2&{param}={secret}&x=1",
        f"/v1/pay?{param}={secret}",
        f"{header}: {secret}",
        f"{{'{header}': '{secret}', 'Accept': '*/*'}}",
        f'{{"{param}": "{secret}", "n": 1}}',
        f"Bearer {secret}",
        f"https://user:{secret}@api.example/v1",
        f"HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: "
        f"/x?{param}={secret} (Caused by ...)",
    ]
    text = f"{before}{shapes[shape]}{after}"
    assert secret not in redact_text(text)
    if shape in (0, 6):
        assert secret not in redact_url(shapes[shape])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(timeout=st.floats(min_value=1e6, max_value=1e308), explicit=st.booleans())
def test_enormous_timeouts_work_and_keep_the_watchdog_alive(
    server: FaultServer, timeout: float, explicit: bool
) -> None:
    """A timeout of centuries (policy or per request) is "forever": the request works and
    the process-wide deadline watchdog keeps cutting other attempts."""
    session = smart_session(timeout=1.0 if explicit else timeout, log=False)
    with session:
        response = session.get(server.url("/fuzz"), headers={"X-Fuzz-Status": "200"},
                               timeout=timeout if explicit else None)
    assert response.status_code == 200
    with watch(0.02) as short:
        assert short is not None
        limit = time.monotonic() + 10.0
        while not short.fired and time.monotonic() < limit:
            time.sleep(0.005)
    assert short.fired, "the watchdog died"
