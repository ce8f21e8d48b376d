"""The store: breaker and budget state (and the throttle's, :mod:`.throttle`) in Redis,
one round trip per script call within each request's time budget, local state while
Redis is out."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextvars
import logging
import math
import os
import threading
import time
import uuid
import weakref
from typing import Any, Callable, Optional, TypeVar, Union

from .. import forksafe
from ..deadline import current_scope
from ..state import (
    CLOSED,
    FORCED_CLOSED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    STATE_NAMES,
    Admission,
    BreakerSettings,
    BreakerStatus,
    BudgetSettings,
    MemoryStateStore,
)
from .clients import build_client, describe_client, open_connections
from .errors import KeyFault, NoTime, RedisUnavailable, is_key_error, safe_text
from .listener import listen
from .scripts import STATE_LUA, THROTTLE_LUA, numbers
from .throttle import Pace, SharedPaces
from .urls import parse_target, shown_url

__all__ = ["RedisStateStore"]

_Reply = TypeVar("_Reply")

_log = logging.getLogger("requests_smartretry")
_monotonic = time.monotonic
_ADMIT = Admission(True)
_ADMIT_FORCED = Admission(True, 0.0, 0, FORCED_CLOSED)
_DUST = 1e-9
_WORKERS = 4  # threads per store that talk to Redis
# Seconds (at least; or this many time budgets) that every worker is busy with round trips
# waiting for them, after which a round trip that never got one is an outage: Redis answers
# slower than the process asks (a burst at a fleet's start drains well within it).
_SATURATED = 1.0
_SATURATED_BUDGETS = 10.0

# Redis work that a request's time budget cut short; the deadline, not Redis, was short.
_spent: contextvars.ContextVar[tuple[Any, float]] = contextvars.ContextVar(
    "requests_smartretry_redis_spent", default=(None, 0.0))
_stores: weakref.WeakSet[RedisStateStore] = weakref.WeakSet()


class _View:
    """This process's view of one service's shared records, and what it has not sent."""

    __slots__ = ("breaker", "budget", "deposit", "gen", "healing", "pending", "seen", "state",
                 "successes", "synced", "tokens", "tokens_at", "until", "used")

    def __init__(self) -> None:
        self.breaker: Optional[BreakerSettings] = None
        self.budget: Optional[BudgetSettings] = None
        self.state: Optional[int] = None  # as Redis said at the last round trip
        self.until = 0.0  # (shared clock) when an open breaker may probe
        self.synced = 0.0  # (monotonic) last round trip
        self.used = 0.0  # (monotonic) last use, for pruning idle services
        self.gen = self.seen = 0  # notifications received / taken into account
        # A failure of ours reached Redis since the last round trip: the next success
        # is sent at once (see breaker_record).
        self.healing = False
        self.successes: dict[int, int] = {}  # per time bucket, not sent yet
        self.pending = 0  # sum of successes
        self.deposit = 0.0  # budget deposits not sent yet (the lease)
        self.tokens: Optional[float] = None  # shared balance at the last round trip
        self.tokens_at = 0.0  # (shared clock) ... and when



class _Episode:
    """One service's keys unusable: local state until ``until``, warned once."""

    __slots__ = ("failures", "until")

    def __init__(self) -> None:
        self.failures = 0
        self.until = 0.0



class RedisStateStore(SharedPaces):
    """Breaker and budget state in Redis, shared by every process that points at it.

    Example::

        store = RedisStateStore("redis://127.0.0.1:6379/0")
        session = smart_session(breaker=CircuitBreaker(failure_threshold=5),
                                state=store)          # or state="redis://..."

    ``target`` is a URL — ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://h:p,h:p``
    or ``redis+sentinel://h:26379,h:26379/service[/db]`` — or a ``redis.Redis`` (also a
    Sentinel ``master_for`` client) or ``redis.cluster.RedisCluster`` client, whose
    connection settings are used (with ``socket_timeout`` where it sets none).  A bad URL or
    client raises at construction, naming it without its password.

    ``time_budget`` bounds all Redis work of one request (never more than the attempt's
    deadline leaves; a throttle's round trips, repeated while a turn waits, each have
    the whole budget, and a slot's release is sent even past the deadline); only a script
    that ran the whole budget unanswered makes an outage (a round trip's wait for a free
    worker, at most the budget again and never past the deadline, is not Redis' time),
    or round trips that found no free worker for a second (ten budgets if longer) on end;
    ``socket_timeout`` bounds one connection's reads in the background.
    After a failure, local state serves and one request probes Redis after
    ``retry_interval`` seconds, then after twice as long, and so on up to 30 s.  Successes
    and deposits are sent every ``sync_interval`` seconds or ``max_batch`` successes;
    views are refreshed every ``poll_interval`` while notifications are not received.  At
    most ``max_services`` idle services are remembered.  ``server_time=False`` uses the
    callers' clock instead of the Redis server's (for tests with a fake clock).

    Thread-safe; picklable (the client is rebuilt from its settings on unpickling);
    :meth:`close` (also run at exit) sends what is pending.
    """

    def __init__(
        self,
        target: Union[str, Any] = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "smartretry",
        socket_timeout: float = 0.25,
        retry_interval: float = 1.0,
        server_time: bool = True,
        time_budget: float = 0.05,
        sync_interval: float = 1.0,
        poll_interval: float = 0.05,
        max_batch: int = 1000,
        max_services: int = 4096,
    ) -> None:
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be a non-empty string without braces, got {prefix!r}")
        for name, value in (("socket_timeout", socket_timeout),
                            ("retry_interval", retry_interval), ("time_budget", time_budget),
                            ("sync_interval", sync_interval), ("poll_interval", poll_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name, count in (("max_batch", max_batch), ("max_services", max_services)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
        self.prefix = prefix
        self.socket_timeout = float(socket_timeout)
        self.retry_interval = float(retry_interval)
        self.server_time = bool(server_time)
        self.time_budget = float(time_budget)
        self.sync_interval = float(sync_interval)
        self.poll_interval = float(poll_interval)
        self.max_batch = max_batch
        self.max_services = max_services
        self._url: Optional[str] = None
        self._spec: dict[str, Any]
        if isinstance(target, str):
            self._spec = parse_target(target)
            self._url = target
            try:  # a missing package is a configuration error, not an outage to ride out
                import redis  # noqa: F401
            except ImportError:
                raise ImportError(
                    "state='redis://…' needs redis-py: pip install 'requests-smartretry[redis]'"
                ) from None
        else:
            self._spec = describe_client(target)
        self._setup()

    def _setup(self) -> None:
        self._local = MemoryStateStore()
        self._lock = forksafe.lock()
        self._probe_lock = forksafe.lock()
        self._connect_lock = forksafe.lock()
        # Operator commands (breaker_set) one at a time, and those given while Redis was
        # unreachable, written there once it is back: key -> (settings, state, the
        # command's clock reading, its monotonic time, its time on the shared clock).
        self._set_lock = forksafe.lock()
        self._unsent: dict[str, tuple[BreakerSettings, int, float, float,
                                      Optional[float]]] = {}
        self._writing_back = False
        # (monotonic) no write-back before: commands left unsent only because their keys
        # are in a bad episode wait for its end, not for the next round trip.
        self._write_back_after = 0.0
        self._client: Any = None
        self._script: Any = None
        self._throttle_script: Any = None
        self._paces: dict[str, Pace] = {}
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._connecting: Optional[concurrent.futures.Future[None]] = None
        self._connect_until = 0.0  # (monotonic) when a connection under way is too late
        self._connect_slow = False  # ... and a request already waited for it in vain
        # An outage closed or broke the pool's connections (and a Redis restarted empty
        # lost the scripts): the next round trip (a probe) opens them again first, as the
        # first connection does (see _connect_now).  _outages counts the outages.
        self._cold = False
        self._outages = 0
        self._in_flight = 0
        self._queued_since: Optional[float] = None  # (monotonic) round trips waiting for a worker
        self._down = False
        self._episode = False  # an outage warned about and not yet over (see _went_down)
        self._settles_at = 0.0
        self._next_try = 0.0
        self._failed_probes = 0
        self._views: dict[str, _View] = {}
        self._bad: dict[str, _Episode] = {}
        self._settings_args: dict[Any, str] = {}
        self._offset = 0.0  # server clock minus monotonic clock
        self._offset_known = False  # ... measured by a round trip (server_time)
        self._origin = uuid.uuid4().hex[:12]
        self._listening = False
        self._listener: Optional[threading.Thread] = None
        self._closed = False
        self._fresh = self.poll_interval
        # (monotonic) last message on the subscription (a PONG included), and last
        # admission: a subscription silent for a poll interval while the store is in use
        # may be dead without a reset (a stalled proxy, a dropped NAT entry), so views
        # are then refreshed as if not listening.
        self._heard = 0.0
        self._used = 0.0
        _stores.add(self)

    def __getstate__(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "socket_timeout": self.socket_timeout,
                "retry_interval": self.retry_interval, "server_time": self.server_time,
                "time_budget": self.time_budget, "sync_interval": self.sync_interval,
                "poll_interval": self.poll_interval, "max_batch": self.max_batch,
                "max_services": self.max_services, "url": self._url, "spec": self._spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._url = state.pop("url")
        self._spec = state.pop("spec")
        self.__dict__.update(state)
        self._setup()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where!r}, prefix={self.prefix!r})"

    @property
    def where(self) -> str:
        """Where the state lives (the URL without credentials, or the client's servers)."""
        if self._url is not None:
            return shown_url(self._url)
        spec = self._spec
        kwargs = spec["kwargs"]
        if spec["kind"] == "pool":
            if "path" in kwargs:
                return f"unix://{kwargs['path']}"
            scheme = "rediss" if "SSL" in spec["connection_class"].__name__ else "redis"
            return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/" \
                   f"{kwargs.get('db', 0)}"
        hosts = ",".join(f"{h}:{p}" for h, p in spec["hosts"])
        if spec["kind"] == "sentinel":
            return f"redis+sentinel://{hosts}/{spec['service']}/{kwargs.get('db', 0)}"
        return f"redis+cluster://{hosts}"

    @property
    def shared(self) -> bool:
        """False while Redis is unreachable and local state is in use."""
        return not self._down

    def key(self, kind: str, service: str) -> str:
        """The Redis key of ``service``'s ``kind`` (``breaker`` or ``budget``) record."""
        return f"{self.prefix}:{kind}:{{{service}}}"

    @property
    def channel(self) -> str:
        """The channel on which breaker state changes are announced."""
        return f"{self.prefix}:changes"

    # -- talking to Redis ---------------------------------------------------------------

    def _connect(self) -> Any:
        """The script object, connecting on first use (on a worker, under ``_connect_lock``)."""
        client = build_client(self._spec, self._url, self.socket_timeout)
        self._client = client
        self._throttle_script = client.register_script(THROTTLE_LUA)
        return client.register_script(STATE_LUA)

    def _allowance(self, budget: float, cumulative: bool = True,
                   deadline: bool = True) -> tuple[float, bool]:
        """Seconds this request may still spend in Redis, and whether that is less than
        the time budget: the ``deadline``, or (``cumulative``) the request's earlier Redis
        work, limits it."""
        scope = current_scope()
        left = budget
        if cumulative:
            owner, spent = _spent.get()
            if owner is scope and scope is not None and spent > 0.0:
                left = budget - spent
        remaining = None if scope is None or not deadline else scope.remaining()
        if remaining is not None and remaining < left:
            return remaining, True
        return left, left < budget

    def _charge(self, seconds: float) -> None:
        scope = current_scope()
        if scope is not None:
            owner, spent = _spent.get()
            _spent.set((scope, seconds + (spent if owner is scope else 0.0)))

    def _execute(self, args: list[Any], keys: list[str], lua: str = "state",
                 time_budget: Optional[float] = None, per_trip: bool = False,
                 deadline: bool = True) -> list[Any]:
        """Run the script within this request's time budget (or ``time_budget``; on a
        worker thread, so that a slow or dripping Redis cannot hold the request past it).
        ``per_trip``: the budget bounds this round trip alone, and is not charged to the
        request (a throttle's turn asks Redis again while it waits; its waits are bounded
        by the turn's own limit).  A round trip that overruns what the deadline or the
        request's earlier Redis work left it is :class:`NoTime`, not an outage: only
        one that overruns the whole budget says that Redis is slow.  Neither the
        connection made by this call nor the wait for a free worker is the script's
        time: a script that never got a worker is :class:`NoTime` (an outage once round
        trips have waited for one for a second on end: Redis too slow for this process's
        demand); one that started late
        has its budget from then; after this call's connection, a round trip of its own
        (``per_trip``) has the whole budget, another the rest, and overrunning it is
        :class:`NoTime`.  (On a loaded machine, the 16 threads of a process asking at
        once, just after connecting, took a fleet to local pacing with nothing wrong
        with Redis.)
        ``deadline=False``: not bounded by the request's deadline (what must reach Redis
        even after it, as the release of a slot)."""
        allowance, by_deadline = self._allowance(
            self.time_budget if time_budget is None else time_budget, not per_trip,
            deadline)
        if allowance <= 0.0:
            raise NoTime()
        started = _monotonic()
        try:
            if self._script is None or self._cold:
                self._connected_within(allowance)
                if by_deadline or not per_trip:  # the rest: the connection took its part
                    allowance -= _monotonic() - started
                    by_deadline = True
                    if allowance <= 0.0:
                        raise NoTime()
            with self._lock:
                executor = self._worker_pool()
                self._in_flight += 1
                if self._in_flight > _WORKERS and self._queued_since is None:
                    self._queued_since = started
            ran: list[float] = []  # when a worker started the script

            def run() -> Any:
                ran.append(_monotonic())
                return self._run_script(keys, args, lua)

            try:
                future = executor.submit(run)
            except RuntimeError:  # interpreter shutdown (the flush at exit): run it here
                future = concurrent.futures.Future()
                future.set_result(run())
            submitted = _monotonic()
            try:
                reply = future.result(timeout=allowance)
            except concurrent.futures.TimeoutError:
                if future.cancel():  # never started: every worker was busy
                    with self._lock:
                        self._in_flight -= 1
                        since = self._queued_since
                        self._idle_workers()
                    queued = 0.0 if since is None else _monotonic() - since
                    if queued < max(_SATURATED, _SATURATED_BUDGETS * self.time_budget):
                        raise NoTime() from None
                    # Round trips have waited for a worker all along: Redis is too slow
                    # for this process (each answered, but the turns waiting for them went
                    # at a fraction of the rate and were refused at their limit).
                    raise RedisUnavailable(
                        f"no worker free within the time budget for {queued:.1f} s (Redis "
                        "answers slower than this process asks)") from None
                if by_deadline:
                    raise NoTime() from None
                # The script started late: it has its whole budget from then (a worker
                # that took it but has not run it yet took it just now).
                # Never past the request's deadline: that is NoTime, not an outage.
                began = min(ran[0], submitted + allowance) if ran else submitted + allowance
                wait = began + allowance - _monotonic()
                scope = current_scope() if deadline else None
                remaining = None if scope is None else scope.remaining()
                try:
                    reply = future.result(timeout=max(
                        0.0, wait if remaining is None else min(wait, remaining)))
                except concurrent.futures.TimeoutError:
                    if remaining is not None and remaining < wait:
                        raise NoTime() from None
                    self._cut()
                    raise RedisUnavailable(
                        f"no answer within the time budget ({allowance * 1000:.0f} ms)"
                    ) from None
        finally:
            elapsed = _monotonic() - started
            if not per_trip:
                self._charge(elapsed)
        if self.server_time:
            try:
                self._offset = float(reply[0]) - (started + elapsed / 2.0)
                self._offset_known = True
            except (TypeError, ValueError, IndexError):
                pass
        if self._listener is None and not self._closed:
            self._start_listener()
        return reply  # type: ignore[no-any-return]

    def _worker_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """The worker threads that talk to Redis (under ``_lock``)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=_WORKERS, thread_name_prefix="requests-smartretry-redis")
        return self._executor

    def _connected_within(self, allowance: float) -> None:
        """Wait up to ``allowance`` seconds for the connection (TCP, AUTH, a PING: several
        round trips, made once, on a worker).  A connection still under way is not yet an
        outage: this operation goes local (:class:`NoTime`) and the worker goes on; one
        that takes longer than ``socket_timeout`` (or the time budget if longer) in all is
        (:class:`RedisUnavailable`), as
        is its failure, reported to the request that next asks.  So a silent Redis
        (SIGSTOP, a black-holed port) costs the first requests the time budget, as it costs
        every later one, never the socket timeout."""
        started = None
        with self._lock:
            future = self._connecting
            # (One that went through is an earlier connection's, that no request waited
            # for to its end: this request needs the connection opened again.)
            if future is None or (future.done() and not future.cancelled()
                                  and future.exception() is None):
                future = started = self._connecting = self._worker_pool().submit(
                    self._connect_now)
                self._connect_until = _monotonic() + max(self.socket_timeout,
                                                         self.time_budget)
                self._connect_slow = False
            left = self._connect_until - _monotonic()
            # Once one request waited its whole budget in vain, the others (and the rest
            # of that request: without a deadline it has no scope to charge) do not wait.
            wait = max(0.0, min(0.0 if self._connect_slow else allowance, left))
        if started is not None:  # (outside the lock: a done future calls back at once)
            started.add_done_callback(self._connect_failed)
        try:
            future.result(timeout=wait)
        except concurrent.futures.TimeoutError:
            with self._lock:  # (once Redis answered, the rest has a time of its own)
                over = _monotonic() >= self._connect_until
            if wait < left or not over:
                self._connect_slow = True
                raise NoTime() from None
            with self._lock:
                if self._connecting is future:
                    self._connecting = None
            self._cut()
            raise RedisUnavailable(
                "no connection within the socket timeout "
                f"({max(self.socket_timeout, self.time_budget) * 1000:.0f} ms)") from None
        except BaseException:
            with self._lock:
                if self._connecting is future:
                    self._connecting = None  # the next request connects afresh
            raise
        with self._lock:
            if self._connecting is future:
                self._connecting = None

    def _connect_failed(self, future: concurrent.futures.Future[None]) -> None:
        """A connection that failed while no request waited for it: Redis is out now,
        not at the next request (the worker's thread; a waiting request reports it)."""
        if future.cancelled() or future.exception() is None:
            return
        with self._lock:
            if self._connecting is not future or self._connect_slow is False:
                return
            self._connecting = None
        exc = future.exception()
        assert exc is not None
        self._went_down(exc, self._down)

    def _connect_now(self) -> None:
        """Connect (or, back from an outage, open the same client's connections again):
        a PING, then every worker's connection and both scripts (:meth:`_warm_up`)."""
        with self._connect_lock:
            with self._lock:
                outages = self._outages
            if self._script is not None and not self._cold:
                return
            script = self._connect() if self._script is None else self._script
            self._client.ping()
            # Every worker's connection and both scripts now, while requests wait for
            # the connection (NoTime): made by the workers' first scripts, they cost
            # those scripts their time budget on a busy process (a handshake and a
            # NOSCRIPT miss took 70-110 ms beside 16 threads), an outage for nothing.
            self._warm_up(self._client, script)
            with self._lock:
                if self._outages == outages:  # (not down again meanwhile)
                    self._cold = False
            self._script = script

    def _warm_up(self, client: Any, script: Any) -> None:
        """Open the workers' connections (and the listener's: the pub/sub listener takes
        one from the same pool) and load both scripts.
        Best effort: Redis answered, so a refusal here ("max number of clients reached",
        a pool's max_connections, no SCRIPT permission) is no outage: the workers share
        the connections opened (and a script loads itself when first run), as they did
        before.  Silence is one (raised): Redis stopped answering (SIGSTOP, a black hole)
        as an unanswered PING would.  Redis answered the PING, and each connection, each
        script, has the socket timeout from the step before (the connection's bound,
        ``_connect_until``, renewed): in all, five handshakes on a busy process (70-110 ms
        each) overran the default 0.25 s, an outage at start."""
        def answered() -> None:  # each step has the socket timeout, not the whole
            with self._lock:     # (five handshakes of 0.1 s are no silent Redis)
                self._connect_until = _monotonic() + max(self.socket_timeout,
                                                         self.time_budget)

        answered()  # (the PING)
        try:
            open_connections(client, _WORKERS + 1, answered)
            for lua in (script, self._throttle_script):
                client.script_load(lua.script)
                answered()
        except Exception as exc:
            if _timed_out(exc):
                raise
            _log.debug("requests_smartretry: Redis state store %s: connections not opened "
                       "ahead (%s: %s)", self.where, type(exc).__name__,
                       safe_text(exc, self._url))

    def _run_script(self, keys: list[str], args: list[Any], lua: str = "state") -> Any:
        # Connecting happens here too, on the worker: a Cluster client asks its startup
        # nodes for the slot map at construction, one socket timeout per silent node.
        try:
            with self._connect_lock:
                if self._script is None:
                    self._script = self._connect()
                script = self._script if lua == "state" else self._throttle_script
            return script(keys=keys, args=args)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._idle_workers()

    def _idle_workers(self) -> None:
        """(Under ``_lock``) no round trip waits for a worker any more."""
        if self._in_flight <= _WORKERS:
            self._queued_since = None

    def _cut(self) -> None:
        """Disconnect every connection, so that a worker blocked in a read returns."""
        client = self._client
        try:
            if hasattr(client, "disconnect_connection_pools"):
                client.disconnect_connection_pools()
            elif client is not None:
                client.connection_pool.disconnect()
        except Exception:  # best effort: the socket timeout frees the worker anyway
            pass

    def _start_listener(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            thread = threading.Thread(target=listen, args=(weakref.ref(self),),
                                      name="requests-smartretry-redis-listener", daemon=True)
            self._listener = thread
        thread.start()

    def _notified(self, message: str) -> None:
        origin, _, service = message.partition(" ")
        if origin == self._origin:
            return
        view = self._views.get(service)
        if view is not None:
            view.gen += 1

    def _set_listening(self, listening: bool) -> None:
        self._listening = listening
        self._fresh = self.sync_interval if listening else self.poll_interval
        if listening:  # notifications may have been missed meanwhile
            for view in list(self._views.values()):
                view.gen += 1

    # -- outages -------------------------------------------------------------------------

    def _went_down(self, exc: BaseException, probing: bool) -> None:
        with self._lock:
            # An outage episode lasts from the first failure until Redis has worked again
            # for a while (see _came_back): a failure inside it — a probe's, or a write
            # refused after a read-only probe went through (OOM with noeviction, READONLY)
            # — backs off further and warns no more.
            self._cold = True
            self._outages += 1
            if probing or (self._episode and not self._down):
                self._failed_probes += 1
            # A Redis that stays out is probed less and less often (up to every 30 s, or
            # retry_interval if longer): each probe of a silent Redis costs one request up
            # to the time budget.
            self._next_try = _monotonic() + self._backoff()
            self._keep_forced(self._views)
            self._views = {}
            if self._down:
                return
            self._down = True
            if self._episode:
                return
            self._episode = True
        _log.warning(
            "requests_smartretry: Redis state store %s unavailable (%s: %s); breaker and "
            "budget use local state until it is back (a throttle paces locally at its "
            "share: rate / processes last seen)", self.where, type(exc).__name__,
            safe_text(exc, self._url), extra={"redis_state": self.where,
                                          "redis_error": type(exc).__name__},
        )

    def _keep_forced(self, views: dict[str, _View]) -> None:
        """Redis is out: an operator's forced state this process last saw there holds in
        local state meanwhile (a breaker forced open for a vendor incident must not let
        the traffic through because Redis hiccuped); one that Redis no longer had is
        lifted here too.  (Under ``_lock``; the local store never calls back.)"""
        now = _monotonic()
        for service, view in views.items():
            settings, state = view.breaker, view.state
            if settings is None or state is None:
                continue
            if state in (FORCED_OPEN, FORCED_CLOSED):
                self._local.breaker_set(service, settings, now, state)
            elif self._local.breaker_status(service, settings, now).state \
                    in (STATE_NAMES[FORCED_OPEN], STATE_NAMES[FORCED_CLOSED]):
                self._local.breaker_set(service, settings, now, CLOSED)

    def _backoff(self) -> float:
        wait = self.retry_interval * 2.0 ** min(self._failed_probes, 16)
        return min(wait, max(self.retry_interval, 30.0))

    def _came_back(self) -> None:
        """A probe went through: share state again, but keep the episode (and its backoff)
        open until Redis has kept working for as long as it was last out (at least one
        ``sync_interval``, so that a batch of writes has been tried): a probe that only
        read proves nothing about writes."""
        with self._lock:
            if not self._down:
                return
            self._down = False
            self._settles_at = _monotonic() + max(self.sync_interval, self._backoff())

    def _settled(self) -> None:
        """Redis has worked since the episode's last probe for long enough: it is over."""
        with self._lock:
            if not self._episode or self._down or _monotonic() < self._settles_at:
                return
            self._episode = False
            self._failed_probes = 0
        _log.info("requests_smartretry: Redis state store %s reachable again; sharing "
                  "breaker and budget state", self.where, extra={"redis_state": self.where})

    def _key_failed(self, service: str, exc: BaseException) -> None:
        with self._lock:
            self._views.pop(service, None)
            episode = self._bad.get(service)
            first = episode is None
            if episode is None:
                episode = self._bad[service] = _Episode()
            wait = self.retry_interval * 2.0 ** min(episode.failures, 16)
            episode.failures += 1
            episode.until = _monotonic() + min(wait, max(self.retry_interval, 30.0))
        if first:
            hint = " (a cluster node: use a redis+cluster:// URL or a RedisCluster client)" \
                if "MOVED" in str(exc) else ""
            _log.warning(
                "requests_smartretry: Redis state store %s: the keys of service %s are "
                "unusable (%s: %s)%s; that service uses local state until they are",
                self.where, service, type(exc).__name__, safe_text(exc, self._url), hint,
                extra={"redis_state": self.where, "redis_error": type(exc).__name__,
                       "service": service})

    def _round_trip(self, service: str, op: str, now: float, *,
                    breaker: Optional[BreakerSettings], budget: Optional[BudgetSettings],
                    view: Optional[_View], failed: bool = False, weight: float = 1.0,
                    ticket: int = 0, deposit: float = 0.0, spend: float = 0.0,
                    time_budget: Optional[float] = None, given: Optional[float] = None,
                    ) -> Optional[list[Optional[float]]]:
        """One script call for ``service`` (sending what ``view`` has pending), or ``None``
        when local state must serve this operation."""
        successes: dict[int, int] = {}
        seen: Optional[int] = None
        if self._skip(service):
            return None
        if view is not None:
            with self._lock:
                successes, view.successes, view.pending = view.successes, {}, 0
                deposit += view.deposit
                view.deposit = 0.0
                seen = view.gen
            # What is pending travels with this round trip, whatever it is for.
            if breaker is None and successes:
                breaker = view.breaker
            if budget is None and deposit > 0.0:
                budget = view.budget
        args = [op, "" if self.server_time else repr(float(now)),
                self._static(breaker), ";".join(f"{b}:{n}" for b, n in
                                                sorted(successes.items())),
                "1" if failed else "0", repr(float(weight)), ticket,
                self._static(budget), repr(float(deposit)), repr(float(spend)),
                self.channel, f"{self._origin} {service}",
                "" if given is None else repr(float(given))]
        reply = self._guarded(service, lambda: numbers(self._execute(
            args, [self.key("breaker", service), self.key("budget", service)],
            time_budget=time_budget)))
        if reply is None:
            return None
        mono = _monotonic()
        if view is None:
            view = self._view(service)
        self._update(view, reply, mono, view.gen if seen is None else seen, breaker, budget)
        return reply

    def _skip(self, service: str) -> bool:
        """Whether ``service`` must use local state now without asking Redis (its keys
        are in a bad episode, or Redis is down and this is no time to probe)."""
        episode = self._bad.get(service)
        if episode is not None and _monotonic() < episode.until:
            return True
        return self._down and (_monotonic() < self._next_try or self._in_flight > 0)

    def _unusable(self, service: str) -> bool:
        """Whether Redis cannot serve ``service`` now: it is out, or the service's keys
        are in a bad episode (not merely: this request had no time left for it)."""
        episode = self._bad.get(service)
        return self._down or (episode is not None and _monotonic() < episode.until)

    def _guarded(self, service: str, call: Callable[[], _Reply]) -> Optional[_Reply]:
        """``call()`` (a script call for ``service``), or ``None`` when local state must
        serve: a bad key episode, Redis down (one request now and then probes it), no
        time left, or a failure now (which starts an outage or a key episode)."""
        episode = self._bad.get(service)
        if episode is not None and _monotonic() < episode.until:
            return None
        probing = False
        if self._down:
            if _monotonic() < self._next_try or self._in_flight \
                    or not self._probe_lock.acquire(blocking=False):
                return None
            probing = True
        try:
            try:
                reply = call()
            except NoTime:
                return None
            except KeyFault as exc:
                self._key_failed(service, exc)
                return None
            except Exception as exc:  # down, slow, garbage: never the request's problem
                if is_key_error(exc):
                    self._key_failed(service, exc)
                else:
                    self._went_down(exc, probing)
                return None
            if probing:
                self._came_back()
            elif self._episode:
                self._settled()
            if self._unsent and not self._writing_back \
                    and _monotonic() >= self._write_back_after:
                self._start_write_back()
            if episode is not None:
                with self._lock:
                    self._bad.pop(service, None)
                _log.info("requests_smartretry: Redis state store %s: the keys of service "
                          "%s are usable again", self.where, service,
                          extra={"redis_state": self.where, "service": service})
            return reply
        finally:
            if probing:
                self._probe_lock.release()

    def _static(self, settings: Union[BreakerSettings, BudgetSettings, None]) -> str:
        if settings is None:
            return ""
        text = self._settings_args.get(settings)
        if text is None:
            if isinstance(settings, BreakerSettings):
                s = settings
                values: list[Any] = [s.failure_threshold, s.recovery_timeout,
                                     s.half_open_probes, s.failure_rate, s.window,
                                     s.minimum_requests, s.buckets, int(s.ttl * 1000)]
            else:
                values = [settings.max_tokens, settings.min_per_second,
                          int(settings.ttl * 1000)]
            text = ",".join(repr(float(v)) if isinstance(v, float) else str(v)
                            for v in values)
            self._settings_args[settings] = text
        return text

    def _view(self, service: str) -> _View:
        view = self._views.get(service)
        if view is None:
            with self._lock:
                view = self._views.get(service)
                if view is None:
                    if len(self._views) >= self.max_services:
                        self._prune()
                    view = self._views[service] = _View()
        return view

    def _prune(self) -> None:
        """Forget the idlest half of the services (under ``_lock``)."""
        idle = sorted(self._views.items(), key=lambda item: item[1].used)
        for service, _ in idle[: len(idle) // 2 + 1]:
            del self._views[service]

    def _update(self, view: _View, reply: list[Optional[float]], mono: float, seen: int,
                breaker: Optional[BreakerSettings], budget: Optional[BudgetSettings]) -> None:
        now = reply[0]
        assert now is not None
        view.synced = view.used = mono
        if breaker is not None and reply[1] is not None:
            view.breaker = breaker
            view.state = int(reply[1])
            opened = reply[2] or 0.0
            view.until = opened + breaker.recovery_timeout
        view.seen = seen
        if budget is not None and reply[13] is not None:
            view.budget = budget
            view.tokens = reply[13]
            view.tokens_at = now

    def _time(self, now: float) -> float:
        """The shared clock's reading: the server's (estimated locally), or the caller's."""
        return _monotonic() + self._offset if self.server_time else now

    # -- the StateStore protocol ---------------------------------------------------------

    def breaker_admit(self, key: str, settings: BreakerSettings, now: float) -> Admission:
        """Decide whether an attempt on ``key`` may go out (and take a probe slot)."""
        view = self._views.get(key)
        if view is not None and view.gen == view.seen \
                and (view.breaker is settings or view.breaker == settings):
            mono = _monotonic()
            self._used = mono
            fresh = self._fresh if mono - self._heard < self.poll_interval \
                else self.poll_interval
            if mono - view.synced < fresh:
                if view.state == CLOSED:
                    view.used = mono
                    return _ADMIT
                if view.state == OPEN:
                    shared_now = self._time(now)
                    if shared_now < view.until:
                        return Admission(False, view.until - shared_now, 0, OPEN)
                elif view.state == FORCED_OPEN:
                    return Admission(False, settings.recovery_timeout, 0, FORCED_OPEN)
                elif view.state == FORCED_CLOSED:
                    return _ADMIT_FORCED
        reply = self._round_trip(key, "admit", now, breaker=settings, budget=None,
                                 view=self._view(key) if not self._down else None)
        if reply is None:
            return self._local.breaker_admit(key, settings, now)
        return Admission(reply[8] == 1.0, reply[9] or 0.0, int(reply[10] or 0),
                         int(reply[1] or 0))

    def breaker_record(
        self, key: str, settings: BreakerSettings, now: float, *, failed: bool,
        weight: float, ticket: int,
    ) -> str:
        """Record an attempt's result; returns the state name afterwards."""
        view = self._views.get(key)
        if view is not None and view.gen == view.seen \
                and (view.breaker is settings or view.breaker == settings):
            if view.state == OPEN or view.state == FORCED_OPEN or view.state == FORCED_CLOSED:
                return STATE_NAMES[view.state]  # Redis would ignore it too
            if view.state == CLOSED and not failed and not ticket:
                bucket = math.floor(self._time(now) / (settings.window / settings.buckets))
                with self._lock:
                    view.successes[bucket] = view.successes.get(bucket, 0) + 1
                    view.pending += 1
                    pending = view.pending
                mono = _monotonic()
                view.used = mono
                # A success right after a failure of ours that reached Redis goes at once
                # (the slow path already): batched, it would leave that failure counting
                # toward the consecutive rule for a sync interval, where one process
                # would have reset it.  Every other success waits for the batch.
                if pending < self.max_batch and mono - view.synced < self.sync_interval \
                        and not view.healing:
                    return "closed"
                view.healing = False
                reply = self._round_trip(key, "sync", now, breaker=settings,
                                         budget=view.budget, view=view)
                return "closed" if reply is None else STATE_NAMES[int(reply[1] or 0)]
        view = self._view(key) if not self._down else None
        reply = self._round_trip(key, "record", now, breaker=settings, budget=None,
                                 view=view, failed=failed, weight=weight, ticket=ticket)
        if reply is None:
            return self._local.breaker_record(key, settings, now, failed=failed,
                                              weight=weight, ticket=ticket)
        if view is not None:
            view.healing = failed
        return STATE_NAMES[int(reply[11] or 0)]

    def breaker_status(self, key: str, settings: BreakerSettings, now: float) -> BreakerStatus:
        """The current state of ``key``'s breaker (sending what is pending first)."""
        view = self._views.get(key)
        reply = self._round_trip(key, "status", now, breaker=settings,
                                 budget=view.budget if view is not None else None, view=view)
        if reply is None:
            return self._local.breaker_status(key, settings, now)
        st, opened, _, pin, cf, failures, requests = (v or 0.0 for v in reply[1:8])
        shared_now = reply[0] or 0.0
        state, retry_in = int(st), 0.0
        if state == OPEN:
            retry_in = max(0.0, opened + settings.recovery_timeout - shared_now)
            if retry_in == 0.0:
                state = HALF_OPEN
        elif state == FORCED_OPEN:
            retry_in = settings.recovery_timeout
        elif state == HALF_OPEN and pin >= settings.half_open_probes:
            retry_in = max(0.0, opened + settings.recovery_timeout - shared_now)
        return BreakerStatus(STATE_NAMES[state], cf, failures, requests, retry_in)

    def breaker_set(self, key: str, settings: BreakerSettings, now: float, state: int) -> str:
        """An operator's transition in Redis, announced to every process (while Redis is
        unreachable, in this process's local state only, with a WARNING); returns the state
        name before.  No request waits for it, so it may take up to the socket timeout
        (a first connection included) rather than a request's time budget."""
        # When given on the shared clock (an unsent command loses to any given after
        # it); unknown before any round trip measured the server's clock: then it is
        # taken as given when written.
        given = self._time(now) if self._offset_known or not self.server_time else None
        with self._set_lock:
            reply = self._round_trip(key, "set", now, breaker=settings, budget=None,
                                     view=self._view(key) if not self._down else None,
                                     ticket=state,
                                     time_budget=max(self.time_budget, self.socket_timeout))
            with self._lock:
                if reply is None:
                    self._unsent[key] = (settings, state, now, _monotonic(), given)
                else:  # a command that reached Redis supersedes one still unsent
                    self._unsent.pop(key, None)
        if reply is None:
            _log.warning(
                "requests_smartretry: Redis state store %s unreachable: breaker of %s set "
                "to %s in this process only until Redis is back (then written there, for "
                "every process)", self.where, key, STATE_NAMES[state],
                extra={"redis_state": self.where, "service": key})
            return self._local.breaker_set(key, settings, now, state)
        return STATE_NAMES[int(reply[11] or 0)]

    def _start_write_back(self) -> None:
        with self._lock:
            if self._writing_back or not self._unsent:
                return
            self._writing_back = True
        threading.Thread(target=self._write_back, daemon=True,
                         name="requests-smartretry-redis-write-back").start()

    def _write_back(self) -> None:
        """Redis answers again: write the operator commands given while it could not be
        reached (the last one per service), so that the whole fleet follows them.  A
        command given since, which reached Redis, superseded them.  Stops when Redis is
        down again (the next successful round trip starts it again); a command whose keys
        are unusable now (a key episode) stays unsent without holding back the others,
        and is tried again once that episode may be over."""
        retry_at = 0.0
        try:
            with self._lock:
                keys = list(self._unsent)
            for key in keys:
                with self._set_lock:
                    with self._lock:
                        unsent = self._unsent.get(key)
                    if unsent is None:  # superseded by a command that reached Redis
                        continue
                    settings, state, then, mono, given = unsent
                    reply = self._round_trip(
                        key, "set", then + (_monotonic() - mono), breaker=settings,
                        budget=None, view=None, ticket=state, given=given,
                        time_budget=max(self.time_budget, self.socket_timeout))
                    if reply is None:
                        if self._down:  # the next successful round trip starts over
                            retry_at = 0.0
                            return
                        episode = self._bad.get(key)
                        later = episode.until if episode is not None \
                            else _monotonic() + self.retry_interval
                        retry_at = later if retry_at == 0.0 else min(retry_at, later)
                        continue
                    with self._lock:
                        if self._unsent.get(key) is unsent:
                            del self._unsent[key]
                if int(reply[1] or 0) != state:  # a later command reached Redis first
                    _log.info("requests_smartretry: Redis state store %s: breaker of %s set "
                              "to %s while Redis was unreachable, superseded there by a "
                              "later command", self.where, key, STATE_NAMES[state],
                              extra={"redis_state": self.where, "service": key})
                    continue
                _log.info("requests_smartretry: Redis state store %s: breaker of %s set to "
                          "%s while Redis was unreachable, now written there",
                          self.where, key, STATE_NAMES[state],
                          extra={"redis_state": self.where, "service": key})
        finally:
            with self._lock:
                self._write_back_after = retry_at
                self._writing_back = False

    def budget_change(
        self, key: str, settings: BudgetSettings, now: float, deposit: float, spend: float
    ) -> tuple[bool, float]:
        """Deposit, then spend if covered; returns (spent, balance afterwards).  Deposits
        gather locally (sent with the next round trip); a spend that they cover is paid
        from them without one."""
        view = self._views.get(key)
        # (Notifications concern breakers: a budget view does not wait for them.)
        if view is not None and view.tokens is not None \
                and (view.budget is settings or view.budget == settings):
            shared_now = self._time(now)
            with self._lock:
                refilled = min(settings.max_tokens, view.tokens + settings.min_per_second
                               * max(0.0, shared_now - view.tokens_at))
                local = view.deposit + deposit
                uncapped = refilled + local <= settings.max_tokens
                if spend <= 0.0 and deposit > 0.0:
                    view.deposit = local
                    if _monotonic() - view.synced < self.sync_interval:
                        return True, min(settings.max_tokens, refilled + local)
                elif spend > 0.0 and uncapped and local >= spend - _DUST \
                        and refilled + local >= spend - _DUST:  # (refilled < 0: a debt)
                    view.deposit = max(0.0, local - spend)
                    return True, refilled + view.deposit
                else:
                    view.deposit = local
            deposit = 0.0  # now part of the view's pending deposit
        reply = self._round_trip(key, "spend", now, breaker=None, budget=settings,
                                 deposit=deposit, spend=spend,
                                 view=self._view(key) if not self._down else None)
        if reply is None:
            return self._local.budget_change(key, settings, now, deposit, spend)
        return reply[12] == 1.0, reply[13] or 0.0

    def flush(self) -> None:
        """Send every service's pending successes and deposits now."""
        for service, view in list(self._views.items()):
            if view.pending or view.deposit:
                self._round_trip(service, "sync", 0.0, breaker=view.breaker,
                                 budget=view.budget, view=view)

    def close(self) -> None:
        """Send what is pending, stop listening and disconnect (the store reconnects if
        used again)."""
        if self._client is not None and not self._down:
            self.flush()
        with self._lock:
            client, self._client, self._script = self._client, None, None
            executor, self._executor = self._executor, None
            self._connecting = None
            self._closed = True
            self._listener = None
        if executor is not None:
            executor.shutdown(wait=False)
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
        self._closed = False



def _timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is a read or a connection that timed out (Redis silent)."""
    from redis.exceptions import TimeoutError as RedisTimeout

    return isinstance(exc, (RedisTimeout, TimeoutError))


def _after_fork_in_child() -> None:
    # The parent's threads, connections and unsent counts are not this process's.  An
    # operator command the parent holds while Redis is out holds in the child too: the
    # parent writes it to Redis, and the child follows Redis once it answers.
    for store in list(_stores):
        unsent = list(store._unsent.items())
        store._setup()
        for key, (settings, state, then, mono, _given) in unsent:
            store._local.breaker_set(key, settings, then + (_monotonic() - mono), state)


def _at_exit() -> None:
    for store in list(_stores):
        try:
            if store._client is not None and not store._down:
                store.flush()
        except Exception:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
