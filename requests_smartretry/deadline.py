"""Wall-clock deadlines: the enclosing retry scope, and the watchdog that cuts sockets.

A per-read socket timeout cannot bound an attempt: a server that sends one byte every
second never lets a single ``recv`` time out.  Each attempt therefore registers a
:class:`Watch` with one process-wide watchdog thread; if the attempt is still running at its
deadline, the watchdog shuts the connection's socket down, the blocked read returns at
once, and the adapter reports the attempt as timed out.

The watchdog holds no lock while a request runs and is woken only when a new deadline is
earlier than the moment it already plans to look, so the success path costs a dict insert
and a dict delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional, overload

import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.response
from urllib3.util.timeout import Timeout as Urllib3Timeout

from .classify import NothingSent, mark_connect_phase

__all__ = [
    "MIN_ATTEMPT",
    "POOL_CLASSES",
    "AsyncCut",
    "AttemptLedger",
    "DeadlineBeforeSending",
    "HTTPConnection",
    "HTTPConnectionPool",
    "HTTPSConnection",
    "HTTPSConnectionPool",
    "NoTimeLeft",
    "PoolWaitExpired",
    "RetryScope",
    "Watch",
    "active_watch",
    "attempt_seconds",
    "current_scope",
    "defer_records",
    "remaining",
    "retry_scope",
    "running_cut",
]

# When a deadline passes while no socket exists yet (connecting), look again this often.
_RECHECK = 0.02
# Longest single sleep of the watchdog.  Lock and socket timeouts overflow past ~292 years
# (threading.TIMEOUT_MAX); a far deadline is simply looked at again after this long.
_MAX_WAIT = 3600.0
#: An attempt with less time than this left is not started (urllib3 refuses a zero socket
#: timeout): the one "no time left for this attempt" bound of every transport.
MIN_ATTEMPT = 0.001


# One lock for every ledger: a count moves along a chain of nested attempts at once, and
# ledgers exist only inside the callable API's attempts (never on a plain request).
_LEDGER_LOCK = threading.Lock()


class AttemptLedger:
    """What one attempt of an enclosing retrying call (the callable API's ``fn``) may have
    executed that is not safe to repeat, nested at any depth.

    Whatever runs inside the attempt and would not be safe to run twice (a request that is
    not idempotent, sent by the adapter or the httpx transport; a nested callable with
    ``idempotent=False``) is counted from the moment it starts (:meth:`start_unsafe`), in
    this ledger and in every enclosing one, and uncounted only when it ended known not to
    have executed (:meth:`not_executed`: nothing was sent, or the server said it did not
    act).  When the attempt failed, or was abandoned at its deadline while it still runs,
    the enclosing call seals the ledger (:meth:`seal`): the count it reads then is
    final, because from then on nothing unsafe can start in the attempt (or in anything
    nested in it).  So "may the attempt be repeated" is decided structurally, never by how
    long the attempt takes to report its own error.  An attempt that succeeded is never
    repeated: its ledger is not sealed.
    """

    __slots__ = ("deferred", "parent", "sealed", "settled", "unsafe")

    def __init__(self, parent: Optional[AttemptLedger] = None) -> None:
        self.parent = parent
        self.unsafe = 0
        self.sealed = False
        #: Failures recorded in this attempt that the enclosing call's retry may heal
        #: (see :meth:`defer`); ``settled``: taken by the enclosing call.
        self.deferred: list[Callable[[], None]] = []
        self.settled = False

    def start_unsafe(self) -> bool:
        """Count one unsafe operation as started here and in every enclosing attempt;
        ``False`` (nothing counted) when one of those attempts is over: the operation must
        then not start at all."""
        with _LEDGER_LOCK:
            node: Optional[AttemptLedger] = self
            while node is not None:
                if node.sealed:
                    return False
                node = node.parent
            node = self
            while node is not None:
                node.unsafe += 1
                node = node.parent
        return True

    def not_executed(self) -> None:
        """An operation counted by :meth:`start_unsafe` ended known not to have executed."""
        with _LEDGER_LOCK:
            node: Optional[AttemptLedger] = self
            while node is not None:
                node.unsafe -= 1
                node = node.parent

    def task_created(self) -> None:
        """Something was created that must never be created twice (a billed task now
        exists at the vendor): counted as an executed unsafe operation here and in every
        enclosing attempt, for good, so that no enclosing retrying call repeats the
        attempt that created it (an attempt already over counts it too: harmless)."""
        with _LEDGER_LOCK:
            node: Optional[AttemptLedger] = self
            while node is not None:
                node.unsafe += 1
                node = node.parent

    def defer(self, record: Callable[[], None]) -> bool:
        """Hold ``record`` (a nested call's breaker record of its failure) for the
        enclosing retrying call: a retry of this attempt that succeeds heals the failure
        (the record is dropped), one that fails too or a give-up runs it (see
        :func:`defer_records`).  ``False`` when the attempt is over or settled already:
        the caller runs the record itself."""
        with _LEDGER_LOCK:
            if self.sealed or self.settled:
                return False
            self.deferred.append(record)
            return True

    def take_deferred(self) -> list[Callable[[], None]]:
        """The records held by :meth:`defer`; from now on it holds no more."""
        with _LEDGER_LOCK:
            self.settled = True
            taken, self.deferred = self.deferred, []
            return taken

    def seal(self) -> int:
        """The attempt is over: nothing unsafe may start in it any more.  Returns how many
        unsafe operations it may have executed (started, and not known not to have)."""
        with _LEDGER_LOCK:
            self.sealed = True
            return self.unsafe


@dataclass(frozen=True)
class RetryScope:
    """The retrying call the current code runs inside (see :func:`current_scope`)."""

    #: ``time.monotonic()`` value at which the enclosing attempt must end, if any.
    deadline_at: Optional[float]
    #: How many retrying calls enclose this code.
    depth: int
    #: The ledger of the innermost enclosing callable-API attempt (``None`` outside one):
    #: where unsafe requests sent here are counted (see :class:`AttemptLedger`).
    ledger: Optional[AttemptLedger] = None

    def remaining(self) -> Optional[float]:
        """Seconds left before the enclosing deadline (never negative), or ``None``."""
        if self.deadline_at is None:
            return None
        return max(0.0, self.deadline_at - time.monotonic())


_scope: contextvars.ContextVar[Optional[RetryScope]] = contextvars.ContextVar(
    "requests_smartretry_scope", default=None
)


#: The enclosing retrying call's scope, or ``None`` outside any (the context variable's
#: own ``get``: the engine and the adapter read it on every request).
current_scope: Callable[[], Optional[RetryScope]] = _scope.get


def remaining() -> Optional[float]:
    """Seconds left before the enclosing attempt's deadline, or ``None`` if unbounded.

    Code running inside ``execute_with_retry(fn, timeout=...)`` can use it to bound its own
    waits; ``SmartRetryAdapter`` requests made there use it automatically.
    """
    scope = _scope.get()
    return None if scope is None else scope.remaining()


def defer_records(records: list[Callable[[], None]]) -> None:
    """Run each of ``records`` (breaker records of failures) now, or, inside an attempt of
    an enclosing retrying call, hand it to that attempt's ledger: the enclosing call's
    retry may still heal the failure (:meth:`AttemptLedger.defer`)."""
    scope = _scope.get()
    ledger = None if scope is None else scope.ledger
    for record in records:
        if ledger is None or not ledger.defer(record):
            record()


class NoTimeLeft(Exception):
    """Raised by :func:`attempt_seconds`: the enclosing deadline leaves less than
    :data:`MIN_ATTEMPT` for this attempt.  Each caller turns it into its own error."""


@overload
def attempt_seconds(seconds: float) -> float: ...
@overload
def attempt_seconds(seconds: Optional[float]) -> Optional[float]: ...
def attempt_seconds(seconds: Optional[float]) -> Optional[float]:
    """The seconds an attempt may take: ``seconds`` (``None``: no limit of its own) cut to
    what the enclosing retry scope leaves.  Raises :class:`NoTimeLeft` when that is at
    most :data:`MIN_ATTEMPT` (only an enclosing deadline can leave so little: policies
    refuse timeouts below ``MIN_TIMEOUT``)."""
    scope = _scope.get()
    left = None if scope is None else scope.remaining()
    if left is not None and (seconds is None or left < seconds):
        seconds = left
    if seconds is not None and seconds <= MIN_ATTEMPT:
        raise NoTimeLeft
    return seconds


@contextlib.contextmanager
def retry_scope(deadline_at: Optional[float],
                ledger: Optional[AttemptLedger] = None) -> Iterator[RetryScope]:
    """Run the body inside a retry scope ending at ``deadline_at`` (or the enclosing
    scope's, whichever is earlier).  ``ledger``: the body is one attempt of a callable-API
    call, counted there (and, through it, in the enclosing attempts' ledgers); without
    it the enclosing scope's ledger stays in force."""
    outer = _scope.get()
    if outer is not None and outer.deadline_at is not None:
        deadline_at = (
            outer.deadline_at if deadline_at is None else min(deadline_at, outer.deadline_at)
        )
    if ledger is None and outer is not None:
        ledger = outer.ledger
    scope = RetryScope(deadline_at, 1 if outer is None else outer.depth + 1, ledger)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


# -- asyncio: the attempt deadline as a cancellation --------------------------------------

# The cut of the attempt running in this task (its network streams record the first write).
_running_cut: contextvars.ContextVar[Optional[AsyncCut]] = contextvars.ContextVar(
    "requests_smartretry_async_cut", default=None)


def running_cut() -> Optional[AsyncCut]:
    """The :class:`AsyncCut` of the async attempt running in this task, if any."""
    return _running_cut.get()


class AsyncCut:
    """An async attempt's wall-clock deadline: at ``seconds`` the attempt's task is
    cancelled wherever it waits (connecting, writing, waiting for the headers, reading a
    dripping body), as ``asyncio.timeout`` does (3.11+), written for 3.9.  ``sent`` is the
    phase: set by the watched network stream when the attempt writes its first byte
    (``watched``; else assumed).  Use::

        cut = AsyncCut(seconds, watched=False)
        try:
            value = await work()
        except asyncio.CancelledError:
            if not cut.ours():
                raise          # the caller's cancellation
            ...                # cut at the deadline
        finally:
            cut.finish()
        if cut.fired:
            await cut.absorb() # it fired as the work ended
    """

    __slots__ = ("fired", "handle", "loop", "sent", "task", "token", "when")

    def __init__(self, seconds: float, watched: bool) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task(loop)
        self.fired = False
        #: Whether anything may have been written; without a watched pool, assume so.
        self.sent = not watched
        self.when = loop.time() + seconds
        self.handle = loop.call_at(self.when, self._fire)
        self.token = _running_cut.set(self)

    def _fire(self) -> None:
        self.fired = True
        if self.task is not None:
            self.task.cancel()

    def remaining(self) -> float:
        return max(0.0, self.when - self.loop.time())

    def finish(self) -> None:
        self.handle.cancel()
        _running_cut.reset(self.token)

    def ours(self) -> bool:
        """Whether a ``CancelledError`` the attempt raised is this cut's alone (then it is
        taken back: the task is not cancelled); another cancellation of the task (the
        caller's) propagates.  Before Python 3.11 a cancellation of the caller's landing
        at the very moment of the cut cannot be told apart and is taken as the cut."""
        if not self.fired:
            return False
        uncancel = getattr(self.task, "uncancel", None)
        return uncancel is None or uncancel() == 0

    async def absorb(self) -> None:
        """The cut fired after the attempt's last wait had already ended: its
        cancellation is still pending on the task; take it here, not in the caller."""
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            if not self.ours():
                raise


def _shutdown_socket(sock: Any) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: the SSL override tears down the
    # SSL object under the reading thread's feet; the plain call only wakes the read.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError, ValueError):
        pass


class Watch:
    """One attempt's deadline: armed by creating it, ended by :meth:`finish`.

    Creating a watch registers it with the process-wide watchdog and makes it this
    context's active one (:func:`active_watch`), so that the adapter's pools can hand it
    the connection that carries the attempt.  If the attempt still runs at
    ``deadline_at``, the watchdog shuts that connection's socket down.
    """

    __slots__ = ("_check_at", "_dog", "_done", "_token", "conn", "deadline_at", "fired")

    def __init__(self, seconds: float, *, dog: Optional[_Watchdog] = None) -> None:
        if dog is None:
            dog = _watchdog
        self.deadline_at = self._check_at = _monotonic() + (seconds if seconds > 0.0 else 0.0)
        self.fired = False
        self._done = False
        #: The connection carrying the attempt (see :meth:`attach`).
        self.conn: Any = None
        self._dog = dog
        with dog._lock:
            dog._watches[self] = None
            if dog._thread is None:  # first use, or the thread died (see _Watchdog._run)
                dog._start(self.deadline_at)
            elif self.deadline_at < dog._next_look:
                dog._next_look = self.deadline_at
                dog._wakeup.notify()
        self._token: Optional[contextvars.Token[Optional[Watch]]] = _active_watch.set(self)

    def attach(self, conn: Any) -> None:
        """Watch ``conn``, a connection the pool hands this attempt.  Whoever sends on it
        checks :meth:`remaining` first: past the deadline, the watchdog's next cut may
        come only after a live keep-alive socket has carried the request.

        No lock: only the attempt's own thread attaches, and a watchdog cut it misses is
        repeated every ``_RECHECK``.  A finished watch (still active in a copied
        context) attaches nothing."""
        if not self._done:
            self.conn = conn

    def remaining(self) -> Optional[float]:
        """Seconds until the deadline (never negative), or ``None`` once finished."""
        if self._done:
            return None
        left = self.deadline_at - _monotonic()
        return left if left > 0.0 else 0.0

    def detach(self, conn: Any) -> bool:
        """Stop watching ``conn``: it goes back to the pool and may serve another thread.
        True when this watch was watching it.  Under the watchdog's lock, so that the
        watchdog cannot cut the connection once this returns."""
        with self._dog._lock:
            if self.conn is not conn:
                return False
            self.conn = None
            return True

    def finish(self) -> None:
        """The attempt is over: the watch never touches a socket again, and stops being
        this context's active watch."""
        dog = self._dog
        with dog._lock:
            self._done = True
            self.conn = None
            dog._watches.pop(self, None)
        token, self._token = self._token, None
        if token is not None:
            _active_watch.reset(token)

    def _fire(self) -> None:
        # The watchdog, under its lock, at the deadline (and every _RECHECK after it: a
        # socket that does not exist yet, or a reconnect on the same attempt, is cut too).
        self.fired = True
        _shutdown_socket(getattr(self.conn, "sock", None))


class _Watchdog:
    """One thread that sleeps until the earliest deadline of the attempts in flight.

    Arming an attempt is a dict insert under a lock (in :class:`Watch`); the thread is
    woken only when a new deadline is earlier than the moment it already plans to look, so
    a steady stream of requests with the same timeout wakes it about once per timeout.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._watches: dict[Watch, None] = {}  # the attempts in flight
        self._next_look = math.inf  # when the thread will look next
        self._thread: Optional[threading.Thread] = None

    def _start(self, first_look: float) -> None:
        # Under the lock.
        self._next_look = first_look
        self._thread = threading.Thread(
            target=self._run, name="requests-smartretry-watchdog", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            self._serve()
        finally:  # only an unexpected error ends the loop: let the next watch restart it
            with self._lock:
                self._thread = None
                self._next_look = math.inf

    def _serve(self) -> None:
        with self._lock:
            while True:
                now = _monotonic()
                next_look = math.inf
                for item in self._watches:  # finish() cannot change it: we hold the lock
                    if item._check_at <= now:
                        item._fire()
                        item._check_at = now + _RECHECK
                    if item._check_at < next_look:
                        next_look = item._check_at
                self._next_look = next_look
                self._wakeup.wait(None if next_look == math.inf
                                  else min(next_look - now, _MAX_WAIT))


_monotonic = time.monotonic
_watchdog = _Watchdog()


def _after_fork_in_child() -> None:
    # The parent's watchdog thread does not exist here, and its lock may have been held
    # at the fork: start over in place (watches in flight keep pointing at this object).
    # So may the ledgers' lock (another thread was counting a request): a new one (the
    # ledgers read the module global at each use).
    global _LEDGER_LOCK
    _LEDGER_LOCK = threading.Lock()
    _watchdog._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_active_watch: contextvars.ContextVar[Optional[Watch]] = contextvars.ContextVar(
    "requests_smartretry_watch", default=None
)


#: The innermost unfinished :class:`Watch` created in this context, or ``None``.
active_watch: Callable[[], Optional[Watch]] = _active_watch.get


# -- the pools and connections that let the watchdog cut a socket --------------------------


class DeadlineBeforeSending(NothingSent, urllib3.exceptions.ConnectTimeoutError):
    """The deadline passed after a connection was taken from the pool but before anything
    was sent on it: urllib3 gives its slot back, and requests raises ``ConnectTimeout``."""


class PoolWaitExpired(NothingSent, urllib3.exceptions.EmptyPoolError):
    """A blocking pool had no free connection before the deadline.  An ``EmptyPoolError``
    so that urllib3 returns no slot it never took; the adapter turns it into
    ``ConnectTimeout`` (requests would let urllib3's own error through)."""


def _connect_by_deadline(timeout: Urllib3Timeout, left: float) -> Urllib3Timeout:
    """``timeout`` with its connect part cut to ``left``, what is left of the attempt.

    The connect timeout was set when the attempt began; a wait for a pooled connection,
    or a stalled thread, may have used part of the attempt since.  The watchdog cannot
    cut a connect (no socket exists yet), so the socket timeout must end it."""
    if timeout.total is not None:
        return timeout
    connect = timeout.connect_timeout
    if isinstance(connect, (int, float)) and connect <= left:
        return timeout
    return Urllib3Timeout(connect=max(left, MIN_ATTEMPT), read=timeout.read_timeout)


class _WatchedPoolMixin:
    """Attaches each connection to the attempt's deadline watch while it carries the
    attempt, and detaches it before it returns to the pool (where another thread may take
    it), so the watchdog can only ever cut the attempt it belongs to.

    Nothing is stored on the connection itself: a new attribute on a urllib3 connection
    costs every later attribute read on it (CPython's per-instance layouts).
    """

    def _get_conn(self, timeout: Optional[float] = None) -> Any:
        current = active_watch()
        if current is None:
            return super()._get_conn(timeout)  # type: ignore[misc]
        conn = (self._wait_for_conn(current, timeout)
                if self.block  # type: ignore[attr-defined]
                else super()._get_conn(timeout))  # type: ignore[misc]
        current.attach(conn)  # here, so that a proxy tunnel's connect is watched too
        return conn

    def _wait_for_conn(self, current: Watch, timeout: Optional[float]) -> Any:
        """A blocking pool's (``pool_block=True``) wait for a free connection, which is
        for ever by default: it is part of the attempt, so it ends at the deadline."""
        left = current.remaining()
        if left is None or (timeout is not None and timeout <= left):
            return super()._get_conn(timeout)  # type: ignore[misc]
        try:
            return super()._get_conn(min(left, threading.TIMEOUT_MAX))  # type: ignore[misc]
        except urllib3.exceptions.EmptyPoolError:
            raise PoolWaitExpired(
                self,  # type: ignore[arg-type]  # the mixin only ever serves a pool
                "the attempt deadline passed while every pooled connection was in use "
                "(pool_block=True)") from None

    def _make_request(self, conn: Any, method: str, url: str, *args: Any,
                      **kwargs: Any) -> Any:
        # The last moment before anything is sent.  A thread that gets here after its
        # deadline (it waited for the pool, or a busy machine stalled it) sends nothing,
        # even if the watchdog thread has not run yet: urllib3 closes the connection and
        # restores its pool slot, and requests raises ConnectTimeout, safe to retry.
        current = active_watch()
        left = None if current is None else current.remaining()
        if left is not None:
            connects = conn.sock is None  # a fresh or a dropped connection
            if left <= 0.0:
                raise DeadlineBeforeSending(
                    self, "the attempt deadline passed before the connection was made"
                    if connects else
                    "the attempt deadline passed before a pooled connection was free")
            if connects:
                timeout = kwargs.get("timeout")
                if isinstance(timeout, Urllib3Timeout):
                    kwargs["timeout"] = _connect_by_deadline(timeout, left)
        return super()._make_request(conn, method, url, *args, **kwargs)  # type: ignore[misc]

    def _put_conn(self, conn: Any) -> None:
        # Inside an attempt, the connection comes back from the attempt's own thread (the
        # body read, or an error); a streamed body read later finds the watch finished
        # and detached already.
        current = active_watch()
        if current is not None and conn is not None and current.detach(conn) \
                and current.fired:
            # The watchdog shut this socket down: it must not wait in the pool
            # (urllib3 1.26 returns it there after a body cut short).
            conn.close()
        super()._put_conn(conn)  # type: ignore[misc]


class _PhaseRecordingMixin:
    """Records where a failure happened: an exception raised while connecting (TCP
    connect, TLS handshake, proxy tunnel) is marked as coming before one byte of the
    request was written (:func:`classify.mark_connect_phase`), whatever its errno.

    Every write of the request comes after ``connect()`` returned, so the mark is the whole
    record: the success path pays one call per new connection and nothing per request,
    and no attribute is ever added to the connection.  A TLS handshake that times out is
    a connect timeout (urllib3 would report it as a read timeout).
    """

    def connect(self) -> None:
        try:
            super().connect()  # type: ignore[misc]
        except Exception as exc:
            mark_connect_phase(exc)
            if isinstance(exc, (socket.timeout, TimeoutError)):
                conn: Any = self
                raise urllib3.exceptions.ConnectTimeoutError(
                    conn, f"Connection to {conn.host} timed out while connecting (TLS "
                    f"handshake or proxy tunnel). (connect timeout={conn.timeout})",
                ) from exc
            raise


class HTTPConnection(_PhaseRecordingMixin, urllib3.connection.HTTPConnection):
    """urllib3's connection, recording whether a failure came before sending."""


class HTTPSConnection(_PhaseRecordingMixin, urllib3.connection.HTTPSConnection):
    """urllib3's TLS connection, recording whether a failure came before sending."""


class _LengthCheckedResponse(urllib3.response.HTTPResponse):
    """urllib3 1.26's response, refusing a body shorter than its ``Content-Length`` (an
    incomplete read, as on urllib3 2.x) instead of handing back a truncated body."""

    @classmethod
    def from_httplib(cls, r: Any, **response_kw: Any) -> Any:
        response_kw.setdefault("enforce_content_length", True)
        build: Any = getattr(super(), "from_httplib")  # noqa: B009 - absent on urllib3 2.x
        return build(r, **response_kw)


# Named as urllib3's own classes so that error messages read exactly as without us.
class HTTPConnectionPool(_WatchedPoolMixin, urllib3.connectionpool.HTTPConnectionPool):
    """urllib3's pool, with connections watched for the attempt deadline."""

    ConnectionCls = HTTPConnection


class HTTPSConnectionPool(_WatchedPoolMixin, urllib3.connectionpool.HTTPSConnectionPool):
    """urllib3's TLS pool, with connections watched for the attempt deadline."""

    ConnectionCls = HTTPSConnection


if hasattr(urllib3.response.HTTPResponse, "from_httplib"):  # urllib3 1.26; 2.x enforces it
    for _pool_class in (HTTPConnectionPool, HTTPSConnectionPool):
        setattr(_pool_class, "ResponseCls", _LengthCheckedResponse)  # noqa: B010 - 1.26 only


#: The pool classes by scheme that the adapter gives its pool managers.
POOL_CLASSES = {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}
