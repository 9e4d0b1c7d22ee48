-- KEYS: lease. ARGV: holder id.
-- Deletes the lease only while this holder holds it (compare and delete): 1, else 0. A holder
-- whose lease expired and was taken by another must not release the other's.
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
