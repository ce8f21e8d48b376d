"""Retry-rate alerts: a hook that speaks up when retries per call climb over a window.

An alert fires once when the retry rate (retries ÷ calls) over a sliding window reaches a
threshold with enough traffic to mean something, and fires again only after the rate has
fallen back below a re-arm level, so an outage gives one alert, not one per request.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

from . import forksafe
from .events import AttemptEvent, EventKind

__all__ = ["RetryRateAlert", "RetryRateExceeded", "log_alert"]

_log = logging.getLogger("requests_smartretry")

_GROUPS = ("all", "operation", "service")
#: The key that ``group_by="all"`` reports, and that keys beyond ``max_keys`` share.
ALL_KEY = "*"


@dataclass(frozen=True)
class RetryRateExceeded:
    """What an alert reports: whose retry rate crossed the threshold, and the numbers."""

    #: The operation or service name (``"*"`` with ``group_by="all"``).
    key: str
    group_by: str
    #: Retries per call over the window.
    rate: float
    retries: int
    requests: int
    threshold: float
    window: float


#: The WARNING line, with its arguments in order, per language.
_ALERT_TEXT = {
    "en": ("requests_smartretry: retry rate alert: %s %s made %d retries for %d calls in the "
           "last %gs (rate %.2f, threshold %.2f)",
           ("group", "key", "retries", "requests", "window", "rate", "threshold")),
    "zh": ("requests_smartretry: 重试率告警: %s %s 最近 %gs 内 %d 次调用重试了 %d 次 "
           "(重试率 %.2f, 阈值 %.2f)",
           ("group", "key", "window", "requests", "retries", "rate", "threshold")),
}
_GROUP_NAMES = {"zh": {"all": "全部调用", "operation": "操作", "service": "服务"}}


def log_alert(alert: RetryRateExceeded, lang: Literal["zh", "en"] = "en") -> None:
    """The default action: one WARNING on the ``requests_smartretry`` logger, in ``lang``
    (the alert passes the language of the calls it watches)."""
    message, order = _ALERT_TEXT[lang]
    values = {"group": _GROUP_NAMES.get(lang, {}).get(alert.group_by, alert.group_by),
              "key": alert.key, "retries": alert.retries, "requests": alert.requests,
              "window": alert.window, "rate": alert.rate, "threshold": alert.threshold}
    _log.warning(
        message, *(values[name] for name in order),
        extra={"retry_alert_key": alert.key, "retry_alert_group_by": alert.group_by,
               "retry_alert_rate": alert.rate, "retry_alert_retries": alert.retries,
               "retry_alert_requests": alert.requests,
               "retry_alert_threshold": alert.threshold},
    )


class _Window:
    """Calls and retries per time slot over the last ``slots`` slots, plus the running sums."""

    __slots__ = ("armed", "requests", "retries", "slots")

    def __init__(self) -> None:
        self.slots: deque[list[int]] = deque()  # [slot number, requests, retries]
        self.requests = 0
        self.retries = 0
        self.armed = True

    def expire(self, slot: int, span: int) -> None:
        slots = self.slots
        while slots and slots[0][0] <= slot - span:
            _, requests, retries = slots.popleft()
            self.requests -= requests
            self.retries -= retries

    def add(self, slot: int, requests: int, retries: int) -> None:
        if not self.slots or self.slots[-1][0] != slot:
            self.slots.append([slot, 0, 0])
        last = self.slots[-1]
        last[1] += requests
        last[2] += retries
        self.requests += requests
        self.retries += retries


class RetryRateAlert:
    """A hook that calls ``on_alert`` when the retry rate over a sliding window is too high.

    Example::

        alert = RetryRateAlert(threshold=0.5, window=60.0, min_requests=20)
        session = smart_session(hooks=[alert])   # logs one WARNING per episode, in the
                                                 # session's lang ("zh" by default)

    The rate is retries per call (the same ``retry_rate`` as :class:`Stats`), counted per
    ``group_by`` key: ``"service"`` (default: the breaker's key, scheme+host or a preset's
    vendor), ``"operation"`` or ``"all"``.  Rules:

    - it fires when the rate reaches ``threshold`` and the window holds at least
      ``min_requests`` calls (a handful of calls proves nothing);
    - it then stays silent until it is re-armed: the rate falls below ``rearm_below``
      (default ``threshold / 2``) with at least ``min_requests`` calls in the window, or
      the window empties (no calls at all for a whole window: the episode is over).

    The window is kept in 10 slots of ``window / 10`` seconds, so it spans between 0.9 and
    1.0 × ``window``.  ``on_alert`` runs on the thread whose call crossed the threshold,
    outside the alert's lock; it should be quick (hand off to a queue for slow actions).
    Thread-safe.  At most ``max_keys`` keys are tracked; later ones share the key ``"*"``.
    """

    SLOTS = 10

    def __init__(
        self,
        threshold: float = 0.2,
        *,
        window: float = 60.0,
        min_requests: int = 20,
        rearm_below: Optional[float] = None,
        group_by: str = "service",
        on_alert: Optional[Callable[[RetryRateExceeded], None]] = None,
        lang: Optional[Literal["zh", "en"]] = None,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1000,
    ) -> None:
        self.threshold = _positive("threshold", threshold)
        self.window = _positive("window", window)
        if isinstance(min_requests, bool) or not isinstance(min_requests, int):
            raise TypeError(f"min_requests must be an int, got {min_requests!r}")
        if min_requests < 1:
            raise ValueError(f"min_requests must be >= 1, got {min_requests!r}")
        self.min_requests = min_requests
        if rearm_below is None:
            rearm_below = threshold / 2
        rearm = _number("rearm_below", rearm_below)
        if not 0 <= rearm < self.threshold:
            raise ValueError(
                f"rearm_below must be >= 0 and below threshold ({threshold!r}), "
                f"got {rearm_below!r}"
            )
        self.rearm_below = rearm
        if group_by not in _GROUPS:
            raise ValueError(
                f"group_by must be one of {', '.join(map(repr, _GROUPS))}, got {group_by!r}"
            )
        self.group_by = group_by
        if on_alert is not None and not callable(on_alert):
            raise TypeError(f"on_alert must be callable or None, got {on_alert!r}")
        #: What crossing calls; ``None``: :func:`log_alert` in :attr:`lang`.
        self.on_alert: Optional[Callable[[RetryRateExceeded], None]] = on_alert
        if lang not in (None, "zh", "en"):
            raise ValueError(f"lang must be 'zh', 'en' or None, got {lang!r}")
        #: The WARNING's language: given, or the ``lang`` of the first session (adapter,
        #: client, callable) the alert is installed on; "zh" (the default) until then.
        self.lang: Optional[Literal["zh", "en"]] = lang
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self._clock = clock
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be an int >= 1, got {max_keys!r}")
        self.max_keys = max_keys
        self._slot_width = self.window / self.SLOTS
        self._lock = forksafe.lock()
        self._windows: dict[str, _Window] = {}

    def __repr__(self) -> str:
        return (f"RetryRateAlert(threshold={self.threshold!r}, window={self.window!r}, "
                f"min_requests={self.min_requests!r}, rearm_below={self.rearm_below!r}, "
                f"group_by={self.group_by!r})")

    def __call__(self, event: AttemptEvent) -> None:
        """Count a call or a retry and fire or re-arm as the rules say (the hook entry)."""
        kind = event.kind
        if kind is EventKind.RETRY:
            requests, retries = 0, 1
        elif kind in (EventKind.START, EventKind.REJECTED) and event.attempt == 1:
            requests, retries = 1, 0  # a call starts (or is refused before it starts)
        else:
            return
        key = self._key(event)
        slot = math.floor(self._clock() / self._slot_width)
        fired: Optional[RetryRateExceeded] = None
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self.max_keys:
                    key = ALL_KEY
                    window = self._windows.get(key)
                if window is None:
                    window = self._windows[key] = _Window()
            window.expire(slot, self.SLOTS)
            if not window.armed and window.requests == 0:
                window.armed = True  # a whole quiet window: the episode is over
            window.add(slot, requests, retries)
            if window.requests >= self.min_requests:
                rate = window.retries / window.requests
                if window.armed and rate >= self.threshold:
                    window.armed = False
                    fired = RetryRateExceeded(key, self.group_by, rate, window.retries,
                                              window.requests, self.threshold, self.window)
                elif not window.armed and rate < self.rearm_below:
                    window.armed = True
        if fired is not None:
            if self.on_alert is None:
                log_alert(fired, self.lang or "zh")
            else:
                self.on_alert(fired)

    def installed(self, *, lang: Literal["zh", "en"], **collaborators: Any) -> None:
        """Told by a session the alert is installed on: its policy's ``lang`` (kept unless
        the alert was given one)."""
        if self.lang is None:
            self.lang = lang

    def _key(self, event: AttemptEvent) -> str:
        if self.group_by == "service":
            return event.service
        if self.group_by == "operation":
            return event.operation
        return ALL_KEY

    def firing(self) -> list[str]:
        """The keys that have fired and are not re-armed yet, sorted."""
        with self._lock:
            return sorted(k for k, w in self._windows.items() if not w.armed)

    def __getstate__(self) -> dict[str, Any]:
        # The lock cannot be pickled; windows are this process's traffic only.
        state = self.__dict__.copy()
        del state["_lock"]
        state["_windows"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = forksafe.lock()


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _positive(name: str, value: Any) -> float:
    number = _number(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number
