-- applyOutcomes: apply one batch of worker outcomes from pendingCompletion, oldest first.
--   kind=run: success of the current attempt -> done/succeeded; failure -> retrying (attempts
--     left, retryable, no cancel requested) or done/failed. An outcome of any attempt but the
--     job's current running one is STALE_COMPLETION: counted, never applied.
--     A result over ARGV[8] bytes fails the attempt instead (PayloadTooLarge, not retried); an
--     error text is kept up to L.MAX_ERROR_BYTES.
--   kind=cb: on_complete handler result; success closes the delivery, failure schedules it
--     again with backoff (1 s doubling, capped at 60 s). A failure marked retryable=0 (no such
--     handler), or one more than the retention after the job finished, closes it undelivered
--     (CALLBACK_ABANDONED, cb=failed), so no job is kept forever. Superseded ones are
--     STALE_CALLBACK.
--   kind=wf: the decision of replay `gen` of workflow `id` (includes/workflow.lua), made by
--     worker `worker` (optional: an applied decision makes it wf_keeper, whose inbox gets
--     the next replay while it beats). ok=1 with
--     `cmds`, a msgpack array of commands, each checked before the first write:
--     {'deliver', k, {n, ...}} records activation k (the ended entries the replay delivered
--     to the code, in order: a replay from the start delivers them so again);
--     {'step', n, {field, value, ...}} asks for step n (numbered on from wf_steps + 1), an
--     enqueue entry's fields (at most L.MAX_ENTRY_FIELDS): job `<id>:<n>` of the workflow is
--     created here (includes/enqueue.lua) with its journal entry (pending); fields an enqueue
--     would refuse (checked as ingestRequests checks them), or an id taken, fail that step
--     at once (error_type Rejected; the workflow goes on); {'return', result} ends
--     the workflow succeeded (a result over ARGV[8] bytes fails it with PayloadTooLarge);
--     {'fail', error, error_type} ends it failed (either way its asks are recorded, but its
--     steps and children are not created: their entries say canceled). More than the
--     workflow's max_steps steps fail it. Then, when the journal changed while the replay
--     ran (wf_dirty), the next replay goes out. ok=0 (the replay could not decide: a journal
--     the code no longer matches, a workflow this worker does not know): it is tried again
--     after 1 s doubling, capped at 60 s (replaysDue), and shown in wf_blocked. A decision of
--     any replay but the one out now is STALE_REPLAY. A decision of the replay out now that
--     cannot be applied is set aside whole (REJECTED, none of it written) and the workflow is
--     replayed later as after ok=0, so it never waits for a replay that will not come.
--   kind=batch: field `o` is a msgpack array of at most L.MAX_OUTCOMES_PER_ENTRY outcomes,
--     each a flat [field, value, ...] array of a run or cb outcome; each is applied as if it
--     were its own entry (a worker sends everything it has ready as one entry).
-- Malformed entries (and any whose application raises) are set aside in the rejected record,
-- but for a write the server refused (raise_if_refused): the call then fails, nothing written.
-- Applied entries are trimmed from the stream (one XTRIM per call).
--
-- KEYS[1] lease              STRING  main-loop lease, checked against ARGV[1] (fencing)
-- KEYS[2] pendingCompletion  STREAM  worker outcomes
-- KEYS[3] running            ZSET    id -> start time (ms)
-- KEYS[4] deadlines          ZSET    id -> earliest timeout (ms)
-- KEYS[5] dispatch           STREAM  entries for workers
-- KEYS[6] due                ZSET    id -> due time (ms)
-- KEYS[7] callbacksDue       ZSET    id -> time (ms) a failed delivery is tried again
-- KEYS[8] stats              HASH    counters (beside it, derived from the prefix: metrics HASH and
--                            metricNames SET, counts by job name; ended and endedFailed ZSETs,
--                            the terminal jobs by time)
-- KEYS[9] rejected           STREAM  malformed entries set aside (the newest L.REJECTED_KEPT,
--                                about; each cut to L.REJECTED_ENTRY_BYTES)
-- ARGV[1] token       lease token `<epoch>:<owner>`
-- ARGV[2] prefix      key prefix `{wp:<pool>}:`
-- ARGV[3] batch       outcomes applied in this call: no entry is begun once this many are
-- ARGV[4] now         ms since epoch, '' for Redis TIME, or +ms: TIME plus that (pool.testing)
-- ARGV[5] seed        jitter seed (string)
-- ARGV[6] retention   ms a finished job is kept
-- ARGV[7] group       consumer group of the dispatch stream
-- ARGV[8] max_result  bytes of a result kept at most (the pool's max_result_bytes)
-- ARGV[9] max_payload bytes of a step's args + kwargs + context at most
-- ARGV[10] defaults   "max_attempts,initial_backoff_ms,base,max_backoff_ms" for steps that
--                     omit them
-- Derived from ARGV[2] (same hash tag): seq, priorities and unstarted (a replay's steps are
-- created here), replaysDue (ZSET workflow id -> time a replay is tried again),
-- the workflows' hashes (job:<id>), workflows (SET of the running ones), wfNew:<id> (SET of
-- their entries ended, not delivered yet), wfTimers (ZSET) and wfc:<id> (channel), and the
-- admission keys listed in includes/admission.lua.
-- Returns R.batch {code, applied, last_entry_id, id1, code1, id2, code2, ...}: NOT_LEADER (nothing
-- written) or OK, with the job id and a code per outcome
-- (SUCCEEDED, RETRY_SCHEDULED, FAILED, STALE_COMPLETION, CALLBACK_DELIVERED,
-- CALLBACK_RETRY, CALLBACK_ABANDONED, STALE_CALLBACK, REPLAY_APPLIED, REPLAY_RETRY,
-- STALE_REPLAY, REJECTED). A bad argument is an error
-- reply, nothing written.
-- @include common
-- @include finish
-- @include enqueue

if not holds_lease(KEYS[1], ARGV[1]) then
  return reply(R.batch, {code = C.NOT_LEADER, applied = 0, last_entry_id = ''})
end
local prefix = ARGV[2]
local batch = arg_int(3, 1, 100000)
local ctx = {prefix = prefix, dispatch = KEYS[5], group = ARGV[7], running = KEYS[3],
             deadlines = KEYS[4], due = KEYS[6], now = now_ms(4), seed = ARGV[5],
             retention = arg_int(6, 1, L.MAX_RETENTION_MS),
             max_result = arg_int(8, 1, L.MAX_PAYLOAD_BYTES),
             max_payload = arg_int(9, 1, L.MAX_PAYLOAD_BYTES), counts = {}, finished = 0,
             routes = {}}  -- (inbox_of: this script writes no heartbeat, makes no inbox)
retry_defaults(10)
deferring(ctx)  -- ended attempts leave running and dispatch in one call each per batch
creating(ctx)  -- a replay's steps join `unstarted` and `ready` so too

local function reject(entry_id, flat, reason)
  return set_aside(KEYS[9], entry_id, flat, reason, ctx.counts)
end

local function run_outcome(entry_id, f, flat)
  local attempt = tonumber(f.attempt or '')
  if not f.id or not attempt or (f.ok ~= '1' and f.ok ~= '0') then
    return reject(entry_id, flat, 'a run outcome needs id, attempt and ok (1 or 0)')
  end
  local jk = prefix .. K.job .. f.id
  local j = attempt_fields(jk)
  if j.state ~= 'running' or tonumber(j.attempts) ~= attempt then
    bump(ctx.counts, N.STALE_COMPLETIONS)
    return C.STALE_COMPLETION
  end
  local result = f.result or ''
  j.by = string.sub(f.worker or '', 1, L.MAX_ID_BYTES)  -- its record's; a worker's own name
  if f.ok == '1' and #result > ctx.max_result then
    return fail_attempt(ctx, f.id, jk, j, 'the result of ' .. #result .. " bytes is over the " ..
                        "pool's max_result_bytes (" .. ctx.max_result .. ')', 'PayloadTooLarge',
                        false)
  elseif f.ok == '1' then
    end_attempt(ctx, f.id, j)
    finish(ctx, f.id, jk, 'done', 'succeeded', j, {'result', result, 'worker', j.by})
    return C.SUCCEEDED
  end
  return fail_attempt(ctx, f.id, jk, j, f.error or 'no error message', f.error_type or 'Error',
                      f.retryable ~= '0')
end

local function callback_outcome(entry_id, f, flat)
  local n = tonumber(f.n or '')
  if not f.id or not n or (f.ok ~= '1' and f.ok ~= '0') then
    return reject(entry_id, flat, 'a callback outcome needs id, n and ok (1 or 0)')
  end
  local jk = prefix .. K.job .. f.id
  local h = rcall('HMGET', jk, 'cb', 'cb_n', 'cb_entry', 'finished_at')
  if h[1] ~= 'pending' or tonumber(h[2]) ~= n then
    bump(ctx.counts, N.STALE_CALLBACKS)
    return C.STALE_CALLBACK
  end
  local err = string.sub(f.error or 'no error message', 1, L.MAX_ERROR_BYTES)
  local given_up = f.ok ~= '1' and
    (f.retryable == '0' or ctx.now - (tonumber(h[4]) or ctx.now) > ctx.retention)
  drop_entry(ctx, h[3])
  if f.ok == '1' or given_up then
    rcall('HSET', jk, 'cb', f.ok == '1' and 'delivered' or 'failed')
    if given_up then rcall('HSET', jk, 'cb_error', err) end
    rcall('HDEL', jk, 'cb_entry')
    rcall('PEXPIRE', jk, ctx.retention)
    bump(ctx.counts, f.ok == '1' and N.CALLBACKS_DELIVERED or N.CALLBACKS_ABANDONED)
    return f.ok == '1' and C.CALLBACK_DELIVERED or C.CALLBACK_ABANDONED
  end
  local delay = math.min(60000, 1000 * 2 ^ (n - 1))
  rcall('HSET', jk, 'cb_n', n + 1, 'cb_error', err)
  rcall('HDEL', jk, 'cb_entry')
  rcall('ZADD', KEYS[7], ctx.now + delay, f.id)
  bump(ctx.counts, N.CALLBACK_FAILURES)
  return C.CALLBACK_RETRY
end

-- A batched outcome's (or a step command's) fields, or nil if it is not a flat array of
-- strings (numbers are read as their text): checked and read in one pass, the cost of a batch
-- being mostly per item.
local function outcome_fields(item)
  if type(item) ~= 'table' or #item % 2 ~= 0 then return nil end
  local g = {}
  for i = 1, #item, 2 do
    local k, v = item[i], item[i + 1]
    if type(k) == 'number' then k = tostring(k) end
    if type(v) == 'number' then v = tostring(v) end
    if type(k) ~= 'string' or type(v) ~= 'string' then return nil end
    g[k] = v
  end
  return g
end

-- A replay's commands checked in full: the numbered ones ({n, command}) in order, the ending
-- command (or nil), or nil and why they cannot be applied. Numbered: {'step', n, fields} and
-- {'child', n, fields} (an enqueue's or a workflow start's entry fields), {'sleep', n,
-- until_ms}, {'event', n, name, until_ms (0: no timeout)}, {'patch', n, name}.
local NUMBERED = {step = 'fields', child = 'fields', sleep = 'time', event = 'wait',
                  patch = 'name'}

-- An activation {'deliver', k, {n, ...}}: the ended entries a replay delivered to the code,
-- in order, numbered on from wf_acts + 1 (checked: each one ended and is not delivered yet,
-- that is, is in wfNew:<id>, read a thousand at a time).
local function activation(wid, w, c)
  if tonumber(c[2]) ~= w.acts + 1 or type(c[3]) ~= 'table' or #c[3] == 0 then return false end
  for _, n in ipairs(c[3]) do
    if type(n) ~= 'number' or n < 1 or n > w.steps or n ~= math.floor(n) then return false end
  end
  for i = 1, #c[3], 1000 do
    local found = rcall('SMISMEMBER', prefix .. K.wf_new .. wid,
                        unpack(c[3], i, math.min(i + 999, #c[3])))
    for _, one in ipairs(found) do
      if one ~= 1 then return false end
    end
  end
  return true
end

-- A time in ms a timer may be set to (a whole number from 0 to L.MAX_RUN_AT_MS).
local function a_time(v)
  local t = tonumber(v)
  return t ~= nil and t == math.floor(t) and t >= 0 and t <= L.MAX_RUN_AT_MS
end

-- Why step or child command `c` (numbered n, of workflow `wid`) cannot be created as asked:
-- fields an enqueue (or a workflow start) would refuse, or an id taken; nil when it can.
local function unusable(wid, n, c)
  local sid = wid .. ':' .. n
  local why, o = check_enqueue(sid, c.fields, ctx.max_payload)
  if not why and c[1] == 'child' then c.max_steps, why = max_steps_of(c.fields) end
  if not why and taken(ctx, sid) then why = 'its id ' .. sid .. ' is taken by another job' end
  last_seq(ctx)  -- read while checking: creating it then writes only
  c.o = o
  return why
end

local function decision(wid, w, cmds)
  local numbered, ending, delivered = {}, nil, nil
  for _, c in ipairs(cmds) do
    if type(c) ~= 'table' then return nil, nil, nil, 'a command must be an array' end
    local form, n = NUMBERED[c[1]], w.steps + #numbered + 1
    if c[1] == 'deliver' then
      if delivered or not activation(wid, w, c) then
        return nil, nil, nil, 'a decision delivers one activation at most, numbered ' ..
                              (w.acts + 1) .. ', of entries that ended'
      end
      delivered = c
    elseif form then
      local ok = tonumber(c[2]) == n
      if form == 'fields' then  -- (an entry's fields, as few as an enqueue's or a start's)
        c.fields = type(c[3]) == 'table' and #c[3] <= 2 * L.MAX_ENTRY_FIELDS and
                   outcome_fields(c[3]) or nil
        ok = ok and c.fields ~= nil and c.fields.name ~= nil
        if ok then c.why = unusable(wid, n, c) end
      elseif form == 'time' then ok = ok and a_time(c[3])
      elseif form == 'wait' then
        ok = ok and type(c[3]) == 'string' and #c[3] <= L.MAX_NAME_BYTES and a_time(c[4])
      else ok = ok and type(c[3]) == 'string' and #c[3] <= L.MAX_NAME_BYTES end
      if not ok then
        return nil, nil, nil, 'command ' .. c[1] .. ' must be numbered ' .. n .. ' (entries ' ..
                              'are numbered in order) and carry its ' .. form
      end
      numbered[#numbered + 1] = {n, c}
    elseif (c[1] == 'return' and type(c[2]) == 'string') or
           (c[1] == 'fail' and type(c[2]) == 'string' and type(c[3]) == 'string') then
      if ending then return nil, nil, nil, 'a decision ends the workflow once at most' end
      ending = c
    else return nil, nil, nil, 'unknown command ' .. tostring(c[1]) end
  end
  return numbered, ending, delivered
end

-- The next replay of a workflow that could not decide goes out after 1 s doubling (60 s cap).
local function replay_later(w, id, err)
  rcall('HSET', w.wk, 'wf_entry', '', 'wf_fails', w.fails + 1, 'wf_blocked', err)
  rcall('ZADD', prefix .. K.replays_due, ctx.now + math.min(60000, 1000 * 2 ^ w.fails), id)
  bump(ctx.counts, N.REPLAY_FAILURES)
  return C.REPLAY_RETRY
end

-- Record numbered command {n, c} of workflow `w` and set it going; returns its journal entry
-- (packed, for the caller to write) and true when it ended at once (an event kept before the
-- workflow waited for it, a step that cannot be created). A decision that ends the workflow
-- creates no step or child: their entries say canceled (`ending`).
local function record(wid, w, n, c, ending)
  local kind, name = c[1], c.fields and c.fields.name or c[3]
  if kind == 'sleep' then name = '' end
  local rec = {kind = kind == 'child' and 'workflow' or kind, name = name, state = 'pending',
               scheduled_at = ctx.now}
  if (kind == 'step' or kind == 'child') and ending then
    rec.state, rec.outcome, rec.finished_at, rec.attempts = 'canceled', 'canceled', ctx.now, 0
    bump(ctx.counts, N.CANCELED)
  elseif c.why then  -- fails at once: the code sees StepFailed
    rec.state, rec.outcome, rec.finished_at = 'done', 'failed', ctx.now
    rec.error, rec.error_type = 'the step could not be enqueued: ' .. c.why, 'Rejected'
    rec.attempts = 0
    newly_ended(ctx, wid, n)
    bump(ctx.counts, N.REJECTED)
  elseif kind == 'step' then
    create_job(ctx, wid .. ':' .. n, c.fields, c.o, ctx.now, wid, tostring(n))
  elseif kind == 'child' then
    create_workflow(ctx, wid .. ':' .. n, c.fields, c.o, c.max_steps, ctx.now, wid,
                    tostring(n))
  elseif kind == 'sleep' then
    rcall('ZADD', prefix .. K.wf_timers, tonumber(c[3]), timer_member(wid, n))
  elseif kind == 'event' then
    local kept = list_field(w.wk, 'e:' .. name)
    if #kept > 0 then
      rec.state, rec.outcome, rec.result, rec.finished_at = 'done', 'succeeded', kept[1], ctx.now
      table.remove(kept, 1)
      set_list(w.wk, 'e:' .. name, kept)
      newly_ended(ctx, wid, n)
    else
      local waiting = list_field(w.wk, 'w:' .. name)
      waiting[#waiting + 1] = n
      set_list(w.wk, 'w:' .. name, waiting)
      if tonumber(c[4]) > 0 then
        rcall('ZADD', prefix .. K.wf_timers, tonumber(c[4]), timer_member(wid, n))
      end
    end
  else  -- a patch marker: recorded, nothing to wait for
    rec.state, rec.outcome, rec.finished_at = 'done', 'succeeded', ctx.now
  end
  return pack_journal(rec), rec.state == 'done' and kind ~= 'patch'
end

local function replay_outcome(entry_id, f, flat)
  local gen = tonumber(f.gen or '')
  if not f.id or not gen or (f.ok ~= '1' and f.ok ~= '0') then
    return reject(entry_id, flat, 'a replay outcome needs id, gen and ok (1 or 0)')
  end
  local w = workflow_fields(ctx, f.id)
  if not w or w.state ~= 'running' or w.gen ~= gen or w.entry == '' then
    bump(ctx.counts, N.STALE_REPLAYS)
    return C.STALE_REPLAY
  end
  local numbered, ending, delivered, why = nil, nil, nil, nil
  if f.ok == '1' then
    local ok, cmds = pcall(cmsgpack.unpack, f.cmds or '')
    if not ok or type(cmds) ~= 'table' then
      why = 'field cmds must be a msgpack array of commands'
    else numbered, ending, delivered, why = decision(f.id, w, cmds) end
  end
  drop_replay(ctx, w)
  w.entry = ''
  if why then  -- set aside, none of it written; replayed later, so the workflow goes on
    reject(entry_id, flat, why)
    replay_later(w, f.id, 'its decision was set aside: ' .. why)
    return C.REJECTED
  elseif f.ok ~= '1' then
    return replay_later(w, f.id, string.sub(f.error or 'no error message', 1, L.MAX_ERROR_BYTES))
  end
  local total = w.steps + #numbered
  if total > w.max then
    ending = {'fail', 'the workflow asked for step ' .. total .. ', more than its max_steps (' ..
              w.max .. ')', 'TooManySteps'}
    numbered, total = {}, w.steps
  elseif ending and ending[1] == 'return' and #ending[2] > ctx.max_result then
    ending = {'fail', 'the result of ' .. #ending[2] .. " bytes is over the pool's " ..
              'max_result_bytes (' .. ctx.max_result .. ')', 'PayloadTooLarge'}
  end
  local again = w.dirty
  if #numbered > 0 then changed(ctx, f.id) end
  local keeper = f.worker or ''  -- a routing hint: a name of no live worker routes nothing
  if #keeper > L.MAX_ID_BYTES then keeper = '' end
  local acts = w.acts
  local writes = {'wf_steps', total, 'wf_fails', 0, 'wf_blocked', '', 'wf_applied', gen,
                  'wf_keeper', keeper}  -- one HSET with the replay's, or wf_entry
  if delivered then
    acts = delivered[2]
    append_all(writes, {'a:' .. acts, cmsgpack.pack(delivered[3]), 'wf_acts', acts})
    for i = 1, #delivered[3], 1000 do
      rcall('SREM', prefix .. K.wf_new .. f.id,
            unpack(delivered[3], i, math.min(i + 999, #delivered[3])))
    end
  end
  local known = nil  -- the entries that ended at once, for the replay to carry unread
  for _, item in ipairs(numbered) do
    local packed, ended = record(f.id, w, item[1], item[2], ending)
    writes[#writes + 1] = 'j:' .. item[1]
    writes[#writes + 1] = packed
    if ended then
      known = known or {}
      known[tostring(item[1])] = packed
      again = true
    end
  end
  if ending or not again then hset_all(w.wk, append_all(writes, {'wf_entry', ''})) end
  if ending and ending[1] == 'return' then
    end_workflow(ctx, f.id, w.wk, w, 'done', 'succeeded', {'result', ending[2]})
    return C.SUCCEEDED
  elseif ending then
    local err = string.sub(ending[2], 1, L.MAX_ERROR_BYTES)
    end_workflow(ctx, f.id, w.wk, w, 'done', 'failed',
                 {'error', err, 'error_type', string.sub(ending[3], 1, 200)})
    return C.FAILED
  end
  if again then
    dispatch_replay(ctx, f.id, w.wk, w.gen + 1, known,
                    {steps = total, acts = acts, applied = gen, keeper = keeper}, writes)
  end
  return C.REPLAY_APPLIED
end

local single = {run = run_outcome, cb = callback_outcome, wf = replay_outcome}

local function batch_outcome(entry_id, f, flat)
  local ok, outcomes = pcall(cmsgpack.unpack, f.o or '')
  if not ok or type(outcomes) ~= 'table' then
    return reject(entry_id, flat, 'field o must be a msgpack array of outcomes')
  end
  if #outcomes > L.MAX_OUTCOMES_PER_ENTRY then  -- one call's work stays bounded
    return reject(entry_id, flat, 'field o holds more than ' .. L.MAX_OUTCOMES_PER_ENTRY ..
                  ' outcomes')
  end
  local codes = {}
  for _, item in ipairs(outcomes) do
    local g = outcome_fields(item)
    local code, id = C.REJECTED, entry_id
    if g then
      local handler = single[g.kind]
      id = g.id or entry_id
      if handler then code = apply_one(handler, reject, entry_id, g, item)
      else code = reject(entry_id, item, 'unknown kind ' .. tostring(g.kind)) end
    else
      reject(entry_id, {'o', tostring(item)}, 'an outcome must be a flat array of strings')
    end
    codes[#codes + 1] = id
    codes[#codes + 1] = code
  end
  return codes
end

local handlers = {run = run_outcome, cb = callback_outcome, wf = replay_outcome,
                  batch = batch_outcome}
local result = apply_entries(KEYS[2], batch, 'kind', '', handlers, reject)
flush_deferred(ctx.defer)
created(ctx)
trim_dispatch(ctx)
trim_ended(ctx)
flush_counts(KEYS[8], ctx.counts, ctx.now)
return result
