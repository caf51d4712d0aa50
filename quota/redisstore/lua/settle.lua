-- settleScript ends a served request exactly once: it applies the actual
-- charges without limits and releases the request's lease. ARGV[1] caps
-- the record hashes (see charges.lua), ARGV[2] the request id, whose settlement is recorded as
-- "<id>/s" in the request records. It returns 1 if it settled, 0 for a
-- repeat.
--
-- ARGV[3] is the usage thresholds (percentages, comma separated; "" for
-- none), ARGV[4] the outbox retention in ms and ARGV[5] the user id;
-- KEYS[6] is the hash of threshold marks and KEYS[7] the outbox stream
-- (usage.threshold events). The charges start at ARGV[6].

-- A deleted user's tombstone (see delete_user.lua): a slice given back or
-- a request that ended after the delete writes nothing, which would bring
-- back keys that nothing removes.
if redis.call("HEXISTS", KEYS[1], "~gone") == 1 then return 0 end
local settled = ARGV[2] .. "/s"
if record(settled, false) then return 0 end
local used = {}
apply(1, false, used)
release(ARGV[2])
remember(settled, "s")
thresholds(ARGV[2] .. "-s", ARGV[3], ARGV[4], ARGV[5], used)
return 1
