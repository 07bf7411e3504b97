-- A job's spec: what was asked for at enqueue (name, arguments, options), one msgpack array in
-- SPEC order, packed once and never rewritten. While the job is pending it is the job's field
-- of the `unstarted` HASH (no hash of its own: half the memory); its first start (or cancel)
-- moves it, as is, into the `spec` field of its new `job:<id>` hash, beside the few fields a
-- transition writes (state, attempts, ...). SPEC and S (each name's position) are rendered
-- into every script from workpool/wire/protocol.py (SPEC_FIELDS), which reads the same order.
-- A script reads an unpacked spec by position, `j.spec[S.name]`: building a table by name for
-- each job cost more than the HMGET that read it.
-- @include common

-- The packed spec of job fields `j` (a missing field packs as '').
local function pack_spec(j)
  local a = {}
  for i, name in ipairs(SPEC) do a[i] = j[name] or '' end
  return cmsgpack.pack(a)
end

-- The started (or canceled) job whose hash is `jk`: {state, attempts, dispatch, cancel,
-- started_at (its hash's fields, false when missing), spec (unpacked), packed}, read with one
-- HMGET; nil when it has no hash. A hash written before specs were packed holds the spec's
-- fields flat: read in SPEC order.
local function started_fields(jk)
  local h = rcall('HMGET', jk, 'spec', 'state', 'attempts', 'dispatch', 'cancel',
                  'started_at')
  if not h[2] then return nil end
  local packed, spec = h[1], nil
  if packed then spec = cmsgpack.unpack(packed) else
    spec = rcall('HMGET', jk, unpack(SPEC))
    for i = 1, #SPEC do spec[i] = spec[i] or '' end
    packed = cmsgpack.pack(spec)
  end
  return {state = h[2], attempts = h[3], dispatch = h[4], cancel = h[5], spec = spec,
          packed = packed, started_at = h[6]}
end

-- Job `id` as started_fields reads it, or, pending (in `unstarted`, no hash yet), state
-- pending, attempt 0, its spec unpacked and packed (the first start moves that to its hash,
-- each start sends it to a worker); nil when the job exists in neither form. `a`: the
-- admission keys (adm in admission.lua).
local function job_fields(a, id)
  local raw = rcall('HGET', a.unstarted, id)
  if raw then
    return {state = 'pending', attempts = 0, spec = cmsgpack.unpack(raw), packed = raw}
  end
  return started_fields(a.prefix .. K.job .. id)
end
