"""The vendor waiters against local fakes speaking each vendor's JSON: Ark's video tasks
(session, httpx client, the official SDK's client) and Volcengine visual's async tasks."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from requests_smartretry import (
    PollDeadlineExceeded,
    TaskFailedError,
    execute_with_retry,
    execute_with_smart_retry,
    photo_session,
    stats_of,
    video_session,
)
from requests_smartretry.presets import ark, volcengine
from tests.conftest import FakeClock, LineCollector
from tests.fakes.ark import FakeArk, ark_error
from tests.fakes.volcengine import FakeVisual, visual_error

KEY = "ark-test-key-0001"
AK, SK = "AKLTwaiter", "c2VjcmV0LXdhaXRlcg=="
TASKS = "/contents/generations/tasks"


class Timeline:
    """A fake clock moved by the injected sleep: pauses and backoff cost no real time."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.clock.advance(seconds)

    def options(self) -> dict[str, Any]:
        return {"clock": self.clock, "sleep": self.sleep, "backoff_base": 0.5}


def warnings(collector: LineCollector) -> list[str]:
    return [r.getMessage() for r in collector.records if r.levelno >= logging.WARNING]


def ark_task(fake: FakeArk, session: requests.Session) -> str:
    task_id = session.post(TASKS, json={"model": "doubao-seedance", "content": []}).json()["id"]
    fake.server.reset_counts()
    return str(task_id)


# -- Ark -----------------------------------------------------------------------------------


def test_ark_task_done_after_n_polls_is_n_requests_and_no_failure(
        log_lines: LineCollector) -> None:
    """queued, running, running, succeeded: 4 requests, the task back, 0 WARNING records,
    0 failed attempts, and the wait in the session's statistics."""
    line = Timeline()
    with FakeArk(KEY, progress=("queued", "running", "running", "succeeded")) as fake:
        session = video_session(KEY, endpoint=fake.endpoint)
        task_id = ark_task(fake, session)
        done = ark.wait_for_task(session, task_id, deadline=60.0, **line.options())
        assert fake.hits() == 4
    assert done["status"] == "succeeded" and done["content"]["video_url"].endswith(".mp4")
    assert warnings(log_lines) == []
    snapshot = stats_of(session).snapshot()
    assert snapshot["__total__"]["attempts_failed"] == 0
    assert snapshot["查询视频任务状态"]["calls"] == 4
    wait = snapshot["视频任务状态查询"]
    assert (wait["waits_by_outcome"], wait["polls"]) == ({"done": 1}, 4)
    assert line.sleeps == [1.0, 1.5, 2.25]
    first = "[API重试] 视频任务状态查询 - 等待任务完成 (第 1 次查询, 状态 queued"
    assert any(text.startswith(first) for text in log_lines.lines)


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_ark_failed_or_cancelled_task_raises_task_failed(status: str) -> None:
    """A failed or cancelled task raises TaskFailedError with the vendor's status, code and
    message, and the task itself."""
    with FakeArk(KEY, progress=("running", status)) as fake:
        session = video_session(KEY, endpoint=fake.endpoint)
        task_id = ark_task(fake, session)
        with pytest.raises(TaskFailedError) as raised:
            ark.wait_for_task(session, task_id, deadline=60.0, **Timeline().options())
        assert fake.hits() == 2
    error = raised.value
    assert (error.status, error.code) == (status, "OutputVideoSensitiveContentDetected")
    assert error.message and error.task["id"] == task_id
    assert stats_of(session).snapshot()["视频任务状态查询"]["waits_by_outcome"] == {"failed": 1}


def test_ark_deadline_is_raised_on_time_and_no_poll_starts_after_it() -> None:
    """Real time: a task that stays running raises PollDeadlineExceeded within 100 ms of the
    deadline, no request reaches the server after it, and ``.last`` is the last task."""
    with FakeArk(KEY, progress=("running",)) as fake:
        session = video_session(KEY, endpoint=fake.endpoint)
        task_id = ark_task(fake, session)
        started = time.monotonic()
        with pytest.raises(PollDeadlineExceeded) as raised:
            ark.wait_for_task(session, task_id, deadline=0.6, interval=0.1,
                              interval_multiplier=1.3)
        ended = time.monotonic()
        received = fake.server.received()
    assert 0.6 <= ended - started < 0.7
    assert received and all(r.received_at < started + 0.6 for r in received)
    assert raised.value.last["status"] == "running"
    assert raised.value.polls == len(received)


def test_ark_deadline_cuts_a_running_poll() -> None:
    """A poll that hangs is cut at the wait's deadline (the request inside sees what is
    left, and the watchdog cuts its socket): PollDeadlineExceeded right after it (a
    generous margin for a loaded machine; the server would hang 5 s), after one request."""
    with FakeArk(KEY, progress=("running",)) as fake:
        session = video_session(KEY, endpoint=fake.endpoint)
        task_id = ark_task(fake, session)
        fake.script("query", ("hang", 5))
        started = time.monotonic()
        with pytest.raises(PollDeadlineExceeded) as raised:
            ark.wait_for_task(session, task_id, deadline=0.5)
        elapsed = time.monotonic() - started
        assert fake.hits() == 1
    assert 0.5 <= elapsed < 0.65
    assert raised.value.last is None and isinstance(raised.value.__cause__, requests.Timeout)


def test_ark_deadline_cuts_a_hung_poll_of_a_plain_session() -> None:
    """With a plain requests.Session (endpoint=), which no watchdog cuts, a hung poll is
    abandoned at the wait's deadline: PollDeadlineExceeded well before the 3 s hang ends
    (a generous margin for a loaded machine)."""
    with FakeArk(KEY, progress=("running",)) as fake:
        task_id = ark_task(fake, video_session(KEY, endpoint=fake.endpoint))
        plain = requests.Session()
        plain.headers["Authorization"] = f"Bearer {KEY}"
        fake.script("query", ("hang", 3.0))
        started = time.monotonic()
        with pytest.raises(PollDeadlineExceeded):
            ark.wait_for_task(plain, task_id, deadline=0.5, endpoint=fake.endpoint)
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.5


def test_ark_500_while_polling_is_retried_and_the_wait_goes_on() -> None:
    """A 500 InternalServiceError on a poll is retried by the policy and the wait ends
    with the task."""
    line = Timeline()
    with FakeArk(KEY, progress=("running", "succeeded")) as fake:
        session = video_session(KEY, endpoint=fake.endpoint)
        task_id = ark_task(fake, session)
        fake.script("query", (500, ark_error("InternalServiceError")))
        done = ark.wait_for_task(session, task_id, deadline=60.0, **line.options())
        assert fake.hits() == 3
    assert done["status"] == "succeeded"
    assert line.sleeps == [0.5, 1.0]  # the poll's backoff, then the interval


def test_ark_outage_longer_than_a_polls_retries_does_not_end_the_wait() -> None:
    """Three 500s in a row use up a poll's retries (2 attempts): the wait polls again at
    the next interval instead of giving up, and ends with the task."""
    with FakeArk(KEY, progress=("succeeded",)) as fake:
        session = video_session(KEY, endpoint=fake.endpoint)
        task_id = ark_task(fake, session)
        fake.script("query", *[(500, ark_error("InternalServiceError"))] * 3)
        done = ark.wait_for_task(session, task_id, deadline=60.0, **Timeline().options())
        assert fake.hits() == 4
    assert done["status"] == "succeeded"


def test_ark_500_healed_by_the_polls_retry_leaves_a_breaker_closed() -> None:
    """A 500 on a poll healed by the poll's retry is no failure for the session's
    breaker (threshold 1): the wait ends with the task, the breaker stays closed."""
    from requests_smartretry import CircuitBreaker

    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60.0)
    with FakeArk(KEY, progress=("running", "succeeded")) as fake:
        session = video_session(KEY, endpoint=fake.endpoint, breaker=breaker)
        task_id = ark_task(fake, session)
        fake.script("query", (500, ark_error("InternalServiceError")))
        done = ark.wait_for_task(session, task_id, deadline=60.0, **Timeline().options())
        assert fake.hits() == 3
    assert done["status"] == "succeeded"
    assert {breaker.state(key) for key in stats_of(session).snapshot()} == {"closed"}


def test_ark_404_ends_the_wait_at_once() -> None:
    """An unknown task (404) ends the wait after one request, with its HTTPError."""
    with FakeArk(KEY) as fake:
        session = video_session(KEY, endpoint=fake.endpoint)
        with pytest.raises(requests.HTTPError) as raised:
            ark.wait_for_task(session, "cgt-missing", deadline=60.0, **Timeline().options())
        assert fake.hits() == 1
    assert raised.value.response.status_code == 404


def test_ark_quota_exceeded_is_final_as_the_preset_says() -> None:
    """A 429 QuotaExceeded is judged by the vendor's table (final), not by its status."""
    with FakeArk(KEY) as fake:
        session = video_session(KEY, endpoint=fake.endpoint)
        task_id = ark_task(fake, session)
        fake.script("query", (429, ark_error("QuotaExceeded")))
        with pytest.raises(requests.HTTPError):
            ark.wait_for_task(session, task_id, deadline=60.0, **Timeline().options())
        assert fake.hits() == 1


def test_ark_retry_after_on_a_poll_is_honoured() -> None:
    """A running answer with Retry-After: 4 makes the next pause 4 s, not 1 s."""
    line = Timeline()
    with FakeArk(KEY, progress=("succeeded",)) as fake:
        session = video_session(KEY, endpoint=fake.endpoint)
        task_id = ark_task(fake, session)
        fake.script("query", (200, {"id": task_id, "status": "running"}, {"Retry-After": "4"}))
        ark.wait_for_task(session, task_id, deadline=60.0, **line.options())
    assert line.sleeps == [4.0]


def test_ark_httpx_client_path() -> None:
    """video_client(): the same wait over httpx, counted in the client's statistics."""
    from requests_smartretry.httpx import video_client

    with FakeArk(KEY, progress=("queued", "succeeded")) as fake:
        client = video_client(api_key=KEY, endpoint=fake.endpoint)
        done = ark.create_and_wait(client, {"model": "m", "content": []}, deadline=60.0,
                                   **Timeline().options())
        assert fake.hits() == 3
    assert done["status"] == "succeeded"
    assert stats_of(client).snapshot()["视频任务状态查询"]["polls"] == 2


def test_ark_async_client_path_gives_an_awaitable_wait() -> None:
    """video_async_client(): ark.wait_for_task returns an awaitable; the same wait (a 503
    on the way retried, queued/running no failures) over httpx.AsyncClient, counted in the
    client's statistics."""
    import asyncio

    from requests_smartretry.httpx import video_async_client

    with FakeArk(KEY, progress=("queued", "running", "succeeded")) as fake:
        fake.tasks["cgt-1"] = {"id": "cgt-1", "status": "queued"}
        fake.script("query", (503, {"error": {"code": "InternalServiceError"}}))
        client = video_async_client(api_key=KEY, endpoint=fake.endpoint)

        async def wait() -> dict[str, Any]:
            async with client:
                waiting = ark.wait_for_task(client, "cgt-1", deadline=60.0,
                                            **Timeline().options())
                assert asyncio.iscoroutine(waiting)
                return await waiting  # type: ignore[no-any-return]

        done = asyncio.run(wait())
        assert fake.queries["cgt-1"] == 3 and fake.hits() == 4  # the 503 was retried
    assert done["status"] == "succeeded"
    assert stats_of(client).snapshot()["视频任务状态查询"]["polls"] == 3


@pytest.fixture()
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any lookup or connection that is not to loopback (the SDK defaults to the
    vendor's host)."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", "::1", b"127.0.0.1"):
            raise AssertionError(f"non-loopback lookup: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"non-loopback connection: {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.mark.usefixtures("loopback_only")
def test_ark_official_sdk_client_through_video_client() -> None:
    """The official SDK creates the task through video_client; the waiter polls through
    the same http_client until the task succeeds."""
    sdk = pytest.importorskip("volcenginesdkarkruntime")
    from requests_smartretry.httpx import video_client

    with FakeArk(KEY, progress=("running", "succeeded")) as fake, \
            video_client(api_key=KEY, endpoint=fake.endpoint) as http_client:
        client = sdk.Ark(api_key=KEY, base_url=fake.endpoint, http_client=http_client,
                         max_retries=0)
        created = client.content_generation.tasks.create(
            model="doubao-seedance", content=[{"type": "text", "text": "一只猫"}])
        done = ark.wait_for_task(http_client, created.id, deadline=60.0,
                                 **Timeline().options())
        assert fake.queries[created.id] == 2
    assert done["id"] == created.id and done["status"] == "succeeded"


def test_ark_create_and_wait_reports_the_id_before_waiting() -> None:
    """create_and_wait hands the task id to ``on_created`` before the first poll."""
    seen: list[tuple[str, int]] = []
    with FakeArk(KEY, progress=("running", "succeeded")) as fake:
        session = video_session(KEY, endpoint=fake.endpoint)
        done = ark.create_and_wait(
            session, {"model": "m", "content": []},
            on_created=lambda task_id: seen.append((task_id, fake.queries.get(task_id, 0))),
            on_poll=lambda number, task: seen.append((task["status"], number)),
            **Timeline().options())
    assert seen == [(done["id"], 0), ("running", 1), ("succeeded", 2)]


@pytest.mark.parametrize(("arguments", "error", "message"), [
    ({"task_id": ""}, ValueError, "task_id must be a non-empty string"),
    ({"task_id": 7}, ValueError, "task_id"),
    ({"client": object()}, TypeError, "client must be a requests.Session"),
    ({"client": requests.Session()}, TypeError, "needs endpoint="),
    ({"deadline": -1}, ValueError, "deadline must be > 0"),
    ({"interval": "1"}, TypeError, "interval must be a number"),
])
def test_ark_bad_arguments_are_refused_by_name(arguments: dict[str, Any], error: type,
                                               message: str) -> None:
    """A bad client, task id or option is refused before any request."""
    call: dict[str, Any] = {"client": video_session(KEY, endpoint="http://127.0.0.1:9"),
                            "task_id": "cgt-1", **arguments}
    with pytest.raises(error, match=message):
        ark.wait_for_task(call.pop("client"), call.pop("task_id"), **call)


# -- Volcengine visual -----------------------------------------------------------------------


@pytest.fixture()
def visual() -> Iterator[FakeVisual]:
    with FakeVisual(AK, SK, progress=("in_queue", "generating", "done")) as fake:
        yield fake


def visual_task(fake: FakeVisual, session: requests.Session) -> str:
    answer = session.post("?Action=CVSync2AsyncSubmitTask&Version=2022-08-31",
                          json={"req_key": "jimeng_t2i_v40", "prompt": "猫"}).json()
    fake.server.reset_counts()
    return str(answer["data"]["task_id"])


def test_visual_task_done_after_n_polls(visual: FakeVisual, log_lines: LineCollector) -> None:
    """in_queue, generating, done: 3 signed POSTs, ``data`` back, no WARNING, no failure."""
    session = photo_session(AK, SK, endpoint=visual.endpoint)
    task_id = visual_task(visual, session)
    data = volcengine.wait_for_task(session, req_key="jimeng_t2i_v40", task_id=task_id,
                                    deadline=60.0, **Timeline().options())
    assert data["status"] == "done" and data["image_urls"]
    received = visual.server.received()
    assert len(received) == 3 and {r.method for r in received} == {"POST"}
    assert len(visual.valid_signatures) == 4  # the submission and every poll verified
    assert warnings(log_lines) == []
    snapshot = stats_of(session).snapshot()
    assert snapshot["__total__"]["attempts_failed"] == 0
    assert snapshot["艺术照任务状态查询"]["waits_by_outcome"] == {"done": 1}


@pytest.mark.parametrize(("progress", "status"), [(("generating", "expired"), "expired")])
def test_visual_expired_task_raises_task_failed(progress: tuple[str, ...], status: str) -> None:
    """An expired task raises TaskFailedError with the vendor's status."""
    with FakeVisual(AK, SK, progress=progress) as fake:
        session = photo_session(AK, SK, endpoint=fake.endpoint)
        task_id = visual_task(fake, session)
        with pytest.raises(TaskFailedError) as raised:
            volcengine.wait_for_task(session, req_key="k", task_id=task_id, deadline=60.0,
                                     **Timeline().options())
        assert fake.hits() == 2
    assert raised.value.status == status and raised.value.code == 10000


def test_visual_unknown_task_is_not_found(visual: FakeVisual) -> None:
    """A task id the vendor does not know answers not_found: TaskFailedError at once."""
    session = photo_session(AK, SK, endpoint=visual.endpoint)
    with pytest.raises(TaskFailedError) as raised:
        volcengine.wait_for_task(session, req_key="k", task_id="task-404", deadline=60.0,
                                 **Timeline().options())
    assert raised.value.status == "not_found" and visual.hits() == 1


def test_visual_permanent_code_raises_task_failed(visual: FakeVisual) -> None:
    """A final vendor code (400, 50411 input rejected) ends the wait after one request."""
    session = photo_session(AK, SK, endpoint=visual.endpoint)
    task_id = visual_task(visual, session)
    visual.script("CVSync2AsyncGetResult", (400, visual_error(50411, "Pre Img Risk Not Pass")))
    with pytest.raises(TaskFailedError) as raised:
        volcengine.wait_for_task(session, req_key="k", task_id=task_id, deadline=60.0,
                                 **Timeline().options())
    assert raised.value.code == 50411 and visual.hits() == 1
    snapshot = stats_of(session).snapshot()
    assert snapshot["艺术照任务状态查询"]["waits_by_outcome"] == {"failed": 1}


def test_visual_rate_limit_while_polling_is_retried(visual: FakeVisual) -> None:
    """A 50429 (QPS limit) on a poll is retried, and the wait goes on to done."""
    session = photo_session(AK, SK, endpoint=visual.endpoint)
    task_id = visual_task(visual, session)
    visual.script("CVSync2AsyncGetResult", (429, visual_error(50429)))
    data = volcengine.wait_for_task(session, req_key="k", task_id=task_id, deadline=60.0,
                                    **Timeline().options())
    assert data["status"] == "done" and visual.hits() == 4


@pytest.mark.parametrize("code", [50500, 50429])
def test_visual_busy_code_in_a_200_while_polling_is_retried(visual: FakeVisual,
                                                             code: int) -> None:
    """An HTTP 200 carrying 50500 (internal error) or 50429 (QPS limit) is a transient
    failure of the poll (VENDORS.md): retried, and the wait goes on to done."""
    session = photo_session(AK, SK, endpoint=visual.endpoint)
    task_id = visual_task(visual, session)
    visual.script("CVSync2AsyncGetResult", (200, visual_error(code)))
    data = volcengine.wait_for_task(session, req_key="k", task_id=task_id, deadline=60.0,
                                    **Timeline().options())
    assert data["status"] == "done" and visual.hits() == 4


def test_visual_submit_and_wait(visual: FakeVisual) -> None:
    """submit_and_wait submits, reports the id, and returns the done data."""
    session = photo_session(AK, SK, endpoint=visual.endpoint)
    created: list[str] = []
    data = volcengine.submit_and_wait(session, req_key="jimeng_t2i_v40",
                                      body={"prompt": "猫"}, on_created=created.append,
                                      **Timeline().options())
    assert data["status"] == "done" and created == ["task-1"]
    assert visual.tasks["task-1"] == {"prompt": "猫", "req_key": "jimeng_t2i_v40"}


# -- the README's "Waiting for a task", run as written -------------------------------------------


def readme_blocks() -> list[str]:
    """The Python blocks of docs/waiting.md ("Waiting for a task"), in order."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "docs" / "waiting.md"
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)


@pytest.mark.usefixtures("loopback_only")
def test_readme_waiting_examples_run_as_written(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Every example of "Waiting for a task" runs as written against the loopback fakes
    (endpoints and keys from the environment, as the examples read them), and the fleet
    example resumes a stored task id without submitting again."""
    pytest.importorskip("volcenginesdkarkruntime")
    blocks = readme_blocks()
    assert len(blocks) == 4
    ark_block, visual_block, sdk_block, fleet_block = blocks
    with FakeArk(KEY) as fake_ark, FakeVisual(AK, SK) as fake_visual:
        monkeypatch.setenv("ARK_API_KEY", KEY)
        monkeypatch.setenv("ARK_ENDPOINT", fake_ark.endpoint)
        monkeypatch.setenv("VOLC_ACCESSKEY", AK)
        monkeypatch.setenv("VOLC_SECRETKEY", SK)
        monkeypatch.setenv("VISUAL_ENDPOINT", fake_visual.endpoint)
        exec(compile(ark_block, "README-ark", "exec"), {})
        assert capsys.readouterr().out == "https://example.invalid/v.mp4\n"
        exec(compile(visual_block, "README-visual", "exec"), {})
        assert capsys.readouterr().out == "['https://example.invalid/1.png']\n"
        assert fake_visual.queries == {"task-1": 2}
        sdk_namespace: dict[str, Any] = {}
        ours = logging.getLogger("requests_smartretry")
        level = ours.level
        try:  # the block sets our logger to INFO, as a user would: not for later tests
            exec(compile(sdk_block, "README-sdk", "exec"), sdk_namespace)
        finally:
            ours.setLevel(level)
        assert sdk_namespace["done"].status == "succeeded"
        fleet: dict[str, Any] = {}
        exec(compile(fleet_block, "README-fleet", "exec"), fleet)
        assert capsys.readouterr().out == "https://example.invalid/v.mp4\n"
        assert fleet["pending"] == {}
        created = len(fake_ark.tasks)
        fleet["pending"]["order-2"] = next(iter(fake_ark.tasks))  # a crashed worker's task
        assert fleet["generate"]("order-2", "…").endswith(".mp4")
        assert len(fake_ark.tasks) == created  # resumed: nothing submitted again


# -- submit-and-wait inside an enclosing retrying call ----------------------------------------


@pytest.mark.parametrize("runner", [execute_with_retry, execute_with_smart_retry])
def test_submit_and_wait_inside_a_retrying_call_never_submits_twice(runner: Any) -> None:
    """A wait that fails after the task was created (its deadline passes) is not repeated
    by an enclosing execute_with_retry / execute_with_smart_retry: the task is billed, so
    there is exactly one submission per vendor, and the error names the task to resume."""
    with FakeArk(KEY, progress=("running",)) as fake_ark, \
            FakeVisual(AK, SK, progress=("in_queue",)) as fake_visual:
        video = video_session(KEY, endpoint=fake_ark.endpoint)
        photo = photo_session(AK, SK, endpoint=fake_visual.endpoint)
        with pytest.raises(PollDeadlineExceeded) as ark_raised:
            runner(lambda: ark.create_and_wait(video, {"model": "m", "content": []},
                                               deadline=0.3, interval=0.05),
                   max_retries=2, backoff_base=0.01)
        with pytest.raises(PollDeadlineExceeded) as visual_raised:
            runner(lambda: volcengine.submit_and_wait(photo, req_key="k", deadline=0.3,
                                                      interval=0.05, body={"prompt": "猫"}),
                   max_retries=2, backoff_base=0.01)
        assert (len(fake_ark.tasks), len(fake_visual.tasks)) == (1, 1)
    ark_id, visual_id = next(iter(fake_ark.tasks)), next(iter(fake_visual.tasks))
    assert ark_raised.value.task_id == ark_id and ark_id in str(ark_raised.value)
    assert visual_raised.value.task_id == visual_id and visual_id in str(visual_raised.value)


@pytest.mark.usefixtures("loopback_only")
def test_readme_sdk_example_does_not_take_a_failed_task_for_done(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's SDK example, run as written against a task that fails: it raises
    TaskFailedError with the vendor's code instead of returning the failed task."""
    pytest.importorskip("volcenginesdkarkruntime")
    sdk_block = readme_blocks()[2]
    with FakeArk(KEY, progress=("running", "failed")) as fake_ark:
        monkeypatch.setenv("ARK_API_KEY", KEY)
        monkeypatch.setenv("ARK_ENDPOINT", fake_ark.endpoint)
        monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the example's 2 s pause
        with pytest.raises(TaskFailedError) as raised:
            exec(compile(sdk_block, "README-sdk", "exec"), {})
    assert raised.value.status == "failed"
    assert raised.value.code == "OutputVideoSensitiveContentDetected"
