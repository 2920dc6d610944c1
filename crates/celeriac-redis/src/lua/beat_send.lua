-- One due run of a beat entry: recorded and enqueued in one step (see broker/beat.rs).
-- KEYS[1] the lease, KEYS[2] the runs hash (entry -> due µs), KEYS[3..] queue lists.
-- ARGV[1] token, ARGV[2] entry, ARGV[3] due (µs), ARGV[4] the message envelope.
-- Returns 0 not the leader, 1 already sent (this run or a later one), 2 sent.
local cur = redis.call('GET', KEYS[1])
if not cur then
  return 0
end
local sep = string.find(cur, ':', 1, true)
if not sep or string.sub(cur, 1, sep - 1) ~= ARGV[1] then
  return 0
end
-- A last run that is not a number (written by hand) counts as none.
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '')
if last and last >= tonumber(ARGV[3]) then
  return 1
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
for i = 3, #KEYS do
  redis.call('LPUSH', KEYS[i], ARGV[4])
end
return 2
