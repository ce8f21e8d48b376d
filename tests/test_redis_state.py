"""RedisStateStore against a real redis-server: the Lua scripts agree with the in-process
algorithms, processes share one breaker and one budget without lost updates, and Redis
down, slow or answering garbage never fails a request."""

from __future__ import annotations

import logging
import pickle
import random
import socket
import sys
import threading
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
from requests_smartretry.state import BreakerSettings, BudgetSettings
from tests.redis_server import (
    RedisServer,
    budgeted_calls,
    client,
    failing_calls,
    in_processes,
    random_events,
)

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
    shared = RedisStateStore(redis_url, prefix=prefix, server_time=False)
    rng = random.Random(20261127)
    now = 1_000_000.25
    tickets: list[int] = []
    states: list[str] = []
    for step in range(2000):
        choice = rng.random()
        if choice < 0.3:
            a = memory.breaker_admit("k", settings, now)
            b = shared.breaker_admit("k", settings, now)
            assert (a.allowed, a.ticket) == (b.allowed, b.ticket), step
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
        else:
            now += rng.choice([0.001, 0.5, 3.0, 11.0])
    assert shared.shared
    # The run went through every transition more than once.
    changes = [(a, b) for a, b in zip(states, states[1:]) if a != b]
    for transition in [("closed", "open"), ("half_open", "closed"), ("half_open", "open")]:
        assert changes.count(transition) >= 2, (transition, changes)


def test_keys_are_namespaced_and_expire(redis_url: str, prefix: str) -> None:
    """Each service's records live under the prefix and carry a time to live."""
    store = RedisStateStore(redis_url, prefix=prefix)
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=5.0, window=20.0,
                             store=store)
    budget = RetryBudget(store=store)
    breaker.before_attempt(SVC)
    breaker(outcome(EventKind.FAILURE, Verdict.NETWORK))
    budget.allow_retry(SVC)
    inspect = client(redis_url)
    keys = sorted(inspect.keys(f"{prefix}:*"))
    assert keys == [f"{prefix}:breaker:{SVC}", f"{prefix}:budget:{SVC}"]
    breaker_ttl = inspect.pttl(keys[0]) / 1000
    assert 0 < breaker_ttl <= 2 * 20 + 60
    assert 0 < inspect.pttl(keys[1]) / 1000 <= budget.settings.ttl  # max_tokens/rate + 60


def test_server_time_lets_skewed_hosts_agree(redis_url: str, prefix: str) -> None:
    """Two hosts whose clocks differ by days see the same open breaker and the same
    time to the next probe, because the scripts read the Redis server's clock."""
    ours = CircuitBreaker(failure_threshold=1, recovery_timeout=30.0, clock=lambda: 0.0,
                          store=RedisStateStore(redis_url, prefix=prefix))
    theirs = CircuitBreaker(failure_threshold=1, recovery_timeout=30.0,
                            clock=lambda: 5 * 86400.0,
                            store=RedisStateStore(redis_url, prefix=prefix))
    ours.before_attempt(SVC)
    ours(outcome(EventKind.FAILURE, Verdict.TIMEOUT))
    with pytest.raises(CircuitOpenError) as caught:
        theirs.before_attempt(SVC)
    assert 25.0 < caught.value.retry_in <= 30.0


def test_at_most_one_round_trip_per_event(
    redis_url: str, prefix: str, fault: FaultServer
) -> None:
    """Admission, each result and each retry's spend cost one Redis round trip each;
    deposits travel with the next spend (or once they make a whole token), so a
    successful request with breaker and budget costs two."""
    store = RedisStateStore(redis_url, prefix=prefix)
    session = smart_session(breaker=CircuitBreaker(), state=store, log=False,
                            sleep=lambda seconds: None)
    session.get(fault.url("/ok"))  # connects and loads the scripts
    commands: list[str] = []
    redis_client = store._client
    original = redis_client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        commands.append(str(args[0]))
        return original(*args, **kwargs)

    redis_client.execute_command = counting
    assert session.get(fault.url("/ok")).status_code == 200
    assert commands == ["EVALSHA"] * 2  # admit, record (SUCCESS)
    commands.clear()
    assert session.get(fault.url("/status/503")).status_code == 503
    # admit, record failure, spend for the retry (with the deposits), admit, record failure
    assert commands == ["EVALSHA"] * 5
    commands.clear()
    for _ in range(10):
        session.get(fault.url("/ok"))
    assert len(commands) == 2 * 10 + 1  # one deposit of a whole token in ten calls


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
    store = RedisStateStore(redis_url, prefix=prefix)
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
    client(redis_url).delete(f"smartretry:breaker:http://127.0.0.1:{fault.port}")


@pytest.mark.slow
def test_budget_across_four_processes_bounds_the_fleet(
    redis_url: str, fault: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """With one budget shared by 4 processes in an outage, the server sees at most
    ``calls * (1 + ratio) + max_tokens`` attempts, whatever the process count."""
    calls, ratio, max_tokens = 100, 0.1, 10.0
    in_processes(budgeted_calls,
                 [(redis_url, fault.url("/status/503"), calls, ratio, max_tokens)] * 4)
    total_calls = 4 * calls
    with capsys.disabled():
        print(f"\n[redis budget] 4 processes x {calls} calls, max_retries=3, outage: "
              f"attempts/call {fault.hits() / total_calls:.3f} "
              f"(bound {1 + ratio + max_tokens / total_calls:.3f})")
    assert total_calls < fault.hits() <= total_calls * (1 + ratio) + max_tokens
    # Per-process budgets would have allowed up to 4 * max_tokens of the initial burst.
    balance = float(client(redis_url).hget(
        f"smartretry:budget:http://127.0.0.1:{fault.port}", "tok"))
    assert balance < 1.0


@pytest.mark.slow
def test_eight_processes_lose_no_update(redis_url: str, prefix: str) -> None:
    """8 processes x 200 events on one service key: the shared counters equal the sums of
    what each process fed (no lost updates)."""
    results = in_processes(random_events, [(redis_url, prefix, seed, 200) for seed in range(8)])
    failures = sum(r[0] for r in results)
    assert [r[1] for r in results] == [200] * 8  # every spend was granted and counted
    store = RedisStateStore(redis_url, prefix=prefix)
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
        store = RedisStateStore(server.url, retry_interval=0.2)
        breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=60.0)
        session = smart_session(max_retries=0, breaker=breaker, state=store, log=False)
        service = f"http://127.0.0.1:{fault.port}"
        for _ in range(10):
            assert session.get(fault.url("/ok")).status_code == 200
        assert client(server.url).exists(f"smartretry:breaker:{service}")

        server.kill()
        for _ in range(30):
            assert session.get(fault.url("/ok")).status_code == 200
        assert not store.shared
        assert len(redis_warnings(caplog)) == 1

        server.start()  # same port, empty (no persistence)
        time.sleep(0.3)  # past retry_interval: the next event probes Redis
        for _ in range(5):
            assert session.get(fault.url("/ok")).status_code == 200
        assert store.shared
        assert client(server.url).exists(f"smartretry:breaker:{service}")
        assert any("reachable again" in r.getMessage() for r in caplog.records)

        # Another worker trips the shared breaker: our next call is refused at once.
        other = CircuitBreaker(failure_threshold=3, recovery_timeout=60.0,
                               store=RedisStateStore(server.url))
        for _ in range(3):
            other.before_attempt(service)
            other(outcome(EventKind.FAILURE, Verdict.NETWORK, service))
        hits = fault.hits()
        with pytest.raises(CircuitOpenError):
            session.get(fault.url("/ok"))
        assert fault.hits() == hits
        assert len(redis_warnings(caplog)) == 1
    finally:
        server.kill()


def test_unresponsive_redis_costs_one_short_timeout(
    fault: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that accepts connections and never answers delays one request by about
    the socket timeout, then local state serves until the next probe."""
    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:  # never accepts
        port = silent.getsockname()[1]
        store = RedisStateStore(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2,
                                retry_interval=60.0)
        session = smart_session(breaker=CircuitBreaker(), state=store, log=False)
        started = time.monotonic()
        assert session.get(fault.url("/ok")).status_code == 200
        first = time.monotonic() - started
        for _ in range(20):
            assert session.get(fault.url("/ok")).status_code == 200
        rest = time.monotonic() - started - first
    assert first < 10.0  # bounded: about one 0.2 s timeout, never a hang
    assert rest < 10.0
    assert not store.shared
    assert len(redis_warnings(caplog)) == 1


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


class GarbageRedis:
    """A TCP server on loopback that answers every read with bytes that are not RESP."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        with conn:
            try:
                while conn.recv(65536):
                    conn.sendall(b"%%% this is not redis \x00\xff\r\n")
            except OSError:
                return

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)


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
    client(redis_url).set(f"{prefix}:breaker:{SVC}", "not a hash")
    breaker = CircuitBreaker(store=RedisStateStore(redis_url, prefix=prefix))
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
