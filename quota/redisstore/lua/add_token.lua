-- addTokenScript adds a token to an existing user: KEYS user, tokens;
-- ARGV token id, token JSON. It returns 1 when added, 0 when there is no
-- such user, -1 when the token id is taken.
-- Needs the outbox prelude.

if redis.call("EXISTS", KEYS[1]) == 0 then return 0 end
if redis.call("HSETNX", KEYS[2], ARGV[1], ARGV[2]) == 0 then return -1 end
outbox(KEYS[3], ARGV[3], 5, tonumber(ARGV[4]))
return 1
