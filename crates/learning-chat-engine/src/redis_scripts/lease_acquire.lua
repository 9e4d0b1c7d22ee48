-- KEYS: lease. ARGV: holder id, lease ms, `1` to take back a lease this holder already holds.
-- Returns {1 when this holder now holds the lease else 0, repaired}.
-- (Loaded after lease.lua.)
local taken, repaired = take_lease(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1')
return {taken and 1 or 0, repaired}
