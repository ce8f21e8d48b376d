"""Keeping secrets out of log lines, events and exception messages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "is_secret_header", "redact_headers", "redact_text", "redact_url"]

REDACTED = "[REDACTED]"

_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
_SECRET_HEADER_PREFIXES = ("wechatpay-", "x-amz-security-token")
# Query parameters whose values are credentials: access_token, api_key, secret, sign, signature…
_SECRET_PARAM = re.compile(
    r"(token|key|secret|sig(nature)?|sign|password|passwd|credential|auth)", re.IGNORECASE
)
# name=value pairs in free text (URLs inside exception messages).
_SECRET_PAIR = re.compile(
    r"(?P<name>[A-Za-z0-9_.\-]*(?:token|key|secret|signature|sign|password|passwd|credential|auth)"
    r"[A-Za-z0-9_.\-]*)=(?P<value>[^&\s'\")]+)",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)[^/@\s]+@", re.IGNORECASE)
_AUTH_VALUE = re.compile(
    r"\b(Bearer|Basic|Digest|WECHATPAY2-SHA256-RSA2048|HMAC-SHA256)\s+"
    r"(?:(?:[A-Za-z_]+=\"[^\"]*\"\s*,?\s*)+|[^\s'\"]+)"
)


def is_secret_header(name: str) -> bool:
    """True for headers whose value must never be logged."""
    lowered = name.lower()
    return lowered in _SECRET_HEADERS or lowered.startswith(_SECRET_HEADER_PREFIXES)


def redact_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``headers`` with every secret value replaced by ``[REDACTED]``."""
    return {k: (REDACTED if is_secret_header(k) else v) for k, v in headers.items()}


def redact_url(url: str) -> str:
    """``url`` with its user:password and credential-like query values replaced."""
    if "@" not in url and not _SECRET_PARAM.search(url.partition("?")[2]):
        return url  # the common case, without parsing
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if parts.netloc != netloc:
        netloc = f"{REDACTED}@{netloc}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, REDACTED if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="[]"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Free text (an exception message) with credential pairs and auth values replaced."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _SECRET_PAIR.sub(lambda m: f"{m.group('name')}={REDACTED}", text)
