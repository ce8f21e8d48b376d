"""Volcengine visual (art photos): HMAC-SHA256 V4 signing, the body-code table, the preset.

Facts (``VENDORS.md``): ``POST https://visual.volcengineapi.com?Action=…&Version=2022-08-31``
with a JSON body; every response carries ``code`` (10000 is success) and a real HTTP
status; gateway errors come as ``ResponseMetadata.Error.Code``.  The signature has no
nonce but must be close to server time, so it is made afresh for every attempt.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import requests
from urllib3.util.timeout import Timeout as Urllib3Timeout

from ..adapter import SmartRetryAdapter
from ..classify import Classification
from ..errors import SmartRetryError, TaskFailedError
from ..events import Verdict
from ..policy import RetryPolicy
from ._base import (
    AttemptPreparer,
    BaseURLSession,
    body_bytes,
    build_adapter,
    check_credential,
    check_endpoint,
    json_body,
    origin_of,
    path_and_query,
    preset_session,
)
from ._tasks import check_task_id, task_created, task_json, wait_for

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..options import SessionOptions
    from ..stats import Stats

__all__ = [
    "VolcengineSigner",
    "classify_visual_response",
    "mount_on_sdk_service",
    "name_visual_request",
    "photo_adapter",
    "photo_session",
    "submit_and_wait",
    "wait_for_task",
]

SERVICE_KEY = "volcengine-visual"
DEFAULT_ENDPOINT = "https://visual.volcengineapi.com"

#: Action → operation name (zh, en).  Submitting and processing both create work.
ACTION_NAMES: dict[str, tuple[str, str]] = {
    "CVSync2AsyncSubmitTask": ("生成艺术照", "generate art photo"),
    "CVSync2AsyncGetResult": ("查询任务状态", "query task status"),
    "CVProcess": ("生成艺术照", "generate art photo"),
}

# The vendor's body codes, read top to bottom; they override the HTTP status.
# (codes, verdict, meaning, server_acted)
_CODE_TABLE: tuple[tuple[frozenset[int], Verdict, str, bool], ...] = (
    (frozenset({50429, 50430}), Verdict.RATE_LIMIT, "QPS/concurrency limit", False),
    (frozenset({50500, 50501}), Verdict.SERVER_ERROR, "internal error", True),
    # The vendor's table says retry: the output failed post-review, a new run may pass.
    (frozenset({50511, 50516, 50517, 50519}), Verdict.SERVER_ERROR,
     "output failed post-review", True),
    (frozenset({50411, 50412, 50413, 50512, 50518, 50520, 50521, 50522, 50215}),
     Verdict.BUSINESS, "input rejected", True),
)

# Gateway errors (ResponseMetadata.Error.Code).  InvalidTimestamp is retryable only when the
# adapter signs: its next attempt carries a fresh X-Date (see classify_visual_response).
_GATEWAY_TABLE: dict[str, tuple[Verdict, bool]] = {
    "InternalError": (Verdict.SERVER_ERROR, True),
    "FailToConnect": (Verdict.SERVER_ERROR, False),
    "ServiceUnavailableTemp": (Verdict.SERVER_ERROR, False),
    "InternalServiceTimeout": (Verdict.SERVER_ERROR, True),
    "FlowLimitExceeded": (Verdict.RATE_LIMIT, False),
    "InvalidTimestamp": (Verdict.SERVER_ERROR, False),
    "SignatureDoesNotMatch": (Verdict.PERMANENT, False),
    "AccessDenied": (Verdict.PERMANENT, False),
}
_STALE_SIGNATURE = "InvalidTimestamp"

SUCCESS_CODE = 10000


def classify_visual_response(
    response: requests.Response, *, signs: bool = True
) -> Optional[Classification]:
    """The verdict on a Volcengine visual response from its body code (or gateway error
    code); ``None`` (the HTTP-status table) when the body names no code this table knows.

    Example: HTTP 400 with code 50511 is retried; HTTP 400 with 50411 is not; 50429 waits
    like a 429 (``Retry-After`` honoured).

    ``signs`` says whether the adapter signs every attempt.  ``InvalidTimestamp`` is then
    retried (the retry carries a fresh ``X-Date``); when the caller signed (the SDK path
    without keys) a retry would resend the same stale signature, so it is final, and the
    log line says the caller's signature is stale.
    """
    body = json_body(response)
    if body is None:
        return None
    metadata = body.get("ResponseMetadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("Error"), dict):
        code_name = metadata["Error"].get("Code")
        if code_name == _STALE_SIGNATURE and not signs:
            return Classification(
                Verdict.PERMANENT,
                f"HTTP {response.status_code} {code_name}: the caller's signature is stale "
                f"(X-Date {_x_date(response)}); the adapter has no keys to sign again",
                server_acted=False)
        if isinstance(code_name, str) and code_name in _GATEWAY_TABLE:
            verdict, acted = _GATEWAY_TABLE[code_name]
            return Classification(verdict, f"HTTP {response.status_code} {code_name}",
                                  server_acted=acted)
    code = body.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    if code == SUCCESS_CODE and response.status_code < 300:
        return Classification(Verdict.SUCCESS, f"code {code}")
    for codes, verdict, meaning, acted in _CODE_TABLE:
        if code in codes:
            return Classification(verdict, f"code {code} {meaning}", server_acted=acted)
    return None


def _x_date(response: requests.Response) -> str:
    request = response.request
    value = request.headers.get("X-Date") if request is not None else None
    return _header_text(value) if value else "missing"


def _action(request: requests.PreparedRequest) -> Optional[str]:
    _path, query = path_and_query(request.url or "")
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "Action":
            return value
    return None


def name_visual_request(request: requests.PreparedRequest, lang: str = "zh") -> Optional[str]:
    """The operation name for a visual request, from its ``Action`` (``None`` if unknown)."""
    names = ACTION_NAMES.get(_action(request) or "")
    if names is None:
        return None
    return names[0] if lang == "zh" else names[1]


def _visual_idempotent(request: requests.PreparedRequest) -> bool:
    # Queries are idempotent.  Submissions are not (a repeat may create a second, billed
    # task), but the seed retried them, so the preset does too; pass idempotent=False to
    # change that.
    return _action(request) in ACTION_NAMES


class VolcengineSigner:
    """Volcengine HMAC-SHA256 V4 signing (what the SDK's ``SignerV4.sign`` computes).

    Example::

        signer = VolcengineSigner("AKLT...", "secret", region="cn-north-1", service="cv")
        signer.sign(prepared)   # sets X-Date, X-Content-Sha256 and Authorization

    Signs ``Content-Type``, ``Content-Md5``, ``Host`` and every ``X-*`` header.  ``clock``
    returns epoch seconds (inject it in tests).  Thread-safe: it holds no mutable state.
    """

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        region: str = "cn-north-1",
        service: str = "cv",
        session_token: Optional[str] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.access_key = check_credential("access_key", access_key)
        self._secret_key = check_credential("secret_key", secret_key)
        self.region = check_credential("region", region)
        self.service = check_credential("service", service)
        if session_token is not None:
            check_credential("session_token", session_token)
        self._session_token = session_token
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self._clock = clock

    def __repr__(self) -> str:
        return (f"VolcengineSigner(access_key={self.access_key[:4]!r}…, region={self.region!r}, "
                f"service={self.service!r})")

    def sign(self, request: requests.PreparedRequest) -> None:
        """Set ``X-Date``, ``X-Content-Sha256`` and ``Authorization`` on ``request``."""
        x_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        day = x_date[:8]
        body_hash = hashlib.sha256(body_bytes(request, "VolcengineSigner")).hexdigest()
        headers = request.headers
        headers.pop("Authorization", None)
        headers["X-Date"] = x_date
        headers["X-Content-Sha256"] = body_hash
        if self._session_token:
            headers["X-Security-Token"] = self._session_token

        url = request.url or ""
        signed = {
            name.lower(): _header_text(value)
            for name, value in headers.items()
            if name.lower() in ("content-type", "content-md5", "host")
            or name.lower().startswith("x-")
        }
        signed["host"] = _host_value(signed.get("host") or urlsplit(url).netloc)
        signed_names = ";".join(sorted(signed))
        path, query = path_and_query(url)
        canonical = "\n".join([
            (request.method or "GET").upper(),
            _canonical_path(path),
            _canonical_query(query),
            "".join(f"{name}:{signed[name]}\n" for name in sorted(signed)),
            signed_names,
            body_hash,
        ])
        scope = f"{day}/{self.region}/{self.service}/request"
        to_sign = "\n".join([
            "HMAC-SHA256", x_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        ])
        key = self._secret_key.encode("utf-8")
        for part in (day, self.region, self.service, "request"):
            key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        headers["Authorization"] = (
            f"HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={signed_names}, Signature={signature}"
        )


def _header_text(value: Any) -> str:
    # requests accepts bytes header values and sends them as latin-1.
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _host_value(netloc: str) -> str:
    host = netloc.rsplit("@", 1)[-1]
    for default_port in (":80", ":443"):  # as the SDK: a default port is not signed
        if host.endswith(default_port):
            return host[: -len(default_port)]
    return host


def _canonical_path(path: str) -> str:
    return quote(unquote(path)).replace("+", "%20")


def _canonical_query(query: str) -> str:
    grouped: dict[str, list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        grouped.setdefault(key, []).append(value)
    return "&".join(
        f"{quote(key, safe='-_.~')}={quote(value, safe='-_.~')}"
        for key in sorted(grouped)
        for value in grouped[key]
    )


def _photo_policy(signer: Optional[VolcengineSigner], lang: str) -> RetryPolicy:
    return RetryPolicy(
        service=SERVICE_KEY,
        classify_response=functools.partial(classify_visual_response,
                                            signs=signer is not None),
        name_request=functools.partial(name_visual_request, lang=lang),
        idempotent=_visual_idempotent,
        prepare_attempt=AttemptPreparer(signer) if signer is not None else None,
    )


def photo_adapter(
    access_key: Optional[str] = None,
    secret_key: Optional[str] = None,
    *,
    region: str = "cn-north-1",
    session_token: Optional[str] = None,
    sign_clock: Callable[[], float] = time.time,
    **options: Unpack[SessionOptions],
) -> SmartRetryAdapter:
    """A :class:`SmartRetryAdapter` for Volcengine visual: body-code classification,
    operation names from the ``Action``, and (with keys) a fresh V4 signature per attempt.

    Example (the legacy SDK path: the SDK calls, the adapter retries)::

        from volcengine.visual.VisualService import VisualService
        service = mount_on_sdk_service(VisualService(),
                                       photo_adapter(access_key, secret_key, max_retries=2))

    Without keys the SDK's own signature is sent again on a retry (valid for a few
    minutes; an ``InvalidTimestamp`` answer is then final); with ``access_key``/
    ``secret_key`` every attempt is signed afresh.  :func:`mount_on_sdk_service` keeps the
    adapter mounted when ``VisualService()`` is called again.

    Task submission (``CVSync2AsyncSubmitTask``, ``CVProcess``) is retried even after it
    may have reached the server, as the seed application did: a retry after a lost
    response can create a second, billed task.  Pass ``idempotent=False`` to retry a
    submission only when the vendor said it did not act (50429, 503) or nothing was sent.

    ``session_token`` signs with temporary (STS) credentials.  ``options``: policy fields
    (``max_retries``, ``timeout``…) and adapter keywords (``breaker``, ``budget``,
    ``hooks``, ``state``…).
    """
    signer = None
    if access_key is not None or secret_key is not None:
        signer = VolcengineSigner(access_key, secret_key,  # type: ignore[arg-type]
                                  region=region, session_token=session_token,
                                  clock=sign_clock)
    return build_adapter(_photo_policy(signer, str(options.get("lang", "zh"))), options)


def photo_session(
    access_key: str,
    secret_key: str,
    *,
    region: str = "cn-north-1",
    endpoint: str = DEFAULT_ENDPOINT,
    session_token: Optional[str] = None,
    sign_clock: Callable[[], float] = time.time,
    **options: Unpack[SessionOptions],
) -> BaseURLSession:
    """A session for Volcengine visual: signed per attempt, classified by body code.

    Example::

        session = photo_session(access_key="AKLT...", secret_key="...")
        response = session.post("?Action=CVProcess&Version=2022-08-31",
                                json={"req_key": "...", "image_urls": [...]})

    Relative URLs resolve against ``endpoint``; see :func:`photo_adapter` for the retry
    rules (and the duplicate-task risk of retried submissions).
    """
    endpoint = check_endpoint("endpoint", endpoint)
    signer = VolcengineSigner(access_key, secret_key, region=region,
                              session_token=session_token, clock=sign_clock)
    adapter = build_adapter(_photo_policy(signer, str(options.get("lang", "zh"))), options)
    return preset_session(endpoint, adapter)


# -- the volcengine SDK path ---------------------------------------------------------------

_ADAPTER_SLOT = "_smartretry_adapter"
_SESSION_SLOT = "_smartretry_session"
_MOUNTED_CLASSES: dict[type, type] = {}


class _SdkSession(requests.Session):
    """The session of a service passed to :func:`mount_on_sdk_service` (its class is
    swapped to this one: only that object changes).  Requests to the service's own origin
    (``service_info.scheme://service_info.host``, read at each request, so ``set_host``
    is followed) go through the adapter, with each timeout the SDK passes cut to the
    policy's; requests to any other host keep requests' own adapter, so the credentials
    the adapter adds are never sent there."""

    _smartretry_service: Any = None

    def _smartretry_target(self, url: str) -> Optional[SmartRetryAdapter]:
        ref = self._smartretry_service
        service = ref() if ref is not None else None
        if service is None:
            return None
        info = getattr(service, "service_info", None)
        scheme, host = getattr(info, "scheme", None), getattr(info, "host", None)
        if not scheme or not host or origin_of(url) != f"{scheme}://{host}".lower():
            return None
        adapter: SmartRetryAdapter = service.__dict__[_ADAPTER_SLOT]
        return adapter

    def get_adapter(self, url: str) -> Any:
        """The SmartRetryAdapter for the service's origin (and for a bare scheme such as
        ``"https://"``, so that ``stats_of(service.session)`` finds it); requests' choice
        elsewhere."""
        adapter = self._smartretry_target(url)
        if adapter is None and not urlsplit(url).netloc:
            ref = self._smartretry_service
            service = ref() if ref is not None else None
            if service is not None:
                adapter = service.__dict__.get(_ADAPTER_SLOT)
        return adapter if adapter is not None else super().get_adapter(url)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> Any:
        """As ``Session.send``; on the service's origin the SDK's timeout (``(30, 30)`` by
        default) is cut to the policy's, so an attempt never outlives ``timeout``."""
        adapter = self._smartretry_target(request.url or "")
        if adapter is not None:
            kwargs["timeout"] = _within(kwargs.get("timeout"), adapter.policy.timeout)
        return super().send(request, **kwargs)


def _within(timeout: Any, limit: Optional[float]) -> Any:
    """``timeout`` (requests' forms) with each part at most ``limit`` seconds and the
    attempt as a whole bounded by ``limit``."""
    if limit is None or timeout is None:
        return timeout  # no timeout given: the policy's applies anyway
    if isinstance(timeout, tuple) and len(timeout) == 2:
        connect, read = timeout
        return Urllib3Timeout(
            connect=limit if connect is None else min(float(connect), limit),
            read=limit if read is None else min(float(read), limit), total=limit)
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        return min(float(timeout), limit)
    return timeout  # anything else: the adapter checks it as usual


class _MountedSession:
    """The ``session`` attribute of a service passed to :func:`mount_on_sdk_service`: every
    session assigned to it (the SDK's ``__init__`` assigns a new one) becomes an
    :class:`_SdkSession` bound to the service."""

    def __get__(self, service: Any, owner: Optional[type] = None) -> Any:
        if service is None:
            return self
        return service.__dict__[_SESSION_SLOT]

    def __set__(self, service: Any, session: Any) -> None:
        if type(session) is requests.Session:
            session.__class__ = _SdkSession
        elif not isinstance(session, _SdkSession):
            raise TypeError(f"a volcengine SDK service mounted by mount_on_sdk_service "
                            f"needs a requests.Session, got {type(session).__name__}")
        session._smartretry_service = weakref.ref(service)
        service.__dict__[_SESSION_SLOT] = session


def _mounted_class(cls: type) -> type:
    if cls.__dict__.get("_smartretry_mounted"):
        return cls
    mounted = _MOUNTED_CLASSES.get(cls)
    if mounted is None:
        mounted = _MOUNTED_CLASSES[cls] = type(cls.__name__, (cls,), {
            "session": _MountedSession(), "_smartretry_mounted": True,
            "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__})
    return mounted


def mount_on_sdk_service(service: Any, adapter: SmartRetryAdapter) -> Any:
    """Mount ``adapter`` on a volcengine SDK service's ``session`` for the service's own
    origin, and keep it mounted on every session the SDK builds for that object later;
    returns ``service``.

    Example::

        from volcengine.visual.VisualService import VisualService
        service = mount_on_sdk_service(VisualService(), photo_adapter(ak, sk, max_retries=2))
        VisualService().cv_process({...})    # the same singleton, still retried

    Why: ``VisualService`` is a singleton whose ``__init__`` runs again on every
    ``VisualService()`` call and replaces ``.session`` with a new ``requests`` session, so
    an adapter mounted by hand silently disappears.  Here the object's class becomes a
    subclass of its own (``isinstance`` and the SDK's methods are unchanged) whose
    ``session`` mounts the adapter on whatever session is assigned.  (That ``__init__``
    also resets the SDK's ak/sk: call ``set_ak``/``set_sk`` again, or give the adapter
    keys so that it signs every attempt itself.)  Calling it again swaps the adapter.

    Only requests to the service's origin (``service_info.scheme`` and ``host``, as they
    are at each request: ``set_host``/``set_scheme`` are followed) go through the adapter;
    the SDK's session sends anything else as requests does, without the adapter's
    signature.  Each timeout the SDK passes (``(30, 30)`` unless
    ``set_connection_timeout``/``set_socket_timeout`` changed it) is cut to the policy's
    ``timeout``, which bounds every attempt as a whole.
    """
    if not isinstance(adapter, SmartRetryAdapter):
        raise TypeError(f"adapter must be a SmartRetryAdapter, got {adapter!r}")
    current = getattr(service, "session", None)
    if not isinstance(current, requests.Session):
        raise TypeError(f"service must be a volcengine SDK service with a requests "
                        f"session (.session), got {type(service).__name__}")
    state = service.__dict__
    state[_ADAPTER_SLOT] = adapter
    state.pop("session", None)  # from now on the class attribute holds the session
    service.__class__ = _mounted_class(type(service))
    service.session = current  # mounts the adapter on it
    return service


# -- waiting for an async visual task --------------------------------------------------------

VERSION = "2022-08-31"
SUBMIT_ACTION = "CVSync2AsyncSubmitTask"
RESULT_ACTION = "CVSync2AsyncGetResult"
#: ``data.status`` values that end a wait without a result.
FAILED_STATUSES = frozenset({"not_found", "expired"})
DONE = "done"


def _action_url(session: requests.Session, action: str, endpoint: Optional[str]) -> str:
    query = f"?Action={action}&Version={VERSION}"
    if endpoint is not None:
        return check_endpoint("endpoint", endpoint) + "/" + query
    if isinstance(session, BaseURLSession):
        return query
    raise TypeError("a plain requests.Session needs endpoint= (the visual API's URL); "
                    "photo_session() knows its own")


def _check_session(session: Any) -> None:
    if not isinstance(session, requests.Session):
        raise TypeError(f"session must be a requests.Session (photo_session()), got "
                        f"{type(session).__name__}")


def _body_failure(response: Any) -> None:
    """A final answer with a vendor body code (input rejected…) is the task's failure; a
    gateway error or another status stays the ``HTTPError``."""
    verdict = classify_visual_response(response)
    if verdict is None or verdict.retryable:
        return
    body = task_json(response, "query task status")
    code = body.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        raise TaskFailedError(f"visual task failed: code {code}", status="error", code=code,
                              error_message=body.get("message"), task=body.get("data"))


def _data(body: dict[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    return data if isinstance(data, dict) else {}


def wait_for_task(
    session: requests.Session,
    *,
    req_key: str,
    task_id: str,
    deadline: float = 300.0,
    req_json: Optional[str] = None,
    interval: float = 1.0,
    interval_multiplier: float = 1.5,
    interval_max: float = 30.0,
    endpoint: Optional[str] = None,
    operation_name: Optional[str] = None,
    on_poll: Optional[Callable[[int, dict[str, Any]], Any]] = None,
    stats: Optional[Stats] = None,
    **options: Any,
) -> dict[str, Any]:
    """Poll a visual async task until ``data.status`` is ``done``; returns ``data``.

    Example::

        photo = photo_session(access_key="AKLT...", secret_key="...")
        data = wait_for_task(photo, req_key="jimeng_t2i_v40", task_id=task_id, deadline=300.0)
        data["image_urls"]

    Each poll is ``POST ?Action=CVSync2AsyncGetResult&Version=2022-08-31`` with
    ``{"req_key", "task_id"}`` (and ``req_json`` when given), signed afresh, one smart call
    (see :func:`~requests_smartretry.poll_until`): ``in_queue`` / ``generating`` are no
    failure; 50429 / 50500 / gateway 5xx are retried by the policy.  ``not_found``,
    ``expired`` or a final vendor code (an input rejected: 50411…) raise
    :class:`TaskFailedError` (``.status``, ``.code``, ``.message``, ``.task``); the
    deadline raises :class:`PollDeadlineExceeded` (``.last``: the last ``data`` seen).
    The wait is counted in ``stats_of(session)`` under ``operation_name`` (default
    ``艺术照任务状态查询``).  The task id is the whole state: any worker resumes a wait
    after a crash by calling this again with it.
    """
    _check_session(session)
    req_key = check_credential("req_key", req_key)
    task_id = check_task_id("task_id", task_id)
    if req_json is not None and not isinstance(req_json, str):
        raise TypeError(f"req_json must be a JSON string or None, got {type(req_json).__name__}")
    url = _action_url(session, RESULT_ACTION, endpoint)
    body: dict[str, Any] = {"req_key": req_key, "task_id": task_id}
    if req_json is not None:
        body["req_json"] = req_json
    lang = str(options.get("lang", "zh"))
    operation = operation_name or ("艺术照任务状态查询" if lang == "zh"
                                   else "art photo task status")

    def done(response: Any) -> bool:
        answer = task_json(response, operation)
        data = _data(answer)
        status = data.get("status")
        if status == DONE:
            return True
        if status in FAILED_STATUSES:
            raise TaskFailedError(f"visual task {task_id!r} {status}", status=str(status),
                                  code=answer.get("code"),
                                  error_message=answer.get("message"), task=data)
        code = answer.get("code")
        if code != SUCCESS_CODE and isinstance(code, int):  # a 2xx carrying a failure code
            raise TaskFailedError(f"visual task {task_id!r} failed: code {code}",
                                  status=str(status), code=code,
                                  error_message=answer.get("message"), task=data)
        return False  # in_queue, generating (or a status this version does not know yet)

    return wait_for(  # type: ignore[no-any-return]
        lambda: session.post(url, json=body), hook=classify_visual_response,
        check=_body_failure, task_of=lambda response: _data(task_json(response, operation)),
        done=done,
        describe=lambda response: _data(task_json(response, operation)).get("status"),
        client=session, task_id=task_id, deadline=deadline, operation=operation,
        on_poll=on_poll, stats=stats,
        options={"interval": interval, "interval_multiplier": interval_multiplier,
                 "interval_max": interval_max, **options})


def submit_and_wait(
    session: requests.Session,
    *,
    req_key: str,
    body: Optional[dict[str, Any]] = None,
    deadline: float = 300.0,
    endpoint: Optional[str] = None,
    on_created: Optional[Callable[[str], Any]] = None,
    **wait_options: Any,
) -> dict[str, Any]:
    """Submit a visual async task (``CVSync2AsyncSubmitTask`` with ``req_key`` and
    ``body``'s fields) and wait for it (:func:`wait_for_task`); returns the done ``data``.

    Example::

        data = submit_and_wait(photo, req_key="jimeng_t2i_v40",
                               body={"prompt": "一只猫"}, on_created=save_task_id)

    ``on_created(task_id)`` is called as soon as the task exists: store the id there, and
    a worker that crashes while waiting loses nothing.  A submission answered with an
    error raises its ``HTTPError`` (or :class:`TaskFailedError` for a vendor code).  Once
    the task exists it is never submitted again: an enclosing retrying call does not
    repeat the attempt when the wait fails, and the error's ``task_id`` is the id to wait
    for again.
    """
    _check_session(session)
    req_key = check_credential("req_key", req_key)
    if body is not None and not isinstance(body, dict):
        raise TypeError(f"body must be a dict or None, got {type(body).__name__}")
    if on_created is not None and not callable(on_created):
        raise TypeError(f"on_created must be callable(task_id) or None, got {on_created!r}")
    response = session.post(_action_url(session, SUBMIT_ACTION, endpoint),
                            json={**(body or {}), "req_key": req_key})
    if response.status_code >= 400:
        _body_failure(response)
        response.raise_for_status()
    task_id = _data(task_json(response, "submit task")).get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise SmartRetryError(f"submit task: HTTP {response.status_code} without a task id")
    task_created(task_id)
    if on_created is not None:
        on_created(task_id)
    return wait_for_task(session, req_key=req_key, task_id=task_id, deadline=deadline,
                         endpoint=endpoint, **wait_options)
