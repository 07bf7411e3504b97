-- enqueueCronTick: record that a periodic job's tick was handled and, unless it was skipped,
-- append its enqueue request (id `cron:<name>:<tick_ms>`, so one job per tick even if two main
-- loops overlapped; no idempotency key maps to it, since those ids are `key:<key>`). A tick at
-- or before the last recorded one is a no-op.
--
-- KEYS[1] lease          STRING  main-loop lease, checked against ARGV[1] (fencing)
-- KEYS[2] cron           HASH    cron name -> last tick handled (ms)
-- KEYS[3] pendingStart   STREAM  client requests (the tick's enqueue goes here)
-- KEYS[4] incoming       SET     ids appended but not applied yet
-- ARGV[1] token          lease token `<epoch>:<owner>`
-- ARGV[2] name           the periodic job's name
-- ARGV[3] tick           tick time (ms since epoch)
-- ARGV[4] enqueue        '1' to enqueue the tick, '0' to record it as skipped (missed)
-- ARGV[5..] fields       the enqueue entry's fields and values (when ARGV[4] is '1')
-- Returns R.tick {code, enqueued}: OK with 1 (enqueued) or 0 (recorded as skipped),
-- DUPLICATE_ENQUEUE (that tick was already handled; nothing written) or NOT_LEADER (nothing
-- written); a tick that is not a time in ms is an error reply, nothing written.
-- @include common

if not holds_lease(KEYS[1], ARGV[1]) then
  return reply(R.tick, {code = C.NOT_LEADER, enqueued = 0})
end
local tick = arg_int(3, 0, L.MAX_RUN_AT_MS)
local last = tonumber(rcall('HGET', KEYS[2], ARGV[2]) or '-1') or -1
if tick <= last then return reply(R.tick, {code = C.DUPLICATE_ENQUEUE, enqueued = 0}) end
rcall('HSET', KEYS[2], ARGV[2], tick)
if ARGV[4] ~= '1' then return reply(R.tick, {code = C.OK, enqueued = 0}) end
local id = L.CRON_PREFIX .. ARGV[2] .. ':' .. tick
rcall('XADD', KEYS[3], '*', 'id', id, unpack(ARGV, 5))
rcall('SADD', KEYS[4], id)
return reply(R.tick, {code = C.OK, enqueued = 1})
