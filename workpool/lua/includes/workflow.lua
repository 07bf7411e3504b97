-- Workflows. A workflow is a hash `job:<id>` like a job's (so status, wait, cancel, on_complete
-- and retention treat it as one), marked kind=workflow, that never holds a slot: it is
-- `running` from its start until it ends. Its code runs as replays: a worker runs the workflow
-- function against its journal and sends back a decision (new steps to ask for, or the end).
-- Its fields beside the job's (state, outcome, result, error, spec, ...):
--   wf_gen    generation of the replay handed out last: only that replay's decision counts
--   wf_entry  its dispatch entry ('' when none is out)
--   wf_dirty  1 when the journal changed after that replay was handed out: replay again
--   wf_steps  journal entries so far; wf_max its max_steps
--   wf_fails  replays in a row that could not decide; wf_blocked the last one's reason
--   j:<n>     journal entry n (JOURNAL order, msgpack): step n's name, state and outcome
--   a:<k>     activation k: the ended entries one replay delivered to the code, in order (a
--             replay from the start delivers them so again); wf_acts how many
--   wf_applied the generation of the replay whose decision was applied last
--   wf_keeper  the worker that made that decision, so keeps the workflow's coroutine live
--   wf_route   where the replay out now went: '' (the dispatch stream), else the worker
--              whose inbox holds it
-- Step n is a job `<id>:<n>` whose spec names its workflow (wf, wf_n); the script that ends it
-- writes its outcome into the journal and asks for a replay. The `workflows` SET holds the ids
-- of the running ones; the SET `wfNew:<id>` the entries that ended and are not delivered to
-- its code yet (dropped when it ends).
-- @include common
-- @include spec

local function pack_journal(rec)
  local a = {}
  for i, name in ipairs(JOURNAL) do a[i] = rec[name] or '' end
  return cmsgpack.pack(a)
end

-- A workflow's waits (a sleep, an event's timeout) are members `<id>:<n>` of the wfTimers
-- ZSET, scored by when they end; startJobs ends the due ones.
local function timer_member(wid, n)
  return wid .. ':' .. n
end

-- A msgpack array kept in field `field` of hash `wk` ({} when absent or unreadable), and its
-- write back (the field is dropped when the array is empty). Fields `w:<event>` hold the
-- journal numbers waiting for that event, oldest first; `e:<event>` the payloads of events
-- sent while none waited, oldest first.
local function list_field(wk, field)
  local raw = rcall('HGET', wk, field)
  local ok, a = pcall(cmsgpack.unpack, raw or '')
  return ok and type(a) == 'table' and a or {}
end

local function set_list(wk, field, a)
  if #a == 0 then rcall('HDEL', wk, field) else rcall('HSET', wk, field, cmsgpack.pack(a)) end
end

-- HSET of `fields` ([field, value, ...]) on `key`, a thousand values a call at most (Lua's
-- unpack limit: a decision asking for a wide fan-out writes an entry per step).
local function hset_all(key, fields)
  for i = 1, #fields, 1000 do rcall('HSET', key, unpack(fields, i, math.min(i + 999, #fields))) end
end

-- Journal entry n of workflow hash `wk` as stored (unpacked), or nil.
local function journal_entry(wk, n)
  local raw = rcall('HGET', wk, 'j:' .. n)
  local ok, rec = pcall(cmsgpack.unpack, raw or '')
  if not ok or type(rec) ~= 'table' then return nil end
  return rec
end

-- The packed journal entries `ns` of workflow hash `wk` (false where there is none), read a
-- thousand at a time: Lua's unpack takes some 8,000 values at most, and a fan-out has more.
-- `known`: n -> an entry this call wrote, or is about to write (never read: the hash may not
-- hold it yet).
local function journal_records(wk, ns, known)
  local out, unread, at = {}, {}, {}
  for i, n in ipairs(ns) do
    out[i] = known and known[n] or false
    if not out[i] then
      unread[#unread + 1] = 'j:' .. n
      at[#unread] = i
    end
  end
  for i = 1, #unread, 1000 do
    local recs = rcall('HMGET', wk, unpack(unread, i, math.min(i + 999, #unread)))
    for k, rec in ipairs(recs) do out[at[i + k - 1]] = rec end
  end
  return out
end

-- Journal entry n of running workflow `wid` ended and is not delivered to its code yet.
local function newly_ended(ctx, wid, n)
  rcall('SADD', ctx.prefix .. K.wf_new .. wid, n)
end

-- The inbox of worker `keeper` while it beats and has one (a stream: a key of another type,
-- written by someone else, is passed over, never written to), else nil. A script that
-- writes neither heartbeats nor inboxes keeps the answers for the call (ctx.routes).
local function inbox_of(ctx, keeper)
  local known = ctx.routes and ctx.routes[keeper]
  if known ~= nil then return known or nil end
  local inbox = ctx.prefix .. K.inbox .. keeper
  local live = rcall('EXISTS', ctx.prefix .. K.heartbeat .. keeper) == 1 and
               rcall('TYPE', inbox).ok == 'stream'
  if ctx.routes then ctx.routes[keeper] = live and inbox end
  return live and inbox or nil
end

-- Hand replay `gen` of workflow `wid` (hash `wk`) to a worker: to the inbox of the worker that
-- keeps it live (wf_keeper, inbox_of), so the replay goes on from its coroutine instead of
-- replaying the journal elsewhere; else to any worker (the dispatch stream). The reaper takes
-- back what an inbox holds too long. The entry carries the journal's length and activations,
-- the generation whose decision was applied last, and the entries that ended and are not
-- delivered yet ([n, record, ...], msgpack), so a worker that keeps the workflow live, and
-- made that decision, goes on without reading it: up to L.REPLAY_CARRY_BYTES of records (read
-- a thousand at a time, and no more once over); the rest it names (`unread`, [n, ...]) for the
-- worker to read, so a wide fan-out of large results never makes one huge entry. A workflow
-- with an empty journal has its start carried too (its spec and started_at): its first replay
-- reads nothing. `h`: the workflow's {steps, acts, applied, keeper} when the caller has them
-- (else read here); `writes`: more fields of `wk` to set in the same HSET ([field, value,
-- ...], appended to; `known` holds those of its journal entries that ended).
local function dispatch_replay(ctx, wid, wk, gen, known, h, writes)
  if not h then
    local r = rcall('HMGET', wk, 'wf_steps', 'wf_acts', 'wf_applied', 'wf_keeper')
    h = {steps = r[1], acts = r[2], applied = r[3], keeper = r[4]}
  end
  local keeper = h.keeper or ''
  local stream = keeper ~= '' and inbox_of(ctx, keeper)
  if stream then bump(ctx.counts, N.REPLAYS_ROUTED) else stream, keeper = ctx.dispatch, '' end
  local new, ended, unread = rcall('SMEMBERS', ctx.prefix .. K.wf_new .. wid), {}, {}
  local room = L.REPLAY_CARRY_BYTES
  for i = 1, #new, 1000 do
    local part = #new <= 1000 and new or {unpack(new, i, math.min(i + 999, #new))}
    local recs = room > 0 and journal_records(wk, part, known) or {}
    for k, n in ipairs(part) do
      local rec = recs[k] or ''
      if room > 0 and #rec <= room then
        ended[#ended + 1] = tonumber(n)
        ended[#ended + 1] = rec
        room = room - #rec
      else
        unread[#unread + 1] = tonumber(n)
        room = 0
      end
    end
  end
  local more = #unread > 0 and {'unread', cmsgpack.pack(unread)} or {}
  local start = {}
  if (tonumber(h.steps) or 0) == 0 and (tonumber(h.acts) or 0) == 0 then
    local s = rcall('HMGET', wk, 'spec', 'started_at')
    start = {'spec', s[1] or '', 'started_at', s[2] or ''}
  end
  local eid = rcall('XADD', stream, '*', 'kind', 'wf', 'id', wid, 'gen', gen, 'steps',
                    h.steps or 0, 'acts', h.acts or 0, 'applied', h.applied or 0,
                    'ended', cmsgpack.pack(ended), unpack(append_all(start, more)))
  hset_all(wk, append_all(writes or {}, {'wf_gen', gen, 'wf_entry', eid, 'wf_dirty', 0,
                                         'wf_route', keeper}))
  bump(ctx.counts, N.REPLAYS)
end

-- The workflow a job (`kind` step) or child workflow (`kind` workflow) of spec `spec` belongs
-- to, read before the job's end is written: {wk, wid, n, state, entry, gen, fails, kind,
-- scheduled_at (the spec's enqueued_at: the decision that asked for it wrote both), and the
-- workflow's steps, acts, applied and keeper (dispatch_replay's `h`)}; nil for a job of no
-- workflow, or of one that is gone (past its retention).
local function step_owner(ctx, spec, kind)
  local wid = spec[S.wf]
  if not wid or wid == '' then return nil end
  local wk = ctx.prefix .. K.job .. wid
  local w = redis.pcall('HMGET', wk, 'kind', 'state', 'wf_entry', 'wf_gen', 'wf_fails',
                        'wf_steps', 'wf_acts', 'wf_applied', 'wf_keeper')
  if w.err or w[1] ~= 'workflow' then return nil end  -- never fails the job's own end
  return {wk = wk, wid = wid, n = spec[S.wf_n], state = w[2], entry = w[3] or '',
          gen = tonumber(w[4]) or 0, fails = tonumber(w[5]) or 0, kind = kind,
          scheduled_at = tonumber(spec[S.enqueued_at]) or '', steps = w[6], acts = w[7],
          applied = w[8], keeper = w[9]}
end

-- Tell watchers of workflow `wid` that its journal or state changed (they read it again).
local function changed(ctx, wid)
  rcall('PUBLISH', ctx.prefix .. K.wf_channel .. wid, 'changed')
end

-- Something the workflow waits for happened: replay it now, or after the replay out now, or,
-- when its last replay could not decide, when the next is due (replaysDue: its backoff holds).
-- `known` and `writes` as for dispatch_replay: written here in any case, in one HSET.
local function wake(ctx, owner, known, writes)
  writes = writes or {}
  if owner.state ~= 'running' or owner.fails > 0 then hset_all(owner.wk, writes)
  elseif owner.entry ~= '' then hset_all(owner.wk, append_all(writes, {'wf_dirty', 1}))
  else dispatch_replay(ctx, owner.wid, owner.wk, owner.gen + 1, known, owner.steps and owner,
                       writes) end
end

-- Step `spec` of workflow `owner` ended (`outcome` succeeded, failed or canceled; `extra` the
-- job's terminal fields: result, or error and error_type): its journal entry says so, and a
-- running workflow is replayed. A workflow that ended keeps the record and is not replayed.
local function step_ended(ctx, owner, spec, outcome, attempts, extra)
  local rec = {kind = owner.kind, name = spec[S.name], outcome = outcome,
               attempts = attempts or 0, finished_at = ctx.now,
               state = outcome == 'canceled' and 'canceled' or 'done'}
  for i = 1, #(extra or {}), 2 do
    local k = extra[i]
    if k == 'result' or k == 'error' or k == 'error_type' then rec[k] = extra[i + 1] end
  end
  rec.scheduled_at = owner.scheduled_at
  local packed = pack_journal(rec)
  if owner.state == 'running' then newly_ended(ctx, owner.wid, owner.n) end
  changed(ctx, owner.wid)
  wake(ctx, owner, {[tostring(owner.n)] = packed}, {'j:' .. owner.n, packed})
end

-- A workflow's spec is unpacked when first read (`w.spec`): most decisions never read it.
local LAZY_SPEC = {__index = function(w, name)
  if name ~= 'spec' then return nil end
  local ok, spec = pcall(cmsgpack.unpack, w.packed or '')
  rawset(w, 'spec', ok and type(spec) == 'table' and spec or {})
  return rawget(w, 'spec')
end}

-- Workflow `wid`'s fields: {wk, state, gen, entry, route, dirty, steps, max, fails, spec
-- (unpacked when read), packed, attempts = 0, acts}; nil when there is no workflow of that id.
local function workflow_fields(ctx, wid)
  local wk = ctx.prefix .. K.job .. wid
  local w = rcall('HMGET', wk, 'kind', 'state', 'wf_gen', 'wf_entry', 'wf_dirty', 'wf_steps',
                  'wf_max', 'wf_fails', 'spec', 'wf_acts', 'wf_route')
  if w[1] ~= 'workflow' then return nil end
  return setmetatable({wk = wk, state = w[2], gen = tonumber(w[3]) or 0, entry = w[4] or '',
          dirty = w[5] == '1', steps = tonumber(w[6]) or 0, max = tonumber(w[7]) or 0,
          fails = tonumber(w[8]) or 0, packed = w[9], attempts = 0, acts = tonumber(w[10]) or 0,
          route = w[11] or ''}, LAZY_SPEC)
end

-- A pending wait (sleep or event) of workflow `w` (workflow_fields), journal entry n `rec`,
-- ends with `outcome` (and `payload`, or an error): written, then the workflow is woken.
local function wait_ended(ctx, wid, w, n, rec, outcome, payload, err, etype)
  rcall('HSET', w.wk, 'j:' .. n, pack_journal({
    kind = rec[J.kind], name = rec[J.name], state = 'done', outcome = outcome, result = payload,
    error = err, error_type = etype, scheduled_at = rec[J.scheduled_at], finished_at = ctx.now}))
  newly_ended(ctx, wid, n)
  changed(ctx, wid)
  wake(ctx, {wk = w.wk, wid = wid, state = w.state, entry = w.entry, gen = w.gen,
             fails = w.fails})
end
