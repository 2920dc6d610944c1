-- Beat's leader lease: take or renew it (see broker/beat.rs).
-- KEYS[1] the lease ("<token>:<holder>", expiring), KEYS[2] the fencing counter.
-- ARGV[1] holder, ARGV[2] ttl in ms.
-- Returns the holder's token, or false when another holder's lease is live.
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ':', 1, true)
  if sep and string.sub(cur, sep + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(cur, 1, sep - 1))
  end
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
