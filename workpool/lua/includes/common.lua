-- Shared helpers, inlined once into every script that includes them.
local rcall = redis.call

-- A reply in `layout` (R.<kind>: the field order of its Python dataclass, wire/replies.py),
-- built by name; `tail` (ids, or id/code pairs) follows. A field left out is a defect of the
-- script: an error naming it, never a short reply read out of place.
local function reply(layout, values, tail)
  local out = {}
  for i, name in ipairs(layout) do
    local v = values[name]
    if v == nil then error('reply field ' .. name .. ' missing') end
    out[i] = v
  end
  for _, v in ipairs(tail or {}) do out[#out + 1] = v end
  return out
end

-- Fencing: true only when `token` is the live main-loop lease (`<epoch>:<owner>`).
local function holds_lease(lease_key, token)
  return rcall('GET', lease_key) == token
end

-- ARGV[i] as a whole number in [lo, hi]. Scripts read their arguments before their first
-- write, so a bad call is an error reply with nothing written.
local function arg_int(i, lo, hi)
  local n = tonumber(ARGV[i])
  if n == nil or n ~= math.floor(n) or n < lo or n > hi then
    error('ARGV[' .. i .. '] must be a whole number from ' .. lo .. ' to ' .. hi .. ', got ' ..
          tostring(ARGV[i]))
  end
  return n
end

-- Milliseconds: ARGV[i] when given (tests, replays), else Redis TIME; `+<ms>`: Redis TIME that
-- much later (a pool whose clock pool.testing moved on).
local function now_ms(i)
  local a = ARGV[i]
  if a ~= nil and a ~= '' and string.sub(a, 1, 1) ~= '+' then
    return arg_int(i, 0, L.MAX_RUN_AT_MS)
  end
  local t = rcall('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if a == nil or a == '' then return now end
  local shift = tonumber(string.sub(a, 2))  -- '+<ms>': Redis's clock moved on (pool.testing)
  if shift == nil or shift ~= math.floor(shift) or shift < 0 or shift > L.MAX_RUN_AT_MS then
    error('ARGV[' .. i .. '] must be ms, empty or +ms, got ' .. a)
  end
  return now + shift
end

-- Rate spec "limit/per_ms" -> limit, per_ms.
local function rate_of(spec)
  local limit, per = string.match(spec, '^(%d+)/(%d+)$')
  return tonumber(limit), tonumber(per)
end

-- A stream entry's flat field list as a table (last value wins on repeated fields).
local function fields_of(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

-- Append every item of `items` to array `out`; returns `out`.
local function append_all(out, items)
  for _, v in ipairs(items) do out[#out + 1] = v end
  return out
end

-- Counter bag: scripts count in Lua and write each counter once per call.
local function bump(counts, name, by)
  counts[name] = (counts[name] or 0) + (by or 1)
end

-- Metrics by job name (workpool/wire/metrics.py): counted in the same bag under the key NAMED
-- (a table: no counter's name), by name then metric, and written by flush_counts into the
-- HASH `metrics` as `<metric>|<name>`, one HINCRBY per metric and name a call. The first
-- M_LIMIT.names names are counted apart (the SET `metricNames`), any later one as M_LIMIT.other.
local NAMED = {}

-- The metrics of job name `name` in the bag `counts` (made on first use).
local function named(counts, name)
  local all = counts[NAMED]
  if not all then
    all = {}
    counts[NAMED] = all
  end
  local t = all[name]
  if not t then
    t = {}
    all[name] = t
  end
  return t
end

local function bump_named(counts, name, metric, by)
  local t = named(counts, name)
  t[metric] = (t[metric] or 0) + (by or 1)
end

-- One observation of `ms` into the histogram whose fields are `fields` (M_DURATION, M_WAIT):
-- its bucket is the first whose bound is at least `ms` (binary search), else the last.
local function observe(counts, name, fields, ms)
  local lo, hi = 1, #fields
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if ms <= M_BOUNDS[mid] then hi = mid else lo = mid + 1 end
  end
  local t, bucket, sum = named(counts, name), fields[lo], fields.sum
  t[bucket] = (t[bucket] or 0) + 1
  t[sum] = (t[sum] or 0) + ms
end

local function flush_named(prefix, named)
  local metrics, names = prefix .. K.metrics, prefix .. K.metric_names
  for name, t in pairs(named) do
    if rcall('SISMEMBER', names, name) == 0 then
      if rcall('SCARD', names) < M_LIMIT.names then rcall('SADD', names, name)
      else name = M_LIMIT.other end
    end
    for metric, n in pairs(t) do
      if n ~= 0 then rcall('HINCRBY', metrics, metric .. M_LIMIT.separator .. name, n) end
    end
  end
end

-- Write the bag: counters into `stats_key` (the pool's `stats` HASH) and, given `now` (ms), the
-- minute's; metrics beside them.
local function flush_counts(stats_key, counts, now)
  local named = counts[NAMED]
  counts[NAMED] = nil
  for name, n in pairs(counts) do
    if n ~= 0 then rcall('HINCRBY', stats_key, name, n) end
  end
  local prefix = string.sub(stats_key, 1, -(#K.stats + 1))
  if now then  -- what started, ended and was retried this minute (HASH tpm:<minute>, 2 h)
    local minute = prefix .. K.throughput .. math.floor(now / 60000)
    local counted = false
    for _, name in ipairs({N.STARTED, N.SUCCEEDED, N.FAILED, N.CANCELED, N.RETRIED}) do
      local n = counts[name]
      if n and n ~= 0 then
        rcall('HINCRBY', minute, name, n)
        counted = true
      end
    end
    if counted then rcall('PEXPIRE', minute, 7200000) end
  end
  if named then flush_named(prefix, named) end
end

-- Deferred writes: items of one variadic write (`head` = {command, key, ...}, a table made
-- once per script) are collected and sent by flush_deferred in one call, since a call costs
-- more than an item. Only for writes that nothing in the script reads before the flush.
local function defer(d, head, a, b)
  local items = d[head]
  if not items then
    items = {}
    d[head] = items
    d[#d + 1] = head
  end
  items[#items + 1] = a
  if b ~= nil then items[#items + 1] = b end
end

local function flush_deferred(d)
  for i = 1, #d do
    local head = d[i]
    local items = d[head]
    for j = 1, #items, 1000 do  -- bounded calls stay far below Lua's unpack limit
      local args = {unpack(head)}
      for x = j, math.min(j + 999, #items) do args[#args + 1] = items[x] end
      rcall(unpack(args))
    end
    d[head] = nil
    d[i] = nil
  end
end

-- Set a malformed stream entry aside in the rejected record with the reason and as much of its
-- raw fields (prefixed `f.`) as fits in L.REJECTED_ENTRY_BYTES: at most 32 fields, names cut at
-- 64 bytes, values at what is left, so a record stays small whatever was sent (`cut` says what
-- was left out). The record keeps about the newest L.REJECTED_KEPT entries.
local function set_aside(rejected_key, entry_id, flat, reason, counts)
  local out = {'entry', entry_id, 'reason', string.sub(reason, 1, 512)}
  local left, total, kept = L.REJECTED_ENTRY_BYTES, 0, 0
  for i = 1, #flat, 2 do
    local name, value = tostring(flat[i]), tostring(flat[i + 1] or '')
    total = total + #name + #value
    if kept < 32 and left > 0 then
      name = string.sub(name, 1, 64)
      value = string.sub(value, 1, math.max(0, left - #name))
      left = left - #name - #value
      out[#out + 1] = 'f.' .. name
      out[#out + 1] = value
      kept = kept + 1
    end
  end
  local bytes = L.REJECTED_ENTRY_BYTES - left
  if kept * 2 < #flat or bytes < total then
    out[#out + 1] = 'cut'
    out[#out + 1] = 'kept ' .. kept .. ' of ' .. math.floor(#flat / 2) .. ' fields, ' ..
                    bytes .. ' of ' .. total .. ' bytes'
  end
  rcall('XADD', rejected_key, 'MAXLEN', '~', L.REJECTED_KEPT, '*', unpack(out))
  bump(counts, N.REJECTED)
  return C.REJECTED
end

-- Drop every entry of `stream` up to and including `last_id`: entries are applied oldest
-- first, so one XTRIM MINID (freeing whole nodes) drops those before it, one XDEL the last.
local function trim_through(stream, last_id)
  rcall('XTRIM', stream, 'MINID', '=', last_id)
  rcall('XDEL', stream, last_id)
end

-- A write the server refused, not the entry's fault: out of memory (Redis refuses only a
-- call's first write so, never one after a write), read-only, or writes stopped after a failed
-- save (every write refused). Nothing of this call is written then: it is raised, failing the
-- call as a whole, so the entry stays to be applied when the call is made again.
local REFUSALS = {'OOM command not allowed', 'READONLY ', 'MISCONF '}
local function raise_if_refused(err)
  local text = tostring(err)
  for _, refusal in ipairs(REFUSALS) do
    if string.find(text, refusal, 1, true) then error(err, 0) end
  end
end

-- What `handler` returns for an entry (or a batched item), or, if applying it raises (a key of
-- the wrong type written by someone else, say), the code of setting it aside: the rest of the
-- batch goes on. Handlers check everything before their first write. A refused write is
-- raised instead (raise_if_refused): setting the entry aside would lose a request.
local function apply_one(handler, reject, entry_id, f, flat)
  local ok, got = pcall(handler, entry_id, f, flat)
  if ok then return got end
  raise_if_refused(got)
  return reject(entry_id, flat, 'could not be applied: ' .. tostring(got))
end

local function entry_bytes(flat)
  local n = 0
  for i = 1, #flat do n = n + #flat[i] end
  return n
end

-- Apply entries of `stream`, oldest first, until `batch` items are applied (or L.CALL_BYTES of
-- entries were read: a call stays bounded whatever their size), reading L.PAGE entries at a
-- time: each entry by the handler its `field` names (`default` when absent), else set aside;
-- applied entries are dropped from the stream (it holds only what is not applied yet). A
-- handler checks everything before its first write and returns a code, or (for an entry
-- carrying many items) a list of {id, code} pairs.
-- Returns reply R.batch: {OK, items applied, last_entry_id, id1, code1, ...}.
local function apply_entries(stream, batch, field, default, handlers, reject)
  local applied, last, pairs = 0, '', {}
  local from, bytes = '-', 0
  while applied < batch and bytes < L.CALL_BYTES do
    local entries = rcall('XRANGE', stream, from, '+', 'COUNT', L.PAGE)
    for _, e in ipairs(entries) do
      if applied >= batch or bytes >= L.CALL_BYTES then break end
      local entry_id, flat = e[1], e[2]
      local f = fields_of(flat)
      local handler = handlers[f[field] or default]
      local code
      if handler then code = apply_one(handler, reject, entry_id, f, flat)
      else code = reject(entry_id, flat, 'unknown ' .. field .. ' ' .. tostring(f[field])) end
      if type(code) == 'table' then
        for i = 1, #code, 2 do
          pairs[#pairs + 1] = code[i]
          pairs[#pairs + 1] = code[i + 1]
        end
        applied = applied + #code / 2
      else
        pairs[#pairs + 1] = f.id or entry_id
        pairs[#pairs + 1] = code
        applied = applied + 1
      end
      last = entry_id
      bytes = bytes + entry_bytes(flat)
    end
    if #entries < L.PAGE then break end
    from = '(' .. entries[#entries][1]
  end
  if last ~= '' then trim_through(stream, last) end
  return reply(R.batch, {code = C.OK, applied = applied, last_entry_id = last}, pairs)
end
