"""The retry loop on its own: synthetic attempts, injected sleep, no network."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from requests_smartretry import CircuitOpenError, EventKind, RetryPolicy, Verdict
from requests_smartretry.classify import Classification
from requests_smartretry.deadline import retry_scope
from requests_smartretry.engine import CallInfo, Outcome, run_call
from requests_smartretry.events import AttemptEvent
from requests_smartretry.testing import fast_retries
from tests.conftest import FakeClock

CALL = CallInfo(operation="op", service="svc")
OK = Outcome[str](Classification(Verdict.SUCCESS, "ok"), value="done")


def failing(verdict: Verdict = Verdict.SERVER_ERROR, **fields: Any) -> Outcome[str]:
    """An outcome of one failed attempt."""
    error = RuntimeError(verdict.value)
    return Outcome(Classification(verdict, verdict.value, **fields), error=error, signal=error)


class Script:
    """Plays the given outcomes one per attempt and counts the attempts."""

    def __init__(self, *outcomes: Outcome[str]) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self, number: int) -> Outcome[str]:
        self.calls += 1
        assert number == self.calls
        return self.outcomes[min(number, len(self.outcomes)) - 1]


def run(policy: RetryPolicy, script: Script, **kwargs: Any) -> tuple[Any, list[float],
                                                                     list[AttemptEvent]]:
    waits: list[float] = []
    events: list[AttemptEvent] = []
    finished = run_call(policy, CALL, script, sleep=waits.append, hooks=(events.append,),
                        **kwargs)
    return finished, waits, events


def test_success_ends_the_call_after_one_attempt() -> None:
    """START then SUCCESS, nothing else."""
    finished, waits, events = run(RetryPolicy(), Script(OK))
    assert finished.outcome is OK
    assert [e.kind for e in events] == [EventKind.START, EventKind.SUCCESS]
    assert waits == []


def test_retryable_failure_then_success() -> None:
    """A retryable failure is followed by a 1 s wait and a second attempt."""
    finished, waits, events = run(RetryPolicy(), Script(failing(), OK))
    assert finished.outcome is OK and waits == [1.0]
    assert [e.kind for e in events] == [EventKind.START, EventKind.FAILURE, EventKind.RETRY,
                                        EventKind.START, EventKind.SUCCESS]


@pytest.mark.parametrize("verdict", [Verdict.CLIENT_ERROR, Verdict.BUSINESS, Verdict.PERMANENT])
def test_non_retryable_verdicts_end_at_once(verdict: Verdict) -> None:
    """4xx, business and permanent failures make one attempt and give up."""
    script = Script(failing(verdict), OK)
    finished, waits, _ = run(RetryPolicy(max_retries=5), script)
    assert script.calls == 1 and waits == []
    assert finished.give_up_reason == "not_retryable"


def test_attempts_are_bounded_by_max_retries() -> None:
    """max_retries=3 makes four attempts with 1, 2, 4 s between them."""
    script = Script(failing())
    finished, waits, _ = run(RetryPolicy(max_retries=3), script)
    assert script.calls == 4 and waits == [1.0, 2.0, 4.0]
    assert finished.give_up_reason == "exhausted"


def test_veto_stops_a_retry() -> None:
    """An attempt that says repeating is unsafe is not repeated."""
    vetoed = Outcome[str](Classification(Verdict.NETWORK, "ECONNRESET"), error=OSError(),
                          veto="unsafe")
    script = Script(vetoed, OK)
    finished, _, _ = run(RetryPolicy(), script)
    assert script.calls == 1 and finished.give_up_reason == "unsafe"


def test_retry_after_replaces_the_backoff_up_to_the_cap() -> None:
    """Retry-After within the cap is the wait; above it the call gives up at once."""
    _, waits, _ = run(RetryPolicy(), Script(failing(Verdict.RATE_LIMIT, retry_after=2.5), OK))
    assert waits == [2.5]
    finished, waits, _ = run(RetryPolicy(), Script(failing(Verdict.RATE_LIMIT, retry_after=9.0)))
    assert waits == [] and finished.give_up_reason == "retry_after_too_long"


def test_retry_after_can_be_ignored() -> None:
    """respect_retry_after=False keeps the normal backoff."""
    _, waits, _ = run(RetryPolicy(respect_retry_after=False),
                      Script(failing(Verdict.RATE_LIMIT, retry_after=3.0), OK))
    assert waits == [1.0]


def test_nested_call_makes_a_single_attempt() -> None:
    """Inside another retrying call, a 'single' policy leaves the retrying to the outer call."""
    script = Script(failing())
    with retry_scope(None):
        finished, _, events = run(RetryPolicy(), script)
    assert script.calls == 1 and finished.give_up_reason == "exhausted"
    assert events[0].max_attempts == 1


def test_nested_retry_policy_multiplies_on_request() -> None:
    """nested='retry' keeps its own retries inside an enclosing call."""
    script = Script(failing())
    with retry_scope(None):
        run(RetryPolicy(nested="retry"), script)
    assert script.calls == 2


def test_enclosing_deadline_cuts_the_wait() -> None:
    """A backoff longer than the enclosing deadline's time left ends the call instead."""
    import time

    script = Script(failing(), OK)
    with retry_scope(time.monotonic() + 0.5):
        finished, waits, _ = run(RetryPolicy(nested="retry"), script)
    assert finished.give_up_reason == "deadline" and waits == []


class Gate:
    """A breaker/budget double that records what the loop asks."""

    def __init__(self, refuse_from: Optional[int] = None, retries: int = 10) -> None:
        self.refuse_from = refuse_from
        self.asked = 0
        self.retries = retries
        self.events: list[AttemptEvent] = []

    def before_attempt(self, service: str) -> None:
        self.asked += 1
        if self.refuse_from is not None and self.asked >= self.refuse_from:
            raise CircuitOpenError(service, 2.0)

    def allow_retry(self, service: str) -> bool:
        self.retries -= 1
        return self.retries >= 0

    def __call__(self, event: AttemptEvent) -> None:
        self.events.append(event)


def test_breaker_refusing_the_first_attempt_raises_circuit_open() -> None:
    """An open breaker raises CircuitOpenError before any attempt, with the history attached."""
    script = Script(OK)
    with pytest.raises(CircuitOpenError) as caught:
        run(RetryPolicy(), script, breaker=Gate(refuse_from=1))
    assert script.calls == 0
    assert caught.value.retry_in == 2.0
    assert [e.kind for e in caught.value.retry_history] == [EventKind.REJECTED]  # type: ignore[attr-defined]


def test_breaker_refusing_a_retry_ends_on_the_last_failure() -> None:
    """If the breaker opens between attempts the call ends with the last failure."""
    script = Script(failing(), OK)
    finished, _, _ = run(RetryPolicy(), script, breaker=Gate(refuse_from=2))
    assert script.calls == 1 and finished.give_up_reason == "circuit_open"


def test_spent_budget_stops_retries() -> None:
    """A budget that refuses makes the call give up with reason 'budget'."""
    script = Script(failing(), OK)
    finished, waits, _ = run(RetryPolicy(), script, budget=Gate(retries=0))
    assert script.calls == 1 and waits == [] and finished.give_up_reason == "budget"


def test_a_failing_hook_does_not_break_the_call() -> None:
    """A hook that raises is logged and the call goes on."""

    def broken(event: AttemptEvent) -> None:
        raise ValueError("hook bug")

    finished = run_call(RetryPolicy(), CALL, Script(failing(), OK), sleep=lambda s: None,
                        hooks=(broken,))
    assert finished.outcome is OK


def test_fast_retries_caps_attempts_and_skips_waits() -> None:
    """Test mode skips real sleeping and can cap attempts for users' own suites."""
    script = Script(failing())
    slept: list[float] = []
    with fast_retries(attempts=1):
        run_call(RetryPolicy(max_retries=3), CALL, script, sleep=slept.append)
    assert script.calls == 1 and slept == []


def test_events_of_one_call_share_a_call_id_and_count_attempts() -> None:
    """Every event of a call carries the same call_id and the attempt it concerns."""
    _, _, events = run(RetryPolicy(max_retries=2), Script(failing(), failing(), OK))
    assert len({e.call_id for e in events}) == 1
    assert [e.attempt for e in events if e.kind is EventKind.START] == [1, 2, 3]
    assert all(e.max_attempts == 3 for e in events)


def test_an_interrupted_backoff_closes_the_call() -> None:
    """Ctrl-C during the backoff wait ends the call with a GIVE_UP event and its history."""
    events: list[AttemptEvent] = []

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        run_call(RetryPolicy(), CALL, Script(failing(), OK), sleep=interrupted,
                 hooks=(events.append,))
    assert events[-1].kind is EventKind.GIVE_UP
    assert events[-1].give_up_reason == "interrupted"
    assert caught.value.retry_history[-1] is events[-1]  # type: ignore[attr-defined]



@pytest.mark.parametrize("ending", ["success", "give_up"])
def test_the_last_event_carries_the_call_time_backoff_included(ending: str) -> None:
    """SUCCESS and GIVE_UP carry call_elapsed: first attempt's start to the end, on the
    loop's clock, waits included; each attempt's own elapsed excludes the waits."""
    clock = FakeClock(50.0)

    def attempt(number: int) -> Outcome[str]:
        clock.advance(0.25)  # each attempt takes 0.25 s
        return OK if ending == "success" and number == 2 else failing()

    events: list[AttemptEvent] = []
    run_call(RetryPolicy(max_retries=1), CALL, attempt, sleep=clock.advance, clock=clock,
             hooks=(events.append,))
    last = events[-1]
    assert last.kind is (EventKind.SUCCESS if ending == "success" else EventKind.GIVE_UP)
    assert last.call_elapsed == pytest.approx(0.25 + 1.0 + 0.25)
    assert [e.elapsed for e in events if e.kind in (EventKind.SUCCESS, EventKind.FAILURE)] \
        == [0.25, 0.25]
    assert all(e.call_elapsed is None for e in events[:-1])


# -- the quiet call: built-in consumers told directly ----------------------------------------


def _consumers() -> tuple[Any, Any, tuple[Any, ...]]:
    from requests_smartretry import RetryBudget, Stats

    stats, budget = Stats(), RetryBudget(ratio=0.5, max_tokens=10.0, min_per_second=0.0)
    return stats, budget, (stats, budget)


@pytest.mark.parametrize("script", [Script(OK), Script(failing(), OK)],
                         ids=["first attempt succeeds", "retried"])
def test_a_quiet_call_counts_what_its_events_would(script: Script) -> None:
    """With only built-in consumers the loop skips the events while it can, yet the
    statistics, the budget and the history come out as the event-driven ones: each
    attempt and request counted once, one deposit per call, equal events."""
    from requests_smartretry.engine import quiet_plan

    results = []
    for quiet in (False, True):
        stats, budget, hooks = _consumers()
        script.calls = 0
        finished = run_call(RetryPolicy(), CALL, script, hooks=hooks, sleep=lambda s: None,
                            quiet=quiet_plan(hooks) if quiet else None)
        counts = stats.snapshot()["op"]
        results.append((
            [(e.kind, e.attempt, e.verdict, e.status_code, e.max_attempts)
             for e in finished.history],
            {k: counts[k] for k in ("calls", "attempts", "retries",
                                    "calls_succeeded", "calls_in_flight")},
            counts["attempt_seconds"]["count"], counts["call_seconds"]["count"],
            budget.tokens("svc")))
    assert results[0] == results[1]
    assert results[1][1]["calls"] == 1 and results[1][1]["calls_in_flight"] == 0


def test_a_quiet_history_reads_as_a_sequence_of_events() -> None:
    """A quiet success's history, built when read, is a read-only sequence equal to the
    tuple of its START and SUCCESS events (one call id, one operation)."""
    from requests_smartretry.engine import quiet_plan

    hooks = _consumers()[2]
    history = run_call(RetryPolicy(), CALL, Script(OK), hooks=hooks,
                       quiet=quiet_plan(hooks)).history
    assert len(history) == 2 and [e.kind for e in history] == [EventKind.START,
                                                               EventKind.SUCCESS]
    assert history == tuple(history) and history == list(history)
    assert history[-1] is history[1] and history[:1] == (history[0],)
    assert history[0].call_id == history[1].call_id and history[1].operation == "op"


def test_a_user_hook_or_a_half_open_probe_sees_every_event() -> None:
    """quiet_plan refuses hooks it does not know; a breaker's probe ticket opens the events
    of a quiet call before its START, so the probe's events reach every consumer."""
    from requests_smartretry.engine import quiet_plan

    hooks = _consumers()[2]
    assert quiet_plan((*hooks, print)) is None

    class Probing:
        """A breaker that admits every attempt as a half-open probe (ticket 7)."""

        def __init__(self) -> None:
            self.recorded: list[tuple[int, bool]] = []

        def before_attempt(self, service: str) -> int:
            return 7

        def after_attempt(self, service: str, ticket: int, *, failed: bool,
                          weight: float = 1.0) -> None:
            self.recorded.append((ticket, failed))

        def __call__(self, event: AttemptEvent) -> None:
            raise AssertionError("a breaker with after_attempt is not a hook")

    seen: list[AttemptEvent] = []
    breaker = Probing()
    run_call(RetryPolicy(), CALL, Script(OK), hooks=(*hooks, seen.append),
             breaker=breaker, quiet=quiet_plan(hooks))
    assert [e.kind for e in seen] == [EventKind.START, EventKind.SUCCESS]
    assert breaker.recorded == [(7, False)]
