-- Beat's leader lease given up (see broker/beat.rs): deleted only if still held by
-- the holder, compared and deleted in one step.
-- KEYS[1] the lease ("<token>:<holder>"). ARGV[1] holder.
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ':', 1, true)
  if sep and string.sub(cur, sep + 1) == ARGV[1] then
    redis.call('DEL', KEYS[1])
  end
end
return 1
