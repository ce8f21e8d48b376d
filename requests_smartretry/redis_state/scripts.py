"""The Lua scripts the store runs in Redis (atomic across processes and hosts, timed by
the Redis server's clock), and the checks of what they answer."""

from __future__ import annotations

import math
from typing import Any, Optional

from .errors import KeyFault

__all__ = ["STATE_LUA", "THROTTLE_LUA", "numbers", "pace_numbers"]

# The one script (a Lua transcription of state.breaker_* and state.budget_change, plus the
# batch of successes and the validation of what it reads).  KEYS: breaker, budget.  ARGV:
# op, now ('' = server clock), breaker settings ('' = no breaker part), successes
# ('bucket:count;...'), failed, weight, ticket (op 'set': the state to enter), budget
# settings ('' = no budget part), deposit, spend, channel, message, given (op 'set': when
# the command was given, on the shared clock; '' = now: a command given earlier than the
# last one recorded ('cmd') is superseded and changes nothing).  Reply: now, st, t,
# rnd, pin, cf, window failures, window requests, allowed, retry_in, ticket, state after
# record (op 'set': the state before), spent, tokens.

# What both scripts start with: effects replicated (Redis < 5), the clock (ARGV[2], or
# the Redis server's), number formatting, and reading a stored value (trusted only as a
# finite number; anything else reads as missing).
_PRELUDE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local op = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
local function num(v)
  local x = tonumber(v)
  if x == nil or x ~= x or x == math.huge or x == -math.huge then return nil end
  return x
end
"""

STATE_LUA = _PRELUDE + """
local bkey, gkey = KEYS[1], KEYS[2]
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
    local kept, cmd = get('rnd'), r['cmd']
    r = {}
    dirty = {}
    wiped = true
    set('st', state); set('t', now); set('rnd', kept); set('cf', 0)
    if cmd then set('cmd', cmd) end  -- (the last operator command outlives transitions)
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
    local given = tonumber(ARGV[13]) or now
    if not (r['cmd'] and r['cmd'] > given) then
      reset(tonumber(ARGV[7]))
      set('cmd', given)
    end
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

# The throttle's script (a Lua transcription of throttle.rate_at, reserve, learned,
# rate_shown and throttled, plus the leased in-flight slots, the fleet's recent successes and the
# processes seen).  KEYS: pace (hash: tat, wmax, tfail, learn, and the successes per
# 0.1 s over 2 s: k0..k19 slice numbers, c0..c19 counts; start, qn, hn), slots (sorted set:
# lease id -> expiry),
# processes (sorted set: origin -> expiry).  ARGV: op ('reserve' | 'acquire' | 'release' |
# 'rate'), now ('' = server clock), rate ('' = none), burst, adaptive (0/1), count (turns
# to reserve; 0 = none), max_wait, origin, lease id, lease ttl (s), max_in_flight ('' =
# none), throttling (0/1), started, successes (to add), retry_after ('' = none), beta,
# recovery, min_rate, key ttl (ms), holdoff, learn, resume (0/1: the first reservation after
# the caller paced locally: the bucket starts spent), released (lease ids, comma-separated,
# of slots released while Redis could not be told: freed first), held locally (the caller's
# attempts sent while it paced locally, still under way: counted as slots taken), near
# (seconds ahead an adaptive throttle books a turn), start rate, doubling (s), doublings
# (the slow start of an adaptive throttle without a rate), ticket (the caller's place in
# an adaptive throttle's queue; '0' = none yet: see throttle.reserve).
# Reply: now, wait, granted, interval, processes, rate ('inf' = none), slot (1/0),
# in flight, the ticket issued by this call (0: none; a caller refused a near moment holds
# it; a learning pause issues none).
THROTTLE_LUA = _PRELUDE + """
local pkey, skey, okey = KEYS[1], KEYS[2], KEYS[3]
local ceiling = tonumber(ARGV[3]) or math.huge
local burst, adaptive = tonumber(ARGV[4]), ARGV[5] == '1'
local count, max_wait = tonumber(ARGV[6]), tonumber(ARGV[7])
local origin, lease, lease_ttl = ARGV[8], ARGV[9], tonumber(ARGV[10])
local max_in_flight = tonumber(ARGV[11])
local beta, recovery, min_rate = tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18])
local key_ttl, holdoff, learn_for = tonumber(ARGV[19]), tonumber(ARGV[20]), tonumber(ARGV[21])
local near, start_rate = tonumber(ARGV[25]), tonumber(ARGV[26])
local doubling, doublings = tonumber(ARGV[27]), tonumber(ARGV[28])
-- Slots released while Redis could not be told (ARGV[23], comma-separated): freed now.
for released in string.gmatch(ARGV[23] or '', '[^,]+') do redis.call('ZREM', skey, released) end
local names = {'tat', 'wmax', 'tfail', 'learn', 'start', 'qn', 'hn'}
for slot = 0, 19 do names[#names + 1] = 'k' .. slot; names[#names + 1] = 'c' .. slot end
names[#names + 1] = 'bi'; names[#names + 1] = 'bn'; names[#names + 1] = 'bp'
local saved = redis.call('HMGET', pkey, unpack(names))
local tat, wmax, tfail, learn = num(saved[1]), num(saved[2]), num(saved[3]), num(saved[4])
local start, qn, hn = num(saved[5]), num(saved[6]), num(saved[7])
local bi, bn, bp = num(saved[48]), num(saved[49]), num(saved[50])
-- Validation: a schedule, a decrease or a pause far in the future is repaired (a decrease
-- takes effect where the schedule is free: later than now by the turns reserved).
if tat and tat > now + 3600 then tat = nil end
if learn and learn > now + learn_for then learn = now end
if tfail and tfail > now + 3600 then tfail = now end
if wmax and wmax <= 0 then wmax = nil end
if start and start > now + 3600 then start = nil end
if qn and (qn < 0 or qn > 1e15) then qn = nil end
if hn and (hn < 0 or hn > 1e15) then hn = nil end
local dirty, unlearn = {}, false
-- The fleet's successes per 0.1 s over the last 2 s (reported with every call).
local current = math.floor(now * 10)
local successes = tonumber(ARGV[14]) or 0
if successes > 0 then
  local slot = current % 20
  local stamp, n = num(saved[8 + 2 * slot]), num(saved[9 + 2 * slot])
  if stamp ~= current or not n or n < 0 then n = 0 end
  dirty['k' .. slot] = current
  dirty['c' .. slot] = n + successes
  saved[8 + 2 * slot], saved[9 + 2 * slot] = current, n + successes
end
local function since(moment)
  local first, total = math.floor(moment * 10), 0
  for slot = 0, 19 do
    local stamp, n = num(saved[8 + 2 * slot]), num(saved[9 + 2 * slot])
    if stamp and n and first <= stamp and stamp <= current and n >= 0 then
      total = total + n
    end
  end
  return total
end
local function rate_at(at)
  if not adaptive then return ceiling end
  if not wmax or not tfail then
    if start and ceiling == math.huge then  -- the slow start, until throttled
      local x = math.max(0, at - start) / doubling
      if x < doublings then return start_rate * 2 ^ x end
    end
    return ceiling
  end
  local elapsed = math.max(0, at - tfail)
  local x = (elapsed - recovery) / recovery
  return math.max(min_rate, math.min(ceiling, wmax * (1 + (1 - beta) * x * x * x)))
end
if adaptive and learn and now >= learn then
  wmax = math.max(min_rate, since(learn - learn_for - 0.1))
  tfail, learn = math.max(now, tat or now), nil
  unlearn = true
  dirty['wmax'] = wmax
  dirty['tfail'] = tfail
end
-- Every process that asks is seen for 10 s (the share it takes while Redis is out).
redis.call('ZADD', okey, now + 10, origin)
redis.call('ZREMRANGEBYSCORE', okey, '-inf', now)
redis.call('PEXPIRE', okey, 60000)
local processes = redis.call('ZCARD', okey)
local wait, granted, interval, slot, issued = 0, 0, 0, 1, 0
local resume = ARGV[22] == '1'
local function reserve()
  if adaptive and learn then  -- held until the learning pause ends
    wait = math.max(0, learn - now)
    return
  end
  if adaptive and not wmax and not start and ceiling == math.huge then
    start = now  -- the slow start begins with the first turn
    dirty['start'] = start
  end
  local first = math.max(tat or now, now)
  -- The curve is read where the turn goes on the schedule.
  local rate = rate_at(first)
  if rate ~= math.huge then interval = 1 / rate end
  -- The schedule stood idle while tickets waited: the places that passed count as served.
  if adaptive and tat and tat < now and (qn or 0) > (hn or 0) then
    if interval > 0 then hn = math.min(qn, (hn or 0) + (now - tat) / interval)
    else hn = qn end  -- unpaced (a slow start over): every place has passed
    dirty['hn'] = hn
    -- Nor did the bucket refill (the turns asleep would go as a burst on the rate).
    first = now + (burst - 1) * interval
  end
  -- Back from local pacing: the bucket is spent (the fleet paced locally meanwhile).
  if resume then first = math.max(first, now + (burst - 1) * interval) end
  wait = first - (burst - 1) * interval - now
  -- An adaptive throttle books no turn beyond near: the turn takes a ticket and asks
  -- again when its place (one interval per ticket before it not served yet) comes near.
  -- Seconds so many turns take from the first free moment (throttle._queued): one
  -- interval each, or along a slow start's doubling rate.
  local function queued(turns)
    if turns <= 0 or interval == 0 then return 0 end
    if not start or wmax or ceiling ~= math.huge then return turns * interval end
    local x = math.max(0, first - start) / doubling
    local grown = 2 ^ x + turns * math.log(2) / (start_rate * doubling)
    local span = doubling * (math.log(grown) / math.log(2) - x)
    return math.min(span, math.max(0, start + doubling * doublings - first))
  end
  local ticket = tonumber(ARGV[29]) or 0
  if ticket > (qn or 0) then ticket = 0 end  -- not of this queue (Redis restarted empty)
  if adaptive and (wait > 0 or ticket > 0) then
    local served = hn or 0
    if ticket == 0 and (wait > near or (qn or 0) > served) then
      ticket = (qn or 0) + 1
      local place = wait + queued(ticket - served - 1)
      if place > max_wait then
        wait = place
        return
      end
      qn, issued = ticket, ticket
      dirty['qn'] = qn
    end
    if ticket > 0 then
      local ahead = queued(ticket - served - 1)
      wait = wait + ahead
      if wait > near then return end
      first = first + ahead  -- its moment: the schedule goes on after it
      hn = math.min(qn or 0, math.max(served + count, ticket))
      dirty['hn'] = hn
    end
  end
  if wait > 0 and wait > max_wait then return end
  if wait < 0 then wait = 0 end
  -- Booked without a ticket while tickets wait (a token was free): it serves as many
  -- places as it books (dead tickets must not hold the queue while the schedule is busy).
  if adaptive and ticket == 0 and (qn or 0) > (hn or 0) then
    hn = math.min(qn, (hn or 0) + count)
    dirty['hn'] = hn
  end
  granted = count
  tat = first + count * interval
  dirty['tat'] = tat
  -- The turns a slow start books, per doubling window (bn in window bi, bp before it).
  if adaptive and ceiling == math.huge and not wmax and start then
    local index = math.floor(math.max(0, now + wait - start) / doubling)
    if index > (bi or -1) then
      if bi and index == bi + 1 then bp = bn or 0 else bp = 0 end
      bi, bn = index, 0
    end
    bn = (bn or 0) + count
    dirty['bi'], dirty['bn'], dirty['bp'] = bi, bn, bp or 0
  end
end
local function booked_before(started)
  if not bi or not start then return 0 end
  local at = math.max(0, started - start) / doubling
  local index = math.floor(at)
  local part = 1 - (at - index)
  if index == bi then return (bn or 0) + (bp or 0) * part end
  if index == bi + 1 then return (bn or 0) * part end
  if index == bi - 1 then return bp or 0 end
  return 0
end
-- A throttling answer: told with its attempt's release, or (Redis was out then) by the
-- caller's next call, before that call reserves anything.
if ARGV[12] == '1' then
  local booked_to = tat or now  -- the end of the turns booked (before Retry-After)
  local retry_after = tonumber(ARGV[15])
  if retry_after and retry_after > 0 then
    tat = math.max(tat or now, now + retry_after)
    dirty['tat'] = tat
  end
  local started = tonumber(ARGV[13])
  if adaptive and not learn and (not tfail or started > tfail + holdoff) then
    local sent = rate_at(started)  -- the rate the refused turn went at
    if sent ~= math.huge and not wmax and ceiling == math.huge then
      -- The end of a slow start: at most the turns booked in the window before the
      -- refused turn, or the successes counted there if more.
      -- (less the turns booked after it, up to the schedule's end)
      local after = math.max(0, booked_to - started) * sent
      local window = math.max(since(now - learn_for - 0.1), booked_before(started) - after)
      if window >= 1 then sent = math.max(min_rate, math.min(sent, window)) end
    end
    if sent == math.huge then
      learn = now + learn_for
      tat = math.max(tat or now, learn)
      dirty['learn'] = learn
      dirty['tat'] = tat
    else
      -- The turns reserved already go at the old rate: the curve starts after them.
      wmax, tfail = sent, math.max(now, tat or now)
      dirty['wmax'] = wmax
      dirty['tfail'] = tfail
    end
  end
end
if op == 'acquire' then
  redis.call('ZREMRANGEBYSCORE', skey, '-inf', now)
  if redis.call('ZCARD', skey) + (tonumber(ARGV[24]) or 0) < max_in_flight then
    if count > 0 then reserve() end
    if count == 0 or granted > 0 then
      redis.call('ZADD', skey, now + lease_ttl, lease)
      redis.call('PEXPIRE', skey, math.floor(lease_ttl * 1000) + 1000)
    end
  else
    slot = 0
  end
elseif op == 'reserve' then
  reserve()
elseif op == 'release' then
  if lease ~= '' then redis.call('ZREM', skey, lease) end
end
local fields = {}
for name, value in pairs(dirty) do
  fields[#fields + 1] = name
  fields[#fields + 1] = fmt(value)
end
if #fields > 0 then
  redis.call('HSET', pkey, unpack(fields))
  redis.call('PEXPIRE', pkey, key_ttl)
end
if unlearn then redis.call('HDEL', pkey, 'learn') end
local in_flight = redis.call('ZCOUNT', skey, now, '+inf')
-- The rate a turn asked now gets (rate_shown): 0 while an unpaced throttle is held.
local free = math.max(tat or now, now)
local rate = rate_at(free)
local shown = 'inf'
if rate ~= math.huge then
  shown = fmt(rate)
  if interval == 0 then interval = 1 / rate end  -- (no reservation: the spacing now)
elseif free > now then shown = '0' end
return {fmt(now), fmt(wait), fmt(granted), fmt(interval), fmt(processes), shown, fmt(slot),
        fmt(in_flight), fmt(issued)}
"""


def pace_numbers(reply: Any) -> list[float]:
    """The throttle script's reply as 9 numbers (the rate may be ``inf``), or
    :class:`KeyFault` for anything else."""
    if not isinstance(reply, (list, tuple)) or len(reply) != 9:
        raise KeyFault(f"unexpected reply from Redis: {reply!r:.80}")
    values = []
    for index, item in enumerate(reply):
        text = item.decode("ascii", "replace") if isinstance(item, bytes) else str(item)
        try:
            value = float(text)
        except ValueError:
            raise KeyFault(f"unexpected reply from Redis: {reply!r:.80}") from None
        if math.isnan(value) or (math.isinf(value) and index != 5) or value < 0:
            raise KeyFault(f"unexpected reply from Redis: {reply!r:.80}")
        values.append(value)
    return values



def numbers(reply: Any) -> list[Optional[float]]:
    """The script's reply as 14 numbers (``None`` for a part not asked for), or
    :class:`KeyFault` for anything else."""
    if not isinstance(reply, (list, tuple)) or len(reply) != 14:
        raise KeyFault(f"unexpected reply from Redis: {reply!r:.80}")
    values: list[Optional[float]] = []
    for item in reply:
        text = item.decode("ascii", "replace") if isinstance(item, bytes) else item
        if text == "":
            values.append(None)
            continue
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise KeyFault(f"unexpected reply from Redis: {reply!r:.80}") from None
        if not math.isfinite(value):
            raise KeyFault(f"unexpected reply from Redis: {reply!r:.80}")
        values.append(value)
    if values[0] is None:
        raise KeyFault(f"unexpected reply from Redis: {reply!r:.80}")
    return values
