-- swapTokenScript sets field ARGV[1] of the tokens hash KEYS[1] to ARGV[3]
-- only if it holds ARGV[2], and then appends the events (ARGV[4]
-- retention ms, ARGV[5] count, ARGV[6...]) to the outbox stream KEYS[2]:
-- it returns 1 when set, 0 when the field holds something else, -1 when
-- it is gone.
-- Needs the outbox prelude.

local cur = redis.call("HGET", KEYS[1], ARGV[1])
if not cur then return -1 end
if cur ~= ARGV[2] then return 0 end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[3])
outbox(KEYS[2], ARGV[4], 6, tonumber(ARGV[5]))
return 1
