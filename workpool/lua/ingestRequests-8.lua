-- ingestRequests: apply one batch of client requests from pendingStart, oldest first.
--   enqueue -> pending (new job, packed into `unstarted`: see includes/unstarted.lua), or
--              DUPLICATE_ENQUEUE when a job with that id exists; a job due already joins
--              admission (ready, or its key's queue) at once, a later one waits in `due` until
--              startJobs promotes it
--   cancel  -> pending/retrying become canceled; running is marked (never retried)
--   config  -> live overrides of the pool's settings (max_parallelism, paused, rate limits,
--              key limits), validated in full before any is written
-- Malformed entries (and any whose application raises) are set aside in the rejected record
-- with their raw fields. Applied entries are trimmed from the stream (one XTRIM per call), so
-- it holds only requests not yet applied.
--
-- KEYS[1] lease          STRING  main-loop lease, checked against ARGV[1] (fencing)
-- KEYS[2] pendingStart   STREAM  client requests
-- KEYS[3] incoming       SET     ids appended but not applied yet
-- KEYS[4] due            ZSET    id -> due time (ms)
-- KEYS[5] stats          HASH    counters
-- KEYS[6] rejected       STREAM  malformed entries set aside (capped ~10000)
-- KEYS[7] config         HASH    live configuration
-- KEYS[8] dispatch       STREAM  (terminal transitions may record an on_complete delivery)
-- Derived from ARGV[2] (same hash tag): seq, priorities, unstarted, retrying and the admission
-- keys listed in includes/admission.lua.
-- ARGV[1] token          lease token `<epoch>:<owner>`
-- ARGV[2] prefix         key prefix `{wp:<pool>}:`
-- ARGV[3] batch          max entries applied in this call (integer)
-- ARGV[4] max_payload    max bytes of args + kwargs + context (integer)
-- ARGV[5] now            ms since epoch, or '' for Redis TIME
-- ARGV[6] retention      ms a finished job is kept
-- ARGV[7] defaults       "max_attempts,initial_backoff_ms,base" for entries that omit them
-- ARGV[8] group          consumer group of the dispatch stream
-- Returns {code, applied, last_entry_id, id1, code1, id2, code2, ...}: NOT_LEADER (nothing
-- written) or OK, with the job id and a code per entry
-- (ENQUEUED, DUPLICATE_ENQUEUE, CANCELED, CANCEL_MARKED, CANCEL_NOOP,
-- CONFIGURED, REJECTED).
-- @include common
-- @include finish

if not holds_lease(KEYS[1], ARGV[1]) then return {C.NOT_LEADER, 0, ''} end
local prefix = ARGV[2]
local max_payload = tonumber(ARGV[4])
local ctx = {prefix = prefix, dispatch = KEYS[8], group = ARGV[8], now = now_ms(ARGV[5]),
             retention = tonumber(ARGV[6]), counts = {}, finished = 0,
             running = '', deadlines = '', due = KEYS[4], priorities = {}}
ctx.adm = adm(prefix, ctx.counts)
-- Enqueues join `unstarted` (and, without a key, `ready`) in one call per run of enqueues: the
-- deferred writes are flushed before a cancel or config entry reads those keys, and at the end;
-- `fresh` holds the ids deferred meanwhile, so a repeated id in one batch is still a duplicate.
ctx.defer = {}
local add_unstarted, add_ready = {'HSET', ctx.adm.unstarted}, {'ZADD', ctx.adm.ready}
local fresh = {}
local seq = nil  -- the pool's seq counter, read once and written back once
local d_attempts, d_backoff, d_base = string.match(ARGV[7], '^([^,]+),([^,]+),([^,]+)$')

-- Redis's cmsgpack knows no bin or ext types (msgpack-python writes bytes as bin), so msgpack is
-- checked by walking it: raises on malformed input; returns a table for an array or map.
local mp_fixed = {[0xc0] = 0, [0xc2] = 0, [0xc3] = 0, [0xca] = 4, [0xcb] = 8, [0xcc] = 1,
  [0xcd] = 2, [0xce] = 4, [0xcf] = 8, [0xd0] = 1, [0xd1] = 2, [0xd2] = 4, [0xd3] = 8,
  [0xd4] = 2, [0xd5] = 3, [0xd6] = 5, [0xd7] = 9, [0xd8] = 17}
local mp_sized = {[0xc4] = {1, 0}, [0xc5] = {2, 0}, [0xc6] = {4, 0}, [0xc7] = {1, 1},
  [0xc8] = {2, 1}, [0xc9] = {4, 1}, [0xd9] = {1, 0}, [0xda] = {2, 0}, [0xdb] = {4, 0}}
local mp_counted = {[0xdc] = {2, 1}, [0xdd] = {4, 1}, [0xde] = {2, 2}, [0xdf] = {4, 2}}

local function msgpack_check(s)
  local i, n, need = 1, #s, 1
  if n == 0 then return nil end
  local function uint(len)
    if i + len > n then error('truncated msgpack') end
    local v = 0
    for k = i + 1, i + len do v = v * 256 + string.byte(s, k) end
    return v
  end
  while need > 0 do
    if i > n then error('truncated msgpack') end
    local b = string.byte(s, i)
    local skip, items = 0, 0
    if b <= 0x7f or b >= 0xe0 then skip = 0
    elseif b <= 0x8f then items = 2 * (b - 0x80)
    elseif b <= 0x9f then items = b - 0x90
    elseif b <= 0xbf then skip = b - 0xa0
    elseif mp_fixed[b] then skip = mp_fixed[b]
    elseif mp_sized[b] then skip = mp_sized[b][1] + mp_sized[b][2] + uint(mp_sized[b][1])
    elseif mp_counted[b] then
      skip, items = mp_counted[b][1], mp_counted[b][2] * uint(mp_counted[b][1])
    else error('invalid msgpack byte') end
    i = i + 1 + skip
    need = need - 1 + items
    if need > n - i + 1 then error('truncated msgpack') end
  end
  if i ~= n + 1 then error('trailing bytes after the msgpack value') end
  local first = string.byte(s, 1)
  if (first >= 0x80 and first <= 0x9f) or (first >= 0xdc and first <= 0xdf) then return {} end
  return true
end

local decoders = {msgpack = msgpack_check, json = cjson.decode}

-- args must encode an array and kwargs a map (a map passed as args would call fn(*keys)).
-- msgpack: read the type byte; JSON: array keys are 1..n, map keys are strings ({} fits both).
local function has_shape(enc, raw, value, want)
  if enc == 'msgpack' then
    local b = string.byte(raw, 1) or -1
    if want == 'array' then return (b >= 0x90 and b <= 0x9f) or b == 0xdc or b == 0xdd end
    return (b >= 0x80 and b <= 0x8f) or b == 0xde or b == 0xdf
  end
  if type(value) ~= 'table' then return false end
  for k in pairs(value) do
    if want == 'map' and type(k) ~= 'string' then return false end
    if want == 'array' and (type(k) ~= 'number' or k < 1 or k ~= math.floor(k)) then
      return false
    end
  end
  return true
end

-- A number field: nil when absent, false when present but not a number within [lo, hi].
local function number_field(f, name, default, lo, hi)
  local raw = f[name]
  if raw == nil or raw == '' then return tonumber(default) end
  local n = tonumber(raw)
  if n == nil or n ~= n or n < lo or n > hi then return false end
  return n
end

-- A rejected enqueue leaves `incoming` too: status() then reports the id as unknown.
local function reject(entry_id, flat, reason)
  local f = fields_of(flat)
  if f.id then rcall('SREM', KEYS[3], f.id) end
  return set_aside(KEYS[6], entry_id, flat, reason, ctx.counts)
end

local function enqueue(entry_id, f, flat)
  local id = f.id
  if id == nil or id == '' then id = entry_id end
  if #id > 512 then return reject(entry_id, flat, 'field id is longer than 512 bytes') end
  local name = f.name
  if name == nil or name == '' then return reject(entry_id, flat, 'missing field name') end
  local enc = f.enc or 'msgpack'
  local decode = decoders[enc]
  if not decode then return reject(entry_id, flat, 'field enc must be msgpack or json') end
  local size = 0
  for _, field in ipairs({'args', 'kwargs', 'context'}) do
    local raw = f[field]
    if raw ~= nil then
      size = size + #raw
      local ok, value = pcall(decode, raw)
      if not ok then return reject(entry_id, flat, 'field ' .. field .. ' is not valid ' .. enc) end
      local want = ({args = 'array', kwargs = 'map'})[field]
      if want and not has_shape(enc, raw, value, want) then
        return reject(entry_id, flat, 'field ' .. field .. ' must encode ' ..
                      (want == 'array' and 'an array' or 'a map'))
      end
    end
  end
  if size > max_payload then
    return reject(entry_id, flat, 'payload of ' .. size .. ' bytes is over the limit of ' .. max_payload)
  end
  local max_attempts = number_field(f, 'max_attempts', d_attempts, 1, 1000000)
  local backoff = number_field(f, 'initial_backoff_ms', d_backoff, 0, 1e12)
  local base = number_field(f, 'base', d_base, 1, 1000)
  local timeout = number_field(f, 'timeout_ms', 0, 0, 1e12)
  local run_at = number_field(f, 'run_at_ms', 0, 0, 1e15)
  local run_after = number_field(f, 'run_after_ms', 0, 0, 1e15)
  local priority = number_field(f, 'priority', 0, -1000, 1000)
  local ckey = f.concurrency_key or ''
  if #ckey > 512 then return reject(entry_id, flat, 'field concurrency_key is longer than 512 bytes') end
  if not (max_attempts and backoff and base and timeout and run_at and run_after and priority) then
    return reject(entry_id, flat, 'a numeric option is not a number in its allowed range')
  end
  if max_attempts ~= math.floor(max_attempts) then
    return reject(entry_id, flat, 'max_attempts must be an integer')
  end
  if priority ~= math.floor(priority) then
    return reject(entry_id, flat, 'priority must be an integer')
  end
  if f.id and f.id ~= '' then rcall('SREM', KEYS[3], id) end  -- only named ids are incoming
  if fresh[id] or rcall('EXISTS', prefix .. 'job:' .. id) == 1 or
     rcall('HEXISTS', ctx.adm.unstarted, id) == 1 then
    bump(ctx.counts, 'duplicate_enqueues')
    return C.DUPLICATE_ENQUEUE
  end
  local enqueued_at = tonumber(string.match(entry_id, '^(%d+)'))
  local due = math.max(run_at, enqueued_at + run_after)
  seq = (seq or tonumber(rcall('GET', ctx.adm.seq) or '0')) + 1
  fresh[id] = true
  defer(ctx.defer, add_unstarted, id, pack_job({
    name = name, enc = enc, max_attempts = max_attempts, backoff_ms = backoff, base = base,
    timeout_ms = timeout, enqueued_at = enqueued_at, due_at = due, priority = priority,
    seq = seq, args = f.args, kwargs = f.kwargs, context = f.context,
    on_complete = f.on_complete, ckey = ckey}))
  if not ctx.priorities[priority] then
    rcall('SADD', prefix .. 'priorities', priority)
    ctx.priorities[priority] = true
  end
  if due > ctx.now then
    rcall('ZADD', KEYS[4], due, id)
  elseif ckey == '' then  -- due already: straight to admission, no trip through `due`
    defer(ctx.defer, add_ready, rank_of(priority, seq), id)
  else
    make_ready(ctx.adm, id, name, priority, seq, ckey)
  end
  bump(ctx.counts, 'enqueued')
  return C.ENQUEUED
end

local function cancel(entry_id, f, flat)
  flush_deferred(ctx.defer)
  local id = f.id
  if id == nil or id == '' then return reject(entry_id, flat, 'cancel needs field id') end
  local jk = prefix .. 'job:' .. id
  local j = job_fields(ctx.adm, id, {'state', 'cancel', 'name', 'ckey', 'attempts', 'on_complete'})
  local state = j and j.state
  if state == 'pending' or state == 'retrying' then
    rcall('ZREM', KEYS[4], id)
    unqueue(ctx.adm, id, state, j.name, j.ckey)
    local extra = {'cancel', '1', 'cancel_attempt', j.attempts}
    if state == 'retrying' then bump(ctx.counts, 'retrying', -1)
    else extra = hash_fields(j, {'attempts', 0, unpack(extra)}) end  -- never started: whole hash
    finish(ctx, id, jk, 'canceled', 'canceled', j.on_complete, extra)
    return C.CANCELED
  elseif state == 'running' and j.cancel ~= '1' then
    rcall('HSET', jk, 'cancel', '1', 'cancel_attempt', j.attempts)
    bump(ctx.counts, 'cancel_marked')
    return C.CANCEL_MARKED
  end
  bump(ctx.counts, 'cancel_noop')
  return C.CANCEL_NOOP
end

-- A config value: '' clears the override (the code's default applies again); else it must fit.
local function config_value(field, v)
  if v == '' then return true end
  if field == 'paused' then return v == '0' or v == '1' end
  if field == 'rate' or string.sub(field, 1, 5) == 'rate:' then
    if v == 'none' then return true end
    local limit, per = string.match(v, '^(%d+)/(%d+)$')
    return limit ~= nil and tonumber(limit) >= 1 and tonumber(per) >= 1
  end
  if field == 'max_parallelism' or field == 'max_per_key' or
     string.sub(field, 1, 12) == 'max_per_key:' then
    return string.match(v, '^%d+$') ~= nil
  end
  return false
end

-- Live configuration: validate every field, then write them all (or nothing).
local function configure(entry_id, f, flat)
  flush_deferred(ctx.defer)
  local sets, keys_changed, n = {}, false, 0
  for i = 1, #flat, 2 do
    local field, v = flat[i], flat[i + 1]
    if field ~= 'op' and field ~= 'reset' then
      if not config_value(field, v) then
        return reject(entry_id, flat, 'config field ' .. field .. ' has an unusable value')
      end
      sets[field] = v
      n = n + 1
      if string.sub(field, 1, 11) == 'max_per_key' then keys_changed = true end
    end
  end
  if n == 0 and f.reset ~= '1' then return reject(entry_id, flat, 'config sets nothing') end
  if f.reset == '1' then
    for _, field in ipairs(rcall('HKEYS', KEYS[7])) do  -- a dropped rate override: re-check
      if string.sub(field, 1, 5) == 'rate:' and not sets[field] then sets[field] = '' end
    end
    rcall('DEL', KEYS[7]); keys_changed = true
  end
  local a = ctx.adm
  for field, v in pairs(sets) do
    if v == '' then rcall('HDEL', KEYS[7], field)
    else rcall('HSET', KEYS[7], field, v == 'none' and '' or v) end
    if string.sub(field, 1, 5) == 'rate:' then
      rcall('ZADD', a.throttled, 'XX', 0, string.sub(field, 6))  -- held jobs: look again now
    end
  end
  if keys_changed then  -- a raised key limit: keys with running attempts may admit more now
    for _, ckey in ipairs(rcall('HKEYS', a.krun)) do advance_key(a, ckey) end
  end
  return C.CONFIGURED
end

local handlers = {enqueue = enqueue, cancel = cancel, config = configure}
local result = apply_entries(KEYS[2], tonumber(ARGV[3]), 'op', 'enqueue', handlers, reject)
flush_deferred(ctx.defer)
if seq then rcall('SET', ctx.adm.seq, seq) end
count_throughput(ctx)
flush_counts(KEYS[5], ctx.counts)
return result
