-- Records one finished chord header part and, if it was the last one, claims the right to
-- fire the chord's body — the algorithm of Celery 5.7's Redis backend, on the same keys,
-- so celeriac and Celery workers can share a chord and only one of them fires its body.
--
-- KEYS: [1] .j results (zset by group index)  [2] .t size adjustment  [3] .s size
--       [4] .d parts seen ("<tid>:<index>")  [5] the group's meta key  [6] .c claim/done
-- ARGV: [1] task id  [2] the part, JSON [1, tid, state, result]  [3] "1" ordered (zset)
--       or "0" (list)  [4] group index or "+inf"  [5] chord expiry s (0: none)
--       [6] group meta expiry s  [7] claim TTL s  [8] claim token
-- Returns {parts recorded, .t, .s, claimed (1/0)}, or {-1, 0, 0, 0} if the chord was
-- already fired (a late duplicate).
local j, t, s, d, g, c = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if redis.call('GET', c) == 'done' then
  return {-1, 0, 0, 0}
end
local seen = ARGV[1] .. ':' .. ARGV[4]
if redis.call('SISMEMBER', d, seen) == 0 then
  if ARGV[3] == '1' then
    redis.call('ZADD', j, ARGV[4], ARGV[2])
  else
    redis.call('RPUSH', j, ARGV[2])
  end
  redis.call('SADD', d, seen)
end
local count
if ARGV[3] == '1' then
  count = redis.call('ZCOUNT', j, '-inf', '+inf')
else
  count = redis.call('LLEN', j)
end
local expires, group_expires = tonumber(ARGV[5]), tonumber(ARGV[6])
if expires > 0 then
  redis.call('EXPIRE', j, expires)
  redis.call('EXPIRE', t, expires)
  redis.call('EXPIRE', s, expires)
  redis.call('EXPIRE', d, expires)
  if group_expires > 0 then
    redis.call('EXPIRE', g, group_expires)
  end
end
local adjust = redis.call('GET', t)
local size = redis.call('GET', s)
local claimed = 0
if size and count == tonumber(size) + tonumber(adjust or 0) then
  if redis.call('SET', c, ARGV[8], 'NX', 'EX', tonumber(ARGV[7])) then
    claimed = 1
  end
end
return {count, adjust, size, claimed}
