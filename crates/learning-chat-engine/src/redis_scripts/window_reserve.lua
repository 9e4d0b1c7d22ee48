-- Reserves units in several windows at once, at the earliest time all of them allow.
-- KEYS: synced (sorted set: server id by the Redis ms of its last reservation), totals, then
-- one window per four ARGV from ARGV[8].
-- ARGV: server id, member (`{server id}:{unique}`), max wait ms, not before (ms from now), sync
-- (`1`: answer `unsynced` while this server's calls are not in Redis, which restarted empty or
-- let the keys expire), snapshot (`1`: also return the others' entries of the first window),
-- fresh ms (> 0: count the servers seen this recently), then per window: limit, span ms, units
-- that must fit, units to record.
-- Returns {wait ms, outcome, fresh servers, then per window: units held (this reservation
-- included), ms until the units asked fit, ms until its oldest entry leaves; then, with
-- snapshot, pairs (ms from now, units) of the other servers' entries in the first window, each
-- rounded up to a whole second so it leaves no earlier than the real one}.
-- outcome: 0 reserved (go after the wait), 1 refused (the wait is over max wait: nothing
-- recorded), 2 unsynced (nothing recorded: write this server's calls back, then ask again).
-- (Loaded after window.lua.)
local server, member = ARGV[1], ARGV[2]
local max_wait = tonumber(ARGV[3])
local synced, totals = KEYS[1], KEYS[2]
local windows = {}
local longest = 0
for i = 8, #ARGV, 4 do
  local w = {
    key = KEYS[#windows + 3],
    limit = tonumber(ARGV[i]),
    span = tonumber(ARGV[i + 1]),
    fit = tonumber(ARGV[i + 2]),
    record = tonumber(ARGV[i + 3]),
  }
  if w.span > longest then longest = w.span end
  windows[#windows + 1] = w
end
if ARGV[5] == '1' then
  if not redis.call('ZSCORE', synced, server) then return {0, 2, 0} end
  redis.call('ZADD', synced, now, server)
  redis.call('PEXPIRE', synced, longest * 2)
end
check_totals(totals)
local at = now + tonumber(ARGV[4])
for _, w in ipairs(windows) do
  w.total = load_window(totals, w.key, w.span)
  w.at = earliest(w.key, w.span, w.limit, w.total, w.fit)
  if w.at > at then at = w.at end
end
local outcome = 0
if at - now > max_wait then
  outcome = 1
else
  for _, w in ipairs(windows) do
    if w.record > 0 then
      local units = math.min(w.record, w.limit)
      w.total = w.total + add_entry(totals, w.key, at, member, units) * units
      keep(w.key, w.span * 2 + max_wait)
    end
  end
end
keep(totals, longest * 2 + max_wait)
local fresh = 0
if tonumber(ARGV[7]) > 0 then
  fresh = redis.call('ZCOUNT', synced, now - tonumber(ARGV[7]), '+inf')
end
local out = {at - now, outcome, fresh}
for _, w in ipairs(windows) do
  local oldest = redis.call('ZRANGE', w.key, 0, 0, 'WITHSCORES')
  local reset = 0
  if #oldest > 0 then reset = math.max(0, tonumber(oldest[2]) + w.span - now) end
  out[#out + 1] = w.total
  out[#out + 1] = w.at - now
  out[#out + 1] = reset
end
if ARGV[6] == '1' and #windows > 0 then
  local own = server .. ':'
  local buckets = {}
  local entries = redis.call('ZRANGE', windows[1].key, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    if string.sub(entries[i], 1, #own) ~= own then
      local b = math.ceil(tonumber(entries[i + 1]) / 1000) * 1000
      buckets[b] = (buckets[b] or 0) + units_of(entries[i])
    end
  end
  for b, units in pairs(buckets) do
    out[#out + 1] = b - now
    out[#out + 1] = units
  end
end
return out
