"""The circuit breaker: stop calling a service that is down, probe it, resume.

Per service key (``scheme://host`` by default, the vendor's name for presets), the
breaker is *closed* (attempts go out), *open* (attempts are refused at once with
:class:`~requests_smartretry.errors.CircuitOpenError`, no network touched) or *half-open*
(a bounded number of probes go out; if all succeed it closes, a failure reopens it).

It opens on ``failure_threshold`` consecutive failures and/or when failures make up
``failure_rate`` of the requests in a sliding ``window`` holding at least
``minimum_requests``.  A failure is an attempt whose verdict is retryable (network,
timeout, 5xx, 429); 4xx and business errors mean the service answered, and count as
successes — unless ``slow_call_seconds`` is set and the attempt took at least that long
(a vendor slowing down before it fails): then it counts as a failure here, and only here.
The state lives in a state store (this process by default, Redis with ``state=``), so a
fleet of workers can share one breaker.

An operator steers it per service: :meth:`CircuitBreaker.force_open` (every attempt
refused, no probe, until told otherwise), :meth:`CircuitBreaker.force_close` (every
attempt admitted, nothing counted) and :meth:`CircuitBreaker.reset` (closed, counters
empty); with a Redis store the whole fleet follows within 100 ms.  Listeners
(:meth:`CircuitBreaker.on_state_change`) are told each transition this process sees.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Callable, Optional

from . import forksafe
from .errors import CircuitOpenError
from .events import AttemptEvent, EventKind
from .state import (
    CLOSED,
    FORCED_CLOSED,
    FORCED_OPEN,
    STATE_NAMES,
    BreakerSettings,
    BreakerStatus,
    StateStore,
    StoreUser,
)
from .testing import track

__all__ = ["CircuitBreaker", "StateListener"]

_log = logging.getLogger("requests_smartretry")
_CLOSED_NAME = STATE_NAMES[CLOSED]

#: ``listener(service, old, new)``: a transition of ``service``'s breaker, states named as
#: :meth:`CircuitBreaker.state` names them.
StateListener = Callable[[str, str, str], None]


class CircuitBreaker(StoreUser):
    """A circuit breaker per service key, consulted before every attempt.

    Example::

        breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=30.0,
                                 slow_call_seconds=20.0)
        breaker.on_state_change(lambda service, old, new: print(service, old, "->", new))
        session = smart_session(breaker=breaker)
        try:
            session.get("https://api.example.com/v1/status")
        except CircuitOpenError as exc:       # also a requests.ConnectionError
            print(f"{exc.service} is down; next probe in {exc.retry_in:.1f}s")
        breaker.force_open("https://api.example.com")    # during a vendor incident

    States (:meth:`state`): ``"closed"``, ``"open"``, ``"half_open"``, and the operator's
    ``"forced_open"`` / ``"forced_closed"``, held until :meth:`reset`.

    Thread-safe: the state is updated atomically by the store, which never holds a lock
    around a network call.  Picklable (the store's state is copied, or re-connected for
    Redis; listeners are pickled as they are, so give module-level functions).  ``clock``
    (seconds, monotonic) is injectable for tests; a Redis store uses the Redis server's
    clock instead.
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
        slow_call_seconds: Optional[float] = None,
        listeners: Iterable[StateListener] = (),
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
        if slow_call_seconds is not None:
            _check_number("slow_call_seconds", slow_call_seconds, minimum=0, open_min=True)
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
        #: Seconds from which an attempt counts as a failure for this breaker (``None``: off).
        self.slow_call_seconds = (None if slow_call_seconds is None
                                  else float(slow_call_seconds))
        self._listeners: list[StateListener] = []
        self._init_listening()
        self._init_store(store)
        self._clock = clock
        for listener in listeners:
            self.on_state_change(listener)

    def _init_listening(self) -> None:
        self._lock = forksafe.lock()
        # The state each service was last seen in by this process (for the listeners).
        self._known: dict[str, str] = {}
        # Transitions seen and not yet told, in the order seen; one thread at a time tells
        # them (see _saw), so that the listeners hear each service's changes in order.
        self._untold: deque[tuple[str, str, str]] = deque()
        self._telling = False

    def __repr__(self) -> str:
        s = self.settings
        rules = []
        if s.failure_threshold:
            rules.append(f"failure_threshold={s.failure_threshold:g}")
        if s.failure_rate:
            rules.append(f"failure_rate={s.failure_rate:g}, window={s.window:g}, "
                         f"minimum_requests={s.minimum_requests}")
        if self.slow_call_seconds is not None:
            rules.append(f"slow_call_seconds={self.slow_call_seconds:g}")
        return (f"CircuitBreaker({', '.join(rules)}, recovery_timeout={s.recovery_timeout:g}, "
                f"half_open_probes={s.half_open_probes}, store={self.store!r})")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"], state["_known"], state["_untold"], state["_telling"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # (A breaker pickled before listeners and slow calls existed has neither.)
        self.__dict__.update({"_listeners": [], "slow_call_seconds": None, **state})
        self._init_listening()
        track(self)  # a copy is reset by testing.reset_state() too

    def _reset_state(self) -> None:
        """Forget the state kept in this process, and what the listeners were last told."""
        with self._lock:
            self._known.clear()
            self._untold.clear()
        super()._reset_state()

    # -- the engine's side -----------------------------------------------------------

    def before_attempt(self, service: str) -> int:
        """Admit an attempt on ``service``: its ticket (0 for an ordinary attempt, the
        half-open round for a probe), to hand back with its result to
        :meth:`after_attempt`.  Raises :class:`CircuitOpenError` when the breaker refuses."""
        admission = self.store.breaker_admit(service, self.settings, self._clock())
        if self._listeners:
            self._saw(service, STATE_NAMES[admission.state])
        if not admission.allowed:
            raise CircuitOpenError(service, admission.retry_in,
                                   forced=admission.state == FORCED_OPEN)
        return admission.ticket

    def after_attempt(self, service: str, ticket: int, *, failed: bool,
                      weight: float = 1.0, elapsed: Optional[float] = None) -> None:
        """Record the result of the attempt admitted with ``ticket``: ``failed`` (a
        retryable verdict) counts ``weight`` towards opening; a probe's result decides its
        half-open round, an ordinary attempt's never does.  An attempt that took
        ``elapsed >= slow_call_seconds`` counts as failed (weight 1) whatever its result."""
        slow = self.slow_call_seconds
        if not failed and slow is not None and elapsed is not None and elapsed >= slow:
            failed, weight = True, 1.0
        state = self.store.breaker_record(service, self.settings, self._clock(),
                                          failed=failed, weight=weight, ticket=ticket)
        if self._listeners:
            self._saw(service, state)

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
        self.after_attempt(event.service, 0, failed=failed, weight=weight,
                           elapsed=event.elapsed)

    # -- the operator's side ---------------------------------------------------------

    def force_open(self, service: str) -> None:
        """Refuse every attempt on ``service`` (no probe) until :meth:`force_close` or
        :meth:`reset`: a vendor incident.  Shared by every process of a Redis store."""
        self._set(service, FORCED_OPEN)

    def force_close(self, service: str) -> None:
        """Admit every attempt on ``service`` and count nothing, until :meth:`force_open`
        or :meth:`reset`.  Shared by every process of a Redis store."""
        self._set(service, FORCED_CLOSED)

    def reset(self, service: str) -> None:
        """Close ``service``'s breaker with empty counters (ending a forced state).  Shared
        by every process of a Redis store."""
        self._set(service, CLOSED)

    def _set(self, service: str, state: int) -> None:
        if not isinstance(service, str) or not service:
            raise ValueError(f"service must be a non-empty string (the breaker's key, "
                             f"e.g. 'https://api.example.com'), got {service!r}")
        before = self.store.breaker_set(service, self.settings, self._clock(), state)
        if self._listeners:
            with self._lock:  # what the store says it was, unless this process saw later
                self._known.setdefault(service, before)
            self._saw(service, STATE_NAMES[state])

    def on_state_change(self, listener: StateListener) -> StateListener:
        """Call ``listener(service, old, new)`` on each transition this process sees (its
        own attempts' and its operator calls'; with a Redis store, another process's
        transition is seen here at this process's next attempt on the service).  Returns
        ``listener``, so that it also serves as a decorator.  Each change is told once, in
        the order this process saw them.  A listener runs in the thread of an attempt that
        saw a change, outside any lock (it may call :meth:`force_open` or :meth:`state`;
        the change it makes is told after it returns); while it runs, changes other threads
        see queue behind it and that thread tells them too, so keep it quick: its time is
        the attempt's.  One that raises is logged, not propagated."""
        if not callable(listener):
            raise TypeError(f"listener must be callable(service, old, new), got {listener!r}")
        with self._lock:
            self._listeners = [*self._listeners, listener]
        return listener

    def _saw(self, service: str, state: str) -> None:
        """``service`` is in ``state`` now: tell the listeners if it was not before.  The
        listeners run outside the lock; while one thread tells, another's transitions
        queue behind (that thread tells them too), so they are heard in the order seen."""
        if self._known.get(service, _CLOSED_NAME) == state:
            return  # the common case, without the lock
        with self._lock:
            old = self._known.get(service, _CLOSED_NAME)
            if old == state:
                return
            self._known[service] = state
            self._untold.append((service, old, state))
            if self._telling:
                return  # (also a listener's own force_open: told after it returns)
            self._telling = True
        try:
            while True:
                with self._lock:
                    if not self._untold:
                        self._telling = False
                        return
                    change = self._untold.popleft()
                    listeners = self._listeners
                for listener in listeners:
                    try:
                        listener(*change)
                    except Exception:
                        _log.exception("requests_smartretry: breaker state listener %r "
                                       "raised", listener)
        except BaseException:
            with self._lock:
                self._telling = False
            raise

    # -- inspection ------------------------------------------------------------------

    def status(self, service: str) -> BreakerStatus:
        """The current state of ``service``'s breaker (read-only)."""
        return self.store.breaker_status(service, self.settings, self._clock())

    def state(self, service: str) -> str:
        """``"closed"``, ``"open"``, ``"half_open"``, ``"forced_open"`` or
        ``"forced_closed"`` for ``service``."""
        return self.status(service).state


def _check_number(name: str, value: Any, *, minimum: float, open_min: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < minimum or (open_min and value == minimum):
        relation = ">" if open_min else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum:g}, got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
