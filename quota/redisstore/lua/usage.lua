-- usageScript returns the server time (seconds, microseconds) followed by
-- the HGETALL of the usage hash KEYS[1], all as strings. It first releases
-- the leases that have expired, when one is due, as an admission would
-- (KEYS[3] and KEYS[4] as in charges.lua; ARGV[1] "", no charges): a
-- tenant that sends nothing more (a disabled one) must not show a dead
-- node's reservation as reserved forever. A user with no lease gets no
-- write.

if redis.call("EXISTS", KEYS[3]) == 1 then
  local due = tonumber(redis.call("HGET", KEYS[1], "~due"))
  if due == nil or due <= now then
    redis.call("HSET", KEYS[1], "~due", string.format("%d", sweep()))
  end
end
local r = redis.call("HGETALL", KEYS[1])
table.insert(r, 1, t[2])
table.insert(r, 1, t[1])
return r
