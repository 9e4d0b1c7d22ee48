-- Writes entries into windows after the fact: a call's cost known once it is done, a lease
-- ended early, a server's calls written back into a Redis that lost them.
-- KEYS: synced, totals, then the windows.
-- ARGV: server id (not empty: record this server as synced), one span ms per window, then five
-- values per entry: window (1-based), age ms (its score is Redis' now less this; negative: still
-- to come), member, units, `+` to add it unless it is there or `-` to remove it. An entry to
-- add that its window has already let go of (as old as the span) is skipped.
-- Returns the number of entries added or removed, per window.
-- (Loaded after window.lua.)
local server = ARGV[1]
local totals = KEYS[2]
local count = #KEYS - 2
local spans, done = {}, {}
local longest, ahead = 0, 0
check_totals(totals)
for i = 1, count do
  spans[i] = tonumber(ARGV[1 + i])
  done[i] = 0
  if spans[i] > longest then longest = spans[i] end
  load_window(totals, KEYS[2 + i], spans[i])
end
for i = 2 + count, #ARGV, 5 do
  local w = tonumber(ARGV[i])
  local key = KEYS[2 + w]
  local age = tonumber(ARGV[i + 1])
  local units = tonumber(ARGV[i + 3])
  if ARGV[i + 4] == '-' then
    done[w] = done[w] + remove_entry(totals, key, ARGV[i + 2], units)
  elseif age < spans[w] then
    done[w] = done[w] + add_entry(totals, key, now - age, ARGV[i + 2], units)
    if -age > ahead then ahead = -age end
    keep(key, spans[w] * 2 + math.max(0, -age))
  end
end
keep(totals, longest * 2 + ahead)
if server ~= '' then
  redis.call('ZADD', KEYS[1], now, server)
  redis.call('PEXPIRE', KEYS[1], longest * 2)
end
return done
