"""The migration path from ``HTTPAdapter(max_retries=Retry(...))``: the Retry decides.

``SmartRetryAdapter(max_retries=retry)`` does not translate a ``urllib3.Retry`` into a
policy (its counters, method rules, first-retry rule and ``raise_on_status`` do not map onto
one).  Each attempt instead hands urllib3 the Retry's current state, exactly as
``HTTPAdapter`` does, so urllib3's own ``urlopen`` calls the Retry's own ``is_retry()``,
``increment()``, ``get_backoff_time()`` and ``get_retry_after()`` (a subclass's too), and
raises what ``HTTPAdapter`` raises when it gives up (``RetryError``, ``ConnectionError``,
``ReadTimeout``, the raw error for ``total=False``…).

Only the step after urllib3 decided to retry is different: instead of sleeping and calling
itself again, urllib3 calls the state's ``sleep()``, which here raises :class:`RetryNow`
with the next state and the wait urllib3 would have slept.  The adapter ends the attempt
there and the retry loop waits (bounded by the deadline, watched by the breaker, the
budget and the hooks) before the next attempt with that state.  So the loop never makes an
attempt the Retry would not have made.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import requests
import urllib3.exceptions as u3
from urllib3.util.retry import Retry

from . import forksafe
from .classify import Classification
from .deadline import active_watch
from .events import Verdict
from .policy import RetryPolicy

__all__ = ["RetryNow", "check_retry", "gave_up_counting", "max_retries_of", "policy_for_retry",
           "retried_verdict", "stepping", "to_requests_error"]

# A Retry whose counters are all unbounded would retry for ever; ours stops after this many.
MAX_UNBOUNDED_RETRIES = 1000
# The methods a subclass may not override: the wait is the retry loop's, not urllib3's.
_SLEEPERS = ("sleep", "sleep_for_retry", "_sleep_backoff")


class RetryNow(BaseException):
    """Raised from a stepping Retry's ``sleep()``: urllib3 decided to retry.

    A ``BaseException`` so that neither urllib3, requests nor the adapter's attempt treats
    it as a transport failure on its way out of ``urlopen``.
    """

    def __init__(self, state: Retry, wait: float, response: Any, cut: bool) -> None:
        super().__init__(state, wait)
        #: The Retry to use for the next attempt (``increment()``'s result).
        self.state = state
        #: Seconds urllib3 would have slept (``Retry-After`` or the backoff).
        self.wait = wait
        #: The urllib3 response that is retried (drained), or ``None`` for an error.
        self.response = response
        #: The attempt's deadline had passed: the retry must not be made.
        self.cut = cut

    @property
    def error(self) -> Optional[BaseException]:
        """The urllib3 error that is retried, or ``None`` for a response."""
        history = self.state.history
        return history[-1].error if history else None


def _decided(self: Retry, response: Any = None) -> None:
    """``sleep()`` of a stepping Retry: what urllib3's would sleep, raised instead."""
    watch = active_watch()
    cut = watch is not None and (watch.fired or watch.remaining() == 0.0)
    wait: Optional[float] = None
    if response is not None and self.respect_retry_after_header:
        wait = self.get_retry_after(response) or None  # "Retry-After: 0" → the backoff
    if wait is None:
        wait = self.get_backoff_time()
    raise RetryNow(self, float(wait), response, cut)


_classes: dict[type, type] = {}
_classes_lock = forksafe.lock()


def _stepping_class(cls: type) -> type:
    with _classes_lock:
        step = _classes.get(cls)
        if step is None:
            step = _classes[cls] = type(cls.__name__, (cls,), {
                "sleep": _decided, "__module__": cls.__module__,
                "__qualname__": cls.__qualname__})
        return step


def check_retry(retry: Retry) -> None:
    """Refuse a Retry whose waits the retry loop cannot take over."""
    cls = type(retry)
    for name in _SLEEPERS:
        if getattr(cls, name, None) is not getattr(Retry, name, None):
            raise TypeError(
                f"max_retries: {cls.__name__} overrides Retry.{name}(), which "
                "SmartRetryAdapter cannot honour (the retry loop does the waiting, bounded by "
                "the deadline); override get_backoff_time() or get_retry_after() instead, or "
                "use HTTPAdapter")


def stepping(retry: Retry) -> Retry:
    """A copy of ``retry`` (of a subclass of its class) whose ``sleep()`` raises
    :class:`RetryNow`; ``increment()`` keeps returning that subclass (``Retry.new``)."""
    state = copy.copy(retry)
    state.__class__ = _stepping_class(type(retry))
    return state


def _count(value: Any) -> Optional[int]:
    """A counter's retries: ``None`` for unbounded, 0 for ``False`` or negative."""
    if value is None:
        return None
    if value is False:
        return 0
    return max(int(value), 0)


def max_retries_of(retry: Retry) -> int:
    """An upper bound on the retries ``retry`` can allow (the loop's attempt cap)."""
    total = retry.total
    if total is not None:
        return _count(total) or 0
    parts = [_count(getattr(retry, name, None))
             for name in ("connect", "read", "redirect", "status", "other")]
    if any(part is None for part in parts):
        return MAX_UNBOUNDED_RETRIES
    return min(sum(p or 0 for p in parts), MAX_UNBOUNDED_RETRIES)


def policy_for_retry(retry: Retry) -> RetryPolicy:
    """The policy the adapter runs a ``Retry`` under: the attempt cap, the method rule (for
    the safety checks that can only refuse a retry), statuses for the log lines and
    statistics.  The Retry itself decides every retry and every wait."""
    check_retry(retry)
    asked: Any = (getattr(retry, "backoff_max", None)  # urllib3 2.x, then 1.26's class cap
                  or getattr(Retry, "DEFAULT_BACKOFF_MAX", None) or 120)
    cap = float(asked)
    derived: dict[str, Any] = {
        "max_retries": max_retries_of(retry),
        "backoff_base": min(float(retry.backoff_factor or 0.0), cap),
        "backoff_max": cap,
        "retry_statuses": frozenset(retry.status_forcelist or ()),
        "respect_retry_after": bool(retry.respect_retry_after_header),
        # urllib3 reads neither Retry-After-Ms nor x-should-retry: nor do its labels.
        "honor_server_signals": False,
    }
    methods = getattr(retry, "allowed_methods", None)
    if methods is None:  # urllib3: None means "retry any method"
        derived["idempotent"] = True
    else:
        derived["idempotent_methods"] = frozenset(methods)
    return RetryPolicy(**derived)


def retry_for_policy(policy: RetryPolicy) -> Retry:
    """A ``urllib3.Retry`` saying what ``policy`` does, for code that reads
    ``HTTPAdapter.max_retries`` (it is never handed to urllib3): ``total`` is the policy's
    ``max_retries``, with its statuses, methods (``None``: any method, for an
    ``idempotent=True`` policy), backoff and ``Retry-After`` rule."""
    options: dict[str, Any] = {
        "total": policy.max_retries,
        "backoff_factor": policy.backoff_base,
        "status_forcelist": sorted(policy.retry_statuses),
        "allowed_methods": None if policy.idempotent is True
        else sorted(policy.idempotent_methods),
        "respect_retry_after_header": policy.respect_retry_after,
        "raise_on_status": False,
    }
    if hasattr(Retry.DEFAULT, "backoff_max"):  # urllib3 2.x takes the cap per Retry
        options["backoff_max"] = policy.backoff_max
    return Retry(**options)


def to_requests_error(error: Optional[BaseException],
                      request: requests.PreparedRequest) -> requests.RequestException:
    """The ``requests`` exception for a urllib3 error that was retried (raised only if the
    call then gives up for a reason of ours: the deadline, the budget, a close)."""
    if isinstance(error, u3.ReadTimeoutError):
        return requests.exceptions.ReadTimeout(error, request=request)
    if isinstance(error, u3.ConnectTimeoutError) and not isinstance(
            error, u3.NewConnectionError):
        return requests.exceptions.ConnectTimeout(error, request=request)
    if isinstance(error, u3.SSLError):
        return requests.exceptions.SSLError(error, request=request)
    return requests.exceptions.ConnectionError(error, request=request)


def gave_up_counting(error: Optional[BaseException]) -> bool:
    """Whether ``error`` is requests' wrapping of urllib3's ``MaxRetryError``: the Retry's
    counters ran out (rather than the error not being retryable at all)."""
    cause = error.args[0] if error is not None and error.args else None
    return isinstance(cause, u3.MaxRetryError)


def retried_verdict(verdict: Classification, status: Optional[int]) -> Classification:
    """``verdict`` as a retryable one: the Retry decided to retry, whatever our table says."""
    if verdict.retryable:
        return verdict
    kind = Verdict.RATE_LIMIT if status == 429 else (
        Verdict.SERVER_ERROR if status is not None else Verdict.NETWORK)
    return Classification(kind, verdict.reason, sent=verdict.sent,
                          server_acted=verdict.server_acted, retry_after=verdict.retry_after)
