-- Releases the visibility-sweep lock only if this sweeper still holds it (kombu's
-- release script): KEYS[1] unacked_mutex, ARGV[1] the token it was taken with.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
