-- Terminal transitions and the end of an attempt. Needs common.lua.
-- @include admission
-- `ctx` carries: prefix, dispatch, group, running, deadlines, due, callbacks_due, now,
-- retention (ms), seed (jitter), counts, finished (count of terminal transitions this call).

-- Deterministic jitter in [0.5, 1.5) from (seed, job id, attempt): reproducible in tests.
local function jitter(seed, id, attempt)
  local h = redis.sha1hex(seed .. ':' .. id .. ':' .. attempt)
  return 0.5 + tonumber(string.sub(h, 1, 8), 16) / 4294967296
end

-- Drop a dispatch entry: acknowledged for the group and deleted from the stream.
local function drop_entry(ctx, entry_id)
  if entry_id and entry_id ~= '' then
    rcall('XACK', ctx.dispatch, ctx.group, entry_id)
    rcall('XDEL', ctx.dispatch, entry_id)
  end
end

-- The job's attempt ends: it leaves the running set and its dispatch entry is closed.
local function end_attempt(ctx, id, jk)
  rcall('ZREM', ctx.running, id)
  rcall('ZREM', ctx.deadlines, id)
  local h = rcall('HMGET', jk, 'dispatch', 'ckey')
  drop_entry(ctx, h[1])
  key_running(adm(ctx.prefix, ctx.counts), h[2], -1)
end

-- The one place a job becomes terminal (done or canceled). It records the on_complete delivery
-- in the same atomic step, so each terminal transition yields exactly one delivery record.
local function finish(ctx, id, jk, state, outcome)
  rcall('HSET', jk, 'state', state, 'outcome', outcome, 'finished_at', ctx.now)
  local handler = rcall('HGET', jk, 'on_complete')
  if handler and handler ~= '' then
    local eid = rcall('XADD', ctx.dispatch, '*', 'kind', 'cb', 'id', id, 'n', '1')
    rcall('HSET', jk, 'cb', 'pending', 'cb_n', 1, 'cb_entry', eid)
  else
    rcall('PEXPIRE', jk, ctx.retention)
  end
  bump(ctx.counts, outcome)
  ctx.finished = ctx.finished + 1
  rcall('PUBLISH', ctx.prefix .. 'done:' .. id, state)
end

-- A failed attempt (error, lost worker, timeout): retry with backoff if allowed, else final.
local function fail_attempt(ctx, id, jk, err, etype, retryable)
  local h = rcall('HMGET', jk, 'attempts', 'max_attempts', 'backoff_ms', 'base', 'cancel')
  local attempts, max_attempts = tonumber(h[1]), tonumber(h[2])
  end_attempt(ctx, id, jk)
  rcall('HSET', jk, 'error', err, 'error_type', etype)
  if retryable and h[5] ~= '1' and attempts < max_attempts then
    local delay = tonumber(h[3]) * tonumber(h[4]) ^ (attempts - 1) * jitter(ctx.seed, id, attempts)
    local due = ctx.now + math.floor(delay)
    rcall('HSET', jk, 'state', 'retrying', 'due_at', due)
    rcall('ZADD', ctx.due, due, id)
    rcall('SADD', ctx.prefix .. 'waiting', id)
    bump(ctx.counts, 'retried')
    bump(ctx.counts, 'retrying')
    return C.RETRY_SCHEDULED
  end
  finish(ctx, id, jk, 'done', 'failed')
  return C.FAILED
end

-- Count terminal transitions in a per-minute bucket (kept 2 h) for throughput figures.
local function count_throughput(ctx)
  if ctx.finished > 0 then
    local k = ctx.prefix .. 'tp:' .. math.floor(ctx.now / 60000)
    rcall('INCRBY', k, ctx.finished)
    rcall('PEXPIRE', k, 7200000)
  end
end
