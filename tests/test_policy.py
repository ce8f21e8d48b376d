"""RetryPolicy: the defaults are the specification; every bad value is refused by name."""

from __future__ import annotations

import dataclasses
import math
import pickle
from typing import Any

import pytest

from requests_smartretry import RetryPolicy


def test_defaults_are_the_specification() -> None:
    """One retry (two attempts), 30 s per attempt, 1 s doubling backoff capped at 5 s, no jitter."""
    policy = RetryPolicy()
    assert policy.max_retries == 1
    assert policy.max_attempts == 2
    assert policy.timeout == 30.0
    assert (policy.backoff_base, policy.backoff_multiplier, policy.backoff_max) == (1.0, 2.0, 5.0)
    assert policy.jitter is None
    assert policy.lang == "zh"
    assert 429 in policy.retry_statuses and 503 in policy.retry_statuses
    assert 404 not in policy.retry_statuses
    assert "POST" not in policy.idempotent_methods and "GET" in policy.idempotent_methods


def test_policy_is_frozen() -> None:
    """A policy cannot be changed in place, so threads may share it."""
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_retries = 5  # type: ignore[misc]


def test_replace_validates_the_copy() -> None:
    """replace() derives a new validated policy and leaves the original alone."""
    base = RetryPolicy()
    patient = base.replace(max_retries=3, jitter="full")
    assert (patient.max_retries, patient.jitter, base.max_retries) == (3, "full", 1)
    with pytest.raises(ValueError, match="max_retries"):
        base.replace(max_retries=-1)


def test_repr_shows_what_differs_from_the_defaults() -> None:
    """The repr names the attempts and the deadline, plus only the non-default settings."""
    assert repr(RetryPolicy()) == "RetryPolicy(max_retries=1, timeout=30.0)"
    assert "jitter='equal'" in repr(RetryPolicy(jitter="equal"))


def test_policy_pickles() -> None:
    """A policy without lambdas survives pickling unchanged."""
    policy = RetryPolicy(max_retries=2, operation_name="生成艺术照", lang="en")
    assert pickle.loads(pickle.dumps(policy)) == policy


BAD_VALUES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"max_retries": -1}, ValueError, "max_retries"),
    ({"max_retries": 1.5}, TypeError, "max_retries"),
    ({"max_retries": True}, TypeError, "max_retries"),
    ({"max_retries": "2"}, TypeError, "max_retries"),
    ({"timeout": 0}, ValueError, "timeout"),
    ({"timeout": -1.0}, ValueError, "timeout"),
    ({"timeout": math.inf}, ValueError, "timeout"),
    ({"timeout": math.nan}, ValueError, "timeout"),
    ({"timeout": "30"}, TypeError, "timeout"),
    ({"connect_timeout": 0}, ValueError, "connect_timeout"),
    ({"backoff_base": -0.5}, ValueError, "backoff_base"),
    ({"backoff_base": 6.0}, ValueError, "backoff_base"),
    ({"backoff_max": math.inf}, ValueError, "backoff_max"),
    ({"backoff_multiplier": 0}, ValueError, "backoff_multiplier"),
    ({"backoff_multiplier": 0.5}, ValueError, "backoff_multiplier"),
    ({"jitter": "random"}, ValueError, "jitter"),
    ({"jitter": True}, ValueError, "jitter"),
    ({"operation_name": ""}, TypeError, "operation_name"),
    ({"operation_name": 42}, TypeError, "operation_name"),
    ({"on_retry": "print"}, TypeError, "on_retry"),
    ({"classify_response": 1}, TypeError, "classify_response"),
    ({"prepare_attempt": object()}, TypeError, "prepare_attempt"),
    ({"name_request": "x"}, TypeError, "name_request"),
    ({"lang": "fr"}, ValueError, "lang"),
    ({"retry_statuses": {700}}, ValueError, "retry_statuses"),
    ({"retry_statuses": {"503"}}, TypeError, "retry_statuses"),
    ({"retry_statuses": 503}, TypeError, "retry_statuses"),
    ({"idempotent_methods": "GET"}, TypeError, "idempotent_methods"),
    ({"idempotent_methods": {"GE T"}}, ValueError, "idempotent_methods"),
    ({"idempotent": "yes"}, TypeError, "idempotent"),
    ({"respect_retry_after": 1}, TypeError, "respect_retry_after"),
    ({"log": "no"}, TypeError, "log"),
    ({"hooks": [1]}, TypeError, "hooks"),
    ({"hooks": 5}, TypeError, "hooks"),
    ({"nested": "twice"}, ValueError, "nested"),
    ({"service": ""}, TypeError, "service"),
]


@pytest.mark.parametrize(("changes", "error", "name"), BAD_VALUES,
                         ids=[f"{next(iter(c))}={c[next(iter(c))]!r}" for c, _, _ in BAD_VALUES])
def test_bad_value_is_refused_naming_the_parameter(
    changes: dict[str, Any], error: type[Exception], name: str
) -> None:
    """Each bad configuration value raises at construction, naming the parameter and value."""
    with pytest.raises(error) as caught:
        RetryPolicy(**changes)
    message = str(caught.value)
    assert name in message
    assert repr(next(iter(changes.values())))[:20].strip("{}") in message or "got" in message


def test_statuses_and_methods_are_normalised() -> None:
    """Status lists become frozensets and method names are upper-cased."""
    policy = RetryPolicy(retry_statuses=[502, 503], idempotent_methods=["get", "post"])
    assert policy.retry_statuses == frozenset({502, 503})
    assert policy.idempotent_methods == frozenset({"GET", "POST"})
