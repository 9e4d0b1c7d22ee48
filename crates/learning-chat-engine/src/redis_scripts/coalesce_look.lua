-- One look at what the cluster knows of a question: its answer, then the outcome a holder
-- shared, then its lease (taken when free), in one step, so a server that wins the lease just
-- after another published still sees the answer.
-- KEYS: answer, outcome, lease, stream. ARGV: holder id, lease ms, max value bytes, `1` when an
-- earlier look of this wait failed (it may have taken the lease for this holder after all).
-- Returns {state, value, dropped}: state `answer` or `outcome` (with the value), `holder` (this
-- server just took the lease; a stream left by an earlier holder is deleted in the same step, so
-- no waiter replays a dead holder's pieces as the new one's) or `wait`.
-- (Loaded after read_capped.lua and lease.lua.)
local max_bytes = tonumber(ARGV[3])
local answer = read_capped(KEYS[1], max_bytes)
if answer then return {'answer', answer, dropped} end
local outcome = read_capped(KEYS[2], max_bytes)
if outcome then return {'outcome', outcome, dropped} end
local taken, repaired = take_lease(KEYS[3], ARGV[1], tonumber(ARGV[2]), ARGV[4] == '1')
dropped = dropped + repaired
if taken then
  redis.call('DEL', KEYS[4])
  return {'holder', '', dropped}
end
return {'wait', '', dropped}
