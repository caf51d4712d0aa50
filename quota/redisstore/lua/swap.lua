-- swapScript sets KEYS[1] to ARGV[2] only if it holds ARGV[1], and then
-- appends the events (ARGV[3] retention ms, ARGV[4] count, ARGV[5...]) to
-- the outbox stream KEYS[2]: it returns 1 when set, 0 when the key holds
-- something else, -1 when it is gone.
-- Needs the outbox prelude.

local cur = redis.call("GET", KEYS[1])
if not cur then return -1 end
if cur ~= ARGV[1] then return 0 end
redis.call("SET", KEYS[1], ARGV[2])
outbox(KEYS[2], ARGV[3], 5, tonumber(ARGV[4]))
return 1
