-- Terminal transitions and the end of an attempt.
-- @include common
-- @include admission
-- @include workflow
-- `ctx` carries: prefix, dispatch, group, running, deadlines, due, callbacks_due, now,
-- retention (ms), seed (jitter), counts, finished (count of terminal transitions this call).

-- Deterministic jitter in [0.5, 1.5) from (seed, job id, attempt): reproducible in tests.
local function jitter(seed, id, attempt)
  local h = redis.sha1hex(seed .. ':' .. id .. ':' .. attempt)
  return 0.5 + tonumber(string.sub(h, 1, 8), 16) / 4294967296
end

-- Drop a dispatch entry: acknowledged for the group and deleted from the stream. A script
-- that defers (deferring: ctx.xack) acknowledges its entries in one call per batch and leaves their
-- deletion to trim_dispatch, in bulk.
local function drop_entry(ctx, entry_id)
  if entry_id and entry_id ~= '' then
    if ctx.xack then
      defer(ctx.defer, ctx.xack, entry_id)
      ctx.acked[#ctx.acked + 1] = entry_id
    else
      rcall('XACK', ctx.dispatch, ctx.group, entry_id)
      rcall('XDEL', ctx.dispatch, entry_id)
    end
  end
end

-- Entry `entry_id` of worker `worker`'s inbox, acknowledged and deleted: at once, or, in a
-- script that defers (deferring), in one call each per inbox and batch (nothing in such a
-- script reads an inbox's entries).
local function drop_inbox_entry(ctx, worker, entry_id)
  local inbox = ctx.prefix .. K.inbox .. worker
  if not ctx.inboxes then
    rcall('XACK', inbox, ctx.group, entry_id)
    rcall('XDEL', inbox, entry_id)
    return
  end
  local heads = ctx.inboxes[inbox]
  if not heads then
    heads = {{'XACK', inbox, ctx.group}, {'XDEL', inbox}}
    ctx.inboxes[inbox] = heads
  end
  defer(ctx.defer, heads[1], entry_id)
  defer(ctx.defer, heads[2], entry_id)
end

-- The replay out now of workflow `w` (workflow_fields) leaves the stream it went to: the
-- dispatch stream, or its keeper's inbox (wf_route).
local function drop_replay(ctx, w)
  if w.route == '' or w.entry == '' then return drop_entry(ctx, w.entry) end
  drop_inbox_entry(ctx, w.route, w.entry)
end

-- A stream id `<ms>-<seq>` as two numbers (ids stay far below 2^53 in both parts).
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- After the deferred acknowledgements are flushed: the acknowledged entries go in bulk. One
-- XTRIM MINID drops every entry before the oldest one still pending (or, none pending, every
-- one delivered: later ones no worker has read yet), freeing whole stream nodes; one XDEL each
-- cost ~6 us a job. Acknowledged entries the trim cannot reach are deleted one by one: one no
-- worker has read yet (its attempt ended without it: no worker may run it now), and, once an
-- attempt pending for long pins the trim point with more than L.DISPATCH_SLACK entries not
-- pending behind it, all of this call's, so the stream stays bounded whatever runs for long.
-- A script that drops entries at once (the reaper) calls it too: the entry it dropped may have
-- pinned others.
local function trim_dispatch(ctx)
  local acked = ctx.acked or {}
  if ctx.acked and #acked == 0 then return end
  -- Read with pcall: this runs after the script's writes, and a stream or group removed
  -- behind the engine's back must not fail it half-way (its entries are deleted one by one).
  local groups = redis.pcall('XINFO', 'GROUPS', ctx.dispatch)
  local pending = redis.pcall('XPENDING', ctx.dispatch, ctx.group)
  local delivered, pinned = nil, true
  if not groups.err and not pending.err then
    for _, g in ipairs(groups) do
      local f = fields_of(g)
      if f.name == ctx.group then delivered = f['last-delivered-id'] end
    end
  end
  local dms, dseq = id_parts(delivered or '0-0')
  if delivered then
    rcall('XTRIM', ctx.dispatch, 'MINID', pending[2] or (dms .. '-' .. (dseq + 1)))
    pinned = rcall('XLEN', ctx.dispatch) - pending[1] > L.DISPATCH_SLACK
  end
  local gone = {}
  for _, id in ipairs(acked) do
    local ms, seq = id_parts(id)
    if pinned or ms > dms or (ms == dms and seq > dseq) then gone[#gone + 1] = id end
  end
  for i = 1, #gone, 1000 do
    rcall('XDEL', ctx.dispatch, unpack(gone, i, math.min(i + 999, #gone)))
  end
end

-- The admission keys (made once per call, when an attempt's end first needs them).
local function adm_of(ctx)
  ctx.adm = ctx.adm or adm(ctx.prefix, ctx.counts)
  return ctx.adm
end

-- Let a script defer the writes that end attempts and replays (see defer in common.lua).
local function deferring(ctx)
  ctx.defer = {}
  ctx.xack, ctx.acked = {'XACK', ctx.dispatch, ctx.group}, {}
  ctx.unrun = {'ZREM', ctx.running}
  ctx.inboxes = {}
end

-- What the end of an attempt needs of the job whose hash is `jk` (started_fields; {} for a job
-- with no hash).
local function attempt_fields(jk)
  return started_fields(jk) or {}
end

-- The job's attempt ends: it leaves the running set and its dispatch entry is closed.
-- `j` holds the job's fields (attempt_fields).
local function end_attempt(ctx, id, j)
  if ctx.defer then defer(ctx.defer, ctx.unrun, id) else rcall('ZREM', ctx.running, id) end
  local s = j.spec
  if (tonumber(s[S.timeout_ms]) or 0) > 0 then rcall('ZREM', ctx.deadlines, id) end
  observe(ctx.counts, s[S.name] or '', M_DURATION,
          math.max(0, ctx.now - (tonumber(j.started_at) or ctx.now)))
  drop_entry(ctx, j.dispatch)
  if s[S.ckey] and s[S.ckey] ~= '' then key_running(adm_of(ctx), s[S.ckey], -1) end
end

-- A job (or workflow) that became terminal joins the `ended` index, a failed one `endedFailed`
-- too (ZSETs id -> finished_at, one ZADD per index and call where writes are deferred), so lists
-- by time never scan the keyspace; trim_ended trims both to the retention once per call.
local function index_ended(ctx, id, outcome)
  local heads = ctx.ended
  if not heads then
    heads = {{'ZADD', ctx.prefix .. K.ended}, {'ZADD', ctx.prefix .. K.ended_failed}}
    ctx.ended = heads
  end
  for i = 1, outcome == 'failed' and 2 or 1 do
    if ctx.defer then defer(ctx.defer, heads[i], ctx.now, id)
    else rcall('ZADD', heads[i][2], ctx.now, id) end
  end
end

local WORKFLOW_ENDED = {succeeded = M.WORKFLOWS_SUCCEEDED, failed = M.WORKFLOWS_FAILED,
                        canceled = M.WORKFLOWS_CANCELED}  -- a workflow's metric by its outcome

-- The one place a job (or a workflow) becomes terminal (done or canceled). It records the
-- on_complete delivery in the same atomic step, so each terminal transition yields exactly one
-- delivery record, and a workflow's step writes its end into the workflow's journal.
-- `j` holds the job's spec (unpacked) and attempts (a workflow's: workflow_fields); `extra`
-- more fields to set.
local function finish(ctx, id, jk, state, outcome, j, extra)
  local owner = step_owner(ctx, j.spec, j.wk and 'workflow' or 'step')  -- read before writing
  local handler = j.spec[S.on_complete]
  local fields = append_all({'state', state, 'outcome', outcome, 'finished_at', ctx.now},
                            extra or {})
  if handler and handler ~= '' then
    local eid = rcall('XADD', ctx.dispatch, '*', 'kind', 'cb', 'id', id, 'n', '1')
    rcall('HSET', jk, unpack(append_all(fields, {'cb', 'pending', 'cb_n', 1, 'cb_entry', eid})))
  else
    rcall('HSET', jk, unpack(fields))
    rcall('PEXPIRE', jk, ctx.retention)
  end
  bump(ctx.counts, outcome)
  bump_named(ctx.counts, j.spec[S.name] or '', j.wk and WORKFLOW_ENDED[outcome] or outcome)
  index_ended(ctx, id, outcome)
  ctx.finished = ctx.finished + 1
  rcall('PUBLISH', ctx.prefix .. K.done_channel .. id, state)
  if owner then step_ended(ctx, owner, j.spec, outcome, j.attempts, extra) end
end

-- Workflow `wid` (hash `wk`, its fields `w` as workflow_fields reads them) ends: the replay out
-- now is withdrawn (its decision would be stale), and the one due later (replaysDue) and its
-- timeout's timer go, then it finishes like a job.
local function end_workflow(ctx, wid, wk, w, state, outcome, extra)
  drop_replay(ctx, w)
  rcall('HSET', wk, 'wf_entry', '')
  rcall('SREM', ctx.prefix .. K.workflows, wid)
  rcall('DEL', ctx.prefix .. K.wf_new .. wid)
  rcall('ZREM', ctx.prefix .. K.replays_due, wid)
  rcall('ZREM', ctx.prefix .. K.wf_timers, timer_member(wid, 0))
  finish(ctx, wid, wk, state, outcome, w, extra)
  changed(ctx, wid)
end

-- The wait before the next attempt after failed attempt `attempts`: backoff_ms *
-- base^(attempts - 1) * jitter, never more than the job's max_backoff_ms (L.MAX_RETRY_DELAY_MS
-- for a job without one). A product that overflows is the cap, never inf or NaN.
local function retry_delay(ctx, id, j, attempts)
  local s = j.spec
  local backoff, base = tonumber(s[S.backoff_ms]) or 0, tonumber(s[S.base]) or 1
  local cap = math.min(tonumber(s[S.max_backoff_ms]) or L.MAX_RETRY_DELAY_MS,
                       L.MAX_RETRY_DELAY_MS)
  local d = 0
  if backoff > 0 then d = backoff * base ^ (attempts - 1) * jitter(ctx.seed, id, attempts) end
  if not (d <= cap) then d = cap end
  return math.floor(d)
end

-- The record of attempt `j.attempts`, failed now and retried, as fields to write to the job's
-- hash: `t:<n>` (ATTEMPT order); `j.started_at` its start, `j.by` the worker that ran it (''
-- unknown). The record of the attempt ATTEMPTS_KEPT before is dropped, so a job keeps its
-- latest ones only. The attempt that ends the job needs no record: the job's own fields
-- (started_at, finished_at, worker, outcome, error) are it.
local function attempt_record(ctx, jk, j, etype, err)
  local n = tonumber(j.attempts) or 0
  if n > L.ATTEMPTS_KEPT then rcall('HDEL', jk, 't:' .. (n - L.ATTEMPTS_KEPT)) end
  local rec = {}
  rec[AT.started_at], rec[AT.finished_at] = tonumber(j.started_at) or 0, ctx.now
  rec[AT.worker], rec[AT.outcome] = j.by or '', 'failed'
  rec[AT.error_type], rec[AT.error] = etype, string.sub(err, 1, L.ATTEMPT_ERROR_BYTES)
  return {'t:' .. n, cmsgpack.pack(rec)}
end

-- A failed attempt (error, lost worker, timeout): retry with backoff if allowed, else final.
-- `j` holds the job's fields (attempt_fields). Everything is decided before the first write.
local function fail_attempt(ctx, id, jk, j, err, etype, retryable)
  local attempts = tonumber(j.attempts) or 0
  local retry = retryable and j.cancel ~= '1' and
    attempts < (tonumber(j.spec[S.max_attempts]) or 1)
  local due = retry and ctx.now + retry_delay(ctx, id, j, attempts)
  err, etype = string.sub(err, 1, L.MAX_ERROR_BYTES), string.sub(etype, 1, 200)
  end_attempt(ctx, id, j)
  if retry then
    local record = attempt_record(ctx, jk, j, etype, err)
    rcall('HSET', jk, 'error', err, 'error_type', etype, 'state', 'retrying', 'due_at', due,
          record[1], record[2])
    rcall('ZADD', ctx.due, due, id)
    rcall('SADD', adm_of(ctx).retrying, id)
    bump(ctx.counts, N.RETRIED)
    bump_named(ctx.counts, j.spec[S.name] or '', M.RETRIED)
    bump(ctx.counts, N.RETRYING)
    return C.RETRY_SCHEDULED
  end
  finish(ctx, id, jk, 'done', 'failed', j, {'error', err, 'error_type', etype, 'worker',
                                             j.by or ''})
  return C.FAILED
end

-- After a call that ended jobs: trim the ended indexes to the retention.
local function trim_ended(ctx)
  if ctx.finished > 0 then
    local horizon = string.format('(%.0f', ctx.now - ctx.retention)
    rcall('ZREMRANGEBYSCORE', ctx.prefix .. K.ended, '-inf', horizon)
    rcall('ZREMRANGEBYSCORE', ctx.prefix .. K.ended_failed, '-inf', horizon)
  end
end
