"""The same retry policy on httpx: a transport for ``httpx.Client`` and httpx-based SDKs.

Optional extra ``requests-smartretry[httpx]``; the rest of the package never imports httpx.

::

    from requests_smartretry.httpx import smart_client

    client = smart_client(max_retries=1, timeout=30.0, operation_name="生成艺术照")
    response = client.post("https://api.example.com/v1/tasks", json={"prompt": "..."})

:class:`SmartRetryTransport` drives one call through the same engine as
:class:`~requests_smartretry.SmartRetryAdapter`: the policy, the classification, the
attempt events and their consumers (the seed's log lines, statistics, breaker, budget,
``on_retry``), and the wall-clock attempt deadline, enforced by the same watchdog, which
shuts down the socket beneath httpcore when an attempt outlives its deadline.

Deadlines: the policy's ``timeout`` is each attempt's wall-clock bound (connect + send +
headers + body); httpx's own timeouts, the client's or the request's, are per operation
and still apply inside it, each cut to what is left of the attempt (the shorter wins).
Through :func:`smart_client` (a :class:`SmartClient`), the body of a response that is not
streamed is read inside the attempt, so a dripping body is cut at the deadline and a
reset in the middle of it is retried; with ``client.stream(...)`` the deadline covers up
to the headers, as the adapter's ``stream=True`` does.  Mounted on a plain
``httpx.Client`` the transport cannot tell, and treats every response as streamed.

Policy hooks written for ``requests`` (``name_request``, an ``idempotent`` callable,
``prepare_attempt``) receive a small view of the httpx request with the attributes they
read (``method``, ``url`` as a string, ``headers``, ``body``); ``classify_response``
receives the ``httpx.Response`` (``status_code``, ``headers`` and ``content`` read alike).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from typing import Any, Callable, Literal, Optional, Union

import httpcore
import httpx

from requests_smartretry.adapter import _PREVIOUS_ATTEMPTS
from requests_smartretry.budget import DEFAULT_BUDGET
from requests_smartretry.classify import (
    BODY_READ_FAILED,
    DEADLINE_BEFORE_SENDING,
    ENCLOSING_ATTEMPT_OVER,
    Classification,
    classify_by_type,
    classify_http_response,
    httpx_exception_table,
    veto,
)
from requests_smartretry.collaborators import resolve_collaborators, resolve_throttle
from requests_smartretry.deadline import (
    NoTimeLeft,
    Watch,
    active_watch,
    attempt_seconds,
    current_scope,
)
from requests_smartretry.engine import (
    BreakerGate,
    BudgetGate,
    CallInfo,
    Outcome,
    build_hooks,
    check_clocks,
    check_hooks,
    mark_vetoed,
    quiet_plan,
    run_call,
)
from requests_smartretry.errors import AttemptDeadlineExceeded as _CoreDeadlineExceeded
from requests_smartretry.events import Hook, Verdict
from requests_smartretry.overrides import current_overrides
from requests_smartretry.policy import RetryPolicy, resolve_policy
from requests_smartretry.presets._base import check_credential, check_endpoint, origin_of
from requests_smartretry.presets.ark import DEFAULT_ENDPOINT as ARK_ENDPOINT
from requests_smartretry.presets.ark import _video_policy
from requests_smartretry.redact import install_redacting_filter, redact_exception, redact_url
from requests_smartretry.sending import (
    final_on_failure,
    idempotency_key,
    is_idempotent,
    new_idempotency_key,
    operation_name,
    service_name,
)
from requests_smartretry.stats import Stats
from requests_smartretry.throttle import Throttle

__all__ = [
    "AttemptDeadlineExceeded",
    "BodyNotReplayable",
    "SmartClient",
    "SmartRetryTransport",
    "classify_httpx_exception",
    "smart_client",
    "video_client",
]

_SUCCESS_VERDICT = Verdict.SUCCESS  # a module constant: enum class lookups are slow
#: The request extension in which :class:`SmartClient` tells the transport whether the
#: caller streams the response (``client.stream(...)``, ``send(stream=True)``).
STREAM_EXTENSION = "requests_smartretry.stream"
_TIMEOUT_PARTS = ("connect", "read", "write", "pool")
# What is not a policy field but a transport keyword (routed so by smart_client).
_TRANSPORT_KEYWORDS = frozenset(
    {"transport", "breaker", "budget", "state", "throttle", "hooks", "stats", "sleep",
     "clock"})


class AttemptDeadlineExceeded(httpx.ReadTimeout, _CoreDeadlineExceeded):  # type: ignore[misc]
    """An attempt passed its wall-clock deadline (connect + send + headers + body).

    An ``httpx.ReadTimeout`` (so httpx-based SDKs report their timeout error) and the
    package's :class:`~requests_smartretry.AttemptDeadlineExceeded` alike.
    """


class BodyNotReplayable(httpx.StreamConsumed):
    """A request body that cannot be replayed was already sent once (a 307/308 redirect
    repeats the request with the same body): it is refused before anything is sent,
    never sent empty or partial.  An ``httpx.StreamConsumed``, with a message that says
    which request."""

    def __init__(self, message: str) -> None:
        httpx.StreamError.__init__(self, message)


# Where a seekable file body started, recorded when the transport first saw its stream:
# a 307/308 hands back the same stream, read to its end, which is rewound there.
_FILE_STARTS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _refuse_consumed(request: httpx.Request) -> None:
    """Rewind a seekable file body already sent (a 307/308 redirect repeats it); refuse
    any other one-shot body already (partly) sent."""
    stream: Any = request.stream
    inner = getattr(stream, "_stream", None)  # httpx's IteratorByteStream keeps it here
    if inner is None:
        return
    if getattr(stream, "_is_stream_consumed", False) is not True:
        if hasattr(inner, "seek") and hasattr(inner, "tell"):
            with contextlib.suppress(Exception):  # not seekable after all: one-shot
                _FILE_STARTS[stream] = inner.tell()
        return
    start = _FILE_STARTS.get(stream)
    if start is not None:
        with contextlib.suppress(Exception):
            inner.seek(start)
            return
    if hasattr(inner, "read") or iter(inner) is inner:  # a file, a generator: one-shot
        raise BodyNotReplayable(
            f"the body of this {request.method} to {redact_url(str(request.url))} was "
            "already sent once and cannot be replayed (a 307/308 redirect repeats the "
            "request with the same body); an empty or partial body is never sent: pass "
            "bytes or a seekable file to follow such redirects")


class _DeadlineBeforeSending(httpcore.ConnectTimeout):
    """The deadline passed before the first byte of the request was written on the
    connection: nothing was sent (httpx raises it as ``ConnectTimeout``)."""


# -- classification: httpx's exceptions, by the phase each one means ----------------------

_HTTPX_TABLE = httpx_exception_table(httpx, _DeadlineBeforeSending)


def classify_httpx_exception(exc: BaseException) -> Classification:
    """Classify an exception from an httpx transport: the phase from httpx's exception type
    (nothing sent before the request was written), the reason from the errno or DNS
    failure beneath it when the package's table knows one (``ECONNREFUSED``,
    ``ENOTFOUND``…).  A TLS verification failure is permanent; anything else falls back
    to the package's table (:func:`~requests_smartretry.classify.classify_by_type`)."""
    return classify_by_type(exc, _HTTPX_TABLE)


# -- the socket beneath httpcore, watched for the attempt deadline ---------------------------


class _WatchedStream(httpcore.NetworkStream):
    """A network stream that attaches itself to the attempt deadline watch of whoever uses
    it, so that the watchdog can shut its socket down (``sock``, as the adapter's
    connections have).  Only HTTP/1.1 streams are watched: an HTTP/2 connection carries
    other requests too and is never cut."""

    __slots__ = ("_shared", "_stream", "_watch")

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream
        self._watch: Optional[Watch] = None
        ssl_object = stream.get_extra_info("ssl_object")
        self._shared = (ssl_object is not None
                        and ssl_object.selected_alpn_protocol() == "h2")

    @property
    def sock(self) -> Any:
        """The socket the watchdog shuts down."""
        return self._stream.get_extra_info("socket")

    def claim(self, current: Watch, *, sending: bool) -> None:
        """Carry ``current``'s attempt: the watch of the attempt this stream carried before
        (it is idle in the pool between attempts) lets go of it first, under the watchdog's
        lock, so that it can never cut this attempt.  ``sending``: the attempt is about to
        write its first byte here, which it must not do past its deadline, nor on a socket
        an earlier attempt's deadline shut down."""
        if self._shared:
            return
        previous = self._watch
        # previous.conn is read without the lock first: a finished watch (the common case)
        # costs no lock; detach() decides under it.
        cut_before = (previous is not None and previous is not current
                      and previous.conn is self and previous.detach(self) and previous.fired)
        if sending and (cut_before or current.remaining() == 0.0):
            raise _DeadlineBeforeSending(
                "the attempt deadline passed before the request was sent" if not cut_before
                else "the connection was cut by an earlier attempt's deadline before this "
                     "request was sent")
        self._watch = current
        current.attach(self)

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        current = active_watch()
        if current is not None and current.conn is not self:
            self.claim(current, sending=False)
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        current = active_watch()
        if current is not None and current.conn is not self:
            self.claim(current, sending=True)
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: Optional[str] = None,
                  timeout: Optional[float] = None) -> httpcore.NetworkStream:
        secured = _WatchedStream(self._stream.start_tls(ssl_context, server_hostname, timeout))
        current = active_watch()
        if current is not None and current.conn is self:
            secured.claim(current, sending=False)
        return secured

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _WatchedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, whose streams are :class:`_WatchedStream` s."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    @staticmethod
    def _connect_timeout(timeout: Optional[float]) -> Optional[float]:
        """``timeout`` cut to what is left of the attempt: the watchdog cannot cut a connect
        (no socket yet), and a wait for the pool may have used part of the attempt."""
        current = active_watch()
        left = None if current is None else current.remaining()
        if left is None:
            return timeout
        if left <= 0.0:
            raise _DeadlineBeforeSending("the attempt deadline passed before connecting")
        return left if timeout is None or timeout > left else timeout

    @staticmethod
    def _watched(stream: httpcore.NetworkStream) -> _WatchedStream:
        watched = _WatchedStream(stream)
        current = active_watch()
        if current is not None:
            try:
                # Sending: nothing may be sent past the deadline; the TLS handshake that
                # follows is watched too.
                watched.claim(current, sending=True)
            except BaseException:
                stream.close()
                raise
        return watched

    def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None,
                    local_address: Optional[str] = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return self._watched(self._backend.connect_tcp(
            host, port, timeout=self._connect_timeout(timeout), local_address=local_address,
            socket_options=socket_options))

    def connect_unix_socket(self, path: str, timeout: Optional[float] = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return self._watched(self._backend.connect_unix_socket(
            path, timeout=self._connect_timeout(timeout), socket_options=socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _watch_sockets(transport: httpx.BaseTransport) -> bool:
    """Give an ``httpx.HTTPTransport``'s connection pool the watched network backend; False
    when ``transport`` has no httpcore pool to give it to (a mock, a custom transport), in
    which case only httpx's per-operation timeouts, cut to the attempt, bound it."""
    pool = getattr(transport, "_pool", None)  # httpx keeps its httpcore pool here
    backend = getattr(pool, "_network_backend", None)  # ...and httpcore its backend here
    if isinstance(backend, _WatchedBackend):
        return True
    if not isinstance(backend, httpcore.NetworkBackend):
        return False
    pool._network_backend = _WatchedBackend(backend)  # type: ignore[union-attr]
    return True


# -- what requests-shaped hooks see of an httpx request -----------------------------------


class _RequestView:
    """An httpx request as the policy's hooks (written for ``requests.PreparedRequest``)
    read it: ``method``, ``url`` (a string), ``headers`` and ``body``."""

    __slots__ = ("body", "headers", "method", "url")

    def __init__(self, request: httpx.Request, headers: httpx.Headers) -> None:
        self.method = request.method
        self.url = str(request.url)
        self.headers = headers
        # A ByteStream's bytes, also for a request httpx built around one without reading
        # it (a 307/308 redirect), whose .content would raise RequestNotRead.
        self.body: Optional[bytes] = (b"".join(request.stream)
                                      if isinstance(request.stream, httpx.ByteStream) else None)


def _attempt_request(
    request: httpx.Request, prepare: Any, number: int
) -> httpx.Request:
    """The request to send as attempt ``number``: the policy's ``prepare_attempt`` hook
    (signing) applied to a copy, so each attempt is signed afresh."""
    view = _RequestView(request, httpx.Headers(request.headers))
    prepared = prepare(view, number) or view
    url = httpx.URL(str(prepared.url))
    headers = httpx.Headers(prepared.headers)
    if url.netloc != request.url.netloc:  # failed over to another host
        headers["Host"] = url.netloc.decode("ascii")
    return httpx.Request(prepared.method, url, headers=headers, stream=request.stream,
                         extensions=request.extensions)


def _timeouts_within(request: httpx.Request, seconds: float) -> None:
    """Cut each of httpx's per-operation timeouts of ``request`` to ``seconds``: a connect
    or a wait for a pooled connection cannot be cut by the watchdog (no socket yet)."""
    asked = request.extensions.get("timeout") or {}
    for part in _TIMEOUT_PARTS:  # the common case (smart_client's): nothing to cut
        value = asked.get(part)
        if value is None or value > seconds:
            break
    else:
        return
    cut = {}
    for part in _TIMEOUT_PARTS:
        value = asked.get(part)
        cut[part] = seconds if value is None or value > seconds else value
    if cut != asked:
        request.extensions = {**request.extensions, "timeout": cut}


# -- the transport ----------------------------------------------------------------------------


class SmartRetryTransport(httpx.BaseTransport):
    """An httpx transport that gives every request a deadline and classified retries.

    Example::

        transport = SmartRetryTransport(max_retries=1, timeout=30.0,
                                        operation_name="生成视频")
        client = httpx.Client(transport=transport)   # or smart_client(...)
        transport.stats.snapshot()

    Takes what :class:`~requests_smartretry.SmartRetryAdapter` takes (``policy=`` or the
    policy's keywords, ``breaker``, ``budget``, ``state``, ``throttle``, ``hooks``,
    ``stats``, ``sleep``, ``clock``) and ``transport=``, the transport that sends each attempt (an
    ``httpx.HTTPTransport()`` by default; an ``HTTPTransport`` of yours gets its sockets
    watched for the deadline as well).  A failure that ends the call raises the last
    attempt's httpx exception (``ConnectError``, ``ReadTimeout``…, with ``retry_history``);
    an attempt cut at its deadline raises :class:`AttemptDeadlineExceeded`.  A request
    body that cannot be replayed (a generator, a file) is never sent twice.

    Thread safety: as the adapter, it holds the immutable policy and thread-safe
    collaborators; one client may serve many threads.
    """

    policy: RetryPolicy

    def __init__(
        self,
        policy: Optional[RetryPolicy] = None,
        *,
        transport: Optional[httpx.BaseTransport] = None,
        breaker: Optional[BreakerGate] = None,
        budget: Optional[BudgetGate] = DEFAULT_BUDGET,
        state: Any = None,
        throttle: Optional[Throttle] = None,
        hooks: tuple[Hook, ...] = (),
        stats: Union[Stats, Literal[False], None] = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        **policy_options: Any,
    ) -> None:
        self.policy = resolve_policy(policy, policy_options, "SmartRetryTransport")
        check_clocks(sleep, clock)
        self.extra_hooks = check_hooks(hooks)
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise TypeError(f"transport must be an httpx.BaseTransport, got {transport!r}")
        self.stats, self.breaker, self.budget, self.state = resolve_collaborators(
            stats, breaker, budget, state)
        self.throttle = resolve_throttle(throttle, self.state)
        self.transport = httpx.HTTPTransport() if transport is None else transport
        #: Whether the watchdog can cut the sockets of the inner transport at the deadline.
        self.cuts_sockets = _watch_sockets(self.transport)
        self._sleep = sleep
        self._clock = clock
        self._closed = False
        self._hooks = build_hooks(self.policy, stats=self.stats, extra=self.extra_hooks,
                                  breaker=self.breaker, budget=self.budget)
        self._quiet = quiet_plan(self._hooks)  # told directly while a call stays quiet
        # Call names by (method, URL): with no name_request hook they depend on nothing
        # else.  Bounded (cleared when full) so that ids in paths cannot grow memory.
        self._names: Optional[dict[tuple[str, str], CallInfo]] = (
            {} if self.policy.name_request is None else None)
        # Per policy derived by retry_options: id -> (policy, hooks, quiet plan).
        self._derived: dict[int, tuple[RetryPolicy, tuple[Hook, ...], Any]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(policy={self.policy!r})"

    def close(self) -> None:
        """Close the inner transport; a call under way sends nothing more."""
        self._closed = True
        self.transport.close()

    def _is_closed(self) -> bool:
        return self._closed

    def client_timeout(self) -> httpx.Timeout:
        """httpx's per-operation timeouts that match the policy (what :func:`smart_client`
        gives its client)."""
        policy = self.policy
        return httpx.Timeout(policy.timeout, connect=policy.connect_timeout or policy.timeout)

    def _overridden(self, policy: RetryPolicy) -> tuple[tuple[Hook, ...], Any]:
        """The hooks and quiet plan for a policy a ``retry_options`` block derived."""
        derived = self._derived.get(id(policy))
        if derived is None or derived[0] is not policy:
            hooks = build_hooks(policy, stats=self.stats, extra=self.extra_hooks,
                                breaker=self.breaker, budget=self.budget)
            if len(self._derived) >= 64:  # bounded: policies may be derived per request
                self._derived.clear()
            derived = self._derived[id(policy)] = (policy, hooks, quiet_plan(hooks))
        return derived[1], derived[2]

    def _call_info(self, request: httpx.Request,
                   policy: Optional[RetryPolicy] = None) -> CallInfo:
        names = self._names if policy is None else None  # derived policies: not cached
        # Keyed by the URL's text, built once: an httpx.URL hashes by building its text,
        # and compares equal by building both texts and parsing the other URL again.
        key = (request.method, str(request.url))
        if names is not None:
            info = names.get(key)
            if info is not None:
                return info
        if policy is None:
            policy = self.policy
        view = _RequestView(request, request.headers)
        info = CallInfo(operation=operation_name(policy, view),
                        service=service_name(policy, view),
                        method=request.method, url=redact_url(view.url))
        if names is not None:
            if len(names) >= 512:
                names.clear()
            names[key] = info
        return info

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` with retries; returns the last response or raises the last
        attempt's error (with ``retry_history`` attached)."""
        if self._closed:
            raise RuntimeError("Cannot send a request, as the transport has been closed.")
        policy = self.policy
        overrides = current_overrides()  # a retry_options block: the one context read
        if overrides is None:
            call, hooks, quiet = self._call_info(request), self._hooks, self._quiet
        else:
            policy = overrides.apply(policy)
            call = self._call_info(request, policy)
            hooks, quiet = self._overridden(policy)
        minted = None  # the idempotency header this call added (removed at its end)
        if policy.idempotency_header is not None and \
                idempotency_key(request.headers, policy.idempotency_header) is None:
            minted = policy.idempotency_header
            request.headers[minted] = new_idempotency_key()
        read_body = request.extensions.get(STREAM_EXTENSION) is False
        replayable = isinstance(request.stream, httpx.ByteStream)
        if not replayable:
            _refuse_consumed(request)
        asked_timeouts = request.extensions.get("timeout")
        previous: list[httpx.Response] = []
        verdicts: list[Classification] = []  # for previous_attempts()
        idempotent: Optional[bool] = None  # decided at the first failure that asks

        def attempt(number: int) -> Outcome[httpx.Response]:
            nonlocal idempotent
            if number > 1:
                for stale in previous:  # a retry discards the last failed response
                    stale.close()
                previous.clear()
                if self._closed:  # closed as the retry starts (a START hook): send nothing
                    raise RuntimeError("Cannot send a request, as the transport has been "
                                       "closed (before the retry; nothing more is sent).")
                request.extensions = {**request.extensions, "timeout": asked_timeouts}
            to_send = request
            if policy.prepare_attempt is not None:
                token = _PREVIOUS_ATTEMPTS.set(tuple(verdicts))
                try:
                    to_send = _attempt_request(request, policy.prepare_attempt, number)
                finally:
                    _PREVIOUS_ATTEMPTS.reset(token)
            scope = current_scope()
            counted = None if scope is None else scope.ledger
            if counted is not None:  # inside a callable-API attempt: count what may execute
                # A key minted by this call does not make the enclosing call's repeat safe:
                # it would send the caller's request again, with a new key.
                asked = httpx.Headers(request.headers)
                if minted is not None:
                    del asked[minted]
                if is_idempotent(policy, _RequestView(request, asked)):
                    counted = None
                elif not counted.start_unsafe():
                    error = AttemptDeadlineExceeded(
                        "the enclosing execute_with_retry attempt is over (abandoned at its "
                        "deadline); this request is not idempotent and was not sent",
                        request=request)
                    return Outcome(ENCLOSING_ATTEMPT_OVER, error=error, signal=error)
            outcome = self._attempt(to_send, read_body, policy,
                                    call.url if to_send is request else None)
            if counted is not None and outcome.classification.safe_to_repeat:
                counted.not_executed()  # nothing sent, or the server said it did not act
            if outcome.classification.verdict is _SUCCESS_VERDICT:
                if not read_body:  # read later: a failure then is final as one now would be
                    self._guard_streamed_body(outcome, request, replayable, policy)
                return outcome
            verdicts.append(outcome.classification)
            if outcome.value is not None:
                previous.append(outcome.value)
            if outcome.error is not None:  # hooks and the caller see no secrets
                redact_exception(outcome.error)
            verdict = outcome.classification
            if verdict.retryable:
                if idempotent is None:
                    idempotent = is_idempotent(policy, _RequestView(request, request.headers))
                outcome.veto = veto(verdict, idempotent, replayable)
                mark_vetoed(outcome)
            return outcome

        try:
            finished = run_call(policy, call, attempt, hooks=hooks, breaker=self.breaker,
                                budget=self.budget, sleep=self._sleep, clock=self._clock,
                                closed=self._is_closed, quiet=quiet,
                                throttle=self.throttle)
        finally:
            if minted is not None:  # the caller's request, sent again, gets a new key
                del request.headers[minted]
        return finished.unwrap()  # raises the last attempt's error, history attached

    def _guard_streamed_body(self, outcome: Outcome[httpx.Response], request: httpx.Request,
                             replayable: bool, policy: RetryPolicy) -> None:
        """A later failed read of the streamed response gets the veto that a failure after
        sending would get now (:func:`~requests_smartretry.engine.mark_vetoed`)."""
        response = outcome.value
        if response is None or not isinstance(response.stream, httpx.SyncByteStream):
            return
        reason = veto(BODY_READ_FAILED,
                      is_idempotent(policy, _RequestView(request, request.headers)),
                      replayable)
        if reason is not None:
            response.stream = _FinalOnFailure(response.stream, reason)

    def _attempt(self, request: httpx.Request, read_body: bool, policy: RetryPolicy,
                 url: Optional[str] = None) -> Outcome[httpx.Response]:
        """One attempt, inside its wall-clock deadline, under the call's ``policy``
        (``url``: ``request``'s URL redacted already, if known)."""
        try:
            total = attempt_seconds(policy.timeout)
        except NoTimeLeft:
            error = AttemptDeadlineExceeded(
                "no time left for this attempt (enclosing deadline)", request=request)
            return Outcome(DEADLINE_BEFORE_SENDING, error=error, signal=error)
        _timeouts_within(request, total)
        deadline = Watch(total)
        response: Optional[httpx.Response] = None
        try:
            response = self.transport.handle_request(request)
            if read_body or (response.status_code >= 400
                             and policy.classify_response is not None):
                response.read()  # inside the deadline (an error body, for the vendor hook)
        except Exception as exc:
            if response is not None:
                response.close()
            verdict = classify_httpx_exception(exc)
            # A cut after sending is the deadline's, and so is httpx's own read or write
            # timeout (cut to the attempt) that expired at the deadline before the
            # watchdog thread got to run (a loaded machine).
            if verdict.sent and (deadline.fired or (isinstance(exc, httpx.TimeoutException)
                                                    and deadline.remaining() == 0.0)):
                return _deadline_outcome(total, request, cause=exc)
            return Outcome(verdict, error=exc, signal=exc)
        finally:
            deadline.finish()
        if deadline.fired:
            response.close()
            return _deadline_outcome(total, request)
        verdict = classify_http_response(response, policy.classify_response,
                                         policy.retry_statuses, policy.honor_server_signals)
        status = response.status_code
        if verdict.verdict is _SUCCESS_VERDICT:
            return Outcome(verdict, value=response, status_code=status)
        if url is None:
            url = redact_url(str(request.url))
        signal = httpx.HTTPStatusError(f"{status} {verdict.reason} for {url}",
                                       request=request, response=response)
        return Outcome(verdict, value=response, signal=signal, status_code=status)


class _FinalOnFailure(httpx.SyncByteStream):
    """A response body stream whose read failures are marked final with ``reason``."""

    def __init__(self, stream: httpx.SyncByteStream, reason: str) -> None:
        self._stream = stream
        self._reason = reason

    def __iter__(self) -> Iterator[bytes]:
        return final_on_failure(self._stream, self._reason)

    def close(self) -> None:
        self._stream.close()


def _deadline_outcome(total: float, request: httpx.Request,
                      cause: Optional[BaseException] = None) -> Outcome[httpx.Response]:
    """The attempt cut by its deadline (``cause``: what the cut made the read raise)."""
    cut = AttemptDeadlineExceeded(
        f"attempt deadline of {total:g}s passed (connect + send + headers + body)",
        request=request)
    if cause is not None:
        cut.__cause__ = cause
    return Outcome(Classification(Verdict.TIMEOUT, "deadline", sent=True),
                   error=cut, signal=cut)


# -- clients -------------------------------------------------------------------------------


class SmartClient(httpx.Client):
    """An ``httpx.Client`` that tells its :class:`SmartRetryTransport` whether a response
    is streamed, so that bodies which are not are read inside the attempt deadline.

    Example::

        client = smart_client(max_retries=2)
        with client.stream("GET", url) as response:   # deadline up to the headers
            ...
    """

    def send(self, request: httpx.Request, *, stream: bool = False,
             **options: Any) -> httpx.Response:
        """As ``httpx.Client.send``, with the ``stream`` flag passed to the transport."""
        request.extensions[STREAM_EXTENSION] = stream
        return super().send(request, stream=stream, **options)

    @property
    def smart_transport(self) -> SmartRetryTransport:
        """The client's :class:`SmartRetryTransport` (its own, or the mounted one), whose
        ``stats``, ``breaker`` and ``budget`` are the client's."""
        for candidate in (self._transport, *self._mounts.values()):
            if isinstance(candidate, SmartRetryTransport):
                return candidate
        raise LookupError("this client has no SmartRetryTransport")


# httpx.Client keywords that configure the transport it would build: given to ours too.
_CONNECTION_KEYWORDS = ("verify", "cert", "trust_env", "http1", "http2", "limits", "proxy")


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the transport's keywords, the ``httpx.Client``'s).  Without ``transport=``, the
    inner ``httpx.HTTPTransport`` gets the client's connection keywords (``limits``,
    ``verify``, ``proxy``…), as the transport httpx would build for itself.
    ``redact_logs`` (default ``True``) puts a
    :class:`~requests_smartretry.redact.RedactingFilter` on the ``httpx`` logger, whose own
    INFO line ("HTTP Request: GET https://…?access_token=…") would print secrets."""
    redact = options.pop("redact_logs", True)
    if not isinstance(redact, bool):
        raise TypeError(f"redact_logs must be True or False, got {redact!r}")
    if redact:
        install_redacting_filter("httpx")
    ours = RetryPolicy.field_names() | _TRANSPORT_KEYWORDS
    transport = {k: v for k, v in options.items() if k in ours}
    client = {k: v for k, v in options.items() if k not in ours}
    if "mounts" in client:
        raise TypeError("smart clients build their own mounts; pass transport= for the "
                        "inner transport")
    if "transport" not in transport:
        connection = {k: client[k] for k in _CONNECTION_KEYWORDS if k in client}
        if connection:
            transport["transport"] = httpx.HTTPTransport(**connection)
    return transport, client


def smart_client(policy: Optional[RetryPolicy] = None, **options: Any) -> SmartClient:
    """A :class:`SmartClient` whose every request goes through a :class:`SmartRetryTransport`.

    Example::

        client = smart_client(max_retries=1, timeout=30.0, operation_name="生成艺术照",
                              base_url="https://api.example.com")
        client.get("/v1/status")
        client.smart_transport.stats.snapshot()

    Keywords of the policy and of the transport (``breaker``, ``budget``, ``stats``,
    ``transport``…) configure the retries; the others go to ``httpx.Client`` (``base_url``,
    ``headers``…).  The client's timeouts are the policy's.  ``redact_logs=True`` (the
    default) cleans httpx's own log lines of secrets: a
    :class:`~requests_smartretry.redact.RedactingFilter` on the ``httpx`` logger, once per
    process (it redacts only; ``redact_logs=False`` leaves the logger alone).
    """
    transport_options, client_options = _split_options(options)
    transport = SmartRetryTransport(policy, **transport_options)
    return SmartClient(transport=transport, timeout=transport.client_timeout(),
                       **client_options)


class _ArkClient(SmartClient):
    """``video_client``'s client: refuses an Ark SDK call aimed at another origin than its
    endpoint, which would otherwise go out without the transport (no retries, no deadline,
    the SDK's 600 s read timeout)."""

    _ark_origin = ""
    _ark_key: Optional[str] = None

    def send(self, request: httpx.Request, *, stream: bool = False,
             **options: Any) -> httpx.Response:
        """As :meth:`SmartClient.send`; an Ark call (the SDK's ``X-Client-Request-Id``, or
        this client's key) to another origin raises ``ValueError`` naming both."""
        target = origin_of(str(request.url))
        if target != self._ark_origin and (
                "x-client-request-id" in request.headers
                or (self._ark_key is not None
                    and request.headers.get("authorization") == f"Bearer {self._ark_key}")):
            raise ValueError(
                f"video_client serves the Ark endpoint {self._ark_origin}, but this Ark call "
                f"goes to {target}: pass the SDK's base_url as video_client(endpoint=...) "
                f"so that the call gets the retries and the attempt deadline")
        return super().send(request, stream=stream, **options)


def video_client(
    api_key: Optional[str] = None, *, endpoint: str = ARK_ENDPOINT, **options: Any
) -> SmartClient:
    """A :class:`SmartClient` for Volcengine Ark, with the video preset's policy (its
    error-code table, operation names, and with ``api_key`` Bearer auth on every attempt)
    on ``endpoint``'s origin only, so the key never goes to another host.

    Example (the official SDK, with our retries instead of its own)::

        from volcenginesdkarkruntime import Ark

        ark = Ark(api_key=key, http_client=video_client(api_key=key), max_retries=0)
        task = ark.content_generation.tasks.create(model="...", content=[...])

        # Another base_url: give the SDK and video_client the same one.
        ark = Ark(api_key=key, base_url=B, max_retries=0,
                  http_client=video_client(api_key=key, endpoint=B))

    The transport serves ``endpoint``'s origin only.  An Ark SDK call to any other origin
    (an ``Ark(base_url=...)`` that is not ``endpoint``) raises ``ValueError`` naming both
    (the SDK reports it as its connection error, with this as the cause) rather than
    going out without retries or deadline; other requests there go out as with httpx.
    """
    if "policy" in options:
        raise TypeError("presets take policy fields as keywords (e.g. max_retries=3), not policy=")
    endpoint = check_endpoint("endpoint", endpoint)
    if api_key is not None:
        check_credential("api_key", api_key)
    transport_options, client_options = _split_options(options)
    transport = SmartRetryTransport(_video_policy(api_key, str(options.get("lang", "zh"))),
                                    **transport_options)
    client = _ArkClient(base_url=endpoint, mounts={origin_of(endpoint): transport},
                        timeout=transport.client_timeout(), **client_options)
    client._ark_origin, client._ark_key = origin_of(endpoint), api_key
    return client
