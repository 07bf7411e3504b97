-- startJobs: admission. Moves due jobs into the ready set (by priority, FIFO within one), then
-- starts the best ready jobs while running < max_parallelism (and the pool is not paused),
-- subject to the pool's and each job name's rate limit (token buckets on Redis time) and each
-- concurrency key's limit. Each start increments the attempt (the fencing token of that run)
-- and appends one entry to the dispatch stream (the attempt and the job's packed spec). Also
-- hands out due on_complete deliveries, the replays of workflows that could not decide when
-- they are due again (replaysDue), and ends the workflow waits that are due (wfTimers); an
-- event's wait not while pendingStart holds a request appended by its deadline (the event
-- may be there: ingestion was behind, or Redis refused scripts, so it goes first).
-- A job held by a name's rate limit is parked in nameq:<name> until the name's next token; a
-- job whose key is at its limit waits in keyq:<key>: neither is looked at again until then.
-- Every step is bounded by the batch: keys whose queue an earlier call left to move on
-- (keyDrain), held jobs put back, promotions, starts and deliveries.
--
-- KEYS[1] lease          STRING  main-loop lease, checked against ARGV[1] (fencing)
-- KEYS[2] config         HASH    live overrides (max_parallelism, paused, rate limits, ...)
-- KEYS[3] due            ZSET    id -> due time (ms): pending and retrying jobs not yet ready
-- KEYS[4] running        ZSET    id -> start time (ms)
-- KEYS[5] dispatch       STREAM  entries for workers
-- KEYS[6] deadlines      ZSET    id -> earliest time (ms) its timeout could pass
-- KEYS[7] callbacksDue   ZSET    id -> time (ms) a failed delivery is tried again
-- KEYS[8] stats          HASH    counters (beside it, derived from the prefix: metrics HASH and
--                        metricNames SET, counts by job name)
-- Derived from ARGV[2] (same hash tag): the admission keys listed in includes/admission.lua,
-- replaysDue (ZSET workflow id -> time its replay is tried again), wfTimers (ZSET workflow
-- wait -> time it ends: a sleep, an event's timeout), the workflows' hashes with their
-- wfNew:<id> and wfc:<id>, pendingStart (read for its length and its oldest entry; a
-- workflow past its timeout appends a cancel there) and pendingCompletion (only its length
-- is read).
-- ARGV[1] token          lease token `<epoch>:<owner>`
-- ARGV[2] prefix         key prefix `{wp:<pool>}:`
-- ARGV[3] batch          max promotions, starts and deliveries in this call (integer)
-- ARGV[4] now            ms since epoch, '' for Redis TIME, or +ms: TIME plus that (pool.testing)
-- ARGV[5] cap            a shard's fresh grant of its sharded pool's slots (grantTokens):
--                        running stays within it too; '' (or absent): no cap, one pool
-- ARGV[6] starts         a shard's permits left of its pool's rate limit: it starts at most
--                        that many jobs; '' (or absent): no such limit
-- Returns R.start {code, started, running, max_parallelism, next_due_ms, next_callback_ms,
-- now_ms, next_admission_ms, promoted, requests_waiting, outcomes_waiting, ready, rate, ids...}
-- with -1 for "nothing scheduled"; next_callback_ms is the next delivery or replay due again,
-- or the next workflow wait to end;
-- next_admission_ms is when a rate limit lets a held job go; promoted
-- counts the steps moving jobs towards `ready` (a full batch: call again at once);
-- requests_waiting and outcomes_waiting are the entries of pendingStart and pendingCompletion
-- not applied yet (the main loop calls ingestRequests and applyOutcomes only while there are);
-- ready: the jobs in the ready set as the call ends (what a shard asks slots for); rate: the
-- pool's rate limit setting, '' for none (what a shard asks permits under).
-- code is NOT_LEADER (nothing written) or OK; a bad argument is an error reply, nothing
-- written.
-- @include common
-- @include admission
-- @include workflow

if not holds_lease(KEYS[1], ARGV[1]) then
  return reply(R.start, {code = C.NOT_LEADER, started = 0, running = 0, max_parallelism = 0,
                         next_due_ms = -1, next_callback_ms = -1, now_ms = 0,
                         next_admission_ms = -1, promoted = 0, requests_waiting = 0,
                         outcomes_waiting = 0, ready = 0, rate = ''})
end
local prefix = ARGV[2]
local batch = arg_int(3, 1, 100000)
local now = now_ms(4)
local cap, starts = nil, nil
if ARGV[5] ~= nil and ARGV[5] ~= '' then cap = arg_int(5, 0, L.MAX_SETTING) end
if ARGV[6] ~= nil and ARGV[6] ~= '' then starts = arg_int(6, 0, L.MAX_RATE_LIMIT) end
local counts = {}
local a = adm(prefix, counts)
local maxp = tonumber(setting(a, 'max_parallelism') or '0')
if setting(a, 'paused') == '1' then maxp = 0 end
local limit = maxp  -- what this call starts up to: the pool's limit, or a shard's grant
if cap ~= nil then limit = math.min(maxp, cap) end
local running = rcall('ZCARD', KEYS[4])
local started = {}
local next_admission = -1
local moved = 0  -- jobs moved towards `ready` (steps 0-2): a full batch makes the loop go again

local function wake_at(t)
  if next_admission < 0 or t < next_admission then next_admission = t end
end

-- 0. Keys whose queue an earlier step left unfinished (a lifted key limit, say) move on.
while moved < batch do
  local ckey = rcall('ZRANGE', a.drain, 0, 0)[1]
  if not ckey then break end
  rcall('ZREM', a.drain, ckey)
  moved = moved + math.max(1, advance_key(a, ckey))
end

-- 1. Names whose next token is due: their held jobs go back to `ready`, as many as tokens (a
-- batch in all; a name with more held jobs than that is looked at again at once).
for _, name in ipairs(rcall('ZRANGEBYSCORE', a.throttled, '-inf', now, 'LIMIT', 0, batch)) do
  if moved >= batch then break end
  rcall('ZREM', a.throttled, name)
  local q = prefix .. K.name_queue .. name
  local spec = setting(a, 'rate:' .. name)
  local tokens = batch  -- no rate in force (lifted since): all may go
  if spec then tokens = math.max(1, math.floor(bucket_tokens(a, 'name:' .. name, spec, now))) end
  local n = math.min(tokens, batch - moved)
  local held = rcall('ZRANGE', q, 0, n - 1, 'WITHSCORES')
  for i = 1, #held, 2 do
    rcall('ZREM', q, held[i])
    rcall('ZADD', a.ready, held[i + 1], held[i])
  end
  bump(counts, N.HELD_BY_RATE, -#held / 2)
  moved = moved + math.max(1, #held / 2)
  if rcall('EXISTS', q) == 1 then  -- its next token, or now if the batch ran out first
    local limit, per = 1, 0
    if spec and n >= tokens then limit, per = rate_of(spec) end
    rcall('ZADD', a.throttled, now + math.ceil(per / limit), name)
  end
end

-- 2. Due jobs become ready (or wait in their key's queue).
local due = rcall('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, math.max(0, batch - moved))
for _, id in ipairs(due) do
  local j = job_fields(a, id)
  rcall('ZREM', KEYS[3], id)
  if j and (j.state == 'pending' or j.state == 'retrying') then
    local s = j.spec
    make_ready(a, id, s[S.name] or '', tonumber(s[S.priority]) or 0, tonumber(s[S.seq]) or 0,
               s[S.ckey])
  else
    bump(counts, N.ORPHAN_DUE_ENTRIES)
  end
end

-- 3. Start the best ready jobs into free slots, within the rate limits.
local pool_rate = setting(a, 'rate')
local free = math.min(limit - running, batch, starts or batch)
local looked = 0
local name_rates = {}  -- name -> its rate spec (false: none), read once per call
-- The best ready jobs are read a window at a time; a key's next job may join `ready` (advance_key)
-- ahead of the rest of the window, so the window is read again after that.
local window, at = {}, 1
-- A started job leaves `ready` and `unstarted` or `retrying`, and joins `running`, in one call
-- each per batch: flushed before `ready` is read again, everything before the script returns
-- (job_fields looks in `unstarted` first: no job started here is read again before the flush).
local d = {}
local unready, run = {'ZREM', a.ready}, {'ZADD', KEYS[4]}
while #started < free and looked < 2 * batch do
  if at > #window then
    flush_deferred(d)
    window, at = rcall('ZRANGE', a.ready, 0, math.min(free - #started, 2 * batch - looked) - 1,
                       'WITHSCORES'), 1
    if #window == 0 then break end
  end
  local id, rank = window[at], window[at + 1]
  at = at + 2
  looked = looked + 1
  local jk = prefix .. K.job .. id
  local j = job_fields(a, id) or {spec = {}}
  local s = j.spec
  local pool_tokens = pool_rate and bucket_tokens(a, 'pool', pool_rate, now)
  local name = s[S.name] or ''
  if name_rates[name] == nil then name_rates[name] = setting(a, 'rate:' .. name) or false end
  local name_rate = name_rates[name] or nil
  local name_tokens = name_rate and bucket_tokens(a, 'name:' .. name, name_rate, now)
  if j.state ~= 'pending' and j.state ~= 'retrying' then
    rcall('ZREM', a.ready, id)
    bump(counts, N.ORPHAN_DUE_ENTRIES)
  elseif pool_tokens and pool_tokens < 1 then
    wake_at(now + bucket_wait(pool_rate, pool_tokens))
    break
  elseif key_at_limit(a, s[S.ckey], name) then  -- its key reached its limit since: wait again
    rcall('ZREM', a.ready, id)
    rcall('ZADD', prefix .. K.key_queue .. s[S.ckey], rank, id)
    bump(counts, N.HELD_BY_KEY)
    if rcall('HGET', a.head, s[S.ckey]) == id then rcall('HDEL', a.head, s[S.ckey]) end
    advance_key(a, s[S.ckey])
    window = {}
  elseif name_tokens and name_tokens < 1 then
    rcall('ZREM', a.ready, id)
    rcall('ZADD', prefix .. K.name_queue .. name, rank, id)
    rcall('ZADD', a.throttled, 'LT', now + bucket_wait(name_rate, name_tokens), name)
    bump(counts, N.HELD_BY_RATE)
  else
    if pool_tokens then bucket_take(a, 'pool', pool_rate, now, pool_tokens) end
    if name_tokens then bucket_take(a, 'name:' .. name, name_rate, now, name_tokens) end
    defer(d, unready, id)
    defer(d, a.leave[j.state], id)
    local ckey = s[S.ckey]
    if ckey and ckey ~= '' then
      if rcall('HGET', a.head, ckey) == id then rcall('HDEL', a.head, ckey) end
      key_running(a, ckey, 1)
      advance_key(a, ckey)
      window = {}
    end
    local attempt = (tonumber(j.attempts) or 0) + 1
    local timeout = tonumber(s[S.timeout_ms]) or 0
    local eid = rcall('XADD', KEYS[5], '*', 'kind', 'run', 'id', id, 'attempt', attempt,
                      'spec', j.packed)
    local fields = {'state', 'running', 'attempts', attempt, 'started_at', now, 'dispatch', eid}
    if j.state == 'pending' then append_all(fields, {'spec', j.packed}) end  -- its spec moves in
    rcall('HSET', jk, unpack(fields))
    defer(d, run, now, id)
    if timeout > 0 then rcall('ZADD', KEYS[6], now + timeout, id) end
    started[#started + 1] = id
    bump_named(counts, name, M.STARTED)
    if j.state == 'retrying' then
      bump(counts, N.RETRYING, -1)
    else  -- its wait for a first start, from when it was due
      observe(counts, name, M_WAIT, math.max(0, now - math.max(tonumber(s[S.enqueued_at]) or now,
                                                             tonumber(s[S.due_at]) or 0)))
    end
  end
end
flush_deferred(d)
if #started > 0 then bump(counts, N.STARTED, #started) end
local next_throttled = rcall('ZRANGE', a.throttled, 0, 0, 'WITHSCORES')
if #next_throttled > 0 then wake_at(tonumber(next_throttled[2])) end

-- 4. Due on_complete deliveries go out again.
local deliveries = rcall('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, batch)
for _, id in ipairs(deliveries) do
  local jk = prefix .. K.job .. id
  local h = rcall('HMGET', jk, 'cb', 'cb_n')
  rcall('ZREM', KEYS[7], id)
  if h[1] == 'pending' then
    local eid = rcall('XADD', KEYS[5], '*', 'kind', 'cb', 'id', id, 'n', h[2] or 1)
    rcall('HSET', jk, 'cb_entry', eid)
  end
end

-- 5. Replays of workflows that could not decide go out again (unless one is out already).
local replays_due = prefix .. K.replays_due
local wctx = {prefix = prefix, dispatch = KEYS[5], counts = counts}
for _, id in ipairs(rcall('ZRANGEBYSCORE', replays_due, '-inf', now, 'LIMIT', 0, batch)) do
  rcall('ZREM', replays_due, id)
  local ok, w = pcall(workflow_fields, wctx, id)  -- after writes: a clobbered key only skips
  if ok and w and w.state == 'running' and w.entry == '' then
    dispatch_replay(wctx, id, w.wk, w.gen + 1)
  end
end

-- 6. Workflow waits that end now: a sleep is over, an event's wait timed out; a workflow past
-- its timeout (entry 0) is ended by a cancel entry with timeout=1 that ingestRequests applies.
-- An event sent by a wait's deadline beats its timeout, however late it is ingested: while
-- pendingStart holds a request appended by then (not applied yet: ingestion is behind, or
-- Redis refused scripts), the wait's timer stays for a later call, after that ingest.
local timers = prefix .. K.wf_timers
local held_from = nil  -- ms of the oldest request not applied yet (false: none), read once
local function held(at)
  if held_from == nil then
    local oldest = redis.pcall('XRANGE', prefix .. K.pending_start, '-', '+', 'COUNT', 1)
    held_from = type(oldest) == 'table' and #oldest > 0 and
      tonumber(string.match(oldest[1][1], '^(%d+)')) or false
  end
  return held_from and held_from <= at
end
local due_waits = rcall('ZRANGEBYSCORE', timers, '-inf', now, 'WITHSCORES', 'LIMIT', 0, batch)
for i = 1, #due_waits, 2 do
  local member, at = due_waits[i], tonumber(due_waits[i + 1])
  local wid, n = string.match(member, '^(.*):(%d+)$')
  local ok, w = pcall(workflow_fields, wctx, wid or '')  -- after writes: never raises
  w = ok and w
  local rec = w and w.state == 'running' and journal_entry(w.wk, n)
  if not (rec and rec[J.state] == 'pending' and rec[J.kind] == 'event' and held(at)) then
    -- (else it stays in wfTimers for a later call)
    rcall('ZREM', timers, member)
    if w and w.state == 'running' and n == '0' then  -- past its timeout: ingest ends it
      rcall('XADD', prefix .. K.pending_start, '*', 'op', 'cancel', 'id', wid, 'timeout', '1')
    elseif rec and rec[J.state] == 'pending' then
      wctx.now = now
      if rec[J.kind] == 'event' then
        local field = 'w:' .. rec[J.name]
        local waiting = list_field(w.wk, field)
        for k, m in ipairs(waiting) do
          if tostring(m) == n then table.remove(waiting, k) break end
        end
        set_list(w.wk, field, waiting)
        wait_ended(wctx, wid, w, n, rec, 'failed', '', 'no event ' .. rec[J.name] .. ' came ' ..
                   'before the wait timed out', 'WaitTimeout')
        bump(counts, N.WAITS_TIMED_OUT)
      else
        wait_ended(wctx, wid, w, n, rec, 'succeeded', '')
      end
    end
  end
end

-- Entries of a request stream not applied yet, read after this call's writes, so never
-- raising: a key clobbered by someone else counts as waiting (the script that reads it then
-- sets the problem out, as before).
local function waiting(stream)
  local n = redis.pcall('XLEN', stream)
  return type(n) == 'number' and n or 1
end

local function first_score(key)
  local r = rcall('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #r == 0 then return -1 end
  return tonumber(r[2])
end

local next_callback = first_score(KEYS[7])
for _, key in ipairs({replays_due, timers}) do
  local t = first_score(key)
  if next_callback < 0 or (t >= 0 and t < next_callback) then next_callback = t end
end

flush_counts(KEYS[8], counts, now)
return reply(R.start, {code = C.OK, started = #started, running = running + #started,
                       max_parallelism = maxp, next_due_ms = first_score(KEYS[3]),
                       next_callback_ms = next_callback, now_ms = now,
                       next_admission_ms = next_admission, promoted = moved + #due,
                       requests_waiting = waiting(prefix .. K.pending_start),
                       outcomes_waiting = waiting(prefix .. K.pending_completion),
                       ready = rcall('ZCARD', a.ready), rate = pool_rate or ''}, started)
