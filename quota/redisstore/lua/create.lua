-- createScript sets KEYS[1] to ARGV[1] if it does not exist, with the
-- events (ARGV[2] retention ms, ARGV[3] count, ARGV[4...]) appended to the
-- outbox stream KEYS[2]; it returns 1 when created.
-- Needs the outbox prelude.

if redis.call("SET", KEYS[1], ARGV[1], "NX") then
  outbox(KEYS[2], ARGV[2], 4, tonumber(ARGV[3]))
  return 1
end
return 0
