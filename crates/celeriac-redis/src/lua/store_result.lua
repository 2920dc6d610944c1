-- Stores a task's result record and publishes it on the key's channel, unless a SUCCESS
-- record is already there (Celery never overwrites SUCCESS). Celery does GET, then
-- MULTI/SETEX/PUBLISH/EXEC; this is the same effect in one atomic round trip.
--
-- KEYS[1] celery-task-meta-<id>
-- ARGV[1] the record (JSON), ARGV[2] TTL in seconds (0: no expiry)
-- Returns 1 if stored, 0 if a SUCCESS record was kept.
local current = redis.call('GET', KEYS[1])
if current then
  local ok, rec = pcall(cjson.decode, current)
  if ok and type(rec) == 'table' and rec.status == 'SUCCESS' then
    return 0
  end
end
local ttl = tonumber(ARGV[2])
if ttl and ttl > 0 then
  redis.call('SETEX', KEYS[1], ttl, ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
