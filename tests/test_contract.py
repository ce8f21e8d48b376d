"""The public contract of /work/shared/DESIGN.md, as code outside the project uses it.

The names and defaults below are copied from DESIGN.md's contract block on purpose (the
file lives outside the repository, and these names are fixed): a rename, a move or a
changed default must fail here before it reaches a user.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from requests_smartretry import (
    CircuitBreaker,
    CircuitOpenError,
    ResponseSignatureError,
    RetryBudget,
    RetryPolicy,
    SmartRetryAdapter,
    SmartRetryError,
    execute_with_retry,
    smart_session,
    stats_of,
)
from requests_smartretry.faultserver import FaultServer
from tests.conftest import SleepRecorder

#: DESIGN.md: ``from requests_smartretry import (...)``.
TOP_LEVEL = (
    "SmartRetryAdapter", "RetryPolicy", "smart_session",
    "execute_with_retry", "with_retry", "execute_with_smart_retry",
    "photo_session", "video_session", "payment_session",
    "photo_adapter", "video_adapter", "payment_adapter",
    "CircuitBreaker", "RetryBudget",
    "CircuitOpenError", "SmartRetryError", "ResponseSignatureError",
)

#: DESIGN.md: the policy's fixed keyword names and their specified defaults.
POLICY_DEFAULTS = {
    "max_retries": 1,
    "timeout": 30.0,
    "backoff_base": 1.0,
    "backoff_multiplier": 2.0,
    "backoff_max": 5.0,
    "jitter": None,
    "operation_name": None,
    "on_retry": None,
    "lang": "zh",
    "deadline": None,
}


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_every_contract_name_imports_from_the_package(name: str) -> None:
    """Each name of DESIGN.md's import block is importable from ``requests_smartretry``
    and listed in its ``__all__`` (so ``from requests_smartretry import *`` has it too)."""
    package = importlib.import_module("requests_smartretry")
    assert getattr(package, name, None) is not None, name
    assert name in package.__all__


def test_parse_notification_imports_from_the_wechatpay_preset() -> None:
    """``parse_notification`` lives at ``requests_smartretry.presets.wechatpay`` and takes
    ``(headers, body, *, platform_public_key=None, platform_certificates=None,
    api_v3_key)`` as DESIGN.md specifies."""
    from requests_smartretry.presets.wechatpay import parse_notification

    parameters = inspect.signature(parse_notification).parameters
    assert list(parameters)[:2] == ["headers", "body"]
    for keyword, default in (("platform_public_key", None), ("platform_certificates", None),
                             ("api_v3_key", inspect.Parameter.empty)):
        assert parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY, keyword
        assert parameters[keyword].default is default, keyword


def test_httpx_extra_exports_the_transport_and_smart_client() -> None:
    """With httpx installed, ``requests_smartretry.httpx`` gives ``SmartRetryTransport``
    (an ``httpx.BaseTransport``) and ``smart_client``, whose client sends through it with
    the contract's default policy."""
    httpx = pytest.importorskip("httpx")
    from requests_smartretry.httpx import SmartRetryTransport, smart_client

    assert issubclass(SmartRetryTransport, httpx.BaseTransport)
    with smart_client() as client:
        assert isinstance(client, httpx.Client)
        assert isinstance(client.smart_transport, SmartRetryTransport)
        assert client.smart_transport.policy == RetryPolicy()


def test_policy_defaults_are_the_specification() -> None:
    """``RetryPolicy()`` has DESIGN.md's defaults: 1 retry (2 attempts), 30 s per attempt,
    backoff 1 s doubling capped at 5 s, no jitter, no whole-call deadline, Chinese lines."""
    policy = RetryPolicy()
    assert {name: getattr(policy, name) for name in POLICY_DEFAULTS} == POLICY_DEFAULTS
    assert policy.max_attempts == 2


def test_adapter_session_and_callable_share_the_default_policy() -> None:
    """``SmartRetryAdapter()``, ``smart_session()`` (both schemes mounted) and the contract's
    keyword spellings all build that same default policy."""
    adapter = SmartRetryAdapter(max_retries=1, timeout=30.0)
    assert adapter.policy == RetryPolicy() == SmartRetryAdapter().policy
    session = smart_session(max_retries=1, timeout=30.0)
    mounted = {session.get_adapter("https://x"), session.get_adapter("http://x")}
    assert len(mounted) == 1
    only = mounted.pop()
    assert isinstance(only, SmartRetryAdapter) and only.policy == RetryPolicy()


def test_default_backoff_waits_one_two_four_then_five_seconds(
    server: FaultServer, sleeps: SleepRecorder
) -> None:
    """With the default backoff, the waits between five failing attempts are 1 s, 2 s, 4 s
    and 5 s (doubling, capped at 5 s, no jitter), and the last 503 is returned."""
    session = smart_session(max_retries=4, sleep=sleeps, budget=None)
    response = session.get(server.url("/status/503"))
    assert response.status_code == 503
    assert server.hits("/status/503") == 5
    assert sleeps.waits == [1.0, 2.0, 4.0, 5.0]


def test_on_retry_gets_the_failed_attempt_and_an_exception(
    server: FaultServer, sleeps: SleepRecorder
) -> None:
    """``on_retry(attempt, error)`` runs before each retry only, with the 1-based number of
    the attempt that failed and an exception: a 503 arrives as ``requests.HTTPError`` whose
    ``.response`` is that response, a reset as ``requests.ConnectionError``."""
    seen: list[tuple[int, BaseException]] = []
    session = smart_session(max_retries=2, sleep=sleeps, budget=None,
                            on_retry=lambda attempt, error: seen.append((attempt, error)))
    response = session.get(server.url("/seq/contract?steps=503,reset,503"))
    assert response.status_code == 503  # every attempt failed: the last response comes back
    assert [attempt for attempt, _ in seen] == [1, 2]  # not called after the last attempt
    first, second = seen[0][1], seen[1][1]
    assert isinstance(first, requests.HTTPError)
    assert first.response is not None and first.response.status_code == 503
    assert isinstance(second, requests.ConnectionError)


def test_on_retry_has_the_same_meaning_for_the_callable_api() -> None:
    """``execute_with_retry`` calls ``on_retry(attempt, error)`` with the failed attempt's
    1-based number and the exception ``fn`` raised, before each retry only."""
    seen: list[tuple[int, BaseException]] = []
    failures = [ConnectionResetError("reset 1"), ConnectionResetError("reset 2")]

    def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    result = execute_with_retry(flaky, max_retries=2, backoff_base=0.0, run_in_thread=False,
                                on_retry=lambda attempt, error: seen.append((attempt, error)))
    assert result == "done"
    assert [attempt for attempt, _ in seen] == [1, 2]
    assert [str(error) for _, error in seen] == ["reset 1", "reset 2"]


def test_a_transport_failure_raises_the_requests_exception_with_its_history() -> None:
    """A request whose every attempt is refused raises ``requests.ConnectionError`` (what
    existing ``except`` clauses catch), carrying one start event per attempt."""
    from requests_smartretry import EventKind, attempt_history
    from requests_smartretry.faultserver import unused_port

    sleeps = SleepRecorder()
    session = smart_session(sleep=sleeps, budget=None)
    with pytest.raises(requests.ConnectionError) as caught:
        session.get(f"http://127.0.0.1:{unused_port()}/")
    starts = [e for e in attempt_history(caught.value) if e.kind is EventKind.START]
    assert len(starts) == 2
    assert sleeps.waits == [1.0]


@pytest.mark.parametrize("error", [ResponseSignatureError, CircuitOpenError])
def test_signature_and_breaker_errors_are_smart_retry_errors(error: type[Exception]) -> None:
    """``ResponseSignatureError`` and ``CircuitOpenError`` are ``SmartRetryError``s (and so
    ``requests.RequestException``s): one ``except SmartRetryError`` catches both."""
    assert issubclass(error, SmartRetryError)
    assert issubclass(SmartRetryError, requests.RequestException)


def test_circuit_open_error_is_also_a_connection_error() -> None:
    """A breaker refusal is a ``requests.ConnectionError`` too, naming the service and the
    seconds to the next probe."""
    refused = CircuitOpenError("https://api.example.com", 12.5)
    assert isinstance(refused, requests.ConnectionError)
    assert (refused.service, refused.retry_in) == ("https://api.example.com", 12.5)


def test_the_contract_session_with_breaker_and_budget_counts_calls(server: FaultServer) -> None:
    """DESIGN.md's ``smart_session(breaker=CircuitBreaker(failure_threshold=5,
    recovery_timeout=30.0), budget=RetryBudget())`` works, and its adapter's
    ``stats.snapshot()`` counts the call."""
    session = smart_session(breaker=CircuitBreaker(failure_threshold=5, recovery_timeout=30.0),
                            budget=RetryBudget(), operation_name="contract")
    assert session.get(server.url("/ok")).status_code == 200
    snapshot = stats_of(session).snapshot()
    assert snapshot["contract"]["calls"] == 1
    assert snapshot["contract"]["calls_succeeded"] == 1


def test_the_readme_ten_line_example_runs_and_prints_what_the_readme_shows() -> None:
    """README's first snippet, run as written in a fresh interpreter, prints exactly the
    output block that follows it (the seed's six lines, on_retry, the final status)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^```python\n(.*?)^```\n\n```output\n(.*?)^```", readme,
                      re.DOTALL | re.MULTILINE)
    assert found is not None, "README lost its ten-line example and its output"
    code, shown = found.groups()
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-u", "-c", code], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            encoding="utf-8", timeout=60)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines() == shown.splitlines()
