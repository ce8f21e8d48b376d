"""Volcengine Ark preset: Bearer auth per attempt, the error-code table, task flow."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import requests

from requests_smartretry import (
    AttemptEvent,
    EventKind,
    adapter_of,
    stats_of,
    video_adapter,
    video_session,
)
from tests.fakes.ark import FakeArk, ark_error

KEY = "ark-test-key-0001"
TASKS = "/contents/generations/tasks"


@pytest.fixture()
def fake():
    with FakeArk(KEY) as server:
        yield server


def fast(**extra: Any) -> dict[str, Any]:
    """Preset options for tests: tiny backoff, no real sleeping."""
    return {"backoff_base": 0.01, "backoff_max": 0.05, "sleep": lambda s: None, **extra}


def test_create_and_query_a_video_task(fake: FakeArk) -> None:
    """Relative paths resolve under /api/v3, Bearer auth is sent, and the calls are named
    生成视频 / 查询视频任务状态 under the vendor's service key."""
    events: list[AttemptEvent] = []
    session = video_session(KEY, endpoint=fake.endpoint, hooks=(events.append,), **fast())
    task = session.post(TASKS, json={"model": "doubao-seedance", "content": []}).json()
    status = session.get(f"{TASKS}/{task['id']}").json()["status"]
    assert status == "succeeded"
    starts = [e for e in events if e.kind is EventKind.START]
    assert [e.operation for e in starts] == ["生成视频", "查询视频任务状态"]
    assert {e.service for e in starts} == {"volcengine-ark"}


def test_stats_of_a_preset_session_reads_its_adapter(fake: FakeArk) -> None:
    """``stats_of(session)`` and ``adapter_of(session)`` find a preset's adapter (mounted on
    its endpoint's origin, not on ``https://``), and polling many task ids counts under one
    operation."""
    session = video_session(KEY, endpoint=fake.endpoint, **fast())
    task = session.post(TASKS, json={"model": "doubao-seedance", "content": []}).json()
    for _ in range(3):
        session.get(f"{TASKS}/{task['id']}")
    assert adapter_of(session).policy.service == "volcengine-ark"
    assert stats_of(session).snapshot()["查询视频任务状态"]["calls"] == 3


ARK_ROWS = [
    (429, "RateLimitExceeded.EndpointRPMExceeded", 2),
    (429, "RateLimitExceeded.EndpointTPMExceeded", 2),
    (500, "InternalServiceError", 2),
    (400, "InvalidParameter", 1),
    (400, "InputTextSensitiveContentDetected", 1),
    (400, "OutputVideoSensitiveContentDetected", 1),
    (401, "AuthenticationError", 1),
    (403, "AccountOverdueError", 1),
    (404, "ModelNotOpen", 1),
    (429, "QuotaExceeded", 1),
    (429, "SetLimitExceeded", 1),
    (429, "ModelQuotaExhausted", 1),
    (429, "ServerOverloaded", 2),
    (408, "RequestTimeout", 2),
    (409, "Conflict", 1),
]


@pytest.mark.parametrize(("status", "code", "requests_seen"), ARK_ROWS)
def test_vendor_error_table(fake: FakeArk, status: int, code: str, requests_seen: int) -> None:
    """Each row of the vendor's error table: transient codes reach the server twice and
    end in success, permanent ones once and come back as the vendor's answer."""
    session = video_session(KEY, endpoint=fake.endpoint, **fast())
    fake.script("create", (status, ark_error(code)))
    response = session.post(TASKS, json={"model": "m", "content": []})
    assert fake.hits() == requests_seen
    if requests_seen == 2:
        assert response.status_code == 200 and response.json()["id"].startswith("cgt-")
    else:
        assert response.status_code == status
        assert response.json()["error"]["code"] == code


def test_query_retry_is_authorized_each_attempt(fake: FakeArk) -> None:
    """A task query that fails once is retried with the Bearer header again."""
    session = video_session(KEY, endpoint=fake.endpoint, **fast())
    task_id = session.post(TASKS, json={"model": "m"}).json()["id"]
    fake.script("query", (500, ark_error("InternalServiceError")))
    assert session.get(f"{TASKS}/{task_id}").json()["status"] == "succeeded"
    assert [r.headers["authorization"] for r in fake.server.received()] == [f"Bearer {KEY}"] * 3


def test_creation_is_resent_after_a_reset_as_the_seed_did(fake: FakeArk) -> None:
    """Task creation is retried after a reset even though the server acted (the seed's
    behaviour): the caller gets a task, and the fake shows the documented duplicate."""
    session = video_session(KEY, endpoint=fake.endpoint, **fast())
    fake.script("create", "reset")
    assert session.post(TASKS, json={"model": "m"}).status_code == 200
    assert fake.hits() == 2 and len(fake.tasks) == 2


def test_creation_retry_can_be_turned_off(fake: FakeArk) -> None:
    """With idempotent=False a creation that may have reached the server is not resent."""
    session = video_session(KEY, endpoint=fake.endpoint, idempotent=False, **fast())
    fake.script("create", "reset")
    with pytest.raises(requests.ConnectionError):
        session.post(TASKS, json={"model": "m"})
    assert fake.hits() == 1 and len(fake.tasks) == 1


def test_adapter_mounts_on_an_existing_session(fake: FakeArk) -> None:
    """video_adapter(api_key=) on a plain session authorizes and retries the same way."""
    session = requests.Session()
    session.mount(fake.endpoint + "/", video_adapter(api_key=KEY, **fast()))
    fake.script("create", (429, ark_error("RateLimitExceeded.EndpointRPMExceeded")))
    assert session.post(fake.endpoint + TASKS, json={"model": "m"}).status_code == 200
    assert fake.hits() == 2


def test_bad_configuration_is_named() -> None:
    """An empty key or a bad endpoint fails at construction, naming the parameter."""
    with pytest.raises(ValueError, match="api_key"):
        video_session("")
    with pytest.raises(ValueError, match="endpoint"):
        video_session(KEY, endpoint="ark.cn-beijing.volces.com/api/v3")


def test_video_policy_pickles() -> None:
    """The video policy (Bearer signer, classifier, names) survives pickling."""
    policy = pickle.loads(pickle.dumps(video_adapter(api_key=KEY).policy))
    assert policy.prepare_attempt is not None and policy.service == "volcengine-ark"
    prepared = policy.prepare_attempt(requests.Request("GET", "https://x.example/").prepare(), 1)
    assert prepared is not None and prepared.headers["Authorization"] == f"Bearer {KEY}"


SHOULD_RETRY_ROWS = [
    (400, "InvalidParameter", "true", 2),
    (409, "Conflict", "true", 2),
    (429, "QuotaExceeded", "true", 2),
    (500, "InternalServiceError", "false", 1),
    (429, "RateLimitExceeded.EndpointRPMExceeded", "False", 1),
    (408, "RequestTimeout", "false", 1),
    (429, "RateLimitExceeded.EndpointTPMExceeded", "maybe", 2),  # the table decides
]


@pytest.mark.parametrize(("status", "code", "header", "requests_seen"), SHOULD_RETRY_ROWS)
def test_x_should_retry_header_overrides_the_table(
        fake: FakeArk, status: int, code: str, header: str, requests_seen: int) -> None:
    """x-should-retry: true retries any error and false stops any, whatever the status and
    code say, as the official SDK does; another value leaves the table in charge."""
    events: list[AttemptEvent] = []
    session = video_session(KEY, endpoint=fake.endpoint, idempotent=False,
                            hooks=(events.append,), **fast())
    fake.script("create", (status, ark_error(code), {"x-should-retry": header}))
    response = session.post(TASKS, json={"model": "m", "content": []})
    assert fake.hits() == requests_seen
    assert response.status_code == (200 if requests_seen == 2 else status)
    failure = next(e for e in events if e.kind is EventKind.FAILURE)
    if header.lower() in ("true", "false"):
        assert failure.reason == f"HTTP {status} x-should-retry: {header.lower()}"
