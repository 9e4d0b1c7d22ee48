-- Fragment: the windows of the sliding-window limiter (admission/window). A window lets at most
-- `limit` units count within ANY `span` ms. It is a sorted set of entries `member:units`, each
-- scored by the Redis ms its units count from (a reservation lies in the future). The units a
-- window holds are kept in a totals hash (field: the window's key), so a long window (a day of
-- token charges) is never summed on every call. All keys of one limiter share a hash slot.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function units_of(entry)
  return tonumber(string.match(entry, ':(%d+)$')) or 0
end

-- Keeps `key` alive at least `ms` longer.
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

-- Clears the totals hash when something else took its name.
local function check_totals(totals)
  local kind = redis.call('TYPE', totals)['ok']
  if kind ~= 'none' and kind ~= 'hash' then redis.call('DEL', totals) end
end

-- The units window `key` holds once the entries older than `span` are gone. A total the hash
-- lost (evicted, expired) is rebuilt from the entries; a window that is gone (or was not a
-- sorted set) holds nothing.
local function load_window(totals, key, span)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'zset' then
    if kind ~= 'none' then redis.call('DEL', key) end
    redis.call('HDEL', totals, key)
    return 0
  end
  local total = redis.call('HGET', totals, key)
  local changed = false
  if total then
    total = tonumber(total)
  else
    total = 0
    for _, entry in ipairs(redis.call('ZRANGE', key, 0, -1)) do total = total + units_of(entry) end
    changed = true
  end
  local old = redis.call('ZRANGEBYSCORE', key, '-inf', now - span)
  if #old > 0 then
    for _, entry in ipairs(old) do total = total - units_of(entry) end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - span)
    changed = true
  end
  if total < 0 then total = 0 end
  if changed then redis.call('HSET', totals, key, total) end
  return total
end

-- Adds `units` at score `at` under `member` unless that entry is there already: 1 when added.
local function add_entry(totals, key, at, member, units)
  local added = redis.call('ZADD', key, 'NX', at, member .. ':' .. units)
  if added == 1 then redis.call('HINCRBY', totals, key, units) end
  return added
end

-- Removes the entry of `member` with `units`: 1 when it was there.
local function remove_entry(totals, key, member, units)
  local removed = redis.call('ZREM', key, member .. ':' .. units)
  if removed == 1 then redis.call('HINCRBY', totals, key, -units) end
  return removed
end

-- The earliest ms (now or later) at which `units` more fit in window `key` holding `total`:
-- walks from the oldest entry until what is left after it leaves room.
local function earliest(key, span, limit, total, units)
  if units > limit then units = limit end
  if total + units <= limit then return now end
  local remaining = total
  local from = 0
  while true do
    local batch = redis.call('ZRANGE', key, from, from + 99, 'WITHSCORES')
    if #batch == 0 then return now end
    for i = 1, #batch, 2 do
      remaining = remaining - units_of(batch[i])
      if remaining + units <= limit then
        return math.max(now, tonumber(batch[i + 1]) + span)
      end
    end
    from = from + 100
  end
end
