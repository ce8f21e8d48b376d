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

import contextlib
import contextvars
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = ["RetryScope", "Watch", "active_watch", "current_scope", "remaining", "retry_scope",
           "watch"]

# When a deadline passes while no socket exists yet (connecting), look again this often.
_RECHECK = 0.02
# Longest single sleep of the watchdog.  Lock and socket timeouts overflow past ~292 years
# (threading.TIMEOUT_MAX); a far deadline is simply looked at again after this long.
_MAX_WAIT = 3600.0


@dataclass(frozen=True)
class RetryScope:
    """The retrying call the current code runs inside (see :func:`current_scope`)."""

    #: ``time.monotonic()`` value at which the enclosing attempt must end, if any.
    deadline_at: Optional[float]
    #: How many retrying calls enclose this code.
    depth: int

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


@contextlib.contextmanager
def retry_scope(deadline_at: Optional[float]) -> Iterator[RetryScope]:
    """Run the body inside a retry scope ending at ``deadline_at`` (or the enclosing
    scope's, whichever is earlier)."""
    outer = _scope.get()
    if outer is not None and outer.deadline_at is not None:
        deadline_at = (
            outer.deadline_at if deadline_at is None else min(deadline_at, outer.deadline_at)
        )
    scope = RetryScope(deadline_at, 1 if outer is None else outer.depth + 1)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


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
    _watchdog._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_active_watch: contextvars.ContextVar[Optional[Watch]] = contextvars.ContextVar(
    "requests_smartretry_watch", default=None
)


class _Armed:
    """The context manager :func:`watch` returns."""

    __slots__ = ("_seconds", "_watch")

    def __init__(self, seconds: Optional[float]) -> None:
        self._seconds = seconds
        self._watch: Optional[Watch] = None

    def __enter__(self) -> Optional[Watch]:
        if self._seconds is not None:
            self._watch = Watch(self._seconds)
        return self._watch

    def __exit__(self, *exc_info: object) -> None:
        if self._watch is not None:
            self._watch.finish()


def watch(seconds: Optional[float]) -> _Armed:
    """Arm a watch for ``seconds`` around a ``with`` body; connections used inside are
    attached to it by the adapter's pools.  ``None`` means no deadline."""
    return _Armed(seconds)


#: The innermost unfinished :class:`Watch` created in this context, or ``None``.
active_watch: Callable[[], Optional[Watch]] = _active_watch.get
