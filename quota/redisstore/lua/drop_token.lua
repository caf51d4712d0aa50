-- dropTokenScript removes field ARGV[1] of the tokens hash KEYS[1] and, if
-- it was there, the token's own counters (fields starting "t.<id>." of the
-- usage hash KEYS[3] and of the distinct-key hash KEYS[4]) and appends the
-- events (ARGV[2] retention ms, ARGV[3] count, ARGV[4...]) to the outbox
-- stream KEYS[2]; it returns how many it removed. A settlement still in
-- flight for the token may write one of its counters again: over, never
-- under, and it goes with the user.
-- Needs the outbox prelude.

local n = redis.call("HDEL", KEYS[1], ARGV[1])
if n == 1 then
  local prefix = "t." .. ARGV[1] .. "."
  for _, k in ipairs({KEYS[3], KEYS[4]}) do
    local gone = {}
    for _, f in ipairs(redis.call("HKEYS", k)) do
      if string.sub(f, 1, #prefix) == prefix then
        gone[#gone + 1] = f
        if #gone == 1000 then
          redis.call("HDEL", k, unpack(gone))
          gone = {}
        end
      end
    end
    if #gone > 0 then redis.call("HDEL", k, unpack(gone)) end
  end
  outbox(KEYS[2], ARGV[2], 4, tonumber(ARGV[3]))
end
return n
