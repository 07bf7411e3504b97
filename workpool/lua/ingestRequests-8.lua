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
--              workflow ends it canceled and cancels its steps not yet ended. An entry with
--              fields wf or wf_n (a step's, which only applyOutcomes creates) is REJECTED and
--              touches no workflow.
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
-- KEYS[5] stats          HASH    counters (beside it, derived from the prefix: metrics HASH and
--                        metricNames SET, counts by job name; ended and endedFailed ZSETs,
--                        the terminal jobs by time)
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
-- ARGV[5] now            ms since epoch, '' for Redis TIME, or +ms: TIME plus that (pool.testing)
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
-- @include enqueue

if not holds_lease(KEYS[1], ARGV[1]) then
  return reply(R.batch, {code = C.NOT_LEADER, applied = 0, last_entry_id = ''})
end
local prefix = ARGV[2]
local batch = arg_int(3, 1, 100000)
local max_payload = arg_int(4, 1, L.MAX_PAYLOAD_BYTES)
local ctx = {prefix = prefix, dispatch = KEYS[8], group = ARGV[8], now = now_ms(5),
             retention = arg_int(6, 1, L.MAX_RETENTION_MS), counts = {}, finished = 0,
             running = '', deadlines = '', due = KEYS[4]}
creating(ctx)
retry_defaults(7)

-- A rejected enqueue leaves `incoming` too: status() then reports the id as unknown.
local function reject(entry_id, flat, reason)
  local f = fields_of(flat)
  if f.id then rcall('SREM', KEYS[3], f.id) end
  return set_aside(KEYS[6], entry_id, flat, reason, ctx.counts)
end

-- Whether the id entry `entry_id` names (its idempotency key, else the entry id) is taken:
-- DUPLICATE_ENQUEUE, one job or workflow per id. A named id leaves `incoming` (where only
-- named ids are) either way.
local function duplicate(entry_id, f)
  local id = f.id
  if id == nil or id == '' then id = entry_id else rcall('SREM', KEYS[3], id) end
  if not taken(ctx, id) then return false end
  bump(ctx.counts, N.DUPLICATE_ENQUEUES)
  return true
end

local function enqueue(entry_id, f, flat)
  local id = f.id
  if id == nil or id == '' then id = entry_id end
  local why, o = check_enqueue(id, f, max_payload)
  if why then return reject(entry_id, flat, why) end
  if duplicate(entry_id, f) then return C.DUPLICATE_ENQUEUE end
  create_job(ctx, id, f, o, tonumber(string.match(entry_id, '^(%d+)')))
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
  local why, o = check_enqueue(id, f, max_payload)
  local max_steps, bad = max_steps_of(f)
  why = why or bad
  if why then return reject(entry_id, flat, why) end
  flush_deferred(ctx.defer)
  if duplicate(entry_id, f) then return C.DUPLICATE_ENQUEUE end
  create_workflow(ctx, id, f, o, max_steps, tonumber(string.match(entry_id, '^(%d+)')))
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

local handlers = {enqueue = enqueue, cancel = cancel, config = configure,
                  workflow = start_workflow, event = send_event}
local result = apply_entries(KEYS[2], batch, 'op', 'enqueue', handlers, reject)
flush_deferred(ctx.defer)
created(ctx)
trim_ended(ctx)
flush_counts(KEYS[5], ctx.counts, ctx.now)
return result
