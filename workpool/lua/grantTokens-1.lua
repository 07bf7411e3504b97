-- grantTokens: a sharded pool's global max_parallelism. Each shard's main loop asks its own
-- share of the pool's slots from the coordinator hash (its own slot), reporting what it runs
-- and what it could start; it starts jobs only while it runs fewer than the `tokens` it is
-- given and while they are fresh. The coordinator reserves for the shard the larger of those
-- tokens and what it runs (a running job's slot is never taken back), and the reservations of
-- all shards add up to max_parallelism at most, so the pool never runs more. A reservation
-- changes only at its own shard's next ask: one that stops asking (its loop died) keeps its
-- slots until a new leader of the shard asks, with what the shard really runs (reconciled).
-- While other shards want slots, a shard's tokens are its fair share (max_parallelism over
-- the shards that want any): above it, it starts nothing and its reservation falls as its jobs
-- end; when no other shard wants any, it may take every free slot.
--
-- KEYS[1] tokens   HASH  per shard i: a:<i> reserved, e:<i> epoch of the loop that asked last,
--                        d:<i> its demand (running + ready), t:<i> when (ms); n: the shards
--                        (how a client that names the pool alone finds them)
-- ARGV[1] shard    the shard's index (0 .. shards - 1)
-- ARGV[2] shards   how many shards the pool has
-- ARGV[3] epoch    the asking loop's lease epoch on its shard (a stale loop's is older)
-- ARGV[4] running  jobs the shard runs (its running set as its last startJobs left it)
-- ARGV[5] demand   running + ready jobs of the shard
-- ARGV[6] maxp     the pool's max_parallelism (0 when paused)
-- ARGV[7] fresh    ms: a shard that asked longer ago than this wants nothing more (its loop
--                  is gone: its grant stays, its demand no longer counts)
-- ARGV[8] now      ms since epoch, '' for Redis TIME, or +ms (pool.testing)
-- ARGV[9] rate     the pool's rate limit "limit/per_ms", '' for none: then the pool's one
--                  token bucket (fields rb, rt: tokens and when, ms) hands out start permits
-- ARGV[10] want    permits the shard asks for (its ready jobs)
-- ARGV[11] unused  permits of its last grant it did not use: back into the bucket first
-- Returns R.grant {code, tokens, permits}: OK, what the shard may run up to (it starts jobs
-- only below it) and its permits (-1: no rate limit), or NOT_LEADER (0, 0) for a loop whose
-- epoch is older than one that asked before (nothing written).
-- @include common

local shards = arg_int(2, 1, L.MAX_SHARDS)
local shard = arg_int(1, 0, shards - 1)
local epoch = arg_int(3, 1, 2^53)
local running = arg_int(4, 0, L.MAX_SETTING)
local demand = math.max(running, arg_int(5, 0, 2^53))
local maxp = arg_int(6, 0, L.MAX_SETTING)
local fresh = arg_int(7, 1, 2^53)
local now = now_ms(8)
local rate = ARGV[9] or ''
local rate_limit, rate_per = nil, nil
if rate ~= '' then
  rate_limit, rate_per = rate_of(rate)
  if not rate_limit or rate_limit < 1 or not rate_per or rate_per < 1 then
    error('ARGV[9] must be a rate "limit/per_ms" or empty, got ' .. rate)
  end
end
local want = arg_int(10, 0, 2^53)
local unused = arg_int(11, 0, 2^53)
local h = fields_of(rcall('HGETALL', KEYS[1]))
if epoch < (tonumber(h['e:' .. shard]) or 0) then
  return reply(R.grant, {code = C.NOT_LEADER, tokens = 0, permits = 0})
end

local others, unmet, wanting = 0, 0, 1
for j = 0, shards - 1 do
  if j ~= shard then
    local held = tonumber(h['a:' .. j]) or 0
    local wants = tonumber(h['d:' .. j]) or 0
    others = others + held
    if now - (tonumber(h['t:' .. j]) or 0) <= fresh and wants > 0 then
      wanting = wanting + 1
      unmet = unmet + math.max(0, wants - held)
    end
  end
end
local available = math.max(0, maxp - others)
local desired = demand
if unmet > 0 then desired = math.min(demand, math.ceil(maxp / wanting)) end
local tokens = math.min(desired, available)
rcall('HSET', KEYS[1], 'a:' .. shard, math.max(running, tokens), 'e:' .. shard, epoch,
      'd:' .. shard, demand, 't:' .. shard, now, 'n', shards)

-- The pool's rate limit: one bucket (capacity `limit`, refilled at limit/per), permits taken
-- whole; a shard's unused ones go back (never past the capacity).
local permits = -1
if rate_limit then
  local bucket = tonumber(h.rb) or rate_limit
  local since = tonumber(h.rt) or now
  bucket = math.min(rate_limit, bucket + math.max(0, now - since) * rate_limit / rate_per
                    + unused)
  permits = math.min(want, math.floor(bucket))
  rcall('HSET', KEYS[1], 'rb', bucket - permits, 'rt', now)
end
return reply(R.grant, {code = C.OK, tokens = tokens, permits = permits})
