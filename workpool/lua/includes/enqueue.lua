-- Enqueue entries: their checks, and the jobs and workflows they create. ingestRequests
-- creates clients' so; applyOutcomes creates a workflow's steps and child workflows so, from
-- the fields its replay's decision carries, in the same call that records them in the journal
-- (never through pendingStart: no client entry may carry a step's fields wf and wf_n).
-- A creating script calls creating(ctx) first and created(ctx) last; ctx carries prefix, now,
-- counts, defer (deferred writes, common.lua) and due (ZSET id -> due time).
-- @include common
-- @include admission
-- @include workflow

-- The numeric options of an enqueue entry: name -> {lo, hi, whole (must be an integer), default}
-- (whole = false: a fraction is dropped for ms fields, kept for base). The defaults for
-- retries are the pool's (retry_defaults), checked against the same bounds.
local OPTION_NAMES = {'max_attempts', 'initial_backoff_ms', 'base', 'max_backoff_ms',
                      'timeout_ms', 'run_at_ms', 'run_after_ms', 'priority'}
local OPTIONS = {
  max_attempts = {1, L.MAX_ATTEMPTS, true}, initial_backoff_ms = {0, L.MAX_RETRY_DELAY_MS},
  base = {1, L.MAX_BACKOFF_BASE}, max_backoff_ms = {0, L.MAX_RETRY_DELAY_MS},
  timeout_ms = {0, L.MAX_TIMEOUT_MS, false, 0}, run_at_ms = {0, L.MAX_RUN_AT_MS, false, 0},
  run_after_ms = {0, L.MAX_RUN_AFTER_MS, false, 0},
  priority = {L.MIN_PRIORITY, L.MAX_PRIORITY, true, 0}}

-- A number field: its value (the default when absent or ''), or nil and the reason. A valid
-- value is checked once per call (`valid`: name -> raw -> value): a batch mostly repeats a few.
local valid = {}
local function option(f, name)
  local o = OPTIONS[name]
  local raw = f[name]
  if raw == nil or raw == '' then return o[4] end
  local seen = valid[name]
  if seen and seen[raw] then return seen[raw] end
  local n = tonumber(raw)
  if n == nil or n ~= n or n < o[1] or n > o[2] then
    return nil, 'field ' .. name .. ' is not a number from ' .. o[1] .. ' to ' .. o[2]
  end
  if n ~= math.floor(n) then
    if o[3] then return nil, 'field ' .. name .. ' must be a whole number' end
    if name ~= 'base' then n = math.floor(n) end
  end
  valid[name] = seen or {}
  valid[name][raw] = n
  return n
end

-- The pool's retry defaults for entries that omit them, from ARGV[i]
-- ("max_attempts,initial_backoff_ms,base,max_backoff_ms"): checked before the first write.
local function retry_defaults(i)
  local d = {}
  d.max_attempts, d.initial_backoff_ms, d.base, d.max_backoff_ms =
    string.match(ARGV[i] or '', '^([^,]+),([^,]+),([^,]+),([^,]+)$')
  for k = 1, 4 do
    local name = OPTION_NAMES[k]
    local n, why = option(d, name)
    if d[name] == nil or n == nil then
      error('ARGV[' .. i .. '] defaults: ' .. (why or 'no ' .. name))
    end
    OPTIONS[name][4] = n
  end
end

-- msgpack is checked by walking it (Redis's cmsgpack knows no bin or ext types, and
-- msgpack-python writes bytes as bin): mp_head reads the item at s[i], returning the index
-- after its head and payload and how many items nest in it (array elements, map keys and
-- values); mp_skip steps over one whole value. Both raise on malformed input.
local mp_fixed = {[0xc0] = 0, [0xc2] = 0, [0xc3] = 0, [0xca] = 4, [0xcb] = 8, [0xcc] = 1,
  [0xcd] = 2, [0xce] = 4, [0xcf] = 8, [0xd0] = 1, [0xd1] = 2, [0xd2] = 4, [0xd3] = 8,
  [0xd4] = 2, [0xd5] = 3, [0xd6] = 5, [0xd7] = 9, [0xd8] = 17}
local mp_sized = {[0xc4] = {1, 0}, [0xc5] = {2, 0}, [0xc6] = {4, 0}, [0xc7] = {1, 1},
  [0xc8] = {2, 1}, [0xc9] = {4, 1}, [0xd9] = {1, 0}, [0xda] = {2, 0}, [0xdb] = {4, 0}}
local mp_counted = {[0xdc] = {2, 1}, [0xdd] = {4, 1}, [0xde] = {2, 2}, [0xdf] = {4, 2}}

local function mp_uint(s, i, len, n)
  if i + len > n then error('truncated msgpack') end
  local v = 0
  for k = i + 1, i + len do v = v * 256 + string.byte(s, k) end
  return v
end

local function mp_head(s, i, n)
  if i > n then error('truncated msgpack') end
  local b = string.byte(s, i)
  local skip, items = 0, 0
  if b <= 0x7f or b >= 0xe0 then skip = 0
  elseif b <= 0x8f then items = 2 * (b - 0x80)
  elseif b <= 0x9f then items = b - 0x90
  elseif b <= 0xbf then skip = b - 0xa0
  elseif mp_fixed[b] then skip = mp_fixed[b]
  elseif mp_sized[b] then skip = mp_sized[b][1] + mp_sized[b][2] + mp_uint(s, i, mp_sized[b][1], n)
  elseif mp_counted[b] then
    skip, items = mp_counted[b][1], mp_counted[b][2] * mp_uint(s, i, mp_counted[b][1], n)
  else error('invalid msgpack byte') end
  i = i + 1 + skip
  if items > n - i + 1 then error('truncated msgpack') end  -- each item takes a byte at least
  return i, items
end

local function mp_skip(s, i, n)
  local need, items = 1, 0
  while need > 0 do
    i, items = mp_head(s, i, n)
    need = need - 1 + items
    if need > n - i + 1 then error('truncated msgpack') end
  end
  return i
end

-- What one encoded value is: 'array', 'map' (every key a string, as fn(**kwargs) needs),
-- 'badmap' or 'other'. Raises if it is not exactly one valid value.
local function msgpack_kind(s)
  local n, b = #s, string.byte(s, 1)
  local kind, i = 'other', nil
  if (b >= 0x90 and b <= 0x9f) or b == 0xdc or b == 0xdd then kind = 'array'
  elseif (b >= 0x80 and b <= 0x8f) or b == 0xde or b == 0xdf then kind = 'map' end
  if kind == 'map' then
    local items
    i, items = mp_head(s, 1, n)
    for _ = 1, items / 2 do
      local k = string.byte(s, i) or 0
      if not ((k >= 0xa0 and k <= 0xbf) or k == 0xd9 or k == 0xda or k == 0xdb) then
        kind = 'badmap'
      end
      i = mp_skip(s, mp_skip(s, i, n), n)
    end
  else i = mp_skip(s, 1, n) end
  if i ~= n + 1 then error('trailing bytes after the msgpack value') end
  return kind
end

local function json_kind(s)
  cjson.decode(s)  -- raises on invalid JSON; object keys are always strings
  local c = string.match(s, '^%s*(.)')
  return (c == '[' and 'array') or (c == '{' and 'map') or 'other'
end

local kinds = {msgpack = msgpack_kind, json = json_kind}
local SHAPES = {args = {'array', 'an array'}, kwargs = {'map', 'a map with string keys'}}
local NAME, NAMED = '^[A-Za-z_][A-Za-z0-9_.:%-]*$', {'name', 'on_complete'}
local names = {}  -- the names this call checked (a batch mostly repeats a few)

local function is_name(v)
  if v == nil then return false end
  local ok = names[v]
  if ok == nil then
    ok = #v <= L.MAX_NAME_BYTES and string.match(v, NAME) ~= nil
    names[v] = ok
  end
  return ok
end

-- Why enqueue fields `f` of job `id` are malformed (nil: they are not), and their checked
-- options. `max_payload`: bytes of args + kwargs + context at most.
local function check_enqueue(id, f, max_payload)
  if #id > L.MAX_ID_BYTES then return 'field id is longer than ' .. L.MAX_ID_BYTES .. ' bytes' end
  for _, field in ipairs(NAMED) do
    local v = f[field]
    if (v ~= nil or field == 'name') and not is_name(v) then
      return 'field ' .. field .. ' must be a name: ASCII letters, digits and _ . : - (at most ' ..
             L.MAX_NAME_BYTES .. ' bytes), starting with a letter or _'
    end
  end
  local enc = f.enc or 'msgpack'
  if not kinds[enc] then return 'field enc must be msgpack or json' end
  local size = 0
  for _, field in ipairs({'args', 'kwargs', 'context'}) do
    local raw = f[field]
    if raw ~= nil and raw ~= '' then
      size = size + #raw
      local ok, kind = pcall(kinds[enc], raw)
      if not ok then return 'field ' .. field .. ' is not valid ' .. enc end
      local shape = SHAPES[field]
      if shape and kind ~= shape[1] then return 'field ' .. field .. ' must encode ' .. shape[2] end
    end
  end
  if size > max_payload then
    return 'payload of ' .. size .. ' bytes is over the limit of ' .. max_payload
  end
  if f.wf ~= nil or f.wf_n ~= nil then
    return "fields wf and wf_n are the engine's own: a workflow's steps are created by the " ..
           'script that applies its decision, never from an entry'
  end
  if #(f.rerun_of or '') > L.MAX_ID_BYTES then
    return 'field rerun_of is longer than ' .. L.MAX_ID_BYTES .. ' bytes'
  end
  if #(f.concurrency_key or '') > L.MAX_CONCURRENCY_KEY_BYTES then
    return 'field concurrency_key is longer than ' .. L.MAX_CONCURRENCY_KEY_BYTES .. ' bytes'
  end
  local o = {enc = enc}
  for _, name in ipairs(OPTION_NAMES) do
    local n, why = option(f, name)
    if n == nil then return why end
    o[name] = n
  end
  return nil, o
end

-- A workflow start's max_steps (field max_steps), or nil and why it is unusable.
local function max_steps_of(f)
  local n = tonumber(f.max_steps or '')
  if n == nil or n ~= math.floor(n) or n < 1 or n > L.MAX_WORKFLOW_STEPS then
    return nil, 'field max_steps is not a whole number from 1 to ' .. L.MAX_WORKFLOW_STEPS
  end
  return n
end

-- Set up `ctx` for creating jobs: they join `unstarted` (and, without a key, `ready`) in one
-- deferred call per run (flushed before anything reads those keys, and at the end); `fresh`
-- holds the ids created meanwhile, so a repeated id in one call is still taken.
local function creating(ctx)
  ctx.adm = ctx.adm or adm(ctx.prefix, ctx.counts)
  ctx.defer = ctx.defer or {}
  ctx.add_unstarted, ctx.add_ready = {'HSET', ctx.adm.unstarted}, {'ZADD', ctx.adm.ready}
  ctx.fresh, ctx.priorities = {}, {}
end

-- The pool's seq counter as this call has it: read once (a script that checks before its
-- first write reads it while checking), written back once by created().
local function last_seq(ctx)
  if not ctx.seq then
    ctx.seq = tonumber(rcall('GET', ctx.adm.seq) or '0') or 0
    ctx.seq_read = ctx.seq
  end
  return ctx.seq
end

-- After the deferred writes are flushed: the pool's seq counter, if it moved, is written back.
local function created(ctx)
  if ctx.seq and ctx.seq ~= ctx.seq_read then rcall('SET', ctx.adm.seq, ctx.seq) end
end

-- True when a job or workflow of id `id` exists (or was created in this call).
local function taken(ctx, id)
  return ctx.fresh[id] or rcall('EXISTS', ctx.prefix .. K.job .. id) == 1 or
         rcall('HEXISTS', ctx.adm.unstarted, id) == 1
end

-- The trace context of entry fields `f` (W3C Trace Context): its traceparent and tracestate,
-- each '' when absent or unusable (not of the traceparent form, or over L.MAX_TRACE_BYTES): an
-- unusable context is dropped, as OpenTelemetry's propagator drops it, never the job.
local TRACEPARENT = '^%x%x%-%x+%-%x+%-%x%x'
local function trace_of(f)
  local parent, state = f.traceparent or '', f.tracestate or ''
  if #parent > L.MAX_TRACE_BYTES or not string.match(parent, TRACEPARENT) then
    return '', ''
  end
  return parent, #state <= L.MAX_TRACE_BYTES and state or ''
end

-- A new pending job `id` from checked fields `f` and options `o`, enqueued at `enqueued_at`
-- (ms): due at max(run_at, enqueued_at + run_after), it waits in `due` or joins admission at
-- once. `wf`, `wf_n`: the workflow and journal entry of a step (nil for a client's job).
local function create_job(ctx, id, f, o, enqueued_at, wf, wf_n)
  local due = math.max(o.run_at_ms, enqueued_at + o.run_after_ms)
  local ckey, priority = f.concurrency_key or '', o.priority
  ctx.seq = last_seq(ctx) + 1
  ctx.fresh[id] = true
  local traceparent, tracestate = trace_of(f)
  defer(ctx.defer, ctx.add_unstarted, id, pack_spec({
    name = f.name, enc = o.enc, max_attempts = o.max_attempts, backoff_ms = o.initial_backoff_ms,
    base = o.base, timeout_ms = o.timeout_ms, enqueued_at = enqueued_at, due_at = due,
    priority = priority, seq = ctx.seq, args = f.args, kwargs = f.kwargs, context = f.context,
    on_complete = f.on_complete, ckey = ckey, max_backoff_ms = o.max_backoff_ms, wf = wf,
    wf_n = wf_n, traceparent = traceparent, tracestate = tracestate, rerun_of = f.rerun_of}))
  if not ctx.priorities[priority] then
    rcall('SADD', ctx.prefix .. K.priorities, priority)
    ctx.priorities[priority] = true
  end
  if due > ctx.now then
    rcall('ZADD', ctx.due, due, id)
  elseif ckey == '' then  -- due already: straight to admission, no trip through `due`
    defer(ctx.defer, ctx.add_ready, rank_of(priority, ctx.seq), id)
  else
    make_ready(ctx.adm, id, f.name, priority, ctx.seq, ckey)
  end
  bump(ctx.counts, N.ENQUEUED)
  bump_named(ctx.counts, f.name, M.ENQUEUED)
end

-- A new running workflow `id` (its hash, kind=workflow) from checked fields `f`, options `o`
-- and `max_steps`, its first replay handed out (with timeout_ms, a timer `<id>:0` in
-- wfTimers). `wf`, `wf_n`: the parent and journal entry of a child workflow.
local function create_workflow(ctx, id, f, o, max_steps, enqueued_at, wf, wf_n)
  local wk = ctx.prefix .. K.job .. id
  local traceparent, tracestate = trace_of(f)
  ctx.fresh[id] = true
  rcall('HSET', wk, 'kind', 'workflow', 'state', 'running', 'attempts', 0, 'started_at', ctx.now,
        'wf_steps', 0, 'wf_max', max_steps, 'wf_fails', 0, 'spec', pack_spec({
          name = f.name, enc = o.enc, enqueued_at = enqueued_at, args = f.args,
          kwargs = f.kwargs, context = f.context, on_complete = f.on_complete, wf = wf,
          wf_n = wf_n, timeout_ms = o.timeout_ms, traceparent = traceparent,
          tracestate = tracestate}))
  rcall('SADD', ctx.prefix .. K.workflows, id)
  if o.timeout_ms > 0 then
    rcall('ZADD', ctx.prefix .. K.wf_timers, ctx.now + o.timeout_ms, timer_member(id, 0))
  end
  dispatch_replay(ctx, id, wk, 1)
  bump(ctx.counts, N.WORKFLOWS_STARTED)
  bump_named(ctx.counts, f.name, M.WORKFLOWS_STARTED)
end
