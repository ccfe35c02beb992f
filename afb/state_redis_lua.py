"""The Lua scripts of :mod:`afb.state_redis`: each write that reads first, atomic in Redis.

Redis runs a script alone, so two nodes (or a node and ``afb token``)
cannot interleave inside one.  Times are Redis's own (``TIME``), to the millisecond:
one clock for every node, and a value Redis's cjson (14 significant digits)
writes and reads back unchanged, so a row's ``revoked_at`` is its score.
"""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + math.floor(tonumber(t[2]) / 1000) / 1000
"""

#: KEYS rev:jti, rev:log; ARGV exp|'', reason, channel, value...: refuse each value
#: (a jti or family); a second revocation keeps the first's date and exp if none given.
REVOKE_JTI = _NOW + """
for i = 4, #ARGV do
  local value = ARGV[i]
  local old = redis.call('HGET', KEYS[1], value)
  local row
  if old then
    row = cjson.decode(old)
  else
    row = {revoked_at = now, exp = cjson.null}
  end
  row.reason = ARGV[2]
  if ARGV[1] ~= '' then row.exp = tonumber(ARGV[1]) end
  redis.call('HSET', KEYS[1], value, cjson.encode(row))
  redis.call('ZADD', KEYS[2], 'NX', row.revoked_at, 'jti:' .. value)
  redis.call('PUBLISH', ARGV[3], 'jti:' .. value)
end
return 1
"""

#: KEYS rev:sub, rev:log; ARGV sub, before|'' (now), reason, channel -> before.
#: The cut-off only moves forward.
REVOKE_SUB = _NOW + """
local asked = now
if ARGV[2] ~= '' then asked = tonumber(ARGV[2]) end
local before = asked
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local o = cjson.decode(old)
  if o.before > before then before = o.before end
end
redis.call('HSET', KEYS[1], ARGV[1],
           cjson.encode({before = before, reason = ARGV[3], revoked_at = now}))
redis.call('ZADD', KEYS[2], now, 'sub:' .. ARGV[1])
redis.call('PUBLISH', ARGV[4], 'sub:' .. ARGV[1])
return tostring(asked)
"""

#: KEYS tok, tokfam; ARGV jti, fam, row (JSON): a refresh replaces its family's
#: previous refresh; a family keeps its first token and its newest refresh.
RECORD_ISSUED = """
local jti, fam = ARGV[1], ARGV[2]
local row = cjson.decode(ARGV[3])
local members = {}
local old = redis.call('HGET', KEYS[2], fam)
if old then members = cjson.decode(old) end
local keep = {}
local refreshes = 0
if fam ~= jti then
  local prev = 0
  for _, m in ipairs(members) do
    local r = redis.call('HGET', KEYS[1], m)
    if r then
      local n = cjson.decode(r).refreshes or 0
      if n > prev then prev = n end
    end
    if m == fam then table.insert(keep, m) else redis.call('HDEL', KEYS[1], m) end
  end
  refreshes = prev + 1
else
  for _, m in ipairs(members) do
    if m ~= jti then table.insert(keep, m) end
  end
end
table.insert(keep, jti)
row.fam = fam
row.refreshes = refreshes
redis.call('HSET', KEYS[1], jti, cjson.encode(row))
redis.call('HSET', KEYS[2], fam, cjson.encode(keep))
return refreshes
"""

#: KEYS usage:days; ARGV (day, user, bytes_up, bytes_down, streams, peak_streams,
#: tunnel_seconds) repeated: increments, the larger peak stays.
ADD_USAGE = """
local s = string.char(31)
for i = 1, #ARGV, 7 do
  local day, user = ARGV[i], ARGV[i + 1]
  local key = 'afb:usage:' .. day
  redis.call('HINCRBY', key, user .. s .. 'bytes_up', ARGV[i + 2])
  redis.call('HINCRBY', key, user .. s .. 'bytes_down', ARGV[i + 3])
  redis.call('HINCRBY', key, user .. s .. 'streams', ARGV[i + 4])
  local peak = tonumber(redis.call('HGET', key, user .. s .. 'peak_streams') or '0')
  if tonumber(ARGV[i + 5]) > peak then peak = tonumber(ARGV[i + 5]) end
  redis.call('HSET', key, user .. s .. 'peak_streams', peak)
  redis.call('HINCRBYFLOAT', key, user .. s .. 'tunnel_seconds', ARGV[i + 6])
  redis.call('ZADD', KEYS[1], 0, day)
end
return 1
"""

#: KEYS nodes; ARGV node, user, count (this node's, the new stream included), limit, ttl
#: -> {admitted, sum over live nodes}.  Admitted: this node's count is stored.
STREAMS_ADMIT = _NOW + """
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[5]), '+inf')
local others = 0
for _, n in ipairs(nodes) do
  if n ~= ARGV[1] then
    others = others + tonumber(redis.call('HGET', 'afb:streams:' .. n, ARGV[2]) or '0')
  end
end
local count, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
if limit > 0 and others + count > limit then return {0, others + count} end
local key = 'afb:streams:' .. ARGV[1]
redis.call('HSET', key, ARGV[2], count)
redis.call('EXPIRE', key, ARGV[5])
redis.call('ZADD', KEYS[1], now, ARGV[1])
return {1, others + count}
"""

#: KEYS nodes; ARGV node, ttl, (user, count) repeated: the heartbeat rewrites this
#: node's counts (so a lost update heals) and keeps them alive for ttl seconds.
STREAMS_PUBLISH = _NOW + """
local key = 'afb:streams:' .. ARGV[1]
redis.call('DEL', key)
for i = 3, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > 0 then redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
end
redis.call('EXPIRE', key, ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600)
return 1
"""

#: ARGV node, ttl, n, n active users, then users no longer active here -> for each
#: active user, the number of nodes it is active on (this one included).
ACTIVE_NODES = _NOW + """
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local out = {}
for i = 4, 3 + n do
  local key = 'afb:qos:' .. ARGV[i]
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - ttl)
  redis.call('EXPIRE', key, math.ceil(ttl))
  table.insert(out, redis.call('ZCARD', key))
end
for i = 4 + n, #ARGV do
  redis.call('ZREM', 'afb:qos:' .. ARGV[i], ARGV[1])
end
return out
"""

#: ARGV key, weight, max_failures, window, ban_time -> 1 if this failure started a ban.
#: The window starts at the first failure (a fixed window, not a sliding one).
AUTH_FAILED = """
local ban = 'afb:ban:' .. ARGV[1]
if redis.call('EXISTS', ban) == 1 then return 0 end
local fail = 'afb:fail:' .. ARGV[1]
local total = tonumber(redis.call('INCRBYFLOAT', fail, ARGV[2]))
if redis.call('PTTL', fail) < 0 then
  redis.call('PEXPIRE', fail, math.max(1, math.floor(tonumber(ARGV[4]) * 1000)))
end
if total >= tonumber(ARGV[3]) - 1e-9 then
  redis.call('DEL', fail)
  if tonumber(ARGV[5]) > 0 then
    redis.call('SET', ban, '1', 'PX', math.floor(tonumber(ARGV[5]) * 1000))
  end
  return 1
end
return 0
"""
