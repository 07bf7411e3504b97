-- Jobs never started: each is one field of the `unstarted` HASH (id -> msgpack array of its
-- fields, in UNSTARTED order), not a hash of its own: half the memory of a pending job. Its
-- `job:<id>` hash is written (hash_fields) when it first starts or is canceled, and the field
-- dropped. UNSTARTED is rendered into every script from workpool/wire/protocol.py
-- (UNSTARTED_FIELDS), which reads the same order.
-- @include common

-- The packed value of job fields `j` (a missing field packs as '').
local function pack_job(j)
  local a = {}
  for i, name in ipairs(UNSTARTED) do a[i] = j[name] or '' end
  return cmsgpack.pack(a)
end

-- A packed value as a table of job fields, with state pending and no attempt made yet.
local function unpack_job(raw)
  local a = cmsgpack.unpack(raw)
  local j = {state = 'pending', attempts = 0}
  for i, name in ipairs(UNSTARTED) do j[name] = a[i] end
  return j
end

-- The fields of job `id`: all of them if it never started, else `names` (the first of them
-- 'state') read from its hash; nil when the job exists in neither form. `a`: the admission
-- keys (adm in admission.lua).
local function job_fields(a, id, names)
  local raw = rcall('HGET', a.unstarted, id)
  if raw then return unpack_job(raw) end
  local j = read_fields(a.prefix .. K.job .. id, names)
  if not j[names[1]] then return nil end
  return j
end

-- The hash of an unstarted job `j`, as HSET arguments: `fields` (its state and attempts, at
-- least), then its own fields (empty ones left out: ~50 bytes a job).
local function hash_fields(j, fields)
  local out = append_all({}, fields)
  for _, name in ipairs(UNSTARTED) do
    local v = j[name]
    if v ~= nil and v ~= '' then
      out[#out + 1] = name
      out[#out + 1] = v
    end
  end
  return out
end
