"""Support for users' own test suites: ``reset_state()``, the ``smartretry`` pytest fixture
(the package's pytest11 plugin, run here in a pytest of its own), and which HTTP mocking
libraries our adapter runs under."""

from __future__ import annotations

import gc
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time
from importlib import metadata
from pathlib import Path

import pytest
import requests_mock
import responses

import requests_smartretry
import requests_smartretry.pytest_plugin
from requests_smartretry import (
    CircuitBreaker,
    CircuitOpenError,
    MemoryStateStore,
    RetryBudget,
    SmartRetryAdapter,
    Stats,
    reset_state,
    smart_session,
)
from requests_smartretry.faultserver import FaultServer
from requests_smartretry.testing import fast_retries

ROOT = Path(__file__).resolve().parent.parent
MOCKED = "http://127.0.0.1:9/v1/items"  # never reached: the mocks answer


def no_sleep(seconds: float) -> None:
    """Backoff without the waiting."""


def test_reset_state_closes_breakers_fills_budgets_and_empties_stats(
    server: FaultServer,
) -> None:
    """After ``reset_state()`` a session built earlier has a closed breaker, a full budget
    and empty statistics, as if it were new."""
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=3600.0)
    budget = RetryBudget(0.0, max_tokens=2, min_per_second=0)
    session = smart_session(breaker=breaker, budget=budget, log=False, sleep=no_sleep)
    service = f"http://127.0.0.1:{server.port}"
    session.get(server.url("/status/503"))
    with pytest.raises(CircuitOpenError):
        session.get(server.url("/ok"))
    budget.allow_retry(service)
    stats = session.get_adapter("http://").stats
    assert breaker.state(service) == "open" and budget.tokens(service) < 2.0
    assert stats.operations()

    reset_state()

    assert breaker.state(service) == "closed"
    assert budget.tokens(service) == pytest.approx(2.0)
    assert stats.operations() == []
    assert session.get(server.url("/ok")).status_code == 200
    session.close()


def test_reset_state_reaches_objects_built_anywhere_and_keeps_none_alive() -> None:
    """Budgets, breakers, stores and Stats built outside any adapter are reset too, and
    being tracked does not keep a discarded one alive."""
    store = MemoryStateStore()
    budget = RetryBudget(0.0, max_tokens=1, min_per_second=0, store=store)
    stats = Stats()
    assert budget.allow_retry("svc") and not budget.allow_retry("svc")
    stats(_start_event())
    reset_state()
    assert budget.allow_retry("svc")
    assert stats.operations() == []
    before = len(requests_smartretry.testing._tracked)
    for _ in range(50):
        CircuitBreaker()
    gc.collect()
    assert len(requests_smartretry.testing._tracked) <= before + 1


def _start_event() -> requests_smartretry.AttemptEvent:
    return requests_smartretry.AttemptEvent(
        kind=requests_smartretry.EventKind.START, operation="op", service="svc", attempt=1,
        max_attempts=2, call_id=1)


def test_reset_state_reaches_unpickled_copies_of_a_session() -> None:
    """A session copied by pickling (as multiprocessing does) has its breaker, budget and
    statistics reset by ``reset_state()`` like the original's."""
    session = smart_session(breaker=CircuitBreaker(failure_threshold=1, recovery_timeout=3600),
                            budget=RetryBudget(0.0, max_tokens=1, min_per_second=0),
                            log=False, max_retries=0)
    with FaultServer() as fault:
        service = f"http://127.0.0.1:{fault.port}"
        copy = pickle.loads(pickle.dumps(session))
        adapter = copy.get_adapter("http://")
        assert isinstance(adapter, SmartRetryAdapter)
        assert copy.get(fault.url("/status/503")).status_code == 503
    assert adapter.breaker is not None and isinstance(adapter.budget, RetryBudget)
    assert adapter.budget.allow_retry(service)
    assert adapter.breaker.state(service) == "open"
    assert adapter.budget.tokens(service) == pytest.approx(0.0)
    reset_state()
    assert adapter.breaker.state(service) == "closed"
    assert adapter.budget.tokens(service) == pytest.approx(1.0)
    assert requests_smartretry.stats_of(copy).operations() == []


def _attempts_made() -> int:
    """How many attempts a call allowed ten makes right now (each one fails)."""
    calls = []

    def failing() -> None:
        calls.append(1)
        raise ConnectionResetError("reset")

    with pytest.raises(ConnectionResetError):
        requests_smartretry.execute_with_retry(failing, max_retries=9, run_in_thread=False,
                                               log=False, sleep=lambda seconds: None)
    return len(calls)


def test_fast_retries_restores_the_previous_mode() -> None:
    """``fast_retries()`` nests and restores whatever was set before it, attempts cap too."""
    with fast_retries(attempts=3):
        with fast_retries():
            assert _attempts_made() == 10
        assert _attempts_made() == 3
    assert not requests_smartretry.testing.is_testing()


PLUGIN_SUITE = '''
    import requests_smartretry.testing as srt
    from requests_smartretry import CircuitBreaker, smart_session
    from requests_smartretry.faultserver import FaultServer

    SERVER = FaultServer().start()
    BREAKER = CircuitBreaker(failure_threshold=2, recovery_timeout=3600.0)
    SESSION = smart_session(breaker=BREAKER, log=False, backoff_base=30.0, backoff_max=30.0)
    SERVICE = f"http://127.0.0.1:{SERVER.port}"


    def test_a_opens_the_breaker_without_waiting(smartretry):
        assert srt.is_testing()
        assert SESSION.get(SERVER.url("/status/503")).status_code == 503  # 30 s not waited
        assert SERVER.hits() == 2 and BREAKER.state(SERVICE) == "open"


    def test_b_starts_with_a_closed_breaker_and_empty_stats(smartretry):
        assert BREAKER.state(SERVICE) == "closed"
        assert SESSION.get_adapter("http://").stats.operations() == []
        assert SESSION.get(SERVER.url("/ok")).status_code == 200


    def test_c_without_the_fixture_test_mode_is_off():
        assert not srt.is_testing()
'''


def test_pytest_plugin_fixture_gives_fast_retries_and_fresh_state(tmp_path: Path) -> None:
    """In a user's pytest run, a test that requests ``smartretry`` gets test mode and a
    fresh breaker/budget/stats state; a test that does not is left alone."""
    groups = metadata.entry_points().select(group="pytest11") \
        if hasattr(metadata.entry_points(), "select") \
        else metadata.entry_points().get("pytest11", [])  # type: ignore[attr-defined]
    if not any(ep.value == "requests_smartretry.pytest_plugin" for ep in groups):
        pytest.skip("requests-smartretry is not installed (pip install -e .): the pytest11 "
                    "entry point is what this test exercises")
    (tmp_path / "test_user_suite.py").write_text(textwrap.dedent(PLUGIN_SUITE))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "test_user_suite.py"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout


def test_the_documented_opt_out_turns_the_plugin_off(tmp_path: Path) -> None:
    """The ``-p no:...`` option the plugin's docstring gives really turns it off: the
    ``smartretry`` fixture is then unknown to the user's suite."""
    doc = requests_smartretry.pytest_plugin.__doc__ or ""
    option = doc.split("``pytest -p no:", 1)[1].split("``", 1)[0]
    (tmp_path / "test_user_suite.py").write_text(
        "def test_wants_the_fixture(smartretry):\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", f"no:{option}", "test_user_suite.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert "fixture 'smartretry' not found" in run.stdout, run.stdout + run.stderr


def test_responses_mocks_beneath_our_adapter_so_retries_run() -> None:
    """``responses`` patches the transport underneath the adapter: a mocked 503 then 200
    is retried and the call ends 200 (what the README recommends for unit tests)."""
    session = smart_session(log=False)
    with responses.RequestsMock() as mocked, fast_retries():
        mocked.add(responses.GET, MOCKED, status=503)
        mocked.add(responses.GET, MOCKED, status=200, body="ok")
        response = session.get(MOCKED)
        assert len(mocked.calls) == 2
    assert response.status_code == 200 and len(response.retry_history) > 1
    session.close()


def test_requests_mock_replaces_our_adapter_so_nothing_is_retried() -> None:
    """``requests_mock.Mocker`` swaps the session's adapter for its own: our adapter never
    runs under it, so a mocked 503 then 200 comes back as the 503 (the README says so)."""
    session = smart_session(log=False)
    with requests_mock.Mocker() as mocked, fast_retries():
        mocked.get(MOCKED, [{"status_code": 503}, {"status_code": 200}])
        response = session.get(MOCKED)
        assert mocked.call_count == 1
    assert response.status_code == 503 and not hasattr(response, "retry_history")
    session.close()


def test_wait_for_hits_sees_a_request_the_server_reads_after_the_client_gave_up() -> None:
    """A cut attempt's request sits in the socket until the server's thread reads it,
    which on a loaded machine can be after the call returned: ``wait_for_hits`` waits
    for it, and answers at its timeout with what was recorded."""
    with FaultServer() as fault:
        paused = threading.Event()
        reader = fault._serve

        def late_serve(conn: socket.socket) -> None:
            paused.wait(5)
            reader(conn)

        fault._serve = late_serve  # type: ignore[method-assign]
        with socket.create_connection(("127.0.0.1", fault.port)) as client:
            client.sendall(b"GET /hang?seconds=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert fault.hits("/hang") == 0  # written and abandoned, not read yet
        started = time.monotonic()
        assert fault.wait_for_hits(1, "/hang", timeout=0.2) == 0
        assert time.monotonic() - started >= 0.2
        threading.Timer(0.2, paused.set).start()
        assert fault.wait_for_hits(1, "/hang") == 1
        assert fault.hits() == 1
