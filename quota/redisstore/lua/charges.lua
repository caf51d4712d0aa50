-- The charges prelude. Before it, a script sets "first": the index in ARGV of
-- the first charge, six ARGV a charge (resource, period name, limit (-1:
-- none), amount, distinct key or "", hold seconds or 0, followed by "k" for
-- a hold kept counted when it expires: see quota.Charge.Keep). KEYS[1] is the usage
-- hash, KEYS[2] the hash of distinct keys counted, KEYS[3] the sorted set of
-- lease expiries, KEYS[4] the hash of lease bodies; KEYS[5] and KEYS[8], if
-- given, the user's request records (see record). It reads the
-- server clock and defines stored, apply, hold, release, drop, sweep,
-- record and remember.
local MAXC = 4503599627370496 -- quota.MaxCounter (2^52)
-- the caps of ARGV[1] (see the request records below)
local record_cap = tonumber(string.match(ARGV[1], "^(%d+)")) or 0
local key_cap = tonumber(string.match(ARGV[1], ",(%d+)$")) or 0
local t = redis.call("TIME")
local now = tonumber(t[1])
local n = (#ARGV - first + 1) / 6
local fields, starts, limits, amounts, dkeys, holds, keeps, pers = {}, {}, {}, {}, {}, {}, {}, {}
for i = 1, n do
  local b = first + (i - 1) * 6
  fields[i] = ARGV[b] .. "|" .. ARGV[b + 1]
  pers[i] = ARGV[b + 1]
  starts[i] = window_start(ARGV[b + 1], now)
  limits[i] = tonumber(ARGV[b + 2])
  amounts[i] = tonumber(ARGV[b + 3])
  if ARGV[b + 4] ~= "" then dkeys[i] = ARGV[b] .. "|" .. ARGV[b + 4] end
  holds[i] = tonumber(string.match(ARGV[b + 5], "^(%d+)")) or 0
  keeps[i] = string.sub(ARGV[b + 5], -1) == "k"
end

local function stored_at(field, start)
  local v = redis.call("HMGET", KEYS[1], field, field .. "|s")
  if v[2] and tonumber(v[2]) == start then return tonumber(v[1]) or 0 end
  return 0
end

local function stored(i) return stored_at(fields[i], starts[i]) end

local function write_at(field, start, u)
  redis.call("HSET", KEYS[1], field, string.format("%d", u), field .. "|s", string.format("%d", start))
end

-- load reads the counters of every charge in one HMGET: cur[field] is its
-- count in the current window (0 for a stale one). The same read returns
-- due, the usage hash's "~due" field: when an admission must next look at
-- the leases (unix seconds; nil when unknown; see sweep); and gone, true
-- when the hash is a deleted user's tombstone (see delete_user.lua).
local function load()
  local names, at = {"~due", "~gone"}, {}
  for i = 1, n do
    if at[fields[i]] == nil then
      names[#names + 1] = fields[i]
      names[#names + 1] = fields[i] .. "|s"
      at[fields[i]] = #names - 1
    end
  end
  local v = redis.call("HMGET", KEYS[1], unpack(names))
  local cur = {}
  for i = 1, n do
    local k = at[fields[i]]
    if v[k + 1] and tonumber(v[k + 1]) == starts[i] then
      cur[fields[i]] = tonumber(v[k]) or 0
    else
      cur[fields[i]] = 0
    end
  end
  return cur, tonumber(v[1]), v[2] ~= false and v[2] ~= nil
end

-- apply adds sign * amount of every charge, each against the counter as the
-- earlier charges left it; a distinct charge adds only for a key not yet
-- counted (or, negative, takes back only a counted key). With check, it
-- first refuses (returning the index of) a charge that would go over its
-- limit, writing nothing. It reads and writes the counters with one command
-- each (none to read if the caller passes cur, as load returned it);
-- extra field/value pairs of the usage hash go with the write.
local function apply(sign, check, used, cur, extra)
  local eff = {}
  for i = 1, n do
    local a = sign * amounts[i]
    if dkeys[i] then
      local counted = redis.call("HEXISTS", KEYS[2], dkeys[i]) == 1
      if (a > 0) == counted then a = 0 end
    end
    eff[i] = a
  end
  if n == 0 then return -1 end
  if not cur then cur = load() end
  for i = 1, n do
    local f = fields[i]
    local u = cur[f]
    used[i] = u
    if check and eff[i] > 0 and limits[i] >= 0 and u + eff[i] > limits[i] then
      return i - 1
    end
    u = u + eff[i]
    if u < 0 then u = 0 end
    if u > MAXC then u = MAXC end
    cur[f] = u
    used[i] = u
  end
  local w, written = {}, {}
  for _, x in ipairs(extra or {}) do w[#w + 1] = x end
  for i = 1, n do
    if not written[fields[i]] then
      written[fields[i]] = true
      w[#w + 1] = fields[i]
      w[#w + 1] = string.format("%d", cur[fields[i]])
      w[#w + 1] = fields[i] .. "|s"
      w[#w + 1] = string.format("%d", starts[i])
    end
  end
  redis.call("HSET", KEYS[1], unpack(w))
  local room
  for i = 1, n do
    if dkeys[i] then
      if eff[i] > 0 then
        -- A new key is remembered while the user has fewer than key_cap
        -- (see ARGV[1]); past it, the key counts but is not remembered.
        if room == nil then room = key_cap <= 0 or redis.call("HLEN", KEYS[2]) < key_cap end
        if room then redis.call("HSET", KEYS[2], dkeys[i], "1") end
      elseif sign * amounts[i] < 0 then
        redis.call("HDEL", KEYS[2], dkeys[i])
      end
    end
  end
  return -1
end

-- longest_hold is the longest hold of the charges, in seconds (0: none).
local function longest_hold()
  local longest = 0
  for i = 1, n do
    if holds[i] > longest then longest = holds[i] end
  end
  return longest
end

-- hold records a lease on the held charges under request id rid: its body
-- is "resource|period|window start|amount;..." ("resource|period|window
-- start|k|amount" for a kept charge, which a gateway of an older version
-- reads as a plain one) and it expires after the longest hold. Its caller keeps "~due" (see load) at or before the
-- expiry: admit writes it with the charges, others call note_due.
local function hold(rid)
  local parts, longest = {}, 0
  for i = 1, n do
    if holds[i] > 0 then
      local kept = ""
      if keeps[i] then kept = "|k" end
      table.insert(parts, fields[i] .. "|" .. string.format("%d", starts[i]) .. kept .. "|" .. string.format("%d", amounts[i]))
      if holds[i] > longest then longest = holds[i] end
    end
  end
  if #parts == 0 then return end
  redis.call("HSET", KEYS[4], rid, table.concat(parts, ";"))
  redis.call("ZADD", KEYS[3], now + longest, rid)
end

-- release takes back the lease of rid, if it still holds, from the windows
-- it was taken in (a window that has ended since keeps it; the next one
-- never held it). A body written before leases had starts
-- ("resource|period|amount") releases from the current window. With
-- expired (the sweep), a kept charge stays counted: the lease keeps only
-- the kept charges, marked "!" (spent), for a day, so that a settlement
-- that comes late (a stream longer than its hold, a replay after an
-- outage) still replaces them instead of counting twice; a spent lease
-- that expires again is dropped, still counted.
local spent_for = 86400
local function release(rid, expired)
  local body = redis.call("HGET", KEYS[4], rid)
  if not body then return end
  if string.sub(body, 1, 1) == "!" then
    if expired then
      redis.call("HDEL", KEYS[4], rid)
      redis.call("ZREM", KEYS[3], rid)
      return
    end
    body = string.sub(body, 2)
  end
  local keep = {}
  for entry in string.gmatch(body, "[^;]+") do
    local p = {}
    for x in string.gmatch(entry, "[^|]+") do p[#p + 1] = x end
    local field = p[1] .. "|" .. p[2]
    local start = window_start(p[2], now)
    local kept = expired and #p == 5 and p[4] == "k"
    if kept then keep[#keep + 1] = entry end
    if not kept and (#p < 4 or tonumber(p[3]) == start) then
      local v = redis.call("HMGET", KEYS[1], field, field .. "|s")
      if v[1] and tonumber(v[2]) == start then
        local u = tonumber(v[1]) - tonumber(p[#p])
        if u < 0 then u = 0 end
        write_at(field, start, u)
      end
    end
  end
  if #keep > 0 then
    redis.call("HSET", KEYS[4], rid, "!" .. table.concat(keep, ";"))
    redis.call("ZADD", KEYS[3], now + spent_for, rid)
    return
  end
  redis.call("HDEL", KEYS[4], rid)
  redis.call("ZREM", KEYS[3], rid)
end

-- drop forgets the lease of rid without releasing it.
local function drop(rid)
  redis.call("HDEL", KEYS[4], rid)
  redis.call("ZREM", KEYS[3], rid)
end

-- sweep releases leases that have expired: their requests never settled.
-- It returns when to look next, the new "~due": the earliest expiry left,
-- and at the latest a minute from now, so that a lease "~due" does not know
-- of (one taken by an older gateway during an upgrade) is released within
-- a minute of its expiry.
local look_every = 60
local function sweep()
  for _, rid in ipairs(redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", now, "LIMIT", 0, 32)) do
    release(rid, true)
  end
  local first = redis.call("ZRANGE", KEYS[3], 0, 0, "WITHSCORES")
  return math.min(tonumber(first[2]) or now + look_every, now + look_every)
end

-- note_due keeps "~due" at or before a new lease's expiry e (an unknown
-- "~due" stays unknown: the next admission sweeps and learns it).
local function note_due(e)
  local due = tonumber(redis.call("HGET", KEYS[1], "~due"))
  if due and due > e then
    redis.call("HSET", KEYS[1], "~due", string.format("%d", e))
  end
end

-- Request records: the state of a request id ("a" admitted, "c" cancelled,
-- "s" settled) lives in the user's record hashes, one per two minutes of
-- the gateway's clock: KEYS[5] the current one, KEYS[8] the one before.
-- Each expires record_ttl seconds after it was made, and is read only in
-- its own two minutes and the next: so no request leaves a key of its own,
-- and a record is found for at least two minutes (quota.RequestTTL). With
-- leased, a request that holds a lease counts as admitted however old its
-- record.
--
-- ARGV[1] is "<record cap>,<key cap>" (0 or "": no cap). The key cap
-- bounds the distinct keys a user keeps (KEYS[2]): a new key past it is
-- counted but not remembered, so it counts again if it comes again (and a
-- release of it takes nothing back): more, never less. The record cap
-- caps a record hash: a current hash that
-- reaches it becomes the previous one at once (the older previous goes,
-- freed in the background), so a user never has more than three record
-- hashes of at most that many records each, whatever its traffic. A record
-- pushed out early can only make its request count again (a repeated
-- admission or settlement, or a late admission after a cancel), never
-- count less.
local record_ttl = 240
local function record(id, leased)
  for _, k in ipairs({KEYS[5], KEYS[8]}) do
    local v = redis.call("HGET", k, id)
    if v then return v end
  end
  if leased and redis.call("HEXISTS", KEYS[4], id) == 1 then return "a" end
  return false
end

local function remember(id, state)
  redis.call("HSET", KEYS[5], id, state)
  local size = redis.call("HLEN", KEYS[5])
  if record_cap > 0 and size >= record_cap then
    redis.call("UNLINK", KEYS[8])
    redis.call("RENAME", KEYS[5], KEYS[8])
  elseif size == 1 then
    redis.call("EXPIRE", KEYS[5], record_ttl)
  end
end
