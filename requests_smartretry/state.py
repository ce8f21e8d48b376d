"""Where the circuit breaker and the retry budget keep their per-service state.

A *state store* holds one small record per service key and updates it atomically: the
breaker's state machine (:func:`breaker_admit`, :func:`breaker_record`) and the budget's
token bucket (:func:`budget_change`).  :class:`MemoryStateStore` (the default) keeps the
records in this process; :class:`~requests_smartretry.redis_state.RedisStateStore` keeps
them in Redis so that every worker of a fleet shares one breaker and one budget.

The algorithms live here, once, as plain functions over a ``dict`` of numbers; the Redis
store runs a line-by-line Lua transcription of them inside the server (see
``redis_state/scripts.py``), and its tests run the same state-machine cases against both
stores.

Thread-safety contract: every store method is atomic with respect to every other call on
the same store (and, for Redis, on every store sharing that Redis); none of them performs
or waits for the caller's network call.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Protocol, runtime_checkable

from . import forksafe
from .testing import track

__all__ = [
    "Admission",
    "BreakerSettings",
    "BreakerStatus",
    "BudgetSettings",
    "MemoryStateStore",
    "StateStore",
]

#: Breaker states as stored (numbers, so that the Lua transcription stores the same).
#: The forced ones are set by an operator (``force_open`` / ``force_close``) and held until
#: ``reset``: no result moves them, and a forced-open breaker sends no probe.
CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, FORCED_CLOSED = 0, 1, 2, 3, 4
STATE_NAMES = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half_open",
               FORCED_OPEN: "forced_open", FORCED_CLOSED: "forced_closed"}
STATE_NUMBERS = {name: number for number, name in STATE_NAMES.items()}


@dataclass(frozen=True)
class BreakerSettings:
    """The breaker's configuration, as the store's state machine reads it."""

    #: Consecutive (weighted) failures that open the breaker; 0 disables the rule.
    failure_threshold: float
    #: Seconds the breaker stays open before letting probes through.
    recovery_timeout: float
    #: Probes admitted per half-open round; all of them must succeed to close.
    half_open_probes: int
    #: Failure share over the window that opens the breaker; 0 disables the rule.
    failure_rate: float
    #: Seconds covered by the sliding window of the failure-rate rule.
    window: float
    #: Requests the window must hold before the failure-rate rule may open the breaker.
    minimum_requests: int
    #: Buckets the window is divided into (its time resolution).
    buckets: int = 10

    @functools.cached_property  # the fields are frozen: computed once, then a plain read
    def ttl(self) -> float:
        """Seconds after its last update that a record may be forgotten (a shared store
        lets it expire): long enough to cover an open period and a whole window."""
        return 2.0 * max(self.window, self.recovery_timeout) + 60.0


@dataclass(frozen=True)
class BudgetSettings:
    """The retry budget's configuration, as the store's token bucket reads it."""

    #: Tokens each call deposits (a retry costs one token): 0.1 allows 10% retries.
    ratio: float
    #: Bucket capacity, and the balance of a service not seen before.
    max_tokens: float
    #: Tokens added per second whatever the traffic, so quiet services may still retry.
    min_per_second: float

    @functools.cached_property  # the fields are frozen: computed once, then a plain read
    def ttl(self) -> float:
        """Seconds after its last update that a record may be forgotten: by then the
        bucket has refilled to capacity, which is what a missing record means anyway."""
        if self.min_per_second > 0:
            return self.max_tokens / self.min_per_second + 60.0
        return 3600.0


@dataclass(frozen=True)
class Admission:
    """The breaker's answer to "may this attempt go out?"."""

    allowed: bool
    #: Seconds until the breaker may let a probe through (when refused).
    retry_in: float = 0.0
    #: 0 for an ordinary attempt; the half-open round number for a probe (its result is
    #: reported back with it, so that late results of older attempts are not mistaken for
    #: the probe's).
    ticket: int = 0
    #: The breaker's state after the admission (``STATE_NAMES``' keys).
    state: int = CLOSED


@dataclass(frozen=True)
class BreakerStatus:
    """A read-only view of one service's breaker, for inspection and tests."""

    state: str
    consecutive_failures: float
    #: (Weighted) failures and requests in the sliding window.
    window_failures: float
    window_requests: float
    #: Seconds until the next probe may go out (0 unless open or half-open and full).
    retry_in: float


@runtime_checkable
class StateStore(Protocol):
    """Atomic per-key state for the breaker and the budget.

    ``now`` is the caller's clock reading in seconds; a store may use a clock of its own
    instead (the Redis store uses the Redis server's, so that hosts agree).
    """

    def breaker_admit(self, key: str, settings: BreakerSettings, now: float) -> Admission:
        """Decide whether an attempt on ``key`` may go out (and take a probe slot)."""

    def breaker_record(
        self, key: str, settings: BreakerSettings, now: float, *, failed: bool,
        weight: float, ticket: int,
    ) -> str:
        """Record an attempt's result; returns the state name afterwards."""

    def breaker_status(self, key: str, settings: BreakerSettings, now: float) -> BreakerStatus:
        """The current state of ``key``'s breaker, without changing it."""

    def breaker_set(self, key: str, settings: BreakerSettings, now: float, state: int) -> str:
        """An operator's transition: ``key``'s breaker enters ``state`` (``CLOSED``,
        ``FORCED_OPEN`` or ``FORCED_CLOSED``) afresh, its counters empty; returns the state
        name it had before."""

    def budget_change(
        self, key: str, settings: BudgetSettings, now: float, deposit: float, spend: float
    ) -> tuple[bool, float]:
        """Add ``deposit`` tokens, then spend ``spend`` if the balance covers it (a spend
        it does not cover is refused and takes nothing).  Returns (spent, balance)."""


# -- the algorithms (transcribed to Lua in redis_state/scripts.py; keep both in step) ------

Record = dict[str, float]
#: Float rounding tolerated when comparing a balance with a spend.
_DUST = 1e-9


def _get(record: Record, name: str) -> float:
    return record.get(name, 0.0)


def _start_round(record: Record, now: float) -> None:
    record["st"] = HALF_OPEN
    record["t"] = now
    record["rnd"] = _get(record, "rnd") + 1
    record["pin"] = 0
    record["pok"] = 0


def _reset(record: Record, state: int, now: float) -> None:
    """Enter ``state`` afresh: counters and the window start empty."""
    kept = _get(record, "rnd")
    record.clear()
    record.update(st=state, t=now, rnd=kept, cf=0)


def breaker_admit(record: Record, s: BreakerSettings, now: float) -> Admission:
    """The admission rule (mutates ``record``)."""
    state = _get(record, "st")
    if state == FORCED_OPEN:
        # Held open by an operator: no probe; a caller may look again after a recovery.
        return Admission(False, s.recovery_timeout, 0, FORCED_OPEN)
    if state == FORCED_CLOSED:
        return Admission(True, 0.0, 0, FORCED_CLOSED)
    if state == OPEN:
        if now - _get(record, "t") < s.recovery_timeout:
            return Admission(False, _get(record, "t") + s.recovery_timeout - now, 0, OPEN)
        _start_round(record, now)
    elif state == HALF_OPEN and now - _get(record, "t") >= s.recovery_timeout:
        # A round whose probes never reported (a worker died mid-probe) must not keep the
        # breaker half-open for ever: start a new round.
        _start_round(record, now)
    if _get(record, "st") == HALF_OPEN:
        if _get(record, "pin") < s.half_open_probes:
            record["pin"] = _get(record, "pin") + 1
            return Admission(True, 0.0, int(_get(record, "rnd")), HALF_OPEN)
        return Admission(False, _get(record, "t") + s.recovery_timeout - now, 0, HALF_OPEN)
    return Admission(True)


def _bucket(s: BreakerSettings, now: float) -> int:
    return math.floor(now / (s.window / s.buckets))


def _window_totals(record: Record, s: BreakerSettings, now: float) -> tuple[float, float]:
    """(failures, requests) in the window ending at ``now``."""
    current = _bucket(s, now)
    failures = requests = 0.0
    for slot in range(s.buckets):
        stamp = record.get(f"b{slot}")
        if stamp is not None and current - s.buckets < stamp <= current:
            failures += _get(record, f"f{slot}")
            requests += _get(record, f"f{slot}") + _get(record, f"s{slot}")
    return failures, requests


def breaker_record(
    record: Record, s: BreakerSettings, now: float, failed: bool, weight: float, ticket: int
) -> int:
    """The transition rule on an attempt's result (mutates ``record``); returns the state."""
    state = _get(record, "st")
    if state == HALF_OPEN:
        if ticket != _get(record, "rnd"):
            return HALF_OPEN  # not this round's probe: says nothing about the recovery
        if failed:
            _reset(record, OPEN, now)
            return OPEN
        record["pok"] = _get(record, "pok") + 1
        if _get(record, "pok") >= s.half_open_probes:
            _reset(record, CLOSED, now)
            return CLOSED
        return HALF_OPEN
    if state in (OPEN, FORCED_OPEN, FORCED_CLOSED):
        return int(state)  # a straggler from before it opened, or held by an operator
    current = _bucket(s, now)
    slot = current % s.buckets
    if record.get(f"b{slot}") != current:
        record[f"b{slot}"] = current
        record[f"s{slot}"] = 0
        record[f"f{slot}"] = 0
    if failed:
        record[f"f{slot}"] = _get(record, f"f{slot}") + weight
        record["cf"] = _get(record, "cf") + weight
    else:
        record[f"s{slot}"] = _get(record, f"s{slot}") + 1
        record["cf"] = 0
    trip = s.failure_threshold > 0 and _get(record, "cf") >= s.failure_threshold
    if not trip and failed and s.failure_rate > 0:
        failures, requests = _window_totals(record, s, now)
        trip = requests >= s.minimum_requests and failures >= s.failure_rate * requests
    if trip:
        _reset(record, OPEN, now)
        return OPEN
    return CLOSED


def breaker_set(record: Record, now: float, state: int) -> int:
    """An operator's transition (mutates ``record``): enter ``state`` afresh; returns the
    state before."""
    if state not in (CLOSED, FORCED_OPEN, FORCED_CLOSED):
        raise ValueError(f"an operator sets closed, forced_open or forced_closed, got {state!r}")
    before = int(_get(record, "st"))
    _reset(record, state, now)
    return before


def breaker_status(record: Record, s: BreakerSettings, now: float) -> BreakerStatus:
    """A read-only view of ``record``."""
    state = int(_get(record, "st"))
    retry_in = 0.0
    if state == OPEN:
        retry_in = max(0.0, _get(record, "t") + s.recovery_timeout - now)
        if retry_in == 0.0:
            state = HALF_OPEN  # the next attempt will be a probe
    elif state == FORCED_OPEN:
        retry_in = s.recovery_timeout
    elif state == HALF_OPEN and _get(record, "pin") >= s.half_open_probes:
        retry_in = max(0.0, _get(record, "t") + s.recovery_timeout - now)
    failures, requests = _window_totals(record, s, now)
    return BreakerStatus(STATE_NAMES[state], _get(record, "cf"), failures, requests, retry_in)


def budget_change(
    record: Record, s: BudgetSettings, now: float, deposit: float, spend: float
) -> tuple[bool, float]:
    """The token-bucket rule (mutates ``record``).  A negative ``deposit`` charges the
    retries of a call that failed: the balance may go below zero (a debt)."""
    if "tok" in record:
        elapsed = max(0.0, now - record["ts"])
        tokens = min(s.max_tokens, record["tok"] + s.min_per_second * elapsed)
    else:
        tokens = s.max_tokens
    tokens = min(s.max_tokens, tokens + deposit)
    spent = tokens >= spend - _DUST  # ten deposits of 0.1 make a whole token
    if spent:
        tokens = max(0.0, tokens - spend)
    record["tok"] = tokens
    record["ts"] = now
    return spent, tokens


# -- the in-process store -----------------------------------------------------------------

#: Records kept before the first look for idle ones (then twice the count after each look).
_SWEEP_MIN = 1024
_now = time.monotonic
#: Seconds an unpickled record is kept without being used (its settings are not known).
_TTL_AFTER_PICKLE = 3600.0


class MemoryStateStore:
    """The default store: per-key records in this process, guarded by one lock.

    Example::

        store = MemoryStateStore()
        breaker = CircuitBreaker(failure_threshold=5, store=store)
        budget = RetryBudget(store=store)

    The lock is held only for the few arithmetic steps of an update, never around a
    network call.  Pickling copies the records (the lock is recreated).  A record idle
    for longer than its settings' ``ttl`` is forgotten (as Redis expires it), so a process
    that talks to ever new hosts keeps a bounded number of them.
    """

    def __init__(self) -> None:
        self._lock = forksafe.lock()
        self._breakers: dict[str, Record] = {}
        self._budgets: dict[str, Record] = {}
        self._init_expiry()

    def _init_expiry(self) -> None:
        # (records, key) -> monotonic time after which the record may be forgotten.
        self._expiry: dict[tuple[int, str], float] = {}
        self._sweep_at = _SWEEP_MIN

    def _touch(self, records: dict[str, Record], key: str, ttl: float) -> Record:
        """``key``'s record in ``records`` (created empty), kept for ``ttl`` more seconds
        (under the lock).  Now and then, forgets the records past their time."""
        now = _now()
        self._expiry[(id(records), key)] = now + ttl
        if len(self._expiry) > self._sweep_at:
            by_id = {id(self._breakers): self._breakers, id(self._budgets): self._budgets}
            for (which, name), until in list(self._expiry.items()):
                if until < now:
                    del self._expiry[(which, name)]
                    by_id[which].pop(name, None)
            self._sweep_at = max(_SWEEP_MIN, 2 * len(self._expiry))
        return records.setdefault(key, {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(keys={len(self._breakers) + len(self._budgets)})"

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            return {"breakers": {k: dict(v) for k, v in self._breakers.items()},
                    "budgets": {k: dict(v) for k, v in self._budgets.items()}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lock = forksafe.lock()
        self._breakers = state["breakers"]
        self._budgets = state["budgets"]
        self._init_expiry()
        with self._lock:
            for records, settings_ttl in ((self._breakers, _TTL_AFTER_PICKLE),
                                          (self._budgets, _TTL_AFTER_PICKLE)):
                for key in list(records):
                    self._touch(records, key, settings_ttl)

    def breaker_admit(self, key: str, settings: BreakerSettings, now: float) -> Admission:
        """Decide whether an attempt on ``key`` may go out (and take a probe slot)."""
        with self._lock:
            return breaker_admit(self._touch(self._breakers, key, settings.ttl), settings, now)

    def breaker_record(
        self, key: str, settings: BreakerSettings, now: float, *, failed: bool,
        weight: float, ticket: int,
    ) -> str:
        """Record an attempt's result; returns the state name afterwards."""
        with self._lock:
            record = self._touch(self._breakers, key, settings.ttl)
            return STATE_NAMES[breaker_record(record, settings, now, failed, weight, ticket)]

    def breaker_status(self, key: str, settings: BreakerSettings, now: float) -> BreakerStatus:
        """The current state of ``key``'s breaker, without changing it."""
        with self._lock:
            return breaker_status(dict(self._breakers.get(key, {})), settings, now)

    def breaker_set(self, key: str, settings: BreakerSettings, now: float, state: int) -> str:
        """An operator's transition; returns the state name before."""
        with self._lock:
            record = self._touch(self._breakers, key, settings.ttl)
            return STATE_NAMES[breaker_set(record, now, state)]

    def budget_change(
        self, key: str, settings: BudgetSettings, now: float, deposit: float, spend: float
    ) -> tuple[bool, float]:
        """Deposit, then spend if covered; returns (spent, balance afterwards)."""
        with self._lock:
            record = self._touch(self._budgets, key, settings.ttl)
            return budget_change(record, settings, now, deposit, spend)

    def clear(self) -> None:
        """Forget every record: breakers closed, budgets full (``reset_state()`` uses it)."""
        with self._lock:
            self._breakers.clear()
            self._budgets.clear()
            self._init_expiry()


class StoreUser:
    """Where a breaker or a budget keeps its state: its own ``store=``, or the one an
    adapter's ``state=`` hands it (never both)."""

    store: StateStore
    _explicit_store: bool

    def _init_store(self, store: Optional[StateStore]) -> None:
        self._explicit_store = store is not None
        self.store = store if store is not None else MemoryStateStore()
        track(self)  # for testing.reset_state()

    def _reset_state(self) -> None:
        """Forget the state kept in this process (``testing.reset_state()``); state kept
        in Redis is shared with other processes and stays."""
        if isinstance(self.store, MemoryStateStore):
            self.store.clear()

    def use_store(self, store: StateStore) -> None:
        """Keep state in ``store`` (an adapter's ``state=``); refused if this object was
        already given, or bound to, another store."""
        if self._explicit_store and store is not self.store:
            raise ValueError(f"this {type(self).__name__} already keeps its state in "
                             f"{self.store!r}; pass the store in one place only")
        self.store = store
        self._explicit_store = True


def resolve_store(state: Any) -> Optional[StateStore]:
    """A store from the adapter's ``state=``: ``None``, a store, a Redis URL (checked by
    :func:`~requests_smartretry.redis_state.parse_target`) or a redis-py client."""
    if state is None:
        return None
    if isinstance(state, str):
        from .redis_state import RedisStateStore

        return RedisStateStore(state)
    if isinstance(state, StateStore):
        return state
    if _is_redis_client(state):
        from .redis_state import RedisStateStore

        return RedisStateStore(state)
    raise TypeError(
        "state must be None, a Redis URL, a redis.Redis or redis.cluster.RedisCluster "
        f"client or a StateStore, got {type(state).__module__}.{type(state).__qualname__}"
    )


def _is_redis_client(value: Any) -> bool:
    """A redis-py client (also an unsupported one, which the store refuses by name),
    recognised without importing redis-py."""
    return any(
        cls.__module__.startswith("redis.") and cls.__name__ in ("Redis", "RedisCluster")
        for cls in type(value).__mro__
    )
