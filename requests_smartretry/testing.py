"""Switches for users' own test suites: retries without waiting, and fresh state per test.

Example::

    import requests_smartretry.testing as srt

    def test_my_service_handles_outages():
        with srt.fast_retries():     # retries happen, waits do not, the budget never says no
            ...
        srt.reset_state()            # breakers, budgets and statistics start afresh

Like stamina's ``set_testing``: a process-wide flag, meant for tests only.  While it is on,
backoff waits are skipped and the retry budget grants every retry (spending nothing), so a
suite's results do not depend on the order its tests run in.  With pytest, request the
``smartretry`` fixture (``requests_smartretry.pytest_plugin``, registered automatically)
to get both for one test.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from typing import Callable, Optional, Protocol

from . import forksafe

__all__ = ["fast_retries", "is_testing", "reset_state", "set_testing", "sleeper", "track"]

_lock = forksafe.lock()
_testing = False
_attempts: Optional[int] = None


def set_testing(on: bool, *, attempts: Optional[int] = None) -> None:
    """Turn test mode on (waits are skipped) or off.  ``attempts`` caps the attempts of
    every call while on (``None`` keeps each policy's)."""
    global _testing, _attempts
    if attempts is not None and (isinstance(attempts, bool) or attempts < 1):
        raise ValueError(f"attempts must be >= 1 or None, got {attempts!r}")
    with _lock:
        _testing = bool(on)
        _attempts = attempts if on else None


def is_testing() -> bool:
    """Whether test mode is on."""
    return _testing


# Not named ``testing``: pytest would collect a ``test*`` function imported into a test module.
@contextlib.contextmanager
def fast_retries(*, attempts: Optional[int] = None) -> Iterator[None]:
    """Test mode for the duration of a ``with`` block (restores the previous setting)."""
    previous = (_testing, _attempts)
    set_testing(True, attempts=attempts)
    try:
        yield
    finally:
        set_testing(previous[0], attempts=previous[1])


def sleeper(sleep: Callable[[float], None] = time.sleep) -> Callable[[float], None]:
    """``sleep``, except that it returns at once while test mode is on."""

    def wait(seconds: float) -> None:
        if not _testing and seconds > 0:
            sleep(seconds)

    return wait


# -- fresh state between tests --------------------------------------------------------------


class Resettable(Protocol):
    """What :func:`track` keeps: an object whose in-process state can be forgotten."""

    def _reset_state(self) -> None: ...


# Every breaker, budget and Stats built in this process, weakly (tracking keeps none alive).
_tracked: weakref.WeakSet[Resettable] = weakref.WeakSet()
_tracked_lock = forksafe.lock()


def track(obj: Resettable) -> None:
    """Register ``obj`` for :func:`reset_state` (the library's breakers, budgets and
    statistics call this when they are built)."""
    with _tracked_lock:
        _tracked.add(obj)


def reset_state() -> None:
    """Forget what this process's breakers, budgets and statistics have seen: every breaker
    closed, every budget full, every ``Stats`` empty (including those inside adapters and
    sessions built before the call).

    For tests, between requests (not while some are in flight).  State kept in Redis
    (``state=``) is shared with other processes and is not touched: give each test its own
    ``RedisStateStore(prefix=...)`` instead.
    """
    with _tracked_lock:
        live = list(_tracked)
    for obj in live:
        obj._reset_state()
