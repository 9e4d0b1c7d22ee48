-- KEYS: one window. ARGV: span ms.
-- Returns the units of the entries that count now: within the last span, reservations still to
-- come left out (the quota-usage gauge).
-- (Loaded after window.lua.)
local used = 0
local from = now - tonumber(ARGV[1]) + 1
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], from, now)) do
  used = used + units_of(entry)
end
return used
