"""The retry budget: retries as a bounded share of calls, per service.

A token bucket per service key, in the style of gRPC's retry throttling, botocore's retry
quota and Finagle's RetryBudget: every call deposits ``ratio`` tokens, every retry costs
one, and ``min_per_second`` tokens trickle in whatever the traffic so that a quiet
service may still retry.  The bucket holds at most ``max_tokens`` (and starts full).  In
a total outage retries stop once the bucket is empty, so the server sees about
``1 + ratio`` attempts per call instead of ``1 + max_retries``.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from typing import Any, Callable, Optional

from .events import AttemptEvent, EventKind
from .state import BudgetSettings, StateStore, StoreUser

__all__ = ["DEFAULT_BUDGET", "RetryBudget"]


_START = EventKind.START
_REJECTED = EventKind.REJECTED
# Deposits gather locally until they make a whole token (less a rounding margin).
_WHOLE_TOKEN = 1.0 - 1e-9


class _DefaultBudget:
    """The adapter's "no budget argument given" marker: use ``RetryBudget()``."""

    def __repr__(self) -> str:
        return "DEFAULT_BUDGET"


#: Passed (or left) as ``budget=``: a fresh ``RetryBudget()``; ``budget=None`` means none.
DEFAULT_BUDGET: Any = _DefaultBudget()


class RetryBudget(StoreUser):
    """A retry budget per service key, consulted before every retry.

    Example::

        budget = RetryBudget(ratio=0.1, max_tokens=20, min_per_second=1.0)
        session = smart_session(max_retries=3, budget=budget)
        budget.tokens("https://api.example.com")     # what is left to spend

    ``SmartRetryAdapter`` uses ``RetryBudget()`` unless told otherwise (``budget=None``
    turns budgeting off).  Thread-safe (the store updates atomically; deposits are
    gathered locally until they make a whole token or a retry asks); picklable.
    ``clock`` (seconds, monotonic) is injectable for tests; a Redis store uses the Redis
    server's clock instead.
    """

    def __init__(
        self,
        ratio: float = 0.1,
        *,
        max_tokens: float = 20.0,
        min_per_second: float = 1.0,
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
        self._lock = threading.Lock()
        # Deposits not yet written to the store, per service: sent with the next spend, or
        # once they make a whole token, so that a healthy request costs a shared store
        # a round trip only every 1/ratio calls.
        self._pending: dict[str, float] = {}

    def __repr__(self) -> str:
        s = self.settings
        return (f"RetryBudget(ratio={s.ratio:g}, max_tokens={s.max_tokens:g}, "
                f"min_per_second={s.min_per_second:g}, store={self.store!r})")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        with self._lock:
            state["_pending"] = dict(self._pending)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _take_pending(self, service: str) -> float:
        with self._lock:
            return self._pending.pop(service, 0.0)

    def allow_retry(self, service: str) -> bool:
        """Spend one token for a retry on ``service``; ``False`` (nothing spent) if short."""
        spent, _ = self.store.budget_change(service, self.settings, self._clock(),
                                            self._take_pending(service), 1.0)
        return spent

    def __call__(self, event: AttemptEvent) -> None:
        """Deposit for each call (its first attempt's START); refund a granted retry that
        the breaker then refused (a REJECTED event after the first attempt)."""
        kind = event.kind
        if kind is _START:
            ratio = self.settings.ratio
            if event.attempt != 1 or ratio <= 0:
                return
            service = event.service
            with self._lock:
                pending = self._pending.get(service, 0.0) + ratio
                if pending < _WHOLE_TOKEN:
                    self._pending[service] = pending
                    return
                self._pending.pop(service, None)
            self.store.budget_change(service, self.settings, self._clock(), pending, 0.0)
        elif kind is _REJECTED and event.attempt > 1:
            self.store.budget_change(event.service, self.settings, self._clock(),
                                     1.0 + self._take_pending(event.service), 0.0)

    def tokens(self, service: str) -> float:
        """The tokens ``service`` has left (a read: adds nothing, spends nothing)."""
        _, balance = self.store.budget_change(service, self.settings, self._clock(),
                                              self._take_pending(service), 0.0)
        return balance
