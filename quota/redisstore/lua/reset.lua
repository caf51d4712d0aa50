-- resetScript zeroes counters in one step with their events: KEYS usage
-- hash, distinct-keys hash, outbox stream, threshold marks, lease bodies;
-- ARGV retention ms, event count, the events, then the resources (none:
-- all but the credits spent, a prepaid balance: quota.KeptByFullReset).
-- A resource's counters are the usage fields "<resource>|<period>" and
-- their "|s" window starts; its marks go with them, so its thresholds fire
-- anew.
--
-- What requests in flight and headroom slices hold stays counted: their
-- settlement takes it back from the window it was taken in, so a reset
-- that forgot it would let that settlement subtract from usage that never
-- held it (a free reservation's worth after every reset).

local n = tonumber(ARGV[2])
local first = 3 + n
local drop = {}
local all = first > #ARGV
for i = first, #ARGV do drop[ARGV[i]] = true end
-- a token's own counter of a resource goes with it
local function dropped(r)
  if not r then return false end
  local tr = string.match(r, "^t%.[^.]+%.(.+)$")
  if all then return r ~= "credits" and tr ~= "credits" end
  if drop[r] then return true end
  return tr ~= nil and drop[tr] == true
end
local lists = {KEYS[1], KEYS[2], KEYS[4]}
if all then
  -- No distinct key counts credits: the hash goes in one step (it may
  -- hold 100,000 keys).
  redis.call("DEL", KEYS[2])
  lists = {KEYS[1], KEYS[4]}
end
for _, k in ipairs(lists) do
  local gone = {}
  for _, f in ipairs(redis.call("HKEYS", k)) do
    if dropped(string.match(f, "^([^|]*)|")) then gone[#gone + 1] = f end
  end
  for i = 1, #gone, 1000 do
    redis.call("HDEL", k, unpack(gone, i, math.min(i + 999, #gone)))
  end
end
local now = tonumber(redis.call("TIME")[1])
local held = {}
for _, body in ipairs(redis.call("HVALS", KEYS[5])) do
  if string.sub(body, 1, 1) == "!" then body = string.sub(body, 2) end -- spent: still held
  for entry in string.gmatch(body, "[^;]+") do
    local p = {}
    for x in string.gmatch(entry, "[^|]+") do p[#p + 1] = x end
    if #p >= 3 and dropped(p[1]) then
      local start = window_start(p[2], now)
      if #p < 4 or tonumber(p[3]) == start then
        local field = p[1] .. "|" .. p[2]
        held[field] = (held[field] or 0) + (tonumber(p[#p]) or 0)
        held[field .. "|s"] = start
      end
    end
  end
end
for field, amount in pairs(held) do
  if not string.match(field, "|s$") then
    local start = held[field .. "|s"]
    local v = redis.call("HMGET", KEYS[1], field, field .. "|s")
    local u = 0
    if v[2] and tonumber(v[2]) == start then u = tonumber(v[1]) or 0 end
    redis.call("HSET", KEYS[1], field, string.format("%d", math.min(u + amount, 4503599627370496)), field .. "|s", string.format("%d", start))
  end
end
outbox(KEYS[3], ARGV[1], 3, n)
return 0
