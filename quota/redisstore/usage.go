package redisstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// luaWindowStart defines window_start(period, now): the unix second at which
// the calendar window (UTC) of period that holds now begins, 0 for lifetime.
// Months use Howard Hinnant's civil-from-days to find the day of the month.
// Lua numbers are doubles, exact for every integer used here.
const luaWindowStart = `
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
`

// luaCharges parses the charges in ARGV from index first on, one group of
// six per charge (resource, period name, limit (-1: none), amount,
// distinct key or "", hold seconds or 0), reads the server clock, and
// defines the helpers below. KEYS[1] is the usage hash, KEYS[2] the hash of
// distinct keys counted, KEYS[3] the sorted set of lease expiries and
// KEYS[4] the hash of lease bodies (what releases each lease, by request
// id); KEYS[5], if given, is the request record.
const luaCharges = luaWindowStart + `
local MAXC = 4503599627370496 -- quota.MaxCounter (2^52)
local t = redis.call("TIME")
local now = tonumber(t[1])
local n = (#ARGV - first + 1) / 6
local fields, starts, limits, amounts, dkeys, holds, pers = {}, {}, {}, {}, {}, {}, {}
for i = 1, n do
  local b = first + (i - 1) * 6
  fields[i] = ARGV[b] .. "|" .. ARGV[b + 1]
  pers[i] = ARGV[b + 1]
  starts[i] = window_start(ARGV[b + 1], now)
  limits[i] = tonumber(ARGV[b + 2])
  amounts[i] = tonumber(ARGV[b + 3])
  if ARGV[b + 4] ~= "" then dkeys[i] = ARGV[b] .. "|" .. ARGV[b + 4] end
  holds[i] = tonumber(ARGV[b + 5])
end

local function stored_at(field, start)
  local v = redis.call("HMGET", KEYS[1], field, field .. "|s")
  if v[2] and tonumber(v[2]) == start then return tonumber(v[1]) or 0 end
  return 0
end

local function stored(i) return stored_at(fields[i], starts[i]) end

local function write_at(field, start, u)
  redis.call("HSET", KEYS[1], field, string.format("%d", u), field .. "|s", string.format("%d", start))
end

-- apply adds sign * amount of every charge, each against the counter as the
-- earlier charges left it; a distinct charge adds only for a key not yet
-- counted (or, negative, takes back only a counted key). With check, it
-- first refuses (returning the index of) a charge that would go over its
-- limit, writing nothing.
local function apply(sign, check, used)
  local eff = {}
  for i = 1, n do
    local a = sign * amounts[i]
    if dkeys[i] then
      local counted = redis.call("HEXISTS", KEYS[2], dkeys[i]) == 1
      if (a > 0) == counted then a = 0 end
    end
    eff[i] = a
  end
  local cur = {}
  for i = 1, n do
    local f = fields[i]
    if cur[f] == nil then cur[f] = stored(i) end
    local u = cur[f]
    used[i] = u
    if check and eff[i] > 0 and limits[i] >= 0 and u + eff[i] > limits[i] then
      return i - 1
    end
    u = u + eff[i]
    if u < 0 then u = 0 end
    if u > MAXC then u = MAXC end
    cur[f] = u
    used[i] = u
  end
  for i = 1, n do
    write_at(fields[i], starts[i], used[i])
    if dkeys[i] then
      if sign * amounts[i] > 0 then
        redis.call("HSET", KEYS[2], dkeys[i], "1")
      elseif sign * amounts[i] < 0 then
        redis.call("HDEL", KEYS[2], dkeys[i])
      end
    end
  end
  return -1
end

-- hold records a lease on the held charges under request id rid: its body
-- is "resource|period|amount;..." and it expires after the longest hold.
local function hold(rid)
  local parts, longest = {}, 0
  for i = 1, n do
    if holds[i] > 0 then
      table.insert(parts, fields[i] .. "|" .. string.format("%d", amounts[i]))
      if holds[i] > longest then longest = holds[i] end
    end
  end
  if #parts == 0 then return end
  redis.call("HSET", KEYS[4], rid, table.concat(parts, ";"))
  redis.call("ZADD", KEYS[3], now + longest, rid)
end

-- release takes back the lease of rid, if it still holds.
local function release(rid)
  local body = redis.call("HGET", KEYS[4], rid)
  if not body then return end
  for res, per, amount in string.gmatch(body, "([^|;]+)|([^|;]+)|([^|;]+)") do
    local field = res .. "|" .. per
    local start = window_start(per, now)
    local u = stored_at(field, start) - tonumber(amount)
    if u < 0 then u = 0 end
    write_at(field, start, u)
  end
  redis.call("HDEL", KEYS[4], rid)
  redis.call("ZREM", KEYS[3], rid)
end

-- drop forgets the lease of rid without releasing it.
local function drop(rid)
  redis.call("HDEL", KEYS[4], rid)
  redis.call("ZREM", KEYS[3], rid)
end

-- sweep releases leases that have expired: their requests never settled.
local function sweep()
  for _, rid in ipairs(redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", now, "LIMIT", 0, 32)) do
    release(rid)
  end
end
`

// luaThresholds defines thresholds(rid, csv, retention, user): the rule of
// quota.Thresholds over the charges just applied. KEYS[6] is the hash of
// threshold marks, KEYS[7] the outbox stream. Events are JSON written by
// hand: cjson would print large counts in floating point.
const luaThresholds = luaOutbox + `
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
`

// admitScript applies charges to one user's usage hash (KEYS[1]) all or
// nothing, exactly like quota.ApplyCharges, after releasing expired leases.
// A counter counts only if its stored window start ("<field>|s") is the
// current one. ARGV[1] is the request record's time to live in seconds,
// ARGV[2] the request id ("" for none) and KEYS[5] its request record: an
// admission whose request id was already admitted charges nothing again,
// one that was cancelled charges nothing, and an admitted one holds a lease
// on its held charges.
//
// The reply is {allowed (1/0), denied index (0-based; -1 none; -2
// cancelled), now seconds, now microseconds, used per charge...}.
var admitScript = redis.NewScript(`local first = 6
` + luaCharges + luaThresholds + `
local function reply(allowed, denied, used)
  local r = {allowed, denied, now, tonumber(t[2])}
  for i = 1, n do r[4 + i] = used[i] or 0 end
  return r
end

sweep()
local used = {}
local rid = ARGV[2]
if rid ~= "" then
  local state = redis.call("GET", KEYS[5])
  if state == "c" then return reply(0, -2, used) end
  if state == "a" then
    for i = 1, n do used[i] = stored(i) end
    return reply(1, -1, used)
  end
end
local denied = apply(1, true, used)
if denied >= 0 then return reply(0, denied, used) end
if rid ~= "" then
  redis.call("SET", KEYS[5], "a", "EX", ARGV[1])
  hold(rid)
end
thresholds(rid, ARGV[3], ARGV[4], ARGV[5], used)
return reply(1, -1, used)
`)

// resolveScript settles a request whose admission outcome its caller could
// not see. ARGV[1] is the request record's time to live, ARGV[2] "1" to
// make sure the charges are counted (once, without limits, holding a lease
// on the held ones) or "0" to take back whatever the request charged (and
// drop its lease) and keep a late admission from charging, ARGV[3] the
// request id. It returns 1 if it changed a counter.
var resolveScript = redis.NewScript(`local first = 4
` + luaCharges + `
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
`)

// settleScript ends a served request exactly once: it applies the actual
// charges without limits and releases the request's lease. ARGV[1] is the
// settlement record's time to live, ARGV[2] the request id; KEYS[5] is the
// settlement record. It returns 1 if it settled, 0 for a repeat.
var settleScript = redis.NewScript(`local first = 6
` + luaCharges + luaThresholds + `
if redis.call("GET", KEYS[5]) then return 0 end
local used = {}
apply(1, false, used)
release(ARGV[2])
redis.call("SET", KEYS[5], "s", "EX", ARGV[1])
thresholds(ARGV[2] .. "-s", ARGV[3], ARGV[4], ARGV[5], used)
return 1
`)

// usageScript returns the server time (seconds, microseconds) followed by
// the HGETALL of the usage hash KEYS[1], all as strings.
var usageScript = redis.NewScript(`
local t = redis.call("TIME")
local r = redis.call("HGETALL", KEYS[1])
table.insert(r, 1, t[2])
table.insert(r, 1, t[1])
return r
`)

// forgetKeysScript removes from the distinct-key hash KEYS[1] the keys of
// the resources in ARGV.
var forgetKeysScript = redis.NewScript(`
local drop = {}
for _, r in ipairs(ARGV) do drop[r] = true end
for _, f in ipairs(redis.call("HKEYS", KEYS[1])) do
  local r = string.match(f, "^([^|]*)|")
  if r and drop[r] then redis.call("HDEL", KEYS[1], f) end
end
return 0
`)

// startSuffix marks the window-start field of a counter.
const startSuffix = "|s"

// Admit applies all charges of one user in one atomic step on the Redis
// server, with the server's clock. Charges are checked first: a resource
// must be a valid name, the period known, the limit NoLimit or within
// [0, quota.MaxLimit], and the amount within ±quota.MaxLimit.
func (s *Store) Admit(ctx context.Context, userID, requestID string, charges []quota.Charge) (*quota.Admission, error) {
	if requestID == "" {
		for _, c := range charges {
			if c.Hold > 0 {
				return nil, quota.Invalid("requestId", "is required to hold a reservation")
			}
		}
	}
	keys, args, err := s.chargeArgs(userID, requestID, requestID, charges, s.recordTTL(charges), requestID, s.percents, strconv.FormatInt(s.retention.Milliseconds(), 10), userID)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	vals, err := admitScript.Run(ctx, s.rdb, keys, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("admit: %w", err)
	}
	if len(vals) != 4+len(charges) {
		return nil, fmt.Errorf("admit: script replied %d values for %d charges", len(vals), len(charges))
	}
	if vals[1] == -2 {
		return nil, fmt.Errorf("admit: request %s: %w", requestID, quota.ErrCancelled)
	}
	return &quota.Admission{
		Allowed: vals[0] == 1,
		Denied:  int(vals[1]),
		Now:     time.Unix(vals[2], vals[3]*int64(time.Microsecond)).UTC(),
		Used:    vals[4:],
	}, nil
}

// Resolve settles a request whose admission outcome the caller could not
// see; see quota.Store.
func (s *Store) Resolve(ctx context.Context, userID, requestID string, charges []quota.Charge, apply bool) error {
	if requestID == "" {
		return quota.Invalid("requestId", "is required")
	}
	flag := "0"
	if apply {
		flag = "1"
	}
	keys, args, err := s.chargeArgs(userID, requestID, requestID, charges, s.recordTTL(charges), flag, requestID)
	if err != nil {
		return err
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if err := resolveScript.Run(ctx, s.rdb, keys, args...).Err(); err != nil {
		return fmt.Errorf("resolve: %w", err)
	}
	return nil
}

// Settle ends a served request exactly once; see quota.Store.
func (s *Store) Settle(ctx context.Context, userID, requestID string, actual []quota.Charge) error {
	if requestID == "" {
		return quota.Invalid("requestId", "is required")
	}
	keys, args, err := s.chargeArgs(userID, requestID, requestID+"-settle", actual, s.recordTTL(nil), requestID, s.percents, strconv.FormatInt(s.retention.Milliseconds(), 10), userID)
	if err != nil {
		return err
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if err := settleScript.Run(ctx, s.rdb, keys, args...).Err(); err != nil {
		return fmt.Errorf("settle: %w", err)
	}
	return nil
}

// recordTTL is how long a request record lives, in seconds: RequestTTL,
// or longer than the longest hold so a lease never outlives its record.
func (s *Store) recordTTL(charges []quota.Charge) string {
	ttl := quota.RequestTTL
	for _, c := range charges {
		ttl = max(ttl, c.Hold+time.Minute)
	}
	return strconv.Itoa(int(ttl / time.Second))
}

// chargeArgs checks charges and builds a script's keys and arguments: the
// usage hash, the distinct keys, the lease set and bodies and, with a
// record name, the request record; then head and one group of six per
// charge.
func (s *Store) chargeArgs(userID, requestID, record string, charges []quota.Charge, head ...string) ([]string, []any, error) {
	if !validID(userID) {
		return nil, nil, fmt.Errorf("user %q: %w", userID, quota.ErrNotFound)
	}
	if requestID != "" && !validID(requestID) {
		return nil, nil, quota.Invalid("requestId", "must be 1 to %d letters, digits, '-' or '_'", quota.MaxIDLength)
	}
	keys := []string{s.usageKey(userID), s.keysKey(userID), s.tag(userID) + ":lease_exp", s.tag(userID) + ":leases"}
	if record != "" {
		keys = append(keys, s.tag(userID)+":req:"+record, s.tag(userID)+":thresholds", s.eventsKey(userID))
	}
	args := make([]any, 0, len(head)+6*len(charges))
	for _, h := range head {
		args = append(args, h)
	}
	if err := quota.ValidateCharges(charges); err != nil {
		return nil, nil, err
	}
	for _, c := range charges {
		args = append(args, c.Resource, c.Per.String(), strconv.FormatInt(c.Limit, 10), strconv.FormatInt(c.Amount, 10), c.Key,
			strconv.FormatInt(int64((c.Hold+time.Second-1)/time.Second), 10))
	}
	return keys, args, nil
}

// Usage returns every counter of the user, stale windows included (their
// Start tells), with the server's time, read in one script.
func (s *Store) Usage(ctx context.Context, userID string) (*quota.UsageSnapshot, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if !validID(userID) {
		return nil, fmt.Errorf("user %q: %w", userID, quota.ErrNotFound)
	}
	vals, err := usageScript.Run(ctx, s.rdb, []string{s.usageKey(userID)}).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	if len(vals) < 2 || len(vals)%2 != 0 {
		return nil, fmt.Errorf("usage: script replied %d values", len(vals))
	}
	sec, err1 := strconv.ParseInt(vals[0], 10, 64)
	usec, err2 := strconv.ParseInt(vals[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("usage: server time: %w", err)
	}
	return &quota.UsageSnapshot{
		Now:      time.Unix(sec, usec*int64(time.Microsecond)).UTC(),
		Counters: parseCounters(vals[2:]),
	}, nil
}

// parseCounters turns HGETALL pairs of a usage hash into counters sorted by
// resource and period, skipping fields it does not understand.
func parseCounters(kv []string) []quota.Counter {
	fields := make(map[string]string, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		fields[kv[i]] = kv[i+1]
	}
	var out []quota.Counter
	for f, v := range fields {
		if strings.HasSuffix(f, startSuffix) {
			continue
		}
		res, per, ok := quota.ParseCounterKey(f)
		if !ok {
			continue
		}
		used, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		c := quota.Counter{Resource: res, Per: per, Used: used}
		if per != quota.Lifetime {
			start, err := strconv.ParseInt(fields[f+startSuffix], 10, 64)
			if err != nil {
				continue
			}
			c.Start = time.Unix(start, 0).UTC()
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Resource != out[j].Resource {
			return out[i].Resource < out[j].Resource
		}
		return periodOrder(out[i].Per) < periodOrder(out[j].Per)
	})
	return out
}

// periods lists every period, in the order counters are sorted.
var periods = []quota.Period{quota.Lifetime, quota.Minute, quota.Hour, quota.Day, quota.Month}

func periodOrder(p quota.Period) int {
	for i, q := range periods {
		if p == q {
			return i
		}
	}
	return len(periods)
}

// ResetUsage zeroes the counters of the named resources (all if none) by
// deleting their fields, or the whole usage hash.
func (s *Store) ResetUsage(ctx context.Context, userID string, resources []string, events ...quota.Event) error {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if !validID(userID) {
		return fmt.Errorf("user %q: %w", userID, quota.ErrNotFound)
	}
	args, err := s.eventArgs(events)
	if err != nil {
		return err
	}
	for _, r := range resources {
		args = append(args, r)
	}
	if err := resetScript.Run(ctx, s.rdb, []string{s.usageKey(userID), s.keysKey(userID), s.eventsKey(userID), s.tag(userID) + ":thresholds"}, args...).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("reset usage: %w", err)
	}
	return nil
}

// resetScript zeroes counters in one step with their events: KEYS usage
// hash, distinct-keys hash, outbox stream, threshold marks; ARGV retention
// ms, event count, the events, then the resources (none: all). A
// resource's counters are the usage fields "<resource>|<period>" and their
// "|s" window starts; its marks go with them, so its thresholds fire anew.
var resetScript = redis.NewScript(luaOutbox + `
local n = tonumber(ARGV[2])
local first = 3 + n
if first > #ARGV then
  redis.call("DEL", KEYS[1], KEYS[2], KEYS[4])
else
  local drop = {}
  for i = first, #ARGV do drop[ARGV[i]] = true end
  for _, k in ipairs({KEYS[1], KEYS[2], KEYS[4]}) do
    for _, f in ipairs(redis.call("HKEYS", k)) do
      local r = string.match(f, "^([^|]*)|")
      -- a token's own counter of a resource goes with it
      local tr = r and string.match(r, "^t%.[^.]+%.(.+)$")
      if r and (drop[r] or (tr and drop[tr])) then redis.call("HDEL", k, f) end
    end
  end
end
outbox(KEYS[3], ARGV[1], 3, n)
return 0
`)
