-- Admission control: which pending/retrying job may start next.
-- @include common
-- @include spec
-- Keys are derived from the pool's hash-tagged prefix (one cluster slot):
--   ready       ZSET  id -> rank: due jobs free to start, best first
--   keyq:<K>    ZSET  id -> rank: due jobs of concurrency key K waiting for K's limit
--   keyHead     HASH  K -> the one job of K in `ready` (or parked by a rate limit)
--   keyRunning  HASH  K -> attempts of K running now
--   nameq:<N>   ZSET  id -> rank: due jobs of job name N held by N's rate limit
--   throttled   ZSET  N -> time (ms) N's next token is expected
--   bucket:<S>  HASH  tokens, ts: token bucket of scope S (`pool` or `name:<N>`)
--   seq         STRING counter: each job's place in line, taken when it is enqueued
--   unstarted   HASH  id -> packed spec: every pending job (never started), wherever it waits
--   retrying    SET   every retrying job, wherever it waits (cancel_all)
--   keyDrain    ZSET  K -> 0: keys whose queue advance_key left unfinished (startJobs goes on)
-- a.leave[state] is the write that takes a pending or retrying job out of the one it is in.
--   config      HASH  live overrides; defaults HASH: values declared in code (config wins)
-- rank = -priority * 1e12 + seq: higher priority first, then the order jobs were enqueued in
-- (a retry keeps its place). Written with %.0f: Lua's own number format keeps 14 digits only.

local function adm(prefix, counts)
  local a = {prefix = prefix, counts = counts, ready = prefix .. K.ready,
             head = prefix .. K.key_heads, krun = prefix .. K.key_running,
             throttled = prefix .. K.throttled, seq = prefix .. K.seq,
             unstarted = prefix .. K.unstarted, retrying = prefix .. K.retrying,
             drain = prefix .. K.key_drain, config = prefix .. K.config,
             defaults = prefix .. K.defaults}
  a.leave = {pending = {'HDEL', a.unstarted}, retrying = {'SREM', a.retrying}}
  return a
end

-- A setting value within the limits (`field` decides its form): 0 or 1 for paused, a rate
-- "limit/per_ms", or a count.
local function valid_setting(field, v)
  if field == 'paused' then return v == '0' or v == '1' end
  if field == 'rate' or string.sub(field, 1, 5) == 'rate:' then
    local limit, per = string.match(v, '^(%d+)/(%d+)$')
    limit, per = tonumber(limit), tonumber(per)
    return limit ~= nil and limit >= 1 and limit <= L.MAX_RATE_LIMIT and per >= 1 and
           per <= L.MAX_RATE_PER_MS
  end
  if field == 'max_parallelism' or field == 'max_per_key' or
     string.sub(field, 1, 12) == 'max_per_key:' then
    return string.match(v, '^%d+$') ~= nil and tonumber(v) <= L.MAX_SETTING
  end
  return false
end

-- Effective setting: the live override, else the code-declared default; '' means "none". Both
-- are written validated; a value that is not (edited by hand, or by an older version) counts
-- as unset rather than stop admission.
local function setting(a, field)
  local v = rcall('HGET', a.config, field)
  if not v then v = rcall('HGET', a.defaults, field) end
  if not v or v == '' or not valid_setting(field, v) then return nil end
  return v
end

-- Token bucket of `scope`: capacity `limit`, refilled at limit/per_ms. Returns tokens now.
local function bucket_tokens(a, scope, spec, now)
  local limit, per = rate_of(spec)
  local h = rcall('HMGET', a.prefix .. K.bucket .. scope, 'tokens', 'ts')
  local tokens, ts = tonumber(h[1]), tonumber(h[2])
  if not tokens or not ts then return limit end
  return math.min(limit, tokens + math.max(0, now - ts) * limit / per)
end

-- Take one token (the caller checked there is one); an idle bucket expires full after per_ms.
local function bucket_take(a, scope, spec, now, tokens)
  local _, per = rate_of(spec)
  local k = a.prefix .. K.bucket .. scope
  rcall('HSET', k, 'tokens', tokens - 1, 'ts', now)
  rcall('PEXPIRE', k, per)
end

-- Milliseconds until the bucket holds one token again.
local function bucket_wait(spec, tokens)
  local limit, per = rate_of(spec)
  return math.max(1, math.ceil((1 - tokens) * per / limit))
end

local function key_limit(a, name)
  return tonumber(setting(a, 'max_per_key:' .. name) or setting(a, 'max_per_key') or '0')
end

-- K runs as many attempts as jobs named `name` allow per key (checked again at start: a limit
-- may have been lowered, or jobs of another name share K, since the job became ready).
local function key_at_limit(a, ckey, name)
  if not ckey or ckey == '' then return false end
  local limit = key_limit(a, name)
  return limit > 0 and tonumber(rcall('HGET', a.krun, ckey) or '0') >= limit
end

-- A due job joins the ready set, or its key's queue while the key is at its limit (or another
-- job of the key already stands for it in `ready`).
local function rank_of(priority, seq)
  return string.format('%.0f', -priority * 1e12 + seq)
end

local function make_ready(a, id, name, priority, seq, ckey)
  local rank = rank_of(priority, seq)
  if ckey and ckey ~= '' then
    local limit = key_limit(a, name)
    if limit > 0 then
      local running = tonumber(rcall('HGET', a.krun, ckey) or '0')
      local head = rcall('HGET', a.head, ckey)
      local head_rank = head and rcall('ZSCORE', a.ready, head)
      if head_rank and tonumber(rank) < tonumber(head_rank) then
        -- a better-ranked job of the key (enqueued earlier in the same ms, or of a higher
        -- priority) stands for it instead; the head it replaces waits in the key's queue
        rcall('ZREM', a.ready, head)
        rcall('ZADD', a.prefix .. K.key_queue .. ckey, head_rank, head)
        bump(a.counts, N.HELD_BY_KEY)
        rcall('HSET', a.head, ckey, id)
        rcall('ZADD', a.ready, rank, id)
        return
      end
      if head or running >= limit then
        rcall('ZADD', a.prefix .. K.key_queue .. ckey, rank, id)
        bump(a.counts, N.HELD_BY_KEY)
        return
      end
      rcall('HSET', a.head, ckey, id)
    end
  end
  rcall('ZADD', a.ready, rank, id)
end

-- Let the next waiting job of key K stand for it in `ready`, if K is below its limit; a job of
-- a name without a key limit goes to `ready` and the next one is looked at. At most
-- L.KEY_STEPS jobs move per call: a key with more to move is listed in `keyDrain`, and
-- startJobs goes on with it, a batch at a time. Returns how many jobs moved.
local function advance_key(a, ckey)
  if rcall('HEXISTS', a.head, ckey) == 1 then return 0 end
  local q = a.prefix .. K.key_queue .. ckey
  for moved = 0, L.KEY_STEPS - 1 do
    local nxt = rcall('ZRANGE', q, 0, 0, 'WITHSCORES')
    if #nxt == 0 then return moved end
    local j = job_fields(a, nxt[1])
    local limit = key_limit(a, j and j.spec[S.name] or '')
    if limit > 0 and tonumber(rcall('HGET', a.krun, ckey) or '0') >= limit then return moved end
    rcall('ZREM', q, nxt[1])
    bump(a.counts, N.HELD_BY_KEY, -1)
    rcall('ZADD', a.ready, nxt[2], nxt[1])
    if limit > 0 then
      rcall('HSET', a.head, ckey, nxt[1])
      return moved + 1
    end
  end
  if rcall('EXISTS', q) == 1 then rcall('ZADD', a.drain, 0, ckey) end
  return L.KEY_STEPS
end

-- Keys whose limits may have changed (a config entry, a new leader's declarations): looked at
-- again by startJobs, in bounded steps, rather than here.
local function recheck_keys(a)
  for _, ckey in ipairs(rcall('HKEYS', a.krun)) do rcall('ZADD', a.drain, 0, ckey) end
end

-- An attempt of key K started (+1) or ended (-1).
local function key_running(a, ckey, delta)
  if not ckey or ckey == '' then return end
  if rcall('HINCRBY', a.krun, ckey, delta) <= 0 then rcall('HDEL', a.krun, ckey) end
  if delta < 0 then advance_key(a, ckey) end
end

-- A pending/retrying job (in `state`) leaves every admission queue (cancel); its key moves on.
local function unqueue(a, id, state, name, ckey)
  local leave = a.leave[state]
  rcall(leave[1], leave[2], id)
  rcall('ZREM', a.ready, id)
  if rcall('ZREM', a.prefix .. K.name_queue .. name, id) == 1 then
    bump(a.counts, N.HELD_BY_RATE, -1)
  end
  if ckey and ckey ~= '' then
    if rcall('ZREM', a.prefix .. K.key_queue .. ckey, id) == 1 then
      bump(a.counts, N.HELD_BY_KEY, -1)
    end
    if rcall('HGET', a.head, ckey) == id then rcall('HDEL', a.head, ckey) end
    advance_key(a, ckey)  -- it may have stood for the key, or been first in line ahead of a job
  end                     -- that its key's limit lets go (another name, another limit)
end
