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
from typing import TYPE_CHECKING, Callable, Optional
from urllib.parse import urlsplit

import requests

from ..adapter import SmartRetryAdapter
from ..classify import Classification
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

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..options import SessionOptions

__all__ = ["BearerSigner", "classify_ark_response", "name_ark_request", "video_adapter",
           "video_session"]

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
