"""One request's attempts, whatever sends them: :class:`Sending`, the attempt state that the
requests adapter, the httpx transport and the asyncio transport share (the stale response a
retry discards, the closed-at-retry check, ``previous_attempts()`` around
``prepare_attempt``, the enclosing attempt's ledger, and a failure's bookkeeping: verdicts,
redaction, veto).  Also what ``SmartRetryAdapter.send`` works out about a request before its
first attempt: the call's names (operation, service), whether repeating it is safe
(idempotent) and possible (body replay), its timeouts, the per-policy facts cached for
them, and the veto marks on a streamed body read after the call returned.  Nothing here
sends."""

from __future__ import annotations

import contextvars
import inspect
import logging
import numbers
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Optional, TypeVar, Union
from urllib.parse import urlsplit

import requests
from urllib3.util.timeout import Timeout as Urllib3Timeout

from .classify import Classification, mark_final, veto
from .deadline import AttemptLedger, current_scope
from .engine import CallInfo, Outcome, mark_vetoed
from .events import Verdict
from .policy import RetryPolicy, check_timeout
from .redact import path_template, redact_exception, redact_url

__all__ = ["DEFAULT_IDEMPOTENCY_HEADER", "Sending", "TimeoutArg", "final_on_failure",
           "idempotency_key", "is_idempotent", "operation_name", "previous_attempts",
           "service_name", "with_idempotency_key"]

#: The header that makes any request safe to repeat, whatever the policy.
DEFAULT_IDEMPOTENCY_HEADER = "Idempotency-Key"

_log = logging.getLogger("requests_smartretry")
_T = TypeVar("_T")

TimeoutArg = Union[None, float, tuple[Optional[float], Optional[float]], Urllib3Timeout]

# (connect, read, attempt total) in seconds, each None for "no limit".
_Timeouts = tuple[Optional[float], Optional[float], Optional[float]]

# Socket timeouts overflow past ~292 years; anything longer is "forever" and sent as this.
_MAX_SOCKET_TIMEOUT = 1e9


_SUCCESS_VERDICT = Verdict.SUCCESS
_V = TypeVar("_V")

# How the current call's earlier attempts ended, visible to prepare_attempt hooks only.
_PREVIOUS_ATTEMPTS: contextvars.ContextVar[tuple[Classification, ...]] = contextvars.ContextVar(
    "requests_smartretry_previous_attempts", default=())


def previous_attempts() -> tuple[Classification, ...]:
    """Inside a ``prepare_attempt`` hook: the classifications of the call's earlier attempts,
    oldest first (empty on the first attempt), e.g. to fail over to a backup host after a
    connection failure or timeout."""
    return _PREVIOUS_ATTEMPTS.get()


class Sending(Generic[_V]):
    """One request's attempts, as a transport makes them for the engine: the state and the
    bookkeeping every transport shares, around the one step that differs (sending).

    A transport's attempt function is, in order: close what :meth:`take_stale` hands back
    (a retry discards the last failed response; sync ``close``, async ``aclose``), then
    ``to_send = self.begin(number)`` (an :class:`Outcome` instead when the attempt must
    not be sent), send it, and return ``self.end(outcome)``.  Subclasses say what is
    transport-specific: :meth:`closed`, :meth:`closed_error`, :meth:`rewind`,
    :meth:`body_replayable`, :meth:`prepare`, :meth:`asked_idempotent`,
    :meth:`call_idempotent` and :meth:`enclosing_over`.  Nothing is allocated until an attempt
    fails: a first attempt that succeeds costs two method calls.
    """

    # The state as it stands before the first attempt: class defaults (no __slots__), so
    # that a call whose first attempt succeeds stores none of it (no base __init__ to run).
    #: The last failed attempt's response, which the retry discards.
    previous: Optional[_V] = None
    #: The verdicts of the failed attempts so far, for previous_attempts().
    verdicts: tuple[Classification, ...] = ()
    idempotent: Optional[bool] = None  # decided at the first failure that asks
    #: The enclosing callable-API attempt's ledger counting the running attempt.
    counted: Optional[AttemptLedger] = None
    #: The request every attempt sends as it is, when nothing prepares attempts (no
    #: ``prepare_attempt``): set by the transport, and :meth:`begin` asks no :meth:`prepare`.
    as_sent: Any = None

    # -- what each transport says -----------------------------------------------------

    def closed(self) -> bool:
        """Whether the transport was closed since this call began (asked before each
        retry: the call then sends nothing more)."""
        return False

    def closed_error(self) -> BaseException:
        """What a retry raises when the transport was closed as it starts."""
        return RuntimeError("the transport was closed before the retry; nothing more is sent")

    def rewind(self) -> None:
        """Make the request whole again for a retry (a seekable body, cut timeouts)."""

    def body_replayable(self) -> bool:
        """Whether the request body can be sent again (see :func:`veto`)."""
        return True

    def prepare(self, number: int) -> Any:
        """The request to send as attempt ``number`` (the policy's ``prepare_attempt``)."""
        raise NotImplementedError

    def asked_idempotent(self) -> bool:
        """Whether the request as the caller sent it (before a key this call minted) is
        safe to repeat: what an enclosing call repeating the caller's code would send."""
        raise NotImplementedError

    def call_idempotent(self) -> bool:
        """Whether this call's request (with its idempotency key) is safe to repeat."""
        raise NotImplementedError

    def enclosing_over(self) -> Outcome[_V]:
        """The outcome of a request that is not idempotent made inside a callable-API
        attempt already over (abandoned at its deadline): not sent, not retried."""
        raise NotImplementedError

    # -- the shared steps ----------------------------------------------------------------

    def take_stale(self) -> Optional[_V]:
        """The last failed attempt's response, for the retry to discard (close)."""
        stale, self.previous = self.previous, None
        return stale

    def begin(self, number: int) -> Any:
        """Attempt ``number`` starts: the request to send, or an :class:`Outcome` when it
        must not be sent (the enclosing attempt is over).  Raises :meth:`closed_error` for
        a retry of a transport closed as it starts (a START hook closed it)."""
        if number > 1:
            if self.closed():
                raise self.closed_error()
            self.rewind()
        to_send = self.as_sent
        if to_send is None:
            verdicts = self.verdicts
            if verdicts:
                token = _PREVIOUS_ATTEMPTS.set(verdicts)
                try:
                    to_send = self.prepare(number)
                finally:
                    _PREVIOUS_ATTEMPTS.reset(token)
            else:  # first attempt: previous_attempts() is already ()
                to_send = self.prepare(number)
        scope = current_scope()
        # Inside a callable-API attempt: count what may execute (deadline.AttemptLedger).
        # A key minted by this call does not make the enclosing call's repeat safe: it
        # would send the caller's request again, with a new key.
        if scope is not None and scope.ledger is not None and not self.asked_idempotent():
            counted = self.counted = scope.ledger
            if not counted.start_unsafe():
                self.counted = None
                return self.enclosing_over()
        return to_send

    def end(self, outcome: Outcome[_V]) -> Outcome[_V]:
        """Attempt's ``outcome`` as the engine and the hooks may see it: uncounted from
        the enclosing ledger when it did not execute; when it failed, remembered for the
        retry, its secrets removed, vetoed where repeating it is not safe."""
        counted = self.counted
        if counted is not None:
            self.counted = None
            if outcome.classification.safe_to_repeat:
                counted.not_executed()  # nothing sent, or the server said it did not act
        if outcome.classification.verdict is _SUCCESS_VERDICT:
            return outcome  # the common case: nothing to remember, redact or veto
        verdict = outcome.classification
        self.verdicts += (verdict,)
        if outcome.value is not None:
            self.previous = outcome.value
        # Hooks, on_retry and the caller see failures only with secrets removed.
        if outcome.error is not None:
            redact_exception(outcome.error)
        signal = outcome.signal
        # A signal without an error is our own HTTP error, its text built from the redacted
        # URL and a reason code: only a cause chained to it (an undecodable body) is not.
        if signal is not None and signal is not outcome.error and (
                outcome.error is not None or signal.__cause__ is not None):
            redact_exception(signal)
        if outcome.error is not None:
            self.rewind()  # an enclosing call that repeats the request finds it whole
        # A retryable failure may be vetoed.  An error raised after sending that is not
        # retried here (a 2xx whose body cannot be decoded) gets the same veto: for the
        # engine it changes nothing, but an enclosing call that retries any exception
        # must not resend what this one would not.  (A veto already set is the urllib3
        # Retry's decision, not a safety one.)
        if outcome.veto is None and (
                verdict.retryable or (outcome.error is not None and verdict.sent)):
            if self.idempotent is None:
                self.idempotent = self.call_idempotent()
            outcome.veto = veto(verdict, self.idempotent, self.body_replayable())
            mark_vetoed(outcome)  # final for an enclosing retrying call too
        return outcome

    def abandon(self) -> None:
        """The running attempt ended by raising (a hook, a cancelled task): it stays
        counted in the enclosing ledger, as one that may have executed."""
        self.counted = None


def _mark_body_failures(raw: Any, reason: str) -> None:
    """Make a failed read of a streamed (``stream=True``) body carry the veto ``reason``
    the adapter would have given it (:func:`classify.mark_final`), so that an enclosing
    retrying call (the callable API) does not repeat what this call would not.  Only for
    such responses: the success path is untouched."""
    read, stream = getattr(raw, "read", None), getattr(raw, "stream", None)
    if read is None or stream is None:
        return

    def guarded_read(*args: Any, **kwargs: Any) -> Any:
        try:
            return read(*args, **kwargs)
        except Exception as exc:
            mark_final(exc, reason)
            raise

    def guarded_stream(*args: Any, **kwargs: Any) -> Any:
        return final_on_failure(stream(*args, **kwargs), reason)

    raw.read, raw.stream = guarded_read, guarded_stream


def final_on_failure(chunks: Iterable[_T], reason: str) -> Iterator[_T]:
    """``chunks``, with an exception raised while iterating them marked final (``reason``:
    see :func:`classify.mark_final`)."""
    try:
        yield from chunks
    except Exception as exc:
        mark_final(exc, reason)
        raise


def refuse_consumed_body(request: requests.PreparedRequest) -> None:
    """Raise ``UnrewindableBodyError`` when ``request``'s body cannot be replayed and has
    already been (partly) read: a generator past its start, as a 307/308 redirect hands
    back the body the first request consumed.  Sending it would send an empty or partial
    body.  (Other one-shot iterators cannot tell whether they were read.)"""
    body: Any = request.body  # typed bytes | str | None; a generator in practice
    if inspect.isgenerator(body) and inspect.getgeneratorstate(body) != inspect.GEN_CREATED:
        raise requests.exceptions.UnrewindableBodyError(
            f"the body of this {request.method} to {redact_url(request.url or '')} is a "
            "generator that was already (partly) sent (a 307/308 redirect repeats the "
            "request with the same body); it cannot be sent again, and an empty or partial "
            "body is never sent: pass bytes or a seekable file to follow such redirects",
            request=request)


class _BodyReplay:
    """Whether (and how) a request body can be sent again."""

    __slots__ = ("body", "position", "replayable")

    def __init__(self, request: requests.PreparedRequest) -> None:
        body: Any = request.body
        self.body = body
        self.position: Optional[int] = None
        if body is None or isinstance(body, (bytes, bytearray, str)):
            self.replayable = True
        elif hasattr(body, "seek") and hasattr(body, "tell"):
            position = getattr(request, "_body_position", None)
            if not isinstance(position, int):
                try:
                    position = body.tell()
                except (OSError, ValueError):
                    position = None
            self.position = position if isinstance(position, int) else None
            self.replayable = self.position is not None
        else:  # generators, iterators, unseekable streams
            self.replayable = False

    @classmethod
    def empty(cls) -> _BodyReplay:
        """The replay of "no body" (shared: it never changes)."""
        replay = cls.__new__(cls)
        replay.body, replay.position, replay.replayable = None, None, True
        return replay

    def rewind(self) -> None:
        if self.position is not None:
            try:
                self.body.seek(self.position)
            except (OSError, ValueError):
                self.replayable = False


_NO_BODY = _BodyReplay.empty()


def _resolve_timeouts(timeout: TimeoutArg, policy: RetryPolicy) -> _Timeouts:
    """(connect, read, attempt total) in seconds, each at most :data:`_MAX_SOCKET_TIMEOUT`
    (past that, sockets overflow)."""
    connect, read, total = _requested_timeouts(timeout, policy)
    return (None if connect is None else min(connect, _MAX_SOCKET_TIMEOUT),
            None if read is None else min(read, _MAX_SOCKET_TIMEOUT),
            None if total is None else min(total, _MAX_SOCKET_TIMEOUT))


def _requested_timeouts(timeout: TimeoutArg, policy: RetryPolicy) -> _Timeouts:
    """(connect, read, attempt total) in seconds, as asked.  ``None`` from requests' default means
    the policy's; the caller's explicit value wins.  A ``(connect, read)`` tuple bounds the
    attempt by ``connect + read``."""
    if timeout is None:
        return (policy.connect_timeout or policy.timeout, policy.timeout, policy.timeout)
    connect: Optional[float]
    read: Optional[float]
    total: Optional[float]
    if isinstance(timeout, Urllib3Timeout):
        # A part the caller left at urllib3's "default" is the policy's, as timeout=None is.
        # The raw parts (urllib3 1.26 and 2.x alike): the public properties turn "default"
        # into None, and read_timeout raises for a Timeout with a total that is not started.
        connect_part = timeout._connect
        read_part = timeout._read
        connect = (policy.connect_timeout or policy.timeout if _is_default(connect_part)
                   else _seconds("timeout connect", connect_part))
        read = (policy.timeout if _is_default(read_part)
                else _seconds("timeout read", read_part))
        total = _seconds("timeout total", timeout.total)
        if total is None and connect is not None and read is not None:
            total = connect + read
        return (connect, read, total)
    if isinstance(timeout, tuple):
        if len(timeout) != 2:
            raise ValueError(
                f"timeout must be a number or a (connect, read) tuple, got {timeout!r}"
            )
        connect = _seconds("timeout connect", timeout[0])
        read = _seconds("timeout read", timeout[1])
        total = None if connect is None or read is None else connect + read
        return (connect, read, total)
    seconds = _seconds("timeout", timeout)
    return (seconds, seconds, seconds)


class _PolicyFacts:
    """What ``send`` works out once per policy instead of once per request: the default
    timeouts (and the urllib3 ``Timeout`` for them: building one costs about as much as
    the rest of an attempt's bookkeeping, and urllib3 only ever clones it), whether the
    default naming is in force, whether attempts are prepared (a ``prepare_attempt``
    hook or override), and the call names by (method, URL).

    The names are kept only with the default naming (they then depend on the method and
    URL alone), at most ``NAMES`` of them, cleared when full so that ids in paths cannot
    grow memory.  Thread-safe: single dict operations only.
    """

    __slots__ = ("by_timeout", "default_naming", "names", "policy", "prepares",
                 "socket_timeout", "timeouts")
    NAMES = 512
    #: At most this many ``timeout=`` values resolved (cleared when full).
    TIMEOUTS = 64

    def __init__(self, adapter: Any, policy: RetryPolicy) -> None:
        self.policy = policy
        self.timeouts = _resolve_timeouts(None, policy)
        self.socket_timeout = Urllib3Timeout(connect=self.timeouts[0], read=self.timeouts[1])
        self.default_naming = adapter._names_by_default(policy)
        #: Whether an attempt's request is prepared (signed…): else it is the call's own.
        self.prepares = adapter._prepares(policy)
        self.names: dict[tuple[Optional[str], Optional[str]], CallInfo] = {}
        self.by_timeout: dict[Any, tuple[_Timeouts, Urllib3Timeout]] = {}

    def resolve(self, timeout: TimeoutArg) -> tuple[_Timeouts, Urllib3Timeout]:
        """A caller's ``timeout=`` (not None) under this policy: (connect, read, attempt
        total) and the urllib3 ``Timeout`` for its connect and read parts, worked out
        (and checked) once per value.  Only plain numbers and tuples of them are kept, by
        value: ``5`` and ``5.0`` resolve alike, and nothing that merely compares equal to
        a number (``True``, a ``Decimal``) can find a number's entry and skip its check."""
        kind = type(timeout)
        given: Any = timeout
        key: Any = None
        if kind is float or kind is int or (
                kind is tuple and len(given) == 2 and type(given[0]) in _PLAIN
                and type(given[1]) in _PLAIN):
            key = timeout
        if key is not None:
            cached = self.by_timeout.get(key)
            if cached is not None:
                return cached
        timeouts = _resolve_timeouts(timeout, self.policy)
        resolved = timeouts, Urllib3Timeout(connect=timeouts[0], read=timeouts[1])
        if key is not None:
            if len(self.by_timeout) >= self.TIMEOUTS:
                self.by_timeout.clear()
            self.by_timeout[key] = resolved
        return resolved

    def remember(self, key: tuple[Optional[str], Optional[str]], info: CallInfo) -> None:
        if len(self.names) >= self.NAMES:
            self.names.clear()
        self.names[key] = info


# The types of a timeout (or of a tuple's parts) kept by value in _PolicyFacts.resolve.
_PLAIN = (float, int, type(None))


def _is_default(value: Any) -> bool:
    """urllib3's "use the default" sentinel: no value of the caller's."""
    return value is Urllib3Timeout.DEFAULT_TIMEOUT


def _seconds(name: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    # urllib3's wording (code that matches requests' messages keeps working), with the name.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Timeout value {name} was {value!r}, but it must be an int, "
                         f"float or None (a number of seconds).")
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise ValueError(f"Attempted to set {name} to {value!r}, but the timeout cannot be "
                         f"set to a value less than or equal to 0 (a finite number > 0).")
    check_timeout(name, seconds)  # at least the minimum an attempt can honour
    return seconds


def operation_name(policy: RetryPolicy, request: Any) -> str:
    """The operation name for ``request`` (anything with ``method`` and a ``url`` string, as
    a ``PreparedRequest``): the policy's, its ``name_request`` hook's, or
    ``METHOD host/path-template`` (identifier- and secret-like segments read ``{id}``)."""
    if policy.operation_name:
        return policy.operation_name
    if policy.name_request is not None:
        try:
            name = policy.name_request(request)
        except Exception:
            _log.exception("requests_smartretry: name_request hook failed")
            name = None
        if name:
            return name
    parts = urlsplit(request.url or "")
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{request.method or 'GET'} {host}{path_template(parts.path)}"


def service_name(policy: RetryPolicy, request: Any) -> str:
    """The breaker/budget key for ``request``: the policy's ``service``, or ``scheme://host``."""
    if policy.service:
        return policy.service
    parts = urlsplit(request.url or "")
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def idempotency_key(headers: Any, name: str = DEFAULT_IDEMPOTENCY_HEADER) -> Optional[str]:
    """The idempotency key ``headers`` (any mapping with ``get``; requests' and httpx's
    are case-insensitive) carry under ``name``, or ``None`` when there is none: an empty
    or blank value is no key (a server cannot deduplicate on it)."""
    value = headers.get(name)
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or not value.strip():
        return None
    return value


def new_idempotency_key() -> str:
    """A fresh key: a random UUID4, as Stripe's, OpenAI's and AWS's clients mint them."""
    return str(uuid.uuid4())


def with_idempotency_key(request: requests.PreparedRequest,
                         name: str) -> requests.PreparedRequest:
    """``request`` when it carries a key under ``name``, else a copy of it with a fresh
    one (the caller's request is untouched: sent again, it gets a new key)."""
    if idempotency_key(request.headers, name) is not None:
        return request
    keyed = request.copy()
    keyed.headers[name] = new_idempotency_key()
    return keyed


def is_idempotent(policy: RetryPolicy, request: Any) -> bool:
    """Whether repeating ``request`` after it reached the server is safe: an idempotent
    method, an idempotency key (``Idempotency-Key``, or the policy's
    ``idempotency_header``; an empty one is none), or the policy's ``idempotent`` rule."""
    if (request.method or "GET").upper() in policy.idempotent_methods:
        return True
    headers = request.headers
    if idempotency_key(headers) is not None or (
            policy.idempotency_header is not None
            and idempotency_key(headers, policy.idempotency_header) is not None):
        return True
    rule = policy.idempotent
    if callable(rule):
        try:
            answer: Any = rule(request)
            if inspect.isawaitable(answer):  # an async rule hidden behind a wrapper
                getattr(answer, "close", lambda: None)()
                raise TypeError(f"the idempotent rule returned an awaitable ({answer!r}), "
                                f"not a bool")
            return bool(answer)
        except Exception:
            _log.exception("requests_smartretry: idempotent rule failed; assuming not")
            return False
    return rule
