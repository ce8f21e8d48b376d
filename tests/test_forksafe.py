"""A child forked while the parent's threads hold the library's locks (gunicorn
``--preload``, ``multiprocessing`` with fork) can still make calls: every long-lived lock
starts over, released, in the child."""

from __future__ import annotations

import os

import pytest

from requests_smartretry import (
    CircuitBreaker,
    RetryBudget,
    Stats,
    Throttle,
    forksafe,
    overrides,
    smart_session,
    testing,
    urllib3_retry,
)
from requests_smartretry.faultserver import FaultServer

from .conftest import fork_while_held

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def test_calls_work_in_a_child_forked_while_threads_held_every_lock(
        server: FaultServer) -> None:
    """Breaker, budget, statistics, throttle and their state store, and the module-level
    locks were all held by another thread at the fork: the child's calls (a success, a
    retried 503, a breaker command, a snapshot) still complete."""
    breaker = CircuitBreaker(failure_threshold=5)
    budget = RetryBudget()
    stats = Stats()
    throttle = Throttle(rate=1000, max_in_flight=8)
    session = smart_session(breaker=breaker, budget=budget, stats=stats, throttle=throttle)
    with testing.fast_retries():
        assert session.get(server.url("/ok"), timeout=5).status_code == 200  # warm every path
    service = next(iter(stats.snapshot()))
    mine = [lock for lock in list(forksafe._locks)]
    assert len(mine) >= 8  # the objects' and modules' locks are all forksafe locks
    held = [urllib3_retry._classes_lock, overrides._interned_lock, testing._lock,
            testing._tracked_lock, breaker._lock, budget._lock, stats._lock]
    held += [lock for lock in mine if lock not in held]

    def child() -> int:
        with testing.fast_retries():
            ok = session.get(server.url("/ok"), timeout=5).status_code == 200
            retried = session.get(server.url("/status/503"), timeout=5).status_code == 503
        breaker.force_open(service)
        breaker.reset(service)
        budget.tokens(service)
        counted = stats.snapshot()[service]
        return 0 if ok and retried and counted else 4

    assert fork_while_held(held, child) == 0


def test_a_lock_made_by_forksafe_is_a_plain_lock_in_the_parent() -> None:
    """Nothing changes in the process that does not fork: the lock is held and released
    as any ``threading.Lock``; a child sees it released."""
    lock = forksafe.lock()
    assert lock.acquire(blocking=False)
    assert not lock.acquire(blocking=False)

    def child() -> int:
        return 0 if lock.acquire(timeout=5.0) else 5

    lock.release()
    assert fork_while_held([lock], child) == 0
