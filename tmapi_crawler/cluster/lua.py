"""Every Lua script of distributed mode, in one place.

Each script is one atomic step on the Redis server, so that no worker killed
between two commands leaves the crawl half-changed.  Time is Redis's own
(``TIME``, in :data:`LUA_NOW`), so the workers' clocks do not matter.  The
queue's scripts are used by :mod:`.queue`, the gate's by :mod:`.gate`.
"""

# -- the leased queue -------------------------------------------------------------

#: Lua: ``now``, Redis's own clock in milliseconds (the workers' clocks do not matter).
LUA_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: queue, data, seq, leases, dupefilter; ARGV: payload, priority, lease
# it replaces ('' for none), fingerprint ('' not to filter).  Marking the
# request seen and queueing it is one step: a worker killed between the two
# would leave a request seen but never queued, lost to the worker that redoes
# its parent.  -> the new id, or false for a request seen before.
PUSH = """
if ARGV[4] ~= '' and redis.call('SADD', KEYS[5], ARGV[4]) == 0 then return false end
local id = string.format('%016d', redis.call('INCR', KEYS[3]))
redis.call('HSET', KEYS[2], id, ARGV[1])
redis.call('ZADD', KEYS[1], -tonumber(ARGV[2]), id)
if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('ZREM', KEYS[1], ARGV[3])
  redis.call('HDEL', KEYS[2], ARGV[3])
end
return id
"""

# KEYS: queue, data, leases; ARGV: lease ms.  The highest priority, then the oldest.
POP = (
    LUA_NOW
    + """
local ids = redis.call('ZRANGE', KEYS[1], 0, 0)
if #ids == 0 then return false end
local id = ids[1]
redis.call('ZREM', KEYS[1], id)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[1]), id)
return {id, redis.call('HGET', KEYS[2], id)}
"""
)

# KEYS: leases, queue, data, grace; ARGV: ids to put back, or none: every
# expired lease, unless Redis came back from an outage less than a lease
# timeout ago (the grace key): the workers are renewing what they held.
REQUEUE = (
    LUA_NOW
    + """
local ids = ARGV
if #ids == 0 then
  if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local payload = redis.call('HGET', KEYS[3], id)
    if payload then
      local ok, req = pcall(cjson.decode, payload)
      local prio = 0
      if ok and type(req) == 'table' and tonumber(req['priority']) then prio = tonumber(req['priority']) end
      redis.call('ZADD', KEYS[2], -prio, id)
      n = n + 1
    end
  end
end
return n
"""
)

# KEYS: leases; ARGV: lease ms, ids.  Only leases still held are renewed.
RENEW = (
    LUA_NOW
    + """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
return #ARGV - 1
"""
)

# KEYS: leases, queue, data; ARGV: ids done.
ACK = """
for _, id in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return #ARGV
"""


# -- the shared call gate ---------------------------------------------------------

# KEYS: gate, holders, admissions; ARGV: holder, holder ms, cap, start.
# Each call let through is numbered, and the count of calls in flight it made
# is kept (admissions: a sorted set, number -> number x 10^6 + count), so that a
# release can know the most calls that were in flight at any moment of its
# call's life, whichever worker sent them.  -> {granted, calls in flight
# (with this one), probe, ms paused or -1, the call's number}
ACQUIRE = (
    LUA_NOW
    + """
local function admitted(count)
  local number = redis.call('HINCRBY', KEYS[1], 'admitted', 1)
  redis.call('ZADD', KEYS[3], number, string.format('%d', number * 1000000 + count))
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', number - 100000)
  return number
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local g = redis.call('HMGET', KEYS[1], 'limit', 'paused_since', 'probe_at', 'probe_holder')
local limit = math.min(tonumber(g[1]) or tonumber(ARGV[4]), tonumber(ARGV[3]))
local n = redis.call('ZCARD', KEYS[2])
if g[2] then
  local paused = now - tonumber(g[2])
  if (g[4] and redis.call('ZSCORE', KEYS[2], g[4])) or now < tonumber(g[3]) then
    return {0, n, 0, paused, 0}
  end
  redis.call('HSET', KEYS[1], 'probe_holder', ARGV[1])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
  return {1, n + 1, 1, paused, admitted(n + 1)}
end
if n >= limit then return {0, n, 0, -1, 0} end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
return {1, n + 1, 0, -1, admitted(n + 1)}
"""
)

# KEYS: gate, holders, admissions; ARGV: holder, outcome, calls in flight
# when it was sent, probe, cap, start, first probe ms, longest probe interval
# ms, PROBE_MOST, the call's number, the calls in flight it made, PROBE_FIRST, PROBE_BACKOFF (the rule is
# tmapi_crawler.calls.ceiling.AdaptiveLimit's, the reference, step for step).  A 503 proves the limit below the most
# calls in flight during its call's life: every call the account had in
# flight when it refused this one was let through before and not yet
# released, so it was counted then, whatever order the calls reached it in.
# -> {limit, ceiling or -1, event, probe interval ms or -1, that most}
RELEASE = (
    LUA_NOW
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
local sent = tonumber(ARGV[3])
if ARGV[2] == 'concurrency' then
  local most = sent
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[10], '+inf')) do
    most = math.max(most, tonumber(entry) % 1000000)
  end
  sent = math.min(most, sent + 1)
end
local g = redis.call('HMGET', KEYS[1], 'limit', 'ceiling', 'paused_since', 'probe_interval')
local cap = tonumber(ARGV[5])
local limit = math.min(tonumber(g[1]) or tonumber(ARGV[6]), cap)
local ceiling = tonumber(g[2])
local outcome = ARGV[2]
local probe = ARGV[4] == '1'
local event = ''
if outcome == 'concurrency' then
  local new = math.max(1, math.min(limit, sent - 1))
  local probing = tonumber(redis.call('HGET', KEYS[1], 'probing'))
  if probing and new < probing then
    -- the probe failed: PROBE_BACKOFF times as long before the next
    local rounds = tonumber(redis.call('HGET', KEYS[1], 'probe_rounds')) or tonumber(ARGV[12])
    redis.call('HSET', KEYS[1], 'probe_rounds', math.min(rounds * tonumber(ARGV[13]), tonumber(ARGV[9])))
    redis.call('HDEL', KEYS[1], 'probing')
  end
  if new ~= ceiling then event = 'ceiling' end
  limit = new
  ceiling = new
  redis.call('HSET', KEYS[1], 'limit', limit, 'ceiling', ceiling, 'successes', 0)
elseif outcome == 'quota' then
  if not g[3] then
    redis.call('HSET', KEYS[1], 'paused_since', now, 'probe_interval', ARGV[7], 'probe_at', now + tonumber(ARGV[7]))
    redis.call('HDEL', KEYS[1], 'probe_holder')
    event = 'paused'
  elseif probe then
    local interval = math.min(tonumber(g[4]) * 2, tonumber(ARGV[8]))
    redis.call('HSET', KEYS[1], 'probe_interval', interval, 'probe_at', now + interval)
    redis.call('HDEL', KEYS[1], 'probe_holder')
  end
elseif outcome == 'none' then
  if probe and g[3] then
    redis.call('HSET', KEYS[1], 'probe_at', now + tonumber(g[4]))
    redis.call('HDEL', KEYS[1], 'probe_holder')
  end
elseif outcome ~= 'auth' then
  if g[3] then
    if probe then
      redis.call('HDEL', KEYS[1], 'paused_since', 'probe_at', 'probe_interval', 'probe_holder')
      event = 'resumed'
    end
  elseif not ceiling then
    -- slow start, up to twice the most calls a success was sent with
    local proven = math.max(tonumber(redis.call('HGET', KEYS[1], 'proven')) or 0, sent)
    limit = math.min(cap, limit + 1, 2 * math.max(proven, tonumber(ARGV[6])))
    redis.call('HSET', KEYS[1], 'limit', limit, 'proven', proven)
  else
    -- at the ceiling: probed one higher after probe_rounds round trips
    local s = redis.call('HINCRBY', KEYS[1], 'successes', 1)
    local rounds = tonumber(redis.call('HGET', KEYS[1], 'probe_rounds')) or tonumber(ARGV[12])
    if redis.call('HEXISTS', KEYS[1], 'probing') == 1 and s >= ceiling then
      -- a round trip at the probed ceiling without a 503: it holds
      rounds = tonumber(ARGV[12])
      redis.call('HSET', KEYS[1], 'probe_rounds', rounds)
      redis.call('HDEL', KEYS[1], 'probing')
    end
    if s >= rounds * math.max(ceiling, 1) and ceiling < cap then
      ceiling = ceiling + 1
      limit = ceiling
      redis.call('HSET', KEYS[1], 'limit', limit, 'ceiling', ceiling, 'successes', 0, 'probing', ceiling)
    end
  end
end
return {limit, ceiling or -1, event, tonumber(redis.call('HGET', KEYS[1], 'probe_interval')) or -1, sent}
"""
)


# -- media claims ---------------------------------------------------------------------

# KEYS: the claim; ARGV: the worker's own value.  A claim that timed out and
# was taken by another worker is not this worker's to end.
UNCLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# -- one alert per crawl ----------------------------------------------------------------

# KEYS: the workers sending alerts (a sorted set: worker -> deadline), their
# reports (a list); ARGV: this worker, its report (JSON).  The report is
# kept; the worker leaves, and so do those whose deadline passed (they died);
# the last one out gets every report, to send as the crawl's one alert.
# -> the reports, or false while other workers are still crawling.
ALERT_LEAVE = (
    LUA_NOW
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) > 0 then return false end
local reports = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return reports
"""
)


# -- runs: the workers crawling together now ----------------------------------------------

# KEYS: the run's workers (a sorted set: worker -> deadline), the run's id,
# the run's totals, the run's refreshes spent; ARGV: this worker, ms it stays a member unless renewed, a
# new id.  A worker that finds no live worker starts a new run (with no
# totals: those of a run whose workers died are not this one's).  -> the
# run's id.
RUN_JOIN = (
    LUA_NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], ARGV[3])
  redis.call('DEL', KEYS[3], KEYS[4])
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('GET', KEYS[2])
"""
)

# KEYS: the run's workers, the run's id, the run's totals (a hash), the
# run's refreshes spent; ARGV:
# this worker, then name, count pairs of what it did.  Its counts are added
# to the run's in the same step as it leaves; the last one out ends the run
# (the next worker starts a new one) and gets the totals (a flat list of
# names and counts); the others get false.
RUN_LEAVE = (
    LUA_NOW
    + """
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) > 0 then return false end
local totals = redis.call('HGETALL', KEYS[3])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return totals
"""
)
