-- Stores task result records and publishes each on its key's channel, unless a SUCCESS
-- record is already there (Celery never overwrites SUCCESS). Celery does GET, then
-- MULTI/SETEX/PUBLISH/EXEC per record; this is the same effect, atomically per record, for
-- a whole batch of records in one round trip (records written together by a busy worker).
--
-- KEYS[i] celery-task-meta-<id>
-- ARGV[2i-1] the record (JSON), ARGV[2i] TTL in seconds (0: no expiry)
-- Returns one string per key, in order: '1' if stored, '0' if a SUCCESS record was kept,
-- or 'ERR <reason>' if that key could not be written (a key holding another type): one bad
-- key fails its own record, not the batch. Records for the same key are applied in order.
local out = {}
local function failed(reply)
  return type(reply) == 'table' and reply.err
end
for i = 1, #KEYS do
  local key = KEYS[i]
  local record = ARGV[2 * i - 1]
  local current = redis.pcall('GET', key)
  if failed(current) then
    out[i] = 'ERR ' .. current.err
  else
    local keep = false
    if current then
      local ok, rec = pcall(cjson.decode, current)
      keep = ok and type(rec) == 'table' and rec.status == 'SUCCESS'
    end
    if keep then
      out[i] = '0'
    else
      local ttl = tonumber(ARGV[2 * i])
      local set
      if ttl and ttl > 0 then
        set = redis.pcall('SETEX', key, ttl, record)
      else
        set = redis.pcall('SET', key, record)
      end
      if failed(set) then
        out[i] = 'ERR ' .. set.err
      else
        redis.call('PUBLISH', key, record)
        out[i] = '1'
      end
    end
  end
end
return out
