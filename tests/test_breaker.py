"""CircuitBreaker: every state transition (injected clock, memory and Redis stores), the
half-open probe bound under 32 threads, and the behaviour against a real server that goes
down and comes back."""

from __future__ import annotations

import pickle
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from requests_smartretry import (
    AttemptEvent,
    CircuitBreaker,
    CircuitOpenError,
    EventKind,
    MemoryStateStore,
    SmartRetryAdapter,
    Verdict,
    adapter_of,
    attempt_history,
    breaker_of,
    smart_session,
)
from requests_smartretry.faultserver import FaultServer
from requests_smartretry.redis_state import RedisStateStore
from tests.conftest import FakeClock
from tests.redis_server import (
    SHARING_BUDGET,
    RedisServer,
    client,
    force_then_report,
    seconds_until_seen,
    shared_store,
)

SVC = "https://api.example.com"



@dataclass(frozen=True)
class WeightedEvent(AttemptEvent):
    """An event carrying the optional failure ``weight`` another consumer may add."""

    weight: float = 1.0


def event(kind: EventKind, verdict: Verdict, service: str = SVC, weight: float = 1.0) -> Any:
    return WeightedEvent(kind=kind, operation="op", service=service, attempt=1,
                         max_attempts=1, call_id=1, verdict=verdict, weight=weight)


def attempt(breaker: CircuitBreaker, verdict: Verdict = Verdict.SERVER_ERROR,
            service: str = SVC, weight: float = 1.0) -> None:
    """One attempt as the engine runs it: admission, then its result with its ticket."""
    ticket = breaker.before_attempt(service)
    failed = verdict.retryable
    breaker.after_attempt(service, ticket, failed=failed, weight=weight if failed else 1.0)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server for this module (skipped without the binary, unless CI=true)."""
    with RedisServer() as server:
        yield server.url


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> Any:
    """Each state-machine test runs on the in-process store and on the Redis store (with
    the test's clock, so the Lua transcription is held to the same transitions)."""
    if request.param == "memory":
        return MemoryStateStore()
    url = request.getfixturevalue("redis_url")
    return RedisStateStore(url, prefix=f"test-{uuid.uuid4().hex}", server_time=False,
                           time_budget=SHARING_BUDGET)


@pytest.fixture
def clock() -> FakeClock:
    """The injected clock."""
    return FakeClock()


def make(store: Any, clock: FakeClock, **options: Any) -> CircuitBreaker:
    options.setdefault("failure_threshold", 3)
    options.setdefault("recovery_timeout", 10.0)
    return CircuitBreaker(store=store, clock=clock, **options)


# -- transitions ------------------------------------------------------------------------


def test_closed_opens_after_threshold_consecutive_failures(store: Any, clock: FakeClock) -> None:
    """The breaker stays closed below the threshold and opens on the threshold-th failure."""
    breaker = make(store, clock)
    attempt(breaker)
    attempt(breaker)
    assert breaker.state(SVC) == "closed"
    assert breaker.status(SVC).consecutive_failures == 2
    attempt(breaker)
    assert breaker.state(SVC) == "open"
    with pytest.raises(CircuitOpenError) as caught:
        breaker.before_attempt(SVC)
    assert caught.value.service == SVC
    assert caught.value.retry_in == pytest.approx(10.0)
    assert isinstance(caught.value, requests.ConnectionError)


def test_success_resets_the_consecutive_count(store: Any, clock: FakeClock) -> None:
    """Failures separated by a success are not consecutive and do not open the breaker."""
    breaker = make(store, clock)
    for _ in range(5):
        attempt(breaker)
        attempt(breaker)
        attempt(breaker, Verdict.SUCCESS)
    assert breaker.state(SVC) == "closed"


def test_client_and_business_errors_never_trip(store: Any, clock: FakeClock) -> None:
    """4xx, business and permanent verdicts mean the service answered: no trip."""
    breaker = make(store, clock)
    for verdict in [Verdict.CLIENT_ERROR, Verdict.BUSINESS, Verdict.PERMANENT] * 5:
        attempt(breaker, verdict)
    assert breaker.state(SVC) == "closed"
    assert breaker.status(SVC).consecutive_failures == 0


def test_every_retryable_verdict_counts_as_failure(store: Any, clock: FakeClock) -> None:
    """Network errors, timeouts, 5xx and 429 all feed the breaker."""
    breaker = make(store, clock, failure_threshold=4)
    for verdict in (Verdict.NETWORK, Verdict.TIMEOUT, Verdict.SERVER_ERROR, Verdict.RATE_LIMIT):
        attempt(breaker, verdict)
    assert breaker.state(SVC) == "open"


def test_weighted_failures_feed_the_breaker_harder(store: Any, clock: FakeClock) -> None:
    """A failure event with ``weight=2`` counts as two failures."""
    breaker = make(store, clock, failure_threshold=4)
    attempt(breaker, weight=2.0)
    assert breaker.status(SVC).consecutive_failures == 2
    attempt(breaker, weight=2.0)
    assert breaker.state(SVC) == "open"


def test_services_are_independent(store: Any, clock: FakeClock) -> None:
    """An open breaker for one service key leaves the others closed."""
    breaker = make(store, clock)
    for _ in range(3):
        attempt(breaker)
    breaker.before_attempt("https://other.example.com")
    assert breaker.state("https://other.example.com") == "closed"


def test_open_becomes_half_open_after_recovery_timeout(store: Any, clock: FakeClock) -> None:
    """The refusal's ``retry_in`` counts down; at the recovery timeout a probe goes out."""
    breaker = make(store, clock)
    for _ in range(3):
        attempt(breaker)
    clock.advance(7.5)
    with pytest.raises(CircuitOpenError) as caught:
        breaker.before_attempt(SVC)
    assert caught.value.retry_in == pytest.approx(2.5)
    clock.advance(2.5)
    assert breaker.state(SVC) == "half_open"
    breaker.before_attempt(SVC)  # the probe


def test_probe_success_closes(store: Any, clock: FakeClock) -> None:
    """When every probe of the half-open round succeeds, the breaker closes afresh."""
    breaker = make(store, clock, half_open_probes=2)
    for _ in range(3):
        attempt(breaker)
    clock.advance(10)
    attempt(breaker, Verdict.SUCCESS)
    assert breaker.state(SVC) == "half_open"
    attempt(breaker, Verdict.SUCCESS)
    assert breaker.state(SVC) == "closed"
    status = breaker.status(SVC)
    assert (status.consecutive_failures, status.window_requests) == (0, 0)


def test_probe_failure_reopens(store: Any, clock: FakeClock) -> None:
    """A failed probe reopens the breaker for a full recovery timeout."""
    breaker = make(store, clock, half_open_probes=2)
    for _ in range(3):
        attempt(breaker)
    clock.advance(10)
    attempt(breaker, Verdict.SUCCESS)
    attempt(breaker, Verdict.TIMEOUT)
    assert breaker.state(SVC) == "open"
    with pytest.raises(CircuitOpenError) as caught:
        breaker.before_attempt(SVC)
    assert caught.value.retry_in == pytest.approx(10.0)


def test_half_open_admits_only_the_configured_probes(store: Any, clock: FakeClock) -> None:
    """While its probes are in flight, a half-open breaker refuses everything else."""
    breaker = make(store, clock, half_open_probes=2)
    for _ in range(3):
        attempt(breaker)
    clock.advance(10)
    breaker.before_attempt(SVC)
    breaker.before_attempt(SVC)
    clock.advance(4)
    with pytest.raises(CircuitOpenError) as caught:
        breaker.before_attempt(SVC)
    assert caught.value.retry_in == pytest.approx(6.0)


def test_lost_probe_starts_a_new_round(store: Any, clock: FakeClock) -> None:
    """A probe that never reports (its worker died) blocks the service for at most one
    recovery timeout; then a new probe goes out."""
    breaker = make(store, clock)
    for _ in range(3):
        attempt(breaker)
    clock.advance(10)
    breaker.before_attempt(SVC)  # this probe's result never arrives
    with pytest.raises(CircuitOpenError):
        breaker.before_attempt(SVC)
    clock.advance(10)
    attempt(breaker, Verdict.SUCCESS)
    assert breaker.state(SVC) == "closed"


def test_stragglers_do_not_decide_the_half_open_round(store: Any, clock: FakeClock) -> None:
    """A result of an attempt admitted before the breaker opened is not taken for the
    probe's."""
    breaker = make(store, clock)
    breaker.before_attempt(SVC)  # a slow attempt, admitted while closed
    for _ in range(3):
        attempt(breaker)
    clock.advance(10)
    # The slow attempt finally succeeds: the breaker has not seen a probe yet.
    breaker(event(EventKind.SUCCESS, Verdict.SUCCESS))
    assert breaker.state(SVC) == "half_open"
    attempt(breaker, Verdict.SUCCESS)
    assert breaker.state(SVC) == "closed"


def test_failure_rate_over_window_opens(store: Any, clock: FakeClock) -> None:
    """With the rate rule, the breaker opens when failures reach the share of a window
    that holds at least the minimum requests, and not before."""
    breaker = make(store, clock, failure_threshold=None, failure_rate=0.5, window=60.0,
                   minimum_requests=10)
    for _ in range(4):
        attempt(breaker, Verdict.SUCCESS)
        attempt(breaker)
    assert breaker.state(SVC) == "closed"  # 4 of 8: under the minimum
    attempt(breaker, Verdict.SUCCESS)
    attempt(breaker)
    assert breaker.state(SVC) == "open"  # 5 of 10
    status = breaker.status(SVC)
    assert status.window_requests == 0  # a fresh window after the transition


def test_failures_leave_the_sliding_window(store: Any, clock: FakeClock) -> None:
    """Failures older than the window no longer count toward the rate."""
    breaker = make(store, clock, failure_threshold=None, failure_rate=0.5, window=60.0,
                   minimum_requests=10)
    for _ in range(9):
        attempt(breaker)
    assert breaker.status(SVC).window_failures == 9
    clock.advance(61)
    assert breaker.status(SVC).window_failures == 0
    for _ in range(9):
        attempt(breaker, Verdict.SUCCESS)
    attempt(breaker)
    assert breaker.state(SVC) == "closed"  # 1 of 10 in the window


def test_both_rules_together(store: Any, clock: FakeClock) -> None:
    """With both rules set, whichever is met first opens the breaker."""
    breaker = make(store, clock, failure_threshold=3, failure_rate=0.3, minimum_requests=10)
    for _ in range(7):
        attempt(breaker, Verdict.SUCCESS)
    attempt(breaker)
    attempt(breaker)
    attempt(breaker, Verdict.SUCCESS)
    assert breaker.state(SVC) == "closed"
    attempt(breaker)  # 3 of 11 over 0.3? no: 3/11 = 0.27; consecutive 1
    assert breaker.state(SVC) == "closed"
    attempt(breaker)  # 4 of 12 = 0.33: the rate rule opens it
    assert breaker.state(SVC) == "open"


def test_half_open_admits_exactly_the_probes_under_32_threads(
    store: Any, clock: FakeClock
) -> None:
    """32 threads racing into a half-open breaker: exactly ``half_open_probes`` get in."""
    breaker = make(store, clock, half_open_probes=3)
    for _ in range(3):
        attempt(breaker)
    clock.advance(10)
    barrier = threading.Barrier(32)
    admitted: list[bool] = []
    lock = threading.Lock()

    def race() -> None:
        barrier.wait()
        try:
            breaker.before_attempt(SVC)
            ok = True
        except CircuitOpenError:
            ok = False
        with lock:
            admitted.append(ok)

    threads = [threading.Thread(target=race) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(admitted) == 32
    assert admitted.count(True) == 3


# -- configuration, pickling ---------------------------------------------------------------


@pytest.mark.parametrize(("options", "named"), [
    ({"failure_threshold": 0}, "failure_threshold"),
    ({"failure_threshold": "5"}, "failure_threshold"),
    ({"recovery_timeout": -1}, "recovery_timeout"),
    ({"recovery_timeout": float("nan")}, "recovery_timeout"),
    ({"half_open_probes": 0}, "half_open_probes"),
    ({"failure_rate": 1.5}, "failure_rate"),
    ({"failure_rate": 0.5, "window": 0}, "window"),
    ({"minimum_requests": 0}, "minimum_requests"),
    ({"failure_threshold": None}, "failure_rate"),
])
def test_bad_configuration_names_the_parameter(options: dict[str, Any], named: str) -> None:
    """A bad setting is refused at construction with its name in the message."""
    with pytest.raises(ValueError, match=named):
        CircuitBreaker(**options)


def test_bad_store_and_clock_are_refused() -> None:
    """A store or clock of the wrong kind is refused at construction."""
    with pytest.raises(TypeError, match="store"):
        CircuitBreaker(store="memory")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock"):
        CircuitBreaker(clock=5.0)  # type: ignore[arg-type]


def test_repr_shows_the_rules() -> None:
    """The repr says which rules open the breaker."""
    text = repr(CircuitBreaker(failure_threshold=5, failure_rate=0.5, recovery_timeout=30))
    assert "failure_threshold=5" in text and "failure_rate=0.5" in text
    assert "recovery_timeout=30" in text


def test_pickled_breaker_keeps_its_state_and_works(clock: FakeClock) -> None:
    """A pickled breaker comes back with its state and keeps working."""
    breaker = make(MemoryStateStore(), clock)
    for _ in range(3):
        attempt(breaker)
    copy = pickle.loads(pickle.dumps(breaker))
    assert copy.state(SVC) == "open"
    copy._clock = FakeClock(clock.now + 10)
    attempt(copy, Verdict.SUCCESS)
    assert copy.state(SVC) == "closed"


def test_pickled_adapter_keeps_breaker_and_budget() -> None:
    """An adapter pickles with its breaker and budget (requests' ``__attrs__``)."""
    adapter = SmartRetryAdapter(breaker=CircuitBreaker(failure_threshold=2), max_retries=2)
    copy = pickle.loads(pickle.dumps(adapter))
    assert isinstance(copy.breaker, CircuitBreaker)
    assert copy.breaker.settings.failure_threshold == 2
    assert copy.budget is not None and copy.policy.max_retries == 2


# -- against a real server that goes down -----------------------------------------------


class Switchable:
    """A FaultServer route that answers 503 while ``down`` and 200 otherwise; a request
    may be held until ``release`` is set."""

    def __init__(self) -> None:
        self.down = True
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, server: FaultServer, sock: Any, request: Any) -> None:
        self.entered.set()
        self.release.wait(30)
        if self.down:
            server.send(sock, 503, b"down")
        else:
            server.send(sock, 200, b"up")


@pytest.fixture
def flaky() -> Iterator[tuple[FaultServer, Switchable]]:
    """A local server whose /svc route can be taken down and brought back."""
    route = Switchable()
    with FaultServer(handlers={"/svc": route}) as server:
        yield server, route


def test_open_breaker_refuses_without_touching_the_network(
    flaky: tuple[FaultServer, Switchable], capsys: pytest.CaptureFixture[str]
) -> None:
    """After the threshold, calls raise CircuitOpenError at once and the server sees
    nothing; once it is back, the probes close the breaker."""
    server, route = flaky
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=30.0, half_open_probes=2,
                             clock=clock)
    session = smart_session(max_retries=0, breaker=breaker, budget=None, log=False)
    url = server.url("/svc")
    for _ in range(3):
        assert session.get(url).status_code == 503
    assert server.hits() == 3
    rejection_costs = []
    for _ in range(200):
        started = time.perf_counter()
        with pytest.raises(CircuitOpenError) as caught:
            session.get(url)
        rejection_costs.append(time.perf_counter() - started)
    assert server.hits() == 3  # not one more request reached the server
    assert caught.value.retry_in == pytest.approx(30.0)
    assert [e.kind for e in attempt_history(caught.value)] == [EventKind.REJECTED]
    with capsys.disabled():
        print(f"\n[breaker] rejection cost through session.get: median "
              f"{statistics.median(rejection_costs) * 1e6:.0f} us over 200 calls")

    route.down = False
    clock.advance(30)
    service = f"http://127.0.0.1:{server.port}"
    assert session.get(url).status_code == 200  # probe 1 of 2
    assert breaker.state(service) == "half_open"
    assert session.get(url).status_code == 200  # probe 2 of 2
    assert breaker.state(service) == "closed"
    for _ in range(5):
        assert session.get(url).status_code == 200
    assert server.hits() == 3 + 2 + 5


def test_open_during_retries_ends_the_call_with_the_last_response(
    flaky: tuple[FaultServer, Switchable],
) -> None:
    """A breaker that opens between attempts ends the call: the last response comes back,
    with the give-up reason ``circuit_open``."""
    server, _ = flaky
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=30.0)
    session = smart_session(max_retries=5, breaker=breaker, budget=None, log=False,
                            sleep=lambda s: None)
    response = session.get(server.url("/svc"))
    assert response.status_code == 503
    assert server.hits() == 2
    assert response.retry_history[-1].give_up_reason == "circuit_open"


def test_no_lock_is_held_around_the_network_call(
    flaky: tuple[FaultServer, Switchable],
) -> None:
    """While a half-open probe is stuck on the network, other callers are refused at
    once instead of waiting behind it."""
    server, route = flaky
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=30.0, clock=clock)
    session = smart_session(max_retries=0, breaker=breaker, budget=None, log=False)
    url = server.url("/svc")
    session.get(url)
    clock.advance(30)
    route.down = False
    route.release.clear()
    route.entered.clear()
    results: list[int] = []
    probe = threading.Thread(target=lambda: results.append(session.get(url).status_code))
    probe.start()
    assert route.entered.wait(30), "the probe reached the server"
    other = smart_session(max_retries=0, breaker=breaker, budget=None, log=False)
    with pytest.raises(CircuitOpenError):
        other.get(url)  # answered while the probe is still held by the server
    assert probe.is_alive()
    route.release.set()
    probe.join(30)
    assert results == [200]
    assert breaker.state(f"http://127.0.0.1:{server.port}") == "closed"


def test_client_errors_from_a_server_never_open_the_breaker() -> None:
    """A server answering 404 again and again keeps the breaker closed."""
    breaker = CircuitBreaker(failure_threshold=2)
    session = smart_session(max_retries=0, breaker=breaker, log=False)
    with FaultServer() as server:
        for _ in range(5):
            assert session.get(server.url("/status/404")).status_code == 404
        assert breaker.state(f"http://127.0.0.1:{server.port}") == "closed"
        assert server.hits() == 5


# -- issue 30: listeners, an operator's hand, the slow-call trip --------------------------


def test_a_listener_sees_every_transition_with_the_service(store: Any, clock: FakeClock) -> None:
    """closed → open → half_open → closed, each told once, with the service's key."""
    breaker = make(store, clock, failure_threshold=2)
    seen: list[tuple[str, str, str]] = []
    breaker.on_state_change(lambda service, old, new: seen.append((service, old, new)))
    attempt(breaker)
    attempt(breaker)
    assert seen == [(SVC, "closed", "open")]
    with pytest.raises(CircuitOpenError):
        breaker.before_attempt(SVC)
    assert seen == [(SVC, "closed", "open")]  # a refusal is no transition
    clock.advance(10.0)
    attempt(breaker, Verdict.SUCCESS)  # the probe
    assert seen == [(SVC, "closed", "open"), (SVC, "open", "half_open"),
                    (SVC, "half_open", "closed")]
    attempt(breaker, Verdict.SUCCESS, service="https://other.example.com")
    assert len(seen) == 3


def test_listeners_given_at_construction_and_a_raising_one(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """``listeners=`` registers them; one that raises is logged and the others still run."""
    seen: list[str] = []

    def broken(service: str, old: str, new: str) -> None:
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker(failure_threshold=1, clock=clock,
                             listeners=[broken, lambda s, o, n: seen.append(n)])
    attempt(breaker)
    assert seen == ["open"]
    assert "listener" in caplog.text and "listener bug" in caplog.text
    with pytest.raises(TypeError, match="listener must be callable"):
        breaker.on_state_change("not a function")  # type: ignore[arg-type]


def test_32_threads_racing_tell_each_transition_once_and_in_order() -> None:
    """32 threads open, probe and close one breaker at once, with a listener slow enough
    for the threads to overtake one another: the listener hears a chain (each change
    starts where the one before ended), ending in the state the breaker last reported.
    (Told outside the lock, each by the thread that saw it, they came out of order: 181
    of 388 changes did not start where the one before ended.)"""
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=0.001)
    heard: list[tuple[str, str, str]] = []

    def slow_listener(service: str, old: str, new: str) -> None:
        time.sleep(0.0005)
        heard.append((service, old, new))

    breaker.on_state_change(slow_listener)
    go = threading.Barrier(32)

    def work(seed: int) -> None:
        go.wait()
        for i in range(60):
            try:
                ticket = breaker.before_attempt(SVC)
            except CircuitOpenError:
                continue
            breaker.after_attempt(SVC, ticket, failed=(i + seed) % 2 == 0)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(heard) >= 8
    assert heard[0][1] == "closed"
    breaks = [(a, b) for a, b in zip(heard, heard[1:]) if a[2] != b[1]]
    assert not breaks, f"{len(breaks)} of {len(heard)} changes told out of order: {breaks[:3]}"
    assert heard[-1][2] == breaker._known[SVC]
    assert not breaker._untold and not breaker._telling


def test_a_listener_that_forces_the_breaker_is_told_its_own_change_after_it_returns(
    clock: FakeClock,
) -> None:
    """A listener may call force_open and state() (no lock is held while it runs); the
    change it makes is told after it returns, in order."""
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    heard: list[tuple[str, str, str]] = []

    def operator(service: str, old: str, new: str) -> None:
        heard.append((service, old, new))
        if new == "open":
            breaker.force_open(service)
            assert breaker.state(service) == "forced_open"

    breaker.on_state_change(operator)
    attempt(breaker)
    assert heard == [(SVC, "closed", "open"), (SVC, "open", "forced_open")]


def test_force_open_holds_until_reset(store: Any, clock: FakeClock) -> None:
    """A forced-open breaker refuses every attempt and sends no probe however long it
    waits; results do not move it; reset closes it with empty counters."""
    breaker = make(store, clock)
    seen: list[tuple[str, str]] = []
    breaker.on_state_change(lambda service, old, new: seen.append((old, new)))
    attempt(breaker)
    breaker.force_open(SVC)
    assert breaker.state(SVC) == "forced_open"
    for _ in range(3):
        clock.advance(100.0)
        with pytest.raises(CircuitOpenError) as caught:
            breaker.before_attempt(SVC)
        assert caught.value.retry_in == pytest.approx(10.0)
    breaker.after_attempt(SVC, 0, failed=False)  # a straggler
    assert breaker.state(SVC) == "forced_open"
    breaker.reset(SVC)
    status = breaker.status(SVC)
    assert (status.state, status.consecutive_failures) == ("closed", 0)
    attempt(breaker)
    assert seen == [("closed", "forced_open"), ("forced_open", "closed")]


def test_force_close_admits_everything_and_counts_nothing(store: Any, clock: FakeClock) -> None:
    """A forced-closed breaker admits every attempt, even from open, and no failure trips
    it; force_open and reset leave it."""
    breaker = make(store, clock)
    for _ in range(3):
        attempt(breaker)
    assert breaker.state(SVC) == "open"
    breaker.force_close(SVC)
    for _ in range(10):
        attempt(breaker)
    assert breaker.state(SVC) == "forced_closed"
    assert breaker.status(SVC).consecutive_failures == 0
    breaker.force_open(SVC)
    assert breaker.state(SVC) == "forced_open"
    breaker.reset(SVC)
    assert breaker.state(SVC) == "closed"
    with pytest.raises(ValueError, match="service must be a non-empty string"):
        breaker.force_open("")


def test_slow_call_trip_opens_on_five_slow_200s(flaky: tuple[FaultServer, Switchable]) -> None:
    """Five 200s each slower than ``slow_call_seconds`` (the adapter's injected clock)
    open the breaker; they are successes for the caller and the statistics, not retried."""
    server, route = flaky
    route.down = False

    class SlowClock:
        """Three seconds pass between any two readings."""

        now = 0.0

        def __call__(self) -> float:
            self.now += 3.0
            return self.now

    breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=30.0, slow_call_seconds=2.0)
    opened: list[str] = []
    breaker.on_state_change(lambda service, old, new: opened.append(new))
    session = smart_session(max_retries=2, breaker=breaker, budget=None, log=False,
                            clock=SlowClock(), operation_name="op")
    for _ in range(5):
        assert session.get(server.url("/svc")).status_code == 200
    assert server.hits() == 5  # none retried
    assert opened == ["open"]
    with pytest.raises(CircuitOpenError):
        session.get(server.url("/svc"))
    snap = adapter_of(session).stats.snapshot()["op"]  # type: ignore[union-attr]
    assert (snap["calls_succeeded"], snap["attempts_failed"]) == (5, 0)


def test_fast_calls_and_no_setting_never_trip(flaky: tuple[FaultServer, Switchable]) -> None:
    """Below ``slow_call_seconds``, or without it, 200s keep the breaker closed."""
    server, route = flaky
    route.down = False
    for options in ({"slow_call_seconds": 60.0}, {}):
        breaker = CircuitBreaker(failure_threshold=1, **options)
        session = smart_session(breaker=breaker, budget=None, log=False)
        for _ in range(3):
            assert session.get(server.url("/svc")).status_code == 200
        assert breaker.state(f"http://127.0.0.1:{server.port}") == "closed"
    with pytest.raises(ValueError, match="slow_call_seconds"):
        CircuitBreaker(slow_call_seconds=0)


def test_breaker_of_reaches_a_sessions_breaker() -> None:
    """``breaker_of`` gives the breaker of a session, an adapter or an httpx client, and
    names a transport that has none."""
    from requests_smartretry.httpx import smart_client

    breaker = CircuitBreaker()
    session = smart_session(breaker=breaker)
    assert breaker_of(session) is breaker and breaker_of(adapter_of(session)) is breaker
    with smart_client(breaker=breaker) as client:
        assert breaker_of(client) is breaker
    with pytest.raises(ValueError, match="has no CircuitBreaker"):
        breaker_of(smart_session())


def test_pickled_breaker_keeps_listeners_and_forced_state(clock: FakeClock) -> None:
    """A copy keeps a forced state and its (module-level) listeners."""
    breaker = CircuitBreaker(clock=clock, listeners=[_record_transition])
    breaker.force_open(SVC)
    copy = pickle.loads(pickle.dumps(breaker))
    assert copy.state(SVC) == "forced_open"
    _transitions.clear()
    copy.reset(SVC)
    assert _transitions == [(SVC, "forced_open", "closed")]


_transitions: list[tuple[str, str, str]] = []


def _record_transition(service: str, old: str, new: str) -> None:
    _transitions.append((service, old, new))


@pytest.mark.redis
@pytest.mark.slow
def test_force_open_in_another_process_refuses_here_within_100ms(
    redis_url: str, flaky: tuple[FaultServer, Switchable]
) -> None:
    """Another process sharing the Redis store forces the breaker open: this process
    refuses within 100 ms without reaching the server, and its listener is told; that
    process's reset lets calls through again just as fast."""
    server, route = flaky
    route.down = False
    service = f"http://127.0.0.1:{server.port}"
    client(redis_url).delete(f"smartretry:breaker:{{{service}}}")
    seen: list[tuple[str, str, str]] = []
    breaker = CircuitBreaker(recovery_timeout=60.0, store=shared_store(redis_url),
                             listeners=[lambda *change: seen.append(change)])
    session = smart_session(max_retries=0, breaker=breaker, budget=None, log=False)
    url = server.url("/svc")
    assert session.get(url).status_code == 200
    lag = seconds_until_seen(force_then_report, (redis_url, service, "force_open"),
                             session, url, refused=True)
    print(f"[breaker] force_open in another process refused here {lag * 1000:.1f} ms later")
    assert lag <= 0.1, f"refused {lag * 1000:.0f} ms after force_open elsewhere"
    hits = server.hits()
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            session.get(url)
    assert server.hits() == hits  # refused here without touching the network
    assert (service, "closed", "forced_open") in seen
    assert breaker.state(service) == "forced_open"
    lag = seconds_until_seen(force_then_report, (redis_url, service, "reset"),
                             session, url, refused=False)
    print(f"[breaker] reset in another process admitted here {lag * 1000:.1f} ms later")
    assert lag <= 0.1, f"admitted {lag * 1000:.0f} ms after reset elsewhere"
    assert breaker.state(service) == "closed"
    client(redis_url).delete(f"smartretry:breaker:{{{service}}}")


def test_a_forced_refusal_says_so(flaky: tuple[FaultServer, Switchable],
                                  caplog: pytest.LogCaptureFixture) -> None:
    """A call refused by a forced-open breaker raises CircuitOpenError with ``forced`` and
    a message and log line that promise no probe (an ordinary refusal names its probe)."""
    import logging

    server, _ = flaky
    breaker = CircuitBreaker(recovery_timeout=30.0)
    session = smart_session(max_retries=0, breaker=breaker, budget=None, lang="en")
    breaker.force_open(f"http://127.0.0.1:{server.port}")
    with caplog.at_level(logging.WARNING, logger="requests_smartretry"), \
            pytest.raises(CircuitOpenError) as caught:
        session.get(server.url("/svc"))
    assert caught.value.forced and "forced open by an operator" in str(caught.value)
    assert any("forced open by an operator, request refused (no probe until it is reset)"
               in r.getMessage() and r.retry_event == "rejected"  # type: ignore[attr-defined]
               for r in caplog.records)
    assert not CircuitOpenError("s", 3.0).forced
    assert "next probe in 3.000s" in str(CircuitOpenError("s", 3.0))
