-- Fragment: read_capped(key, max_bytes) returns the string at `key`, or false. A value of the
-- wrong type or over `max_bytes` is deleted and counted in `dropped` instead of being returned,
-- so one bad value written by another server can never stall or crash a reader.
local dropped = 0
local function read_capped(key, max_bytes)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return false end
  if kind ~= 'string' or redis.call('STRLEN', key) > max_bytes then
    redis.call('DEL', key)
    dropped = dropped + 1
    return false
  end
  return redis.call('GET', key)
end
