-- KEYS: a conversation's list. ARGV: ttl ms, id, now ms, expected length (0 = create), header,
-- turns...
-- Appends the turns only when the list has the expected length, so a turn is never written
-- over another. Returns the new length, -1 when the list does not have the expected length
-- (another write came first), -2 when it is gone.
local expected = tonumber(ARGV[4])
local kind = redis.call('TYPE', KEYS[1])['ok']
if expected == 0 then
  if kind ~= 'none' then return -1 end
  redis.call('RPUSH', KEYS[1], ARGV[5])
else
  if kind ~= 'list' then return -2 end
  if redis.call('LLEN', KEYS[1]) ~= expected then return -1 end
end
for i = 6, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return redis.call('LLEN', KEYS[1])
