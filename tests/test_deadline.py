"""The deadline watchdog and the retry scope."""

from __future__ import annotations

import math
import os
import socket
import threading
import time

import pytest

from requests_smartretry import deadline
from requests_smartretry.deadline import current_scope, remaining, retry_scope

from .conftest import fork_while_held, watch


class FakeConn:
    """Stands in for a urllib3 connection: the watchdog only reads ``.sock``."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock


def test_watch_shuts_the_socket_down_at_the_deadline() -> None:
    """A read blocked past the deadline is woken by the watchdog (returns EOF)."""
    left, right = socket.socketpair()
    try:
        with watch(0.2) as armed:
            armed.attach(FakeConn(left))
            started = time.monotonic()
            data = left.recv(10)  # the peer never writes: only the watchdog can end this
            elapsed = time.monotonic() - started
        assert data == b"" and armed.fired
        assert elapsed < 0.2 + 1.0
    finally:
        left.close()
        right.close()


def test_finished_watch_never_touches_the_socket() -> None:
    """Once the attempt is over, its watch cannot cut a connection now serving someone else."""
    left, right = socket.socketpair()
    try:
        with watch(0.05) as armed:
            armed.attach(FakeConn(left))
        time.sleep(0.3)
        right.sendall(b"still open")
        assert left.recv(10) == b"still open"
        assert not armed.fired
    finally:
        left.close()
        right.close()


def test_watch_remaining_counts_down_to_zero_and_ends_with_the_watch() -> None:
    """What a blocking pool may still wait: the time to the deadline, never negative, and
    no bound at all once the attempt is over."""
    with watch(0.5) as armed:
        left = armed.remaining()
        assert left is not None and 0.0 < left <= 0.5
        time.sleep(0.6)
        assert armed.remaining() == 0.0
    assert armed.remaining() is None


def test_detached_connection_is_not_cut() -> None:
    """A connection returned to the pool (detached) is left alone even past the deadline."""
    left, right = socket.socketpair()
    try:
        conn = FakeConn(left)
        with watch(0.05) as armed:
            armed.attach(conn)
            armed.detach(conn)
            time.sleep(0.3)
            right.sendall(b"ok")
            assert left.recv(2) == b"ok"
    finally:
        left.close()
        right.close()


def test_watch_keeps_looking_while_no_socket_exists_yet() -> None:
    """A deadline that passes during connect cuts the socket as soon as it appears."""
    left, right = socket.socketpair()
    try:
        conn = FakeConn(None)
        with watch(0.05) as armed:
            armed.attach(conn)
            time.sleep(0.2)
            conn.sock = left
            started = time.monotonic()
            assert left.recv(10) == b""
            assert time.monotonic() - started < 1.0
    finally:
        left.close()
        right.close()


def test_many_finished_watches_do_not_accumulate() -> None:
    """A finished watch leaves the watchdog at once: nothing piles up in memory."""
    for _ in range(10_000):
        with watch(30.0):
            pass
    assert deadline._watchdog.armed() == []


def test_retry_scope_nests_and_keeps_the_earliest_deadline() -> None:
    """An inner scope never extends the outer deadline, and depth counts the nesting."""
    assert current_scope() is None and remaining() is None
    with retry_scope(time.monotonic() + 1.0) as outer, \
            retry_scope(time.monotonic() + 100.0) as inner:
        assert inner.depth == 2
        assert inner.deadline_at == outer.deadline_at
        left = remaining()
        assert left is not None and 0 < left <= 1.0
    assert current_scope() is None


def test_scope_is_per_thread() -> None:
    """A scope set in one thread is invisible to another (contextvars)."""
    seen: list[object] = []
    with retry_scope(None):
        worker = threading.Thread(target=lambda: seen.append(current_scope()))
        worker.start()
        worker.join()
    assert seen == [None]


def test_a_dead_watchdog_thread_is_restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the watchdog thread ever dies, the next watch starts a new one that still fires."""
    dog = deadline._Watchdog()
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the crash is on purpose

    def crash() -> None:
        raise RuntimeError("watchdog bug")

    monkeypatch.setattr(dog, "_serve", crash)
    deadline.Watch(30.0, dog=dog).finish()
    for _ in range(200):
        if dog._thread is None:
            break
        time.sleep(0.01)
    assert dog._thread is None
    monkeypatch.undo()
    item = deadline.Watch(0.05, dog=dog)
    for _ in range(200):
        if item.fired:
            break
        time.sleep(0.01)
    assert item.fired
    item.finish()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_watchdog_works_in_a_forked_child() -> None:
    """A child forked while the parent's watchdog runs (gunicorn, multiprocessing) still
    has its deadlines enforced: the watchdog starts over in the child."""
    with watch(30.0):  # the parent's watchdog thread exists and holds a watch in flight
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                with watch(0.05) as armed:
                    limit = time.monotonic() + 5.0
                    while not armed.fired and time.monotonic() < limit:
                        time.sleep(0.01)
                    code = 0 if armed.fired else 2
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class _CountingLock:
    """The watchdog's lock, counting the acquisitions made by threads other than the
    watchdog's own."""

    def __init__(self, dog: deadline._Watchdog) -> None:
        self._lock = dog._lock
        self._dog = dog
        self.by_others = 0

    def acquire(self, *args: object) -> bool:
        thread = self._dog._thread
        if thread is None or threading.get_ident() != thread.ident:
            self.by_others += 1
        return self._lock.acquire(*args)  # type: ignore[arg-type]

    def release(self) -> None:
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_arming_attaching_and_finishing_a_watch_takes_no_lock() -> None:
    """The common case (a deadline no earlier than the watchdog's next look, finished
    before it) costs the attempt's thread no lock: arming, attaching, detaching and
    finishing are stores and dict operations in the thread's own slot."""
    dog = deadline._Watchdog()
    deadline.Watch(30.0, dog=dog).finish()  # starts the watchdog, which then looks at +30 s
    counting = _CountingLock(dog)
    dog._lock = counting  # type: ignore[assignment]  # every later acquisition counted
    conn = FakeConn(None)
    for _ in range(1000):
        item = deadline.Watch(30.0, dog=dog)
        item.attach(conn)
        assert item.detach(conn)
        item.finish()
    assert counting.by_others == 0
    assert dog.armed() == []
    earlier = deadline.Watch(5.0, dog=dog)  # earlier than the next look: the watchdog is told
    earlier.finish()
    assert counting.by_others == 1


def test_finishing_while_the_watchdog_cuts_waits_for_the_cut() -> None:
    """A thread that finishes its watch (or detaches its connection) while the watchdog is
    cutting that connection waits until the cut is over: once finish() returns, the
    connection may go back to the pool, and nothing touches it any more."""
    dog = deadline._Watchdog()
    item = deadline.Watch(30.0, dog=dog)
    conn = FakeConn(None)
    item.attach(conn)
    finished = threading.Event()
    with dog._lock:  # the watchdog's cut: it holds the lock and has taken the entry out
        held = item._box.pop(item)
        worker = threading.Thread(target=lambda: (item.finish(), finished.set()))
        worker.start()
        assert not finished.wait(0.3), "finish() returned while the cut was under way"
        item._box[item] = held  # the cut is over
    assert finished.wait(10.0)
    worker.join()
    assert dog.armed() == [] and item.conn is None


def test_64_threads_arming_and_finishing_at_once_are_cut_only_while_armed() -> None:
    """64 threads arm, attach, detach and finish watches at once, some already past their
    deadline: every expired attempt still attached is cut, and a socket is never shut
    down after its watch let go of it (a cut meant for one attempt never lands on the next
    user of its connection)."""
    errors: list[str] = []
    cut = [0]

    def alive(peer: socket.socket) -> bool:
        try:
            return peer.recv(1) != b""
        except BlockingIOError:
            return True

    def work(index: int) -> None:
        left, right = socket.socketpair()
        right.setblocking(False)
        try:
            for round_ in range(60):
                expired = (index + round_) % 4 == 0
                item = deadline.Watch(0.0 if expired else 30.0)
                conn = FakeConn(left)
                item.attach(conn)
                if expired:  # give the watchdog its chance to cut while attached
                    limit = time.monotonic() + 2.0
                    while not item.fired and time.monotonic() < limit:
                        time.sleep(0.001)
                item.detach(conn)
                item.finish()
                was_alive = alive(right)
                time.sleep(0.002)  # the watchdog runs meanwhile
                if was_alive and not alive(right):
                    errors.append(f"thread {index}: cut after its watch let go")
                if expired and not item.fired:
                    errors.append(f"thread {index}: an expired watch never fired")
                if not was_alive:  # cut while attached: a new connection, as urllib3 would
                    cut[0] += 1
                    left.close()
                    right.close()
                    left, right = socket.socketpair()
                    right.setblocking(False)
        finally:
            left.close()
            right.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert cut[0] > 0  # the cuts did happen
    assert deadline._watchdog.armed() == []


def test_free_threaded_mode_bounds_the_watchdogs_sleep_and_locks_short_watches() -> None:
    """On a free-threaded build no store-load order protects the wakeup handshake, so the
    watchdog scans at least every ``_FREE_THREADED_LOOK`` and a shorter watch arms under
    the lock: a watch whose wakeup was lost (its thread read a stale next look) is still
    cut, late by at most that bound."""
    dog = deadline._Watchdog()
    dog.unlocked_from = dog._longest_sleep = 0.3  # what a free-threaded build sets (1 s)
    deadline.Watch(30.0, dog=dog).finish()  # the watchdog runs, next look within 0.3 s
    counting = _CountingLock(dog)
    dog._lock = counting  # type: ignore[assignment]
    deadline.Watch(0.2, dog=dog).finish()  # shorter than the bound: told under the lock
    assert counting.by_others == 1
    dog.next_look = -math.inf  # as if this thread read a stale next look: no wakeup
    left, right = socket.socketpair()
    try:
        item = deadline.Watch(0.4, dog=dog)
        item.attach(FakeConn(left))
        assert counting.by_others == 1  # armed without the lock, the watchdog not told
        started = time.monotonic()
        assert left.recv(10) == b""  # cut by the watchdog's bounded sleep
        assert item.fired and time.monotonic() - started < 0.4 + 0.3 + 1.0
        item.finish()
    finally:
        left.close()
        right.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_attempt_ledgers_work_in_a_child_forked_while_another_thread_counts() -> None:
    """A child forked while another thread of the parent holds the ledgers' lock (it was
    counting a request inside a callable's attempt) can still count and seal its own
    ledgers: the lock starts over in the child instead of staying held forever."""
    def child() -> int:
        ledger = deadline.AttemptLedger(deadline.AttemptLedger())
        return 0 if ledger.start_unsafe() and ledger.seal() == 1 else 2

    # held as AttemptLedger.start_unsafe holds it
    assert fork_while_held([deadline._LEDGER_LOCK], child) == 0
