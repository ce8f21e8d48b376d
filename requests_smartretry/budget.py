"""The retry budget: retries as a bounded share of calls, per service.

A token bucket per service key, in the style of gRPC's retry throttling and botocore's
standard retry quota: every call deposits ``ratio`` tokens, and ``min_per_second`` tokens
trickle in whatever the traffic so that a quiet service may still retry.  The bucket holds
at most ``max_tokens`` (and starts full).

**What a retry costs.**  The budget admits a call to retrying once, at its first retry,
which costs one token; the call's later retries (``max_retries >= 2``) run on the credit
of that admission and are settled when the call ends:

- the call **succeeds** (on any retry): its admission token comes back and its later
  retries cost nothing (the failures were transient: the service is fine);
- the call **ends otherwise** (its retries failed, a 404, a business error, a deadline):
  the admission token stays spent and each later retry that went out costs one token
  then, which may take the balance below zero: a debt that deposits and the trickle pay
  back before the next call is admitted.

So every retry of a call that fails costs one token, as before, while a call whose
retries save it holds exactly one token while it runs, whatever its ``max_retries``.
Paying every retry at once (and refunding them all on success) made a call that needed
two retries hold two tokens: 16 threads of such calls hold 32 > ``max_tokens`` tokens,
the 17th admission finds the bucket empty, and a refused call keeps what it spent, so the
bucket drained (74 of 80 such calls lost).  botocore refunds only the last retry, which
loses them even single-threaded.  A granted first retry that the breaker then refuses
costs nothing.

The arithmetic (``max_retries=1``; a call admitted with ``max_retries=k`` that fails
costs ``k`` tokens instead of one, so in an outage ``k`` times fewer calls are admitted and
the retries per call stay the same; ``r`` = ratio, ``m`` = min_per_second, ``R`` = calls per
second on the service, ``p`` = the share of attempts that fail).  A retry's net cost is the
chance that it fails, so in steady state the bucket pays for ``x`` retries per call with
``x * p_retry_fails = r + m / R``:

- **Transient storm** (calls fail once, the retry succeeds): every retry is refunded, the
  net cost is 0 whatever the share (67 % of calls, all of them), the rate, the thread count
  or the backoff.  The only limit is concurrency: ``max_tokens`` calls may be retrying
  (admitted, not yet ended) at once, whatever their ``max_retries``, and deposits refill
  the bucket meanwhile; 16 threads waiting 1 s each before their retry never find it
  empty.  No call is lost.
- **Total outage** (nothing is refunded): ``x = r + m / R`` retries per call, plus the
  initial ``max_tokens`` burst once.  Defaults over 1000 calls: 1.62 attempts per call at
  1 call/s, 1.17 at 10/s, 1.14 at 20/s, 1.12 at 100/s and 1000/s (1.10 in the long run).
  Backoff sleeps slow the callers, not the arithmetic, except for a few sequential callers:
  one caller that sleeps 1 s per retry makes at most ~1 call per second while retrying, so
  the trickle pays a larger share: ``x = r / (1 - m * backoff / threads)`` = 0.2 for one
  caller (1.24 attempts per call over 1000 calls, 1.20 in the long run), 0.103 for 16.
- **Brownout** (each attempt fails with chance ``p``, so a retry costs ``p`` net): every
  failed call may retry as long as ``p * p <= r + m / R``, i.e. up to ~32 % failures at
  high rates.  At 50 % the bucket drains, then allows ``x = (r + m / R) / p`` = 0.2 retries
  per call at high rates: 1.23-1.31 attempts per call from 10 to 1000 calls/s instead of
  1.5, and 11-15 % of calls fail that their retry would have saved (none for one
  sequential caller with 1 s backoff: it slows down until the trickle pays).  That is the
  budget doing its job: a service failing half its requests is not one to add load to.
- **min_per_second at low rates**: below ``R = m / (1 - r)`` (0.56 calls/s by default) the
  trickle alone pays for every retry, even in an outage: a quiet service always gets its
  retry, and the load it can add is at most ``m`` retries per second.  At 1 call/s the
  outage cost is 1 + r + m = 1.6 attempts per call.
- **Outage onset with ``max_retries=k``**: up to ``max_tokens`` calls are admitted before
  the first of them ends, each running its ``k`` retries: a burst of ``max_tokens * k``
  retries once, which the calls after it pay back (a debt of up to about
  ``max_tokens * (k - 1)``: with the defaults and ``k=2``, 20 tokens, that is 200 calls or
  40 s of trickle without retries).  A service's record unused for ``max_tokens /
  min_per_second + 60`` s is forgotten (full again), debt included.

Defaults ``ratio=0.1, max_tokens=20, min_per_second=0.5``: a storm loses no call, and an
outage at >= 20 calls per second stays <= 1.15 attempts per call (``min_per_second`` was 1:
that gave 1.17 at 20/s and let one sequential caller with 1 s backoff retry every call).
``python benchmarks/budget_model.py`` recomputes these figures with this class under a
simulated clock; tests/test_budget.py checks the storm and outage cases against a real
server.

Test mode (:func:`requests_smartretry.testing.set_testing`, ``fast_retries()``): the budget
grants every retry and spends nothing, so a test suite's results do not depend on the order
its tests run in.
"""

from __future__ import annotations

import collections
import math
import numbers
import time
from typing import Any, Callable, Optional

from . import forksafe
from . import testing as _testing
from .events import AttemptEvent, EventKind
from .state import BudgetSettings, StateStore, StoreUser

__all__ = ["DEFAULT_BUDGET", "RetryBudget"]


_START = EventKind.START
_SUCCESS = EventKind.SUCCESS
_REJECTED = EventKind.REJECTED
_GIVE_UP = EventKind.GIVE_UP
# Deposits gather locally until they make a whole token (less a rounding margin).
_WHOLE_TOKEN = 1.0 - 1e-9
# Services whose deposits may gather at once: past it, the oldest one's deposit goes to
# the store (bounded memory for a process that calls many distinct hosts).
_MAX_PENDING = 4096


def _gathered(queue: collections.deque[float]) -> float:
    """The deposits in ``queue``, taken out (each by one atomic ``popleft``: a deposit
    is taken once, by whoever gets it first)."""
    total = 0.0
    take = queue.popleft
    try:
        for _ in range(len(queue)):
            total += take()
    except IndexError:  # another thread took the rest
        pass
    return total


class _DefaultBudget:
    """The adapter's "no budget argument given" marker: use ``RetryBudget()``."""

    def __repr__(self) -> str:
        return "DEFAULT_BUDGET"


#: Passed (or left) as ``budget=``: a fresh ``RetryBudget()``; ``budget=None`` means none.
DEFAULT_BUDGET: Any = _DefaultBudget()


class RetryBudget(StoreUser):
    """A retry budget per service key, consulted before every retry.

    Example::

        budget = RetryBudget(ratio=0.1, max_tokens=20, min_per_second=0.5)
        session = smart_session(max_retries=3, budget=budget)
        budget.tokens("https://api.example.com")     # what is left to spend

    ``SmartRetryAdapter`` uses ``RetryBudget()`` unless told otherwise (``budget=None``
    turns budgeting off).  Thread-safe (the store updates atomically; deposits are
    gathered locally, without a lock, until they make a whole token or a retry asks, which
    then sees every one of them); picklable.
    ``clock`` (seconds, monotonic) is injectable for tests; a Redis store uses the Redis
    server's clock instead.
    """

    def __init__(
        self,
        ratio: float = 0.1,
        *,
        max_tokens: float = 20.0,
        min_per_second: float = 0.5,
        store: Optional[StateStore] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        given: dict[str, Any] = {"ratio": ratio, "max_tokens": max_tokens,
                                 "min_per_second": min_per_second}
        for name, value in given.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if store is not None and not isinstance(store, StateStore):
            raise TypeError(f"store must be a StateStore, got {store!r}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self.settings = BudgetSettings(ratio=float(ratio), max_tokens=float(max_tokens),
                                       min_per_second=float(min_per_second))
        self._init_store(store)
        self._clock = clock
        self._lock = forksafe.lock()
        # Deposits not yet written to the store, per service: sent with the next spend, or
        # once they make a whole token, so that a healthy request costs a shared store
        # a round trip only every 1/ratio calls.  A call's deposit is one append to its
        # service's queue, without a lock; whoever sends them takes them out one atomic
        # popleft at a time (_gathered), so each is sent once, and every deposit made
        # before a retry decision is in the queue that decision empties.
        self._pending: dict[str, collections.deque[float]] = {}

    def __repr__(self) -> str:
        s = self.settings
        return (f"RetryBudget(ratio={s.ratio:g}, max_tokens={s.max_tokens:g}, "
                f"min_per_second={s.min_per_second:g}, store={self.store!r})")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_pending"] = {service: sum(queue.copy())
                             for service, queue in self._pending.copy().items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pending = {service: collections.deque([amount])
                         for service, amount in state.get("_pending", {}).items()}
        self._lock = forksafe.lock()
        _testing.track(self)

    def _reset_state(self) -> None:
        """Every service's bucket full again (``testing.reset_state()``; a Redis store's
        shared buckets stay as they are)."""
        with self._lock:
            self._pending.clear()
        super()._reset_state()

    def _take_pending(self, service: str) -> float:
        queue = self._pending.get(service)
        return _gathered(queue) if queue else 0.0  # none, or none left: no frame

    def allow_retry(self, service: str) -> bool:
        """Spend one token to admit a call on ``service`` to retrying (the retry loop asks
        at a call's first retry); ``False`` (nothing spent) if short.

        In test mode (:func:`~requests_smartretry.testing.set_testing`) every retry is
        allowed and nothing is spent, so that a user's test suite does not depend on the
        order its tests run in."""
        if _testing._testing:
            return True
        spent, _ = self.store.budget_change(service, self.settings, self._clock(),
                                            self._take_pending(service), 1.0)
        return spent

    def __call__(self, event: AttemptEvent) -> None:
        """Deposit for each call (its first attempt's START) and settle a call's retries
        when it ends: a SUCCESS after retries gives back the admission token; a GIVE_UP
        after ``n`` attempts charges the ``n - 2`` later retries that ran on credit; a
        first retry that the breaker refused (REJECTED on attempt 2) is given back."""
        kind = event.kind
        if kind is _START:
            if event.attempt == 1:
                self.deposit(event.service)
        elif _testing._testing:
            return  # test mode spent nothing, so gives nothing back and charges nothing
        elif kind is _SUCCESS:
            if event.attempt > 1:
                self._settle(event.service, 1.0)
        elif kind is _GIVE_UP:
            if event.attempt > 2:
                self._settle(event.service, 2.0 - event.attempt)
        elif kind is _REJECTED and event.attempt == 2:
            self._settle(event.service, 1.0)

    def deposit(self, service: str) -> None:
        """One call's deposit on ``service`` (its first START; the retry loop calls it
        directly for a call that emits no events)."""
        ratio = self.settings.ratio
        if ratio <= 0:
            return
        pending = self._pending
        queue = pending.get(service)
        if queue is None:
            queue = self._new_queue(service)
        queue.append(ratio)  # no lock: one atomic append
        # A whole token gathered, or the queue let go meanwhile (evicted): to the store.
        if len(queue) * ratio >= _WHOLE_TOKEN or pending.get(service) is not queue:
            self._send(service, _gathered(queue))

    def _new_queue(self, service: str) -> collections.deque[float]:
        """``service``'s queue of deposits, made under the lock (at most ``_MAX_PENDING``
        services gather at once: the oldest one's deposits then go to the store)."""
        evicted: Optional[tuple[str, collections.deque[float]]] = None
        with self._lock:
            queue = self._pending.get(service)
            if queue is None:
                if len(self._pending) >= _MAX_PENDING:
                    oldest = next(iter(self._pending))
                    evicted = oldest, self._pending.pop(oldest)
                queue = self._pending[service] = collections.deque()
        if evicted is not None:
            self._send(evicted[0], _gathered(evicted[1]))
        return queue

    def _send(self, service: str, deposits: float) -> None:
        if deposits:
            self.store.budget_change(service, self.settings, self._clock(), deposits, 0.0)

    def refund(self, service: str, tokens: int = 1) -> None:
        """Give back the admission of a call that was granted its first retry but never
        made it (cancelled or interrupted in its backoff wait, its transport closed);
        nothing in test mode, which spent nothing."""
        if not _testing._testing:
            self._settle(service, float(tokens))

    def _settle(self, service: str, tokens: float) -> None:
        """Give back (``tokens > 0``) or charge (``< 0``, into debt if need be) what a
        call's retries cost, with the gathered deposits."""
        self.store.budget_change(service, self.settings, self._clock(),
                                 tokens + self._take_pending(service), 0.0)

    def tokens(self, service: str) -> float:
        """The tokens ``service`` has left, below zero while it pays back the retries of
        calls that failed (a read: adds nothing, spends nothing)."""
        _, balance = self.store.budget_change(service, self.settings, self._clock(),
                                              self._take_pending(service), 0.0)
        return balance
