-- hsetIfExistsScript sets hash field ARGV[1] of KEYS[1] to ARGV[2] only if
-- the field exists, so that a touch never brings back a revoked token.

if redis.call("HEXISTS", KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
return 1
