-- Takes up to ARGV[1] messages from the lists KEYS[3..] (in that order: priority bucket,
-- then queue) and records each in `unacked` / `unacked_index` exactly as kombu does
-- (hash value `[envelope, exchange, routing_key]`, score = delivery time), in one atomic
-- step: a message is never popped without being recorded.
--
-- KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3..] lists
-- ARGV[1] max messages, ARGV[2] now (Unix seconds, float text)
-- Returns {list1, envelope1, recorded1, list2, ...}, `recorded` '1' or '0': an envelope
-- whose JSON has no delivery tag is returned unrecorded (the caller adopts it).
local max = tonumber(ARGV[1])
local now = ARGV[2]
local out = {}
local n = 0
for i = 3, #KEYS do
  while n < max do
    local msg = redis.call('RPOP', KEYS[i])
    if not msg then break end
    n = n + 1
    local recorded = '0'
    local ok, env = pcall(cjson.decode, msg)
    if ok and type(env) == 'table' and type(env.properties) == 'table' then
      local props = env.properties
      local tag = props.delivery_tag
      if type(tag) == 'string' and tag ~= '' then
        local ex, rk = '', ''
        local di = props.delivery_info
        if type(di) == 'table' then
          if type(di.exchange) == 'string' then ex = di.exchange end
          if type(di.routing_key) == 'string' then rk = di.routing_key end
        end
        redis.call('ZADD', KEYS[2], now, tag)
        redis.call('HSET', KEYS[1], tag, '[' .. msg .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']')
        recorded = '1'
      end
    end
    out[#out + 1] = KEYS[i]
    out[#out + 1] = msg
    out[#out + 1] = recorded
  end
  if n >= max then break end
end
return out
