#!lua name=herald
-- Herald's Redis function library, version __VERSION__. Loaded by every node at start (and on
-- reconnect) when missing or older: FUNCTION LOAD REPLACE. The only write path: nodes and
-- backends publish with the same functions. Documented in proto/redis.md.
--
-- Keys of a topic T (one Redis Cluster slot, through the hash tag {T}):
--   __PREFIX__{T}:meta   hash: epoch (set by the first publish), seq (last offset)
--   __PREFIX__{T}:log    stream: entry id "<offset>-0", fields o (offset), d (data)
-- Only a publish creates them, and both expire HISTORY_TTL_MS after the last publish: a topic
-- that is only read (subscribed to, replayed) leaves nothing behind, and a topic idle for that
-- long starts a new epoch on its next publish.
-- Channel: __PREFIX__{T}:msg, payload "<offset> <epoch> <data>".
-- A user U's directed messages go to the channel __PREFIX__{user:U}:direct, payload
-- "<from> <data>" ("-" when the sender did not name itself), and so do disconnect orders,
-- payload "!disconnect" or "!disconnect:<conn>" (no space: never a directed message's); U's open
-- connections across the cluster are the sorted set __PREFIX__{user:U}:conns.

local PREFIX = '__PREFIX__'
local VERSION = __VERSION__
local HISTORY_SIZE = __HISTORY_SIZE__
local HISTORY_TTL_MS = __HISTORY_TTL_MS__
-- The epoch answered for a topic without history (never published, or expired): never a real
-- epoch (those are at least 6 hex digits of the server's clock), and nothing is replayed from it.
local NO_EPOCH = '0'

local function valid_name(name)
  if type(name) ~= 'string' or #name == 0 or #name > 255 then return false end
  for seg in string.gmatch(name .. '.', '([^.]*)%.') do
    if #seg == 0 or string.find(seg, '[^%w_%-]') then return false end
  end
  return true
end

-- Payloads are checked here, since backends publish with FCALL and nodes write what they get
-- into text frames as it is: valid UTF-8, JSON without NaN, Infinity or hex numbers, nested
-- at most 100 deep (Herald's MAX_NESTING), with finite numbers (what every codec reads back).
-- A private cjson, so that no other library's settings apply (made at the first call: the
-- library's load runs without `cjson`).
local json

local function strict_json()
  if not json then
    json = cjson.new()
    json.decode_invalid_numbers(false)
    json.decode_max_depth(100)
  end
  return json
end

-- True when s is valid UTF-8 (as Rust's str::from_utf8 has it: no overlong forms, no
-- surrogates, nothing past U+10FFFF). ASCII runs are skipped with one find each.
local function valid_utf8(s)
  local find, byte = string.find, string.byte
  local i, n = find(s, '[\128-\255]'), #s
  while i do
    local c, need, lo, hi = byte(s, i), 0, 0x80, 0xBF
    if c >= 0xC2 and c <= 0xDF then need = 1
    elseif c == 0xE0 then need, lo = 2, 0xA0
    elseif c == 0xED then need, hi = 2, 0x9F
    elseif c >= 0xE1 and c <= 0xEF then need = 2
    elseif c == 0xF0 then need, lo = 3, 0x90
    elseif c == 0xF4 then need, hi = 3, 0x8F
    elseif c >= 0xF1 and c <= 0xF3 then need = 3
    else return false end
    if i + need > n then return false end
    local b = byte(s, i + 1)
    if b < lo or b > hi then return false end
    for k = 2, need do
      b = byte(s, i + k)
      if b < 0x80 or b > 0xBF then return false end
    end
    i = find(s, '[\128-\255]', i + need + 1)
  end
  return true
end

-- True when a decoded value holds a number JSON readers cannot represent (1e400 reads as inf).
local function has_infinite(v)
  if type(v) == 'number' then return v == math.huge or v == -math.huge end
  if type(v) == 'table' then
    for _, x in pairs(v) do
      if has_infinite(x) then return true end
    end
  end
  return false
end

local function check_json(data)
  if type(data) ~= 'string' then
    return redis.error_reply('ERR herald: the payload must be JSON')
  end
  if not valid_utf8(data) then
    return redis.error_reply('ERR herald: the payload must be JSON in UTF-8 (invalid UTF-8)')
  end
  local ok, v = pcall(strict_json().decode, data)
  if not ok then
    if string.find(tostring(v), 'too many nested', 1, true) then
      return redis.error_reply('ERR herald: the payload must be JSON nested at most 100 deep')
    end
    return redis.error_reply('ERR herald: the payload must be JSON (' .. tostring(v) .. ')')
  end
  -- Only text with a long exponent or a long run of digits can hold an out-of-range number.
  if (string.find(data, '%d[eE][+]?%d%d%d') or string.find(data, string.rep('%d', 300)))
      and has_infinite(v) then
    return redis.error_reply('ERR herald: the payload must be JSON with finite numbers')
  end
end

-- The topic's epoch; a new one when it has none (its history expired, or it never had one),
-- and then whatever is left of an older log goes, so that offsets start again at 1.
local function epoch_of(meta, log)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    local t = redis.call('TIME')
    epoch = string.format('%x%05x', tonumber(t[1]), tonumber(t[2]))
    redis.call('HSET', meta, 'epoch', epoch)
    redis.call('DEL', log)
  end
  return epoch
end

-- FCALL herald_publish 1 <topic> <json>  ->  {offset, epoch}
local function publish(keys, args)
  local topic, data = keys[1], args[1]
  if not valid_name(topic) then
    return redis.error_reply('ERR herald: bad topic name (dot-separated [A-Za-z0-9_-] segments, at most 255 bytes)')
  end
  local bad = check_json(data)
  if bad then return bad end
  local base = PREFIX .. '{' .. topic .. '}'
  local meta, log = base .. ':meta', base .. ':log'
  local epoch = epoch_of(meta, log)
  local offset = redis.call('HINCRBY', meta, 'seq', 1)
  redis.call('PEXPIRE', meta, HISTORY_TTL_MS)
  if HISTORY_SIZE > 0 then
    redis.call('XADD', log, 'MAXLEN', '~', HISTORY_SIZE, offset .. '-0', 'o', offset, 'd', data)
    redis.call('PEXPIRE', log, HISTORY_TTL_MS)
  end
  redis.call('PUBLISH', base .. ':msg', offset .. ' ' .. epoch .. ' ' .. data)
  return {offset, epoch}
end

-- FCALL herald_history 1 <topic> [after-offset [count]]  ->  {epoch, latest, first-kept, o1, d1, ...}
-- Reads only: a topic without history (never published, or expired) answers {NO_EPOCH, 0, 0}
-- and nothing is created.
-- The entries after <after-offset> (decimal digits), oldest first, at most <count> of them
-- when given; none when the offset is absent, empty, or past 2^53. first-kept is 0 when the
-- log is empty.
local function history(keys, args)
  local topic = keys[1]
  if not valid_name(topic) then
    return redis.error_reply('ERR herald: bad topic name')
  end
  local base = PREFIX .. '{' .. topic .. '}'
  local meta = redis.call('HMGET', base .. ':meta', 'epoch', 'seq')
  if not meta[1] then return {NO_EPOCH, 0, 0} end
  local epoch, latest = meta[1], tonumber(meta[2] or '0')
  local out = {epoch, latest, 0}
  local log = base .. ':log'
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  if #first > 0 then out[3] = tonumber(first[1][2][2]) end
  local after = args[1]
  if after == nil or after == '' then return out end
  if not string.match(after, '^%d+$') then
    return redis.error_reply('ERR herald: the offset must be decimal digits')
  end
  -- Past 2^53 (where Lua numbers stop being exact) no topic has entries: none to read.
  if #after > 16 or tonumber(after) > 9007199254740992 then return out end
  local count = tonumber(args[2])
  local entries
  if count then
    entries = redis.call('XRANGE', log, '(' .. after .. '-0', '+', 'COUNT', count)
  else
    entries = redis.call('XRANGE', log, '(' .. after .. '-0', '+')
  end
  for _, e in ipairs(entries) do
    out[#out + 1] = tonumber(e[2][2])
    out[#out + 1] = e[2][4]
  end
  return out
end

-- FCALL herald_publish_user 1 <user> <json> [from]  ->  number of nodes that received it
local function publish_user(keys, args)
  local user, data, from = keys[1], args[1], args[2]
  if type(user) ~= 'string' or #user == 0 or #user > 255 or string.find(user, '[%s{}]') then
    return redis.error_reply('ERR herald: bad user name')
  end
  local bad = check_json(data)
  if bad then return bad end
  if from == nil or from == '' then from = '-' end
  if string.find(from, '%s') then
    return redis.error_reply('ERR herald: `from` may not contain spaces')
  end
  return redis.call('PUBLISH', PREFIX .. '{user:' .. user .. '}:direct', from .. ' ' .. data)
end

-- FCALL herald_disconnect 1 <user> [conn]  ->  number of nodes that received it
-- Every node holding a connection of the user closes it with 4003 (only `conn` when given).
local function disconnect(keys, args)
  local user, conn = keys[1], args[1]
  if type(user) ~= 'string' or #user == 0 or #user > 255 or string.find(user, '[%s{}]') then
    return redis.error_reply('ERR herald: bad user name')
  end
  local order = '!disconnect'
  if conn ~= nil and conn ~= '' then
    if #conn > 128 or string.find(conn, '[^%w_%-]') then
      return redis.error_reply('ERR herald: bad connection id')
    end
    order = order .. ':' .. conn
  end
  return redis.call('PUBLISH', PREFIX .. '{user:' .. user .. '}:direct', order)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Presence of topic T: the sorted set __PREFIX__{T}:presence, members "<conn> <user>" scored by
-- when they expire unless their node refreshes them; joins and leaves are published on the
-- topic's channel as "J <conn> <user>" and "L <conn> <user>".

-- FCALL herald_presence_join 1 <topic> <conn> <user> <ttl-ms>  ->  1 if new
local function presence_join(keys, args)
  local base = PREFIX .. '{' .. keys[1] .. '}'
  local member = args[1] .. ' ' .. args[2]
  local ttl = tonumber(args[3])
  local added = redis.call('ZADD', base .. ':presence', now_ms() + ttl, member)
  redis.call('PEXPIRE', base .. ':presence', ttl)
  if added == 1 then redis.call('PUBLISH', base .. ':msg', 'J ' .. member) end
  return added
end

-- FCALL herald_presence_leave 1 <topic> <conn> <user>  ->  1 if it was present
local function presence_leave(keys, args)
  local base = PREFIX .. '{' .. keys[1] .. '}'
  local member = args[1] .. ' ' .. args[2]
  local removed = redis.call('ZREM', base .. ':presence', member)
  if removed == 1 then redis.call('PUBLISH', base .. ':msg', 'L ' .. member) end
  return removed
end

-- FCALL herald_presence 1 <topic> [ttl-ms member ...]  ->  the members "<conn> <user>"
-- Refreshes the given members first (the caller's own), then drops the expired ones (a killed
-- node's) with a leave each.
local function presence(keys, args)
  local base = PREFIX .. '{' .. keys[1] .. '}'
  local key = base .. ':presence'
  local now = now_ms()
  if #args >= 2 then
    local ttl = tonumber(args[1])
    for i = 2, #args do redis.call('ZADD', key, 'XX', now + ttl, args[i]) end
    redis.call('PEXPIRE', key, ttl)
  end
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now)) do
    redis.call('ZREM', key, m)
    redis.call('PUBLISH', base .. ':msg', 'L ' .. m)
  end
  return redis.call('ZRANGE', key, 0, -1)
end

-- FCALL herald_conn_open 1 <user> <conn> <limit> <ttl-ms>  ->  1 (counted) or 0 (over the limit)
-- A user's connections across the cluster: a sorted set of connection ids scored by the time
-- they stop counting unless their node refreshes them (so a killed node's stop counting).
local function conn_open(keys, args)
  local key = PREFIX .. '{user:' .. keys[1] .. '}:conns'
  local conn, limit, ttl = args[1], tonumber(args[2]), tonumber(args[3])
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZSCORE', key, conn) == false and redis.call('ZCARD', key) >= limit then
    return 0
  end
  redis.call('ZADD', key, now + ttl, conn)
  redis.call('PEXPIRE', key, ttl)
  return 1
end

-- FCALL herald_conn_refresh 1 <user> <ttl-ms> <conn> [conn ...]  ->  connections refreshed
local function conn_refresh(keys, args)
  local key = PREFIX .. '{user:' .. keys[1] .. '}:conns'
  local ttl = tonumber(args[1])
  local now = now_ms()
  local n = 0
  for i = 2, #args do
    n = n + redis.call('ZADD', key, 'CH', now + ttl, args[i])
  end
  redis.call('PEXPIRE', key, ttl)
  return n
end

-- FCALL herald_conn_close 1 <user> <conn>  ->  1 if it was counted
local function conn_close(keys, args)
  return redis.call('ZREM', PREFIX .. '{user:' .. keys[1] .. '}:conns', args[1])
end

-- Lifecycle events (when a node's config enables them). All in one slot, hash tag {events}:
--   __PREFIX__{events}:stream      stream: one entry per event (proto/events.md)
--   __PREFIX__{events}:nodes       sorted set: live nodes, scored by when they count as dead
--   __PREFIX__{events}:lost        set: dead nodes whose connections are still being recorded
--   __PREFIX__{events}:node:<id>   hash: a node's recorded connections, conn -> user
-- A connection's disconnect is recorded exactly once: by its node, or, when the node died, by
-- whichever node reaps it first (each call is atomic, and the registry entry goes with it).
local EVENTS = PREFIX .. '{events}'

local function record(maxlen, ...)
  return redis.call('XADD', EVENTS .. ':stream', 'MAXLEN', '~', maxlen, '*', ...)
end

-- Records a disconnect for up to `limit` of `node`'s connections. -> recorded, done
local function reap(maxlen, node, reason, by, limit)
  local reg = EVENTS .. ':node:' .. node
  local cursor, n = '0', 0
  repeat
    local scan = redis.call('HSCAN', reg, cursor, 'COUNT', limit)
    cursor = scan[1]
    local fields = scan[2]
    for i = 1, #fields, 2 do
      if redis.call('HDEL', reg, fields[i]) == 1 then
        record(maxlen, 'event', 'disconnect', 'conn', fields[i], 'user', fields[i + 1],
          'node', node, 'code', '1006', 'reason', reason, 'by', by)
        n = n + 1
      end
    end
  until cursor == '0' or n >= limit
  return n, redis.call('EXISTS', reg) == 0
end

-- FCALL herald_event 1 events <maxlen> <node> <kind> <conn> <user> [topic | close code]
--   -> the entry id, or nil when there was nothing to record (a disconnect already recorded)
local function event(keys, args)
  local maxlen, node, kind, conn, user, extra = args[1], args[2], args[3], args[4], args[5], args[6]
  local reg = EVENTS .. ':node:' .. node
  if kind == 'disconnect' then
    if redis.call('HDEL', reg, conn) == 0 then return nil end
    return record(maxlen, 'event', 'disconnect', 'conn', conn, 'user', user, 'node', node,
      'code', extra or '1006', 'reason', 'closed')
  end
  if redis.call('ZSCORE', EVENTS .. ':nodes', node) == false then
    return redis.error_reply('HERALDLOST node ' .. node .. ' is not registered: it must rejoin')
  end
  if kind == 'connect' then
    redis.call('HSET', reg, conn, user)
    return record(maxlen, 'event', 'connect', 'conn', conn, 'user', user, 'node', node)
  elseif kind == 'subscribe' or kind == 'unsubscribe' then
    return record(maxlen, 'event', kind, 'conn', conn, 'user', user, 'node', node, 'topic', extra)
  end
  return redis.error_reply('ERR herald: unknown event ' .. tostring(kind))
end

-- FCALL herald_events_reap 1 events <maxlen> <node> <reason> <limit>  ->  {recorded, more}
-- A node's own connections from before (its restart, or its return after being declared dead).
local function events_reap(keys, args)
  local maxlen, node, reason, limit = args[1], args[2], args[3], tonumber(args[4])
  local n, done = reap(maxlen, node, reason, node, limit)
  if done then redis.call('SREM', EVENTS .. ':lost', node) end
  return {n, done and 0 or 1}
end

-- FCALL herald_events_join 1 events <maxlen> <node> <ttl-ms> <reason> [<conn> <user> <topics>]...
-- Registers the node (alive for ttl) and its live connections, each with a connect event and a
-- subscribe event per topic (topics space-separated).  ->  connections registered
local function events_join(keys, args)
  local maxlen, node, ttl, reason = args[1], args[2], tonumber(args[3]), args[4]
  redis.call('ZADD', EVENTS .. ':nodes', now_ms() + ttl, node)
  local reg = EVENTS .. ':node:' .. node
  local n = 0
  for i = 5, #args - 2, 3 do
    local conn, user, topics = args[i], args[i + 1], args[i + 2]
    redis.call('HSET', reg, conn, user)
    record(maxlen, 'event', 'connect', 'conn', conn, 'user', user, 'node', node, 'reason', reason)
    for topic in string.gmatch(topics, '%S+') do
      record(maxlen, 'event', 'subscribe', 'conn', conn, 'user', user, 'node', node,
        'topic', topic, 'reason', reason)
    end
    n = n + 1
  end
  return n
end

-- FCALL herald_events_beat 1 events <maxlen> <node> <ttl-ms> <limit>  ->  {alive, recorded, more}
-- Keeps the node alive for ttl, moves nodes past their time to the lost set, and records up to
-- `limit` of the lost nodes' disconnects. alive = 0: this node was declared dead (or Redis lost
-- its data) and must reap its own leftovers and join again.
local function events_beat(keys, args)
  local maxlen, node, ttl, limit = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local nodes, lost = EVENTS .. ':nodes', EVENTS .. ':lost'
  local now = now_ms()
  if redis.call('ZSCORE', nodes, node) == false then return {0, 0, 0} end
  redis.call('ZADD', nodes, now + ttl, node)
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', now)) do
    redis.call('ZREM', nodes, dead)
    redis.call('SADD', lost, dead)
  end
  local recorded = 0
  for _, dead in ipairs(redis.call('SMEMBERS', lost)) do
    if recorded >= limit then return {1, recorded, 1} end
    local n, done = reap(maxlen, dead, 'node_lost', node, limit - recorded)
    recorded = recorded + n
    if done then redis.call('SREM', lost, dead) end
  end
  return {1, recorded, 0}
end

-- FCALL_RO herald_version 0  ->  the library's version
local function version()
  return VERSION
end

redis.register_function('herald_publish', publish)
redis.register_function{function_name = 'herald_history', callback = history, flags = {'no-writes'}}
redis.register_function('herald_publish_user', publish_user)
redis.register_function('herald_disconnect', disconnect)
redis.register_function('herald_presence_join', presence_join)
redis.register_function('herald_presence_leave', presence_leave)
redis.register_function('herald_presence', presence)
redis.register_function('herald_conn_open', conn_open)
redis.register_function('herald_conn_refresh', conn_refresh)
redis.register_function('herald_conn_close', conn_close)
redis.register_function('herald_event', event)
redis.register_function('herald_events_reap', events_reap)
redis.register_function('herald_events_join', events_join)
redis.register_function('herald_events_beat', events_beat)
redis.register_function{function_name = 'herald_version', callback = version, flags = {'no-writes'}}
