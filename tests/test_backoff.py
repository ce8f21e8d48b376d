"""Backoff delays and Retry-After parsing."""

from __future__ import annotations

import email.utils
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from requests_smartretry import RetryPolicy
from requests_smartretry.backoff import backoff_delay, parse_retry_after

NOW = 1_700_000_000.0


def test_default_backoff_is_1_2_4_then_capped_at_5() -> None:
    """Without jitter the waits are 1 s, 2 s, 4 s, then the 5 s cap."""
    policy = RetryPolicy()
    assert [backoff_delay(policy, n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_huge_retry_numbers_stay_at_the_cap() -> None:
    """Exponent overflow cannot escape the cap."""
    assert backoff_delay(RetryPolicy(), 10_000) == 5.0


def test_retry_number_must_be_positive() -> None:
    """Asking for retry 0 is a programming error, named as such."""
    with pytest.raises(ValueError, match="retry_number"):
        backoff_delay(RetryPolicy(), 0)


@given(
    mode=st.sampled_from(["full", "equal", "decorrelated"]),
    base=st.floats(0.0, 3.0),
    extra=st.floats(0.0, 10.0),
    multiplier=st.floats(1.0, 5.0),
    number=st.integers(1, 50),
    previous=st.one_of(st.none(), st.floats(0.0, 100.0)),
    seed=st.integers(0, 2**32 - 1),
)
def test_jitter_never_exceeds_the_cap(
    mode: str, base: float, extra: float, multiplier: float, number: int,
    previous: float | None, seed: int,
) -> None:
    """Whatever the jitter mode and draw, a wait lies within [0, backoff_max]."""
    policy = RetryPolicy(backoff_base=base, backoff_max=base + extra,
                         backoff_multiplier=multiplier, jitter=mode)
    wait = backoff_delay(policy, number, previous=previous, rng=random.Random(seed))
    assert 0.0 <= wait <= policy.backoff_max


def test_equal_jitter_keeps_at_least_half() -> None:
    """'equal' jitter waits between half and all of the exponential delay."""
    policy = RetryPolicy(jitter="equal")
    rng = random.Random(7)
    waits = [backoff_delay(policy, 2, rng=rng) for _ in range(200)]
    assert min(waits) >= 1.0 and max(waits) <= 2.0
    assert max(waits) - min(waits) > 0.5  # it really varies


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("1.5", 1.0),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 3600, usegmt=True), 0.0),
    ],
)
def test_retry_after_forms_are_understood(header: str, expected: float) -> None:
    """Delta-seconds and HTTP-dates both give a wait in seconds; past dates mean now."""
    assert parse_retry_after(header, now=NOW) == pytest.approx(expected, abs=1.0)


@pytest.mark.parametrize(
    "header", [None, "", "soon", "-5", "1e3", "Wed, 99 Foo 2024 25:61:00 GMT", "∞", "12 34", 3]
)
def test_malformed_retry_after_is_ignored(header: object) -> None:
    """A malformed Retry-After is ignored (None), never fatal."""
    assert parse_retry_after(header, now=NOW) is None
