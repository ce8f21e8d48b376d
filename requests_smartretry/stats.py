"""Statistics per operation: counts and latency percentiles from the attempt-event stream.

Every :class:`~requests_smartretry.SmartRetryAdapter` carries a :class:`Stats` as
``adapter.stats``; ``adapter.stats.snapshot()`` returns plain, JSON-serialisable data keyed
by operation name.  Latency percentiles come from a fixed log-bucket histogram: constant
memory, O(1) per observation, within about 5 % of the true value.
"""

from __future__ import annotations

import bisect
import collections
import math
import warnings
from typing import Any, Callable, Optional

from . import forksafe
from .events import AttemptEvent, EventKind
from .testing import track

__all__ = ["DEPRECATED_NAMES", "TOTAL_KEY", "WAIT_OUTCOMES", "LatencyHistogram", "Stats",
           "StatsRow"]

#: The snapshot key under which the totals over every operation appear.
TOTAL_KEY = "__total__"
#: How a wait (:meth:`Stats.record_wait`) can end.
WAIT_OUTCOMES = ("done", "failed", "deadline", "error")
#: Operations beyond ``max_operations`` are counted together under this key.
OTHER_KEY = "__other__"

# Module constants: an enum member read through its class is a slow lookup (Python 3.11),
# and these are read for every event.
_START = EventKind.START
_SUCCESS = EventKind.SUCCESS
_THROTTLED = EventKind.THROTTLED
_FAILURE = EventKind.FAILURE
_RETRY = EventKind.RETRY
_GIVE_UP = EventKind.GIVE_UP
_REJECTED = EventKind.REJECTED
_QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))
# Recorded events applied at once, under the lock, by the thread whose record makes this
# many: the lock is taken once per this many quiet events (and by every read).
_APPLY_AT = 64
_INF = math.inf
_bisect_left = bisect.bisect_left


class LatencyHistogram:
    """A streaming latency estimate: counts in fixed logarithmic buckets.

    Example::

        histogram = LatencyHistogram()
        for seconds in (0.010, 0.012, 0.250):
            histogram.add(seconds)
        histogram.quantile(0.5)     # ~0.012 (within 4.5 %)

    Buckets are 8 per doubling from 100 µs to about 28 minutes, so an estimate (the
    geometric middle of its bucket, clamped to the observed min and max) is within
    2**(1/16) - 1 ≈ 4.4 % of an observed value.  Not thread-safe on its own: :class:`Stats`
    guards it with its lock.
    """

    __slots__ = ("buckets", "count", "maximum", "minimum", "total")

    #: Lower edge of the first bucket, in seconds (anything faster lands in bucket 0).
    FLOOR = 1e-4
    PER_DOUBLING = 8
    DOUBLINGS = 24
    SIZE = PER_DOUBLING * DOUBLINGS + 2  # + an underflow and an overflow bucket

    def __init__(self) -> None:
        self.buckets = [0] * self.SIZE
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = 0.0

    def add(self, seconds: Optional[float]) -> None:
        """Record one observation (``None``, negative and non-finite values are ignored:
        an event without a time records nothing)."""
        if seconds is None or not 0.0 <= seconds < math.inf:
            return
        # Bucket i > 0 holds (FLOOR·2^((i-1)/8), FLOOR·2^(i/8)]; past the last edge, the
        # overflow bucket.
        self.add_at(bisect.bisect_left(_EDGES, seconds), seconds)

    def add_at(self, index: int, seconds: float) -> None:
        """Record ``seconds`` (finite, >= 0) in bucket ``index``, found by the caller."""
        self.buckets[index] += 1
        self.count += 1
        self.total += seconds
        if seconds < self.minimum:
            self.minimum = seconds
        if seconds > self.maximum:
            self.maximum = seconds

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s observations to this histogram."""
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets)]
        self.count += other.count
        self.total += other.total
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    def copy(self) -> LatencyHistogram:
        """An independent copy."""
        clone = LatencyHistogram()
        clone.merge(self)
        return clone

    def quantile(self, q: float) -> Optional[float]:
        """The estimated ``q``-quantile (0 < q <= 1) in seconds, or ``None`` when empty."""
        if not 0.0 < q <= 1.0:
            raise ValueError(f"q must be in (0, 1], got {q!r}")
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        index = 0
        for index, n in enumerate(self.buckets):  # noqa: B007 - index is used after the loop
            seen += n
            if seen >= rank:
                break
        if index == 0:
            estimate = self.minimum
        elif index == self.SIZE - 1:  # the overflow bucket has no upper edge
            estimate = self.maximum
        else:
            lower = self.FLOOR * 2 ** ((index - 1) / self.PER_DOUBLING)
            upper = self.FLOOR * 2 ** (index / self.PER_DOUBLING)
            estimate = math.sqrt(lower * upper)
        return min(max(estimate, self.minimum), self.maximum)

    def summary(self) -> dict[str, Any]:
        """``count``, ``mean``, ``p50``, ``p90``, ``p99`` and ``max`` as plain data."""
        if self.count == 0:
            return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None,
                    "max": None}
        summary: dict[str, Any] = {"count": self.count, "mean": self.total / self.count}
        for name, q in _QUANTILES:
            summary[name] = self.quantile(q)
        summary["max"] = self.maximum
        return summary


# The upper edges of the buckets but the overflow one: FLOOR·2^(k/8), k = 0 … SIZE-2.
_EDGES = [LatencyHistogram.FLOOR * 2 ** (k / LatencyHistogram.PER_DOUBLING)
          for k in range(LatencyHistogram.SIZE - 1)]


#: The snapshot names of release 0.1, kept for one release: each reads its new name, with
#: a ``DeprecationWarning``.  ``successes`` counted calls while ``failures`` counted
#: attempts; the new names say which.
DEPRECATED_NAMES = {
    "requests": "calls",
    "successes": "calls_succeeded",
    "give_ups": "calls_failed",
    "give_ups_by_reason": "calls_failed_by_reason",
    "in_flight": "calls_in_flight",
    "failures": "attempts_failed",
    "failures_by_verdict": "attempts_failed_by_verdict",
}


class StatsRow(dict):  # type: ignore[type-arg]  # dict[str, Any], generic only in stubs
    """One operation's counts in a :meth:`Stats.snapshot`: a plain ``dict`` (JSON as it
    is) whose deprecated names (:data:`DEPRECATED_NAMES`) still read, with a
    ``DeprecationWarning``, through ``row[name]``, ``row.get(name)`` and ``name in row``."""

    __slots__ = ()

    def __missing__(self, key: str) -> Any:
        new = DEPRECATED_NAMES.get(key)
        if new is None:
            raise KeyError(key)
        _warn(key, new)
        return self[new]

    def __contains__(self, key: object) -> bool:
        """As ``dict``'s; a deprecated name is there when its new one is (with a warning),
        so ``if "successes" in row`` keeps working for the release that deprecates it."""
        if dict.__contains__(self, key):
            return True
        new = DEPRECATED_NAMES.get(key) if isinstance(key, str) else None
        if new is None or not dict.__contains__(self, new):
            return False
        _warn(key, new)  # type: ignore[arg-type]  # a str: checked just above
        return True

    def get(self, key: str, default: Any = None) -> Any:
        """As ``dict.get``; a deprecated name reads its new one (with a warning)."""
        if not dict.__contains__(self, key) and key in DEPRECATED_NAMES:
            return self[key]
        return super().get(key, default)


def _warn(old: str, new: str) -> None:
    warnings.warn(f"Stats snapshot field {old!r} is deprecated and will be removed in the "
                  f"next release; read {new!r} (calls and attempts are counted apart)",
                  DeprecationWarning, stacklevel=3)


# _Counters' slots of release 0.1, by their current names (for unpickling).
_OLD_SLOTS = {"requests": "calls", "successes": "calls_succeeded", "refused": "calls_refused",
              "failures": "attempts_failed", "give_ups": "calls_failed"}


class _Counters:
    """The mutable tallies of one operation (always touched under the Stats lock).

    A quiet call's success (its first attempt) is one attempt and one call of the same
    duration: it is recorded once, in ``quiet_seconds``, which :meth:`merge` (so
    :meth:`copy`, what snapshots and pickles read) adds to both ``attempt_seconds`` and
    ``call_seconds``.  Read a copy, never the live tallies.
    """

    __slots__ = ("attempt_seconds", "attempts", "attempts_failed", "budget_denials",
                 "call_seconds", "calls", "calls_failed", "calls_refused", "calls_succeeded",
                 "calls_throttled", "polls", "quiet_seconds", "rejections", "retries",
                 "throttle_refusals", "throttle_seconds", "throttled", "wait_seconds", "waits")

    def __init__(self) -> None:
        self.calls = 0
        self.attempts = 0
        self.retries = 0
        self.calls_succeeded = 0
        self.rejections = 0
        self.calls_refused = 0  # calls the breaker refused before their first attempt
        self.budget_denials = 0
        self.attempts_failed: dict[str, int] = {}  # by verdict
        self.calls_failed: dict[str, int] = {}  # by give-up reason
        self.attempt_seconds = LatencyHistogram()
        self.call_seconds = LatencyHistogram()
        self.quiet_seconds = LatencyHistogram()  # in both of the above (see the class)
        # Waits (poll_until): how each ended, the polls they made, the time to done.
        self.waits: dict[str, int] = {}
        self.polls = 0
        self.wait_seconds = LatencyHistogram()
        # The throttle: attempts that waited for their turn (and how long), refused turns.
        self.throttled = 0
        self.throttle_refusals = 0
        self.calls_throttled = 0  # calls refused before their first attempt
        self.throttle_seconds = LatencyHistogram()

    def __setstate__(self, state: Any) -> None:
        # Counters pickled by release 0.1 carry its slot names: read them under the new.
        self.__init__()  # type: ignore[misc]  # every slot set, then the pickled values
        slots = state[1] if isinstance(state, tuple) else state
        for name, value in (slots or {}).items():
            setattr(self, _OLD_SLOTS.get(name, name), value)

    def copy(self) -> _Counters:
        clone = _Counters()
        clone.merge(self)
        return clone

    def merge(self, other: _Counters) -> None:
        for name in ("calls", "attempts", "retries", "calls_succeeded", "rejections",
                     "calls_refused", "budget_denials", "polls", "throttled",
                     "throttle_refusals", "calls_throttled"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in ((self.attempts_failed, other.attempts_failed),
                             (self.calls_failed, other.calls_failed), (self.waits, other.waits)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        self.attempt_seconds.merge(other.attempt_seconds)
        self.call_seconds.merge(other.call_seconds)
        if other.quiet_seconds.count:  # folded into both: a copy has none of its own
            self.attempt_seconds.merge(other.quiet_seconds)
            self.call_seconds.merge(other.quiet_seconds)
        self.wait_seconds.merge(other.wait_seconds)
        self.throttle_seconds.merge(other.throttle_seconds)

    def as_dict(self) -> StatsRow:
        calls_failed = sum(self.calls_failed.values())
        waits = sum(self.waits.values())
        return StatsRow({
            "calls": self.calls,
            "calls_succeeded": self.calls_succeeded,
            "calls_failed": calls_failed,
            "calls_failed_by_reason": dict(sorted(self.calls_failed.items())),
            "calls_refused": self.calls_refused,
            "calls_in_flight": max(0, self.calls - self.calls_succeeded - calls_failed
                                   - self.calls_refused - self.calls_throttled),
            "attempts": self.attempts,
            "attempts_failed": sum(self.attempts_failed.values()),
            "attempts_failed_by_verdict": dict(sorted(self.attempts_failed.items())),
            "retries": self.retries,
            "retry_rate": self.retries / self.calls if self.calls else 0.0,
            "rejections": self.rejections,
            "budget_denials": self.budget_denials,
            "attempt_seconds": self.attempt_seconds.summary(),
            "call_seconds": self.call_seconds.summary(),
            "waits": waits,
            "waits_by_outcome": dict(sorted(self.waits.items())),
            "polls": self.polls,
            "polls_per_wait": self.polls / waits if waits else 0.0,
            "seconds_to_done": self.wait_seconds.summary(),
            "throttled_attempts": self.throttled,
            "throttle_wait_seconds": self.throttle_seconds.summary(),
            "throttle_refusals": self.throttle_refusals,
            "calls_throttled": self.calls_throttled,
        })


class Stats:
    """Thread-safe statistics per operation, fed by the attempt-event stream (a hook).

    Example::

        session = smart_session(max_retries=1)
        session.get("https://example.com/api")
        stats = session.get_adapter("https://").stats
        stats.snapshot()["GET example.com/api"]["retries"]     # 0
        shared = Stats()                                       # one Stats, many adapters:
        smart_session(stats=shared), smart_session(stats=shared)

    Per operation, calls and attempts counted apart (a call that succeeded on its second
    attempt is one succeeded call and one failed attempt):

    - calls: ``calls`` (including those the breaker refused), ``calls_succeeded``,
      ``calls_failed`` (ended without success) and ``calls_failed_by_reason``,
      ``calls_refused`` (by the breaker, before any attempt), ``calls_in_flight``;
    - attempts: ``attempts``, ``attempts_failed`` and ``attempts_failed_by_verdict``,
      ``retries``, ``rejections`` (attempts the breaker refused);
    - ``retry_rate`` (retries per call), ``budget_denials`` (calls the budget ended), and
      latency summaries ``attempt_seconds`` / ``call_seconds`` (count, mean, p50, p90,
      p99, max), from the events' ``elapsed`` and ``call_elapsed`` (the retry loop
      measures both on its clock);
    - waits for a task (:func:`~requests_smartretry.poll_until`, :meth:`record_wait`):
      ``waits`` (ended) and ``waits_by_outcome`` (``done``, ``failed``, ``deadline``,
      ``error``), ``polls`` and ``polls_per_wait``, and ``seconds_to_done`` (a latency
      summary of the waits that ended done).  A poll is not an attempt: a task that is
      not done yet is no failure.
    - the throttle (:class:`~requests_smartretry.Throttle`): ``throttled_attempts`` (attempts
      that waited for their turn) and ``throttle_wait_seconds`` (a latency summary of those
      waits), ``throttle_refusals`` (turns refused: nothing sent) and ``calls_throttled``
      (calls refused before their first attempt).

    The totals over every operation are under :data:`TOTAL_KEY`.  The names of release
    0.1 (``requests``, ``successes``, ``failures``, ``give_ups``, ``in_flight``…, see
    :data:`DEPRECATED_NAMES`) still read for one release, with a ``DeprecationWarning``.

    Thread safety: the first attempt of a call whose events nobody else reads (the common,
    successful case) is recorded without a lock: one record per call, appended to a queue
    at its START and ended in place at its SUCCESS (each one atomic operation), applied
    under the lock by the thread whose record fills a batch, and by every read before it
    reads (a record read while its attempt runs counts a call in flight, its success
    once a later read finds it ended).
    Every other event takes one short lock (no I/O, no callbacks under it).
    :meth:`snapshot` applies the records and copies under the lock and computes
    percentiles outside it, so it is consistent (a snapshot never shows half an event,
    nor half a call's START or SUCCESS) and never blocks callers for long.
    At most ``max_operations`` names are tracked (the default names are path templates,
    ``GET host/users/{id}``, but a naming hook may still produce many: they cannot grow
    memory without bound); later ones are counted under ``"__other__"``.
    """

    #: The snapshot key of the totals (also ``requests_smartretry.stats.TOTAL_KEY``).
    TOTAL_KEY = TOTAL_KEY

    def __init__(self, *, max_operations: int = 1000) -> None:
        if isinstance(max_operations, bool) or not isinstance(max_operations, int):
            raise TypeError(f"max_operations must be an int, got {max_operations!r}")
        if max_operations < 1:
            raise ValueError(f"max_operations must be >= 1, got {max_operations!r}")
        self.max_operations = max_operations
        self._lock = forksafe.lock()
        self._operations: dict[str, _Counters] = {}
        # One record per quiet call (see quiet_start): appended without the lock, applied
        # under it (_apply_records); those applied while their attempt still ran wait in
        # _running for its end.
        self._records: collections.deque[list[Any]] = collections.deque()
        self._running: list[list[Any]] = []
        track(self)  # for testing.reset_state()

    def __repr__(self) -> str:
        return f"Stats(operations={len(self._operations)})"

    def __call__(self, event: AttemptEvent) -> None:
        """Count one event (the hook entry point)."""
        kind = event.kind
        with self._lock:
            if self._records:  # a quiet START of this call, perhaps: in order
                self._apply_records()
            counters = self._operations.get(event.operation)
            if counters is None:
                counters = self._new_operation(event.operation)
            if kind is _START:
                counters.attempts += 1
                if event.attempt == 1:
                    counters.calls += 1
            elif kind is _SUCCESS:
                counters.calls_succeeded += 1
                counters.attempt_seconds.add(event.elapsed)
                counters.call_seconds.add(event.call_elapsed)
            elif kind is _FAILURE:
                verdict = event.verdict.value if event.verdict is not None else "unknown"
                counters.attempts_failed[verdict] = counters.attempts_failed.get(verdict, 0) + 1
                counters.attempt_seconds.add(event.elapsed)
            elif kind is _RETRY:
                counters.retries += 1
            elif kind is _GIVE_UP:
                reason = event.give_up_reason or "unknown"
                counters.calls_failed[reason] = counters.calls_failed.get(reason, 0) + 1
                if reason == "budget":
                    counters.budget_denials += 1
                counters.call_seconds.add(event.call_elapsed)
            elif kind is _THROTTLED:
                if event.reason == "refused":
                    counters.throttle_refusals += 1
                    if event.attempt == 1:  # refused before any attempt: the call ends here
                        counters.calls += 1
                        counters.calls_throttled += 1
                else:
                    counters.throttled += 1
                    counters.throttle_seconds.add(event.wait)
            elif kind is _REJECTED:
                counters.rejections += 1
                if event.attempt == 1:  # refused before any attempt: the call ends here
                    counters.calls += 1
                    counters.calls_refused += 1

    # -- a quiet call (engine.Quiet): its first attempt counted without events ------------

    def quiet_start(self, operation: str) -> Callable[[Optional[float]], None]:
        """What a call's first START counts (the loop calls it instead of emitting one):
        recorded without a lock, counted by the next read.  Returns the function that
        ends the record, once: with the seconds of the attempt's success (the attempt and
        the call took that long), or with ``None`` when the call's events take over (they
        count the rest).  One record per call: a list, ``[operation]`` while the attempt
        runs, ``[operation, seconds]`` once it ended."""
        record: list[Any] = [operation]
        records = self._records
        records.append(record)  # no lock: one atomic append
        if len(records) >= _APPLY_AT:
            with self._lock:
                self._apply_records()
        return record.append  # one atomic append, without a Python frame

    def _apply_records(self) -> None:
        """Count the quiet records, oldest first (under the lock).  Each is taken out of
        the queue by one atomic ``popleft``: its START is counted once, whole, whoever
        applies it.  A record whose attempt still runs waits in ``_running`` until it
        ended: its success is counted by the first read that finds it ended (a list only
        grows, by one atomic append, so a record read as ended stays so)."""
        records = self._records
        pop = records.popleft
        operations = self._operations
        running = self._running
        while records:  # (an empty queue ends the loop without raising: the usual end)
            try:
                record = pop()
            except IndexError:  # another thread took the last one meanwhile
                break
            counters = operations.get(record[0])
            if counters is None:
                counters = self._new_operation(record[0])
            counters.attempts += 1
            counters.calls += 1
            if len(record) == 1:
                running.append(record)
                continue
            elapsed = record[1]
            if elapsed is not None:  # _count_quiet_success inline: every quiet call's
                counters.calls_succeeded += 1
                if 0.0 <= elapsed < _INF:
                    counters.quiet_seconds.add_at(_bisect_left(_EDGES, elapsed), elapsed)
        if running:
            # The ended records leave _running before any is counted: a child forked
            # while this thread is in the pass (the lock then starts over, released, with
            # _running as it was) counts none of them again.  It may miss some instead
            # (counted in flight, as a call whose thread the fork did not copy).
            still: list[list[Any]] = []
            ended: list[list[Any]] = []
            for record in running:
                (still if len(record) == 1 else ended).append(record)
            self._running = still
            for record in ended:
                elapsed = record[1]
                if elapsed is not None:
                    counters = operations.get(record[0])
                    if counters is None:
                        counters = self._new_operation(record[0])
                    self._count_quiet_success(counters, elapsed)

    @staticmethod
    def _count_quiet_success(counters: _Counters, elapsed: float) -> None:
        """A quiet call's success: one call and one attempt of ``elapsed`` seconds."""
        counters.calls_succeeded += 1
        if 0.0 <= elapsed < _INF:  # the attempt's and the call's time: one record
            counters.quiet_seconds.add_at(_bisect_left(_EDGES, elapsed), elapsed)

    def record_wait(self, operation: str, *, outcome: str, polls: int,
                    seconds: float) -> None:
        """Count one ended wait of ``operation``: how it ended (``outcome``: ``"done"``,
        ``"failed"``, ``"deadline"`` or ``"error"``), the ``polls`` it made and the
        ``seconds`` it took (the time to done, for a wait that ended done)."""
        if outcome not in WAIT_OUTCOMES:
            raise ValueError(f"outcome must be one of {WAIT_OUTCOMES}, got {outcome!r}")
        with self._lock:
            counters = self._operations.get(operation)
            if counters is None:
                counters = self._new_operation(operation)
            counters.waits[outcome] = counters.waits.get(outcome, 0) + 1
            counters.polls += polls
            if outcome == "done":
                counters.wait_seconds.add(seconds)

    def _new_operation(self, operation: str) -> _Counters:
        if len(self._operations) >= self.max_operations:
            counters = self._operations.get(OTHER_KEY)
            if counters is None:
                counters = self._operations[OTHER_KEY] = _Counters()
            return counters
        counters = self._operations[operation] = _Counters()
        return counters

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Plain, JSON-serialisable counts keyed by operation name, plus :data:`TOTAL_KEY`."""
        with self._lock:
            self._apply_records()
            copies = {name: counters.copy() for name, counters in self._operations.items()}
        total = _Counters()
        result: dict[str, dict[str, Any]] = {}
        for name in sorted(copies):
            total.merge(copies[name])
            result[name] = copies[name].as_dict()
        result[TOTAL_KEY] = total.as_dict()
        return result

    def operations(self) -> list[str]:
        """The operation names seen so far, sorted."""
        with self._lock:
            self._apply_records()
            return sorted(self._operations)

    def reset(self) -> None:
        """Forget every count."""
        with self._lock:
            self._records.clear()
            self._running = []
            self._operations.clear()

    _reset_state = reset  # testing.reset_state()

    def __getstate__(self) -> dict[str, Any]:
        # The lock cannot be pickled.
        with self._lock:
            self._apply_records()
            state = self.__dict__.copy()
            state["_operations"] = {k: v.copy() for k, v in self._operations.items()}
        del state["_lock"]
        del state["_records"]
        del state["_running"]  # counted as in flight, and never ended in the copy
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Stats pickled before the events carried call_elapsed kept a clock and the
        # calls in flight.
        for stale in ("_clock", "_started", "max_in_flight"):
            state.pop(stale, None)
        self.__dict__.update(state)
        self._lock = forksafe.lock()
        self._records = collections.deque()
        self._running = []
        track(self)

