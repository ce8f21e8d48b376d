"""requests-smartretry: deadlines, classified retries, backoff, circuit breaking and retry
budgets for ``requests`` sessions.

::

    from requests_smartretry import smart_session

    session = smart_session(max_retries=1, timeout=30.0, operation_name="生成艺术照")
    response = session.post("https://api.example.com/v1/tasks", json={"prompt": "..."})
"""

from .accessors import adapter_of, breaker_of, stats_of
from .adapter import SmartRetryAdapter, smart_session
from .alerts import RetryRateAlert, RetryRateExceeded
from .breaker import CircuitBreaker
from .budget import RetryBudget
from .classify import Classification
from .errors import (
    AdapterClosedError,
    AttemptDeadlineExceeded,
    CallTimeoutError,
    CircuitOpenError,
    PollDeadlineExceeded,
    ResponseSignatureError,
    SmartRetryError,
    TaskFailedError,
    ThrottledError,
    attempt_history,
)
from .events import AttemptEvent, EventKind, Verdict
from .functions import execute_with_retry, execute_with_smart_retry, with_retry
from .log import LoggingHook
from .overrides import retry_options
from .policy import RetryPolicy, VerdictRule
from .poll import poll_until
from .presets import (
    payment_adapter,
    payment_session,
    photo_adapter,
    photo_session,
    video_adapter,
    video_session,
)
from .redis_state import RedisStateStore
from .state import MemoryStateStore, StateStore
from .stats import Stats
from .testing import reset_state, set_testing
from .throttle import Throttle

__version__ = "0.1.0"

__all__ = [
    "AdapterClosedError",
    "AttemptDeadlineExceeded",
    "AttemptEvent",
    "CallTimeoutError",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classification",
    "EventKind",
    "LoggingHook",
    "MemoryStateStore",
    "PollDeadlineExceeded",
    "RedisStateStore",
    "ResponseSignatureError",
    "RetryBudget",
    "RetryPolicy",
    "RetryRateAlert",
    "RetryRateExceeded",
    "SmartRetryAdapter",
    "SmartRetryError",
    "StateStore",
    "Stats",
    "TaskFailedError",
    "Throttle",
    "ThrottledError",
    "Verdict",
    "VerdictRule",
    "adapter_of",
    "attempt_history",
    "breaker_of",
    "execute_with_retry",
    "execute_with_smart_retry",
    "payment_adapter",
    "payment_session",
    "photo_adapter",
    "photo_session",
    "poll_until",
    "reset_state",
    "retry_options",
    "set_testing",
    "smart_session",
    "stats_of",
    "video_adapter",
    "video_session",
    "with_retry",
]
