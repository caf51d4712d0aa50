-- resolveScript settles a request whose admission outcome its caller could
-- not see. ARGV[1] is the request record's time to live, ARGV[2] "1" to
-- make sure the charges are counted (once, without limits, holding a lease
-- on the held ones) or "0" to take back whatever the request charged (and
-- drop its lease) and keep a late admission from charging, ARGV[3] the
-- request id. It returns 1 if it changed a counter.

local rid = ARGV[3]
local state = redis.call("GET", KEYS[5])
if state == "c" or (state == "a" and ARGV[2] == "1") then return 0 end
local used, changed = {}, 0
if ARGV[2] == "1" then
  apply(1, false, used)
  redis.call("SET", KEYS[5], "a", "EX", ARGV[1])
  hold(rid)
  return 1
end
if state == "a" then
  apply(-1, false, used)
  drop(rid)
  changed = 1
end
redis.call("SET", KEYS[5], "c", "EX", ARGV[1])
return changed
