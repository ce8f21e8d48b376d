"""A state store in Redis: one breaker and one budget per service for a whole fleet.

Each process keeps a *local view* of every shared breaker it uses, so that the success
path costs no round trip: a closed breaker admits locally, successes are counted locally
and sent in a batch (every ``sync_interval`` seconds, or every ``max_batch`` successes),
deposits to the retry budget travel with them, and a retry is paid from the tokens this
process deposited and has not sent yet (its *lease*) when they cover it.  Failures, state
changes, half-open probe slots and retries the lease does not cover go to Redis at once,
as one server-side Lua script (atomic across processes and hosts, timed by the Redis
server's clock).  A state change is published on a channel every process listens to, so
an opened breaker reaches the whole fleet within milliseconds; while the listener is not
connected, views are refreshed every ``poll_interval`` (50 ms) instead.

Redis down, slow, dripping or answering garbage never fails or slows a request: all Redis
work of one request shares a ``time_budget`` (50 ms by default, and never more than the
attempt's deadline leaves); the first overrun or error switches the store to local state
with one warning, and one request now and then probes Redis (backing off while it stays
out).  A bad key (WRONGTYPE, MOVED, a reply that is not the script's) takes only its own
service off Redis, with one warning per key per episode.  Everything read back is
validated (unknown states reset, times bounded by the server clock, counters and
balances clamped) and every write carries a TTL.

Keys are ``<prefix>:breaker:{<service>}`` and ``<prefix>:budget:{<service>}``: hash-tagged,
so that both records of a service share one Redis Cluster slot.

Needs the ``redis`` extra (``pip install requests-smartretry[redis]``); redis-py is
imported only when the store is constructed from a URL or first talks to Redis.
"""

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
from typing import Any, Callable, Optional, Union
from urllib.parse import unquote, urlsplit

from .deadline import current_scope
from .state import (
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

__all__ = ["RedisStateStore"]

_log = logging.getLogger("requests_smartretry")
_monotonic = time.monotonic
_ADMIT = Admission(True)
_ADMIT_FORCED = Admission(True, 0.0, 0, FORCED_CLOSED)
_DUST = 1e-9

#: URL schemes: plain (``redis``, ``rediss``, ``unix``), Cluster and Sentinel.
SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel",
           "rediss+sentinel")

# The one script (a Lua transcription of state.breaker_* and state.budget_change, plus the
# batch of successes and the validation of what it reads).  KEYS: breaker, budget.  ARGV:
# op, now ('' = server clock), breaker settings ('' = no breaker part), successes
# ('bucket:count;...'), failed, weight, ticket (op 'set': the state to enter), budget
# settings ('' = no budget part), deposit, spend, channel, message.  Reply: now, st, t,
# rnd, pin, cf, window failures, window requests, allowed, retry_in, ticket, state after
# record (op 'set': the state before), spent, tokens.
_LUA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local bkey, gkey = KEYS[1], KEYS[2]
local op = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
-- A stored value is trusted only as a finite number; anything else reads as missing.
local function num(v)
  local x = tonumber(v)
  if x == nil or x ~= x or x == math.huge or x == -math.huge then return nil end
  return x
end
local function split(s)
  local out = {}
  for part in string.gmatch(s, '[^,]+') do out[#out + 1] = tonumber(part) end
  return out
end
local reply = {fmt(now), '', '', '', '', '', '', '', '', '', '', '', '', ''}

if ARGV[3] ~= '' then
  local c = split(ARGV[3])
  local threshold, recovery, probes, rate = c[1], c[2], c[3], c[4]
  local window, minreq, buckets, ttl = c[5], c[6], c[7], c[8]
  local r = {}
  local flat = redis.call('HGETALL', bkey)
  for i = 1, #flat, 2 do r[flat[i]] = num(flat[i + 1]) end
  local dirty = {}
  local wiped = false
  local function get(name) return r[name] or 0 end
  local function set(name, value) r[name] = value; dirty[name] = true end
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
  local current = math.floor(now / (window / buckets))
  -- Validation: what another program (or a bug, or a clock) left here is repaired.
  local st = r['st']
  if st ~= nil and (st < 0 or st > 4 or st % 1 ~= 0) then reset(0) end
  if get('st') ~= 0 and (r['t'] == nil or r['t'] > now) then set('t', now) end
  for _, name in ipairs({'cf', 'rnd', 'pin', 'pok'}) do
    if r[name] ~= nil and (r[name] < 0 or r[name] > 1e15) then set(name, 0) end
  end
  for slot = 0, buckets - 1 do
    local stamp = r['b' .. slot]
    if stamp ~= nil and stamp > current then set('b' .. slot, current - buckets) end
    for _, name in ipairs({'s' .. slot, 'f' .. slot}) do
      if r[name] ~= nil and (r[name] < 0 or r[name] > 1e15) then set(name, 0) end
    end
  end
  local before = get('st')
  -- Successes batched by the caller, per time bucket (oldest first), while closed.
  if ARGV[4] ~= '' and get('st') == 0 then
    for b, n in string.gmatch(ARGV[4], '(%-?%d+):(%d+)') do
      b = tonumber(b)
      n = tonumber(n)
      if current - buckets < b and b <= current then
        local slot = b % buckets
        local stamp = r['b' .. slot]
        if stamp == nil or stamp < b then
          set('b' .. slot, b); set('s' .. slot, 0); set('f' .. slot, 0)
        end
        if r['b' .. slot] == b then set('s' .. slot, get('s' .. slot) + n) end
      end
    end
    if get('cf') ~= 0 then set('cf', 0) end
  end
  local function window_totals()
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
  local allowed, retry_in, ticket, after = '', '', '', ''
  if op == 'admit' then
    local state = get('st')
    if state == 1 and now - get('t') >= recovery then start_round()
    elseif state == 2 and now - get('t') >= recovery then start_round() end
    allowed, retry_in, ticket = '1', '0', '0'
    if get('st') == 1 then
      allowed, retry_in = '0', fmt(get('t') + recovery - now)
    elseif get('st') == 3 then
      allowed, retry_in = '0', fmt(recovery)
    elseif get('st') == 2 then
      if get('pin') < probes then
        set('pin', get('pin') + 1)
        ticket = fmt(get('rnd'))
      else
        allowed, retry_in = '0', fmt(get('t') + recovery - now)
      end
    end
  elseif op == 'record' then
    local failed = ARGV[5] == '1'
    local weight = tonumber(ARGV[6])
    local tk = tonumber(ARGV[7])
    local state = get('st')
    if state == 2 then
      if tk == get('rnd') then
        if failed then reset(1)
        else
          set('pok', get('pok') + 1)
          if get('pok') >= probes then reset(0) end
        end
      end
    elseif state == 0 then
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
      if trip then reset(1) end
    end
    after = fmt(get('st'))
  elseif op == 'set' then
    after = fmt(before)
    reset(tonumber(ARGV[7]))
  end
  local args = {}
  for k, _ in pairs(dirty) do
    args[#args + 1] = k
    args[#args + 1] = fmt(r[k])
  end
  if #args > 0 then
    if wiped then redis.call('DEL', bkey) end
    redis.call('HSET', bkey, unpack(args))
    redis.call('PEXPIRE', bkey, ttl)
  end
  if get('st') ~= before and ARGV[11] ~= '' then
    redis.call('PUBLISH', ARGV[11], ARGV[12])
  end
  local failures, requests = window_totals()
  reply[2] = fmt(get('st')); reply[3] = fmt(get('t')); reply[4] = fmt(get('rnd'))
  reply[5] = fmt(get('pin')); reply[6] = fmt(get('cf')); reply[7] = fmt(failures)
  reply[8] = fmt(requests); reply[9] = allowed; reply[10] = retry_in; reply[11] = ticket
  reply[12] = after
end

if ARGV[8] ~= '' then
  local c = split(ARGV[8])
  local max_tokens, per_second, ttl = c[1], c[2], c[3]
  local deposit, spend = tonumber(ARGV[9]), tonumber(ARGV[10])
  local saved = redis.call('HMGET', gkey, 'tok', 'ts')
  local tok, ts = num(saved[1]), num(saved[2])
  -- A debt no traffic could pay back (1e9 tokens) is garbage: read as a missing record.
  if tok and tok < -1e9 then tok = nil end
  local tokens = max_tokens
  if tok and ts then
    if tok > max_tokens then tok = max_tokens end
    if ts > now then ts = now end
    tokens = math.min(max_tokens, tok + per_second * math.max(0, now - ts))
  end
  tokens = math.min(max_tokens, tokens + deposit)
  local spent = tokens >= spend - 1e-9
  if spent then tokens = math.max(0, tokens - spend) end
  if deposit > 0 or spend > 0 or tok ~= nil then
    redis.call('HSET', gkey, 'tok', fmt(tokens), 'ts', fmt(now))
    redis.call('PEXPIRE', gkey, ttl)
  end
  reply[13] = spent and '1' or '0'
  reply[14] = fmt(tokens)
end
return reply
"""

# Connection settings of a client that may travel through pickle (the rest — retry
# objects, credential providers, event dispatchers — hold locks or callables).
_PLAIN = (str, int, float, bool, type(None))
# Errors that concern one service's keys (that service goes local), and errors that
# concern the server, even when a script reports them (the whole store goes local).
_KEY_ERRORS = ("WRONGTYPE", "MOVED ", "ASK ", "CROSSSLOT", "USER_SCRIPT")
_SERVER_ERRORS = ("READONLY", "LOADING", "BUSY", "OOM", "NOAUTH", "NOPERM", "WRONGPASS",
                  "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "NOSCRIPT", "NOREPLICAS")
# Redis work that a request's time budget cut short; the deadline, not Redis, was short.
_spent: contextvars.ContextVar[tuple[Any, float]] = contextvars.ContextVar(
    "requests_smartretry_redis_spent", default=(None, 0.0))
_stores: weakref.WeakSet[RedisStateStore] = weakref.WeakSet()


class RedisUnavailable(Exception):
    """Redis did not answer within the time budget, or not with what the script returns."""


class _KeyFault(Exception):
    """The reply for one service's keys is unusable (that service goes local)."""


class _NoTime(Exception):
    """The request's deadline leaves no time for Redis: this one operation goes local."""


def shown_url(url: str) -> str:
    """A Redis URL as logs, errors and ``repr`` show it: everything up to the last ``@``
    masked (a password may hold an unencoded ``/``, which ``urlsplit`` would take for the
    start of the path), the query (``?password=``) dropped."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    credentials = ""
    if "@" in rest:
        credentials, rest = "***@", rest.rsplit("@", 1)[1]
    for mark in ("?", "#"):
        rest = rest.split(mark, 1)[0]
    return f"{scheme}://{credentials}{rest}"


def _hosts(netloc: str, default_port: int, shown: str) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":") if item.rfind(":") > item.rfind("]") \
            else (item, "", "")
        host = host.strip("[]") or "127.0.0.1"
        try:
            number = int(port) if port else default_port
        except ValueError:
            raise ValueError(f"bad port {port!r} in Redis URL {shown!r}") from None
        if not 0 < number < 65536:
            raise ValueError(f"bad port {number} in Redis URL {shown!r}")
        hosts.append((host, number))
    return hosts


def parse_target(url: str) -> dict[str, Any]:
    """Check a Redis URL at construction; returns what building its client needs.

    Forms: ``redis://[[user]:password@]host[:port][/db]`` (also ``rediss://``,
    ``unix:///path``), ``redis+cluster://[[user]:password@]host:port[,host:port...]`` and
    ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`` (also
    with ``rediss+``).  A password must be percent-encoded.
    """
    shown = shown_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"state must be a Redis URL ({', '.join(s + '://' for s in SCHEMES)}),"
                         f" got {shown!r}")
    if "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        if any(mark in userinfo for mark in "/?#"):
            raise ValueError(
                f"the credentials in Redis URL {shown!r} contain an unencoded '/', '?' or '#':"
                " percent-encode the password (urllib.parse.quote(password, safe=''))")
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    spec: dict[str, Any] = {"kind": scheme.split("+")[-1] if "+" in scheme else "url",
                            "ssl": scheme.startswith("rediss"),
                            "username": unquote(parts.username) if parts.username else None,
                            "password": unquote(parts.password) if parts.password else None}
    path = [p for p in parts.path.split("/") if p]
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"a unix:// Redis URL needs a socket path, got {shown!r}")
        return spec
    default = 26379 if spec["kind"] == "sentinel" else 6379
    spec["hosts"] = _hosts(netloc, default, shown)
    if spec["kind"] == "url" and len(spec["hosts"]) > 1:
        raise ValueError(f"several hosts in Redis URL {shown!r}: use redis+cluster:// or "
                         "redis+sentinel://")
    if spec["kind"] == "sentinel":
        if not path:
            raise ValueError(f"a redis+sentinel:// URL names the service: "
                             f"redis+sentinel://host:26379/mymaster[/db], got {shown!r}")
        spec["service"] = unquote(path[0])
        path = path[1:]
    if len(path) > 1 or (path and not path[0].isdigit()):
        raise ValueError(f"the database in Redis URL {shown!r} must be a number")
    spec["db"] = int(path[0]) if path else 0
    if spec["kind"] == "cluster" and spec["db"] != 0:
        raise ValueError(f"Redis Cluster has only database 0, got the URL {shown!r}")
    return spec


def _plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if isinstance(v, _PLAIN)}


def _describe_client(client: Any) -> dict[str, Any]:
    """A picklable description of a redis-py client's connection settings."""
    names = [c.__module__ + "." + c.__name__ for c in type(client).__mro__]
    if "redis.cluster.RedisCluster" in names:
        nodes = sorted({(n.host, int(n.port)) for n in client.get_nodes()})
        manager = getattr(client, "nodes_manager", None)
        kwargs = _plain(dict(getattr(manager, "connection_kwargs", {}) or {}))
        return {"kind": "cluster", "hosts": nodes, "kwargs": kwargs}
    if not any(n.startswith("redis.") and n.endswith(".Redis") for n in names) \
            or any(n.startswith("redis.asyncio.") for n in names) \
            or not hasattr(client, "connection_pool"):
        raise TypeError(
            "state / target must be a Redis URL, a redis.Redis or a redis.cluster.RedisCluster"
            f" client, got an unsupported client of type {type(client).__module__}."
            f"{type(client).__qualname__}")
    pool = client.connection_pool
    kwargs = _plain(dict(pool.connection_kwargs))
    manager = getattr(pool, "sentinel_manager", None)
    if manager is not None and getattr(pool, "service_name", None):
        sentinels = [(s.connection_pool.connection_kwargs.get("host", "127.0.0.1"),
                      int(s.connection_pool.connection_kwargs.get("port", 26379)))
                     for s in manager.sentinels]
        kwargs.pop("host", None)
        kwargs.pop("port", None)
        return {"kind": "sentinel", "hosts": sentinels, "service": pool.service_name,
                "kwargs": kwargs}
    return {"kind": "pool", "connection_class": pool.connection_class, "kwargs": kwargs}


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


class RedisStateStore:
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
    deadline leaves); ``socket_timeout`` bounds one connection's reads in the background.
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
            self._spec = _describe_client(target)
        self._setup()

    def _setup(self) -> None:
        self._local = MemoryStateStore()
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._client: Any = None
        self._script: Any = None
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._connecting: Optional[concurrent.futures.Future[None]] = None
        self._connect_until = 0.0  # (monotonic) when a connection under way is too late
        self._connect_slow = False  # ... and a request already waited for it in vain
        self._in_flight = 0
        self._down = False
        self._episode = False  # an outage warned about and not yet over (see _went_down)
        self._settles_at = 0.0
        self._next_try = 0.0
        self._failed_probes = 0
        self._views: dict[str, _View] = {}
        self._bad: dict[str, _Episode] = {}
        self._settings_args: dict[Any, str] = {}
        self._offset = 0.0  # server clock minus monotonic clock
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
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # Bounded time per read, no client-side retry loop with backoff: the time budget
        # bounds the request, these bound the background thread.
        timeouts: dict[str, Any] = {"socket_timeout": self.socket_timeout,
                    "socket_connect_timeout": self.socket_timeout}
        spec = self._spec
        kind = spec["kind"]
        client: Any
        if kind == "url" and self._url is not None:
            client = redis.Redis.from_url(self._url, retry=Retry(NoBackoff(), 0),
                                          health_check_interval=0, **timeouts)
        elif kind == "pool":
            merged = {**spec["kwargs"], "retry": Retry(NoBackoff(), 0)}
            for name, value in timeouts.items():
                if merged.get(name) is None:
                    merged[name] = value
            pool = redis.ConnectionPool(connection_class=spec["connection_class"], **merged)
            client = redis.Redis(connection_pool=pool)
        elif kind == "cluster":
            import redis.cluster

            cluster: Any = redis.cluster
            options = self._auth_options(spec)
            client = cluster.RedisCluster(
                startup_nodes=[cluster.ClusterNode(h, p) for h, p in spec["hosts"]], **options,
                **{k: v for k, v in timeouts.items() if options.get(k) is None})
        else:
            import redis.sentinel

            sentinels: Any = redis.sentinel
            options = self._auth_options(spec)
            options.pop("db", None)
            timeouts = {k: v for k, v in timeouts.items() if options.get(k) is None}
            sentinel = sentinels.Sentinel(spec["hosts"], sentinel_kwargs=dict(timeouts), **timeouts)
            client = sentinel.master_for(spec["service"], db=self._db(spec),
                                         retry=Retry(NoBackoff(), 0), **options)
        self._client = client
        return client.register_script(_LUA)

    @staticmethod
    def _db(spec: dict[str, Any]) -> int:
        return int(spec.get("db", spec.get("kwargs", {}).get("db", 0)) or 0)

    @staticmethod
    def _auth_options(spec: dict[str, Any]) -> dict[str, Any]:
        if "kwargs" in spec:  # from a client: its own settings
            allowed = ("username", "password", "socket_timeout", "socket_connect_timeout",
                       "ssl", "ssl_cert_reqs", "ssl_ca_certs", "client_name")
            options = {k: v for k, v in spec["kwargs"].items() if k in allowed}
            if spec["kind"] == "sentinel":
                options["db"] = spec["kwargs"].get("db", 0)
            return options
        options = {k: spec[k] for k in ("username", "password") if spec.get(k)}
        if spec.get("ssl"):
            options["ssl"] = True
        return options

    def _allowance(self, budget: float) -> tuple[float, bool]:
        """Seconds this request may still spend in Redis, and whether the deadline (not
        the time budget) is what limits it."""
        scope = current_scope()
        owner, spent = _spent.get()
        left = budget - (spent if owner is scope and scope is not None else 0.0)
        remaining = None if scope is None else scope.remaining()
        if remaining is not None and remaining < left:
            return remaining, True
        return left, False

    def _charge(self, seconds: float) -> None:
        scope = current_scope()
        if scope is not None:
            owner, spent = _spent.get()
            _spent.set((scope, seconds + (spent if owner is scope else 0.0)))

    def _execute(self, args: list[Any], keys: list[str]) -> list[Any]:
        """Run the script within this request's time budget (on a worker thread, so that a
        slow or dripping Redis cannot hold the request past it)."""
        allowance, by_deadline = self._allowance(self.time_budget)
        if allowance <= 0.0:
            raise _NoTime()
        started = _monotonic()
        try:
            if self._script is None:
                self._connected_within(allowance)
                allowance -= _monotonic() - started
                if allowance <= 0.0:
                    raise _NoTime()
            with self._lock:
                executor = self._worker_pool()
                self._in_flight += 1
            try:
                future = executor.submit(self._run_script, keys, args)
            except RuntimeError:  # interpreter shutdown (the flush at exit): run it here
                future = concurrent.futures.Future()
                future.set_result(self._run_script(keys, args))
            try:
                reply = future.result(timeout=allowance)
            except concurrent.futures.TimeoutError:
                if by_deadline:
                    raise _NoTime() from None
                self._cut()
                raise RedisUnavailable(
                    f"no answer within the time budget ({allowance * 1000:.0f} ms)") from None
        finally:
            elapsed = _monotonic() - started
            self._charge(elapsed)
        if self.server_time:
            try:
                self._offset = float(reply[0]) - (started + elapsed / 2.0)
            except (TypeError, ValueError, IndexError):
                pass
        if self._listener is None and not self._closed:
            self._start_listener()
        return reply  # type: ignore[no-any-return]

    def _worker_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """The worker threads that talk to Redis (under ``_lock``)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="requests-smartretry-redis")
        return self._executor

    def _connected_within(self, allowance: float) -> None:
        """Wait up to ``allowance`` seconds for the connection (TCP, AUTH, a PING: several
        round trips, made once, on a worker).  A connection still under way is not yet an
        outage: this operation goes local (:class:`_NoTime`) and the worker goes on; one
        that takes longer than ``socket_timeout`` (or the time budget if longer) in all is
        (:class:`RedisUnavailable`), as
        is its failure, reported to the request that next asks.  So a silent Redis
        (SIGSTOP, a black-holed port) costs the first requests the time budget, as it costs
        every later one, never the socket timeout."""
        started = None
        with self._lock:
            future = self._connecting
            if future is None:
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
            if wait < left:
                self._connect_slow = True
                raise _NoTime() from None
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
        with self._connect_lock:
            if self._script is None:
                script = self._connect()
                self._client.ping()
                self._script = script

    def _run_script(self, keys: list[str], args: list[Any]) -> Any:
        # Connecting happens here too, on the worker: a Cluster client asks its startup
        # nodes for the slot map at construction, one socket timeout per silent node.
        try:
            with self._connect_lock:
                if self._script is None:
                    self._script = self._connect()
                script = self._script
            return script(keys=keys, args=args)
        finally:
            with self._lock:
                self._in_flight -= 1

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
            thread = threading.Thread(target=_listen, args=(weakref.ref(self),),
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
            if probing or (self._episode and not self._down):
                self._failed_probes += 1
            # A Redis that stays out is probed less and less often (up to every 30 s, or
            # retry_interval if longer): each probe of a silent Redis costs one request up
            # to the time budget.
            self._next_try = _monotonic() + self._backoff()
            self._views = {}
            if self._down:
                return
            self._down = True
            if self._episode:
                return
            self._episode = True
        _log.warning(
            "requests_smartretry: Redis state store %s unavailable (%s: %s); breaker and "
            "budget use local state until it is back", self.where, type(exc).__name__,
            _safe(exc, self._url), extra={"redis_state": self.where,
                                          "redis_error": type(exc).__name__},
        )

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
                self.where, service, type(exc).__name__, _safe(exc, self._url), hint,
                extra={"redis_state": self.where, "redis_error": type(exc).__name__,
                       "service": service})

    def _round_trip(self, service: str, op: str, now: float, *,
                    breaker: Optional[BreakerSettings], budget: Optional[BudgetSettings],
                    view: Optional[_View], failed: bool = False, weight: float = 1.0,
                    ticket: int = 0, deposit: float = 0.0, spend: float = 0.0,
                    ) -> Optional[list[Optional[float]]]:
        """One script call for ``service`` (sending what ``view`` has pending), or ``None``
        when local state must serve this operation."""
        episode = self._bad.get(service)
        mono = _monotonic()
        if episode is not None and mono < episode.until:
            return None
        probing = False
        if self._down:
            if mono < self._next_try or self._in_flight \
                    or not self._probe_lock.acquire(blocking=False):
                return None
            probing = True
        successes: dict[int, int] = {}
        seen: Optional[int] = None
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
        try:
            args = [op, "" if self.server_time else repr(float(now)),
                    self._static(breaker), ";".join(f"{b}:{n}" for b, n in
                                                    sorted(successes.items())),
                    "1" if failed else "0", repr(float(weight)), ticket,
                    self._static(budget), repr(float(deposit)), repr(float(spend)),
                    self.channel, f"{self._origin} {service}"]
            try:
                raw = self._execute(args, [self.key("breaker", service),
                                           self.key("budget", service)])
                reply = _numbers(raw)
            except _NoTime:
                return None
            except _KeyFault as exc:
                self._key_failed(service, exc)
                return None
            except Exception as exc:  # down, slow, garbage: never the request's problem
                if _is_key_error(exc):
                    self._key_failed(service, exc)
                else:
                    self._went_down(exc, probing)
                return None
            if probing:
                self._came_back()
            elif self._episode:
                self._settled()
            if episode is not None:
                with self._lock:
                    self._bad.pop(service, None)
                _log.info("requests_smartretry: Redis state store %s: the keys of service "
                          "%s are usable again", self.where, service,
                          extra={"redis_state": self.where, "service": service})
            if view is None:
                view = self._view(service)
            self._update(view, reply, mono, view.gen if seen is None else seen, breaker,
                         budget)
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
        unreachable, in this process's local state only); returns the state name before."""
        reply = self._round_trip(key, "set", now, breaker=settings, budget=None,
                                 view=self._view(key) if not self._down else None, ticket=state)
        if reply is None:
            return self._local.breaker_set(key, settings, now, state)
        return STATE_NAMES[int(reply[11] or 0)]

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


def _listen(ref: Callable[[], Optional[RedisStateStore]]) -> None:
    """The listener thread: marks views stale when another process announces a change.
    Holds only a weak reference to its store between waits, and ends when the store is
    gone or closed."""
    pubsub: Any = None
    last_ping = 0.0
    pause = 0.5  # (then half the store's poll interval)
    while True:
        store = ref()
        if store is None or store._closed or store._listener is not threading.current_thread():
            if store is not None:
                store._set_listening(False)
            break
        try:
            if pubsub is None:
                client = store._client
                if client is None or store._down:
                    store._set_listening(False)
                    wait: Any = None
                else:
                    pubsub = client.pubsub()
                    pubsub.subscribe(store.channel)
                    last_ping = _monotonic()
                    wait = pubsub
            else:
                wait = pubsub
                message = pubsub.get_message(timeout=0.0)
                if message is not None:
                    store._heard = _monotonic()
                    wait = None if message else pubsub
                    kind = message.get("type")
                    if kind == "subscribe":
                        store._set_listening(True)
                    elif kind == "message":
                        data = message.get("data")
                        store._notified(data.decode("utf-8", "replace")
                                        if isinstance(data, bytes) else str(data))
                    continue
                # In use: a PING every half poll interval proves the subscription alive
                # (see _heard); idle, one every 5 s keeps the connection open.
                mono = _monotonic()
                pause = store.poll_interval / 2.0
                if mono - last_ping > (pause if mono - store._used < store.sync_interval
                                       else 5.0):
                    pubsub.ping()
                    last_ping = mono
        except Exception:  # the connection broke: poll meanwhile, subscribe again
            store._set_listening(False)
            _close_quietly(pubsub)
            pubsub = None
            wait = None
        del store
        try:
            _wait_for_message(wait, pause)
        except Exception:
            _close_quietly(pubsub)
            pubsub = None
    _close_quietly(pubsub)


def _close_quietly(pubsub: Any) -> None:
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception:
            pass


def _wait_for_message(pubsub: Any, pause: float = 0.5) -> None:
    """Wait up to ``pause`` seconds for the next message (then the thread re-checks its
    store); without a subscription, a short pause before subscribing again."""
    connection = getattr(pubsub, "connection", None)
    if connection is not None:
        connection.can_read(timeout=pause)
    else:
        time.sleep(0.2)


def _is_key_error(exc: BaseException) -> bool:
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


def _safe(exc: BaseException, url: Optional[str]) -> str:
    """An exception's text for a log line, with no part of the URL's credentials."""
    text = str(exc)
    if url is not None and "@" in url:
        secret = url.partition("://")[2].rsplit("@", 1)[0]
        for part in {secret, *secret.split(":"), unquote(secret),
                     *unquote(secret).split(":")}:
            if len(part) >= 3:
                text = text.replace(part, "***")
    return text[:200]


def _numbers(reply: Any) -> list[Optional[float]]:
    """The script's reply as 14 numbers (``None`` for a part not asked for), or
    :class:`_KeyFault` for anything else."""
    if not isinstance(reply, (list, tuple)) or len(reply) != 14:
        raise _KeyFault(f"unexpected reply from Redis: {reply!r:.80}")
    values: list[Optional[float]] = []
    for item in reply:
        text = item.decode("ascii", "replace") if isinstance(item, bytes) else item
        if text == "":
            values.append(None)
            continue
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise _KeyFault(f"unexpected reply from Redis: {reply!r:.80}") from None
        if not math.isfinite(value):
            raise _KeyFault(f"unexpected reply from Redis: {reply!r:.80}")
        values.append(value)
    if values[0] is None:
        raise _KeyFault(f"unexpected reply from Redis: {reply!r:.80}")
    return values


def _after_fork_in_child() -> None:
    # The parent's threads, connections and unsent counts are not this process's.
    for store in list(_stores):
        store._setup()


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
