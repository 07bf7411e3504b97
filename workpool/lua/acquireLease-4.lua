-- acquireLease: take or renew the pool's main-loop lease. A fresh lease gets a new fencing epoch
-- (never reused), so every script of a paused or partitioned old holder is rejected by Redis.
-- A fresh holder also creates the dispatch group and writes the settings its code declares
-- (max_parallelism, rate limits, key limits) as the pool's defaults; live overrides set with
-- `configure` (the config hash) still win over them.
--
-- KEYS[1] lease     STRING  `<epoch>:<owner>` with a TTL
-- KEYS[2] epoch     STRING  counter of epochs handed out
-- KEYS[3] dispatch  STREAM  entries for workers (its group is created here)
-- KEYS[4] defaults  HASH    code-declared settings (replaced on each fresh acquisition)
-- Derived from KEYS[1]'s prefix (same hash tag): the admission keys (includes/admission.lua)
-- and stats, to let held jobs go when the declared limits were raised.
-- ARGV[1] owner     unique id of the calling process
-- ARGV[2] ttl       lease time to live (ms)
-- ARGV[3] group     consumer group of the dispatch stream
-- ARGV[4] default   max_parallelism declared in code
-- ARGV[5..] pairs   further declared settings: field, value, ... ('rate', 'rate:<name>',
--                   'max_per_key', 'max_per_key:<name>'; rates as "limit/per_ms")
-- Returns R.lease {code, token, ttl_ms}: OK with the live token `<epoch>:<owner>` when the
-- caller holds the lease (fresh or renewed), NOT_LEADER with '' and the holder's remaining ttl
-- otherwise. An argument out of its limits (a declared setting valid_setting refuses, say) is
-- an error reply with nothing written.
-- @include common
-- @include admission

local ttl = arg_int(2, 1, L.MAX_TTL_MS)
local declared = {'max_parallelism', arg_int(4, 0, L.MAX_SETTING)}
for i = 5, #ARGV, 2 do
  if ARGV[i] == 'max_parallelism' or not valid_setting(ARGV[i], ARGV[i + 1] or '') then
    error('declared setting ' .. tostring(ARGV[i]) .. ' has an unusable value ' ..
          tostring(ARGV[i + 1]))
  end
  declared[#declared + 1] = ARGV[i]
  declared[#declared + 1] = ARGV[i + 1]
end
local cur = rcall('GET', KEYS[1])
if cur then
  local owner = string.match(cur, '^%d+:(.*)$')
  if owner == ARGV[1] then
    rcall('PEXPIRE', KEYS[1], ttl)
    return reply(R.lease, {code = C.OK, token = cur, ttl_ms = ttl})
  end
  return reply(R.lease, {code = C.NOT_LEADER, token = '', ttl_ms = rcall('PTTL', KEYS[1])})
end
local ok = redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[3], '0', 'MKSTREAM')
if type(ok) == 'table' and ok.err and not string.find(ok.err, 'BUSYGROUP') then
  return redis.error_reply(ok.err)  -- a dispatch key of another type: nothing else written
end
local token = rcall('INCR', KEYS[2]) .. ':' .. ARGV[1]
rcall('SET', KEYS[1], token, 'PX', ttl)
local was = {}
local old = rcall('HGETALL', KEYS[4])
for i = 1, #old, 2 do was[old[i]] = old[i + 1] end
rcall('DEL', KEYS[4])
for i = 1, #declared, 1000 do  -- bounded calls stay far below Lua's unpack limit
  rcall('HSET', KEYS[4], unpack(declared, i, math.min(i + 999, #declared)))
end
-- A declared limit raised or lifted must not leave held jobs waiting: names whose declared rate
-- changed are looked at again now, and keys with running attempts may admit more.
local a = adm(string.sub(KEYS[1], 1, -(#K.lease + 1)), {})
for _, name in ipairs(rcall('ZRANGE', a.throttled, 0, -1)) do
  if (rcall('HGET', KEYS[4], 'rate:' .. name) or '') ~= (was['rate:' .. name] or '') then
    rcall('ZADD', a.throttled, 0, name)
  end
end
recheck_keys(a)
flush_counts(a.prefix .. K.stats, a.counts)
return reply(R.lease, {code = C.OK, token = token, ttl_ms = ttl})
