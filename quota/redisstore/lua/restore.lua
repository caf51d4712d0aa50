-- restoreScript gives an index key taken over by mistake back to its
-- holder: KEYS[1] the index key, ARGV[1] the taker, ARGV[2] the holder.

if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("SET", KEYS[1], ARGV[2])
return 1
