"""Wall-clock deadlines: the enclosing retry scope, and the watchdog that cuts sockets.

A per-read socket timeout cannot bound an attempt: a server that sends one byte every
second never lets a single ``recv`` time out.  Each attempt therefore registers a
:class:`Watch` with one process-wide watchdog thread; if the attempt is still running at its
deadline, the watchdog shuts the connection's socket down, the blocked read returns at
once, and the adapter reports the attempt as timed out.

Each thread publishes its attempts' watches in a deadline slot of its own, which the
watchdog scans when it wakes; it is woken only when a new deadline is earlier than the
moment it already plans to look.  So an attempt that ends before its deadline takes no
lock: arming it is a few stores and a dict insert in its thread's slot, finishing it a
dict delete (see :class:`Watch` and :class:`_Watchdog`, also for free-threaded builds).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional, overload

import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.response

from . import forksafe
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
_LEDGER_LOCK = forksafe.lock()


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


# What a watch's entry in its thread's handshake box holds while no connection is attached,
# and what a missing entry reads as (the watch is finished, or the other side holds it).
_NO_CONN: Any = object()
_MISSING: Any = object()


class _Slot:
    """One thread's deadline slot: the watches armed in that thread (innermost first,
    chained by ``outer``) and the handshake box through which the watchdog and the
    thread pass each watch's connection (see :class:`Watch`)."""

    __slots__ = ("__weakref__", "box", "watch")

    def __init__(self) -> None:
        self.watch: Optional[Watch] = None
        #: watch -> its connection (or ``_NO_CONN``), present while the watch is armed.
        #: Only single dict operations touch it, never a read-then-write: the watchdog
        #: *takes* an entry (``pop``) to cut its connection and puts it back, so whoever
        #: takes it second knows the other side has it.
        self.box: dict[Watch, Any] = {}


class _ThreadSlots(threading.local):
    """Each thread's :class:`_Slot` for one watchdog, made (and registered with it) at
    the thread's first access: ``slots.slot`` never fails, and costs an attribute read."""

    slot: _Slot

    def __init__(self, dog: _Watchdog) -> None:
        self.slot = dog._register(_Slot())


class Watch:
    """One attempt's deadline: armed by creating it, ended by :meth:`finish`.

    Creating a watch publishes it in this thread's deadline slot, where the process-wide
    watchdog finds it, and makes it this thread's active one (:func:`active_watch`), so
    that the adapter's pools can hand it the connection that carries the attempt.  If the
    attempt still runs at ``deadline_at``, the watchdog shuts that connection's socket down.

    No lock in the common case: arming is a few stores and one dict insert in the
    thread's own slot; attaching, detaching and finishing are dict operations on that
    slot's box.  The watchdog's lock is taken only when the new deadline is earlier than
    the watchdog's next look (or the watchdog is scanning right now), or when a thread
    finds that the watchdog is cutting its connection at that very moment (it waits for
    the cut to end, so that a connection never goes back to the pool while a cut is
    under way).  See :class:`_Watchdog` for why no wakeup is lost.
    """

    __slots__ = ("_box", "_check_at", "_dog", "_done", "_slot", "conn", "deadline_at",
                 "fired", "outer")

    def __init__(self, seconds: float, *, dog: Optional[_Watchdog] = None) -> None:
        if dog is None:
            dog = _watchdog
        slot = dog.slots.slot
        self._dog = dog
        self._slot = slot
        self._box = box = slot.box
        self.fired = False
        self._done = False
        #: The connection carrying the attempt (see :meth:`attach`); the thread's own.
        self.conn: Any = None
        #: The watch this one is nested in, in the same thread (or None).
        self.outer = slot.watch
        self.deadline_at = self._check_at = _monotonic() + (seconds if seconds > 0.0 else 0.0)
        box[self] = _NO_CONN
        slot.watch = self  # published: from here on the watchdog's scans see it
        # Read after publishing (the watchdog writes it before scanning: see _Watchdog).
        if self.deadline_at < dog.next_look or seconds < dog.unlocked_from:
            dog.wake(self.deadline_at)

    def attach(self, conn: Any) -> None:
        """Watch ``conn``, a connection the pool hands this attempt.  Whoever sends on it
        checks :meth:`remaining` first: past the deadline, the watchdog's next cut may
        come only after a live keep-alive socket has carried the request.

        Only the attempt's own thread attaches; a watchdog cut that misses it is
        repeated every ``_RECHECK``.  A finished watch attaches nothing."""
        if self._done or conn is None:
            return
        if self.conn is not None and self.conn is not conn:
            self.detach(self.conn)  # a second connection for the attempt: one at a time
        self.conn = conn
        self._box[self] = conn

    def remaining(self) -> Optional[float]:
        """Seconds until the deadline (never negative), or ``None`` once finished."""
        if self._done:
            return None
        left = self.deadline_at - _monotonic()
        return left if left > 0.0 else 0.0

    def detach(self, conn: Any) -> bool:
        """Stop watching ``conn``: it goes back to the pool and may serve another thread.
        True when this watch was watching it; once this returns, the watchdog cannot cut
        it (it waits for a cut under way to end)."""
        if self.conn is not conn or conn is None:
            return False
        self.conn = None
        box = self._box
        if box.pop(self, _MISSING) is _MISSING:
            self._wait_for_cut()
        if not self._done:
            box[self] = _NO_CONN  # still armed, without a connection
        return True

    def finish(self) -> None:
        """The attempt is over: the watch never touches a socket again (and ``fired``
        never changes again), and stops being this thread's active one."""
        if self._done:
            return
        self._done = True
        if self._box.pop(self, _MISSING) is _MISSING:
            self._wait_for_cut()
        self.conn = None
        slot = self._slot
        if slot.watch is self:
            slot.watch = self.outer
        else:  # finished out of order (an inner watch still armed): unlink it
            inner = slot.watch
            while inner is not None and inner.outer is not self:
                inner = inner.outer
            if inner is not None:
                inner.outer = self.outer

    def _wait_for_cut(self) -> None:
        # This watch's entry was missing from the box: the watchdog holds it, cutting the
        # connection right now (under its lock).  Wait for it to put it back; take it.
        with self._dog._lock:
            self._box.pop(self, None)

    def _fire(self, conn: Any) -> None:
        # The watchdog, under its lock, holding this watch's box entry, at the deadline
        # (and every _RECHECK after it: a socket that does not exist yet, or a reconnect
        # on the same attempt, is cut too).
        self.fired = True
        if conn is not _NO_CONN:
            _shutdown_socket(getattr(conn, "sock", None))


class _Watchdog:
    """One thread that sleeps until the earliest deadline of the attempts in flight.

    Each thread that arms a watch gets a deadline slot (:class:`_Slot`), registered here
    once; the watchdog scans the slots when it wakes.  Arming costs no lock unless the new
    deadline is earlier than :attr:`next_look`, the moment the watchdog plans to look.

    No wakeup is lost: an arming thread publishes its watch, *then* reads ``next_look``;
    the watchdog sets ``next_look`` to infinity, *then* scans, then sets it to what the
    scan found, all under its lock.  A watch its scan missed was published after the
    scan read that slot, so its thread reads ``next_look`` after the watchdog set it to
    infinity: it finds either infinity (and wakes the watchdog, under the lock, which it
    gets only once the watchdog waits) or the scan's result (and wakes it if its deadline
    is earlier).  Under the GIL every one of these steps is atomic and sequentially
    consistent.  A free-threaded build gives no such order between a store and a later
    load of another location, so there (``unlocked_from``) the watchdog never sleeps
    longer than :data:`_FREE_THREADED_LOOK` between scans, and a watch shorter than that
    takes the lock to arm: a watch a scan missed was armed after it began, so its deadline
    is no earlier than the next look.  The box handshakes need no such care on either
    build: each is one dict operation, which free-threaded CPython performs under the
    dict's own lock.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        # weakref(slot) -> None: a thread's slot goes away with the thread.
        self._slots: dict[weakref.ref[_Slot], None] = {}
        #: When the thread will look next (read without the lock by arming threads).
        self.next_look = math.inf
        #: Watches at least this long arm without the lock (see the class docstring).
        self.unlocked_from = 0.0 if _GIL else _FREE_THREADED_LOOK
        self._longest_sleep = _MAX_WAIT if _GIL else _FREE_THREADED_LOOK
        self._thread: Optional[threading.Thread] = None
        #: Each thread's slot (``slots.slot``).
        self.slots = _ThreadSlots(self)

    def _register(self, slot: _Slot) -> _Slot:
        self._slots[weakref.ref(slot, self._forget)] = None
        return slot

    def _forget(self, ref: weakref.ref[_Slot]) -> None:
        self._slots.pop(ref, None)  # the thread ended

    def armed(self) -> list[Watch]:
        """The watches armed in every thread now (for tests and diagnostics)."""
        found: list[Watch] = []
        for ref in self._slots.copy():  # one atomic copy (a free-threaded build too)
            slot = ref()
            if slot is not None:
                found.extend(slot.box.copy())
        return found

    def wake(self, deadline_at: float) -> None:
        """Make the watchdog look by ``deadline_at`` (starting it if it is not running)."""
        with self._lock:
            if self._thread is None:  # first use, or the thread died (see _run)
                self._start(deadline_at)
            elif deadline_at < self.next_look:
                self.next_look = deadline_at
                self._wakeup.notify()

    def _start(self, first_look: float) -> None:
        # Under the lock.
        self.next_look = first_look
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
                self.next_look = math.inf  # the next watch takes the lock: a restart

    def _serve(self) -> None:
        with self._lock:
            while True:
                self.next_look = math.inf  # scanning: a watch armed now wakes us again
                now = _monotonic()
                next_look = now + self._longest_sleep
                for ref in self._slots.copy():  # one atomic copy (a free-threaded build too)
                    slot = ref()
                    item = None if slot is None else slot.watch
                    while item is not None:
                        if item._check_at <= now:
                            box = item._box
                            held = box.pop(item, _MISSING)
                            if held is _MISSING:  # finished, or its thread holds it
                                if not item._done and now + _RECHECK < next_look:
                                    next_look = now + _RECHECK  # (detaching): again soon
                                item = item.outer
                                continue
                            try:
                                item._fire(held)
                            finally:
                                # Back in the box (what its thread attached meanwhile
                                # wins; it finishes or detaches only under our lock).
                                box.setdefault(item, held)
                            item._check_at = now + _RECHECK
                        if item._check_at < next_look:
                            next_look = item._check_at
                        item = item.outer
                self.next_look = next_look
                self._wakeup.wait(next_look - now)


_monotonic = time.monotonic
# Whether the GIL orders every step of the handshakes (see _Watchdog).
_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()
# On a free-threaded build: the longest sleep of the watchdog between two scans, and the
# shortest watch that arms without the lock.
_FREE_THREADED_LOOK = 1.0
_watchdog = _Watchdog()


def _after_fork_in_child() -> None:
    # The parent's watchdog thread does not exist here, and its lock may have been held
    # at the fork: start over in place (watches in flight keep pointing at this object).
    # (The ledgers' lock is a forksafe lock: released in the child by forksafe.)
    _watchdog._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def active_watch() -> Optional[Watch]:
    """The innermost unfinished :class:`Watch` armed in this thread, or ``None``.  (The
    pools read ``_watchdog.slots.slot.watch`` inline: the same, without a call.)"""
    return _watchdog.slots.slot.watch


# -- the pools and connections that let the watchdog cut a socket --------------------------


class DeadlineBeforeSending(NothingSent, urllib3.exceptions.ConnectTimeoutError):
    """The deadline passed after a connection was taken from the pool but before anything
    was sent on it: urllib3 gives its slot back, and requests raises ``ConnectTimeout``."""


class PoolWaitExpired(NothingSent, urllib3.exceptions.EmptyPoolError):
    """A blocking pool had no free connection before the deadline.  An ``EmptyPoolError``
    so that urllib3 returns no slot it never took; the adapter turns it into
    ``ConnectTimeout`` (requests would let urllib3's own error through)."""


class _WatchedPoolMixin:
    """Attaches each connection to the attempt's deadline watch while it carries the
    attempt, and detaches it before it returns to the pool (where another thread may take
    it), so the watchdog can only ever cut the attempt it belongs to.

    Nothing is stored on the connection itself: a new attribute on a urllib3 connection
    costs every later attribute read on it (CPython's per-instance layouts).
    """

    def _get_conn(self, timeout: Optional[float] = None) -> Any:
        current = _watchdog.slots.slot.watch  # active_watch(), without the call
        if current is None:
            return _U3Pool._get_conn(self, timeout)
        conn = (self._wait_for_conn(current, timeout)
                if self.block  # type: ignore[attr-defined]
                else _U3Pool._get_conn(self, timeout))
        current.attach(conn)  # here, so that a proxy tunnel's connect is watched too
        return conn

    def _wait_for_conn(self, current: Watch, timeout: Optional[float]) -> Any:
        """A blocking pool's (``pool_block=True``) wait for a free connection, which is
        for ever by default: it is part of the attempt, so it ends at the deadline."""
        left = current.remaining()
        if left is None or (timeout is not None and timeout <= left):
            return _U3Pool._get_conn(self, timeout)
        try:
            return _U3Pool._get_conn(self, min(left, threading.TIMEOUT_MAX))
        except urllib3.exceptions.EmptyPoolError:
            raise PoolWaitExpired(
                self,  # type: ignore[arg-type]  # the mixin only ever serves a pool
                "the attempt deadline passed while every pooled connection was in use "
                "(pool_block=True)") from None

    def _put_conn(self, conn: Any) -> None:
        # Inside an attempt, the connection comes back from the attempt's own thread (the
        # body read, or an error); a streamed body read later finds the watch finished
        # and detached already.
        current = _watchdog.slots.slot.watch  # active_watch(), without the call
        if current is not None and conn is not None and current.detach(conn) \
                and current.fired:
            # The watchdog shut this socket down: it must not wait in the pool
            # (urllib3 1.26 returns it there after a body cut short).
            conn.close()
        _U3Pool._put_conn(self, conn)


class _PhaseRecordingMixin:
    """Records where a failure happened: an exception raised while connecting (TCP
    connect, TLS handshake, proxy tunnel) is marked as coming before one byte of the
    request was written (:func:`classify.mark_connect_phase`), whatever its errno.

    Every write of the request comes after ``connect()`` returned, so the mark is the whole
    record: the success path pays one call per new connection and nothing per request,
    and no attribute is ever added to the connection.  A TLS handshake that times out is
    a connect timeout (urllib3 would report it as a read timeout).

    The attempt's deadline is checked at the last moments before anything is sent: when
    a request starts (:meth:`putrequest`, which only buffers; urllib3 1.26 and 2.x call
    it once per request, before connecting a fresh HTTP connection and before the first
    write) and when connecting.  A thread that gets there after its deadline (it waited
    for the pool, or a busy machine stalled it, even between taking a kept-alive
    connection and writing) sends nothing, even if the watchdog thread has not run yet:
    urllib3 closes the connection and restores its pool slot, and requests raises
    ``ConnectTimeout``, safe to retry.  A connect gets only what is left of the attempt:
    the watchdog cannot cut it (no socket exists yet).
    """

    def putrequest(self, method: str, url: str, skip_host: bool = False,
                   skip_accept_encoding: bool = False) -> None:
        current = _watchdog.slots.slot.watch  # active_watch(), without the call
        if current is not None and current.conn is self \
                and current.deadline_at <= _monotonic():  # (attached: not finished)
            raise _deadline_before_sending(self)
        _U3Connection.putrequest(self, method, url, skip_host, skip_accept_encoding)

    def connect(self) -> None:
        current = active_watch()
        if current is not None and current.conn is self:
            left = current.remaining()
            if left is not None:
                if left <= 0.0:
                    raise _deadline_before_sending(self)
                connection: Any = self
                timeout = connection.timeout
                if not isinstance(timeout, (int, float)) or timeout > left:
                    # urllib3 sets the read timeout on the socket once connected.
                    connection.timeout = max(left, MIN_ATTEMPT)
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


# The urllib3 classes whose methods the mixins extend, called through them: on Python
# 3.11 a zero-argument ``super()`` builds a proxy object on every call, and these run on
# every request.  Each is what the mixin's ``super()`` finds for both of its classes (HTTP
# and HTTPS: urllib3 1.26 and 2.x define ``_get_conn``, ``_put_conn`` and ``putrequest``
# once, on the HTTP class); read at each call, so a patched method is seen.
_U3Pool: Any = urllib3.connectionpool.HTTPConnectionPool
_U3Connection: Any = urllib3.connection.HTTPConnection


def _deadline_before_sending(conn: Any) -> DeadlineBeforeSending:
    error = DeadlineBeforeSending(
        conn, "the attempt deadline passed before the connection was made"
        if conn.sock is None else
        "the attempt deadline passed before a pooled connection was free")
    # Nothing was written, whatever urllib3 wraps it in (a ProxyError for a tunnel).
    mark_connect_phase(error)
    return error


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
