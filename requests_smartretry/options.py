"""The keyword arguments of every wrapper, typed for mypy and IDEs (``**options``).

One definition of the policy's keywords, :class:`PolicyFields`, is shared by every entry
point; each wrapper's TypedDict adds only the keywords whose meaning is its own::

    PolicyFields     every RetryPolicy field (but max_retries and hooks, see below)
    CallOptions      + max_retries: int            (the policy part of the callable API's)
    CallKeywords     + policy, hooks, breaker...   execute_with_retry
    SmartCallKeywords + retry_on                   execute_with_smart_retry, with_retry
    PolicyOptions    + hooks                       RetryPolicy.replace
    AdapterOptions   + max_retries: int | Retry    SmartRetryAdapter(**)
    SessionOptions   + the adapter's keywords      smart_session, the presets

``max_retries`` differs (the adapter also takes a ``urllib3.Retry``), and ``hooks`` is an
explicit parameter of the adapter and the callable API, so neither can live in the
shared part.  The signatures use them as ``**options: Unpack[SessionOptions]``, with
``Unpack`` imported from ``typing_extensions`` for type checkers only: nothing here is
needed at run time, and nothing changes in how keywords are validated (a misspelt one is
still refused with a ``TypeError`` naming it).

Example::

    from requests_smartretry.options import SessionOptions

    def my_session(**options: Unpack[SessionOptions]) -> requests.Session:
        return smart_session(operation_name="mine", **options)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, TypedDict, Union

if TYPE_CHECKING:
    from urllib3.util.retry import Retry

    from .classify import ErrorClassifier, RetryOn
    from .engine import BreakerGate, BudgetGate
    from .events import Hook, Verdict
    from .policy import (
        IdempotentRule,
        OnRetry,
        PrepareAttempt,
        RequestNamer,
        ResponseClassifier,
        RetryPolicy,
        VerdictRule,
    )
    from .stats import Stats
    from .throttle import Throttle

__all__ = [
    "AdapterOptions",
    "CallKeywords",
    "CallOptions",
    "PolicyFields",
    "PolicyOptions",
    "SessionOptions",
    "SmartCallKeywords",
]


class PolicyFields(TypedDict, total=False):
    """The :class:`~requests_smartretry.RetryPolicy` keywords every wrapper takes."""

    timeout: float
    #: Total seconds for the whole call, retries and waits included (``None``: no limit).
    deadline: Optional[float]
    backoff_base: float
    backoff_multiplier: float
    backoff_max: float
    jitter: Optional[Literal["full", "equal", "decorrelated"]]
    operation_name: Optional[str]
    on_retry: Optional[OnRetry]
    lang: Literal["zh", "en"]
    connect_timeout: Optional[float]
    retry_statuses: Collection[int]
    idempotent_methods: Collection[str]
    idempotent: IdempotentRule
    respect_retry_after: bool
    classify_response: Optional[ResponseClassifier]
    prepare_attempt: Optional[PrepareAttempt]
    name_request: Optional[RequestNamer]
    service: Optional[str]
    log: bool
    nested: Literal["single", "retry"]
    per_verdict: Mapping[Verdict, VerdictRule]
    honor_server_signals: bool
    idempotency_header: Optional[str]


class CallOptions(PolicyFields, total=False):
    """``execute_with_retry``, ``execute_with_smart_retry`` and ``with_retry``'s keywords."""

    max_retries: int


class CallKeywords(CallOptions, total=False):
    """``execute_with_retry``'s keywords: the policy's, and the call's own."""

    policy: Optional[RetryPolicy]
    hooks: Union[Hook, tuple[Hook, ...], list[Hook]]
    breaker: Optional[BreakerGate]
    budget: Optional[BudgetGate]
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    #: ``False``: run ``fn`` in the caller's thread (thread-local state stays visible).
    run_in_thread: bool
    #: ``classify(error)``: a ``Classification``, ``True`` (retry), ``False`` or ``None``.
    classify: Optional[ErrorClassifier]


class SmartCallKeywords(CallKeywords, total=False):
    """``execute_with_smart_retry``'s and ``with_retry``'s: also ``retry_on``."""

    #: Exception types retried in addition to the table's rows.
    retry_on: Optional[RetryOn]


class PolicyOptions(CallOptions, total=False):
    """Every :class:`~requests_smartretry.RetryPolicy` field (``RetryPolicy.replace``)."""

    hooks: Union[Hook, tuple[Hook, ...], list[Hook]]


class AdapterOptions(PolicyFields, total=False):
    """``SmartRetryAdapter``'s policy keywords: ``max_retries`` may be a ``urllib3.Retry``."""

    max_retries: Union[int, Retry]


class SessionOptions(AdapterOptions, total=False):
    """``smart_session``'s and the presets' keywords: the policy's and the adapter's."""

    breaker: Optional[BreakerGate]
    budget: Optional[BudgetGate]
    #: A Redis URL, a ``redis.Redis`` client or a state store.
    state: Any
    #: Paces every attempt per service (``Throttle(rate=..., max_in_flight=...)``).
    throttle: Optional[Throttle]
    hooks: Union[Hook, tuple[Hook, ...], list[Hook]]
    stats: Union[Stats, Literal[False], None]
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    pool_connections: int
    pool_maxsize: int
    pool_block: bool
