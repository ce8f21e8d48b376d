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

import asyncio
import contextlib
import functools
import operator
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any, Callable, Literal, Optional, TypeVar, Union

import httpcore
import httpx

from requests_smartretry.budget import DEFAULT_BUDGET
from requests_smartretry.classify import (
    BODY_READ_FAILED,
    DEADLINE_BEFORE_SENDING,
    ENCLOSING_ATTEMPT_OVER,
    Classification,
    classify_by_type,
    classify_http_response,
    httpx_exception_table,
    mark_final,
    veto,
)
from requests_smartretry.collaborators import resolve_collaborators, resolve_throttle
from requests_smartretry.deadline import (
    AsyncCut,
    NoTimeLeft,
    Watch,
    active_watch,
    attempt_seconds,
    running_cut,
)
from requests_smartretry.engine import (
    BreakerGate,
    BudgetGate,
    CallInfo,
    Outcome,
    build_hooks,
    check_clocks,
    check_hooks,
    quiet_plan,
    run_call,
    run_call_async,
)
from requests_smartretry.errors import AttemptDeadlineExceeded as _CoreDeadlineExceeded
from requests_smartretry.events import Hook, Verdict
from requests_smartretry.overrides import current_overrides
from requests_smartretry.policy import RetryPolicy, resolve_policy
from requests_smartretry.presets._base import check_credential, check_endpoint, origin_of
from requests_smartretry.presets.ark import DEFAULT_ENDPOINT as ARK_ENDPOINT
from requests_smartretry.presets.ark import _video_policy
from requests_smartretry.redact import install_redacting_filter, redact_url
from requests_smartretry.sending import (
    Sending,
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
    "AsyncSmartClient",
    "AsyncSmartRetryTransport",
    "AttemptDeadlineExceeded",
    "BodyNotReplayable",
    "SmartClient",
    "SmartRetryTransport",
    "classify_httpx_exception",
    "smart_async_client",
    "smart_client",
    "video_async_client",
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
    if hasattr(inner, "read") or hasattr(inner, "aread") or hasattr(inner, "__next__") \
            or hasattr(inner, "__anext__"):  # a file, a generator (sync or async): one-shot
        raise BodyNotReplayable(
            f"the body of this {request.method} to {redact_url(str(request.url))} was "
            "already sent once and cannot be replayed (a 307/308 redirect repeats the "
            "request with the same body); an empty or partial body is never sent: pass "
            "bytes or a seekable file to follow such redirects")


# What the call names are cached by: a URL's parsed parts (httpx keeps them in a named
# tuple, hashed and compared in C), or where an httpx lacks them, its text.  An
# httpx.URL key would hash by building its text from those parts, and compare equal by
# building both texts and parsing the other URL again.
_url_key: Callable[[httpx.URL], Any] = (
    operator.attrgetter("_uri_reference")
    if isinstance(getattr(httpx.URL("http://x"), "_uri_reference", None), tuple) else str)


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


# -- one request's attempts: the shared attempt state for httpx ---------------------------------


class _HttpxSending(Sending[httpx.Response]):
    """One httpx request's attempts (sync or async alike): the shared attempt state
    (:class:`~requests_smartretry.sending.Sending`) with what httpx requests need."""

    __slots__ = ("asked_timeouts", "asynchronous", "minted", "owner", "policy", "read_body",
                 "replayable", "request")

    def __init__(self, owner: _SmartTransportBase, request: httpx.Request,
                 policy: RetryPolicy, minted: Optional[str], asynchronous: bool) -> None:
        #: Whether the attempt reads the body (a SmartClient's request not streamed).
        self.read_body = request.extensions.get(STREAM_EXTENSION) is False
        self.asynchronous = asynchronous
        self.owner = owner
        self.request = request
        self.policy = policy
        if policy.prepare_attempt is None:  # every attempt sends ``request`` as it is
            self.as_sent = request
        #: The idempotency header this call added (the caller's request has none).
        self.minted = minted
        self.replayable = isinstance(request.stream, httpx.ByteStream)
        self.asked_timeouts = request.extensions.get("timeout")

    def closed(self) -> bool:
        return self.owner._closed

    def closed_error(self) -> BaseException:
        return RuntimeError("Cannot send a request, as the transport has been closed "
                            "(before the retry; nothing more is sent).")

    def rewind(self) -> None:
        request = self.request  # the timeouts an attempt cut to its deadline, as asked
        if request.extensions.get("timeout") is not self.asked_timeouts:
            request.extensions = {**request.extensions, "timeout": self.asked_timeouts}

    def prepare(self, number: int) -> httpx.Request:
        prepare = self.policy.prepare_attempt
        if prepare is None:
            return self.request
        return _attempt_request(self.request, prepare, number)

    def asked_idempotent(self) -> bool:
        asked = httpx.Headers(self.request.headers)
        if self.minted is not None:
            del asked[self.minted]
        return is_idempotent(self.policy, _RequestView(self.request, asked))

    def call_idempotent(self) -> bool:
        return is_idempotent(self.policy, _RequestView(self.request, self.request.headers))

    def enclosing_over(self) -> Outcome[httpx.Response]:
        error = AttemptDeadlineExceeded(
            "the enclosing execute_with_retry attempt is over (abandoned at its "
            "deadline); this request is not idempotent and was not sent",
            request=self.request)
        return Outcome(ENCLOSING_ATTEMPT_OVER, error=error, signal=error)

    def body_replayable(self) -> bool:
        return self.replayable

    def end(self, outcome: Outcome[httpx.Response]) -> Outcome[httpx.Response]:
        outcome = Sending.end(self, outcome)
        if not self.read_body and outcome.value is not None and \
                outcome.classification.verdict is _SUCCESS_VERDICT:
            # Read later: a failure then is final as one now would be; the throttle's
            # slot (if any) is held until the body is closed, as on the adapter.
            _guard_streamed_body(outcome.value, self)
            outcome.hold = functools.partial(_hold_until_closed, outcome.value,
                                             self.asynchronous)
        return outcome

    def body_veto(self) -> Optional[str]:
        """The veto a later failed read of a streamed response body gets."""
        return veto(BODY_READ_FAILED, self.call_idempotent(), self.replayable)


# -- what every attempt's outcome is, whichever transport made it ---------------------------


def _no_time_left(request: httpx.Request) -> Outcome[httpx.Response]:
    error = AttemptDeadlineExceeded(
        "no time left for this attempt (enclosing deadline)", request=request)
    return Outcome(DEADLINE_BEFORE_SENDING, error=error, signal=error)


def _reads_inside(read_body: bool, response: httpx.Response, policy: RetryPolicy) -> bool:
    """Whether the attempt reads the body (inside its deadline): a response that is not
    streamed, or an error body for the vendor's ``classify_response`` hook."""
    return read_body or (response.status_code >= 400 and policy.classify_response is not None)


def _error_outcome(exc: BaseException, request: httpx.Request, total: float,
                   cut: bool) -> Outcome[httpx.Response]:
    """The outcome of an attempt that raised ``exc`` (``cut``: its deadline had passed)."""
    verdict = classify_httpx_exception(exc)
    # A cut after sending is the deadline's, and so is httpx's own read or write timeout
    # (cut to the attempt) that expired at the deadline before the cut got to run.
    if verdict.sent and cut:
        return _deadline_outcome(total, request, cause=exc)
    return Outcome(verdict, error=exc, signal=exc)


def _response_outcome(response: httpx.Response, request: httpx.Request, policy: RetryPolicy,
                      url: Optional[str] = None) -> Outcome[httpx.Response]:
    """The outcome of an attempt that got ``response`` in time: the verdict on it
    (``url``: ``request``'s URL redacted already, if known)."""
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


# -- the transports ------------------------------------------------------------------------------


class _SmartTransportBase:
    """What the sync and the async transport share: the policy, the collaborators, the
    hooks, the call names, and how a call starts (:meth:`_begin`)."""

    policy: RetryPolicy
    _closed = False

    def _setup(self, policy: Optional[RetryPolicy], policy_options: dict[str, Any],
               caller: str, breaker: Optional[BreakerGate], budget: Optional[BudgetGate],
               state: Any, throttle: Optional[Throttle], hooks: Any,
               stats: Union[Stats, Literal[False], None], clock: Callable[[], float]) -> None:
        self.policy = resolve_policy(policy, policy_options, caller)
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self.extra_hooks = check_hooks(hooks)
        self.stats, self.breaker, self.budget, self.state = resolve_collaborators(
            stats, breaker, budget, state)
        self.throttle = resolve_throttle(throttle, self.state)
        self._clock = clock
        self._hooks = build_hooks(self.policy, stats=self.stats, extra=self.extra_hooks,
                                  breaker=self.breaker, budget=self.budget,
                                  throttle=self.throttle)
        self._quiet = quiet_plan(self._hooks)  # told directly while a call stays quiet
        # Call names by (method, URL parts): with no name_request hook they depend on nothing
        # else.  Bounded (cleared when full) so that ids in paths cannot grow memory.
        self._names: Optional[dict[tuple[str, Any], CallInfo]] = (
            {} if self.policy.name_request is None else None)
        # Per policy derived by retry_options: id -> (policy, hooks, quiet plan).
        self._derived: dict[int, tuple[RetryPolicy, tuple[Hook, ...], Any]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(policy={self.policy!r})"

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
                                breaker=self.breaker, budget=self.budget,
                                throttle=self.throttle)
            if len(self._derived) >= 64:  # bounded: policies may be derived per request
                self._derived.clear()
            derived = self._derived[id(policy)] = (policy, hooks, quiet_plan(hooks))
        return derived[1], derived[2]

    def _call_info(self, request: httpx.Request,
                   policy: Optional[RetryPolicy] = None) -> CallInfo:
        names = self._names if policy is None else None  # derived policies: not cached
        key = (request.method, _url_key(request.url))
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

    def _begin(self, request: httpx.Request, asynchronous: bool) -> tuple[
            RetryPolicy, CallInfo, tuple[Hook, ...], Any, _HttpxSending]:
        """A call starts: its policy (a ``retry_options`` block's), names, hooks, quiet
        plan and attempt state; an idempotency key minted when the policy asks for one."""
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
        sending = _HttpxSending(self, request, policy, minted, asynchronous)
        if not sending.replayable:
            _refuse_consumed(request)
        return policy, call, hooks, quiet, sending


class SmartRetryTransport(_SmartTransportBase, httpx.BaseTransport):
    """An httpx transport that gives every request a deadline and classified retries.

    Example::

        transport = SmartRetryTransport(max_retries=1, timeout=30.0,
                                        operation_name="生成视频")
        client = httpx.Client(transport=transport)   # or smart_client(...)
        transport.stats.snapshot()

    Takes what :class:`~requests_smartretry.SmartRetryAdapter` takes (``policy=`` or the
    policy's keywords, ``breaker``, ``budget``, ``state``, ``throttle``, ``hooks``,
    ``stats``, ``sleep``, ``clock``) and ``transport=``, the transport that sends each
    attempt (an ``httpx.HTTPTransport()`` by default; an ``HTTPTransport`` of yours gets
    its sockets watched for the deadline as well).  A failure that ends the call raises the last
    attempt's httpx exception (``ConnectError``, ``ReadTimeout``…, with ``retry_history``);
    an attempt cut at its deadline raises :class:`AttemptDeadlineExceeded`.  A request
    body that cannot be replayed (a generator, a file) is never sent twice.

    Thread safety: as the adapter, it holds the immutable policy and thread-safe
    collaborators; one client may serve many threads.
    """

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
        check_clocks(sleep, clock)
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise TypeError(f"transport must be an httpx.BaseTransport, got {transport!r}")
        self._setup(policy, policy_options, "SmartRetryTransport", breaker, budget, state,
                    throttle, hooks, stats, clock)
        self.transport = httpx.HTTPTransport() if transport is None else transport
        #: Whether the watchdog can cut the sockets of the inner transport at the deadline.
        self.cuts_sockets = _watch_sockets(self.transport)
        self._sleep = sleep

    def close(self) -> None:
        """Close the inner transport; a call under way sends nothing more."""
        self._closed = True
        self.transport.close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` with retries; returns the last response or raises the last
        attempt's error (with ``retry_history`` attached)."""
        policy, call, hooks, quiet, sending = self._begin(request, asynchronous=False)

        def attempt(number: int) -> Outcome[httpx.Response]:
            stale = sending.take_stale()
            if stale is not None:  # a retry discards the last failed response
                stale.close()
            to_send = sending.begin(number)
            if to_send.__class__ is Outcome:
                return to_send  # not sent
            try:
                outcome = self._attempt(to_send, sending.read_body, policy,
                                        call.url if to_send is request else None)
            except BaseException:
                sending.abandon()
                raise
            return sending.end(outcome)

        try:
            finished = run_call(policy, call, attempt, hooks=hooks, breaker=self.breaker,
                                budget=self.budget, sleep=self._sleep, clock=self._clock,
                                closed=self._is_closed, quiet=quiet,
                                throttle=self.throttle)
        finally:
            if sending.minted is not None:  # the caller's request, sent again, gets a new key
                del request.headers[sending.minted]
        return finished.unwrap()  # raises the last attempt's error, history attached

    def _attempt(self, request: httpx.Request, read_body: bool, policy: RetryPolicy,
                 url: Optional[str] = None) -> Outcome[httpx.Response]:
        """One attempt, inside its wall-clock deadline (the watchdog cuts the socket);
        ``url``: ``request``'s URL redacted already, if known."""
        try:
            total = attempt_seconds(policy.timeout)
        except NoTimeLeft:
            return _no_time_left(request)
        _timeouts_within(request, total)
        deadline = Watch(total)
        response: Optional[httpx.Response] = None
        try:
            response = self.transport.handle_request(request)
            if _reads_inside(read_body, response, policy):
                response.read()  # inside the deadline
        except Exception as exc:
            if response is not None:
                response.close()
            return _error_outcome(exc, request, total, deadline.fired or (
                isinstance(exc, httpx.TimeoutException) and deadline.remaining() == 0.0))
        finally:
            deadline.finish()
        if deadline.fired:
            response.close()
            return _deadline_outcome(total, request)
        return _response_outcome(response, request, policy, url)


def _guard_streamed_body(response: httpx.Response, sending: _HttpxSending) -> None:
    """A later failed read of the streamed ``response`` gets the veto that a failure after
    sending would get now (:func:`~requests_smartretry.engine.mark_vetoed`)."""
    stream: Any = response.stream  # typed as both, each of them in practice
    reason = sending.body_veto()
    if reason is not None:
        response.stream = (_AsyncFinalOnFailure(stream, reason) if sending.asynchronous
                           else _FinalOnFailure(stream, reason))


def _hold_until_closed(response: httpx.Response, asynchronous: bool,
                       release: Callable[[], None]) -> None:
    """Keep a streamed ``response``'s throttle slot until its body stream is closed
    (httpx closes it once read to the end, or with the response), or at the latest until
    the response is garbage collected: the vendor counts the request in flight while it
    sends the body."""
    stream: Any = response.stream
    response.stream = (_AsyncReleasing(stream, release) if asynchronous
                       else _Releasing(stream, release))
    weakref.finalize(response, release)


class _Releasing(httpx.SyncByteStream):
    """A response body stream that calls ``release`` when it is closed."""

    def __init__(self, stream: httpx.SyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release = release

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._stream)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._release()


class _AsyncReleasing(httpx.AsyncByteStream):
    """:class:`_Releasing` for an async response body."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release = release

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release()


# -- asyncio ----------------------------------------------------------------------------------

class _WatchedAsyncStream(httpcore.AsyncNetworkStream):
    """An async network stream that tells the running attempt's cut when the first byte
    of a request is written (the phase that decides whether a cut attempt was sent)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        cut = running_cut()
        if cut is not None:
            cut.sent = True
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, ssl_context: Any, server_hostname: Optional[str] = None,
                        timeout: Optional[float] = None) -> httpcore.AsyncNetworkStream:
        return _WatchedAsyncStream(
            await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _WatchedAsyncBackend(httpcore.AsyncNetworkBackend):
    """httpcore's async network backend, whose streams are :class:`_WatchedAsyncStream` s."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None,
                          local_address: Optional[str] = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        return _WatchedAsyncStream(await self._backend.connect_tcp(
            host, port, timeout=timeout, local_address=local_address,
            socket_options=socket_options))

    async def connect_unix_socket(self, path: str, timeout: Optional[float] = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        return _WatchedAsyncStream(await self._backend.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def _watch_async_writes(transport: httpx.AsyncBaseTransport) -> bool:
    """Give an ``httpx.AsyncHTTPTransport``'s pool the watched backend; False when it has
    none (a mock, a custom transport): a cut attempt then counts as sent."""
    pool = getattr(transport, "_pool", None)  # httpx keeps its httpcore pool here
    backend = getattr(pool, "_network_backend", None)  # ...and httpcore its backend here
    if isinstance(backend, _WatchedAsyncBackend):
        return True
    if not isinstance(backend, httpcore.AsyncNetworkBackend):
        return False
    pool._network_backend = _WatchedAsyncBackend(backend)  # type: ignore[union-attr]
    return True


class AsyncSmartRetryTransport(_SmartTransportBase, httpx.AsyncBaseTransport):
    """:class:`SmartRetryTransport` for ``httpx.AsyncClient``: the same policy, events, log
    lines, statistics, breaker and budget, on asyncio.

    Example::

        async with smart_async_client(max_retries=1, timeout=30.0) as client:
            await client.get(url)

        transport = AsyncSmartRetryTransport(max_retries=1)
        client = httpx.AsyncClient(transport=transport)

    Waits are ``asyncio.sleep`` (``sleep=`` may be any function of the seconds, sync or
    async).  An attempt past its deadline is cancelled where it waits (connecting,
    sending, waiting for the headers, reading a dripping body) and raises
    :class:`AttemptDeadlineExceeded`; whether it was sent is recorded at the connection
    (the first byte written), as on the sync transport.  A task cancelled during an
    attempt or a wait ends the call at once (give-up reason ``cancelled``, its
    ``CancelledError`` propagating); no attempt goes on in the background.  A Redis
    ``state=`` does its work on its worker threads, each wait bounded by the store's
    ``time_budget``.  ``throttle=`` (a :class:`~requests_smartretry.Throttle`) paces the
    attempts as on the sync transport, its waits ``asyncio.sleep``; an attempt's turn
    goes back when it ends, a cancelled one's included.
    """

    def __init__(
        self,
        policy: Optional[RetryPolicy] = None,
        *,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        breaker: Optional[BreakerGate] = None,
        budget: Optional[BudgetGate] = DEFAULT_BUDGET,
        state: Any = None,
        throttle: Optional[Throttle] = None,
        hooks: tuple[Hook, ...] = (),
        stats: Union[Stats, Literal[False], None] = None,
        sleep: Optional[Callable[[float], Any]] = None,
        clock: Callable[[], float] = time.monotonic,
        **policy_options: Any,
    ) -> None:
        if sleep is not None and not callable(sleep):
            raise TypeError(f"sleep must be callable, got {sleep!r}")
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(
                f"transport must be an httpx.AsyncBaseTransport, got {transport!r}")
        self._setup(policy, policy_options, "AsyncSmartRetryTransport", breaker, budget,
                    state, throttle, hooks, stats, clock)
        self.transport = httpx.AsyncHTTPTransport() if transport is None else transport
        #: Whether a cut attempt's phase (sent or not) is known from its connection.
        self.watches_writes = _watch_async_writes(self.transport)
        self._sleep = sleep

    async def aclose(self) -> None:
        """Close the inner transport; a call under way sends nothing more."""
        self._closed = True
        await self.transport.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` with retries; returns the last response or raises the last
        attempt's error (with ``retry_history`` attached)."""
        policy, call, hooks, quiet, sending = self._begin(request, asynchronous=True)

        async def attempt(number: int) -> Outcome[httpx.Response]:
            stale = sending.take_stale()
            if stale is not None:  # a retry discards the last failed response
                await stale.aclose()
            to_send = sending.begin(number)
            if to_send.__class__ is Outcome:
                return to_send  # not sent
            try:
                outcome = await self._attempt(to_send, sending.read_body, policy,
                                              call.url if to_send is request else None)
            except BaseException:
                sending.abandon()
                raise
            return sending.end(outcome)

        try:
            finished = await run_call_async(
                policy, call, attempt, hooks=hooks, breaker=self.breaker,
                budget=self.budget, sleep=self._sleep, clock=self._clock,
                closed=self._is_closed, quiet=quiet, throttle=self.throttle)
        finally:
            if sending.minted is not None:
                del request.headers[sending.minted]
        return finished.unwrap()

    async def _attempt(self, request: httpx.Request, read_body: bool, policy: RetryPolicy,
                       url: Optional[str] = None) -> Outcome[httpx.Response]:
        """One attempt, cancelled at its wall-clock deadline
        (:class:`~requests_smartretry.deadline.AsyncCut`); ``url``: ``request``'s URL
        redacted already, if known."""
        try:
            total = attempt_seconds(policy.timeout)
        except NoTimeLeft:
            return _no_time_left(request)
        _timeouts_within(request, total)
        cut = AsyncCut(total, self.watches_writes)
        response: Optional[httpx.Response] = None
        try:
            response = await self.transport.handle_async_request(request)
            if _reads_inside(read_body, response, policy):
                await response.aread()  # inside the deadline: a dripping body is cut
        except asyncio.CancelledError as exc:
            if not cut.ours():
                raise  # the caller's cancellation: the call ends (reason "cancelled")
            if response is not None:
                await response.aclose()
            return _cut_outcome(total, request, cut.sent, exc)
        except Exception as exc:
            if response is not None:
                await response.aclose()
            return _error_outcome(exc, request, total, cut.fired or (
                isinstance(exc, httpx.TimeoutException) and cut.remaining() == 0.0))
        finally:
            cut.finish()
        if cut.fired:  # it fired as the last wait ended: its cancellation is pending
            await cut.absorb()
            await response.aclose()
            return _cut_outcome(total, request, cut.sent, None)
        return _response_outcome(response, request, policy, url)


def _cut_outcome(total: float, request: httpx.Request, sent: bool,
                 cause: Optional[BaseException]) -> Outcome[httpx.Response]:
    """An async attempt cut at its deadline: :class:`AttemptDeadlineExceeded` once its
    first byte was written; before that (connecting, waiting for a pooled connection)
    nothing was sent, and it is the ``ConnectTimeout`` the sync transport raises then."""
    if sent:
        return _deadline_outcome(total, request, cause=cause)
    error = httpx.ConnectTimeout(
        f"attempt deadline of {total:g}s passed before the request was sent",
        request=request)
    error.__cause__ = _DeadlineBeforeSending("the attempt deadline passed before sending")
    return Outcome(classify_httpx_exception(error), error=error, signal=error)


class _FinalOnFailure(httpx.SyncByteStream):
    """A response body stream whose read failures are marked final with ``reason``."""

    def __init__(self, stream: httpx.SyncByteStream, reason: str) -> None:
        self._stream = stream
        self._reason = reason

    def __iter__(self) -> Iterator[bytes]:
        return final_on_failure(self._stream, self._reason)

    def close(self) -> None:
        self._stream.close()


class _AsyncFinalOnFailure(httpx.AsyncByteStream):
    """:class:`_FinalOnFailure` for an async response body."""

    def __init__(self, stream: httpx.AsyncByteStream, reason: str) -> None:
        self._stream = stream
        self._reason = reason

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except Exception as exc:
            mark_final(exc, self._reason)
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()


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


class _MergedUrls:
    """What the smart clients' ``_merge_url`` gives for a URL string, remembered per string
    (at most 512, cleared when full) while the client's ``base_url`` stays the same object:
    httpx parses the string again for every request (``URL(url)``: 48 Python calls), and
    the URL it returns is copied by every ``Request`` built on it (an ``httpx.URL`` is
    never changed in place), so a request never shares it with another."""

    _merged: Optional[dict[str, tuple[httpx.URL, httpx.URL]]] = None

    def _merge_url(self, url: Union[httpx.URL, str]) -> httpx.URL:
        if url.__class__ is not str:  # an httpx.URL (or a str subclass): as httpx does
            merged: httpx.URL = super()._merge_url(url)  # type: ignore[misc]
            return merged
        known = self._merged
        if known is None:
            known = self._merged = {}
        base = self.base_url  # type: ignore[attr-defined]  # an httpx client's
        found = known.get(url)
        if found is not None and found[0] is base:
            return found[1]
        merged = super()._merge_url(url)  # type: ignore[misc]
        if len(known) >= 512:
            known.clear()
        known[url] = (base, merged)
        return merged


class SmartClient(_MergedUrls, httpx.Client):
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
        return _smart_transport_of(self, SmartRetryTransport)


class AsyncSmartClient(_MergedUrls, httpx.AsyncClient):
    """:class:`SmartClient` for asyncio: an ``httpx.AsyncClient`` that tells its
    :class:`AsyncSmartRetryTransport` whether a response is streamed.

    Example::

        async with smart_async_client(max_retries=2) as client:
            response = await client.get(url)
    """

    async def send(self, request: httpx.Request, *, stream: bool = False,
                   **options: Any) -> httpx.Response:
        """As ``httpx.AsyncClient.send``, with the ``stream`` flag passed to the transport."""
        request.extensions[STREAM_EXTENSION] = stream
        return await super().send(request, stream=stream, **options)

    @property
    def smart_transport(self) -> AsyncSmartRetryTransport:
        """The client's :class:`AsyncSmartRetryTransport` (its own, or the mounted one)."""
        return _smart_transport_of(self, AsyncSmartRetryTransport)


_TransportT = TypeVar("_TransportT")


def _smart_transport_of(client: Any, kind: type[_TransportT]) -> _TransportT:
    for candidate in (client._transport, *client._mounts.values()):
        if isinstance(candidate, kind):
            return candidate
    raise LookupError(f"this client has no {kind.__name__}")


# httpx.Client keywords that configure the transport it would build: given to ours too.
_CONNECTION_KEYWORDS = ("verify", "cert", "trust_env", "http1", "http2", "limits", "proxy")


def _split_options(options: dict[str, Any], inner: Callable[..., Any] = httpx.HTTPTransport,
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
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
            transport["transport"] = inner(**connection)
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


def smart_async_client(policy: Optional[RetryPolicy] = None,
                       **options: Any) -> AsyncSmartClient:
    """:func:`smart_client` for asyncio: an :class:`AsyncSmartClient` whose every request
    goes through an :class:`AsyncSmartRetryTransport`.

    Example::

        async with smart_async_client(max_retries=1, timeout=30.0) as client:
            await client.get("https://api.example.com/v1/status")
            client.smart_transport.stats.snapshot()
    """
    transport_options, client_options = _split_options(options, httpx.AsyncHTTPTransport)
    transport = AsyncSmartRetryTransport(policy, **transport_options)
    return AsyncSmartClient(transport=transport, timeout=transport.client_timeout(),
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
        _check_ark_target(self, request, "video_client")
        return super().send(request, stream=stream, **options)


class _AsyncArkClient(AsyncSmartClient):
    """``video_async_client``'s client: as :class:`_ArkClient`, for ``AsyncArk``."""

    _ark_origin = ""
    _ark_key: Optional[str] = None

    async def send(self, request: httpx.Request, *, stream: bool = False,
                   **options: Any) -> httpx.Response:
        """As :meth:`AsyncSmartClient.send`; an Ark call to another origin raises
        ``ValueError`` naming both."""
        _check_ark_target(self, request, "video_async_client")
        return await super().send(request, stream=stream, **options)


def _check_ark_target(client: Any, request: httpx.Request, maker: str) -> None:
    """Refuse an Ark SDK call (its ``X-Client-Request-Id``, or the client's key) aimed at
    another origin than the client's endpoint: it would go out without the transport."""
    target = origin_of(str(request.url))
    key = client._ark_key
    if target != client._ark_origin and (
            "x-client-request-id" in request.headers
            or (key is not None and request.headers.get("authorization") == f"Bearer {key}")):
        raise ValueError(
            f"{maker} serves the Ark endpoint {client._ark_origin}, but this Ark call "
            f"goes to {target}: pass the SDK's base_url as {maker}(endpoint=...) "
            f"so that the call gets the retries and the attempt deadline")


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
    client: SmartClient = _ark_client(_ArkClient, SmartRetryTransport, httpx.HTTPTransport,
                                      api_key, endpoint, options)
    return client


def video_async_client(
    api_key: Optional[str] = None, *, endpoint: str = ARK_ENDPOINT, **options: Any
) -> AsyncSmartClient:
    """:func:`video_client` for asyncio: an :class:`AsyncSmartClient` for the Ark SDK's
    ``AsyncArk``, with the video preset's policy on ``endpoint``'s origin only.

    Example::

        from volcenginesdkarkruntime import AsyncArk

        ark = AsyncArk(api_key=key, http_client=video_async_client(api_key=key),
                       max_retries=0)
        task = await ark.content_generation.tasks.create(model="...", content=[...])
    """
    client: AsyncSmartClient = _ark_client(_AsyncArkClient, AsyncSmartRetryTransport,
                                           httpx.AsyncHTTPTransport, api_key, endpoint,
                                           options)
    return client


def _ark_client(client_class: Callable[..., Any], transport_class: Callable[..., Any],
                inner: Callable[..., Any], api_key: Optional[str], endpoint: str,
                options: dict[str, Any]) -> Any:
    """An Ark client of ``client_class`` whose endpoint's origin is served by a
    ``transport_class`` with the video preset's policy."""
    if "policy" in options:
        raise TypeError("presets take policy fields as keywords (e.g. max_retries=3), not policy=")
    endpoint = check_endpoint("endpoint", endpoint)
    if api_key is not None:
        check_credential("api_key", api_key)
    transport_options, client_options = _split_options(options, inner)
    transport = transport_class(_video_policy(api_key, str(options.get("lang", "zh"))),
                                **transport_options)
    client = client_class(base_url=endpoint, mounts={origin_of(endpoint): transport},
                          timeout=transport.client_timeout(), **client_options)
    client._ark_origin, client._ark_key = origin_of(endpoint), api_key
    return client
