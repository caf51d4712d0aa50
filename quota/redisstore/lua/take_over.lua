-- takeOverScript replaces an orphaned permanent index key: KEYS[1] the index
-- key, ARGV[1] the holder seen, ARGV[2] the new holder, ARGV[3] claim TTL ms.
-- It returns 1 when taken, 0 when the key changed meanwhile, -1 when the key
-- is a pending claim (it has a TTL) that must not be taken.

if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call("PTTL", KEYS[1]) ~= -1 then return -1 end
redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3])
return 1
