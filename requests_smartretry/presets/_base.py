"""What every vendor preset is made of: a session with a base URL, a per-attempt preparer
(backup-host failover, then signing) and the small helpers the vendor modules share."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol
from urllib.parse import urlsplit, urlunsplit

import requests

from ..adapter import SmartRetryAdapter, previous_attempts
from ..events import Verdict
from ..policy import RetryPolicy
from ..redact import redact_url

if TYPE_CHECKING:
    from ..options import SessionOptions

__all__ = [
    "AttemptPreparer",
    "BaseURLSession",
    "Signer",
    "build_adapter",
    "json_body",
    "origin_of",
    "preset_session",
]

_HAS_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# Verdicts that mean the host itself may be unreachable: the vendor's advice is to switch.
_FAILOVER_VERDICTS = frozenset({Verdict.NETWORK, Verdict.TIMEOUT})


class Signer(Protocol):
    """Signs a prepared request in place (called once per attempt, on a fresh copy)."""

    def sign(self, request: requests.PreparedRequest) -> None:
        """Add the authentication headers for this attempt."""


def check_endpoint(name: str, value: Any) -> str:
    """``value`` as an endpoint URL without a trailing slash; a clear error otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a URL string, got {type(value).__name__}")
    shown = redact_url(value)  # an error message never echoes a secret (?api_key=…)
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValueError(f"{name} must be an http(s) URL with a host, got {shown!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL with a host, got {shown!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{name} must not carry a query or fragment, got {shown!r}")
    return value.rstrip("/")


def check_credential(name: str, value: Any) -> str:
    """``value`` as a non-empty string; a clear error naming ``name`` otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {type(value).__name__}")
    return value


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, lower-cased."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class BaseURLSession(requests.Session):
    """A ``requests.Session`` that resolves relative URLs against ``endpoint``.

    Example::

        session = BaseURLSession("https://ark.cn-beijing.volces.com/api/v3")
        session.get("/contents/generations/tasks/cgt-1")  # .../api/v3/contents/...
        session.get("https://example.com/status")         # full URLs pass through

    Relative URLs are appended to the endpoint's path (``"/x"`` and ``"x"`` alike), and a
    bare query (``"?Action=CVProcess"``) goes to the endpoint itself.
    """

    __attrs__ = [*requests.Session.__attrs__, "endpoint"]  # noqa: RUF012 - requests' convention

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = check_endpoint("endpoint", endpoint)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self.endpoint!r})"

    def resolve(self, url: str) -> str:
        """The absolute URL for ``url``: full URLs unchanged, others under the endpoint."""
        if _HAS_SCHEME.match(url):
            return url
        if not url or url.startswith(("?", "#")):
            base = self.endpoint if urlsplit(self.endpoint).path else self.endpoint + "/"
            return base + url
        return f"{self.endpoint}/{url.lstrip('/')}"

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        """As ``Session.prepare_request``, with a relative URL resolved first."""
        if isinstance(request.url, str):
            request.url = self.resolve(request.url)
        return super().prepare_request(request)


@dataclass(frozen=True)
class AttemptPreparer:
    """A ``prepare_attempt`` hook: fail over to a backup origin, then sign the attempt.

    Example::

        preparer = AttemptPreparer(signer, primary="https://api.mch.weixin.qq.com",
                                   backup="https://api2.mch.weixin.qq.com")
        policy = RetryPolicy(prepare_attempt=preparer)

    Once an attempt of the call failed in transport (refused, reset, DNS, timeout), every
    later attempt of that call goes to ``backup`` when its URL is on ``primary``.
    """

    signer: Optional[Signer] = None
    primary: Optional[str] = None
    backup: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.primary is None) != (self.backup is None):
            raise ValueError("primary and backup must be given together")
        if self.signer is not None and not callable(getattr(self.signer, "sign", None)):
            raise TypeError(f"signer must have a sign(request) method, got {self.signer!r}")

    def __call__(self, request: requests.PreparedRequest, attempt: int) -> requests.PreparedRequest:
        if attempt > 1 and self.backup is not None and self.primary is not None and any(
            earlier.verdict in _FAILOVER_VERDICTS for earlier in previous_attempts()
        ):
            request.url = _swap_origin(request.url or "", self.primary, self.backup)
        if self.signer is not None:
            self.signer.sign(request)
        return request


def _swap_origin(url: str, primary: str, backup: str) -> str:
    if origin_of(url) != origin_of(primary):
        return url
    parts = urlsplit(url)
    target = urlsplit(backup)
    return urlunsplit((target.scheme, target.netloc, parts.path, parts.query, parts.fragment))


def build_adapter(
    policy: RetryPolicy,
    options: SessionOptions,
    factory: Callable[..., SmartRetryAdapter] = SmartRetryAdapter,
) -> SmartRetryAdapter:
    """The preset's adapter (``factory``: the class, or a partial of a subclass):
    ``options`` override the preset policy's fields; the rest (``breaker``, ``budget``,
    ``hooks``, ``state``, ``sleep``, ``clock``…) go to the adapter."""
    if "policy" in options:
        raise TypeError("presets take policy fields as keywords (e.g. max_retries=3), not policy=")
    return factory(policy, **options)


def preset_session(
    endpoint: str, adapter: SmartRetryAdapter, *extra_endpoints: Optional[str]
) -> BaseURLSession:
    """A :class:`BaseURLSession` on ``endpoint`` with ``adapter`` mounted on the endpoint's
    origin (and the extra endpoints'), so credentials are never sent to another host."""
    session = BaseURLSession(endpoint)
    for url in (endpoint, *extra_endpoints):
        if url is not None:
            session.mount(origin_of(url) + "/", adapter)
    return session


def json_body(response: requests.Response) -> Optional[dict[str, Any]]:
    """The response's JSON object, or ``None`` when it has none (HTML error pages, empty
    bodies, streams of another type)."""
    content_type = response.headers.get("Content-Type", "")
    if content_type and "json" not in content_type.lower():
        return None  # do not read a streamed download just to classify it
    try:
        data = json.loads(response.content or b"null")
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def body_bytes(request: requests.PreparedRequest, signer: str) -> bytes:
    """The request body as bytes, for signing; a clear error for bodies that cannot be
    signed (streams, generators)."""
    body = request.body
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    raise TypeError(
        f"{signer} can sign only bytes or str bodies (json=, data=bytes), got {type(body).__name__}"
    )


def path_and_query(url: str) -> tuple[str, str]:
    """(path, query) of ``url``; path ``/`` when empty."""
    parts = urlsplit(url)
    return parts.path or "/", parts.query
