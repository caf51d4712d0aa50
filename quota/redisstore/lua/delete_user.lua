-- deleteUserScript removes a user's own keys in one step: KEYS user, usage,
-- tokens, keys, lease expiries, leases, and KEYS[8] the threshold marks; it
-- appends the events (ARGV[1] retention ms, ARGV[2] count, ARGV[3...]) to
-- the outbox stream KEYS[7]. Request records expire by themselves.
-- It returns the user JSON followed by the token JSONs, or nil when there
-- is no such user.
-- Needs the outbox prelude.

local u = redis.call("GET", KEYS[1])
if not u then return false end
local out = redis.call("HVALS", KEYS[3])
table.insert(out, 1, u)
redis.call("DEL", KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[8])
-- A tombstone in the usage hash, for a day (longer than any request or
-- cache entry lives): a node that has not heard of the delete yet refuses
-- the user's admissions, and a settlement that comes late writes nothing,
-- so no key outlives the user.
redis.call("HSET", KEYS[2], "~gone", "1")
redis.call("EXPIRE", KEYS[2], 86400)
outbox(KEYS[7], ARGV[1], 3, tonumber(ARGV[2]))
return out
