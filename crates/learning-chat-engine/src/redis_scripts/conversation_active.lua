-- KEYS: the index of conversations (sorted set, id by last use). ARGV: oldest live score.
-- Drops the older entries and returns the live count.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
return redis.call('ZCARD', KEYS[1])
