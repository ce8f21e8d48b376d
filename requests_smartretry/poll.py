"""Waiting for an asynchronous task: poll until it is done, where "not done yet" is no failure.

::

    from requests_smartretry import poll_until

    response = poll_until(lambda: session.get(f"/tasks/{task_id}"),
                          done=lambda r: r.json()["status"] == "done",
                          deadline=60.0, interval=1.0, interval_max=10.0,
                          operation_name="视频任务状态查询")

Each poll is one call of the callable API (``execute_with_smart_retry``, the one retry
loop): its transient failures are retried by the policy, with the usual log lines and
events.  A value that is not done yet is that call's *success*: no WARNING line, no failed
attempt in the statistics, nothing for the breaker or the budget.  The wait itself writes
one INFO line per interval at most (``[API重试] 视频任务状态查询 - 等待任务完成 …``) and, with
``stats=``, one entry per wait (:meth:`Stats.record_wait`: waits, polls, time to done).

The deadline bounds the whole wait: each poll runs with ``deadline=`` set to what is left
(so a running poll is cut at the wait's deadline, and smart requests inside it see what is
left), a pause that would end after it is cut short, and no poll starts after it.

Shape: :class:`Waiting` decides, and knows no I/O.  Its :meth:`Waiting.steps` is a
generator that yields what to do next, a :class:`Poll` (the driver fetches and sends the
value back, or throws the fetch's error in) or a :class:`Pause` (the driver sleeps), and
returns the done value.  :func:`poll_until` is its synchronous driver (:func:`drive`);
:func:`drive_async` awaits the same steps (for an async fetch, once the callable API can
await one: the poll is then an awaitable smart call, the pause ``asyncio.sleep``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import numbers
import time
from collections.abc import Awaitable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union, overload

from .backoff import parse_retry_after
from .deadline import MIN_ATTEMPT, retry_scope
from .errors import CircuitOpenError, PollDeadlineExceeded, TaskFailedError, attempt_history
from .events import EventKind
from .functions import execute_with_smart_retry, with_retry
from .log import log_wait
from .overrides import current_overrides, retry_options
from .policy import RetryPolicy
from .stats import Stats

__all__ = ["Pause", "Poll", "PollSchedule", "Waiting", "drive", "drive_async", "poll_until"]

T = TypeVar("T")
_log = logging.getLogger("requests_smartretry")


# -- what the decision logic asks the driver to do -------------------------------------------


@dataclass(frozen=True)
class Poll:
    """Make poll ``number`` (1-based) within ``seconds_left``: send back its value, or throw
    its error into the generator."""

    number: int
    seconds_left: float


@dataclass(frozen=True)
class Pause:
    """Sleep ``seconds`` before the next step (send back ``None``)."""

    seconds: float


Step = Union[Poll, Pause]


@dataclass(frozen=True)
class PollSchedule:
    """The intervals between polls: ``interval``, then ×``interval_multiplier`` each time,
    capped at ``interval_max``.

    Example::

        schedule = PollSchedule(interval=1.0, interval_multiplier=2.0, interval_max=5.0)
        schedule.after(None), schedule.after(1.0), schedule.after(4.0)   # 1.0, 2.0, 5.0
    """

    interval: float = 1.0
    interval_multiplier: float = 1.5
    interval_max: float = 30.0

    def __post_init__(self) -> None:
        interval = _seconds("interval", self.interval)
        if interval < MIN_ATTEMPT:
            raise ValueError(f"interval must be at least {MIN_ATTEMPT:g}s, got {self.interval!r}")
        multiplier = _seconds("interval_multiplier", self.interval_multiplier)
        if multiplier < 1.0:
            raise ValueError(f"interval_multiplier must be >= 1 (intervals never shrink), got "
                             f"{self.interval_multiplier!r}")
        cap = _seconds("interval_max", self.interval_max)
        if cap < interval:
            raise ValueError(f"interval_max must be >= interval ({self.interval!r}), got "
                             f"{self.interval_max!r}")
        for name, value in (("interval", interval), ("interval_multiplier", multiplier),
                            ("interval_max", cap)):
            object.__setattr__(self, name, value)

    def after(self, previous: Optional[float]) -> float:
        """The interval that follows ``previous`` (``None``: the first one)."""
        if previous is None:
            return self.interval
        return min(previous * self.interval_multiplier, self.interval_max)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _close(awaitable: Any) -> None:
    """Close a coroutine that will not be awaited (no "never awaited" warning)."""
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


def _callable_or_none(name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {value!r}")


# -- the decision logic ----------------------------------------------------------------------


class Waiting:
    """One wait's decisions: when to poll, how long to pause, when it is done or over.

    Example (driven by hand, as a driver does)::

        waiting = Waiting(done=lambda v: v == "done", deadline=10.0, operation="job")
        steps = waiting.steps()
        step = next(steps)                  # Poll(number=1, seconds_left=10.0)
        step = steps.send("running")        # Pause(seconds=1.0)
        step = steps.send(None)             # Poll(number=2, ...)
        steps.send("done")                  # StopIteration("done")

    Not done is not a failure: :meth:`steps` returns the first value ``done`` accepts;
    raises :class:`PollDeadlineExceeded` (``.last``: the last value) when ``deadline``
    seconds pass first; an error thrown in (a poll that failed for good) or raised by
    ``done`` (a :class:`TaskFailedError`) ends the wait at once, except a poll that gave up
    on a failure a retry may fix (its retries or the budget ran out: the next poll comes
    at the next interval, and the deadline's error carries it as ``last_error``; an open
    circuit breaker: the next poll comes at its next probe) or
    because the server asked for a longer wait than its backoff cap (``Retry-After``):
    that wait becomes the next interval.  A response's ``Retry-After`` is the next
    interval's minimum.  ``clock`` is the monotonic clock (inject it in tests).
    """

    def __init__(self, done: Callable[[Any], Any], *, deadline: float, operation: str,
                 schedule: Optional[PollSchedule] = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_poll: Optional[Callable[[int, Any], Any]] = None,
                 describe: Optional[Callable[[Any], Optional[str]]] = None,
                 stats: Optional[Stats] = None, lang: str = "zh", log: bool = True) -> None:
        if not callable(done):
            raise TypeError(f"done must be callable(value) -> bool, got {done!r}")
        if inspect.iscoroutinefunction(done):
            raise TypeError(f"done must be a plain function (value) -> bool, not an async "
                            f"def: its coroutine is always true, got {done!r}")
        if deadline is None:
            raise TypeError("deadline is required: seconds the whole wait may take (a wait "
                            "without one could last for ever)")
        self.deadline = _seconds("deadline", deadline)
        if self.deadline <= 0:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline!r}")
        if not isinstance(operation, str) or not operation:
            raise TypeError(f"operation_name must be a non-empty str or None, got {operation!r}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        _callable_or_none("on_poll", on_poll)
        _callable_or_none("describe", describe)
        if stats is not None and not isinstance(stats, Stats):
            raise TypeError(f"stats must be a Stats or None, got {stats!r}")
        self.done = done
        self.schedule = PollSchedule() if schedule is None else schedule
        self.clock = clock
        self.operation = operation
        self.on_poll = on_poll
        self.describe = describe
        self.stats = stats
        self.lang = lang
        self.log = log
        #: What an async ``on_poll`` returned, for an async driver to await (``None``: a
        #: synchronous wait, which cannot await it; see :meth:`_notify`).
        self.notified: Optional[list[Awaitable[Any]]] = None

    def __repr__(self) -> str:
        return (f"Waiting(operation={self.operation!r}, deadline={self.deadline!r}, "
                f"schedule={self.schedule!r})")

    def steps(self) -> Generator[Step, Any, Any]:
        """The wait, one step at a time (see the class): yields :class:`Poll` and
        :class:`Pause`, returns the done value."""
        clock = self.clock
        started = clock()
        ends_at = started + self.deadline
        interval: Optional[float] = None
        polls = 0
        last: Any = None
        failed: Optional[Exception] = None  # the last poll's error, when it failed
        state: Optional[str] = None
        while True:
            left = ends_at - clock()
            if left <= MIN_ATTEMPT:  # no poll starts after the deadline
                raise self._over(polls, last, state, clock() - started, failed) from failed
            polls += 1
            asked: Optional[float]
            try:
                value = yield Poll(polls, left)
            except Exception as exc:
                failed = exc
                reason, asked = _gave_up(exc)
                if reason == "deadline" or ends_at - clock() <= MIN_ATTEMPT:
                    raise self._over(polls, last, state, clock() - started, exc) from exc
                if isinstance(exc, TaskFailedError):  # the poll itself saw the failure
                    self._ended("poll_failed", "failed", polls, clock() - started,
                                exc.status or state, reason=_failure_text(exc))
                    raise
                if isinstance(exc, CircuitOpenError):
                    # The breaker refuses the service until its next probe; the task is
                    # not affected: poll again then (the deadline still bounds the wait).
                    asked = exc.retry_in
                elif reason in _STILL_TRANSIENT:
                    # The poll's retries ran out on a failure a retry may fix (a 503
                    # outage): the task exists and a poll is idempotent, so the wait
                    # goes on until its deadline, which then carries this error.
                    asked = None
                elif reason != "retry_after_too_long" or asked is None:
                    self._ended("poll_error", "error", polls, clock() - started, state,
                                reason=type(exc).__name__)
                    raise
                # else the server asked for more time than the poll's backoff cap: come
                # back then.
            else:
                failed = None
                last = value
                state = self._state(value)
                self._notify(polls, value)
                try:
                    finished = self.done(value)
                    if inspect.isawaitable(finished):  # always true: it would end the wait
                        _close(finished)
                        raise TypeError(f"done must return a bool, not an awaitable; got "
                                        f"{finished!r} from {self.done!r}")
                except TaskFailedError as exc:
                    self._ended("poll_failed", "failed", polls, clock() - started,
                                exc.status or state, reason=_failure_text(exc))
                    raise
                except Exception as exc:
                    self._ended("poll_error", "error", polls, clock() - started, state,
                                reason=type(exc).__name__)
                    raise
                if finished:
                    self._ended("poll_done", "done", polls, clock() - started, state)
                    return value
                asked = retry_after_of(value)
            interval = self.schedule.after(interval)
            pause = interval if asked is None else max(interval, asked)
            left = ends_at - clock()
            if left <= MIN_ATTEMPT:  # done() or on_poll ran past the deadline: no pause
                raise self._over(polls, last, state, clock() - started, failed) from failed
            if pause >= left:
                yield Pause(left)  # the next poll could only start after the deadline
                continue
            resume_at = ends_at - left + pause
            if self.log:
                log_wait(logging.INFO, "poll_wait", self.operation, lang=self.lang,
                         polls=polls, elapsed=clock() - started, wait=pause, state=state)
                # A slow log handler (or one queued behind other threads' records) used
                # part of the pause: the next poll is due when it was, never later, and
                # a pause never runs past the deadline.
                resume_at = min(resume_at, ends_at)
                pause = max(0.0, resume_at - clock())
            yield Pause(pause)

    def _state(self, value: Any) -> Optional[str]:
        if self.describe is None:
            return None
        try:
            state = self.describe(value)
        except Exception:  # the progress line must not end the wait
            return None
        return None if state is None else str(state)[:64]

    def _notify(self, polls: int, value: Any) -> None:
        if self.on_poll is None:
            return
        try:
            result = self.on_poll(polls, value)
        except Exception:
            # A broken progress callback must not end a wait that is going well.
            _log.exception("requests_smartretry: on_poll callback %r raised; still waiting",
                           self.on_poll)
            return
        if not inspect.isawaitable(result):
            return
        if self.notified is not None:  # an async wait: awaited before the pause
            self.notified.append(result)
            return
        _close(result)  # never started: no "never awaited" warning
        _log.error("requests_smartretry: on_poll callback %r is async; a synchronous wait "
                   "cannot await it, so it was not run", self.on_poll)

    async def await_notified(self) -> None:
        """Await what an async ``on_poll`` returned (its failure logged, as a sync one's)."""
        notified = self.notified
        while notified:
            try:
                await notified.pop(0)
            except Exception:
                _log.exception("requests_smartretry: on_poll callback %r raised; still "
                               "waiting", self.on_poll)

    def _ended(self, key: str, outcome: str, polls: int, elapsed: float,
               state: Optional[str], reason: str = "") -> None:
        if self.stats is not None:
            self.stats.record_wait(self.operation, outcome=outcome, polls=polls,
                                   seconds=elapsed)
        if self.log:
            # A task done at the first poll is quiet, as a first-attempt success is.
            level = logging.DEBUG if key == "poll_done" and polls == 1 else logging.INFO
            log_wait(level, key, self.operation, lang=self.lang, polls=polls,
                     elapsed=elapsed, state=state, reason=reason)

    def _over(self, polls: int, last: Any, state: Optional[str], elapsed: float,
              failed: Optional[Exception]) -> PollDeadlineExceeded:
        if self.stats is not None:
            self.stats.record_wait(self.operation, outcome="deadline", polls=polls,
                                   seconds=elapsed)
        if self.log:
            log_wait(logging.ERROR, "poll_deadline", self.operation, lang=self.lang,
                     polls=polls, elapsed=elapsed, state=state, deadline=self.deadline)
        failure = "" if failed is None else f"; the last poll failed: {type(failed).__name__}"
        return PollDeadlineExceeded(
            f"{self.operation}: not done within the {self.deadline:g}s deadline "
            f"({polls} poll(s){failure})", last=last, polls=polls, deadline=self.deadline,
            last_error=failed)


#: Why a poll's call gave up on a failure a retry may still fix (its retries or the
#: retry budget ran out): the wait polls again at the next interval.
_STILL_TRANSIENT = frozenset({"exhausted", "verdict_limit", "budget", "circuit_open"})


def _failure_text(exc: TaskFailedError) -> str:
    """The vendor's code (and status) for the log line; never the task's content."""
    code = exc.code if exc.code is not None else exc.status
    return str(code)[:64]


def _gave_up(exc: BaseException) -> tuple[Optional[str], Optional[float]]:
    """Why the poll's call gave up (its GIVE_UP event), and the server's Retry-After."""
    for event in reversed(attempt_history(exc)):
        if event.kind is EventKind.GIVE_UP:
            return event.give_up_reason, event.retry_after
    return None, None


def retry_after_of(value: Any) -> Optional[float]:
    """The seconds a response (``requests`` or ``httpx``) asks to wait in its
    ``Retry-After`` header; ``None`` for anything else or a malformed header."""
    headers = getattr(value, "headers", None)
    if headers is None or not hasattr(value, "status_code"):
        return None
    try:
        text = headers.get("Retry-After")
    except Exception:  # a foreign object with headers of its own kind
        return None
    return parse_retry_after(text, now=time.time())


# -- the synchronous driver ----------------------------------------------------------------


def drive(steps: Generator[Step, Any, T], poll: Callable[[Poll], Any],
          sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``steps`` (:meth:`Waiting.steps`): ``poll(step)`` for each :class:`Poll`, whose
    value is sent back (or whose error is thrown in), ``sleep`` for each :class:`Pause`."""
    try:
        step = next(steps)
        while True:
            if isinstance(step, Pause):
                sleep(step.seconds)
                step = steps.send(None)
                continue
            try:
                value = poll(step)
            except Exception as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(value)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        steps.close()


async def drive_async(steps: Generator[Step, Any, T], poll: Callable[[Poll], Awaitable[Any]],
                      sleep: Callable[[float], Awaitable[Any]]) -> T:
    """:func:`drive` for asyncio: the same steps, with ``await poll(step)`` and ``await
    sleep(seconds)`` (``asyncio.sleep``), so the event loop is never blocked.  The
    decisions are :meth:`Waiting.steps`' alone: no second loop to keep in step."""
    try:
        step = next(steps)
        while True:
            if isinstance(step, Pause):
                await sleep(step.seconds)
                step = steps.send(None)
                continue
            try:
                value = await poll(step)
            except Exception as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(value)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        steps.close()


@overload
def poll_until(
    fetch: Callable[[], Coroutine[Any, Any, T]],
    *,
    done: Callable[[T], Any],
    deadline: float,
    interval: float = 1.0,
    interval_multiplier: float = 1.5,
    interval_max: float = 30.0,
    operation_name: Optional[str] = None,
    on_poll: Optional[Callable[[int, T], Any]] = None,
    describe: Optional[Callable[[T], Optional[str]]] = None,
    stats: Optional[Stats] = None,
    **options: Any,
) -> Coroutine[Any, Any, T]: ...


@overload
def poll_until(
    fetch: Callable[[], T],
    *,
    done: Callable[[T], Any],
    deadline: float,
    interval: float = 1.0,
    interval_multiplier: float = 1.5,
    interval_max: float = 30.0,
    operation_name: Optional[str] = None,
    on_poll: Optional[Callable[[int, T], Any]] = None,
    describe: Optional[Callable[[T], Optional[str]]] = None,
    stats: Optional[Stats] = None,
    **options: Any,
) -> T: ...


def poll_until(
    fetch: Callable[[], Any],
    *,
    done: Callable[[Any], Any],
    deadline: float,
    interval: float = 1.0,
    interval_multiplier: float = 1.5,
    interval_max: float = 30.0,
    operation_name: Optional[str] = None,
    on_poll: Optional[Callable[[int, Any], Any]] = None,
    describe: Optional[Callable[[Any], Optional[str]]] = None,
    stats: Optional[Stats] = None,
    **options: Any,
) -> Any:
    """Call ``fetch()`` until ``done(value)`` is true and return that value.

    Each poll is one ``execute_with_smart_retry(fetch, deadline=<time left>, **options)``:
    transient failures (network, timeouts, 5xx, 429) are retried by the policy
    (``options``: :class:`RetryPolicy` fields such as ``max_retries``, ``timeout``,
    ``backoff_base``, ``lang``, ``log``, and the callable API's ``hooks``, ``breaker``,
    ``budget``, ``retry_on``, ``classify``, ``run_in_thread``, ``sleep``, ``clock``).  A
    value that is not done is no failure.  Between polls the wait grows from ``interval``
    by ``interval_multiplier`` up to ``interval_max``; a response's ``Retry-After`` is the
    next interval's minimum.  ``deadline`` (seconds, required) bounds the whole wait:
    :class:`PollDeadlineExceeded` (a ``TimeoutError``, ``.last`` the last value) is raised
    when it passes, a running poll is cut at it, and no poll starts after it.  An error
    that is not retryable (a 4xx, a business error, a :class:`TaskFailedError` raised by
    ``done``) ends the wait at once; a poll whose retries run out on a retryable one (an
    outage) is followed by the next poll, and ``PollDeadlineExceeded.last_error`` is the
    last poll's error.

    ``on_poll(number, value)`` is called after every poll; ``describe(value)`` gives the
    status shown in the progress line (``状态 running``); ``stats`` (a :class:`Stats`)
    counts the wait (waits, polls, seconds to done).  ``operation_name`` defaults to
    ``fetch``'s name::

        video_done = poll_until(lambda: client.get_task(task_id),
                                done=lambda task: task.status == "succeeded",
                                deadline=600.0, interval=2.0, interval_max=20.0,
                                operation_name="视频任务状态查询")

    With a coroutine function as ``fetch`` it returns an awaitable: the same steps, each
    poll awaited in the caller's task (cancelled at the deadline), the pauses
    ``asyncio.sleep``::

        task = await poll_until(fetch_task_async, done=..., deadline=600.0)
    """
    waiting, poll, sleep = prepare(fetch, done=done, deadline=deadline, interval=interval,
                                   interval_multiplier=interval_multiplier,
                                   interval_max=interval_max, operation_name=operation_name,
                                   on_poll=on_poll, describe=describe, stats=stats,
                                   options=dict(options))
    if _is_async(fetch):  # the same steps, awaited: an awaitable for the caller
        return _drive_waiting(waiting, poll, _async_sleep(sleep))
    return drive(waiting.steps(), poll, sleep)


async def _drive_waiting(waiting: Waiting, poll: Callable[[Poll], Awaitable[Any]],
                         sleep: Callable[[float], Awaitable[Any]]) -> Any:
    """:func:`drive_async` of ``waiting``'s steps, awaiting what an async ``on_poll``
    returned before the pause after its poll (the pause shortened by that time) or, after
    the last poll, before the wait ends."""
    waiting.notified = []

    async def pause(seconds: float) -> None:
        if waiting.notified:
            started = time.monotonic()
            await waiting.await_notified()
            seconds = max(0.0, seconds - (time.monotonic() - started))
        await sleep(seconds)

    try:
        value = await drive_async(waiting.steps(), poll, pause)
    except Exception:
        await waiting.await_notified()
        raise
    except BaseException:  # cancelled: what is left is not run
        for notified in waiting.notified:
            _close(notified)
        raise
    await waiting.await_notified()
    return value


def _is_async(fetch: Any) -> bool:
    return inspect.iscoroutinefunction(fetch) or inspect.iscoroutinefunction(
        getattr(fetch, "__call__", None))  # noqa: B004 - an object with an async __call__


def _async_sleep(sleep: Callable[[float], Any]) -> Callable[[float], Awaitable[Any]]:
    """The waits of an async wait: ``asyncio.sleep``, or the ``sleep=`` given (awaited
    when it returns an awaitable)."""
    if sleep is time.sleep:
        return asyncio.sleep

    async def wait(seconds: float) -> None:
        waited = sleep(seconds)
        if inspect.isawaitable(waited):
            await waited

    return wait


def prepare(fetch: Callable[[], Any], *, done: Callable[[Any], Any], deadline: float,
            interval: float, interval_multiplier: float, interval_max: float,
            operation_name: Optional[str], on_poll: Optional[Callable[[int, Any], Any]],
            describe: Optional[Callable[[Any], Optional[str]]], stats: Optional[Stats],
            options: dict[str, Any]) -> tuple[Waiting, Callable[[Poll], Any],
                                              Callable[[float], None]]:
    """Validate a wait's arguments once and build its parts: the :class:`Waiting`, the
    function making one poll (one smart call within the time left) and the sleep."""
    _check_fetch(fetch)
    unknown = set(options) - RetryPolicy.field_names() - _CALL_KEYWORDS
    if unknown:
        raise TypeError(f"poll_until() got unexpected keyword(s): {', '.join(sorted(unknown))}")
    if operation_name is not None and (not isinstance(operation_name, str) or not operation_name):
        raise TypeError(f"operation_name must be a non-empty str or None, got {operation_name!r}")
    # A retry_options(deadline=...) block around the wait overrides its deadline, as it
    # does any smart call's; each poll then runs in a block of its own, with what is left.
    outer = current_overrides()
    overridden = outer is not None and outer.fields.get("deadline") is not None
    if overridden:
        deadline = outer.fields["deadline"]  # type: ignore[union-attr]
    # The callable API validates every keyword (and refuses an async or generator fetch)
    # once, here, with its own messages; each poll then only sets the time left.
    wrapped = with_retry(fetch, smart=True, deadline=deadline, **options)
    policy = wrapped.retry_policy  # type: ignore[attr-defined]
    operation = operation_name or policy.operation_name or _name_of(fetch)
    schedule = PollSchedule(interval, interval_multiplier, interval_max)
    waiting = Waiting(done, deadline=deadline, operation=operation, schedule=schedule,
                      clock=options.get("clock", time.monotonic), on_poll=on_poll,
                      describe=describe, stats=stats, lang=policy.lang, log=policy.log)
    options["operation_name"] = operation
    sleep: Callable[[float], None] = options.get("sleep", time.sleep)
    # The wait's deadline on the monotonic clock, as the retry scope reads it.  Each poll's
    # deadline= is relative, counted from the moment its call starts; a thread stalled
    # between the wait's check and that moment (a busy CPU, many threads) would move it
    # past the wait's.  Inside the poll the absolute one bounds every request it sends.
    ends_at = time.monotonic() + deadline

    def bounded() -> Any:
        with retry_scope(ends_at):
            return fetch()

    def poll(step: Poll) -> Any:
        if overridden:
            with retry_options(deadline=step.seconds_left):
                return execute_with_smart_retry(bounded, **options)
        return execute_with_smart_retry(bounded, deadline=step.seconds_left, **options)

    async def bounded_async() -> Any:
        with retry_scope(ends_at):
            return await fetch()

    async def poll_async(step: Poll) -> Any:
        if overridden:  # the block must be open while the poll runs, not while it starts
            with retry_options(deadline=step.seconds_left):
                return await execute_with_smart_retry(bounded_async, **options)
        return await execute_with_smart_retry(bounded_async, deadline=step.seconds_left,
                                              **options)

    return waiting, poll_async if _is_async(fetch) else poll, sleep


#: The callable API's own keywords (every other one of ``options`` is a policy field).
_CALL_KEYWORDS = frozenset({"policy", "hooks", "breaker", "budget", "sleep", "clock",
                            "run_in_thread", "retry_on", "classify"})


def _check_fetch(fetch: Any) -> None:
    if not callable(fetch):
        raise TypeError(f"poll_until() needs a callable fetch, got {fetch!r}")
    if inspect.isasyncgenfunction(fetch) or inspect.isgeneratorfunction(fetch):
        raise TypeError(f"poll_until() cannot poll the generator function {fetch!r}: pass "
                        "a function that returns the value (or an async def)")


def _name_of(fetch: Callable[..., Any]) -> str:
    name = getattr(fetch, "__qualname__", None)
    return name if isinstance(name, str) and name else type(fetch).__qualname__
