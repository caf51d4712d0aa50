-- resetScript zeroes counters in one step with their events: KEYS usage
-- hash, distinct-keys hash, outbox stream, threshold marks; ARGV retention
-- ms, event count, the events, then the resources (none: all). A
-- resource's counters are the usage fields "<resource>|<period>" and their
-- "|s" window starts; its marks go with them, so its thresholds fire anew.

local n = tonumber(ARGV[2])
local first = 3 + n
if first > #ARGV then
  redis.call("DEL", KEYS[1], KEYS[2], KEYS[4])
else
  local drop = {}
  for i = first, #ARGV do drop[ARGV[i]] = true end
  for _, k in ipairs({KEYS[1], KEYS[2], KEYS[4]}) do
    for _, f in ipairs(redis.call("HKEYS", k)) do
      local r = string.match(f, "^([^|]*)|")
      -- a token's own counter of a resource goes with it
      local tr = r and string.match(r, "^t%.[^.]+%.(.+)$")
      if r and (drop[r] or (tr and drop[tr])) then redis.call("HDEL", k, f) end
    end
  end
end
outbox(KEYS[3], ARGV[1], 3, n)
return 0
