"""Tests for requests_smartretry.stats: per-operation counts and latency percentiles."""

from __future__ import annotations

import json
import os
import pickle
import random
import threading
import time
from typing import Any

import pytest
import requests

from requests_smartretry import SmartRetryAdapter, Stats
from requests_smartretry.events import AttemptEvent, EventKind, Verdict
from requests_smartretry.faultserver import FaultServer
from requests_smartretry.stats import DEPRECATED_NAMES, OTHER_KEY, TOTAL_KEY, LatencyHistogram

from .conftest import CountingLock, observe_while_threads_work, wait_for_child


def event(kind: EventKind, *, op: str = "op", call_id: int = 1, attempt: int = 1,
          **fields: Any) -> AttemptEvent:
    return AttemptEvent(kind=kind, operation=op, service="http://svc", attempt=attempt,
                        max_attempts=2, call_id=call_id, **fields)


def feed_retried_success(stats: Stats, *, op: str = "op", call_id: int = 1) -> None:
    """One call: a 503 on attempt 1 (0.1 s), 0.4 s of backoff, a success (0.05 s)."""
    stats(event(EventKind.START, op=op, call_id=call_id))
    stats(event(EventKind.FAILURE, op=op, call_id=call_id, verdict=Verdict.SERVER_ERROR,
                elapsed=0.1, status_code=503))
    stats(event(EventKind.RETRY, op=op, call_id=call_id, verdict=Verdict.SERVER_ERROR,
                wait=0.4))
    stats(event(EventKind.START, op=op, call_id=call_id, attempt=2))
    stats(event(EventKind.SUCCESS, op=op, call_id=call_id, attempt=2,
                verdict=Verdict.SUCCESS, elapsed=0.05, call_elapsed=0.55))


def test_a_retried_success_is_counted_per_operation() -> None:
    """One call that failed once and then succeeded shows 1 request, 2 attempts, 1 retry."""
    stats = Stats()
    feed_retried_success(stats)
    op = stats.snapshot()["op"]
    assert op["calls"] == 1
    assert op["attempts"] == 2
    assert op["retries"] == 1
    assert op["calls_succeeded"] == 1
    assert op["attempts_failed"] == 1
    assert op["attempts_failed_by_verdict"] == {"server_error": 1}
    assert op["calls_failed"] == 0
    assert op["calls_in_flight"] == 0
    assert op["retry_rate"] == 1.0
    assert op["attempt_seconds"]["count"] == 2
    assert op["attempt_seconds"]["max"] == pytest.approx(0.1)
    assert op["call_seconds"]["count"] == 1
    assert op["call_seconds"]["p50"] == pytest.approx(0.55)


def test_calls_and_attempts_are_named_apart() -> None:
    """Two calls, one retried once: 2 calls succeeded, 3 attempts of which 1 failed, and
    no field mixes the two (the 0.1 snapshot read successes=2 beside failures=1)."""
    stats = Stats()
    feed_retried_success(stats, call_id=1)
    stats(event(EventKind.START, call_id=2))
    stats(event(EventKind.SUCCESS, call_id=2, verdict=Verdict.SUCCESS, elapsed=0.01,
                call_elapsed=0.01))
    op = stats.snapshot()["op"]
    assert (op["calls"], op["calls_succeeded"], op["calls_failed"]) == (2, 2, 0)
    assert (op["attempts"], op["attempts_failed"], op["retries"]) == (3, 1, 1)
    assert not set(op) & set(DEPRECATED_NAMES)  # the keys (and the JSON) are the new names
    assert json.loads(json.dumps(op)) == dict(op)


@pytest.mark.parametrize(("old", "new"), sorted(DEPRECATED_NAMES.items()))
def test_the_old_names_still_read_with_a_deprecation_warning(old: str, new: str) -> None:
    """Each 0.1 name reads its new field through [] and get(), warning that it goes."""
    stats = Stats()
    feed_retried_success(stats)
    op = stats.snapshot()["op"]
    with pytest.warns(DeprecationWarning, match=new):
        assert op[old] == op[new]
    with pytest.warns(DeprecationWarning, match=new):
        assert op.get(old) == op[new]
    assert op.get("no_such_field", 7) == 7
    assert "no_such_field" not in op
    with pytest.raises(KeyError):
        op["no_such_field"]


def test_give_ups_are_counted_by_reason_and_budget_denials_separately() -> None:
    """A call that ends in failure counts as a give-up under its reason; 'budget' ones
    also count as budget denials."""
    stats = Stats()
    for call_id, reason in ((1, "exhausted"), (2, "budget"), (3, "budget")):
        stats(event(EventKind.START, call_id=call_id))
        stats(event(EventKind.FAILURE, call_id=call_id, verdict=Verdict.TIMEOUT, elapsed=1.0))
        stats(event(EventKind.GIVE_UP, call_id=call_id, verdict=Verdict.TIMEOUT,
                    give_up_reason=reason, call_elapsed=1.0))
    op = stats.snapshot()["op"]
    assert op["calls"] == 3
    assert op["calls_failed"] == 3
    assert op["calls_failed_by_reason"] == {"budget": 2, "exhausted": 1}
    assert op["budget_denials"] == 2
    assert op["attempts_failed_by_verdict"] == {"timeout": 3}
    assert op["calls_in_flight"] == 0
    assert op["call_seconds"]["count"] == 3


def test_breaker_rejections_count_as_requests_only_before_the_first_attempt() -> None:
    """A call refused outright is one request and one rejection; a retry refused later is a
    rejection inside a call that then gives up."""
    stats = Stats()
    stats(event(EventKind.REJECTED, call_id=1, reason="circuit_open", wait=3.0))
    stats(event(EventKind.START, call_id=2))
    stats(event(EventKind.FAILURE, call_id=2, verdict=Verdict.NETWORK, elapsed=0.01))
    stats(event(EventKind.RETRY, call_id=2, verdict=Verdict.NETWORK, wait=0.0))
    stats(event(EventKind.REJECTED, call_id=2, attempt=2, reason="circuit_open"))
    stats(event(EventKind.GIVE_UP, call_id=2, verdict=Verdict.NETWORK,
                give_up_reason="circuit_open", call_elapsed=0.02))
    op = stats.snapshot()["op"]
    assert op["calls"] == 2
    assert op["rejections"] == 2
    assert op["attempts"] == 1
    assert op["calls_failed_by_reason"] == {"circuit_open": 1}
    assert op["calls_in_flight"] == 0
    assert op["call_seconds"]["count"] == 1  # the refused call never ran


def test_a_call_in_progress_shows_as_in_flight() -> None:
    """A call that started but has not ended is in flight."""
    stats = Stats()
    stats(event(EventKind.START, call_id=7))
    assert stats.snapshot()["op"]["calls_in_flight"] == 1


def test_snapshot_is_json_with_totals_over_operations() -> None:
    """The snapshot is plain JSON data keyed by operation, with totals under __total__."""
    stats = Stats()
    feed_retried_success(stats, op="生成艺术照", call_id=1)
    feed_retried_success(stats, op="GET example.com/x", call_id=2)
    snapshot = stats.snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot
    assert set(snapshot) == {"生成艺术照", "GET example.com/x", Stats.TOTAL_KEY}
    total = snapshot[TOTAL_KEY]
    assert (total["calls"], total["attempts"], total["retries"]) == (2, 4, 2)
    assert total["attempt_seconds"]["count"] == 4
    assert stats.operations() == sorted(["生成艺术照", "GET example.com/x"])


def test_empty_snapshot_has_zero_totals() -> None:
    """A Stats that saw nothing reports zeros and no percentiles, not an error."""
    total = Stats().snapshot()[TOTAL_KEY]
    assert total["calls"] == 0
    assert total["retry_rate"] == 0.0
    assert total["attempt_seconds"]["p99"] is None


def test_reset_forgets_everything() -> None:
    """reset() empties the counts."""
    stats = Stats()
    feed_retried_success(stats)
    stats.reset()
    assert stats.snapshot() == Stats().snapshot()


def test_operations_beyond_the_cap_are_counted_under_other() -> None:
    """High-cardinality operation names cannot grow memory: extras share '__other__'."""
    stats = Stats(max_operations=2)
    for call_id, op in enumerate(["a", "b", "c", "d"], start=1):
        stats(event(EventKind.START, op=op, call_id=call_id))
    snapshot = stats.snapshot()
    assert set(snapshot) == {"a", "b", OTHER_KEY, TOTAL_KEY}
    assert snapshot[OTHER_KEY]["calls"] == 2
    assert snapshot[TOTAL_KEY]["calls"] == 4


def test_stats_survive_pickling_with_their_counts() -> None:
    """A pickled Stats (inside a pickled adapter) keeps its counts and works afterwards."""
    stats = Stats()
    feed_retried_success(stats)
    copy = pickle.loads(pickle.dumps(stats))
    assert copy.snapshot() == stats.snapshot()
    copy(event(EventKind.START, call_id=99))
    assert copy.snapshot()["op"]["calls"] == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_operations": 0}, "max_operations must be >= 1, got 0"),
        ({"max_operations": "9"}, "max_operations must be an int, got '9'"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict[str, Any], message: str) -> None:
    """A bad Stats setting fails at construction, naming the setting and the value."""
    with pytest.raises((TypeError, ValueError), match=message):
        Stats(**kwargs)


def test_histogram_percentiles_are_within_five_percent() -> None:
    """The streaming percentiles of 1..2000 ms are within 5 % of the exact ones."""
    histogram = LatencyHistogram()
    values = [n / 1000 for n in range(1, 2001)]
    random.Random(7).shuffle(values)
    for value in values:
        histogram.add(value)
    for q, exact in ((0.5, 1.0), (0.9, 1.8), (0.99, 1.98)):
        estimate = histogram.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) / exact < 0.05, (q, estimate)
    summary = histogram.summary()
    assert summary["count"] == 2000
    assert summary["max"] == 2.0
    assert summary["mean"] == pytest.approx(1.0005)


def test_histogram_clamps_to_what_it_saw_and_ignores_nonsense() -> None:
    """Estimates never leave [min, max]; missing, negative, NaN and infinite times are
    ignored; extreme values land in the end buckets."""
    histogram = LatencyHistogram()
    for value in (None, -1.0, float("nan"), float("inf")):
        histogram.add(value)
    assert histogram.quantile(0.5) is None
    histogram.add(0.00001)
    histogram.add(1e6)
    assert histogram.quantile(0.5) == 0.00001
    assert histogram.quantile(1.0) == 1e6
    with pytest.raises(ValueError, match="q must be in"):
        histogram.quantile(0)


def test_totals_add_up_exactly_under_16_threads() -> None:
    """Sixteen threads feeding one Stats lose no event: totals equal the sum of the work."""
    stats = Stats()
    threads_n, calls_per_thread = 16, 400
    start = threading.Barrier(threads_n)

    def work(thread_index: int) -> None:
        start.wait()
        for n in range(calls_per_thread):
            call_id = thread_index * 1_000_000 + n
            op = f"op{n % 3}"
            stats(event(EventKind.START, op=op, call_id=call_id))
            if n % 2:  # odd calls: one retry, then success
                stats(event(EventKind.FAILURE, op=op, call_id=call_id,
                            verdict=Verdict.SERVER_ERROR, elapsed=0.01))
                stats(event(EventKind.RETRY, op=op, call_id=call_id, wait=0.0))
                stats(event(EventKind.START, op=op, call_id=call_id, attempt=2))
            stats(event(EventKind.SUCCESS, op=op, call_id=call_id, attempt=1 + n % 2,
                        verdict=Verdict.SUCCESS, elapsed=0.002, call_elapsed=0.002))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    total = stats.snapshot()[TOTAL_KEY]
    calls = threads_n * calls_per_thread
    assert total["calls"] == calls
    assert total["calls_succeeded"] == calls
    assert total["retries"] == calls // 2
    assert total["attempts"] == calls + calls // 2
    assert total["attempts_failed_by_verdict"] == {"server_error": calls // 2}
    assert total["attempt_seconds"]["count"] == calls + calls // 2
    assert total["call_seconds"]["count"] == calls
    assert total["calls_in_flight"] == 0


# -- wiring through a real adapter and a real local server ------------------------------


@pytest.fixture(scope="module")
def server() -> Any:
    with FaultServer() as running:
        yield running


def no_sleep(seconds: float) -> None:
    """Backoff that does not really wait."""


def test_adapter_stats_count_a_retried_request(server: FaultServer) -> None:
    """adapter.stats shows a 503-then-ok request as 1 request, 2 attempts, 1 retry,
    1 success and 1 server_error failure."""
    adapter = SmartRetryAdapter(max_retries=1, timeout=10.0, operation_name="wired",
                                sleep=no_sleep)
    with requests.Session() as session:
        session.mount("http://", adapter)
        response = session.get(server.url("/seq/stats-wired?steps=503,ok"))
    assert response.status_code == 200
    op = adapter.stats.snapshot()["wired"] if adapter.stats else {}
    assert op["calls"] == 1
    assert op["attempts"] == 2
    assert op["retries"] == 1
    assert op["calls_succeeded"] == 1
    assert op["attempts_failed_by_verdict"] == {"server_error": 1}
    assert op["attempt_seconds"]["count"] == 2
    assert op["call_seconds"]["count"] == 1


def test_one_stats_can_be_shared_and_counting_turned_off(server: FaultServer) -> None:
    """stats=<Stats> shares one Stats across adapters; stats=False leaves none."""
    shared = Stats()
    adapters = [SmartRetryAdapter(operation_name="shared", stats=shared) for _ in range(2)]
    for adapter in adapters:
        assert adapter.stats is shared
        with requests.Session() as session:
            session.mount("http://", adapter)
            session.get(server.url("/ok"))
    assert shared.snapshot()["shared"]["calls"] == 2
    silent = SmartRetryAdapter(stats=False)
    assert silent.stats is None
    assert not any(isinstance(hook, Stats) for hook in silent._hooks)
    with pytest.raises(TypeError, match="stats must be a Stats, None or False, got 'yes'"):
        SmartRetryAdapter(stats="yes")  # type: ignore[arg-type]


def test_a_pickled_adapter_keeps_its_policy_and_counts(server: FaultServer) -> None:
    """An adapter survives pickling with its policy and statistics, and keeps counting."""
    adapter = SmartRetryAdapter(operation_name="pickled", timeout=10.0)
    with requests.Session() as session:
        session.mount("http://", adapter)
        session.get(server.url("/ok"))
    copy = pickle.loads(pickle.dumps(adapter))
    assert copy.policy == adapter.policy
    assert copy.stats is not None
    assert copy.stats.snapshot()["pickled"]["calls"] == 1
    with requests.Session() as session:
        session.mount("http://", copy)
        session.get(server.url("/ok"))
    assert copy.stats.snapshot()["pickled"]["calls"] == 2


@pytest.mark.parametrize(("old", "new"), sorted(DEPRECATED_NAMES.items()))
def test_an_old_name_is_still_in_the_row_with_a_deprecation_warning(old: str,
                                                                     new: str) -> None:
    """``old in row`` stays true for the deprecating release (with a warning), so that
    ``row[old] if old in row else 0`` does not silently read 0."""
    stats = Stats()
    feed_retried_success(stats)
    op = stats.snapshot()["op"]
    with pytest.warns(DeprecationWarning, match=new):
        assert old in op
    with pytest.warns(DeprecationWarning, match=new):
        assert (op[old] if old in op else 0) == op[new]  # noqa: SIM401  # the idiom at stake


def test_a_quiet_call_is_counted_without_a_lock_and_read_whole() -> None:
    """The first attempt of a call nobody else reads (one record, from its START to its
    SUCCESS) takes no lock; a snapshot counts every such call, and a SUCCESS never before
    its START."""
    from requests_smartretry.stats import _APPLY_AT

    stats = Stats()
    lock = CountingLock()
    stats._lock = lock  # type: ignore[assignment]
    calls = _APPLY_AT - 2  # a batch's worth of records (one per call), not more
    for _ in range(calls):
        stats.quiet_start("op")(0.01)
    stats.quiet_start("op")  # one call in flight
    assert lock.acquired == 0
    row = stats.snapshot()["op"]
    assert (row["calls"], row["calls_succeeded"], row["calls_in_flight"]) == (
        calls + 1, calls, 1)
    assert row["attempts"] == calls + 1 and row["attempt_seconds"]["count"] == calls
    assert lock.acquired == 1
    for _ in range(10 * _APPLY_AT):  # later batches: one lock per batch of records
        stats.quiet_start("op")(0.01)
    assert lock.acquired <= 1 + 20
    assert stats.snapshot()["op"]["calls_succeeded"] == calls + 10 * _APPLY_AT


def test_a_quiet_record_read_while_its_attempt_runs_counts_its_success_once_ended() -> None:
    """A quiet call read while its attempt runs is in flight; once ended it is one success
    (counted once, by the next read); ended with None (its events took over) it stays a
    START only, for the events to count the rest."""
    stats = Stats()
    end = stats.quiet_start("op")
    handed = stats.quiet_start("op")
    row = stats.snapshot()["op"]
    assert (row["calls"], row["attempts"], row["calls_in_flight"]) == (2, 2, 2)
    end(0.01)
    handed(None)
    row = stats.snapshot()["op"]
    assert (row["calls"], row["calls_succeeded"], row["calls_in_flight"]) == (2, 1, 1)
    assert row["call_seconds"]["count"] == row["attempt_seconds"]["count"] == 1
    assert stats._running == []  # nothing left to look at
    assert stats.snapshot()["op"]["calls_succeeded"] == 1


class _Name(str):
    """An operation name as a naming hook may return it: a ``str`` subclass."""


def test_a_quiet_calls_time_counts_as_its_attempts_and_its_calls_and_survives_pickling(
) -> None:
    """A quiet success is recorded once yet counts in both latency summaries, beside an
    evented call's; a snapshot of an unpickled copy reads the same; and an operation name
    that is a ``str`` subclass (a naming hook's) is counted as a START, not unpacked."""
    stats = Stats()
    stats.quiet_start(_Name("op"))(0.25)
    base = {"operation": "op", "service": "s", "max_attempts": 2, "call_id": 1}
    stats(AttemptEvent(kind=EventKind.START, attempt=1, **base))
    stats(AttemptEvent(kind=EventKind.SUCCESS, attempt=1, elapsed=0.5, call_elapsed=0.5,
                       **base))
    row = stats.snapshot()["op"]
    assert (row["calls"], row["attempts"], row["calls_succeeded"]) == (2, 2, 2)
    for summary in ("attempt_seconds", "call_seconds"):
        assert row[summary]["count"] == 2
        assert row[summary]["max"] == pytest.approx(0.5, rel=0.05)
    stats.quiet_start("op")(1.0)
    again = pickle.loads(pickle.dumps(stats)).snapshot()["op"]
    assert again == stats.snapshot()["op"]
    assert again["attempt_seconds"]["count"] == again["call_seconds"]["count"] == 3


def test_snapshots_taken_while_threads_count_never_show_half_a_call() -> None:
    """Eight threads count quiet calls while snapshots are taken: every snapshot is a
    consistent state (no success before its start, one latency per success), and the
    final counts lose nothing."""
    stats = Stats()
    calls = 3000
    bad: list[dict[str, Any]] = []

    def count() -> None:
        for _ in range(calls // 3):  # three calls running at once: read while they run
            ends = [stats.quiet_start("op") for _ in range(3)]
            for end in ends:
                end(0.002)

    def look() -> None:
        row = stats.snapshot().get("op")
        if row is not None and not (
                row["attempts"] == row["calls"] >= row["calls_succeeded"]
                == row["call_seconds"]["count"] == row["attempt_seconds"]["count"]):
            bad.append(row)

    observe_while_threads_work(look, count, 8)
    assert bad == []
    row = stats.snapshot()["op"]
    assert row["calls"] == row["calls_succeeded"] == 8 * (calls // 3 * 3)
    assert row["calls_in_flight"] == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_another_thread_reads_counts_no_success_twice() -> None:
    """A process forks (gunicorn ``--preload``, multiprocessing) while another thread reads
    the statistics, as it applies the successes of quiet calls it had seen running: the
    child's snapshot never shows more calls succeeded than started (each success is
    counted once, in the parent's pass or in the child's, never in both)."""
    calls = 50_000
    for _ in range(3):
        stats = Stats()
        ends = [stats.quiet_start("op") for _ in range(calls)]
        stats.snapshot()  # every call seen running
        for end in ends:
            end(0.001)  # all ended: the next read counts their successes
        reading = threading.Event()

        def read(stats: Stats = stats, reading: threading.Event = reading) -> None:
            reading.set()
            stats.snapshot()

        reader = threading.Thread(target=read)
        reader.start()
        reading.wait(10.0)
        time.sleep(0.002)  # the reader is inside its pass over the ended calls
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 3
            try:
                row = stats.snapshot()[TOTAL_KEY]
                code = 0 if row["calls"] >= row["calls_succeeded"] else 1
            finally:
                os._exit(code)
        reader.join()
        assert wait_for_child(pid, "stats after the fork") == 0
        row = stats.snapshot()[TOTAL_KEY]
        assert row["calls"] == row["calls_succeeded"] == calls
