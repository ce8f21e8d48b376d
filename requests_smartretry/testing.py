"""A switch for users' own test suites: no real backoff sleeping while it is on.

Example::

    import requests_smartretry.testing as srt

    def test_my_service_handles_outages():
        with srt.fast_retries():     # retries happen, waits do not
            ...

Like stamina's ``set_testing``: a process-wide flag, meant for tests only.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Callable, Optional

__all__ = ["fast_retries", "is_testing", "set_testing", "sleeper"]

_lock = threading.Lock()
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


def testing_attempts() -> Optional[int]:
    """The attempts cap of test mode, if any."""
    return _attempts if _testing else None


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
