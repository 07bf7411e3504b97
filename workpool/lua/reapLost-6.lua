-- reapLost: end attempts whose worker is gone or whose per-job timeout passed, and hand out
-- again the on_complete deliveries and workflow replays a dead worker held.
--   timeout: a running job whose dispatch entry was delivered at least timeout_ms ago
--     (delivery time from the stream's pending-entries list, i.e. Redis's clock) fails its
--     attempt with error_type Timeout; the usual retry rules follow. With a grace, the worker
--     (which times out its own attempts from when it received them) gets 2 x grace more: the
--     reaper is then only the backstop for a worker that could not.
--   lost worker: a consumer of the dispatch group whose heartbeat key has expired; each of its
--     entries that is still the job's current attempt fails with error_type WorkerLost.
--     With a grace (ARGV[8] > 0) a silent consumer is first only suspected (suspects[c] = now)
--     and is lost once it is still silent at a reap at least grace ms later. A reap that comes
--     more than grace ms after the previous one (Redis was down or stalled, or no leader
--     reaped) suspects afresh (every earlier suspicion dropped): heartbeats may not have had
--     their chance, so nobody is lost before the workers could beat again.
--   inbox: a replay in a worker's inbox (inbox:<consumer>, the replays of the workflows it
--     keeps live) whose worker has no heartbeat, or that waited there L.INBOX_WAIT_MS, is
--     handed to any worker (the dispatch stream) as a new generation.
--   dead consumer without entries: a consumer of the group with nothing pending, an empty
--     inbox, no live heartbeat and idle for longer than the grace (a worker that stopped or
--     restarted) is removed from the group, with its suspicion and its inbox: the group does
--     not grow with restarts. A lost consumer is removed so once its inbox is empty.
-- A late outcome from such an attempt is then stale and is rejected by applyOutcomes.
--
-- KEYS[1] lease          STRING  main-loop lease, checked against ARGV[1] (fencing)
-- KEYS[2] dispatch       STREAM  entries for workers (group ARGV[7])
-- KEYS[3] running        ZSET    id -> start time (ms)
-- KEYS[4] deadlines      ZSET    id -> earliest time (ms) its timeout could pass
-- KEYS[5] due            ZSET    id -> due time (ms)
-- KEYS[6] stats          HASH    counters (beside it, derived from the prefix: metrics HASH and
--                        metricNames SET, counts by job name; ended and endedFailed ZSETs,
--                        the terminal jobs by time)
-- ARGV[1] token          lease token `<epoch>:<owner>`
-- ARGV[2] prefix         key prefix `{wp:<pool>}:`
-- ARGV[3] batch          max jobs examined per check (integer)
-- ARGV[4] now            ms since epoch, '' for Redis TIME, or +ms: TIME plus that (pool.testing)
-- ARGV[5] seed           jitter seed (string)
-- ARGV[6] retention      ms a finished job is kept
-- ARGV[7] group          consumer group of the dispatch stream
-- ARGV[8] grace          ms a silent consumer stays suspected before it is lost (0: at once);
--                        also the timeout backstop's margin (2 x grace) and, after a gap in
--                        reaping longer than grace, nothing is timed out or lost this call
-- ARGV[9] sent           the caller's estimate of Redis time (ms) when it sent this call, given
--                        only if it saw Redis answer promptly for the last grace ms; a gap is
--                        then taken as "no leader reaped" (heartbeats went on), unless this
--                        call itself waited (now - sent >= grace / 2: Redis was frozen)
-- Derived from ARGV[2] (same hash tag): suspects (HASH consumer -> ms first seen silent) and
-- reapedAt (STRING, ms of the previous reap), written only when grace > 0; rejected (STREAM),
-- where a job or entry the reaper cannot read (a key of the wrong type) is set aside, its
-- deadline or entry dropped, so one broken key cannot fail every reap; inbox:<consumer>
-- (STREAM + group ARGV[7]) of each consumer; and, for a lost replay handed out again, the
-- workflow's hash (job:<id>) and wfNew:<id> (SET of its entries ended, not delivered yet).
-- Returns R.reap {code, timed_out, lost, redelivered, next_lost_ms}; code is NOT_LEADER (nothing
-- written) or OK; next_lost_ms is when the first worker suspected now is lost if it stays
-- silent (-1: none), so the main loop reaps again right then, not on its next interval.
-- @include common
-- @include finish

local function reaped(code, timed_out, lost, redelivered, next_lost)
  return reply(R.reap, {code = code, timed_out = timed_out, lost = lost,
                        redelivered = redelivered, next_lost_ms = next_lost or -1})
end

if not holds_lease(KEYS[1], ARGV[1]) then return reaped(C.NOT_LEADER, 0, 0, 0) end
local prefix = ARGV[2]
local batch = arg_int(3, 1, 100000)
local group = ARGV[7]
local ctx = {prefix = prefix, dispatch = KEYS[2], group = group, running = KEYS[3],
             deadlines = KEYS[4], due = KEYS[5], now = now_ms(4), seed = ARGV[5],
             retention = arg_int(6, 1, L.MAX_RETENTION_MS), counts = {}, finished = 0}
local timed_out, lost, redelivered = 0, 0, 0
local grace = arg_int(8, 0, L.MAX_TTL_MS)
local sent = (ARGV[9] or '') ~= '' and now_ms(9) or nil
local suspects = prefix .. K.suspects
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[2], group)
if consumers.err then return reaped(C.OK, 0, 0, 0) end  -- no group yet: nothing was ever delivered
local afresh = false  -- no reap for longer than the grace: workers may not have had their say
if grace > 0 then
  local previous = tonumber(rcall('GET', prefix .. K.reaped_at) or '0') or 0
  local trusted = sent ~= nil and ctx.now - sent < grace / 2
  afresh = ctx.now - previous > grace and not trusted
  rcall('SET', prefix .. K.reaped_at, ctx.now)
  -- every suspicion from before the gap goes, not only those of the workers this call's batch
  -- reaches: one it does not reach would be lost at the next reap, its beat not yet due
  if afresh then rcall('DEL', suspects) end
end

-- A job or entry the reaper cannot read (its key holds the wrong type, written by someone
-- else) is set aside in the rejected record once, its pointer dropped: one broken key must not
-- fail every later reap, and with it the recovery of every lost attempt.
local function set_aside_unreadable(what, err, drop)
  raise_if_refused(err)  -- a refused write: the reap is made again, nothing given up
  drop()
  set_aside(prefix .. K.rejected, what, {}, 'the reaper could not read it: ' .. tostring(err),
            ctx.counts)
end

-- Per-job timeouts, measured from delivery to a worker (not from dispatch).
local ids = {}
if not afresh then ids = rcall('ZRANGEBYSCORE', KEYS[4], '-inf', ctx.now, 'LIMIT', 0, batch) end
local function check_deadline(id)
  local jk = prefix .. K.job .. id
  local j = attempt_fields(jk)
  local timeout = j.spec and tonumber(j.spec[S.timeout_ms]) or 0
  if j.state ~= 'running' or timeout <= 0 or not j.dispatch then
    rcall('ZREM', KEYS[4], id)
  else
    local p = rcall('XPENDING', KEYS[2], group, j.dispatch, j.dispatch, 1)
    if #p == 0 then
      rcall('ZADD', KEYS[4], ctx.now + timeout, id)
    elseif tonumber(p[1][3]) >= timeout + 2 * grace then
      j.by = string.sub(p[1][2], 1, L.MAX_ID_BYTES)
      fail_attempt(ctx, id, jk, j, 'attempt ' .. tostring(j.attempts) ..
                   ' ran past its timeout of ' .. timeout .. ' ms', 'Timeout', true)
      timed_out = timed_out + 1
      bump_named(ctx.counts, j.spec[S.name] or '', M.TIMEOUTS)
    else
      rcall('ZADD', KEYS[4], ctx.now + timeout + 2 * grace - tonumber(p[1][3]), id)
    end
  end
end
for _, id in ipairs(ids) do
  local ok, err = pcall(check_deadline, id)
  if not ok then
    set_aside_unreadable('deadline of ' .. id, err, function() rcall('ZREM', KEYS[4], id) end)
  end
end

-- One entry held by a dead consumer: end its attempt, or hand its delivery out again.
local function recover(consumer, entry_id)
  local e = rcall('XRANGE', KEYS[2], entry_id, entry_id)
  if #e == 0 then
    rcall('XACK', KEYS[2], group, entry_id)
    return
  end
  local f = fields_of(e[1][2])
  local jk = prefix .. K.job .. (f.id or '')
  if f.kind == 'run' then
    local j = attempt_fields(jk)
    if j.state == 'running' and j.attempts == f.attempt and j.dispatch == entry_id then
      j.by = string.sub(consumer, 1, L.MAX_ID_BYTES)
      fail_attempt(ctx, f.id, jk, j, 'worker ' .. consumer ..
                   ' stopped heart-beating during attempt ' .. f.attempt, 'WorkerLost', true)
      lost = lost + 1
      bump_named(ctx.counts, j.spec[S.name] or '', M.WORKERS_LOST)
      return
    end
  elseif f.kind == 'wf' then
    local w = workflow_fields(ctx, f.id or '')
    if w and w.state == 'running' and w.entry == entry_id and w.route == '' then
      drop_entry(ctx, entry_id)
      dispatch_replay(ctx, f.id, w.wk, w.gen + 1)
      return
    end
  elseif f.kind == 'cb' then
    local h = rcall('HMGET', jk, 'cb', 'cb_n', 'cb_entry')
    if h[1] == 'pending' and h[2] == f.n and h[3] == entry_id then
      drop_entry(ctx, entry_id)
      local n = tonumber(h[2]) + 1
      local eid = rcall('XADD', KEYS[2], '*', 'kind', 'cb', 'id', f.id, 'n', n)
      rcall('HSET', jk, 'cb_n', n, 'cb_entry', eid)
      redelivered = redelivered + 1
      return
    end
  end
  drop_entry(ctx, entry_id)
end

-- Silent consumers: lost at once (no grace), or once suspected for grace ms without a gap.
-- next_lost: when the first one suspected and not lost yet will be.
local next_lost = nil
local function lost_now(consumer)
  if rcall('EXISTS', prefix .. K.heartbeat .. consumer) == 1 then
    if grace > 0 then rcall('HDEL', suspects, consumer) end
    return false
  end
  if grace <= 0 then return true end
  local since = tonumber(rcall('HGET', suspects, consumer) or '')
  if since == nil or afresh then
    rcall('HSET', suspects, consumer, ctx.now)
    since = ctx.now
  elseif ctx.now - since >= grace then
    return true
  end
  next_lost = math.min(next_lost or math.huge, since + grace)
  return false
end

-- Replays in workers' inboxes: one whose worker is silent (no heartbeat), or that waited
-- there L.INBOX_WAIT_MS (the worker's slots all busy, its event loop held), goes to any worker
-- as a new generation (a late decision of the old one is stale).
local budget = batch

-- Entry `e` leaves `consumer`'s inbox: handed on while it is its workflow's replay out now.
local function hand_on(consumer, e)
  local f = fields_of(e[2])
  local w = f.kind == 'wf' and workflow_fields(ctx, f.id or '')  -- read before any write
  drop_inbox_entry(ctx, consumer, e[1])
  if w and w.state == 'running' and w.entry == e[1] and w.route == consumer then
    rcall('HSET', w.wk, 'wf_keeper', '')
    dispatch_replay(ctx, f.id, w.wk, w.gen + 1)
    bump(ctx.counts, N.REPLAYS_REROUTED)
  end
end

-- Takes back what `consumer`'s inbox holds for too long; returns how many entries it left. An
-- entry it cannot read is set aside alone: the inbox's other replays still go on.
local function take_back(consumer)
  local inbox = prefix .. K.inbox .. consumer
  local silent = rcall('EXISTS', prefix .. K.heartbeat .. consumer) == 0
  local entries = rcall('XRANGE', inbox, '-', '+', 'COUNT',
                        silent and budget or math.min(budget, L.PAGE))
  for i, e in ipairs(entries) do
    if not silent and ctx.now - id_parts(e[1]) < L.INBOX_WAIT_MS then return #entries - i + 1 end
    budget = budget - 1
    local ok, err = pcall(hand_on, consumer, e)
    if not ok then
      set_aside_unreadable(e[1] .. ' in the inbox of ' .. consumer, err,
                           function() drop_inbox_entry(ctx, consumer, e[1]) end)
    end
  end
  return rcall('XLEN', inbox)
end
local inbox_left = {}  -- consumer -> entries its inbox still holds
for _, c in ipairs(consumers) do
  if budget <= 0 then break end
  local name = fields_of(c).name
  local ok, left = pcall(take_back, name)
  if not ok then
    set_aside_unreadable('inbox of ' .. name, left,
                         function() rcall('DEL', prefix .. K.inbox .. name) end)
    left = 0
  end
  inbox_left[name] = left
end

-- A consumer leaves the group (it is gone, and so is everything it held) with its inbox.
local function remove_consumer(consumer)
  rcall('XGROUP', 'DELCONSUMER', KEYS[2], group, consumer)
  rcall('DEL', prefix .. K.inbox .. consumer)
  if grace > 0 then rcall('HDEL', suspects, consumer) end
end

-- Dead workers: consumers with pending entries and no live heartbeat.
local summary = rcall('XPENDING', KEYS[2], group)
for _, c in ipairs(summary[4] or {}) do
  if budget <= 0 then break end
  local consumer = c[1]
  if lost_now(consumer) then
    local entries = rcall('XPENDING', KEYS[2], group, '-', '+', budget, consumer)
    for _, p in ipairs(entries) do
      local ok, err = pcall(recover, consumer, p[1])
      if not ok then
        set_aside_unreadable(p[1], err, function() drop_entry(ctx, p[1]) end)
      end
    end
    budget = budget - #entries
    if #entries == tonumber(c[2]) and (inbox_left[consumer] or 1) == 0 then
      remove_consumer(consumer)
    end
  end
end

-- Consumers with nothing pending and no heartbeat, idle past the grace: gone for good.
local left = 0
for _, c in ipairs(consumers) do
  if left >= batch then break end
  local info = fields_of(c)
  if tonumber(info.pending) == 0 and tonumber(info.idle) > grace and
     inbox_left[info.name] == 0 and
     rcall('EXISTS', prefix .. K.heartbeat .. info.name) == 0 then
    remove_consumer(info.name)
    bump(ctx.counts, N.WORKERS_REMOVED)
  end
  left = left + 1
end

trim_dispatch(ctx)
bump(ctx.counts, N.TIMEOUTS, timed_out)
bump(ctx.counts, N.WORKERS_LOST_ATTEMPTS, lost)
bump(ctx.counts, N.CALLBACKS_REDELIVERED, redelivered)
trim_ended(ctx)
flush_counts(KEYS[6], ctx.counts, ctx.now)
return reaped(C.OK, timed_out, lost, redelivered, next_lost)
