"""RetryBudget: the token bucket (injected clock), its wiring into the retry loop, and what
it costs against a real server, with the in-process store and with a real redis-server:
a storm of transient failures loses no call, an outage stays near one attempt per call,
and test mode never denies a retry."""

from __future__ import annotations

import pickle
import threading
import time
import uuid
from typing import Any

import pytest

from requests_smartretry import (
    AttemptEvent,
    CircuitBreaker,
    EventKind,
    MemoryStateStore,
    RetryBudget,
    SmartRetryAdapter,
    StateStore,
    smart_session,
)
from requests_smartretry.faultserver import FaultServer
from requests_smartretry.testing import fast_retries
from tests.conftest import CountingLock, FakeClock, observe_while_threads_work
from tests.redis_server import SHARING_BUDGET

SVC = "https://api.example.com"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> StateStore:
    """Where the budget keeps its buckets: this process, or a real Redis (own prefix)."""
    if request.param == "memory":
        return MemoryStateStore()
    from requests_smartretry.redis_state import RedisStateStore

    url = request.getfixturevalue("redis_url")
    return RedisStateStore(url, prefix=f"test-{uuid.uuid4().hex[:12]}",
                           time_budget=SHARING_BUDGET)


def event(kind: EventKind, attempt: int, service: str = SVC) -> AttemptEvent:
    return AttemptEvent(kind=kind, operation="op", service=service, attempt=attempt,
                        max_attempts=4, call_id=1)



def start(service: str = SVC, attempt: int = 1) -> AttemptEvent:
    return AttemptEvent(kind=EventKind.START, operation="op", service=service,
                        attempt=attempt, max_attempts=4, call_id=1)


def no_sleep(seconds: float) -> None:
    """Backoff without the waiting."""


def test_full_bucket_allows_max_tokens_retries_then_refuses() -> None:
    """A fresh service may retry ``max_tokens`` times; then retries are refused."""
    budget = RetryBudget(0.0, max_tokens=3, min_per_second=0, clock=FakeClock())
    assert [budget.allow_retry(SVC) for _ in range(5)] == [True, True, True, False, False]


def test_refusal_spends_nothing() -> None:
    """A refused retry leaves the balance as it was, so refusals never go into debt."""
    budget = RetryBudget(0.5, max_tokens=1, min_per_second=0, clock=FakeClock())
    assert budget.allow_retry(SVC)
    budget(start())
    for _ in range(10):
        assert not budget.allow_retry(SVC)
    assert budget.tokens(SVC) == pytest.approx(0.5)
    budget(start())
    assert budget.allow_retry(SVC)


def test_each_call_deposits_ratio_but_retries_do_not() -> None:
    """Calls (first attempts) earn ``ratio`` tokens each; retry attempts earn nothing."""
    budget = RetryBudget(0.25, max_tokens=10, min_per_second=0, clock=FakeClock())
    for _ in range(10):
        assert budget.allow_retry(SVC)
    for _ in range(8):
        budget(start())
        budget(start(attempt=2))
    assert budget.tokens(SVC) == pytest.approx(2.0)


class CountingStore(MemoryStateStore):
    """The in-process store, counting budget writes (a shared store's round trips)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def budget_change(self, *args: Any, **kwargs: Any) -> tuple[bool, float]:
        self.writes += 1
        return super().budget_change(*args, **kwargs)


def test_deposits_are_batched_into_whole_tokens() -> None:
    """Healthy calls write to the store once per whole token deposited, not per call,
    and a retry takes the gathered deposits along with its spend."""
    store = CountingStore()
    budget = RetryBudget(0.1, max_tokens=100, min_per_second=0, store=store, clock=FakeClock())
    for _ in range(20):
        assert budget.allow_retry(SVC)
    store.writes = 0
    for _ in range(35):
        budget(start())
    assert store.writes == 3
    assert budget.allow_retry(SVC)
    assert store.writes == 4
    assert budget.tokens(SVC) == pytest.approx(80 + 3.5 - 1)


def test_deposits_gathered_for_many_hosts_stay_bounded() -> None:
    """A process calling 10,000 distinct hosts keeps deposits gathered for at most a
    bounded number of them; the oldest host's deposit goes to the store, not lost."""
    store = CountingStore()
    budget = RetryBudget(0.1, max_tokens=100, min_per_second=0, store=store, clock=FakeClock())
    first = "https://host-0.example.com"
    assert budget.allow_retry(first)  # 99 tokens left: room for the deposit to show
    store.writes = 0
    for index in range(10_000):
        budget(start(f"https://host-{index}.example.com"))
    assert len(budget._pending) <= 4096
    assert store.writes == 10_000 - len(budget._pending)
    assert store.budget_change(first, budget.settings, budget._clock(), 0.0, 0.0)[1] \
        == pytest.approx(99.1)


def test_tokens_trickle_in_over_time_up_to_the_cap() -> None:
    """``min_per_second`` refills a quiet service's bucket, never above ``max_tokens``."""
    clock = FakeClock()
    budget = RetryBudget(0.0, max_tokens=5, min_per_second=2.0, clock=clock)
    for _ in range(5):
        budget.allow_retry(SVC)
    assert budget.tokens(SVC) == pytest.approx(0.0)
    clock.now += 1.0
    assert budget.tokens(SVC) == pytest.approx(2.0)
    clock.now += 100.0
    assert budget.tokens(SVC) == pytest.approx(5.0)


def test_services_have_separate_budgets() -> None:
    """Spending one service's budget leaves another's untouched."""
    budget = RetryBudget(0.0, max_tokens=1, min_per_second=0, clock=FakeClock())
    assert budget.allow_retry(SVC)
    assert not budget.allow_retry(SVC)
    assert budget.allow_retry("https://other.example.com")


def test_retry_refused_by_the_breaker_is_refunded() -> None:
    """A retry the budget granted but the breaker then refused costs nothing."""
    budget = RetryBudget(0.0, max_tokens=2, min_per_second=0, clock=FakeClock())
    assert budget.allow_retry(SVC)
    budget(AttemptEvent(kind=EventKind.REJECTED, operation="op", service=SVC, attempt=2,
                        max_attempts=2, call_id=1))
    assert budget.tokens(SVC) == pytest.approx(2.0)


@pytest.mark.parametrize(("options", "named"), [
    ({"ratio": -0.1}, "ratio"),
    ({"ratio": "0.1"}, "ratio"),
    ({"max_tokens": float("inf")}, "max_tokens"),
    ({"min_per_second": -1}, "min_per_second"),
    ({"min_per_second": True}, "min_per_second"),
])
def test_bad_configuration_names_the_parameter(options: dict[str, Any], named: str) -> None:
    """A bad setting is refused at construction with its name in the message."""
    with pytest.raises(ValueError, match=named):
        RetryBudget(**options)


def test_budget_and_breaker_refuse_a_second_store() -> None:
    """A budget or breaker keeps one store: a second, different ``state=`` is refused
    rather than silently splitting its state."""
    budget = RetryBudget(store=MemoryStateStore())
    with pytest.raises(ValueError, match="one place"):
        SmartRetryAdapter(budget=budget, state=MemoryStateStore())
    shared = MemoryStateStore()
    breaker = CircuitBreaker()
    adapter = SmartRetryAdapter(breaker=breaker, state=shared)
    assert breaker.store is shared and adapter.budget is not None
    assert adapter.budget.store is shared  # type: ignore[attr-defined]
    SmartRetryAdapter(breaker=breaker, state=shared)  # the same store again: fine
    with pytest.raises(ValueError, match="one place"):
        SmartRetryAdapter(breaker=breaker, state=MemoryStateStore())


def test_adapter_budgets_by_default_and_none_turns_it_off() -> None:
    """Every adapter gets its own generous ``RetryBudget()``; ``budget=None`` has none."""
    first, second = SmartRetryAdapter(), SmartRetryAdapter()
    assert isinstance(first.budget, RetryBudget)
    assert first.budget is not second.budget
    assert SmartRetryAdapter(budget=None).budget is None


@pytest.mark.parametrize("name", ["breaker", "budget"])
def test_adapter_refuses_a_breaker_or_budget_of_the_wrong_kind(name: str) -> None:
    """``breaker=`` / ``budget=`` given something else (``True``, a number) is refused,
    naming the parameter."""
    with pytest.raises(TypeError, match=name):
        SmartRetryAdapter(**{name: True})


def test_pickled_budget_keeps_its_balance() -> None:
    """A pickled budget comes back with its balance and keeps working."""
    budget = RetryBudget(0.0, max_tokens=3, min_per_second=0)
    budget.allow_retry(SVC)
    copy = pickle.loads(pickle.dumps(budget))
    assert copy.tokens(SVC) == pytest.approx(2.0)
    assert copy.allow_retry(SVC)


def test_spent_budget_gives_up_with_reason_budget() -> None:
    """With the budget spent, a failing call is not retried: it ends with the give-up
    reason ``budget`` and ``on_retry`` is not called.  A call the budget admitted runs all
    its retries; when they fail, each one after the first is charged at its end (into
    debt), so the next call is refused."""
    retries: list[int] = []
    budget = RetryBudget(0.0, max_tokens=1, min_per_second=0)
    session = smart_session(max_retries=3, budget=budget, log=False, sleep=no_sleep,
                            on_retry=lambda attempt, error: retries.append(attempt))
    with FaultServer() as fault:
        service = f"http://127.0.0.1:{fault.port}"
        first = session.get(fault.url("/status/503"))
        assert first.retry_history[-1].give_up_reason == "exhausted"
        assert fault.hits() == 4 and retries == [1, 2, 3]
        assert budget.tokens(service) == pytest.approx(-2.0)  # 1, less 1 + 2 retries
        second = session.get(fault.url("/status/503"))
        assert [e.give_up_reason for e in second.retry_history if e.give_up_reason] == [
            "budget"]
        assert fault.hits() == 5 and retries == [1, 2, 3]


@pytest.mark.slow
def test_outage_attempts_per_call_with_budget_on_and_off(
    store: StateStore, capsys: pytest.CaptureFixture[str],
) -> None:
    """In a total outage (every call 503, one retry allowed), the default budget keeps the
    server at <= 1.15 attempts per call over 1000 calls at full speed, in this process or
    shared through Redis; without a budget it is 2.0."""
    calls = 1000
    ratios = {}
    with FaultServer() as fault:
        for label, options in (("on", {"budget": RetryBudget(store=store)}),
                               ("off", {"budget": None})):
            fault.reset_counts()
            session = smart_session(max_retries=1, log=False, sleep=no_sleep, **options)
            for _ in range(calls):
                session.get(fault.url("/status/503")).close()
            ratios[label] = fault.hits() / calls
            session.close()
    with capsys.disabled():
        print(f"\n[budget] outage, 1000 calls, max_retries=1, {type(store).__name__}: "
              "attempts/call budget on "
              f"{ratios['on']:.3f}, off {ratios['off']:.3f}")
    assert 1.0 < ratios["on"] <= 1.15
    assert ratios["off"] == 2.0


def test_retry_cut_by_an_opening_breaker_costs_no_token() -> None:
    """When the breaker opens between attempts, the token spent on the retry it refuses
    comes back (the retry that went out and failed keeps its cost)."""
    budget = RetryBudget(0.0, max_tokens=5, min_per_second=0)
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60.0)
    session = smart_session(max_retries=2, budget=budget, breaker=breaker, log=False,
                            sleep=no_sleep)
    with FaultServer() as fault:
        response = session.get(fault.url("/status/503"))
        service = f"http://127.0.0.1:{fault.port}"
    # (The first failure counts once the retry fails too: the breaker refuses attempt 3.)
    assert response.retry_history[-1].give_up_reason == "circuit_open"
    assert budget.tokens(service) == pytest.approx(4.0)


# -- refunds: a retry that succeeds pays for itself ---------------------------------------


def test_retry_that_succeeds_gets_its_token_back(store: StateStore) -> None:
    """A retry whose attempt succeeds is refunded (the failure was transient); one whose
    attempt fails keeps its cost, with either store."""
    budget = RetryBudget(0.0, max_tokens=3, min_per_second=0, store=store,
                         clock=FakeClock())
    assert budget.allow_retry(SVC)
    budget(event(EventKind.SUCCESS, 2))
    assert budget.tokens(SVC) == pytest.approx(3.0)
    assert budget.allow_retry(SVC)
    budget(event(EventKind.FAILURE, 2))
    assert budget.tokens(SVC) == pytest.approx(2.0)
    budget(event(EventKind.SUCCESS, 1))  # a first attempt that succeeds refunds nothing
    assert budget.tokens(SVC) == pytest.approx(2.0)


def test_a_call_holds_one_token_whatever_its_retries(store: StateStore) -> None:
    """A call admitted to retrying holds one token however many retries it runs: its
    success gives that token back; its failure after 4 attempts charges the 2 retries
    after the first (into debt), so the next call is refused until deposits pay it back."""
    clock = FakeClock()
    budget = RetryBudget(1.0, max_tokens=1, min_per_second=0, store=store, clock=clock)
    assert budget.allow_retry(SVC)
    assert budget.tokens(SVC) == pytest.approx(0.0)
    budget(event(EventKind.SUCCESS, 4))  # retries 2 and 3 ran on the admission's credit
    assert budget.tokens(SVC) == pytest.approx(1.0)
    assert budget.allow_retry(SVC)
    budget(event(EventKind.GIVE_UP, 4))
    assert budget.tokens(SVC) == pytest.approx(-2.0)
    assert not budget.allow_retry(SVC)
    for _ in range(3):
        budget(start())
    assert budget.tokens(SVC) == pytest.approx(1.0)
    assert budget.allow_retry(SVC)
    budget(event(EventKind.GIVE_UP, 2))  # only the first retry ran: it stays spent
    budget(event(EventKind.REJECTED, 3))  # a later retry refused by the breaker: on credit
    assert budget.tokens(SVC) == pytest.approx(0.0)


def test_refund_never_fills_the_bucket_past_max_tokens() -> None:
    """Refunds and deposits stop at ``max_tokens``: a long storm cannot bank retries for
    the outage that may follow."""
    budget = RetryBudget(0.5, max_tokens=2, min_per_second=0, clock=FakeClock())
    for _ in range(10):
        budget(start())
        assert budget.allow_retry(SVC)
        budget(event(EventKind.SUCCESS, 2))
    assert budget.tokens(SVC) == pytest.approx(2.0)


def test_test_mode_grants_every_retry_and_spends_nothing() -> None:
    """Inside ``fast_retries()`` an empty budget still grants retries and its balance does
    not move; outside, the same budget refuses."""
    budget = RetryBudget(0.0, max_tokens=1, min_per_second=0, clock=FakeClock())
    assert budget.allow_retry(SVC)
    with fast_retries():
        assert all(budget.allow_retry(SVC) for _ in range(50))
        budget(event(EventKind.SUCCESS, 2))
    assert budget.tokens(SVC) == pytest.approx(0.0)
    assert not budget.allow_retry(SVC)


def test_test_mode_refunds_nothing_when_the_breaker_refuses_a_retry() -> None:
    """Inside ``fast_retries()`` a retry that the breaker then refuses gives back no token
    (test mode spent none), so a spent budget stays spent after the test."""
    budget = RetryBudget(0.0, max_tokens=1, min_per_second=0)
    with FaultServer() as fault:
        service = f"http://127.0.0.1:{fault.port}"
        smart_session(max_retries=1, budget=budget, log=False,
                      sleep=no_sleep).get(fault.url("/status/503"))
        assert budget.tokens(service) == pytest.approx(0.0)
        session = smart_session(max_retries=2, budget=budget, log=False,
                                breaker=CircuitBreaker(failure_threshold=1))
        with fast_retries():
            response = session.get(fault.url("/status/503"))
    assert response.retry_history[-1].give_up_reason == "circuit_open"
    assert budget.tokens(service) == pytest.approx(0.0)


# -- against a real server -------------------------------------------------------------------


def in_threads(caller: Any, threads: int) -> None:
    """Run ``caller(index)`` in ``threads`` threads at once and wait for all of them."""
    workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)


def storm_step(n: int) -> str:
    """2 of every 3 calls fail once (a 503 or a reset) and then succeed."""
    return ("503", "reset", "ok")[n % 3]


@pytest.mark.parametrize("per_thread", [20, 30])
def test_sixteen_thread_storm_of_transient_failures_loses_no_call(
    store: StateStore, per_thread: int,
) -> None:
    """16 threads sharing one default session, 2 of 3 calls failing once: every call ends
    200 after exactly one retry, and the budget denies none."""
    threads = 16
    session = smart_session(budget=RetryBudget(store=store), log=False, sleep=no_sleep,
                            operation_name="storm", pool_maxsize=threads)
    codes: list[int] = []
    lock = threading.Lock()
    with FaultServer() as fault:

        def caller(index: int) -> None:
            for i in range(per_thread):
                n = index * per_thread + i
                response = session.get(fault.url(f"/seq/s{n}?steps={storm_step(n)},ok"))
                with lock:
                    codes.append(response.status_code)

        in_threads(caller, threads)
        calls = threads * per_thread
        failing = sum(1 for n in range(calls) if storm_step(n) != "ok")
        assert codes == [200] * calls
        assert fault.hits() == calls + failing
    stats = session.get_adapter("http://").stats.snapshot()["storm"]
    assert stats["budget_denials"] == 0 and stats["retries"] == failing
    session.close()


@pytest.mark.parametrize("steps", ["503,503,ok", "503,reset,503,ok"])
def test_sixteen_threads_of_calls_needing_several_retries_lose_none(
    store: StateStore, steps: str,
) -> None:
    """16 threads, 5 calls each, every call failing two or three times and then
    succeeding, with a real wait before each retry: every call ends 200 and the default
    budget denies none (paying each retry at once, 16 threads held 32 tokens of 20 and
    the budget refused 74 of 80 calls)."""
    threads, per_thread = 16, 5
    retries = steps.count(",")
    session = smart_session(max_retries=retries, budget=RetryBudget(store=store), log=False,
                            sleep=lambda seconds: time.sleep(0.02), operation_name="storm2",
                            pool_maxsize=threads)
    codes: list[int] = []
    lock = threading.Lock()
    with FaultServer() as fault:

        def caller(index: int) -> None:
            for i in range(per_thread):
                url = fault.url(f"/seq/m{index}-{i}?steps={steps}")
                status = session.get(url).status_code
                with lock:
                    codes.append(status)

        in_threads(caller, threads)
        calls = threads * per_thread
        assert codes == [200] * calls
        assert fault.hits() == calls * (retries + 1)
    stats = session.get_adapter("http://").stats.snapshot()["storm2"]
    assert stats["budget_denials"] == 0
    session.close()


def test_an_outage_with_two_retries_per_call_stays_near_the_ratio(store: StateStore) -> None:
    """Every call 503, ``max_retries=2``, 300 calls at full speed: every retry that went
    out is paid (a call admitted and failed costs two tokens), so the server sees at most
    the burst, the deposits and the trickle in retries, not 3 attempts per call."""
    calls = 300
    settings = RetryBudget(store=store).settings
    session = smart_session(max_retries=2, budget=RetryBudget(store=store), log=False,
                            sleep=no_sleep)
    with FaultServer() as fault:
        started = time.monotonic()
        for _ in range(calls):
            session.get(fault.url("/status/503")).close()
        elapsed = time.monotonic() - started
        retries = fault.hits() - calls
    paid = settings.max_tokens + settings.ratio * calls + settings.min_per_second * elapsed
    assert 0 < retries <= paid + 2  # (+2: the last admitted call's credit, still unpaid)
    session.close()


def test_three_hundred_sequential_calls_each_failing_once_all_succeed(
    store: StateStore,
) -> None:
    """One caller, 300 calls, each failing once with a 503: the refunds keep the default
    budget full, so every call gets its retry (it used to stop after the 20-token burst)."""
    session = smart_session(budget=RetryBudget(store=store), log=False, sleep=no_sleep)
    with FaultServer() as fault:
        codes = [session.get(fault.url(f"/seq/q{n}?steps=503,ok")).status_code
                 for n in range(300)]
        assert fault.hits() == 600
    assert codes == [200] * 300
    session.close()


def test_sixty_calls_in_fast_retries_all_retry(store: StateStore) -> None:
    """Inside ``fast_retries()``, 60 calls sharing one session against a server that is
    down all get their retry (the budget, which would allow ~20, stays out of the way), so
    a test suite's results do not depend on test order."""
    budget = RetryBudget(store=store)
    session = smart_session(budget=budget, log=False)
    with FaultServer() as fault, fast_retries():
        responses = [session.get(fault.url("/status/503")) for _ in range(60)]
        assert fault.hits() == 120
        service = f"http://127.0.0.1:{fault.port}"
    assert all(r.status_code == 503 for r in responses)
    assert all(sum(e.kind is EventKind.RETRY for e in r.retry_history) == 1
               for r in responses)
    assert budget.tokens(service) == pytest.approx(20.0)
    session.close()



def test_a_calls_deposit_takes_no_lock() -> None:
    """A healthy call's deposit is one append to its service's queue: no lock (the
    service's first deposit makes the queue, under the lock, once)."""
    budget = RetryBudget(0.1, max_tokens=100, min_per_second=0, clock=FakeClock())
    lock = CountingLock()
    budget._lock = lock  # type: ignore[assignment]
    for _ in range(1000):
        budget.deposit(SVC)
    assert lock.acquired == 1
    assert budget.tokens(SVC) == pytest.approx(100)  # a full bucket stays full


def test_deposits_from_many_threads_are_all_seen_by_a_retry_decision() -> None:
    """Eight threads deposit at once while another reads the balance (taking the gathered
    deposits along, as a retry decision does): no deposit is lost or counted twice, the
    balance only grows, and deposits short of a whole token are still in what the next
    decision reads (none waits, unseen, in a thread of its own)."""
    budget = RetryBudget(0.1, max_tokens=1000, min_per_second=0, clock=FakeClock())
    for _ in range(1000):
        assert budget.allow_retry(SVC)  # empty: every token from here on is a deposit
    seen: list[float] = []
    observe_while_threads_work(lambda: seen.append(budget.tokens(SVC)),
                               lambda: [budget.deposit(SVC) for _ in range(1205)], 8)
    assert seen == sorted(seen)
    assert budget.tokens(SVC) == pytest.approx(8 * 1205 * 0.1)
    for _ in range(3):
        budget.deposit(SVC)  # 0.3 of a token, gathered, not yet in the store
    assert budget.tokens(SVC) == pytest.approx(8 * 1205 * 0.1 + 0.3)
    assert budget.allow_retry(SVC)
    assert budget.tokens(SVC) == pytest.approx(8 * 1205 * 0.1 + 0.3 - 1)
