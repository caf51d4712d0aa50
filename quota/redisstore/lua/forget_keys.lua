-- forgetKeysScript removes from the distinct-key hash KEYS[1] the keys of
-- the resources in ARGV.

local drop = {}
for _, r in ipairs(ARGV) do drop[r] = true end
for _, f in ipairs(redis.call("HKEYS", KEYS[1])) do
  local r = string.match(f, "^([^|]*)|")
  if r and drop[r] then redis.call("HDEL", KEYS[1], f) end
end
return 0
