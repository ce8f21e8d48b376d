"""The retry loop, shared by the HTTP adapter and the callable API.

The loop knows nothing of HTTP: an *attempt function* performs one attempt and returns an
:class:`Outcome` (its classification, its value or error, and whether repeating it is
safe); the loop decides, waits and emits one event per step to the hooks.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, Protocol, TypeVar, Union

from . import testing as _testing
from .backoff import backoff_delay
from .classify import Classification
from .deadline import RetryScope, current_scope, retry_scope
from .errors import CircuitOpenError, attach_history
from .events import AttemptEvent, CallEvents, EventKind, Hook, Verdict
from .log import LoggingHook
from .policy import ResolvedBackoff, RetryPolicy, VerdictRule

__all__ = [
    "BreakerGate",
    "BudgetGate",
    "CallInfo",
    "Finished",
    "Outcome",
    "build_hooks",
    "check_clocks",
    "check_hooks",
    "run_call",
]

T = TypeVar("T")
_log = logging.getLogger("requests_smartretry")
# Enum members read through their class cost a slow class-attribute lookup (Python 3.11):
# the ones every request reads are module constants.
_START = EventKind.START
_SUCCESS = EventKind.SUCCESS
_SUCCESS_VERDICT = Verdict.SUCCESS


class BreakerGate(Protocol):
    """What the loop asks of a circuit breaker (it also receives every event as a hook)."""

    def before_attempt(self, service: str) -> None:
        """Raise :class:`CircuitOpenError` to refuse an attempt on ``service``."""

    def __call__(self, event: AttemptEvent) -> None: ...


class BudgetGate(Protocol):
    """What the loop asks of a retry budget (it also receives every event as a hook)."""

    def allow_retry(self, service: str) -> bool:
        """Spend from the budget for one retry on ``service``; ``False`` when spent."""

    def __call__(self, event: AttemptEvent) -> None: ...


@dataclass(frozen=True)
class CallInfo:
    """What the events say about the call: its name, service key, method and URL."""

    operation: str
    service: str
    method: Optional[str] = None
    url: Optional[str] = None


@dataclass
class Outcome(Generic[T]):
    """The result of one attempt, as the attempt function reports it.

    Not frozen (one is built per attempt, and a frozen ``__init__`` costs three times as
    much); the engine treats it as a value and never changes one.
    """

    classification: Classification
    #: The attempt's value (a Response, a return value); kept even for failed statuses.
    value: Optional[T] = None
    #: The exception the attempt raised, re-raised if the call ends on it.
    error: Optional[BaseException] = None
    #: The failure as ``on_retry`` and the events see it (an ``HTTPError`` for a response).
    signal: Optional[BaseException] = None
    status_code: Optional[int] = None
    #: Set when the attempt knows that repeating it is not allowed ("unsafe",
    #: "not_replayable"), whatever the verdict.
    veto: Optional[str] = None
    #: Seconds to wait before the next attempt when the attempt decided it itself (a
    #: ``urllib3.Retry`` did): the policy's backoff and Retry-After rules are skipped.
    wait: Optional[float] = None


@dataclass
class Finished(Generic[T]):
    """How the call ended: the last attempt's outcome and every event of the call."""

    outcome: Outcome[T]
    history: tuple[AttemptEvent, ...] = field(default=())
    give_up_reason: Optional[str] = None

    def unwrap(self) -> T:
        """The call's value, or its last error raised with the attempt history attached
        (and a note saying why it was not retried, when that is not obvious)."""
        error = self.outcome.error
        if error is not None:
            note = None
            if self.give_up_reason not in (None, "exhausted", "not_retryable",
                                           "retry_exhausted"):
                note = f"requests_smartretry: not retried ({self.give_up_reason})"
            attach_history(error, self.history, note)
            raise error
        return self.outcome.value  # type: ignore[return-value]  # set on success


def check_hooks(hooks: Any) -> tuple[Hook, ...]:
    """``hooks=`` as a tuple: one callable or a sequence of them."""
    if callable(hooks):
        return (hooks,)
    if not isinstance(hooks, (tuple, list)):
        raise TypeError(f"hooks must be a callable or a sequence of callables, got {hooks!r}")
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"hooks must contain callables, got {hook!r}")
    return tuple(hooks)


def check_clocks(sleep: Any, clock: Any) -> None:
    """``sleep=`` and ``clock=`` must be callables."""
    for name, fn in (("sleep", sleep), ("clock", clock)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {fn!r}")


def build_hooks(
    policy: RetryPolicy,
    *,
    stats: Optional[Hook] = None,
    extra: tuple[Hook, ...] = (),
    breaker: Optional[BreakerGate] = None,
    budget: Optional[BudgetGate] = None,
) -> tuple[Hook, ...]:
    """The consumers of a call's events, in the order they see each one: log lines,
    statistics, the policy's hooks, the caller's, then the breaker and the budget."""
    hooks: list[Hook] = []
    if policy.log:
        hooks.append(LoggingHook(policy.lang, backoff_max=policy.backoff_max))
    if stats is not None:
        hooks.append(stats)
    hooks.extend(policy.hooks)
    hooks.extend(extra)
    hooks.extend(g for g in (breaker, budget) if g is not None)
    return tuple(hooks)


def run_call(
    policy: RetryPolicy,
    call: CallInfo,
    attempt: Callable[[int], Outcome[T]],
    *,
    hooks: tuple[Hook, ...] = (),
    breaker: Optional[BreakerGate] = None,
    budget: Optional[BudgetGate] = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: Any = random,
    closed: Optional[Callable[[], bool]] = None,
) -> Finished[T]:
    """Run ``attempt(1)``, ``attempt(2)``… as ``policy`` allows and return how it ended.

    Raises only :class:`CircuitOpenError` (the breaker refused the first attempt); every
    other ending, success or failure, comes back as :class:`Finished`.  ``closed``, when
    given, is asked before each retry (and again after its backoff wait): once it says
    True, the call gives up with reason ``"closed"`` and sends nothing more.

    With ``policy.deadline`` the call runs inside a retry scope ending at the deadline, so
    attempts (and nested smart calls) see what is left; a wait that cannot fit before it
    ends the call with reason ``"deadline"``.
    """
    # This setup runs for every request (current_scope is a C-level accessor).
    scope = current_scope()
    if policy.deadline is None:
        return _run_call(policy, call, attempt, hooks, breaker, budget, sleep, clock, rng,
                         closed, scope, scope, None)
    ends_at = clock() + policy.deadline  # in the (injectable) clock's time
    with retry_scope(time.monotonic() + policy.deadline) as inner:
        return _run_call(policy, call, attempt, hooks, breaker, budget, sleep, clock, rng,
                         closed, scope, inner, ends_at)


def _run_call(
    policy: RetryPolicy,
    call: CallInfo,
    attempt: Callable[[int], Outcome[T]],
    hooks: tuple[Hook, ...],
    breaker: Optional[BreakerGate],
    budget: Optional[BudgetGate],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    rng: Any,
    closed: Optional[Callable[[], bool]],
    outer: Optional[RetryScope],
    scope: Optional[RetryScope],
    ends_at: Optional[float],
) -> Finished[T]:
    """:func:`run_call`'s loop: ``outer`` is the enclosing call's scope, ``scope`` the one
    the attempts run in (``outer`` unless this call has a deadline, ending at ``ends_at``
    on ``clock``)."""
    max_attempts = policy.max_retries + 1
    if outer is not None and policy.nested == "single":
        max_attempts = 1  # the enclosing call does the retrying
    capped = _testing._attempts  # None unless test mode caps the attempts
    if capped is not None:
        max_attempts = min(max_attempts, capped)
    events = CallEvents(hooks, call.operation, call.service, max_attempts,
                        call.method, call.url)
    emit = events.emit
    history = events.history

    previous_wait: Optional[float] = None
    outcome: Optional[Outcome[T]] = None
    call_started = 0.0  # clock() at the first attempt's start
    failures_by_verdict: dict[Verdict, int] = {}  # for per-verdict retry limits
    for number in range(1, max_attempts + 1):
        if breaker is not None:
            try:
                breaker.before_attempt(call.service)
            except CircuitOpenError as exc:
                emit(EventKind.REJECTED, number,
                     {"wait": exc.retry_in, "reason": "circuit_open", "error": exc})
                if outcome is None:
                    exc.retry_history = tuple(history)  # type: ignore[attr-defined]
                    raise
                emit(EventKind.GIVE_UP, number - 1,
                     {"verdict": outcome.classification.verdict,
                      "reason": outcome.classification.reason,
                      "give_up_reason": "circuit_open",
                      "call_elapsed": clock() - call_started})
                return Finished(outcome, tuple(history), "circuit_open")
        emit(_START, number)
        started = clock()
        if number == 1:
            call_started = started
        try:
            outcome = attempt(number)
        except BaseException as exc:
            # A hook of the attempt (a signer, prepare_attempt) raised, or the caller was
            # interrupted: the call ends here, but its events still close it out.
            reason = type(exc).__name__
            ended = clock()
            emit(EventKind.FAILURE, number,
                 {"verdict": Verdict.PERMANENT, "reason": reason, "error": exc,
                  "elapsed": ended - started})
            emit(EventKind.GIVE_UP, number,
                 {"verdict": Verdict.PERMANENT, "reason": reason, "give_up_reason": "error",
                  "call_elapsed": ended - call_started})
            attach_history(exc, tuple(history))
            raise
        ended = clock()
        elapsed = ended - started
        verdict = outcome.classification
        if verdict.verdict is _SUCCESS_VERDICT:
            emit(_SUCCESS, number,
                 {"verdict": _SUCCESS_VERDICT, "elapsed": elapsed,
                  "status_code": outcome.status_code, "call_elapsed": ended - call_started})
            return Finished(outcome, tuple(history))
        rule = policy.rule_for(verdict.verdict)
        emit(EventKind.FAILURE, number,
             {"verdict": verdict.verdict, "reason": verdict.reason,
              "error": outcome.signal or outcome.error, "status_code": outcome.status_code,
              "elapsed": elapsed, "retry_after": verdict.retry_after,
              "weight": 1.0 if rule is None else rule.breaker_weight})
        seen = failures_by_verdict[verdict.verdict] = failures_by_verdict.get(
            verdict.verdict, 0) + 1

        give_up, wait = _decide(policy, verdict, outcome, number, max_attempts, previous_wait,
                                rng, _time_left(scope, ends_at, clock), rule=rule, seen=seen)
        if give_up is None and closed is not None and closed():
            give_up = "closed"
        if give_up is None and budget is not None and not budget.allow_retry(call.service):
            give_up = "budget"
        if give_up is not None:
            cap = (rule.backoff_for(policy) if rule is not None else policy).backoff_max
            emit(EventKind.GIVE_UP, number,
                 {"verdict": verdict.verdict, "reason": verdict.reason,
                  "status_code": outcome.status_code, "retry_after": verdict.retry_after,
                  "give_up_reason": give_up, "backoff_cap": cap,
                  "call_elapsed": clock() - call_started})
            return Finished(outcome, tuple(history), give_up)

        emit(EventKind.RETRY, number,  # the wait that follows: none in test mode
             {"verdict": verdict.verdict, "reason": verdict.reason,
              "wait": 0.0 if _testing._testing else wait,
              "retry_after": verdict.retry_after})
        _notify_on_retry(policy, number, outcome.signal or outcome.error)
        try:
            _testing.sleeper(sleep)(wait)
        except BaseException as exc:  # Ctrl-C (or a raising injected sleep) during backoff
            emit(EventKind.GIVE_UP, number,
                 {"verdict": verdict.verdict, "reason": verdict.reason,
                  "give_up_reason": "interrupted", "call_elapsed": clock() - call_started})
            attach_history(exc, tuple(history))
            raise
        if closed is not None and closed():  # closed during the wait
            emit(EventKind.GIVE_UP, number,
                 {"verdict": verdict.verdict, "reason": verdict.reason,
                  "status_code": outcome.status_code, "give_up_reason": "closed",
                  "call_elapsed": clock() - call_started})
            return Finished(outcome, tuple(history), "closed")
        previous_wait = wait
    raise AssertionError("unreachable: the loop returns on its last attempt")  # pragma: no cover


def _decide(
    policy: RetryPolicy,
    verdict: Classification,
    outcome: Outcome[Any],
    number: int,
    max_attempts: int,
    previous_wait: Optional[float],
    rng: Any,
    left: Optional[float],
    *,
    rule: Optional[VerdictRule] = None,
    seen: int = 1,
) -> tuple[Optional[str], float]:
    """(give-up reason, or None and the seconds to wait before the next attempt).

    ``rule`` is the policy's per-verdict rule for this failure and ``seen`` the number of
    failures with this verdict so far in the call (this one included); ``left`` is the
    time left before the deadline (``None``: none).
    """
    if not verdict.retryable:
        return outcome.veto or "not_retryable", 0.0
    if number >= max_attempts:
        return "exhausted", 0.0
    if outcome.veto is not None:
        return outcome.veto, 0.0
    if outcome.wait is not None:  # the attempt decided its wait (a urllib3 Retry)
        return _fitting(outcome.wait, left)
    settings: Union[RetryPolicy, ResolvedBackoff] = policy
    respect_retry_after = policy.respect_retry_after
    if rule is not None:
        if rule.max_retries is not None and seen > rule.max_retries:
            return "verdict_limit", 0.0
        settings = rule.backoff_for(policy)
        respect_retry_after = rule.retry_after_for(policy)
    wait = backoff_delay(settings, number, previous=previous_wait, rng=rng)
    asked = verdict.retry_after
    # A vendor hook may hand over any float: NaN is no answer.
    if asked is not None and respect_retry_after and not math.isnan(asked):
        if asked > settings.backoff_max:
            return "retry_after_too_long", 0.0
        # The server's delay is a minimum: "Retry-After: 0" (or a date our clock already
        # passed) must not turn into a burst of immediate retries.
        wait = max(wait, asked)
    return _fitting(wait, left)


def _fitting(wait: float, left: Optional[float]) -> tuple[Optional[str], float]:
    """A wait that cannot end before the deadline is not started."""
    if left is not None and wait >= left:
        return "deadline", 0.0
    return None, wait


def _time_left(scope: Optional[RetryScope], ends_at: Optional[float],
               clock: Callable[[], float]) -> Optional[float]:
    """Seconds left before the earliest deadline: the scope's (wall clock) and this
    call's own (``ends_at`` on ``clock``, which tests inject)."""
    left = None if scope is None else scope.remaining()
    if ends_at is not None:
        own = max(0.0, ends_at - clock())
        left = own if left is None else min(left, own)
    return left


def _notify_on_retry(policy: RetryPolicy, attempt: int, error: Optional[BaseException]) -> None:
    callback = policy.on_retry
    if callback is None or error is None:
        return
    try:
        callback(attempt, error)
    except Exception:
        # A broken callback must not turn a recoverable failure into a crash.
        _log.exception("requests_smartretry: on_retry callback %r raised; retrying anyway",
                       callback)
