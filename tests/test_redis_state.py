"""RedisStateStore against a real redis-server: the Lua scripts agree with the in-process
algorithms, processes share one breaker and one budget without lost updates, and Redis
down, slow or answering garbage never fails a request."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from requests_smartretry import (
    AttemptEvent,
    CircuitBreaker,
    CircuitOpenError,
    EventKind,
    MemoryStateStore,
    RetryBudget,
    SmartRetryAdapter,
    Verdict,
    smart_session,
)
from requests_smartretry.faultserver import FaultServer, unused_port
from requests_smartretry.redis_state import RedisStateStore
from requests_smartretry.state import (
    CLOSED,
    FORCED_CLOSED,
    FORCED_OPEN,
    STATE_NAMES,
    BreakerSettings,
    BudgetSettings,
)
from tests.redis_server import (
    SHARING_BUDGET,
    GarbageRedis,
    RedisServer,
    StalledSubscriptions,
    budgeted_calls,
    client,
    failing_calls,
    healing_call,
    in_processes,
    random_events,
    retried_storm,
    shared_store,
)

from .conftest import wait_for_child

pytestmark = pytest.mark.redis

SVC = "https://api.example.com"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server for this module (skipped without the binary, unless CI=true)."""
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def prefix() -> str:
    """A key namespace of the test's own, so tests sharing the server never collide."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fault() -> Iterator[FaultServer]:
    """A local HTTP server with scripted faults."""
    with FaultServer() as server:
        yield server


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "Redis state store" in r.getMessage()]


def outcome(kind: EventKind, verdict: Verdict, service: str = SVC) -> AttemptEvent:
    return AttemptEvent(kind=kind, operation="op", service=service, attempt=1,
                        max_attempts=1, call_id=1, verdict=verdict)


# -- the Lua transcription ------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "rate"), [(4.0, 0.0), (0.0, 0.5), (4.0, 0.5)])
def test_lua_scripts_agree_with_the_in_process_algorithms(
    redis_url: str, prefix: str, threshold: float, rate: float
) -> None:
    """A long random run of admissions, results, budget changes and clock steps gives the
    same answers from Redis's scripts as from the in-process store, through every state."""
    settings = BreakerSettings(failure_threshold=threshold, recovery_timeout=10.0,
                               half_open_probes=2, failure_rate=rate, window=30.0,
                               minimum_requests=6)
    budget = BudgetSettings(ratio=0.2, max_tokens=5.0, min_per_second=0.5)
    memory = MemoryStateStore()
    shared = shared_store(redis_url, prefix=prefix, server_time=False)
    rng = random.Random(20261127)
    now = 1_000_000.25
    tickets: list[int] = []
    states: list[str] = []
    for step in range(2000):
        choice = rng.random()
        if choice < 0.3:
            a = memory.breaker_admit("k", settings, now)
            b = shared.breaker_admit("k", settings, now)
            assert (a.allowed, a.ticket, a.state) == (b.allowed, b.ticket, b.state), step
            assert a.retry_in == pytest.approx(b.retry_in), step
            if a.allowed:
                tickets.append(a.ticket)
        elif choice < 0.65:
            ticket = tickets.pop(rng.randrange(len(tickets))) if tickets else 0
            failed = rng.random() < 0.45
            weight = rng.choice([1.0, 1.0, 2.0])
            after = memory.breaker_record("k", settings, now, failed=failed, weight=weight,
                                          ticket=ticket)
            assert after == shared.breaker_record("k", settings, now, failed=failed,
                                                  weight=weight, ticket=ticket), step
            states.append(after)
        elif choice < 0.75:
            m = memory.breaker_status("k", settings, now)
            r = shared.breaker_status("k", settings, now)
            assert m.state == r.state, step
            assert (m.consecutive_failures, m.window_failures, m.window_requests,
                    m.retry_in) == pytest.approx((r.consecutive_failures, r.window_failures,
                                                  r.window_requests, r.retry_in)), step
        elif choice < 0.9:
            deposit = rng.choice([0.0, 0.0, 0.2, 0.7, 1.0])
            spend = rng.choice([0.0, 1.0, 1.0])
            applied_m, tokens_m = memory.budget_change("k", budget, now, deposit, spend)
            applied_r, tokens_r = shared.budget_change("k", budget, now, deposit, spend)
            assert applied_m == applied_r, step
            assert tokens_m == pytest.approx(tokens_r), step
        elif choice < 0.91:  # an operator's hand (issue 30), mostly a reset
            target = rng.choice([CLOSED, CLOSED, CLOSED, FORCED_OPEN, FORCED_CLOSED])
            before = memory.breaker_set("k", settings, now, target)
            assert before == shared.breaker_set("k", settings, now, target), step
            states.append(STATE_NAMES[target])
        else:
            now += rng.choice([0.001, 0.5, 3.0, 11.0])
    assert shared.shared
    # The run went through every transition more than once.
    changes = [(a, b) for a, b in zip(states, states[1:]) if a != b]
    for transition in [("closed", "open"), ("half_open", "closed"), ("half_open", "open")]:
        assert changes.count(transition) >= 2, (transition, changes)
    assert {"forced_open", "forced_closed"} <= {new for _, new in changes}


def test_keys_are_namespaced_and_expire(redis_url: str, prefix: str) -> None:
    """Each service's records live under the prefix and carry a time to live."""
    store = shared_store(redis_url, prefix=prefix)
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=5.0, window=20.0,
                             store=store)
    budget = RetryBudget(store=store)
    breaker.before_attempt(SVC)
    breaker(outcome(EventKind.FAILURE, Verdict.NETWORK))
    budget.allow_retry(SVC)
    inspect = client(redis_url)
    keys = sorted(inspect.keys(f"{prefix}:*"))
    # hash-tagged: both records of a service share one Redis Cluster slot
    assert keys == [f"{prefix}:breaker:{{{SVC}}}", f"{prefix}:budget:{{{SVC}}}"]
    breaker_ttl = inspect.pttl(keys[0]) / 1000
    assert 0 < breaker_ttl <= 2 * 20 + 60
    assert 0 < inspect.pttl(keys[1]) / 1000 <= budget.settings.ttl  # max_tokens/rate + 60


def test_server_time_lets_skewed_hosts_agree(redis_url: str, prefix: str) -> None:
    """Two hosts whose clocks differ by days see the same open breaker and the same
    time to the next probe, because the scripts read the Redis server's clock."""
    ours = CircuitBreaker(failure_threshold=1, recovery_timeout=30.0, clock=lambda: 0.0,
                          store=shared_store(redis_url, prefix=prefix))
    theirs = CircuitBreaker(failure_threshold=1, recovery_timeout=30.0,
                            clock=lambda: 5 * 86400.0,
                            store=shared_store(redis_url, prefix=prefix))
    ours.before_attempt(SVC)
    ours(outcome(EventKind.FAILURE, Verdict.TIMEOUT))
    with pytest.raises(CircuitOpenError) as caught:
        theirs.before_attempt(SVC)
    assert 25.0 < caught.value.retry_in <= 30.0


def commands_issued(url: str) -> int:
    """Commands the server executed since its statistics were reset (INFO commandstats
    counts those run inside scripts too), not counting the INFO itself nor the PINGs that
    prove the subscription alive (a background thread's, two per poll interval while the
    store is in use, whatever the number of requests)."""
    stats = client(url).info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items()
               if k not in ("cmdstat_info", "cmdstat_ping"))


def test_successes_cost_no_round_trip(redis_url: str, fault: FaultServer) -> None:
    """300 successful calls with a shared breaker and budget make at most 30 Redis
    commands in all (connecting, loading the script, subscribing and the batched sync
    included), and their successes are all counted in Redis afterwards."""
    inspect = client(redis_url)
    prefix = f"count-{uuid.uuid4().hex[:8]}"
    store = shared_store(redis_url, prefix=prefix)
    breaker = CircuitBreaker(failure_rate=0.5, window=60.0)
    session = smart_session(breaker=breaker, state=store, log=False)
    inspect.config_resetstat()
    for _ in range(300):
        assert session.get(fault.url("/ok")).status_code == 200
    issued = commands_issued(redis_url)
    assert issued <= 30, inspect.info("commandstats")
    assert fault.hits() == 300
    store.flush()
    status = CircuitBreaker(failure_rate=0.5, window=60.0,
                            store=shared_store(redis_url, prefix=prefix)).status(
        f"http://127.0.0.1:{fault.port}")
    assert status.window_requests == 300


def test_failures_and_retries_go_to_redis_at_once(
    redis_url: str, prefix: str, fault: FaultServer
) -> None:
    """A failure is in Redis as soon as it is recorded (with the successes before it), and
    a retry the local lease does not cover is paid from the shared balance."""
    store = shared_store(redis_url, prefix=prefix)
    breaker = CircuitBreaker(failure_threshold=10, store=store)
    budget = RetryBudget(ratio=0.1, max_tokens=5.0, min_per_second=0.0, store=store)
    session = smart_session(max_retries=1, breaker=breaker, budget=budget, log=False,
                            sleep=lambda seconds: None)
    service = f"http://127.0.0.1:{fault.port}"
    for _ in range(5):
        session.get(fault.url("/ok"))
    assert session.get(fault.url("/status/503")).status_code == 503
    other = shared_store(redis_url, prefix=prefix)
    seen = CircuitBreaker(failure_threshold=10, store=other).status(service)
    assert seen.consecutive_failures == 2  # the call and its retry
    assert seen.window_requests == 7  # five successes, sent with the first failure
    # the retry spent a shared token from the full bucket (deposits cannot overfill it)
    tokens = RetryBudget(ratio=0.1, max_tokens=5.0, min_per_second=0.0,
                         store=other).tokens(service)
    assert tokens == pytest.approx(4.0)


# -- configuration -------------------------------------------------------------------------


def test_state_accepts_a_url_a_client_or_a_store(redis_url: str) -> None:
    """``state=`` takes a redis:// URL, a ``redis.Redis`` client or a store."""
    import redis

    by_url = SmartRetryAdapter(breaker=CircuitBreaker(), state=redis_url)
    assert isinstance(by_url.state, RedisStateStore)
    assert by_url.breaker.store is by_url.state  # type: ignore[union-attr]
    user_client = redis.Redis.from_url(redis_url, socket_timeout=None)
    by_client = SmartRetryAdapter(state=user_client)
    assert isinstance(by_client.state, RedisStateStore)
    assert by_client.budget.store is by_client.state  # type: ignore[union-attr]
    by_client.budget.allow_retry(SVC)  # type: ignore[union-attr]
    assert by_client.state.shared
    # a client without timeouts still gets bounded ones
    assert by_client.state._client.connection_pool.connection_kwargs["socket_timeout"] == 0.25
    store = MemoryStateStore()
    assert SmartRetryAdapter(state=store).state is store


@pytest.mark.parametrize(("value", "error"), [
    ("mysql://127.0.0.1/0", ValueError),
    (42, TypeError),
])
def test_bad_state_is_refused_with_its_name(value: Any, error: type[Exception]) -> None:
    """A ``state=`` that is no store, client or Redis URL is refused, naming ``state``."""
    with pytest.raises(error, match="state"):
        SmartRetryAdapter(state=value)


@pytest.mark.parametrize(("options", "named"), [
    ({"prefix": ""}, "prefix"),
    ({"socket_timeout": 0}, "socket_timeout"),
    ({"retry_interval": float("inf")}, "retry_interval"),
])
def test_bad_store_options_name_the_parameter(options: dict[str, Any], named: str) -> None:
    """A bad store option is refused at construction with its name in the message."""
    with pytest.raises(ValueError, match=named):
        RedisStateStore("redis://127.0.0.1:6379/0", **options)


def test_pickled_adapter_shares_state_with_the_original(redis_url: str, prefix: str) -> None:
    """A pickled adapter reconnects to the same Redis and sees the same breaker."""
    store = shared_store(redis_url, prefix=prefix)
    adapter = SmartRetryAdapter(breaker=CircuitBreaker(failure_threshold=1), state=store)
    copy = pickle.loads(pickle.dumps(adapter))
    assert isinstance(copy.state, RedisStateStore) and copy.state is not store
    assert copy.breaker.store is copy.state and copy.budget.store is copy.state
    adapter.breaker.before_attempt(SVC)  # type: ignore[union-attr]
    adapter.breaker(outcome(EventKind.FAILURE, Verdict.NETWORK))  # type: ignore[misc]
    assert copy.breaker.state(SVC) == "open"


# -- processes sharing -----------------------------------------------------------------------


@pytest.mark.slow
def test_four_processes_share_one_breaker(redis_url: str, fault: FaultServer) -> None:
    """Failures summed across 4 processes open the shared breaker: a fifth process's
    first call is refused without reaching the server."""
    url = fault.url("/status/503")
    results = in_processes(failing_calls, [(redis_url, url, 2, 8)] * 4)
    assert results == [["503", "503"]] * 4
    assert fault.hits() == 8
    (fifth,) = in_processes(failing_calls, [(redis_url, url, 1, 8)])
    assert fifth == ["CircuitOpenError"]
    assert fault.hits() == 8
    client(redis_url).delete(f"smartretry:breaker:{{http://127.0.0.1:{fault.port}}}")


@pytest.mark.slow
def test_budget_across_four_processes_bounds_the_fleet(
    redis_url: str, fault: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """With one budget shared by 4 processes in an outage, the server sees at most
    ``calls * (1 + ratio) + max_tokens`` attempts, whatever the process count, plus the
    debt the last calls leave: a call admitted to retrying runs its 3 retries and pays
    the last 2 at its end, so 4 callers admitted at once may end 8 tokens below zero."""
    calls, ratio, max_tokens = 100, 0.1, 10.0
    in_processes(budgeted_calls,
                 [(redis_url, fault.url("/status/503"), calls, ratio, max_tokens)] * 4)
    total_calls = 4 * calls
    with capsys.disabled():
        print(f"\n[redis budget] 4 processes x {calls} calls, max_retries=3, outage: "
              f"attempts/call {fault.hits() / total_calls:.3f} "
              f"(bound {1 + ratio + (max_tokens + 8) / total_calls:.3f})")
    assert total_calls < fault.hits() <= total_calls * (1 + ratio) + max_tokens + 8
    # Per-process budgets would have allowed up to 4 * max_tokens of the initial burst.
    balance = float(client(redis_url).hget(
        f"smartretry:budget:{{http://127.0.0.1:{fault.port}}}", "tok"))
    assert balance < 1.0


@pytest.mark.stress
def test_eight_processes_lose_no_update(redis_url: str, prefix: str) -> None:
    """8 processes x 200 events on one service key: the shared counters equal the sums of
    what each process fed (no lost updates)."""
    results = in_processes(random_events, [(redis_url, prefix, seed, 200) for seed in range(8)])
    failures = sum(r[0] for r in results)
    assert [r[1] for r in results] == [200] * 8  # every spend was granted and counted
    store = shared_store(redis_url, prefix=prefix)
    status = CircuitBreaker(failure_threshold=10**9, window=3600.0, store=store).status("svc")
    assert status.window_requests == 1600
    assert status.window_failures == failures
    budget = RetryBudget(0.0, max_tokens=10**6, min_per_second=0.0, store=store)
    assert budget.tokens("svc") == 10**6 - 1600


# -- Redis down, slow, garbage ---------------------------------------------------------------


@pytest.mark.slow
def test_redis_killed_mid_run_then_restarted(
    fault: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Killing Redis mid-run: calls keep succeeding on local state with one warning;
    restarting it: sharing resumes (another process's view opens our breaker)."""
    caplog.set_level(logging.INFO, logger="requests_smartretry")
    server = RedisServer().start()
    try:
        store = shared_store(server.url, retry_interval=0.2)
        breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=60.0)
        session = smart_session(max_retries=0, breaker=breaker, state=store, log=False)
        service = f"http://127.0.0.1:{fault.port}"
        for _ in range(10):
            assert session.get(fault.url("/ok")).status_code == 200
        assert client(server.url).exists(f"smartretry:breaker:{{{service}}}")

        server.kill()
        # Successes need no Redis; the lost subscription makes the views poll, and the
        # first poll finds Redis gone.
        for _ in range(30):
            assert session.get(fault.url("/ok")).status_code == 200
            time.sleep(0.01)
        assert not store.shared
        assert len(redis_warnings(caplog)) == 1

        server.start()  # same port, empty (no persistence)
        # The probes back off while Redis is out (0.2 s, 0.4 s, ...): one finds it back.
        deadline = time.monotonic() + 10.0
        while not store.shared and time.monotonic() < deadline:
            assert session.get(fault.url("/ok")).status_code == 200
            time.sleep(0.02)
        assert store.shared
        store.flush()  # the batched successes
        assert client(server.url).exists(f"smartretry:breaker:{{{service}}}")
        # The episode ends (INFO) once Redis has kept working for a sync interval.
        deadline = time.monotonic() + 10.0
        while not any("reachable again" in r.getMessage() for r in caplog.records) \
                and time.monotonic() < deadline:
            assert session.get(fault.url("/ok")).status_code == 200
            time.sleep(0.05)
        assert any("reachable again" in r.getMessage() for r in caplog.records)

        # Another worker trips the shared breaker: our next call is refused at once.
        other = CircuitBreaker(failure_threshold=3, recovery_timeout=60.0,
                               store=shared_store(server.url))
        for _ in range(3):
            other.before_attempt(service)
            other(outcome(EventKind.FAILURE, Verdict.NETWORK, service))
        hits = fault.hits()
        # Notified, or (while the subscription is being renewed) the next poll sees it.
        time.sleep(2 * store.poll_interval)
        with pytest.raises(CircuitOpenError):
            session.get(fault.url("/ok"))
        assert fault.hits() == hits
        assert len(redis_warnings(caplog)) == 1
    finally:
        server.kill()


@pytest.mark.parametrize("nodes", [1, 4])
def test_unresponsive_redis_costs_one_short_timeout(
    nodes: int, fault: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis (or four Cluster nodes) that accepts connections and never answers delays
    the first request by the time budget at most (the connection goes on in the
    background, given the socket timeout in all, not one timeout per node as a Cluster
    client asks each for the slot map), then local state serves until the next probe."""
    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    with contextlib.ExitStack() as stack:  # listening sockets that never accept
        ports = [stack.enter_context(socket.create_server(("127.0.0.1", 0), backlog=64))
                 .getsockname()[1] for _ in range(nodes)]
        url = f"redis://127.0.0.1:{ports[0]}/0" if nodes == 1 else \
            "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
        store = RedisStateStore(url, socket_timeout=0.3, retry_interval=60.0)
        session = smart_session(breaker=CircuitBreaker(), state=store, log=False)
        started = time.monotonic()
        assert session.get(fault.url("/ok")).status_code == 200
        first = time.monotonic() - started
        for _ in range(20):
            assert session.get(fault.url("/ok")).status_code == 200
            time.sleep(0.02)  # past the socket timeout: the connection has failed
        rest = time.monotonic() - started - first
    assert first < 0.3  # the 50 ms budget and slack for load, never the 0.3 s timeout
    assert rest < 10.0
    assert not store.shared
    assert len(redis_warnings(caplog)) == 1


def test_a_full_redis_takes_the_store_local_with_one_warning(
    fault: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis out of memory (maxmemory, noeviction) refusing the script's writes is an
    outage of the whole store (one warning, not one per service), no call fails, and
    sharing resumes once it has room again."""
    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    with RedisServer(extra=("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")) as full:
        inspect = client(full.url)
        with pytest.raises(Exception, match="maxmemory"):
            for index in range(10_000):
                inspect.set(f"fill-{index}", "x" * 1000)
        store = RedisStateStore(full.url, retry_interval=0.05)
        settings = BreakerSettings(3, 60.0, 1, 0.0, 60.0, 10)
        session = smart_session(breaker=CircuitBreaker(), state=store, log=False)
        for _ in range(5):
            assert session.get(fault.url("/ok")).status_code == 200
        for name in ("a", "b", "c"):
            store.breaker_record(f"https://{name}.example.com", settings, 0.0, failed=True,
                                 weight=1.0, ticket=0)
        assert not store.shared
        assert len(redis_warnings(caplog)) == 1
        inspect.flushall()
        time.sleep(0.1)
        deadline = time.monotonic() + 10.0
        while not store.shared and time.monotonic() < deadline:
            store.breaker_admit("https://a.example.com", settings, 0.0)
            time.sleep(0.02)
        assert store.shared
        store.close()


def test_a_redis_with_fewer_free_connections_than_the_store_s_workers_is_shared(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis whose ``maxclients`` leaves the store three connections (its four workers
    and the listener could take five) shares the breaker, with no warning: the store
    opens its workers' connections ahead when it connects, and one refused ("max number
    of clients reached") is no outage; Redis answered, the store works with those it
    has (as it did before it opened them ahead)."""
    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    with RedisServer(extra=("--maxclients", "4")) as small:
        inspect = client(small.url)
        inspect.ping()  # one of the four
        store = RedisStateStore(small.url, prefix=prefix, socket_timeout=1.0,
                                retry_interval=0.2)
        settings = BreakerSettings(3, 60.0, 1, 0.0, 60.0, 10)
        key = store.key("breaker", SVC)
        deadline = time.monotonic() + 10.0
        while not inspect.exists(key) and time.monotonic() < deadline:
            store.breaker_record(SVC, settings, 0.0, failed=True, weight=1.0, ticket=0)
            time.sleep(0.05)
        assert inspect.exists(key), "the store never wrote to Redis"
        assert store.shared
        assert redis_warnings(caplog) == []
        store.close()


def test_redis_that_stays_out_is_probed_less_and_less_often() -> None:
    """Each failed probe doubles the wait before the next one (from ``retry_interval``),
    so a Redis that stays out costs ever fewer requests a timeout."""
    store = RedisStateStore(f"redis://127.0.0.1:{unused_port()}/0", retry_interval=0.5)
    waits = []
    for _ in range(4):
        store._next_try = 0.0  # the probe is due
        store.budget_change(SVC, BudgetSettings(0.1, 10.0, 1.0), 0.0, 0.0, 1.0)
        waits.append(store._next_try - time.monotonic())
    assert [round(w * 2) / 2 for w in waits] == [0.5, 1.0, 2.0, 4.0]
    assert not store.shared


def test_garbage_from_redis_falls_back_to_local_state(
    fault: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A server answering garbage instead of RESP never fails a call: local state serves,
    and the breaker still works on it."""
    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    garbage = GarbageRedis()
    try:
        store = RedisStateStore(f"redis://127.0.0.1:{garbage.port}/0", retry_interval=60.0)
        breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=60.0)
        session = smart_session(max_retries=0, breaker=breaker, state=store, log=False)
        assert session.get(fault.url("/ok")).status_code == 200
        session.get(fault.url("/status/503"))
        session.get(fault.url("/status/503"))
        with pytest.raises(CircuitOpenError):
            session.get(fault.url("/ok"))
    finally:
        garbage.close()
    assert len(redis_warnings(caplog)) == 1


def test_wrong_type_key_falls_back_to_local_state(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A key clobbered by another program (a string where a hash belongs) makes Redis
    answer with an error: the breaker carries on locally instead of failing the call."""
    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    client(redis_url).set(f"{prefix}:breaker:{{{SVC}}}", "not a hash")
    breaker = CircuitBreaker(store=shared_store(redis_url, prefix=prefix))
    breaker.before_attempt(SVC)
    breaker(outcome(EventKind.SUCCESS, Verdict.SUCCESS))
    assert breaker.state(SVC) == "closed"
    assert len(redis_warnings(caplog)) == 1


def test_a_redis_url_without_redis_py_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """state='redis://…' without the redis extra fails at construction, naming the extra."""
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` raise ImportError
    with pytest.raises(ImportError, match=r"requests-smartretry\[redis\]"):
        SmartRetryAdapter(state="redis://127.0.0.1:6379/0")


# -- issue 18: the fleet at zero cost, safe from a sick Redis --------------------------------


@pytest.mark.slow
def test_breaker_opened_in_another_process_refuses_here_within_100ms(
    redis_url: str, fault: FaultServer
) -> None:
    """A breaker opened by another process refuses this process's calls within 100 ms
    (its announcement invalidates our local view), without reaching the server."""
    from tests.redis_server import open_breaker_then_report, seconds_until_seen

    service = f"http://127.0.0.1:{fault.port}"
    client(redis_url).delete(f"smartretry:breaker:{{{service}}}")
    store = shared_store(redis_url)
    session = smart_session(max_retries=0, breaker=CircuitBreaker(recovery_timeout=60.0),
                            budget=None, state=store, log=False)
    assert session.get(fault.url("/ok")).status_code == 200
    lag = seconds_until_seen(open_breaker_then_report, (redis_url, service), session,
                             fault.url("/ok"), refused=True)
    assert lag <= 0.1
    client(redis_url).delete(f"smartretry:breaker:{{{service}}}")


def test_a_silently_dead_subscription_falls_back_to_polling(redis_url: str) -> None:
    """A subscription that dies with no reset (its proxy stalls) is noticed within a poll
    interval while the store is in use, so a breaker opened elsewhere still refuses here
    within the poll fallback's time, not after a whole sync interval."""
    import threading

    settings = BreakerSettings(1, 60.0, 1, 0.0, 60.0, 10)
    service = f"stall-{uuid.uuid4().hex[:8]}"
    with StalledSubscriptions(int(redis_url.rsplit(":", 1)[1].split("/")[0])) as proxy:
        here = shared_store(proxy.url, sync_interval=30.0)
        there = shared_store(redis_url)
        assert here.breaker_admit(service, settings, 0.0).allowed
        deadline = time.monotonic() + 10.0
        while not here._listening and time.monotonic() < deadline:
            time.sleep(0.01)
        assert here._listening
        refused: list[float] = []
        stop = threading.Event()

        def admit_continuously() -> None:
            while not stop.is_set():
                if not here.breaker_admit(service, settings, 0.0).allowed:
                    refused.append(time.monotonic())
                    return
                time.sleep(0.002)

        worker = threading.Thread(target=admit_continuously, daemon=True)
        worker.start()
        try:
            time.sleep(0.3)
            proxy.stall = True
            time.sleep(0.5)  # the subscription is dead; our view was synced long ago
            opened = time.monotonic()
            assert there.breaker_record(service, settings, 0.0, failed=True, weight=1.0,
                                        ticket=0) == "open"
            worker.join(5.0)
        finally:
            stop.set()
            here.close()
            there.close()
        assert refused, "the breaker opened elsewhere was never seen here"
        assert refused[0] - opened <= 1.0  # poll fallback (50 ms); the sync interval is 30 s


@pytest.mark.slow
@pytest.mark.parametrize("mode", [{"delay": 0.2}, {"drip": 0.1}])
def test_slow_or_dripping_redis_is_bypassed_after_the_first_overrun(
    redis_url: str, fault: FaultServer, caplog: pytest.LogCaptureFixture, mode: dict[str, float]
) -> None:
    """A Redis whose every reply is late by 0.2 s (or arrives one byte per 0.1 s) costs a
    request the time budget at most; every call succeeds, the rest run at local speed, one
    warning.  (Within 5 s: a reply late by less than the socket timeout is no outage
    while the store opens its connections ahead, one round trip each.)"""
    from tests.redis_server import SlowProxy

    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    with SlowProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]), **mode) as proxy:
        store = RedisStateStore(proxy.url, prefix=f"slow-{uuid.uuid4().hex[:8]}",
                                retry_interval=60.0)
        session = smart_session(breaker=CircuitBreaker(), state=store, log=False)
        took: list[float] = []
        # Past the socket timeout: connecting took too long; or (each reply within it)
        # the connections opened ahead, one socket timeout each, and the first script
        # overran the budget.
        until = time.monotonic() + 5.0
        while len(took) < 20 or (store.shared and time.monotonic() < until):
            started = time.monotonic()
            assert session.get(fault.url("/ok")).status_code == 200
            took.append(time.monotonic() - started)
            time.sleep(0.02)
        assert not store.shared
        store.close()
    assert took[0] < 1.0  # the first overrun: bounded by the budget, never the drip
    assert max(took[1:]) < 0.15  # no Redis work at all after it (generous for load)
    assert len(redis_warnings(caplog)) == 1


def test_a_bad_key_takes_only_its_own_service_off_redis(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A WRONGTYPE key on one service makes that service local (one warning, however often
    it is used); a second service keeps sharing through Redis."""
    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    bad, good = "https://bad.example.com", "https://good.example.com"
    client(redis_url).set(f"{prefix}:breaker:{{{bad}}}", "not a hash")
    store = shared_store(redis_url, prefix=prefix)
    ours = CircuitBreaker(failure_threshold=1, recovery_timeout=60.0, store=store)
    for service in (bad, good) * 3:
        ours.before_attempt(service)
    ours(outcome(EventKind.FAILURE, Verdict.NETWORK, good))
    ours(outcome(EventKind.FAILURE, Verdict.NETWORK, bad))
    assert store.shared
    theirs = CircuitBreaker(failure_threshold=1, recovery_timeout=60.0,
                            store=shared_store(redis_url, prefix=prefix))
    assert theirs.state(good) == "open"  # shared
    assert ours.state(bad) == "open"  # kept locally
    warnings = redis_warnings(caplog)
    assert len(warnings) == 1 and bad in warnings[0] and good not in warnings[0]


def test_a_far_future_open_time_is_repaired(redis_url: str, prefix: str) -> None:
    """An open breaker whose open time lies years ahead (and no TTL) refuses for at most
    the recovery timeout, and the key gets its TTL back; garbage values are reset."""
    service = "https://api.example.com"
    key = f"{prefix}:breaker:{{{service}}}"
    inspect = client(redis_url)
    inspect.hset(key, mapping={"st": 1, "t": time.time() + 10 * 365 * 86400, "cf": "-1e308"})
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=30.0,
                             store=shared_store(redis_url, prefix=prefix))
    with pytest.raises(CircuitOpenError) as caught:
        breaker.before_attempt(service)
    assert 0 < caught.value.retry_in <= 30.0
    assert float(inspect.hget(key, "t")) <= time.time() + 1
    assert inspect.pttl(key) > 0
    inspect.hset(key, mapping={"st": 7})  # no such state: reset to closed
    assert breaker.state(service) == "closed" or breaker.before_attempt(service) is None
    budget_key = f"{prefix}:budget:{{{service}}}"
    inspect.hset(budget_key, mapping={"tok": "-1e308", "ts": time.time() + 86400})
    budget = RetryBudget(min_per_second=1.0, max_tokens=5.0,
                         store=shared_store(redis_url, prefix=prefix))
    assert 0.0 <= budget.tokens(service) <= 5.0


@pytest.mark.parametrize("password", ["ab/cd+ef==", "x#y", "p?q", "s3cr3t/with@at"])
def test_passwords_never_reach_repr_logs_or_errors(
    password: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A password with an unencoded '/', '#', '?' or '@' is refused at construction without
    being shown; an encoded one never appears in repr or in the outage warning."""
    from urllib.parse import quote

    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    port = unused_port()
    raw = f"redis://:{password}@127.0.0.1:{port}/0"
    if any(mark in password for mark in "/#?"):
        with pytest.raises(ValueError, match="percent-encode") as caught:
            RedisStateStore(raw)
        assert password not in str(caught.value)
        for piece in password.replace("#", "/").replace("?", "/").split("/"):
            assert len(piece) < 3 or piece not in str(caught.value)
    store = RedisStateStore(f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0")
    assert password not in repr(store) and quote(password, safe="") not in repr(store)
    store.budget_change(SVC, BudgetSettings(0.1, 10.0, 1.0), 0.0, 0.0, 1.0)
    assert not store.shared
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "unavailable" in text and f"127.0.0.1:{port}" in text
    assert password not in text and quote(password, safe="") not in text


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:notaport/0",
    "redis://127.0.0.1:6379/notadb",
    "redis+sentinel://127.0.0.1:26379",
    "redis+cluster://127.0.0.1:7000/3",
    "memcached://127.0.0.1:11211",
])
def test_a_malformed_url_is_a_configuration_error(url: str) -> None:
    """A URL the store cannot use raises at construction, naming it (not an outage)."""
    with pytest.raises(ValueError, match=r"URL|state"):
        RedisStateStore(url)


def test_an_unsupported_client_is_named(redis_url: str) -> None:
    """An asyncio client is refused at construction with its type in the message."""
    import redis.asyncio

    with pytest.raises(TypeError, match=r"redis\.asyncio"):
        RedisStateStore(redis.asyncio.Redis.from_url(redis_url))


def test_idle_services_are_forgotten(redis_url: str, prefix: str) -> None:
    """A process that sees many distinct services keeps a bounded number of local views."""
    store = shared_store(redis_url, prefix=prefix, max_services=50)
    breaker = CircuitBreaker(store=store)
    for number in range(300):
        breaker.before_attempt(f"https://host-{number}.example.com")
        breaker(outcome(EventKind.SUCCESS, Verdict.SUCCESS, f"https://host-{number}.example.com"))
    assert len(store._views) <= 50


# -- Redis Cluster and Sentinel --------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """A 3-master Redis Cluster for this module (started once)."""
    from tests.redis_server import running_cluster

    with running_cluster(str(tmp_path_factory.mktemp("cluster"))) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, ...]]:
    """A master, a replica and a Sentinel naming them ``mymaster`` (started once)."""
    from tests.redis_server import running_sentinel

    with running_sentinel(str(tmp_path_factory.mktemp("sentinel"))) as servers:
        yield servers


def test_cluster_by_url_and_by_client_share_one_breaker(
    cluster: list[RedisServer], prefix: str
) -> None:
    """A redis+cluster:// URL and a RedisCluster client share one breaker; a service's
    two keys live in one slot; pickled stores keep sharing."""
    from redis.cluster import RedisCluster

    url = f"redis+cluster://127.0.0.1:{cluster[0].port},127.0.0.1:{cluster[1].port}"
    by_url = shared_store(url, prefix=prefix)
    by_client = shared_store(RedisCluster(host="127.0.0.1", port=cluster[2].port),
                                prefix=prefix)
    assert "redis+cluster://" in repr(by_client)
    ours = CircuitBreaker(failure_threshold=2, recovery_timeout=60.0, store=by_url)
    theirs = CircuitBreaker(failure_threshold=2, recovery_timeout=60.0,
                            store=pickle.loads(pickle.dumps(by_client)))
    for breaker in (ours, theirs):
        breaker.before_attempt(SVC)
        breaker(outcome(EventKind.FAILURE, Verdict.NETWORK))
    assert by_url.shared and ours.state(SVC) == "open"
    with pytest.raises(CircuitOpenError):
        CircuitBreaker(failure_threshold=2, store=by_client).before_attempt(SVC)
    inspect = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    assert inspect.keyslot(by_url.key("breaker", SVC)) == \
        inspect.keyslot(by_url.key("budget", SVC))
    assert RetryBudget(store=pickle.loads(pickle.dumps(by_url))).tokens(SVC) == 20.0
    adapter = SmartRetryAdapter(breaker=CircuitBreaker(failure_threshold=2), state=url)
    assert isinstance(adapter.state, RedisStateStore)  # the URL form through state=


@pytest.mark.slow
def test_cluster_node_killed_loses_no_call(
    cluster: list[RedisServer], fault: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Killing the cluster node that holds a service's keys fails no call: that service
    goes local with one warning.  (Runs last of the cluster tests: it kills a node.)"""
    from redis.cluster import RedisCluster

    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    prefix = f"kill-{uuid.uuid4().hex[:8]}"
    url = ",".join(f"127.0.0.1:{n.port}" for n in cluster)
    store = shared_store(f"redis+cluster://{url}", prefix=prefix, retry_interval=60.0)
    session = smart_session(breaker=CircuitBreaker(), state=store, log=False)
    service = f"http://127.0.0.1:{fault.port}"
    for _ in range(20):
        assert session.get(fault.url("/ok")).status_code == 200
    store.flush()
    inspect = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    owner = inspect.get_node_from_key(store.key("breaker", service))
    assert inspect.exists(store.key("breaker", service))
    victim = next(n for n in cluster if n.port == int(owner.port))
    victim.kill()
    calls = 20
    ends = time.monotonic() + 1.5 * store.sync_interval  # past the next batched sync
    while time.monotonic() < ends:
        assert session.get(fault.url("/ok")).status_code == 200
        calls += 1
        time.sleep(0.005)
    assert fault.hits() == calls
    assert len(redis_warnings(caplog)) == 1


@pytest.mark.slow
def test_sentinel_failover_loses_no_call(
    sentinel: tuple[RedisServer, ...], fault: FaultServer, prefix: str
) -> None:
    """Through a redis+sentinel:// URL, killing the master fails no call; once Sentinel
    has promoted the replica, the state is shared again, on the new master."""
    import redis
    from redis.sentinel import Sentinel

    master, replica, watcher = sentinel
    url = f"redis+sentinel://127.0.0.1:{watcher.port}/mymaster/0"
    store = shared_store(url, prefix=prefix, retry_interval=0.2)
    by_client = shared_store(
        Sentinel([("127.0.0.1", watcher.port)]).master_for("mymaster"), prefix=prefix)
    assert pickle.loads(pickle.dumps(by_client)).where == by_client.where
    assert "redis+sentinel://" in repr(by_client) and "mymaster" in repr(by_client)
    session = smart_session(breaker=CircuitBreaker(), state=store, log=False)
    for _ in range(10):
        assert session.get(fault.url("/ok")).status_code == 200
    master.kill()
    calls = 10
    deadline = time.monotonic() + 30.0
    promoted = False
    while time.monotonic() < deadline:
        assert session.get(fault.url("/ok")).status_code == 200
        calls += 1
        promoted = redis.Redis(port=replica.port, socket_timeout=1).info(
            "replication")["role"] == "master"
        if promoted and store.shared:
            break
        time.sleep(0.02)
    assert promoted and store.shared
    assert fault.hits() == calls
    store.flush()
    service = f"http://127.0.0.1:{fault.port}"
    assert redis.Redis(port=replica.port).exists(store.key("breaker", service))


def test_memory_store_forgets_idle_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process store (also the Redis store's fallback) forgets records idle past
    their TTL, so one entry per host ever seen does not pile up; live ones stay."""
    import requests_smartretry.state as state_module

    clock = [1000.0]
    monkeypatch.setattr(state_module, "_now", lambda: clock[0])
    store = MemoryStateStore()
    settings = BreakerSettings(5.0, 30.0, 1, 0.0, 60.0, 20)
    store.breaker_record("kept", settings, 0.0, failed=True, weight=1.0, ticket=0)
    for number in range(5000):
        store.breaker_admit(f"https://host-{number}.example.com", settings, 0.0)
        clock[0] += 1.0
        if number % 100 == 0:
            store.breaker_admit("kept", settings, 0.0)
    assert len(store._breakers) < 2 * (settings.ttl + 1) + 1024
    assert store.breaker_status("kept", settings, 0.0).consecutive_failures == 1


def test_client_store_pickles_and_names_its_server(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A store built from a ``redis.Redis`` client pickles (redis-py 8 clients hold locks)
    and shares state with the original; its outage warning names the client's server."""
    import redis

    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    store = shared_store(redis.Redis.from_url(redis_url), prefix=prefix)
    copy = pickle.loads(pickle.dumps(store))
    CircuitBreaker(failure_threshold=1, store=store).before_attempt(SVC)
    store.breaker_record(SVC, CircuitBreaker(failure_threshold=1).settings, 0.0,
                         failed=True, weight=1.0, ticket=0)
    assert CircuitBreaker(failure_threshold=1, store=copy).state(SVC) == "open"
    port = unused_port()
    dead = RedisStateStore(redis.Redis(host="127.0.0.1", port=port), prefix=prefix)
    dead.budget_change(SVC, BudgetSettings(0.1, 10.0, 1.0), 0.0, 0.0, 1.0)
    (warning,) = redis_warnings(caplog)
    assert f"redis://127.0.0.1:{port}/0" in warning


def test_a_retry_paid_from_unsent_deposits_costs_no_round_trip(
    redis_url: str, prefix: str
) -> None:
    """Deposits gather locally; a retry they cover is paid from them without a command,
    one they do not cover goes to the shared balance."""
    store = shared_store(redis_url, prefix=prefix)
    settings = BudgetSettings(ratio=0.1, max_tokens=10.0, min_per_second=0.0)
    assert store.budget_change(SVC, settings, 0.0, 0.0, 1.0) == (True, 9.0)  # shared
    inspect = client(redis_url)

    def scripts_run() -> int:
        return int(inspect.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    before = scripts_run()
    store.budget_change(SVC, settings, 0.0, 1.0, 0.0)  # a whole token deposited
    assert store.budget_change(SVC, settings, 0.0, 0.0, 1.0)[0]  # paid from it
    assert scripts_run() == before
    assert store.budget_change(SVC, settings, 0.0, 0.0, 1.0) == (True, 8.0)  # shared again


def _refuse_writes(server: RedisServer, how: str) -> Any:
    """Make ``server`` refuse every write, reads still served; returns the undo."""
    admin = client(server.url)
    if how == "oom":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        return lambda: admin.config_set("maxmemory", 0)
    admin.execute_command("REPLICAOF", "127.0.0.1", str(unused_port()))  # READONLY
    return lambda: admin.execute_command("REPLICAOF", "NO", "ONE")


@pytest.mark.parametrize("how", ["oom", "readonly"])
def test_a_redis_refusing_writes_warns_once_per_outage(
    prefix: str, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A Redis that answers reads but refuses every write (OOM with noeviction, READONLY)
    for a whole "minute" gives one WARNING: a probe that only read does not end the
    episode; once writes work again it ends, once.  (Time is scaled by 100: probes start
    at 10 ms instead of 1 s, and 0.6 s of the run stands for 60 s.)"""
    caplog.set_level(logging.INFO, logger="requests_smartretry")
    with RedisServer() as server:
        store = RedisStateStore(server.url, prefix=prefix, retry_interval=0.01,
                                sync_interval=0.01, time_budget=SHARING_BUDGET)
        breaker = CircuitBreaker(failure_threshold=10**6, store=store)
        breaker.before_attempt("svc")  # connected and sharing
        undo = _refuse_writes(server, how)
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            breaker.after_attempt("svc", breaker.before_attempt("svc"), failed=True)
            time.sleep(0.001)
        assert len(redis_warnings(caplog)) == 1
        assert not any("reachable again" in r.getMessage() for r in caplog.records)
        undo()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and \
                not any("reachable again" in r.getMessage() for r in caplog.records):
            breaker.after_attempt("svc", breaker.before_attempt("svc"), failed=True)
            time.sleep(0.005)
        store.close()
    assert store.shared
    assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1
    assert len(redis_warnings(caplog)) == 1


def test_the_first_request_with_a_silent_redis_is_bounded_by_the_time_budget(
    prefix: str, fault: FaultServer
) -> None:
    """A redis-server that accepts connections but never answers (SIGSTOP) costs the first
    request the time budget, not the socket timeout (1 s here, to tell them apart); a
    request after the socket timeout finds Redis out and uses local state at once."""
    import signal

    with RedisServer() as server:
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            store = RedisStateStore(server.url, prefix=prefix, socket_timeout=1.0,
                                    time_budget=0.05)
            session = smart_session(breaker=CircuitBreaker(), state=store, log=False)
            started = time.monotonic()
            assert session.get(fault.url("/ok")).status_code == 200
            first = time.monotonic() - started
            time.sleep(1.1)
            started = time.monotonic()
            assert session.get(fault.url("/ok")).status_code == 200
            later = time.monotonic() - started
            assert not store.shared
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
    assert first < 0.5  # 50 ms budget, generous for load; 1 s (the socket timeout) before
    assert later < 1.0


def test_six_processes_each_healing_one_503_leave_the_shared_breaker_closed(
    redis_url: str, prefix: str, fault: FaultServer
) -> None:
    """Six processes sharing one breaker (threshold 5), each making one call at the same
    moment that gets a 503 and succeeds on its retry: no refusal, the breaker stays closed
    (six separate breakers would not open either)."""
    results = in_processes(healing_call, [
        (redis_url, prefix, fault.url(f"/seq/heal{n}?steps=503,ok"), 6) for n in range(6)])
    assert results == ["200"] * 6
    service = f"http://127.0.0.1:{fault.port}"
    view = CircuitBreaker(failure_threshold=5, store=shared_store(redis_url, prefix=prefix))
    assert view.state(service) == "closed"
    assert view.status(service).consecutive_failures == 0


def test_a_real_outage_still_opens_the_shared_breaker_within_threshold_calls(
    redis_url: str, prefix: str, fault: FaultServer
) -> None:
    """Every attempt failing: the shared breaker (threshold 5) opens within five failed
    calls (one retry each), and another process's view of it is open."""
    breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=30.0)
    session = smart_session(max_retries=1, breaker=breaker, budget=None, log=False,
                            state=shared_store(redis_url, prefix=prefix), sleep=lambda s: None)
    failed_calls = 0
    with pytest.raises(CircuitOpenError):
        for _ in range(10):
            assert session.get(fault.url("/status/503")).status_code == 503
            failed_calls += 1
    assert failed_calls <= 5
    other = CircuitBreaker(failure_threshold=5, store=shared_store(redis_url, prefix=prefix))
    assert other.state(f"http://127.0.0.1:{fault.port}") == "open"


@pytest.mark.parametrize("shared", [False, True])
def test_a_storm_of_double_failures_loses_no_call_to_the_budget(
    redis_url: str, prefix: str, fault: FaultServer, shared: bool
) -> None:
    """``max_retries=2``, every call failing twice then succeeding, 300 calls at full
    speed: the default budget (local, or shared through Redis) loses none, since a call
    that succeeds refunds both its retries."""
    state = shared_store(redis_url, prefix=prefix) if shared else None
    session = smart_session(max_retries=2, breaker=None, log=False, state=state,
                            sleep=lambda s: None)
    statuses = [session.get(fault.url(f"/seq/d{n}?steps=503,503,ok")).status_code
                for n in range(300)]
    assert statuses.count(200) == 300
    if state is not None:
        assert state.shared


def test_four_processes_of_calls_needing_two_retries_lose_none_to_the_shared_budget(
    redis_url: str, prefix: str, fault: FaultServer
) -> None:
    """4 processes x 4 threads sharing the default budget through Redis, 5 calls each,
    every call failing twice then succeeding (20 ms before each retry): all 80 end 200.
    Paying every retry at once, 16 callers held up to 32 tokens of 20 and lost calls."""
    base = f"http://127.0.0.1:{fault.port}"
    results = in_processes(retried_storm,
                           [(redis_url, prefix, base, 4, 5, "503,503,ok")] * 4)
    codes = [code for codes in results for code in codes]
    assert codes == [200] * 80
    assert fault.hits() == 240


def test_a_shared_debt_is_not_paid_from_this_process_s_unsent_deposits(
    redis_url: str, prefix: str
) -> None:
    """Deposits this process has not sent yet pay a retry without a round trip only when
    the shared balance covers it too: a service in debt (a failed call's retries charged
    at its end) refuses the next call until the deposits pay the debt back."""
    store = shared_store(redis_url, prefix=prefix, sync_interval=3600.0)
    budget = RetryBudget(0.5, max_tokens=1, min_per_second=0, store=store)
    assert budget.allow_retry(SVC)
    budget(AttemptEvent(kind=EventKind.GIVE_UP, operation="op", service=SVC, attempt=4,
                        max_attempts=4, call_id=1))  # 1 - 1 - 2 retries: 2 in debt
    for _ in range(2):  # one whole token, gathered locally, not sent
        budget(AttemptEvent(kind=EventKind.START, operation="op", service=SVC, attempt=1,
                            max_attempts=4, call_id=2))
    assert not budget.allow_retry(SVC)
    assert budget.tokens(SVC) == pytest.approx(-1.0)
    assert store.shared


def test_an_operator_command_reaches_redis_from_a_fresh_process(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A one-off operator script (a fresh store, no connection yet) forces a breaker open
    in Redis even when connecting takes longer than a request's time budget: no request
    waits for it.  (Bound by the time budget, the first command went to this process's
    local state only, silently: with time_budget=0.001, 5 of 5 force_opens never reached
    Redis; on a loaded box the default 50 ms lost a fleet-wide reset the same way.)  With
    Redis unreachable it stays local, with a WARNING saying the fleet does not follow."""
    store = RedisStateStore(redis_url, prefix=prefix, time_budget=0.001)
    breaker = CircuitBreaker(store=store)
    breaker.force_open(SVC)
    assert client(redis_url).hget(store.key("breaker", SVC), "st") == "3"
    breaker.reset(SVC)
    assert client(redis_url).hget(store.key("breaker", SVC), "st") == "0"
    assert "in this process only" not in caplog.text
    down = CircuitBreaker(store=RedisStateStore(f"redis://127.0.0.1:{unused_port()}/0",
                                                prefix=prefix))
    with caplog.at_level(logging.WARNING, logger="requests_smartretry"):
        down.force_open(SVC)
    assert down.state(SVC) == "forced_open"
    assert f"breaker of {SVC} set to forced_open in this process only" in caplog.text
    store.close()


def test_a_forced_state_holds_while_redis_is_out() -> None:
    """A breaker forced open through Redis stays forced open in a process that loses
    Redis (its last view is carried into local state); once Redis says closed again, the
    next outage lifts it.  (Views were dropped at the outage: with the fleet forced open,
    520 of 520 calls went through during a 3 s CLIENT PAUSE.)"""
    with RedisServer() as server:
        here = CircuitBreaker(recovery_timeout=60.0,
                              store=RedisStateStore(server.url, retry_interval=0.2))
        operator = CircuitBreaker(recovery_timeout=60.0, store=RedisStateStore(server.url))
        assert here.state(SVC) == "closed"
        operator.force_open(SVC)
        with pytest.raises(CircuitOpenError):
            wait_until_refused(here)
        operator.store.close()
        server.kill()
        here.status(SVC)  # a round trip that finds Redis out
        assert not here.store.shared
        for _ in range(5):
            with pytest.raises(CircuitOpenError) as caught:
                here.before_attempt(SVC)
            assert caught.value.forced
        assert here.state(SVC) == "forced_open"
        server.start()  # an empty Redis: the breaker is closed there
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                here.after_attempt(SVC, here.before_attempt(SVC), failed=False)
                if here.store.shared:
                    break
            except CircuitOpenError:
                pass
            time.sleep(0.05)
        assert here.store.shared and here.state(SVC) == "closed"
        server.kill()
        here.status(SVC)
        assert not here.store.shared
        here.after_attempt(SVC, here.before_attempt(SVC), failed=False)  # admitted
        here.store.close()


def test_a_command_given_while_redis_is_out_is_written_there_once_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator forces a breaker open while this process cannot reach Redis: it holds
    here at once (with a WARNING), and once Redis answers again it is written there, so
    every process follows it.  (It stayed in the one process: another process saw the
    breaker closed for as long as it looked.)  A later command that reaches Redis is not
    overwritten by an older one still unsent."""
    with RedisServer() as server:
        here = CircuitBreaker(recovery_timeout=60.0,
                              store=RedisStateStore(server.url, retry_interval=0.2))
        assert here.state(SVC) == "closed"
        server.kill()
        with caplog.at_level(logging.INFO, logger="requests_smartretry"):
            here.force_open(SVC)
            assert here.state(SVC) == "forced_open"
            assert "in this process only until Redis is back" in caplog.text
            server.start()  # an empty Redis
            other = CircuitBreaker(recovery_timeout=60.0, store=RedisStateStore(server.url))
            assert other.state(SVC) == "closed"
            deadline = time.monotonic() + 10.0
            while other.state(SVC) != "forced_open" and time.monotonic() < deadline:
                with contextlib.suppress(CircuitOpenError):  # here's traffic finds Redis
                    here.before_attempt(SVC)
                time.sleep(0.05)
            assert other.state(SVC) == "forced_open"
            assert f"breaker of {SVC} set to forced_open while Redis was unreachable, now " \
                   "written there" in caplog.text
        assert client(server.url).hget(here.store.key("breaker", SVC), "st") == "3"
        # Given again while out, then superseded by a command that reached Redis.
        server.kill()
        here.status(SVC)
        here.force_close(SVC)
        server.start()
        other.reset(SVC)
        here.reset(SVC)  # reaches Redis: the unsent force_close is dropped
        for _ in range(5):
            with contextlib.suppress(CircuitOpenError):
                here.before_attempt(SVC)
            time.sleep(0.05)
        assert other.state(SVC) == "closed"
        assert client(server.url).hget(here.store.key("breaker", SVC), "st") == "0"
        here.store.close()
        other.store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_redis_is_out_holds_the_parents_command() -> None:
    """A worker forks while Redis is out and its breaker is forced open by an operator:
    the child refuses calls too (it had a fresh, closed breaker and sent them), and it
    does not write the command to Redis itself (the parent does)."""
    with RedisServer() as server:
        here = CircuitBreaker(recovery_timeout=60.0,
                              store=RedisStateStore(server.url, retry_interval=0.2))
        assert here.state(SVC) == "closed"
        server.kill()
        here.force_open(SVC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 3
            try:
                state = here.state(SVC)
                try:
                    here.before_attempt(SVC)
                    code = 4  # admitted: the forced state was lost in the child
                except CircuitOpenError:
                    code = 0 if state == "forced_open" and not here.store._unsent else 5
            finally:
                os._exit(code)
        assert wait_for_child(pid, "a breaker call in a child forked during an outage") == 0
        here.store.close()


def test_a_command_whose_keys_are_unusable_does_not_hold_back_the_others_written_back(
) -> None:
    """Two commands given while Redis was out; once it is back, the first service's key
    is unusable (a WRONGTYPE value left there): the second command is still written to
    Redis (the write-back goes on past a key episode, and stops only when Redis is
    down)."""
    with RedisServer() as server:
        here = CircuitBreaker(recovery_timeout=60.0,
                              store=RedisStateStore(server.url, retry_interval=0.2))
        assert here.state(SVC) == "closed"
        server.kill()
        here.force_open("bad-key-svc")  # given first: first in line for the write-back
        here.force_open(SVC)
        server.start()
        client(server.url).set(here.store.key("breaker", "bad-key-svc"), "not a hash")
        other = CircuitBreaker(recovery_timeout=60.0, store=RedisStateStore(server.url))
        deadline = time.monotonic() + 10.0
        while other.state(SVC) != "forced_open" and time.monotonic() < deadline:
            with contextlib.suppress(CircuitOpenError):  # here's traffic finds Redis
                here.before_attempt("traffic")
            time.sleep(0.05)
        assert other.state(SVC) == "forced_open"
        assert client(server.url).hget(here.store.key("breaker", SVC), "st") == "3"
        here.store.close()
        other.store.close()


def test_a_command_written_back_does_not_overwrite_a_later_one_from_another_process(
) -> None:
    """Process A forces a breaker open while it cannot reach Redis; later, process B
    forces it closed, and that reaches Redis.  When A's command is written back, B's
    later command stays (A follows it); a command given by a process that never measured
    Redis's clock is written as given then (it cannot be placed in time)."""
    with RedisServer() as server:
        a = CircuitBreaker(recovery_timeout=60.0,
                           store=RedisStateStore(server.url, retry_interval=0.2))
        assert a.state(SVC) == "closed"
        server.kill()
        fresh = CircuitBreaker(recovery_timeout=60.0,
                               store=RedisStateStore(server.url, retry_interval=0.2))
        fresh.force_open("other-svc")
        a.force_open(SVC)
        time.sleep(0.05)
        server.start()
        b = CircuitBreaker(recovery_timeout=60.0, store=RedisStateStore(server.url))
        b.force_close(SVC)
        b.reset("other-svc")  # long ago, as far as the fresh process's clock can tell
        redis = client(server.url)
        deadline = time.monotonic() + 10.0
        while (a.store._unsent or fresh.store._unsent) and time.monotonic() < deadline:
            for breaker in (a, fresh):
                with contextlib.suppress(CircuitOpenError):  # traffic finds Redis
                    breaker.before_attempt("traffic")
            time.sleep(0.05)
        assert not a.store._unsent and not fresh.store._unsent
        assert redis.hget(a.store.key("breaker", SVC), "st") == "4"
        assert b.state(SVC) == "forced_closed" and a.state(SVC) == "forced_closed"
        assert redis.hget(a.store.key("breaker", "other-svc"), "st") == "3"
        for breaker in (a, b, fresh):
            breaker.store.close()


def wait_until_refused(breaker: CircuitBreaker) -> None:
    """Attempts on SVC until one is refused (raises CircuitOpenError), for up to 5 s."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        breaker.after_attempt(SVC, breaker.before_attempt(SVC), failed=False)
        time.sleep(0.01)
