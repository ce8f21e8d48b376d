"""RetryPolicy: the frozen, validated description of how calls are retried."""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from .backoff import JITTER_MODES
from .events import Hook, Verdict

if TYPE_CHECKING:
    import requests
    from typing_extensions import Unpack

    from .classify import Classification
    from .options import PolicyOptions

__all__ = [
    "DEFAULT_IDEMPOTENT_METHODS",
    "DEFAULT_RETRY_STATUSES",
    "MIN_TIMEOUT",
    "RetryPolicy",
    "VerdictRule",
    "resolve_policy",
]

#: 408 (the server gave up waiting for the request), 429 and every 5xx.
DEFAULT_RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})
#: The shortest timeout an attempt can honour (seconds): below it, the deadline passes
#: before the connection is even made, and no attempt would ever send.
MIN_TIMEOUT = 0.01
#: RFC 9110's idempotent methods.
DEFAULT_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

OnRetry = Callable[[int, BaseException], None]
ResponseClassifier = Callable[["requests.Response"], Optional["Classification"]]
PrepareAttempt = Callable[["requests.PreparedRequest", int], Optional["requests.PreparedRequest"]]
RequestNamer = Callable[["requests.PreparedRequest"], Optional[str]]
IdempotentRule = Union[bool, Callable[["requests.PreparedRequest"], bool]]

_LANGS = ("zh", "en")
_NESTED = ("single", "retry")


@dataclass(frozen=True)
class RetryPolicy:
    """How a call is retried: attempts, deadline, backoff, classification and hooks.

    Immutable and validated at construction, so one policy is safely shared by threads,
    sessions and processes.  Derive variants with :meth:`replace`::

        policy = RetryPolicy(max_retries=1, timeout=30.0, operation_name="生成艺术照")
        patient = policy.replace(max_retries=3, jitter="full")
        session = smart_session(policy=patient)
    """

    #: Retries after the first attempt (1 → at most 2 attempts).
    max_retries: int = 1
    #: Wall-clock seconds for one attempt: connect + send + headers + body.
    timeout: float = 30.0
    #: Seconds before the first retry.
    backoff_base: float = 1.0
    #: Factor between consecutive backoffs.
    backoff_multiplier: float = 2.0
    #: Cap on every wait, Retry-After included: a longer Retry-After ends the call.
    backoff_max: float = 5.0
    #: ``None`` (exact backoff), ``"full"``, ``"equal"`` or ``"decorrelated"``.
    jitter: Optional[str] = None
    #: Name in log lines and statistics; default ``METHOD host/path-template`` (id-like
    #: segments read ``{id}``).
    operation_name: Optional[str] = None
    #: ``on_retry(attempt, error)`` before each retry; ``attempt`` is the failed one (1-based).
    on_retry: Optional[OnRetry] = None
    #: Language of log lines: ``"zh"`` (the seed's) or ``"en"``.
    lang: str = "zh"
    #: Connect timeout per attempt; default: ``timeout``.
    connect_timeout: Optional[float] = None
    #: Statuses that are retried (408, 429 and all 5xx by default).
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES
    #: Methods retried even when the request may have reached the server.
    idempotent_methods: frozenset[str] = DEFAULT_IDEMPOTENT_METHODS
    #: Mark the operation idempotent (``True``), or decide per request (a callable).
    idempotent: IdempotentRule = False
    #: Honour ``Retry-After`` (up to ``backoff_max``).
    respect_retry_after: bool = True
    #: Vendor hook: classify a response (return ``None`` to fall back to the status table).
    classify_response: Optional[ResponseClassifier] = None
    #: Per-attempt hook: sign or otherwise prepare a copy of the request for attempt ``n``.
    prepare_attempt: Optional[PrepareAttempt] = None
    #: Per-request operation names (a preset names requests after the vendor's action).
    name_request: Optional[RequestNamer] = None
    #: Key for the breaker and the budget; default ``scheme://host``.
    service: Optional[str] = None
    #: Extra consumers of the attempt-event stream.
    hooks: tuple[Hook, ...] = ()
    #: Write the seed's log lines through the ``requests_smartretry`` logger.
    log: bool = True
    #: Inside another retrying call: ``"single"`` makes one attempt (the outer call
    #: retries), ``"retry"`` retries as configured (attempts multiply).
    nested: str = "single"
    #: Dynamic strategy: ``{Verdict.RATE_LIMIT: VerdictRule(backoff_max=30.0), ...}``
    #: overrides retries, backoff and breaker weight for failures of one verdict.
    per_verdict: Mapping[Verdict, VerdictRule] = field(default_factory=dict)
    #: Wall-clock seconds for the whole call, attempts and waits (``None``: no bound).  A
    #: wait that cannot fit is not started, each attempt is cut to what is left, and
    #: nested smart calls (and ``deadline.remaining()``) see what is left.
    deadline: Optional[float] = None
    #: Honour the server's own retry signals on every response: ``Retry-After-Ms``
    #: (milliseconds, preferred over ``Retry-After``) and ``x-should-retry: true|false``
    #: (``false``: not retried; ``true``: retried when safe, whatever the status).
    honor_server_signals: bool = True
    #: A header (``"Idempotency-Key"``) that every call carries: a request without one
    #: gets a fresh UUID4 for the whole call, the same on every attempt, and is then
    #: treated as idempotent.  ``None``: no key is added.
    idempotency_header: Optional[str] = None

    def __post_init__(self) -> None:
        _check_int("max_retries", self.max_retries, minimum=0)
        check_timeout("timeout", self.timeout)
        if self.deadline is not None:
            _check_positive("deadline", self.deadline)
            object.__setattr__(self, "deadline", float(self.deadline))
        if self.connect_timeout is not None:
            check_timeout("connect_timeout", self.connect_timeout)
        _check_non_negative("backoff_base", self.backoff_base)
        _check_non_negative("backoff_max", self.backoff_max)
        _check_positive("backoff_multiplier", self.backoff_multiplier)
        if self.backoff_multiplier < 1:
            raise ValueError(
                f"backoff_multiplier must be >= 1 (backoffs never shrink), "
                f"got {self.backoff_multiplier!r}"
            )
        if self.backoff_base > self.backoff_max:
            raise ValueError(
                f"backoff_base ({self.backoff_base!r}) must not exceed "
                f"backoff_max ({self.backoff_max!r})"
            )
        if self.jitter is not None and self.jitter not in JITTER_MODES:
            raise ValueError(
                f"jitter must be None or one of {', '.join(map(repr, JITTER_MODES))}, "
                f"got {self.jitter!r}"
            )
        if self.lang not in _LANGS:
            raise ValueError(f"lang must be 'zh' or 'en', got {self.lang!r}")
        if self.nested not in _NESTED:
            raise ValueError(f"nested must be 'single' or 'retry', got {self.nested!r}")
        if self.operation_name is not None and (
            not isinstance(self.operation_name, str) or not self.operation_name.strip()
        ):
            raise TypeError(
                f"operation_name must be a non-empty string or None, got {self.operation_name!r}"
            )
        if self.service is not None and (not isinstance(self.service, str) or not self.service):
            raise TypeError(f"service must be a non-empty string or None, got {self.service!r}")
        for name in ("on_retry", "classify_response", "prepare_attempt", "name_request"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, got {value!r}")
        # Asked inside the attempt, synchronously, on every transport: an async def's
        # coroutine would be taken as its answer (a truthy "idempotent", a "request").
        for name in ("classify_response", "prepare_attempt", "name_request", "idempotent"):
            if inspect.iscoroutinefunction(getattr(self, name)):
                raise TypeError(f"{name} must be a plain function, not an async def "
                                f"(it is called synchronously), got {getattr(self, name)!r}")
        if not (isinstance(self.idempotent, bool) or callable(self.idempotent)):
            raise TypeError(
                f"idempotent must be a bool or a callable(request) -> bool, "
                f"got {self.idempotent!r}"
            )
        if self.idempotency_header is not None and not _is_header_name(
                self.idempotency_header):
            raise ValueError(f"idempotency_header must be an HTTP header name or None, "
                             f"got {self.idempotency_header!r}")
        for name in ("respect_retry_after", "log", "honor_server_signals"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "retry_statuses", _statuses(self.retry_statuses))
        object.__setattr__(self, "idempotent_methods", _methods(self.idempotent_methods))
        hooks = self.hooks
        if callable(hooks):
            hooks = (hooks,)
        if not isinstance(hooks, (tuple, list)):
            raise TypeError(f"hooks must be a sequence of callables, got {hooks!r}")
        for hook in hooks:
            if not callable(hook):
                raise TypeError(f"hooks must contain callables, got {hook!r}")
        object.__setattr__(self, "hooks", tuple(hooks))
        object.__setattr__(self, "timeout", float(self.timeout))
        object.__setattr__(self, "backoff_base", float(self.backoff_base))
        object.__setattr__(self, "backoff_max", float(self.backoff_max))
        object.__setattr__(self, "backoff_multiplier", float(self.backoff_multiplier))
        object.__setattr__(self, "per_verdict", _rule_table(self))

    def __repr__(self) -> str:
        always = ("max_retries", "timeout")
        shown = []
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            factory: Any = spec.default_factory
            default = spec.default if spec.default is not dataclasses.MISSING else factory()
            if spec.name in always or (spec.repr and value != default):
                shown.append(f"{spec.name}={value!r}")
        return f"RetryPolicy({', '.join(shown)})"

    @property
    def max_attempts(self) -> int:
        """``max_retries + 1``."""
        return self.max_retries + 1

    def replace(self, **changes: Unpack[PolicyOptions]) -> RetryPolicy:
        """A copy with ``changes`` applied (and validated)."""
        # Typed keywords for callers; validated by __post_init__, which accepts any
        # collection for the statuses and methods and a list of hooks.
        fields: dict[str, Any] = {**changes}
        return dataclasses.replace(self, **fields)

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """The keyword names a policy accepts (the adapter routes these to the policy)."""
        return frozenset(f.name for f in dataclasses.fields(cls))

    def rule_for(self, verdict: Verdict) -> Optional[VerdictRule]:
        """The ``per_verdict`` rule for ``verdict``, or ``None``."""
        return self.per_verdict.get(verdict)


def resolve_policy(policy: Any, options: Mapping[str, Any], caller: str) -> RetryPolicy:
    """The policy a caller asked for: ``policy=`` with its keyword overrides, or one built
    from the keywords alone; unknown keywords are refused naming ``caller``."""
    unknown = set(options) - RetryPolicy.field_names()
    if unknown:
        raise TypeError(f"{caller} got unexpected keyword(s): {', '.join(sorted(unknown))}")
    if policy is not None and not isinstance(policy, RetryPolicy):
        raise TypeError(f"policy must be a RetryPolicy, got {policy!r}")
    if policy is None:
        return RetryPolicy(**options)
    return policy.replace(**options) if options else policy


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _check_positive(name: str, value: Any) -> None:
    if _check_number(name, value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_timeout(name: str, value: Any) -> None:
    """``value`` must be a number of seconds an attempt can honour (>= :data:`MIN_TIMEOUT`)."""
    _check_positive(name, value)
    if value < MIN_TIMEOUT:
        raise ValueError(f"{name} must be at least {MIN_TIMEOUT:g}s (a shorter attempt ends "
                         f"before its connection is made, and never sends), got {value!r}")


def _check_non_negative(name: str, value: Any) -> None:
    if _check_number(name, value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


# RFC 9110 token characters: what a header field name may contain.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_header_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and all(c in _TOKEN for c in value)


def _statuses(value: Any) -> frozenset[int]:
    try:
        codes = frozenset(value)
    except TypeError:
        raise TypeError(f"retry_statuses must be a collection of ints, got {value!r}") from None
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"retry_statuses must contain ints, got {code!r}")
        if not 100 <= code <= 599:
            raise ValueError(f"retry_statuses contains {code!r}, not an HTTP status (100-599)")
    return codes


def _methods(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        raise TypeError(f"idempotent_methods must be a collection of names, got {value!r}")
    try:
        names = frozenset(value)
    except TypeError:
        raise TypeError(f"idempotent_methods must be a collection, got {value!r}") from None
    for name in names:
        if not isinstance(name, str) or not name.isalpha():
            raise ValueError(f"idempotent_methods contains {name!r}, not an HTTP method")
    return frozenset(n.upper() for n in names)


# -- dynamic strategy: per-verdict rules ------------------------------------------------------


@dataclass(frozen=True)
class VerdictRule:
    """Overrides for the failures of one verdict; ``None`` fields keep the policy's value.

    Example::

        policy = RetryPolicy(max_retries=3, per_verdict={
            Verdict.RATE_LIMIT: VerdictRule(backoff_base=2.0, backoff_max=30.0),
            Verdict.TIMEOUT: VerdictRule(max_retries=1),
            Verdict.NETWORK: VerdictRule(breaker_weight=2.0),
        })

    With this policy a 429 waits 2 s, 4 s, 8 s… (or its ``Retry-After``, up to 30 s), a
    timeout is retried once per call, and a refused connection counts double for the
    circuit breaker.  Only retryable verdicts take rules.
    """

    #: Retries allowed after failures of this verdict in one call (at most the policy's
    #: ``max_retries``, which still caps the call as a whole).
    max_retries: Optional[int] = None
    backoff_base: Optional[float] = None
    backoff_multiplier: Optional[float] = None
    #: Cap on the wait, ``Retry-After`` included: a longer 429 wait can be allowed here.
    backoff_max: Optional[float] = None
    #: A jitter mode, or ``"none"`` to turn the policy's jitter off for this verdict.
    jitter: Optional[str] = None
    respect_retry_after: Optional[bool] = None
    #: How much one failure of this verdict counts for the breaker (``AttemptEvent.weight``).
    breaker_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.max_retries is not None:
            _check_int("VerdictRule.max_retries", self.max_retries, minimum=0)
        for name in ("backoff_base", "backoff_max", "backoff_multiplier"):
            value = getattr(self, name)
            if value is not None:
                _check_non_negative(f"VerdictRule.{name}", value)
                object.__setattr__(self, name, float(value))
        if self.backoff_multiplier is not None and self.backoff_multiplier < 1:
            raise ValueError(
                f"VerdictRule.backoff_multiplier must be >= 1, got {self.backoff_multiplier!r}"
            )
        if self.jitter is not None and self.jitter not in (*JITTER_MODES, "none"):
            raise ValueError(
                f"VerdictRule.jitter must be None, 'none' or one of "
                f"{', '.join(map(repr, JITTER_MODES))}, got {self.jitter!r}"
            )
        if self.respect_retry_after is not None and not isinstance(
            self.respect_retry_after, bool
        ):
            raise TypeError(
                f"VerdictRule.respect_retry_after must be a bool or None, "
                f"got {self.respect_retry_after!r}"
            )
        weight: Any = self.breaker_weight  # callers may pass anything
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise TypeError(f"VerdictRule.breaker_weight must be a number, got {weight!r}")
        as_float = float(weight)
        if not (math.isfinite(as_float) and as_float >= 0):
            raise ValueError(
                f"VerdictRule.breaker_weight must be a finite number >= 0, got {weight!r}"
            )
        object.__setattr__(self, "breaker_weight", as_float)

    def backoff_for(self, policy: RetryPolicy) -> ResolvedBackoff:
        """The backoff settings for this verdict: this rule's values over ``policy``'s."""
        jitter = policy.jitter if self.jitter is None else self.jitter
        return ResolvedBackoff(
            backoff_base=_pick(self.backoff_base, policy.backoff_base),
            backoff_multiplier=_pick(self.backoff_multiplier, policy.backoff_multiplier),
            backoff_max=_pick(self.backoff_max, policy.backoff_max),
            jitter=None if jitter == "none" else jitter,
        )

    def retry_after_for(self, policy: RetryPolicy) -> bool:
        """Whether ``Retry-After`` is honoured for this verdict."""
        if self.respect_retry_after is None:
            return policy.respect_retry_after
        return self.respect_retry_after


@dataclass(frozen=True)
class ResolvedBackoff:
    """Backoff settings after a :class:`VerdictRule` is applied (what ``backoff_delay`` reads)."""

    backoff_base: float
    backoff_multiplier: float
    backoff_max: float
    jitter: Optional[str]


def _pick(value: Optional[float], default: float) -> float:
    return default if value is None else value


class _RuleTable(Mapping[Verdict, VerdictRule]):
    """A read-only, hashable ``{Verdict: VerdictRule}`` (so policies stay hashable)."""

    __slots__ = ("_rules",)

    def __init__(self, rules: dict[Verdict, VerdictRule]) -> None:
        self._rules = rules

    def __getitem__(self, verdict: Verdict) -> VerdictRule:
        return self._rules[verdict]

    # The dict's own get and "in": Mapping's raise and catch a KeyError for a verdict
    # without a rule (every failed attempt asks: RetryPolicy.rule_for).
    def get(self, verdict: Verdict, default: Any = None) -> Any:
        return self._rules.get(verdict, default)

    def __contains__(self, verdict: object) -> bool:
        return verdict in self._rules

    def __iter__(self) -> Iterator[Verdict]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __hash__(self) -> int:
        return hash(frozenset(self._rules.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._rules) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._rules)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_RuleTable, (self._rules,))


def _rule_table(policy: RetryPolicy) -> _RuleTable:
    """Validate ``policy.per_verdict`` against the policy and freeze it."""
    table = policy.per_verdict
    if not isinstance(table, Mapping):
        raise TypeError(
            f"per_verdict must be a mapping {{Verdict: VerdictRule}}, got {table!r}"
        )
    rules: dict[Verdict, VerdictRule] = {}
    retryable = ", ".join(v.value for v in Verdict if v.retryable)
    for key, rule in table.items():
        try:
            verdict = Verdict(key)
        except ValueError:
            raise ValueError(
                f"per_verdict key {key!r} is not a Verdict (retryable ones: {retryable})"
            ) from None
        where = f"per_verdict[{verdict.value}]"
        if not verdict.retryable:
            raise ValueError(
                f"{where}: {verdict.value} is never retried, so it takes no rule "
                f"(retryable verdicts: {retryable})"
            )
        if not isinstance(rule, VerdictRule):
            raise TypeError(f"{where} must be a VerdictRule, got {rule!r}")
        if rule.max_retries is not None and rule.max_retries > policy.max_retries:
            raise ValueError(
                f"{where}.max_retries={rule.max_retries!r} exceeds max_retries="
                f"{policy.max_retries!r}, which caps every call; raise max_retries and "
                f"lower the other verdicts instead"
            )
        resolved = rule.backoff_for(policy)
        if resolved.backoff_base > resolved.backoff_max:
            raise ValueError(
                f"{where}: backoff_base ({resolved.backoff_base!r}) must not exceed "
                f"backoff_max ({resolved.backoff_max!r})"
            )
        rules[verdict] = rule
    return _RuleTable(rules)
