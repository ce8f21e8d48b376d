"""requests-smartretry: deadlines, classified retries, backoff, circuit breaking and retry
budgets for ``requests`` sessions.

::

    from requests_smartretry import smart_session

    session = smart_session(max_retries=1, timeout=30.0, operation_name="生成艺术照")
    response = session.post("https://api.example.com/v1/tasks", json={"prompt": "..."})
"""

from .adapter import SmartRetryAdapter, smart_session
from .breaker import CircuitBreaker
from .budget import RetryBudget
from .classify import Classification
from .errors import (
    AdapterClosedError,
    AttemptDeadlineExceeded,
    CircuitOpenError,
    SmartRetryError,
    attempt_history,
)
from .events import AttemptEvent, EventKind, Verdict
from .log import LoggingHook
from .policy import RetryPolicy
from .redis_state import RedisStateStore
from .state import MemoryStateStore, StateStore
from .testing import set_testing

__version__ = "0.1.0"

__all__ = [
    "AdapterClosedError",
    "AttemptDeadlineExceeded",
    "AttemptEvent",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classification",
    "EventKind",
    "LoggingHook",
    "MemoryStateStore",
    "RedisStateStore",
    "RetryBudget",
    "RetryPolicy",
    "SmartRetryAdapter",
    "SmartRetryError",
    "StateStore",
    "Verdict",
    "attempt_history",
    "set_testing",
    "smart_session",
]
