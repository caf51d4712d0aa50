-- leadScript takes or renews the lease KEYS[1] for holder ARGV[1] for
-- ARGV[2] ms; it returns 1 when the caller holds it.

local cur = redis.call("GET", KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return 1
