-- window_start(per, now): the unix second at which the calendar window (UTC)
-- of period per that holds now begins, 0 for lifetime. Months use Howard
-- Hinnant's civil-from-days. Lua numbers are doubles, exact for every
-- integer used here.
local function window_start(per, now)
  if per == "minute" then return now - now % 60 end
  if per == "hour" then return now - now % 3600 end
  if per == "day" then return now - now % 86400 end
  if per == "month" then
    local days = math.floor(now / 86400)
    local z = days + 719468
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local mday = doy - math.floor((153 * mp + 2) / 5) + 1
    return (days - mday + 1) * 86400
  end
  return 0
end
