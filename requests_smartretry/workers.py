"""The callable API's worker threads: each attempt runs in one, and the caller waits for it
at most until the attempt's deadline (see :mod:`requests_smartretry.functions`).

A small pool of reusable daemon threads (idle ones exit after 30 s).  Python cannot stop a
thread, so an attempt still running at its deadline is *abandoned*: it runs to completion in
the background, its result is discarded (logged at DEBUG), and at most 64 may be running at
once before new attempts are refused.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Optional, TypeVar

from .deadline import AttemptLedger, NoTimeLeft, retry_scope

__all__ = ["abandoned_attempts", "call_in_scope", "start"]

R = TypeVar("R")

_log = logging.getLogger("requests_smartretry")

# The caller waits this long past the deadline, so that an attempt whose own requests were
# cut at the deadline (by the adapter's watchdog) can report that precise error itself.
_GRACE = 0.05
# Longest single wait on a worker (Event.wait overflows past threading.TIMEOUT_MAX).
_MAX_SLICE = 3600.0
# Abandoned attempts still running, beyond which new attempts are refused.
_MAX_ABANDONED = 64
# An idle worker thread exits after this many seconds without work.
_IDLE_SECONDS = 30.0

_ABANDONED_TEXT = {
    "zh": "第 {attempt} 次尝试超时被放弃后在后台结束 ({ms}ms), {what}已丢弃",
    "en": "abandoned attempt {attempt} finished in the background after {ms}ms; "
    "its {what} was discarded",
}
_WHAT = {"zh": ("返回值", "异常 {name} "), "en": ("return value", "exception {name}")}


class _Job:
    """One attempt handed to a worker thread, and how it ended."""

    __slots__ = ("_lock", "abandoned", "context", "deadline_at", "done", "error", "fn",
                 "label", "lang", "ledger", "log", "started", "value")

    def __init__(self, fn: Callable[[], Any], deadline_at: float, label: tuple[str, int],
                 lang: str, log: bool, ledger: AttemptLedger) -> None:
        self.fn = fn
        self.ledger = ledger
        # A fresh copy per attempt: an abandoned attempt may still be running in its copy.
        self.context = contextvars.copy_context()
        self.deadline_at = deadline_at
        self.label = label
        self.lang = lang
        self.log = log
        self.done = threading.Event()
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.abandoned = False
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def run(self, before_done: Callable[[], None]) -> None:
        """Run the attempt inside its retry scope, call ``before_done`` and wake the caller;
        never raises."""
        try:
            if time.monotonic() >= self.deadline_at:
                # This thread got to run only after the attempt's deadline (a busy CPU,
                # many threads): the caller is giving up on it, and fn would act late.
                raise NoTimeLeft
            value = self.context.run(call_in_scope, self.fn, self.deadline_at,
                                     self.ledger)
            error: Optional[BaseException] = None
        except BaseException as exc:  # the caller decides what SystemExit etc. mean
            value, error = None, exc
        before_done()
        with self._lock:
            self.value, self.error = value, error
            abandoned = self.abandoned
            self.done.set()
        if abandoned:
            _pool.abandoned_finished()
            if self.log:
                self._log_discarded(error)

    def wait(self) -> bool:
        """Wait for the attempt until its deadline (plus a short grace, for the attempt to
        report its own, more precise, error); ``True`` when it finished, ``False`` when it
        was abandoned.  Interrupted (``KeyboardInterrupt``), it abandons the attempt, which
        runs on alone, and re-raises."""
        try:
            # Event.wait overflows past threading.TIMEOUT_MAX (~292 years): wait in bounded
            # slices up to the deadline.
            while not self.done.wait(min(max(0.0, self.deadline_at - time.monotonic())
                                         + _GRACE, _MAX_SLICE)):
                if time.monotonic() >= self.deadline_at:
                    break
        except BaseException:
            self.abandon()
            raise
        return self.done.is_set() or not self.abandon()

    def abandon(self) -> bool:
        """Stop waiting for the attempt; ``False`` if it finished in the meantime."""
        with self._lock:
            if self.done.is_set():
                return False
            self.abandoned = True
            _pool.abandoned_started()
            return True

    def _log_discarded(self, error: Optional[BaseException]) -> None:
        if not _log.isEnabledFor(logging.DEBUG):
            return
        lang = self.lang if self.lang in _ABANDONED_TEXT else "zh"
        kept, failed = _WHAT[lang]
        what = kept if error is None else failed.format(name=type(error).__name__)
        operation, attempt = self.label
        ms = round((time.monotonic() - self.started) * 1000)
        prefix = "[API重试]" if lang == "zh" else "[API retry]"
        message = _ABANDONED_TEXT[lang].format(attempt=attempt, ms=ms, what=what)
        _log.debug("%s %s - %s", prefix, operation, message,
                   extra={"retry_event": "abandoned_finished", "retry_operation": operation,
                          "retry_attempt": attempt})


def call_in_scope(fn: Callable[[], R], deadline_at: float, ledger: AttemptLedger) -> R:
    """Run the attempt ``fn`` in a retry scope ending at ``deadline_at`` whose unsafe
    requests are counted in ``ledger``."""
    with retry_scope(deadline_at, ledger):
        return fn()


class _WorkerPool:
    """Daemon threads that run attempts: idle ones are reused, and exit after 30 s idle.

    Thread safety: every counter is guarded by ``_lock``.  ``_idle`` counts workers waiting
    for a job that no queued job has claimed yet, so a submit either hands its job to one of
    them (through the queue) or starts a thread with the job as its first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._idle = 0
        self._names = itertools.count(1)
        self.abandoned = 0

    def submit(self, job: _Job) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return
        thread = threading.Thread(target=self._work, args=(job,), daemon=True,
                                  name=f"requests-smartretry-call-{next(self._names)}")
        thread.start()

    def _work(self, job: Optional[_Job]) -> None:
        while job is not None:
            # Idle again *before* the caller wakes, so that its next attempt reuses this
            # thread instead of racing it and starting another.
            job.run(self._now_idle)
            job = None
            while job is None:
                try:
                    job = self._jobs.get(timeout=_IDLE_SECONDS)
                except queue.Empty:
                    with self._lock:
                        if self._jobs.empty():  # nothing was handed to us: retire
                            self._idle -= 1
                            return

    def _now_idle(self) -> None:
        with self._lock:
            self._idle += 1

    def abandoned_started(self) -> None:
        with self._lock:
            self.abandoned += 1

    def abandoned_finished(self) -> None:
        with self._lock:
            self.abandoned -= 1


_pool = _WorkerPool()


def _after_fork_in_child() -> None:
    # The parent's workers do not exist in the child: start from an empty pool.
    global _pool
    _pool = _WorkerPool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def start(fn: Callable[[], Any], deadline_at: float, label: tuple[str, int], lang: str,
          log: bool, ledger: AttemptLedger) -> Optional[_Job]:
    """Hand the attempt ``fn`` (``label``: operation and attempt number, for the log line
    of an abandoned one; ``ledger``: where its unsafe requests are counted) to a worker
    thread; ``None`` (nothing started) while too many abandoned attempts still run."""
    if _pool.abandoned >= _MAX_ABANDONED:
        return None
    job = _Job(fn, deadline_at, label, lang, log, ledger)
    _pool.submit(job)
    return job


def abandoned_attempts() -> int:
    """How many attempts abandoned at their deadline are still running in the background."""
    return _pool.abandoned
