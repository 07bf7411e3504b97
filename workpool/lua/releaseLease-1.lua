-- releaseLease: give the lease up at a graceful stop so another process takes over at once.
--
-- KEYS[1] lease   STRING  `<epoch>:<owner>` with a TTL
-- ARGV[1] token   the caller's lease token
-- Returns R.code {code}: OK when released, NOT_LEADER when the caller did not hold it.
-- @include common

if not holds_lease(KEYS[1], ARGV[1]) then return reply(R.code, {code = C.NOT_LEADER}) end
rcall('DEL', KEYS[1])
return reply(R.code, {code = C.OK})
