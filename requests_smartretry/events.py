"""The attempt-event stream: one frozen record per step of a call, fed to every hook.

Logging, statistics, the circuit breaker, the retry budget and user callbacks are all
consumers of this one stream; none of them has a copy of the retry loop.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

# Verdict lives with every other classification rule; imported from here too (public path).
from .classify import Verdict

__all__ = ["AttemptEvent", "CallEvents", "EventKind", "Hook", "Verdict"]

_log = logging.getLogger("requests_smartretry")


class EventKind(str, enum.Enum):
    """Which step of a call an :class:`AttemptEvent` reports."""

    #: An attempt is about to start.
    START = "start"
    #: An attempt succeeded; the call ends.
    SUCCESS = "success"
    #: An attempt failed (any non-success verdict).
    FAILURE = "failure"
    #: A retry was decided; ``wait`` seconds of backoff follow.
    RETRY = "retry"
    #: The call ends on a failure; ``give_up_reason`` says why.
    GIVE_UP = "give_up"
    #: The circuit breaker refused the attempt before it touched the network.
    REJECTED = "rejected"
    #: The throttle made the attempt wait for its turn (``wait``: the seconds waited,
    #: ``reason="waited"``), or could not give it one in time (``reason="refused"``,
    #: ``wait``: what the turn would have needed, ``None`` for an in-flight slot): nothing
    #: was sent.
    THROTTLED = "throttled"


#: Why a failed call was not retried (``AttemptEvent.give_up_reason``); log lines and
#: statistics use these names.
GIVE_UP_REASONS = (
    "exhausted",  # every attempt was used
    "verdict_limit",  # the policy's per-verdict rule allows no more retries for this verdict
    "not_retryable",  # the verdict is not retryable (4xx, business, permanent)
    "unsafe",  # the request may have reached the server and is not idempotent
    "not_replayable",  # the body cannot be sent again (generator, unseekable stream)
    "retry_after_too_long",  # the server asked for a wait above the backoff cap
    "budget",  # the retry budget is spent
    "deadline",  # an enclosing deadline leaves no time for the wait
    "circuit_open",  # the breaker refused the retry
    "throttled",  # the throttle could not give the retry its turn in time
    "interrupted",  # the backoff wait was interrupted (KeyboardInterrupt, SystemExit)
    "closed",  # the adapter was closed (session.close()) while the call was under way
    "error",  # the attempt itself raised (a signer, a hook, KeyboardInterrupt)
    "cancelled",  # the asyncio task running the call was cancelled (in an attempt or a wait)
)

_call_ids = itertools.count(1)


#: A process-unique number that ties together the events of one call (a C-level
#: ``itertools.count``: thread-safe and cheap).
next_call_id: Callable[[], int] = _call_ids.__next__


@dataclass(frozen=True)
class AttemptEvent:
    """One immutable record of a step in a call, consumed by every hook.

    Example::

        def print_failures(event: AttemptEvent) -> None:
            if event.kind is EventKind.FAILURE:
                print(event.operation, event.attempt, event.verdict)

        session = smart_session(hooks=[print_failures])
    """

    kind: EventKind
    operation: str
    #: The key that the breaker and the budget use (scheme+host, or a preset's vendor name).
    service: str
    #: 1-based number of the attempt this event is about.
    attempt: int
    max_attempts: int
    call_id: int
    verdict: Optional[Verdict] = None
    #: Short machine-readable reason: ``ECONNREFUSED``, ``ECONNRESET``, ``ENOTFOUND``,
    #: ``ETIMEDOUT``, ``deadline``, ``read_timeout``, ``HTTP 503``, a vendor code...
    reason: Optional[str] = None
    #: The failure as an exception (a 5xx/429 response arrives as ``requests.HTTPError``).
    error: Optional[BaseException] = field(default=None, compare=False)
    status_code: Optional[int] = None
    #: Seconds the attempt took (SUCCESS / FAILURE).
    elapsed: Optional[float] = None
    #: Seconds of backoff before the next attempt (RETRY: the wait that really follows, 0
    #: in test mode), until the breaker's next probe (REJECTED), or waited for the
    #: throttle's turn (THROTTLED).
    wait: Optional[float] = None
    #: The server's Retry-After, in seconds, when it sent a valid one.
    retry_after: Optional[float] = None
    give_up_reason: Optional[str] = None
    #: GIVE_UP: the backoff cap in force (the policy's, or its per-verdict rule's).
    backoff_cap: Optional[float] = None
    method: Optional[str] = None
    #: The request URL with secrets redacted.
    url: Optional[str] = None
    timestamp: float = field(default_factory=time.time, compare=False)
    #: How hard this failure counts for the circuit breaker (FAILURE events; the policy's
    #: ``per_verdict`` rule's ``breaker_weight``, else 1.0).
    weight: float = 1.0
    #: SUCCESS / GIVE_UP: seconds from the start of the call's first attempt to its end
    #: (backoff waits included).
    call_elapsed: Optional[float] = None

    @property
    def retries_left(self) -> int:
        """Attempts still available after this one."""
        return self.max_attempts - self.attempt


Hook = Callable[[AttemptEvent], None]

_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(AttemptEvent))
_new_object = object.__new__
_set_attribute = object.__setattr__
_time = time.time


class CallEvents:
    """The event stream of one call: builds each event from the fields the call's events
    share, keeps it in the call's history and feeds it to every hook.

    One is built per call, and :meth:`emit` is the only function an event costs on the
    success path (two per call).  An event's instance dict holds only the fields set for
    it; the others read as the dataclass defaults (class attributes), so building one
    copies 9 to 13 entries instead of running the frozen ``__init__``, which sets all 20
    fields one ``object.__setattr__`` at a time.  Each event is an ordinary, equal,
    immutable :class:`AttemptEvent`.
    """

    __slots__ = ("_shared", "history", "hooks")

    def __init__(
        self, hooks: tuple[Hook, ...], operation: str, service: str, max_attempts: int,
        method: Optional[str] = None, url: Optional[str] = None,
    ) -> None:
        self.hooks = hooks
        #: Every event emitted so far, oldest first.
        self.history: list[AttemptEvent] = []
        self._shared = {"operation": operation, "service": service,
                        "max_attempts": max_attempts, "call_id": next_call_id(),
                        "method": method, "url": url}

    def emit(self, kind: EventKind, attempt: int,
             fields: Optional[dict[str, Any]] = None) -> AttemptEvent:
        """Build the ``kind`` event of ``attempt`` (with ``fields`` on top of the shared
        ones), record it and feed it to the hooks; a failing hook is logged and never
        breaks the call."""
        state = self._shared.copy()
        state["kind"] = kind
        state["attempt"] = attempt
        state["timestamp"] = _time()
        if fields:
            if not _FIELD_NAMES.issuperset(fields):
                raise TypeError(f"AttemptEvent has no fields {sorted(set(fields) - _FIELD_NAMES)}")
            state.update(fields)
        event = _new_object(AttemptEvent)
        _set_attribute(event, "__dict__", state)
        self.history.append(event)
        for hook in self.hooks:
            try:
                hook(event)
            except Exception:
                _log.exception(
                    "requests_smartretry: hook %r failed on a %s event", hook, kind.value
                )
        return event
