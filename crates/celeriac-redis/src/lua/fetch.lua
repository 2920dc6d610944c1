-- Takes up to ARGV[1] messages from the lists KEYS[4..] (in that order: priority bucket,
-- then queue) and records each in `unacked` / `unacked_index` exactly as kombu does
-- (hash value `[envelope, exchange, routing_key]`, score = delivery time), and its tag in
-- this consumer's held set (celeriac's liveness: a dead consumer's set is restored), in
-- one step: a message is never popped without being recorded.
--
-- KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3] held set, KEYS[4..] lists
-- ARGV[1] max messages, ARGV[2] now (Unix seconds, float text)
-- Returns {{list1, envelope1, recorded1, list2, ...}, {error, ...}}, `recorded` '1' or
-- '0': an envelope whose JSON has no delivery tag is returned unrecorded (the caller
-- adopts it).
--
-- Failures lose nothing. Messages are read (`LRANGE` of the list's tail), recorded, and
-- only then cut from the list (`LTRIM`), so a failed write (out of memory: `HSET` is
-- refused, `LTRIM` never is) leaves them where they were; the error is returned with what
-- was taken before it. A list that cannot be read (a key of another type) is skipped and
-- named in the errors. Every call goes through `redis.pcall`: a script error would stop
-- the script midway.
--
-- Speed: this runs inside Redis for every message (measured, script time per message of a
-- 928-byte envelope: 9.3 µs with a cjson decode and a ZADD + HSET each; 7.6 µs with plain
-- searches for `"key"`; 6.1 µs as written). The three fields it needs are found with plain
-- string searches when each key occurs exactly once and its value has no escapes (every
-- kombu and celeriac envelope); anything else falls back to cjson. The records are
-- written with one HSET, one ZADD and one SADD per batch.
local max = tonumber(ARGV[1])
local now = ARGV[2]
local out = {}
local n = 0

-- The string value of `"key": "..."` if `key` occurs exactly once and its value is plain;
-- false if the fast path cannot tell; nil if the key is absent.
-- `key` is found by searching for `tail` (its end and closing quote, starting with a
-- letter that is rare in envelopes) and checking the `head` before it: a plain search
-- for `"key"` stops at every quote of the envelope.
local function plain(msg, head, tail)
  local s, e = string.find(msg, tail, 1, true)
  while s and string.sub(msg, s - #head, s - 1) ~= head do
    s, e = string.find(msg, tail, e + 1, true)
  end
  if not s then
    return nil
  end
  local s2, e2 = string.find(msg, tail, e + 1, true)
  while s2 do
    if string.sub(msg, s2 - #head, s2 - 1) == head then return false end
    s2, e2 = string.find(msg, tail, e2 + 1, true)
  end
  -- `: "value"` right after the key, the value without quotes or escapes.
  local _, _, value = string.find(msg, '^%s*:%s*"([^"\\]*)"', e + 1)
  if not value then return false end
  return value
end

-- Returns tag, exchange and routing key, the last two as JSON text, or nil.
local function fields(msg)
  local tag = plain(msg, '"deli', 'very_tag"')
  local ex = plain(msg, '"e', 'xchange"')
  local rk = plain(msg, '"ro', 'uting_key"')
  if tag and ex ~= false and rk ~= false then
    -- Plain values (no quote, no backslash, and no control character in valid JSON)
    -- are their own JSON text between quotes.
    return tag, '"' .. (ex or '') .. '"', '"' .. (rk or '') .. '"'
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
  return tag, cjson.encode(ex), cjson.encode(rk)
end

local errors = {}

local function failed(reply)
  return type(reply) == 'table' and reply.err
end

-- Takes up to `k` messages from the tail of `list` (RPOP order) into `out`: reads them,
-- records the tagged ones, then trims them off. Returns 'more' (the list may hold more),
-- 'done' (it is empty or unreadable), or 'stop' (the records could not be written).
local function take(list, k)
  local items = redis.pcall('LRANGE', list, -k, -1)
  if failed(items) then
    errors[#errors + 1] = list .. ': ' .. items.err
    return 'done'
  end
  if #items == 0 then return 'done' end
  local zargs, hargs, sargs = {}, {}, {}
  local first = #out
  for j = #items, 1, -1 do
    local msg = items[j]
    local recorded = '0'
    local tag, ex, rk = fields(msg)
    if tag and tag ~= '' then
      zargs[#zargs + 1] = now
      zargs[#zargs + 1] = tag
      hargs[#hargs + 1] = tag
      hargs[#hargs + 1] = '[' .. msg .. ', ' .. ex .. ', ' .. rk .. ']'
      sargs[#sargs + 1] = tag
      recorded = '1'
    end
    out[#out + 1] = list
    out[#out + 1] = msg
    out[#out + 1] = recorded
  end
  if #sargs > 0 then
    local r = redis.pcall('HSET', KEYS[1], unpack(hargs))
    if not failed(r) then r = redis.pcall('ZADD', KEYS[2], unpack(zargs)) end
    if not failed(r) then r = redis.pcall('SADD', KEYS[3], unpack(sargs)) end
    if failed(r) then
      errors[#errors + 1] = 'recording messages of ' .. list .. ': ' .. r.err
      redis.pcall('ZREM', KEYS[2], unpack(sargs))
      redis.pcall('HDEL', KEYS[1], unpack(sargs))
      redis.pcall('SREM', KEYS[3], unpack(sargs))
      for _ = first + 1, #out do out[#out] = nil end
      return 'stop'
    end
  end
  redis.pcall('LTRIM', list, 0, -#items - 1)
  n = n + #items
  if #items == k then return 'more' end
  return 'done'
end

for i = 4, #KEYS do
  while n < max do
    -- At most 512 a step: keeps unpack() well inside Lua's stack limit.
    local r = take(KEYS[i], math.min(max - n, 512))
    if r == 'stop' then return {out, errors} end
    if r == 'done' then break end
  end
  if n >= max then break end
end
return {out, errors}
