package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// admitScript applies charges to one user's usage hash (KEYS[1]) all or
// nothing, exactly like quota.ApplyCharges, after releasing expired leases.
// A counter counts only if its stored window start ("<field>|s") is the
// current one. ARGV[2] is the request id ("" for none), kept in the
// user's request records (KEYS[5] and KEYS[8]; see charges.lua): an
// admission whose request id was already admitted charges nothing again,
// one that was cancelled charges nothing, and an admitted one holds a lease
// on its held charges.
//
// The reply is {allowed (1/0), denied index (0-based; -1 none; -2
// cancelled), now seconds, now microseconds, used per charge...}.
var admitScript = redis.NewScript("local first = 6\n" + luaCharges + luaThresholds + lua("admit.lua"))

// resolveScript settles a request whose admission outcome its caller could
// not see. ARGV[2] is "1" to
// make sure the charges are counted (once, without limits, holding a lease
// on the held ones) or "0" to take back whatever the request charged (and
// drop its lease) and keep a late admission from charging, ARGV[3] the
// request id. It returns 1 if it changed a counter.
var resolveScript = redis.NewScript("local first = 4\n" + luaCharges + lua("resolve.lua"))

// settleScript ends a served request exactly once: it applies the actual
// charges without limits and releases the request's lease. ARGV[2] is the
// request id, whose settlement is recorded in the request records. It
// returns 1 if it settled, 0 for a repeat.
var settleScript = redis.NewScript("local first = 6\n" + luaCharges + luaThresholds + lua("settle.lua"))

// usageScript returns the server time (seconds, microseconds) followed by
// the HGETALL of the usage hash KEYS[1], all as strings.
var usageScript = redis.NewScript("local first = 2\n" + luaCharges + lua("usage.lua"))

// startSuffix marks the window-start field of a counter.
const startSuffix = "|s"

// Admit applies all charges of one user in one atomic step on the Redis
// server, with the server's clock. Charges are checked first: a resource
// must be a valid name, the period known, the limit NoLimit or within
// [0, quota.MaxLimit], and the amount within ±quota.MaxLimit.
func (s *Store) Admit(ctx context.Context, userID, requestID string, charges []quota.Charge) (*quota.Admission, error) {
	if err := quota.ValidateAdmission(requestID, charges); err != nil {
		return nil, err
	}
	keys, args, err := s.chargeArgs(userID, requestID, true, charges, s.caps, requestID, s.percents, strconv.FormatInt(s.retention.Milliseconds(), 10), userID)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	vals, err := s.batch.run(ctx, admitScript, keys, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("admit: %w", err)
	}
	if len(vals) != 4+len(charges) {
		return nil, fmt.Errorf("admit: script replied %d values for %d charges", len(vals), len(charges))
	}
	if vals[1] == -2 {
		return nil, fmt.Errorf("admit: request %s: %w", requestID, quota.ErrCancelled)
	}
	if vals[1] == -3 {
		return nil, fmt.Errorf("admit: user %s was deleted: %w", userID, quota.ErrUnauthenticated)
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
	if err := quota.ValidateSettlement(requestID, charges); err != nil {
		return err
	}
	flag := "0"
	if apply {
		flag = "1"
	}
	keys, args, err := s.chargeArgs(userID, requestID, true, charges, s.caps, flag, requestID)
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
	if err := quota.ValidateSettlement(requestID, actual); err != nil {
		return err
	}
	keys, args, err := s.chargeArgs(userID, requestID, true, actual, s.caps, requestID, s.percents, strconv.FormatInt(s.retention.Milliseconds(), 10), userID)
	if err != nil {
		return err
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if err := s.batch.run(ctx, settleScript, keys, args...).Err(); err != nil {
		return fmt.Errorf("settle: %w", err)
	}
	return nil
}

// recordSpan is how many seconds of request records one hash holds
// (charges.lua keeps the current and the previous one, each for twice
// that: a record is found for at least quota.RequestTTL).
const recordSpan = int64(quota.RequestTTL / time.Second)

// chargeArgs builds a script's keys and arguments (its callers have
// validated the request id and charges): the
// usage hash, the distinct keys, the lease set and bodies and, with
// records, the request records of this span and the one before (see
// charges.lua), the threshold marks and the outbox; then head and one group
// of six per charge.
func (s *Store) chargeArgs(userID, requestID string, records bool, charges []quota.Charge, head ...string) ([]string, []any, error) {
	if !validID(userID) {
		return nil, nil, fmt.Errorf("user %q: %w", userID, quota.ErrNotFound)
	}
	keys := []string{s.usageKey(userID), s.keysKey(userID), s.tag(userID) + ":lease_exp", s.tag(userID) + ":leases"}
	if records {
		span := time.Now().Unix() / recordSpan
		reqs := func(m int64) string { return s.tag(userID) + ":reqs:" + strconv.FormatInt(m, 10) }
		keys = append(keys, reqs(span), s.tag(userID)+":thresholds", s.eventsKey(userID), reqs(span-1))
	}
	args := make([]any, 0, len(head)+6*len(charges))
	for _, h := range head {
		args = append(args, h)
	}
	for _, c := range charges {
		hold := strconv.FormatInt(int64((c.Hold+time.Second-1)/time.Second), 10)
		if c.Keep && c.Hold > 0 {
			hold += "k"
		}
		args = append(args, c.Resource, c.Per.String(), strconv.FormatInt(c.Limit, 10), strconv.FormatInt(c.Amount, 10), c.Key, hold)
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
	vals, err := usageScript.Run(ctx, s.rdb, []string{s.usageKey(userID), s.keysKey(userID), s.tag(userID) + ":lease_exp", s.tag(userID) + ":leases"}, "").StringSlice()
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
	quota.SortCounters(out)
	return out
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
	if err := resetScript.Run(ctx, s.rdb, []string{s.usageKey(userID), s.keysKey(userID), s.eventsKey(userID), s.tag(userID) + ":thresholds", s.tag(userID) + ":leases"}, args...).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("reset usage: %w", err)
	}
	return nil
}

// resetScript zeroes counters in one step with their events, keeping what
// requests in flight hold: see reset.lua.
var resetScript = redis.NewScript(luaWindowStart + luaOutbox + lua("reset.lua"))
