"""SmartRetryAdapter: the ``requests`` transport adapter that retries, with deadlines.

Mount it once and every request through the session gets a wall-clock deadline per
attempt, classified retries with capped backoff, the seed's log lines and an event per
attempt for statistics, the breaker and the budget::

    session = requests.Session()
    session.mount("https://", SmartRetryAdapter(max_retries=1, timeout=30.0,
                                                operation_name="生成艺术照"))

Methods meant for subclassing: :meth:`SmartRetryAdapter.classify_response` (vendor codes),
:meth:`SmartRetryAdapter.prepare_attempt` (per-attempt signing),
:meth:`SmartRetryAdapter.operation_for` and :meth:`SmartRetryAdapter.service_for`.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Union
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.cookies import extract_cookies_to_jar
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3._collections import RecentlyUsedContainer
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout as Urllib3Timeout

from .budget import DEFAULT_BUDGET
from .classify import (
    BODY_READ_FAILED,
    DEADLINE_BEFORE_SENDING,
    ENCLOSING_ATTEMPT_OVER,
    Classification,
    classify_exception,
    classify_http_response,
    pool_refused,
    veto,
)
from .collaborators import resolve_collaborators, resolve_throttle
from .deadline import (  # the pool classes and errors: re-exported from their old home
    MIN_ATTEMPT,
    POOL_CLASSES,
    DeadlineBeforeSending,
    HTTPConnection,
    HTTPConnectionPool,
    HTTPSConnection,
    HTTPSConnectionPool,
    NoTimeLeft,
    PoolWaitExpired,
    Watch,
    attempt_seconds,
    current_scope,
)
from .engine import (
    BreakerGate,
    BudgetGate,
    CallInfo,
    Outcome,
    build_hooks,
    check_clocks,
    check_hooks,
    quiet_plan,
    run_call,
)
from .errors import AdapterClosedError, AttemptDeadlineExceeded
from .events import Hook, Verdict
from .overrides import current_overrides
from .policy import RetryPolicy, resolve_policy
from .redact import redact_url

# operation_name, service_name, is_idempotent, previous_attempts: re-exported
from .sending import (
    _NO_BODY,
    Sending,
    TimeoutArg,
    _BodyReplay,
    _mark_body_failures,
    _PolicyFacts,
    _Timeouts,
    is_idempotent,
    operation_name,
    previous_attempts,
    refuse_consumed_body,
    service_name,
    with_idempotency_key,
)
from .stats import Stats
from .throttle import Throttle
from .urllib3_retry import (
    RetryNow,
    gave_up_counting,
    policy_for_retry,
    retried_verdict,
    retry_for_policy,
    stepping,
    to_requests_error,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import AdapterOptions, SessionOptions

__all__ = [
    "DeadlineBeforeSending",
    "HTTPConnection",
    "HTTPConnectionPool",
    "HTTPSConnection",
    "HTTPSConnectionPool",
    "PoolWaitExpired",
    "SmartRetryAdapter",
    "is_idempotent",
    "operation_name",
    "previous_attempts",
    "service_name",
    "smart_session",
]

_log = logging.getLogger("requests_smartretry")
_SUCCESS_VERDICT = Verdict.SUCCESS  # a module constant: enum class lookups are slow


def _cut_reason() -> str:
    """Why an attempt cut at its bound under a urllib3 Retry is not retried: the call's
    deadline, or the policy's timeout for a request without ``timeout=``."""
    scope = current_scope()
    left = None if scope is None else scope.remaining()
    return "deadline" if left is not None and left <= MIN_ATTEMPT else "not_retryable"


# The urllib3 Retry state of the attempt running in this context, and the adapter it is
# for: HTTPAdapter.send reads ``self.max_retries``, one value shared by every thread.
_RETRY_STATE: contextvars.ContextVar[Optional[tuple[Any, Retry]]] = contextvars.ContextVar(
    "requests_smartretry_retry_state", default=None)


# What HTTPAdapter.send hands urllib3 inside an attempt that this adapter's loop retries.
_NO_RETRIES = Retry(0, read=False)

# HTTPAdapter's positional parameters, in its order.
_POOL_PARAMETERS = ("pool_connections", "pool_maxsize", "max_retries", "pool_block")


def _positional_pool_args(args: tuple[Any, ...], with_policy: bool,
                          policy_options: dict[str, Any]) -> dict[str, Any]:
    """``SmartRetryAdapter(20, 50)`` as ``HTTPAdapter(20, 50)``: positional arguments are
    (pool_connections, pool_maxsize, max_retries, pool_block); ``max_retries`` goes into
    ``policy_options``, the rest come back by name."""
    if with_policy:
        raise TypeError(
            "SmartRetryAdapter takes either a policy or HTTPAdapter's positional arguments "
            f"(pool_connections, pool_maxsize, max_retries, pool_block), not both; got "
            f"{args!r} after the policy")
    if len(args) > len(_POOL_PARAMETERS):
        raise TypeError(
            f"SmartRetryAdapter takes at most {len(_POOL_PARAMETERS)} positional arguments "
            f"(pool_connections, pool_maxsize, max_retries, pool_block), got {args!r}")
    given = dict(zip(_POOL_PARAMETERS, args))
    if "max_retries" in given:
        if "max_retries" in policy_options:
            raise TypeError("SmartRetryAdapter got max_retries both by position and by keyword")
        policy_options["max_retries"] = given.pop("max_retries")
    return given


_perf_counter = time.perf_counter  # requests' clock for Response.elapsed


class _TimedResponse(requests.Response):
    """A ``requests.Response`` whose ``elapsed`` is the time from sending the last attempt
    to its headers (requests' definition), whatever the session assigns after ``send``.

    Built as such by :meth:`SmartRetryAdapter.build_response`, never converted: assigning
    ``__class__`` (or reading ``__dict__``) turns the instance's attributes into a dict,
    and every attribute read and write on the response after that misses CPython's fast
    path (issue 29)."""

    #: Seconds from sending to the headers parsed, set at the attempt's end (None: the
    #: response did not come from an attempt, e.g. unpickled: ``_elapsed`` then holds).
    _to_headers: Optional[float] = None
    _elapsed = datetime.timedelta(0)

    @property
    def elapsed(self) -> datetime.timedelta:
        to_headers = self._to_headers
        if to_headers is None:
            return self._elapsed
        return datetime.timedelta(seconds=to_headers)

    @elapsed.setter
    def elapsed(self, value: datetime.timedelta) -> None:
        self._elapsed = value


# Failures reading a body (stream=False) that requests raises only when the body is read,
# after the response hooks ran and cookies were stored.
_BODY_ERRORS = (requests.exceptions.ContentDecodingError,
                requests.exceptions.ChunkedEncodingError)


class _FailedBody:
    """A response's ``raw`` whose body read failed inside the attempt: reading it again
    raises that failure (``Response.content`` passes it through), everything else is the
    original ``raw``'s (cookies, headers, release_conn)."""

    def __init__(self, raw: Any, error: BaseException) -> None:
        self._raw = raw
        self._error = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        raise self._error

    def read(self, *args: Any, **kwargs: Any) -> Any:
        raise self._error


def _failing_body(response: requests.Response, error: BaseException) -> requests.Response:
    """``response`` as ``HTTPAdapter.send`` would return it, its body not read yet: the
    session runs the hooks and stores cookies, then reading the body raises ``error``."""
    failed: Any = response  # requests' private reading state
    failed._content, failed._content_consumed = False, False
    response.raw = _FailedBody(response.raw, error)
    return response


def _hold_until_read(response: requests.Response, release: Callable[[], None]) -> None:
    """Keep a streamed response's throttle slot until its body is read to the end or the
    response is closed (both release the connection), or at the latest until the response
    is garbage collected: the vendor counts the request in flight while it sends the body."""
    raw: Any = response.raw
    release_conn = getattr(raw, "release_conn", None)

    def released(*args: Any, **kwargs: Any) -> Any:
        release()
        return None if release_conn is None else release_conn(*args, **kwargs)

    try:
        raw.release_conn = released
    except AttributeError:  # a raw that takes no attribute: nothing to wait for
        release()
        return
    weakref.finalize(response, release)


def _pools_of(manager: Any) -> list[Any]:
    """The connection pools a urllib3 ``PoolManager`` holds now (none for anything else
    in its place: requests' own tests put mocks among the proxy managers)."""
    container = getattr(manager, "pools", None)
    if container is None or not isinstance(manager, urllib3.PoolManager):
        return []
    # (keys(): urllib3's RecentlyUsedContainer refuses iteration, it copies its keys.)
    pools = (container.get(key) for key in container.keys())  # noqa: SIM118
    return [pool for pool in pools if pool is not None]


class _CountedPools(RecentlyUsedContainer[Any, Any]):
    """A pool manager's pools (urllib3's container) counting the times pools were taken
    out of it other than by eviction (``clear()``: the manager's, close(), a user's
    ``adapter.poolmanager.clear()``; ``del``): a pool the adapter remembered is served
    again only if none was since, or it might be one the manager no longer holds."""

    removals = 0

    def __len__(self) -> int:
        # One read of the container's size, without the lock: the adapter asks it for
        # every request it serves a remembered pool to.
        return len(self._container)

    def clear(self) -> None:
        super().clear()
        self.removals += 1  # after: a lookup that read the count before is not trusted

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self.removals += 1

    def mark_used(self, used: list[Any]) -> None:
        """Mark the pools ``used`` (least recently used first) as used, in that order: the
        pools the adapter served without asking, for the least recently used one to be
        the one evicted next, as when every request asks."""
        with self.lock:
            keys = {id(value): key for key, value in self._container.items()}
            for pool in used:
                key = keys.get(id(pool))
                if key is not None:
                    self._container.move_to_end(key)


class _PoolLabel:
    """Names a pool in a urllib3 error as urllib3's pools do, when the pool is unknown."""

    def __init__(self, url: str) -> None:
        self.host: Optional[str] = None
        self.port: Optional[int] = None
        self.scheme = ""
        try:  # host and port only: no userinfo, path or query (no secrets)
            parts = urlsplit(url)
            self.host, self.port, self.scheme = parts.hostname, parts.port, parts.scheme
        except ValueError:
            pass

    def __str__(self) -> str:
        kind = "HTTPSConnectionPool" if self.scheme == "https" else "HTTPConnectionPool"
        return f"{kind}(host={self.host!r}, port={self.port!r})"


def _read_timed_out(request: requests.PreparedRequest, detail: str,
                    cause: Optional[BaseException] = None,
                    response: Optional[requests.Response] = None) -> AttemptDeadlineExceeded:
    """The attempt deadline's error, as requests raises a read timeout: its ``args[0]`` is
    urllib3's ``ReadTimeoutError`` ("<pool>: Read timed out. (<detail>)")."""
    pool: Any = None
    inner = cause.args[0] if cause is not None and cause.args else cause
    pool = getattr(inner, "pool", None) or getattr(cause, "pool", None)
    if pool is None and response is not None:
        pool = getattr(response.raw, "_pool", None)
    url = redact_url(request.url or "")
    if pool is None:
        pool = _PoolLabel(request.url or "")
    error = AttemptDeadlineExceeded(
        urllib3.exceptions.ReadTimeoutError(pool, url, f"Read timed out. ({detail})"),
        request=request)
    if cause is not None:
        error.__cause__ = cause
    return error


_mirrors: dict[int, tuple[RetryPolicy, Retry]] = {}


def _mirror_retry(policy: RetryPolicy) -> Retry:
    """The ``Retry`` mirroring ``policy`` (cached per policy: a few are ever built)."""
    cached = _mirrors.get(id(policy))
    if cached is not None and cached[0] is policy:
        return cached[1]
    mirror = retry_for_policy(policy)
    if len(_mirrors) >= 256:
        _mirrors.clear()
    _mirrors[id(policy)] = (policy, mirror)
    return mirror


# requests >= 2.32.2 looks pools up here (older ones call get_connection: no reuse there).
_look_up_pool: Any = getattr(HTTPAdapter, "get_connection_with_tls_context", None)
# What that lookup keys a pool by (the same requests versions); an override changes it.
_pool_key_attributes: Any = getattr(HTTPAdapter, "build_connection_pool_key_attributes",
                                    None)
# (adapter, URL, pool) while a retry runs: the pool its last failed response came from.
_REUSE_POOL: contextvars.ContextVar[Optional[tuple[Any, Optional[str], Any]]] = (
    contextvars.ContextVar("requests_smartretry_reuse_pool", default=None))

class SmartRetryAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` that gives every request a deadline and classified retries.

    Example::

        adapter = SmartRetryAdapter(max_retries=1, timeout=30.0, operation_name="生成艺术照",
                                    on_retry=lambda attempt, error: print(attempt, error))
        session = requests.Session()
        session.mount("https://", adapter)
        session.mount("http://", adapter)

    Pass either ``policy=RetryPolicy(...)`` or the policy's keywords (``max_retries``,
    ``timeout``, ``backoff_base``…); keywords given with ``policy=`` override it.  A
    ``urllib3.Retry`` passed as ``max_retries`` decides every retry and wait exactly as in
    ``HTTPAdapter(max_retries=Retry(...))`` (see :mod:`requests_smartretry.urllib3_retry`);
    the adapter adds the deadline, logs, statistics, breaker and budget, never an attempt.

    Deadlines: with ``stream=False`` (the default) the body is read inside the attempt, so
    the attempt's wall-clock deadline covers connect, send, headers and body.  With
    ``stream=True`` the deadline covers up to the headers; each later read of the body
    keeps the per-read timeout (the policy's ``timeout``, or the read part of yours).

    Statistics: ``adapter.stats`` (a :class:`~requests_smartretry.Stats`) counts every call;
    ``adapter.stats.snapshot()`` gives them per operation.  ``stats=`` shares one ``Stats``
    among adapters; ``stats=False`` turns counting off (``adapter.stats`` is then ``None``).
    Breaker and budget: ``breaker=CircuitBreaker(...)`` refuses attempts to a service that
    is down; ``budget=`` bounds retries as a share of calls (``RetryBudget()`` unless
    ``budget=None``).  ``state="redis://host:6379/0"`` (or a ``redis.Redis`` client, or a
    state store) keeps their state in Redis, shared by every process pointing at it.
    ``throttle=Throttle(rate=..., max_in_flight=...)`` paces every attempt per service
    before it sends (fleet-wide with a Redis ``state=``).

    Per-call overrides: inside a :func:`~requests_smartretry.retry_options` block a call
    runs with the block's policy fields over ``adapter.policy``.  They reach everything
    the policy decides (attempts, deadlines, backoff, names, the policy's hooks); a
    subclass's own hook methods (``classify_response``, ``prepare_attempt``…) read
    ``self.policy``, the adapter's.

    Thread safety: the adapter holds only the immutable policy and thread-safe
    collaborators (breaker, budget, stats), so one session may serve many threads.
    """

    # What pickling keeps (requests' convention): the policy and the shared collaborators;
    # "stats" pickles its counts, not its lock.
    __attrs__ = [  # noqa: RUF012
        *HTTPAdapter.__attrs__, "policy", "breaker", "budget", "extra_hooks", "stats",
        "state", "throttle", "_sleep", "_clock", "retry",
    ]

    policy: RetryPolicy
    #: The ``urllib3.Retry`` given as ``max_retries`` (it decides the retries), or ``None``.
    retry: Optional[Retry] = None
    #: Whether HTTPAdapter's send and build_response are what ``super()`` finds: then an
    #: attempt calls HTTPAdapter.send through the class (on 3.11 a zero-argument super()
    #: builds a proxy object per call) and build_response builds the response itself.
    #: False when a class after this one in a subclass's MRO (a mixin) overrides either
    #: (or request_url): they are then reached through super(), as before.
    _direct_base = True
    #: Whether pools are looked up by HTTPAdapter's own key (requests >= 2.32.2, no
    #: ``build_connection_pool_key_attributes`` override): then remembered per URL.
    _pool_keys_by_default = _look_up_pool is not None and _pool_key_attributes is not None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        after: Any = super()  # what a subclass reaches after this class
        cls._direct_base = (after.send is HTTPAdapter.send
                            and after.build_response is HTTPAdapter.build_response
                            and after.request_url is HTTPAdapter.request_url)
        cls._pool_keys_by_default = (
            cls._direct_base and _pool_key_attributes is not None
            and getattr(cls, "build_connection_pool_key_attributes",
                        None) is _pool_key_attributes)

    def __init__(
        self,
        policy: Union[RetryPolicy, int, None] = None,
        *pool_args: Any,
        breaker: Optional[BreakerGate] = None,
        budget: Optional[BudgetGate] = DEFAULT_BUDGET,
        state: Any = None,
        throttle: Optional[Throttle] = None,
        hooks: Union[Hook, tuple[Hook, ...], list[Hook]] = (),
        stats: Union[Stats, Literal[False], None] = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        pool_connections: int = 10,
        pool_maxsize: int = 10,
        pool_block: bool = False,
        **policy_options: Unpack[AdapterOptions],
    ) -> None:
        if pool_args or (isinstance(policy, int) and not isinstance(policy, bool)):
            # HTTPAdapter's positional arguments: (pool_connections, pool_maxsize,
            # max_retries, pool_block).  The policy then goes by keyword only.
            given = _positional_pool_args(
                pool_args if policy is None or isinstance(policy, RetryPolicy)
                else (policy, *pool_args),
                policy is not None and isinstance(policy, RetryPolicy),
                policy_options)  # type: ignore[arg-type]  # a TypedDict, by name
            policy = None
            pool_connections = given.get("pool_connections", pool_connections)
            pool_maxsize = given.get("pool_maxsize", pool_maxsize)
            pool_block = given.get("pool_block", pool_block)
        _check_pool_options(pool_connections, pool_maxsize, pool_block)
        retry = policy_options.get("max_retries")
        if not isinstance(retry, Retry):
            retry = None
        else:
            if policy is not None:
                raise TypeError("pass either policy= or a urllib3 Retry as max_retries, "
                                "not both")
            del policy_options["max_retries"]
            policy = policy_for_retry(retry)
        policy = resolve_policy(policy, policy_options, "SmartRetryAdapter")
        check_clocks(sleep, clock)
        hooks = check_hooks(hooks)
        # Statistics, breaker, budget and their shared state, checked as every transport does.
        self.stats, breaker, budget, store = resolve_collaborators(stats, breaker, budget, state)
        self.state = store
        self.throttle = resolve_throttle(throttle, store)
        self.policy = policy
        self.retry = retry
        self.breaker = breaker
        self.budget = budget
        self.extra_hooks = hooks
        self._sleep = sleep
        self._clock = clock
        self._closes = 0  # how many times close() was called
        super().__init__(pool_connections=pool_connections, pool_maxsize=pool_maxsize,
                         max_retries=0, pool_block=pool_block)
        self._hooks = self._build_hooks()
        self._reset_caches()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(policy={self.policy!r})"

    @property
    def max_retries(self) -> Retry:
        """The retries as ``HTTPAdapter.max_retries`` says them: the ``urllib3.Retry``
        given as ``max_retries``, or a ``Retry`` mirroring the policy (``total`` is the
        policy's ``max_retries``, with its statuses, methods and backoff).  Inside an
        attempt, ``HTTPAdapter.send`` reads what it hands urllib3 instead: the attempt's
        Retry state, or no retries (this adapter's loop retries)."""
        current = _RETRY_STATE.get()
        if current is not None and current[0] is self:
            return current[1]
        if self.retry is not None:
            return self.retry
        return _mirror_retry(self.policy)

    @max_retries.setter
    def max_retries(self, value: Any) -> None:
        # HTTPAdapter.__init__ sets its "no retries" Retry here (before the hooks are
        # built); any later value, Retry(0) included, would be silently ignored, so it is
        # refused.
        if "_hooks" in self.__dict__ or not (isinstance(value, Retry) and value.total == 0):
            raise AttributeError(
                f"max_retries of a SmartRetryAdapter is its policy's; build the adapter "
                f"with max_retries= (or policy=) instead of setting it to {value!r}")

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._closes = 0
        state = dict(state)
        state.pop("max_retries", None)  # the policy's mirror, not a setting
        super().__setstate__(state)  # type: ignore[misc]
        self._hooks = self._build_hooks()
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._facts: Optional[_PolicyFacts] = None
        # The built-in consumers the loop tells directly while a call stays quiet.
        self._quiet = quiet_plan(self._hooks)
        # Per policy derived by retry_options: id -> (policy, facts, hooks, quiet).
        self._derived: dict[int, tuple[RetryPolicy, _PolicyFacts, tuple[Hook, ...], Any]] = {}
        # URL -> what HTTPAdapter.request_url gives for it without proxies (request_url).
        self._paths: dict[str, str] = {}
        # (URL, verify, cert) -> (pool manager, its pool for them, the manager's size,
        # its pools' removals before the lookup: _CountedPools), without proxies
        # (get_connection_with_tls_context).
        self._pools_by_url: dict[Any, tuple[Any, Any, int, int]] = {}

    def _overridden(self, policy: RetryPolicy) -> tuple[_PolicyFacts, tuple[Hook, ...], Any]:
        """What ``send`` works out once per policy (facts, hooks, quiet plan), for a policy
        a :func:`~requests_smartretry.retry_options` block derived from ``self.policy``."""
        derived = self._derived.get(id(policy))
        if derived is None or derived[0] is not policy:
            hooks = build_hooks(policy, stats=self.stats, extra=self.extra_hooks,
                                breaker=self.breaker, budget=self.budget,
                                throttle=self.throttle)
            if len(self._derived) >= 64:  # bounded: policies may be derived per request
                self._derived.clear()
            derived = self._derived[id(policy)] = (policy, _PolicyFacts(self, policy), hooks,
                                                   quiet_plan(hooks))
        return derived[1], derived[2], derived[3]

    def _build_hooks(self) -> tuple[Hook, ...]:
        return build_hooks(self.policy, stats=self.stats, extra=self.extra_hooks,
                           breaker=self.breaker, budget=self.budget, throttle=self.throttle)

    def _names_by_default(self, policy: RetryPolicy) -> bool:
        """Whether ``policy``'s call names depend on the method and URL alone (no
        ``name_request`` hook, no ``operation_for``/``service_for`` override)."""
        cls = type(self)
        return (policy.name_request is None
                and cls.operation_for is SmartRetryAdapter.operation_for
                and cls.service_for is SmartRetryAdapter.service_for)

    def _prepares(self, policy: RetryPolicy) -> bool:
        """Whether ``policy``'s attempts are prepared (a ``prepare_attempt`` hook, or an
        override of :meth:`prepare_attempt`): else each attempt sends the call's request."""
        return (policy.prepare_attempt is not None
                or type(self).prepare_attempt is not SmartRetryAdapter.prepare_attempt)

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        """As ``HTTPAdapter``'s; the response's ``elapsed`` is the attempt's time to the
        headers, as in requests (the session would otherwise set it to the whole call:
        body read and retries included)."""
        if not self._direct_base:  # a mixin's build_response runs, as before
            built = super().build_response(req, resp)
            built.__class__ = _TimedResponse
            return built
        # HTTPAdapter.build_response's steps, on a response built as a _TimedResponse
        # rather than converted afterwards (see _TimedResponse).
        response = _TimedResponse()
        response.status_code = getattr(resp, "status", None)  # type: ignore[assignment]
        response.headers = CaseInsensitiveDict(getattr(resp, "headers", {}))
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = resp
        response.reason = resp.reason
        url = req.url
        response.url = url.decode("utf-8") if isinstance(url, bytes) else url  # type: ignore[assignment]
        extract_cookies_to_jar(response.cookies, req, resp)  # type: ignore[no-untyped-call]
        response.request = req
        response.connection = self
        return response

    # -- pools -----------------------------------------------------------------------

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Create the pool manager with pools that let the watchdog enforce deadlines."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(POOL_CLASSES)
        held = getattr(self.poolmanager, "pools", None)
        if type(held) is RecentlyUsedContainer and not len(held):
            self.poolmanager.pools = _CountedPools(held._maxsize,
                                                   dispose_func=held.dispose_func)
        # The pools remembered are the previous manager's (never served again: they
        # would only keep it and their connections alive).
        self._pools_by_url = {}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """As ``HTTPAdapter``'s, with watched pools (SOCKS pools keep per-read timeouts)."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(POOL_CLASSES)
        return manager

    def close(self) -> None:
        """Release every pooled connection, and stop the retries of the calls in flight
        (they end on their last failure, given up as "closed").  As ``HTTPAdapter``'s, the
        adapter stays usable: a later call opens new connections."""
        self._closes += 1
        # HTTPAdapter.close() clears the pool managers; a urllib3 whose PoolManager.clear()
        # forgets its pools without closing them (2.8) leaves their idle sockets open until
        # the garbage collector finds the pools (a failed response in a reference cycle
        # keeps its pool alive).  Close every pool now, as older urllib3 does on clear().
        managers = [self.poolmanager, *self.proxy_manager.values()]
        pools = [pool for manager in managers for pool in _pools_of(manager)]
        super().close()
        # The pools remembered are closed below or forgotten by the manager: forgotten
        # here too, after the manager, so that a pool another thread looked up meanwhile
        # (after the pools above were taken, before the manager forgot them), which no
        # close() would close, is not kept either.
        self._pools_by_url = {}
        for pool in pools:
            pool.close()

    def get_connection_with_tls_context(
        self, request: requests.PreparedRequest, verify: Any,
        proxies: Any = None, cert: Any = None,
    ) -> Any:
        """As ``HTTPAdapter``'s; a retry whose last attempt got a response on the same URL
        (same call: same verify, cert and proxies) goes to that response's pool, without
        looking it up again, unless the pool was closed meanwhile."""
        memo = _REUSE_POOL.get()
        if memo is not None and memo[0] is self and memo[1] == request.url \
                and getattr(memo[2], "pool", None) is not None:
            return memo[2]
        if proxies or not self._pool_keys_by_default:
            return _look_up_pool(self, request, verify, proxies, cert)
        # Without proxies the pool depends on the URL's origin, verify and cert alone:
        # remembered per (URL, verify, cert).  HTTPAdapter's lookup parses the URL twice,
        # stats a CA bundle given as a path (REQUESTS_CA_BUNDLE) and builds the pool key
        # under the pool manager's lock, on every attempt.
        key = (request.url, verify, cert)
        pools = self._pools_by_url
        try:
            known = pools.get(key)
        except TypeError:  # a cert given as a list: looked up every time
            return _look_up_pool(self, request, verify, proxies, cert)
        manager = self.poolmanager
        held: Any = getattr(manager, "pools", None)
        removals = getattr(held, "removals", None)  # read before the lookup: see below
        if known is not None and known[0] is manager and known[1].pool is not None \
                and removals == known[3]:
            count = len(held)
            if count < known[2]:
                # The same pool manager, the pool not closed, the manager below its size
                # and no pool taken out of it since (clear(), close()): no pool was
                # evicted (urllib3 2.8 no longer closes an evicted pool) or forgotten, so
                # the pool is still the one the manager would hand out.  A full manager
                # is asked every time, which keeps its least-recently-used order true.
                if count > 1:  # the memory keeps the order of use (see below)
                    pools.pop(key, None)
                    pools[key] = known
                return known[1]
        pool = _look_up_pool(self, request, verify, proxies, cert)
        size = getattr(held, "_maxsize", None)  # a urllib3 PoolManager's (num_pools)
        if isinstance(size, int) and isinstance(removals, int) \
                and getattr(pool, "pool", None) is not None:
            if len(held) >= size:
                # Full: nothing is served from memory while it is, and the pools
                # remembered may be ones it evicted (urllib3 2.8 does not close them):
                # held here, they would keep their connections open beyond
                # pool_connections.  Forgotten, as the manager forgot them.  On becoming
                # full, the pools served from memory (not marked used in the manager)
                # are marked used first, in the memory's order (the order of use), then
                # the pool just looked up: the next host evicts the least recently used
                # pool, not the one used most that the memory served.
                if pools:
                    mark_used = getattr(held, "mark_used", None)
                    if mark_used is not None:
                        mark_used([entry[1] for entry in list(pools.values())] + [pool])
                    pools.clear()
            else:
                if len(pools) >= _PolicyFacts.NAMES:  # bounded, as the names of calls
                    pools.clear()
                # (A clear() after the count was read leaves the count behind: the
                # pool, perhaps one the manager forgot, is then not served again.)
                pools.pop(key, None)  # at the end: the memory's order is the order of use
                pools[key] = (manager, pool, size, removals)
        return pool

    def request_url(self, request: requests.PreparedRequest,
                    proxies: Any) -> str:
        """As ``HTTPAdapter``'s, remembered per URL when no proxies are given (then it
        depends on the URL alone): ``HTTPAdapter``'s parses the URL three times on every
        attempt to find the same path.  With proxies, or a mixin's ``request_url`` after
        this class, asked every time as before."""
        if proxies or not self._direct_base:
            return super().request_url(request, proxies)
        url = request.url
        paths = self._paths
        path = paths.get(url)  # type: ignore[arg-type]  # a prepared request's str
        if path is None:
            path = HTTPAdapter.request_url(self, request, proxies)
            if len(paths) >= _PolicyFacts.NAMES:  # bounded, as the names of calls
                paths.clear()
            paths[url] = path  # type: ignore[index]
        return path

    # -- hooks for subclasses ---------------------------------------------------------

    def operation_for(self, request: requests.PreparedRequest) -> str:
        """The operation name in log lines and statistics: the policy's, a preset's, or
        ``METHOD host/path-template`` (identifier- and secret-like segments read ``{id}``)."""
        return operation_name(self.policy, request)

    def service_for(self, request: requests.PreparedRequest) -> str:
        """The breaker/budget key: the policy's ``service``, or ``scheme://host``."""
        return service_name(self.policy, request)

    def is_idempotent(self, request: requests.PreparedRequest) -> bool:
        """Whether repeating ``request`` after it reached the server is safe."""
        return is_idempotent(self.policy, request)

    def classify_response(self, response: requests.Response) -> Classification:
        """The verdict on a response: the policy's vendor hook first, then the status table,
        with ``Retry-After`` attached for retryable verdicts."""
        policy = self.policy
        return classify_http_response(response, policy.classify_response,
                                      policy.retry_statuses, policy.honor_server_signals)

    def prepare_attempt(
        self, request: requests.PreparedRequest, attempt: int
    ) -> requests.PreparedRequest:
        """The request to send as attempt ``attempt``: the policy's hook (signing) applied to
        a copy, so each attempt is signed afresh and the caller's request is untouched."""
        return _prepared(self.policy, request, attempt)

    # The hook methods under a policy that retry_options derived for one call (``policy``
    # None: the adapter's own); a subclass's override is called as it is.

    def _classify_for(self, policy: Optional[RetryPolicy],
                      response: requests.Response) -> Classification:
        # A classify_response other than this class's own (a subclass's override, or one
        # set on a class later: mock.patch.object) decides, as it is.  Read per response.
        if type(self).classify_response is not _BASE_CLASSIFY:
            return self.classify_response(response)
        if policy is None:  # classify_response's own steps, without its frame
            policy = self.policy
        return classify_http_response(response, policy.classify_response,
                                      policy.retry_statuses, policy.honor_server_signals)

    def _prepare_for(self, policy: Optional[RetryPolicy], request: requests.PreparedRequest,
                     attempt: int) -> requests.PreparedRequest:
        if policy is None or type(self).prepare_attempt is not _BASE.prepare_attempt:
            return self.prepare_attempt(request, attempt)
        return _prepared(policy, request, attempt)

    def _idempotent_for(self, policy: Optional[RetryPolicy],
                        request: requests.PreparedRequest) -> bool:
        if policy is None or type(self).is_idempotent is not _BASE.is_idempotent:
            return self.is_idempotent(request)
        return is_idempotent(policy, request)

    # -- the send loop ------------------------------------------------------------------

    def send(  # type: ignore[override]
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: TimeoutArg = None,
        verify: Union[bool, str] = True,
        cert: Any = None,
        proxies: Optional[dict[str, str]] = None,
    ) -> requests.Response:
        """Send ``request`` with retries; returns the last response or raises the last
        transport error (its ``requests`` type, with ``retry_history`` attached).

        ``response.retry_history`` is the call's events as a read-only sequence: a tuple,
        or for a call whose first attempt succeeded with only built-in consumers a
        :class:`~requests_smartretry.engine.LazyHistory` (built when first read; equal to
        the tuple of its events; ``tuple(...)`` it where a tuple is needed)."""
        policy = self.policy
        overrides = current_overrides()  # a retry_options block: the one context read
        if overrides is None:
            facts = self._facts
            if facts is None or facts.policy is not policy:
                facts = self._facts = _PolicyFacts(self, policy)
            hooks, quiet, overridden = self._hooks, self._quiet, None
        else:
            policy = overridden = overrides.apply(policy)
            facts, hooks, quiet = self._overridden(policy)
        asked = request  # as the caller sent it: a key minted here is this call's only
        if policy.idempotency_header is not None:  # one key for every attempt of the call
            request = with_idempotency_key(request, policy.idempotency_header)
        socket_timeout: Optional[Urllib3Timeout]
        if timeout is None:
            timeouts, socket_timeout = facts.timeouts, facts.socket_timeout
        else:
            timeouts, socket_timeout = facts.resolve(timeout)
        retry = self.retry
        if retry is not None:
            # As HTTPAdapter: the caller's timeout goes to urllib3 as it is, where the Retry
            # sees its timeouts; without one, the policy's bounds the attempt (not retried).
            timeouts = ((timeouts[0], timeouts[1], None) if timeout is not None
                        else (None, None, policy.timeout))
            socket_timeout = None
        call = facts.names.get((request.method, request.url)) if facts.default_naming else None
        if call is None:
            call = self._call_info(request, facts, overridden)
        attempt = _Sending(self, request, stream, timeouts, verify, cert, proxies,
                           socket_timeout, None if retry is None else [stepping(retry)],
                           overridden, asked, call.url, facts.prepares)
        finished = run_call(policy, call, attempt, hooks=hooks,
                            breaker=self.breaker, budget=self.budget, sleep=self._sleep,
                            clock=self._clock, closed=attempt.closed, quiet=quiet,
                            throttle=self.throttle)
        outcome = finished.outcome
        response: requests.Response
        try:
            # The call's response, or unwrap() raises its last transport error (history
            # attached).
            response = (outcome.value if outcome.error is None  # type: ignore[assignment]
                        else finished.unwrap())  # (a success has a value)
        except _BODY_ERRORS as exc:
            if stream or not isinstance(exc.response, requests.Response):
                raise
            response = _failing_body(exc.response, exc)
        response.retry_history = finished.history  # type: ignore[attr-defined]
        return response

    def _retry_attempt(
        self, states: list[Retry], request: requests.PreparedRequest,
        send: Callable[[], Outcome[requests.Response]], policy: Optional[RetryPolicy],
    ) -> Outcome[requests.Response]:
        """One attempt (``send``, an :meth:`_attempt`) under the call's urllib3 Retry state:
        urllib3 sends it with that state, and either gives up as HTTPAdapter would (the
        outcome is final) or decides to retry (:class:`RetryNow`: the next state and its
        wait)."""
        state = states[0]
        token = _RETRY_STATE.set((self, state))
        try:
            outcome = send()
        except RetryNow as decided:
            if decided.cut:  # the attempt's bound passed: urllib3's retry is not made
                cut = _read_timed_out(
                    request, "the attempt deadline passed during the attempt; not retried",
                    decided.error)
                cut.__cause__ = decided.error
                return Outcome(classify_exception(cut), error=cut, signal=cut,
                               veto=_cut_reason())
            states[0] = decided.state
            return self._retried(decided, request, policy)
        finally:
            _RETRY_STATE.reset(token)
        if outcome.classification.verdict is not _SUCCESS_VERDICT:
            # urllib3 did not retry: HTTPAdapter would end here, and so does the call.
            ran_out = gave_up_counting(outcome.error) or (
                outcome.error is None and outcome.status_code is not None
                and state.is_retry(request.method or "GET", outcome.status_code,
                                   bool(outcome.value is not None
                                        and outcome.value.headers.get("Retry-After"))))
            if isinstance(outcome.error, requests.exceptions.RetryError):
                # urllib3's "too many 503 error responses": a server error, for the
                # log line and the statistics.
                outcome.classification = Classification(
                    Verdict.SERVER_ERROR,
                    f"RetryError: {getattr(outcome.error.args[0], 'reason', '')}")
            outcome.veto = ("retry_exhausted" if ran_out
                            else _cut_reason() if isinstance(outcome.error,
                                                             AttemptDeadlineExceeded)
                            else "not_retryable")
        return outcome

    def _retried(self, decided: RetryNow, request: requests.PreparedRequest,
                 policy: Optional[RetryPolicy]) -> Outcome[requests.Response]:
        """The outcome of an attempt the urllib3 Retry decided to repeat, after
        ``decided.wait`` seconds."""
        if decided.response is not None:
            response = self.build_response(request, decided.response)
            status = response.status_code
            verdict = retried_verdict(self._classify_for(policy, response), status)
            signal = requests.HTTPError(
                f"{status} {verdict.reason} for {redact_url(request.url or '')}",
                request=request, response=response)
            return Outcome(verdict, value=response, signal=signal, status_code=status,
                           wait=decided.wait)
        error = to_requests_error(decided.error, request)
        verdict = retried_verdict(classify_exception(error), None)
        return Outcome(verdict, error=error, signal=error, wait=decided.wait)

    def _call_info(self, request: requests.PreparedRequest, facts: _PolicyFacts,
                   policy: Optional[RetryPolicy] = None) -> CallInfo:
        cls = type(self)
        info = CallInfo(
            operation=(self.operation_for(request)
                       if policy is None or cls.operation_for is not _BASE.operation_for
                       else operation_name(policy, request)),
            service=(self.service_for(request)
                     if policy is None or cls.service_for is not _BASE.service_for
                     else service_name(policy, request)),
            method=request.method, url=redact_url(request.url or ""))
        if facts.default_naming:  # names that depend on the method and URL alone
            facts.remember((request.method, request.url), info)
        return info

    def _attempt(
        self,
        request: requests.PreparedRequest,
        stream: bool,
        timeouts: _Timeouts,
        verify: Union[bool, str],
        cert: Any,
        proxies: Optional[dict[str, str]],
        socket_timeout: Optional[Urllib3Timeout] = None,
        policy: Optional[RetryPolicy] = None,
        url: Optional[str] = None,
    ) -> Outcome[requests.Response]:
        """One attempt.  ``socket_timeout``, when given, is the urllib3 ``Timeout`` for
        ``timeouts``' connect and read parts (used unless the deadline shortens them);
        ``policy``, the call's when a ``retry_options`` block derived it; ``url``,
        ``request``'s URL already redacted (for an error's text), if known."""
        connect_s, read_s, total_s = timeouts
        if current_scope() is not None:  # an enclosing deadline may leave less
            try:
                total_s = attempt_seconds(total_s)
            except NoTimeLeft:
                error = AttemptDeadlineExceeded(
                    "no time left for this attempt (enclosing deadline)", request=request)
                return Outcome(DEADLINE_BEFORE_SENDING, error=error, signal=error)
        if total_s is not None and (connect_s is None or connect_s > total_s):
            connect_s = total_s
        if socket_timeout is None or connect_s != timeouts[0]:
            socket_timeout = Urllib3Timeout(connect=connect_s, read=read_s)
        deadline = None if total_s is None else Watch(total_s)
        sent: Optional[requests.Response] = None
        try:
            started = _perf_counter()
            # HTTPAdapter.send(request, stream, timeout, verify, cert, proxies), by position:
            # keywords cost a Python call their own matching.  Through the class, read at
            # each call (a patched send is seen), unless a mixin's send comes first.
            if self._direct_base:
                response = sent = HTTPAdapter.send(
                    self, request, True, socket_timeout,  # type: ignore[arg-type]  # a Timeout
                    verify, cert, proxies)
            else:
                response = sent = super().send(
                    request, True, socket_timeout,  # type: ignore[arg-type]  # a Timeout
                    verify, cert, proxies)
            # requests' elapsed: from sending to the headers parsed (body not included).
            response._to_headers = _perf_counter() - started  # type: ignore[attr-defined]
            if stream:  # the body is read later, after this call's retries
                self._guard_streamed_body(response, request, policy)
            else:
                response.content  # noqa: B018 - read the body inside the deadline
        except Exception as exc:
            if isinstance(exc, PoolWaitExpired):  # requests lets it through as it is
                converted = requests.exceptions.ConnectTimeout(exc, request=request)
                converted.__cause__ = exc
                exc = converted
            if sent is not None:
                if isinstance(exc, requests.exceptions.ContentDecodingError):
                    undecodable = self._undecodable_status(sent, request, exc, policy)
                    if undecodable is not None:
                        return undecodable
                if isinstance(exc, _BODY_ERRORS) and not (deadline is not None
                                                          and deadline.fired):
                    if sent.is_redirect:
                        # As requests' redirect handling: a redirect's own body is
                        # discarded whatever it holds, and the redirect is followed.
                        sent.close()
                        discarded: Any = sent  # requests' private reading state
                        discarded._content, discarded._content_consumed = b"", True
                        return self._response_outcome(sent, request, policy, url)
                    # Kept for send(): as with HTTPAdapter, the session runs the response
                    # hooks and stores cookies before reading the body raises this.
                    exc.response = sent
                # A body read that failed (deadline, reset) leaves the socket referenced
                # from the traceback; close it now rather than at garbage collection.
                sent.close()
            verdict = classify_exception(exc)
            # A cut after sending is the attempt deadline's.  One before anything was
            # sent keeps its own type and its "nothing sent" safety: a connect timeout or
            # DNS failure stays a network error, and a deadline that passed while the
            # attempt waited for a pooled connection stays a ConnectTimeout, classified
            # as the deadline's timeout.
            if deadline is not None:
                if verdict.sent:
                    # So is the socket's own read timeout (cut to the attempt) that expired
                    # at the deadline before the watchdog thread got to run (a loaded
                    # machine), as on the httpx transport.
                    if deadline.fired or (isinstance(exc, requests.exceptions.Timeout)
                                          and deadline.remaining() == 0.0):
                        return self._deadline_outcome(total_s, request, cause=exc,
                                                      response=sent)
                elif pool_refused(exc):
                    verdict = DEADLINE_BEFORE_SENDING
            return Outcome(verdict, error=exc, signal=exc)
        finally:
            if deadline is not None:
                deadline.finish()
        if deadline is not None and deadline.fired:
            response.close()
            return self._deadline_outcome(total_s, request, response=response)
        outcome = self._response_outcome(response, request, policy, url)
        if stream:
            outcome.hold = functools.partial(_hold_until_read, response)
        return outcome

    def _response_outcome(self, response: requests.Response, request: requests.PreparedRequest,
                          policy: Optional[RetryPolicy],
                          url: Optional[str] = None) -> Outcome[requests.Response]:
        """The outcome of an attempt that got ``response``: the verdict on it (``url``:
        ``request``'s URL redacted already, if known)."""
        verdict = self._classify_for(policy, response)
        if verdict.verdict is _SUCCESS_VERDICT:
            # Outcome(classification, value, error, signal, status_code), by position.
            return Outcome(verdict, response, None, None, response.status_code)
        if url is None:
            url = redact_url(request.url or "")
        signal = requests.HTTPError(f"{response.status_code} {verdict.reason} for {url}",
                                    request=request, response=response)
        return Outcome(verdict, value=response, signal=signal, status_code=response.status_code)

    def _undecodable_status(
        self, response: requests.Response, request: requests.PreparedRequest,
        error: BaseException, policy: Optional[RetryPolicy],
    ) -> Optional[Outcome[requests.Response]]:
        """A 5xx/429 whose body cannot be decoded (a corrupt gzip) keeps its status verdict:
        the status, not the body, says the server failed.  ``None`` for other statuses
        (the decoding error then stands)."""
        # The status table alone (no vendor hook: it would read the body), Retry-After kept.
        policy = self.policy if policy is None else policy
        verdict = classify_http_response(response, None, policy.retry_statuses,
                                         policy.honor_server_signals)
        if not verdict.retryable:
            return None
        response.close()
        response._content = b""  # what was read cannot be decoded; nothing more to read
        signal = requests.HTTPError(
            f"{response.status_code} {verdict.reason} (undecodable body) for "
            f"{redact_url(request.url or '')}", request=request, response=response)
        signal.__cause__ = error
        return Outcome(verdict, value=response, signal=signal, status_code=response.status_code)

    @staticmethod
    def _deadline_outcome(
        total_s: Optional[float], request: requests.PreparedRequest,
        cause: Optional[BaseException] = None,
        response: Optional[requests.Response] = None,
    ) -> Outcome[requests.Response]:
        """The attempt cut by its deadline (``cause``: what the cut made the read raise;
        ``response``: the response whose body it cut)."""
        cut = _read_timed_out(
            request, f"attempt deadline={total_s:g}s: connect + send + headers + body",
            cause, response)
        return Outcome(classify_exception(cut), error=cut, signal=cut)

    def _guard_streamed_body(
        self, response: requests.Response, request: requests.PreparedRequest,
        policy: Optional[RetryPolicy],
    ) -> None:
        """A later failed read of ``response``'s streamed body is vetoed (marked final) as
        a failure after sending would be: an enclosing call must not repeat it."""
        replay = _NO_BODY if request.body is None else _BodyReplay(request)
        reason = veto(BODY_READ_FAILED, self._idempotent_for(policy, request),
                      replay.replayable)
        if reason is not None:
            _mark_body_failures(response.raw, reason)


class _Sending(Sending[requests.Response]):
    """One request's attempts through the adapter, as
    :func:`~requests_smartretry.engine.run_call` makes them (``sending(number)``): what
    ``send()`` worked out once, and the shared attempt state (:class:`Sending`)."""

    __slots__ = ("adapter", "asked", "cert", "closes", "policy", "pool", "proxies",
                 "replay", "request", "socket_timeout", "states", "stream", "timeouts", "url",
                 "verify")

    def __init__(self, adapter: SmartRetryAdapter, request: requests.PreparedRequest,
                 stream: bool, timeouts: _Timeouts, verify: Union[bool, str], cert: Any,
                 proxies: Optional[dict[str, str]], socket_timeout: Optional[Urllib3Timeout],
                 states: Optional[list[Retry]], policy: Optional[RetryPolicy],
                 asked: requests.PreparedRequest, url: Optional[str],
                 prepares: bool) -> None:
        self.adapter = adapter
        #: ``request``'s URL redacted (the call's), for the text of an attempt's error.
        self.url = url
        self.closes = adapter._closes  # a close() after this stops the call's retries
        #: The request as the caller sent it, before a minted idempotency key: what an
        #: enclosing call that repeats the caller's code would send again.
        self.asked = asked
        #: The call's policy when a retry_options block derived it (None: the adapter's).
        self.policy = policy
        self.request = request
        if not prepares:  # every attempt sends ``request`` as it is (no prepare_attempt)
            self.as_sent = request
        self.stream = stream
        self.timeouts = timeouts
        self.verify = verify
        self.cert = cert
        self.proxies = proxies
        self.socket_timeout = socket_timeout
        #: With a urllib3 Retry as max_retries: its state for the next attempt.
        self.states = states
        self.pool: Any = None  # the pool of the last failed response, for the retry
        if request.body is None:
            self.replay = _NO_BODY
        else:
            self.replay = _BodyReplay(request)
            if not self.replay.replayable:
                refuse_consumed_body(request)  # a redirect of a generator already sent

    def body_replayable(self) -> bool:
        return self.replay.replayable

    def __call__(self, number: int) -> Outcome[requests.Response]:
        if number > 1:
            stale = self.take_stale()
            if stale is not None:  # a retry discards the last failed response
                self.pool = getattr(stale.raw, "_pool", None)
                stale.close()
        to_send = self.begin(number)
        if to_send.__class__ is Outcome:
            return to_send
        adapter = self.adapter
        pool, self.pool = self.pool, None
        reuse = None if pool is None else _REUSE_POOL.set((adapter, to_send.url, pool))
        try:
            if self.states is None:
                # HTTPAdapter.send reads max_retries: no retries inside the attempt.
                state = _RETRY_STATE.set((adapter, _NO_RETRIES))
                try:
                    outcome = adapter._attempt(
                        to_send, self.stream, self.timeouts, self.verify, self.cert,
                        self.proxies, self.socket_timeout, self.policy,
                        # A prepare_attempt hook may send elsewhere (a backup host).
                        self.url if to_send.url == self.request.url else None)
                finally:
                    _RETRY_STATE.reset(state)
            else:
                outcome = adapter._retry_attempt(self.states, to_send, functools.partial(
                    adapter._attempt, to_send, self.stream, self.timeouts, self.verify,
                    self.cert, self.proxies, None, self.policy), self.policy)
        except BaseException:
            self.abandon()
            raise
        finally:
            if reuse is not None:
                _REUSE_POOL.reset(reuse)
        return self.end(outcome)

    def closed(self) -> bool:
        """Whether the adapter was closed since this call began (asked by the retry loop
        before each retry: the call then sends nothing more)."""
        return self.adapter._closes != self.closes

    def closed_error(self) -> BaseException:
        return AdapterClosedError(
            "this SmartRetryAdapter was closed (session.close()) before the "
            "retry; nothing more is sent", request=self.request)

    def rewind(self) -> None:
        self.replay.rewind()

    def prepare(self, number: int) -> requests.PreparedRequest:
        if self.policy is None:
            return self.adapter.prepare_attempt(self.request, number)
        return self.adapter._prepare_for(self.policy, self.request, number)

    def asked_idempotent(self) -> bool:
        return self.adapter._idempotent_for(self.policy, self.asked)

    def call_idempotent(self) -> bool:
        return self.adapter._idempotent_for(self.policy, self.request)

    def enclosing_over(self) -> Outcome[requests.Response]:
        return _enclosing_over(self.request)


def _enclosing_over(request: requests.PreparedRequest) -> Outcome[requests.Response]:
    """The outcome of a request that is not idempotent, made inside a callable-API attempt
    that is already over (abandoned at its deadline): it is not sent, and not retried."""
    error = AttemptDeadlineExceeded(
        "the enclosing execute_with_retry attempt is over (abandoned at its deadline); "
        "this request is not idempotent and was not sent", request=request)
    return Outcome(ENCLOSING_ATTEMPT_OVER, error=error, signal=error)


_BASE = SmartRetryAdapter
#: SmartRetryAdapter's own classify_response, as defined (not as patched later).
_BASE_CLASSIFY = SmartRetryAdapter.classify_response


def _prepared(policy: RetryPolicy, request: requests.PreparedRequest,
              attempt: int) -> requests.PreparedRequest:
    """``policy``'s ``prepare_attempt`` hook applied to a copy of ``request``."""
    hook = policy.prepare_attempt
    if hook is None:
        return request
    copy = request.copy()
    return hook(copy, attempt) or copy


def smart_session(
    policy: Optional[RetryPolicy] = None, **options: Unpack[SessionOptions]
) -> requests.Session:
    """A ``requests.Session`` with one :class:`SmartRetryAdapter` mounted on both schemes.

    Example::

        session = smart_session(max_retries=1, timeout=30.0, operation_name="生成艺术照")
        response = session.get("https://example.com/api")
        adapter = session.get_adapter("https://")   # adapter.policy, adapter.stats
    """
    adapter = SmartRetryAdapter(policy, **options)
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _check_pool_options(connections: Any, maxsize: Any, block: Any) -> None:
    """The connection-pool arguments, checked by name at construction (requests would
    fail at the first request, naming none of them)."""
    for name, value in (("pool_connections", connections), ("pool_maxsize", maxsize)):
        # 0 is accepted as HTTPAdapter accepts it (requests' own suite builds such pools).
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if not isinstance(block, bool):
        raise ValueError(f"pool_block must be True or False, got {block!r}")
