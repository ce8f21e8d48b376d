"""Keeping secrets out of log lines, events and exception messages.

What counts as a secret: the values of ``Authorization``, ``Proxy-Authorization``,
``Cookie``, ``Set-Cookie``, ``X-Api-Key``/``Api-Key``, every ``Wechatpay-*`` header and any
header named like a credential (``X-Auth-Token``, ``X-Access-Key``, ``X-Session-Id``); the
user:password part of a URL (scheme-relative ``//user:pw@host`` too); path segments shaped
like a credential (``bot<id>:<token>``, long mixed letter-and-digit tokens, ``access_token=…``);
the value of any query or ``;`` path parameter (or ``name=value`` / ``"name": "value"`` pair
in text) whose name contains token, key, secret, sig/sign/signature, password, passwd,
credential, auth or session; and, as a URL's parameter only, OAuth's ``code`` and ``sid``.

Every pattern here is linear in the length of its input: the text being cleaned may be an
exception message that quotes what a hostile server sent (a 64 KiB status line, say), and a
backtracking pattern would turn that into a hang.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from .classify import linked_exceptions

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "install_redacting_filter",
    "is_secret_header",
    "is_secret_name",
    "path_template",
    "redact_exception",
    "redact_headers",
    "redact_text",
    "redact_url",
]

REDACTED = "[REDACTED]"

_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
_SECRET_HEADER_PREFIXES = ("wechatpay-", "x-amz-security-token")
# Custom credential headers (X-Auth-Token, X-Access-Key, X-Session-Id…).  Narrower than the
# parameter rule: a bare "key" (Idempotency-Key) is not a credential.
_SECRET_HEADER_WORDS = re.compile(
    r"token|secret|passw|credential|auth|signature|api-?key|access-?key|session",
    re.IGNORECASE,
)
# Names whose values are credentials: access_token, api_key, secret, sign, signature…
_SECRET_NAME = re.compile(
    r"token|key|secret|sig|password|passwd|credential|auth|sessid", re.IGNORECASE
)
# Names that are credentials only as a URL's parameter (query or ";" path parameter): OAuth's
# authorization ``code``, a session ``sid``.  Matched whole: as a substring, or in a JSON
# body ("code": "SYSTEM_ERROR", a vendor's error code), they name no secret.
_URL_SECRET_NAMES = frozenset({"code", "sid"})
_URL_SECRET_PARAM = re.compile(r"(?:^|[&;?])(?:code|sid)=", re.IGNORECASE)
# The (?<!...) anchors make each pattern start only at the beginning of a run of name
# characters, which keeps the scan linear (no retry from every position inside the run).
_NAME_CHARS = r"[\w.\-%\[\]]"
# name=value pairs in free text (query strings quoted inside exception messages).
_PAIR = re.compile(rf"(?<!{_NAME_CHARS})(?P<name>{_NAME_CHARS}+)=(?P<value>[^&\s'\"),;]+)")
# "name": "value" / 'name': 'value' (JSON bodies, dict reprs of headers).
_QUOTED_PAIR = re.compile(
    r"(?P<q>[\"'])(?P<name>[\w.\-]+)(?P=q)(?P<sep>\s*:\s*)"
    r"(?:(?P<vq>[\"'])(?P<qvalue>[^\"'\r\n]*)(?P=vq)|(?P<value>[^\s,}\]\"']+))"
)
# "Name: value" anywhere (a header line, a dumped request, "error: X-Auth-Token: …").  Only
# the name and separator are matched, so every name on a line is examined; the value of a
# secret one runs to the end of the line or the next quote (see _header_values).
_HEADER_NAME = re.compile(r"(?<![\w\-])(?P<name>[\w\-]+)[ \t]*:[ \t]*")
_HEADER_VALUE_END = re.compile(r"[\r\n'\"]")
# user:password@ after a scheme, or after a scheme-relative "//" (``//user:pw@host``) that
# starts a word (not the "//" of a scheme, nor one inside a path).
_USERINFO = re.compile(
    r"(?P<scheme>(?<![a-z0-9+.\-])[a-z][a-z0-9+.\-]*://|(?<![^\s'\"(<\[=,])//)[^/@\s]+@",
    re.IGNORECASE)
# Path segments that are credentials: Telegram-style "bot<id>:<token>" (any "<digits>:<token>"),
# and long tokens mixing letters and digits (API keys, signed ids).  Over-redacting an id
# here is harmless; an unredacted key is not.
_SECRET_SEGMENT = re.compile(
    r"[^/?#\s]*\d:[A-Za-z0-9_\-]{8,}[^/?#\s]*"
    r"|(?=[A-Za-z0-9_\-+=.~%]*\d)(?=[A-Za-z0-9_\-+=.~%]*[A-Za-z])[A-Za-z0-9_\-+=.~%]{32,}"
)
# The same, in free text: a secret segment right after a "/" (urllib3's "Max retries
# exceeded with url: /bot123:AAH.../getMe"), with the rest of its segment ("….json").
# Linear: each alternative starts only after a slash and cannot restart inside its own run.
_SECRET_PATH_TEXT = re.compile(
    r"(?<=/)(?:[A-Za-z0-9_\-.~]*\d:[A-Za-z0-9_\-]{8,}[^/?#\s'\"),;]*"
    r"|(?=[A-Za-z0-9_\-+=.~%]*\d)(?=[A-Za-z0-9_\-+=.~%]*[A-Za-z])[A-Za-z0-9_\-+=.~%]{32,})"
    r"(?=[/?#\s'\"),;]|$)"
)
# Segments that identify one resource rather than name an endpoint: they read "{id}" in a
# path template.  Digits, UUIDs, hex, a prefixed hex id ("task_b72dc2d0", "img-4f91d5"), a
# run of 3+ digits (vendor task ids "cgt-2026…", "order-123"), long letter-and-digit tokens;
# and every secret segment.
_ID_SEGMENT = re.compile(
    r"\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|(?=[a-fA-F]*\d)[0-9a-fA-F]{12,}|[A-Za-z]+[_\-](?=[a-fA-F]*\d)[0-9a-fA-F]{6,}|.*\d{3}.*"
    r"|(?=.*\d)(?=.*[A-Za-z]).{16,}"
)
_AUTH_VALUE = re.compile(
    r"\b(?P<scheme>Bearer|Basic|Digest|WECHATPAY2-SHA256-RSA2048|HMAC-SHA256)[ \t]+"
    r"(?:(?:[A-Za-z_]+=\"[^\"]*\"[\s,]*)+|[^\s'\"]+)"
)


def is_secret_header(name: str) -> bool:
    """True for headers whose value must never be logged."""
    lowered = name.lower()
    return (lowered in _SECRET_HEADERS or lowered.startswith(_SECRET_HEADER_PREFIXES)
            or bool(_SECRET_HEADER_WORDS.search(lowered)))


def is_secret_name(name: str) -> bool:
    """True for parameter names whose value is a credential (``access_token``, ``sign``…)."""
    return bool(_SECRET_NAME.search(name)) or is_secret_header(name)


def _is_secret_param(name: str) -> bool:
    """True for a URL parameter's name whose value is a credential (a secret name, or
    one of the URL-only names: ``code``, ``sid``)."""
    return is_secret_name(name) or name.lower() in _URL_SECRET_NAMES


def redact_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``headers`` with every secret value replaced by ``[REDACTED]``."""
    return {k: (REDACTED if is_secret_header(k) else v) for k, v in headers.items()}


def path_template(path: str) -> str:
    """``path`` with every identifier- or secret-like segment replaced by ``{id}``:
    ``/v3/tasks/cgt-20260101-ab12`` → ``/v3/tasks/{id}``, ``/bot123:AAH…/getMe`` →
    ``/{id}/getMe``, ``/access_token=…/x`` → ``/{id}/x``; path parameters are dropped
    (``/x;jsessionid=…`` → ``/x``).  The
    default operation names use it, so that stats keys, metrics labels and log names stay
    few (one per endpoint, not one per resource) and carry no token."""
    if not path:
        return "/"
    segments = (segment.partition(";")[0] for segment in path.split("/"))
    return "/".join(
        "{id}" if segment and (_ID_SEGMENT.fullmatch(segment)
                               or _SECRET_SEGMENT.fullmatch(segment)
                               or ("=" in segment and _redact_params(segment) != segment))
        else segment
        for segment in segments)


# name=value pairs of a query or of path parameters, separated by "&" or ";" (both are
# separators in the wild: "?a=1;access_token=…", "/x;jsessionid=…"), or by a second "?"
# (a nested query: "?next=/cb?access_token=…").  Anchored at the start of a pair, so the
# scan is linear.
_URL_PARAM = re.compile(r"(?:^|(?<=[&;?]))(?P<name>[^&;=?]*)=(?P<value>[^&;?]*)")


def _hides_secret(value: str) -> bool:
    """Whether a parameter's value carries a secret parameter of its own, percent-encoded
    or not (``1%3Baccess_token%3D…``, a redirect URI ``https%3A%2F%2F…%3Ftoken%3D…``):
    the whole value is then redacted (a few levels of encoding are looked through)."""
    for _ in range(3):
        if "=" in value and any(_is_secret_param(unquote_plus(m.group("name")))
                                for m in _URL_PARAM.finditer(value)):
            return True
        if "%" not in value and "+" not in value:
            return False
        decoded = unquote_plus(value)
        if decoded == value:
            return False
        value = decoded
    return False


def _url_param(match: re.Match[str]) -> str:
    name = match.group("name")
    if _is_secret_param(unquote_plus(name)) or _hides_secret(match.group("value")):
        return f"{name}={REDACTED}"
    return match.group(0)


def _redact_params(text: str) -> str:
    """``text`` (a query, or a segment's parameters) with the values of secret names
    replaced, every other character as it was (no decoding, no re-encoding)."""
    return _URL_PARAM.sub(_url_param, text)


def _redact_path(path: str) -> str:
    out = []
    for segment in path.split("/"):
        head, sep, params = segment.partition(";")
        if head and _SECRET_SEGMENT.fullmatch(head):
            head = REDACTED
        elif "=" in head:  # a segment shaped like a parameter: /access_token=…/
            head = _redact_params(head)
        out.append(head + sep + (_redact_params(params) if params else ""))
    return "/".join(out)


def redact_url(url: str) -> str:
    """``url`` with its user:password, credential-like path segments, and the values of
    credential-like query and path parameters replaced.  Nothing else changes: the URL is
    not re-encoded (``;`` stays ``;``), so it reads as the one that was requested."""
    before, _, query = url.partition("?")
    if ("@" not in url and "#" not in url and ";" not in url and "=" not in before
            and not _SECRET_NAME.search(query) and not _SECRET_HEADER_WORDS.search(query)
            and not _URL_SECRET_PARAM.search(query) and not _SECRET_PATH_TEXT.search(url)):
        return url  # the common case, without parsing
    head, hash_sep, fragment = url.partition("#")
    head, query_sep, query = head.partition("?")
    origin, path = "", head
    scheme_end = head.find("://")
    # The authority starts after "scheme://", or after a scheme-relative URL's "//".
    authority_start = scheme_end + 3 if scheme_end >= 0 else (2 if head.startswith("//")
                                                              else -1)
    if authority_start >= 0:
        slash = head.find("/", authority_start)
        origin, path = (head, "") if slash < 0 else (head[:slash], head[slash:])
        authority = origin[authority_start:]
        if "@" in authority:
            origin = f"{origin[:authority_start]}{REDACTED}@{authority.rsplit('@', 1)[1]}"
    query = _redact_params(query) if query else query
    # OAuth's implicit flow puts access_token in the fragment.
    fragment = redact_text(fragment) if fragment else fragment
    return f"{origin}{_redact_path(path)}{query_sep}{query}{hash_sep}{fragment}"


def _header_values(text: str) -> str:
    pieces: list[str] = []
    done = 0  # text before this index is already copied or redacted
    for match in _HEADER_NAME.finditer(text):
        if match.start() < done or not is_secret_header(match.group("name")):
            continue
        value_start = match.end()
        value_end_match = _HEADER_VALUE_END.search(text, value_start)
        value_end = value_end_match.start() if value_end_match else len(text)
        if value_end == value_start or text[value_start:value_end] == REDACTED:
            continue
        pieces += [text[done:value_start], REDACTED]
        done = value_end
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _pair(match: re.Match[str]) -> str:
    name = match.group("name")
    start = match.start()
    # A pair right after "?", "&" or ";" is a URL's parameter: the URL-only names count.
    in_url = start > 0 and match.string[start - 1] in "?&;"
    if not (_is_secret_param(name) if in_url else is_secret_name(name)) \
            and not _hides_secret(match.group("value")):
        return match.group(0)
    return f"{match.group('name')}={REDACTED}"


def _quoted_pair(match: re.Match[str]) -> str:
    if not is_secret_name(match.group("name")):
        return match.group(0)
    quote, value_quote = match.group("q"), match.group("vq") or '"'
    return (f"{quote}{match.group('name')}{quote}{match.group('sep')}"
            f"{value_quote}{REDACTED}{value_quote}")


def redact_text(text: str) -> str:
    """Free text (an exception message, a log line) with credentials replaced."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group('scheme')} {REDACTED}", text)
    text = _header_values(text)
    text = _QUOTED_PAIR.sub(_quoted_pair, text)
    text = _SECRET_PATH_TEXT.sub(REDACTED, text)
    return _PAIR.sub(_pair, text)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    # The classification walk's links (cause, context, urllib3's reason, exceptions passed
    # as arguments), bounded, each node once: cycles and depth cannot hang it.
    seen: set[int] = set()
    order: list[BaseException] = []
    pending = [exc]
    while pending and len(order) < 64:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        pending.extend(x for x in linked_exceptions(node) if id(x) not in seen)
    return order


def redact_exception(exc: BaseException) -> BaseException:
    """Clean the messages of ``exc`` and of every exception chained to it, in place.

    String arguments are redacted (``str()`` and ``repr()`` are built from them), and so are
    the ``url`` attribute of urllib3's ``MaxRetryError`` and an ``OSError``'s ``strerror``.
    The exception's type, errno and links are kept, so ``except`` clauses and the
    classification see the same exception.  Returns ``exc``.
    """
    for node in _exception_chain(exc):
        try:
            args = node.args
            clean = tuple(redact_text(a) if isinstance(a, str) else a for a in args)
            if clean != args:
                node.args = clean
            url = getattr(node, "url", None)
            if isinstance(url, str):
                redacted = redact_url(url)
                if redacted != url:
                    node.url = redacted  # type: ignore[attr-defined]
            if isinstance(node, OSError) and isinstance(node.strerror, str):
                node.strerror = redact_text(node.strerror)
        except Exception:  # read-only or raising attributes of a caller's exception
            continue
    return exc


class RedactingFilter(logging.Filter):
    """A logging filter that redacts credentials from every record it passes.

    Example::

        handler = logging.StreamHandler()
        handler.addFilter(RedactingFilter())   # also cleans urllib3's DEBUG lines (URLs)
        logging.getLogger().addHandler(handler)

    The message (formatted with its arguments), the exception text and every string
    ``extra`` field are cleaned; the record is never dropped.
    """

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; always keep it."""
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the formatter's problem, not ours
            message = str(record.msg)
        clean = redact_text(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in self._STANDARD and isinstance(value, str):
                setattr(record, key, redact_text(value))
        return True


def install_redacting_filter(logger_name: str) -> RedactingFilter:
    """Put a :class:`RedactingFilter` on the logger ``logger_name`` (once: an existing one
    is returned), so that its own records are clean before any handler sees them.  The
    httpx clients do it for the ``httpx`` logger, whose INFO line names every URL."""
    logger = logging.getLogger(logger_name)
    for existing in logger.filters:
        if isinstance(existing, RedactingFilter):
            return existing
    installed = RedactingFilter()
    logger.addFilter(installed)
    return installed
