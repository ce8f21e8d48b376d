"""The callable API: execute_with_retry, with_retry, execute_with_smart_retry."""

from __future__ import annotations

import base64
import contextvars
import errno
import inspect
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests

import requests_smartretry.workers as workers_module
from requests_smartretry import (
    AttemptDeadlineExceeded,
    CallTimeoutError,
    CircuitOpenError,
    Classification,
    EventKind,
    SmartRetryError,
    Verdict,
    attempt_history,
    execute_with_retry,
    execute_with_smart_retry,
    smart_session,
    with_retry,
)
from requests_smartretry.deadline import current_scope, remaining
from requests_smartretry.events import AttemptEvent
from requests_smartretry.faultserver import FaultServer, RecordedRequest
from requests_smartretry.functions import abandoned_attempts

from .conftest import SEED_503_LINES

ROOT = Path(__file__).resolve().parent.parent


class Waits:
    """An injected sleep that records the backoff instead of sleeping."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


class Flaky:
    """A callable that raises the given errors in turn, then returns ``value``."""

    def __init__(self, *errors: BaseException, value: Any = "done") -> None:
        self.errors = list(errors)
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


class Events(list[AttemptEvent]):
    """A hook that keeps every event."""

    def __call__(self, event: AttemptEvent) -> None:
        self.append(event)

    def kinds(self) -> list[EventKind]:
        return [e.kind for e in self]


class WithStatus(Exception):
    """An SDK error that carries an HTTP status as ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"vendor said {status}")
        self.status = status


class WithStatusCode(Exception):
    """An SDK error that carries an HTTP status as ``status_code``."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"vendor said {status_code}")
        self.status_code = status_code


class _Resp:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = {}


class WithResponse(Exception):
    """An SDK error that carries the response (``error.response.status_code``)."""

    def __init__(self, status_code: int) -> None:
        super().__init__("vendor call failed")
        self.response = _Resp(status_code)


class OrderRejected(Exception):
    """The caller's own business error."""


@pytest.fixture(scope="module")
def server() -> Any:
    """One loopback fault server for the module (each test uses its own routes)."""
    with FaultServer() as running:
        yield running


@pytest.fixture
def release() -> Any:
    """An event that blocked test callables wait on; set at teardown so none outlive us."""
    gate = threading.Event()
    yield gate
    gate.set()


def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# -- the classification table (smart variant) ------------------------------------------------

RETRYABLE = [
    ("ECONNRESET", OSError(errno.ECONNRESET, "Connection reset by peer")),
    ("ETIMEDOUT", OSError(errno.ETIMEDOUT, "Connection timed out")),
    ("ECONNREFUSED", OSError(errno.ECONNREFUSED, "Connection refused")),
    ("ConnectionRefusedError", ConnectionRefusedError(errno.ECONNREFUSED, "refused")),
    ("dns-gaierror", socket.gaierror(socket.EAI_NONAME, "Name or service not known")),
    ("status-503", WithStatus(503)),
    ("status-429", WithStatus(429)),
    ("status_code-500", WithStatusCode(500)),
    ("response.status_code-502", WithResponse(502)),
    ("TimeoutError", TimeoutError("read took too long")),
    ("requests.Timeout", requests.Timeout()),
    ("requests.ReadTimeout", requests.ReadTimeout("read timed out")),
    ("requests.ConnectTimeout", requests.ConnectTimeout("connect timed out")),
    ("status_code-408", WithStatusCode(408)),  # Request Timeout: retried when safe
    ("message-超时", RuntimeError("调用视频接口超时")),
    ("message-timeout", RuntimeError("upstream Timeout while rendering")),
    ("chained-cause", RuntimeError("sdk failed")),
]
RETRYABLE[-1][1].__cause__ = ConnectionResetError(errno.ECONNRESET, "reset")

NOT_RETRYABLE = [
    ("business-error", OrderRejected("余额不足")),
    ("ValueError", ValueError("bad amount")),
    ("status-404", WithStatus(404)),
    ("status_code-400", WithStatusCode(400)),
    ("response.status_code-401", WithResponse(401)),
    ("status_code-409", WithStatusCode(409)),
    ("other-errno", FileNotFoundError(errno.ENOENT, "no such file")),
    ("KeyError-mentioning-timeout", KeyError("timeout_ms")),  # a bug, not a slow server
    ("AttributeError-mentioning-timeout", AttributeError("no attribute timeout")),
]


@pytest.mark.parametrize("error", [e for _, e in RETRYABLE], ids=[n for n, _ in RETRYABLE])
def test_smart_retries_each_retryable_row_once_by_default(error: BaseException) -> None:
    """Each retryable row of the table gets exactly one retry (2 calls) with defaults."""
    waits = Waits()
    fn = Flaky(error)
    assert execute_with_smart_retry(fn, sleep=waits) == "done"
    assert fn.calls == 2
    assert waits.seconds == [1.0]


@pytest.mark.parametrize("error", [e for _, e in NOT_RETRYABLE],
                         ids=[n for n, _ in NOT_RETRYABLE])
def test_smart_raises_everything_else_after_one_call(error: BaseException) -> None:
    """Business errors, 4xx and unknown errors are raised at once (1 call, no wait)."""
    waits = Waits()
    fn = Flaky(error)
    with pytest.raises(type(error)) as raised:
        execute_with_smart_retry(fn, sleep=waits)
    assert raised.value is error
    assert fn.calls == 1
    assert waits.seconds == []


def test_smart_retries_a_real_http_error_from_raise_for_status(server: FaultServer) -> None:
    """requests' own HTTPError (from raise_for_status on a 503) is retried; a 404 is not."""

    def fetch(path: str) -> Callable[[], int]:
        def call() -> int:
            response = requests.get(server.url(path), timeout=5)
            response.raise_for_status()
            return response.status_code
        return call

    assert execute_with_smart_retry(fetch("/seq/a?steps=503,ok"), sleep=Waits()) == 200
    assert server.hits("/seq/a") == 2
    with pytest.raises(requests.HTTPError):
        execute_with_smart_retry(fetch("/status/404"), sleep=Waits())
    assert server.hits("/status/404") == 1


def test_smart_honours_retry_after_of_an_attached_response() -> None:
    """A 429 whose attached response says Retry-After: 2 waits 2 s, not the backoff."""
    error = WithResponse(429)
    error.response.headers["Retry-After"] = "2"
    waits = Waits()
    execute_with_smart_retry(Flaky(error), sleep=waits)
    assert waits.seconds == [2.0]


def test_retry_on_extends_the_table() -> None:
    """retry_on=SomeError retries that error type too; others stay non-retryable."""
    fn = Flaky(OrderRejected("库存锁定中"))
    assert execute_with_smart_retry(fn, retry_on=OrderRejected, sleep=Waits()) == "done"
    assert fn.calls == 2
    other = Flaky(ValueError("bad"))
    with pytest.raises(ValueError):
        execute_with_smart_retry(other, retry_on=(OrderRejected,), sleep=Waits())
    assert other.calls == 1


def test_classify_callback_decides_first() -> None:
    """classify(error) can force a retry (True), refuse one (False) or defer (None)."""
    vendor_busy = Flaky(OrderRejected("SYSTEMBUSY"))
    assert execute_with_smart_retry(
        vendor_busy, classify=lambda e: "BUSY" in str(e) or None, sleep=Waits()) == "done"
    assert vendor_busy.calls == 2

    never = Flaky(TimeoutError("slow"))
    with pytest.raises(TimeoutError):
        execute_with_smart_retry(never, classify=lambda e: False, sleep=Waits())
    assert never.calls == 1

    table = Flaky(TimeoutError("slow"))
    execute_with_smart_retry(table, classify=lambda e: None, sleep=Waits())
    assert table.calls == 2

    explicit = Flaky(OrderRejected("PAYERROR"))
    events = Events()
    execute_with_smart_retry(
        explicit, hooks=[events], sleep=Waits(),
        classify=lambda e: Classification(Verdict.SERVER_ERROR, "PAYERROR"))
    failure = next(e for e in events if e.kind is EventKind.FAILURE)
    assert (failure.verdict, failure.reason) == (Verdict.SERVER_ERROR, "PAYERROR")


def test_a_broken_classify_callback_falls_back_to_the_table(caplog: Any) -> None:
    """A classify callback that raises is logged and the table decides."""

    def broken(error: BaseException) -> bool:
        raise RuntimeError("bug in classify")

    fn = Flaky(TimeoutError("slow"))
    with caplog.at_level(logging.ERROR, logger="requests_smartretry"):
        execute_with_smart_retry(fn, classify=broken, sleep=Waits())
    assert fn.calls == 2
    assert "classify callback" in caplog.text


# -- the basic variant -----------------------------------------------------------------------


@pytest.mark.parametrize("error", [e for _, e in NOT_RETRYABLE][:4],
                         ids=[n for n, _ in NOT_RETRYABLE][:4])
def test_basic_variant_retries_any_exception(error: BaseException) -> None:
    """execute_with_retry retries every Exception, the table's non-retryable rows included."""
    fn = Flaky(error)
    assert execute_with_retry(fn, sleep=Waits()) == "done"
    assert fn.calls == 2


def test_basic_variant_raises_the_last_error_with_its_history() -> None:
    """When every attempt fails, the last exception is raised with the attempt history."""
    first, last = ValueError("first"), ValueError("last")
    fn = Flaky(first, last)
    with pytest.raises(ValueError) as raised:
        execute_with_retry(fn, sleep=Waits())
    assert raised.value is last
    history = attempt_history(raised.value)
    assert [e.kind for e in history] == [
        EventKind.START, EventKind.FAILURE, EventKind.RETRY, EventKind.START,
        EventKind.FAILURE, EventKind.GIVE_UP]
    assert history[1].verdict is Verdict.ERROR and history[1].reason == "ValueError"


def test_basic_variant_can_refuse_errors_through_classify() -> None:
    """classify=lambda e: False-ish lets the basic variant raise some errors at once."""
    fn = Flaky(OrderRejected("余额不足"))
    with pytest.raises(OrderRejected):
        execute_with_retry(fn, sleep=Waits(),
                           classify=lambda e: False if isinstance(e, OrderRejected) else None)
    assert fn.calls == 1


@pytest.mark.parametrize("escape", [SystemExit(3), KeyboardInterrupt()])
def test_base_exceptions_propagate_without_retry(escape: BaseException) -> None:
    """SystemExit and KeyboardInterrupt from fn are never retried nor swallowed."""
    fn = Flaky(escape)
    with pytest.raises(type(escape)):
        execute_with_retry(fn, sleep=Waits())
    assert fn.calls == 1


def test_max_retries_and_return_values() -> None:
    """max_retries=3 allows 4 calls; the function's value (even None) is returned."""
    fn = Flaky(*(OSError(errno.ECONNRESET, "reset") for _ in range(3)), value=None)
    waits = Waits()
    assert execute_with_smart_retry(fn, max_retries=3, sleep=waits) is None
    assert fn.calls == 4
    assert waits.seconds == [1.0, 2.0, 4.0]


# -- on_retry, hooks, breaker, budget, logs ----------------------------------------------------


def test_on_retry_gets_the_failed_attempt_number_and_the_error() -> None:
    """on_retry(attempt, error) is called before each retry, as with the adapter."""
    seen: list[tuple[int, BaseException]] = []
    first = TimeoutError("slow")
    execute_with_retry(Flaky(first), sleep=Waits(),
                       on_retry=lambda attempt, error: seen.append((attempt, error)))
    assert seen == [(1, first)]


def test_hooks_see_the_same_event_stream_as_the_adapter() -> None:
    """hooks= receives START/FAILURE/RETRY/START/SUCCESS events named after the operation."""
    events = Events()
    execute_with_smart_retry(Flaky(WithStatus(503)), hooks=events, sleep=Waits(),
                             operation_name="生成视频", service="ark")
    assert events.kinds() == [EventKind.START, EventKind.FAILURE, EventKind.RETRY,
                              EventKind.START, EventKind.SUCCESS]
    assert {e.operation for e in events} == {"生成视频"}
    assert {e.service for e in events} == {"ark"}
    assert events[1].status_code is None and events[1].reason == "HTTP 503"
    assert events[2].wait == 1.0


class CountingBreaker:
    """A minimal BreakerGate: opens after ``threshold`` failures it has seen as a hook."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.failures = 0

    def before_attempt(self, service: str) -> None:
        if self.failures >= self.threshold:
            raise CircuitOpenError(service, 30.0)

    def __call__(self, event: AttemptEvent) -> None:
        if event.kind is EventKind.FAILURE:
            self.failures += 1


class Budget:
    """A minimal BudgetGate with ``tokens`` retries to spend."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.events: list[AttemptEvent] = []

    def allow_retry(self, service: str) -> bool:
        self.tokens -= 1
        return self.tokens >= 0

    def __call__(self, event: AttemptEvent) -> None:
        self.events.append(event)


def test_breaker_sees_failures_and_refuses_calls_when_open() -> None:
    """The breaker consumes the events and, once open, refuses before fn is called."""
    breaker = CountingBreaker(threshold=2)
    failing = Flaky(WithStatus(503), WithStatus(503))
    with pytest.raises(WithStatus):
        execute_with_smart_retry(failing, breaker=breaker, sleep=Waits())
    assert breaker.failures == 2
    untouched = Flaky()
    with pytest.raises(CircuitOpenError) as raised:
        execute_with_smart_retry(untouched, breaker=breaker, sleep=Waits())
    assert untouched.calls == 0
    assert attempt_history(raised.value)[0].kind is EventKind.REJECTED


def test_spent_budget_stops_retries() -> None:
    """With the retry budget spent, a retryable failure is raised after one call."""
    budget = Budget(tokens=0)
    fn = Flaky(TimeoutError("slow"))
    with pytest.raises(TimeoutError) as raised:
        execute_with_smart_retry(fn, budget=budget, sleep=Waits())
    assert fn.calls == 1
    assert attempt_history(raised.value)[-1].give_up_reason == "budget"
    assert budget.events  # the budget also consumes the event stream


def test_log_lines_are_the_adapters_lines(server: FaultServer, caplog: Any) -> None:
    """A callable failing with a 503-carrying error logs exactly what the adapter logs for a
    503 response, line for line."""
    caplog.set_level(logging.DEBUG, logger="requests_smartretry")
    session = smart_session(operation_name="生成艺术照", sleep=Waits())
    assert session.get(server.url("/seq/log?steps=503,ok")).status_code == 200
    adapter_lines = [r.getMessage() for r in caplog.records]
    caplog.clear()
    execute_with_smart_retry(Flaky(WithStatusCode(503)), operation_name="生成艺术照",
                             sleep=Waits())
    callable_lines = [r.getMessage() for r in caplog.records]
    assert callable_lines == adapter_lines == SEED_503_LINES


def test_operation_defaults_to_the_functions_qualname(caplog: Any) -> None:
    """Without operation_name, log lines name the function by its __qualname__."""

    class Client:
        def create_task(self) -> str:
            return "task"

    caplog.set_level(logging.DEBUG, logger="requests_smartretry")
    execute_with_retry(Client().create_task, lang="en")
    assert caplog.records[0].getMessage() == (
        "[API retry] test_operation_defaults_to_the_functions_qualname.<locals>."
        "Client.create_task - attempt 1 (of at most 2)")


# -- timeouts ------------------------------------------------------------------------------------


def test_caller_regains_control_at_the_timeout(release: threading.Event) -> None:
    """A callable that runs past its timeout: the caller gets CallTimeoutError within
    timeout + 0.2 s, while the abandoned attempt finishes in the background."""
    finished = threading.Event()

    def stuck() -> str:
        release.wait(10)
        finished.set()
        return "late"

    started = time.monotonic()
    with pytest.raises(CallTimeoutError) as raised:
        execute_with_retry(stuck, timeout=0.5, max_retries=0)
    took = time.monotonic() - started
    assert took < 0.5 + 0.2
    assert took >= 0.5
    assert isinstance(raised.value, TimeoutError)
    assert isinstance(raised.value, requests.Timeout)  # and AttemptDeadlineExceeded
    assert isinstance(raised.value, AttemptDeadlineExceeded)
    assert abandoned_attempts() >= 1
    release.set()
    assert finished.wait(5)
    assert wait_until(lambda: abandoned_attempts() == 0)


def test_timed_out_attempts_are_retried_and_their_results_discarded(
    release: threading.Event, caplog: Any
) -> None:
    """Each attempt gets its own timeout; abandoned results are logged at DEBUG, not used."""
    caplog.set_level(logging.DEBUG, logger="requests_smartretry")
    calls: list[int] = []

    def slow_then_fast() -> str:
        calls.append(1)
        if len(calls) == 1:
            release.wait(10)
            return "stale"
        return "fresh"

    assert execute_with_retry(slow_then_fast, timeout=0.3, sleep=Waits()) == "fresh"
    assert len(calls) == 2
    release.set()
    assert wait_until(lambda: "返回值已丢弃" in caplog.text)
    assert "slow_then_fast - 第 1 次尝试超时被放弃后在后台结束" in caplog.text


def test_the_deadline_reaches_inside_fn() -> None:
    """Code inside fn sees the attempt's retry scope and the time left."""
    seen: list[Optional[float]] = []

    def look() -> None:
        seen.append(remaining())
        assert current_scope() is not None

    execute_with_retry(look, timeout=2.0)
    assert seen[0] is not None and 0 < seen[0] <= 2.0
    assert current_scope() is None  # the caller's context is untouched


def test_context_variables_are_visible_inside_fn() -> None:
    """contextvars set by the caller (request ids, tracing) reach fn in the worker thread."""
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    request_id.set("req-42")
    assert execute_with_retry(request_id.get) == "req-42"


def test_worker_threads_are_reused() -> None:
    """Consecutive calls run on idle daemon workers that already exist, not a new thread
    each."""
    warm = execute_with_retry(threading.current_thread)
    existing = set(threading.enumerate())
    used = {execute_with_retry(threading.current_thread) for _ in range(20)}
    assert warm in existing
    assert used <= existing
    assert threading.current_thread() not in used
    assert all(thread.daemon for thread in used)


def test_run_in_thread_false_runs_in_the_callers_thread() -> None:
    """run_in_thread=False keeps thread-local state visible; the scope still applies."""
    local = threading.local()
    local.user = "alice"

    def whoami() -> tuple[str, Optional[float]]:
        return local.user, remaining()

    user, left = execute_with_retry(whoami, run_in_thread=False, timeout=3.0)
    assert user == "alice"
    assert left is not None and left <= 3.0


def test_abandoned_attempts_are_bounded(monkeypatch: Any, release: threading.Event) -> None:
    """Past the cap of abandoned-but-running attempts, new attempts are refused at once."""
    monkeypatch.setattr(workers_module, "_MAX_ABANDONED", 1)
    with pytest.raises(CallTimeoutError):
        execute_with_retry(lambda: release.wait(10), timeout=0.2, max_retries=0)
    refused = Flaky()
    with pytest.raises(SmartRetryError, match="abandoned") as raised:
        execute_with_retry(refused, sleep=Waits())
    assert refused.calls == 0
    assert attempt_history(raised.value)[-1].give_up_reason == "not_retryable"
    release.set()
    assert wait_until(lambda: abandoned_attempts() == 0)
    assert execute_with_retry(refused) == "done"


# -- deadlines and nesting with a real smart session -------------------------------------------


@pytest.mark.slow
def test_smart_session_inside_is_cut_at_the_socket(server: FaultServer) -> None:
    """A smart session request inside execute_with_retry(timeout=1.0) against a slow drip is
    cut at the socket within 1.0 + 0.5 s, not after the session's own 30 s."""
    inner = Events()
    # The session's own timeout is 30 s: only the enclosing deadline can cut the attempt.
    session = smart_session(hooks=(inner,))
    cut: dict[str, Any] = {}
    done = threading.Event()

    def download() -> bytes:
        started = time.monotonic()
        try:
            return session.get(server.url("/drip?interval=0.1&count=100")).content
        except requests.RequestException as exc:
            cut["after"] = time.monotonic() - started
            cut["error"] = exc
            raise
        finally:
            done.set()

    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        execute_with_smart_retry(download, timeout=1.0, max_retries=0)
    assert time.monotonic() - started < 1.0 + 0.5
    assert done.wait(5)
    assert cut["after"] < 1.0 + 0.5
    assert isinstance(cut["error"], AttemptDeadlineExceeded)
    failures = [e for e in inner if e.kind is EventKind.FAILURE]
    assert [(e.attempt, e.reason) for e in failures] == [(1, "deadline")]
    assert failures[0].elapsed is not None and failures[0].elapsed < 1.5
    assert server.hits("/drip") == 1


def test_nested_smart_session_makes_one_attempt_per_outer_attempt(server: FaultServer) -> None:
    """nested="single" (default): a smart session inside with_retry gives 2 requests, not 2×2."""
    session = smart_session(sleep=Waits())

    @with_retry(smart=True, sleep=Waits())
    def fetch() -> int:
        response = session.get(server.url("/seq/single?steps=503"))
        response.raise_for_status()
        return response.status_code

    with pytest.raises(requests.HTTPError):
        fetch()
    assert server.hits("/seq/single") == 2


def test_nested_retry_multiplies_on_request(server: FaultServer) -> None:
    """nested="retry" on the inner session asks for its own retries: 2×2 = 4 requests."""
    session = smart_session(sleep=Waits(), nested="retry")

    @with_retry(smart=True, sleep=Waits())
    def fetch() -> int:
        response = session.get(server.url("/seq/multiply?steps=503"))
        response.raise_for_status()
        return response.status_code

    with pytest.raises(requests.HTTPError):
        fetch()
    assert server.hits("/seq/multiply") == 4


def test_nested_callables_do_not_multiply() -> None:
    """execute_with_retry inside execute_with_retry: the inner call makes one attempt."""
    inner = Flaky(*(TimeoutError("slow") for _ in range(10)))

    def outer() -> Any:
        return execute_with_retry(inner, sleep=Waits())

    with pytest.raises(TimeoutError):
        execute_with_retry(outer, sleep=Waits())
    assert inner.calls == 2


# -- with_retry ----------------------------------------------------------------------------------


def test_with_retry_keeps_the_functions_identity() -> None:
    """with_retry keeps name, docstring, signature and __wrapped__ (functools.wraps)."""

    def charge(order_id: str, *, amount: int = 1) -> str:
        """Charge an order."""
        return f"{order_id}:{amount}"

    wrapped = with_retry(charge, max_retries=2)
    assert wrapped.__name__ == "charge"
    assert wrapped.__doc__ == "Charge an order."
    assert wrapped.__wrapped__ is charge  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(charge)
    assert wrapped("T1", amount=3) == "T1:3"
    assert wrapped.retry_policy.max_retries == 2  # type: ignore[attr-defined]


def test_with_retry_as_decorator_with_and_without_arguments() -> None:
    """@with_retry and @with_retry(...) both wrap; methods bind as usual."""
    attempts: list[int] = []

    class Client:
        @with_retry
        def plain(self, x: int) -> int:
            return x * 2

        @with_retry(smart=True, sleep=Waits())
        def flaky(self, x: int) -> int:
            attempts.append(x)
            if len(attempts) == 1:
                raise ConnectionResetError(errno.ECONNRESET, "reset")
            return x + 1

    client = Client()
    assert client.plain(4) == 8
    assert client.flaky(4) == 5
    assert attempts == [4, 4]


def test_with_retry_smart_false_retries_everything() -> None:
    """with_retry defaults to the basic variant; smart=True switches to the table."""
    basic = with_retry(Flaky(OrderRejected("x")), sleep=Waits())
    assert basic() == "done"
    smart_fn = Flaky(OrderRejected("x"))
    with pytest.raises(OrderRejected):
        with_retry(smart_fn, smart=True, sleep=Waits())()
    assert smart_fn.calls == 1


# -- validation ----------------------------------------------------------------------------------


def test_bad_arguments_are_named() -> None:
    """Every bad argument raises at once with a message naming it."""
    with pytest.raises(TypeError, match="needs a callable"):
        execute_with_retry(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_retrys"):
        execute_with_retry(Flaky(), max_retrys=2)
    with pytest.raises(TypeError, match="retry_on"):
        execute_with_retry(Flaky(), retry_on=ValueError)
    with pytest.raises(TypeError, match="retry_on must be an exception class"):
        execute_with_smart_retry(Flaky(), retry_on=("timeout",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        execute_with_retry(Flaky(), timeout=0)
    with pytest.raises(TypeError, match="hooks"):
        execute_with_retry(Flaky(), hooks=[42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="smart"):
        with_retry(smart="yes")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="max_retrys"):
        with_retry(max_retrys=2)  # validated when decorating, not at the first call


def test_generator_functions_are_refused() -> None:
    """Generator functions, sync or async, are refused: only creating the generator would be
    retried, never the work.  (Coroutine functions are retried: tests/test_async.py.)"""

    def pages() -> Any:
        yield 1

    async def async_pages() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        execute_with_smart_retry(pages)
    with pytest.raises(TypeError, match="generator"):
        execute_with_retry(async_pages)
    with pytest.raises(TypeError, match="generator"):
        with_retry(async_pages)


def test_a_classify_callback_cannot_turn_an_error_into_success(caplog: Any) -> None:
    """A classify answer that is not a failure verdict (SUCCESS, a string) is logged and
    ignored: the table decides."""
    for answer in (Classification(Verdict.SUCCESS, "ok"), "retry please"):
        fn = Flaky(ValueError("bad"))
        with pytest.raises(ValueError):
            execute_with_smart_retry(fn, classify=lambda e, a=answer: a, sleep=Waits())
        assert fn.calls == 1
    assert caplog.text.count("classify callback") == 2


# -- typing ----------------------------------------------------------------------------------------


def test_with_retry_keeps_signatures_for_mypy() -> None:
    """mypy --strict accepts tests/typing_check.py: with_retry keeps the wrapped signature
    (its required '# type: ignore's would otherwise be reported unused)."""
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--no-error-summary", "tests/typing_check.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- a real vendor SDK: wechatpayv3 --------------------------------------------------------------


class WeChatPayFake:
    """The WeChat Pay v3 JSAPI order endpoint on loopback: checks each request's merchant
    signature, answers 500 SYSTEM_ERROR once, then a platform-signed prepay_id."""

    def __init__(self, merchant_public: Any, platform_private: Any, public_key_id: str) -> None:
        self.merchant_public = merchant_public
        self.platform_private = platform_private
        self.public_key_id = public_key_id
        self.nonces: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, server: FaultServer, sock: socket.socket,
                 request: RecordedRequest) -> None:
        from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
        from cryptography.hazmat.primitives.hashes import SHA256

        auth = request.headers["authorization"]
        fields = dict(part.split("=", 1) for part in
                      auth.split(" ", 1)[1].replace('"', "").split(","))
        signed = "\n".join([request.method, request.path, fields["timestamp"],
                            fields["nonce_str"], request.body.decode(), ""])
        self.merchant_public.verify(base64.b64decode(fields["signature"]), signed.encode(),
                                    PKCS1v15(), SHA256())  # raises on a bad signature
        with self.lock:
            self.nonces.append(fields["nonce_str"])
            first = len(self.nonces) == 1
        if first:
            body = json.dumps({"code": "SYSTEM_ERROR", "message": "系统错误"}).encode()
            server.send(sock, 500, body, {"Content-Type": "application/json"})
            return
        body = json.dumps({"prepay_id": "wx201410272009395522657a690389285100"}).encode()
        timestamp, nonce = str(int(time.time())), uuid.uuid4().hex
        message = f"{timestamp}\n{nonce}\n{body.decode()}\n".encode()
        signature = base64.b64encode(
            self.platform_private.sign(message, PKCS1v15(), SHA256())).decode()
        server.send(sock, 200, body, {
            "Content-Type": "application/json",
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": signature,
            "Wechatpay-Serial": self.public_key_id,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        })


class WeChatPayServerError(Exception):
    """How the caller turns the SDK's (code, message) return into an error with a status."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"WeChat Pay HTTP {status_code}")
        self.status_code = status_code
        self.body = message


@pytest.mark.slow
def test_wraps_a_real_wechatpayv3_sdk_call(server: FaultServer) -> None:
    """WeChatPay(...).pay(...) against a loopback fake that fails once with 500 SYSTEM_ERROR:
    2 signed requests reach the server and the wrapped call succeeds."""
    wechatpayv3 = pytest.importorskip("wechatpayv3")
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from cryptography.hazmat.primitives import serialization

    merchant = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    platform = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    merchant_pem = merchant.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    platform_public_pem = platform.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    public_key_id = "PUB_KEY_ID_0114232134912410000000000000"
    fake = WeChatPayFake(merchant.public_key(), platform, public_key_id)

    server.handlers["/v3/pay/"] = fake
    # Platform *public key* mode: the SDK verifies responses with this key and never
    # downloads platform certificates, so construction touches no network.
    wxpay = wechatpayv3.WeChatPay(
        wechatpay_type=wechatpayv3.WeChatPayType.JSAPI, mchid="1230000109",
        private_key=merchant_pem, cert_serial_no="444F4864EA9B34415",
        appid="wxd678efh567hg6787", apiv3_key="0" * 32,
        notify_url="http://127.0.0.1/notify", public_key=platform_public_pem,
        public_key_id=public_key_id, timeout=(5, 5))
    # The SDK has no gateway parameter; its Core keeps the base URL in _gate_way.
    wxpay._core._gate_way = server.url("")

    def create_order() -> tuple[int, str]:
        code, message = wxpay.pay(description="艺术照套餐", out_trade_no="T20261127001",
                                  amount={"total": 990}, payer={"openid": "oUpF8uMuAJO"})
        if code >= 500 or code == 429:
            raise WeChatPayServerError(code, message)
        return code, message

    events = Events()
    code, message = execute_with_smart_retry(create_order, operation_name="微信支付下单",
                                             timeout=10.0, hooks=[events], sleep=Waits())
    assert code == 200
    assert json.loads(message)["prepay_id"].startswith("wx")
    assert server.hits("/v3/pay/transactions/jsapi") == 2
    assert len(set(fake.nonces)) == 2  # each attempt was signed afresh by the SDK
    failure = next(e for e in events if e.kind is EventKind.FAILURE)
    assert (failure.verdict, failure.reason) == (Verdict.SERVER_ERROR, "HTTP 500")


def test_an_open_inner_breaker_is_not_retried_by_the_outer_call() -> None:
    """CircuitOpenError from a smart session inside fn is final: retrying cannot pass it."""
    from requests_smartretry import CircuitBreaker, CircuitOpenError, smart_session
    from requests_smartretry.faultserver import unused_port

    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60.0)
    session = smart_session(max_retries=0, breaker=breaker)
    url = f"http://127.0.0.1:{unused_port()}/x"
    with pytest.raises(requests.ConnectionError):
        session.get(url)  # opens the breaker
    calls: list[int] = []

    def fetch() -> requests.Response:
        calls.append(1)
        return session.get(url)

    with pytest.raises(CircuitOpenError):
        execute_with_smart_retry(fetch, max_retries=2, sleep=lambda s: None)
    assert len(calls) == 1
    with pytest.raises(CircuitOpenError):  # the basic variant retries anything else
        execute_with_retry(fetch, max_retries=2, sleep=lambda s: None)
    assert len(calls) == 2


def test_async_generators_and_awaitable_results_are_refused() -> None:
    """Async generator functions and callables returning coroutines cannot be retried here."""

    async def ticks() -> Any:
        yield 1

    async def compute() -> int:
        return 1

    with pytest.raises(TypeError, match="generator"):
        execute_with_retry(ticks)
    with pytest.raises(TypeError, match="coroutine"):
        execute_with_retry(lambda: compute(), sleep=lambda s: None)


def test_a_timeout_of_centuries_still_returns_the_value() -> None:
    """A huge per-attempt timeout is waited in slices: no OverflowError, the value comes back."""
    assert execute_with_retry(lambda: (time.sleep(0.1), 42)[1], timeout=1e10) == 42


def test_an_attempt_whose_thread_starts_after_its_deadline_never_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker thread that gets to run only after the attempt's deadline (a busy CPU,
    simulated by a 0.3 s stall before the job runs) does not call fn late: the attempt
    times out and fn is never called, not even in the background."""
    from requests_smartretry import CallTimeoutError, workers

    real_run = workers._Job.run

    def stalled_run(job: Any, before_done: Any) -> None:
        time.sleep(0.3)
        real_run(job, before_done)

    monkeypatch.setattr(workers._Job, "run", stalled_run)
    calls: list[float] = []
    with pytest.raises(CallTimeoutError):
        execute_with_retry(lambda: calls.append(time.monotonic()), timeout=0.1, max_retries=0)
    time.sleep(0.4)  # the stalled thread has run its job by now
    assert calls == []
