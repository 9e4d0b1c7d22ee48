-- KEYS: lease. ARGV: holder id, lease ms.
-- Extends the lease to `lease ms` from now only while this holder holds it: 1, else 0.
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
