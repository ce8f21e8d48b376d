"""The throttle: its pure decisions (injected clock), the retry loop's turn before every
attempt, and real pacing against a local rate-limited vendor (and a real Redis fleet)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

import pytest

from requests_smartretry import (
    EventKind,
    Throttle,
    ThrottledError,
    Verdict,
    attempt_history,
    smart_session,
)
from requests_smartretry.throttle import (
    BETA,
    DOUBLING,
    DOUBLINGS,
    HOLDOFF,
    LEARN,
    MIN_RATE,
    NEAR,
    RECOVERY,
    START_RATE,
    is_throttling,
)
from tests.conftest import FakeClock
from tests.fakes.ratelimited import RateLimitedVendor

SERVICE = "svc"


def go(throttle: Throttle, limit: Any = None) -> tuple[Any, float]:
    """Drive one turn on the throttle's (fake) clock to the moment it may go; returns the
    turn and the seconds it waited."""
    turn = throttle.turn(SERVICE, limit)
    waited = 0.0
    wait = turn.step(throttle.clock())
    while wait is not None:
        throttle.clock.advance(wait)  # type: ignore[attr-defined]
        waited += wait
        wait = turn.step(throttle.clock())
    return turn, waited


# -- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "named"), [
    ({"rate": -1.0}, "rate"),
    ({"rate": 0}, "rate"),
    ({"rate": float("nan")}, "rate"),
    ({"rate": True}, "rate"),
    ({"rate": 5.0, "burst": 0}, "burst"),
    ({"rate": 5.0, "burst": 1.5}, "burst"),
    ({"rate": 5.0, "burst": 10**400}, "burst"),
    ({"burst": 3}, "burst"),
    ({"max_in_flight": 0}, "max_in_flight"),
    ({"max_in_flight": 2.0}, "max_in_flight"),
    ({"rate": 5.0, "max_wait": -1.0}, "max_wait"),
    ({"rate": 5.0, "max_wait": float("inf")}, "max_wait"),
    ({"rate": 5.0, "adaptive": "yes"}, "adaptive"),
    ({}, "rate="),
])
def test_bad_configuration_is_refused_by_name(kwargs: dict[str, Any], named: str) -> None:
    """Every bad argument raises a ValueError that names it."""
    with pytest.raises(ValueError, match=named):
        Throttle(**kwargs)


def test_throttle_argument_must_be_a_throttle() -> None:
    """``throttle=`` of another type is refused at construction, by name."""
    with pytest.raises(TypeError, match="throttle must be None or a Throttle"):
        smart_session(throttle=5)  # type: ignore[arg-type]


def test_repr_and_defaults() -> None:
    """The burst defaults to a second's worth of the rate; repr shows the configuration."""
    throttle = Throttle(rate=10.0, max_in_flight=4)
    assert throttle.settings.burst == 10
    assert repr(throttle) == "Throttle(rate=10, burst=10, max_in_flight=4)"


# -- the schedule (fake clock) -----------------------------------------------------------------

def test_burst_goes_at_once_then_one_turn_per_interval() -> None:
    """``burst`` turns go at once, the next ones one interval apart (reserved in order)."""
    throttle = Throttle(rate=10.0, burst=3, clock=FakeClock())
    waits = [throttle.turn(SERVICE, None).step(throttle.clock()) for _ in range(6)]
    assert waits[:3] == [None, None, None]
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3])


def test_any_window_holds_at_most_burst_plus_rate_times_window() -> None:
    """Whatever the arrival pattern, the turns that go in any window of w seconds number
    at most burst + rate * w."""
    clock = FakeClock()
    throttle = Throttle(rate=5.0, burst=2, clock=clock)
    sent = []
    for gap in [0.0, 0.0, 0.0, 0.01, 0.5, 0.0, 0.0, 1.3, 0.0, 0.05, 0.0, 0.0, 0.0] * 3:
        clock.advance(gap)
        start = clock()
        _, waited = go(throttle)
        sent.append(start + waited)
        clock.now = start  # the next caller arrives on its own schedule
    sent.sort()
    for window in (0.5, 1.0, 2.0):
        for first in sent:
            inside = [t for t in sent if first <= t < first + window]
            assert len(inside) <= 2 + 5.0 * window + 1e-9


def test_a_turn_that_cannot_come_in_time_is_refused_and_reserves_nothing() -> None:
    """Refused: ThrottledError names the wait needed, and the schedule is unchanged."""
    throttle = Throttle(rate=1.0, burst=1, clock=FakeClock())
    assert throttle.turn(SERVICE, None).step(throttle.clock()) is None
    with pytest.raises(ThrottledError) as refused:
        throttle.turn(SERVICE, 0.5).step(throttle.clock())
    assert refused.value.wait == pytest.approx(1.0)
    assert refused.value.service == SERVICE
    assert throttle.turn(SERVICE, 2.0).step(throttle.clock()) == pytest.approx(1.0)


def test_max_wait_bounds_the_wait() -> None:
    """``max_wait`` refuses a turn the attempt's own limit would have allowed."""
    throttle = Throttle(rate=1.0, burst=1, max_wait=0.2, clock=FakeClock())
    go(throttle)
    with pytest.raises(ThrottledError):
        throttle.turn(SERVICE, 30.0).step(throttle.clock())


def test_in_flight_slots() -> None:
    """At most ``max_in_flight`` turns hold a slot; a freed slot lets a waiting one go,
    and one that waits past its limit is refused."""
    clock = FakeClock()
    throttle = Throttle(max_in_flight=2, clock=clock)
    first, _ = go(throttle)
    go(throttle)
    assert throttle.in_flight(SERVICE) == 2
    third = throttle.turn(SERVICE, 1.0)
    pause = third.step(clock())
    assert pause is not None and pause > 0
    first.done(clock(), success=True)
    assert third.step(clock()) is None
    late = throttle.turn(SERVICE, 0.0)
    with pytest.raises(ThrottledError, match="in-flight slot"):
        late.step(clock())
    assert throttle.in_flight(SERVICE) == 2


# -- the adaptive rate -----------------------------------------------------------------------

def test_a_throttling_answer_lowers_the_rate_at_once_and_it_recovers_along_the_curve() -> None:
    """With a configured rate, a throttling answer drops it to BETA x the rate in force;
    it climbs back to it at RECOVERY seconds and never above the configured ceiling."""
    clock = FakeClock()
    throttle = Throttle(rate=20.0, adaptive=True, clock=clock)
    turn, _ = go(throttle)
    turn.done(clock(), throttling=True)
    assert throttle.rate(SERVICE) == pytest.approx(BETA * 20.0)
    clock.advance(RECOVERY / 2)
    assert BETA * 20.0 < throttle.rate(SERVICE) < 20.0
    clock.advance(RECOVERY / 2)
    assert throttle.rate(SERVICE) == pytest.approx(20.0)
    clock.advance(RECOVERY * 10)
    assert throttle.rate(SERVICE) == 20.0  # never above the configured ceiling


def test_without_a_rate_the_first_throttling_answer_learns_the_accepted_rate() -> None:
    """adaptive=True alone, past its slow start: the first throttling answer holds every
    turn for LEARN seconds, then the rate starts at BETA x the successes of the last second, climbs
    back to them at RECOVERY, stays near them (the plateau), then probes above."""
    clock = FakeClock()
    throttle = Throttle(adaptive=True, clock=clock)
    go(throttle)  # the first turn starts the slow start ...
    clock.advance(DOUBLING * DOUBLINGS)  # ... over by now: nothing paced
    for _ in range(20):  # 20 successes in the last second: the vendor accepts 20/s
        turn, _ = go(throttle)
        turn.done(clock(), success=True)
    turn, _ = go(throttle)
    turn.done(clock(), throttling=True)
    _, held = go(throttle)
    assert held == pytest.approx(LEARN)
    assert throttle.rate(SERVICE) == pytest.approx(BETA * 20.0, rel=0.01)  # (one turn on)
    clock.advance(RECOVERY)
    assert throttle.rate(SERVICE) == pytest.approx(20.0)
    clock.advance(RECOVERY * 0.3)
    assert 20.0 < throttle.rate(SERVICE) < 20.0 * 1.01  # the plateau: barely above
    clock.advance(RECOVERY)
    assert throttle.rate(SERVICE) > 21.0  # then probing upwards


def test_answers_to_attempts_sent_before_the_decrease_do_not_lower_it_again() -> None:
    """Only an attempt started after the last decrease (and its hold-off) lowers the
    rate again; the decrease takes effect after the turns reserved already (5 turns at
    10/s: 0.5 s of schedule)."""
    clock = FakeClock()
    throttle = Throttle(rate=10.0, adaptive=True, clock=clock)
    early = [go(throttle)[0] for _ in range(5)]
    early[0].done(clock(), throttling=True)
    lowered = throttle.rate(SERVICE)
    assert lowered == pytest.approx(BETA * 10.0)
    for turn in early[1:]:
        turn.done(clock(), throttling=True)
    assert throttle.rate(SERVICE) == pytest.approx(lowered)
    clock.advance(0.5 + HOLDOFF / 2)
    within, _ = go(throttle)
    recovering = throttle.rate(SERVICE)
    within.done(clock(), throttling=True)  # the vendor's window still holds the old rate
    assert throttle.rate(SERVICE) == pytest.approx(recovering)
    clock.advance(HOLDOFF)
    before = throttle.rate(SERVICE)  # the rate the next turn goes at
    later, _ = go(throttle)
    later.done(clock(), throttling=True)
    assert throttle.rate(SERVICE) == pytest.approx(BETA * before, rel=1e-3)


def test_the_curve_is_read_where_the_turn_goes_on_the_schedule() -> None:
    """Turns go spaced by the curve at the moment each goes: 60 turns one after another
    after a decrease go ever closer together as the curve climbs (the first at BETA x W)."""
    clock = FakeClock()
    throttle = Throttle(rate=20.0, burst=1, adaptive=True, clock=clock)
    turn, _ = go(throttle)
    turn.done(clock(), throttling=True)
    moments = []
    for _ in range(60):
        go(throttle)
        moments.append(clock())
    first, last = moments[1] - moments[0], moments[-1] - moments[-2]
    assert first == pytest.approx(1.0 / (BETA * 20.0), rel=0.02)
    assert last < 0.97 * first  # the curve climbed by the time the last ones go


def _ask_until_booked(clock: Any, turns: list[Any],
                      pending: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Each turn of ``pending`` (moment, index into ``turns``) asks at its moment, and again
    when told to, on ``clock`` until it has booked: (the moment it goes, index), in the
    order they booked."""
    went = []
    while pending:
        pending.sort()
        at, index = pending.pop(0)
        clock.now = at
        wait = turns[index].step(clock())
        if turns[index].token:
            went.append((at + (wait or 0.0), index))
        else:
            pending.append((at + (wait or 0.0), index))
    return went


def test_an_adaptive_throttle_books_no_turn_beyond_near() -> None:
    """60 turns asked at once at 20/s: only those that go within NEAR book their moment;
    the others take tickets and ask again when their place comes near.  A decrease then
    reaches every turn not booked yet (booked 3 s ahead, a probe's queue went on at the
    refused rate: 1-3 throttled answers per probe in the fleet benchmark), and the queue
    is still served in order.  A turn whose place is past its limit is refused at once."""
    clock = FakeClock()
    throttle = Throttle(rate=20.0, burst=1, adaptive=True, clock=clock)
    queued = [throttle.turn(SERVICE, 10.0) for _ in range(60)]
    wakes = [(turn.step(clock()), index) for index, turn in enumerate(queued)]
    booked = [index for index, turn in enumerate(queued) if turn.token]
    assert booked == list(range(1 + round(NEAR * 20.0)))
    assert [turn.ticket for turn in queued[len(booked):]] == list(range(1, 61 - len(booked)))
    assert all(wait is not None and wait >= NEAR / 2.0 for wait, index in wakes
               if index not in booked)
    with pytest.raises(ThrottledError):  # its place (2.7 s) is past its limit
        throttle.turn(SERVICE, 1.0).step(clock())
    queued[0].done(clock(), throttling=True)  # the vendor refused 20/s
    start = clock()
    pending = [(start + (wait or 0.0), index) for wait, index in wakes
               if index not in booked]
    went = _ask_until_booked(clock, queued, pending)
    assert [index for _, index in went] == sorted(index for _, index in went)  # in order
    gaps = [b - a for (a, _), (b, _) in zip(went, went[1:])][:10]
    assert all(gap == pytest.approx(1.0 / (BETA * 20.0), rel=0.05) for gap in gaps)


def test_a_booking_serves_as_many_tickets_as_turns_it_books() -> None:
    """A ticket's holder that books a batch of 3 turns serves 3 tickets: the batch's other
    turns go to whichever turns of its process take them, and their tickets are never
    asked for again (counted as one, the waiting tickets grew without bound in the
    4-process benchmark, until new turns were refused: 190 of 318 calls failed)."""
    from requests_smartretry.throttle import reserve

    settings = Throttle(rate=20.0, burst=1, adaptive=True).settings
    record: dict[str, float] = {}
    now = 100.0
    assert reserve(record, settings, now, 1, 30.0)[1] == 1
    for _ in range(20):
        reserve(record, settings, now, 1, 30.0)  # booked within NEAR, then tickets
    assert record["qn"] > 6
    now += 0.3
    wait, granted, _ = reserve(record, settings, now, 3, 30.0, ticket=1.0)
    assert granted == 3
    assert record["hn"] == pytest.approx(3.0)
    fourth, granted, interval = reserve(record, settings, now, 1, 30.0, ticket=4.0)
    assert fourth == pytest.approx(wait + 3 * interval)  # right after the batch


def test_a_place_does_not_slide_later_while_the_schedule_stands_idle() -> None:
    """Tickets whose turns never ask again (they went on a token their process leased, or
    not at all) leave the schedule idle: the places that passed count as served, so a
    later ticket whose place has passed goes at once (before, every place slid later with
    the clock while the schedule stood idle: in a 60 s fleet run, goodput 0.62 and p99
    25 s)."""
    from requests_smartretry.throttle import reserve

    settings = Throttle(rate=20.0, burst=1, adaptive=True).settings
    record: dict[str, float] = {}
    now = 100.0
    for _ in range(20):
        reserve(record, settings, now, 1, 30.0)  # 6 booked, tickets 1..14 (place <= 0.95 s)
    assert record["qn"] == 14.0
    now += 2.0  # none of tickets 1..13 asked again
    wait, granted, _ = reserve(record, settings, now, 1, 30.0, ticket=14.0)
    assert (wait, granted) == (0.0, 1)


def test_tickets_asleep_while_the_schedule_stands_idle_get_no_burst() -> None:
    """Turns holding tickets that ask again late (asleep on a loaded machine) leave the
    schedule idle, but the bucket does not refill meanwhile: when they wake they go one
    interval apart, not ``burst`` at once on top of the rate (with ``rate=19`` and the
    default burst of 19, the fleet benchmark saw 14 throttled answers in a row mid-run
    and p99 11.8 s)."""
    from requests_smartretry.throttle import reserve

    settings = Throttle(rate=19.0, adaptive=True).settings  # burst 19
    record: dict[str, float] = {}
    now = 100.0
    tickets = []
    for _ in range(60):  # a burst of 19, turns within NEAR, then tickets
        _, granted, _ = reserve(record, settings, now, 1, 30.0)
        if not granted:
            tickets.append(record["qn"])
    assert len(tickets) > 30
    now += 5.0  # every place has passed; nobody asked again
    waits = [reserve(record, settings, now, 1, 30.0, ticket=ticket)[0]
             for ticket in tickets[:5]]  # (booked within NEAR; the next ask again)
    assert waits == pytest.approx([n / 19.0 for n in range(5)])


def test_a_waiting_turn_asks_again_halfway_to_a_far_place() -> None:
    """A ticket 3 s from its place asks again halfway there (its place is counted at the
    rate in force when it asks; while the curve climbs the queue moves faster, and a
    turn that woke only NEAR before its old place left the schedule idle: goodput 0.76
    of the vendor's limit in a 40 s fleet run, 0.96 asking halfway); near its place it
    asks NEAR before it, and never sooner than NEAR / 2."""
    from requests_smartretry.throttle import ask_again_in

    assert ask_again_in(3.0) == pytest.approx(1.5)
    assert ask_again_in(0.45) == pytest.approx(0.45 - NEAR)
    assert ask_again_in(0.3) == pytest.approx(NEAR / 2.0)


def test_a_decrease_starts_after_the_turns_reserved_already() -> None:
    """A throttling answer while turns are booked ahead: those go at the old rate whatever
    happens, so the curve (and the hold-off) start after them; an answer to one of them is
    not a new verdict on the lowered rate."""
    clock = FakeClock()
    throttle = Throttle(rate=20.0, burst=1, adaptive=True, clock=clock)
    queued = [throttle.turn(SERVICE, None) for _ in range(6)]  # NEAR of schedule: booked
    waits = [turn.step(clock()) or 0.0 for turn in queued]
    assert all(turn.token for turn in queued)
    queued[0].done(clock(), throttling=True)
    lowered = throttle.rate(SERVICE)
    assert lowered == pytest.approx(BETA * 20.0)
    clock.advance(waits[5])
    queued[5].step(clock())
    queued[5].done(clock(), throttling=True)
    assert throttle.rate(SERVICE) == pytest.approx(lowered)


def test_the_decrease_starts_from_the_rate_the_refused_turn_went_at() -> None:
    """W is the rate the vendor refused (the curve at the moment the throttled attempt
    went), not the rate in force when its answer comes back: an attempt that went at
    2 s into a recovery and was answered at 6 s lowers from the rate at 2 s."""
    clock = FakeClock()
    throttle = Throttle(rate=20.0, burst=1, adaptive=True, clock=clock)
    turn, _ = go(throttle)
    turn.done(clock(), throttling=True)
    clock.advance(2.0)
    sent = throttle.rate(SERVICE)
    slow, _ = go(throttle)
    clock.advance(4.0)  # the curve is back at 20/s when the answer comes
    slow.done(clock(), throttling=True)
    assert throttle.rate(SERVICE) == pytest.approx(BETA * sent, rel=1e-3)


def test_a_held_throttle_without_a_rate_does_not_read_as_unpaced() -> None:
    """During the learning pause the rate reads 0 (every turn held), not ``inf``: a shared
    throttle's processes let turns through without asking Redis for as long as it last
    said ``inf`` (in the benchmark the first burst's callers kept calling through the
    pause: 101 throttled answers in its first 0.5 s)."""
    clock = FakeClock()
    throttle = Throttle(adaptive=True, clock=clock)
    go(throttle)
    clock.advance(DOUBLING * DOUBLINGS)  # past the slow start: not paced
    turn, _ = go(throttle)
    turn.done(clock(), throttling=True)
    assert throttle.rate(SERVICE) == 0.0
    clock.advance(LEARN)
    assert 0.0 < throttle.rate(SERVICE) < float("inf")


def test_adaptive_without_rate_starts_slowly_and_doubles_until_throttled() -> None:
    """``adaptive=True`` alone: the first turn starts a slow start at START_RATE, doubling
    every DOUBLING seconds, not paced after DOUBLINGS doublings (unpaced from the first
    turn, 64 callers sent their burst at once: 44 throttled answers or more at a 20/s
    vendor before anything was learned); never below MIN_RATE."""
    clock = FakeClock()
    throttle = Throttle(adaptive=True, clock=clock)
    assert throttle.rate(SERVICE) == float("inf")  # nothing asked yet
    _, waited = go(throttle)
    assert waited == 0.0
    start = clock()

    def slow_start(at: float) -> float:
        return START_RATE * 2.0 ** ((at - start) / DOUBLING)

    assert throttle.rate(SERVICE) == pytest.approx(slow_start(start + 1.0 / START_RATE))
    _, waited = go(throttle)
    assert waited == pytest.approx(1.0 / START_RATE)
    clock.advance(DOUBLING)
    assert throttle.rate(SERVICE) == pytest.approx(slow_start(clock()))
    clock.advance(DOUBLING * DOUBLINGS)
    assert throttle.rate(SERVICE) == float("inf")
    assert all(go(throttle)[1] == 0.0 for _ in range(100))
    for _ in range(30):
        clock.advance(1.0)
        turn, _ = go(throttle)
        turn.done(clock(), throttling=True)
    assert throttle.rate(SERVICE) >= MIN_RATE


@pytest.mark.parametrize(("turns", "reported", "learned"),
                         [(30, 30, 30.0), (30, 0, 30.0), (5, 5, 5.0)])
def test_a_slow_starts_first_decrease_is_from_the_turns_its_window_sent(
        turns: int, reported: int, learned: float) -> None:
    """The first throttling answer of a slow start (the refused turn went at 40/s) lowers
    from the turns the schedule sent in the window before the refused turn (30 and the
    refused one: 31), not from the rate it went at (the rate doubles within a window:
    from that, the first decrease left the rate above the vendor's).  The successes need
    not have been reported yet (a loaded fleet's reach Redis late: counted alone, the
    shared rate started at 1-10/s at times), and a process that sent few turns (a local
    throttle's share) learns few (a floor at half the refused rate kept it above)."""
    clock = FakeClock()
    throttle = Throttle(adaptive=True, clock=clock)
    go(throttle)
    clock.advance(2.0 * DOUBLING)  # 10 x 2^2 = 40/s
    for number in range(turns):
        clock.advance(0.001)
        turn, _ = go(throttle)
        if number < reported:
            turn.done(clock(), success=True)
    refused, _ = go(throttle)  # went at about 40/s (the slow start a little further on)
    refused.done(clock(), throttling=True)
    assert throttle.rate(SERVICE) == pytest.approx(BETA * learned, rel=0.1)


def test_retry_after_holds_every_turn() -> None:
    """A throttling answer's Retry-After holds the next turns until it has passed."""
    throttle = Throttle(rate=100.0, clock=FakeClock())
    turn, _ = go(throttle)
    turn.done(throttle.clock(), throttling=True, retry_after=2.0)
    _, waited = go(throttle)
    assert waited == pytest.approx(2.0 - 0.99, abs=0.02)  # a burst of 100: 99 intervals early


def test_which_answers_are_throttling() -> None:
    """429 (and vendor rate-limit codes) and a retryable failure with Retry-After."""
    assert is_throttling(Verdict.RATE_LIMIT, None)
    assert is_throttling(Verdict.SERVER_ERROR, 5.0)
    assert not is_throttling(Verdict.SERVER_ERROR, None)
    assert not is_throttling(Verdict.CLIENT_ERROR, 5.0)


# -- through the adapter, against a rate-limited vendor -----------------------------------------

def hammer(session: Any, url: str, threads: int, calls: int) -> list[Any]:
    """``threads`` threads make ``calls`` calls each; returns the status codes (or the
    exception types) in no order."""
    results: list[Any] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(calls):
            try:
                answer: Any = session.get(url).status_code
            except Exception as exc:
                answer = type(exc)
            with lock:
                results.append(answer)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


@pytest.mark.slow
def test_rate_bound_seen_by_the_vendor() -> None:
    """With Throttle(rate=N, burst=B) the vendor sees at most N + B requests in any 1 s
    window (server-side timestamps; +2: on a loaded machine a request can reach the server
    up to 0.2 s after its turn, which packs 1.2 s of turns into 1 s of arrivals), and
    without the throttle the same load breaks that bound."""
    with RateLimitedVendor(rate=None) as vendor:
        session = smart_session(throttle=Throttle(rate=10.0, burst=2), max_retries=0,
                                log=False)
        results = hammer(session, vendor.url(), threads=6, calls=4)
        assert results == [200] * 24
        assert vendor.max_in_window() <= 10 + 2 + 2
        vendor.executed.clear()
        hammer(smart_session(max_retries=0, log=False), vendor.url(), threads=6, calls=4)
        assert vendor.max_in_window() > 14  # the same load, unpaced


@pytest.mark.slow
def test_max_in_flight_bound_seen_by_the_vendor() -> None:
    """With max_in_flight=M the vendor never holds more than M requests at once; the
    vendor's concurrency limit (50430) is then never hit."""
    with RateLimitedVendor(max_in_flight=2, latency=0.05) as vendor:
        session = smart_session(throttle=Throttle(max_in_flight=2), max_retries=0, log=False)
        results = hammer(session, vendor.url(), threads=6, calls=3)
        assert results == [200] * 18
        assert vendor.peak <= 2
        assert vendor.throttled == {}
        unpaced = hammer(smart_session(max_retries=0, log=False), vendor.url(), 6, 3)
        assert 429 in unpaced  # the vendor does enforce it


def test_throttled_error_sends_nothing(log_lines: Any) -> None:
    """A turn that cannot come in time raises ThrottledError; the vendor executes nothing;
    the history, the log line and the statistics say so."""
    with RateLimitedVendor() as vendor:
        session = smart_session(throttle=Throttle(rate=0.5, burst=1, max_wait=0.1),
                                max_retries=0, lang="en")
        assert session.get(vendor.url()).status_code == 200
        started = time.monotonic()
        with pytest.raises(ThrottledError) as refused:
            session.get(vendor.url())
        assert time.monotonic() - started < 1.0  # refused at once, not after waiting
        assert len(vendor.executed) == 1
    history = attempt_history(refused.value)
    assert [event.kind for event in history] == [EventKind.THROTTLED]
    assert history[0].reason == "refused"
    assert any("throttled: attempt 1 cannot get its turn in time (needs" in line
               for line in log_lines.lines)
    row = session.get_adapter("http://").stats.snapshot()["__total__"]
    assert row["calls"] == 2 and row["calls_throttled"] == 1 and row["throttle_refusals"] == 1
    assert row["calls_in_flight"] == 0


def test_a_throttled_wait_is_logged_and_counted(log_lines: Any) -> None:
    """A turn that waited writes the seed-style line (zh) and adds its wait to the
    statistics and the events."""
    with RateLimitedVendor() as vendor:
        session = smart_session(throttle=Throttle(rate=5.0, burst=1), max_retries=0,
                                operation_name="生成艺术照")
        session.get(vendor.url())
        response = session.get(vendor.url())
    waited = [e for e in response.retry_history if e.kind is EventKind.THROTTLED]
    assert len(waited) == 1 and 0.05 < waited[0].wait <= 0.25
    assert any(line.startswith("[API重试] 生成艺术照 - 限流: 第 1 次尝试等待 ")
               and line.endswith("ms 后发送") for line in log_lines.lines)
    row = session.get_adapter("http://").stats.snapshot()["生成艺术照"]
    assert row["throttled_attempts"] == 1
    assert row["throttle_wait_seconds"]["count"] == 1


def test_the_wait_counts_against_the_call_deadline() -> None:
    """A wait longer than the call's deadline leaves is refused at once."""
    with RateLimitedVendor() as vendor:
        session = smart_session(throttle=Throttle(rate=1.0, burst=1), max_retries=0,
                                deadline=0.3, log=False)
        session.get(vendor.url())
        with pytest.raises(ThrottledError):
            session.get(vendor.url())
        assert len(vendor.executed) == 1


def test_every_retry_takes_a_turn_and_a_refused_retry_ends_the_call() -> None:
    """Retries are paced too; a retry that cannot get its turn ends the call (reason
    "throttled") with the last answer, and sends nothing."""
    with RateLimitedVendor(rate=1, style="plain") as vendor:
        session = smart_session(throttle=Throttle(rate=1.0, burst=1, max_wait=0.2),
                                max_retries=2, backoff_base=0.01, log=False)
        assert session.get(vendor.url()).status_code == 200
        time.sleep(1.05)
        vendor.executed.clear()
        session2 = smart_session(throttle=Throttle(rate=100.0, burst=1, max_wait=0.2),
                                 max_retries=1, backoff_base=0.01, log=False)
        session2.get(vendor.url())  # takes the vendor's one request of this second
        response = session2.get(vendor.url())  # 429, retried after 10 ms: 429 again
        assert response.status_code == 429
        throttle = Throttle(rate=1.0, burst=1, max_wait=0.2)
        session3 = smart_session(throttle=throttle, max_retries=2, backoff_base=0.01,
                                 log=False)
        response = session3.get(vendor.url())  # 429 at once; its retry has no turn
        assert response.status_code == 429
        kinds = [e.kind for e in response.retry_history]
        assert kinds[-2:] == [EventKind.THROTTLED, EventKind.GIVE_UP]
        assert response.retry_history[-1].give_up_reason == "throttled"


@pytest.mark.slow
def test_adaptive_learns_the_vendors_rate() -> None:
    """adaptive=True against a vendor at 10/s: after the first 50429 the rate drops below
    what was sent, and the throttled share stays small."""
    with RateLimitedVendor(rate=10) as vendor:
        throttle = Throttle(adaptive=True)
        session = smart_session(throttle=throttle, max_retries=0, log=False)
        results = hammer(session, vendor.url(), threads=4, calls=15)
        learned = throttle.rate(f"http://127.0.0.1:{vendor.port}")
    assert learned < 15.0
    assert results.count(429) < 20  # unpaced, 60 calls at once would see ~50


def test_presets_and_httpx_clients_take_a_throttle() -> None:
    """photo_session, video_session, payment_session and the httpx clients accept
    ``throttle=`` and pace with it (a second call within the same second is refused)."""
    pytest.importorskip("httpx")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from requests_smartretry import payment_session, photo_session, video_session
    from requests_smartretry.httpx import smart_client, video_client

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    with RateLimitedVendor() as vendor:
        base = f"http://127.0.0.1:{vendor.port}"
        clients: list[tuple[str, Any]] = [
            ("photo", photo_session("AK", "SK", endpoint=base, throttle=Throttle(
                rate=0.5, burst=1, max_wait=0.0), max_retries=0)),
            ("video", video_session("key", endpoint=base, throttle=Throttle(
                rate=0.5, burst=1, max_wait=0.0), max_retries=0)),
            ("payment", payment_session("1900000001", "SERIAL", pem, endpoint=base,
                                        backup_endpoint=None, throttle=Throttle(
                                            rate=0.5, burst=1, max_wait=0.0),
                                        max_retries=0)),
            ("httpx", smart_client(throttle=Throttle(rate=0.5, burst=1, max_wait=0.0),
                                   max_retries=0)),
            ("ark httpx", video_client("key", endpoint=base, throttle=Throttle(
                rate=0.5, burst=1, max_wait=0.0), max_retries=0)),
        ]
        for name, client in clients:
            before = len(vendor.executed)
            client.get(f"{base}/api")
            with pytest.raises(ThrottledError):
                client.get(f"{base}/api")
            assert len(vendor.executed) == before + 1, name


# -- shared by a fleet through Redis ------------------------------------------------------------

@pytest.mark.redis
@pytest.mark.parametrize("rate", [None, 20.0])
def test_the_lua_transcription_decides_as_the_python_functions(redis_url: str,
                                                               rate: Any) -> None:
    """One script of turns, throttling answers (during a queue, within and after the
    hold-off, with Retry-After), successes, tickets and a learning pause, on one
    injected clock:
    THROTTLE_LUA (a real Redis, ``server_time=False``) gives the same waits, grants,
    spacings and rates as throttle.reserve / throttled / learned / rate_shown."""
    from requests_smartretry.redis_state import RedisStateStore
    from requests_smartretry.throttle import (
        _Local,
        learned,
        rate_shown,
        reserve,
        throttled,
    )

    settings = Throttle(rate=rate, burst=1, adaptive=True).settings
    store = RedisStateStore(redis_url, prefix=f"twin-{time.time_ns()}", server_time=False)
    local = _Local()
    now = 1000.0

    def both(op: str, **kw: Any) -> None:
        reply = store._throttle_trip(SERVICE, settings, op, now, **kw)
        assert reply is not None
        record = local.record
        if op == "reserve":
            last = record.get("qn", 0.0)
            wait, granted, interval = reserve(record, settings, now, kw["count"],
                                              kw["max_wait"], local.since,
                                              kw.get("ticket", 0.0))
            assert (reply[1], reply[2]) == (pytest.approx(wait), granted), op
            issued = record["qn"] if record.get("qn", 0.0) > last else 0.0
            assert reply[8] == issued, op  # the ticket issued by this call
            if granted:
                assert reply[3] == pytest.approx(interval), op
        elif op == "release":
            throttled(record, settings, now, kw["started"], kw.get("retry_after"), local.since)
        else:
            learned(record, now, local.since)
        expected = rate_shown(record, settings, now)
        assert reply[5] == pytest.approx(expected), (op, now, record)

    def successes(count: int) -> None:
        for _ in range(count):
            local.count_success(now)
        store._pace(SERVICE).successes += count

    for _ in range(20):  # unpaced (or a burst at the ceiling; a slow start over two
        successes(1)  # of its windows), all accepted (told Redis with the next trip)
        both("reserve", count=1, max_wait=30.0)
        now += 0.08
    both("release", throttling=True, started=now - 0.1)  # the first throttling answer
    for _ in range(3):
        both("reserve", count=1, max_wait=30.0)  # held (learning pause / new curve)
    now += LEARN + 0.05
    both("rate")
    for step in range(40):  # a queue of turns along the curve, a batch of 3 now and then
        both("reserve", count=3 if step % 10 == 0 else 1, max_wait=30.0)
        successes(1)
        now += 0.01
    ticket = local.record.get("qn", 0.0)
    assert ticket > 0  # the queue above went beyond NEAR: its last turns hold tickets
    both("reserve", count=1, max_wait=30.0, ticket=ticket)  # asked again too soon
    now += 1.0
    both("reserve", count=1, max_wait=30.0, ticket=ticket)  # its place came near
    both("reserve", count=1, max_wait=0.0)  # cannot go at once: refused
    both("release", throttling=True, started=now - 0.5)  # within the hold-off
    both("release", throttling=True, started=now)  # while the queue holds: a decrease
    now += 5.0
    both("release", throttling=True, started=now - 0.3, retry_after=2.0)
    for _ in range(5):
        both("reserve", count=1, max_wait=30.0)
        now += 1.3
    both("rate")
    store.close()


@pytest.mark.redis
@pytest.mark.slow
def test_three_processes_share_one_rate(redis_url: str) -> None:
    """3 real processes (4 threads each) with Throttle(rate=10) on one Redis together stay
    at 10 requests/s: at most 10 + burst (+1 for jitter) in any 1 s window, and near 10/s
    over the run."""
    from tests.redis_server import in_processes, paced_calls

    with RateLimitedVendor(latency=0.02) as vendor:
        results = in_processes(paced_calls, [(redis_url, vendor.url(), 3.0, 4, 10.0)] * 3)
        executed = sorted(vendor.executed)
    assert all(result["shared"] for result in results), results
    assert vendor.max_in_window() <= 10 + 1 + 1
    rate = (len(executed) - 1) / (executed[-1] - executed[0])
    assert 7.0 < rate <= 11.0


@pytest.mark.redis
@pytest.mark.slow
def test_a_killed_processs_slots_come_back_within_the_lease(redis_url: str) -> None:
    """A process SIGKILLed while it holds both in-flight slots: another process gets a
    slot again once the lease (the attempt's time, 1 s, plus the 1 s margin) has ended,
    and not before."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_SLOTS, redis_url], stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"holding"
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
    finally:
        holder.kill()
        holder.wait()
    from tests.redis_server import shared_store

    throttle = Throttle(max_in_flight=2)
    throttle.use_store(shared_store(redis_url, prefix="lease-test"))
    turn = throttle.turn("svc", 10.0)
    first = turn.step(throttle.clock())
    assert first is not None  # both slots still leased to the dead process
    while True:
        wait = turn.step(throttle.clock())
        if wait is None:
            break
        time.sleep(wait)
    regained = time.monotonic() - killed
    assert regained <= 2.0 + 1.5  # the lease: 1 s + 1 s margin, generous for a loaded box
    turn.done(throttle.clock(), success=True)


_HOLD_SLOTS = """
import sys, time
from requests_smartretry import Throttle
from tests.redis_server import shared_store
throttle = Throttle(max_in_flight=2)
throttle.use_store(shared_store(sys.argv[1], prefix="lease-test"))
for _ in range(2):
    assert throttle.turn("svc", 1.0).step(throttle.clock()) is None
print("holding", flush=True)
time.sleep(60)
"""


@pytest.mark.redis
def test_redis_down_paces_locally_at_the_fleet_share(caplog: Any) -> None:
    """A Redis that is out never fails a call: the throttle paces locally (at its share:
    rate / processes last seen), with one WARNING."""
    from tests.redis_server import RedisServer, shared_store

    with RedisServer() as redis, RateLimitedVendor() as vendor:
        store = shared_store(redis.url, time_budget=0.5)
        throttle = Throttle(rate=20.0, burst=1)
        session = smart_session(throttle=throttle, state=store, max_retries=0, log=False)
        assert session.get(vendor.url()).status_code == 200
        store._paces[f"http://127.0.0.1:{vendor.port}"].processes = 4  # as if 4 shared it
        redis.kill()
        caplog.set_level(logging.WARNING, logger="requests_smartretry")
        started = time.monotonic()
        results = hammer(session, vendor.url(), threads=2, calls=3)
        elapsed = time.monotonic() - started
    assert results == [200] * 6
    assert elapsed >= 0.2 * 4  # 5/s: 20 / 4 processes (the first went at once)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "throttle" in warnings[0].getMessage()


def test_a_streamed_body_keeps_its_slot_until_read_or_closed() -> None:
    """With ``stream=True`` the in-flight slot is held while the body is still coming (the
    vendor counts the request until it has sent it), and goes back when the body is read,
    the response closed, or a response nobody closed is collected."""
    import gc
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    lock = threading.Lock()
    counts = {"now": 0, "peak": 0}

    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            with lock:
                counts["now"] += 1
                counts["peak"] = max(counts["peak"], counts["now"])
            try:
                self.send_response(200)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"ab")
                self.wfile.flush()
                time.sleep(0.3)  # the rest of the body comes later
                self.wfile.write(b"cd")
            except OSError:
                pass
            finally:
                with lock:
                    counts["now"] -= 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    throttle = Throttle(max_in_flight=2)
    session = smart_session(throttle=throttle, max_retries=0, timeout=30.0)
    service = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        bodies: list[bytes] = []

        def read() -> None:
            bodies.append(session.get(url, stream=True).content)

        threads = [threading.Thread(target=read) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert bodies == [b"abcd"] * 6
        assert counts["peak"] <= 2
        assert throttle.in_flight(service) == 0
        response = session.get(url, stream=True)
        assert throttle.in_flight(service) == 1  # headers in, body still coming
        response.close()
        assert throttle.in_flight(service) == 0
        session.get(url, stream=True)  # dropped unread: collected
        gc.collect()
        assert throttle.in_flight(service) == 0
    finally:
        server.shutdown()
        server.server_close()


class _RedisOut:
    """A shared store whose Redis cannot serve: the throttle paces its share locally."""

    def __init__(self, share: int, seen: Optional[float] = None) -> None:
        self.share = share
        self.seen = seen

    def throttle_turn(self, *args: Any) -> bool:
        return False

    def throttle_share(self, service: str) -> int:
        return self.share

    def throttle_seen(self, service: str) -> Optional[float]:
        return self.seen

    def throttle_rate(self, *args: Any) -> None:
        return None

    def throttle_held(self, service: str) -> int:
        return 0

    def throttle_done(self, *args: Any, **kwargs: Any) -> bool:
        return False


def test_a_fallback_to_local_pacing_does_not_send_the_burst_again() -> None:
    """Redis out, 2 processes seen: this process paces at rate/2 from one token, not from a
    full bucket (the fleet's burst went through Redis already; a sick Redis found 64 requests
    in one second against rate 20, burst 20 across 4 processes)."""
    throttle = Throttle(rate=10.0, burst=10, clock=FakeClock())
    throttle.use_store(_RedisOut(share=2))
    waits = [throttle.turn(SERVICE, None).step(throttle.clock()) for _ in range(4)]
    assert waits == [None, pytest.approx(0.2), pytest.approx(0.4), pytest.approx(0.6)]
    # A later episode (after a gap with no local turn) starts spent again.
    throttle.clock.advance(60.0)  # type: ignore[attr-defined]
    waits = [throttle.turn(SERVICE, None).step(throttle.clock()) for _ in range(2)]
    assert waits == [None, pytest.approx(0.2)]


def test_a_fallback_to_local_pacing_goes_on_from_the_fleets_learned_rate() -> None:
    """Redis out, 4 processes seen, the fleet's learned rate 20/s at the last round trip:
    an adaptive throttle paces locally at 5/s from there (and probes upwards slowly, as
    on the curve's plateau), not with a slow start of its own at 10/s doubling (4
    processes sent twice a 20/s vendor's rate before their first throttling answer).
    Before any round trip went through, there is nothing to go on from."""
    throttle = Throttle(adaptive=True, clock=FakeClock())
    throttle.use_store(_RedisOut(share=4, seen=20.0))
    waits = [throttle.turn(SERVICE, None).step(throttle.clock()) for _ in range(2)]
    assert waits == [None, pytest.approx(0.2)]  # (10/s: 0.1)
    throttle.clock.advance(6.0)  # type: ignore[attr-defined]
    # the curve K past its plateau's middle: W·(1 + (1 - β)), probing from the share
    assert throttle.rate(SERVICE) == pytest.approx(5.0 * (2.0 - BETA))
    fresh = Throttle(adaptive=True, clock=FakeClock())
    fresh.use_store(_RedisOut(share=4, seen=None))
    waits = [fresh.turn(SERVICE, None).step(fresh.clock()) for _ in range(2)]
    assert waits == [None, pytest.approx(1.0 / START_RATE)]  # its own slow start


def test_a_local_fallback_keeps_what_it_learned_through_a_lull_in_its_traffic() -> None:
    """Redis out, the fleet's rate 8/s at the last round trip, one process: the vendor
    lowered its limit meanwhile and answers 429; the local curve lowers, and keeps that
    after a lull of 1.5 s without a turn in the same outage (the fleet's rate is no newer
    than then).  It was set back to the fleet's stale 8/s at every turn after a second
    without one: a process sending bursts never learned the vendor's new limit."""
    throttle = Throttle(adaptive=True, clock=FakeClock())
    throttle.use_store(_RedisOut(share=1, seen=8.0))
    turn = throttle.turn(SERVICE, None)
    assert turn.step(throttle.clock()) is None
    throttle.clock.advance(0.05)  # type: ignore[attr-defined]
    turn.done(throttle.clock(), throttling=True)
    lowered = throttle.rate(SERVICE)
    assert lowered == pytest.approx(8.0 * BETA)
    throttle.clock.advance(1.5)  # type: ignore[attr-defined]
    assert throttle.turn(SERVICE, None).step(throttle.clock()) is None
    # on its curve back from 7.2/s (7.7/s 1.5 s on), not set back to 8/s
    assert throttle.rate(SERVICE) < 8.0 * (1.0 - (1.0 - BETA) * 0.2)
    # A round trip went through since (the fleet's rate is 6/s now), then Redis went out
    # again: the next episode goes on from the new rate.
    throttle.store.seen = 6.0  # type: ignore[attr-defined]
    throttle.clock.advance(1.5)  # type: ignore[attr-defined]
    assert throttle.turn(SERVICE, None).step(throttle.clock()) is None
    assert throttle.rate(SERVICE) == pytest.approx(6.0, rel=1e-3)


def test_a_local_fallback_does_not_go_on_from_a_rate_the_vendor_never_accepted() -> None:
    """Redis out while the fleet's shared rate was 640/s (a slow start 6 s in, or the curve
    grown through a quiet spell: no vendor accepted it), 4 processes seen, this one got
    nothing accepted lately: it paces locally from no more than a slow start's first rate
    (10/s), not 160/s on the curve's plateau (a 20/s vendor then saw the whole demand, and
    each 429 lowered it by a tenth a second).  A share within twice what this process got
    accepted in the last second is taken as it is."""
    throttle = Throttle(adaptive=True, clock=FakeClock())
    throttle.use_store(_RedisOut(share=4, seen=640.0))
    waits = [throttle.turn(SERVICE, None).step(throttle.clock()) for _ in range(2)]
    assert waits == [None, pytest.approx(1.0 / START_RATE)]  # (160/s: 0.00625)
    busy = Throttle(adaptive=True, clock=FakeClock())
    busy.use_store(_RedisOut(share=4, seen=160.0))
    for _ in range(30):  # 30 successes in the last second before the outage
        busy.turn(SERVICE, None).done(busy.clock(), success=True)
        busy.clock.advance(1.0 / 30)  # type: ignore[attr-defined]
    waits = [busy.turn(SERVICE, None).step(busy.clock()) for _ in range(2)]
    assert waits == [None, pytest.approx(1.0 / 40.0)]  # its share, 160/4
    # A configured rate: its share as before, not held to 10/s (a process just started,
    # nothing accepted yet, had its 64 threads refused at their limit).
    configured = Throttle(rate=1000.0, burst=1, adaptive=True, clock=FakeClock())
    configured.use_store(_RedisOut(share=1, seen=1000.0))
    waits = [configured.turn(SERVICE, None).step(configured.clock()) for _ in range(2)]
    assert waits == [None, pytest.approx(1.0 / 1000.0)]


@pytest.mark.redis
@pytest.mark.stress
def test_a_paused_redis_does_not_send_the_fleets_burst_again() -> None:
    """2 real processes share Throttle(rate=10, burst=10) through a real Redis that is
    paused (``CLIENT PAUSE``) mid-run: the vendor still sees at most burst + rate in any
    1 s window (+ the one token each process starts its local pacing with, + 1 for
    jitter).  A local bucket that started full sent the fleet's burst again, once per
    process (29 in a second), and the shared bucket, refilled while the fleet paced
    locally, sent it again when Redis came back (24)."""
    from tests.redis_server import RedisServer, in_processes, paced_calls, paused_at

    with RedisServer() as server, RateLimitedVendor(latency=0.01) as vendor:
        start_at = time.time() + 3.0  # both processes running before the first call
        with paused_at(server, start_at + 1.2, 1500):
            results = in_processes(paced_calls, [
                (server.url, vendor.url(), 3.5, 6, 10.0, None, 10, 0.3, start_at)] * 2,
                timeout=60)
        most = vendor.max_in_window()
        executed = len(vendor.executed)
    assert all(set(result["answers"]) == {"200"} for result in results), results
    assert executed >= 30  # paced all along, at its share while Redis was paused
    assert most <= 10 + 10 + 2 + 1, most


# -- review 26: the learning pause and the tickets ---------------------------------------

def _held_by_a_learning_pause(clock: FakeClock) -> Throttle:
    """An adaptive throttle without a rate whose slow start issued tickets (all served
    since), past its slow start, then throttled: every turn is held for LEARN."""
    throttle = Throttle(adaptive=True, clock=clock)
    queued = [throttle.turn(SERVICE, 30.0) for _ in range(12)]  # 10/s: tickets
    for turn in queued:
        turn.step(clock())
    assert max(turn.ticket for turn in queued) > 0
    clock.advance(DOUBLING * DOUBLINGS + 5.0)  # the slow start is over; places passed
    sent = [go(throttle)[0] for _ in range(21)]  # unpaced
    sent[0].done(clock(), throttling=True)  # the first throttling answer: a learning pause
    for turn in sent[1:]:
        turn.done(clock(), success=True)  # the vendor accepts 20/s
    return throttle


def test_a_turn_held_by_a_learning_pause_does_not_ask_again_past_its_limit() -> None:
    """A turn asked 0.05 s before a learning pause ends, with 0.1 s to wait at most: it
    must not be told to ask again 0.125 s later (past its limit), where the pause is over
    and a turn that needs no wait goes: sent after its deadline."""
    clock = FakeClock()
    throttle = _held_by_a_learning_pause(clock)
    clock.advance(LEARN - 0.05)
    turn = throttle.turn(SERVICE, 0.1)
    pause = turn.step(clock())
    assert pause is not None and pause <= 0.1 + 1e-9  # within its limit
    clock.advance(pause)
    assert turn.step(clock()) is None  # the pause is over: it goes, in time


def test_a_turn_held_by_a_learning_pause_holds_no_ticket_of_anothers() -> None:
    """A learning pause issues no tickets: a turn it holds must not take the last ticket
    issued (one served already, or another turn's) as its own.  Taken so, the turns
    held by the pause all sat at the head of the queue; a turn asked after the pause
    went before most of those held through it."""
    clock = FakeClock()
    throttle = _held_by_a_learning_pause(clock)
    held = [throttle.turn(SERVICE, 30.0) for _ in range(30)]
    wakes = [turn.step(clock()) for turn in held]
    assert [turn.ticket for turn in held] == [0.0] * 30
    turns = [*held, throttle.turn(SERVICE, 30.0)]
    pending = [(clock() + (wait or 0.0), index) for index, wait in enumerate(wakes)]
    pending.append((clock() + LEARN + 0.01, len(held)))  # asked just after the pause
    went = [index for _, index in _ask_until_booked(clock, turns, pending)]
    assert went[-1] == len(held)  # the late turn goes last


@pytest.mark.redis
def test_tickets_left_by_a_slow_start_do_not_hold_the_queue_after_it(redis_url: str) -> None:
    """Tickets of a slow start whose holders never asked again (cancelled, dead): once the
    slow start is over nothing is paced and every place has passed.  They must not count
    as waiting when a learning pause brings pacing back: the second turn after the pause,
    one interval away, books (it took a ticket behind the dead ones, its place 0.5 s
    away).  The Lua twin decides alike."""
    from requests_smartretry.redis_state import RedisStateStore
    from requests_smartretry.throttle import reserve, throttled

    settings = Throttle(adaptive=True).settings
    store = RedisStateStore(redis_url, prefix=f"dead-{time.time_ns()}", server_time=False)
    record: dict[str, float] = {}
    now = 100.0

    def both(count: int) -> tuple[float, int]:
        reply = store._throttle_trip(SERVICE, settings, "reserve", now, count=1,
                                     max_wait=30.0)
        assert reply is not None
        wait, granted, _ = reserve(record, settings, now, 1, 30.0, lambda _: count)
        assert (reply[1], reply[2]) == (pytest.approx(wait), granted)
        return wait, granted

    for _ in range(12):  # 10/s: tickets, whose holders never ask again
        both(0)
    assert record["qn"] > 5
    now += DOUBLING * DOUBLINGS + 5.0  # the slow start is over: unpaced
    assert both(0) == (0.0, 1)
    store._throttle_trip(SERVICE, settings, "release", now, throttling=True, started=now)
    throttled(record, settings, now, now, None, lambda _: 0)  # a learning pause
    now += LEARN
    store._pace(SERVICE).successes += 20  # the vendor accepted 20/s meanwhile
    assert both(20) == (0.0, 1)
    wait, granted = both(20)
    assert granted == 1 and wait == pytest.approx(1.0 / (BETA * 20.0))
    store.close()


@pytest.mark.redis
def test_a_turn_booked_without_a_ticket_serves_a_waiting_place(redis_url: str) -> None:
    """Rate 10/s, burst 10: 30 turns asked at once, most take tickets, and their holders
    die.  One caller then takes turns one after the other (1.5 s to wait at most; asked
    again 10 ms after a refusal): a turn that finds a token free books without a ticket
    and serves a waiting place as a ticket's booking does, so the dead places pass and
    no turn is refused after 3 s (60 refused in the first 0.6 s).  Before: the caller
    kept the bucket busy, the idle rule never ran, and every turn that had to wait was
    placed behind the 18 dead tickets (2.1 s away) and refused, for as long as the run
    lasted (600 in 6 s).  The Lua twin decides alike."""
    from requests_smartretry.redis_state import RedisStateStore
    from requests_smartretry.throttle import ask_again_in, reserve

    settings = Throttle(rate=10.0, adaptive=True).settings
    assert settings.burst == 10
    store = RedisStateStore(redis_url, prefix=f"jump-{time.time_ns()}", server_time=False)
    record: dict[str, float] = {}
    now = 100.0

    def both(max_wait: float, ticket: float = 0.0) -> tuple[float, int, float]:
        reply = store._throttle_trip(SERVICE, settings, "reserve", now, count=1,
                                     max_wait=max_wait, ticket=ticket)
        assert reply is not None
        last = record.get("qn", 0.0)
        wait, granted, _ = reserve(record, settings, now, 1, max_wait, None, ticket)
        issued = record["qn"] if record.get("qn", 0.0) > last else 0.0
        assert (reply[1], reply[2], reply[8]) == (pytest.approx(wait), granted, issued), now
        return wait, granted, issued

    for _ in range(30):
        both(30.0)
    assert record["qn"] >= 15
    refused = []
    start, ticket = now, 0.0
    while now < start + 6.0:  # one caller: a turn after the other, each driven to its end
        wait, granted, issued = both(1.5, ticket)
        if granted:
            ticket = 0.0
            now += max(wait, 0.0)
        elif wait > 1.5:
            refused.append(round(now - start, 2))
            ticket = 0.0
            now += 0.01
        else:
            ticket = issued or ticket
            now += ask_again_in(wait)
    late = [moment for moment in refused if moment > 3.0]
    assert not late, f"{len(refused)} refused, {len(late)} after 3 s"
    store.close()


def test_a_slow_start_refuses_no_turn_its_doubling_rate_serves_in_time() -> None:
    """100 turns asked at once on an adaptive throttle without a rate, each with 5 s to
    wait at most, and no throttling answer: the slow start (10/s doubling every second)
    serves them all within 3 s.  A place counted at the rate in force when asked (10/s:
    ticket 60 placed 6 s away) refused 39 of them at once: failed calls, nothing sent,
    while the 58 that went were all out by 2.5 s."""
    clock = FakeClock()
    throttle = Throttle(adaptive=True, clock=clock)
    turns = [throttle.turn(SERVICE, 5.0) for _ in range(100)]
    start = clock()
    pending = [(start, index) for index in range(len(turns))]
    went, refused = [], []
    while pending:
        pending.sort()
        at, index = pending.pop(0)
        clock.now = at
        try:
            wait = turns[index].step(clock())
        except ThrottledError:
            refused.append(index)
            continue
        if turns[index].token:
            went.append((at + (wait or 0.0) - start, index))
        else:
            pending.append((at + (wait or 0.0), index))
    assert refused == []
    assert [index for _, index in sorted(went)] == list(range(100))  # in order
    assert max(moment for moment, _ in went) < 3.5


def test_a_ticket_booked_behind_others_keeps_the_schedule_spaced() -> None:
    """Tickets 1..3 wait at 20/s; ticket 3 asks first, its place two intervals past the
    first free moment, and books it.  The schedule must go on after that moment: it went
    on one interval after the free moment, so tickets 1 and 2, asking next, booked the
    moments before and *at* ticket 3's: two turns at once on a burst of 1 (seen against a
    real vendor at 4/s: two requests 0.05 s apart after cancelled tickets)."""
    from requests_smartretry.throttle import reserve

    settings = Throttle(rate=20.0, burst=1, adaptive=True).settings
    record: dict[str, float] = {}
    now = 100.0
    moments = []
    for _ in range(9):  # 6 booked (0 .. 0.25 s), tickets 1..3
        wait, granted, _ = reserve(record, settings, now, 1, 30.0)
        if granted:
            moments.append(now + wait)
    assert record["qn"] == 3.0
    now += 0.3
    for ticket in (3.0, 1.0, 2.0):
        wait, granted, _ = reserve(record, settings, now, 1, 30.0, ticket=ticket)
        assert granted == 1
        moments.append(now + wait)
    moments.sort()
    gaps = [b - a for a, b in zip(moments, moments[1:])]
    assert min(gaps) >= 0.05 - 1e-9, gaps


@pytest.mark.redis
def test_a_throttling_answer_after_a_learning_pause_ends_it_in_python_as_in_lua(
        redis_url: str) -> None:
    """A learning pause that is over, ended by no turn yet, then a throttling answer:
    THROTTLE_LUA ends the pause at the top of every call (the curve starts there), the
    Python functions ended it only at the next reservation (the curve started later, and
    the rates differed from then on)."""
    from requests_smartretry.redis_state import RedisStateStore
    from requests_smartretry.throttle import _Local, learned, rate_shown, throttled

    settings = Throttle(adaptive=True).settings
    store = RedisStateStore(redis_url, prefix=f"learnend-{time.time_ns()}", server_time=False)
    local = _Local()
    now = 1000.0
    store._throttle_trip(SERVICE, settings, "release", now, throttling=True, started=now)
    throttled(local.record, settings, now, now, None, local.since)  # a learning pause
    for _ in range(10):
        local.count_success(now)
    store._pace(SERVICE).successes += 10
    now += LEARN + 0.3  # over, and no turn asked since
    store._throttle_trip(SERVICE, settings, "release", now, throttling=True,
                         started=now - 0.5)
    throttled(local.record, settings, now, now - 0.5, None, local.since)
    now += 0.5
    reply = store._throttle_trip(SERVICE, settings, "rate", now)
    assert reply is not None
    learned(local.record, now, local.since)
    assert reply[5] == pytest.approx(rate_shown(local.record, settings, now), rel=1e-9)
    store.close()
