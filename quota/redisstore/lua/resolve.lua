-- resolveScript settles a request whose admission outcome its caller could
-- not see (records as in admitScript). ARGV[1] caps the record hashes, ARGV[2] "1" to
-- make sure the charges are counted (once, without limits, holding a lease
-- on the held ones) or "0" to take back whatever the request charged (and
-- drop its lease) and keep a late admission from charging, ARGV[3] the
-- request id. It returns 1 if it changed a counter.

-- A deleted user's tombstone: nothing to count or take back.
if redis.call("HEXISTS", KEYS[1], "~gone") == 1 then return 0 end
local rid = ARGV[3]
local state = record(rid, true)
if state == "c" or (state == "a" and ARGV[2] == "1") then return 0 end
local used, changed = {}, 0
if ARGV[2] == "1" then
  apply(1, false, used)
  remember(rid, "a")
  hold(rid)
  if longest_hold() > 0 then note_due(now + longest_hold()) end
  return 1
end
if state == "a" then
  apply(-1, false, used)
  drop(rid)
  changed = 1
end
remember(rid, "c")
return changed
