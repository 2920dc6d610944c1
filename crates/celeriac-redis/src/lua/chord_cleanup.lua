-- After the body was sent: drops the chord's join data and marks it done (so late
-- duplicate parts are ignored), if the caller still holds the claim — Celery 5.7's cleanup.
--
-- KEYS: [1] .c  [2] .j  [3] .t  [4] .s  [5] .d      ARGV: [1] claim token  [2] done TTL s
-- Returns 1 if cleaned, 0 if the claim was lost (the data is left to expire).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  local ttl = tonumber(ARGV[2])
  if ttl and ttl > 0 then
    redis.call('SET', KEYS[1], 'done', 'EX', ttl)
  end
  return 1
end
return 0
