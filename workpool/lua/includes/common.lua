-- Shared helpers, inlined once into every script that includes them.
local rcall = redis.call

-- Fencing: true only when `token` is the live main-loop lease (`<epoch>:<owner>`).
local function holds_lease(lease_key, token)
  return rcall('GET', lease_key) == token
end

-- Milliseconds: the passed-in time when given (tests, replays), else Redis TIME.
local function now_ms(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = rcall('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A stream entry's flat field list as a table (last value wins on repeated fields).
local function fields_of(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

-- Fields `names` of hash `key` as a table, read with one HMGET (missing ones are false).
local function read_fields(key, names)
  local h = rcall('HMGET', key, unpack(names))
  local t = {}
  for i, name in ipairs(names) do t[name] = h[i] end
  return t
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

local function flush_counts(stats_key, counts)
  for name, n in pairs(counts) do
    if n ~= 0 then rcall('HINCRBY', stats_key, name, n) end
  end
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

-- Set a malformed stream entry aside, with its raw fields (prefixed `f.`) and the reason.
local function set_aside(rejected_key, entry_id, flat, reason, counts)
  local out = {'entry', entry_id, 'reason', reason}
  for i = 1, #flat, 2 do
    out[#out + 1] = 'f.' .. tostring(flat[i])
    out[#out + 1] = flat[i + 1]
  end
  rcall('XADD', rejected_key, 'MAXLEN', '~', 10000, '*', unpack(out))
  bump(counts, 'rejected')
  return C.REJECTED
end

-- Drop every entry of `stream` up to and including `last_id`: entries are applied oldest
-- first, so one XTRIM MINID (freeing whole nodes) drops those before it, one XDEL the last.
local function trim_through(stream, last_id)
  rcall('XTRIM', stream, 'MINID', '=', last_id)
  rcall('XDEL', stream, last_id)
end

-- Apply entries of `stream`, oldest first, until `batch` items are applied: each entry by the
-- handler its `field` names (`default` when absent), else set aside; applied entries are
-- dropped from the stream (it holds only what is not applied yet). A handler returns a code,
-- or (for an entry carrying many items) a list of {id, code} pairs.
-- Returns {OK, items applied, last_entry_id, id1, code1, ...}.
local function apply_entries(stream, batch, field, default, handlers, reject)
  local entries = rcall('XRANGE', stream, '-', '+', 'COUNT', batch)
  local result = {C.OK, 0, ''}
  for _, e in ipairs(entries) do
    if result[2] >= batch then break end
    local entry_id, flat = e[1], e[2]
    local f = fields_of(flat)
    local handler = handlers[f[field] or default]
    local code
    if handler then
      -- An entry that raises (a key of the wrong type, say) is set aside: the batch goes on,
      -- and the writes deferred for the entries before it are still made.
      local ok, result = pcall(handler, entry_id, f, flat)
      code = ok and result or reject(entry_id, flat, 'could not be applied: ' .. tostring(result))
    else code = reject(entry_id, flat, 'unknown ' .. field .. ' ' .. tostring(f[field])) end
    if type(code) == 'table' then
      for i = 1, #code, 2 do
        result[#result + 1] = code[i]
        result[#result + 1] = code[i + 1]
      end
      result[2] = result[2] + #code / 2
    else
      result[#result + 1] = f.id or entry_id
      result[#result + 1] = code
      result[2] = result[2] + 1
    end
    result[3] = entry_id
  end
  if result[3] ~= '' then trim_through(stream, result[3]) end
  return result
end
