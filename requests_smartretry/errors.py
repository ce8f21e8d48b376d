"""The exception tree: rooted at :class:`SmartRetryError`, leaves also inherit the
``requests`` class that existing ``except`` clauses already catch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import requests

if TYPE_CHECKING:
    from .events import AttemptEvent

__all__ = [
    "AdapterClosedError",
    "AttemptDeadlineExceeded",
    "CallTimeoutError",
    "CircuitOpenError",
    "PollDeadlineExceeded",
    "ResponseSignatureError",
    "SmartRetryError",
    "TaskFailedError",
    "ThrottledError",
    "attempt_history",
]

_HISTORY_ATTR = "retry_history"


class SmartRetryError(requests.RequestException):
    """Root of every error this library raises itself."""


class AttemptDeadlineExceeded(SmartRetryError, requests.exceptions.ReadTimeout):
    """An attempt passed its wall-clock deadline (connect + send + headers + body).

    It is a ``requests.exceptions.ReadTimeout`` (hence a ``Timeout``), so code that catches
    requests' timeouts keeps working.
    """


class CallTimeoutError(AttemptDeadlineExceeded, TimeoutError):
    """A callable's attempt passed its deadline and the caller stopped waiting for it
    (``execute_with_retry(fn, timeout=...)``).

    It is also the builtin ``TimeoutError``, so code that catches either kind keeps working.
    The abandoned attempt may still be running in the background.
    """


class PollDeadlineExceeded(CallTimeoutError):
    """A wait (:func:`~requests_smartretry.poll_until`, a vendor ``wait_for_task``) passed
    its deadline before the value was done.

    A :class:`CallTimeoutError`, hence a builtin ``TimeoutError`` and a ``requests``
    ``Timeout``.  ``last`` is the last value a poll returned (``None`` when none did; the
    task dict for the vendor waiters), ``polls`` how many polls were made, ``deadline`` the
    wait's deadline in seconds, ``task_id`` the task's id for the vendor waiters (``None``
    for :func:`~requests_smartretry.poll_until`), ``last_error`` the last poll's error when
    it failed (retries used up on a transient failure: the wait went on; also the
    ``__cause__``), else ``None``.  Nothing is lost: poll again later with the same task id.
    """

    def __init__(self, message: str, *args: Any, last: Any = None, polls: int = 0,
                 deadline: Optional[float] = None, last_error: Optional[BaseException] = None,
                 **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        self.last = last
        self.last_error = last_error
        self.polls = polls
        self.deadline = deadline
        self.task_id: Optional[str] = None


class TaskFailedError(SmartRetryError):
    """An asynchronous task ended without a result: the vendor says it failed, was
    cancelled, expired or is unknown (never retried: polling again cannot change it).

    ``status`` is the vendor's task status (``"failed"``, ``"cancelled"``, ``"expired"``,
    ``"not_found"``…), ``code`` and ``message`` the vendor's error (``None`` when it gave
    none), ``task`` the task as the vendor last described it (a dict)::

        try:
            ark.wait_for_task(video, task_id)
        except TaskFailedError as exc:
            print(exc.status, exc.code, exc.message)
    """

    def __init__(self, message: str, *args: Any, status: Optional[str] = None,
                 code: Any = None, error_message: Optional[str] = None,
                 task: Any = None, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        self.status = status
        self.code = code
        self.message = error_message
        self.task = task


class CircuitOpenError(SmartRetryError, requests.exceptions.ConnectionError):
    """The circuit breaker for ``service`` is open: the call was refused without touching
    the network.  ``retry_in`` is the number of seconds until the breaker lets a probe
    through; ``forced`` is true when an operator holds it open (``force_open``: no probe
    until ``reset``, ``retry_in`` is then only a hint to look again)."""

    def __init__(self, service: str, retry_in: float, *args: Any, forced: bool = False,
                 **kwargs: Any) -> None:
        if forced:
            message = (f"circuit breaker for {service!r} is forced open by an operator; "
                       f"no probe until it is reset")
        else:
            message = (f"circuit breaker for {service!r} is open; next probe in "
                       f"{max(retry_in, 0.0):.3f}s")
        super().__init__(message, *args, **kwargs)
        self.service = service
        self.retry_in = max(retry_in, 0.0)
        self.forced = forced


class ThrottledError(SmartRetryError):
    """A :class:`~requests_smartretry.Throttle` could not give an attempt its turn within
    the time it had (its timeout, the call's deadline or the throttle's ``max_wait``):
    nothing was sent.

    ``service`` is the throttled service key, ``wait`` the seconds the turn would have
    needed (``None`` while waiting for an in-flight slot, whose end nobody knows), and
    ``limit`` the seconds the attempt could wait (``None``: no limit but the slot's)::

        try:
            session.get(url)
        except ThrottledError as exc:
            print(f"{exc.service} is busy; try again in {exc.wait or 1.0:.1f}s")
    """

    def __init__(self, service: str, wait: Optional[float], limit: Optional[float],
                 *args: Any, **kwargs: Any) -> None:
        needs = "a free in-flight slot" if wait is None else f"a wait of {wait:.3f}s"
        within = "" if limit is None else f" within {max(limit, 0.0):.3f}s"
        super().__init__(f"throttle for {service!r} cannot give this attempt its turn"
                         f"{within} (it needs {needs}); nothing was sent", *args, **kwargs)
        self.service = service
        self.wait = wait
        self.limit = limit


class ResponseSignatureError(SmartRetryError):
    """A signed answer failed verification: a WeChat Pay 2xx response (or a ``notify_url``
    notification) that is unsigned, signed with an unknown key, tampered with, stale, or
    whose resource does not decrypt.  Never retried: repeating cannot make a forgery true.

    ``check`` names the check that failed: ``"unsigned"``, ``"signature_type"``,
    ``"serial"``, ``"timestamp"``, ``"signature"``, ``"decryption"`` or ``"redirect"`` (a
    verifying adapter does not follow a redirect to an answer nobody would verify).
    ``response`` (for a response) is attached as on every ``requests`` exception, for its
    status and headers; its untrusted body is dropped (``content == b""``).  The message
    never carries keys, signatures or header values.
    """

    def __init__(self, message: str, *args: Any, check: str = "signature", **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        self.check = check


class AdapterClosedError(SmartRetryError):
    """The adapter (or the session that owns it) was closed while a call was under way: the
    call's retry is not sent.  (As with requests' ``HTTPAdapter``, a later call works.)"""


def attempt_history(exc: BaseException) -> tuple[AttemptEvent, ...]:
    """The attempt events of the call that raised ``exc`` (empty if it carries none).

    Every exception that leaves a retrying call carries them, whatever its type::

        try:
            session.get(url)
        except requests.ConnectionError as exc:
            for event in attempt_history(exc):
                print(event.attempt, event.reason)
    """
    history = getattr(exc, _HISTORY_ATTR, ())
    return tuple(history)


def attach_history(
    exc: BaseException, history: tuple[AttemptEvent, ...], note: Optional[str] = None
) -> None:
    """Record the attempt history (and a human note) on an exception leaving a call."""
    try:
        setattr(exc, _HISTORY_ATTR, history)
    except AttributeError:  # exceptions with __slots__: history stays unavailable
        return
    if note and hasattr(exc, "add_note"):
        exc.add_note(note)
