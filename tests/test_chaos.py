"""Chaos: 32 threads x 300 requests through one session against a misbehaving server."""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional, Union

import pytest
import requests

from requests_smartretry import (
    AttemptEvent,
    EventKind,
    SmartRetryAdapter,
    Verdict,
    attempt_history,
    smart_session,
)
from requests_smartretry.faultserver import FaultServer, unused_port

pytestmark = pytest.mark.slow

THREADS = 32
CALLS_PER_THREAD = 300
SEED = 20261127
TIMEOUT = 0.5
BACKOFF_MAX = 0.05
# Real threads on a loaded 2-core machine: a call may be descheduled for a while.
SLACK = 5.0


@dataclass(frozen=True)
class Scenario:
    """One kind of call: what the server does on each attempt, and what must come of it."""

    name: str
    method: str
    steps: str  # FaultServer /seq steps ("" = a refused connection)
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    attempts: int = 1  # expected when no attempt timed out
    status: Optional[int] = None  # expected status; None = an exception is expected
    weight: int = 10


SCENARIOS = [
    Scenario("ok", "GET", "ok", status=200, weight=30),
    Scenario("503 then ok", "GET", "503,ok", attempts=2, status=200),
    Scenario("503 always", "GET", "503", attempts=2, status=503),
    Scenario("500 then ok", "GET", "500,ok", attempts=2, status=200),
    Scenario("404", "GET", "404", status=404),
    Scenario("400", "GET", "400", status=400, weight=5),
    Scenario("429 Retry-After 0 then ok", "GET", "429,ok", "retry_after=0", attempts=2,
             status=200),
    Scenario("429 Retry-After huge", "GET", "429", "retry_after=99999999", status=429),
    Scenario("503 Retry-After above cap", "GET", "503", "retry_after=1", status=503),
    Scenario("429 Retry-After garbage", "GET", "429,ok", "retry_after=soon", attempts=2,
             status=200, weight=5),
    Scenario("reset then ok", "GET", "reset,ok", attempts=2, status=200),
    Scenario("reset always", "GET", "reset", attempts=2),
    Scenario("midreset then ok", "GET", "midreset,ok", "count=2000", attempts=2, status=200,
             weight=5),
    Scenario("hang then ok", "GET", "hang,ok", "seconds=1.5", attempts=2, status=200,
             weight=2),
    Scenario("slow drip", "GET", "drip", "interval=0.25&count=8", attempts=2, weight=1),
    Scenario("fast drip", "GET", "drip", "interval=0.001&count=3", status=200, weight=5),
    Scenario("refused", "GET", "", attempts=2, weight=8),
    Scenario("POST reset is not repeated", "POST", "reset", weight=4),
    Scenario("POST 503 then ok", "POST", "503,ok", attempts=2, status=200, weight=4),
    Scenario("POST 500 is not repeated", "POST", "500", status=500, weight=4),
    Scenario("POST with Idempotency-Key", "POST", "reset,ok",
             headers=(("Idempotency-Key", "k"),), attempts=2, status=200, weight=4),
]


@dataclass
class CallResult:
    """What one call returned or raised, and how long it took."""

    scenario: Scenario
    tag: str
    outcome: Union[requests.Response, BaseException]
    seconds: float


class EventLog:
    """A thread-safe hook that keeps every event, grouped by call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_call: dict[int, list[AttemptEvent]] = collections.defaultdict(list)
        self.kinds: collections.Counter[EventKind] = collections.Counter()

    def __call__(self, event: AttemptEvent) -> None:
        with self._lock:
            self.by_call[event.call_id].append(event)
            self.kinds[event.kind] += 1


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


def _worker(session: requests.Session, server_url: str, refused_url: str, thread: int,
            results: list[Optional[CallResult]], crashes: list[BaseException]) -> None:
    rng = random.Random(SEED + thread)
    weights = [s.weight for s in SCENARIOS]
    try:
        for index in range(CALLS_PER_THREAD):
            scenario = rng.choices(SCENARIOS, weights)[0]
            tag = f"t{thread}-{index}"
            if scenario.steps:
                query = f"steps={scenario.steps}" + (f"&{scenario.query}" if scenario.query
                                                     else "")
                url = f"{server_url}/seq/{tag}?{query}"
            else:
                url = f"{refused_url}/seq/{tag}"
            started = time.monotonic()
            outcome: Union[requests.Response, BaseException]
            try:
                outcome = session.request(scenario.method, url, data=b"{}" if
                                          scenario.method == "POST" else None,
                                          headers=dict(scenario.headers))
                outcome.close()
            except requests.RequestException as exc:
                outcome = exc
            slot = thread * CALLS_PER_THREAD + index
            assert results[slot] is None, "a call ended twice"
            results[slot] = CallResult(scenario, tag, outcome, time.monotonic() - started)
    except BaseException as exc:  # anything else is a bug: surfaced by the main thread
        crashes.append(exc)


def _history(outcome: Union[requests.Response, BaseException]) -> tuple[AttemptEvent, ...]:
    if isinstance(outcome, BaseException):
        return attempt_history(outcome)
    return tuple(getattr(outcome, "retry_history", ()))


def _wait_for_server(server: FaultServer, expected: int, limit: float = 10.0) -> int:
    """Server threads may still be reading the last requests: wait until the count settles."""
    deadline = time.monotonic() + limit
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        hits = server.hits()
        if hits == expected:
            return hits
        if hits != last:
            last, stable_since = hits, time.monotonic()
        elif time.monotonic() - stable_since > 1.0:
            return hits
        time.sleep(0.05)
    return server.hits()


@pytest.mark.stress
def test_chaos_loses_nothing_and_respects_the_policy(server: FaultServer) -> None:
    """Under concurrent random faults every call ends once, within its attempts and time."""
    events = EventLog()
    # budget=None: a retry budget would (rightly) stop retrying this much failure; the
    # invariants here are about the retry rule itself.
    session = smart_session(max_retries=1, timeout=TIMEOUT, backoff_base=0.01,
                            backoff_max=BACKOFF_MAX, log=False, hooks=[events],
                            pool_maxsize=THREADS, budget=None)
    adapter = session.get_adapter("http://")
    assert isinstance(adapter, SmartRetryAdapter)
    server.reset_counts()
    refused_url = f"http://127.0.0.1:{unused_port()}"
    results: list[Optional[CallResult]] = [None] * (THREADS * CALLS_PER_THREAD)
    crashes: list[BaseException] = []
    threads = [threading.Thread(target=_worker, args=(session, server.url(""), refused_url, n,
                                                      results, crashes), daemon=True)
               for n in range(THREADS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    wall = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), "a call hung"
    assert crashes == []
    session.close()

    finished = [r for r in results if r is not None]
    assert len(finished) == THREADS * CALLS_PER_THREAD, "a call never ended"

    # Every call's own history is exactly what the hook saw for that call id.
    per_call: dict[str, tuple[AttemptEvent, ...]] = {}
    timed_out_attempts: dict[str, int] = {}
    for result in finished:
        history = _history(result.outcome)
        assert history, f"{result.tag}: no attempt history"
        call_ids = {e.call_id for e in history}
        assert len(call_ids) == 1
        assert tuple(events.by_call[call_ids.pop()]) == history
        per_call[result.tag] = history
        timed_out_attempts[result.tag] = sum(
            1 for e in history if e.kind is EventKind.FAILURE and e.verdict is Verdict.TIMEOUT)

    # Each call ends exactly once, on SUCCESS or GIVE_UP, after at most two attempts.
    for result in finished:
        history = per_call[result.tag]
        starts = [e for e in history if e.kind is EventKind.START]
        endings = [e for e in history if e.kind in (EventKind.SUCCESS, EventKind.GIVE_UP)]
        assert len(endings) == 1 and history[-1] is endings[0], result.tag
        assert 1 <= len(starts) <= 2, f"{result.tag}: {len(starts)} attempts"
        waits = sum(e.wait or 0.0 for e in history if e.kind is EventKind.RETRY)
        assert waits <= BACKOFF_MAX * (len(starts) - 1) + 1e-9
        bound = len(starts) * TIMEOUT + waits + SLACK
        assert result.seconds <= bound, f"{result.tag} took {result.seconds:.2f}s > {bound}"
        if timed_out_attempts[result.tag] == 0:
            expected = result.scenario
            assert len(starts) == expected.attempts, (result.tag, expected.name, history)
            if expected.status is None:
                assert isinstance(result.outcome, requests.RequestException), result.tag
            else:
                assert isinstance(result.outcome, requests.Response), (result.tag, result)
                assert result.outcome.status_code == expected.status, result.tag

    # The watchdog cuts only its own attempt: a deadline never fires early, and a call whose
    # server never breaks a connection never sees a broken one (a cut meant for another
    # thread's attempt would show up here as an early timeout or a reset).
    for result in finished:
        history = per_call[result.tag]
        for event in history:
            if event.kind is not EventKind.FAILURE:
                continue
            if event.verdict is Verdict.TIMEOUT:
                assert event.elapsed is not None and event.elapsed >= TIMEOUT - 0.02, (
                    result.tag, event)
            breaks = not result.scenario.steps or any(
                step in result.scenario.steps for step in ("reset", "hang"))
            if not breaks:
                assert event.verdict is not Verdict.NETWORK, (result.tag, event)

    # Server-side attempts = client-side attempts, call by call.  An attempt that timed out
    # may have been cut before its request left (connecting on a starved machine).
    client_starts = collections.Counter(
        {tag: sum(1 for e in h if e.kind is EventKind.START) for tag, h in per_call.items()})
    to_server = sum(n for tag, n in client_starts.items()
                    if per_call[tag] and "127.0.0.1:" + str(server.port) in (
                        per_call[tag][0].url or ""))
    server_total = _wait_for_server(server, to_server)
    server_counts = collections.Counter(r.route.rsplit("/", 1)[-1] for r in server.received())
    for result in finished:
        sent = server_counts.get(result.tag, 0)
        if not result.scenario.steps:
            assert sent == 0
            continue
        made = client_starts[result.tag]
        assert made - timed_out_attempts[result.tag] <= sent <= made, (result.tag, sent, made)
    lost = to_server - server_total
    assert 0 <= lost <= sum(timed_out_attempts.values())

    # The event totals add up (what a statistics consumer would report).
    calls = len(finished)
    assert events.kinds[EventKind.SUCCESS] + events.kinds[EventKind.GIVE_UP] == calls
    assert events.kinds[EventKind.START] == sum(client_starts.values())
    assert events.kinds[EventKind.RETRY] == events.kinds[EventKind.START] - calls
    assert events.kinds[EventKind.FAILURE] == (
        events.kinds[EventKind.START] - events.kinds[EventKind.SUCCESS])
    # ...and the adapter's own statistics report exactly those totals.
    assert adapter.stats is not None
    total = adapter.stats.snapshot()["__total__"]
    assert total["calls"] == calls
    assert total["attempts"] == events.kinds[EventKind.START]
    assert total["retries"] == events.kinds[EventKind.RETRY]
    assert total["calls_succeeded"] == events.kinds[EventKind.SUCCESS]
    assert total["attempts_failed"] == events.kinds[EventKind.FAILURE]
    assert total["calls_failed"] == events.kinds[EventKind.GIVE_UP]
    assert total["calls_in_flight"] == 0
    print(f"\nchaos: {calls} calls, {events.kinds[EventKind.START]} attempts "
          f"({to_server} to the server, {server_total} received), "
          f"{events.kinds[EventKind.RETRY]} retries, "
          f"{sum(timed_out_attempts.values())} timed-out attempts, wall {wall:.1f}s")
