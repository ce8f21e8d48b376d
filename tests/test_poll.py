"""poll_until: a value that is not done is no failure; the deadline bounds the whole wait."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import pytest
import requests

from requests_smartretry import (
    AttemptEvent,
    EventKind,
    PollDeadlineExceeded,
    Stats,
    TaskFailedError,
    poll_until,
)
from requests_smartretry.poll import Pause, Poll, PollSchedule, Waiting
from tests.conftest import FakeClock, LineCollector


class Timeline:
    """A fake clock whose injected sleep moves it: waits cost no real time."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.clock.advance(seconds)

    def options(self, **extra: Any) -> dict[str, Any]:
        return {"clock": self.clock, "sleep": self.sleep, "run_in_thread": False,
                "backoff_base": 0.5, **extra}


def sequence(*values: Any) -> Callable[[], Any]:
    """A fetch returning ``values`` in turn (raising the exceptions among them)."""
    queue = list(values)
    calls: list[int] = []

    def fetch() -> Any:
        calls.append(1)
        value = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(value, BaseException):
            raise value
        return value

    fetch.calls = calls  # type: ignore[attr-defined]
    return fetch


def response(status: int = 200, retry_after: str | None = None) -> requests.Response:
    answer = requests.Response()
    answer.status_code = status
    if retry_after is not None:
        answer.headers["Retry-After"] = retry_after
    answer._content = b"{}"
    return answer


def test_not_done_is_no_failure(log_lines: LineCollector) -> None:
    """Four polls, three of them not done: four calls, no FAILURE event, no WARNING line,
    the wait counted once with its polls, and one INFO progress line per pause."""
    line = Timeline()
    events: list[AttemptEvent] = []
    stats = Stats()
    fetch = sequence("queued", "running", "running", "done")
    value = poll_until(fetch, done=lambda v: v == "done", deadline=60.0,
                       operation_name="视频任务状态查询", describe=str, stats=stats,
                       hooks=[events.append, stats], **line.options())
    assert value == "done" and len(fetch.calls) == 4  # type: ignore[attr-defined]
    assert not [e for e in events if e.kind is EventKind.FAILURE]
    assert not [r for r in log_lines.records if r.levelno >= logging.WARNING]
    row = stats.snapshot()["视频任务状态查询"]
    assert (row["calls"], row["attempts_failed"], row["retries"]) == (4, 0, 0)
    assert (row["waits"], row["waits_by_outcome"], row["polls"]) == (1, {"done": 1}, 4)
    assert row["seconds_to_done"]["max"] == pytest.approx(1.0 + 1.5 + 2.25)
    progress = [r.getMessage() for r in log_lines.records
                if getattr(r, "retry_event", "") == "poll_wait"]
    assert progress[0] == ("[API重试] 视频任务状态查询 - 等待任务完成 (第 1 次查询, 状态 queued, "
                           "已等待 0ms), 1000ms 后再次查询")
    assert len(progress) == 3 and all(r.levelno == logging.INFO for r in log_lines.records
                                      if getattr(r, "retry_event", "") == "poll_wait")


def test_interval_grows_to_its_cap() -> None:
    """The pauses grow by the multiplier and stop at interval_max."""
    line = Timeline()
    fetch = sequence(*(["running"] * 6), "done")
    poll_until(fetch, done=lambda v: v == "done", deadline=600.0, interval=1.0,
               interval_multiplier=2.0, interval_max=5.0, **line.options())
    assert line.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_retry_after_is_the_next_intervals_minimum() -> None:
    """A response's Retry-After lengthens the next pause (never shortens it)."""
    line = Timeline()
    fetch = sequence(response(retry_after="7"), response(retry_after="0"), response(201))
    poll_until(fetch, done=lambda r: r.status_code == 201, deadline=60.0, **line.options())
    assert line.sleeps == [7.0, 1.5]


def test_deadline_raises_with_the_last_value_and_no_late_poll() -> None:
    """Past the deadline no poll starts: the pause is cut to the deadline, then
    PollDeadlineExceeded (a TimeoutError) carries the last value."""
    line = Timeline()
    stats = Stats()
    started: list[float] = []

    def fetch() -> str:
        started.append(line.clock())
        return "running"

    with pytest.raises(PollDeadlineExceeded) as raised:
        poll_until(fetch, done=lambda v: v == "done", deadline=10.0, interval=3.0,
                   interval_multiplier=1.0, operation_name="job", stats=stats,
                   **line.options())
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.last == "running" and raised.value.polls == 4
    assert max(started) < 1000.0 + 10.0
    assert line.clock() == pytest.approx(1010.0)
    assert stats.snapshot()["job"]["waits_by_outcome"] == {"deadline": 1}


def test_transient_failure_is_retried_and_the_wait_goes_on() -> None:
    """A poll failing with a connection error is retried by the policy; the wait goes on."""
    line = Timeline()
    fetch = sequence("running", requests.ConnectionError("reset"), "done")
    assert poll_until(fetch, done=lambda v: v == "done", deadline=60.0,
                      **line.options()) == "done"
    assert len(fetch.calls) == 3  # type: ignore[attr-defined]
    assert line.sleeps == [1.0, 0.5]  # the pause, then the poll's backoff


def test_error_that_is_not_retryable_ends_the_wait_at_once() -> None:
    """A business error ends the wait after one call, counted as an error."""
    line = Timeline()
    stats = Stats()
    fetch = sequence(KeyError("status"))
    with pytest.raises(KeyError):
        poll_until(fetch, done=bool, deadline=60.0, stats=stats, operation_name="job",
                   **line.options())
    assert len(fetch.calls) == 1 and line.sleeps == []  # type: ignore[attr-defined]
    assert stats.snapshot()["job"]["waits_by_outcome"] == {"error": 1}


def test_task_failed_in_done_ends_the_wait() -> None:
    """A TaskFailedError raised by ``done`` ends the wait at once, counted as failed."""
    line = Timeline()
    stats = Stats()

    def done(value: str) -> bool:
        if value == "failed":
            raise TaskFailedError("failed", status="failed", code="E1")
        return value == "done"

    with pytest.raises(TaskFailedError) as raised:
        poll_until(sequence("running", "failed"), done=done, deadline=60.0, stats=stats,
                   operation_name="job", **line.options())
    assert raised.value.code == "E1"
    assert stats.snapshot()["job"]["waits_by_outcome"] == {"failed": 1}


def test_retry_after_above_the_backoff_cap_becomes_the_next_interval() -> None:
    """A 429 asking for more than the poll's backoff cap is not the end of the wait: the
    server's delay becomes the next pause."""
    line = Timeline()
    limited = requests.HTTPError("429", response=response(429, retry_after="20"))
    fetch = sequence(limited, "done")
    assert poll_until(fetch, done=lambda v: v == "done", deadline=60.0,
                      **line.options()) == "done"
    assert line.sleeps == [20.0]


def test_on_poll_sees_every_value_and_a_broken_one_is_harmless(
        log_lines: LineCollector) -> None:
    """``on_poll(number, value)`` follows every poll; one that raises is logged, and the
    wait goes on."""
    line = Timeline()
    seen: list[tuple[int, str]] = []

    def on_poll(number: int, value: str) -> None:
        seen.append((number, value))
        raise RuntimeError("broken callback")

    poll_until(sequence("a", "b"), done=lambda v: v == "b", deadline=60.0, on_poll=on_poll,
               **line.options())
    assert seen == [(1, "a"), (2, "b")]
    assert any("on_poll callback" in r.getMessage() for r in log_lines.records)


def test_english_lines() -> None:
    """lang="en" writes the progress line in English."""
    line = Timeline()
    collector = LineCollector()
    logger = logging.getLogger("requests_smartretry")
    logger.addHandler(collector)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        poll_until(sequence("running", "done"), done=lambda v: v == "done", deadline=60.0,
                   operation_name="video task", describe=str, lang="en", **line.options())
    finally:
        logger.removeHandler(collector)
        logger.setLevel(previous)
    assert collector.lines == [
        "[API retry] video task - waiting for the task (poll 1, status running, 0ms so far); "
        "next poll in 1000ms",
        "[API retry] video task - task done after 2 poll(s) in 1000ms",
    ]


def test_the_decisions_run_without_io() -> None:
    """Waiting.steps yields what to do and decides from what it is told (sans-I/O)."""
    clock = FakeClock()
    steps = Waiting(lambda v: v == "done", deadline=5.0, operation="job", clock=clock,
                    log=False).steps()
    assert next(steps) == Poll(1, 5.0)
    assert steps.send("running") == Pause(1.0)
    clock.advance(1.0)
    assert steps.send(None) == Poll(2, 4.0)
    with pytest.raises(StopIteration) as finished:
        steps.send("done")
    assert finished.value.value == "done"


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"deadline": None}, TypeError, "deadline is required"),
    ({"deadline": 0}, ValueError, "deadline must be > 0"),
    ({"deadline": float("nan")}, ValueError, "deadline must be finite"),
    ({"deadline": "60"}, TypeError, "deadline must be a number"),
    ({"interval": 0}, ValueError, "interval must be at least"),
    ({"interval": True}, TypeError, "interval must be a number"),
    ({"interval_multiplier": 0.5}, ValueError, "interval_multiplier must be >= 1"),
    ({"interval_max": 0.5}, ValueError, "interval_max must be >= interval"),
    ({"done": "done"}, TypeError, "done must be callable"),
    ({"on_poll": 3}, TypeError, "on_poll must be callable"),
    ({"stats": {}}, TypeError, "stats must be a Stats"),
    ({"operation_name": ""}, TypeError, "operation_name must be a non-empty str"),
    ({"max_retries": -1}, ValueError, "max_retries"),
    ({"bogus": 1}, TypeError, r"poll_until\(\) got unexpected keyword\(s\): bogus"),
])
def test_bad_arguments_are_refused_by_name(options: dict[str, Any], error: type,
                                           message: str) -> None:
    """Every bad argument is refused before the first poll, naming it and the value."""
    calls: list[int] = []
    arguments: dict[str, Any] = {"done": bool, "deadline": 60.0, **options}
    with pytest.raises(error, match=message):
        poll_until(lambda: calls.append(1), **arguments)
    assert calls == []


def test_an_async_fetch_gives_an_awaitable_wait() -> None:
    """A coroutine function is polled on asyncio: poll_until returns an awaitable, each poll
    is awaited and each pause is the injected sleep (asyncio.sleep by default); a generator
    function or a non-callable is refused with a clear error."""
    import asyncio

    values = iter(["queued", "running", "done"])
    pauses: list[float] = []

    async def fetch() -> str:
        return next(values)

    waiting = poll_until(fetch, done=lambda v: v == "done", deadline=60.0, log=False,
                         sleep=pauses.append)
    assert asyncio.run(waiting) == "done"  # type: ignore[arg-type]
    assert pauses == [1.0, 1.5]

    def pages() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        poll_until(pages, done=bool, deadline=1.0)
    with pytest.raises(TypeError, match="needs a callable fetch"):
        poll_until("https://example.invalid", done=bool, deadline=1.0)  # type: ignore[arg-type]


def test_schedule_repr_and_values() -> None:
    """A schedule is a frozen value with its fields as floats."""
    schedule = PollSchedule(1, 2, 3)
    assert (schedule.after(None), schedule.after(1.0), schedule.after(2.0)) == (1.0, 2.0, 3.0)
    assert "interval_max=3.0" in repr(schedule)


def test_deadline_cuts_a_hung_fetch() -> None:
    """Real time: a fetch that hangs (an SDK call) is abandoned at the wait's deadline and
    PollDeadlineExceeded is raised right after it (the callable API's 50 ms grace, plus a
    generous margin for a loaded machine; far below the fetch's 5 s)."""
    import threading
    import time

    release = threading.Event()
    try:
        started = time.monotonic()
        with pytest.raises(PollDeadlineExceeded) as raised:
            poll_until(lambda: release.wait(5), done=bool, deadline=0.3, log=False)
        elapsed = time.monotonic() - started
    finally:
        release.set()  # the abandoned attempt ends, its worker thread returns to the pool
    assert 0.3 <= elapsed < 0.6
    assert raised.value.polls == 1 and raised.value.last is None


def test_not_done_counts_nothing_against_the_breaker_or_the_budget() -> None:
    """Twenty polls that are not done leave a one-failure breaker closed and spend no
    retry token: for both, each poll is a success."""
    from requests_smartretry import CircuitBreaker, RetryBudget

    line = Timeline()
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60.0)
    budget = RetryBudget()
    before = budget.tokens("job")
    fetch = sequence(*(["running"] * 20), "done")
    poll_until(fetch, done=lambda v: v == "done", deadline=600.0, interval_max=1.0,
               operation_name="job", breaker=breaker, budget=budget, **line.options())
    assert breaker.state("job") == "closed"
    assert budget.tokens("job") >= before


def test_the_same_decisions_drive_an_async_wait() -> None:
    """drive_async runs Waiting.steps with an awaited poll and an awaited sleep: the same
    decisions (interval growth, the done value) without a second loop."""
    import asyncio

    from requests_smartretry.poll import drive_async

    clock = FakeClock()
    values = iter(["queued", "running", "done"])
    pauses: list[float] = []

    async def poll(step: Poll) -> str:
        return next(values)

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock.advance(seconds)

    waiting = Waiting(lambda v: v == "done", deadline=60.0, operation="job", clock=clock,
                      log=False)
    assert asyncio.run(drive_async(waiting.steps(), poll, sleep)) == "done"
    assert pauses == [1.0, 1.5]


def test_a_retry_options_deadline_bounds_the_wait_and_each_poll() -> None:
    """Inside ``retry_options(deadline=3.0)`` the wait's deadline is 3 s (the block
    overrides it, as for any smart call), and each poll still gets only what is left."""
    from requests_smartretry import deadline as deadlines
    from requests_smartretry import retry_options

    line = Timeline()
    seen: list[float] = []

    def fetch() -> str:
        left = deadlines.remaining()
        seen.append(round(left or 0.0, 1))
        return "running"

    with retry_options(deadline=3.0), pytest.raises(PollDeadlineExceeded) as raised:
        poll_until(fetch, done=lambda v: v == "done", deadline=600.0, interval=1.0,
                   interval_multiplier=1.0, **line.options())
    assert raised.value.deadline == 3.0 and raised.value.polls == 3
    assert seen == [3.0, 2.0, 1.0]


def test_deadline_passed_during_on_poll_raises_instead_of_a_negative_pause() -> None:
    """A slow ``on_poll`` (or ``done``) that runs past the deadline ends the wait with
    PollDeadlineExceeded, never a ValueError from a negative sleep."""
    line = Timeline()

    def slow_progress(number: int, value: Any) -> None:
        line.clock.advance(12.0)  # past the 10 s deadline before the pause is computed

    with pytest.raises(PollDeadlineExceeded) as raised:
        poll_until(lambda: "running", done=lambda v: v == "done", deadline=10.0,
                   on_poll=slow_progress, operation_name="job", clock=line.clock,
                   sleep=time.sleep)
    assert raised.value.polls == 1 and raised.value.last == "running"


def test_a_slow_log_handler_neither_delays_the_polls_nor_the_deadline() -> None:
    """A log handler taking 0.5 s per record (on the injected clock): the pause counts
    from the poll, not from the end of its progress line, so the polls keep their
    schedule and the wait ends at the deadline plus its one closing ERROR line."""
    line = Timeline()
    started: list[float] = []

    class SlowHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            line.clock.advance(0.5)

    def fetch() -> str:
        started.append(line.clock())
        return "running"

    logger = logging.getLogger("requests_smartretry")
    handler, level = SlowHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(PollDeadlineExceeded):
            poll_until(fetch, done=lambda v: False, deadline=10.0, interval=2.9,
                       interval_multiplier=1.0, operation_name="job", **line.options())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [round(t - 1000.0, 6) for t in started] == [0.0, 2.9, 5.8, 8.7]
    assert line.clock() == pytest.approx(1010.5)  # the deadline, then the ERROR line


def test_a_poll_out_of_retries_on_a_transient_failure_does_not_end_the_wait() -> None:
    """A poll whose retries all fail on a transient error (an outage) is followed by the
    next poll at the next interval, until the task is done or the deadline passes; then
    PollDeadlineExceeded carries the last poll's error (also as its cause)."""
    line = Timeline()
    outage = requests.ConnectionError("reset")
    fetch = sequence(*([outage] * 4), "done")
    assert poll_until(fetch, done=lambda v: v == "done", deadline=60.0, max_retries=1,
                      **line.options()) == "done"
    assert len(fetch.calls) == 5  # type: ignore[attr-defined]  # 2 polls of 2, then done
    line = Timeline()
    with pytest.raises(PollDeadlineExceeded) as raised:
        poll_until(sequence(*([outage] * 50)), done=bool, deadline=10.0, max_retries=1,
                   **line.options())
    assert raised.value.polls > 2 and raised.value.last_error is outage
    assert raised.value.__cause__ is outage and "ConnectionError" in str(raised.value)


def test_a_poll_stalled_before_its_call_starts_sends_nothing_after_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread stalled between the wait's "time left" and the start of the poll's call
    (a busy CPU, a GC pause: simulated by a 0.3 s stall) does not carry the poll past the
    wait's deadline: the request inside is bounded by the wait's absolute deadline and is
    never sent after it."""
    from requests_smartretry import poll as poll_module
    from requests_smartretry import smart_session
    from requests_smartretry.faultserver import FaultServer

    real_call = poll_module.execute_with_smart_retry

    def stalled(fn: Any, **options: Any) -> Any:
        if options.get("deadline", 1.0) < 0.3:  # the last poll before the deadline
            time.sleep(0.3)
        return real_call(fn, **options)

    monkeypatch.setattr(poll_module, "execute_with_smart_retry", stalled)
    with FaultServer() as server:
        session = smart_session()
        started = time.monotonic()
        with pytest.raises(PollDeadlineExceeded):
            poll_until(lambda: session.get(server.url("/ok")), done=lambda r: False,
                       deadline=0.5, interval=0.3, interval_multiplier=1.0)
        received = server.received()
    assert received and all(r.received_at < started + 0.5 for r in received)


def test_an_open_breaker_pauses_the_wait_until_its_next_probe() -> None:
    """An outage opens the breaker during the wait: the next poll comes at the breaker's
    next probe instead of ending the wait with CircuitOpenError, and the task is seen done."""
    from requests_smartretry import CircuitBreaker

    line = Timeline()
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5.0, clock=line.clock)
    outage = requests.ConnectionError("reset")
    fetch = sequence(outage, outage, "done")
    assert poll_until(fetch, done=lambda v: v == "done", deadline=60.0, max_retries=1,
                      operation_name="job", breaker=breaker, **line.options()) == "done"
    assert len(fetch.calls) == 3  # type: ignore[attr-defined]
    assert line.sleeps == [0.5, 1.0, 4.0]  # backoff, interval, then the breaker's probe


def test_an_async_on_poll_is_awaited_on_an_async_wait(
    caplog: pytest.LogCaptureFixture
) -> None:
    """on_poll may be an ``async def`` when fetch is: it is awaited after each poll (the
    last one's before the wait returns), not dropped as a never-awaited coroutine; one
    that raises is logged and the wait goes on.  A synchronous wait cannot await it: an
    ERROR line says so, and no coroutine is left unawaited."""
    import asyncio
    import gc
    import warnings

    values = iter(["queued", "running", "done"])
    seen: list[tuple[int, str]] = []

    async def on_poll(number: int, value: str) -> None:
        await asyncio.sleep(0)
        seen.append((number, value))
        if number == 2:
            raise ValueError("broken progress callback")

    async def fetch() -> str:
        return next(values)

    caplog.set_level(logging.ERROR, logger="requests_smartretry")
    waiting = poll_until(fetch, done=lambda v: v == "done", deadline=60.0, log=False,
                         on_poll=on_poll, sleep=lambda s: None)
    assert asyncio.run(waiting) == "done"  # type: ignore[arg-type]
    assert seen == [(1, "queued"), (2, "running"), (3, "done")]
    assert "broken progress callback" in caplog.text
    caplog.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "never awaited" RuntimeWarning fails the test
        assert poll_until(lambda: "done", done=bool, deadline=5.0, log=False,
                          on_poll=on_poll) == "done"
        gc.collect()
    assert "is async; a synchronous wait cannot await it" in caplog.text


def test_an_async_done_is_refused_not_taken_as_true() -> None:
    """``done`` decides in the (synchronous) steps: an ``async def`` would return a
    coroutine, always true, ending the wait at its first poll with a value that is not
    done.  It is refused with a clear error, up front or (hidden behind a wrapper) at the
    first poll."""
    import asyncio
    import functools

    async def done(value: int) -> bool:
        return value >= 3

    async def fetch() -> int:
        return 1

    with pytest.raises(TypeError, match="not an async def"):
        poll_until(fetch, done=done, deadline=5.0, log=False)
    wrapped = functools.partial(done)  # not seen as a coroutine function on 3.9
    with pytest.raises(TypeError, match="done must return a bool, not an awaitable"):
        asyncio.run(poll_until(fetch, done=lambda v: wrapped(v), deadline=5.0,  # type: ignore[arg-type]
                               log=False))
