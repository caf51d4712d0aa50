-- admitScript applies charges to one user's usage hash (KEYS[1]) all or
-- nothing, exactly like quota.ApplyCharges, after releasing expired leases.
-- A counter counts only if its stored window start ("<field>|s") is the
-- current one. ARGV[1] caps the record hashes (see charges.lua), ARGV[2] the request id ("" for none),
-- recorded in the request records (KEYS[5] and KEYS[8]): an
-- admission whose request id was already admitted charges nothing again,
-- one that was cancelled charges nothing, and an admitted one holds a lease
-- on its held charges.
--
-- The reply is {allowed (1/0), denied index (0-based; -1 none; -2
-- cancelled; -3 the user was deleted), now seconds, now microseconds, used
-- per charge...}.
--
-- ARGV[3] is the usage thresholds (percentages, comma separated; "" for
-- none), ARGV[4] the outbox retention in ms and ARGV[5] the user id;
-- KEYS[6] is the hash of threshold marks and KEYS[7] the outbox stream
-- (usage.threshold events). The charges start at ARGV[6].

local function reply(allowed, denied, used)
  local r = {allowed, denied, now, tonumber(t[2])}
  for i = 1, n do r[4 + i] = used[i] or 0 end
  return r
end

-- Expired leases are released first, when one is due ("~due", read with
-- the counters): most admissions need no look at the leases.
local cur, due, gone = load()
if gone then return reply(0, -3, {}) end
local dirty = false
if due == nil or due <= now then
  due = sweep()
  cur = load()
  dirty = true
end
local used = {}
local rid = ARGV[2]
if rid ~= "" then
  -- only an admission that holds has a lease to be known by
  local leased = false
  for i = 1, n do leased = leased or holds[i] > 0 end
  local state = record(rid, leased)
  if state == "c" then return reply(0, -2, used) end
  if state == "a" then
    for i = 1, n do used[i] = stored(i) end
    return reply(1, -1, used)
  end
end
local longest = 0
if rid ~= "" then longest = longest_hold() end
if longest > 0 and due > now + longest then
  due = now + longest
  dirty = true
end
local extra
if dirty then extra = {"~due", string.format("%d", due)} end
local denied = apply(1, true, used, cur, extra)
if denied >= 0 then return reply(0, denied, used) end
if rid ~= "" then
  remember(rid, "a")
  hold(rid)
end
thresholds(rid, ARGV[3], ARGV[4], ARGV[5], used)
return reply(1, -1, used)
