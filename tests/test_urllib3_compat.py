"""urllib3 1.26 and 2.x: the behaviours that differ between them stay the same for users.

The whole suite runs under both (``.ci/compat.sh``, ``noxfile.py``); these tests pin the
spots where the two versions differ underneath.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import requests
import urllib3
import urllib3.connectionpool
from urllib3.util.retry import Retry

from requests_smartretry import AttemptDeadlineExceeded, SmartRetryAdapter, smart_session
from requests_smartretry.faultserver import FaultServer


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


def _pooled_sockets(adapter: SmartRetryAdapter) -> list[object]:
    found = []
    for key in list(adapter.poolmanager.pools.keys()):
        for conn in list(adapter.poolmanager.pools[key].pool.queue):  # type: ignore[union-attr]
            if conn is not None and getattr(conn, "sock", None) is not None:
                found.append(conn.sock)
    return found


def test_urllib3_version_is_supported() -> None:
    """The installed urllib3 is one of the supported lines (1.26.x or 2.x)."""
    major_minor = tuple(int(part) for part in urllib3.__version__.split(".")[:2])
    assert major_minor >= (1, 26)
    assert major_minor < (3, 0)


@pytest.mark.parametrize("allowed", [None, ["GET", "POST"]])
def test_retry_migration_raises_no_deprecation_warning(allowed: object) -> None:
    """Converting a urllib3 Retry reads only current attribute names (no 1.26 warnings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapter = SmartRetryAdapter(max_retries=Retry(total=2, backoff_factor=0.1,
                                                      status_forcelist=[502],
                                                      allowed_methods=allowed))
    assert adapter.policy.max_retries == 2
    assert adapter.policy.retry_statuses == frozenset({502})
    if allowed is not None:
        assert adapter.policy.idempotent_methods == frozenset({"GET", "POST"})


def test_watched_pools_are_urllib3_pools() -> None:
    """The deadline-watching pools subclass the installed urllib3's own pool classes."""
    adapter = SmartRetryAdapter()
    classes = adapter.poolmanager.pool_classes_by_scheme
    assert issubclass(classes["http"], urllib3.connectionpool.HTTPConnectionPool)
    assert issubclass(classes["https"], urllib3.connectionpool.HTTPSConnectionPool)
    assert classes["http"].__name__ == "HTTPConnectionPool"


def test_connection_cut_at_the_deadline_never_returns_to_the_pool(server: FaultServer) -> None:
    """A body cut at the deadline leaves no shut-down socket parked in the pool (urllib3
    1.26 treats the cut body as complete and would pool the connection)."""
    session = smart_session(max_retries=0, timeout=0.3, log=False)
    adapter = session.get_adapter("http://")
    assert isinstance(adapter, SmartRetryAdapter)
    with session:
        with pytest.raises(AttemptDeadlineExceeded):
            session.get(server.url("/drip?interval=0.1&count=30"))
        assert _pooled_sockets(adapter) == []
        # The session goes on with a fresh connection.
        assert session.get(server.url("/ok")).status_code == 200
        assert len(_pooled_sockets(adapter)) == 1


def test_refused_connection_is_a_requests_connection_error() -> None:
    """A refused connection surfaces as requests.ConnectionError on both urllib3 lines."""
    from requests_smartretry.faultserver import unused_port

    session = smart_session(max_retries=0, timeout=2.0, log=False)
    with session, pytest.raises(requests.ConnectionError) as caught:
        session.get(f"http://127.0.0.1:{unused_port()}/")
    history = caught.value.retry_history  # type: ignore[attr-defined]
    assert [e.reason for e in history if e.reason] == ["ECONNREFUSED", "ECONNREFUSED"]
