"""The classification table: what one attempt's exception or response means.

Read top to bottom: the first row that matches any exception in the cause chain wins, so
the most specific facts (an errno, a DNS failure) come before the generic wrappers that
urllib3 and requests put around them.

Whether the request may have reached the server is not read from the errno: the kernel
raises ``ETIMEDOUT``, ``EHOSTUNREACH`` or ``ECONNRESET`` on established connections too,
after the request went out.  It is a fact about the attempt's *phase*, the table's second
input: :data:`CONNECT` (TCP connect, TLS handshake, proxy tunnel, DNS, waiting for a pooled
connection: not one byte of the request written) or :data:`SENDING` (the request was being
written, or was written).  A row says whether its error *alone* proves that nothing was
sent (a DNS failure, urllib3's ``NewConnectionError``, a connect timeout); every other
row, errnos included (``ECONNREFUSED`` too), means "may have reached the server" unless
the phase is :data:`CONNECT`.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import requests
import urllib3.exceptions as u3

from .backoff import parse_retry_after, parse_retry_after_ms
from .errors import AttemptDeadlineExceeded, CircuitOpenError, ResponseSignatureError

__all__ = [
    "BODY_READ_FAILED",
    "CONNECT",
    "DEADLINE_BEFORE_SENDING",
    "ENCLOSING_ATTEMPT_OVER",
    "SENDING",
    "Classification",
    "ErrorClassifier",
    "RetryOn",
    "Verdict",
    "attempt_phase",
    "call_classifier",
    "classify_by_type",
    "classify_call_error",
    "classify_exception",
    "classify_http_response",
    "classify_message",
    "classify_status",
    "final_reason",
    "httpx_exception_table",
    "linked_exceptions",
    "mark_connect_phase",
    "mark_final",
    "pool_refused",
    "retry_after_of",
    "server_signals",
    "status_of",
    "veto",
    "walk_causes",
]

class Verdict(str, enum.Enum):
    """What one attempt's outcome means for the retry decision."""

    SUCCESS = "success"
    #: Transport failure: refused, reset, DNS, connect timeout.  Retryable.
    NETWORK = "network"
    #: The attempt's deadline (or a read timeout) passed.  Retryable.
    TIMEOUT = "timeout"
    #: 5xx (or a vendor code meaning "internal error").  Retryable.
    SERVER_ERROR = "server_error"
    #: 429 (or a vendor code meaning "slow down").  Retryable, honours Retry-After.
    RATE_LIMIT = "rate_limit"
    #: 4xx other than 429.  Never retried.
    CLIENT_ERROR = "client_error"
    #: The caller's own error, or a vendor code marked permanent.  Never retried.
    BUSINESS = "business"
    #: A transport failure that repeating cannot fix (bad URL, TLS verification).  Never retried.
    PERMANENT = "permanent"
    #: Any other exception, retried because the caller asked for it (the basic callable
    #: API, ``execute_with_retry``; or ``retry_on=``).  Retryable.
    ERROR = "error"

    @property
    def retryable(self) -> bool:
        """True for the verdicts that a retry may fix."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {Verdict.NETWORK, Verdict.TIMEOUT, Verdict.SERVER_ERROR, Verdict.RATE_LIMIT, Verdict.ERROR}
)


_MAX_CHAIN = 64

#: The attempt failed before one byte of the request was written: nothing was sent.
CONNECT = "connect"
#: The request was being written (or was written): it may have reached the server.  A
#: failure of the first write counts here too (``sendall`` may have written part of it).
SENDING = "sending"

# Set on an exception by the layer that saw where it happened (the adapter's connections;
# the adapter, for a give-up the callable API must honour).  Attributes, not wrapper
# types: the exception keeps the type an ``except`` clause already catches.
_PHASE_ATTR = "_smartretry_phase"
_FINAL_ATTR = "_smartretry_final"


@dataclass(frozen=True)
class Classification:
    """The verdict on one attempt, and the facts that decide whether a retry is safe.

    Example::

        Classification(Verdict.SERVER_ERROR, "HTTP 500 SYSTEM_ERROR", sent=True)
    """

    verdict: Verdict
    #: Short machine-readable reason (``ECONNREFUSED``, ``HTTP 503``, a vendor code...).
    reason: str
    #: Whether the request may have reached the server.  ``False`` means nothing was sent,
    #: so a retry is safe whatever the method.
    sent: bool = True
    #: Whether the server may have acted on it.  429 and 503 say it did not.
    server_acted: bool = True
    #: Seconds the server asked to wait (``Retry-After``), when it said so.
    retry_after: Optional[float] = None

    @property
    def retryable(self) -> bool:
        """Whether the verdict is one a retry may fix (safety is decided separately)."""
        return self.verdict.retryable

    @property
    def safe_to_repeat(self) -> bool:
        """True when repeating cannot duplicate a side effect, whatever the method."""
        return not self.sent or not self.server_acted


#: A request not sent because the callable-API attempt it belongs to is over (abandoned
#: at its deadline): the enclosing call decided without it, so it is never sent.
ENCLOSING_ATTEMPT_OVER = Classification(Verdict.PERMANENT, "enclosing_attempt_over",
                                        sent=False)
SUCCESS = Classification(Verdict.SUCCESS, "ok", sent=True)
# A module constant: an enum member read through its class is a slow lookup (Python 3.11),
# and classify_http_response reads it for every response.
_SUCCESS_VERDICT = Verdict.SUCCESS
#: An attempt the deadline ended before anything was sent (no time left, or the pool
#: refused a connection past it): safe to retry whatever the method.
DEADLINE_BEFORE_SENDING = Classification(Verdict.TIMEOUT, "deadline", sent=False)
#: A streamed body's read that fails once the call has returned: the server answered.
BODY_READ_FAILED = Classification(Verdict.NETWORK, "body_read", sent=True)


class NothingSent(Exception):
    """Marks a pool's refusal to hand out a connection because the attempt deadline had
    passed: nothing was sent.  The adapter classifies it as the attempt deadline's timeout
    (safe to retry) and the caller sees requests' ``ConnectTimeout``."""


def pool_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a pool's refusal past the deadline (:class:`NothingSent`), which
    classifies as :data:`DEADLINE_BEFORE_SENDING`."""
    # requests raises ConnectTimeout(MaxRetryError(reason=<the pool's error>)); the adapter
    # raises ConnectTimeout(<the pool's error>).
    cause = exc.args[0] if exc.args else None
    return isinstance(getattr(cause, "reason", cause), NothingSent)


def veto(classification: Classification, idempotent: bool, replayable: bool) -> Optional[str]:
    """Why a failure after which the request may have reached the server must not be sent
    again (``None``: it may be): ``"not_replayable"`` (the body cannot be sent again) or
    ``"unsafe"`` (not idempotent, and the server may have acted on it)."""
    if classification.sent and not replayable:
        return "not_replayable"
    if not classification.safe_to_repeat and not idempotent:
        return "unsafe"
    return None


def walk_causes(exc: BaseException, *, context: bool = True) -> Iterator[BaseException]:
    """Every exception reachable from ``exc``: itself, ``__cause__``, ``__context__``,
    urllib3's ``reason`` and exceptions passed as arguments (as requests does), breadth
    first, each once, at most 64.  ``context=False`` leaves out ``__context__`` links
    (an exception that was being handled when this one was raised)."""
    seen: set[int] = set()
    queue: deque[BaseException] = deque([exc])
    while queue and len(seen) < _MAX_CHAIN:
        node = queue.popleft()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        queue.extend(x for x in linked_exceptions(node, context=context) if id(x) not in seen)


def linked_exceptions(node: BaseException, *, context: bool = True) -> list[BaseException]:
    """The exceptions ``node`` points to (without ``__context__`` if ``context`` is
    false).  A caller's exception may have properties that raise when read; such a link
    is skipped rather than crashing the classification."""
    linked: list[object] = [node.__cause__, node.__context__] if context else [node.__cause__]
    try:
        linked.append(getattr(node, "reason", None))
    except Exception:
        pass
    try:
        linked.extend(node.args)
    except Exception:
        pass
    return [x for x in linked if isinstance(x, BaseException)]


def _errno_in(*codes: int) -> Callable[[BaseException], bool]:
    wanted = frozenset(codes)
    return lambda e: isinstance(e, OSError) and e.errno in wanted


def _is_dns_failure(e: BaseException) -> bool:
    name_resolution = getattr(u3, "NameResolutionError", ())  # urllib3 >= 2
    return isinstance(e, socket.gaierror) or (
        bool(name_resolution) and isinstance(e, name_resolution)
    )


def _is_connect_timeout(e: BaseException) -> bool:
    # urllib3 makes NewConnectionError a subclass of ConnectTimeoutError; only the real
    # timeout counts here (requests draws the same line).
    return isinstance(e, requests.exceptions.ConnectTimeout) or (
        isinstance(e, u3.ConnectTimeoutError) and not isinstance(e, u3.NewConnectionError)
    )


def _is_tls_verification(e: BaseException) -> bool:
    return isinstance(e, (ssl.SSLCertVerificationError, ssl.CertificateError))


_CHUNKED = requests.exceptions.ChunkedEncodingError

# (predicate, verdict, reason, may_be_sent).  First match over the whole cause chain wins.
# ``may_be_sent`` False: the error alone proves nothing was sent.  True: the request may
# have reached the server, unless the attempt's phase is CONNECT.
_EXCEPTION_TABLE: tuple[tuple[Callable[[BaseException], bool], Verdict, str, bool], ...] = (
    (lambda e: isinstance(e, AttemptDeadlineExceeded), Verdict.TIMEOUT, "deadline", True),
    # An inner breaker refused without touching the network; retrying before it lets a
    # probe through only repeats the refusal.
    (lambda e: isinstance(e, CircuitOpenError), Verdict.PERMANENT, "circuit_open", False),
    # A forged or unverifiable signed answer: repeating the request cannot make it true.
    (lambda e: isinstance(e, ResponseSignatureError), Verdict.PERMANENT, "response_signature",
     True),
    (_is_tls_verification, Verdict.PERMANENT, "TLS verification failed", False),
    (_is_dns_failure, Verdict.NETWORK, "ENOTFOUND", False),
    # The kernel raises these errnos on established connections too (retransmission
    # timeout, keep-alive, TCP_USER_TIMEOUT; ECONNREFUSED and EHOSTUNREACH when ICMP errors
    # arrived meanwhile): only the phase says whether the request went out.
    (_errno_in(errno.ECONNREFUSED), Verdict.NETWORK, "ECONNREFUSED", True),
    (_is_connect_timeout, Verdict.NETWORK, "ETIMEDOUT", False),
    (_errno_in(errno.ENETUNREACH, errno.EHOSTUNREACH), Verdict.NETWORK, "EHOSTUNREACH", True),
    (_errno_in(errno.ETIMEDOUT), Verdict.NETWORK, "ETIMEDOUT", True),
    (_errno_in(errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED), Verdict.NETWORK,
     "ECONNRESET", True),
    (lambda e: isinstance(e, (u3.ReadTimeoutError, requests.exceptions.ReadTimeout,
                              socket.timeout, TimeoutError, requests.exceptions.Timeout)),
     Verdict.TIMEOUT, "read_timeout", True),
    (lambda e: isinstance(e, (u3.ProtocolError, _CHUNKED, ConnectionError)), Verdict.NETWORK,
     "ECONNRESET", True),
    (lambda e: isinstance(e, u3.NewConnectionError), Verdict.NETWORK, "connect_failed", False),
    (lambda e: isinstance(e, requests.exceptions.SSLError), Verdict.NETWORK, "TLS error", True),
    (lambda e: isinstance(e, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                              requests.exceptions.InvalidSchema,
                              requests.exceptions.InvalidHeader,
                              requests.exceptions.TooManyRedirects)),
     Verdict.PERMANENT, "invalid request", False),
    (lambda e: isinstance(e, requests.exceptions.ConnectionError), Verdict.NETWORK,
     "connection_error", True),
)


def mark_connect_phase(exc: BaseException) -> None:
    """Record on ``exc`` that it happened before one byte of the request was written (the
    adapter's connections call it for a failed TCP connect, TLS handshake or tunnel)."""
    _mark(exc, _PHASE_ATTR, CONNECT)


def mark_final(carrier: object, reason: str) -> None:
    """Record on ``carrier`` (an exception, or the response an exception may carry) that
    the layer which produced it decided the request must not be repeated (``"unsafe"``,
    ``"not_replayable"``): an enclosing retrying call honours that."""
    _mark(carrier, _FINAL_ATTR, reason)


def _mark(carrier: object, name: str, value: str) -> None:
    try:
        setattr(carrier, name, value)
    except (AttributeError, TypeError):  # an exception with __slots__ cannot carry it
        pass


def _phase_mark(e: BaseException) -> bool:
    return getattr(e, _PHASE_ATTR, None) == CONNECT


# What proves that a failure came before the first byte of the request: our connections'
# record, or an error that only a connect can raise (urllib3 wraps every OSError of the TCP
# connect in NewConnectionError; DNS; a connect timeout).
_BEFORE_SENDING: tuple[Callable[[BaseException], bool], ...] = (
    _phase_mark,
    lambda e: isinstance(e, u3.NewConnectionError),
    _is_dns_failure,
    _is_connect_timeout,
)
_REFUSED = _errno_in(errno.ECONNREFUSED)
_URLLIB3_ERRORS = (u3.HTTPError, requests.exceptions.RequestException)


def attempt_phase(exc: BaseException) -> str:
    """The phase ``exc`` happened in, as recorded along its own cause chain: :data:`CONNECT`
    when something there proves no byte of the request was written, else :data:`SENDING`.

    ``__context__`` links are not read: an exception that was being handled when ``exc``
    was raised (a failed first try, then a fallback request) says nothing about ``exc``.
    A bare ``ECONNREFUSED`` counts as a refused connect only where urllib3 was not involved
    (urllib3 wraps a refused connect in ``NewConnectionError``; one without it came on an
    established connection)."""
    return _phase_in(list(walk_causes(exc, context=False)))


def _phase_in(own: list[BaseException]) -> str:
    for node in own:
        if any(proves(node) for proves in _BEFORE_SENDING):
            return CONNECT
    if not any(isinstance(node, _URLLIB3_ERRORS) for node in own) and any(
            _REFUSED(node) for node in own):
        return CONNECT
    return SENDING


def final_reason(exc: BaseException) -> Optional[str]:
    """Why an inner retrying layer decided ``exc`` must not be repeated (see
    :func:`mark_final`), found anywhere in its cause chain; ``None`` if it did not."""
    for node in walk_causes(exc):
        # the exception itself, or the response it carries (raise_for_status() in fn)
        try:
            carriers = (node, getattr(node, "response", None))
        except Exception:  # a caller's exception whose property raises: only itself
            carriers = (node, None)
        for carrier in carriers:
            reason = getattr(carrier, _FINAL_ATTR, None)
            if isinstance(reason, str):
                return reason
    return None


def classify_exception(exc: BaseException, phase: Optional[str] = None) -> Classification:
    """Classify a transport exception by walking its cause chain through the table.

    ``phase`` is where the attempt failed (:data:`CONNECT` or :data:`SENDING`); by default
    what the chain records (:func:`attempt_phase`).  A failure in :data:`CONNECT` sent
    nothing, whatever its errno.  Anything the table does not know (a ``ValueError`` from a
    bad body, the caller's own errors) is ``BUSINESS``: never retried.
    """
    if phase not in (None, CONNECT, SENDING):
        raise ValueError(f"phase must be {CONNECT!r}, {SENDING!r} or None, got {phase!r}")
    chain = list(walk_causes(exc))
    # What proves that nothing was sent must be on exc's own chain, not an exception only
    # handled when exc was raised (see attempt_phase).
    own = list(walk_causes(exc, context=False))
    if phase is None:
        phase = _phase_in(own)
    for predicate, verdict, reason, may_be_sent in _EXCEPTION_TABLE:
        if any(predicate(node) for node in chain):
            proves = not may_be_sent and any(predicate(node) for node in own)
            return Classification(verdict, reason, sent=not proves and phase != CONNECT)
    return Classification(Verdict.BUSINESS, type(exc).__name__, sent=phase != CONNECT)


# -- httpx's exceptions, by the phase each one means (httpx.py passes the module in) ---------

#: (exception type, verdict, reason, sent) rows: the first type that any exception in the
#: cause chain is an instance of wins.
TypeTable = tuple[tuple[type[BaseException], Verdict, str, bool], ...]


def httpx_exception_table(httpx: Any, cut_before_sending: type[BaseException]) -> TypeTable:
    """The table for an httpx transport's exceptions (``httpx``: the module, which this one
    never imports; ``cut_before_sending``: the error its watched streams raise when the
    deadline passed before the first byte was written), most specific first.  "sent" is the
    phase: httpx raises ConnectError / ConnectTimeout / PoolTimeout before the request was
    written (DNS, TCP connect, TLS handshake, waiting for a pooled connection), the others
    after."""
    return (
        (cut_before_sending, Verdict.TIMEOUT, "deadline", False),
        (httpx.ConnectTimeout, Verdict.NETWORK, "ETIMEDOUT", False),
        (httpx.PoolTimeout, Verdict.TIMEOUT, "pool_timeout", False),
        (httpx.ConnectError, Verdict.NETWORK, "connect_failed", False),
        (httpx.ProxyError, Verdict.NETWORK, "proxy_error", False),
        (httpx.UnsupportedProtocol, Verdict.PERMANENT, "invalid request", False),
        (httpx.LocalProtocolError, Verdict.PERMANENT, "invalid request", False),
        (httpx.ReadTimeout, Verdict.TIMEOUT, "read_timeout", True),
        (httpx.WriteTimeout, Verdict.TIMEOUT, "write_timeout", True),
        (httpx.ReadError, Verdict.NETWORK, "ECONNRESET", True),
        (httpx.WriteError, Verdict.NETWORK, "ECONNRESET", True),
        (httpx.RemoteProtocolError, Verdict.NETWORK, "ECONNRESET", True),
        (httpx.TimeoutException, Verdict.TIMEOUT, "timeout", True),
        (httpx.TransportError, Verdict.NETWORK, "connection_error", True),
    )


def classify_by_type(exc: BaseException, table: TypeTable) -> Classification:
    """Classify ``exc`` by ``table`` (the phase from the exception's type), keeping the
    package table's facts that outrank the phase: a TLS verification failure stays
    permanent, and a network failure keeps its errno's name (``ECONNREFUSED``,
    ``ENOTFOUND``…).  An exception no row knows is classified by the package's table."""
    known = classify_exception(exc)
    if known.verdict is Verdict.PERMANENT and known.reason == "TLS verification failed":
        return known
    chain = list(walk_causes(exc))
    for kind, verdict, reason, sent in table:
        if any(isinstance(node, kind) for node in chain):
            if verdict is Verdict.NETWORK and known.verdict is Verdict.NETWORK:
                reason = known.reason  # the errno's name says more than the phase's
            return Classification(verdict, reason, sent=sent)
    return known


_TIMEOUT_WORDS = ("超时", "timeout", "timed out")


def classify_message(exc: BaseException) -> Optional[Classification]:
    """The seed's last rule, for the callable API: a message mentioning 超时 / timeout is a
    retryable timeout."""
    try:
        text = str(exc).lower()
    except Exception:  # a caller's exception whose __str__ fails says nothing about time
        return None
    if any(word in text for word in _TIMEOUT_WORDS):
        return Classification(Verdict.TIMEOUT, "timeout (message)", sent=True)
    return None


def classify_status(status: int, retry_statuses: frozenset[int]) -> Classification:
    """The HTTP-status column of the table: 408, 429 and 5xx (as configured) retry, other
    4xx do not.

    429 and 503 tell the client that the server did not act on the request, so even a POST
    may be repeated.  408 (the server stopped waiting for the request) is a timeout,
    repeated only when safe: a proxy may send it after the origin got the request.
    """
    if status < 400 and status not in retry_statuses:
        return SUCCESS
    reason = f"HTTP {status}"
    if status == 408 and status in retry_statuses:
        return Classification(Verdict.TIMEOUT, reason)
    if status == 429:
        verdict = Verdict.RATE_LIMIT if status in retry_statuses else Verdict.CLIENT_ERROR
        return Classification(verdict, reason, server_acted=False)
    if status in retry_statuses:
        return Classification(Verdict.SERVER_ERROR, reason, server_acted=status != 503)
    if status >= 500:
        return Classification(Verdict.PERMANENT, reason)
    return Classification(Verdict.CLIENT_ERROR, reason)


# -- the callable API's column: errors raised by SDKs and the caller's own code ------------


def _http_status(value: object) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 100 <= value <= 599 else None


def status_of(exc: BaseException) -> Optional[int]:
    """The HTTP status an SDK's exception carries (``status``, ``status_code`` or
    ``response.status_code``, anywhere in its cause chain), or ``None``."""
    for node in walk_causes(exc):
        for value in (getattr(node, "status_code", None), getattr(node, "status", None),
                      getattr(getattr(node, "response", None), "status_code", None)):
            code = _http_status(value)
            if code is not None:
                return code
    return None


def _signals_of(exc: BaseException, verdict: Classification, status: int,
                honor_server_signals: bool) -> Classification:
    """``verdict`` amended by the headers of the first response attached to ``exc`` (or a
    cause): ``x-should-retry`` (with ``honor_server_signals``) and the asked delay."""
    for node in walk_causes(exc):
        headers = getattr(getattr(node, "response", None), "headers", None)
        if headers is not None and hasattr(headers, "get"):
            try:
                if honor_server_signals:
                    verdict = server_signals(verdict, status, headers)
                if verdict.retryable and verdict.retry_after is None:
                    asked = retry_after_of(headers, honor_server_signals)
                    if asked is not None:
                        verdict = dataclasses.replace(verdict, retry_after=asked)
            except Exception:  # a foreign headers object that misbehaves: ignore it
                pass
            return verdict
    return verdict


# -- the server's own signals, on any response ----------------------------------------------

_SHOULD_RETRY = "x-should-retry"
_CaseInsensitiveDict = requests.structures.CaseInsensitiveDict


def _header(headers: Any, name: str, lowered: str) -> Optional[str]:
    """``headers.get(name)`` (``lowered``: ``name`` in lower case).  A requests
    ``CaseInsensitiveDict`` (exactly that class) is read through its dict of lowercased
    names: its ``get``, ``Mapping``'s, raises and catches a ``KeyError`` for every missing
    name, and a failed response asks for three that are usually missing (~4 k
    instructions each on CPython 3.11)."""
    if type(headers) is _CaseInsensitiveDict:
        found = headers._store.get(lowered)  # type: ignore[attr-defined]  # requests, private
        return None if found is None else found[1]  # (name as sent, value)
    return headers.get(name)  # type: ignore[no-any-return]  # any mapping, as it spells


def retry_after_of(headers: Any, honor_server_signals: bool = True) -> Optional[float]:
    """Seconds the server asked to wait: ``Retry-After-Ms`` (milliseconds; unless
    ``honor_server_signals`` is false) before ``Retry-After`` (seconds or an HTTP-date);
    ``None`` when neither is there or parses."""
    if honor_server_signals:
        asked = parse_retry_after_ms(_header(headers, "Retry-After-Ms", "retry-after-ms"))
        if asked is not None:
            return asked
    return parse_retry_after(_header(headers, "Retry-After", "retry-after"), now=time.time())


def server_signals(verdict: Classification, status: int, headers: Any) -> Classification:
    """``verdict`` as the server's ``x-should-retry`` header amends it (a row of the table
    for every policy with ``honor_server_signals``): ``false`` makes a failure final,
    ``true`` makes any failure retryable (a status outside ``retry_statuses``, a 409, a
    vendor's permanent code), still only when safe: a request the server may have acted
    on is repeated only if idempotent.  A success stays a success."""
    if verdict.verdict is Verdict.SUCCESS:
        return verdict
    said = _header(headers, _SHOULD_RETRY, _SHOULD_RETRY)
    if said is None:
        return verdict
    said = said.strip().lower()
    if said == "false" and verdict.retryable:
        return Classification(Verdict.PERMANENT, f"HTTP {status} x-should-retry: false",
                              sent=verdict.sent)
    if said == "true" and not verdict.retryable:
        return Classification(Verdict.RATE_LIMIT if status == 429 else Verdict.SERVER_ERROR,
                              f"HTTP {status} x-should-retry: true", sent=verdict.sent,
                              server_acted=verdict.server_acted)
    return verdict


_PROGRAMMING_ERRORS = (LookupError, AttributeError, TypeError, NameError, AssertionError)


def classify_call_error(exc: BaseException, retry_statuses: frozenset[int],
                        honor_server_signals: bool = True) -> Classification:
    """The whole table for an exception raised by an arbitrary callable (an SDK call).

    Rows, first decisive one wins: the transport table (:func:`classify_exception`); an HTTP
    status the exception carries (:func:`status_of`, then :func:`classify_status`, with
    ``Retry-After`` when a response is attached); a message mentioning 超时 / timeout
    (:func:`classify_message`; not for programming errors such as ``KeyError``).  Anything
    else is ``BUSINESS``: never retried.
    """
    verdict = classify_exception(exc)
    if verdict.verdict is not Verdict.BUSINESS:
        return verdict
    status = status_of(exc)
    if status is not None:
        verdict = classify_status(status, retry_statuses)
        if verdict.verdict is Verdict.SUCCESS:  # a 2xx/3xx on an exception: not ours to judge
            return Classification(Verdict.BUSINESS, f"{type(exc).__name__} (HTTP {status})")
        return _signals_of(exc, verdict, status, honor_server_signals)
    by_message = None
    # A KeyError('timeout_ms') or an AttributeError about '.timeout' is a bug, not a slow
    # server: the message rule applies only to errors that are not programming errors.
    if not isinstance(exc, _PROGRAMMING_ERRORS):
        try:
            by_message = classify_message(exc)
        except Exception:  # an exception whose __str__ fails says nothing about timeouts
            by_message = None
    if by_message is not None:
        return by_message
    return Classification(Verdict.BUSINESS, type(exc).__name__, sent=True)


# -- a whole response: the policy's vendor hook, then the status column ----------------------

_log = logging.getLogger("requests_smartretry")


def classify_http_response(
    response: Any,
    hook: Optional[Callable[[Any], Optional[Classification]]],
    retry_statuses: frozenset[int],
    honor_server_signals: bool = True,
) -> Classification:
    """The verdict on a response (a ``requests`` or an ``httpx`` one: ``status_code`` and
    ``headers.get`` are all it reads): the vendor ``hook`` first, then the status table,
    then (with ``honor_server_signals``) the server's ``x-should-retry``
    (:func:`server_signals`), with the asked delay attached for retryable verdicts
    (:func:`retry_after_of`: ``Retry-After-Ms``, then ``Retry-After``).  A hook that
    raises or returns something else than a :class:`Classification` or ``None`` is
    logged and ignored."""
    verdict: Optional[Classification] = None
    if hook is not None:
        answer: object = None  # what a user's hook returns is checked, not trusted
        try:
            answer = hook(response)
        except Exception:
            _log.exception("requests_smartretry: classify_response hook failed; "
                           "using the status table")
        if isinstance(answer, Classification):
            verdict = answer
        elif answer is not None:
            _log.error("requests_smartretry: classify_response hook returned %r, not a "
                       "Classification or None; using the status table", answer)
    if verdict is None:
        verdict = classify_status(response.status_code, retry_statuses)
    if verdict.verdict is _SUCCESS_VERDICT:
        return verdict
    headers = response.headers
    if honor_server_signals:
        verdict = server_signals(verdict, response.status_code, headers)
    if verdict.retryable and verdict.retry_after is None:
        asked = retry_after_of(headers, honor_server_signals)
        if asked is not None:
            verdict = dataclasses.replace(verdict, retry_after=asked)
    return verdict


# -- the callable API's classifier: the caller's rules on top of the table ---------------------

#: ``classify(error)``: a :class:`Classification`, ``True`` (retry), ``False`` (raise at
#: once) or ``None`` (let the table decide).
ErrorClassifier = Callable[[BaseException], Union[Classification, bool, None]]
#: Exception types retried in addition to the table's rows.
RetryOn = Union[type[BaseException], tuple[type[BaseException], ...]]

# Table reasons no variant retries (not even retry_on=, which extends only the table).
_FINAL_REASONS = frozenset({"circuit_open", "response_signature"})


def call_classifier(
    smart: bool,
    retry_statuses: frozenset[int],
    retry_on: Optional[RetryOn],
    classify: Optional[ErrorClassifier],
    not_idempotent: bool = False,
    honor_server_signals: bool = True,
) -> Callable[[BaseException], tuple[Classification, Optional[str]]]:
    """The verdict on an exception raised by ``fn``, and what vetoes repeating it.

    First what an inner retrying layer marked final (a smart-session request that gave up
    as ``unsafe`` or ``not_replayable``: repeating ``fn`` would resend it); then the
    caller's ``classify``, then ``retry_on``, then the table; the basic variant retries
    whatever the table says.  With ``not_idempotent`` (an explicit ``idempotent=False``)
    a table verdict is retried only when it is safe to repeat: nothing was sent (refused,
    DNS, a connect-phase failure) or the server said it did not act (429, 503).  The
    caller's own ``classify`` / ``retry_on`` answers are theirs to make.
    """

    def verdict(error: BaseException) -> tuple[Classification, Optional[str]]:
        final = final_reason(error)
        if final is not None:
            return classify_call_error(error, retry_statuses, honor_server_signals), final
        if classify is not None:
            decided = _ask(classify, error)
            if decided is not None:
                return decided, None
        table = classify_call_error(error, retry_statuses, honor_server_signals)
        if table.reason in _FINAL_REASONS:
            # an open breaker inside fn refuses again at once, and a forged answer stays
            # forged: even the basic variant, which retries anything else, would only
            # sleep and repeat the refusal
            return table, None
        if retry_on is not None and isinstance(error, retry_on):
            if not table.retryable:
                table = Classification(Verdict.ERROR, table.reason, sent=table.sent)
            return table, None
        if table.retryable:
            return table, _unsafe(table, not_idempotent)
        if not smart:
            table = Classification(Verdict.ERROR, table.reason, sent=table.sent)
            return table, _unsafe(table, not_idempotent)
        return table, None

    return verdict


def _unsafe(verdict: Classification, not_idempotent: bool) -> Optional[str]:
    """``"unsafe"`` when the operation is not idempotent and ``verdict`` may have reached a
    server that acted on it."""
    return "unsafe" if not_idempotent and not verdict.safe_to_repeat else None


def _ask(classify: ErrorClassifier, error: BaseException) -> Optional[Classification]:
    try:
        answer: Any = classify(error)  # checked below: user code may return anything
    except Exception:
        _log.exception("requests_smartretry: classify callback %r failed; using the table",
                       classify)
        return None
    if answer is None:
        return None
    if isinstance(answer, Classification) and answer.verdict is not Verdict.SUCCESS:
        return answer
    if answer is True:
        return Classification(Verdict.ERROR, type(error).__name__)
    if answer is False:
        return Classification(Verdict.BUSINESS, type(error).__name__)
    _log.error("requests_smartretry: classify callback %r returned %r, not a failure "
               "Classification, a bool or None; using the table", classify, answer)
    return None
