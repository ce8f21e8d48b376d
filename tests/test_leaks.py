"""No leaks: thousands of failing requests leave fds, pooled connections and memory as
they found them, and the deadline watchdog's queue stays bounded."""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from collections.abc import Iterator

import pytest
import requests

from requests_smartretry import SmartRetryAdapter, smart_session
from requests_smartretry import deadline as deadline_module
from requests_smartretry.faultserver import FaultServer, unused_port

from .conftest import watch

pytestmark = pytest.mark.slow

REQUESTS = 5000
# tracemalloc slows every allocation (server threads included) several-fold, so memory is
# traced over a window of the run; fds, connections and RSS are checked over all of it.
UNTRACED = 4000
TRACED_WARM_UP = 200
TIMEOUT_CUT = 0.03
# Most failures are fast (reset, 5xx, refused); one in a hundred is a real deadline cut.
MIX = ["/status/503", "/reset", "/status/500", "REFUSED", "/status/429?retry_after=0",
       "/status/502", "/reset", "/status/503", "/status/504", "/reset"] * 10
MIX[50] = "/hang?seconds=0.1"
MIX[55] = "/midreset?count=200"
MIX[-1] = "/status/503"  # measurements follow a keep-alive answer: one pooled connection


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _live_pooled_connections(adapter: SmartRetryAdapter) -> int:
    count = 0
    for key in list(adapter.poolmanager.pools.keys()):
        pool = adapter.poolmanager.pools[key]
        for conn in list(pool.pool.queue):  # type: ignore[union-attr]
            if conn is not None and getattr(conn, "sock", None) is not None:
                count += 1
    return count


def _settle(target: int, measure: object, limit: float = 5.0) -> int:
    """Hanging server handlers close their side a little later: wait for the count."""
    deadline = time.monotonic() + limit
    value = measure()  # type: ignore[operator]
    while value > target + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
        value = measure()  # type: ignore[operator]
    return int(value)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.stress
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_failing_requests_leak_nothing(server: FaultServer) -> None:
    """5,000 failing calls return fds and pooled connections to their level, memory flat."""
    session = smart_session(max_retries=1, timeout=2.0, backoff_base=0.0, backoff_max=0.0,
                            log=False)
    adapter = session.get_adapter("http://")
    assert isinstance(adapter, SmartRetryAdapter)
    refused = f"http://127.0.0.1:{unused_port()}/x"
    urls = [refused if path == "REFUSED" else server.url(path) for path in MIX]
    outcomes = {"response": 0, "error": 0}

    def run(count: int, offset: int) -> None:
        for n in range(count):
            url = urls[(offset + n) % len(urls)]
            try:
                # The hanging route is cut by the attempt deadline; the rest fail at once.
                response = session.get(url, timeout=TIMEOUT_CUT if "hang" in url else None)
                assert response.status_code >= 500 or response.status_code == 429
                outcomes["response"] += 1
            except requests.RequestException:
                outcomes["error"] += 1
            if n % 500 == 0:
                server.reset_counts()  # the in-process server's own records are not ours

    run(len(MIX), 0)  # warm-up: pools, caches, lazy imports
    gc.collect()
    fds_before = _open_fds()
    pooled_before = _live_pooled_connections(adapter)
    rss_before = _rss_bytes()
    run(UNTRACED - len(MIX), len(MIX))
    tracemalloc.start()
    try:
        run(TRACED_WARM_UP, UNTRACED)
        gc.collect()
        server.reset_counts()
        memory_before = tracemalloc.get_traced_memory()[0]
        traced = REQUESTS - UNTRACED - TRACED_WARM_UP
        run(traced, UNTRACED + TRACED_WARM_UP)
        gc.collect()
        server.reset_counts()
        memory_after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    fds_after = _settle(fds_before, _open_fds)
    rss_after = _rss_bytes()
    pooled_after = _live_pooled_connections(adapter)
    assert outcomes["response"] > 0 and outcomes["error"] > 0
    assert outcomes["response"] + outcomes["error"] == REQUESTS
    assert abs(fds_after - fds_before) <= 2, (fds_before, fds_after)
    assert abs(pooled_after - pooled_before) <= 2, (pooled_before, pooled_after)
    # A leak of 500 bytes per call would show as 400 KB over the traced calls.
    growth = memory_after - memory_before
    assert growth < 400_000, f"traced memory grew by {growth} bytes over {traced} calls"
    # RSS is noisy (allocator arenas, thread stacks): only a gross leak fails this.
    assert rss_after - rss_before < 64 * 1024 * 1024, (rss_before, rss_after)
    session.close()
    assert _live_pooled_connections(adapter) == 0
    print(f"\nleaks: {REQUESTS} calls {outcomes}; fds {fds_before}->{fds_after}, "
          f"pooled {pooled_before}->{pooled_after}, traced memory over {traced} calls "
          f"{growth:+d} bytes, RSS {rss_before // 1024}->{rss_after // 1024} KiB")


def test_watchdog_queue_stays_bounded_for_long_deadlines() -> None:
    """Finished attempts with far deadlines are purged, so the watchdog's heap cannot grow
    without bound in a long-running process."""
    watchdog = deadline_module._watchdog
    for _ in range(20_000):
        with watch(3600.0):
            pass
    assert watchdog.armed() == []


def test_watchdog_still_cuts_after_purging() -> None:
    """After many finished watches were purged, a new deadline still fires."""
    for _ in range(5_000):
        with watch(3600.0):
            pass
    with watch(0.05) as item:
        assert item is not None
        limit = time.monotonic() + 10.0
        while not item.fired and time.monotonic() < limit:
            time.sleep(0.01)
    assert item.fired
