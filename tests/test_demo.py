"""The guided demo: runs to completion against its embedded fault server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from requests_smartretry.demo import EventCounter, format_stats_table
from requests_smartretry.events import AttemptEvent, EventKind, Verdict

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
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
        "demo-post - request may have reached the server and POST is not idempotent",
        "server saw 1 POST",
        "demo-post-idempotent - attempt 2 succeeded",
        "Statistics (per operation)",
    ):
        assert line in out, f"missing {line!r} in demo output:\n{out}"
    assert ("CircuitOpenError: refused without touching the network" in out
            or "breaker scenario needs CircuitBreaker" in out)
    table = out.split("Statistics (per operation)", 1)[1]
    assert "requests" in table and "retries" in table
    assert "demo-drip" in table


def _event(kind: EventKind, attempt: int = 1, **fields: object) -> AttemptEvent:
    return AttemptEvent(kind=kind, operation="op", service="s", attempt=attempt,
                        max_attempts=2, call_id=1, **fields)  # type: ignore[arg-type]


def test_event_counter_counts_one_call_with_a_retry() -> None:
    """The counter turns a call's events into requests, attempts, retries and outcomes."""
    counter = EventCounter()
    for event in (
        _event(EventKind.START),
        _event(EventKind.FAILURE, verdict=Verdict.SERVER_ERROR),
        _event(EventKind.RETRY, wait=0.1),
        _event(EventKind.START, 2),
        _event(EventKind.FAILURE, 2, verdict=Verdict.TIMEOUT),
        _event(EventKind.GIVE_UP, 2, give_up_reason="exhausted"),
    ):
        counter(event)
    row = counter.snapshot()["op"]
    assert (row["requests"], row["attempts"], row["retries"], row["successes"]) == (1, 2, 1, 0)
    assert row["failures"] == {"server_error": 1, "timeout": 1}
    assert row["give_ups"] == {"exhausted": 1}


def test_stats_table_shows_totals_and_breakdowns() -> None:
    """Nested counters print their total and breakdown; unknown counters still get a column."""
    table = format_stats_table({
        "photo": {"requests": 3, "attempts": 5, "failures": {"timeout": 2, "network": 0},
                  "p95_s": 0.25},
        "note": "not an operation",
    })
    header, rule, row = table.splitlines()
    assert header.split() == ["operation", "requests", "attempts", "failures", "p95_s"]
    assert set(rule) == {"-", " "}
    assert row.split(None, 3)[:3] == ["photo", "3", "5"]
    assert "2 (timeout=2)" in row
    assert format_stats_table({}) == "(no calls recorded)"
