-- dropTokenScript removes field ARGV[1] of the tokens hash KEYS[1] and, if
-- it was there, appends the events (ARGV[2] retention ms, ARGV[3] count,
-- ARGV[4...]) to the outbox stream KEYS[2]; it returns how many it removed.
-- Needs the outbox prelude.

local n = redis.call("HDEL", KEYS[1], ARGV[1])
if n == 1 then outbox(KEYS[2], ARGV[2], 4, tonumber(ARGV[3])) end
return n
