"""The retry loop, shared by every transport and the callable API, sync and async.

The loop knows nothing of HTTP nor of I/O: an *attempt function* performs one attempt and
returns an :class:`Outcome` (its classification, its value or error, and whether repeating
it is safe); the loop (:class:`_Call`'s three transitions) is a step machine that admits,
asks for an attempt, decides why to stop (:func:`stop_reason`), asks for a wait, and emits
one event per step to the hooks.  Two small drivers perform what it asks: :func:`run_call` (the
attempt called, ``time.sleep``) and :func:`run_call_async` (the attempt awaited,
``asyncio.sleep``); as h11 and httpcore do, the decisions live once, the I/O twice.  A call whose
first attempt succeeds and whose consumers are all built-in ones emits nothing: the
statistics, the budget and the breaker are told directly and the history is built when
read (:class:`Quiet`, :class:`LazyHistory`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, Protocol, TypeVar, Union, overload

from . import testing as _testing
from .backoff import backoff_delay
from .budget import RetryBudget
from .classify import Classification, mark_final
from .deadline import RetryScope, current_scope, defer_records, retry_scope
from .errors import CircuitOpenError, ThrottledError, attach_history
from .events import AttemptEvent, CallEvents, EventKind, Hook, Verdict, next_call_id
from .log import LoggingHook
from .policy import ResolvedBackoff, RetryPolicy, VerdictRule
from .stats import Stats
from .throttle import Throttle, Turn, is_throttling

__all__ = [
    "BreakerGate",
    "BudgetGate",
    "CallInfo",
    "Finished",
    "LazyHistory",
    "Outcome",
    "Quiet",
    "build_hooks",
    "check_clocks",
    "check_hooks",
    "quiet_plan",
    "run_call",
    "run_call_async",
    "stop_reason",
]

T = TypeVar("T")
_log = logging.getLogger("requests_smartretry")
# Enum members read through their class cost a slow class-attribute lookup (Python 3.11):
# the ones every request reads are module constants.
_START = EventKind.START
_SUCCESS = EventKind.SUCCESS
_SUCCESS_VERDICT = Verdict.SUCCESS
_THROTTLED = EventKind.THROTTLED
_FAILURE = EventKind.FAILURE
_RETRY = EventKind.RETRY
_time = time.time
_CANCELLED = asyncio.CancelledError


class BreakerGate(Protocol):
    """What the loop asks of a circuit breaker.

    ``before_attempt`` admits an attempt and may return a ticket (an ``int``; ``None`` or 0
    for an ordinary attempt).  A breaker with ``after_attempt(service, ticket, *, failed,
    weight)`` is told each attempt's result with its ticket (:class:`CircuitBreaker`;
    with ``elapsed=``, the attempt's seconds, when its ``slow_call_seconds`` is set); one
    without it reads the SUCCESS and FAILURE events as a hook instead.
    """

    def before_attempt(self, service: str) -> Optional[int]:
        """Raise :class:`CircuitOpenError` to refuse an attempt on ``service``."""

    def __call__(self, event: AttemptEvent) -> None: ...


class BudgetGate(Protocol):
    """What the loop asks of a retry budget (it also receives every event as a hook).

    ``allow_retry`` is asked once per call, before its first retry; a call it admits may
    use its remaining retries (the budget settles them from the call's events)."""

    def allow_retry(self, service: str) -> bool:
        """Spend from the budget to admit a call on ``service`` to retrying; ``False``
        when spent."""

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
    #: Set when a successful attempt's value is still being received (a streamed body):
    #: the throttle's in-flight slot is handed to ``hold(release)``, which must call
    #: ``release()`` (once is enough; later calls do nothing) when the body is done.
    hold: Optional[Callable[[Callable[[], None]], None]] = None


def mark_vetoed(outcome: Outcome[Any]) -> None:
    """What this call refuses to repeat (``outcome.veto``), an enclosing retrying call (the
    callable API around the request) must not repeat either: mark the error and the
    response it carries final (see :func:`~requests_smartretry.classify.mark_final`)."""
    if outcome.veto is None:
        return
    for carrier in (outcome.error, outcome.value):
        if carrier is not None:
            mark_final(carrier, outcome.veto)


@dataclass
class Finished(Generic[T]):
    """How the call ended: the last attempt's outcome and every event of the call."""

    outcome: Outcome[T]
    #: A tuple, or for a quiet success a :class:`LazyHistory` (built when read).
    history: Sequence[AttemptEvent] = field(default=())
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
            attach_history(error, tuple(self.history), note)
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
    throttle: Any = None,
) -> tuple[Hook, ...]:
    """The consumers of a call's events, in the order they see each one: log lines,
    statistics, the policy's hooks, the caller's, then the breaker (only one without
    ``after_attempt``: the loop tells a :class:`CircuitBreaker` directly) and the budget.
    A hook with ``installed(*, lang, breaker, budget, throttle)`` is told them here."""
    hooks: list[Hook] = []
    if policy.log:
        hooks.append(LoggingHook(policy.lang, backoff_max=policy.backoff_max))
    if stats is not None:
        hooks.append(stats)
    hooks.extend(policy.hooks)
    hooks.extend(extra)
    for hook in (*policy.hooks, *extra):
        # A hook that asks is told where it is installed: an exporter's gauges read the
        # breaker and budget its calls go through, an alert speaks the calls' language.
        installed = getattr(hook, "installed", None)
        if callable(installed):
            installed(lang=policy.lang, breaker=breaker, budget=budget, throttle=throttle)
    if breaker is not None and getattr(breaker, "after_attempt", None) is None:
        hooks.append(breaker)
    if budget is not None:
        hooks.append(budget)
    return tuple(hooks)


class Quiet:
    """The built-in consumers of a transport's calls (:func:`quiet_plan`), which the loop
    tells directly while nobody else reads a call's events."""

    __slots__ = ("budget", "log", "stats")

    def __init__(self, stats: Optional[Stats], budget: Optional[RetryBudget],
                 log: Optional[LoggingHook]) -> None:
        self.stats = stats
        self.budget = budget
        self.log = log


def quiet_plan(hooks: tuple[Hook, ...]) -> Optional[Quiet]:
    """A :class:`Quiet` when every hook is a built-in consumer (exactly a :class:`Stats`,
    a :class:`RetryBudget` or a :class:`LoggingHook`, at most one of each), else None:
    a user's hook reads every event, so its calls take the general path from the start.
    Built once per transport, from the hooks it passes to :func:`run_call`."""
    found: dict[type, Any] = {}
    for hook in hooks:
        kind = type(hook)
        if kind not in (Stats, RetryBudget, LoggingHook) or kind in found:
            return None
        found[kind] = hook
    return Quiet(found.get(Stats), found.get(RetryBudget), found.get(LoggingHook))


class LazyHistory(Sequence[AttemptEvent]):
    """The START and SUCCESS events of a quiet call, built when first read.

    A read-only sequence (``len``, indexing, slicing, iteration, ``==`` with a tuple or a
    list of the same events); ``tuple(history)`` gives a tuple.  Two threads reading it at
    once may both build it: they build equal events from the same facts.
    """

    __slots__ = ("_built", "_facts")

    def __init__(self, *facts: Any) -> None:
        self._facts = facts
        self._built: Optional[tuple[AttemptEvent, ...]] = None

    def _events(self) -> tuple[AttemptEvent, ...]:
        built = self._built
        if built is None:
            built = self._built = _quiet_history(*self._facts)
        return built

    @overload
    def __getitem__(self, index: int) -> AttemptEvent: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[AttemptEvent, ...]: ...

    def __getitem__(self, index: Union[int, slice]) -> Any:
        return self._events()[index]

    def __len__(self) -> int:
        return 2

    def __iter__(self) -> Iterator[AttemptEvent]:
        return iter(self._events())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyHistory):
            other = other._events()
        elif isinstance(other, list):
            other = tuple(other)
        return self._events() == other

    __hash__ = None  # type: ignore[assignment]  # as a list: compared by value

    def __repr__(self) -> str:
        return repr(self._events())


def _quiet_history(call: CallInfo, max_attempts: int, call_id: int, wall_start: float,
                   wall_end: float, elapsed: float,
                   status: Optional[int]) -> tuple[AttemptEvent, ...]:
    """The events a quiet successful call would have emitted."""
    events = CallEvents((), call.operation, call.service, max_attempts, call.method, call.url)
    events.emit(_START, 1, {"timestamp": wall_start, "call_id": call_id})
    events.emit(_SUCCESS, 1, {"verdict": _SUCCESS_VERDICT, "elapsed": elapsed,
                              "status_code": status, "call_elapsed": elapsed,
                              "timestamp": wall_end, "call_id": call_id})
    return tuple(events.history)


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
    quiet: Optional[Quiet] = None,
    throttle: Optional[Throttle] = None,
) -> Finished[T]:
    """Run ``attempt(1)``, ``attempt(2)``… as ``policy`` allows and return how it ended:
    the synchronous driver of the step machine (:class:`_Call`), which performs what the
    machine asks (an attempt, a wait with ``sleep``) and hands back what happened.

    Raises only :class:`CircuitOpenError` (the breaker refused the first attempt); every
    other ending, success or failure, comes back as :class:`Finished`.  ``closed``, when
    given, is asked before each retry (and again after its backoff wait): once it says
    True, the call gives up with reason ``"closed"`` and sends nothing more.

    With ``policy.deadline`` the call runs inside a retry scope ending at the deadline, so
    attempts (and nested smart calls) see what is left; a wait that cannot fit before it
    ends the call with reason ``"deadline"``.

    ``quiet`` (:func:`quiet_plan`, built once by the transport) lets a call whose every
    consumer is a built-in one skip the event stream until something reads it (see
    :class:`_Call`).

    ``throttle`` gives every attempt its turn first (:meth:`_Call.take_turn`): a turn
    that must wait is a wait step like a backoff; a refusal raises :class:`ThrottledError`
    before the first attempt and ends the call (reason ``"throttled"``) before a later
    one.  The turn goes back when its attempt ends, however it ends.
    """
    outer = current_scope()  # a C-level accessor: this setup runs for every request
    if policy.deadline is None:
        return _drive(_Call(policy, call, hooks, breaker, budget, clock, rng, closed, quiet,
                            outer, outer, None, throttle), attempt, sleep)
    ends_at = clock() + policy.deadline  # in the (injectable) clock's time
    with retry_scope(time.monotonic() + policy.deadline) as inner:
        return _drive(_Call(policy, call, hooks, breaker, budget, clock, rng, closed, quiet,
                            outer, inner, ends_at, throttle), attempt, sleep)


def _drive(run: _Call[T], attempt: Callable[[int], Outcome[T]],
           sleep: Callable[[float], None]) -> Finished[T]:
    """Perform the machine's steps in this thread (see :class:`_Call`): an ``int`` is an
    attempt to make, a ``float`` the seconds to wait (a backoff or a throttle's turn), a
    :class:`Finished` the end.  What
    a step raises goes back to the machine, which closes the call's events, and is
    raised again."""
    step = run.next_attempt(1)
    while True:
        kind = step.__class__
        if kind is int:
            try:
                outcome = attempt(step)  # type: ignore[arg-type]  # an int here
            except BaseException as exc:
                run.raised(exc)
                raise
            step = run.attempted(outcome)
        elif kind is float:
            if run.notified is not None:  # an async on_retry: nothing here can await it
                _unawaited_on_retry(run)
            try:
                _testing.sleeper(sleep)(step)  # type: ignore[arg-type]  # a float here
            except BaseException as exc:
                run.interrupted(exc)
                raise
            step = run.waited()
        else:
            return step  # type: ignore[return-value]  # Finished


async def run_call_async(
    policy: RetryPolicy,
    call: CallInfo,
    attempt: Callable[[int], Awaitable[Outcome[T]]],
    *,
    hooks: tuple[Hook, ...] = (),
    breaker: Optional[BreakerGate] = None,
    budget: Optional[BudgetGate] = None,
    sleep: Optional[Callable[[float], Any]] = None,
    clock: Callable[[], float] = time.monotonic,
    rng: Any = random,
    closed: Optional[Callable[[], bool]] = None,
    quiet: Optional[Quiet] = None,
    throttle: Optional[Throttle] = None,
) -> Finished[T]:
    """:func:`run_call` for asyncio: the same machine, its attempts awaited and its waits
    ``asyncio.sleep`` (or ``sleep``: awaited when it returns an awaitable), the throttle's
    waits included.  A task cancelled during an attempt or a wait ends the call with
    give-up reason ``"cancelled"`` (its throttle turn given back); the ``CancelledError``
    propagates.

    The call's retry scope (``policy.deadline``) is a contextvar set in this task only."""
    outer = current_scope()
    if policy.deadline is None:
        return await _drive_async(_Call(policy, call, hooks, breaker, budget, clock, rng,
                                        closed, quiet, outer, outer, None, throttle),
                                  attempt, sleep)
    ends_at = clock() + policy.deadline
    with retry_scope(time.monotonic() + policy.deadline) as inner:
        return await _drive_async(_Call(policy, call, hooks, breaker, budget, clock, rng,
                                        closed, quiet, outer, inner, ends_at, throttle),
                                  attempt, sleep)


async def _drive_async(run: _Call[T], attempt: Callable[[int], Awaitable[Outcome[T]]],
                       sleep: Optional[Callable[[float], Any]]) -> Finished[T]:
    """:func:`_drive` with the attempt awaited and the wait ``asyncio.sleep``."""
    step = run.next_attempt(1)
    while True:
        kind = step.__class__
        if kind is int:
            try:
                outcome = await attempt(step)  # type: ignore[arg-type]  # an int here
            except BaseException as exc:
                run.raised(exc)
                raise
            step = run.attempted(outcome)
        elif kind is float:
            try:
                notified = run.notified
                if notified is not None:  # an async on_retry, awaited before the wait
                    run.notified = None
                    await _awaited_on_retry(run.policy, notified)
                if _testing._testing:  # no wait, but the other tasks run (a spinning
                    await asyncio.sleep(0)  # throttle wait needs one to free its slot)
                elif step > 0:  # type: ignore[operator]
                    waited = (asyncio.sleep(step) if sleep is None  # type: ignore[arg-type]
                              else sleep(step))  # type: ignore[arg-type]
                    if waited is not None:  # an injected sleep may be synchronous
                        await waited
            except BaseException as exc:
                run.interrupted(exc)
                raise
            step = run.waited()
        else:
            return step  # type: ignore[return-value]  # Finished


#: What the machine asks of its driver next: an ``int`` (make that attempt, hand back
#: its :class:`Outcome` to :meth:`_Call.attempted`), a ``float`` (wait that long, then
#: :meth:`_Call.waited`), or the call's :class:`Finished`.
_Step = Union[int, float, Finished[T]]


def stop_reason(run: _Call[Any], outcome: Outcome[Any], number: int) -> tuple[Optional[str], float]:
    """Why the call stops after the failed attempt ``number`` (None: it does not), and
    else the seconds to wait before the next attempt.

    The one place that decides, in this order: a final verdict (``not_retryable``, or the
    attempt's own veto), ``exhausted`` (attempts used), the attempt's veto (``unsafe``,
    ``not_replayable``, ``retry_exhausted``…), ``verdict_limit`` (a per-verdict rule), the
    wait (the attempt's own, from a urllib3 Retry, or backoff and Retry-After:
    ``retry_after_too_long``), ``deadline`` (the wait cannot end before it), ``closed``
    (the transport), ``budget`` (last: asking spends a token; asked at the first retry
    only).
    """
    verdict = outcome.classification
    if not verdict.retryable:
        return outcome.veto or "not_retryable", 0.0
    if number >= run.max_attempts:
        return "exhausted", 0.0
    if outcome.veto is not None:
        return outcome.veto, 0.0
    wait = outcome.wait  # decided by the attempt itself (a urllib3 Retry)
    if wait is None:
        policy = run.policy
        rule = run.rule
        settings: Union[RetryPolicy, ResolvedBackoff] = policy
        respect_retry_after = policy.respect_retry_after
        if rule is not None:
            if rule.max_retries is not None and \
                    run.seen[verdict.verdict] > rule.max_retries:  # type: ignore[index]
                return "verdict_limit", 0.0
            settings = rule.backoff_for(policy)
            respect_retry_after = rule.retry_after_for(policy)
        wait = backoff_delay(settings, number, previous=run.previous_wait, rng=run.rng)
        asked = verdict.retry_after
        # A vendor hook may hand over any float: NaN is no answer.
        if asked is not None and respect_retry_after and not math.isnan(asked):
            if asked > settings.backoff_max:
                return "retry_after_too_long", 0.0
            # The server's delay is a minimum: "Retry-After: 0" (or a date our clock
            # already passed) must not turn into a burst of immediate retries.
            wait = max(wait, asked)
    left = run.time_left()
    if left is not None and wait >= left:  # a wait that cannot end before the deadline
        return "deadline", 0.0
    if run.closed is not None and run.closed():
        return "closed", 0.0
    # The budget admits a call to retrying once, at its first retry; later retries run on
    # the credit of that admission and the budget settles them when the call ends (see
    # RetryBudget: a call its retries save must never be refused half-way).
    if run.budget is not None and number == 1 and not run.budget.allow_retry(run.call.service):
        return "budget", 0.0
    return None, wait


class _Call(Generic[T]):
    """One call's state and its steps: the step machine that a driver (:func:`_drive`,
    :func:`_drive_async`) runs, without I/O of its own.

    Its transitions, the retry loop spread over three methods: :meth:`next_attempt` (1) →
    attempt 1;
    :meth:`attempted` (an attempt's outcome) → the call's :class:`Finished`, or a wait;
    :meth:`waited` → the next attempt (or the end: closed, the breaker refused it).  An
    attempt or a wait that raised ends the call through :meth:`raised` /
    :meth:`interrupted` (the driver re-raises).  With a throttle, an attempt first takes
    its turn (:meth:`take_turn`): a turn that must wait is a wait step (``turn_for`` says
    which attempt it is for), after which :meth:`waited` asks the turn again.

    While ``events`` is None the call is *quiet*: its consumers are all built-in (see
    :func:`quiet_plan`), so its first attempt is counted by direct calls and its history
    is built only when read.  The event stream opens (:meth:`_open`) at the first failure,
    a breaker refusal or a half-open probe, with the first attempt's START replayed (to
    every hook but the Stats, which counted it already); from there on every step emits.
    """

    # The step state, as it stands before the first attempt (class defaults: a call that
    # succeeds at once sets only what it uses).
    wall_start: Optional[float] = None  # time.time() at a quiet first START
    # A quiet first START's Stats record: ended with its success's seconds, or None when
    # the events take over (Stats.quiet_start).
    counted: Optional[Callable[[Optional[float]], None]] = None
    started = 0.0  # clock() at the first attempt's start
    elapsed = 0.0  # the last attempt's duration
    previous_wait: Optional[float] = None
    rule: Optional[VerdictRule] = None  # the policy's rule for the last failure
    seen: Optional[dict[Verdict, int]] = None  # failures per verdict (per-verdict limits)
    unhealed: Optional[float] = None  # the breaker weight of a failure not yet counted
    attempt_started = 0.0  # clock() at the running attempt's start
    granted = False  # a retry was granted (the budget paid) and not yet started
    number = 0  # the attempt running, or the last one
    ticket = 0  # its breaker ticket
    outcome: Optional[Outcome[Any]] = None  # the last failed attempt's, while waiting
    wait_asked = 0.0  # the wait asked of the driver
    # The throttle's turn of the attempt under way: a Turn, or (taken at once, the common
    # case) the service's local state, taken at ``turn_at``.
    turn: Any = None
    turn_at = 0.0
    cut_at: Optional[float] = None  # (monotonic) the attempt's end, when a turn waited
    cut: Any = None  # the retry scope entered for it (a context manager), while attempting
    turn_for = 0  # the attempt whose turn the wait under way is for (0: a backoff wait)
    notified: Any = None  # what an async on_retry returned, for the async driver to await
    # The breaker's result side (set with a breaker that has one: see __init__).
    record: Optional[Callable[..., None]] = None
    timed = False  # whether the breaker also wants each attempt's duration

    def __init__(self, policy: RetryPolicy, call: CallInfo, hooks: tuple[Hook, ...],
                 breaker: Optional[BreakerGate], budget: Optional[BudgetGate],
                 clock: Callable[[], float], rng: Any, closed: Optional[Callable[[], bool]],
                 quiet: Optional[Quiet], outer: Optional[RetryScope],
                 scope: Optional[RetryScope], ends_at: Optional[float],
                 throttle: Optional[Throttle] = None) -> None:
        max_attempts = policy.max_retries + 1
        if outer is not None and policy.nested == "single":
            max_attempts = 1  # the enclosing call does the retrying
        capped = _testing._attempts  # None unless test mode caps the attempts
        if capped is not None:
            max_attempts = min(max_attempts, capped)
        self.policy = policy
        self.call = call
        self.hooks = hooks
        self.breaker = breaker
        self.budget = budget
        self.clock = clock
        self.rng = rng
        self.closed = closed
        self.scope = scope
        self.ends_at = ends_at
        self.throttle = throttle
        self.max_attempts = max_attempts
        if breaker is not None:
            # The breaker's result side, when it has one (else it reads the events as a
            # hook), and whether it also wants each attempt's duration (a slow-call trip).
            self.record = getattr(breaker, "after_attempt", None)
            self.timed = getattr(breaker, "slow_call_seconds", None) is not None
        if quiet is not None and quiet.log is not None and quiet.log.wants_success_lines():
            quiet = None  # the log writes the first attempt's lines: it reads the events
        self.quiet = quiet
        self.events: Optional[CallEvents] = None if quiet is not None else CallEvents(
            hooks, call.operation, call.service, max_attempts, call.method, call.url)

    def _open(self) -> CallEvents:
        """The event stream, opened for the rest of the call (see the class)."""
        events = self.events
        if events is None:
            call, hooks = self.call, self.hooks
            events = self.events = CallEvents(hooks, call.operation, call.service,
                                              self.max_attempts, call.method, call.url)
            if self.wall_start is not None:  # attempt 1 started quietly
                stats = self.quiet.stats  # type: ignore[union-attr]  # quiet until now
                counted = self.counted
                if counted is not None:  # the events count the rest of the call
                    self.counted = None
                    counted(None)
                if stats is not None:
                    events.hooks = tuple(h for h in hooks if h is not stats)
                events.emit(_START, 1, {"timestamp": self.wall_start})
                events.hooks = hooks
            self.quiet = None
        return events

    # -- the machine: three transitions, each returning the next step (see _Step) ---------

    def attempted(self, outcome: Outcome[T]) -> _Step[T]:
        """Attempt ``self.number`` ended with ``outcome``: the call succeeds, or stops
        (:func:`stop_reason`), or waits before the next attempt."""
        number, ticket = self.number, self.ticket
        self.elapsed = self.clock() - self.attempt_started
        if self.cut is not None:
            self.uncut()
        turn = self.turn
        if turn is not None:
            if outcome.hold is not None and \
                    outcome.classification.verdict is _SUCCESS_VERDICT:
                outcome.hold(self.held_turn(outcome))  # a streamed body keeps its slot
            else:  # end_turn, inlined (the success path)
                self.turn = None
                _finish_turn(self.throttle, turn, self.turn_at, outcome)  # type: ignore[arg-type]
        if outcome.classification.verdict is _SUCCESS_VERDICT:
            return self.succeeded(outcome, number, ticket)
        self.failed(outcome, number, ticket)
        reason, wait = stop_reason(self, outcome, number)
        if reason is not None:
            return self.give_up(outcome, number, reason)
        self.retrying(outcome, number, wait)
        wait = float(wait)  # a float: the driver's wait step
        self.outcome, self.wait_asked = outcome, wait
        return wait

    def waited(self) -> _Step[T]:
        """The wait before a retry ended: the next attempt, unless the transport was
        closed meanwhile; after a throttle's wait, the turn is asked again."""
        number = self.turn_for
        if number:  # a wait for the throttle's turn
            self.turn_for = 0
            step = self.step_turn(number, self.outcome)
            return self.next_attempt(number, self.outcome, True) if step is None else step
        outcome: Outcome[T] = self.outcome  # type: ignore[assignment]  # set by attempted
        self.previous_wait = self.wait_asked
        if self.closed is not None and self.closed():  # closed during the wait
            return self.give_up(outcome, self.number, "closed")
        return self.next_attempt(self.number + 1, outcome)

    def next_attempt(self, number: int, outcome: Optional[Outcome[T]] = None,
                     turned: bool = False) -> _Step[T]:
        """Attempt ``number`` (``next_attempt(1)``: the machine's first step), once the
        throttle gave it its turn (a wait step while it must wait; ``turned``: it did
        already) and the breaker admits it (``outcome``: the last failed attempt's, for a
        refusal): it starts (its START, or for a quiet call its count; its clock
        reading).  One method, not two: every attempt passes here."""
        if self.throttle is not None and not turned:
            step = self.take_turn(number, outcome)
            if step is not None:
                return step
        if self.breaker is not None:
            ticket = self.admit(number, outcome)  # a refusal ends the call
            if not isinstance(ticket, int):
                return ticket
            self.ticket = ticket
        self.number = number
        # Attempt ``number`` starts: its START, its clock reading.
        events = self.events
        if events is None:
            self.wall_start = _time()
            stats = self.quiet.stats  # type: ignore[union-attr]  # quiet: a plan is set
            if stats is not None:
                self.counted = stats.quiet_start(self.call.operation)
        else:
            events.emit(_START, number)
        self.granted = False  # the retry the budget granted is being made
        started = self.attempt_started = self.clock()
        if number == 1:
            self.started = started
        cut_at = self.cut_at
        if cut_at is not None:  # the throttle's wait comes out of this attempt's time
            self.cut_at = None
            self.cut = retry_scope(cut_at)  # a contextvar: it holds across the awaits
            self.cut.__enter__()
        return number

    def admit(self, number: int, outcome: Optional[Outcome[T]]) -> Union[int, Finished[T]]:
        """The breaker's ticket for attempt ``number`` (0 without a breaker); a refusal
        raises :class:`CircuitOpenError` before the first attempt, and ends the call
        after a later one."""
        breaker = self.breaker
        if breaker is None:
            return 0
        try:
            ticket = breaker.before_attempt(self.call.service) or 0
        except CircuitOpenError as exc:
            self.end_turn(None)  # the throttle's slot goes back: nothing is sent
            events = self._open()
            events.emit(EventKind.REJECTED, number,
                        {"wait": exc.retry_in, "reason": "circuit_open", "error": exc})
            if outcome is None:
                exc.retry_history = tuple(events.history)  # type: ignore[attr-defined]
                raise
            return self.give_up(outcome, number - 1, "circuit_open")
        if ticket:
            self._open()  # a half-open probe: every consumer sees how it goes
        return ticket

    def uncut(self) -> None:
        """The attempt ended: leave the retry scope :meth:`start` entered for it."""
        cut, self.cut = self.cut, None
        cut.__exit__(None, None, None)

    def raised(self, exc: BaseException) -> None:
        """The attempt raised ``exc``: a hook of the attempt (a signer, prepare_attempt)
        raised, or the caller was interrupted (a cancelled task: give-up reason
        ``cancelled``).  The call ends here, but its events still close it out."""
        number, ticket = self.number, self.ticket
        self.elapsed = self.clock() - self.attempt_started
        if self.cut is not None:
            self.uncut()
        self.end_turn(None)  # the slot goes back (a cancelled task's included)
        raised: Outcome[T] = Outcome(Classification(Verdict.PERMANENT, type(exc).__name__),
                                     error=exc)
        self.failed(raised, number, ticket)
        reason = "cancelled" if isinstance(exc, _CANCELLED) else "error"
        attach_history(exc, tuple(self.give_up(raised, number, reason).history))

    def held_turn(self, outcome: Outcome[T]) -> Callable[[], None]:
        """The turn of a success whose value is still being received (``outcome.hold``):
        it stays taken (the vendor still counts the request in flight) until the returned
        function ends it, once."""
        throttle: Throttle = self.throttle  # type: ignore[assignment]  # a turn has one
        turn, turn_at = self.turn, self.turn_at
        self.turn = None
        # Only the verdict travels: the release must not keep the value (the response,
        # whose finalizer may hold the release) alive.
        ended: Outcome[Any] = Outcome(outcome.classification)
        once = threading.Lock()

        def release() -> None:
            if once.acquire(blocking=False):
                _finish_turn(throttle, turn, turn_at, ended)
        return release

    def take_turn(self, number: int, outcome: Optional[Outcome[T]]) -> Optional[_Step[T]]:
        """Attempt ``number``'s turn from the throttle: ``None`` when it may go now, else
        the next step (a wait for the turn, or the end: :meth:`step_turn`).  The wait is
        limited by the attempt's timeout and the call's deadline, and comes out of the
        attempt's time."""
        throttle: Throttle = self.throttle  # type: ignore[assignment]  # the caller checked
        now = throttle.clock()
        entered = throttle.enter(self.call.service, now)  # free now: no Turn, no wait
        if entered is not None:
            self.turn, self.turn_at = entered, now
            return None
        timeout = self.policy.timeout
        limit = self.time_left()
        if timeout is not None and (limit is None or timeout < limit):
            limit = timeout
        self.turn = throttle.turn(self.call.service, limit)
        return self.step_turn(number, outcome)

    def step_turn(self, number: int, outcome: Optional[Outcome[T]]) -> Optional[_Step[T]]:
        """Ask the turn again (the throttle decides, the driver performs the waits):
        ``None`` (go), a wait step (``turn_for`` remembers the attempt), or, refused, the
        call's end: :class:`ThrottledError` raised before the first attempt, give-up
        ``"throttled"`` before a later one."""
        throttle: Throttle = self.throttle  # type: ignore[assignment]  # a turn has one
        turn: Turn = self.turn
        try:
            wait = turn.step(throttle.clock())
        except ThrottledError as exc:  # nothing taken: the turn is over
            self.turn = None
            events = self._open()
            events.emit(_THROTTLED, number, {"wait": exc.wait, "reason": "refused",
                                             "error": exc})
            if outcome is None:
                attach_history(exc, tuple(events.history))
                raise
            return self.give_up(outcome, number - 1, "throttled")
        if wait is not None:
            self.turn_for = number
            return float(wait)  # a float: the driver's wait step
        waited = turn.waited
        if waited > 0.0:
            self._open().emit(_THROTTLED, number, {"wait": waited, "reason": "waited"})
            timeout = self.policy.timeout
            if timeout is not None:
                self.cut_at = time.monotonic() + max(0.0, timeout - waited)
        return None

    def end_turn(self, outcome: Optional[Outcome[T]]) -> None:
        """The attempt under way ended (``None``: it was not sent, or raised): its turn
        goes back, and the throttle learns whether the vendor throttled it."""
        turn = self.turn
        if turn is None:
            return
        self.turn = None
        _finish_turn(self.throttle, turn, self.turn_at, outcome)  # type: ignore[arg-type]

    def succeeded(self, outcome: Outcome[T], number: int, ticket: int) -> Finished[T]:
        """The call ends on attempt ``number``'s success."""
        elapsed = self.elapsed
        record = self.record
        events = self.events
        if events is None:  # quiet: tell the built-in consumers directly
            quiet: Quiet = self.quiet  # type: ignore[assignment]
            call = self.call
            counted = self.counted
            if counted is not None:
                counted(elapsed)
            if quiet.budget is not None:
                quiet.budget.deposit(call.service)
            if record is not None:
                self.tell(record, ticket, False, 1.0)
            return Finished(outcome, LazyHistory(
                call, self.max_attempts, next_call_id(), self.wall_start, _time(), elapsed,
                outcome.status_code))
        events.emit(_SUCCESS, number,
                    {"verdict": _SUCCESS_VERDICT, "elapsed": elapsed,
                     "status_code": outcome.status_code,
                     "call_elapsed": self.clock() - self.started})
        if record is not None:
            self.tell(record, ticket, False, 1.0)
        return Finished(outcome, tuple(events.history))

    def failed(self, outcome: Outcome[T], number: int, ticket: int) -> None:
        """Attempt ``number`` failed: its FAILURE event, the breaker's record."""
        verdict = outcome.classification
        rule = self.rule = self.policy.rule_for(verdict.verdict)
        weight = 1.0 if rule is None else rule.breaker_weight
        self._open().emit(_FAILURE, number,
                          {"verdict": verdict.verdict, "reason": verdict.reason,
                           "error": outcome.signal or outcome.error,
                           "status_code": outcome.status_code, "elapsed": self.elapsed,
                           "retry_after": verdict.retry_after, "weight": weight})
        seen = self.seen
        if seen is None:
            seen = self.seen = {}
        seen[verdict.verdict] = seen.get(verdict.verdict, 0) + 1
        record = self.record
        if record is not None:
            failed = verdict.retryable
            if failed and number == 1 and not ticket:
                # A call's first failure is counted only once its retry failed too (or the
                # call gave up on it: give_up); a retry that heals it leaves only the
                # success.  So a breaker shared by a fleet counts what one process would:
                # six processes each healing one 503 at the same moment send no failure,
                # where counting it at once sends six before the first retry's backoff is
                # over (sending the healing success at once, which the Redis store also
                # does, cannot undo an opening that already happened).  A second failure
                # in a row is no blip: both count at once, so a long call still opens the
                # breaker between its attempts, and an outage within failure_threshold
                # failed calls.  (A half-open probe's result decides its round: at once.)
                self.unhealed = weight
                return
            unhealed, self.unhealed = self.unhealed, None
            if unhealed is not None and failed and not ticket:
                record(self.call.service, 0, failed=True, weight=unhealed)
            self.tell(record, ticket, failed, weight if failed else 1.0)

    def tell(self, record: Callable[..., None], ticket: int, failed: bool,
             weight: float) -> None:
        """The breaker's record of the last attempt (with its duration, if it wants it)."""
        if self.timed:
            record(self.call.service, ticket, failed=failed, weight=weight,
                   elapsed=self.elapsed)
        else:
            record(self.call.service, ticket, failed=failed, weight=weight)

    def give_up(self, outcome: Outcome[T], number: int, reason: str) -> Finished[T]:
        """The call ends after attempt ``number`` without success: the one GIVE_UP."""
        verdict = outcome.classification
        policy = self.policy
        rule = policy.rule_for(verdict.verdict)
        unhealed = self.unhealed
        if unhealed is not None:  # the call failed: its breaker counts it (see failed),
            # now or, inside an enclosing retrying call whose retry may heal it, then.
            self.unhealed = None
            defer_records([functools.partial(self.record,  # type: ignore[arg-type,misc]
                                             self.call.service, 0, failed=True,
                                             weight=unhealed)])
        if self.granted and number == 1 and reason != "circuit_open":
            # The budget admitted the call to retrying (at its first retry), and the retry
            # was never made (cancelled or interrupted in its wait, closed): the admission
            # goes back.  Later retries run on credit and the budget settles them from the
            # GIVE_UP event; it gives a breaker's refusal back itself, from REJECTED.
            self.granted = False
            refund = getattr(self.budget, "refund", None)
            if refund is not None:
                refund(self.call.service)
        events = self._open()
        events.emit(EventKind.GIVE_UP, number,
                    {"verdict": verdict.verdict, "reason": verdict.reason,
                     "status_code": outcome.status_code, "retry_after": verdict.retry_after,
                     "give_up_reason": reason,
                     "backoff_cap": (rule.backoff_for(policy) if rule is not None
                                     else policy).backoff_max,
                     "call_elapsed": self.clock() - self.started})
        return Finished(outcome, tuple(events.history), reason)

    def retrying(self, outcome: Outcome[T], number: int, wait: float) -> None:
        """The RETRY event and ``on_retry``, before the backoff wait (none in test mode)."""
        verdict = outcome.classification
        self.granted = True  # the budget (if any) paid for the retry: refunded if not made
        self._open().emit(_RETRY, number,
                          {"verdict": verdict.verdict, "reason": verdict.reason,
                           "wait": 0.0 if _testing._testing else wait,
                           "retry_after": verdict.retry_after})
        self.notified = _notify_on_retry(self.policy, number, outcome.signal or outcome.error)

    def interrupted(self, exc: BaseException) -> None:
        """The wait (a backoff, or for the throttle's turn) raised ``exc``: the call gives
        up (``cancelled`` for a cancelled task, else ``interrupted``); a turn waited for
        goes back.  Interrupted before its first attempt, a call has nothing to give up."""
        reason = "cancelled" if isinstance(exc, _CANCELLED) else "interrupted"
        outcome = self.outcome
        number = self.number
        if self.turn_for:
            number, self.turn_for = self.turn_for - 1, 0
            self.end_turn(None)
            if outcome is None:
                return
        assert outcome is not None  # set by attempted before a backoff wait
        attach_history(exc, tuple(self.give_up(outcome, number, reason).history))

    def time_left(self) -> Optional[float]:
        """Seconds left before the earliest deadline: the scope's (wall clock) and this
        call's own (``ends_at`` on the injectable clock)."""
        scope, ends_at = self.scope, self.ends_at
        left = None if scope is None else scope.remaining()
        if ends_at is not None:
            own = max(0.0, ends_at - self.clock())
            left = own if left is None else min(left, own)
        return left


def _notify_on_retry(policy: RetryPolicy, attempt: int,
                     error: Optional[BaseException]) -> Optional[Awaitable[Any]]:
    """Call ``on_retry``; what an ``async def`` callback returned (an awaitable) comes
    back for the driver: the async one awaits it before the wait."""
    callback = policy.on_retry
    if callback is None or error is None:
        return None
    try:
        result = callback(attempt, error)
    except Exception:
        # A broken callback must not turn a recoverable failure into a crash.
        _log.exception("requests_smartretry: on_retry callback %r raised; retrying anyway",
                       callback)
        return None
    return result if inspect.isawaitable(result) else None


async def _awaited_on_retry(policy: RetryPolicy, notified: Awaitable[Any]) -> None:
    """Await what an async ``on_retry`` returned (its failure logged, as a sync one's)."""
    try:
        await notified
    except Exception:
        _log.exception("requests_smartretry: on_retry callback %r raised; retrying anyway",
                       policy.on_retry)


def _unawaited_on_retry(run: _Call[Any]) -> None:
    """A synchronous call cannot await an async ``on_retry``: say so (at each retry)."""
    notified, run.notified = run.notified, None
    close = getattr(notified, "close", None)
    if close is not None:
        close()  # a coroutine never started: no "never awaited" warning
    _log.error("requests_smartretry: on_retry callback %r is async; a synchronous call "
               "cannot await it, so it was not run (use a plain function, or the async "
               "transport / an async def call)", run.policy.on_retry)


def _finish_turn(throttle: Throttle, turn: Any, turn_at: float,
                 outcome: Optional[Outcome[Any]]) -> None:
    """End an attempt's throttle turn (see :meth:`_Call.end_turn`)."""
    if type(turn) is not Turn:  # taken at once (Throttle.enter)
        if outcome is None:
            throttle.leave(turn, throttle.clock(), turn_at)
            return
        verdict = outcome.classification
        if verdict.verdict is _SUCCESS_VERDICT:
            if throttle.settings.leaves:
                throttle.leave_success(turn)
        else:
            throttle.leave(turn, throttle.clock(), turn_at,
                           retry_after=verdict.retry_after,
                           throttling=is_throttling(verdict.verdict, verdict.retry_after))
        return
    now = throttle.clock()
    if outcome is None:
        turn.done(now, refused=True)
        return
    verdict = outcome.classification
    if verdict.verdict is _SUCCESS_VERDICT:
        turn.done(now, success=True)
    else:
        turn.done(now, throttling=is_throttling(verdict.verdict, verdict.retry_after),
                  retry_after=verdict.retry_after)
