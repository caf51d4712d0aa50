-- putTokenScript writes the token JSON ARGV[2] to KEYS[1], a token's
-- lookup key (ARGV[1] "") or field ARGV[1] of a user's tokens hash, only
-- if a token is there whose revision is between ARGV[3] and ARGV[4]: an
-- update (0 to its revision - 1) never goes back over a later one, a
-- touch (its revision alone) never over an update, and neither brings
-- back a revoked token. It returns 1 when written, 0 when the stored
-- revision is outside, -1 when no token is there.

local cur
if ARGV[1] == "" then
  cur = redis.call("GET", KEYS[1])
else
  cur = redis.call("HGET", KEYS[1], ARGV[1])
end
if not cur then return -1 end
local rev = cjson.decode(cur).revision or 0
if rev < tonumber(ARGV[3]) or rev > tonumber(ARGV[4]) then return 0 end
if ARGV[1] == "" then
  redis.call("SET", KEYS[1], ARGV[2])
else
  redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
end
return 1
