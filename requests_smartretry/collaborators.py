"""The shared collaborators of a retrying transport, checked once: statistics, the circuit
breaker, the retry budget and the state store they keep their state in.

Both transports (the ``requests`` adapter and the httpx transport) take the same keywords
and wire them the same way, here.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from .budget import DEFAULT_BUDGET, RetryBudget
from .engine import BreakerGate, BudgetGate
from .state import StateStore, resolve_store
from .stats import Stats
from .throttle import Throttle

__all__ = ["Collaborators", "resolve_collaborators", "resolve_throttle"]

Collaborators = tuple[Optional[Stats], Optional[BreakerGate], Optional[BudgetGate],
                      Optional[StateStore]]


def resolve_collaborators(
    stats: Union[Stats, Literal[False], None],
    breaker: Optional[BreakerGate],
    budget: Any,
    state: Any,
) -> Collaborators:
    """(stats, breaker, budget, store) as a transport keeps them.

    ``stats``: ``None`` gives the transport its own :class:`Stats`, a ``Stats`` is shared,
    ``False`` turns counting off.  ``budget``: the default sentinel gives a fresh
    :class:`RetryBudget`.  ``state``: a URL, a Redis client or a store, attached to the
    breaker and the budget.
    """
    if stats is None:
        stats = Stats()
    elif stats is not False and not isinstance(stats, Stats):
        raise TypeError(f"stats must be a Stats, None or False, got {stats!r}")
    if budget is DEFAULT_BUDGET:
        budget = RetryBudget()
    for name, gate, method, kind in (
        ("breaker", breaker, "before_attempt", "CircuitBreaker"),
        ("budget", budget, "allow_retry", "RetryBudget"),
    ):
        if gate is not None and not callable(getattr(gate, method, None)):
            raise TypeError(f"{name} must be None or a {kind} (with {method}()), "
                            f"got {gate!r}")
    store = resolve_store(state)
    if store is not None:
        for gate in (breaker, budget):
            attach = getattr(gate, "use_store", None)
            if attach is not None:
                attach(store)
    return (stats or None), breaker, budget, store


def resolve_throttle(throttle: Any, store: Optional[StateStore]) -> Optional[Throttle]:
    """``throttle=`` checked (``None`` or a :class:`Throttle`), sharing its pace through
    ``store`` when that is a Redis store."""
    if throttle is None:
        return None
    if not isinstance(throttle, Throttle):
        raise TypeError(f"throttle must be None or a Throttle, got {throttle!r}")
    if store is not None:
        throttle.use_store(store)
    return throttle
