"""retry_options(): per-call policy overrides for every smart call started in a block."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from requests_smartretry import (
    RetryPolicy,
    execute_with_smart_retry,
    retry_options,
    smart_session,
    with_retry,
)
from requests_smartretry.faultserver import FaultServer
from requests_smartretry.overrides import current_overrides, effective_policy


class Waits:
    """An injected sleep that records the backoff instead of sleeping."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


def test_max_retries_zero_makes_a_503_one_request(server: FaultServer) -> None:
    """Inside retry_options(max_retries=0) a 503 is one request; outside it, two."""
    session = smart_session(max_retries=1, sleep=Waits())
    with retry_options(max_retries=0):
        assert session.get(server.url("/status/503")).status_code == 503
    assert server.hits("/status/503") == 1
    assert session.get(server.url("/status/503")).status_code == 503
    assert server.hits("/status/503") == 3


def test_blocks_nest_and_the_inner_value_wins(server: FaultServer) -> None:
    """An inner block's field wins, the outer block's other fields still apply, and
    leaving the inner block restores the outer one."""
    session = smart_session(max_retries=1, sleep=Waits())
    with retry_options(max_retries=0, backoff_base=0.5):
        with retry_options(max_retries=3):
            assert current_overrides().fields == {  # type: ignore[union-attr]
                "max_retries": 3, "backoff_base": 0.5}
            session.get(server.url("/status/503"))
            assert server.hits() == 4
        session.get(server.url("/status/503"))
        assert server.hits() == 5
    assert current_overrides() is None


@pytest.mark.slow
def test_deadline_cuts_a_hanging_call(server: FaultServer) -> None:
    """retry_options(deadline=0.5) cuts a call to a server that never answers at ~0.5 s,
    although the session's own timeout is 30 s."""
    session = smart_session(max_retries=1, timeout=30.0)
    started = time.monotonic()
    with retry_options(deadline=0.5), pytest.raises(requests.exceptions.Timeout):
        session.get(server.url("/hang?seconds=10"))
    took = time.monotonic() - started
    assert 0.4 <= took < 2.0


def test_threads_each_see_their_own_block(server: FaultServer) -> None:
    """Two threads in blocks open at the same time each get their own max_retries."""
    session = smart_session(max_retries=1, sleep=Waits())
    both_open = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def run(name: str, retries: int) -> None:
        try:
            with retry_options(max_retries=retries):
                both_open.wait()
                session.get(server.url(f"/status/503?who={name}"))
                both_open.wait()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("a", 0)),
               threading.Thread(target=run, args=("b", 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    hits = [r.path for r in server.received()]
    assert hits.count("/status/503?who=a") == 1
    assert hits.count("/status/503?who=b") == 3
    assert current_overrides() is None  # the main thread never was in a block


def test_asyncio_tasks_each_see_their_own_block(server: FaultServer) -> None:
    """Concurrent asyncio tasks each see their own block, across awaits, and a call
    handed to a thread from a task (asyncio.to_thread) runs with the task's fields."""
    session = smart_session(max_retries=1, sleep=Waits())

    async def task(name: str, retries: int, turn: asyncio.Event, other: asyncio.Event) -> int:
        with retry_options(max_retries=retries):
            turn.set()
            await other.wait()  # the other task's block is open now
            assert effective_policy(RetryPolicy()).max_retries == retries
            await asyncio.to_thread(session.get, server.url(f"/status/503?who={name}"))
        return retries

    async def main() -> list[int]:
        a_open, b_open = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(task("a", 0, a_open, b_open), task("b", 2, b_open, a_open))

    assert asyncio.run(main()) == [0, 2]
    hits = [r.path for r in server.received()]
    assert hits.count("/status/503?who=a") == 1
    assert hits.count("/status/503?who=b") == 3


def test_the_callable_api_follows_the_block() -> None:
    """execute_with_smart_retry and a with_retry function make one attempt inside
    retry_options(max_retries=0), and their usual two outside it."""
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        raise TimeoutError("upstream timeout")

    with retry_options(max_retries=0), pytest.raises(TimeoutError):
        execute_with_smart_retry(flaky, max_retries=1, sleep=Waits())
    assert len(calls) == 1
    wrapped = with_retry(flaky, max_retries=1, sleep=Waits(), run_in_thread=False)
    with retry_options(max_retries=0, operation_name="查询"), pytest.raises(TimeoutError) as info:
        wrapped()
    assert len(calls) == 2
    assert {event.operation for event in info.value.retry_history} == {"查询"}  # type: ignore[attr-defined]
    with pytest.raises(TimeoutError):
        wrapped()
    assert len(calls) == 4


def test_the_httpx_transport_follows_the_block(server: FaultServer) -> None:
    """An httpx smart client makes one request for a 503 inside retry_options(max_retries=0)."""
    pytest.importorskip("httpx")
    from requests_smartretry.httpx import smart_client

    with smart_client(max_retries=1, sleep=Waits()) as client:
        with retry_options(max_retries=0):
            assert client.get(server.url("/status/503")).status_code == 503
        assert server.hits() == 1
        client.get(server.url("/status/503"))
        assert server.hits() == 3


def test_an_unknown_field_is_a_type_error_naming_it() -> None:
    """A misspelt field is refused when the block is entered, naming it."""
    with pytest.raises(TypeError, match="max_retry"), \
            retry_options(max_retry=0):  # type: ignore[call-arg]
        pass  # pragma: no cover


@pytest.mark.parametrize(("fields", "named"), [
    ({"max_retries": -1}, "max_retries"),
    ({"timeout": 0.0}, "timeout"),
    ({"jitter": "sometimes"}, "jitter"),
    ({"deadline": float("nan")}, "deadline"),
])
def test_a_bad_value_is_refused_naming_the_field(fields: dict, named: str) -> None:
    """A value the policy refuses is refused when the block is entered, naming the field."""
    with pytest.raises(ValueError, match=named), retry_options(**fields):
        pass  # pragma: no cover


def test_a_value_that_does_not_fit_the_policy_fails_the_call(server: FaultServer) -> None:
    """A backoff_base above the call's policy's backoff_max is a ValueError naming both, at
    the call, and nothing is sent."""
    session = smart_session(backoff_max=5.0)
    with retry_options(backoff_base=10.0), pytest.raises(ValueError, match="backoff_max"):
        session.get(server.url("/ok"))
    assert server.hits() == 0


def test_a_repeated_block_reuses_its_derived_policy() -> None:
    """The same fields in a new block give the same Overrides and the same derived policy
    object (a loop around a block validates once)."""
    policy = RetryPolicy(timeout=10.0)
    derived = []
    for _ in range(3):
        with retry_options(max_retries=0, timeout=2) as overrides:
            derived.append(overrides.apply(policy))
    assert derived[0] is derived[1] is derived[2]
    assert (derived[0].max_retries, derived[0].timeout) == (0, 2.0)
    assert policy.max_retries == 1  # the original is untouched


def test_overridden_names_reach_the_statistics(server: FaultServer) -> None:
    """A block's operation_name names the call in the adapter's own statistics, and the
    adapter's policy keeps its name outside the block."""
    from requests_smartretry import stats_of

    session = smart_session(operation_name="下载", sleep=Waits())
    with retry_options(operation_name="轮询"):
        session.get(server.url("/ok"))
    session.get(server.url("/ok"))
    snapshot = stats_of(session).snapshot()
    assert (snapshot["轮询"]["calls"], snapshot["下载"]["calls"]) == (1, 1)


def test_plain_threads_do_not_inherit_a_block_unless_the_context_is_copied() -> None:
    """A ThreadPoolExecutor worker sees no block (as documented) unless the caller submits
    copy_context().run, which carries it."""
    import concurrent.futures

    with retry_options(max_retries=0) as block, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(current_overrides).result() is None
        assert pool.submit(contextvars.copy_context().run, current_overrides).result() is block


def test_a_block_in_a_generator_closed_in_another_context_exits_cleanly() -> None:
    """A generator that yields inside a block, advanced in one context and closed in
    another, closes without the ContextVar token's ValueError and leaves no block."""
    def steps() -> Iterator[int]:
        with retry_options(max_retries=0):
            yield 1

    generator = steps()
    contextvars.copy_context().run(next, generator)
    generator.close()
    assert current_overrides() is None
