"""The circuit breaker: stop calling a service that is down, probe it, resume.

Per service key (``scheme://host`` by default, the vendor's name for presets), the
breaker is *closed* (attempts go out), *open* (attempts are refused at once with
:class:`~requests_smartretry.errors.CircuitOpenError`, no network touched) or *half-open*
(a bounded number of probes go out; if all succeed it closes, a failure reopens it).

It opens on ``failure_threshold`` consecutive failures and/or when failures make up
``failure_rate`` of the requests in a sliding ``window`` holding at least
``minimum_requests``.  A failure is an attempt whose verdict is retryable (network,
timeout, 5xx, 429); 4xx and business errors mean the service answered, and count as
successes.  The state lives in a state store (this process by default, Redis with
``state=``), so a fleet of workers can share one breaker.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Any, Callable, Optional

from .errors import CircuitOpenError
from .events import AttemptEvent, EventKind
from .state import BreakerSettings, BreakerStatus, StateStore, StoreUser
from .testing import track

__all__ = ["CircuitBreaker"]


class CircuitBreaker(StoreUser):
    """A circuit breaker per service key, consulted before every attempt.

    Example::

        breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=30.0)
        session = smart_session(breaker=breaker)
        try:
            session.get("https://api.example.com/v1/status")
        except CircuitOpenError as exc:       # also a requests.ConnectionError
            print(f"{exc.service} is down; next probe in {exc.retry_in:.1f}s")

    Thread-safe: the state is updated atomically by the store, which never holds a lock
    around a network call.  Picklable (the store's state is copied, or re-connected for
    Redis).  ``clock`` (seconds, monotonic) is injectable for tests; a Redis store uses the
    Redis server's clock instead.
    """

    def __init__(
        self,
        failure_threshold: Optional[float] = 5,
        recovery_timeout: float = 30.0,
        *,
        half_open_probes: int = 1,
        failure_rate: Optional[float] = None,
        window: float = 60.0,
        minimum_requests: int = 20,
        store: Optional[StateStore] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold is not None:
            _check_number("failure_threshold", failure_threshold, minimum=0, open_min=True)
        _check_number("recovery_timeout", recovery_timeout, minimum=0, open_min=True)
        _check_int("half_open_probes", half_open_probes, 1)
        if failure_rate is not None:
            _check_number("failure_rate", failure_rate, minimum=0, open_min=True)
            if failure_rate > 1:
                raise ValueError(f"failure_rate must be in (0, 1], got {failure_rate!r}")
        _check_number("window", window, minimum=0, open_min=True)
        _check_int("minimum_requests", minimum_requests, 1)
        if failure_threshold is None and failure_rate is None:
            raise ValueError("failure_threshold and failure_rate cannot both be None: "
                             "the breaker would never open")
        if store is not None and not isinstance(store, StateStore):
            raise TypeError(f"store must be a StateStore, got {store!r}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self.settings = BreakerSettings(
            failure_threshold=float(failure_threshold or 0),
            recovery_timeout=float(recovery_timeout),
            half_open_probes=half_open_probes,
            failure_rate=float(failure_rate or 0),
            window=float(window),
            minimum_requests=minimum_requests,
        )
        self._init_store(store)
        self._clock = clock

    def __repr__(self) -> str:
        s = self.settings
        rules = []
        if s.failure_threshold:
            rules.append(f"failure_threshold={s.failure_threshold:g}")
        if s.failure_rate:
            rules.append(f"failure_rate={s.failure_rate:g}, window={s.window:g}, "
                         f"minimum_requests={s.minimum_requests}")
        return (f"CircuitBreaker({', '.join(rules)}, recovery_timeout={s.recovery_timeout:g}, "
                f"half_open_probes={s.half_open_probes}, store={self.store!r})")

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        track(self)  # a copy is reset by testing.reset_state() too

    # -- the engine's side -----------------------------------------------------------

    def before_attempt(self, service: str) -> int:
        """Admit an attempt on ``service``: its ticket (0 for an ordinary attempt, the
        half-open round for a probe), to hand back with its result to
        :meth:`after_attempt`.  Raises :class:`CircuitOpenError` when the breaker refuses."""
        admission = self.store.breaker_admit(service, self.settings, self._clock())
        if not admission.allowed:
            raise CircuitOpenError(service, admission.retry_in)
        return admission.ticket

    def after_attempt(self, service: str, ticket: int, *, failed: bool,
                      weight: float = 1.0) -> None:
        """Record the result of the attempt admitted with ``ticket``: ``failed`` (a
        retryable verdict) counts ``weight`` towards opening; a probe's result decides its
        half-open round, an ordinary attempt's never does."""
        self.store.breaker_record(service, self.settings, self._clock(),
                                  failed=failed, weight=weight, ticket=ticket)

    def __call__(self, event: AttemptEvent) -> None:
        """Record the result in a SUCCESS or FAILURE event, as an ordinary attempt's (for a
        breaker passed as a hook; the retry loop calls :meth:`after_attempt`)."""
        if event.kind is EventKind.SUCCESS:
            failed = False
        elif event.kind is EventKind.FAILURE:
            failed = event.verdict is not None and event.verdict.retryable
        else:
            return
        weight = float(getattr(event, "weight", 1.0)) if failed else 1.0
        self.after_attempt(event.service, 0, failed=failed, weight=weight)

    # -- inspection ------------------------------------------------------------------

    def status(self, service: str) -> BreakerStatus:
        """The current state of ``service``'s breaker (read-only)."""
        return self.store.breaker_status(service, self.settings, self._clock())

    def state(self, service: str) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` for ``service``."""
        return self.status(service).state


def _check_number(name: str, value: Any, *, minimum: float, open_min: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < minimum or (open_min and value == minimum):
        relation = ">" if open_min else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum:g}, got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
