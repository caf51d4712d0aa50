-- persistScript makes a claim permanent if it is still ours: KEYS[1] the
-- index key, ARGV[1] our user id. It returns 1 when done.

if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("PERSIST", KEYS[1])
return 1
