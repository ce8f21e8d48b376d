"""Shared fixtures: a real fault server on loopback, recorded sleeps, captured log lines."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from requests_smartretry.deadline import Watch
from requests_smartretry.faultserver import FaultServer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``stress`` tests (tens of seconds each) run only when ``-m`` names them: CI runs them in
    a step of their own (``python -m pytest -m stress``), so the main suite stays short."""
    if "stress" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="a stress run: selected with -m stress (a CI step of its own)")
    for item in items:
        if item.get_closest_marker("stress") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server shared by a module's Redis cases (tests/redis_server.py; skipped
    without the binary, unless CI=true)."""
    from tests.redis_server import RedisServer

    with RedisServer() as running:
        yield running.url


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """A FaultServer on 127.0.0.1, port 0, stopped after the test."""
    with FaultServer() as running:
        yield running


#: The seed's six lines for a call that fails once with a 503, then succeeds (max_retries=1).
SEED_503_LINES = [
    "[API重试] 生成艺术照 - 第 1 次尝试 (最多 2 次)",
    "[API重试] 生成艺术照 - 第 1 次尝试失败: 服务器错误 (HTTP 503)",
    "[API重试] 生成艺术照 - 准备重试 (剩余 1 次机会)",
    "[API重试] 生成艺术照 - 等待 1000ms 后重试",
    "[API重试] 生成艺术照 - 第 2 次尝试 (最多 2 次)",
    "[API重试] 生成艺术照 - 第 2 次尝试成功",
]


class FakeClock:
    """A monotonic clock the test moves by hand (``clock.now += 5`` or ``advance``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingLock:
    """A lock that counts its acquisitions (put in place of an object's ``_lock`` to show
    which paths take it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acquired = 0

    def __enter__(self) -> None:
        self.acquired += 1
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def observe_while_threads_work(observe: Callable[[], None], work: Callable[[], None],
                               threads: int) -> None:
    """Run ``work`` in ``threads`` threads at once while another thread calls ``observe``
    over and over; return when every one has ended."""
    done = threading.Event()

    def observing() -> None:
        while not done.is_set():
            observe()

    observer = threading.Thread(target=observing)
    observer.start()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    observer.join()


class SleepRecorder:
    """An injectable ``sleep`` that records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    """Record backoff waits instead of sleeping through them."""
    return SleepRecorder()


class LineCollector(logging.Handler):
    """Collects the formatted messages and raw records of the library's logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def lines(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@contextlib.contextmanager
def library_logs_to(handler: logging.Handler) -> Iterator[None]:
    """Send every record of the ``requests_smartretry`` logger (DEBUG up) to ``handler``."""
    target = logging.getLogger("requests_smartretry")
    previous = target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        target.removeHandler(handler)
        target.setLevel(previous)


@pytest.fixture
def log_lines() -> Iterator[LineCollector]:
    """Every record written to the ``requests_smartretry`` logger during the test."""
    collector = LineCollector()
    with library_logs_to(collector):
        yield collector


@contextlib.contextmanager
def watch(seconds: float) -> Iterator[Watch]:
    """A deadline :class:`Watch` armed for the ``with`` body, finished after it (what the
    adapter's ``_attempt`` does around one attempt)."""
    armed = Watch(seconds)
    try:
        yield armed
    finally:
        armed.finish()


def wait_for_child(pid: int, what: str) -> int:
    """The exit code of the forked child ``pid``; fails the test if it hangs."""
    limit = time.monotonic() + 30.0  # generous: a loaded machine; a deadlock never ends
    while True:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > limit:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child deadlocked: {what}")
        time.sleep(0.02)


def fork_while_held(locks: list[threading.Lock], child: Callable[[], int]) -> int:
    """Fork while another thread holds every lock of ``locks``; the child's exit code."""
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        holding.set()
        done.wait(30.0)
        for lock in reversed(locks):
            lock.release()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(10.0)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 3
            try:
                code = child()
            finally:
                os._exit(code)
    finally:
        done.set()
        thread.join()
    return wait_for_child(pid, "a lock held at the fork stayed held")
