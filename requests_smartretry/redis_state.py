"""A state store in Redis: one breaker and one budget per service for a whole fleet.

Every update is one server-side Lua script (one round trip, atomic across processes and
hosts, timed by the Redis server's clock); keys are namespaced (``smartretry:breaker:<service>``)
and expire when idle.  Redis down, slow or answering garbage never fails or hangs a
request: the store switches to local state within its short socket timeout, logs one
warning per outage, and goes back to Redis when a probe (one request now and then,
backing off while Redis stays out) finds it reachable again.

Needs the ``redis`` extra (``pip install requests-smartretry[redis]``); redis-py is
imported only when the store first talks to Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, TypeVar, Union
from urllib.parse import urlsplit, urlunsplit

from .state import (
    STATE_NAMES,
    Admission,
    BreakerSettings,
    BreakerStatus,
    BudgetSettings,
    MemoryStateStore,
)

__all__ = ["RedisStateStore"]

_log = logging.getLogger("requests_smartretry")
T = TypeVar("T")

# Shared by both scripts: the caller's time if it sent one, else the Redis server's clock
# (so that hosts with skewed clocks agree).  TIME is non-deterministic, hence
# replicate_commands on Redis < 5.
_SERVER_TIME = """if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# The Lua transcription of state.breaker_admit / breaker_record / breaker_status.  Times
# are written with %.17g so that a round trip through the hash loses no precision.
_BREAKER_LUA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local key = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])
""" + _SERVER_TIME + """\
local threshold = tonumber(ARGV[3])
local recovery = tonumber(ARGV[4])
local probes = tonumber(ARGV[5])
local rate = tonumber(ARGV[6])
local window = tonumber(ARGV[7])
local minreq = tonumber(ARGV[8])
local buckets = tonumber(ARGV[9])
local ttl = tonumber(ARGV[10])

local r = {}
if op == 'admit' then  -- the hot path reads only the fields it needs
  local names = {'st', 't', 'rnd', 'pin'}
  local values = redis.call('HMGET', key, unpack(names))
  for i = 1, #names do r[names[i]] = tonumber(values[i]) end
else
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do r[flat[i]] = tonumber(flat[i + 1]) end
end
-- Only the fields that changed are written back (all of them after a reset).
local dirty = {}
local wiped = false
local function get(name) return r[name] or 0 end
local function set(name, value) r[name] = value; dirty[name] = true end
local function fmt(x) return string.format('%.17g', x) end
local function start_round()
  set('st', 2); set('t', now); set('rnd', get('rnd') + 1); set('pin', 0); set('pok', 0)
end
local function reset(state)
  local kept = get('rnd')
  r = {}
  dirty = {}
  wiped = true
  set('st', state); set('t', now); set('rnd', kept); set('cf', 0)
end
local function save()
  local args = {}
  for k, _ in pairs(dirty) do
    args[#args + 1] = k
    args[#args + 1] = fmt(r[k])
  end
  if #args == 0 then return end
  if wiped then redis.call('DEL', key) end
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, ttl)
end
local function bucket() return math.floor(now / (window / buckets)) end
local function window_totals()
  local current = bucket()
  local failures, requests = 0, 0
  for slot = 0, buckets - 1 do
    local stamp = r['b' .. slot]
    if stamp ~= nil and current - buckets < stamp and stamp <= current then
      failures = failures + get('f' .. slot)
      requests = requests + get('f' .. slot) + get('s' .. slot)
    end
  end
  return failures, requests
end

if op == 'admit' then
  local state = get('st')
  if state == 1 then
    if now - get('t') < recovery then
      return {'0', fmt(get('t') + recovery - now), '0'}
    end
    start_round()
  elseif state == 2 and now - get('t') >= recovery then
    start_round()
  end
  local result = {'1', '0', '0'}
  if get('st') == 2 then
    if get('pin') < probes then
      set('pin', get('pin') + 1)
      result = {'1', '0', fmt(get('rnd'))}
    else
      result = {'0', fmt(get('t') + recovery - now), '0'}
    end
  end
  save()
  return result
elseif op == 'record' then
  local failed = ARGV[11] == '1'
  local weight = tonumber(ARGV[12])
  local ticket = tonumber(ARGV[13])
  local state = get('st')
  if state == 2 then
    if ticket ~= get('rnd') then return {'2'} end
    if failed then reset(1); save(); return {'1'} end
    set('pok', get('pok') + 1)
    if get('pok') >= probes then reset(0); save(); return {'0'} end
    save()
    return {'2'}
  end
  if state == 1 then return {'1'} end
  local current = bucket()
  local slot = current % buckets
  if r['b' .. slot] ~= current then
    set('b' .. slot, current); set('s' .. slot, 0); set('f' .. slot, 0)
  end
  if failed then
    set('f' .. slot, get('f' .. slot) + weight)
    set('cf', get('cf') + weight)
  else
    set('s' .. slot, get('s' .. slot) + 1)
    if get('cf') ~= 0 then set('cf', 0) end
  end
  local trip = threshold > 0 and get('cf') >= threshold
  if not trip and failed and rate > 0 then
    local failures, requests = window_totals()
    trip = requests >= minreq and failures >= rate * requests
  end
  if trip then reset(1); save(); return {'1'} end
  save()
  return {'0'}
elseif op == 'status' then
  local state = get('st')
  local retry_in = 0
  if state == 1 then
    retry_in = math.max(0, get('t') + recovery - now)
    if retry_in == 0 then state = 2 end
  elseif state == 2 and get('pin') >= probes then
    retry_in = math.max(0, get('t') + recovery - now)
  end
  local failures, requests = window_totals()
  return {fmt(state), fmt(get('cf')), fmt(failures), fmt(requests), fmt(retry_in)}
end
return redis.error_reply('unknown breaker op ' .. tostring(op))
"""

# The Lua transcription of state.budget_change.
_BUDGET_LUA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local key = KEYS[1]
local now = tonumber(ARGV[1])
""" + _SERVER_TIME + """\
local max_tokens = tonumber(ARGV[2])
local per_second = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local deposit = tonumber(ARGV[5])
local spend = tonumber(ARGV[6])
local saved = redis.call('HMGET', key, 'tok', 'ts')
local tokens = max_tokens
local tok, ts = tonumber(saved[1]), tonumber(saved[2])
if tok and ts then
  tokens = math.min(max_tokens, tok + per_second * math.max(0, now - ts))
end
tokens = math.min(max_tokens, tokens + deposit)
local spent = tokens >= spend - 1e-9
if spent then tokens = math.max(0, tokens - spend) end
redis.call('HSET', key, 'tok', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
redis.call('PEXPIRE', key, ttl)
if spent then return {'1', string.format('%.17g', tokens)} end
return {'0', string.format('%.17g', tokens)}
"""


class RedisUnavailable(Exception):
    """Redis answered with something that is not what the script returns."""


class RedisStateStore:
    """Breaker and budget state in Redis, shared by every process that points at it.

    Example::

        store = RedisStateStore("redis://127.0.0.1:6379/0")
        session = smart_session(breaker=CircuitBreaker(failure_threshold=5),
                                state=store)          # or state="redis://..."

    ``target`` is a ``redis://`` / ``rediss://`` / ``unix://`` URL or a ``redis.Redis``
    client (its connection settings are used, with ``socket_timeout`` where it sets none).
    ``prefix`` namespaces the keys.  ``socket_timeout`` bounds what one Redis round trip
    may add to a request; after a failure, local state serves and one request probes
    Redis after ``retry_interval`` seconds, then after twice as long, and so on up to
    30 s, until Redis answers again.  ``server_time=False``
    uses the callers' clock instead of the Redis server's (for tests with a fake clock).

    Thread-safe; picklable (the client is rebuilt from its settings on unpickling).
    """

    def __init__(
        self,
        target: Union[str, Any] = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "smartretry",
        socket_timeout: float = 0.25,
        retry_interval: float = 1.0,
        server_time: bool = True,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
        for name, value in (("socket_timeout", socket_timeout),
                            ("retry_interval", retry_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.prefix = prefix
        self.socket_timeout = float(socket_timeout)
        self.retry_interval = float(retry_interval)
        self.server_time = bool(server_time)
        self._url: Optional[str] = None
        self._connection: Optional[tuple[Any, dict[str, Any]]] = None
        if isinstance(target, str):
            if not target.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(
                    f"target must be a redis://, rediss:// or unix:// URL, got {target!r}"
                )
            self._url = target
            try:  # a missing package is a configuration error, not an outage to ride out
                import redis  # noqa: F401
            except ImportError:
                raise ImportError(
                    "state='redis://…' needs redis-py: pip install 'requests-smartretry[redis]'"
                ) from None
        elif hasattr(target, "connection_pool"):
            pool = target.connection_pool
            self._connection = (pool.connection_class, dict(pool.connection_kwargs))
        else:
            raise TypeError(f"target must be a Redis URL or a redis.Redis client, got {target!r}")
        self._setup()

    def _setup(self) -> None:
        self._local = MemoryStateStore()
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._client: Any = None
        self._scripts: Optional[tuple[Any, Any]] = None
        self._down = False
        self._next_try = 0.0
        self._failed_probes = 0
        self._settings_args: dict[BreakerSettings, list[Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "socket_timeout": self.socket_timeout,
                "retry_interval": self.retry_interval, "server_time": self.server_time,
                "url": self._url, "connection": self._connection}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.prefix = state["prefix"]
        self.socket_timeout = state["socket_timeout"]
        self.retry_interval = state["retry_interval"]
        self.server_time = state["server_time"]
        self._url = state["url"]
        self._connection = state["connection"]
        self._setup()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where!r}, prefix={self.prefix!r})"

    @property
    def where(self) -> str:
        """Where the state lives (the URL without credentials, or host:port/db)."""
        if self._url is not None:
            parts = urlsplit(self._url)
            netloc = parts.netloc.rsplit("@", 1)[-1]
            return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        assert self._connection is not None
        kwargs = self._connection[1]
        if "path" in kwargs:
            return f"unix://{kwargs['path']}"
        return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/" \
               f"{kwargs.get('db', 0)}"

    @property
    def shared(self) -> bool:
        """False while Redis is unreachable and local state is in use."""
        return not self._down

    def key(self, kind: str, service: str) -> str:
        """The Redis key of ``service``'s ``kind`` (``breaker`` or ``budget``) record."""
        return f"{self.prefix}:{kind}:{service}"

    # -- talking to Redis ---------------------------------------------------------------

    def _redis(self) -> tuple[Any, Any]:
        """The (breaker, budget) script objects, connecting on first use."""
        scripts = self._scripts
        if scripts is not None:
            return scripts
        with self._lock:
            if self._scripts is None:
                import redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                # Bounded time per round trip, no client-side retry loop with backoff:
                # an unreachable Redis must cost a request one short timeout, at most.
                options: dict[str, Any] = {
                    "socket_timeout": self.socket_timeout,
                    "socket_connect_timeout": self.socket_timeout,
                    "retry": Retry(NoBackoff(), 0),
                    "health_check_interval": 0,
                }
                if self._url is not None:
                    client = redis.Redis.from_url(self._url, **options)
                else:
                    assert self._connection is not None
                    connection_class, kwargs = self._connection
                    merged = {**kwargs, "retry": options["retry"]}
                    for name in ("socket_timeout", "socket_connect_timeout"):
                        if merged.get(name) is None:
                            merged[name] = self.socket_timeout
                    pool = redis.ConnectionPool(connection_class=connection_class, **merged)
                    client = redis.Redis(connection_pool=pool)
                self._client = client
                self._scripts = (client.register_script(_BREAKER_LUA),
                                 client.register_script(_BUDGET_LUA))
            return self._scripts

    def _shared_or_local(self, call: Callable[[], T], local: Callable[[], T]) -> T:
        """``call()`` against Redis, or ``local()`` while Redis is out (see class doc)."""
        probing = False
        if self._down:
            if time.monotonic() < self._next_try or not self._probe_lock.acquire(blocking=False):
                return local()
            probing = True
        try:
            try:
                result = call()
            except Exception as exc:  # down, slow, garbage: never the request's problem
                self._went_down(exc, probing)
                return local()
            if probing:
                self._came_back()
            return result
        finally:
            if probing:
                self._probe_lock.release()

    def _went_down(self, exc: BaseException, probing: bool) -> None:
        with self._lock:
            if probing:
                self._failed_probes += 1
            # A Redis that stays out is probed less and less often (up to every 30 s, or
            # retry_interval if longer): each probe of a silent Redis costs one request a
            # socket timeout.
            wait = self.retry_interval * 2.0 ** min(self._failed_probes, 16)
            self._next_try = time.monotonic() + min(wait, max(self.retry_interval, 30.0))
            if self._down:
                return
            self._down = True
        _log.warning(
            "requests_smartretry: Redis state store %s unavailable (%s: %s); breaker and "
            "budget use local state until it is back", self.where, type(exc).__name__, exc,
            extra={"redis_state": self.where, "redis_error": type(exc).__name__},
        )

    def _came_back(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
            self._failed_probes = 0
        _log.info("requests_smartretry: Redis state store %s reachable again; sharing "
                  "breaker and budget state", self.where, extra={"redis_state": self.where})

    def _now_arg(self, now: float) -> str:
        return "" if self.server_time else repr(float(now))

    def _breaker_args(self, op: str, s: BreakerSettings, now: float) -> list[Any]:
        static = self._settings_args.get(s)
        if static is None:
            static = [repr(float(s.failure_threshold)), repr(float(s.recovery_timeout)),
                      s.half_open_probes, repr(float(s.failure_rate)), repr(float(s.window)),
                      s.minimum_requests, s.buckets, int(s.ttl * 1000)]
            self._settings_args[s] = static
        return [op, self._now_arg(now), *static]

    def _breaker(self, key: str, args: list[Any], size: int) -> list[str]:
        reply = self._redis()[0](keys=[self.key("breaker", key)], args=args)
        return _strings(reply, size)

    # -- the StateStore protocol ---------------------------------------------------------

    def breaker_admit(self, key: str, settings: BreakerSettings, now: float) -> Admission:
        """Decide whether an attempt on ``key`` may go out (and take a probe slot)."""

        def shared() -> Admission:
            allowed, retry_in, ticket = self._breaker(
                key, self._breaker_args("admit", settings, now), 3)
            return Admission(allowed == "1", float(retry_in), int(float(ticket)))

        return self._shared_or_local(shared,
                                     lambda: self._local.breaker_admit(key, settings, now))

    def breaker_record(
        self, key: str, settings: BreakerSettings, now: float, *, failed: bool,
        weight: float, ticket: int,
    ) -> str:
        """Record an attempt's result; returns the state name afterwards."""

        def shared() -> str:
            args = [*self._breaker_args("record", settings, now), "1" if failed else "0",
                    repr(float(weight)), ticket]
            (state,) = self._breaker(key, args, 1)
            return STATE_NAMES[int(float(state))]

        return self._shared_or_local(shared, lambda: self._local.breaker_record(
            key, settings, now, failed=failed, weight=weight, ticket=ticket))

    def breaker_status(self, key: str, settings: BreakerSettings, now: float) -> BreakerStatus:
        """The current state of ``key``'s breaker, without changing it."""

        def shared() -> BreakerStatus:
            state, cf, failures, requests, retry_in = self._breaker(
                key, self._breaker_args("status", settings, now), 5)
            return BreakerStatus(STATE_NAMES[int(float(state))], float(cf), float(failures),
                                 float(requests), float(retry_in))

        return self._shared_or_local(shared,
                                     lambda: self._local.breaker_status(key, settings, now))

    def budget_change(
        self, key: str, settings: BudgetSettings, now: float, deposit: float, spend: float
    ) -> tuple[bool, float]:
        """Deposit, then spend if covered; returns (spent, balance afterwards)."""

        def shared() -> tuple[bool, float]:
            reply = self._redis()[1](
                keys=[self.key("budget", key)],
                args=[self._now_arg(now), repr(float(settings.max_tokens)),
                      repr(float(settings.min_per_second)), int(settings.ttl * 1000),
                      repr(float(deposit)), repr(float(spend))])
            applied, tokens = _strings(reply, 2)
            return applied == "1", float(tokens)

        return self._shared_or_local(
            shared, lambda: self._local.budget_change(key, settings, now, deposit, spend))

    def close(self) -> None:
        """Disconnect from Redis (the store reconnects if used again)."""
        with self._lock:
            client, self._client, self._scripts = self._client, None, None
        if client is not None:
            client.close()


def _strings(reply: Any, size: int) -> list[str]:
    """The script's reply as ``size`` strings, or :class:`RedisUnavailable` for garbage."""
    if not isinstance(reply, (list, tuple)) or len(reply) != size:
        raise RedisUnavailable(f"unexpected reply from Redis: {reply!r:.80}")
    values = [v.decode("ascii") if isinstance(v, bytes) else v for v in reply]
    if not all(isinstance(v, str) for v in values):
        raise RedisUnavailable(f"unexpected reply from Redis: {reply!r:.80}")
    for value in values:
        float(value)  # ValueError for anything but a number: garbage
    return values
