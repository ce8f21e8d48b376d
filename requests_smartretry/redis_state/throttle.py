"""The throttle's shared state: each process's side of a service's pace (leased turns, the
successes not reported yet, what Redis said last) and the store's throttle operations
(see :mod:`requests_smartretry.throttle`; the script is ``scripts.THROTTLE_LUA``)."""

from __future__ import annotations

import math
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

from .. import forksafe
from ..errors import ThrottledError
from .errors import NoTime
from .scripts import pace_numbers

if TYPE_CHECKING:
    from ..throttle import ThrottleSettings, Turn

__all__ = ["SharedPaces"]

_monotonic = time.monotonic
_Reply = TypeVar("_Reply")


class Pace:
    """This process's side of one service's shared throttle: the turns it leased and not
    used yet, and what Redis said at the last round trip."""

    __slots__ = ("demand", "interval", "leases", "lock", "paced_locally", "processes",
                 "rate", "successes", "synced", "throttled", "tokens", "unreleased")

    def __init__(self) -> None:
        self.lock = forksafe.lock()
        self.tokens: list[float] = []  # (monotonic) when each leased turn may go, in order
        self.interval = 0.0  # seconds between two turns at the shared rate
        self.rate = math.inf  # the shared rate at the last round trip
        self.processes = 1  # processes seen on the service at the last round trip
        self.synced = -math.inf  # (monotonic) the last round trip
        self.successes = 0  # successes not reported to Redis yet
        #: The slots this process holds through Redis: lease id -> (monotonic) its end.
        #: While Redis is out they count against the process's local share.
        self.leases: dict[str, float] = {}
        #: Slots released while Redis could not be told (lease id -> its end): freed
        #: there by the next round trip that goes through.
        self.unreleased: dict[str, float] = {}
        #: A throttling answer Redis could not be told of: (when its attempt started, on
        #: the shared clock; when its Retry-After ends, monotonic, or ``None``).  The next
        #: round trip that goes through carries it.
        self.throttled: Optional[tuple[float, Optional[float]]] = None
        #: Redis could not serve a call since the last reservation it made: the process
        #: paced locally meanwhile (see ``_throttle_trip``).
        self.paced_locally = False
        # Turns asked per slice of 0.1 s over the last second: [slice, count] x 10.
        self.demand: list[list[float]] = [[-1.0, 0.0] for _ in range(10)]

    def asked(self, mono: float) -> float:
        """Count one turn asked now (under the lock); returns the turns asked per 0.1 s
        over the last second."""
        current = math.floor(mono * 10.0)
        cell = self.demand[int(current) % 10]
        if cell[0] != current:
            cell[0], cell[1] = current, 0.0
        cell[1] += 1.0
        return sum(n for stamp, n in self.demand if current - 10 < stamp <= current) / 10.0


#: Seconds an unlimited shared rate (an adaptive throttle not yet throttled) is trusted
#: without asking Redis: how soon a process learns of another's throttling answer.
_PACE_FRESH = 0.1
#: Seconds of the service's rate that one batch of leased turns may cover.
_LEASE_WINDOW = 0.1
#: Seconds a slot's lease outlives the attempt's time (a crashed process's slot comes back
#: this long after its attempt would have ended).
_LEASE_MARGIN = 1.0
#: Seconds a shared throttle's learned rate and schedule outlive their last use.
_PACE_TTL_MS = 3_600_000



class SharedPaces:
    """The throttle's operations of :class:`~.store.RedisStateStore` (a mixin: the store
    provides the round trips, the keys and the clocks)."""

    if TYPE_CHECKING:
        _paces: dict[str, Pace]
        _lock: threading.Lock
        _offset: float
        _origin: str
        max_services: int
        server_time: bool

        def key(self, kind: str, service: str) -> str: ...

        def _guarded(self, service: str, call: Callable[[], _Reply]) -> Optional[_Reply]: ...

        def _execute(self, args: list[Any], keys: list[str], lua: str = "state",
                     time_budget: Optional[float] = None,
                     per_trip: bool = False, deadline: bool = True) -> list[Any]: ...

        def _unusable(self, service: str) -> bool: ...

    def _pace(self, service: str) -> Pace:
        pace = self._paces.get(service)
        if pace is None:
            with self._lock:
                if len(self._paces) >= self.max_services:
                    self._paces.clear()
                pace = self._paces.setdefault(service, Pace())
        return pace

    def _throttle_trip(self, service: str, settings: ThrottleSettings, op: str, now: float,
                       *, count: int = 0, max_wait: float = 0.0, lease: str = "",
                       lease_ttl: float = 0.0, throttling: bool = False,
                       started: float = 0.0, retry_after: Optional[float] = None,
                       deadline: bool = True, held_locally: int = 0,
                       ticket: float = 0.0) -> Optional[list[float]]:
        """One call of the throttle's script (carrying the successes not reported yet),
        or ``None`` when local state must serve (Redis is out, or the service's keys are
        unusable).  Raises :class:`NoTime` when the request's deadline left no time for
        Redis: that is no outage, and the turn must not pace locally (nor the next
        reservation find the bucket spent, as after a spell of local pacing).
        ``deadline=False``: the round trip is not cut by the deadline (a release)."""
        from ..throttle import (
            BETA,
            DOUBLING,
            DOUBLINGS,
            HOLDOFF,
            LEARN,
            MIN_RATE,
            NEAR,
            RECOVERY,
            START_RATE,
        )

        pace = self._pace(service)
        mono = _monotonic()
        with pace.lock:
            successes, pace.successes = pace.successes, 0
            unreleased = {lease_id: end for lease_id, end in pace.unreleased.items()
                          if end > mono}  # (an ended lease is gone from Redis anyway)
            pace.unreleased = {}
            # The first reservation after a spell of local pacing finds the shared bucket
            # spent (the fleet paced locally meanwhile; a bucket refilled while Redis was
            # out would send a burst on top of the local turns of the last second).
            resume = count > 0 and pace.paced_locally
            carried = None
            if not throttling:
                carried, pace.throttled = pace.throttled, None
        shift = self._offset if self.server_time else 0.0  # the caller's clock -> shared
        shared_start = started + shift
        retry_until = None if retry_after is None else mono + retry_after
        if carried is not None:  # told now, as if with the release it could not ride
            throttling = True
            shared_start, retry_until = carried
            retry_after = None if retry_until is None or retry_until <= mono \
                else retry_until - mono
        args = [op, "" if self.server_time else repr(float(now)),
                "" if settings.rate is None else repr(settings.rate), settings.burst,
                "1" if settings.adaptive else "0", count,
                repr(float(min(max_wait, 1e9))), self._origin, lease,
                repr(float(lease_ttl)),
                "" if settings.max_in_flight is None else settings.max_in_flight,
                "1" if throttling else "0", repr(float(shared_start)),
                successes, "" if retry_after is None else repr(float(retry_after)),
                repr(BETA), repr(RECOVERY), repr(MIN_RATE), _PACE_TTL_MS, repr(HOLDOFF),
                repr(LEARN), "1" if resume else "0", ",".join(unreleased), held_locally,
                repr(NEAR), repr(START_RATE), repr(DOUBLING), repr(DOUBLINGS),
                repr(float(ticket))]
        keys = [self.key("pace", service), self.key("slots", service),
                self.key("procs", service)]
        reply = self._guarded(service, lambda: pace_numbers(self._execute(
            args, keys, "throttle", per_trip=True, deadline=deadline)))
        if reply is None:
            outage = self._unusable(service)
            with pace.lock:
                pace.successes += successes  # sent with the next call
                pace.unreleased.update(unreleased)  # ... as these releases
                pace.paced_locally = pace.paced_locally or outage
                if throttling:  # the fleet's rate learns of it with the next call
                    pace.throttled = (shared_start, retry_until)
            if not outage:
                raise NoTime()
        else:
            if resume or carried is not None:
                with pace.lock:
                    if resume:
                        pace.paced_locally = False
                    if carried is not None:
                        pace.tokens.clear()  # leased at the old rate
            pace.synced = _monotonic()
            pace.processes = max(1, int(reply[4]))
            pace.rate = reply[5]
            pace.interval = reply[3]
        return reply

    def throttle_share(self, service: str) -> int:
        """The processes last seen sharing ``service``'s throttle (this one included):
        while Redis is out, each paces at the rate divided by them."""
        pace = self._paces.get(service)
        return 1 if pace is None else pace.processes

    def throttle_seen(self, service: str) -> Optional[float]:
        """The shared rate on ``service`` at this process's last round trip (``inf``: not
        paced, ``0``: every turn held; ``None``: none went through): while Redis is out,
        an adaptive throttle paces locally at its share of it."""
        pace = self._paces.get(service)
        return None if pace is None or pace.synced == -math.inf else pace.rate

    def throttle_held(self, service: str) -> int:
        """The slots of ``service`` this process holds through Redis (attempts under way
        that took them before Redis went out count against its local share)."""
        pace = self._paces.get(service)
        return 0 if pace is None else len(pace.leases)

    def throttle_rate(self, service: str, settings: ThrottleSettings,
                      now: float) -> Optional[float]:
        """The shared rate in force on ``service`` (``None``: Redis cannot say)."""
        try:
            reply = self._throttle_trip(service, settings, "rate", now)
        except NoTime:
            return None
        return None if reply is None else reply[5]

    def throttle_turn(self, turn: Turn, settings: ThrottleSettings, now: float,
                      left: float) -> Union[float, bool, None]:
        """One step of ``turn`` through the shared state: ``None`` (go now), seconds to
        wait before the next step, or ``False`` (Redis cannot serve: pace locally).
        Raises :class:`~requests_smartretry.ThrottledError` on a refusal."""
        service = turn.service
        pace = self._pace(service)
        mono = _monotonic()
        with pace.lock:
            if not turn.token and not turn.counted:
                demand = pace.asked(mono)
                turn.counted = True
            else:
                demand = 1.0
            leased = self._leased(pace, turn, mono, left)
        if leased is False and pace.rate == math.inf and settings.max_in_flight is None \
                and mono - pace.synced < _PACE_FRESH:
            turn.token = True  # not paced (adaptive, not throttled yet), as Redis said
            return None
        count = 0
        if not turn.token and leased is False:
            batch = max(1, math.floor(pace.rate * _LEASE_WINDOW)) if pace.rate < math.inf \
                else 1
            count = max(1, min(batch, round(demand)))
        if not turn.slot:
            if turn.lease is None:
                turn.lease = uuid.uuid4().hex
            ttl = (60.0 if turn.span is None else max(turn.span, 0.0)) + _LEASE_MARGIN
            # The attempts this process sent while it paced locally, and still under
            # way, hold slots Redis does not know of: they count there too (back from
            # an outage, the process takes a shared slot only once they leave room).
            held_locally = turn.throttle.in_flight(service)
            try:
                reply = self._throttle_trip(service, settings, "acquire", now, count=count,
                                            max_wait=left, lease=turn.lease, lease_ttl=ttl,
                                            held_locally=held_locally, ticket=turn.fleet_ticket)
            except NoTime:  # no time for Redis (now): look again while the turn may wait
                self._abandoned(pace, turn, mono + ttl)
                return turn.slot_wait(left - (_monotonic() - mono))
            if reply is None:
                self._abandoned(pace, turn, mono + ttl)
                return False
            if reply[6] != 1.0:  # no free slot: look again soon
                return turn.slot_wait(left)
            if count and reply[2] == 0.0:  # a slot, but no turn booked: nothing taken
                turn.lease = None
                if reply[1] <= left:  # in time, but not near: ask again then
                    turn.fleet_ticket = reply[8] or turn.fleet_ticket
                    return turn.ask_again(reply[1])
                raise ThrottledError(service, reply[1], turn.limit)
            with pace.lock:
                pace.leases[turn.lease] = mono + ttl
            turn.slot = True
        elif count:
            try:
                reply = self._throttle_trip(service, settings, "reserve", now, count=count,
                                            max_wait=left, ticket=turn.fleet_ticket)
            except NoTime:
                try:
                    return turn.slot_wait(left - (_monotonic() - mono))
                except ThrottledError:
                    turn.done(now, refused=True)  # the slot it holds goes back
                    raise
            if reply is None:
                return False
            if reply[2] == 0.0:
                if reply[1] <= left:  # in time, but not near: ask again then
                    turn.fleet_ticket = reply[8] or turn.fleet_ticket
                    return turn.ask_again(reply[1])
                turn.done(now, refused=True)
                raise ThrottledError(service, reply[1], turn.limit)
        else:
            reply = None
        if not turn.token:
            if reply is not None:
                wait, granted, interval = reply[1], int(reply[2]), reply[3]
                with pace.lock:
                    first = mono + wait
                    pace.tokens.extend(first + i * interval for i in range(1, granted))
                leased = wait
            if leased is False:
                return False  # (unreachable: a turn without a lease asked for one)
            return turn.token_in(leased, now)
        turn.started = now
        return None

    @staticmethod
    def _abandoned(pace: Pace, turn: Turn, end: float) -> None:
        """An acquire whose answer did not come (in time): Redis may have granted its
        lease all the same (a slow answer, cut at the time budget).  The next round trip
        that goes through frees it, as a release Redis could not be told of (else the
        slot stayed leased, to nobody, for the attempt's time + 1 s)."""
        lease, turn.lease = turn.lease, None
        if lease is not None:
            with pace.lock:
                pace.unreleased[lease] = end

    @staticmethod
    def _leased(pace: Pace, turn: Turn, mono: float, left: float) -> Union[float, bool]:
        """A leased turn for ``turn`` (under the pace's lock): the seconds until it may go,
        or ``False`` when none is left in time.  A leased turn whose moment passed more
        than an interval ago is dropped: sent late, it would bunch with the others'."""
        if turn.token:
            return 0.0
        tokens = pace.tokens
        slack = max(pace.interval, 0.005)
        while tokens and tokens[0] < mono - slack:
            tokens.pop(0)
        if not tokens or tokens[0] - mono > left:
            return False
        return max(0.0, tokens.pop(0) - mono)

    def throttle_done(self, turn: Turn, settings: ThrottleSettings, now: float, *,
                      success: bool, throttling: bool, retry_after: Optional[float]) -> bool:
        """The attempt of ``turn`` ended: its leased slot goes back, a success is counted
        (sent with the next call: the fleet's successes of the last second are where a
        learning pause starts the rate), and a throttling answer lowers the shared rate.
        ``False`` when Redis cannot serve it (the slot is then freed there by the next
        round trip that goes through, or when its lease ends)."""
        lease, turn.lease = turn.lease, None
        pace = self._pace(turn.service)
        end: Optional[float] = None
        if success or lease is not None:
            with pace.lock:
                if success:
                    pace.successes += 1
                if lease is not None:
                    end = pace.leases.pop(lease, None)
        if lease is None and not throttling:
            return True
        try:
            # Sent even when the attempt's deadline is spent (an attempt answered at its
            # deadline): its slot goes back now, not when its lease ends, and a throttling
            # answer lowers the fleet's rate.
            reply = self._throttle_trip(turn.service, settings, "release", now,
                                        lease=lease or "", throttling=throttling,
                                        started=turn.started, retry_after=retry_after,
                                        deadline=False)
        except NoTime:
            reply = None
        if reply is None and lease is not None and end is not None:
            # Redis could not be told: the slot is freed there by the next round trip
            # that goes through (not left leased until the lease ends).
            with pace.lock:
                pace.unreleased[lease] = end
        if reply is not None and throttling:
            with pace.lock:
                pace.tokens.clear()  # leased at the old rate
        return reply is not None
