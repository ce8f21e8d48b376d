"""Lifecycle of adapters and sessions: pickling, copying, closing."""

from __future__ import annotations

import copy
import gc
import pickle
import time
from collections.abc import Iterator

import pytest
import requests

from requests_smartretry import (
    RetryPolicy,
    SmartRetryAdapter,
    smart_session,
)
from requests_smartretry.faultserver import FaultServer


def _note_retry(attempt: int, error: BaseException) -> None:
    """A module-level on_retry callback, so that a policy holding it pickles."""


POLICY = RetryPolicy(
    max_retries=3,
    timeout=2.5,
    backoff_base=0.0,
    backoff_max=0.01,
    operation_name="生成艺术照",
    on_retry=_note_retry,
    lang="en",
    retry_statuses=frozenset({503}),
    log=False,
)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


def _adapter_of(session: requests.Session) -> SmartRetryAdapter:
    adapter = session.get_adapter("http://127.0.0.1/")
    assert isinstance(adapter, SmartRetryAdapter)
    return adapter


def _live_connections(adapter: SmartRetryAdapter) -> list[object]:
    """Connections parked in the adapter's pools that still hold an open socket."""
    found = []
    for key in list(adapter.poolmanager.pools.keys()):
        pool = adapter.poolmanager.pools[key]
        for conn in list(pool.pool.queue):  # type: ignore[union-attr]
            if conn is not None and getattr(conn, "sock", None) is not None:
                found.append(conn)
    return found


@pytest.mark.parametrize("clone", [pickle.loads, copy.copy, copy.deepcopy],
                         ids=["pickle", "copy", "deepcopy"])
def test_cloned_adapter_keeps_its_policy(clone: object) -> None:
    """An adapter that is pickled or copied retries exactly as the original did."""
    adapter = SmartRetryAdapter(POLICY)
    source = pickle.dumps(adapter) if clone is pickle.loads else adapter
    twin = clone(source)  # type: ignore[operator]
    assert isinstance(twin, SmartRetryAdapter)
    assert twin.policy == POLICY
    assert twin.policy.on_retry is _note_retry
    assert twin is not adapter


@pytest.mark.parametrize("clone", [pickle.loads, copy.deepcopy], ids=["pickle", "deepcopy"])
def test_cloned_session_retries_with_the_policy(server: FaultServer, clone: object) -> None:
    """A pickled or deep-copied smart session still makes max_retries + 1 attempts."""
    session = smart_session(POLICY)
    source = pickle.dumps(session) if clone is pickle.loads else session
    twin = clone(source)  # type: ignore[operator]
    assert _adapter_of(twin).policy == POLICY
    route = "/status/503"
    before = server.hits(route)
    with twin:
        response = twin.get(server.url(route))
    assert response.status_code == 503
    assert server.hits(route) - before == POLICY.max_attempts
    assert [e.attempt for e in response.retry_history if e.kind.value == "start"] == [1, 2, 3, 4]
    session.close()


def test_session_close_releases_pooled_connections(server: FaultServer) -> None:
    """session.close() closes every keep-alive connection the adapter pooled."""
    session = smart_session(POLICY)
    adapter = _adapter_of(session)
    for _ in range(3):
        assert session.get(server.url("/ok")).status_code == 200
    parked = _live_connections(adapter)
    assert parked, "a keep-alive connection should be pooled after a successful request"
    session.close()
    assert all(getattr(conn, "sock", None) is None for conn in parked)
    assert _live_connections(adapter) == []


def _open_at(server: FaultServer, limit: float = 5.0) -> int:
    """The server's open connections, once they are 0 or ``limit`` seconds passed (the
    server notices a closed connection when its thread reads the end)."""
    ends = time.monotonic() + limit
    while server.open_connections() and time.monotonic() < ends:
        time.sleep(0.02)
    return server.open_connections()


def test_session_close_closes_the_sockets_of_failed_calls_without_the_gc() -> None:
    """After calls that ended on a 5xx or 4xx (whose responses and errors hold each other,
    so only the garbage collector frees them), session.close() still closes every socket
    at once: the server sees no connection left open, with the collector off."""
    with FaultServer() as server:
        session = smart_session(max_retries=1, backoff_base=0.0, log=False)
        gc.disable()
        try:
            for path in ("/status/503", "/status/404"):
                session.get(server.url(path))
            session.post(server.url("/status/500"))
            assert server.open_connections() >= 1
            session.close()
            assert _open_at(server) == 0
        finally:
            gc.enable()
        assert session.get(server.url("/ok")).status_code == 200  # still usable
        session.close()


def test_closing_twice_is_harmless() -> None:
    """Closing an adapter (or a session mounting it twice) more than once does not raise."""
    session = smart_session(POLICY)
    session.close()
    session.close()
    adapter = _adapter_of(session)
    adapter.close()
    with pytest.raises(requests.ConnectionError):  # still sends: nothing listens on 9
        adapter.send(requests.Request("GET", "http://127.0.0.1:9/").prepare())
