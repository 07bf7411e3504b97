-- ingestRequests: apply one batch of client requests from pendingStart, oldest first.
--   enqueue -> pending (new job), or DUPLICATE_ENQUEUE when a job with that id exists
--   cancel  -> pending/retrying become canceled; running is marked (never retried)
--   config  -> live pool configuration (max_parallelism)
-- Malformed entries are set aside in the rejected record with their raw fields. Every entry is
-- deleted once applied, so the stream holds only requests not yet applied.
--
-- KEYS[1] lease          STRING  main-loop lease, checked against ARGV[1] (fencing)
-- KEYS[2] pendingStart   STREAM  client requests
-- KEYS[3] incoming       SET     ids appended but not applied yet
-- KEYS[4] due            ZSET    id -> due time (ms)
-- KEYS[5] stats          HASH    counters
-- KEYS[6] rejected       STREAM  malformed entries set aside (capped ~10000)
-- KEYS[7] config         HASH    live configuration
-- KEYS[8] dispatch       STREAM  (terminal transitions may record an on_complete delivery)
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
             running = '', deadlines = '', due = KEYS[4]}
local d_attempts, d_backoff, d_base = string.match(ARGV[7], '^([^,]+),([^,]+),([^,]+)$')

local decoders = {msgpack = cmsgpack.unpack, json = cjson.decode}

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
      if field ~= 'context' and type(value) ~= 'table' then
        return reject(entry_id, flat, 'field ' .. field .. ' must encode an array or map')
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
  if not (max_attempts and backoff and base and timeout and run_at and run_after) then
    return reject(entry_id, flat, 'a numeric option is not a number in its allowed range')
  end
  if max_attempts ~= math.floor(max_attempts) then
    return reject(entry_id, flat, 'max_attempts must be an integer')
  end
  local jk = prefix .. 'job:' .. id
  rcall('SREM', KEYS[3], id)
  if rcall('EXISTS', jk) == 1 then
    bump(ctx.counts, 'duplicate_enqueues')
    return C.DUPLICATE_ENQUEUE
  end
  local enqueued_at = tonumber(string.match(entry_id, '^(%d+)'))
  local due = math.max(run_at, enqueued_at + run_after)
  rcall('HSET', jk, 'state', 'pending', 'name', name, 'enc', enc, 'attempts', 0,
        'max_attempts', max_attempts, 'backoff_ms', backoff, 'base', base, 'timeout_ms', timeout,
        'enqueued_at', enqueued_at, 'due_at', due, 'args', f.args or '', 'kwargs', f.kwargs or '',
        'context', f.context or '', 'on_complete', f.on_complete or '')
  rcall('ZADD', KEYS[4], due, id)
  bump(ctx.counts, 'enqueued')
  return C.ENQUEUED
end

local function cancel(entry_id, f, flat)
  local id = f.id
  if id == nil or id == '' then return reject(entry_id, flat, 'cancel needs field id') end
  local jk = prefix .. 'job:' .. id
  local h = rcall('HMGET', jk, 'state', 'cancel')
  local state = h[1]
  if state == 'pending' or state == 'retrying' then
    rcall('ZREM', KEYS[4], id)
    rcall('HSET', jk, 'cancel', '1')
    if state == 'retrying' then bump(ctx.counts, 'retrying', -1) end
    finish(ctx, id, jk, 'canceled', 'canceled')
    return C.CANCELED
  elseif state == 'running' and h[2] ~= '1' then
    rcall('HSET', jk, 'cancel', '1')
    bump(ctx.counts, 'cancel_marked')
    return C.CANCEL_MARKED
  end
  bump(ctx.counts, 'cancel_noop')
  return C.CANCEL_NOOP
end

local function configure(entry_id, f, flat)
  local maxp = tonumber(f.max_parallelism or '')
  if maxp == nil or maxp < 0 or maxp ~= math.floor(maxp) then
    return reject(entry_id, flat, 'config needs max_parallelism, an integer >= 0')
  end
  rcall('HSET', KEYS[7], 'max_parallelism', maxp)
  return C.CONFIGURED
end

local handlers = {enqueue = enqueue, cancel = cancel, config = configure}
local entries = rcall('XRANGE', KEYS[2], '-', '+', 'COUNT', tonumber(ARGV[3]))
local result = {C.OK, #entries, ''}
for _, e in ipairs(entries) do
  local entry_id, flat = e[1], e[2]
  local f = fields_of(flat)
  local handler = handlers[f.op or 'enqueue']
  local code
  if handler then code = handler(entry_id, f, flat)
  else code = reject(entry_id, flat, 'unknown op ' .. tostring(f.op)) end
  result[#result + 1] = f.id or entry_id
  result[#result + 1] = code
  rcall('XDEL', KEYS[2], entry_id)
  result[3] = entry_id
end
count_throughput(ctx)
flush_counts(KEYS[5], ctx.counts)
return result
