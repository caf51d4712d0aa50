-- settleScript ends a served request exactly once: it applies the actual
-- charges without limits and releases the request's lease. ARGV[1] is the
-- settlement record's time to live, ARGV[2] the request id; KEYS[5] is the
-- settlement record. It returns 1 if it settled, 0 for a repeat.
--
-- ARGV[3] is the usage thresholds (percentages, comma separated; "" for
-- none), ARGV[4] the outbox retention in ms and ARGV[5] the user id;
-- KEYS[6] is the hash of threshold marks and KEYS[7] the outbox stream
-- (usage.threshold events). The charges start at ARGV[6].

if redis.call("GET", KEYS[5]) then return 0 end
local used = {}
apply(1, false, used)
release(ARGV[2])
redis.call("SET", KEYS[5], "s", "EX", ARGV[1])
thresholds(ARGV[2] .. "-s", ARGV[3], ARGV[4], ARGV[5], used)
return 1
