-- KEYS: one value. ARGV: max bytes. Returns {value or '', dropped}.
-- (Loaded after read_capped.lua.)
local value = read_capped(KEYS[1], tonumber(ARGV[1]))
return {value or '', dropped}
