"""Pacing before the vendor throttles: a rate and a concurrency limit per service.

A :class:`Throttle` gives every attempt (retries included) its *turn* before it sends: a
slot among ``max_in_flight`` concurrent attempts, then a token of a bucket refilled at
``rate`` per second holding ``burst`` at most.  It only *decides*: :meth:`Turn.step` says
"go", "wait this long, then ask again" or refuses (:class:`ThrottledError`); the driver
(the retry loop's ``sleep``; an asyncio driver's ``asyncio.sleep``) performs the wait.

The bucket is kept as a schedule (the generic cell rate algorithm): ``tat`` is the
moment the bucket will be full again (its *theoretical arrival time*); a turn asked at
``now`` goes at ``max(tat, now) - tolerance``, where the tolerance is ``burst - 1`` token
intervals, and moves ``tat`` one interval on.  A turn that must wait *reserves* its place
at once, so waiting turns go out in order, one interval apart, without asking twice and
without a herd waking together; a turn that could not go before its limit reserves
nothing.  In any window of ``w`` seconds at most ``burst + rate·w`` turns go.  (An
adaptive throttle reserves only the near moments; the turns behind hold tickets, below.)

Adaptive rate (``adaptive=True``): a *throttling answer* — a rate-limit verdict (429, the
presets' codes 50429 / 50430, ``RateLimitExceeded.*``, ``FREQUENCY_LIMITED``) or a retryable
failure carrying ``Retry-After`` — lowers the rate at once, and the rate then recovers along
a cubic curve, the shape of TCP CUBIC that botocore's adaptive retry mode also uses::

    rate(t) = W · (1 + (1 - β) · ((t - K) / K)³)       t: seconds since the decrease

``W`` is the rate the refused attempt went at (the curve at the moment it started, not
the rate in force when its answer came back; after a learning pause: the rate the vendor
was seen to accept, see below); the rate drops at once to ``β·W`` (``t = 0``), climbs
quickly at first, flattens out as it nears ``W`` at ``t = K`` and stays near it for a
while (the plateau), then probes above it slowly, faster the longer no throttling answer
comes.

``t`` is counted on the *schedule*, not on the clock: a turn reserved ahead is spaced by
the curve at the moment it goes, and a decrease starts (``t = 0``, and the hold-off
below counts from there) where the schedule is free, after the turns reserved already.
An adaptive throttle books at most :data:`NEAR` ahead (below), so those are few.  When
64 callers on 20 requests/s booked 3 s ahead, those 3 s of turns went at the old rate
whatever happened; and read on the clock, the curve climbed 3 s ahead of
what the vendor saw (``W`` was taken at 31.8/s for a vendor at 20/s, five decreases in a
row followed), and a hold-off counted from the answer let the queued turns' 429s lower
the rate again and again (19 -> 17.2 -> 15.1/s with ``rate=19``).
Constants and why:

- ``β = 0.9`` (:data:`BETA`; botocore 0.7): ``W`` is a rate the shared schedule kept
  exactly (or one measured at the vendor), not a blind guess, so the decrease need not
  overshoot downwards; a cycle then loses ``(1 - β) / 4 = 2.5 %`` of ``W`` on average over
  its concave part (with 0.8, the troughs cost the fleet benchmark 3 % of its goodput).
- An adaptive throttle books a turn only within :data:`NEAR` (0.25 s): a turn that would
  go later books nothing, takes a *ticket* and asks again when its place comes near
  (:func:`ask_again_in`).  A ticket's place is the first free moment plus one interval
  per ticket before it not served yet (a booking serves as many as turns it books), at
  the rate in force when it asks (in a slow start, along its doubling rate): the tickets
  are served in order, and a decrease moves
  every waiting place.  A booked moment is
  kept whatever the rate does; booked seconds ahead, a decrease reached the vendor only
  after them.  NEAR is a quarter of a one-second quota window (five turns at 20/s).
  Without tickets (every waiting turn asking again every NEAR) the queue was served in
  no order: in a simulation of the fleet benchmark, p99 call time 22 s and 20 calls
  refused after 30 s of waiting, against 7.6 s and none with tickets.
- Without a ``rate``, the first turn starts a *slow start*: :data:`START_RATE` (10/s,
  as TCP's initial window of 10 segments)
  doubling every :data:`DOUBLING` (1 s, a quota's window: its throttling answers come
  back before the next doubling), not paced after :data:`DOUBLINGS` (10) doublings.  Its
  first throttling answer lowers from at most the turns the schedule booked in the
  window before the refused turn (the rate doubled within it; the successes counted there
  if more), not from the rate the refused turn went at.  The successes alone reach Redis
  late from a loaded fleet (W came out 1-10/s for a vendor at 20/s); a floor at half the
  refused rate kept a local throttle's share (a quarter of the fleet's) too high.
  Unpaced, 64 callers sent their first burst at once: 44 throttled
  answers or more against a 20/s vendor before anything was learned.
- ``K = 6 s`` (:data:`RECOVERY`): botocore's scale constant 0.4 makes ``K`` grow with the
  cube root of the rate (2.5 s at 20 requests/s); a fixed ``K`` makes the plateau as long at
  every rate, and a vendor's per-second quota counts whole seconds: after 6 s near ``W``,
  probing upwards by 2.5 % takes another 3 s, so a quota is tested about once every 10 s.
- The rate never goes below :data:`MIN_RATE` (0.5/s), and with a configured ``rate`` never
  above it (``rate`` is the ceiling).
- Only an answer to an attempt that started more than :data:`HOLDOFF` (1 s) after the
  last decrease lowers the rate again (TCP lowers once per round trip; a quota's round
  trip is its window): the answers to attempts sent before, or while the vendor's window
  still holds the old rate, say nothing about the new one, and counting them cut the rate
  to the floor in one burst.
- Past its slow start, a throttle without a ``rate`` paces nothing until the first
  throttling answer, which has nothing to lower: every turn is then held for
  :data:`LEARN` (0.9 s, just under a one-second quota window) and ``W`` is what the
  vendor accepted since just before that answer.  (Taken at once, it would be nothing:
  in a burst the 429s come back before the successes.)
- A ``Retry-After`` also holds every turn on the service until it has passed.
- While every turn is held (the learning pause, a ``Retry-After``) on a throttle without a
  rate yet, the rate reads 0, not ``inf`` (:func:`rate_shown`): the processes of a shared
  throttle let turns through without asking Redis while it last said ``inf``.

Shared by a fleet: with a Redis ``state=`` (see :mod:`requests_smartretry.redis_state`),
the schedule, the in-flight slots (leased with a TTL: a crashed process's slots come back
when the lease ends) and the learned rate live in Redis, so every process of the fleet
keeps to one rate.  A process leases tokens in batches when its own demand is high enough
(at most a tenth of a second of the service's rate), so the success path costs a round
trip per batch, not per request.  While Redis is slow or down, each process paces locally
at its share (rate ÷ processes last seen; an adaptive throttle: of the fleet's rate at its
last round trip, on the curve's plateau), with one WARNING.  Neither side of that switch
sends the fleet's burst again: the local pacing starts with one token, not a full bucket
(the burst went through Redis already), and the first reservation in Redis after it
finds the shared bucket spent (it refilled while the fleet paced locally).  Only an
outage or unusable keys switch to local pacing: a turn whose deadline leaves no time for
Redis asks again while it may wait.  The slots a process holds through Redis count
against its local share; those it took locally count in Redis once it answers again
(a shared slot is taken only when they leave room), and the slots it released meanwhile
are freed there by its next round trip.  Hence the fleet's in-flight bound while Redis
is out and until the local attempts end: ``max_in_flight + (P - 1)·⌈max_in_flight / P⌉``
for ``P`` processes.

Thread-safe: the local state of each service is guarded by one short lock, never held
around a wait or a network call.
"""

from __future__ import annotations

import math
import numbers
import os
import time
import weakref
from typing import Any, Callable, Optional

from . import forksafe
from .classify import Verdict
from .errors import ThrottledError
from .testing import track

__all__ = ["BETA", "DOUBLING", "DOUBLINGS", "HOLDOFF", "LEARN", "MIN_RATE", "NEAR", "RECOVERY",
           "START_RATE", "Throttle", "ThrottleSettings", "Turn", "is_throttling", "rate_shown"]

#: The multiplicative decrease: a throttling answer sets the rate to ``BETA · W``.
BETA = 0.9
#: Seconds the cubic curve takes to climb back to ``W`` (its plateau's middle).
RECOVERY = 6.0
#: The lowest rate an adaptive throttle falls to (requests per second).
MIN_RATE = 0.5
#: Seconds after a decrease during which throttling answers do not lower the rate again:
#: a vendor counts its quota over a window (a second, for a QPS limit), and the answers
#: that window still holds say nothing about the new rate.
HOLDOFF = 1.0
#: Seconds a throttle that paced nothing holds every turn after its first throttling
#: answer, to count what the vendor accepts (just under a one-second quota window).
LEARN = 0.9
#: Seconds ahead an adaptive throttle books a turn: a turn that would go later asks again
#: (the rate may change meanwhile; a moment booked is kept whatever the rate does).
NEAR = 0.25
#: Slow start of an adaptive throttle without a rate: the requests per second it starts
#: at, and the seconds in which that rate doubles, until the first throttling answer.
START_RATE = 10.0
DOUBLING = 1.0
#: Doublings after which the slow start is over (10 x 2^10 = 10,240/s): not paced from then.
DOUBLINGS = 10.0
_RATE_LIMIT = Verdict.RATE_LIMIT
#: Successes are counted per slice of this many seconds, over the last 2 s.
_SLICE = 0.1
_SLICES = 20
#: Slices per second, multiplied as the Lua script does (a division by 0.1 rounds
#: differently at times: the twin test saw one success counted in another slice).
_PER_SLICE = 10.0
#: Longest pause between two looks for a free in-flight slot.
_SLOT_POLL_MAX = 0.05
_SLOT_POLL_MIN = 0.002
_INF = math.inf
#: Forks seen by this process (a child counts one more than its parent): a turn taken
#: before a fork belongs to the parent, and ends nothing in the child.
_generation = 0
_throttles: weakref.WeakSet[Throttle] = weakref.WeakSet()


class ThrottleSettings:
    """The throttle's configuration, as the local and the shared state read it."""

    __slots__ = ("adaptive", "burst", "interval", "leaves", "max_in_flight", "max_wait", "rate",
                 "tolerance")

    def __init__(self, rate: Optional[float], burst: int, max_in_flight: Optional[int],
                 adaptive: bool, max_wait: Optional[float]) -> None:
        self.rate = rate
        self.burst = burst
        self.max_in_flight = max_in_flight
        self.adaptive = adaptive
        self.max_wait = max_wait
        #: Seconds between two turns at the configured rate (0: none), for a fixed rate.
        self.interval = 0.0 if rate is None else 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        #: Whether the end of a turn taken at once has anything to give back or count.
        self.leaves = max_in_flight is not None or adaptive

    def _key(self) -> tuple[Any, ...]:
        return (self.rate, self.burst, self.max_in_flight, self.adaptive, self.max_wait)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ThrottleSettings) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


# -- the algorithms (transcribed to Lua in redis_state/scripts.py; keep in step) ---------

Record = dict[str, float]


def rate_at(record: Record, s: ThrottleSettings, now: float) -> float:
    """The rate in force at ``now`` (``inf``: no pacing): the configured ``rate``, or below
    it the adaptive curve since the last decrease (``W`` = ``wmax``, at ``tfail``); without
    a rate and before any decrease, the slow start since the first turn (``start``)."""
    ceiling = _INF if s.rate is None else s.rate
    if not s.adaptive:
        return ceiling
    if "wmax" not in record:
        start = record.get("start")
        if start is not None and ceiling == _INF:  # the slow start, until throttled
            doublings = max(0.0, now - start) / DOUBLING
            if doublings < DOUBLINGS:
                return float(START_RATE * 2.0 ** doublings)
        return ceiling
    wmax = record["wmax"]
    since = max(0.0, now - record["tfail"])
    x = (since - RECOVERY) / RECOVERY
    return max(MIN_RATE, min(ceiling, wmax * (1.0 + (1.0 - BETA) * x * x * x)))


def rate_shown(record: Record, s: ThrottleSettings, now: float) -> float:
    """The rate a turn asked at ``now`` gets: the curve where the schedule is free (``inf``:
    not paced; ``0``: every turn is held, by a learning pause or a ``Retry-After``, on a
    throttle without a rate yet).  A shared throttle's processes trust an ``inf`` for a
    moment without asking Redis: a hold must not read as one."""
    at = max(now, record.get("tat", now))
    rate = rate_at(record, s, at)
    return 0.0 if rate == _INF and at > now else rate


def reserve(record: Record, s: ThrottleSettings, now: float, count: int,
            max_wait: float, accepted: Optional[Callable[[float], float]] = None,
            ticket: float = 0.0) -> tuple[float, int, float]:
    """Reserve ``count`` consecutive turns (mutates ``record``): (seconds until the first
    may go, turns reserved, seconds between two of them).  Reserves nothing (0 turns) when
    the first could not go within ``max_wait``, while a learning pause holds every turn,
    and, on an adaptive throttle, when it could not go within :data:`NEAR`: the turn then
    has a ticket (``ticket``, numbered from 1; a turn without one yet gets
    ``record["qn"]``) and asks again when its place comes near (see :func:`ask_again_in`;
    the wait returned is until its place).  The tickets are served in order: a ticket's
    place is the first free moment plus one interval per ticket before it not served yet
    (``hn``: the tickets served, counted by the turns booked since they wait), at the
    rate in force then, so a decrease moves the places of the tickets waiting.
    ``accepted(since)``: the successes since a moment, which end a learning pause (see
    :func:`learned`)."""
    stored = tat = record.get("tat", now)
    if tat < now:
        tat = now
    if s.adaptive:
        if accepted is not None:
            learned(record, now, accepted)
        if "learn" in record:  # held until the pause ends, then spaced at the learned rate
            return max(0.0, record["learn"] - now), 0, 0.0
        if "wmax" not in record and "start" not in record and s.rate is None:
            record["start"] = now  # the slow start begins with the first turn
        # The curve is read where the turn goes on the schedule, not where it is asked.
        rate = rate_at(record, s, tat)
        interval = 0.0 if rate == _INF else 1.0 / rate
        served = record.get("hn", 0.0)
        if stored < now and record.get("qn", 0.0) > served:
            # The schedule stood idle while tickets waited: the places that passed count
            # as served (their turns went another way, or not at all), or every place
            # behind them would slide later with the clock.  Unpaced (a slow start
            # over), every place has passed.
            record["hn"] = record["qn"] if not interval \
                else min(record["qn"], served + (now - stored) / interval)
            # Nor did the bucket refill: its turns asleep (asking again later, a loaded
            # machine's descheduled processes) would go as a burst on top of the rate.
            tat = now + (s.burst - 1) * interval
    else:
        interval = s.interval
    wait = tat - (s.burst - 1) * interval - now
    if ticket > record.get("qn", 0.0):
        ticket = 0.0  # not of this queue (its record was lost: Redis restarted empty)
    if s.adaptive and (wait > 0.0 or ticket):
        served = record.get("hn", 0.0)
        if not ticket and (wait > NEAR or record.get("qn", 0.0) > served):
            ticket = record.get("qn", 0.0) + 1.0  # tickets are waiting, or no near moment
            place = wait + _queued(record, s, tat, ticket - served - 1.0, interval)
            if place > max_wait:
                return place, 0, interval
            record["qn"] = ticket
        if ticket:
            ahead = _queued(record, s, tat, ticket - served - 1.0, interval)
            wait += ahead
            if wait > NEAR:
                return wait, 0, interval
            tat += ahead  # its moment: the schedule goes on after it
            # Served: the count booked now (a batch's turns serve the next tickets, in
            # whatever turns take them), at least up to this ticket, at most the last.
            record["hn"] = min(record.get("qn", 0.0), max(served + count, ticket))
    if wait > 0.0:
        if wait > max_wait:  # (a turn that needs no wait always goes)
            return wait, 0, interval
    else:
        wait = 0.0
    if s.adaptive and not ticket and record.get("qn", 0.0) > record.get("hn", 0.0):
        # Booked without a ticket while tickets wait (a token was free): it serves as
        # many places as it books, as a ticket's booking does.  Else the places of
        # tickets whose holders died stayed ahead for as long as such turns kept the
        # schedule busy (the idle rule never ran), and every turn that had to wait was
        # placed behind them and refused.
        record["hn"] = min(record["qn"], record.get("hn", 0.0) + count)
    record["tat"] = tat + count * interval
    if s.adaptive and s.rate is None and "wmax" not in record and "start" in record:
        _count_booked(record, now + wait, count)
    return wait, count, interval


def _count_booked(record: Record, moment: float, count: int) -> None:
    """Count ``count`` turns booked to go at ``moment`` during a slow start, per
    :data:`DOUBLING` window since its start: ``bn`` in window ``bi``, ``bp`` in the one
    before (mutates ``record``)."""
    index = float(math.floor(max(0.0, moment - record["start"]) / DOUBLING))
    last = record.get("bi", -1.0)
    if index > last:
        record["bp"] = record.get("bn", 0.0) if index == last + 1.0 else 0.0
        record["bi"], record["bn"] = index, 0.0
    record["bn"] = record.get("bn", 0.0) + count


def booked_before(record: Record, started: float) -> float:
    """The turns a slow start's schedule booked in the :data:`DOUBLING` window before
    ``started`` and in its own window (the window counts of :func:`_count_booked`, the
    older one in part): :func:`throttled` takes off those booked after ``started``."""
    if "bi" not in record or "start" not in record:
        return 0.0
    at = max(0.0, started - record["start"]) / DOUBLING
    index = float(math.floor(at))
    last, part = record["bi"], 1.0 - (at - index)
    if index == last:
        return record.get("bn", 0.0) + record.get("bp", 0.0) * part
    if index == last + 1.0:
        return record.get("bn", 0.0) * part
    if index == last - 1.0:
        return record.get("bp", 0.0)
    return 0.0


def _queued(record: Record, s: ThrottleSettings, at: float, turns: float,
            interval: float) -> float:
    """Seconds ``turns`` turns take from ``at`` on an adaptive schedule: one interval
    each, or along a slow start's doubling rate (counted at the rate at ``at``, the places
    of a slow start's queue were seconds too far: turns it served in time were refused)."""
    if turns <= 0.0 or not interval:
        return 0.0
    start = record.get("start")
    if start is None or "wmax" in record or s.rate is not None:
        return turns * interval
    # sum of START_RATE * 2^((t - start) / DOUBLING) over [at, at + span] = turns
    x = max(0.0, at - start) / DOUBLING
    grown = 2.0 ** x + turns * math.log(2.0) / (START_RATE * DOUBLING)
    span = DOUBLING * (math.log(grown) / math.log(2.0) - x)
    return min(span, max(0.0, start + DOUBLING * DOUBLINGS - at))  # unpaced from then


def learned(record: Record, now: float, accepted: Callable[[float], float]) -> None:
    """End a learning pause that is over (mutates ``record``): the first throttling answer
    of a throttle that paced nothing held every turn for a quota window (:data:`LEARN`);
    what the vendor accepted since just before it (``accepted(since)``: the successes
    since that moment) is where the curve starts."""
    learn = record.get("learn")
    if learn is not None and now >= learn:
        del record["learn"]
        record["wmax"] = max(MIN_RATE, accepted(learn - LEARN - _SLICE))
        record["tfail"] = max(now, record.get("tat", now))


def ask_again_in(wait: float) -> float:
    """Seconds until a turn that could not book a moment within :data:`NEAR` (its place
    ``wait`` seconds away) asks again: when its place comes near, or halfway there when
    that is sooner (the place is counted at the rate in force now: while the curve
    climbs, the queue moves faster than that), and not sooner than half of :data:`NEAR`.
    A wait within :data:`NEAR` (a learning pause's end) is waited out, no longer: a
    turn asked again later would ask past its limit."""
    if wait <= NEAR:
        return wait
    return max(NEAR / 2.0, min(wait - NEAR, wait / 2.0))


def throttled(record: Record, s: ThrottleSettings, now: float, started: float,
              retry_after: Optional[float],
              accepted: Optional[Callable[[float], float]] = None) -> float:
    """A throttling answer to an attempt that started at ``started`` (mutates ``record``;
    returns the rate now in force).  ``accepted(since)``: the successes since a moment
    (the first decrease of a slow start lowers from at most those of the last window)."""
    if s.adaptive and accepted is not None:
        learned(record, now, accepted)  # a pause that is over ends first (as in the Lua)
    booked_to = record.get("tat", now)  # the end of the turns booked (before Retry-After)
    if retry_after is not None and retry_after > 0:
        # Nothing goes before the vendor's Retry-After: the schedule resumes from there.
        record["tat"] = max(record.get("tat", now), now + retry_after)
    if not s.adaptive or "learn" in record \
            or started <= record.get("tfail", -_INF) + HOLDOFF:
        return rate_at(record, s, now)
    sent = rate_at(record, s, started)  # the rate the refused turn went at
    if sent == _INF:
        # Nothing to lower yet: hold every turn for a quota window; the successes in it
        # say what the vendor accepts (see reserve).
        record["learn"] = now + LEARN
        record["tat"] = max(record.get("tat", now), now + LEARN)
        return sent
    if "wmax" not in record and s.rate is None:
        # The end of a slow start: the rate the refused turn went at is up to twice what
        # the vendor's window holds (it doubled within the window).  The turns the
        # schedule booked in the window before it say what the vendor saw; the successes
        # counted (a lower bound) reach Redis late from a loaded fleet (counted alone, W
        # was 1-10 for a vendor at 20/s).
        seen = 0.0 if accepted is None else accepted(now - LEARN - _SLICE)
        # (the turns booked after the refused one, up to the schedule's end, went later)
        after = max(0.0, booked_to - started) * sent
        window = max(seen, booked_before(record, started) - after)
        if window >= 1.0:
            sent = max(MIN_RATE, min(sent, window))
    record["wmax"] = sent
    # The turns reserved already go at the old rate: the curve starts where the
    # schedule's free part does (and the hold-off counts from there).
    record["tfail"] = max(now, record.get("tat", now))
    return rate_at(record, s, now)


def is_throttling(verdict: Verdict, retry_after: Optional[float]) -> bool:
    """Whether a failed attempt's verdict is a throttling answer (see the module)."""
    return verdict is _RATE_LIMIT or (retry_after is not None and verdict.retryable)


# -- the local state of one service -------------------------------------------------------

class _Local:
    """One service's local pacing state (the schedule, the slots, the recent successes)."""

    __slots__ = ("in_flight", "lock", "record", "slices", "slot_waiters")

    def __init__(self) -> None:
        self.lock = forksafe.lock()
        self.record: Record = {}
        self.in_flight = 0
        self.slot_waiters = 0
        # Successes per slice of 0.1 s over the last 2 s: [slice number, count] x 20.
        self.slices: list[list[float]] = [[-1.0, 0.0] for _ in range(_SLICES)]

    def since(self, moment: float) -> float:
        """Successes since ``moment`` (at most 2 s ago; under the lock)."""
        first = math.floor(moment * _PER_SLICE)
        return sum(n for stamp, n in self.slices if stamp >= first)

    def count_success(self, now: float) -> None:
        current = math.floor(now * _PER_SLICE)
        cell = self.slices[int(current) % _SLICES]
        if cell[0] != current:
            cell[0], cell[1] = current, 0.0
        cell[1] += 1.0


class Throttle:
    """Pace every attempt on a service: ``rate`` per second (``burst`` at once) and at most
    ``max_in_flight`` at a time; ``adaptive=True`` learns the rate from throttling answers.

    Example::

        session = smart_session(throttle=Throttle(rate=10.0, burst=10, max_in_flight=4))
        session = smart_session(throttle=Throttle(adaptive=True),
                                state="redis://127.0.0.1:6379/0")   # one pace per fleet

    Per service (the breaker's key: ``scheme://host``, or the preset's vendor name).  Every
    attempt, retries included, takes a slot and a token before it sends.  The wait counts
    against the attempt's timeout and the call's deadline: an attempt that cannot get its
    turn before them (or within ``max_wait`` seconds) is not sent and raises
    :class:`~requests_smartretry.ThrottledError` (a retry that cannot get its turn ends
    the call with its last failure, as a retry that does not fit the deadline does).

    ``burst`` defaults to ``max(1, round(rate))`` (a second's worth).  ``adaptive=True``
    without ``rate`` paces nothing until the vendor throttles, then learns its rate;
    with ``rate``, that rate is the ceiling.  The curve, its constants and why are in
    :mod:`requests_smartretry.throttle`.  ``clock`` (monotonic seconds) is injectable.

    One throttle may serve several adapters (they then share the pace).  Thread-safe;
    picklable (a copy starts with a fresh local state).
    """

    def __init__(
        self,
        rate: Optional[float] = None,
        burst: Optional[int] = None,
        max_in_flight: Optional[int] = None,
        adaptive: bool = False,
        max_wait: Optional[float] = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate is not None:
            _check_number("rate", rate)
        if burst is not None:
            if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 2**53:
                raise ValueError(f"burst must be an integer from 1 to 2**53, got {burst!r:.40}")
            if rate is None and not adaptive:
                raise ValueError("burst needs a rate (or adaptive=True): without one "
                                 "there is no bucket to size")
        if max_in_flight is not None and (isinstance(max_in_flight, bool)
                                          or not isinstance(max_in_flight, int)
                                          or max_in_flight < 1):
            raise ValueError(f"max_in_flight must be an integer >= 1, got {max_in_flight!r}")
        if not isinstance(adaptive, bool):
            raise ValueError(f"adaptive must be True or False, got {adaptive!r}")
        if max_wait is not None:
            _check_number("max_wait", max_wait, minimum_allowed=True)
        if rate is None and max_in_flight is None and not adaptive:
            raise ValueError("a Throttle needs rate=, max_in_flight= or adaptive=True: "
                             "as given it would pace nothing")
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        if burst is None:
            burst = max(1, round(rate)) if rate is not None else 1
        self.settings = ThrottleSettings(None if rate is None else float(rate), burst,
                                         max_in_flight, adaptive,
                                         None if max_wait is None else float(max_wait))
        self.clock = clock
        self.store: Any = None  # a shared store (Redis) once an adapter's state= gives one
        self._init_local()

    def _init_local(self) -> None:
        self._services: dict[str, _Local] = {}
        self._services_lock = forksafe.lock()
        track(self)
        _throttles.add(self)

    def _forked(self) -> None:
        """In a forked child: the slots the parent's attempts hold are not this process's
        (it starts with none held), nor are the tickets its waiting turns hold (the child
        has none of their threads: it queues behind none of them); the schedule and the
        successes seen are kept."""
        services = {}
        for service, parents in self._services.items():
            local = services[service] = _Local()
            local.record = dict(parents.record)
            if "qn" in local.record:  # the parent's waiting turns are not this process's
                local.record["hn"] = local.record["qn"]
            local.slices = [list(cell) for cell in parents.slices]
        self._services = services

    def __repr__(self) -> str:
        s = self.settings
        parts = []
        if s.rate is not None:
            parts.append(f"rate={s.rate:g}, burst={s.burst}")
        if s.max_in_flight is not None:
            parts.append(f"max_in_flight={s.max_in_flight}")
        if s.adaptive:
            parts.append("adaptive=True")
        if s.max_wait is not None:
            parts.append(f"max_wait={s.max_wait:g}")
        shared = "" if self.store is None else f", store={self.store!r}"
        return f"Throttle({', '.join(parts)}{shared})"

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "clock": self.clock, "store": self.store}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.settings = state["settings"]
        self.clock = state["clock"]
        self.store = state["store"]
        self._init_local()

    def _reset_state(self) -> None:
        """Forget the local state (``testing.reset_state()``)."""
        with self._services_lock:
            self._services = {}

    def use_store(self, store: Any) -> None:
        """Share the pace through ``store`` when it can hold it (a Redis store); a store
        in this process changes nothing (the throttle's own state is local already)."""
        if callable(getattr(store, "throttle_turn", None)):
            self.store = store

    def _local(self, service: str) -> _Local:
        local = self._services.get(service)
        if local is None:
            with self._services_lock:
                local = self._services.setdefault(service, _Local())
        return local

    # -- the engine's side ------------------------------------------------------------

    def turn(self, service: str, limit: Optional[float]) -> Turn:
        """The turn of one attempt on ``service`` that may wait at most ``limit`` seconds
        (the attempt's timeout and the call's deadline; ``None``: no limit) besides
        ``max_wait``.  Drive it with :meth:`Turn.step`, end it with :meth:`Turn.done`."""
        span = limit
        max_wait = self.settings.max_wait
        if max_wait is not None and (limit is None or max_wait < limit):
            limit = max_wait
        return Turn(self, service, self.clock(), limit, span)

    def enter(self, service: str, now: float) -> Optional[_Local]:
        """The common case, without a :class:`Turn`: a local throttle whose slot and token
        are free now takes them and returns the service's state (hand it back with
        :meth:`leave`); ``None`` (nothing taken) when the turn may have to wait, or is
        shared, or is the service's first: then use :meth:`turn`."""
        local = self._services.get(service)
        if local is None or self.store is not None:
            return None
        settings = self.settings
        limit = settings.max_in_flight
        with local.lock:
            if limit is not None and local.in_flight >= limit:
                return None
            record = local.record
            if not settings.adaptive:
                interval = settings.interval
                if interval:  # reserve()'s rule for one turn that may not wait, inlined
                    tat = record.get("tat", now)
                    if tat < now:
                        tat = now
                    if tat - settings.tolerance > now:
                        return None
                    record["tat"] = tat + interval
            elif "learn" in record or reserve(record, settings, now, 1, 0.0)[1] == 0:
                return None
            if limit is not None:
                local.in_flight += 1
        return local

    def leave_success(self, local: _Local) -> None:
        """End a successful turn taken by :meth:`enter` (the common case of :meth:`leave`):
        its slot goes back; an adaptive throttle counts the success."""
        settings = self.settings
        with local.lock:
            if settings.max_in_flight is not None:
                local.in_flight -= 1
            if settings.adaptive:
                local.count_success(self.clock())

    def leave(self, local: _Local, now: float, started: float, *, success: bool = False,
              throttling: bool = False, retry_after: Optional[float] = None) -> None:
        """End a turn taken by :meth:`enter` (``started``: when it went): its slot goes
        back; a success counts towards the accepted rate, a throttling answer lowers the
        adaptive rate."""
        settings = self.settings
        if settings.max_in_flight is not None or (success and settings.adaptive) \
                or throttling:
            with local.lock:
                if settings.max_in_flight is not None:
                    local.in_flight -= 1
                if success and settings.adaptive:
                    local.count_success(now)
                if throttling:
                    throttled(local.record, settings, now, started, retry_after, local.since)

    def rate(self, service: str) -> float:
        """The rate in force on ``service`` now (``inf``: not paced), for inspection."""
        store = self.store
        if store is not None:
            shared = store.throttle_rate(service, self.settings, self.clock())
            if shared is not None:
                return float(shared)
        local = self._local(service)
        now = self.clock()
        with local.lock:
            learned(local.record, now, local.since)
            return rate_shown(local.record, self.settings, now)

    def in_flight(self, service: str) -> int:
        """Attempts on ``service`` holding a local slot in this process (with a shared
        store: one taken while Redis was out)."""
        return self._local(service).in_flight


class Turn:
    """One attempt's place in a :class:`Throttle` (built by :meth:`Throttle.turn`).

    :meth:`step` decides and never waits: ``None`` means go now; a number is the seconds
    to wait before stepping again; :class:`ThrottledError` means the turn cannot come
    within its limit (nothing was taken).  :meth:`done` gives the slot back and tells the
    adaptive rate how the attempt went.
    """

    __slots__ = (
        "asked",
        "counted",
        "fleet_ticket",
        "generation",
        "held",
        "lease",
        "limit",
        "local",
        "service",
        "slot",
        "span",
        "started",
        "throttle",
        "ticket",
        "token",
        "waited",
    )

    def __init__(self, throttle: Throttle, service: str, asked: float,
                 limit: Optional[float], span: Optional[float]) -> None:
        self.throttle = throttle
        self.service = service
        self.asked = asked
        #: Seconds the turn may wait (``None``: no limit).
        self.limit = limit
        #: Seconds the attempt may take from the moment it asked, wait included (``None``:
        #: no limit): a shared slot's lease lasts that long (and a margin).
        self.span = span
        self.local: Optional[_Local] = None
        self.slot = throttle.settings.max_in_flight is None  # nothing to take
        self.held = False  # a local in-flight slot is held
        self.lease: Optional[str] = None  # the shared slot's lease id
        self.token = False
        self.counted = False  # counted in the shared demand
        self.ticket = 0.0  # its place in an adaptive throttle's local queue (0: none)
        self.fleet_ticket = 0.0  # ... in the queue shared through Redis
        self.started = asked
        self.waited = 0.0
        self.generation = _generation  # (a turn of the parent's, in a forked child)

    def step(self, now: float) -> Optional[float]:
        """``None``: go now; else seconds to wait before stepping again.  Raises
        :class:`ThrottledError` when the turn cannot come within its limit."""
        throttle = self.throttle
        settings = throttle.settings
        left = _INF if self.limit is None else self.limit - (now - self.asked)
        store = throttle.store
        share = 1
        if store is not None:
            shared = store.throttle_turn(self, settings, now, left)
            if shared is not False:
                return shared  # type: ignore[no-any-return]  # None or seconds
            share = store.throttle_share(self.service)  # Redis is out: pace at our share
        local = self.local
        if local is None:
            local = self.local = throttle._local(self.service)
        if not self.slot:
            limit = settings.max_in_flight
            assert limit is not None
            limit = max(1, -(-limit // share))
            # The slots this process still holds through Redis (taken before it went
            # out) are part of its share.
            held = 0 if store is None else store.throttle_held(self.service)
            with local.lock:
                if local.in_flight + held < limit:
                    local.in_flight += 1
                    self.slot = self.held = True
            if not self.slot:
                return self.slot_wait(left)
        if not self.token:
            part = settings if store is None else _shared_part(settings, share)
            seen = None if store is None else store.throttle_seen(self.service)
            with local.lock:
                if store is not None:
                    # (what this process got accepted in the last second, twice over)
                    _fallback_starts_spent(local.record, part, now,
                                           None if seen is None else seen / share,
                                           2.0 * local.since(now - 1.0))
                issued = local.record.get("qn", 0.0)
                wait, granted, _ = reserve(local.record, part, now, 1, left, local.since,
                                           self.ticket)
                if not granted and local.record.get("qn", 0.0) > issued:
                    # (a ticket issued to this turn: a learning pause issues none)
                    self.ticket = local.record["qn"]
            if not granted:
                if wait <= left:
                    return self.ask_again(wait)
                self.done(now, refused=True)
                raise ThrottledError(self.service, wait, self.limit)
            return self.token_in(wait, now)
        self.started = now
        return None

    def token_in(self, wait: float, now: float) -> Optional[float]:
        """The turn's token comes in ``wait`` seconds: the step's answer (``None``: now)."""
        self.token = True
        if wait > 0.0:
            self.waited += wait
            return wait
        self.started = now
        return None

    def ask_again(self, wait: float) -> float:
        """No moment booked (its place in the queue is ``wait`` seconds away, within the
        turn's limit, but not near): seconds until the turn asks again."""
        pause = ask_again_in(wait)
        self.waited += pause
        return pause

    def slot_wait(self, left: float) -> float:
        """No slot free: seconds until the next look (growing with the wait, at most
        :data:`_SLOT_POLL_MAX`), or :class:`ThrottledError` when ``left`` is spent."""
        if left <= 0.0:
            raise ThrottledError(self.service, None, self.limit)
        pause = min(_SLOT_POLL_MAX, max(_SLOT_POLL_MIN, self.waited / 4.0), left)
        self.waited += pause
        return pause

    def done(self, now: float, *, success: bool = False, throttling: bool = False,
             retry_after: Optional[float] = None, refused: bool = False) -> None:
        """The attempt ended (or never went: ``refused``): give the slot back; a success
        counts towards the accepted rate, a throttling answer lowers the adaptive rate."""
        if self.generation != _generation:
            # Taken by the parent before this process was forked from it: the slot is the
            # parent's to give back (in Redis, its lease), not this process's.
            self.lease = None
            self.held = False
            return
        throttle = self.throttle
        settings = throttle.settings
        local = self.local
        if local is None and (settings.adaptive or throttling):
            local = self.local = throttle._local(self.service)
        counted = success and settings.adaptive
        if local is not None and (self.held or counted):
            with local.lock:
                if self.held:
                    local.in_flight -= 1
                    self.held = False
                if counted:
                    local.count_success(now)
        store = throttle.store
        if store is not None and store.throttle_done(self, settings, now, success=counted,
                                                     throttling=throttling,
                                                     retry_after=retry_after):
            return
        if throttling and local is not None:
            with local.lock:
                throttled(local.record, settings, now, self.started, retry_after,
                          local.since)


#: Seconds without a local turn after which a fallback to local pacing is a new episode.
_FALLBACK_EPISODE_GAP = 1.0


#: What a local adaptive record learned on its own (its slow start, its queue, a pause):
#: an episode of local pacing that starts from the fleet's rate forgets it.
_LEARNING = ("bi", "bn", "bp", "hn", "learn", "qn", "start")


def _fallback_starts_spent(record: Record, part: ThrottleSettings, now: float,
                           share: Optional[float] = None, accepted: float = _INF) -> None:
    """Redis is out and this process paces its share locally: an episode's first turn
    finds the local bucket spent but for one token (the fleet's burst was already spent
    through Redis; a full local bucket per process would send it again, once per process).
    An adaptive throttle goes on from ``share`` (the fleet's rate at the last round trip
    ÷ the processes seen), on the curve's plateau: learning afresh, each process ran a
    slow start of its own (10/s each, doubling: 4 processes went at twice a 20/s vendor's
    rate before their first throttling answer).  Only once per ``share``: a later episode
    from the same one (no round trip went through since, or it gave the same rate) goes on
    from what the local curve learned.  Only a ``share`` within ``accepted`` (twice what
    this process got accepted in the last second, at least a slow start's first rate): a
    fleet's rate that no vendor accepted (a slow start's, a curve grown through a quiet
    spell), put on the plateau, sent the whole demand, lowered by a tenth a second; the
    local pacing then is a slow start of its own begun afresh (the local record's, from an
    earlier outage, was over or grown: a later outage went unpaced), or the configured
    rate's share.  Mutates ``record``, under the local lock."""
    last = record.get("fallback", -_INF)
    record["fallback"] = now
    if now - last > _FALLBACK_EPISODE_GAP:
        # Once per rate seen: a lull in this process's local turns within the same outage
        # (no round trip since) keeps what the local curve learned from the vendor.
        if part.adaptive and share is not None and 0.0 < share < _INF \
                and record.get("seeded") != share:
            record["seeded"] = share
            if share <= max(START_RATE, accepted):
                for name in _LEARNING:
                    record.pop(name, None)
                record["wmax"] = max(MIN_RATE, share)
                record["tfail"] = now - RECOVERY  # rate_at(now) is the share itself
            elif part.rate is None:
                # A slow start of its own, afresh: what the record learned in an earlier
                # outage (a slow start long over: unpaced; a curve grown since) is stale.
                for name in (*_LEARNING, "wmax", "tfail"):
                    record.pop(name, None)
        record["tat"] = max(record.get("tat", now), now + part.tolerance)


def _shared_part(settings: ThrottleSettings, share: int) -> ThrottleSettings:
    """This process's part of a shared throttle while Redis is out: rate ÷ processes."""
    rate = None if settings.rate is None else settings.rate / share
    return ThrottleSettings(rate, max(1, settings.burst // share), settings.max_in_flight,
                            settings.adaptive, settings.max_wait)


def _after_fork_in_child() -> None:
    global _generation
    _generation += 1
    for throttle in list(_throttles):
        throttle._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_number(name: str, value: Any, *, minimum_allowed: bool = False) -> None:
    """A finite number > 0 (>= 0 with ``minimum_allowed``), or a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < 0 or (value == 0 and not minimum_allowed):
        relation = ">=" if minimum_allowed else ">"
        raise ValueError(f"{name} must be a finite number {relation} 0, got {value!r}")
