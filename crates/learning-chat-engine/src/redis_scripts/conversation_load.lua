-- KEYS: a conversation's list. ARGV: ttl ms.
-- Returns the list (its TTL refreshed), {} when there is none, or {'corrupt'} when the key holds
-- something else (then deleted).
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {} end
if kind ~= 'list' then
  redis.call('DEL', KEYS[1])
  return {'corrupt'}
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return redis.call('LRANGE', KEYS[1], 0, -1)
