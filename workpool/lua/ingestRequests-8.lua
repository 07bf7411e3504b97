-- ingestRequests: apply one batch of client requests from pendingStart, oldest first.
--   enqueue -> pending (new job, its spec packed into `unstarted`: see includes/spec.lua), or
--              DUPLICATE_ENQUEUE when a job with that id exists; a job due already joins
--              admission (ready, or its key's queue) at once, a later one waits in `due` until
--              startJobs promotes it
--   cancel  -> pending/retrying become canceled; running is marked (never retried)
--   config  -> live overrides of the pool's settings (max_parallelism, paused, rate limits,
--              key limits), validated in full before any is written
--   event   -> ends a running workflow's oldest wait for that event name (its payload the
--              result), else is kept for its next wait; dropped for a workflow not running
--   workflow -> a new running workflow (includes/workflow.lua), its first replay handed out
--              (with timeout_ms, a timer `<id>:0` in wfTimers: startJobs then appends a
--              cancel with timeout=1, which ends it done/failed with error_type Timeout);
--              DUPLICATE_ENQUEUE when a job or workflow with that id exists. A cancel of a
--              workflow ends it canceled and cancels its steps not yet ended. An enqueue of a
--              workflow's step (fields wf, wf_n: the main loop writes them) whose workflow no
--              longer runs creates nothing: the step's journal entry says canceled. Only the
--              entry applyOutcomes appended for a step or child carries wf and wf_n (its
--              stream id is kept as field q:<wf_n> of the workflow's hash until ingested):
--              any other with them (a client's) is REJECTED and touches no workflow.
-- Each entry is checked in full before its first write. Malformed entries (and any whose
-- application raises) are set aside in the rejected record with their raw fields (cut to a
-- bounded size), but for a write the server refused (raise_if_refused: the call fails, nothing
-- written, the entry stays). Applied entries are trimmed from the stream (one XTRIM per call),
-- so it holds only requests not yet applied.
--
-- KEYS[1] lease          STRING  main-loop lease, checked against ARGV[1] (fencing)
-- KEYS[2] pendingStart   STREAM  client requests
-- KEYS[3] incoming       SET     ids appended but not applied yet
-- KEYS[4] due            ZSET    id -> due time (ms)
-- KEYS[5] stats          HASH    counters
-- KEYS[6] rejected       STREAM  malformed entries set aside (the newest L.REJECTED_KEPT,
--                                about; each cut to L.REJECTED_ENTRY_BYTES)
-- KEYS[7] config         HASH    live configuration
-- KEYS[8] dispatch       STREAM  (terminal transitions may record an on_complete delivery)
-- Derived from ARGV[2] (same hash tag): seq, priorities, unstarted, retrying,
-- the workflows' hashes (job:<id>), workflows (SET of the running ones), wfNew:<id> (SET of
-- their entries ended, not delivered yet), wfTimers (ZSET), replaysDue (ZSET: a workflow
-- that ends leaves it) and wfc:<id> (channel), and the admission keys listed in
-- includes/admission.lua.
-- ARGV[1] token          lease token `<epoch>:<owner>`
-- ARGV[2] prefix         key prefix `{wp:<pool>}:`
-- ARGV[3] batch          max entries applied in this call (integer)
-- ARGV[4] max_payload    max bytes of args + kwargs + context (integer)
-- ARGV[5] now            ms since epoch, or '' for Redis TIME
-- ARGV[6] retention      ms a finished job is kept
-- ARGV[7] defaults       "max_attempts,initial_backoff_ms,base,max_backoff_ms" for entries
--                        that omit them
-- ARGV[8] group          consumer group of the dispatch stream
-- Returns R.batch {code, applied, last_entry_id, id1, code1, id2, code2, ...}: NOT_LEADER (nothing
-- written) or OK, with the job id and a code per entry
-- (ENQUEUED, DUPLICATE_ENQUEUE, CANCELED, CANCEL_MARKED, CANCEL_NOOP,
-- CONFIGURED, WORKFLOW_STARTED, EVENT_DELIVERED, EVENT_KEPT, EVENT_DROPPED, REJECTED). A bad
-- argument is an error reply, nothing written.
-- @include common
-- @include finish

if not holds_lease(KEYS[1], ARGV[1]) then
  return reply(R.batch, {code = C.NOT_LEADER, applied = 0, last_entry_id = ''})
end
local prefix = ARGV[2]
local batch = arg_int(3, 1, 100000)
local max_payload = arg_int(4, 1, L.MAX_PAYLOAD_BYTES)
local ctx = {prefix = prefix, dispatch = KEYS[8], group = ARGV[8], now = now_ms(5),
             retention = arg_int(6, 1, L.MAX_RETENTION_MS), counts = {}, finished = 0,
             running = '', deadlines = '', due = KEYS[4], priorities = {}}
ctx.adm = adm(prefix, ctx.counts)
-- Enqueues join `unstarted` (and, without a key, `ready`) in one call per run of enqueues: the
-- deferred writes are flushed before a cancel or config entry reads those keys, and at the end;
-- `fresh` holds the ids deferred meanwhile, so a repeated id in one batch is still a duplicate.
ctx.defer = {}
local add_unstarted, add_ready = {'HSET', ctx.adm.unstarted}, {'ZADD', ctx.adm.ready}
local fresh = {}
local seq = nil  -- the pool's seq counter, read once and written back once

-- The numeric options of an enqueue entry: name -> {lo, hi, whole (must be an integer), default}
-- (whole = false: a fraction is dropped for ms fields, kept for base). The defaults for
-- retries are the pool's (ARGV[7]), checked against the same bounds before anything is written.
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

do  -- the pool's retry defaults: checked before the first write
  local d = {}
  d.max_attempts, d.initial_backoff_ms, d.base, d.max_backoff_ms =
    string.match(ARGV[7], '^([^,]+),([^,]+),([^,]+),([^,]+)$')
  for i = 1, 4 do
    local name = OPTION_NAMES[i]
    local n, why = option(d, name)
    if d[name] == nil or n == nil then error('ARGV[7] defaults: ' .. (why or 'no ' .. name)) end
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

-- Fields wf and wf_n are the engine's own: only the entry applyOutcomes appended for step (or
-- child) wf_n of workflow wf may carry them: its id is `<wf>:<wf_n>` and its stream id the
-- one that workflow's hash keeps as field q:<wf_n>. An entry without them is no step (true).
local function engine_entry(entry_id, f)
  if f.wf == nil and f.wf_n == nil then return true end
  if not f.wf or not f.wf_n or f.id ~= f.wf .. ':' .. f.wf_n then return false end
  return redis.pcall('HGET', prefix .. K.job .. f.wf, 'q:' .. f.wf_n) == entry_id
end

-- The engine's entry for a step has been applied (created, refused or set aside): the
-- workflow forgets its stream id. Last, so that a failure half-way still finds it (reject).
local function step_entry_used(f)
  rcall('HDEL', prefix .. K.job .. f.wf, 'q:' .. f.wf_n)
end

-- `apply` (enqueue or start_workflow), then, for the engine's entry of a step, its use.
local function once(apply)
  return function(entry_id, f, flat)
    local own = f.wf ~= nil and engine_entry(entry_id, f)
    local code = apply(entry_id, f, flat)
    if own then step_entry_used(f) end
    return code
  end
end

-- A rejected enqueue leaves `incoming` too: status() then reports the id as unknown.
-- A rejected step of a workflow fails in the workflow's journal (so the workflow goes on);
-- an entry that only claims to be one touches no workflow.
local function reject(entry_id, flat, reason)
  local f = fields_of(flat)
  local owner = f.wf and engine_entry(entry_id, f) and
                step_owner(ctx, {[S.wf] = f.wf, [S.wf_n] = f.wf_n or '0'})
  if owner then step_entry_used(f) end
  if f.id then rcall('SREM', KEYS[3], f.id) end
  local code = set_aside(KEYS[6], entry_id, flat, reason, ctx.counts)
  if owner then
    step_ended(ctx, owner, {[S.name] = f.name or ''}, 'failed', 0,
               {'error', 'the step could not be enqueued: ' .. reason, 'error_type', 'Rejected'})
  end
  return code
end

-- Why enqueue entry `entry_id` is malformed (nil: it is not), and its checked options.
local function check_enqueue(entry_id, id, f)
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
  if f.wf ~= nil and (#f.wf > L.MAX_ID_BYTES or not string.match(f.wf_n or '', '^[1-9]%d*$')) then
    return 'fields wf and wf_n must name a workflow and a step number from 1'
  end
  if not engine_entry(entry_id, f) then
    return "fields wf and wf_n are the engine's own: only the entry it appended for that " ..
           'step of a running workflow carries them'
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

-- A step or child workflow (fields wf, wf_n) of a workflow that no longer runs: it is not
-- created, and its journal entry says canceled (true). Steps are created only while their
-- workflow runs.
local function orphaned(f)
  if not f.wf then return false end
  local owner = step_owner(ctx, {[S.wf] = f.wf, [S.wf_n] = f.wf_n})
  if owner and owner.state == 'running' then return false end
  if owner then step_ended(ctx, owner, {[S.name] = f.name}, 'canceled', 0, {}) end
  bump(ctx.counts, N.CANCELED)
  return true
end

local function enqueue(entry_id, f, flat)
  local id = f.id
  if id == nil or id == '' then id = entry_id end
  local why, o = check_enqueue(entry_id, id, f)
  if why then return reject(entry_id, flat, why) end
  if f.id and f.id ~= '' then rcall('SREM', KEYS[3], id) end  -- only named ids are incoming
  if fresh[id] or rcall('EXISTS', prefix .. K.job .. id) == 1 or
     rcall('HEXISTS', ctx.adm.unstarted, id) == 1 then
    bump(ctx.counts, N.DUPLICATE_ENQUEUES)
    return C.DUPLICATE_ENQUEUE
  end
  if orphaned(f) then return C.CANCELED end  -- a cancel may have come between
  local enqueued_at = tonumber(string.match(entry_id, '^(%d+)'))
  local due = math.max(o.run_at_ms, enqueued_at + o.run_after_ms)
  local ckey, priority = f.concurrency_key or '', o.priority
  seq = (seq or tonumber(rcall('GET', ctx.adm.seq) or '0') or 0) + 1
  fresh[id] = true
  defer(ctx.defer, add_unstarted, id, pack_spec({
    name = f.name, enc = o.enc, max_attempts = o.max_attempts, backoff_ms = o.initial_backoff_ms,
    base = o.base, timeout_ms = o.timeout_ms, enqueued_at = enqueued_at, due_at = due,
    priority = priority, seq = seq, args = f.args, kwargs = f.kwargs, context = f.context,
    on_complete = f.on_complete, ckey = ckey, max_backoff_ms = o.max_backoff_ms, wf = f.wf,
    wf_n = f.wf_n}))
  if not ctx.priorities[priority] then
    rcall('SADD', prefix .. K.priorities, priority)
    ctx.priorities[priority] = true
  end
  if due > ctx.now then
    rcall('ZADD', KEYS[4], due, id)
  elseif ckey == '' then  -- due already: straight to admission, no trip through `due`
    defer(ctx.defer, add_ready, rank_of(priority, seq), id)
  else
    make_ready(ctx.adm, id, f.name, priority, seq, ckey)
  end
  bump(ctx.counts, N.ENQUEUED)
  return C.ENQUEUED
end

local function cancel_job(id)
  local jk = prefix .. K.job .. id
  local j = job_fields(ctx.adm, id)
  local state = j and j.state
  if state == 'pending' or state == 'retrying' then
    rcall('ZREM', KEYS[4], id)
    unqueue(ctx.adm, id, state, j.spec[S.name], j.spec[S.ckey])
    local extra = {'cancel', '1', 'cancel_attempt', j.attempts or 0}
    if state == 'retrying' then bump(ctx.counts, N.RETRYING, -1)
    else append_all(extra, {'attempts', 0, 'spec', j.packed}) end  -- its spec moves in
    finish(ctx, id, jk, 'canceled', 'canceled', j, extra)
    return C.CANCELED
  elseif state == 'running' and j.cancel ~= '1' then
    rcall('HSET', jk, 'cancel', '1', 'cancel_attempt', j.attempts or 0)
    bump(ctx.counts, N.CANCEL_MARKED)
    return C.CANCEL_MARKED
  end
  bump(ctx.counts, N.CANCEL_NOOP)
  return C.CANCEL_NOOP
end

-- A running workflow ends canceled, then each of its steps not ended yet is canceled as a job
-- is (a running one finishes; its end is recorded, never acted on), and each child workflow
-- as a workflow is.
local function cancel_workflow(id, w, timeout_ms)
  if w.state ~= 'running' then
    bump(ctx.counts, N.CANCEL_NOOP)
    return C.CANCEL_NOOP
  end
  local open = {}
  for first = 1, w.steps, 1000 do
    local names = {}
    for n = first, math.min(first + 999, w.steps) do names[#names + 1] = 'j:' .. n end
    for i, raw in ipairs(rcall('HMGET', w.wk, unpack(names))) do
      local ok, rec = pcall(cmsgpack.unpack, raw or '')
      if ok and type(rec) == 'table' and rec[J.state] == 'pending' and
         (rec[J.kind] == 'step' or rec[J.kind] == 'workflow') then
        open[#open + 1] = id .. ':' .. (first + i - 1)
      end
    end
  end
  if timeout_ms then
    end_workflow(ctx, id, w.wk, w, 'done', 'failed', {'error', 'the workflow ran past its ' ..
                 'timeout of ' .. timeout_ms .. ' ms', 'error_type', 'Timeout'})
  else
    end_workflow(ctx, id, w.wk, w, 'canceled', 'canceled', {'cancel', '1'})
  end
  for _, step in ipairs(open) do
    local child = workflow_fields(ctx, step)
    if child then cancel_workflow(step, child) else cancel_job(step) end
  end
  return timeout_ms and C.FAILED or C.CANCELED
end

local function cancel(entry_id, f, flat)
  flush_deferred(ctx.defer)
  local id = f.id
  if id == nil or id == '' then return reject(entry_id, flat, 'cancel needs field id') end
  local w = workflow_fields(ctx, id)
  if w then  -- `timeout`: the main loop ends a workflow past its timeout so (startJobs)
    local limit = tonumber(w.spec[S.timeout_ms]) or 0
    return cancel_workflow(id, w, f.timeout == '1' and limit > 0 and limit or nil)
  end
  return cancel_job(id)
end

-- An event for a running workflow: it ends the oldest wait for its name, else it is kept
-- (at most L.MAX_KEPT_EVENTS per name) for the next wait; for any other workflow, dropped.
-- One with a `key` the workflow took before (field `k:<key>` of its hash) is dropped too.
local function send_event(entry_id, f, flat)
  if not f.id or f.id == '' then return reject(entry_id, flat, 'an event needs field id') end
  if f.key and (f.key == '' or #f.key > L.MAX_KEY_BYTES) then
    return reject(entry_id, flat, 'field key must hold 1 to ' .. L.MAX_KEY_BYTES .. ' bytes')
  end
  if not is_name(f.name) then
    return reject(entry_id, flat, 'field name must be a name: ASCII letters, digits and ' ..
                  '_ . : - (at most ' .. L.MAX_NAME_BYTES .. ' bytes), starting with a ' ..
                  'letter or _')
  end
  local payload = f.payload or ''
  if #payload > max_payload then
    return reject(entry_id, flat, 'payload of ' .. #payload .. ' bytes is over the limit of ' ..
                  max_payload)
  end
  local w = workflow_fields(ctx, f.id)
  if not w or w.state ~= 'running' then
    bump(ctx.counts, N.EVENTS_DROPPED)
    return C.EVENT_DROPPED
  end
  if f.key and rcall('HEXISTS', w.wk, 'k:' .. f.key) == 1 then
    bump(ctx.counts, N.EVENTS_DUPLICATE)
    return C.EVENT_DUPLICATE
  end
  local waiting = list_field(w.wk, 'w:' .. f.name)
  if #waiting == 0 then
    local kept = list_field(w.wk, 'e:' .. f.name)
    if #kept >= L.MAX_KEPT_EVENTS then
      return reject(entry_id, flat, 'the workflow keeps ' .. L.MAX_KEPT_EVENTS .. ' events ' ..
                    'named ' .. f.name .. ' already, none waited for')
    end
    if f.key then rcall('HSET', w.wk, 'k:' .. f.key, 1) end
    kept[#kept + 1] = payload
    set_list(w.wk, 'e:' .. f.name, kept)
    bump(ctx.counts, N.EVENTS_KEPT)
    return C.EVENT_KEPT
  end
  if f.key then rcall('HSET', w.wk, 'k:' .. f.key, 1) end
  local n = table.remove(waiting, 1)
  local rec = journal_entry(w.wk, n) or {}
  set_list(w.wk, 'w:' .. f.name, waiting)
  rcall('ZREM', prefix .. K.wf_timers, timer_member(f.id, n))
  rec[J.kind], rec[J.name] = 'event', f.name
  wait_ended(ctx, f.id, w, n, rec, 'succeeded', payload)
  bump(ctx.counts, N.EVENTS_DELIVERED)
  return C.EVENT_DELIVERED
end

-- A new workflow: its hash (kind=workflow, running) and its first replay.
local function start_workflow(entry_id, f, flat)
  local id = f.id
  if id == nil or id == '' then id = entry_id end
  local why, o = check_enqueue(entry_id, id, f)
  local max_steps = tonumber(f.max_steps or '')
  if not why and (max_steps == nil or max_steps ~= math.floor(max_steps) or max_steps < 1 or
                  max_steps > L.MAX_WORKFLOW_STEPS) then
    why = 'field max_steps is not a whole number from 1 to ' .. L.MAX_WORKFLOW_STEPS
  end
  if why then return reject(entry_id, flat, why) end
  flush_deferred(ctx.defer)
  if f.id and f.id ~= '' then rcall('SREM', KEYS[3], id) end
  local wk = prefix .. K.job .. id
  if fresh[id] or rcall('EXISTS', wk) == 1 or rcall('HEXISTS', ctx.adm.unstarted, id) == 1 then
    bump(ctx.counts, N.DUPLICATE_ENQUEUES)
    return C.DUPLICATE_ENQUEUE
  end
  if orphaned(f) then return C.CANCELED end  -- a child, of a parent that ended
  fresh[id] = true
  rcall('HSET', wk, 'kind', 'workflow', 'state', 'running', 'attempts', 0, 'started_at', ctx.now,
        'wf_steps', 0, 'wf_max', max_steps, 'wf_fails', 0, 'spec', pack_spec({
          name = f.name, enc = o.enc, enqueued_at = tonumber(string.match(entry_id, '^(%d+)')),
          args = f.args, kwargs = f.kwargs, context = f.context, on_complete = f.on_complete,
          wf = f.wf, wf_n = f.wf_n, timeout_ms = o.timeout_ms}))
  rcall('SADD', prefix .. K.workflows, id)
  if o.timeout_ms > 0 then
    rcall('ZADD', prefix .. K.wf_timers, ctx.now + o.timeout_ms, timer_member(id, 0))
  end
  dispatch_replay(ctx, id, wk, 1)
  bump(ctx.counts, N.WORKFLOWS_STARTED)
  return C.WORKFLOW_STARTED
end

-- A config value: '' clears the override (the code's default applies again), 'none' lifts a
-- rate limit; else it must fit (valid_setting).
local function config_value(field, v)
  if v == '' then return true end
  if v == 'none' then return field == 'rate' or string.sub(field, 1, 5) == 'rate:' end
  return valid_setting(field, v)
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
  if keys_changed then recheck_keys(a) end  -- a raised key limit: keys may admit more now
  return C.CONFIGURED
end

local handlers = {enqueue = once(enqueue), cancel = cancel, config = configure,
                  workflow = once(start_workflow), event = send_event}
local result = apply_entries(KEYS[2], batch, 'op', 'enqueue', handlers, reject)
flush_deferred(ctx.defer)
if seq then rcall('SET', ctx.adm.seq, seq) end
count_throughput(ctx)
flush_counts(KEYS[5], ctx.counts)
return result
