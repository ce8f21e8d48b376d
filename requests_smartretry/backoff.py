"""Backoff delays and ``Retry-After`` parsing: pure functions, no clock of their own."""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import re
from typing import Optional, Protocol

__all__ = ["FAR_FUTURE", "JITTER_MODES", "backoff_delay", "parse_retry_after",
           "parse_retry_after_ms"]

JITTER_MODES = ("full", "equal", "decorrelated")

_DELTA_SECONDS = re.compile(r"\A\s*(\d+)(?:\.\d+)?\s*\Z")
_MILLISECONDS = re.compile(r"\A\s*(\d{1,18}(?:\.\d*)?)\s*\Z")
# delta-seconds has no upper limit (RFC 9110): longer numbers mean "practically never" and
# are read as this many seconds (about 31 million years), not ignored as malformed.
FAR_FUTURE = 1e15
_MAX_DIGITS = 15


class _Random(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


class _BackoffSettings(Protocol):
    @property
    def backoff_base(self) -> float: ...
    @property
    def backoff_multiplier(self) -> float: ...
    @property
    def backoff_max(self) -> float: ...
    @property
    def jitter(self) -> Optional[str]: ...


def backoff_delay(
    settings: _BackoffSettings,
    retry_number: int,
    *,
    previous: Optional[float] = None,
    rng: _Random = random,
) -> float:
    """Seconds to wait before retry ``retry_number`` (1-based), never above the cap.

    Without jitter: ``base * multiplier ** (n - 1)`` capped at ``backoff_max``: 1 s, 2 s,
    4 s, 5 s, 5 s… with the defaults.  ``"full"`` draws from [0, d], ``"equal"`` from
    [d/2, d], ``"decorrelated"`` from [base, 3 × previous] (AWS's schemes).
    """
    if retry_number < 1:
        raise ValueError(f"retry_number must be >= 1, got {retry_number!r}")
    cap = settings.backoff_max
    base = settings.backoff_base
    try:
        exponential = base * settings.backoff_multiplier ** (retry_number - 1)
    except OverflowError:
        exponential = math.inf if base > 0 else 0.0  # 0 × anything is still no wait
    delay = min(cap, exponential)
    mode = settings.jitter
    if mode == "full":
        delay = rng.uniform(0.0, delay)
    elif mode == "equal":
        delay = delay / 2 + rng.uniform(0.0, delay / 2)
    elif mode == "decorrelated":
        upper = max(base, (previous if previous is not None else base) * 3)
        delay = rng.uniform(base, min(cap, upper)) if base < cap else cap
    return max(0.0, min(cap, delay))


def parse_retry_after(value: object, *, now: float) -> Optional[float]:
    """Seconds asked by a ``Retry-After`` header (delta-seconds or HTTP-date), or ``None``
    when it is absent or malformed.  A date in the past means 0.  ``now`` is a Unix time.
    """
    if not isinstance(value, str):
        return None
    match = _DELTA_SECONDS.match(value)
    if match:
        digits = match.group(1).lstrip("0") or "0"
        return FAR_FUTURE if len(digits) > _MAX_DIGITS else min(float(int(digits)), FAR_FUTURE)
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 7231 dates are GMT; treat naive as UTC
        when = when.replace(tzinfo=datetime.timezone.utc)
    try:
        delta = when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None
    if not math.isfinite(delta):
        return None
    return max(0.0, delta)


def parse_retry_after_ms(value: object) -> Optional[float]:
    """Seconds asked by a ``Retry-After-Ms`` header (a number of milliseconds, as OpenAI's
    and Anthropic's APIs send it), or ``None`` when it is absent or malformed."""
    if not isinstance(value, str):
        return None
    match = _MILLISECONDS.match(value)
    if match is None:
        return None
    return min(float(match.group(1)) / 1000.0, FAR_FUTURE)
