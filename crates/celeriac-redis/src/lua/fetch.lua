-- Takes up to ARGV[1] messages from the lists KEYS[3..] (in that order: priority bucket,
-- then queue) and records each in `unacked` / `unacked_index` exactly as kombu does
-- (hash value `[envelope, exchange, routing_key]`, score = delivery time), in one atomic
-- step: a message is never popped without being recorded.
--
-- KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3..] lists
-- ARGV[1] max messages, ARGV[2] now (Unix seconds, float text)
-- Returns {list1, envelope1, recorded1, list2, ...}, `recorded` '1' or '0': an envelope
-- whose JSON has no delivery tag is returned unrecorded (the caller adopts it).
--
-- Speed: this runs inside Redis for every message (measured: 9.3 µs of Redis CPU per
-- message with a cjson decode and a ZADD + HSET each; 7.5 µs as written). The three fields
-- it needs are found with plain string searches when each key occurs exactly once and its
-- value has no escapes (every kombu and celeriac envelope); anything else falls back to
-- cjson. The records are written with one ZADD and one HSET per batch.
local max = tonumber(ARGV[1])
local now = ARGV[2]
local out = {}
local zargs = {}
local hargs = {}
local n = 0

-- The string value of `"key": "..."` if `key` occurs exactly once and its value is plain;
-- false if the fast path cannot tell; nil if the key is absent.
local function plain(msg, key)
  local lit = '"' .. key .. '"'
  local s, e = string.find(msg, lit, 1, true)
  if not s then
    return nil
  end
  if string.find(msg, lit, e + 1, true) then
    return false
  end
  local i = e + 1
  local c = string.sub(msg, i, i)
  while c == ' ' do i = i + 1; c = string.sub(msg, i, i) end
  if c ~= ':' then return false end
  i = i + 1
  c = string.sub(msg, i, i)
  while c == ' ' do i = i + 1; c = string.sub(msg, i, i) end
  if c ~= '"' then return false end
  local q = string.find(msg, '"', i + 1, true)
  if not q then return false end
  local value = string.sub(msg, i + 1, q - 1)
  if string.find(value, '\\', 1, true) then return false end
  return value
end

local function fields(msg)
  local tag = plain(msg, 'delivery_tag')
  local ex = plain(msg, 'exchange')
  local rk = plain(msg, 'routing_key')
  if tag and ex ~= false and rk ~= false then
    return tag, ex or '', rk or ''
  end
  local ok, env = pcall(cjson.decode, msg)
  if not (ok and type(env) == 'table' and type(env.properties) == 'table') then
    return nil
  end
  local props = env.properties
  tag = props.delivery_tag
  if type(tag) ~= 'string' or tag == '' then
    return nil
  end
  ex, rk = '', ''
  local di = props.delivery_info
  if type(di) == 'table' then
    if type(di.exchange) == 'string' then ex = di.exchange end
    if type(di.routing_key) == 'string' then rk = di.routing_key end
  end
  return tag, ex, rk
end

local function flush()
  if #zargs > 0 then
    redis.call('ZADD', KEYS[2], unpack(zargs))
    redis.call('HSET', KEYS[1], unpack(hargs))
    zargs = {}
    hargs = {}
  end
end

for i = 3, #KEYS do
  while n < max do
    local msg = redis.call('RPOP', KEYS[i])
    if not msg then break end
    n = n + 1
    local recorded = '0'
    local tag, ex, rk = fields(msg)
    if tag and tag ~= '' then
      zargs[#zargs + 1] = now
      zargs[#zargs + 1] = tag
      hargs[#hargs + 1] = tag
      hargs[#hargs + 1] = '[' .. msg .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']'
      recorded = '1'
      -- Keep unpack() well inside Lua's stack limit.
      if #zargs >= 512 then flush() end
    end
    out[#out + 1] = KEYS[i]
    out[#out + 1] = msg
    out[#out + 1] = recorded
  end
  if n >= max then break end
end
flush()
return out
