"""What the exporters' gauges read: the state that decides whether calls are sent.

Counters come from the attempt events; a gauge is read when scraped.  A hook learns the
breaker and budget of every transport it is installed on (``build_hooks`` calls its
``watch_state``) and the services from its events; a scrape then reads, per service:

- ``breaker_state``: 1 for the breaker's current state, 0 for the others;
- ``budget_tokens``: the retry tokens left;
- ``throttle_rate``: the rate in force (turns per second; ``+Inf``: not paced), which an
  adaptive throttle learned (the fleet's, with a Redis store).

When several breakers (or budgets) of this process serve one service, the gauge shows the
worst: the most open state, the fewest tokens, the lowest rate.  A new gauge is one more
:data:`GAUGES` row and one more ``watch_state`` keyword.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .. import forksafe
from ..state import STATE_NAMES

__all__ = ["BREAKER_STATES", "GAUGES", "Gauge", "Watched", "WatchesState"]

#: Breaker states from the least to the most severe (the order "worst" follows).
BREAKER_STATES = ("closed", "forced_closed", "half_open", "open", "forced_open")
assert set(BREAKER_STATES) == set(STATE_NAMES.values())

#: Services remembered per exporter (the most recently called): a bound on label values.
MAX_SERVICES = 1000


@dataclass(frozen=True)
class Gauge:
    """One gauge: which watched object it reads, how, and how several readings combine."""

    name: str  # suffix of the metric name
    gate: str  # the watch_state keyword it reads
    description: str
    unit: str
    read: Callable[[Any, str], Any]
    worst: Callable[[Any, Any], Any]


def _breaker_state(breaker: Any, service: str) -> str:
    return str(breaker.state(service))


def _budget_tokens(budget: Any, service: str) -> float:
    return float(budget.tokens(service))


def _throttle_rate(throttle: Any, service: str) -> float:
    return float(throttle.rate(service))


def _more_open(a: str, b: str) -> str:
    return a if BREAKER_STATES.index(a) >= BREAKER_STATES.index(b) else b


GAUGES = (
    Gauge("breaker_state", "breaker",
          "Circuit breaker state per service: 1 for the current state, 0 for the others.",
          "", _breaker_state, _more_open),
    Gauge("budget_tokens", "budget", "Retry-budget tokens left per service.",
          "{token}", _budget_tokens, min),
    Gauge("throttle_rate", "throttle",
          "Throttle rate in force per service (turns per second; +Inf: not paced).",
          "{turn}/s", _throttle_rate, min),
)


class Watched:
    """The breakers and budgets an exporter reads, and the services its events named.

    Thread-safe.  Holds the watched objects weakly (a dropped session's breaker is not kept
    alive by a process-wide registry), strongly only those that take no weak reference.
    """

    def __init__(self) -> None:
        self._lock = forksafe.lock()
        self._gates: dict[str, weakref.WeakSet[Any]] = {g.gate: weakref.WeakSet()
                                                         for g in GAUGES}
        self._strong: dict[str, list[Any]] = {g.gate: [] for g in GAUGES}
        self._services: dict[str, None] = {}

    def watch(self, **gates: Any) -> None:
        """Read these objects (``breaker=``, ``budget=``, ``throttle=``; ``None`` is
        skipped)."""
        with self._lock:
            for name, gate in gates.items():
                if gate is None or name not in self._gates:
                    continue
                try:
                    self._gates[name].add(gate)
                except TypeError:  # no weak reference to it
                    if not any(kept is gate for kept in self._strong[name]):
                        self._strong[name].append(gate)

    def saw(self, service: str) -> None:
        """A call to ``service`` (its first START): report it from now on."""
        services = self._services
        if service in services:
            return
        with self._lock:
            services[service] = None
            if len(services) > MAX_SERVICES:
                del services[next(iter(services))]

    def readings(self, gauge: Gauge) -> Iterator[tuple[str, Any]]:
        """(service, value) for every service with a watched object of ``gauge``'s kind; a
        reading that fails (a store gone wrong) is skipped."""
        with self._lock:
            gates = [*self._gates[gauge.gate], *self._strong[gauge.gate]]
            services = list(self._services)
        if not gates:
            return
        for service in services:
            value: Optional[Any] = None
            for gate in gates:
                try:
                    reading = gauge.read(gate, service)
                except Exception:
                    continue
                value = reading if value is None else gauge.worst(value, reading)
            if value is not None:
                yield service, value


class WatchesState:
    """An exporter's side of the gauges: told where it is installed, and told of more."""

    def _gauge_sources(self) -> Watched:
        raise NotImplementedError

    def installed(self, *, breaker: Any = None, budget: Any = None, throttle: Any = None,
                  **settings: Any) -> None:
        """Told by a session (adapter, httpx client, ``execute_with_retry``) the hook is
        installed on: its breaker, budget and throttle join the gauges."""
        self.watch_state(breaker=breaker, budget=budget, throttle=throttle)

    def watch_state(self, *, breaker: Any = None, budget: Any = None,
                    throttle: Any = None) -> None:
        """Report the gauges of this breaker, budget and throttle too (for one the hook
        does not see installed)."""
        self._gauge_sources().watch(breaker=breaker, budget=budget, throttle=throttle)
