-- Fragment: a lease is a string key holding its holder's id, with an expiry.
-- take_lease(key, holder, ms, retake) sets it to `holder` for `ms` when it is free, or, with
-- `retake`, when `holder` already holds it (an earlier attempt whose reply was lost may have
-- taken it). Returns taken (true/false) and repaired: 1 when a value that is no lease (another
-- type, no expiry, or an expiry far beyond any lease we set) was deleted, since it would
-- otherwise hold everyone off forever.
local function take_lease(key, holder, ms, retake)
  local repaired = 0
  local ttl = redis.call('PTTL', key)
  if ttl ~= -2 and (ttl == -1 or ttl > ms * 4 or redis.call('TYPE', key)['ok'] ~= 'string') then
    redis.call('DEL', key)
    repaired = 1
    ttl = -2
  end
  if retake and ttl > 0 and redis.call('GET', key) == holder then
    ttl = -2
  end
  if ttl == -2 then
    redis.call('SET', key, holder, 'PX', ms)
    return true, repaired
  end
  return false, repaired
end
