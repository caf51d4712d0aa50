-- thresholds(rid, csv, retention, user, used): the rule of quota.Thresholds
-- over the charges just applied. KEYS[6] is the hash of threshold marks,
-- KEYS[7] the outbox stream. Needs the charges prelude and outbox.
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp + 3
  if m > 12 then m = m - 12 end
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function rfc3339(secs)
  local days = math.floor(secs / 86400)
  local rem = secs - days * 86400
  local y, m, d = civil(days)
  return string.format("%04d-%02d-%02dT%02d:%02d:%02dZ", y, m, d, math.floor(rem / 3600), math.floor(rem % 3600 / 60), rem % 60)
end

local function window_end(per, start)
  if per == "minute" then return start + 60 end
  if per == "hour" then return start + 3600 end
  if per == "day" then return start + 86400 end
  local y, m = civil(math.floor(start / 86400))
  local days = 0
  local dim = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
  days = dim[m]
  if m == 2 and (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) then days = 29 end
  return start + days * 86400
end

-- used[i] is the counter of charge i after the step: below the lowest
-- threshold, nothing more is read (the common case costs no command).
local function thresholds(rid, csv, retention, user, used)
  if csv == "" or rid == "" then return end
  local lowest = tonumber(string.match(csv, "%d+"))
  for p in string.gmatch(csv, "%d+") do
    if tonumber(p) < lowest then lowest = tonumber(p) end
  end
  local k = 0
  for i = 1, n do
    if limits[i] > 0 and amounts[i] ~= 0 and (used[i] or 0) * 100 >= limits[i] * lowest then
    local r = string.match(fields[i], "^(.*)|[^|]*$")
    if string.sub(r, 1, 9) ~= "reserved_" then
      local u = stored(i) - stored_at("reserved_" .. r .. "|lifetime", 0)
      for p in string.gmatch(csv, "%d+") do
        local th = math.floor((limits[i] * tonumber(p) + 99) / 100)
        if u >= th then
          local f = fields[i] .. "|" .. p
          local mark = string.format("%d:%d", starts[i], limits[i])
          if redis.call("HGET", KEYS[6], f) ~= mark then
            redis.call("HSET", KEYS[6], f, mark)
            k = k + 1
            local ws, we = "null", "null"
            if pers[i] ~= "lifetime" then
              ws = '"' .. rfc3339(starts[i]) .. '"'
              we = '"' .. rfc3339(window_end(pers[i], starts[i])) .. '"'
            end
            local ev = string.format('{"id":"%s-t%d","type":"usage.threshold","time":"%s","subject":"%s","data":{"resource":"%s","period":"%s","windowStart":%s,"windowEnd":%s,"percent":%s,"used":%d,"limit":%d}}',
              rid, k, rfc3339(now), user, r, pers[i], ws, we, p, u, limits[i])
            local t2 = redis.call("TIME")
            local minid = tonumber(t2[1]) * 1000 - tonumber(retention)
            if minid < 0 then minid = 0 end
            redis.call("XADD", KEYS[7], "MINID", "~", string.format("%d", minid), "*", "e", ev)
          end
        end
      end
    end
    end
  end
end
