"""Volcengine Ark (video): Bearer auth, the ``{"error": {"code"}}`` table, the preset.

Facts (``VENDORS.md``): base ``https://ark.cn-beijing.volces.com/api/v3``;
``POST /contents/generations/tasks`` creates a task (``{"id": "cgt-…"}``),
``GET /contents/generations/tasks/{id}`` queries it.  Errors are an HTTP status plus
``{"error": {"code", "message"}}``.

VENDORS notes (what differs from the official SDK, ``volcenginesdkarkruntime``, and why):

- ``x-should-retry: true|false`` on an error answer overrides every other rule, as in the
  SDK: the server knows best.  ``true`` is retried (the server says repeating is safe);
  ``false`` is final.
- 408 is retried, as by the SDK: the server gave up waiting for the request and did not
  act on it (RFC 9110), so repeating is safe even for task creation.
- 409 is *not* retried, unlike the SDK.  Ark's error-code reference lists no 409; the
  SDK's rule comes from the generic OpenAI-style client it is built on, where 409 marks a
  lock timeout.  Here a conflict on task creation may mean the task exists, and a repeat
  can bill a second video.  A server that wants the retry can say ``x-should-retry: true``.
- 429 ``QuotaExceeded`` / ``SetLimitExceeded`` are *not* retried, unlike the SDK (which
  retries every 429 and knows no codes).  Ark's error codes say the account's free quota
  is used up, or the inference limit the account set in the console (安心体验模式 / token
  limit) is reached: service stays suspended until someone raises the limit or pays, so no
  wait within one call can clear it.  ``RateLimitExceeded.*`` (RPM/TPM per minute) and
  ``ServerOverloaded`` are transient and retried.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import quote, urlsplit

import requests

from ..adapter import SmartRetryAdapter
from ..classify import Classification
from ..errors import SmartRetryError, TaskFailedError
from ..events import Verdict
from ..policy import RetryPolicy
from ._base import (
    AttemptPreparer,
    BaseURLSession,
    build_adapter,
    check_credential,
    check_endpoint,
    json_body,
    preset_session,
)
from ._tasks import check_task_id, task_created, task_json, wait_for

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..options import SessionOptions
    from ..stats import Stats

__all__ = ["BearerSigner", "classify_ark_response", "create_and_wait", "name_ark_request",
           "video_adapter", "video_session", "wait_for_task"]

SERVICE_KEY = "volcengine-ark"
DEFAULT_ENDPOINT = "https://ark.cn-beijing.volces.com/api/v3"

_CREATE = re.compile(r"/contents/generations/tasks/?$")
_QUERY = re.compile(r"/contents/generations/tasks/[^/]+/?$")

# (matches(code), verdict, server_acted), read top to bottom; first match wins.
_ERROR_TABLE: tuple[tuple[Callable[[str], bool], Verdict, bool], ...] = (
    # Quotas that no wait within a call can clear (see the VENDORS notes above).
    (lambda code: code.startswith(("QuotaExceeded", "SetLimitExceeded", "ModelQuotaExhausted")),
     Verdict.BUSINESS, False),
    (lambda code: code.startswith("RateLimitExceeded"), Verdict.RATE_LIMIT, False),
    (lambda code: code == "InternalServiceError", Verdict.SERVER_ERROR, True),
    (lambda code: "SensitiveContentDetected" in code, Verdict.BUSINESS, True),
    (lambda code: code.startswith(("InvalidParameter", "AccountOverdueError", "ModelNotOpen",
                                   "AuthenticationError", "AccessDenied")),
     Verdict.BUSINESS, False),
)


_SHOULD_RETRY_HEADER = "x-should-retry"


def classify_ark_response(response: requests.Response) -> Optional[Classification]:
    """The verdict on an Ark error response: the ``x-should-retry`` header when the server
    sent one, else 408, else ``error.code`` through the table; ``None`` (the HTTP-status
    table) when none of these decides.

    Example: 429 ``RateLimitExceeded.EndpointRPMExceeded`` is retried after a wait; 400
    ``InputTextSensitiveContentDetected`` and 429 ``QuotaExceeded`` are not; any error
    with ``x-should-retry: true`` is, and one with ``x-should-retry: false`` is not.
    """
    status = response.status_code
    if status < 400:
        return None
    should_retry = (response.headers.get(_SHOULD_RETRY_HEADER) or "").strip().lower()
    if should_retry == "true":
        verdict = Verdict.RATE_LIMIT if status == 429 else Verdict.SERVER_ERROR
        return Classification(verdict, f"HTTP {status} x-should-retry: true",
                              server_acted=False)
    if should_retry == "false":
        return Classification(Verdict.PERMANENT, f"HTTP {status} x-should-retry: false")
    if status == 408:
        return Classification(Verdict.TIMEOUT, "HTTP 408", server_acted=False)
    body = json_body(response)
    error = body.get("error") if body is not None else None
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    if not isinstance(code, str) or not code:
        return None
    for matches, verdict, acted in _ERROR_TABLE:
        if matches(code):
            return Classification(verdict, f"HTTP {status} {code}", server_acted=acted)
    return None


def name_ark_request(request: requests.PreparedRequest, lang: str = "zh") -> Optional[str]:
    """The operation name for an Ark request (``None`` for other endpoints)."""
    path = urlsplit(request.url or "").path
    method = (request.method or "GET").upper()
    if method == "POST" and _CREATE.search(path):
        return "生成视频" if lang == "zh" else "generate video"
    if method == "GET" and _QUERY.search(path):
        return "查询视频任务状态" if lang == "zh" else "query video task status"
    return None


def _ark_idempotent(request: requests.PreparedRequest) -> bool:
    # Creating a task is not idempotent (a repeat after a lost response bills a second
    # video), but the seed retried it, so the preset does; pass idempotent=False to stop.
    return (request.method or "").upper() == "POST" and bool(
        _CREATE.search(urlsplit(request.url or "").path))


class BearerSigner:
    """Sets ``Authorization: Bearer <api_key>`` on every attempt.

    Example::

        BearerSigner("ark-...").sign(prepared)
    """

    def __init__(self, api_key: str) -> None:
        self._api_key = check_credential("api_key", api_key)

    def __repr__(self) -> str:
        return "BearerSigner(api_key=[REDACTED])"

    def sign(self, request: requests.PreparedRequest) -> None:
        """Set the ``Authorization`` header."""
        request.headers["Authorization"] = f"Bearer {self._api_key}"


def _video_policy(api_key: Optional[str], lang: str) -> RetryPolicy:
    return RetryPolicy(
        service=SERVICE_KEY,
        classify_response=classify_ark_response,
        name_request=functools.partial(name_ark_request, lang=lang),
        idempotent=_ark_idempotent,
        prepare_attempt=AttemptPreparer(BearerSigner(api_key)) if api_key is not None else None,
    )


def video_adapter(
    api_key: Optional[str] = None, **options: Unpack[SessionOptions]
) -> SmartRetryAdapter:
    """A :class:`SmartRetryAdapter` for Volcengine Ark video tasks: error-code
    classification, operation names, and (with ``api_key``) Bearer auth on every attempt.

    Example::

        session = requests.Session()
        session.mount("https://ark.cn-beijing.volces.com/", video_adapter(api_key="..."))

    Task creation is retried even after it may have reached the server, as the seed
    application did: a retry after a lost response can create a second, billed task.
    Pass ``idempotent=False`` to retry creation only when nothing was sent or the server
    said it did not act (429, 503).
    """
    return build_adapter(_video_policy(api_key, str(options.get("lang", "zh"))), options)


def video_session(
    api_key: str, *, endpoint: str = DEFAULT_ENDPOINT, **options: Unpack[SessionOptions]
) -> BaseURLSession:
    """A session for Volcengine Ark: Bearer auth, classified retries, operation names.

    Example::

        session = video_session(api_key="...")
        task = session.post("/contents/generations/tasks",
                            json={"model": "...", "content": [...]}).json()
        status = session.get(f"/contents/generations/tasks/{task['id']}").json()["status"]
    """
    endpoint = check_endpoint("endpoint", endpoint)
    check_credential("api_key", api_key)
    adapter = build_adapter(_video_policy(api_key, str(options.get("lang", "zh"))), options)
    return preset_session(endpoint, adapter)


# -- waiting for a video task --------------------------------------------------------------

TASKS_PATH = "/contents/generations/tasks"
#: Task statuses that end a wait without a video (``expired``: reported by some regions).
FAILED_STATUSES = frozenset({"failed", "cancelled", "expired"})
SUCCEEDED = "succeeded"


def _tasks_url(client: Any, endpoint: Optional[str]) -> str:
    """The URL of the task collection for ``client`` (relative when it knows its base)."""
    path = TASKS_PATH
    if endpoint is not None:
        return check_endpoint("endpoint", endpoint) + path
    if isinstance(client, BaseURLSession):
        return path
    if isinstance(client, requests.Session):
        raise TypeError("a plain requests.Session needs endpoint= (the Ark base URL); "
                        "video_session() knows its own")
    if str(getattr(client, "base_url", "") or "").strip("/"):
        return path  # an httpx client with a base_url (video_client)
    raise TypeError("an httpx client without base_url needs endpoint= (the Ark base URL)")


def _check_client(client: Any) -> None:
    if isinstance(client, requests.Session):
        return
    if callable(getattr(client, "get", None)) and hasattr(client, "base_url"):
        return  # httpx.Client (video_client, or the http_client given to the Ark SDK)
    raise TypeError("client must be a requests.Session (video_session()) or an httpx.Client "
                    "(video_client(); for the Ark SDK, the http_client you gave it), got "
                    f"{type(client).__name__}")


def _failed(task: dict[str, Any]) -> TaskFailedError:
    found = task.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    status = str(task.get("status"))
    code = error.get("code")
    message = error.get("message")
    return TaskFailedError(
        f"video task {task.get('id')!r} {status}" + (f": {code}" if code else ""),
        status=status, code=code, error_message=message, task=task)


def wait_for_task(
    client: Any,
    task_id: str,
    *,
    deadline: float = 600.0,
    interval: float = 1.0,
    interval_multiplier: float = 1.5,
    interval_max: float = 30.0,
    endpoint: Optional[str] = None,
    operation_name: Optional[str] = None,
    on_poll: Optional[Callable[[int, dict[str, Any]], Any]] = None,
    stats: Optional[Stats] = None,
    **options: Any,
) -> dict[str, Any]:
    """Poll an Ark video task until it is ``succeeded`` and return the task (a dict).

    Example::

        video = video_session(api_key="...")
        task = video.post("/contents/generations/tasks", json={...}).json()
        done = wait_for_task(video, task["id"], deadline=600.0)
        done["content"]["video_url"]

    ``client`` is a ``video_session()`` or a ``video_client()`` (so also the
    ``http_client`` given to the official SDK); with any other session or client pass
    ``endpoint=``.  Each poll is ``GET /contents/generations/tasks/{id}``, a smart call
    (see :func:`~requests_smartretry.poll_until`: ``queued`` / ``running`` are no
    failure; a 500 or a 429 is retried by the policy, judged by the vendor's error table;
    a 404 or another final answer ends the wait with its ``HTTPError``).  ``failed``,
    ``cancelled`` or ``expired`` raise :class:`TaskFailedError` (``.status``, ``.code``,
    ``.message``, ``.task``); the deadline raises :class:`PollDeadlineExceeded`, whose
    ``.last`` is the last task seen.  The wait is counted in the client's statistics
    (``stats_of(video)``) under ``operation_name`` (default ``视频任务状态查询``).

    A waiter holds no state but its call: after a crash, any worker resumes the wait
    with the same ``task_id`` (the task id is the state; see docs/waiting.md).

    With an ``httpx.AsyncClient`` (``video_async_client()``, the ``AsyncArk`` SDK's
    ``http_client``) it returns an awaitable: ``done = await wait_for_task(client, id)``.
    """
    _check_client(client)
    task_id = check_task_id("task_id", task_id)
    url = f"{_tasks_url(client, endpoint)}/{quote(task_id, safe='')}"
    lang = str(options.get("lang", "zh"))
    operation = operation_name or ("视频任务状态查询" if lang == "zh" else "video task status")

    def done(response: Any) -> bool:
        task = task_json(response, operation)
        status = task.get("status")
        if status == SUCCEEDED:
            return True
        if status in FAILED_STATUSES:
            raise _failed(task)
        return False  # queued, running (or a status this version does not know yet)

    return wait_for(  # type: ignore[no-any-return]
        lambda: client.get(url), hook=classify_ark_response, check=_no_check,
        task_of=lambda response: task_json(response, operation), done=done,
        describe=lambda response: task_json(response, operation).get("status"),
        client=client, task_id=task_id, deadline=deadline, operation=operation,
        on_poll=on_poll, stats=stats,
        options={"interval": interval, "interval_multiplier": interval_multiplier,
                 "interval_max": interval_max, **options})


def _no_check(response: Any) -> None:
    """Ark's failed statuses are judged by the HTTP status and the error table alone."""


def create_and_wait(
    client: Any,
    body: dict[str, Any],
    *,
    deadline: float = 600.0,
    endpoint: Optional[str] = None,
    on_created: Optional[Callable[[str], Any]] = None,
    **wait_options: Any,
) -> dict[str, Any]:
    """Create a video task (``POST /contents/generations/tasks`` with ``body``) and wait
    for it (:func:`wait_for_task`); returns the succeeded task.

    Example::

        done = create_and_wait(video, {"model": "doubao-seedance-1-0-pro-250528",
                                       "content": [{"type": "text", "text": "..."}]},
                               on_created=save_task_id, deadline=600.0)

    ``on_created(task_id)`` is called as soon as the task exists, before the wait: store
    the id there, and a worker that crashes while waiting loses nothing (another one calls
    :func:`wait_for_task` with it).  The creation is one request with the client's own
    retries (the preset retries a creation as the seed did: see :func:`video_adapter`);
    ``deadline`` bounds the wait that follows.  A creation answered with an error raises
    its ``HTTPError``.  Once the task exists it is never created again: an enclosing
    retrying call (``execute_with_retry`` around this one) does not repeat the attempt
    when the wait fails, and the error's ``task_id`` is the id to wait for again.
    """
    _check_client(client)
    if not isinstance(body, dict):
        raise TypeError(f"body must be a dict (the task's JSON), got {type(body).__name__}")
    if on_created is not None and not callable(on_created):
        raise TypeError(f"on_created must be callable(task_id) or None, got {on_created!r}")
    response = client.post(_tasks_url(client, endpoint), json=body)
    response.raise_for_status()
    task_id = task_json(response, "create video task").get("id")
    if not isinstance(task_id, str) or not task_id:
        raise SmartRetryError(f"create video task: HTTP {response.status_code} without a "
                              "task id")
    task_created(task_id)
    if on_created is not None:
        on_created(task_id)
    return wait_for_task(client, task_id, deadline=deadline, endpoint=endpoint,
                         **wait_options)
