"""Tests for requests_smartretry.alerts: retry-rate alerts over a sliding window."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import pytest

from requests_smartretry import RetryRateAlert, RetryRateExceeded
from requests_smartretry.events import AttemptEvent, EventKind, Verdict
from tests.conftest import FakeClock

_call_ids = iter(range(1, 10**9))



def calls(alert: RetryRateAlert, n: int, *, retried: int = 0, service: str = "http://a",
          op: str = "op") -> None:
    """Feed ``n`` calls to ``alert``, the first ``retried`` of them with one retry each."""
    for index in range(n):
        call_id = next(_call_ids)
        common: dict[str, Any] = {"operation": op, "service": service, "max_attempts": 2,
                                  "call_id": call_id}
        alert(AttemptEvent(EventKind.START, attempt=1, **common))
        if index < retried:
            alert(AttemptEvent(EventKind.FAILURE, attempt=1, verdict=Verdict.SERVER_ERROR,
                               **common))
            alert(AttemptEvent(EventKind.RETRY, attempt=1, verdict=Verdict.SERVER_ERROR,
                               wait=0.0, **common))
            alert(AttemptEvent(EventKind.START, attempt=2, **common))
        alert(AttemptEvent(EventKind.SUCCESS, attempt=1 + (index < retried),
                           verdict=Verdict.SUCCESS, **common))


def make(clock: FakeClock, fired: list[RetryRateExceeded], **kwargs: Any) -> RetryRateAlert:
    settings: dict[str, Any] = {"threshold": 0.5, "window": 60.0, "min_requests": 10,
                                "rearm_below": 0.2, "on_alert": fired.append,
                                "clock": clock}
    settings.update(kwargs)
    return RetryRateAlert(**settings)


def test_fires_once_when_crossing_and_again_only_after_rearm() -> None:
    """The alert fires once when the retry rate crosses the threshold, stays silent while
    it stays high, and fires again only after the rate fell below the re-arm level."""
    clock = FakeClock()
    fired: list[RetryRateExceeded] = []
    alert = make(clock, fired)
    calls(alert, 10)  # healthy traffic: rate 0
    assert fired == []
    calls(alert, 10, retried=10)  # 10 retries / 20 calls: 0.5 reaches the threshold
    assert len(fired) == 1
    first = fired[0]
    assert (first.key, first.group_by, first.retries, first.requests) == ("http://a",
                                                                          "service", 10, 20)
    assert first.rate == 0.5
    calls(alert, 30, retried=30)  # still high: no second alert
    assert len(fired) == 1
    assert alert.firing() == ["http://a"]
    calls(alert, 150)  # 40 retries / 200 calls = 0.2: not below the re-arm level yet
    assert alert.firing() == ["http://a"]
    calls(alert, 1)  # 40 / 201 < 0.2: re-armed
    assert alert.firing() == []
    assert len(fired) == 1
    calls(alert, 400, retried=400)  # crosses again
    assert len(fired) == 2


def test_little_traffic_never_fires() -> None:
    """Below min_requests calls in the window, even a 100 % retry rate does not fire."""
    clock = FakeClock()
    fired: list[RetryRateExceeded] = []
    alert = make(clock, fired, min_requests=10)
    calls(alert, 9, retried=9)
    assert fired == []
    calls(alert, 1, retried=1)
    assert len(fired) == 1


def test_old_traffic_leaves_the_window() -> None:
    """Retries older than the window no longer count toward the rate."""
    clock = FakeClock()
    fired: list[RetryRateExceeded] = []
    alert = make(clock, fired, threshold=0.5, rearm_below=0.1)
    calls(alert, 10, retried=4)  # 0.4: below the threshold
    clock.now += 61.0
    calls(alert, 10, retried=4)  # the first 4 retries have expired: still 0.4
    assert fired == []
    calls(alert, 1, retried=1)  # 5 / 11
    assert fired == []
    calls(alert, 1, retried=1)  # 6 / 12 = 0.5
    assert len(fired) == 1


def test_a_quiet_window_rearms() -> None:
    """After a whole window without calls the episode is over: a new outage alerts again."""
    clock = FakeClock()
    fired: list[RetryRateExceeded] = []
    alert = make(clock, fired)
    calls(alert, 10, retried=10)
    assert len(fired) == 1
    clock.now += 30.0
    calls(alert, 10, retried=10)  # same episode, half a window later
    assert len(fired) == 1
    clock.now += 120.0  # silence
    calls(alert, 10, retried=10)
    assert len(fired) == 2


def test_groups_are_watched_separately() -> None:
    """With group_by='service' one bad service alerts without another's traffic diluting it."""
    clock = FakeClock()
    fired: list[RetryRateExceeded] = []
    alert = make(clock, fired)
    calls(alert, 100, service="http://good")
    calls(alert, 10, retried=10, service="http://bad")
    assert [a.key for a in fired] == ["http://bad"]
    overall = make(clock, [], group_by="all")
    calls(overall, 100, service="http://good")
    calls(overall, 10, retried=10, service="http://bad")
    assert overall.firing() == []


def test_breaker_refusals_count_as_calls() -> None:
    """A call the breaker refused before its first attempt is a call in the rate."""
    clock = FakeClock()
    fired: list[RetryRateExceeded] = []
    alert = make(clock, fired, group_by="operation")
    for call_id in range(20):
        alert(AttemptEvent(EventKind.REJECTED, operation="op", service="s", attempt=1,
                           max_attempts=2, call_id=10**6 + call_id))
    calls(alert, 1, retried=1)
    calls(alert, 9, retried=9)  # 10 retries / 30 calls
    assert fired == []


def test_default_action_logs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Without on_alert, crossing logs one WARNING on the requests_smartretry logger."""
    clock = FakeClock()
    alert = RetryRateAlert(0.5, min_requests=10, clock=clock, lang="en")
    with caplog.at_level(logging.WARNING, logger="requests_smartretry"):
        calls(alert, 30, retried=30)
    records = [r for r in caplog.records if "retry rate alert" in r.getMessage()]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert records[0].name == "requests_smartretry"
    assert "http://a" in records[0].getMessage()
    assert records[0].retry_alert_requests == 10  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0}, "threshold must be > 0, got 0"),
        ({"threshold": float("nan")}, "threshold must be finite"),
        ({"window": -1}, "window must be > 0, got -1"),
        ({"min_requests": 0}, "min_requests must be >= 1, got 0"),
        ({"min_requests": 2.5}, "min_requests must be an int, got 2.5"),
        ({"threshold": 0.5, "rearm_below": 0.5}, "rearm_below must be >= 0 and below"),
        ({"group_by": "host"}, "group_by must be one of .*got 'host'"),
        ({"on_alert": "log"}, "on_alert must be callable or None, got 'log'"),
        ({"clock": 5}, "clock must be callable, got 5"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict[str, Any], message: str) -> None:
    """A bad alert setting fails at construction, naming the setting and the value."""
    with pytest.raises((TypeError, ValueError), match=message):
        RetryRateAlert(**kwargs)


def test_an_alert_pickles_without_its_lock() -> None:
    """An alert inside a pickled adapter survives pickling and keeps working."""
    fired: list[RetryRateExceeded] = []
    alert = RetryRateAlert(0.5, min_requests=1, clock=FakeClock())
    copy = pickle.loads(pickle.dumps(alert))
    copy.on_alert = fired.append
    calls(copy, 1, retried=1)
    assert len(fired) == 1


@pytest.mark.parametrize(("session_lang", "alert_lang", "expected"), [
    ("zh", None, "重试率告警: 服务 http://a 最近 60s 内 10 次调用重试了 9 次 "
                 "(重试率 0.90, 阈值 0.50)"),
    ("en", None, "retry rate alert: service http://a made 9 retries for 10 calls in the last 60s"),
    ("en", "zh", "重试率告警: 服务 http://a"),
])
def test_the_warning_speaks_the_language_of_the_session(
    caplog: pytest.LogCaptureFixture, session_lang: str, alert_lang: Any, expected: str
) -> None:
    """Installed on a session, the alert's WARNING is in the session's ``lang`` (zh by
    default), unless the alert was given its own."""
    from requests_smartretry import smart_session

    alert = RetryRateAlert(0.5, min_requests=10, clock=FakeClock(), lang=alert_lang)
    smart_session(lang=session_lang, hooks=[alert])
    with caplog.at_level(logging.WARNING, logger="requests_smartretry"):
        calls(alert, 30, retried=30)
    messages = [r.getMessage() for r in caplog.records]
    assert any(expected in m for m in messages), messages
    with pytest.raises(ValueError, match="lang must be"):
        RetryRateAlert(lang="fr")  # type: ignore[arg-type]
