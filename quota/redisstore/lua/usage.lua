-- usageScript returns the server time (seconds, microseconds) followed by
-- the HGETALL of the usage hash KEYS[1], all as strings.

local t = redis.call("TIME")
local r = redis.call("HGETALL", KEYS[1])
table.insert(r, 1, t[2])
table.insert(r, 1, t[1])
return r
