"""The callable API: the adapter's retries, deadlines, log lines and hooks for any function.

For SDKs that own their HTTP (``wechatpayv3`` calls module-level ``requests.post``; others
use httpx) and for any other flaky call::

    from requests_smartretry import execute_with_retry, execute_with_smart_retry, with_retry

    task = execute_with_retry(lambda: client.create_task(prompt), operation_name="生成艺术照")

    code, body = execute_with_smart_retry(lambda: pay_or_raise(order), timeout=10.0)

    @with_retry(max_retries=2, timeout=10.0, smart=True)
    def fetch_order(order_id: str) -> dict[str, str]: ...

All three run through the one retry loop (:func:`engine.run_call`): same
:class:`RetryPolicy` keywords, same log lines, same events for hooks, statistics, the
breaker and the budget, same ``on_retry(attempt, error)``.

Deadlines.  Each attempt runs ``fn`` in a worker thread (a small pool of reusable daemon
threads), and the caller waits at most the attempt's ``timeout`` (plus a 50 ms grace for
the attempt to report its own, more precise, error).  Python cannot stop a thread, so an
attempt still running at its deadline is *abandoned*: it keeps running to completion in the
background, may still have side effects (a payment may still be created), and its result
or exception is discarded and logged at DEBUG.  At most 64 abandoned attempts may be
running at once; beyond that new attempts are refused (a hung dependency must not eat every
thread of the process) until some finish.

The deadline also reaches inside: ``fn`` runs within a retry scope (``deadline.retry_scope``,
a contextvar copied into the worker thread), so ``SmartRetryAdapter`` requests made in
``fn`` get ``min(their own timeout, time left)`` and are cut at the socket, and code in
``fn`` can read ``deadline.remaining()``.  Plain ``requests`` calls and other libraries do
not see the scope; for them only the abandonment applies.

Nesting.  A retrying call made inside ``fn`` (a ``smart_session()`` request, another
``execute_with_retry``) whose policy has ``nested="single"`` (the default) makes exactly one
attempt: the outer call does the retrying, so attempts never multiply (2, not 2×2).  A
policy with ``nested="retry"`` retries as configured inside each outer attempt (2×2 = 4).

What the callable API knows, and what it cannot.  It sees only the exception ``fn`` raised.
It knows what a ``SmartRetryAdapter`` request inside ``fn`` recorded on its error: that it
gave up as ``unsafe`` (it may have reached the server and is not idempotent) or
``not_replayable`` (a body that was partly sent and cannot be sent again) — such a failure is
final for the outer call too, also when ``fn`` wraps it (``raise ... from``) or turns the
response into an ``HTTPError`` with ``raise_for_status()`` — and that a failure came before
one byte of the request was written (TCP connect, TLS handshake, proxy tunnel).  Of plain
``requests`` and other urllib3 users it knows only what the exception types say: urllib3's
connect errors (``NewConnectionError``, ``ConnectTimeout``), DNS failures and refusals came
before sending.  It cannot know where any other failure happened (a plain-requests TLS
handshake timeout looks like a read timeout; an SDK's own errors say nothing).  So with an
explicit ``idempotent=False`` only failures known to precede sending are retried (refused,
DNS, connect-phase errors, 429/503 that say the server did not act) plus the caller's own
``retry_on`` types and ``classify`` answers; without it, the table decides, as in the seed.
Such a give-up (and every other veto of this call) is final for an enclosing retrying call
too.

What an attempt may have executed.  Each attempt has a ledger
(:class:`~requests_smartretry.deadline.AttemptLedger`) in its retry scope: every request
that is not idempotent made through a ``SmartRetryAdapter`` or a ``SmartRetryTransport``
inside ``fn``, at any depth of nesting, is counted there from the moment its attempt starts
until it ends known not to have executed (nothing sent; 429/503), and so is a nested
``idempotent=False`` callable while it runs.  When the attempt fails, or is abandoned at
its deadline while still running, the ledger is sealed: if it counts anything, the
attempt is not repeated (``unsafe``), whatever the exception says and however late the
inner request would have reported; from then on nothing unsafe can start inside the
attempt (such a request fails before sending).  A POST that succeeded before ``fn`` failed
on something else, or a ``stream=True`` response abandoned in the middle of its body, is
therefore never sent again by the enclosing call.  A request still connecting when the
attempt is abandoned counts too (it may send the next moment).  A thread ``fn`` starts is
counted only when it runs in a copy of ``fn``'s context (``contextvars.copy_context().run``,
one copy per thread or task): ``threading.Thread`` and ``ThreadPoolExecutor`` start with an
empty context, so what they send is not counted (as with plain ``requests``).

Thread-local state (a thread-bound DB session, a framework's request globals) is not visible
in the worker thread; contextvars are (copied, so changes made in ``fn`` stay there).  For
such code pass ``run_in_thread=False``: ``fn`` then runs in the caller's thread and the
deadline only reaches inside through the retry scope; the caller is not guaranteed to
regain control at the deadline.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union, cast, overload

from . import workers
from .classify import (  # ErrorClassifier and RetryOn: re-exported from their old home
    DEADLINE_BEFORE_SENDING,
    ENCLOSING_ATTEMPT_OVER,
    Classification,
    ErrorClassifier,
    RetryOn,
    call_classifier,
)
from .deadline import (
    AsyncCut,
    AttemptLedger,
    NoTimeLeft,
    attempt_seconds,
    current_scope,
    defer_records,
    retry_scope,
)
from .engine import (
    BreakerGate,
    BudgetGate,
    CallInfo,
    Finished,
    Outcome,
    build_hooks,
    check_clocks,
    check_hooks,
    mark_vetoed,
    quiet_plan,
    run_call,
    run_call_async,
)
from .errors import CallTimeoutError, SmartRetryError
from .events import Hook, Verdict
from .overrides import Overrides, current_overrides
from .policy import RetryPolicy, resolve_policy
from .redact import redact_exception
from .workers import abandoned_attempts  # re-exported: its old home

if TYPE_CHECKING:
    # typing.ParamSpec is 3.10+; typing_extensions is only needed by the type checker.
    from typing_extensions import ParamSpec, Unpack

    from .options import CallKeywords, SmartCallKeywords

    P = ParamSpec("P")

__all__ = [
    "ErrorClassifier",
    "RetryOn",
    "abandoned_attempts",
    "execute_with_retry",
    "execute_with_smart_retry",
    "with_retry",
]

R = TypeVar("R")

_log = logging.getLogger("requests_smartretry")

# -- configuration -------------------------------------------------------------------------


class _CallOptions:
    """Everything one call (or one decorated function) needs, validated once: the public
    functions' keywords (:class:`~requests_smartretry.options.SmartCallKeywords`) as one
    object."""

    __slots__ = ("_derived", "breaker", "budget", "classify", "clock", "extra_hooks",
                 "hooks", "not_idempotent", "policy", "quiet", "retry_on", "run_in_thread",
                 "sleep", "smart", "user_classify")

    # The keywords that are the call's own; every other one is a RetryPolicy field.
    _DEFAULTS: Mapping[str, Any] = {
        "policy": None, "hooks": (), "breaker": None, "budget": None, "sleep": time.sleep,
        "clock": time.monotonic, "run_in_thread": True, "retry_on": None, "classify": None,
    }

    @classmethod
    def build(cls, *, smart: bool, caller: str, options: Mapping[str, Any]) -> _CallOptions:
        """The options of ``caller`` (``smart``: the smart variant) from its keywords."""
        policy_options = dict(options)
        own = {name: policy_options.pop(name, default)
               for name, default in cls._DEFAULTS.items()}
        return cls(smart=smart, options=policy_options, caller=caller, **own)

    def __init__(
        self,
        *,
        smart: bool,
        policy: Optional[RetryPolicy],
        hooks: Union[Hook, tuple[Hook, ...], list[Hook]],
        breaker: Optional[BreakerGate],
        budget: Optional[BudgetGate],
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        run_in_thread: bool,
        retry_on: Optional[RetryOn],
        classify: Optional[ErrorClassifier],
        options: Mapping[str, Any],
        caller: str,
    ) -> None:
        # Only an explicit idempotent=False restricts retries to failures known to precede
        # sending: the policy's default (also False) keeps the seed's behaviour.
        not_idempotent = options.get("idempotent") is False
        policy = resolve_policy(policy, options, f"{caller}()")
        check_clocks(sleep, clock)
        _check_bool("run_in_thread", run_in_thread)
        if classify is not None and not callable(classify):
            raise TypeError(f"classify must be callable(error) or None, got {classify!r}")
        if retry_on is not None:
            if not smart:
                raise TypeError(
                    f"{caller}() retries every exception already; retry_on= is for "
                    "execute_with_smart_retry() / with_retry(smart=True)"
                )
            _check_retry_on(retry_on)
        self.smart = smart
        self.extra_hooks = check_hooks(hooks)
        self.retry_on = retry_on
        self.user_classify = classify
        self.breaker = breaker
        self.budget = budget
        self.sleep = sleep
        self.clock = clock
        self.run_in_thread = run_in_thread
        self._use(policy, not_idempotent)
        # Per retry_options block: id(Overrides) -> (Overrides, options for it).
        self._derived: dict[int, tuple[Overrides, _CallOptions]] = {}

    def _use(self, policy: RetryPolicy, not_idempotent: bool) -> None:
        """Derive what depends on ``policy``: hooks, quiet plan, classifier."""
        self.policy = policy
        self.not_idempotent = not_idempotent
        # the same consumers, in the same order, as SmartRetryAdapter's
        self.hooks = build_hooks(policy, extra=self.extra_hooks, breaker=self.breaker,
                                 budget=self.budget)
        self.quiet = quiet_plan(self.hooks)  # told directly while a call stays quiet
        self.classify = call_classifier(self.smart, policy.retry_statuses, self.retry_on,
                                        self.user_classify, not_idempotent,
                                        policy.honor_server_signals)

    def overridden(self, overrides: Overrides) -> _CallOptions:
        """These options under a :func:`~requests_smartretry.retry_options` block (cached
        per block's fields: a block entered again reuses them)."""
        derived = self._derived.get(id(overrides))
        if derived is not None and derived[0] is overrides:
            return derived[1]
        clone = _CallOptions.__new__(_CallOptions)
        for name in self.__slots__:
            setattr(clone, name, getattr(self, name))
        fields = overrides.fields
        clone._use(overrides.apply(self.policy),
                   fields["idempotent"] is False if "idempotent" in fields
                   else self.not_idempotent)
        clone._derived = {}
        if len(self._derived) >= 64:  # bounded, as the adapter's
            self._derived.clear()
        self._derived[id(overrides)] = (overrides, clone)
        return clone


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def _check_retry_on(retry_on: Any) -> None:
    kinds = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise TypeError(
                f"retry_on must be an exception class or a tuple of them, got {retry_on!r}"
            )


def _operation_name(fn: Callable[..., Any], policy: RetryPolicy) -> str:
    if policy.operation_name:
        return policy.operation_name
    target = fn.func if isinstance(fn, functools.partial) else fn
    name = getattr(target, "__qualname__", None)
    return name if isinstance(name, str) and name else type(target).__qualname__


def _check_fn(fn: Any, caller: str) -> bool:
    """Refuse what cannot be retried; True for a coroutine function (an ``async def``, a
    partial of one, an object with an ``async def __call__``)."""
    if not callable(fn):
        raise TypeError(f"{caller}() needs a callable, got {fn!r}")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{caller}() cannot retry the generator function {fn!r}: only creating the "
            "generator would be retried, not iterating it"
        )
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


# -- the call ------------------------------------------------------------------------------


def _run(fn: Callable[[], R], config: _CallOptions, operation: str) -> R:
    config, call = _call_of(config, operation)
    unhealed: list[Callable[[], None]] = []  # see _settle

    def attempt(number: int) -> Outcome[R]:
        started: Union[Outcome[R], _Started] = _start_attempt(config, call.operation, number)
        if isinstance(started, Outcome):
            return started  # not started
        timeout, counted, ledger = started
        outcome = _run_attempt(fn, config, call.operation, number, timeout, ledger)
        return _end_attempt(outcome, number, ledger, counted, unhealed)

    finished: Optional[Finished[R]] = None
    try:
        finished = run_call(config.policy, call, attempt, hooks=config.hooks,
                            breaker=config.breaker, budget=config.budget, sleep=config.sleep,
                            clock=config.clock, quiet=config.quiet)
    finally:
        _settle_call(finished, unhealed)
    return finished.unwrap()


async def _run_async(fn: Callable[[], Awaitable[R]], config: _CallOptions,
                     operation: str) -> R:
    """:func:`_run` for a coroutine function: the same machine, driven on asyncio."""
    config, call = _call_of(config, operation)
    unhealed: list[Callable[[], None]] = []  # see _settle

    async def attempt(number: int) -> Outcome[R]:
        started: Union[Outcome[R], _Started] = _start_attempt(config, call.operation, number)
        if isinstance(started, Outcome):
            return started  # not started
        timeout, counted, ledger = started
        outcome = await _run_attempt_async(fn, config, call.operation, number, timeout,
                                           ledger)
        return _end_attempt(outcome, number, ledger, counted, unhealed)

    # A synchronous sleep= (a test's recorder) is called; asyncio.sleep otherwise.
    sleep = None if config.sleep is time.sleep else config.sleep
    finished: Optional[Finished[R]] = None
    try:
        finished = await run_call_async(
            config.policy, call, attempt, hooks=config.hooks, breaker=config.breaker,
            budget=config.budget, sleep=sleep, clock=config.clock, quiet=config.quiet)
    finally:
        _settle_call(finished, unhealed)
    return finished.unwrap()


def _call_of(config: _CallOptions, operation: str) -> tuple[_CallOptions, CallInfo]:
    """The options in force for one call (a ``retry_options`` block's) and its names."""
    overrides = current_overrides()  # a retry_options block: the one context read
    if overrides is not None:
        config = config.overridden(overrides)
        operation = config.policy.operation_name or operation
    return config, CallInfo(operation=operation, service=config.policy.service or operation)


def _settle_call(finished: Optional[Finished[Any]], unhealed: list[Callable[[], None]]) -> None:
    """The call ended (``finished`` None: it raised): if it failed, what its retries did
    not heal counts (see :func:`_settle`)."""
    if finished is None or finished.outcome.error is not None:
        defer_records(unhealed)


def _settle(ledger: AttemptLedger, outcome: Outcome[Any], number: int,
            unhealed: list[Callable[[], None]]) -> None:
    """The breaker records of failures nested in attempt ``number`` (calls made in ``fn``
    that gave up: see :meth:`AttemptLedger.defer`), by the engine's rule for a call's own
    failures: the first failed attempt's wait in ``unhealed`` (dropped when a retry
    succeeds, so a poll healed by its retry leaves the breaker alone); a second failed
    attempt counts them all at once; a succeeded attempt's own count (``fn`` got over
    them itself: no retry healed them)."""
    records = ledger.take_deferred()
    if outcome.classification.verdict is Verdict.SUCCESS:
        unhealed.clear()  # healed by this retry
    elif number > 1:
        records, unhealed[:] = unhealed + records, []
    else:
        unhealed.extend(records)
        return
    defer_records(records)


#: A started attempt: its seconds, the enclosing ledger counting it, its own ledger.
_Started = tuple[float, Optional[AttemptLedger], AttemptLedger]


def _start_attempt(config: _CallOptions, operation: str,
                   number: int) -> Union[Outcome[Any], _Started]:
    """Attempt ``number`` starts: its time (what the enclosing deadline leaves), the
    enclosing attempt's ledger when this attempt counts there, and its own ledger; or the
    outcome of an attempt that cannot start."""
    try:
        timeout = attempt_seconds(config.policy.timeout)
    except NoTimeLeft:
        error: BaseException = CallTimeoutError(
            f"{operation}: no time left for attempt {number} (enclosing deadline)")
        return Outcome(DEADLINE_BEFORE_SENDING, error=error, signal=error)
    scope = current_scope()
    enclosing = None if scope is None else scope.ledger
    # With idempotent=False the attempt is itself an unsafe operation of the enclosing
    # callable's attempt, counted there while it runs (see deadline.AttemptLedger).
    counted = enclosing if config.not_idempotent else None
    if counted is not None and not counted.start_unsafe():
        error = SmartRetryError(
            f"{operation}: the enclosing attempt is over (abandoned at its deadline); "
            f"attempt {number} was not started")
        return Outcome(ENCLOSING_ATTEMPT_OVER, error=error, signal=error)
    return timeout, counted, AttemptLedger(enclosing)


def _end_attempt(outcome: Outcome[R], number: int, ledger: AttemptLedger,
                 counted: Optional[AttemptLedger],
                 unhealed: list[Callable[[], None]]) -> Outcome[R]:
    """Attempt ``number`` ended: its nested failures settled (:func:`_settle`), and it is
    uncounted from the enclosing ledger (``counted``) when it did not execute, or when
    this call repeats it itself."""
    _settle(ledger, outcome, number, unhealed)
    if counted is not None and (outcome.classification.safe_to_repeat or (
            outcome.classification.retryable and outcome.veto is None)):
        counted.not_executed()
    return outcome


async def _run_attempt_async(fn: Callable[[], Awaitable[R]], config: _CallOptions,
                             operation: str, number: int, timeout: float,
                             ledger: AttemptLedger) -> Outcome[R]:
    """Attempt ``number`` of a coroutine function, awaited in the caller's task inside its
    retry scope, and cancelled at its deadline (nothing goes on in the background: unlike
    a thread, a coroutine can be stopped).  Its unsafe requests are counted in
    ``ledger``, sealed when it fails or is cut, as for :func:`_run_attempt`."""
    cut = AsyncCut(timeout, watched=False)
    try:
        with retry_scope(time.monotonic() + timeout, ledger):
            value = await fn()
    except asyncio.CancelledError:
        if not cut.ours():
            ledger.seal()
            raise  # the caller's cancellation: the call ends ("cancelled")
        unsafe = ledger.seal()
        error = CallTimeoutError(
            f"{operation}: attempt {number} passed its {timeout:g}s deadline; it was "
            "cancelled there")
        outcome: Outcome[R] = Outcome(
            Classification(Verdict.TIMEOUT, "deadline", sent=True), error=error,
            signal=error, veto="unsafe" if config.not_idempotent or unsafe else None)
        mark_vetoed(outcome)
        return outcome
    except Exception as exc:
        return _failed(exc, config, ledger.seal())
    finally:
        cut.finish()
    if cut.fired:  # it fired as fn returned: its cancellation is still pending
        await cut.absorb()
    return _succeeded(value, operation)


def _run_attempt(fn: Callable[[], R], config: _CallOptions, operation: str, number: int,
                 timeout: float, ledger: AttemptLedger) -> Outcome[R]:
    """Attempt ``number``, its unsafe requests counted in ``ledger``, sealed when it fails
    or is abandoned: the count then decides whether repeating it is safe.  An attempt that
    succeeded is never repeated, so its ledger stays open: a request its code still makes
    (a thread it started in a copy of its context) is sent, and counted in any enclosing
    attempt still running."""
    deadline_at = time.monotonic() + timeout
    if not config.run_in_thread:
        try:
            value = workers.call_in_scope(fn, deadline_at, ledger)
        except Exception as exc:
            return _failed(exc, config, ledger.seal())
        return _succeeded(value, operation)

    job = workers.start(fn, deadline_at, (operation, number), config.policy.lang,
                        config.policy.log, ledger)
    if job is None:
        error: BaseException = SmartRetryError(
            f"{operation}: {workers.abandoned_attempts()} attempts abandoned at their "
            "deadline are still running; refusing to start another until some finish")
        return Outcome(Classification(Verdict.PERMANENT, "too_many_abandoned", sent=False),
                       error=error, signal=error)
    if not job.wait():
        # Abandoned while it runs: what it started so far is final, and nothing unsafe
        # can start in it from now on, however late it reports.
        unsafe = ledger.seal()
        error = CallTimeoutError(
            f"{operation}: attempt {number} passed its {timeout:g}s deadline; it was "
            "abandoned and may still be running in the background")
        outcome: Outcome[R] = Outcome(
            Classification(Verdict.TIMEOUT, "deadline", sent=True), error=error,
            signal=error, veto="unsafe" if config.not_idempotent or unsafe else None)
        mark_vetoed(outcome)
        return outcome
    if isinstance(job.error, NoTimeLeft):  # its thread started after the deadline: fn never ran
        ledger.seal()
        error = CallTimeoutError(f"{operation}: attempt {number} could not start before its "
                                 f"{timeout:g}s deadline (no thread got to run it in time)")
        return Outcome(DEADLINE_BEFORE_SENDING, error=error, signal=error)
    if job.error is not None:
        unsafe = ledger.seal()
        if not isinstance(job.error, Exception):  # SystemExit, KeyboardInterrupt…: no retry
            raise job.error
        return _failed(job.error, config, unsafe)
    return _succeeded(cast(R, job.value), operation)


def _succeeded(value: R, operation: str) -> Outcome[R]:
    if inspect.isawaitable(value) or inspect.isasyncgen(value):
        close = getattr(value, "close", None)
        if callable(close):  # no "coroutine was never awaited" warning on top
            close()
        raise TypeError(
            f"{operation}: fn returned {type(value).__name__}; only synchronous results can "
            "be retried (await it inside fn, or retry it with an async library)")
    return Outcome(Classification(Verdict.SUCCESS, "ok"), value=value)


def _failed(error: Exception, config: _CallOptions, unsafe: int) -> Outcome[Any]:
    """The outcome of an attempt that raised ``error`` after starting ``unsafe`` unsafe
    operations that may have executed (then it is never repeated, whatever the verdict).
    A veto is final for an enclosing retrying call too."""
    redact_exception(error)  # hooks, on_retry and the caller never see a credential
    verdict, veto = config.classify(error)
    if unsafe and veto is None:
        veto = "unsafe"
    outcome: Outcome[Any] = Outcome(verdict, error=error, signal=error, veto=veto)
    mark_vetoed(outcome)
    return outcome


# -- the public functions ------------------------------------------------------------------


@overload
def execute_with_retry(fn: Callable[[], Coroutine[Any, Any, R]],
                       **options: Unpack[CallKeywords]) -> Coroutine[Any, Any, R]: ...


@overload
def execute_with_retry(fn: Callable[[], R], **options: Unpack[CallKeywords]) -> R: ...


def execute_with_retry(fn: Callable[[], Any], **options: Unpack[CallKeywords]) -> Any:
    """Call ``fn()`` and retry on any exception (the seed's basic variant); return its value.

    ``options`` are :class:`RetryPolicy` keywords: ``max_retries=1``, ``timeout=30.0``
    (seconds per attempt), ``deadline`` (seconds for the whole call, waits included;
    ``fn`` sees it through ``deadline.remaining()``), ``operation_name`` (default:
    ``fn.__qualname__``), ``on_retry(attempt, error)``, backoff and ``lang``.
    ``classify(error)`` may return ``False`` to raise an error at once (or a
    :class:`Classification`).  The last
    attempt's exception is raised with its attempt history; a timed-out attempt raises
    :class:`CallTimeoutError` (see the module doc for what happens to it)::

        order = execute_with_retry(lambda: sdk.create(order), max_retries=2, timeout=10.0)

    With a coroutine function it returns an awaitable: each attempt is awaited in the
    caller's task, cut at its deadline by cancellation, and the waits are
    ``asyncio.sleep``::

        order = await execute_with_retry(sdk_async.create, max_retries=2)
    """
    is_async = _check_fn(fn, "execute_with_retry")
    config = _CallOptions.build(smart=False, caller="execute_with_retry", options=options)
    if is_async:
        return _run_async(fn, config, _operation_name(fn, config.policy))
    return _run(fn, config, _operation_name(fn, config.policy))


@overload
def execute_with_smart_retry(fn: Callable[[], Coroutine[Any, Any, R]],
                             **options: Unpack[SmartCallKeywords]) -> Coroutine[Any, Any, R]:
    ...


@overload
def execute_with_smart_retry(fn: Callable[[], R], **options: Unpack[SmartCallKeywords]) -> R: ...


def execute_with_smart_retry(fn: Callable[[], Any],
                             **options: Unpack[SmartCallKeywords]) -> Any:
    """Call ``fn()`` and retry only errors a retry may fix; raise any other at once.

    Retried: ``ECONNRESET`` / ``ETIMEDOUT`` / ``ECONNREFUSED`` and DNS failures, timeouts
    (``TimeoutError``, ``requests`` timeouts, a timed-out attempt), exceptions carrying an
    HTTP ``status`` / ``status_code`` / ``response.status_code`` of 5xx or 429 (the policy's
    ``retry_statuses``), and messages containing 超时 or "timeout".  Everything else (4xx,
    the caller's business errors) is raised after one attempt.  ``idempotent=False``
    narrows it to failures known to precede sending (see the module doc).  Extend the
    table with ``retry_on=(MyError, ...)`` or ``classify(error) -> Classification | bool |
    None``::

        result = execute_with_smart_retry(lambda: sdk.query(order_id), timeout=10.0,
                                          retry_on=sdk.BusyError)

    A coroutine function gets an awaitable, as with :func:`execute_with_retry`.
    """
    is_async = _check_fn(fn, "execute_with_smart_retry")
    config = _CallOptions.build(smart=True, caller="execute_with_smart_retry", options=options)
    if is_async:
        return _run_async(fn, config, _operation_name(fn, config.policy))
    return _run(fn, config, _operation_name(fn, config.policy))


@overload
def with_retry(
    fn: Callable[P, R], /, *, smart: bool = ..., **options: Unpack[SmartCallKeywords]
) -> Callable[P, R]: ...


@overload
def with_retry(
    fn: None = None, /, *, smart: bool = ..., **options: Unpack[SmartCallKeywords]
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def with_retry(
    fn: Optional[Callable[P, R]] = None,
    /,
    *,
    smart: bool = False,
    **options: Unpack[SmartCallKeywords],
) -> Union[Callable[P, R], Callable[[Callable[P, R]], Callable[P, R]]]:
    """Wrap ``fn`` so that every call retries (``execute_with_retry``, or
    ``execute_with_smart_retry`` with ``smart=True``); also a decorator factory.

    The wrapper keeps ``fn``'s signature (for type checkers too) and ``functools.wraps``
    metadata, and exposes the resolved policy as ``wrapper.retry_policy``; the options are
    validated once, when wrapping::

        @with_retry(max_retries=2, timeout=10.0, smart=True, operation_name="查询订单")
        def query_order(order_id: str) -> dict[str, str]: ...

        create = with_retry(sdk.create_task, timeout=60.0)

    On an ``async def`` it returns an ``async def`` (see :func:`execute_with_retry`).
    """
    _check_bool("smart", smart)
    caller = "with_retry"
    config = _CallOptions.build(smart=smart, caller=caller, options=options)

    def decorate(target: Callable[P, R]) -> Callable[P, R]:
        is_async = _check_fn(target, caller)
        operation = _operation_name(target, config.policy)
        wrapper: Any
        if is_async:  # an async def stays an async def

            @functools.wraps(target)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                bound: Any = functools.partial(target, *args, **kwargs)  # R is awaitable
                return await _run_async(bound, config, operation)
        else:

            @functools.wraps(target)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                return _run(functools.partial(target, *args, **kwargs), config, operation)

        wrapper.retry_policy = config.policy
        return cast("Callable[P, R]", wrapper)

    if fn is None:
        return decorate
    return decorate(fn)
