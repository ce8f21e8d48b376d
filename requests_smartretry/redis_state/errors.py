"""What can go wrong between the store and Redis, and how it is told: the outage error,
the faults that concern one service's keys, and an exception's text without credentials."""

from __future__ import annotations

from typing import Optional
from urllib.parse import unquote

__all__ = ["KeyFault", "NoTime", "RedisUnavailable", "is_key_error", "safe_text"]

# Errors that concern one service's keys (that service goes local), and errors that
# concern the server, even when a script reports them (the whole store goes local).
_KEY_ERRORS = ("WRONGTYPE", "MOVED ", "ASK ", "CROSSSLOT", "USER_SCRIPT")
_SERVER_ERRORS = ("READONLY", "LOADING", "BUSY", "OOM", "NOAUTH", "NOPERM", "WRONGPASS",
                  "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "NOSCRIPT", "NOREPLICAS")


class RedisUnavailable(Exception):
    """Redis did not answer within the time budget, or not with what the script returns."""


class KeyFault(Exception):
    """The reply for one service's keys is unusable (that service goes local)."""


class NoTime(Exception):
    """The request's deadline leaves no time for Redis: this one operation goes local."""



def is_key_error(exc: BaseException) -> bool:
    try:
        from redis.exceptions import ResponseError
    except ImportError:  # pragma: no cover - only used once redis-py answered
        return False
    if not isinstance(exc, ResponseError):
        return False
    # redis-py turns some server conditions into subclasses and drops their code from the
    # text (OOM -> OutOfMemoryError, READONLY -> ReadOnlyError...), leaving a script's
    # '@user_script': only the plain class and the cluster redirections concern a key.
    if type(exc) is not ResponseError \
            and type(exc).__name__ not in ("AskError", "MovedError", "ClusterCrossSlotError"):
        return False
    text = str(exc).upper()
    if any(marker in text for marker in _SERVER_ERRORS):
        return False
    return any(marker in text for marker in _KEY_ERRORS)



def safe_text(exc: BaseException, url: Optional[str]) -> str:
    """An exception's text for a log line, with no part of the URL's credentials."""
    text = str(exc)
    if url is not None and "@" in url:
        secret = url.partition("://")[2].rsplit("@", 1)[0]
        for part in {secret, *secret.split(":"), unquote(secret),
                     *unquote(secret).split(":")}:
            if len(part) >= 3:
                text = text.replace(part, "***")
    return text[:200]
