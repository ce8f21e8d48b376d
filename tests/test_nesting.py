"""A wrapped call never runs a payment twice: the callable API around a smart session or a
smart httpx client, nested callables, streamed bodies, empty idempotency keys and 307/308
redirects, against real local servers that count what they executed.

The race cases reproduce issue 23's setting: a log handler that takes 20 ms per record (a
synchronous log shipper) and 8 busy threads, so that the inner request's own report comes
later than the outer call's deadline.  Whether the outer call repeats the attempt must not
depend on that timing (see ``deadline.AttemptLedger``).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest
import requests

import requests_smartretry.testing as srt
from requests_smartretry import (
    RetryPolicy,
    execute_with_retry,
    execute_with_smart_retry,
    smart_session,
)
from requests_smartretry.faultserver import FaultServer, RecordedRequest
from requests_smartretry.sending import is_idempotent

httpx = pytest.importorskip("httpx")
from requests_smartretry.httpx import BodyNotReplayable, smart_client  # noqa: E402

PAYLOAD = b'{"order": "A-1", "amount": 100}'


class _SlowShipper(logging.Handler):
    """A synchronous log shipper: 20 ms per record, in the logging thread (no handler
    lock, so that concurrent trials are each delayed, not queued behind one another)."""

    def createLock(self) -> None:
        self.lock = None  # type: ignore[assignment]

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(0.02)


@contextlib.contextmanager
def _loaded_process() -> Iterator[None]:
    """The slow log handler on the library's logger and 8 threads spinning."""
    target = logging.getLogger("requests_smartretry")
    handler, previous = _SlowShipper(), target.level
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(2000))

    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(8)]
    for spinner in spinners:
        spinner.start()
    try:
        yield
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join()
        target.removeHandler(handler)
        target.setLevel(previous)


def _post_with(lib: str, server: FaultServer) -> Callable[[str], Any]:
    if lib == "requests":
        session = smart_session(timeout=0.2)
        return lambda route: session.post(server.url(route), data=PAYLOAD)
    client = smart_client(timeout=0.2)
    return lambda route: client.post(server.url(route), content=PAYLOAD)


@pytest.mark.parametrize("trials", [
    5, pytest.param(20, marks=pytest.mark.stress, id="20"),
    pytest.param(100, marks=pytest.mark.slow, id="100")], ids=lambda t: str(t))
@pytest.mark.parametrize("lib", ["requests", "httpx"])
def test_a_wrapped_post_to_a_silent_server_is_never_executed_twice(
    request: pytest.FixtureRequest, server: FaultServer, lib: str, trials: int,
) -> None:
    """execute_with_retry around a smart POST to a server that never answers, inner and
    outer with the same 0.2 s timeout, run concurrently under a slow log handler and 8
    busy threads: no POST is executed twice, however late the inner request reports
    (main at 159638b: 58 of 100)."""
    markexpr = getattr(request.config.option, "markexpr", "") or ""
    if trials > 20 and not ("slow" in markexpr and "not slow" not in markexpr):
        pytest.skip("the 100-trial run is selected with -m slow (about 35 s per library)")
    post = _post_with(lib, server)

    def trial(number: int) -> None:
        with contextlib.suppress(Exception):
            execute_with_retry(lambda: post(f"/hang/{number}?seconds=1"), timeout=0.2,
                               max_retries=1)

    with _loaded_process(), ThreadPoolExecutor(20) as pool:
        list(pool.map(trial, range(trials)))
    time.sleep(0.5)  # a late second execution would land by now
    counts = [server.hits(f"/hang/{number}") for number in range(trials)]
    assert [c for c in counts if c > 1] == []


@pytest.mark.parametrize("lib", ["requests", "httpx"])
def test_a_wrapped_get_to_a_silent_server_is_still_retried(server: FaultServer,
                                                           lib: str) -> None:
    """The same wrapped call with a GET (safe to repeat) is retried when the outer
    deadline abandons the attempt: only unsafe requests block the repeat."""
    if lib == "requests":
        session = smart_session(timeout=0.2)
        get: Callable[[], Any] = lambda: session.get(server.url("/hang?seconds=1"))  # noqa: E731
    else:
        client = smart_client(timeout=0.2)
        get = lambda: client.get(server.url("/hang?seconds=1"))  # noqa: E731
    with srt.fast_retries(), pytest.raises(Exception):  # noqa: B017 - any timeout type
        execute_with_retry(get, timeout=0.2, max_retries=1)
    assert server.wait_for_hits(2, "/hang") == 2  # the last, cut request can be read late


def test_a_post_that_succeeded_is_not_repeated_when_fn_fails_afterwards(
    server: FaultServer,
) -> None:
    """fn sends a POST the server executes, then fails on something else: the basic
    execute_with_retry (which retries any exception) does not run the POST again."""
    session = smart_session()

    def charge_then_fail() -> None:
        session.post(server.url("/ok"), data=PAYLOAD)
        raise ValueError("the receipt could not be parsed")

    with srt.fast_retries(), pytest.raises(ValueError):
        execute_with_retry(charge_then_fail, max_retries=2)
    assert server.hits("/ok") == 1


@pytest.mark.parametrize("lib", ["requests", "httpx"])
def test_a_key_minted_by_the_inner_call_does_not_make_the_outer_repeat_safe(
    server: FaultServer, lib: str,
) -> None:
    """A POST that the inner call keyed itself (idempotency_header=) is safe to repeat
    inside that call only: the outer call would run fn again and send a new key, so after
    the POST succeeded and fn failed it is not repeated."""
    if lib == "requests":
        session = smart_session(idempotency_header="Idempotency-Key")
        post: Callable[[], Any] = lambda: session.post(server.url("/ok"), data=PAYLOAD)  # noqa: E731
    else:
        client = smart_client(idempotency_header="Idempotency-Key")
        post = lambda: client.post(server.url("/ok"), content=PAYLOAD)  # noqa: E731

    def charge_then_fail() -> None:
        post()
        raise ValueError("the receipt could not be parsed")

    with srt.fast_retries(), pytest.raises(ValueError):
        execute_with_retry(charge_then_fail, max_retries=2)
    assert server.hits("/ok") == 1
    assert server.received("/ok")[0].headers.get("idempotency-key")


def test_a_nested_idempotent_false_give_up_is_final_for_the_outer_call(
    server: FaultServer,
) -> None:
    """A charge made with plain requests inside execute_with_retry(idempotent=False),
    itself inside execute_with_retry(max_retries=2), runs once: the inner call's give-up
    is final for the outer one too."""

    def charge() -> None:
        requests.post(server.url("/reset"), data=PAYLOAD, timeout=5.0)

    with srt.fast_retries(), pytest.raises(requests.ConnectionError):
        execute_with_retry(lambda: execute_with_retry(charge, idempotent=False),
                           max_retries=2)
    assert server.hits("/reset") == 1


def test_a_nested_idempotent_false_call_still_running_blocks_the_outer_retry(
    server: FaultServer,
) -> None:
    """When the outer deadline abandons an attempt while a nested idempotent=False call
    in it is still running, the outer call does not start the charge again."""

    def charge() -> None:
        requests.post(server.url("/hang?seconds=0.6"), data=PAYLOAD, timeout=5.0)

    with srt.fast_retries(), pytest.raises(Exception):  # noqa: B017 - CallTimeoutError
        execute_with_retry(
            lambda: execute_with_retry(charge, idempotent=False, timeout=2.0),
            timeout=0.2, max_retries=2)
    time.sleep(0.3)
    assert server.hits("/hang") == 1


@pytest.mark.parametrize("lib", ["requests", "httpx"])
def test_a_streamed_post_abandoned_mid_body_is_not_sent_again(server: FaultServer,
                                                              lib: str) -> None:
    """A stream=True POST whose body drips past the outer deadline was executed (the
    server answered): the outer call does not send it again."""
    url = server.url("/drip?interval=0.1&count=20")
    if lib == "requests":
        session = smart_session(timeout=1.0)
        read: Callable[[], Any] = lambda: session.post(  # noqa: E731
            url, data=PAYLOAD, stream=True).content
    else:
        client = smart_client(timeout=1.0)

        def read() -> Any:
            with client.stream("POST", url, content=PAYLOAD) as response:
                return response.read()

    with srt.fast_retries(), pytest.raises(Exception):  # noqa: B017 - CallTimeoutError
        execute_with_retry(read, timeout=0.4, max_retries=1)
    time.sleep(0.2)
    assert server.hits("/drip") == 1


@pytest.mark.parametrize("lib", ["requests", "httpx"])
def test_an_empty_idempotency_key_does_not_make_a_post_repeatable(server: FaultServer,
                                                                  lib: str) -> None:
    """A POST with ``Idempotency-Key: ""`` that the server read and reset is not sent
    again (a key that keys nothing is no key); a real key still makes it repeatable."""
    for key, executions in (("", 1), ("k-1", 2)):
        server.reset_counts()
        with srt.fast_retries(), pytest.raises((requests.ConnectionError, httpx.HTTPError)):
            if lib == "requests":
                smart_session(max_retries=1).post(server.url("/reset"), data=PAYLOAD,
                                                  headers={"Idempotency-Key": key})
            else:
                smart_client(max_retries=1).post(server.url("/reset"), content=PAYLOAD,
                                                 headers={"Idempotency-Key": key})
        assert server.hits("/reset") == executions, key


def test_a_blank_idempotency_key_is_no_key(server: FaultServer) -> None:
    """A key of spaces (str or bytes) is no key either: the POST is not repeated."""
    policy = RetryPolicy()
    for blank in ("   ", b" \t"):
        request = requests.Request("POST", server.url("/reset"), data=PAYLOAD).prepare()
        request.headers["Idempotency-Key"] = blank  # type: ignore[assignment]
        assert not is_idempotent(policy, request)
        with srt.fast_retries(), pytest.raises(requests.ConnectionError):
            smart_session(max_retries=1).send(request)
    assert server.hits("/reset") == 2


def _redirecting(code: int) -> Callable[[FaultServer, Any, RecordedRequest], None]:
    def handler(srv: FaultServer, conn: Any, request: RecordedRequest) -> None:
        srv.send(conn, code, b"", {"Location": srv.url("/echo")})

    return handler


def _chunks() -> Iterator[bytes]:
    yield PAYLOAD[:10]
    yield PAYLOAD[10:]


@pytest.mark.parametrize("code", [307, 308])
def test_a_redirect_of_a_consumed_generator_body_is_refused(code: int) -> None:
    """A 307/308 after a POST whose body was a generator raises a clear error naming the
    request; the redirect target never executes an empty POST.  A bytes body is still
    followed."""
    with FaultServer({"/moved": _redirecting(code)}) as server:
        with pytest.raises(requests.exceptions.UnrewindableBodyError,
                           match="generator that was already"):
            smart_session().post(server.url("/moved"), data=_chunks())
        with pytest.raises(BodyNotReplayable, match="cannot be replayed"):
            smart_client(follow_redirects=True).post(server.url("/moved"),
                                                     content=_chunks())
        assert server.received("/echo") == []
        assert smart_session().post(server.url("/moved"), data=PAYLOAD).content == PAYLOAD
        followed = smart_client(follow_redirects=True).post(server.url("/moved"),
                                                            content=PAYLOAD)
        assert followed.content == PAYLOAD
        assert [r.body for r in server.received("/echo")] == [PAYLOAD, PAYLOAD]


def test_a_sealed_attempt_lets_nothing_unsafe_start_at_any_depth() -> None:
    """The ledger counts an unsafe operation in every enclosing attempt, forgets it only
    when it did not execute, and once an enclosing attempt is sealed refuses to start one
    in anything nested inside it."""
    from requests_smartretry.deadline import AttemptLedger

    outer = AttemptLedger()
    inner = AttemptLedger(outer)
    assert inner.start_unsafe() and inner.start_unsafe()
    inner.not_executed()
    assert (inner.unsafe, outer.unsafe) == (1, 1)
    assert outer.seal() == 1
    assert not AttemptLedger(inner).start_unsafe()
    assert not inner.start_unsafe()
    assert (inner.unsafe, outer.unsafe) == (1, 1)


@pytest.mark.parametrize("run_in_thread", [True, False])
def test_a_request_made_after_a_successful_attempt_in_its_context_is_sent(
    server: FaultServer, run_in_thread: bool,
) -> None:
    """A background thread fn started in a copy of its context POSTs after fn returned:
    the attempt succeeded and is never repeated, so the POST is sent, not refused."""
    session, results, done = smart_session(timeout=2.0), [], threading.Event()

    def later() -> None:
        time.sleep(0.1)
        try:
            results.append(session.post(server.url("/ok"), data=PAYLOAD).status_code)
        except Exception as exc:  # reported by the assertion
            results.append(exc)
        done.set()

    def fn() -> int:
        threading.Thread(target=contextvars.copy_context().run, args=(later,)).start()
        return 1

    assert execute_with_retry(fn, timeout=1.0, run_in_thread=run_in_thread) == 1
    assert done.wait(5.0)
    assert results == [200] and server.hits("/ok") == 1


def test_a_post_from_a_pool_task_run_in_fn_s_context_is_counted(server: FaultServer) -> None:
    """fn hands its POST to a ThreadPoolExecutor task run in a copy of its context (the
    documented way): when the outer deadline abandons the attempt, the POST is not sent
    again."""
    session = smart_session(timeout=2.0)

    def fn() -> Any:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(contextvars.copy_context().run, session.post,
                               server.url("/hang?seconds=0.5"), data=PAYLOAD).result()

    with srt.fast_retries(), pytest.raises(Exception):  # noqa: B017 - CallTimeoutError
        execute_with_retry(fn, timeout=0.2, max_retries=1)
    time.sleep(0.6)
    assert server.hits("/hang") == 1


@pytest.mark.parametrize("code", [307, 308])
def test_a_redirect_of_a_seekable_file_body_is_followed_with_the_whole_body(
    code: int, tmp_path: Any,
) -> None:
    """A 307/308 after a POST whose body is a seekable file (on disk, BytesIO) sends the
    whole body again, rewound to where it started, with requests and with httpx."""
    (tmp_path / "body").write_bytes(PAYLOAD)
    with FaultServer({"/moved": _redirecting(code)}) as server:
        for lib in ("requests", "httpx"):
            with open(tmp_path / "body", "rb") as file:
                for body in (file, io.BytesIO(PAYLOAD)):
                    if lib == "requests":
                        response: Any = smart_session(timeout=2.0).post(
                            server.url("/moved"), data=body)
                    else:
                        response = smart_client(timeout=2.0, follow_redirects=True).post(
                            server.url("/moved"), content=body)
                    assert response.content == PAYLOAD, (lib, body)
        assert [r.body for r in server.received("/echo")] == [PAYLOAD] * 4


@pytest.mark.parametrize(("failures", "state", "tries"), [(1, "closed", 2), (3, "open", 2)])
def test_a_nested_failure_healed_by_the_outer_retry_leaves_the_breaker_alone(
        failures: int, state: str, tries: int) -> None:
    """A nested call makes one attempt (the outer call retries); its failure reaches its
    breaker only when the outer retry does not heal it: one failure then a success leaves
    a one-failure breaker closed; a second failure in a row counts both at once, so the
    breaker opens and refuses the third try."""
    from requests_smartretry import CircuitBreaker, CircuitOpenError

    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60.0)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise ConnectionResetError("reset by peer")
        return "ok"

    def inner() -> str:
        return execute_with_smart_retry(flaky, breaker=breaker, operation_name="inner",
                                        run_in_thread=False)

    try:
        execute_with_smart_retry(inner, max_retries=2, backoff_base=0.01, run_in_thread=False)
    except (ConnectionResetError, CircuitOpenError):
        pass
    assert breaker.state("inner") == state and len(calls) == tries
