"""The guided demo: runs to completion against its embedded fault server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from requests_smartretry import Stats
from requests_smartretry.demo import format_stats_table
from requests_smartretry.events import AttemptEvent, EventKind, Verdict

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.stress
def test_demo_runs_every_scenario_and_prints_the_stats_table() -> None:
    """``python -m requests_smartretry demo`` exits 0 and shows each scenario's real log lines."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The demo takes ~5 s; the timeout is generous for a loaded machine, not a speed check.
    done = subprocess.run([sys.executable, "-m", "requests_smartretry", "demo", "--lang", "en"],
                          capture_output=True, text=True, env=env, timeout=90, cwd=ROOT)
    out = done.stdout
    assert done.returncode == 0, done.stderr
    for line in (
        "demo-success - attempt 1 succeeded",
        "demo-reset - attempt 1 failed: connection reset (ECONNRESET)",
        "demo-reset - attempt 2 succeeded",
        "demo-503 - attempt 1 failed: server error (HTTP 503)",
        "demo-429 - waiting 1000ms before retrying",
        "demo-404 - error is not retryable, giving up",
        "demo-drip - attempt 1 failed: network timeout",
        "AttemptDeadlineExceeded",
        "demo-deadline - no time left for another attempt; giving up",
        "demo-post - request may have reached the server and POST is not idempotent",
        "server saw 1 POST",
        "demo-post-idempotent - attempt 2 succeeded",
        "30 calls, each failing once: 30 x HTTP 200",
        "demo-retry-after-long - server asked to wait 3600000ms, above the 5000ms cap",
        "HTTP 503 after 0.0 s, server saw 1 request",
        "2 task ids, 1 operation: GET 127.0.0.1:",
        "/seq/tasks/{id} - attempt 2 succeeded",
        "RetryError after 3 requests",
        "demo-generator - request body cannot be replayed",
        "ConnectionError raised, server saw 1 PUT",
        "at INFO a call whose first attempt succeeds writes nothing",
        "Statistics per operation",
        "video task status - waiting for the task (poll 1, status queued",
        "video task status - task done after 4 poll(s)",
        "task task-1 succeeded after 5 GETs",
        "Waits for a task (polls that were not done are not failures):",
        "video task status: 1 wait(s), 4 polls (done=1)",
        "without a throttle: 6 x HTTP 200, 6 x HTTP 429",
        "with Throttle(rate=5, burst=1): 12 x HTTP 200, 0 x HTTP 429",
        "demo-throttled - throttled: attempt 1 waited",
        "with Throttle(adaptive=True), no rate: 12 x HTTP 200",
    ):
        assert line in out, f"missing {line!r} in demo output:\n{out}"
    assert "CircuitOpenError: refused without touching the network" in out
    assert "prepay_id wx-demo-0001: the signature verifies" in out
    assert "ResponseSignatureError (signature check) after 1 request, not retried" in out
    assert "wx-FORGED" not in out
    assert "the breaker is closed again" in out
    assert "state forced_open: refused without touching the network" in out
    assert "listener saw closed -> forced_open, forced_open -> closed" in out
    table = out.split("Statistics per operation", 1)[1].split("Failed attempts", 1)[0]
    assert max(len(line) for line in table.splitlines()) <= 100
    rows = {line.split()[0]: line.split() for line in table.splitlines()
            if line.startswith(("demo-", "total"))}
    # operation | calls: total ok gave-up refused | attempts: total failed retries | p50 p99
    assert rows["demo-reset"][1:8] == ["1", "1", "0", "0", "2", "1", "1"]
    assert rows["demo-404"][1:8] == ["1", "0", "1", "0", "1", "1", "0"]
    assert rows["demo-breaker"][4] == "1"  # one call refused by the open breaker
    assert rows["demo-operator"][1:5] == ["2", "1", "0", "1"]  # one refused while forced


def _event(kind: EventKind, attempt: int = 1, **fields: object) -> AttemptEvent:
    return AttemptEvent(kind=kind, operation="op", service="s", attempt=attempt,
                        max_attempts=2, call_id=1, **fields)  # type: ignore[arg-type]


def test_stats_table_shows_counts_latency_and_verdicts() -> None:
    """A call that failed twice shows its counts, retry rate and verdicts; totals come last."""
    stats = Stats()
    for event in (
        _event(EventKind.START),
        _event(EventKind.FAILURE, verdict=Verdict.SERVER_ERROR, elapsed=0.01),
        _event(EventKind.RETRY, wait=0.1),
        _event(EventKind.START, 2),
        _event(EventKind.FAILURE, 2, verdict=Verdict.TIMEOUT, elapsed=0.02),
        _event(EventKind.GIVE_UP, 2, give_up_reason="exhausted"),
    ):
        stats(event)
    lines = format_stats_table(stats.snapshot()).splitlines()
    groups, header, row, total, blank, title, *verdicts = lines
    assert groups.split() == ["----------", "calls", "----------", "------", "attempts",
                              "------", "seconds", "per", "call"]
    assert header.split() == ["operation", "total", "ok", "gave", "up", "refused", "total",
                              "failed", "retries", "p50", "p99"]
    # 1 call, not ok, given up; 2 attempts, both failed, 1 retry.
    assert row.split()[:8] == ["op", "1", "0", "1", "0", "2", "2", "1"]
    assert total.startswith("total")
    assert (blank, title) == ("", "Failed attempts by verdict:")
    assert verdicts == ["  op: server_error=1 timeout=1", "  total: server_error=1 timeout=1"]
    assert max(len(line) for line in lines) <= 100
    assert format_stats_table({}) == "(no calls recorded)"


def test_stats_table_fits_100_columns_with_long_names() -> None:
    """A long operation name is cut, so every line of the table stays within 100 columns."""
    stats = Stats()
    stats(_event(EventKind.START))
    stats(_event(EventKind.SUCCESS, verdict=Verdict.SUCCESS, elapsed=1234.5,
                 call_elapsed=1234.5))
    snapshot = {("GET very-long-host.example.com/" + "x" * 80): stats.snapshot()["op"],
                "__total__": stats.snapshot()["__total__"]}
    lines = format_stats_table(snapshot).splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[2].startswith("GET very-long-host.exam… ")


def test_stats_table_lists_waits_apart() -> None:
    """A wait's entry (no calls of its own) is listed under "Waits", not as an empty call
    row, with its polls, outcomes and time to done."""
    stats = Stats()
    stats(_event(EventKind.START))
    stats(_event(EventKind.SUCCESS, verdict=Verdict.SUCCESS, elapsed=0.1, call_elapsed=0.1))
    stats.record_wait("视频任务状态查询", outcome="done", polls=4, seconds=1.5)
    stats.record_wait("视频任务状态查询", outcome="deadline", polls=9, seconds=60.0)
    lines = format_stats_table(stats.snapshot()).splitlines()
    assert not any(line.startswith("视频任务状态查询") for line in lines)
    assert lines[-2:] == [
        "Waits for a task (polls that were not done are not failures):",
        "  视频任务状态查询: 2 wait(s), 13 polls (deadline=1 done=1), p50 time to done 1.500 s",
    ]
