"""Typed access to a session's adapter and statistics.

``session.get_adapter(url)`` is typed as requests' ``BaseAdapter`` (which has no
``stats``), and ``adapter.stats`` is ``Optional`` (``stats=False`` turns counting off);
these give a type checker, and a reader, the exact types::

    session = smart_session(operation_name="生成艺术照", breaker=CircuitBreaker())
    ...
    stats_of(session).snapshot()["生成艺术照"]["retries"]
    adapter_of(session).policy.max_retries
    breaker_of(session).force_open("https://api.example.com")
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Union

import requests

from .adapter import SmartRetryAdapter
from .breaker import CircuitBreaker
from .redact import redact_url
from .stats import Stats

__all__ = ["adapter_of", "breaker_of", "stats_of"]


class _Counting(Protocol):
    """Anything that carries a :class:`Stats` (``SmartRetryTransport`` for httpx)."""

    @property
    def stats(self) -> Optional[Stats]: ...

    @property
    def breaker(self) -> Any: ...


class _SmartClient(Protocol):
    """An httpx client built by ``smart_client()`` / ``video_client()``."""

    @property
    def smart_transport(self) -> _Counting: ...


def adapter_of(session: requests.Session, url: Optional[str] = None) -> SmartRetryAdapter:
    """The :class:`SmartRetryAdapter` that ``session`` sends ``url`` through; without
    ``url``, the one mounted for ``https://``, or else the session's only one (a preset's,
    mounted on its endpoint's origin).  ``TypeError`` if another adapter serves it."""
    if not isinstance(session, requests.Session):
        raise TypeError(f"session must be a requests.Session, got {session!r}")
    adapter = session.get_adapter(url or "https://")
    if url is None and not isinstance(adapter, SmartRetryAdapter):
        mounted = {id(a): a for a in session.adapters.values()
                   if isinstance(a, SmartRetryAdapter)}
        if len(mounted) == 1:
            return next(iter(mounted.values()))
    url = url or "https://"
    if not isinstance(adapter, SmartRetryAdapter):
        raise TypeError(
            f"the adapter mounted for {redact_url(url)!r} is {type(adapter).__name__}, not a "
            f"SmartRetryAdapter (mount one, or build the session with smart_session())")
    return adapter


def _transport_of(target: Any, url: Optional[str], asked: str, part: str) -> _Counting:
    if isinstance(target, requests.Session):
        return adapter_of(target, url)
    if hasattr(target, "smart_transport"):
        return target.smart_transport  # type: ignore[no-any-return]
    if hasattr(target, part):
        return target  # type: ignore[no-any-return]
    raise TypeError(f"{asked} takes a requests.Session, a SmartRetryAdapter, a "
                    f"SmartRetryTransport or a smart_client(), got {target!r}")


def stats_of(
    target: Union[requests.Session, SmartRetryAdapter, _Counting, _SmartClient],
    url: Optional[str] = None,
) -> Stats:
    """The :class:`Stats` of a session's adapter for ``url``, of an adapter or httpx
    transport itself, or of a ``smart_client()``'s transport; ``ValueError`` if it was built
    with ``stats=False``."""
    counting = _transport_of(target, url, "stats_of", "stats")
    stats = counting.stats
    if stats is None:
        raise ValueError(f"{counting!r} counts nothing (it was built with stats=False)")
    return stats


def breaker_of(
    target: Union[requests.Session, SmartRetryAdapter, _Counting, _SmartClient],
    url: Optional[str] = None,
) -> CircuitBreaker:
    """The :class:`CircuitBreaker` of a session's adapter for ``url``, of an adapter or
    httpx transport itself, or of a ``smart_client()``'s transport (to read its
    :meth:`~CircuitBreaker.state`, :meth:`~CircuitBreaker.force_open` it…); ``ValueError``
    if it has none (built without ``breaker=``)."""
    transport = _transport_of(target, url, "breaker_of", "breaker")
    breaker = transport.breaker
    if not isinstance(breaker, CircuitBreaker):
        raise ValueError(f"{transport!r} has no CircuitBreaker (build it with "
                         f"breaker=CircuitBreaker(...)), got {breaker!r}")
    return breaker
