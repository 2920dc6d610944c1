-- Extends this caller's claim on firing a chord's body before it publishes (Celery 5.7:
-- the publish retry budget), or takes it back if it lapsed while the chord is still open.
--
-- KEYS: [1] .c claim  [2] .s size      ARGV: [1] claim token  [2] TTL s
-- Returns 1 if the caller holds the claim, 0 if another does.
local c, s = KEYS[1], KEYS[2]
local holder = redis.call('GET', c)
if holder == ARGV[1] then
  return redis.call('EXPIRE', c, tonumber(ARGV[2]))
end
if not holder and redis.call('EXISTS', s) == 1 then
  if redis.call('SET', c, ARGV[1], 'EX', tonumber(ARGV[2]), 'NX') then
    return 1
  end
end
return 0
