"""Tests for the dynamic strategy: per-verdict rules on the policy (VerdictRule), as the
engine applies them."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any, Optional

import pytest
import requests

from requests_smartretry import RetryPolicy, SmartRetryAdapter, Verdict, VerdictRule
from requests_smartretry.classify import Classification
from requests_smartretry.engine import CallInfo, Finished, Outcome, run_call
from requests_smartretry.events import AttemptEvent, EventKind
from requests_smartretry.faultserver import FaultServer

OK = Classification(Verdict.SUCCESS, "ok")


def fail(verdict: Verdict, retry_after: Optional[float] = None) -> Classification:
    """A failed attempt's classification that is safe to repeat."""
    return Classification(verdict, verdict.value, sent=False, retry_after=retry_after)


def run(policy: RetryPolicy, script: Sequence[Classification]
        ) -> tuple[Finished[str], list[float], list[AttemptEvent]]:
    """Run one call whose attempts go as ``script`` says; return it, the waits, the events."""
    waits: list[float] = []
    events: list[AttemptEvent] = []

    def attempt(number: int) -> Outcome[str]:
        verdict = script[min(number, len(script)) - 1]
        error = None if verdict.verdict is Verdict.SUCCESS else RuntimeError(verdict.reason)
        return Outcome(verdict, value="ok" if error is None else None, error=error)

    finished = run_call(policy.replace(log=False), CallInfo("op", "svc"), attempt,
                        hooks=(events.append,), sleep=waits.append, clock=lambda: 0.0)
    return finished, waits, events


def test_rate_limits_can_back_off_longer_than_other_failures() -> None:
    """A RATE_LIMIT rule's backoff applies to 429s while other failures keep the policy's."""
    policy = RetryPolicy(max_retries=3, per_verdict={
        Verdict.RATE_LIMIT: VerdictRule(backoff_base=2.0, backoff_max=30.0)})
    _, waits, _ = run(policy, [fail(Verdict.RATE_LIMIT)] * 3 + [OK])
    assert waits == [2.0, 4.0, 8.0]
    _, waits, _ = run(policy, [fail(Verdict.SERVER_ERROR)] * 3 + [OK])
    assert waits == [1.0, 2.0, 4.0]


def test_a_rule_can_allow_a_longer_retry_after() -> None:
    """A 429 asking 20 s is honoured under a rule whose cap allows it, and ends the call
    under the policy's 5 s cap."""
    asked = [fail(Verdict.RATE_LIMIT, retry_after=20.0), OK]
    finished, waits, _ = run(RetryPolicy(), asked)
    assert finished.give_up_reason == "retry_after_too_long"
    assert waits == []
    patient = RetryPolicy(per_verdict={Verdict.RATE_LIMIT: VerdictRule(backoff_max=60.0)})
    finished, waits, _ = run(patient, asked)
    assert finished.give_up_reason is None
    assert waits == [20.0]
    ignoring = RetryPolicy(per_verdict={
        Verdict.RATE_LIMIT: VerdictRule(respect_retry_after=False)})
    _, waits, _ = run(ignoring, asked)
    assert waits == [1.0]


def test_timeouts_can_get_fewer_retries() -> None:
    """TIMEOUT max_retries=0 gives up at the first timeout ('verdict_limit') while other
    verdicts keep the policy's retries."""
    policy = RetryPolicy(max_retries=2, per_verdict={Verdict.TIMEOUT: VerdictRule(max_retries=0)})
    finished, waits, events = run(policy, [fail(Verdict.TIMEOUT), OK])
    assert finished.give_up_reason == "verdict_limit"
    assert waits == []
    assert events[-1].kind is EventKind.GIVE_UP
    assert events[-1].give_up_reason == "verdict_limit"
    finished, waits, _ = run(policy, [fail(Verdict.NETWORK), fail(Verdict.NETWORK), OK])
    assert finished.give_up_reason is None
    assert len(waits) == 2


def test_verdict_limits_count_failures_of_that_verdict_per_call() -> None:
    """A rule's max_retries counts only its own verdict's failures within the call."""
    policy = RetryPolicy(max_retries=3, per_verdict={Verdict.TIMEOUT: VerdictRule(max_retries=1)})
    script = [fail(Verdict.TIMEOUT), fail(Verdict.SERVER_ERROR), fail(Verdict.TIMEOUT), OK]
    finished, waits, _ = run(policy, script)
    assert finished.give_up_reason == "verdict_limit"
    assert len(waits) == 2  # after the first timeout and the 503, not the second timeout
    script = [fail(Verdict.SERVER_ERROR), fail(Verdict.SERVER_ERROR), fail(Verdict.TIMEOUT), OK]
    finished, waits, _ = run(policy, script)
    assert finished.give_up_reason is None
    assert len(waits) == 3


def test_failure_events_carry_the_breaker_weight() -> None:
    """FAILURE events weigh what the verdict's rule says (1.0 without a rule), so a breaker
    can count refused connections harder."""
    policy = RetryPolicy(max_retries=2, per_verdict={
        Verdict.NETWORK: VerdictRule(breaker_weight=2.0)})
    _, _, events = run(policy, [fail(Verdict.NETWORK), fail(Verdict.SERVER_ERROR), OK])
    failures = [e for e in events if e.kind is EventKind.FAILURE]
    assert [(e.verdict, e.weight) for e in failures] == [(Verdict.NETWORK, 2.0),
                                                         (Verdict.SERVER_ERROR, 1.0)]


def test_a_rule_can_switch_jitter_off_or_on() -> None:
    """jitter='none' in a rule gives exact waits under a jittered policy; a jitter mode in a
    rule draws from its range."""
    policy = RetryPolicy(max_retries=2, jitter="full", per_verdict={
        Verdict.SERVER_ERROR: VerdictRule(jitter="none"),
        Verdict.TIMEOUT: VerdictRule(jitter="equal", backoff_base=4.0)})
    _, waits, _ = run(policy, [fail(Verdict.SERVER_ERROR)] * 2 + [OK])
    assert waits == [1.0, 2.0]
    _, waits, _ = run(policy, [fail(Verdict.TIMEOUT), OK])
    assert 2.0 <= waits[0] <= 4.0


def test_string_keys_are_accepted_and_the_policy_stays_frozen_and_hashable() -> None:
    """per_verdict takes verdict names too; the table is read-only, hashable, picklable and
    kept by replace()."""
    policy = RetryPolicy(max_retries=2,
                         per_verdict={"rate_limit": VerdictRule(max_retries=1)})  # type: ignore[dict-item]
    assert list(policy.per_verdict) == [Verdict.RATE_LIMIT]
    assert policy.rule_for(Verdict.RATE_LIMIT) == VerdictRule(max_retries=1)
    assert policy.rule_for(Verdict.TIMEOUT) is None
    with pytest.raises(TypeError):
        policy.per_verdict[Verdict.TIMEOUT] = VerdictRule()  # type: ignore[index]
    assert hash(policy) == hash(pickle.loads(pickle.dumps(policy)))
    assert pickle.loads(pickle.dumps(policy)) == policy
    assert policy.replace(max_retries=3).per_verdict == policy.per_verdict
    assert policy != RetryPolicy(max_retries=2)


@pytest.mark.parametrize(
    ("per_verdict", "message"),
    [
        ({"bogus": VerdictRule()}, "per_verdict key 'bogus' is not a Verdict"),
        ({Verdict.CLIENT_ERROR: VerdictRule()},
         r"per_verdict\[client_error\]: client_error is never retried"),
        ({Verdict.SUCCESS: VerdictRule()}, r"per_verdict\[success\]"),
        ({Verdict.TIMEOUT: {"max_retries": 0}}, r"per_verdict\[timeout\] must be a VerdictRule"),
        ({Verdict.TIMEOUT: VerdictRule(max_retries=4)},
         r"per_verdict\[timeout\]\.max_retries=4 exceeds max_retries=1"),
        ({Verdict.RATE_LIMIT: VerdictRule(backoff_base=9.0)},
         r"per_verdict\[rate_limit\]: backoff_base \(9\.0\) must not exceed backoff_max \(5\.0\)"),
        ([(Verdict.TIMEOUT, VerdictRule())], "per_verdict must be a mapping"),
    ],
)
def test_bad_tables_are_refused_naming_the_key(per_verdict: Any, message: str) -> None:
    """A bad per_verdict table fails at construction, naming the key and the value."""
    with pytest.raises((TypeError, ValueError), match=message):
        RetryPolicy(per_verdict=per_verdict)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_retries": -1}, "VerdictRule.max_retries must be >= 0, got -1"),
        ({"max_retries": True}, "VerdictRule.max_retries must be an int, got True"),
        ({"backoff_base": -1.0}, "VerdictRule.backoff_base must be >= 0, got -1.0"),
        ({"backoff_multiplier": 0.5}, "VerdictRule.backoff_multiplier must be >= 1, got 0.5"),
        ({"jitter": "wild"}, "VerdictRule.jitter must be None, 'none' or one of .*'wild'"),
        ({"respect_retry_after": "yes"}, "VerdictRule.respect_retry_after must be a bool"),
        ({"breaker_weight": -2}, "VerdictRule.breaker_weight must be a finite number >= 0, "
                                 "got -2"),
        ({"breaker_weight": float("inf")}, "VerdictRule.breaker_weight must be a finite"),
        ({"breaker_weight": "2"}, "VerdictRule.breaker_weight must be a number, got '2'"),
    ],
)
def test_bad_rules_are_refused_by_name(kwargs: dict[str, Any], message: str) -> None:
    """A bad VerdictRule value fails at construction, naming the field and the value."""
    with pytest.raises((TypeError, ValueError), match=message):
        VerdictRule(**kwargs)


def test_the_adapter_applies_per_verdict_rules() -> None:
    """Through a real adapter, a 429 with a RATE_LIMIT rule of no retries reaches the server
    once while a 503 is retried."""
    rules = {Verdict.RATE_LIMIT: VerdictRule(max_retries=0)}
    adapter = SmartRetryAdapter(max_retries=1, timeout=10.0, per_verdict=rules,
                                sleep=lambda seconds: None)
    with FaultServer() as server, requests.Session() as session:
        session.mount("http://", adapter)
        assert session.get(server.url("/status/429")).status_code == 429
        assert session.get(server.url("/status/503")).status_code == 503
        assert server.hits("/status/429") == 1
        assert server.hits("/status/503") == 2
