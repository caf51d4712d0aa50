-- outbox(stream, retention_ms, first, n): appends the n event JSONs
-- ARGV[first .. first+n-1] to stream, trimming entries older than the
-- retention.
local function outbox(stream, retention, first, n)
  if n == 0 then return end
  local t = redis.call("TIME")
  local minid = tonumber(t[1]) * 1000 - tonumber(retention)
  if minid < 0 then minid = 0 end
  for i = first, first + n - 1 do
    redis.call("XADD", stream, "MINID", "~", string.format("%d", minid), "*", "e", ARGV[i])
  end
end
