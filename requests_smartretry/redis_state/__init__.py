"""A state store in Redis: one breaker, one budget and one throttle per service for a
whole fleet.

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

Keys are ``<prefix>:breaker:{<service>}`` and ``<prefix>:budget:{<service>}`` (and the
throttle's ``pace``, ``slots`` and ``procs``): hash-tagged, so that every record of a
service shares one Redis Cluster slot.

Needs the ``redis`` extra (``pip install requests-smartretry[redis]``); redis-py is
imported only when the store is constructed from a URL or first talks to Redis.

The package, one concept per module: :mod:`.urls` (the URL forms), :mod:`.clients`
(building the redis-py client), :mod:`.scripts` (the Lua scripts and the checks of their
replies), :mod:`.store` (:class:`RedisStateStore`: round trips, time budget, outages,
the breaker's and the budget's local views), :mod:`.listener` (the pub/sub thread) and
:mod:`.throttle` (the throttle's shared state).
"""

from __future__ import annotations

from .errors import RedisUnavailable
from .store import RedisStateStore
from .urls import SCHEMES, parse_target, shown_url

__all__ = ["SCHEMES", "RedisStateStore", "RedisUnavailable", "parse_target", "shown_url"]
