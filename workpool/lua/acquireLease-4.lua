-- acquireLease: take or renew the pool's main-loop lease. A fresh lease gets a new fencing epoch
-- (never reused), so every script of a paused or partitioned old holder is rejected by Redis.
-- The first holder also creates the dispatch group and seeds max_parallelism if unset.
--
-- KEYS[1] lease     STRING  `<epoch>:<owner>` with a TTL
-- KEYS[2] epoch     STRING  counter of epochs handed out
-- KEYS[3] dispatch  STREAM  entries for workers (its group is created here)
-- KEYS[4] config    HASH    max_parallelism
-- ARGV[1] owner     unique id of the calling process
-- ARGV[2] ttl       lease time to live (ms)
-- ARGV[3] group     consumer group of the dispatch stream
-- ARGV[4] default   max_parallelism to seed when the pool has none configured
-- Returns {code, token, ttl_ms}: OK with the live token `<epoch>:<owner>` when the caller holds
-- the lease (fresh or renewed), NOT_LEADER with '' and the holder's remaining ttl otherwise.
-- @include common

local cur = rcall('GET', KEYS[1])
if cur then
  local owner = string.match(cur, '^%d+:(.*)$')
  if owner == ARGV[1] then
    rcall('PEXPIRE', KEYS[1], ARGV[2])
    return {C.OK, cur, tonumber(ARGV[2])}
  end
  return {C.NOT_LEADER, '', rcall('PTTL', KEYS[1])}
end
local token = rcall('INCR', KEYS[2]) .. ':' .. ARGV[1]
rcall('SET', KEYS[1], token, 'PX', ARGV[2])
local ok = redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[3], '0', 'MKSTREAM')
if type(ok) == 'table' and ok.err and not string.find(ok.err, 'BUSYGROUP') then
  return redis.error_reply(ok.err)
end
rcall('HSETNX', KEYS[4], 'max_parallelism', ARGV[4])
return {C.OK, token, tonumber(ARGV[2])}
