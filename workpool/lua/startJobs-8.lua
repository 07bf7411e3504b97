-- startJobs: move due jobs from pending/retrying to running while running < max_parallelism,
-- oldest due first, and hand out due on_complete deliveries. Each start increments the attempt
-- (the fencing token of that run) and appends one entry to the dispatch stream for workers.
--
-- KEYS[1] lease          STRING  main-loop lease, checked against ARGV[1] (fencing)
-- KEYS[2] config         HASH    max_parallelism (0 pauses the pool)
-- KEYS[3] due            ZSET    id -> due time (ms): pending and retrying jobs
-- KEYS[4] running        ZSET    id -> start time (ms)
-- KEYS[5] dispatch       STREAM  entries for workers
-- KEYS[6] deadlines      ZSET    id -> earliest time (ms) its timeout could pass
-- KEYS[7] callbacksDue   ZSET    id -> time (ms) a failed delivery is tried again
-- KEYS[8] stats          HASH    counters
-- ARGV[1] token          lease token `<epoch>:<owner>`
-- ARGV[2] prefix         key prefix `{wp:<pool>}:`
-- ARGV[3] batch          max starts (and max deliveries) in this call (integer)
-- ARGV[4] now            ms since epoch, or '' for Redis TIME
-- Returns {code, started, running, max_parallelism, next_due_ms, next_callback_ms, now, ids...}
-- with -1 for "nothing scheduled"; code is NOT_LEADER (nothing written) or OK.
-- @include common

if not holds_lease(KEYS[1], ARGV[1]) then return {C.NOT_LEADER, 0, 0, 0, -1, -1, 0} end
local prefix = ARGV[2]
local batch = tonumber(ARGV[3])
local now = now_ms(ARGV[4])
local maxp = tonumber(rcall('HGET', KEYS[2], 'max_parallelism') or '0')
local running = rcall('ZCARD', KEYS[4])
local counts = {}
local started = {}

local free = math.min(maxp - running, batch)
if free > 0 then
  local ids = rcall('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, free)
  for _, id in ipairs(ids) do
    local jk = prefix .. 'job:' .. id
    local h = rcall('HMGET', jk, 'state', 'attempts', 'name', 'args', 'kwargs', 'enc', 'timeout_ms')
    rcall('ZREM', KEYS[3], id)
    if h[1] == 'pending' or h[1] == 'retrying' then
      local attempt = tonumber(h[2]) + 1
      local eid = rcall('XADD', KEYS[5], '*', 'kind', 'run', 'id', id, 'attempt', attempt,
                        'name', h[3], 'args', h[4], 'kwargs', h[5], 'enc', h[6], 'timeout_ms', h[7])
      rcall('HSET', jk, 'state', 'running', 'attempts', attempt, 'started_at', now, 'dispatch', eid)
      rcall('ZADD', KEYS[4], now, id)
      local timeout = tonumber(h[7])
      if timeout > 0 then rcall('ZADD', KEYS[6], now + timeout, id) end
      started[#started + 1] = id
      if h[1] == 'retrying' then bump(counts, 'retrying', -1) end
    else
      bump(counts, 'orphan_due_entries')
    end
  end
  if #started > 0 then bump(counts, 'started', #started) end
end

local deliveries = rcall('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, batch)
for _, id in ipairs(deliveries) do
  local jk = prefix .. 'job:' .. id
  local h = rcall('HMGET', jk, 'cb', 'cb_n')
  rcall('ZREM', KEYS[7], id)
  if h[1] == 'pending' then
    local eid = rcall('XADD', KEYS[5], '*', 'kind', 'cb', 'id', id, 'n', h[2])
    rcall('HSET', jk, 'cb_entry', eid)
  end
end

local function first_score(key)
  local r = rcall('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #r == 0 then return -1 end
  return tonumber(r[2])
end

flush_counts(KEYS[8], counts)
local out = {C.OK, #started, running + #started, maxp, first_score(KEYS[3]),
             first_score(KEYS[7]), now}
for _, id in ipairs(started) do out[#out + 1] = id end
return out
