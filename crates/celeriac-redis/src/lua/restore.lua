-- Puts an unacknowledged message back on a queue list, if the `unacked` entry still holds
-- what the caller read (another worker's sweep may have restored it meanwhile): kombu's
-- WATCH/HGET/MULTI restore, as one compare-and-swap.
--
-- KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3] target list, KEYS[4] the held set of
-- the consumer that held it (celeriac's liveness bookkeeping)
-- ARGV[1] delivery tag, ARGV[2] the unacked value read, ARGV[3] envelope to push,
-- ARGV[4] 'R' (front: consumed next) or 'L' (back: behind waiting messages)
-- Returns 1 if restored, 0 if the entry changed or vanished.
redis.call('SREM', KEYS[4], ARGV[1])
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[4] == 'R' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
else
  redis.call('LPUSH', KEYS[3], ARGV[3])
end
return 1
