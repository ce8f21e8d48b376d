"""Wall-clock deadlines: the enclosing retry scope, and the watchdog that cuts sockets.

A per-read socket timeout cannot bound an attempt: a server that sends one byte every
second never lets a single ``recv`` time out.  Each attempt therefore registers a
:class:`Watch` with one process-wide watchdog thread; if the attempt is still running at its
deadline, the watchdog shuts the connection's socket down, the blocked read returns at
once, and the adapter reports the attempt as timed out.

The watchdog holds no lock while a request runs and is woken only when a new deadline is
earlier than every pending one, so the success path costs a heap push and a flag.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["RetryScope", "Watch", "current_scope", "remaining", "retry_scope", "watch"]

# When a deadline passes while no socket exists yet (connecting), look again this often.
_RECHECK = 0.02
# Rebuild the heap when finished watches outnumber live ones by this much.
_COMPACT_AFTER = 4096
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


def current_scope() -> Optional[RetryScope]:
    """The enclosing retrying call's scope, or ``None`` outside any."""
    return _scope.get()


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
    """One attempt's deadline, armed on the connection that carries it."""

    __slots__ = ("_conn", "_done", "_lock", "deadline_at", "fired")

    def __init__(self, deadline_at: float) -> None:
        self.deadline_at = deadline_at
        self.fired = False
        self._done = False
        self._conn: Any = None
        self._lock = threading.Lock()

    def attach(self, conn: Any) -> None:
        """Watch ``conn`` (a urllib3 connection about to carry this attempt)."""
        with self._lock:
            if self._done:
                return
            self._conn = conn
            conn._smartretry_watch = self
            if self.fired:
                _shutdown_socket(getattr(conn, "sock", None))

    def detach(self, conn: Any) -> None:
        """Stop watching ``conn``: it goes back to the pool and may serve another thread."""
        with self._lock:
            if self._conn is conn:
                self._conn = None

    def finish(self) -> None:
        """The attempt is over: the watch must never touch a socket again."""
        with self._lock:
            self._done = True
            conn, self._conn = self._conn, None
        if conn is not None and getattr(conn, "_smartretry_watch", None) is self:
            with contextlib.suppress(AttributeError):
                del conn._smartretry_watch

    def _fire(self) -> bool:
        """Called by the watchdog at the deadline; True asks to be called again soon."""
        with self._lock:
            if self._done:
                return False
            self.fired = True
            sock = getattr(self._conn, "sock", None)
            if sock is None:  # not connected yet (or between connections): look again
                return True
            _shutdown_socket(sock)
            return True  # a reconnect on the same attempt would be cut too


class _Watchdog:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Watch]] = []
        self._cond = threading.Condition(threading.Lock())
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._pushes = 0

    def watch(self, seconds: float) -> Watch:
        item = Watch(time.monotonic() + max(seconds, 0.0))
        with self._cond:
            self._push(item.deadline_at, item)
            if self._thread is None:  # first use, or the thread died (see _run)
                self._thread = threading.Thread(
                    target=self._run, name="requests-smartretry-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is item:
                self._cond.notify()
        return item

    def _push(self, when: float, item: Watch) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), item))
        self._pushes += 1
        if self._pushes >= _COMPACT_AFTER:
            self._pushes = 0
            live = [entry for entry in self._heap if not entry[2]._done]
            if len(live) < len(self._heap):
                heapq.heapify(live)
                self._heap = live

    def _run(self) -> None:
        try:
            self._serve()
        finally:  # only an unexpected error ends the loop: let the next watch restart it
            with self._cond:
                self._thread = None

    def _serve(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    when, _, item = self._heap[0]
                    if item._done:
                        heapq.heappop(self._heap)
                        continue
                    delay = when - time.monotonic()
                    if delay > 0:
                        self._cond.wait(min(delay, _MAX_WAIT))
                        continue
                    heapq.heappop(self._heap)
                    break
            if item._fire():
                with self._cond:
                    self._push(time.monotonic() + _RECHECK, item)


_watchdog = _Watchdog()


def _after_fork_in_child() -> None:
    global _watchdog
    _watchdog = _Watchdog()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_active_watch: contextvars.ContextVar[Optional[Watch]] = contextvars.ContextVar(
    "requests_smartretry_watch", default=None
)


class _Armed:
    """The context manager :func:`watch` returns (a class: this runs on every request)."""

    __slots__ = ("_seconds", "_token", "_watch")

    def __init__(self, seconds: Optional[float]) -> None:
        self._seconds = seconds
        self._watch: Optional[Watch] = None
        self._token: Optional[contextvars.Token[Optional[Watch]]] = None

    def __enter__(self) -> Optional[Watch]:
        if self._seconds is not None:
            self._watch = _watchdog.watch(self._seconds)
            self._token = _active_watch.set(self._watch)
        return self._watch

    def __exit__(self, *exc_info: object) -> None:
        if self._watch is not None and self._token is not None:
            _active_watch.reset(self._token)
            self._watch.finish()


def watch(seconds: Optional[float]) -> _Armed:
    """Arm a watch for ``seconds`` around a ``with`` body; connections used inside are
    attached to it by the adapter's pools.  ``None`` means no deadline."""
    return _Armed(seconds)


def active_watch() -> Optional[Watch]:
    """The watch armed by the innermost :func:`watch` block in this context."""
    return _active_watch.get()
